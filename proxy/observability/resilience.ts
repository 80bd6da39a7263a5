// Metrics and log lines for the circuit breakers and upstream limiters. Like metrics.ts, this only listens: the
// breakers and limiters emit their transitions and refusals, and the gauges read their state on scrape.
import type { Logger } from "pino";
import { Counter, Gauge, type Registry } from "prom-client";
import { BREAKER_STATE_VALUE, type Breakers } from "../resilience/breakers.js";
import type { LimiterStats, UpstreamLimiters } from "../resilience/upstream-limiter.js";

/**
 * Registers the metrics once; the gauges read whichever breakers and limiters `current()` returns (a config reload
 * replaces them). Returns `attach`, which subscribes the counters and log lines to a new set's events.
 */
export function observeResilience(
  registry: Registry,
  logger: Logger,
  current: () => { breakers: Breakers; limiters: UpstreamLimiters },
): (breakers: Breakers, limiters: UpstreamLimiters) => void {
  new Gauge({
    name: "cachegate_breaker_state",
    help: "Circuit breaker state per upstream: 0 closed, 1 half-open, 2 open.",
    labelNames: ["upstream"] as const,
    registers: [registry],
    collect() {
      this.reset();
      for (const b of current().breakers) this.labels(b.upstream).set(BREAKER_STATE_VALUE[b.state()]);
    },
  });
  const transitions = new Counter({
    name: "cachegate_breaker_transitions_total",
    help: "Circuit breaker state changes per upstream, by the state entered (open, half-open, closed).",
    labelNames: ["upstream", "to"] as const,
    registers: [registry],
  });
  const rejected = new Counter({
    name: "cachegate_upstream_rejected_total",
    help: "Requests refused with 503 upstream_overloaded, by upstream and reason (queue_full, wait_timeout).",
    labelNames: ["upstream", "reason"] as const,
    registers: [registry],
  });
  const gauge = (name: string, help: string, read: (s: LimiterStats) => number | undefined) =>
    new Gauge({
      name,
      help,
      labelNames: ["upstream"] as const,
      registers: [registry],
      collect() {
        this.reset();
        for (const l of current().limiters) {
          const v = read(l.stats());
          if (v !== undefined) this.labels(l.upstream).set(v);
        }
      },
    });
  gauge(
    "cachegate_upstream_concurrency_limit",
    "Current concurrency limit per upstream (adaptive within [min, max]).",
    (s) => s.limit,
  );
  gauge(
    "cachegate_upstream_in_flight",
    "Upstream requests holding a slot (until their body ends).",
    (s) => s.inFlight,
  );
  gauge("cachegate_upstream_queued", "Requests waiting for an upstream slot.", (s) => s.queued);
  gauge(
    "cachegate_upstream_latency_baseline_seconds",
    "The adaptive limiter's no-load time-to-first-byte estimate per upstream.",
    (s) => (s.baselineMs === undefined ? undefined : s.baselineMs / 1000),
  );

  const attach = (breakers: Breakers, limiters: UpstreamLimiters): void => {
    breakers.on("transition", (t) => {
      transitions.labels(t.upstream, t.to).inc();
      const b = breakers.get(t.upstream);
      if (t.to === "open") {
        logger.warn(
          { upstream: t.upstream, from: t.from, retryAfterS: b?.retryAfterSeconds() },
          "circuit breaker open: requests to this upstream fail fast (stale copy or 503) until a probe succeeds",
        );
      } else if (t.to === "closed") {
        logger.info({ upstream: t.upstream, from: t.from }, "circuit breaker closed: upstream recovered");
      } else {
        logger.info(
          { upstream: t.upstream, from: t.from },
          "circuit breaker half-open: one probe request allowed",
        );
      }
    });

    for (const l of limiters) {
      rejected.labels(l.upstream, "queue_full").inc(0);
      rejected.labels(l.upstream, "wait_timeout").inc(0);
    }
    limiters.on("rejected", (r) => rejected.labels(r.upstream, r.reason).inc());
    limiters.on("mode", (m) => {
      if (m.shared) logger.info({ upstream: m.upstream }, "upstream concurrency limit shared through redis");
      else {
        logger.warn(
          { upstream: m.upstream, reason: m.reason },
          "redis unusable for the shared concurrency limit: enforcing it in this instance alone",
        );
      }
    });
  };
  return attach;
}
