// The request path: an ordered list of named stages, each returning one verdict (compare Varnish's
// vcl_recv → hash → miss → fetch → deliver). Request stages run until one responds; response stages may
// then replace the response (store tees the body); `deliver` alone writes to the client.
import type { RequestContext, ResponsePlan } from "../context.js";

export type Verdict = { action: "continue" } | { action: "respond"; response: ResponsePlan };

export const CONTINUE: Verdict = Object.freeze({ action: "continue" });

export function respond(response: ResponsePlan): Verdict {
  return { action: "respond", response };
}

export interface RequestStage {
  readonly name: string;
  run(ctx: RequestContext): Verdict | Promise<Verdict>;
}

export interface ResponseStage {
  readonly name: string;
  run(ctx: RequestContext, response: ResponsePlan): ResponsePlan | Promise<ResponsePlan>;
}

export interface Pipeline {
  readonly requestStages: readonly RequestStage[];
  readonly responseStages: readonly ResponseStage[];
}

function isPromise<T>(v: T | Promise<T>): v is Promise<T> {
  return typeof (v as { then?: unknown } | null)?.then === "function";
}

/** Runs the stages; the synchronous path (a cache hit decided without I/O) never awaits. */
export async function runPipeline(pipeline: Pipeline, ctx: RequestContext): Promise<ResponsePlan> {
  let response: ResponsePlan | undefined;
  for (const stage of pipeline.requestStages) {
    let verdict = stage.run(ctx);
    if (isPromise(verdict)) verdict = await verdict;
    if (verdict.action === "respond") {
      response = verdict.response;
      break;
    }
  }
  if (!response) throw new Error("pipeline ended without a response: the last request stage must respond");
  for (const stage of pipeline.responseStages) {
    const next = stage.run(ctx, response);
    response = isPromise(next) ? await next : next;
  }
  return response;
}
