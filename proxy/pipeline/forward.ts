// Stage 7, forward: send the request upstream (http-proxy-3) and respond with the upstream's response as a stream.
// Revalidates a stale entry with its own validators; stands in with a stale entry when the upstream cannot be
// reached and stale-if-error allows it.
import { PassThrough, Readable } from "node:stream";
import { usableOnError, validatorHeaders } from "../cache/policy.js";
import type { RequestContext } from "../context.js";
import { ProxyError } from "../errors.js";
import type { ProxyEvents } from "../observability/events.js";
import type { TrustedProxies } from "../upstream/forwarded.js";
import { setForwardedHeaders } from "../upstream/forwarded.js";
import type { Forwarder } from "../upstream/forwarder.js";
import { endToEndResponseHeaders, stripRequestHopByHop } from "../upstream/hop-by-hop.js";
import { planFromEntry } from "./lookup.js";
import type { RequestStage } from "./pipeline.js";
import { respond } from "./pipeline.js";

/** The body to send upstream: the request stream, or what classify read of it (replayed first). */
function upstreamBody(ctx: RequestContext): Readable | undefined {
  if (ctx.upstreamBody) return Readable.from([ctx.upstreamBody]);
  if (ctx.upstreamBodyPrefix) {
    const out = new PassThrough();
    for (const b of ctx.upstreamBodyPrefix) out.write(b);
    ctx.req.pipe(out);
    ctx.req.resume();
    return out;
  }
  return undefined;
}

export function createForwardStage(
  forwarder: Forwarder,
  trust: TrustedProxies,
  events: ProxyEvents,
): RequestStage {
  return {
    name: "forward",
    async run(ctx: RequestContext) {
      const upstream = ctx.upstream;
      const route = ctx.route;
      if (!upstream || !route) throw new Error("forward stage reached without a route");
      const headers = ctx.req.headers;
      stripRequestHopByHop(headers, false);
      const encrypted = "encrypted" in ctx.req.socket && ctx.req.socket.encrypted === true;
      setForwardedHeaders(headers, ctx.peerIp, encrypted, trust.has(ctx.peerIp));
      headers["x-request-id"] = ctx.id;
      const stale = ctx.cache?.stale;
      if (stale) {
        // Revalidate with our validators; the client's own conditionals are answered by us afterwards.
        ctx.clientConditionals = {
          "if-none-match": headers["if-none-match"],
          "if-modified-since": headers["if-modified-since"],
        };
        delete headers["if-none-match"];
        delete headers["if-modified-since"];
        Object.assign(headers, validatorHeaders(stale));
      }

      let up: Awaited<ReturnType<Forwarder["forward"]>>;
      try {
        up = await forwarder.forward(ctx.req, ctx.res, upstream, upstreamBody(ctx));
      } catch (err) {
        const now = Date.now();
        if (stale && err instanceof ProxyError && err.code !== "client_closed" && usableOnError(stale, now)) {
          // RFC 5861 §4: stale-if-error covers an unreachable or timed-out upstream.
          Object.assign(ctx.req.headers, ctx.clientConditionals);
          ctx.errorCode = err.code;
          return respond(planFromEntry(ctx, stale, "STALE", undefined, now));
        }
        throw err;
      }
      ctx.fromUpstream = true;
      ctx.upstreamMs = performance.now() - ctx.startedAt;
      events.emit("upstream:response", {
        upstream: upstream.name,
        route: route.name,
        status: up.status,
        ttfbMs: up.ttfbMs,
      });
      return respond({
        status: up.status,
        statusMessage: up.statusMessage,
        headers: endToEndResponseHeaders(up.headers),
        body: up.body,
      });
    },
  };
}
