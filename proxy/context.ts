// The state one request carries through the pipeline. Stages read and write it; only `deliver` touches `res`.
import type { IncomingMessage, OutgoingHttpHeaders, ServerResponse } from "node:http";
import type { Readable } from "node:stream";
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
  /** ms from arrival until the upstream's response headers, if the upstream was asked. */
  upstreamMs: number | undefined;
  /** Error code when cachegate produced or cut the response. */
  errorCode: ErrorCode | "upstream_aborted" | undefined;
  /** A logger carrying the request id (created on first use). */
  readonly log: Logger;
}
