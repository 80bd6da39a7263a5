// Sends a request upstream through http-proxy-3 and hands back the upstream response as a stream
// (selfHandleResponse: the pipeline decides what reaches the client). Adds what the library lacks:
// connect/response/idle timeouts told apart from resets, coded errors, one retry of an idempotent request
// whose pooled keep-alive socket turned out dead, and client-abort propagation.
import http, { type ClientRequest, type IncomingMessage, type ServerResponse } from "node:http";
import https from "node:https";
import type { Socket } from "node:net";
import { Readable, type Stream } from "node:stream";
import { createProxyServer, type ProxyServer } from "http-proxy-3";
import { ProxyError } from "../errors.js";
import type { Upstream } from "../routing.js";

export interface UpstreamResponse {
  status: number;
  statusMessage: string;
  headers: IncomingMessage["headers"];
  body: IncomingMessage;
  /** ms from the forward call to the response headers. */
  ttfbMs: number;
}

export interface ForwardOptions {
  /** Event streams get `streamIdle` instead of `idle` as their body idle limit. */
  isEventStream(headers: IncomingMessage["headers"]): boolean;
}

type CodedError = Error & { code?: string };

const UNREACHABLE = new Set([
  "ECONNREFUSED",
  "ENOTFOUND",
  "EAI_AGAIN",
  "EHOSTUNREACH",
  "ENETUNREACH",
  "EADDRNOTAVAIL",
  "ECONNABORTED",
]);
const RESET = new Set(["ECONNRESET", "EPIPE", "ERR_STREAM_PREMATURE_CLOSE"]);
// RFC 9110 §9.2.2: idempotent requests may be retried automatically. Only body-less ones: the body is gone.
const RETRYABLE_METHODS = new Set(["GET", "HEAD", "OPTIONS"]);

function coded(code: string, message: string): CodedError {
  return Object.assign(new Error(message), { code });
}

export function toProxyError(err: CodedError, upstream: Upstream): ProxyError {
  const code = err.code ?? "";
  const t = upstream.config.timeouts;
  if (code === "UPSTREAM_CONNECT_TIMEOUT") {
    return new ProxyError(
      "upstream_timeout",
      `connecting to upstream "${upstream.name}" took over ${t.connect} ms`,
    );
  }
  if (code === "UPSTREAM_RESPONSE_TIMEOUT") {
    return new ProxyError(
      "upstream_timeout",
      `upstream "${upstream.name}" sent no response within ${t.response} ms`,
    );
  }
  if (UNREACHABLE.has(code)) {
    return new ProxyError("upstream_unreachable", `upstream "${upstream.name}" unreachable (${code})`);
  }
  if (RESET.has(code) || err.message === "socket hang up") {
    return new ProxyError("upstream_reset");
  }
  if (code.startsWith("HPE_"))
    return new ProxyError("upstream_bad_response", `invalid HTTP from upstream (${code})`);
  return new ProxyError(
    "upstream_unreachable",
    `upstream "${upstream.name}" failed (${code || err.message})`,
  );
}

function hasBody(req: IncomingMessage): boolean {
  const len = req.headers["content-length"];
  return req.headers["transfer-encoding"] !== undefined || (len !== undefined && len !== "0");
}

export class Forwarder {
  private readonly proxy: ProxyServer;

  constructor(private readonly opts: ForwardOptions) {
    this.proxy = createProxyServer({ xfwd: false, ws: true, selfHandleResponse: true });
    // Without a listener http-proxy-3 rethrows errors as uncaught exceptions; every call passes its own callback,
    // so anything arriving here belongs to a request already answered.
    this.proxy.on("error", () => {});
  }

  /** Forwards `req` to `upstream`; resolves with the response headers and a body stream. */
  forward(
    req: IncomingMessage,
    res: ServerResponse,
    upstream: Upstream,
    body: Readable | IncomingMessage = req,
  ): Promise<UpstreamResponse> {
    const started = performance.now();
    const t = upstream.config.timeouts;
    return new Promise<UpstreamResponse>((resolve, reject) => {
      let settled = false;
      let attempt = 0;
      let proxyReq: ClientRequest | undefined;
      let connectTimer: NodeJS.Timeout | undefined;

      const responseTimer =
        t.response > 0
          ? setTimeout(() => {
              const err = coded("UPSTREAM_RESPONSE_TIMEOUT", "response timeout");
              if (proxyReq) proxyReq.destroy(err);
              else fail(err);
            }, t.response)
          : undefined;

      const clearTimers = () => {
        if (responseTimer) clearTimeout(responseTimer);
        if (connectTimer) clearTimeout(connectTimer);
      };

      const fail = (err: CodedError) => {
        if (settled) return;
        settled = true;
        clearTimers();
        reject(toProxyError(err, upstream));
      };

      // The client went away before the upstream answered: http-proxy-3 destroys the upstream request.
      res.once("close", () => {
        if (!settled) {
          settled = true;
          clearTimers();
          proxyReq?.destroy();
          reject(new ProxyError("client_closed"));
        }
      });

      const onProxyReq = (cr: ClientRequest) => {
        proxyReq = cr;
        cr.once("socket", (socket: Socket) => {
          if (t.connect > 0 && socket.connecting) {
            connectTimer = setTimeout(
              () => cr.destroy(coded("UPSTREAM_CONNECT_TIMEOUT", "connect timeout")),
              t.connect,
            );
            socket.once("connect", () => clearTimeout(connectTimer));
          }
        });
        cr.once("response", (proxyRes: IncomingMessage) => {
          if (settled) {
            proxyRes.destroy();
            return;
          }
          settled = true;
          clearTimers();
          // Idle limit for the body phase; event streams may legitimately be silent for long (0 = none).
          const idle = this.opts.isEventStream(proxyRes.headers) ? t.streamIdle : t.idle;
          cr.setTimeout(
            idle,
            idle > 0 ? () => cr.destroy(coded("UPSTREAM_IDLE_TIMEOUT", "idle timeout")) : undefined,
          );
          resolve({
            status: proxyRes.statusCode ?? 502,
            statusMessage: proxyRes.statusMessage ?? "",
            headers: proxyRes.headers,
            body: proxyRes,
            ttfbMs: performance.now() - started,
          });
        });
      };

      const send = (body: Readable | IncomingMessage) => {
        attempt++;
        // http-proxy-3 pipes `buffer` into the upstream request synchronously; this is where we meet that request.
        const source: Pick<Stream, "pipe"> = {
          pipe: <T extends NodeJS.WritableStream>(dest: T): T => {
            onProxyReq(dest as unknown as ClientRequest);
            return body.pipe(dest);
          },
        };
        this.proxy.web(
          req,
          res,
          {
            target: upstream.url,
            agent: upstream.agent,
            changeOrigin: !upstream.config.preserveHost,
            buffer: source as Stream,
          },
          (err: CodedError) => {
            if (settled) {
              proxyReq?.destroy(err);
              return;
            }
            const retry =
              attempt === 1 &&
              proxyReq?.reusedSocket === true &&
              RESET.has(err.code ?? "") &&
              RETRYABLE_METHODS.has(req.method ?? "") &&
              !hasBody(req);
            if (retry) {
              proxyReq = undefined;
              send(Readable.from([]));
              return;
            }
            fail(err);
          },
        );
      };
      send(body);
    });
  }

  /**
   * A request cachegate makes on its own behalf (background refresh): plain node:http on the upstream's pool,
   * with the same timeouts and error codes as forwarded requests.
   */
  fetch(
    upstream: Upstream,
    init: {
      method: string;
      path: string;
      headers: Record<string, string | string[] | undefined>;
      body?: Buffer;
    },
  ): Promise<UpstreamResponse> {
    const started = performance.now();
    const t = upstream.config.timeouts;
    const mod = upstream.url.protocol === "https:" ? https : http;
    const base = upstream.url.pathname.replace(/\/$/, "");
    const headers = { ...init.headers };
    if (!upstream.config.preserveHost) headers.host = upstream.url.host;
    if (init.body) headers["content-length"] = String(init.body.length);
    return new Promise<UpstreamResponse>((resolve, reject) => {
      const cr = mod.request({
        protocol: upstream.url.protocol,
        hostname: upstream.url.hostname.replace(/^\[|\]$/g, ""),
        port: upstream.url.port || undefined,
        method: init.method,
        path: `${base}${init.path}`,
        headers,
        agent: upstream.agent,
      });
      let settled = false;
      const timer =
        t.response > 0
          ? setTimeout(() => cr.destroy(coded("UPSTREAM_RESPONSE_TIMEOUT", "response timeout")), t.response)
          : undefined;
      cr.once("response", (proxyRes: IncomingMessage) => {
        settled = true;
        if (timer) clearTimeout(timer);
        const idle = this.opts.isEventStream(proxyRes.headers) ? t.streamIdle : t.idle;
        cr.setTimeout(
          idle,
          idle > 0 ? () => cr.destroy(coded("UPSTREAM_IDLE_TIMEOUT", "idle timeout")) : undefined,
        );
        resolve({
          status: proxyRes.statusCode ?? 502,
          statusMessage: proxyRes.statusMessage ?? "",
          headers: proxyRes.headers,
          body: proxyRes,
          ttfbMs: performance.now() - started,
        });
      });
      cr.on("error", (err: CodedError) => {
        if (timer) clearTimeout(timer);
        if (!settled) {
          settled = true;
          reject(toProxyError(err, upstream));
        }
      });
      cr.end(init.body);
    });
  }

  /** Tunnels a WebSocket (or other Upgrade) handshake and its socket to the upstream. */
  upgrade(
    req: IncomingMessage,
    socket: Socket,
    head: Buffer,
    upstream: Upstream,
    onError: (err: Error) => void,
  ): void {
    this.proxy.ws(
      req,
      socket,
      head,
      { target: upstream.url, changeOrigin: !upstream.config.preserveHost },
      onError,
    );
  }

  close(): void {
    this.proxy.close();
  }
}
