// Stage 7, forward: send the request upstream (http-proxy-3) and respond with the upstream's response as a stream.
// Revalidates a stale entry with its own validators; stands in with a stale entry when the upstream cannot be
// reached and stale-if-error allows it.
//
// Resilience, in this order: take a slot of the upstream's concurrency limit (may wait, bounded; 503
// upstream_overloaded), run the call through the upstream's circuit breaker (a 5xx counts as a failure but is still
// the answer; an open breaker gives the stale copy or 503 upstream_circuit_open), and give the slot back when the
// response body has ended or broke — an event stream keeps its slot for as long as it streams.
import { PassThrough, Readable } from "node:stream";
import { usableOnError, validatorHeaders } from "../cache/policy.js";
import type { RequestContext } from "../context.js";
import { ProxyError } from "../errors.js";
import type { ProxyEvents } from "../observability/events.js";
import type { Breakers } from "../resilience/breakers.js";
import type { Slot, UpstreamLimiters } from "../resilience/upstream-limiter.js";
import type { TrustedProxies } from "../upstream/forwarded.js";
import { setForwardedHeaders } from "../upstream/forwarded.js";
import type { Forwarder, UpstreamResponse } from "../upstream/forwarder.js";
import { endToEndResponseHeaders, withoutRequestHopByHop } from "../upstream/hop-by-hop.js";
import { circuitOpenResponse } from "./breaker.js";
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

/** Gives the slot back once the upstream body is over: ended, failed, or abandoned by everyone downstream. */
function releaseAfterBody(slot: Slot, up: UpstreamResponse, res: RequestContext["res"]): void {
  const body = up.body;
  // An IncomingMessage emits "close" once, after "end" or after an error or destroy() (`on`: no once-wrapper).
  body.on("close", () => slot.release());
  // The exchange with the client is over and nothing reads the body (a stage dropped it): drop it too.
  res.on("close", () => {
    if (!body.readableEnded && body.readableFlowing !== true) body.destroy();
  });
}

export interface ForwardResilience {
  breakers?: Breakers;
  limiters?: UpstreamLimiters;
}

export function createForwardStage(
  forwarder: Forwarder,
  trust: TrustedProxies,
  events: ProxyEvents,
  resilience: ForwardResilience = {},
): RequestStage {
  return {
    name: "forward",
    async run(ctx: RequestContext) {
      const upstream = ctx.upstream;
      const route = ctx.route;
      if (!upstream || !route) throw new Error("forward stage reached without a route");
      // http-proxy-3 copies req.headers upstream.
      const headers = withoutRequestHopByHop(ctx.req.headers, false);
      ctx.req.headers = headers;
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

      const limiter = resilience.limiters?.get(upstream.name);
      const breaker = resilience.breakers?.get(upstream.name);
      let slot: Slot | undefined;
      let up: UpstreamResponse;
      try {
        if (limiter) {
          // A lingering slot is taken without a promise; otherwise wait in the limiter's queue.
          slot = limiter.tryAcquire() ?? (await limiter.wait(ctx.res));
          // The client left while the upstream was busy with others: don't send its request.
          if (ctx.res.destroyed) throw new ProxyError("client_closed");
        }
        const call = () => forwarder.forward(ctx.req, ctx.res, upstream, upstreamBody(ctx));
        up = breaker ? await breaker.run(call, (r) => r.status >= 500) : await call();
      } catch (err) {
        slot?.release({ error: err instanceof ProxyError ? err.code : "internal_error" });
        if (err instanceof ProxyError && err.code === "upstream_circuit_open") {
          return respond(circuitOpenResponse(ctx, err));
        }
        const now = Date.now();
        if (stale && err instanceof ProxyError && err.code !== "client_closed" && usableOnError(stale, now)) {
          // RFC 5861 §4: stale-if-error covers an unreachable, timed-out or overloaded upstream.
          Object.assign(ctx.req.headers, ctx.clientConditionals);
          ctx.errorCode = err.code;
          return respond(planFromEntry(ctx, stale, "STALE", undefined, now));
        }
        throw err;
      }
      if (slot) {
        slot.observe({ ttfbMs: up.ttfbMs, status: up.status });
        releaseAfterBody(slot, up, ctx.res);
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
