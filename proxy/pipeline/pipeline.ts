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

/**
 * Runs the stages. Synchronous for as long as the stages are: a hit decided without I/O, or a miss up to the forward
 * stage, costs no promise here; from the first stage that returns one, the rest runs after it settles.
 * A stage that throws synchronously makes this throw (the caller handles both ways alike).
 */
export function runPipeline(pipeline: Pipeline, ctx: RequestContext): ResponsePlan | Promise<ResponsePlan> {
  const stages = pipeline.requestStages;
  for (let i = 0; i < stages.length; i++) {
    const verdict = (stages[i] as RequestStage).run(ctx);
    if (isPromise(verdict)) {
      // The common case (the forward stage answers): the response stages straight away, without an async function
      // (its promise, and the adoption of that promise by this one, cost two promises a request).
      return verdict.then((v) =>
        v.action === "respond"
          ? runResponseStages(pipeline, ctx, v.response, 0)
          : afterRequestStage(pipeline, ctx, v, i + 1),
      );
    }
    if (verdict.action === "respond") return runResponseStages(pipeline, ctx, verdict.response, 0);
  }
  return noResponse();
}

function noResponse(): never {
  throw new Error("pipeline ended without a response: the last request stage must respond");
}

async function afterRequestStage(
  pipeline: Pipeline,
  ctx: RequestContext,
  verdict: Verdict,
  next: number,
): Promise<ResponsePlan> {
  const stages = pipeline.requestStages;
  for (let i = next; verdict.action !== "respond"; i++) {
    if (i >= stages.length) noResponse();
    const v = (stages[i] as RequestStage).run(ctx);
    verdict = isPromise(v) ? await v : v;
  }
  return runResponseStages(pipeline, ctx, verdict.response, 0);
}

function runResponseStages(
  pipeline: Pipeline,
  ctx: RequestContext,
  response: ResponsePlan,
  from: number,
): ResponsePlan | Promise<ResponsePlan> {
  const stages = pipeline.responseStages;
  for (let i = from; i < stages.length; i++) {
    const next = (stages[i] as ResponseStage).run(ctx, response);
    if (isPromise(next)) return next.then((r) => runResponseStages(pipeline, ctx, r, i + 1));
    response = next;
  }
  return response;
}
