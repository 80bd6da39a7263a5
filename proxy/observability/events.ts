// Lifecycle events. Metrics and the access log listen here; the request path never calls them directly.
import { EventEmitter } from "node:events";

/** What is known about a request once its response has ended (or the client went away). */
export interface RequestSummary {
  reqId: string;
  method: string;
  /** Path without the query string: queries can carry secrets. */
  path: string;
  route: string;
  upstream: string;
  status: number;
  bytes: number;
  durationMs: number;
  /** Time to the upstream's response headers, when the upstream was asked. */
  upstreamMs: number | undefined;
  cache: string;
  /** Which tier served a hit. */
  cacheTier: string | undefined;
  /** Served after waiting for another request's upstream fetch. */
  coalesced: boolean;
  clientIp: string;
  /** Set when cachegate produced an error response, or the exchange was cut. */
  error: string | undefined;
  /** The client connection closed before the response was complete. */
  aborted: boolean;
}

export interface UpstreamSummary {
  upstream: string;
  route: string;
  status: number;
  ttfbMs: number;
}

interface EventMap {
  "request:end": [RequestSummary];
  "upstream:response": [UpstreamSummary];
  "redis:error": [{ op: string }];
  "cache:refresh": [{ outcome: string }];
  "cache:purge": [{ memory: number; redis: number }];
  /** A request refused by its client limits (enforced), or that would have been (dry_run). */
  "ratelimit:limited": [{ route: string; mode: "enforced" | "dry_run" }];
  /** A rate-limit decision taken by the per-instance insurance limiter because Redis failed. */
  "ratelimit:fallback": [{ policy: string }];
}

export class ProxyEvents extends EventEmitter<EventMap> {}
