// Cache keys. One function builds the primary key from its parts; one derives the Vary variant. Keys are SHA-256
// hex digests of a canonical string, so no credential, body or header value ever appears in a key (or in Redis).
import crypto, { createHash } from "node:crypto";
import type { IncomingHttpHeaders } from "node:http";

export interface KeyParts {
  /** GET for GET and HEAD (HEAD is served from GET entries); POST for opted-in POST. */
  method: string;
  upstream: string;
  host: string;
  /** Path and query, query parameters sorted if the route asks for it. */
  target: string;
  /** Hash of the tenant header ("" when the route is shared or the header is absent). */
  tenant: string;
  /** Hash of the canonical JSON body ("" without a body). */
  body: string;
}

// crypto.hash (Node >= 20.12) digests in one call, without a Hash object per key: it runs on every cache lookup.
const oneShot = (crypto as { hash?: (alg: string, data: string | Buffer, enc: "hex") => string }).hash;

export const sha256: (data: string | Buffer) => string = oneShot
  ? (data) => oneShot("sha256", data, "hex")
  : (data) => createHash("sha256").update(data).digest("hex");

/**
 * Recently computed primary keys by their canonical string. Every cache candidate computes its key, and the same
 * URLs come back (that is what a cache is for): a Map lookup costs a fraction of a SHA-256 over the same string.
 * Bounded in entries and in the length of what is kept; when full it starts over (the hot keys come back at once).
 */
const KEY_MEMO_ENTRIES = 4096;
const KEY_MEMO_MAX_CHARS = 512;
let keyMemo = new Map<string, string>();

export function primaryKey(p: KeyParts): string {
  // Unit separators keep parts from running into each other ("a|b" + "c" ≠ "a" + "b|c").
  const canonical = `v1\x1f${p.method}\x1f${p.upstream}\x1f${p.host}\x1f${p.target}\x1f${p.tenant}\x1f${p.body}`;
  if (canonical.length > KEY_MEMO_MAX_CHARS) return sha256(canonical);
  let key = keyMemo.get(canonical);
  if (key === undefined) {
    key = sha256(canonical);
    if (keyMemo.size >= KEY_MEMO_ENTRIES) keyMemo = new Map();
    keyMemo.set(canonical, key);
  }
  return key;
}

/** "/p?b=2&a=1" → "/p?a=1&b=2" (stable sort: repeated names keep their relative order). */
export function sortQuery(target: string): string {
  const q = target.indexOf("?");
  if (q === -1 || q === target.length - 1) return target;
  const params = target.slice(q + 1).split("&");
  if (params.length < 2) return target;
  const keyed = params.map((p, i) => ({ p, name: p.split("=", 1)[0] ?? "", i }));
  keyed.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : a.i - b.i));
  return `${target.slice(0, q)}?${keyed.map((k) => k.p).join("&")}`;
}

/** The Vary field names of a response, lower-cased and sorted; ["*"] for `Vary: *`. */
export function varyNames(vary: string | string[] | undefined): string[] {
  if (!vary) return [];
  const names = (Array.isArray(vary) ? vary.join(",") : vary)
    .split(",")
    .map((v) => v.trim().toLowerCase())
    .filter(Boolean);
  if (names.includes("*")) return ["*"];
  return [...new Set(names)].sort();
}

/** The variant key: the primary key plus the request's values of the Vary fields (RFC 9111 §4.1). */
export function variantKey(primary: string, names: readonly string[], headers: IncomingHttpHeaders): string {
  if (names.length === 0) return primary;
  let s = "";
  for (const n of names) {
    const v = headers[n];
    // Normalise whitespace around commas (RFC 9111 §4.1 allows it); absent differs from empty.
    const norm =
      v === undefined ? "\x00" : (Array.isArray(v) ? v.join(",") : v).replace(/\s*,\s*/g, ",").trim();
    s += `${n}:${norm}\x1f`;
  }
  return `${primary}:${sha256(s).slice(0, 32)}`;
}

export class BodyKeyError extends Error {}

/**
 * Canonical JSON: object keys sorted recursively, no insignificant whitespace, strings and numbers as parsed.
 * `include` keeps only the listed field paths; `exclude` drops them (applied after include).
 */
export function canonicalJson(
  value: unknown,
  include: readonly string[] = [],
  exclude: readonly string[] = [],
): string {
  let v = value;
  if (include.length > 0) v = pick(v, include);
  if (exclude.length > 0) v = omit(v, exclude);
  return stringify(v);
}

function stringify(v: unknown): string {
  if (v === null || typeof v !== "object") return JSON.stringify(v) ?? "null";
  if (Array.isArray(v)) return `[${v.map(stringify).join(",")}]`;
  const obj = v as Record<string, unknown>;
  const keys = Object.keys(obj)
    .filter((k) => obj[k] !== undefined)
    .sort();
  return `{${keys.map((k) => `${JSON.stringify(k)}:${stringify(obj[k])}`).join(",")}}`;
}

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

function pick(value: unknown, paths: readonly string[]): unknown {
  const out: Record<string, unknown> = {};
  for (const path of paths) {
    const parts = path.split(".");
    let src: unknown = value;
    for (const p of parts) src = isPlainObject(src) ? src[p] : undefined;
    if (src === undefined) continue;
    let dst = out;
    parts.forEach((p, i) => {
      if (i === parts.length - 1) dst[p] = src;
      else {
        if (!isPlainObject(dst[p])) dst[p] = {};
        dst = dst[p] as Record<string, unknown>;
      }
    });
  }
  return out;
}

function omit(value: unknown, paths: readonly string[]): unknown {
  if (!isPlainObject(value)) return value;
  const copy = structuredClone(value);
  for (const path of paths) {
    const parts = path.split(".");
    let node: unknown = copy;
    for (const p of parts.slice(0, -1)) node = isPlainObject(node) ? node[p] : undefined;
    if (isPlainObject(node)) delete node[parts[parts.length - 1] as string];
  }
  return copy;
}

/** Parses a JSON body and returns the hash of its canonical form; throws BodyKeyError when it is not JSON. */
export function bodyHash(raw: Buffer, include: readonly string[], exclude: readonly string[]): string {
  let parsed: unknown;
  try {
    parsed = JSON.parse(raw.toString("utf8"));
  } catch {
    throw new BodyKeyError("request body is not JSON");
  }
  return sha256(canonicalJson(parsed, include, exclude));
}
