// Stage 5, coalesce: the first miss for a key leads and goes upstream; concurrent misses for the same key (in this
// process, and through a Redis lease in other processes) wait for the leader's outcome, then read the cache.
// A follower whose wait times out, or whose leader could not store, goes upstream itself. Hit-for-miss: once a
// key's response turned out uncacheable, its next misses (for `cache.hitForMiss`) skip the wait and go upstream in
// parallel; a cacheable response ends that at once.

import { evaluateFreshness, parseCacheControl } from "../cache/policy.js";
import type { Follower, Leader, SingleFlight } from "../cache/single-flight.js";
import type { LookupResult, TieredCache } from "../cache/tiered-cache.js";
import type { CacheState, RequestContext } from "../context.js";
import { ProxyError } from "../errors.js";
import { planFromEntry } from "./lookup.js";
import { CONTINUE, type RequestStage, respond, type Verdict } from "./pipeline.js";

export function createCoalesceStage(cache: TieredCache, flights: SingleFlight, waitMs: number): RequestStage {
  return {
    name: "coalesce",
    run(ctx: RequestContext): Verdict | Promise<Verdict> {
      const c = ctx.cache;
      // Only what could be stored is worth waiting for: anything else would be fetched by each follower anyway.
      if (!c?.storable) return CONTINUE;
      const pass = flights.pass(c.key);
      if (pass !== undefined) {
        c.flight = pass;
        return CONTINUE;
      }
      const wait = c.coalesceTimeoutMs ?? waitMs;
      const flight = flights.acquire(c.key, wait, true);
      // The common case (a miss in a process without Redis, or a leader) stays synchronous.
      if (flight instanceof Promise) return flight.then((f) => decide(ctx, c, f, wait));
      return decide(ctx, c, flight, wait);
    },
  };

  function decide(
    ctx: RequestContext,
    c: CacheState,
    flight: Leader | Follower,
    wait: number,
  ): Verdict | Promise<Verdict> {
    if (flight.role === "leader") {
      // The client may have left while the Redis lease was being taken: the close handler has already run and
      // would never release this flight, leaving followers waiting until the lease expires.
      if (ctx.res.destroyed) {
        flight.release("failed");
        throw new ProxyError("client_closed");
      }
      c.flight = flight;
      return CONTINUE;
    }
    return follow(ctx, c, flight, wait);
  }

  // Promise chains rather than async functions: in a burst on one key nearly every request follows.
  function follow(ctx: RequestContext, c: CacheState, flight: Follower, wait: number): Promise<Verdict> {
    return flight.wait(wait).then((outcome) => {
      if (outcome !== "stored") {
        // Its fetch may tell whether the key has become cacheable: that ends (or extends) the mark.
        if (outcome === "uncacheable") c.flight = flights.pass(c.key);
        return CONTINUE;
      }
      const result = cache.lookup(c.primaryKey, ctx.req.headers);
      return result instanceof Promise ? result.then((r) => served(ctx, c, r)) : served(ctx, c, result);
    });
  }

  function served(ctx: RequestContext, c: CacheState, result: LookupResult): Verdict {
    c.key = result.key;
    c.vary = result.vary;
    const found = result.found;
    if (!found) return CONTINUE;
    const now = Date.now();
    const reqCC = parseCacheControl(ctx.req.headers["cache-control"]);
    // The leader's fresh result serves every follower, even those that sent no-cache: it *is* the revalidation.
    if (evaluateFreshness(found.entry, new Map(), false, now) !== "fresh" && !reqCC.has("max-stale"))
      return CONTINUE;
    ctx.coalesced = true;
    return respond(planFromEntry(ctx, found.entry, "HIT", found.tier, now));
  }
}
