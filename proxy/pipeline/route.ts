// Stage 1, route: validate the request target, match a route, and establish who the client is.

import type { RequestContext } from "../context.js";
import { ProxyError } from "../errors.js";
import type { Router } from "../routing.js";
import { clientAddress, type TrustedProxies } from "../upstream/forwarded.js";
import { errorResponse } from "./deliver.js";
import { CONTINUE, type RequestStage, respond } from "./pipeline.js";

// Dot segments (plain or percent-encoded) could walk out of a route's path prefix once the upstream normalises
// the path (RFC 3986 §5.2.4); nginx in front normally removes them, so their presence means a crafted request.
const DOT_SEGMENT = /(?:^|\/)(?:\.|%2e){1,2}(?:\/|$|\?)/i;

export function createRouteStage(router: Router, trust: TrustedProxies): RequestStage {
  return {
    name: "route",
    run(ctx: RequestContext) {
      const raw = ctx.req.url ?? "";
      let url = raw;
      if (!raw.startsWith("/")) {
        // Absolute-form (RFC 9112 §3.2.2) is legal; reduce it to origin-form. Anything else ("*") is not ours.
        if (!/^https?:\/\//i.test(raw))
          return respond(errorResponse(ctx, new ProxyError("invalid_request", "unsupported request target")));
        try {
          const u = new URL(raw);
          url = `${u.pathname}${u.search}`;
          ctx.req.url = url;
        } catch {
          return respond(errorResponse(ctx, new ProxyError("invalid_request", "malformed request target")));
        }
      }
      const q = url.indexOf("?");
      const path = q === -1 ? url : url.slice(0, q);
      if (DOT_SEGMENT.test(path)) {
        return respond(
          errorResponse(ctx, new ProxyError("invalid_request", "dot segments are not allowed in the path")),
        );
      }
      ctx.url = url;
      ctx.path = path;
      ctx.clientIp = clientAddress(ctx.peerIp, ctx.req.headers["x-forwarded-for"], trust);
      const route = router.match(ctx.method, path);
      if (!route) return respond(errorResponse(ctx, new ProxyError("route_not_found")));
      ctx.route = route;
      ctx.upstream = route.upstream;
      return CONTINUE;
    },
  };
}
