// Stage 2, rate-limit: per-client limits, before the cache lookup so that cache hits count too. Over the limit →
// 429 rate_limited with Retry-After and the IETF RateLimit fields; allowed responses carry the RateLimit fields
// as well. The limits themselves live in resilience/client-limits.ts.
//
// Fields as in draft-ietf-httpapi-ratelimit-headers-11 (May 2026): `RateLimit-Policy: "default";q=100;w=10`
// (§3.1: quota q in requests per window w in whole seconds) and `RateLimit: "default";r=50;t=30` (§4.1: r requests
// left, t seconds until the window ends). §6: Retry-After must not point before the end of that window.
import type { LimitsConfig } from "../../config/schema.js";
import type { RequestContext } from "../context.js";
import { ProxyError } from "../errors.js";
import type { ProxyEvents } from "../observability/events.js";
import type { Logger } from "../observability/logger.js";
import { type ClientLimiter, clientKey, type LimitDecision } from "../resilience/client-limits.js";
import { errorResponse } from "./deliver.js";
import { CONTINUE, type RequestStage, respond, type Verdict } from "./pipeline.js";

const FALLBACK_LOG_INTERVAL_MS = 10_000; // 10 s

function rateLimitFields(d: LimitDecision): Record<string, string> {
  const fields: Record<string, string> = { "ratelimit-policy": `"${d.policy}";q=${d.limit};w=${d.window}` };
  // A concurrency refusal spent nothing from the rate quota, so there is no current window to report.
  if (d.reason !== "concurrency") {
    fields.ratelimit = `"${d.policy}";r=${d.remaining};t=${Math.ceil(d.resetMs / 1000)}`;
  }
  return fields;
}

function verdict(ctx: RequestContext, d: LimitDecision, limits: LimitsConfig, client: string): Verdict {
  // The client left while we asked Redis: the `close` handlers have run already, so nothing later in the
  // pipeline (a coalescing lease, an upstream request) would ever be cleaned up. Stop here.
  if (ctx.res.destroyed) throw new ProxyError("client_closed");
  if (d.dryRun) {
    // Dry run changes nothing a client can see (no refusal, no RateLimit fields that could make it back off).
    if (!d.allowed && d.firstRefusal) {
      ctx.log.warn(
        { policy: d.policy, client, reason: d.reason, limit: d.limit, window: d.window },
        "client over its limit (dry run: not enforced; logged once per client per window)",
      );
    }
    return CONTINUE;
  }
  const fields = rateLimitFields(d);
  if (d.allowed) {
    ctx.responseHeaders = Object.assign(ctx.responseHeaders ?? {}, fields);
    return CONTINUE;
  }
  if (d.firstRefusal) {
    ctx.log.info(
      { policy: d.policy, client, reason: d.reason },
      "client over its limit (logged once per client per window)",
    );
  }
  // Retry-After: delay-seconds (RFC 9110 §10.2.3); at least 1, since 0 would invite an immediate retry.
  fields["retry-after"] = String(Math.max(1, Math.ceil(d.retryAfterMs / 1000)));
  const message =
    d.reason === "concurrency"
      ? `too many concurrent requests from this client (at most ${limits.concurrent})`
      : `rate limit exceeded: ${d.limit} requests per ${d.window} s (policy "${d.policy}")`;
  return respond(errorResponse(ctx, new ProxyError("rate_limited", message, fields)));
}

export function createRateLimitStage(
  limiter: ClientLimiter,
  deps: { events: ProxyEvents; logger: Logger },
): RequestStage {
  const { events, logger } = deps;
  limiter.on("limited", (e) =>
    events.emit("ratelimit:limited", { route: e.route, mode: e.dryRun ? "dry_run" : "enforced" }),
  );
  let fallbackLoggedAt = 0;
  limiter.on("fallback", (e) => {
    events.emit("ratelimit:fallback", { policy: e.policy });
    const now = Date.now();
    if (now - fallbackLoggedAt >= FALLBACK_LOG_INTERVAL_MS) {
      fallbackLoggedAt = now;
      logger.warn(
        { policy: e.policy },
        "rate limits: Redis unavailable, enforcing them per instance (logged once per 10 s)",
      );
    }
  });

  return {
    name: "rate-limit",
    run(ctx: RequestContext) {
      const route = ctx.route;
      const limits = route && limiter.limitsFor(route.name);
      // Not limited: decided synchronously, the hit path pays nothing.
      if (!route || !limits) return CONTINUE;
      const client = clientKey(ctx, limits);
      const grant = limiter.acquire(route.name, client);
      // Tied to the response before any await: a client that leaves early still frees its slot.
      if (grant?.held) ctx.res.once("close", grant.release);
      return limiter.check(route.name, client, grant).then((d) => verdict(ctx, d, limits, client));
    },
  };
}
