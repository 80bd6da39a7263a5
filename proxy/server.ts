// Wiring: listeners (proxy port, admin port), the pipeline, and graceful drain.
import http, { type IncomingMessage, type ServerResponse } from "node:http";
import type { AddressInfo, Socket } from "node:net";
import type { Config } from "../config/schema.js";
import { createAdminServer } from "./admin/admin-server.js";
import { createPurgeHandler } from "./admin/purge.js";
import { createReloadHandler } from "./admin/reload.js";
import { type CacheService, createCacheService } from "./cache/cache-service.js";
import type { RequestContext, ResponsePlan } from "./context.js";
import { ERRORS, errorBody, ProxyError } from "./errors.js";
import { ProxyEvents, type RequestSummary } from "./observability/events.js";
import { createAccessLog, createLogger, type Logger } from "./observability/logger.js";
import { createMetrics, type Metrics } from "./observability/metrics.js";
import { observeResilience } from "./observability/resilience.js";
import { createBreakerStage } from "./pipeline/breaker.js";
import { createClassifyStage } from "./pipeline/classify.js";
import { createCoalesceStage } from "./pipeline/coalesce.js";
import { asProxyError, deliver, errorResponse, isEventStream } from "./pipeline/deliver.js";
import { createForwardStage } from "./pipeline/forward.js";
import { createLookupStage } from "./pipeline/lookup.js";
import { type Pipeline, runPipeline } from "./pipeline/pipeline.js";
import { createOnRequestStage, createPluginResponseStage } from "./pipeline/plugin-hooks.js";
import { createRateLimitStage } from "./pipeline/rate-limit.js";
import { createRouteStage } from "./pipeline/route.js";
import { createStoreStage, storeVeto } from "./pipeline/store.js";
import { PluginHost } from "./plugins.js";
import { RequestIds } from "./request-id.js";
import { BOTTLENECK_PATCH } from "./resilience/bottleneck.js";
import { Breakers } from "./resilience/breakers.js";
import { ClientLimiter } from "./resilience/client-limits.js";
import { UpstreamLimiters } from "./resilience/upstream-limiter.js";
import { Router } from "./routing.js";
import { setForwardedHeaders, TrustedProxies, unmapIPv4 } from "./upstream/forwarded.js";
import { Forwarder } from "./upstream/forwarder.js";
import { withoutRequestHopByHop } from "./upstream/hop-by-hop.js";

const REQUEST_ID_RE = /^[A-Za-z0-9._:-]{1,128}$/;
/** On a response: its request context (for the shared "close" handler). */
const kCtx = Symbol("cachegate.ctx");

/** Top-level keys a reload cannot change in a running process. */
const RESTART_ONLY = ["listen", "admin", "redis", "workers", "plugins", "cache"] as const;

interface Generation {
  config: Config;
  router: Router;
  trust: TrustedProxies;
  clientLimiter: ClientLimiter;
  breakers: Breakers;
  limiters: UpstreamLimiters;
  pipeline: Pipeline;
}

/** Keys whose change needs a restart, between the config a process started with and a new one. */
export function restartOnlyChanges(started: Config, next: Config): string[] {
  const keys: string[] = RESTART_ONLY.filter((k) => JSON.stringify(next[k]) !== JSON.stringify(started[k]));
  if (next.server.maxHeaderSize !== started.server.maxHeaderSize) keys.push("server.maxHeaderSize");
  return keys;
}

export interface ReloadResult {
  /** Changed keys that keep their running value until a restart. */
  restartRequired: string[];
}

export interface StartOptions {
  logger?: Logger;
  /** Collect Node's default process metrics (off in tests that start many instances). */
  defaultMetrics?: boolean;
  /** Re-reads the config (file, env, flags) for `POST /reload`; throws ConfigError when it is invalid. */
  reloadConfig?: () => Config;
}

export interface Cachegate {
  readonly port: number;
  readonly adminPort: number | undefined;
  readonly config: Config;
  readonly logger: Logger;
  readonly metrics: Metrics;
  readonly events: ProxyEvents;
  readonly cache: CacheService;
  /** Per-upstream circuit breakers and concurrency limiters (miss path only). */
  readonly breakers: Breakers;
  readonly limiters: UpstreamLimiters;
  /** The config in force (after reloads). */
  readonly current: Config;
  /** Applies a new, already validated config (see ReloadResult). */
  reload(next: Config): ReloadResult;
  /** Stops accepting, lets in-flight requests finish up to `deadlineMs`, then cuts what is left. */
  close(deadlineMs?: number): Promise<void>;
}

class Context implements RequestContext {
  url: string;
  path: string;
  clientIp: string;
  readonly peerIp: string;
  readonly method: string;
  route: RequestContext["route"] = undefined;
  upstream: RequestContext["upstream"] = undefined;
  cacheStatus = "BYPASS";
  cacheTier: RequestContext["cacheTier"] = undefined;
  cache: RequestContext["cache"] = undefined;
  upstreamBody: Buffer | undefined = undefined;
  upstreamBodyPrefix: Buffer[] | undefined = undefined;
  fromUpstream = false;
  upstreamResponseBody: RequestContext["upstreamResponseBody"] = undefined;
  sentBody: RequestContext["sentBody"] = undefined;
  clientConditionals: Record<string, string | undefined> = {};
  coalesced = false;
  responseHeaders: Record<string, string> | undefined = undefined;
  servedEntry: RequestContext["servedEntry"] = undefined;
  upstreamMs: number | undefined = undefined;
  errorCode: RequestContext["errorCode"] = undefined;
  /**
   * The client socket's bytesWritten when this request arrived (a kept-alive socket carries many responses): the
   * response's bytes are what it has written since. Kept here rather than on the socket: a property added to
   * sockets gives node's stream code one more hidden class per socket shape (see forwarder.ts, Exchange). A request
   * pipelined behind an unfinished response (HTTP/1.1 pipelining; nginx never does it) also counts that response's
   * remaining bytes.
   */
  readonly bytesAtStart: number;
  private childLog: Logger | undefined;

  constructor(
    readonly id: string,
    readonly req: IncomingMessage,
    readonly res: ServerResponse,
    readonly startedAt: number,
    private readonly rootLog: Logger,
  ) {
    this.url = req.url ?? "/";
    this.path = this.url;
    this.method = req.method ?? "GET";
    this.peerIp = unmapIPv4(req.socket.remoteAddress ?? "");
    this.clientIp = this.peerIp;
    this.bytesAtStart = req.socket.bytesWritten ?? 0;
  }

  get log(): Logger {
    this.childLog ??= this.rootLog.child({ reqId: this.id });
    return this.childLog;
  }
}

function listen(server: http.Server, port: number, host: string): Promise<number> {
  return new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(port, host, () => {
      server.off("error", reject);
      resolve((server.address() as AddressInfo).port);
    });
  });
}

function closeServer(server: http.Server): Promise<void> {
  return new Promise((resolve) => server.close(() => resolve()));
}

/** A raw HTTP error reply on a socket that has no ServerResponse (a refused upgrade). */
function rejectUpgrade(socket: Socket, err: ProxyError, id: string): void {
  if (!socket.writable) return void socket.destroy();
  const body = errorBody(err.code, err.message, id);
  socket.end(
    `HTTP/1.1 ${err.status} ${http.STATUS_CODES[err.status] ?? ""}\r\nconnection: close\r\n` +
      `content-type: application/json; charset=utf-8\r\ncontent-length: ${body.length}\r\nx-request-id: ${id}\r\n\r\n${body}`,
  );
}

export async function startCachegate(config: Config, opts: StartOptions = {}): Promise<Cachegate> {
  const logger = opts.logger ?? createLogger(config.log.level);
  const events = new ProxyEvents();
  const forwarder = new Forwarder({ isEventStream: (h) => isEventStream(h["content-type"]) });
  const cacheService = createCacheService(config, {
    logger,
    events,
    forwarder,
    trust: new TrustedProxies(config.trustProxy),
  });
  const metrics = createMetrics(events, { defaultMetrics: opts.defaultMetrics, cache: cacheService });
  const { cache } = cacheService;
  let plugins: PluginHost;
  try {
    plugins = await PluginHost.load(config.plugins, {
      logger,
      registry: metrics.registry,
      purge: (request) => cacheService.invalidator.purge(request),
    });
  } catch (err) {
    await cacheService.close();
    throw err;
  }
  cacheService.refresher.storeVeto = (ctx) => storeVeto(ctx, plugins);
  if (!BOTTLENECK_PATCH.applied) logger.warn({ reason: BOTTLENECK_PATCH.reason }, "bottleneck not patched");

  // Everything a config reload may replace: routes and upstreams, per-client limits, breakers, concurrency
  // limiters, and the stages built from them. The cache, plugins, metrics and listeners stay.
  const build = (cfg: Config): Generation => {
    const router = new Router(cfg);
    const trust = new TrustedProxies(cfg.trustProxy);
    const clientLimiter = new ClientLimiter(cfg, {
      redis: cacheService.redis,
      keyPrefix: cfg.redis.keyPrefix,
    });
    const breakers = new Breakers(cfg.upstreams);
    const limiters = new UpstreamLimiters(cfg.upstreams, {
      redis: cacheService.redis,
      keyPrefix: cfg.redis.keyPrefix,
    });
    const pipeline: Pipeline = {
      requestStages: [
        createRouteStage(router, trust),
        createRateLimitStage(clientLimiter, { events, logger }),
        createOnRequestStage(plugins),
        createClassifyStage(plugins),
        createLookupStage(cache, cacheService.refresher, cfg.cache.earlyRefreshBeta),
        createCoalesceStage(cache, cacheService.flights, cfg.cache.coalesceTimeout),
        createBreakerStage(breakers),
        createForwardStage(forwarder, trust, events, { breakers, limiters }),
      ],
      responseStages: [
        createStoreStage(cache, cacheService.writer, cacheService.invalidator, plugins),
        createPluginResponseStage(plugins),
      ],
    };
    return { config: cfg, router, trust, clientLimiter, breakers, limiters, pipeline };
  };
  const retire = async (g: Generation) => {
    g.router.close();
    g.clientLimiter.close();
    g.breakers.shutdown();
    await g.limiters.close();
  };
  let gen = build(config);
  const attachResilience = observeResilience(metrics.registry, logger, () => gen);
  attachResilience(gen.breakers, gen.limiters);

  let draining = false;
  let inFlight = 0;
  let drained: (() => void) | undefined;
  const upgraded = new Set<Socket>();
  const deliverOpts = { closing: () => draining };

  const requestIds = new RequestIds();
  // Called from onResponseClose rather than as a second "request:end" listener: with two listeners EventEmitter
  // copies its listener array on every emit.
  const accessLog = createAccessLog(logger);

  // One function for every response (`this` is the response, its context is on it): no closure per request.
  function onResponseClose(this: ServerResponse & { [kCtx]?: Context }): void {
    const ctx = this[kCtx] as Context;
    const socket = ctx.req.socket;
    inFlight--;
    // Whatever happened, a coalesced flight this request led must not leave followers waiting.
    ctx.cache?.flight?.release("failed");
    // An upstream body nobody reads any more (a stage replaced the response): drop it, which frees its socket
    // and its concurrency slot.
    const body = ctx.upstreamResponseBody;
    if (body && !body.readableEnded && body.readableFlowing !== true) body.destroy();
    // The client left before the end of a streamed response: stop reading it (which aborts the upstream request).
    const sent = ctx.sentBody;
    if (sent && !sent.readableEnded) sent.destroy();
    const aborted = !this.writableFinished && ctx.errorCode !== "upstream_aborted";
    // Bytes of this response: the socket's count now, less what it had when the request arrived.
    const bytes = (socket.bytesWritten ?? ctx.bytesAtStart) - ctx.bytesAtStart;
    const summary: RequestSummary = {
      reqId: ctx.id,
      method: ctx.method,
      path: ctx.path,
      route: ctx.route?.name ?? "none",
      upstream: ctx.upstream?.name ?? "none",
      status: aborted && !this.headersSent ? ERRORS.client_closed.status : this.statusCode,
      bytes,
      durationMs: performance.now() - ctx.startedAt,
      upstreamMs: ctx.upstreamMs,
      cache: ctx.cacheStatus,
      cacheTier: ctx.cacheTier,
      coalesced: ctx.coalesced,
      clientIp: ctx.clientIp,
      error: aborted ? "client_closed" : ctx.errorCode,
      aborted,
    };
    accessLog(summary, summary.error !== undefined && summary.status >= 500);
    events.emit("request:end", summary);
    if (draining && inFlight === 0) drained?.();
  }

  const onRequest = (req: IncomingMessage, res: ServerResponse) => {
    inFlight++;
    const startedAt = performance.now();
    const given = req.headers["x-request-id"];
    const id = typeof given === "string" && REQUEST_ID_RE.test(given) ? given : requestIds.next();
    const ctx = new Context(id, req, res, startedAt, logger);
    // http-proxy-3, node:http, plugins' streams and this server watch `close`: more than 10 listeners is no leak.
    res.setMaxListeners(20);
    (res as ServerResponse & { [kCtx]?: Context })[kCtx] = ctx;
    res.on("close", onResponseClose);

    // While draining, requests that still arrive on kept-alive connections are served, with `connection: close`.
    let plan: ReturnType<typeof runPipeline>;
    try {
      plan = runPipeline(gen.pipeline, ctx);
    } catch (err) {
      return failed(ctx, err);
    }
    if (plan instanceof Promise) {
      plan.then(
        (p) => send(ctx, p),
        (err: unknown) => failed(ctx, err),
      );
    } else send(ctx, plan);
  };
  const failed = (ctx: Context, err: unknown) => {
    const pe = asProxyError(err);
    if (pe.code === "internal_error") ctx.log.error({ err }, "request failed inside cachegate");
    if (pe.code === "client_closed") {
      ctx.errorCode = "client_closed";
      return;
    }
    send(ctx, errorResponse(ctx, pe));
  };
  // deliver() throwing (a bug, or node:http refusing a header) must cost this request only, never the process.
  const send = (ctx: Context, plan: ResponsePlan) => {
    try {
      deliver(ctx, plan, deliverOpts);
    } catch (err) {
      ctx.log.error({ err }, "response could not be written");
      if (plan.body && !Buffer.isBuffer(plan.body)) plan.body.destroy();
      if (!ctx.res.headersSent) {
        try {
          return deliver(ctx, errorResponse(ctx, new ProxyError("internal_error")), deliverOpts);
        } catch {
          // fall through: cut the connection
        }
      }
      ctx.errorCode = "internal_error";
      ctx.res.destroy();
    }
  };

  const server = http.createServer(
    {
      requestTimeout: config.server.requestTimeout,
      headersTimeout: config.server.headersTimeout,
      keepAliveTimeout: config.server.keepAliveTimeout,
      maxHeaderSize: config.server.maxHeaderSize,
      noDelay: true,
    },
    onRequest,
  );
  server.on("clientError", (err: NodeJS.ErrnoException, socket: Socket) => {
    // Malformed HTTP from a client: answer with a coded JSON error when the socket still allows it.
    if (!socket.writable || err.code === "ECONNRESET") return void socket.destroy();
    const code =
      err.code === "HPE_HEADER_OVERFLOW" ? 431 : err.code === "ERR_HTTP_REQUEST_TIMEOUT" ? 408 : 400;
    const body = errorBody("invalid_request", `malformed HTTP request (${err.code ?? "parse error"})`);
    socket.end(
      `HTTP/1.1 ${code} ${http.STATUS_CODES[code]}\r\nconnection: close\r\ncontent-type: application/json; charset=utf-8\r\n` +
        `content-length: ${body.length}\r\n\r\n${body}`,
    );
  });
  server.on("upgrade", (req: IncomingMessage, socket: Socket, head: Buffer) => {
    const given = req.headers["x-request-id"];
    const id = typeof given === "string" && REQUEST_ID_RE.test(given) ? given : requestIds.next();
    socket.on("error", () => socket.destroy());
    if (draining) return rejectUpgrade(socket, new ProxyError("shutting_down"), id);
    const path = (req.url ?? "/").split("?")[0] ?? "/";
    const { router, trust } = gen;
    const route = path.startsWith("/") ? router.match(req.method ?? "GET", path) : undefined;
    if (!route) return rejectUpgrade(socket, new ProxyError("route_not_found"), id);
    const peer = unmapIPv4(req.socket.remoteAddress ?? "");
    req.headers = withoutRequestHopByHop(req.headers, true);
    setForwardedHeaders(req.headers, peer, false, trust.has(peer));
    req.headers["x-request-id"] = id;
    upgraded.add(socket);
    socket.once("close", () => upgraded.delete(socket));
    forwarder.upgrade(req, socket, head, route.upstream, (err) => {
      logger.warn({ reqId: id, route: route.name, err: (err as Error).message }, "upgrade failed");
      socket.destroy();
    });
  });

  const port = await listen(server, config.listen.port, config.listen.host);
  let admin: http.Server | undefined;
  let adminPort: number | undefined;
  if (config.admin.enabled) {
    admin = createAdminServer({
      token: config.admin.token,
      registry: metrics.registry,
      ready: () => !draining,
      routes: {
        "POST /purge": createPurgeHandler(cacheService.invalidator, logger),
        ...(opts.reloadConfig
          ? { "POST /reload": createReloadHandler(opts.reloadConfig, (next) => reload(next), logger) }
          : {}),
      },
    });
    try {
      adminPort = await listen(admin, config.admin.port, config.admin.host);
    } catch (err) {
      await closeServer(server);
      throw err;
    }
  }
  logger.info(
    { port, adminPort, upstreams: config.upstreams.map((u) => `${u.name}=${u.url}`) },
    "cachegate listening",
  );

  /**
   * Applies a new config without dropping connections: requests already running finish on the generation they
   * started with (retired after `server.shutdownTimeout`); new requests use the new one. Keys that only take effect
   * at start (listeners, Redis, workers, plugins, the memory tier) keep their running values and are reported.
   */
  const reload = (next: Config): ReloadResult => {
    const restartRequired = restartOnlyChanges(config, next);
    const effective: Config = {
      ...next,
      ...Object.fromEntries(RESTART_ONLY.map((k) => [k, config[k]])),
    } as Config;
    const old = gen;
    gen = build(effective);
    attachResilience(gen.breakers, gen.limiters);
    logger.level = effective.log.level;
    server.requestTimeout = effective.server.requestTimeout;
    server.headersTimeout = effective.server.headersTimeout;
    server.keepAliveTimeout = effective.server.keepAliveTimeout;
    setTimeout(() => void retire(old), effective.server.shutdownTimeout).unref();
    if (restartRequired.length > 0) {
      logger.warn({ keys: restartRequired }, "config reloaded; these keys only take effect after a restart");
    }
    logger.info(
      { routes: effective.routes.length, upstreams: effective.upstreams.length },
      "config reloaded",
    );
    return { restartRequired };
  };

  let closing: Promise<void> | undefined;
  const close = (deadlineMs = config.server.shutdownTimeout): Promise<void> => {
    closing ??= (async () => {
      draining = true;
      const stopped = closeServer(server);
      server.closeIdleConnections();
      if (inFlight > 0) {
        await new Promise<void>((resolve) => {
          drained = resolve;
          setTimeout(resolve, deadlineMs).unref();
        });
      }
      server.closeAllConnections();
      for (const s of upgraded) s.destroy();
      await stopped;
      if (admin) {
        admin.closeAllConnections();
        await closeServer(admin);
      }
      forwarder.close();
      await retire(gen);
      await cacheService.close();
      await plugins.close();
      logger.info({ abandoned: inFlight }, "cachegate stopped");
    })();
    return closing;
  };

  return {
    port,
    adminPort,
    config,
    logger,
    metrics,
    events,
    cache: cacheService,
    get breakers() {
      return gen.breakers;
    },
    get limiters() {
      return gen.limiters;
    },
    get current() {
      return gen.config;
    },
    reload,
    close,
  };
}
