// Background refresh for stale-while-revalidate and early refresh: one upstream request per key at a time
// (across instances too, through the single-flight lease), revalidating with the entry's validators.
import type { Logger } from "pino";
import type { RequestContext } from "../context.js";
import type { Refresher } from "../pipeline/lookup.js";
import { setForwardedHeaders, type TrustedProxies } from "../upstream/forwarded.js";
import type { Forwarder } from "../upstream/forwarder.js";
import { endToEndResponseHeaders, withoutRequestHopByHop } from "../upstream/hop-by-hop.js";
import type { CacheEntry } from "./entry.js";
import { refreshAfterNotModified, validatorHeaders } from "./policy.js";
import type { SingleFlight } from "./single-flight.js";
import type { TieredCache } from "./tiered-cache.js";
import type { CacheWriter, CaptureRequest } from "./writer.js";

export class BackgroundRefresher implements Refresher {
  /** Set once plugins are loaded: their store veto for a request (see pipeline/store.ts#storeVeto). */
  storeVeto: ((ctx: RequestContext) => CaptureRequest["shouldStore"]) | undefined;

  constructor(
    private readonly deps: {
      flights: SingleFlight;
      forwarder: Forwarder;
      writer: CacheWriter;
      cache: TieredCache;
      trust: TrustedProxies;
      logger: Logger;
      onRefresh?(outcome: "stored" | "revalidated" | "uncacheable" | "failed"): void;
    },
  ) {}

  refresh(ctx: RequestContext, entry: CacheEntry): void {
    const c = ctx.cache;
    const upstream = ctx.upstream;
    if (!c || !upstream) return;
    // Everything needed is copied now: the request object moves on without us.
    const headers: Record<string, string | string[] | undefined> = {
      ...withoutRequestHopByHop(ctx.req.headers, false),
    };
    setForwardedHeaders(headers, ctx.peerIp, false, this.deps.trust.has(ctx.peerIp));
    delete headers["if-none-match"];
    delete headers["if-modified-since"];
    Object.assign(headers, validatorHeaders(entry));
    headers["x-request-id"] = ctx.id;
    const method = ctx.method === "HEAD" ? "GET" : ctx.method;
    const capture = {
      rules: c.rules,
      tenantScoped: c.tenantScoped,
      route: ctx.route?.name ?? "",
      method,
      target: ctx.url,
      url: c.url,
      primaryKey: c.primaryKey,
      requestHeaders: { ...ctx.req.headers },
      tags: c.tags,
      shouldStore: this.storeVeto?.(ctx),
    };
    const key = c.key;
    const vary = c.vary;
    const body = c.body;
    const { flights, forwarder, writer, cache, logger } = this.deps;

    void Promise.resolve(flights.acquire(`refresh:${key}`)).then(async (flight) => {
      if (flight.role !== "leader") return; // someone (here or elsewhere) is refreshing this key already
      let outcome: "stored" | "revalidated" | "uncacheable" | "failed" = "failed";
      try {
        const up = await forwarder.fetch(upstream, { method, path: capture.target, headers, body });
        if (up.status === 304) {
          up.body.resume();
          const now = Date.now();
          const refreshed = refreshAfterNotModified(entry, up.headers, {
            ...capture,
            url: capture.target,
            jitter: 0,
            now,
          });
          if (refreshed) {
            await cache.store(refreshed, vary, now);
            outcome = "revalidated";
          } else outcome = "uncacheable";
        } else {
          outcome = await new Promise((resolve) => {
            const tee = writer.capture(
              capture,
              up.status,
              endToEndResponseHeaders(up.headers),
              up.body,
              resolve,
            );
            (tee ?? up.body).resume();
          });
        }
      } catch (err) {
        logger.debug({ err: (err as Error).message, route: capture.route }, "background refresh failed");
      } finally {
        flight.release(outcome === "revalidated" ? "stored" : outcome);
        this.deps.onRefresh?.(outcome);
      }
    });
  }
}
