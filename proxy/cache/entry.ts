// What the cache stores, and its binary-safe wire format (used by the Redis tier; the memory tier keeps objects).
//
// Freshness is decided at store time (proxy/cache/policy.ts, with http-cache-semantics) and recorded as plain
// numbers, so a hit is judged without re-parsing Cache-Control on every request (RFC 9111 §4.2).

export const ENTRY_FORMAT_VERSION = 1;
const MAGIC_0 = 0x43; // "C"
const MAGIC_1 = 0x47; // "G"
const HEADER_BYTES = 2 + 1 + 4; // magic, version, meta length

export type StoredHeaders = Record<string, string | string[]>;

/** A stored response (one variant). */
export interface CacheEntry {
  kind: "response";
  /** Storage key (primary key plus the Vary variant, if any). */
  key: string;
  /** The primary key this variant belongs to (equal to `key` when the response has no Vary). */
  primaryKey: string;
  /** "host/path?query" of the request that produced it: purge by URL and by URL prefix match on it. */
  url: string;
  route: string;
  status: number;
  /** End-to-end response headers as received from the upstream (hop-by-hop already removed). */
  headers: StoredHeaders;
  body: Buffer;
  /** Epoch ms when the response was received (RFC 9111 §4.2.3 response_time). */
  storedAt: number;
  /** Age the response already had when received, ms (the corrected initial age, RFC 9111 §4.2.3). */
  initialAgeMs: number;
  /** Freshness lifetime in ms, jitter applied. */
  freshMs: number;
  /** stale-while-revalidate window after freshness ends, ms. */
  swrMs: number;
  /** stale-if-error window after freshness ends, ms. */
  sieMs: number;
  /** must-revalidate / proxy-revalidate / no-cache: never served stale, revalidated once no longer fresh. */
  mustRevalidate: boolean;
  /** Purge tags (from response headers and route config). */
  tags: string[];
  /** http-cache-semantics policy (toObject), used only to revalidate. */
  policy: unknown;
}

/** Marks a primary key whose responses vary: the variant key is derived from these request headers. */
export interface VaryRecord {
  kind: "vary";
  key: string;
  /** Lower-case request header names from the response's Vary, sorted. */
  vary: string[];
  storedAt: number;
}

export type StoredRecord = CacheEntry | VaryRecord;

export class EntryFormatError extends Error {
  readonly code = "cache_entry_invalid";
}

/** [ "C" "G" ][ version u8 ][ meta length u32 BE ][ meta JSON (UTF-8) ][ body bytes ] */
export function encodeRecord(record: StoredRecord): Buffer {
  const { body, ...meta } = record.kind === "response" ? record : { ...record, body: undefined };
  const metaBuf = Buffer.from(JSON.stringify(meta), "utf8");
  const bodyLen = body ? body.length : 0;
  const out = Buffer.allocUnsafe(HEADER_BYTES + metaBuf.length + bodyLen);
  out[0] = MAGIC_0;
  out[1] = MAGIC_1;
  out[2] = ENTRY_FORMAT_VERSION;
  out.writeUInt32BE(metaBuf.length, 3);
  metaBuf.copy(out, HEADER_BYTES);
  if (body) body.copy(out, HEADER_BYTES + metaBuf.length);
  return out;
}

export function decodeRecord(buf: Buffer): StoredRecord {
  if (buf.length < HEADER_BYTES || buf[0] !== MAGIC_0 || buf[1] !== MAGIC_1) {
    throw new EntryFormatError("not a cachegate cache record");
  }
  if (buf[2] !== ENTRY_FORMAT_VERSION) {
    throw new EntryFormatError(`cache record format ${buf[2]} is not ${ENTRY_FORMAT_VERSION}`);
  }
  const metaLen = buf.readUInt32BE(3);
  if (HEADER_BYTES + metaLen > buf.length) throw new EntryFormatError("truncated cache record");
  const meta = JSON.parse(buf.toString("utf8", HEADER_BYTES, HEADER_BYTES + metaLen)) as Record<
    string,
    unknown
  >;
  if (meta.kind === "vary") return meta as unknown as VaryRecord;
  if (meta.kind !== "response") throw new EntryFormatError("unknown cache record kind");
  // A copy, not a view: the record outlives the network buffer it came in.
  return { ...(meta as Omit<CacheEntry, "body">), body: Buffer.from(buf.subarray(HEADER_BYTES + metaLen)) };
}

/** Bytes a record costs in memory, for the memory tier's budget (body + a rough size of the metadata). */
export function recordSize(record: StoredRecord): number {
  if (record.kind === "vary") return 64 + record.key.length * 2 + record.vary.join().length * 2;
  let headerBytes = 0;
  for (const name in record.headers) {
    const v = record.headers[name];
    headerBytes += name.length + (Array.isArray(v) ? v.join().length : (v?.length ?? 0));
  }
  return (
    record.body.length +
    2 * (headerBytes + record.key.length + record.primaryKey.length + record.url.length) +
    512 // numbers, arrays, the policy object
  );
}

/** How long a record must be kept: freshness, plus stale windows, plus a revalidation grace when it has validators. */
export function storageTtlMs(entry: CacheEntry): number {
  const staleWindow = entry.mustRevalidate ? 0 : Math.max(entry.swrMs, entry.sieMs);
  const hasValidators = entry.headers.etag !== undefined || entry.headers["last-modified"] !== undefined;
  const revalidationGrace = hasValidators ? Math.min(entry.freshMs, 3_600_000) : 0; // ≤ 1 h to revalidate with 304
  return Math.max(0, entry.freshMs + staleWindow + revalidationGrace - entry.initialAgeMs);
}
