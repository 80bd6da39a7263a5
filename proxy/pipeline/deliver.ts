// Last stage, deliver: the only place that writes to the client socket. Adds cachegate's own headers,
// flushes event streams frame by frame, and cuts the client connection if the upstream body breaks.
import type { OutgoingHttpHeader } from "node:http";
import type { RequestContext, ResponsePlan } from "../context.js";
import { errorBody, ProxyError } from "../errors.js";

export function errorResponse(ctx: RequestContext, err: ProxyError): ResponsePlan {
  ctx.errorCode = err.code;
  const body = errorBody(err.code, err.message, ctx.id);
  return {
    status: err.status,
    headers: {
      "content-type": "application/json; charset=utf-8",
      "content-length": body.length,
      "cache-control": "no-store",
      ...err.headers,
    },
    body,
  };
}

export function isEventStream(contentType: OutgoingHttpHeader | undefined): boolean {
  if (typeof contentType !== "string") return false;
  // Every response asks: settle the usual answers without allocating. After optional whitespace an event stream
  // starts with "t" or "T"; any other visible ASCII character first means it is not one.
  if (contentType.startsWith("text/event-stream")) return true;
  const c = contentType.charCodeAt(0);
  if (c > 32 && c < 127 && c !== 116 && c !== 84) return false;
  return contentType.trimStart().toLowerCase().startsWith("text/event-stream");
}

export interface DeliverOptions {
  /** Set while draining: ask keep-alive clients to reconnect elsewhere. */
  closing(): boolean;
}

export function deliver(ctx: RequestContext, plan: ResponsePlan, opts: DeliverOptions): void {
  const { res } = ctx;
  if (res.headersSent || res.destroyed) {
    // Nothing sensible can be written any more; make sure nothing leaks.
    if (plan.body && !Buffer.isBuffer(plan.body)) plan.body.destroy();
    return;
  }
  const headers = plan.headers;
  if (ctx.responseHeaders) Object.assign(headers, ctx.responseHeaders);
  headers["x-request-id"] = ctx.id;
  headers["x-cache"] = ctx.cacheStatus;
  if (ctx.cacheTier) headers["x-cache-tier"] = ctx.cacheTier;
  if (opts.closing()) headers.connection = "close";
  const eventStream = isEventStream(headers["content-type"]);
  if (eventStream) {
    // Nginx must not buffer the stream either (its proxy_buffering is on by default).
    headers["x-accel-buffering"] = "no";
    if (headers["cache-control"] === undefined) headers["cache-control"] = "no-cache";
  }
  res.writeHead(plan.status, plan.statusMessage || undefined, headers);

  const body = plan.body;
  const headOnly = ctx.method === "HEAD" || plan.status === 204 || plan.status === 304;
  if (body === null || headOnly) {
    if (body && !Buffer.isBuffer(body)) body.resume();
    res.end();
    return;
  }
  if (Buffer.isBuffer(body)) {
    res.end(body);
    return;
  }
  if (eventStream) {
    res.flushHeaders();
    res.socket?.setNoDelay(true);
  }
  // The upstream body broke while the client was still there: record it and cut the client connection, so it sees
  // an incomplete reply rather than a truncated one that looks complete. (`.pipe` plus these handlers, not
  // stream.pipeline: on Node 20 pipeline costs an AbortController and a DOMException per response.)
  const cut = () => {
    if (res.writableEnded) return;
    if (!ctx.req.socket.destroyed) ctx.errorCode ??= "upstream_aborted";
    res.destroy();
  };
  // `on`, not `once`: "close" happens once, and an "error" listener that stays is harmless (a once-wrapper each
  // is not free on a path every response takes).
  body.on("error", cut);
  body.on("close", () => {
    if (!body.readableEnded) cut();
  });
  // The client left: stop reading the upstream (which aborts the upstream request).
  res.on("close", () => {
    if (!body.readableEnded) body.destroy();
  });
  body.pipe(res);
}

export function asProxyError(err: unknown): ProxyError {
  return err instanceof ProxyError ? err : new ProxyError("internal_error");
}
