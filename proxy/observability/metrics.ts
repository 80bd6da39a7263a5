// Prometheus metrics (prom-client) on a registry of our own. Everything here listens to ProxyEvents;
// label values come from fixed sets (route and upstream names from the config, status classes, known methods).
import { Counter, collectDefaultMetrics, Gauge, Registry } from "prom-client";
import { CellCounter, CellHistogram } from "./cells.js";
import type { ProxyEvents } from "./events.js";

const KNOWN_METHODS = new Set(["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]);
const LATENCY_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60];

export function methodLabel(method: string): string {
  return KNOWN_METHODS.has(method) ? method : "OTHER";
}

const STATUS_CLASSES = ["other", "1xx", "2xx", "3xx", "4xx", "5xx"];

export function statusClass(status: number): string {
  return status >= 100 && status < 600 ? (STATUS_CLASSES[Math.floor(status / 100)] as string) : "other";
}

export interface Metrics {
  registry: Registry;
}

/** What the metrics read on scrape (gauges), instead of being told on every change. */
export interface CacheStatsSource {
  memory: { stats(): { entries: number; bytes: number; evictions: number; rejectedTooLarge: number } };
  flights: { inFlight(): number; passing(): number };
}

/**
 * How often the event-loop delay histogram (`nodejs_eventloop_lag_*`) takes a sample. prom-client's default, 10 ms, is
 * a timer that wakes the process 100 times a second even when it is idle (measured: ~105 context switches/s against
 * ~5/s without it); on a shared machine every such wake-up disturbs the neighbours too. Each sample still measures
 * the delay exactly; 10 samples a second are plenty for the percentiles between two scrapes.
 */
export const EVENT_LOOP_SAMPLE_MS = 100;

export function createMetrics(
  events: ProxyEvents,
  opts: { defaultMetrics?: boolean; cache?: CacheStatsSource } = {},
): Metrics {
  const registry = new Registry();
  if (opts.defaultMetrics !== false) {
    collectDefaultMetrics({ register: registry, eventLoopMonitoringPrecision: EVENT_LOOP_SAMPLE_MS });
  }

  // Counted on every request: cells (see cells.ts), folded into prom-client on scrape.
  const requests = new CellCounter({
    name: "cachegate_requests_total",
    help: "Requests answered, by route, method and status class.",
    labelNames: ["route", "method", "status_class"] as const,
    registers: [registry],
  });
  const duration = new CellHistogram({
    name: "cachegate_request_duration_seconds",
    help: "Time from request arrival to the end of the response, by route and cache status.",
    labelNames: ["route", "cache"] as const,
    buckets: LATENCY_BUCKETS,
    registers: [registry],
  });
  const aborted = new Counter({
    name: "cachegate_client_aborts_total",
    help: "Requests whose client connection closed before the response was complete, by route.",
    labelNames: ["route"] as const,
    registers: [registry],
  });
  const errors = new Counter({
    name: "cachegate_errors_total",
    help: "Error responses produced by cachegate itself, by route and error code.",
    labelNames: ["route", "code"] as const,
    registers: [registry],
  });
  const upstreamTtfb = new CellHistogram({
    name: "cachegate_upstream_response_seconds",
    help: "Time until the upstream's response headers arrived, by upstream and status class.",
    labelNames: ["upstream", "status_class"] as const,
    buckets: LATENCY_BUCKETS,
    registers: [registry],
  });

  const cacheResults = new CellCounter({
    name: "cachegate_cache_requests_total",
    help: "Responses by route and X-Cache value (HIT, MISS, STALE, REVALIDATED, BYPASS).",
    labelNames: ["route", "cache"] as const,
    registers: [registry],
  });
  const tierHits = new CellCounter({
    name: "cachegate_cache_hits_total",
    help: "Responses served from the cache (HIT, STALE, REVALIDATED), by route and the tier that held the entry.",
    labelNames: ["route", "tier"] as const,
    registers: [registry],
  });
  const coalesced = new Counter({
    name: "cachegate_coalesced_total",
    help: "Requests answered from the cache after waiting for another request's upstream fetch, by route.",
    labelNames: ["route"] as const,
    registers: [registry],
  });
  const redisErrors = new Counter({
    name: "cachegate_redis_errors_total",
    help: "Redis failures (each treated as a miss or a no-op), by operation.",
    labelNames: ["op"] as const,
    registers: [registry],
  });
  const refreshes = new Counter({
    name: "cachegate_cache_refreshes_total",
    help: "Background refreshes (stale-while-revalidate, early refresh), by outcome.",
    labelNames: ["outcome"] as const,
    registers: [registry],
  });
  const rateLimited = new Counter({
    name: "cachegate_rate_limited_total",
    help: "Requests refused by per-client limits (mode enforced), or counted only (mode dry_run), by route.",
    labelNames: ["route", "mode"] as const,
    registers: [registry],
  });
  const rateLimitFallbacks = new Counter({
    name: "cachegate_rate_limit_fallback_total",
    help: "Rate-limit decisions taken by the per-instance insurance limiter because Redis failed.",
    registers: [registry],
  });
  const cache = opts.cache;
  if (cache) {
    new Gauge({
      name: "cachegate_memory_entries",
      help: "Records in the memory tier.",
      registers: [registry],
      collect() {
        this.set(cache.memory.stats().entries);
      },
    });
    new Gauge({
      name: "cachegate_memory_bytes",
      help: "Bytes held by the memory tier (bodies plus estimated metadata).",
      registers: [registry],
      collect() {
        this.set(cache.memory.stats().bytes);
      },
    });
    new Counter({
      name: "cachegate_memory_evictions_total",
      help: "Records evicted from the memory tier to stay within its entry and byte budgets.",
      registers: [registry],
      collect() {
        this.reset();
        this.inc(cache.memory.stats().evictions);
      },
    });
    new Gauge({
      name: "cachegate_coalesce_in_flight",
      help: "Keys whose upstream fetch this process is leading right now.",
      registers: [registry],
      collect() {
        this.set(cache.flights.inFlight());
      },
    });
    new Gauge({
      name: "cachegate_uncacheable_keys",
      help: "Keys whose last response was uncacheable: their misses go upstream without coalescing (hit-for-miss).",
      registers: [registry],
      collect() {
        this.set(cache.flights.passing());
      },
    });
  }

  events.on("redis:error", (e) => redisErrors.labels(e.op).inc());
  events.on("cache:refresh", (e) => refreshes.labels(e.outcome).inc());
  events.on("ratelimit:limited", (e) => rateLimited.labels(e.route, e.mode).inc());
  events.on("ratelimit:fallback", () => rateLimitFallbacks.inc());
  events.on("request:end", (s) => {
    requests.cell(s.route, methodLabel(s.method), statusClass(s.status)).pending++;
    cacheResults.cell(s.route, s.cache).pending++;
    if (s.cacheTier) tierHits.cell(s.route, s.cacheTier).pending++;
    if (s.coalesced) coalesced.labels(s.route).inc();
    duration.cell(s.route, s.cache).observe(s.durationMs / 1000);
    if (s.aborted) aborted.labels(s.route).inc();
    if (s.error) errors.labels(s.route, s.error).inc();
  });
  events.on("upstream:response", (u) => {
    upstreamTtfb.cell(u.upstream, statusClass(u.status)).observe(u.ttfbMs / 1000);
  });
  return { registry };
}
