// Stage 7, forward: send the request upstream (http-proxy-3) and respond with the upstream's response as a stream.
import type { RequestContext } from "../context.js";
import type { ProxyEvents } from "../observability/events.js";
import type { TrustedProxies } from "../upstream/forwarded.js";
import { setForwardedHeaders } from "../upstream/forwarded.js";
import type { Forwarder } from "../upstream/forwarder.js";
import { endToEndResponseHeaders, stripRequestHopByHop } from "../upstream/hop-by-hop.js";
import type { RequestStage } from "./pipeline.js";
import { respond } from "./pipeline.js";

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

      const up = await forwarder.forward(ctx.req, ctx.res, upstream);
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
