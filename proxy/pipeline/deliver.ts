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
  // The body is pumped by hand rather than with `.pipe`: pipe adds six listeners (three of them once-wrappers) and
  // removes them again, on every response; these four are never removed. (stream.pipeline is worse still: on Node 20
  // it costs an AbortController and a DOMException.) Closures over the context, not module functions finding it on
  // the body: a property added to upstream responses gives node's IncomingMessage and stream code more hidden
  // classes than it handles inline (see forwarder.ts, Exchange).
  // The server's "close" handler destroys `sentBody` when the client leaves first, which aborts the upstream request.
  ctx.sentBody = body;
  body.on("error", () => cut(ctx));
  // The body broke (closed before its end) while the response was still open.
  body.on("close", () => {
    if (!body.readableEnded) cut(ctx);
  });
  body.on("end", () => res.end());
  body.on("data", (chunk: Buffer) => {
    if (!res.write(chunk)) {
      // The client reads slower than the upstream sends: wait for the socket to drain (backpressure reaches the
      // upstream through its TCP window).
      body.pause();
      res.once("drain", () => body.resume());
    }
  });
  if (body.readableFlowing !== true) body.resume(); // also a body a stage paused
}

/**
 * The body broke (an error, or closed before its end) while the response was still open: record it and cut the
 * client connection, so the client sees an incomplete reply rather than a truncated one that looks complete.
 */
function cut(ctx: RequestContext): void {
  const res = ctx.res;
  if (res.writableEnded) return;
  if (!ctx.req.socket.destroyed) ctx.errorCode ??= "upstream_aborted";
  res.destroy();
}

export function asProxyError(err: unknown): ProxyError {
  return err instanceof ProxyError ? err : new ProxyError("internal_error");
}
