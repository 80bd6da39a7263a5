// The state one request carries through the pipeline. Stages read and write it; only `deliver` touches `res`.
import type { IncomingMessage, OutgoingHttpHeaders, ServerResponse } from "node:http";
import type { Readable } from "node:stream";
import type { RouteCacheConfig } from "../config/schema.js";
import type { CacheEntry } from "./cache/entry.js";
import type { Leader } from "./cache/single-flight.js";
import type { TierName } from "./cache/tier.js";
import type { ErrorCode } from "./errors.js";
import type { Logger } from "./observability/logger.js";
import type { CompiledRoute, Upstream } from "./routing.js";

/** A response on its way to the client: a buffered body (cache hits, errors) or a stream (upstream). */
export interface ResponsePlan {
  status: number;
  statusMessage?: string;
  /** Lower-case header names; hop-by-hop headers already removed. */
  headers: OutgoingHttpHeaders;
  body: Buffer | Readable | null;
}

/** What the cache stages know about a cacheable request. */
export interface CacheState {
  readonly rules: RouteCacheConfig;
  readonly primaryKey: string;
  /** The variant's storage key (the primary key until a vary record says otherwise). */
  key: string;
  vary: string[] | undefined;
  /** "host/path?query", what purges by URL match. */
  readonly url: string;
  /** Key on a route-declared tenant header, or shared: authorized responses become storable. */
  readonly tenantScoped: boolean;
  /** False when the response must not be stored (request no-store, HEAD). */
  storable: boolean;
  /** A stored entry that is not fresh: revalidate it, or stand in with it when the upstream fails. */
  stale: CacheEntry | undefined;
  /** This request leads the coalesced fetch for `key`. */
  flight: Leader | undefined;
  /** The request body, read to build the key (opted-in POST), replayed upstream. */
  body: Buffer | undefined;
  /** Purge tags a plugin adds to the stored entry. */
  tags: string[];
  /** How long followers wait for this request's fetch (a plugin's choice), else cache.coalesceTimeout. */
  coalesceTimeoutMs: number | undefined;
  /** A plugin's label for metrics (fixed small set). */
  kind: string | undefined;
}

export interface RequestContext {
  readonly id: string;
  readonly req: IncomingMessage;
  readonly res: ServerResponse;
  /** performance.now() at arrival. */
  readonly startedAt: number;
  readonly method: string;
  /** Path and query as received (origin-form), after validation. */
  url: string;
  /** Path without the query. */
  path: string;
  /** Client address: the socket peer, or from X-Forwarded-For when the peer is a trusted proxy. */
  clientIp: string;
  /** The directly connected peer, always the socket address. */
  peerIp: string;
  route: CompiledRoute | undefined;
  upstream: Upstream | undefined;
  /** X-Cache value for the response. */
  cacheStatus: string;
  /** Which tier served a hit. */
  cacheTier: TierName | undefined;
  cache: CacheState | undefined;
  /** The request body to send upstream instead of the request stream (it was read for the key). */
  upstreamBody: Buffer | undefined;
  /** The first chunks of a body too large to key: replayed upstream before the rest of the request stream. */
  upstreamBodyPrefix: Buffer[] | undefined;
  /** The client's own If-None-Match / If-Modified-Since, set aside while we revalidate with our validators. */
  clientConditionals: Record<string, string | undefined>;
  /** Headers a stage wants on whatever response is delivered (e.g. RateLimit), merged by deliver. */
  responseHeaders: Record<string, string> | undefined;
  /** The stored entry this response was served from (HIT, STALE, REVALIDATED). */
  servedEntry: CacheEntry | undefined;
  /** Served from the cache after waiting for another request's upstream fetch. */
  coalesced: boolean;
  /** The response came from the upstream (not the cache, not an error made here). */
  fromUpstream: boolean;
  /**
   * The upstream's response body, once forward has it. Whatever becomes of it (piped, teed, replaced by a stage),
   * it is destroyed when the client's exchange closes while nothing reads it.
   */
  upstreamResponseBody: Readable | undefined;
  /** The stream deliver is sending to the client (destroyed when the client leaves before its end). */
  sentBody: Readable | undefined;
  /** ms from arrival until the upstream's response headers, if the upstream was asked. */
  upstreamMs: number | undefined;
  /** Error code when cachegate produced or cut the response. */
  errorCode: ErrorCode | "upstream_aborted" | undefined;
  /** A logger carrying the request id (created on first use). */
  readonly log: Logger;
}
