// Hop-by-hop header handling, RFC 9110 §7.6.1: Connection and the fields it names apply to one connection only,
// as do the fixed set below; a proxy removes them before forwarding in either direction.
import type { IncomingHttpHeaders, OutgoingHttpHeaders } from "node:http";

const HOP_BY_HOP = new Set([
  "connection",
  "keep-alive",
  "proxy-connection", // non-standard, still sent by old clients
  "te",
  "trailer",
  "transfer-encoding",
  "upgrade",
]);

function connectionTokens(value: string | string[] | undefined): string[] {
  if (!value) return [];
  const s = Array.isArray(value) ? value.join(",") : value;
  return s
    .split(",")
    .map((t) => t.trim().toLowerCase())
    .filter(Boolean);
}

/**
 * Strips hop-by-hop fields from an incoming request, in place, before http-proxy-3 copies them upstream.
 * Kept: `transfer-encoding: chunked` without a Content-Length, because Node re-frames the outgoing body from it.
 * Removed: `expect`, because Node's server has already answered 100-continue to the client.
 */
export function stripRequestHopByHop(headers: IncomingHttpHeaders, keepUpgrade: boolean): void {
  const named = connectionTokens(headers.connection);
  for (const name of named) {
    if (name === "upgrade" && keepUpgrade) continue;
    if (name !== "host") delete headers[name];
  }
  const chunked = headers["transfer-encoding"] !== undefined && headers["content-length"] === undefined;
  for (const name of HOP_BY_HOP) {
    if (keepUpgrade && (name === "upgrade" || name === "connection")) continue;
    if (name === "transfer-encoding" && chunked) continue;
    delete headers[name];
  }
  delete headers.expect;
}

/** End-to-end response headers: the upstream's headers minus hop-by-hop ones, ready for the client. */
export function endToEndResponseHeaders(headers: IncomingHttpHeaders): OutgoingHttpHeaders {
  const out: OutgoingHttpHeaders = {};
  const named = new Set(connectionTokens(headers.connection));
  for (const name in headers) {
    if (HOP_BY_HOP.has(name) || named.has(name)) continue;
    const v = headers[name];
    if (v !== undefined) out[name] = v;
  }
  return out;
}
