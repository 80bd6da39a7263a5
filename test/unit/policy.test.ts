import assert from "node:assert/strict";
import { test } from "node:test";
import type { RouteCacheConfig } from "../../config/schema.js";
import type { CacheEntry } from "../../proxy/cache/entry.js";
import {
  decideStore,
  evaluateFreshness,
  notModified,
  parseCacheControl,
  refreshAfterNotModified,
  shouldRefreshEarly,
  usableOnError,
} from "../../proxy/cache/policy.js";
import { configFrom } from "../helpers/cachegate.js";

function rules(extra: Record<string, unknown> = {}): RouteCacheConfig {
  const cfg = configFrom({
    upstreams: [{ name: "u", url: "http://127.0.0.1:1" }],
    routes: [{ name: "r", upstream: "u", cache: extra }],
  });
  return (cfg.routes[0] as { cache: RouteCacheConfig }).cache;
}

const NOW = 1_700_000_000_000;
function decide(
  resHeaders: Record<string, string>,
  opts: {
    rules?: RouteCacheConfig;
    req?: Record<string, string>;
    status?: number;
    tenantScoped?: boolean;
    method?: string;
  } = {},
) {
  return decideStore({
    rules: opts.rules ?? rules(),
    tenantScoped: opts.tenantScoped ?? false,
    method: opts.method ?? "GET",
    url: "/x",
    requestHeaders: { host: "h", ...opts.req },
    status: opts.status ?? 200,
    responseHeaders: { date: new Date(NOW).toUTCString(), ...resHeaders },
    jitter: 0,
    now: NOW,
  });
}

test("stores by Cache-Control: s-maxage wins over max-age in a shared cache", () => {
  const d = decide({ "cache-control": "public, max-age=10, s-maxage=60" });
  assert.ok(d.store);
  assert.equal(d.store && d.freshMs, 60_000);
});

test("never stores no-store, private, Set-Cookie (unless allowed), 206, or a request that said no-store", () => {
  assert.equal(decide({ "cache-control": "no-store, max-age=60" }).store, false);
  assert.equal(decide({ "cache-control": "private, max-age=60" }).store, false);
  assert.equal(decide({ "cache-control": "max-age=60", "set-cookie": "a=1" }).store, false);
  assert.equal(
    decide({ "cache-control": "max-age=60", "set-cookie": "a=1" }, { rules: rules({ allowSetCookie: true }) })
      .store,
    true,
  );
  assert.equal(decide({ "cache-control": "max-age=60" }, { status: 206 }).store, false);
  assert.equal(
    decide({ "cache-control": "max-age=60" }, { req: { "cache-control": "no-store" } }).store,
    false,
  );
});

test("an authorized request's response is stored only if the response allows it or the route is tenant-scoped", () => {
  const auth = { authorization: "Bearer k" };
  assert.equal(decide({ "cache-control": "max-age=60" }, { req: auth }).store, false);
  assert.equal(decide({ "cache-control": "public, max-age=60" }, { req: auth }).store, true);
  assert.equal(decide({ "cache-control": "s-maxage=60" }, { req: auth }).store, true);
  assert.equal(decide({ "cache-control": "max-age=60" }, { req: auth, tenantScoped: true }).store, true);
});

test("a route ttl fills in only when the upstream gave no freshness, and only for configured statuses", () => {
  const r = rules({ ttl: "30s" });
  const none = decide({}, { rules: r });
  assert.equal(none.store && none.freshMs, 30_000);
  const explicit = decide({ "cache-control": "max-age=5" }, { rules: r });
  assert.equal(explicit.store && explicit.freshMs, 5_000, "the upstream's own lifetime wins in http mode");
  assert.equal(decide({}, { rules: r, status: 404 }).store, false);
  assert.equal(decide({}, { rules: rules({ ttl: "30s", statuses: [200, 404] }), status: 404 }).store, true);
  assert.equal(decide({ "cache-control": "no-cache" }, { rules: r }).store, false);
});

test("override mode forces the ttl but still obeys no-store and private", () => {
  const r = rules({ mode: "override", ttl: "2m" });
  const d = decide({ "cache-control": "max-age=0, must-revalidate" }, { rules: r });
  assert.equal(d.store && d.freshMs, 120_000);
  assert.equal(d.store && d.mustRevalidate, false);
  assert.equal(decide({ "cache-control": "no-store" }, { rules: r }).store, false);
  assert.equal(decide({ "cache-control": "private" }, { rules: r }).store, false);
});

test("records stale-while-revalidate, stale-if-error and must-revalidate; route defaults fill in", () => {
  const d = decide({ "cache-control": "max-age=10, stale-while-revalidate=30, stale-if-error=60" });
  assert.ok(d.store);
  assert.equal(d.store && d.swrMs, 30_000);
  assert.equal(d.store && d.sieMs, 60_000);
  const r = decide(
    { "cache-control": "max-age=10" },
    { rules: rules({ staleWhileRevalidate: "5s", staleIfError: "1m" }) },
  );
  assert.equal(r.store && r.swrMs, 5_000);
  assert.equal(r.store && r.sieMs, 60_000);
  const m = decide({ "cache-control": "max-age=10, proxy-revalidate" });
  assert.equal(
    m.store && m.mustRevalidate,
    true,
    "proxy-revalidate is stored (the library would give it no lifetime)",
  );
  assert.equal(m.store && m.freshMs, 10_000);
});

test("applies jitter within the configured fraction", () => {
  const at = (r: number) =>
    decideStore({
      rules: rules(),
      tenantScoped: false,
      method: "GET",
      url: "/x",
      requestHeaders: { host: "h" },
      status: 200,
      responseHeaders: { "cache-control": "max-age=100" },
      jitter: 0.1,
      now: NOW,
      random: () => r,
    });
  const lo = at(0);
  const hi = at(0.999999);
  assert.equal(lo.store && lo.freshMs, 90_000);
  assert.ok(hi.store && hi.freshMs > 109_000 && hi.freshMs <= 110_000);
});

function entry(over: Partial<CacheEntry> = {}): CacheEntry {
  return {
    kind: "response",
    key: "k",
    primaryKey: "k",
    url: "h/x",
    route: "r",
    status: 200,
    headers: { etag: '"v1"', "last-modified": new Date(NOW - 3600_000).toUTCString() },
    body: Buffer.from("x"),
    storedAt: NOW,
    initialAgeMs: 0,
    freshMs: 10_000,
    swrMs: 0,
    sieMs: 0,
    mustRevalidate: false,
    tags: [],
    policy: {},
    ...over,
  };
}

test("freshness follows age, request max-age/min-fresh/max-stale/no-cache and stale windows", () => {
  const cc = parseCacheControl;
  const e = entry({ swrMs: 5_000 });
  assert.equal(evaluateFreshness(e, cc(undefined), false, NOW + 1_000), "fresh");
  assert.equal(evaluateFreshness(e, cc("no-cache"), false, NOW + 1_000), "revalidate");
  assert.equal(evaluateFreshness(e, cc(undefined), true, NOW + 1_000), "revalidate", "Pragma: no-cache");
  assert.equal(evaluateFreshness(e, cc("max-age=0"), false, NOW + 1_000), "revalidate");
  assert.equal(evaluateFreshness(e, cc("min-fresh=20"), false, NOW + 1_000), "revalidate");
  assert.equal(evaluateFreshness(e, cc(undefined), false, NOW + 12_000), "stale-while-revalidate");
  assert.equal(evaluateFreshness(e, cc(undefined), false, NOW + 16_000), "revalidate");
  assert.equal(evaluateFreshness(e, cc("max-stale"), false, NOW + 99_000), "stale-acceptable");
  assert.equal(evaluateFreshness(e, cc("max-stale=3"), false, NOW + 12_000), "stale-acceptable");
  assert.equal(evaluateFreshness(e, cc("max-stale=1"), false, NOW + 12_500), "stale-while-revalidate");
  const mr = entry({ mustRevalidate: true, swrMs: 5_000 });
  assert.equal(
    evaluateFreshness(mr, cc(undefined), false, NOW + 1_000),
    "fresh",
    "fresh must-revalidate is a hit",
  );
  assert.equal(evaluateFreshness(mr, cc("max-stale"), false, NOW + 12_000), "revalidate");
  assert.equal(
    evaluateFreshness(entry({ initialAgeMs: 9_500 }), cc(undefined), false, NOW + 600),
    "revalidate",
  );
});

test("stale-if-error holds only inside its window and never for must-revalidate", () => {
  const e = entry({ sieMs: 30_000 });
  assert.equal(usableOnError(e, NOW + 20_000), true);
  assert.equal(usableOnError(e, NOW + 41_000), false);
  assert.equal(usableOnError(entry({ sieMs: 30_000, mustRevalidate: true }), NOW + 20_000), false);
});

test("conditional requests match by weak ETag comparison, then by date", () => {
  const h = entry().headers;
  assert.equal(notModified(h, { "if-none-match": '"v1"' }), true);
  assert.equal(notModified(h, { "if-none-match": 'W/"v1"' }), true);
  assert.equal(notModified(h, { "if-none-match": '"v0", "v1"' }), true);
  assert.equal(notModified(h, { "if-none-match": '"v2"' }), false);
  assert.equal(notModified(h, { "if-none-match": "*" }), true);
  assert.equal(notModified(h, { "if-modified-since": new Date(NOW).toUTCString() }), true);
  assert.equal(notModified(h, { "if-modified-since": new Date(NOW - 7200_000).toUTCString() }), false);
  assert.equal(
    notModified(h, { "if-none-match": '"v2"', "if-modified-since": new Date(NOW).toUTCString() }),
    false,
    "If-None-Match wins",
  );
});

test("a 304 refreshes the stored headers and lifetime", () => {
  const e = entry({ headers: { etag: '"v1"', "cache-control": "max-age=10", "x-old": "1" } });
  const r = refreshAfterNotModified(
    e,
    { "cache-control": "max-age=100", "x-new": "2", "content-length": "0" },
    {
      rules: rules(),
      tenantScoped: false,
      method: "GET",
      url: "/x",
      requestHeaders: { host: "h" },
      jitter: 0,
      now: NOW + 50_000,
    },
  );
  assert.ok(r);
  assert.equal(r?.freshMs, 100_000);
  assert.equal(r?.storedAt, NOW + 50_000);
  assert.equal(r?.headers["x-new"], "2");
  assert.equal(r?.headers["x-old"], "1");
  assert.equal(r?.headers["content-length"], undefined);
});

test("early refresh never fires with beta 0 and fires near expiry with beta > 0", () => {
  const e = entry({ freshMs: 100_000 });
  assert.equal(
    shouldRefreshEarly(e, 0, NOW + 99_000, () => 0.0001),
    false,
  );
  assert.equal(
    shouldRefreshEarly(e, 1, NOW + 99_900, () => 0.01),
    true,
  );
  assert.equal(
    shouldRefreshEarly(e, 1, NOW + 1_000, () => 0.5),
    false,
  );
});
