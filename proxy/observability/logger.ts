// Structured JSON logs (pino). Credentials never reach a log line: they are redacted at the logger, not by callers.
import pino, { type DestinationStream, type Logger } from "pino";
import type { LogLevel } from "../../config/schema.js";
import { accessLineBound, encodeAccessLine, isoSecondPrefix } from "./access-line.js";
import type { RequestSummary } from "./events.js";
import { BatchedDestination, logDestination } from "./log-destination.js";

export type { Logger };

export const REDACT_PATHS = [
  "req.headers.authorization",
  "req.headers.cookie",
  'req.headers["proxy-authorization"]',
  'req.headers["x-api-key"]',
  'res.headers["set-cookie"]',
  "headers.authorization",
  "headers.cookie",
  'headers["set-cookie"]',
];

export function createLogger(level: LogLevel, destination?: DestinationStream): Logger {
  return pino(
    {
      level,
      base: { service: "cachegate" },
      timestamp: pino.stdTimeFunctions.isoTime,
      redact: { paths: REDACT_PATHS, censor: "[REDACTED]" },
      formatters: { level: (label) => ({ level: label }) },
    },
    destination ?? logDestination(1),
  );
}

// Strings that need no JSON escaping: printable ASCII without `"` and `\`.
const PLAIN = /^[\x20\x21\x23-\x5b\x5d-\x7e]*$/;

function jsonString(s: string): string {
  return PLAIN.test(s) ? `"${s}"` : JSON.stringify(s);
}

/** Three digits, zero-padded (0 <= n < 1000). */
function pad3(n: number): string {
  return n < 10 ? `00${n}` : n < 100 ? `0${n}` : `${n}`;
}

/**
 * ms with µs precision, as `String(Math.round(n * 1000) / 1000)` prints it ("12", "0.5", "1.234"), from integers
 * only: formatting a fraction costs several times more than formatting small integers, which V8 caches.
 */
export function ms(n: number): string {
  const us = Math.round(n * 1000);
  if (!(us >= 0 && us < Number.MAX_SAFE_INTEGER)) return String(Math.round(n * 1000) / 1000);
  const whole = Math.floor(us / 1000);
  const frac = us - whole * 1000;
  if (frac === 0) return `${whole}`;
  if (frac % 100 === 0) return `${whole}.${frac / 100}`;
  if (frac % 10 === 0) {
    const f = frac / 10;
    return `${whole}.${f < 10 ? `0${f}` : f}`;
  }
  return `${whole}.${pad3(frac)}`;
}

/** `new Date().toISOString()`, with the date and time up to the second formatted once per second. */
export function isoNow(now = Date.now()): string {
  const second = Math.floor(now / 1000);
  return `${isoSecondPrefix(second)}${pad3(now - second * 1000)}Z`;
}

/**
 * The access line as a string (for destinations other than the batching one): the bytes `encodeAccessLine` writes.
 * Escaped: the path and the client address (X-Forwarded-For text from a trusted proxy). Written as they are:
 * identifiers already restricted to JSON-safe characters — request ids (REQUEST_ID_RE or a generated id), the method
 * (an HTTP token, checked by Node's parser), route and upstream names (config schema), cache statuses, tiers and
 * error codes (fixed sets).
 */
export function accessLineString(s: RequestSummary, warn: boolean, prefix: string, now: number): string {
  let line = `{"level":"${warn ? "warn" : "info"}","time":"${isoNow(now)}"${prefix},"reqId":"${s.reqId}"`;
  line += `,"method":"${s.method}","path":${jsonString(s.path)},"route":"${s.route}"`;
  line += `,"upstream":"${s.upstream}","status":${s.status},"bytes":${s.bytes},"durationMs":${ms(s.durationMs)}`;
  if (s.upstreamMs !== undefined) line += `,"upstreamMs":${ms(s.upstreamMs)}`;
  line += `,"cache":"${s.cache}"`;
  if (s.cacheTier !== undefined) line += `,"cacheTier":"${s.cacheTier}"`;
  line += `,"coalesced":${s.coalesced},"clientIp":${jsonString(s.clientIp)}`;
  if (s.error !== undefined) line += `,"error":"${s.error}"`;
  return `${line},"aborted":${s.aborted},"msg":"request"}\n`;
}

/**
 * The access log: one JSON line per request, in the same shape and on the same destination as the logger's own
 * lines, built by hand rather than through pino's serializer (it runs for every request). On the production
 * destination the line is encoded straight into the batch buffer (access-line.ts); elsewhere it is a string.
 * The summary holds no headers, so there is nothing to redact.
 */
export function createAccessLog(logger: Logger): (s: RequestSummary, warn: boolean) => void {
  const stream = (logger as unknown as Record<symbol, { write(line: string): void }>)[pino.symbols.streamSym];
  const bindings = JSON.stringify(logger.bindings()).slice(1, -1);
  const prefix = bindings ? `,${bindings}` : "";
  const prefixBytes = Buffer.from(prefix, "utf8");
  const batched = stream instanceof BatchedDestination ? stream : undefined;
  return (s, warn) => {
    if (!stream || !logger.isLevelEnabled(warn ? "warn" : "info")) return;
    const now = Date.now();
    if (batched) {
      const at = batched.reserve(accessLineBound(s, prefixBytes.length));
      if (at >= 0) return batched.commit(encodeAccessLine(batched.batch, at, s, warn, prefixBytes, now));
    }
    stream.write(accessLineString(s, warn, prefix, now));
  };
}
