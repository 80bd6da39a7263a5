// Prometheus metrics (prom-client) on a registry of our own. Everything here listens to ProxyEvents;
// label values come from fixed sets (route and upstream names from the config, status classes, known methods).
import { Counter, collectDefaultMetrics, Histogram, Registry } from "prom-client";
import type { ProxyEvents } from "./events.js";

const KNOWN_METHODS = new Set(["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]);
const LATENCY_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60];

export function methodLabel(method: string): string {
  return KNOWN_METHODS.has(method) ? method : "OTHER";
}

export function statusClass(status: number): string {
  return status >= 100 && status < 600 ? `${Math.floor(status / 100)}xx` : "other";
}

export interface Metrics {
  registry: Registry;
}

export function createMetrics(events: ProxyEvents, opts: { defaultMetrics?: boolean } = {}): Metrics {
  const registry = new Registry();
  if (opts.defaultMetrics !== false) collectDefaultMetrics({ register: registry });

  const requests = new Counter({
    name: "cachegate_requests_total",
    help: "Requests answered, by route, method and status class.",
    labelNames: ["route", "method", "status_class"] as const,
    registers: [registry],
  });
  const duration = new Histogram({
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
  const upstreamTtfb = new Histogram({
    name: "cachegate_upstream_response_seconds",
    help: "Time until the upstream's response headers arrived, by upstream and status class.",
    labelNames: ["upstream", "status_class"] as const,
    buckets: LATENCY_BUCKETS,
    registers: [registry],
  });

  events.on("request:end", (s) => {
    requests.labels(s.route, methodLabel(s.method), statusClass(s.status)).inc();
    duration.labels(s.route, s.cache).observe(s.durationMs / 1000);
    if (s.aborted) aborted.labels(s.route).inc();
    if (s.error) errors.labels(s.route, s.error).inc();
  });
  events.on("upstream:response", (u) => {
    upstreamTtfb.labels(u.upstream, statusClass(u.status)).observe(u.ttfbMs / 1000);
  });
  return { registry };
}
