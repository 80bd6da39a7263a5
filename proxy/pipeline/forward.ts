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
import { type Breakers, breakerFailure } from "../resilience/breakers.js";
import type { Slot, UpstreamLimiters } from "../resilience/upstream-limiter.js";
import type { TrustedProxies } from "../upstream/forwarded.js";
import { setForwardedHeaders } from "../upstream/forwarded.js";
import type { Forwarder, UpstreamResponse } from "../upstream/forwarder.js";
import { endToEndResponseHeaders, withoutRequestHopByHop } from "../upstream/hop-by-hop.js";
import { circuitOpenResponse } from "./breaker.js";
import { planFromEntry } from "./lookup.js";
import { type RequestStage, respond, type Verdict } from "./pipeline.js";

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
  /** The upstream call failed or was refused: a stand-in answer (circuit open, stale-if-error) or the error. */
  const onFailure = (ctx: RequestContext, err: unknown, slot: Slot | undefined): Verdict => {
    slot?.release({ error: err instanceof ProxyError ? err.code : "internal_error" });
    if (err instanceof ProxyError && err.code === "upstream_circuit_open") {
      return respond(circuitOpenResponse(ctx, err));
    }
    const stale = ctx.cache?.stale;
    const now = Date.now();
    if (stale && err instanceof ProxyError && err.code !== "client_closed" && usableOnError(stale, now)) {
      // RFC 5861 §4: stale-if-error covers an unreachable, timed-out or overloaded upstream.
      Object.assign(ctx.req.headers, ctx.clientConditionals);
      ctx.errorCode = err.code;
      return respond(planFromEntry(ctx, stale, "STALE", undefined, now));
    }
    throw err;
  };

  const onResponse = (ctx: RequestContext, up: UpstreamResponse, slot: Slot | undefined): Verdict => {
    // The slot itself goes back when the body is over (the forwarder's onBodyClose).
    slot?.observe({ ttfbMs: up.ttfbMs, status: up.status });
    ctx.fromUpstream = true;
    ctx.upstreamResponseBody = up.body;
    ctx.upstreamMs = performance.now() - ctx.startedAt;
    events.emit("upstream:response", {
      upstream: (ctx.upstream as NonNullable<RequestContext["upstream"]>).name,
      route: (ctx.route as NonNullable<RequestContext["route"]>).name,
      status: up.status,
      ttfbMs: up.ttfbMs,
    });
    return respond({
      status: up.status,
      statusMessage: up.statusMessage,
      headers: endToEndResponseHeaders(up.headers),
      body: up.body,
    });
  };

  /**
   * With a slot (or no limiter): the call, through the breaker when there is one. A 5xx counts as a breaker failure
   * and is still the answer: the forwarder rejects with it (breakerFailure) and `breaker.outcome` gives it back, so
   * the call costs opossum's promises and one more, not a judging and an unwrapping step on top.
   */
  const send = (ctx: RequestContext, slot: Slot | undefined): Promise<Verdict> => {
    const upstream = ctx.upstream as NonNullable<RequestContext["upstream"]>;
    const breaker = resilience.breakers?.get(upstream.name);
    let call: Promise<UpstreamResponse>;
    try {
      // The client left while the upstream was busy with others: don't send its request.
      if (slot && ctx.res.destroyed) throw new ProxyError("client_closed");
      const release = slot ? () => slot.release() : undefined;
      // The body is made when the call is made (not at all when the breaker refuses it).
      call = breaker
        ? breaker.fire(() =>
            forwarder.forward(ctx.req, ctx.res, upstream, upstreamBody(ctx), release, serverErrorAsFailure),
          )
        : forwarder.forward(ctx.req, ctx.res, upstream, upstreamBody(ctx), release);
    } catch (err) {
      call = Promise.reject(err);
    }
    return call.then(
      (up) => onResponse(ctx, up, slot),
      (err: unknown) => {
        if (!breaker) return onFailure(ctx, err, slot);
        let up: UpstreamResponse;
        try {
          up = breaker.outcome(err); // a 5xx: still the answer
        } catch (refused) {
          return onFailure(ctx, refused, slot);
        }
        return onResponse(ctx, up, slot);
      },
    );
  };

  return {
    name: "forward",
    // Not an async function: a request with a free slot costs the upstream call's promises and one more here.
    run(ctx: RequestContext): Promise<Verdict> {
      const upstream = ctx.upstream;
      const route = ctx.route;
      if (!upstream || !route) return Promise.reject(new Error("forward stage reached without a route"));
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
      if (!limiter) return send(ctx, undefined);
      // A lingering slot is taken without a promise; otherwise wait in the limiter's queue.
      const slot = limiter.tryAcquire();
      if (slot) return send(ctx, slot);
      return limiter.wait(ctx.res).then(
        (s) => send(ctx, s),
        (err: unknown) => onFailure(ctx, err, undefined),
      );
    },
  };
}

/** A 5xx counts as a failure for the breaker (and is still the answer). */
function serverErrorAsFailure(r: UpstreamResponse): Error | undefined {
  return r.status >= 500 ? breakerFailure(r) : undefined;
}
