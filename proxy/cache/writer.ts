// Turns an upstream response into a stored entry: decide (policy.ts), tee the body while it streams to the client
// (bounded by maxEntryBytes), and store only a complete body. The client never waits for the cache.
import type { IncomingHttpHeaders, IncomingMessage, OutgoingHttpHeaders } from "node:http";
import { PassThrough, pipeline, type Readable } from "node:stream";
import type { RouteCacheConfig } from "../../config/schema.js";
import type { CacheEntry, StoredHeaders } from "./entry.js";
import { variantKey, varyNames } from "./key.js";
import { decideStore } from "./policy.js";
import type { FlightOutcome } from "./single-flight.js";
import type { TieredCache } from "./tiered-cache.js";

export interface CaptureRequest {
  rules: RouteCacheConfig;
  tenantScoped: boolean;
  route: string;
  method: string;
  /** Request target (path and query), for the policy. */
  target: string;
  /** "host/path?query", for purges. */
  url: string;
  primaryKey: string;
  requestHeaders: IncomingHttpHeaders;
  /** Purge tags beyond the route's (a plugin's). */
  tags?: readonly string[];
  /** A last veto on the complete body, or a replacement for it (plugins' shouldStore). */
  shouldStore?(status: number, headers: OutgoingHttpHeaders, body: Buffer): boolean | { body: Buffer };
}

export interface WriterOptions {
  jitter: number;
  tagHeaders: readonly string[];
  onStored?(entry: CacheEntry): void;
  onError?(err: unknown): void;
}

function storedHeaders(h: OutgoingHttpHeaders): StoredHeaders {
  const out: StoredHeaders = {};
  for (const k in h) {
    const v = h[k];
    if (v === undefined) continue;
    out[k] = Array.isArray(v) ? v.map(String) : String(v);
  }
  return out;
}

export function tagsOf(
  headers: OutgoingHttpHeaders,
  tagHeaders: readonly string[],
  routeTags: readonly string[],
): string[] {
  const tags = new Set(routeTags);
  for (const name of tagHeaders) {
    const v = headers[name];
    if (v === undefined) continue;
    for (const t of String(Array.isArray(v) ? v.join(",") : v).split(/[\s,]+/)) if (t) tags.add(t);
  }
  return [...tags];
}

/**
 * Nothing can make this response storable (no route ttl, no Cache-Control, no Expires, no Last-Modified for
 * heuristic freshness): callers skip the policy machinery, and the store stage skips building a capture request.
 */
export function withoutFreshness(rules: CaptureRequest["rules"], headers: OutgoingHttpHeaders): boolean {
  return (
    rules.ttl === 0 &&
    headers["cache-control"] === undefined &&
    headers.expires === undefined &&
    headers["last-modified"] === undefined
  );
}

export class CacheWriter {
  constructor(
    private readonly cache: TieredCache,
    private readonly opts: WriterOptions,
  ) {}

  /**
   * If the response may be stored, returns a body to send on in place of `body` that stores the entry once it
   * completes, and reports the outcome; otherwise reports "uncacheable" and returns undefined.
   */
  capture(
    req: CaptureRequest,
    status: number,
    headers: OutgoingHttpHeaders,
    body: Readable,
    done: (outcome: FlightOutcome) => void,
  ): Readable | undefined {
    if (withoutFreshness(req.rules, headers)) {
      done("uncacheable");
      return undefined;
    }
    const now = Date.now();
    const vary = varyNames(headers.vary as string | string[] | undefined);
    if (vary[0] === "*") {
      done("uncacheable");
      return undefined;
    }
    const decision = decideStore({
      rules: req.rules,
      tenantScoped: req.tenantScoped,
      method: req.method,
      url: req.target,
      requestHeaders: req.requestHeaders,
      status,
      responseHeaders: headers,
      jitter: this.opts.jitter,
      now,
    });
    const max = req.rules.maxEntryBytes;
    const declared = Number(headers["content-length"] ?? Number.NaN);
    if (!decision.store || declared > max) {
      done("uncacheable");
      return undefined;
    }
    const chunks: Buffer[] = [];
    let size = 0;
    let overflow = false;
    const tee = new PassThrough();
    tee.on("data", (c: Buffer) => {
      if (overflow) return;
      size += c.length;
      if (size > max) {
        overflow = true;
        chunks.length = 0;
        return;
      }
      chunks.push(c);
    });
    pipeline(body, tee, (err) => {
      // Only a complete body is stored: an aborted upstream, a cut client or an oversize body never is.
      const complete = !err && (body as Partial<IncomingMessage>).complete !== false;
      if (!complete) return done("failed");
      if (overflow) return done("uncacheable");
      let stored: Buffer = Buffer.concat(chunks, size);
      const verdict = req.shouldStore?.(status, headers, stored) ?? true;
      if (verdict === false) return done("uncacheable");
      if (typeof verdict === "object") stored = verdict.body;
      const entry: CacheEntry = {
        kind: "response",
        key: variantKey(req.primaryKey, vary, req.requestHeaders),
        primaryKey: req.primaryKey,
        url: req.url,
        route: req.route,
        status,
        headers: storedHeaders(headers),
        body: stored,
        storedAt: now,
        initialAgeMs: decision.initialAgeMs,
        freshMs: decision.freshMs,
        swrMs: decision.swrMs,
        sieMs: decision.sieMs,
        mustRevalidate: decision.mustRevalidate,
        tags: tagsOf(headers, this.opts.tagHeaders, [...req.rules.tags, ...(req.tags ?? [])]),
        policy: decision.policy,
      };
      // Framing is ours to set on every hit.
      delete entry.headers["content-length"];
      this.cache.store(entry, vary.length > 0 ? vary : undefined, now).then(
        () => {
          this.opts.onStored?.(entry);
          done("stored");
        },
        (e: unknown) => {
          this.opts.onError?.(e);
          done("failed");
        },
      );
    });
    return tee;
  }
}
