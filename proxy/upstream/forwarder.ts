// Sends a request upstream through http-proxy-3 and hands back the upstream response as a stream
// (selfHandleResponse: the pipeline decides what reaches the client). Adds what the library lacks:
// connect/response/idle timeouts told apart from resets, coded errors, one retry of an idempotent request
// whose pooled keep-alive socket turned out dead, and client-abort propagation.
import http, { type ClientRequest, type IncomingMessage, type ServerResponse } from "node:http";
import https from "node:https";
import type { Socket } from "node:net";
import { Readable } from "node:stream";
import { createProxyServer, type ProxyServer } from "http-proxy-3";
import { ProxyError } from "../errors.js";
import type { Upstream } from "../routing.js";
import { COARSE_DEADLINE_MS, type DeadlineWatch, type IdleWatch, idleSweeper } from "./idle-sweeper.js";
import type { ListNode } from "./watch-list.js";

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

const kExchange = Symbol("cachegate.exchange");
type WithExchange = ServerResponse & { [kExchange]?: Exchange };

/**
 * One forwarded request. A class rather than a closure-per-callback: the forward path runs for every miss, and
 * http-proxy-3's server-wide events (`proxyReq`, `proxyRes`, `error`, `econnreset`) find it on the client's
 * response. On the response, not on either IncomingMessage: a property added to some IncomingMessages and not to
 * others gives node's own IncomingMessage and stream code (the `headers` getter, Readable's resume/read/
 * endReadable) more hidden classes than they can handle inline, and those sites went megamorphic (`--log-ic`:
 * polymorphic in bare http-proxy-3, megamorphic in cachegate, when the request and the upstream response were
 * tagged). The upstream response's listener is a closure for the same reason.
 * While the response body flows it is an IdleWatch: the sweeper enforces the body idle limit.
 */
class Exchange implements IdleWatch, DeadlineWatch {
  settled = false;
  attempt = 0;
  proxyReq: ClientRequest | undefined;
  private body: IncomingMessage | undefined;
  idleSocket!: Socket;
  idleLimitMs = 0;
  idleBytes = 0;
  idleSince = 0;
  private responseTimer: NodeJS.Timeout | undefined;
  /** The response-header deadline, when the sweeper watches it (long timeouts) instead of a timer. */
  deadline = Number.POSITIVE_INFINITY;
  deadlineNode: ListNode<DeadlineWatch> | undefined = undefined;
  idleNode: ListNode<IdleWatch> | undefined = undefined;
  private connectTimer: NodeJS.Timeout | undefined;
  /** Called once the response body has closed (ended, failed or destroyed). */
  onBodyClose: (() => void) | undefined = undefined;
  /** A response this returns an error for rejects with that error (the breaker's failures) instead of resolving. */
  rejectIf: ((r: UpstreamResponse) => Error | undefined) | undefined = undefined;
  private resolve!: (r: UpstreamResponse) => void;
  private reject!: (e: Error) => void;
  private readonly started = performance.now();

  constructor(
    private readonly forwarder: Forwarder,
    readonly req: IncomingMessage,
    readonly res: WithExchange,
    readonly upstream: Upstream,
  ) {}

  start(body: Readable | undefined): Promise<UpstreamResponse> {
    const promise = new Promise<UpstreamResponse>((resolve, reject) => {
      this.resolve = resolve;
      this.reject = reject;
    });
    // Response timeouts are long (5 min by default) and almost never fire: the sweeper's 250 ms tick watches those
    // instead of a timer per request; a short one (tests, strict operators) keeps an exact timer.
    const t = this.upstream.config.timeouts.response;
    if (t >= COARSE_DEADLINE_MS) {
      this.deadline = this.started + t;
      idleSweeper.watchDeadline(this);
    } else if (t > 0) {
      this.responseTimer = setTimeout(onResponseTimeout, t, this);
    }
    this.res[kExchange] = this;
    this.send(body);
    return promise;
  }

  send(body: Readable | undefined): void {
    this.attempt++;
    this.forwarder.web(this.req, this.res, this.upstream, body);
  }

  onProxyReq(cr: ClientRequest, socket: Socket): void {
    if (this.settled) {
      cr.destroy(); // answered already (timed out while queued for a pooled socket)
      return;
    }
    this.proxyReq = cr;
    const t = this.upstream.config.timeouts.connect;
    if (t > 0 && socket.connecting) {
      const timer = setTimeout(onConnectTimeout, t, this);
      this.connectTimer = timer;
      socket.once("connect", () => clearTimeout(timer));
    }
  }

  onResponse(proxyRes: IncomingMessage): void {
    const cr = this.proxyReq;
    if (this.settled) {
      proxyRes.destroy();
      return;
    }
    this.settled = true;
    this.clearTimers();
    // Idle limit for the body phase; event streams may legitimately be silent for long (0 = none).
    const t = this.upstream.config.timeouts;
    const idle = this.forwarder.isEventStream(proxyRes.headers) ? t.streamIdle : t.idle;
    const socket = cr?.socket;
    if (idle > 0 && socket) {
      this.body = proxyRes;
      this.idleSocket = socket;
      this.idleLimitMs = idle;
      idleSweeper.watch(this);
    }
    // One listener for everything that waits for the body to be over. "close" follows "end", an error and
    // destroy() alike (`on`: no once-wrapper for a one-shot event).
    if (this.body || this.onBodyClose) proxyRes.on("close", () => this.bodyClosed());
    const response: UpstreamResponse = {
      status: proxyRes.statusCode ?? 502,
      statusMessage: proxyRes.statusMessage ?? "",
      headers: proxyRes.headers,
      body: proxyRes,
      ttfbMs: performance.now() - this.started,
    };
    const failure = this.rejectIf?.(response);
    if (failure) this.reject(failure);
    else this.resolve(response);
  }

  onError(err: CodedError): void {
    if (this.settled) {
      this.proxyReq?.destroy(err);
      return;
    }
    const req = this.req;
    const retry =
      this.attempt === 1 &&
      this.proxyReq?.reusedSocket === true &&
      RESET.has(err.code ?? "") &&
      RETRYABLE_METHODS.has(req.method ?? "") &&
      !hasBody(req);
    if (retry) {
      // RFC 9110 §9.2.2: a body-less idempotent request met a pooled socket the upstream had closed; once more.
      this.proxyReq = undefined;
      this.send(Readable.from([]));
      return;
    }
    this.fail(toProxyError(err, this.upstream));
  }

  /** The client went away before the upstream answered (http-proxy-3 destroyed the upstream request). */
  onClientGone(): void {
    this.fail(new ProxyError("client_closed"));
  }

  private fail(err: ProxyError): void {
    if (this.settled) return;
    this.settled = true;
    this.clearTimers();
    this.reject(err);
  }

  private clearTimers(): void {
    if (this.deadline !== Number.POSITIVE_INFINITY) idleSweeper.unwatchDeadline(this);
    if (this.responseTimer) clearTimeout(this.responseTimer);
    if (this.connectTimer) clearTimeout(this.connectTimer);
  }

  bodyClosed(): void {
    if (this.body) idleSweeper.unwatch(this); // set only when the sweeper watches it
    this.onBodyClose?.();
  }

  /** The response-header timeout passed (the sweeper's deadline or the short-timeout timer). */
  deadlineExpired(): void {
    const err = coded("UPSTREAM_RESPONSE_TIMEOUT", "response timeout");
    if (this.proxyReq) this.proxyReq.destroy(err);
    else this.fail(toProxyError(err, this.upstream)); // still queued for a pooled socket
  }

  connectTimedOut(): void {
    this.proxyReq?.destroy(coded("UPSTREAM_CONNECT_TIMEOUT", "connect timeout"));
  }

  idleFinished(): boolean {
    const body = this.body;
    return body === undefined || body.readableEnded || body.destroyed;
  }

  idleExpired(): void {
    this.proxyReq?.destroy(coded("UPSTREAM_IDLE_TIMEOUT", "idle timeout"));
  }
}

// Module functions rather than per-exchange closures: the timers get their exchange as an argument.
function onResponseTimeout(ex: Exchange): void {
  ex.deadlineExpired();
}

function onConnectTimeout(ex: Exchange): void {
  ex.connectTimedOut();
}

export class Forwarder {
  /** For WebSocket upgrades: per-call options, no pooled agent (an upgraded socket leaves the pool anyway). */
  private readonly proxy: ProxyServer;
  /**
   * One http-proxy-3 server per upstream, its target, agent and Host rule fixed at creation: a call with options of
   * its own costs more (measured with callgrind: +15 % of a bare http-proxy-3 request) than one without.
   */
  private readonly proxies = new WeakMap<Upstream, ProxyServer>();

  constructor(private readonly opts: ForwardOptions) {
    this.proxy = createProxyServer({ xfwd: false, ws: true, selfHandleResponse: true });
    // Upgrade failures reach the callback given to ws(); http-proxy-3 also re-emits client socket errors here, and
    // without a listener it would rethrow them (server.ts destroys such sockets on their own "error").
    this.proxy.on("error", () => {});
  }

  isEventStream(headers: IncomingMessage["headers"]): boolean {
    return this.opts.isEventStream(headers);
  }

  private proxyFor(upstream: Upstream): ProxyServer {
    let proxy = this.proxies.get(upstream);
    if (!proxy) {
      proxy = createProxyServer({
        target: upstream.url,
        agent: upstream.agent,
        changeOrigin: !upstream.config.preserveHost,
        xfwd: false,
        selfHandleResponse: true,
        // http-proxy-3 parses the target's path with `new URL` on every request to join it to the request's; an
        // upstream URL without a path ("http://host:port", "http://host:port/"; the schema allows no query) has
        // nothing to join, and the joined path is the request's own either way.
        prependPath: upstream.url.pathname !== "/",
      });
      const ex = (res: unknown) => (res as WithExchange)[kExchange];
      proxy.on("proxyReq", (proxyReq, _req, res, _options, socket) => ex(res)?.onProxyReq(proxyReq, socket));
      proxy.on("proxyRes", (proxyRes, _req, res) => ex(res)?.onResponse(proxyRes));
      // Without an error listener http-proxy-3 rethrows errors as uncaught exceptions.
      proxy.on("error", (err, _req, res) => ex(res)?.onError(err as CodedError));
      proxy.on("econnreset", (_err, _req, res) => ex(res)?.onClientGone());
      this.proxies.set(upstream, proxy);
    }
    return proxy;
  }

  /** Sends `req` upstream; `body`, when given, replaces the request stream (http-proxy-3's `buffer`). */
  web(req: IncomingMessage, res: ServerResponse, upstream: Upstream, body: Readable | undefined): void {
    const proxy = this.proxyFor(upstream);
    if (body) proxy.web(req, res, { buffer: body });
    else proxy.web(req, res);
  }

  /**
   * Forwards `req` to `upstream`; resolves with the response headers and a body stream. `body` replaces the
   * request stream when a stage has already read it (a keyed POST body). `onBodyClose` runs once the response
   * body is over (ended, failed or destroyed); not at all when the call fails before a response. A response for
   * which `rejectIf` returns an error rejects with it (the body still flows: whoever catches it owns the response).
   */
  forward(
    req: IncomingMessage,
    res: ServerResponse,
    upstream: Upstream,
    body?: Readable,
    onBodyClose?: () => void,
    rejectIf?: (r: UpstreamResponse) => Error | undefined,
  ): Promise<UpstreamResponse> {
    const exchange = new Exchange(this, req, res, upstream);
    exchange.onBodyClose = onBodyClose;
    exchange.rejectIf = rejectIf;
    return exchange.start(body);
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
