// cachegate as production builds it (config through the real loader, the production logger and default metrics),
// on 127.0.0.1:0 with the admin port on 0, logging at info to /dev/null so the cost of the access log is counted.
import { loadConfig } from "../config/load.js";
import { logDestination } from "../proxy/observability/log-destination.js";
import { createLogger } from "../proxy/observability/logger.js";
import { startCachegate } from "../proxy/server.js";
import { applyV8Flags } from "../proxy/v8-flags.js";
import { announce, exitOnParentSignal, requireEnv } from "./child.js";

const upstream = requireEnv("BENCH_UPSTREAM_URL");
// As the CLI does (BENCH_V8_DEFAULTS=1: V8's defaults, to price the flags).
if (!process.env.BENCH_V8_DEFAULTS) applyV8Flags();

// An empty env: CACHEGATE_* variables of the shell that runs the benchmark must not change what is measured.
// BENCH_LOG_LEVEL: "info" (default: every access line is written) or e.g. "warn" (none), to price the access log.
const logLevel = process.env.BENCH_LOG_LEVEL || "info";
const loaded = loadConfig({ upstream, host: "127.0.0.1", port: "0", adminPort: "0", logLevel }, {});
// BENCH_CACHE_HITS=1: the catch-all route caches everything for 60 s, so the load measures memory-tier hits.
const forced = process.env.BENCH_CACHE_HITS
  ? {
      ...loaded.config,
      routes: loaded.config.routes.map((r) => ({
        ...r,
        cache: { ...r.cache, mode: "override" as const, ttl: 60_000 },
      })),
    }
  : loaded.config;
// BENCH_CACHE_OFF=1: the catch-all route does not cache at all (plain forwarding: no lookup, coalescing or store).
const routed = process.env.BENCH_CACHE_OFF
  ? { ...forced, routes: forced.routes.map((r) => ({ ...r, cache: { ...r.cache, enabled: false } })) }
  : forced;
// BENCH_REDIS_URL: the shared L2 tier, coalescing leases and purge fan-out (the stampede benchmark's pair).
const redisUrl = process.env.BENCH_REDIS_URL;
const withRedis = redisUrl ? { ...routed, redis: { ...routed.redis, url: redisUrl } } : routed;
// BENCH_BREAKER_OFF=1 / BENCH_CONCURRENCY_OFF=1: no circuit breaker / no concurrency limiter, to price each.
const breakerOff = Boolean(process.env.BENCH_BREAKER_OFF);
const concurrencyOff = Boolean(process.env.BENCH_CONCURRENCY_OFF);
const config = {
  ...withRedis,
  upstreams: withRedis.upstreams.map((u) => ({
    ...u,
    breaker: { ...u.breaker, enabled: u.breaker.enabled && !breakerOff },
    concurrency: { ...u.concurrency, enabled: u.concurrency.enabled && !concurrencyOff },
  })),
};
const logger = createLogger(config.log.level, logDestination("/dev/null"));
const gate = await startCachegate(config, { logger, defaultMetrics: true });

announce("cachegate", gate.port);
exitOnParentSignal(async () => {
  await gate.close(500);
  logger.flush();
});
