// The plugin hook points that are stages of their own: `onRequest` right after route (a plugin may answer), and,
// last among the response stages, `onHit` (for responses served from the cache) and `onResponse`.
import type { RequestContext, ResponsePlan } from "../context.js";
import type { PluginHost } from "../plugins.js";
import { requestBody } from "./classify.js";
import { CONTINUE, type RequestStage, type ResponseStage, respond, type Verdict } from "./pipeline.js";

export function createOnRequestStage(plugins: PluginHost): RequestStage {
  const active = plugins.has("onRequest");
  return {
    name: "on-request",
    run(ctx: RequestContext): Verdict | Promise<Verdict> {
      if (!active || !ctx.route) return CONTINUE;
      const view = plugins.view(ctx, (max) => requestBody(ctx, max));
      return plugins.onRequest(view).then((r) => (r ? respond(r) : CONTINUE));
    },
  };
}

export function createPluginResponseStage(plugins: PluginHost): ResponseStage {
  const hits = plugins.has("onHit");
  const responses = plugins.has("onResponse");
  return {
    name: "plugins",
    run(ctx: RequestContext, response: ResponsePlan): ResponsePlan {
      if ((!hits && !responses) || !ctx.route) return response;
      const view = plugins.view(ctx, (max) => requestBody(ctx, max));
      if (hits && ctx.servedEntry) plugins.onHit(view, ctx.servedEntry);
      return responses ? plugins.onResponse(view, response) : response;
    },
  };
}
