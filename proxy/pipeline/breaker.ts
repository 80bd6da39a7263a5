// Stage 6, breaker: while the upstream's circuit breaker refuses calls (open, or half-open with its one probe
// already out), answer at once instead of queueing for a slot: with the stale cached copy if there is one, else
// 503 upstream_circuit_open with Retry-After. The forward stage runs the actual call through the same breaker, so a
// request that passed here while the breaker was about to open still gets the same answer.
import type { RequestContext } from "../context.js";
import type { Breakers } from "../resilience/breakers.js";
import { errorResponse } from "./deliver.js";
import { planFromEntry } from "./lookup.js";
import { CONTINUE, type RequestStage, respond, type Verdict } from "./pipeline.js";

export function createBreakerStage(breakers: Breakers): RequestStage {
  return {
    name: "breaker",
    run(ctx: RequestContext): Verdict {
      const upstream = ctx.upstream;
      const breaker = upstream ? breakers.get(upstream.name) : undefined;
      if (!breaker || breaker.admits()) return CONTINUE;
      return respond(circuitOpenResponse(ctx, breaker.openError()));
    },
  };
}

/**
 * The answer while the breaker refuses: a stored stale copy (X-Cache: STALE) unless it must be revalidated —
 * RFC 9111 §4.2.4 lets a cache that cannot reach the origin serve stale, except where must-revalidate,
 * proxy-revalidate or no-cache forbid it — else the coded 503.
 */
export function circuitOpenResponse(
  ctx: RequestContext,
  err: Parameters<typeof errorResponse>[1],
): ReturnType<typeof errorResponse> {
  const stale = ctx.cache?.stale;
  if (stale && !stale.mustRevalidate) {
    ctx.errorCode = err.code;
    Object.assign(ctx.req.headers, ctx.clientConditionals);
    return planFromEntry(ctx, stale, "STALE", undefined, Date.now());
  }
  return errorResponse(ctx, err);
}
