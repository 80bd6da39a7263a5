// Stage 8, store (a response stage): tee a storable upstream response into the cache while it streams to the
// client; refresh a revalidated entry on 304; stand in with a stale entry on a 5xx (stale-if-error); and
// invalidate after a successful unsafe request (RFC 9111 §4.4).
import type { Invalidator } from "../cache/invalidation.js";
import { refreshAfterNotModified, usableOnError } from "../cache/policy.js";
import type { TieredCache } from "../cache/tiered-cache.js";
import { type CacheWriter, type CaptureRequest, withoutFreshness } from "../cache/writer.js";
import type { RequestContext, ResponsePlan } from "../context.js";
import type { PluginHost } from "../plugins.js";
import { isUnsafe, requestBody } from "./classify.js";
import { planFromEntry } from "./lookup.js";
import type { ResponseStage } from "./pipeline.js";

function sameHostUrl(ctx: RequestContext, value: unknown): string | undefined {
  if (typeof value !== "string" || !value) return undefined;
  try {
    const base = `http://${ctx.req.headers.host ?? "localhost"}`;
    const u = new URL(value, base);
    // RFC 9111 §4.4: only URIs with the same origin as the request are invalidated.
    if (u.host !== (ctx.req.headers.host ?? "localhost")) return undefined;
    return `${u.host}${u.pathname}${u.search}`;
  } catch {
    return undefined;
  }
}

/** The plugins' shouldStore hooks as the writer's veto, or undefined when no plugin has one. */
export function storeVeto(ctx: RequestContext, plugins: PluginHost): CaptureRequest["shouldStore"] {
  if (!plugins.has("shouldStore")) return undefined;
  const request = plugins.view(ctx, (max) => requestBody(ctx, max));
  return (status, headers, body) => plugins.shouldStore({ request, status, headers, body });
}

export function createStoreStage(
  cache: TieredCache,
  writer: CacheWriter,
  invalidator: Invalidator,
  plugins: PluginHost,
): ResponseStage {
  return {
    name: "store",
    run(ctx: RequestContext, plan: ResponsePlan): ResponsePlan {
      const c = ctx.cache;
      if (!ctx.fromUpstream) {
        c?.flight?.release("failed");
        return plan;
      }
      // RFC 9111 §4.4, except for a POST made a cache candidate (route or plugin): it is a query keyed by its
      // body, and purging its URI would drop the entries of every other body sent to it.
      if (isUnsafe(ctx.method) && plan.status < 400 && !(ctx.method === "POST" && c)) {
        const host = ctx.req.headers.host ?? "";
        const urls = [`${host}${ctx.url}`];
        for (const h of [plan.headers.location, plan.headers["content-location"]]) {
          const u = sameHostUrl(ctx, h);
          if (u) urls.push(u);
        }
        // Not awaited: the client's response does not wait for the purge fan-out.
        void invalidator.purge({ urls });
      }
      if (!c) return plan;
      const now = Date.now();
      const body = plan.body;

      if (plan.status === 304 && c.stale) {
        // RFC 9111 §4.3.4: the stored response, freshened with the 304's headers.
        if (body && !Buffer.isBuffer(body)) body.resume();
        const refreshed = refreshAfterNotModified(c.stale, plan.headers as never, {
          rules: c.rules,
          tenantScoped: c.tenantScoped,
          method: ctx.method,
          url: ctx.url,
          requestHeaders: ctx.req.headers,
          jitter: 0,
          now,
        });
        const entry = refreshed ?? c.stale;
        if (refreshed) {
          const flight = c.flight;
          c.flight = undefined; // released when the write lands, not when the client's response ends
          cache.store(refreshed, c.vary, now).then(
            () => flight?.release("stored"),
            () => flight?.release("failed"),
          );
        } else {
          c.flight?.release("uncacheable");
        }
        ctx.req.headers = { ...ctx.req.headers, ...ctx.clientConditionals };
        return planFromEntry(ctx, entry, "REVALIDATED", undefined, now);
      }

      if (plan.status >= 500 && c.stale && usableOnError(c.stale, now)) {
        if (body && !Buffer.isBuffer(body)) body.destroy();
        c.flight?.release("failed");
        ctx.req.headers = { ...ctx.req.headers, ...ctx.clientConditionals };
        return planFromEntry(ctx, c.stale, "STALE", undefined, now);
      }

      ctx.cacheStatus = "MISS";
      const flight = c.flight;
      // From here the writer owns the flight: it releases once the entry is written (or could not be).
      c.flight = undefined;
      const done = (outcome: Parameters<NonNullable<typeof flight>["release"]>[0]) =>
        flight?.release(outcome);
      if (!c.storable || !body || Buffer.isBuffer(body) || withoutFreshness(c.rules, plan.headers)) {
        done("uncacheable");
        return plan;
      }
      const tee = writer.capture(
        {
          rules: c.rules,
          tenantScoped: c.tenantScoped,
          route: ctx.route?.name ?? "",
          method: ctx.method,
          target: ctx.url,
          url: c.url,
          primaryKey: c.primaryKey,
          requestHeaders: ctx.req.headers,
          tags: c.tags,
          shouldStore: storeVeto(ctx, plugins),
        },
        plan.status,
        plan.headers,
        body,
        done,
      );
      return tee ? { ...plan, body: tee } : plan;
    },
  };
}
