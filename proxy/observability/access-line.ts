// The access line encoded straight into the log destination's batch buffer: the same bytes as the string that
// logger.ts builds (a test holds the two to that), without building a ~300-character string out of twenty-odd
// pieces, flattening it and encoding it as UTF-8. Access lines are the largest single cost cachegate adds to a
// forwarded request (~7 % of its CPU in same-core pairs against a build without them); this encoding read +2.5 %
// against the string path, a weak reading at that size. Every piece is copied byte by byte; a piece that is not
// plain printable ASCII (a hostile path, an unusual client address) falls back to Buffer.write of its JSON form, so
// escaping and UTF-8 are exactly JSON.stringify's.
import type { RequestSummary } from "./events.js";

let cachedSecond = -1;
let cachedPrefix = "";
let cachedPrefixBytes = Buffer.alloc(0);
/** "2026-12-03T12:00:01." for the second `second` (ms since the epoch / 1000), formatted once per second. */
export function isoSecondPrefix(second: number): string {
  if (second !== cachedSecond) {
    cachedSecond = second;
    cachedPrefix = new Date(second * 1000).toISOString().slice(0, 20);
    cachedPrefixBytes = Buffer.from(cachedPrefix, "latin1");
  }
  return cachedPrefix;
}

/** isoSecondPrefix's text as bytes (made with it, once per second). */
function isoSecondPrefixBytes(second: number): Buffer {
  isoSecondPrefix(second);
  return cachedPrefixBytes;
}

const ZERO = 48;
const QUOTE = 34;

/**
 * String.prototype.charCodeAt, called as `charCodeAt.call(s, i)`. Request ids are slices of a flat string
 * (request-id.ts), and on a V8 sliced string the optimized `s.charCodeAt` went through the generic LoadIC for every
 * character: 56 LoadIC calls per request for the id and the time prefix, ~7.4k of the ~354k instructions of a
 * forwarded request (callgrind, caller attribution through --perf-basic-prof). A call through the function itself
 * has no property to look up.
 */
const charCodeAt = String.prototype.charCodeAt;

/** `s` as it is (identifiers cachegate validated), as UTF-8. */
function raw(buf: Buffer, o: number, s: string): number {
  const n = s.length;
  for (let i = 0; i < n; i++) {
    const c = charCodeAt.call(s, i);
    if (c > 0x7f) return o + buf.write(s, o, "utf8");
    buf[o + i] = c;
  }
  return o + n;
}

/** `s` as a JSON string: copied when it is printable ASCII without `"` or `\`, else JSON.stringify's form. */
function jsonString(buf: Buffer, o: number, s: string): number {
  const n = s.length;
  buf[o] = QUOTE;
  for (let i = 0; i < n; i++) {
    const c = charCodeAt.call(s, i);
    if (c < 0x20 || c > 0x7e || c === QUOTE || c === 0x5c) return o + buf.write(JSON.stringify(s), o, "utf8");
    buf[o + 1 + i] = c;
  }
  buf[o + 1 + n] = QUOTE;
  return o + n + 2;
}

/** A non-negative safe integer's decimal digits. */
function digits(buf: Buffer, o: number, n: number): number {
  let len = 1;
  for (let t = n; t >= 10; t = Math.floor(t / 10)) len++;
  for (let i = o + len - 1; i >= o; i--) {
    const q = Math.floor(n / 10);
    buf[i] = ZERO + (n - q * 10);
    n = q;
  }
  return o + len;
}

/** A number as `${n}` prints it. */
function number(buf: Buffer, o: number, n: number): number {
  return Number.isSafeInteger(n) && n >= 0 ? digits(buf, o, n) : raw(buf, o, String(n));
}

/** ms with µs precision, as logger.ts's `ms` prints it ("12", "0.5", "1.234"). */
function ms(buf: Buffer, o: number, n: number): number {
  const us = Math.round(n * 1000);
  if (!(us >= 0 && us < Number.MAX_SAFE_INTEGER)) return raw(buf, o, String(Math.round(n * 1000) / 1000));
  const whole = Math.floor(us / 1000);
  let frac = us - whole * 1000;
  o = digits(buf, o, whole);
  if (frac === 0) return o;
  buf[o++] = 46; // "."
  // Three digits, trailing zeros dropped.
  let len = 3;
  while (frac % 10 === 0) {
    frac /= 10;
    len--;
  }
  for (let i = o + len - 1; i >= o; i--) {
    buf[i] = ZERO + (frac % 10);
    frac = Math.floor(frac / 10);
  }
  return o + len;
}

/** Three digits, zero-padded (0 <= n < 1000). */
function pad3(buf: Buffer, o: number, n: number): number {
  buf[o] = ZERO + Math.floor(n / 100);
  buf[o + 1] = ZERO + (Math.floor(n / 10) % 10);
  buf[o + 2] = ZERO + (n % 10);
  return o + 3;
}

/**
 * The most bytes `encodeAccessLine` writes for `s` (with a logger prefix of `prefixBytes`): 6 per character of the
 * escaped fields (`\u001f`), 3 per character of the others (UTF-8), room for the fixed text and the numbers.
 */
export function accessLineBound(s: RequestSummary, prefixBytes: number): number {
  const idents =
    s.reqId.length +
    s.method.length +
    s.route.length +
    s.upstream.length +
    s.cache.length +
    (s.cacheTier?.length ?? 0) +
    (s.error?.length ?? 0);
  return 512 + prefixBytes + 3 * idents + 6 * (s.path.length + s.clientIp.length);
}

// The fixed text between the fields, as bytes.
const T = (s: string) => Buffer.from(s, "latin1");
const LEVEL_INFO = T('{"level":"info","time":"');
const LEVEL_WARN = T('{"level":"warn","time":"');
const TIME_END = T('Z"');
const REQ_ID = T(',"reqId":"');
const METHOD = T('","method":"');
const PATH = T('","path":');
const ROUTE = T(',"route":"');
const UPSTREAM = T('","upstream":"');
const STATUS = T('","status":');
const BYTES = T(',"bytes":');
const DURATION = T(',"durationMs":');
const UPSTREAM_MS = T(',"upstreamMs":');
const CACHE = T(',"cache":"');
const CACHE_TIER = T('","cacheTier":"');
const COALESCED = T('","coalesced":');
const CLIENT_IP = T(',"clientIp":');
const ERROR = T(',"error":"');
const ERROR_END = T('"');
const ABORTED = T(',"aborted":');
const TRUE = T("true");
const FALSE = T("false");
const END = T(',"msg":"request"}\n');

/**
 * `bytes` copied into `buf` at `o` by a plain loop. Buffer#copy checks its arguments and ends in
 * TypedArray#set, a call into the runtime: for the ~15 short pieces of a line that was most of the line's
 * instructions (`bench:instructions`, cachegate-forward: 370.2k → 346.3k per request with this and the segments
 * below; bare http-proxy-3 360.0k). CPU time per request did not move measurably (`bench:ab`, ±3 %).
 */
function put(buf: Buffer, o: number, bytes: Buffer): number {
  const n = bytes.length;
  for (let i = 0; i < n; i++) buf[o + i] = bytes[i] as number;
  return o + n;
}

/**
 * The fields that come from small fixed sets (method, route and upstream names, cache status) are written as
 * prebuilt segments with the text around them, one copy instead of three or four pieces. Bounded: a method is
 * whatever token a client sent, so past MAX_SEGMENTS values a field is written piece by piece, as before.
 */
const MAX_SEGMENTS = 256;
const NOTHING = Buffer.alloc(0);
const methodSegments = new Map<string, Buffer>();
const cacheSegments = new Map<string, Buffer>();
/** Per route name: the text up to the upstream's name, and the segment made for each upstream seen with it. */
const routeSegments = new Map<string, { before: Buffer; byUpstream: Map<string, Buffer> }>();

/** `before`, `value` (UTF-8, as `raw` writes it) and `after`: from `map`'s segment for `value`, made on first use. */
function field(
  buf: Buffer,
  o: number,
  map: Map<string, Buffer>,
  value: string,
  before: Buffer,
  after: Buffer,
): number {
  let seg = map.get(value);
  if (seg === undefined) {
    if (map.size >= MAX_SEGMENTS) return put(buf, raw(buf, put(buf, o, before), value), after);
    seg = Buffer.concat([before, Buffer.from(value, "utf8"), after]);
    map.set(value, seg);
  }
  return put(buf, o, seg);
}

/** `,"route":"<route>","upstream":"<upstream>","status":`. */
function routeField(buf: Buffer, o: number, route: string, upstream: string): number {
  let r = routeSegments.get(route);
  if (r === undefined) {
    if (routeSegments.size >= MAX_SEGMENTS) {
      o = raw(buf, put(buf, o, ROUTE), route);
      return put(buf, raw(buf, put(buf, o, UPSTREAM), upstream), STATUS);
    }
    r = { before: Buffer.concat([ROUTE, Buffer.from(route, "utf8"), UPSTREAM]), byUpstream: new Map() };
    routeSegments.set(route, r);
  }
  return field(buf, o, r.byUpstream, upstream, r.before, STATUS);
}

/**
 * Writes the access line of `s` into `buf` at `o` (room for `accessLineBound` bytes is the caller's to make);
 * returns the end offset. `prefix` is the logger's bindings as they follow the time (`,"service":"cachegate"`).
 */
export function encodeAccessLine(
  buf: Buffer,
  o: number,
  s: RequestSummary,
  warn: boolean,
  prefix: Buffer,
  now: number,
): number {
  const second = Math.floor(now / 1000);
  o = put(buf, o, warn ? LEVEL_WARN : LEVEL_INFO);
  o = put(buf, o, isoSecondPrefixBytes(second));
  o = pad3(buf, o, now - second * 1000);
  o = put(buf, o, TIME_END);
  o = put(buf, o, prefix);
  o = put(buf, o, REQ_ID);
  o = raw(buf, o, s.reqId);
  o = field(buf, o, methodSegments, s.method, METHOD, PATH);
  o = jsonString(buf, o, s.path);
  o = routeField(buf, o, s.route, s.upstream);
  o = number(buf, o, s.status);
  o = put(buf, o, BYTES);
  o = number(buf, o, s.bytes);
  o = put(buf, o, DURATION);
  o = ms(buf, o, s.durationMs);
  if (s.upstreamMs !== undefined) {
    o = put(buf, o, UPSTREAM_MS);
    o = ms(buf, o, s.upstreamMs);
  }
  o = field(buf, o, cacheSegments, s.cache, CACHE, NOTHING);
  if (s.cacheTier !== undefined) {
    o = put(buf, o, CACHE_TIER);
    o = raw(buf, o, s.cacheTier);
  }
  o = put(buf, o, COALESCED);
  o = put(buf, o, s.coalesced ? TRUE : FALSE);
  o = put(buf, o, CLIENT_IP);
  o = jsonString(buf, o, s.clientIp);
  if (s.error !== undefined) {
    o = put(buf, o, ERROR);
    o = raw(buf, o, s.error);
    o = put(buf, o, ERROR_END);
  }
  o = put(buf, o, ABORTED);
  o = put(buf, o, s.aborted ? TRUE : FALSE);
  return put(buf, o, END);
}
