// Stage 4, lookup: memory tier, then Redis. Fresh → HIT (or 304 to a matching conditional request). Stale inside
// stale-while-revalidate → STALE plus one background refresh. Otherwise remember the stale entry (revalidation,
// stale-if-error) and continue.
import type { OutgoingHttpHeaders } from "node:http";
import type { CacheEntry } from "../cache/entry.js";
import {
  currentAgeMs,
  evaluateFreshness,
  notModified,
  parseCacheControl,
  shouldRefreshEarly,
} from "../cache/policy.js";
import type { TierName } from "../cache/tier.js";
import type { LookupResult, TieredCache } from "../cache/tiered-cache.js";
import type { RequestContext, ResponsePlan } from "../context.js";
import { ProxyError } from "../errors.js";
import { errorResponse } from "./deliver.js";
import { CONTINUE, type RequestStage, respond, type Verdict } from "./pipeline.js";

export type CacheStatus = "HIT" | "STALE" | "REVALIDATED";

/** The response a stored entry gives this request: the stored one, or 304 if the client's validators match. */
export function planFromEntry(
  ctx: RequestContext,
  entry: CacheEntry,
  status: CacheStatus,
  tier: TierName | undefined,
  now: number,
): ResponsePlan {
  ctx.cacheStatus = status;
  ctx.cacheTier = tier;
  ctx.servedEntry = entry;
  const headers: OutgoingHttpHeaders = { ...entry.headers };
  headers.age = String(Math.floor(currentAgeMs(entry, now) / 1000)); // RFC 9111 §5.1
  // RFC 9110 §13.2.2: conditionals are evaluated for GET/HEAD against the selected representation.
  const safe = ctx.method === "GET" || ctx.method === "HEAD";
  if (safe && entry.status === 200 && notModified(entry.headers, ctx.req.headers)) {
    delete headers["content-length"];
    return { status: 304, headers, body: null };
  }
  headers["content-length"] = entry.body.length;
  return { status: entry.status, headers, body: entry.body };
}

export interface Refresher {
  /** Starts one background refresh of the request's entry, unless one is already running for that key. */
  refresh(ctx: RequestContext, entry: CacheEntry): void;
}

export function createLookupStage(
  cache: TieredCache,
  refresher: Refresher,
  earlyRefreshBeta: number,
): RequestStage {
  const decide = (ctx: RequestContext, result: LookupResult): Verdict => {
    const c = ctx.cache;
    if (!c) return CONTINUE;
    c.key = result.key;
    c.vary = result.vary;
    const found = result.found;
    const rawCC = ctx.req.headers["cache-control"];
    if (!found) {
      // RFC 9111 §5.2.1.7: only-if-cached and nothing usable → 504.
      if (rawCC !== undefined && parseCacheControl(rawCC).has("only-if-cached"))
        return respond(errorResponse(ctx, new ProxyError("not_cached")));
      return CONTINUE;
    }
    const reqCC = parseCacheControl(rawCC);
    const now = Date.now();
    const entry = found.entry;
    const pragma = /no-cache/i.test(String(ctx.req.headers.pragma ?? ""));
    switch (evaluateFreshness(entry, reqCC, pragma, now)) {
      case "fresh":
        if (shouldRefreshEarly(entry, earlyRefreshBeta, now)) refresher.refresh(ctx, entry);
        return respond(planFromEntry(ctx, entry, "HIT", found.tier, now));
      case "stale-acceptable":
        return respond(planFromEntry(ctx, entry, "STALE", found.tier, now));
      case "stale-while-revalidate":
        refresher.refresh(ctx, entry);
        return respond(planFromEntry(ctx, entry, "STALE", found.tier, now));
      case "revalidate":
        if (reqCC.has("only-if-cached")) return respond(errorResponse(ctx, new ProxyError("not_cached")));
        c.stale = entry;
        return CONTINUE;
    }
  };

  return {
    name: "lookup",
    run(ctx: RequestContext) {
      const c = ctx.cache;
      if (!c) return CONTINUE;
      const result = cache.lookup(c.primaryKey, ctx.req.headers);
      return result instanceof Promise ? result.then((r) => decide(ctx, r)) : decide(ctx, result);
    },
  };
}
