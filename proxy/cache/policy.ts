// HTTP caching decisions (RFC 9111) for a shared cache. Storability and freshness lifetime come from
// http-cache-semantics at store time; route rules are applied by adjusting the headers the library sees.
// Serving decisions (freshness, request directives, stale windows) are ours: cheap numbers per hit, and free of
// the library's must-revalidate regression (it forces revalidation of *fresh* must-revalidate responses).
import type { IncomingHttpHeaders, OutgoingHttpHeaders } from "node:http";
import CachePolicy from "http-cache-semantics";
import type { RouteCacheConfig } from "../../config/schema.js";
import type { CacheEntry, StoredHeaders } from "./entry.js";

export type CacheControl = Map<string, string | true>;

/** Parses a Cache-Control field (RFC 9111 §5.2): lower-case directive names, quotes removed from values. */
export function parseCacheControl(value: string | string[] | undefined): CacheControl {
  const cc: CacheControl = new Map();
  if (!value) return cc;
  const s = Array.isArray(value) ? value.join(",") : value;
  for (const part of s.split(",")) {
    const eq = part.indexOf("=");
    const name = (eq === -1 ? part : part.slice(0, eq)).trim().toLowerCase();
    if (!name) continue;
    const v =
      eq === -1
        ? true
        : part
            .slice(eq + 1)
            .trim()
            .replace(/^"(.*)"$/, "$1");
    if (!cc.has(name)) cc.set(name, v);
  }
  return cc;
}

function seconds(cc: CacheControl, name: string): number | undefined {
  const v = cc.get(name);
  if (v === undefined) return undefined;
  const n = v === true ? Number.NaN : Number.parseInt(v, 10);
  return Number.isFinite(n) && n >= 0 ? n : 0;
}

function formatCacheControl(cc: CacheControl): string {
  return [...cc].map(([k, v]) => (v === true ? k : `${k}=${v}`)).join(", ");
}

export interface StoreInput {
  rules: RouteCacheConfig;
  /** Whether the key carries a tenant scope declared by the route (tenantHeader) or the route is shared. */
  tenantScoped: boolean;
  method: string;
  url: string;
  requestHeaders: IncomingHttpHeaders;
  status: number;
  responseHeaders: OutgoingHttpHeaders | IncomingHttpHeaders;
  jitter: number;
  now: number;
  random?: () => number;
}

export type StoreDecision =
  | { store: false; reason: string }
  | {
      store: true;
      freshMs: number;
      swrMs: number;
      sieMs: number;
      mustRevalidate: boolean;
      initialAgeMs: number;
      policy: unknown;
    };

function toPolicyHeaders(h: OutgoingHttpHeaders | IncomingHttpHeaders): Record<string, string> {
  const out: Record<string, string> = {};
  for (const k in h) {
    const v = h[k];
    if (v === undefined) continue;
    out[k] = Array.isArray(v) ? v.join(", ") : String(v);
  }
  return out;
}

/** Decides whether a response may be stored and, if so, for how long it is fresh and may be served stale. */
export function decideStore(input: StoreInput): StoreDecision {
  const { rules, status } = input;
  const reqCC = parseCacheControl(input.requestHeaders["cache-control"]);
  if (reqCC.has("no-store")) return { store: false, reason: "request no-store" }; // RFC 9111 §5.2.1.5
  const resHeaders = toPolicyHeaders(input.responseHeaders);
  const cc = parseCacheControl(resHeaders["cache-control"]);
  if (cc.has("no-store")) return { store: false, reason: "no-store" };
  if (cc.has("private")) return { store: false, reason: "private" }; // shared cache, RFC 9111 §5.2.2.7
  if (resHeaders["set-cookie"] !== undefined && !rules.allowSetCookie)
    return { store: false, reason: "set-cookie" };
  if (status === 206) return { store: false, reason: "partial content" };

  const ruleStatus = rules.statuses.includes(status);
  const explicit = cc.has("s-maxage") || cc.has("max-age") || resHeaders.expires !== undefined;
  const ttlS = Math.floor(rules.ttl / 1000);
  if (rules.mode === "override") {
    if (!ruleStatus) return { store: false, reason: "status not configured" };
    for (const d of ["max-age", "s-maxage", "no-cache", "must-revalidate", "proxy-revalidate"]) cc.delete(d);
    cc.set("s-maxage", String(ttlS));
    delete resHeaders.expires;
  } else if (!explicit && ttlS > 0 && ruleStatus && !cc.has("no-cache")) {
    cc.set("s-maxage", String(ttlS)); // fills in for upstreams that send no freshness at all (Dify)
  }
  if (rules.staleWhileRevalidate > 0 && !cc.has("stale-while-revalidate")) {
    cc.set("stale-while-revalidate", String(Math.floor(rules.staleWhileRevalidate / 1000)));
  }
  if (rules.staleIfError > 0 && !cc.has("stale-if-error")) {
    cc.set("stale-if-error", String(Math.floor(rules.staleIfError / 1000)));
  }
  // The library gives proxy-revalidate a lifetime of 0 in a shared cache; RFC 9111 §5.2.2.8 only forbids
  // serving it stale. We record that ourselves (mustRevalidate) and hide the directive from the library.
  const mustRevalidate = cc.has("must-revalidate") || cc.has("proxy-revalidate") || cc.has("no-cache");
  cc.delete("proxy-revalidate");
  resHeaders["cache-control"] = formatCacheControl(cc);
  if (rules.allowSetCookie) delete resHeaders["set-cookie"];

  const reqHeaders = toPolicyHeaders(input.requestHeaders);
  // A route that scopes its keys per tenant (or declares itself shared) makes authorized responses storable:
  // they can only ever be served to the same tenant (RFC 9111 §3.5 is about not leaking them to others).
  if (input.tenantScoped) delete reqHeaders.authorization;
  // POST caching is opt-in API caching keyed by the body; judge the response as for a GET of the same resource.
  const method = input.method === "HEAD" || input.method === "POST" ? "GET" : input.method;
  const policy = new CachePolicy(
    { method, url: input.url, headers: reqHeaders },
    { status, headers: resHeaders },
    { shared: true, cacheHeuristic: 0.1, immutableMinTimeToLive: 24 * 3600 * 1000 },
  );
  if (!policy.storable()) return { store: false, reason: "not storable" };
  const maxAgeS = policy.maxAge();
  if (maxAgeS <= 0) return { store: false, reason: "no freshness lifetime" };
  const rand = input.random ?? Math.random;
  const factor = 1 + (rand() * 2 - 1) * input.jitter;
  return {
    store: true,
    freshMs: Math.max(1, Math.round(maxAgeS * 1000 * factor)),
    swrMs: (seconds(cc, "stale-while-revalidate") ?? 0) * 1000,
    sieMs: (seconds(cc, "stale-if-error") ?? 0) * 1000,
    mustRevalidate,
    initialAgeMs: Math.round(policy.age() * 1000),
    policy: policy.toObject(),
  };
}

export type Freshness =
  /** Serve it. */
  | "fresh"
  /** Stale, but the client accepts it (max-stale): serve, no refresh needed. */
  | "stale-acceptable"
  /** Stale inside stale-while-revalidate: serve and refresh in the background. */
  | "stale-while-revalidate"
  /** Must be revalidated before use (stale-if-error may still save it if the upstream fails). */
  | "revalidate";

export function currentAgeMs(entry: CacheEntry, now: number): number {
  return entry.initialAgeMs + Math.max(0, now - entry.storedAt);
}

/** RFC 9111 §4.2 plus request directives §5.2.1, decided from the entry's numbers. */
export function evaluateFreshness(
  entry: CacheEntry,
  requestCC: CacheControl,
  pragmaNoCache: boolean,
  now: number,
): Freshness {
  if (requestCC.has("no-cache") || (pragmaNoCache && requestCC.size === 0)) return "revalidate";
  const age = currentAgeMs(entry, now);
  const maxAge = seconds(requestCC, "max-age");
  if (maxAge !== undefined && age > maxAge * 1000) return "revalidate";
  const minFresh = seconds(requestCC, "min-fresh");
  if (minFresh !== undefined && entry.freshMs - age < minFresh * 1000) return "revalidate";
  if (age < entry.freshMs) return "fresh";
  if (entry.mustRevalidate) return "revalidate"; // RFC 9111 §5.2.2.2: never stale without validation
  const overdue = age - entry.freshMs;
  const maxStale = requestCC.get("max-stale");
  if (
    maxStale === true ||
    (maxStale !== undefined && overdue <= (seconds(requestCC, "max-stale") ?? 0) * 1000)
  ) {
    return "stale-acceptable";
  }
  if (overdue < entry.swrMs) return "stale-while-revalidate";
  return "revalidate";
}

/** Whether a stale entry may stand in for a failed upstream (RFC 5861 §4, stale-if-error). */
export function usableOnError(entry: CacheEntry, now: number): boolean {
  if (entry.mustRevalidate) return false;
  return currentAgeMs(entry, now) < entry.freshMs + entry.sieMs;
}

/** Probabilistic early refresh (XFetch, Vattani et al.): true when a fresh entry should be refreshed now. */
export function shouldRefreshEarly(
  entry: CacheEntry,
  beta: number,
  now: number,
  random = Math.random,
): boolean {
  if (beta <= 0) return false;
  const remaining = entry.freshMs - currentAgeMs(entry, now);
  // Recompute cost is unknown per entry: use 5% of the lifetime (bounded) as the expected recompute time.
  const delta = Math.min(Math.max(entry.freshMs * 0.05, 10), 5_000);
  return remaining > 0 && -delta * beta * Math.log(random()) >= remaining;
}

/**
 * Whether the client's conditional headers match the entry (RFC 9110 §13.1.2, §13.1.3): If-None-Match by weak
 * comparison, else If-Modified-Since. Only for GET/HEAD.
 */
export function notModified(entryHeaders: StoredHeaders, req: IncomingHttpHeaders): boolean {
  const inm = req["if-none-match"];
  if (inm !== undefined) {
    const etag = entryHeaders.etag;
    if (typeof etag !== "string") return false;
    if (inm.trim() === "*") return true;
    const weak = (t: string) => t.trim().replace(/^W\//, "");
    return inm.split(",").some((t) => weak(t) === weak(etag));
  }
  const ims = req["if-modified-since"];
  const lm = entryHeaders["last-modified"];
  if (ims !== undefined && typeof lm === "string") {
    const since = Date.parse(ims);
    const modified = Date.parse(lm);
    return Number.isFinite(since) && Number.isFinite(modified) && modified <= since;
  }
  return false;
}

/** Headers for revalidating `entry` upstream: our validators only (the client's own are answered by us). */
export function validatorHeaders(entry: CacheEntry): Record<string, string> {
  const out: Record<string, string> = {};
  if (typeof entry.headers.etag === "string") out["if-none-match"] = entry.headers.etag;
  if (typeof entry.headers["last-modified"] === "string")
    out["if-modified-since"] = entry.headers["last-modified"];
  return out;
}

/**
 * After a 304 (RFC 9111 §4.3.4): the stored headers updated with the 304's, and a new freshness lifetime.
 * Returns undefined when the refreshed response may no longer be stored.
 */
export function refreshAfterNotModified(
  entry: CacheEntry,
  notModifiedHeaders: IncomingHttpHeaders,
  input: Omit<StoreInput, "status" | "responseHeaders">,
): CacheEntry | undefined {
  const headers: StoredHeaders = { ...entry.headers };
  for (const [k, v] of Object.entries(notModifiedHeaders)) {
    // Content-Length of a 304 describes nothing; framing stays with the stored body.
    if (v === undefined || k === "content-length" || k === "transfer-encoding") continue;
    headers[k] = v;
  }
  const decision = decideStore({ ...input, status: entry.status, responseHeaders: headers });
  if (!decision.store) return undefined;
  return {
    ...entry,
    headers,
    storedAt: input.now,
    freshMs: decision.freshMs,
    swrMs: decision.swrMs,
    sieMs: decision.sieMs,
    mustRevalidate: decision.mustRevalidate,
    initialAgeMs: decision.initialAgeMs,
    policy: decision.policy,
  };
}
