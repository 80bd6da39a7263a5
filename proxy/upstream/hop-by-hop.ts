// Hop-by-hop header handling, RFC 9110 §7.6.1: Connection and the fields it names apply to one connection only,
// as do the fixed set below; a proxy removes them before forwarding in either direction.
import type { IncomingHttpHeaders, OutgoingHttpHeaders } from "node:http";

const HOP_BY_HOP_NAMES = [
  "connection",
  "keep-alive",
  "proxy-connection", // non-standard, still sent by old clients
  "te",
  "trailer",
  "transfer-encoding",
  "upgrade",
] as const;
const HOP_BY_HOP = new Set<string>(HOP_BY_HOP_NAMES);
const NONE: readonly string[] = [];

// The values nearly every message carries, answered without splitting.
const KEEP_ALIVE: readonly string[] = Object.freeze(["keep-alive"]);
const CLOSE: readonly string[] = Object.freeze(["close"]);

function connectionTokens(value: string | string[] | undefined): readonly string[] {
  if (!value) return NONE;
  if (value === "keep-alive") return KEEP_ALIVE;
  if (value === "close") return CLOSE;
  const s = Array.isArray(value) ? value.join(",") : value;
  return s
    .split(",")
    .map((t) => t.trim().toLowerCase())
    .filter(Boolean);
}

/**
 * The request's headers without its hop-by-hop fields, for http-proxy-3 to copy upstream: the same object when
 * there is nothing to remove (the usual case behind nginx), else a copy without them. A copy rather than `delete`:
 * deleting turns the object into a V8 dictionary, and every later read of it (here, in http-proxy-3's spread, in
 * node:http) pays for that.
 * Kept: `transfer-encoding: chunked` without a Content-Length, because Node re-frames the outgoing body from it.
 * Removed: `expect`, because Node's server has already answered 100-continue to the client.
 */
export function withoutRequestHopByHop(
  headers: IncomingHttpHeaders,
  keepUpgrade: boolean,
): IncomingHttpHeaders {
  const drop: string[] = [];
  for (const name of connectionTokens(headers.connection)) {
    if (name === "host" || (name === "upgrade" && keepUpgrade) || headers[name] === undefined) continue;
    drop.push(name);
  }
  const chunked = headers["transfer-encoding"] !== undefined && headers["content-length"] === undefined;
  for (const name of HOP_BY_HOP_NAMES) {
    if (headers[name] === undefined) continue;
    if (keepUpgrade && (name === "upgrade" || name === "connection")) continue;
    if (name === "transfer-encoding" && chunked) continue;
    drop.push(name);
  }
  if (headers.expect !== undefined) drop.push("expect");
  if (drop.length === 0) return headers;
  const out: IncomingHttpHeaders = {};
  for (const name in headers) if (!drop.includes(name)) out[name] = headers[name];
  return out;
}

/** End-to-end response headers: the upstream's headers minus hop-by-hop ones, ready for the client. */
export function endToEndResponseHeaders(headers: IncomingHttpHeaders): OutgoingHttpHeaders {
  const out: OutgoingHttpHeaders = {};
  const named = connectionTokens(headers.connection);
  for (const name in headers) {
    if (HOP_BY_HOP.has(name) || named.includes(name)) continue;
    const v = headers[name];
    if (v !== undefined) out[name] = v;
  }
  return out;
}
