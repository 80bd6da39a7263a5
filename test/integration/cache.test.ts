import assert from "node:assert/strict";
import type { IncomingMessage, ServerResponse } from "node:http";
import { after, describe, test } from "node:test";
import { startGate, type TestGate } from "../helpers/cachegate.js";
import { request, sleep } from "../helpers/http.js";
import { startUpstream, type TestUpstream } from "../helpers/upstream.js";

const toClose: Array<{ close(): Promise<void> }> = [];
after(async () => {
  for (const c of toClose.reverse()) await c.close();
});

type Handler = (req: IncomingMessage, res: ServerResponse, n: number) => void;

async function setup(
  handler: Handler,
  cache: Record<string, unknown> = {},
  extra: Record<string, unknown> = {},
) {
  let n = 0;
  const up: TestUpstream = await startUpstream((req, res) => {
    n++;
    handler(req, res, n);
  });
  toClose.push(up);
  const gate: TestGate = await startGate({
    upstreams: [{ name: "up", url: up.url }],
    routes: [{ name: "api", upstream: "up", cache }],
    admin: { host: "127.0.0.1", port: 0, token: "test-admin-token-123456" },
    ...extra,
  });
  toClose.push({ close: () => gate.close(500) });
  return { up, gate };
}

function json(res: ServerResponse, body: unknown, headers: Record<string, string> = {}) {
  const buf = Buffer.from(JSON.stringify(body));
  res.writeHead(200, { "content-type": "application/json", "content-length": buf.length, ...headers });
  res.end(buf);
}

describe("HTTP caching (RFC 9111)", () => {
  test("serves a fresh response from memory with Age, X-Cache and one upstream request", async () => {
    const { up, gate } = await setup((_q, res, n) => json(res, { n }, { "cache-control": "max-age=60" }));
    const a = await request(`${gate.url}/item`);
    const b = await request(`${gate.url}/item`);
    assert.equal(a.headers["x-cache"], "MISS");
    assert.equal(b.headers["x-cache"], "HIT");
    assert.equal(b.headers["x-cache-tier"], "memory");
    assert.equal(b.headers.age, "0");
    assert.equal(b.text, a.text);
    assert.equal(b.headers["content-length"], String(a.body.length));
    assert.equal(up.hits(), 1);
    const metrics = (await request(`${gate.adminUrl}/metrics`)).text;
    assert.match(metrics, /cachegate_cache_requests_total\{route="api",cache="HIT"\} 1/);
    assert.match(metrics, /cachegate_cache_hits_total\{route="api",tier="memory"\} 1/);
  });

  test("does not store what the upstream gave no lifetime, unless the route sets a ttl", async () => {
    const plain = await setup((_q, res, n) => json(res, { n }));
    await request(`${plain.gate.url}/a`);
    const again = await request(`${plain.gate.url}/a`);
    assert.equal(again.headers["x-cache"], "MISS");
    assert.equal(plain.up.hits(), 2);

    const ttl = await setup((_q, res, n) => json(res, { n }), { ttl: "30s" });
    await request(`${ttl.gate.url}/a`);
    assert.equal((await request(`${ttl.gate.url}/a`)).headers["x-cache"], "HIT");
    assert.equal(ttl.up.hits(), 1);
  });

  test("never stores no-store or private responses, nor for a request that said no-store", async () => {
    const { up, gate } = await setup((req, res, n) =>
      json(
        res,
        { n },
        {
          "cache-control":
            req.url === "/private" ? "private, max-age=60" : req.url === "/ns" ? "no-store" : "max-age=60",
        },
      ),
    );
    for (const path of ["/private", "/private", "/ns", "/ns"]) await request(`${gate.url}${path}`);
    await request(`${gate.url}/ok`, { headers: { "cache-control": "no-store" } });
    await request(`${gate.url}/ok`);
    assert.equal(up.hits(), 6);
  });

  test("keeps separate variants for Vary and serves each to matching requests", async () => {
    const { up, gate } = await setup((req, res) =>
      json(
        res,
        { lang: req.headers["accept-language"] ?? null },
        { "cache-control": "max-age=60", vary: "Accept-Language" },
      ),
    );
    const en1 = await request(`${gate.url}/v`, { headers: { "accept-language": "en" } });
    const fr1 = await request(`${gate.url}/v`, { headers: { "accept-language": "fr" } });
    const en2 = await request(`${gate.url}/v`, { headers: { "accept-language": "en" } });
    const fr2 = await request(`${gate.url}/v`, { headers: { "accept-language": "fr" } });
    assert.equal(en2.headers["x-cache"], "HIT");
    assert.equal(fr2.headers["x-cache"], "HIT");
    assert.equal(en2.json().lang, "en");
    assert.equal(fr2.json().lang, "fr");
    assert.equal(en1.json().lang, "en");
    assert.equal(fr1.json().lang, "fr");
    assert.equal(up.hits(), 2);
  });

  test("answers a matching conditional request with 304 from a fresh entry", async () => {
    const { up, gate } = await setup((_q, res) =>
      json(res, { v: 1 }, { "cache-control": "max-age=60", etag: '"abc"' }),
    );
    await request(`${gate.url}/c`);
    const r = await request(`${gate.url}/c`, { headers: { "if-none-match": '"abc"' } });
    assert.equal(r.status, 304);
    assert.equal(r.body.length, 0);
    assert.equal(r.headers.etag, '"abc"');
    assert.equal(r.headers["x-cache"], "HIT");
    const miss = await request(`${gate.url}/c`, { headers: { "if-none-match": '"other"' } });
    assert.equal(miss.status, 200);
    assert.equal(up.hits(), 1);
  });

  test("revalidates a stale entry with its validators and serves it on 304", async () => {
    const seen: Array<string | undefined> = [];
    const { up, gate } = await setup((req, res) => {
      seen.push(req.headers["if-none-match"]);
      if (req.headers["if-none-match"] === '"e1"') {
        res.writeHead(304, { etag: '"e1"', "cache-control": "max-age=60" });
        return res.end();
      }
      json(res, { body: "original" }, { "cache-control": "max-age=1", etag: '"e1"' });
    });
    await request(`${gate.url}/r`, { headers: { "if-none-match": '"client-own"' } });
    await sleep(1100);
    const r = await request(`${gate.url}/r`);
    assert.equal(r.status, 200);
    assert.equal(r.headers["x-cache"], "REVALIDATED");
    assert.equal(r.json().body, "original");
    assert.deepEqual(seen, ['"client-own"', '"e1"'], "the stale entry was revalidated with its own ETag");
    const h = await request(`${gate.url}/r`);
    assert.equal(h.headers["x-cache"], "HIT", "the 304 refreshed the entry's lifetime");
    assert.equal(up.hits(), 2);
  });

  test("stale-while-revalidate serves stale at once and refreshes once in the background", async () => {
    const { up, gate } = await setup((_q, res, n) => {
      setTimeout(
        () => json(res, { n }, { "cache-control": "max-age=1, stale-while-revalidate=30" }),
        n > 1 ? 150 : 0,
      );
    });
    await request(`${gate.url}/s`);
    await sleep(1100);
    const started = performance.now();
    const stale = await Promise.all(Array.from({ length: 5 }, () => request(`${gate.url}/s`)));
    const took = performance.now() - started;
    assert.ok(took < 140, `stale answers did not wait for the 150 ms upstream (took ${took.toFixed(0)} ms)`);
    for (const r of stale) {
      assert.equal(r.headers["x-cache"], "STALE");
      assert.equal(r.json().n, 1);
    }
    await sleep(400);
    const fresh = await request(`${gate.url}/s`);
    assert.equal(fresh.headers["x-cache"], "HIT");
    assert.equal(fresh.json().n, 2);
    assert.equal(up.hits(), 2, "five stale hits caused one background refresh");
  });

  test("stale-if-error stands in for a failing or unreachable upstream", async () => {
    let mode: "ok" | "500" = "ok";
    const { up, gate } = await setup((_q, res) => {
      if (mode === "500") {
        res.writeHead(500, { "content-type": "text/plain" });
        return res.end("boom");
      }
      json(res, { good: true }, { "cache-control": "max-age=1, stale-if-error=60" });
    });
    await request(`${gate.url}/e`);
    await sleep(1100);
    mode = "500";
    const r = await request(`${gate.url}/e`);
    assert.equal(r.status, 200);
    assert.equal(r.headers["x-cache"], "STALE");
    assert.equal(r.json().good, true);
    await up.close();
    const down = await request(`${gate.url}/e`);
    assert.equal(down.status, 200, "unreachable upstream → stale copy");
    assert.equal(down.headers["x-cache"], "STALE");
  });

  test("HEAD is answered from the GET entry", async () => {
    const { up, gate } = await setup((_q, res) => json(res, { x: 1 }, { "cache-control": "max-age=60" }));
    const g = await request(`${gate.url}/h`);
    const h = await request(`${gate.url}/h`, { method: "HEAD" });
    assert.equal(h.status, 200);
    assert.equal(h.headers["x-cache"], "HIT");
    assert.equal(h.headers["content-length"], String(g.body.length));
    assert.equal(h.body.length, 0);
    assert.equal(up.hits(), 1);
  });

  test("request no-cache revalidates; only-if-cached on a miss gets 504", async () => {
    const { up, gate } = await setup((_q, res, n) => json(res, { n }, { "cache-control": "max-age=60" }));
    await request(`${gate.url}/n`);
    const r = await request(`${gate.url}/n`, { headers: { "cache-control": "no-cache" } });
    assert.equal(r.json().n, 2);
    assert.equal((await request(`${gate.url}/n`)).json().n, 2, "the revalidated response replaced the entry");
    const o = await request(`${gate.url}/never-seen`, { headers: { "cache-control": "only-if-cached" } });
    assert.equal(o.status, 504);
    assert.equal(o.json<{ error: { code: string } }>().error.code, "not_cached");
    assert.equal(up.hits(), 2);
  });

  test("a successful unsafe request invalidates the target URI and its Location", async () => {
    const { gate } = await setup((req, res, n) => {
      if (req.method === "POST") {
        res.writeHead(201, { location: "/other" });
        return res.end();
      }
      json(res, { n }, { "cache-control": "max-age=60" });
    });
    await request(`${gate.url}/doc`);
    await request(`${gate.url}/other`);
    assert.equal((await request(`${gate.url}/doc`)).headers["x-cache"], "HIT");
    await request(`${gate.url}/doc`, { method: "POST", body: "{}", headers: { "content-length": 2 } });
    await sleep(20);
    assert.equal((await request(`${gate.url}/doc`)).headers["x-cache"], "MISS");
    assert.equal((await request(`${gate.url}/other`)).headers["x-cache"], "MISS");
  });

  test("the bypass header skips the cache", async () => {
    const { up, gate } = await setup((_q, res, n) => json(res, { n }, { "cache-control": "max-age=60" }));
    await request(`${gate.url}/b`);
    const r = await request(`${gate.url}/b`, { headers: { "x-cachegate-bypass": "1" } });
    assert.equal(r.headers["x-cache"], "BYPASS");
    assert.equal(up.hits(), 2);
  });
});

describe("tenant isolation", () => {
  test("responses to authorized requests are not stored unless the route scopes tenants", async () => {
    const { up, gate } = await setup((req, res) =>
      json(res, { who: req.headers.authorization }, { "cache-control": "max-age=60" }),
    );
    await request(`${gate.url}/me`, { headers: { authorization: "Bearer A" } });
    await request(`${gate.url}/me`, { headers: { authorization: "Bearer A" } });
    assert.equal(up.hits(), 2);
  });

  test("with a tenant header each API key gets its own entry and never another's", async () => {
    const { up, gate } = await setup((req, res) => json(res, { who: req.headers.authorization }), {
      ttl: "60s",
      tenantHeader: "authorization",
    });
    const a1 = await request(`${gate.url}/me`, { headers: { authorization: "Bearer A" } });
    const b1 = await request(`${gate.url}/me`, { headers: { authorization: "Bearer B" } });
    const a2 = await request(`${gate.url}/me`, { headers: { authorization: "Bearer A" } });
    const b2 = await request(`${gate.url}/me`, { headers: { authorization: "Bearer B" } });
    const anon = await request(`${gate.url}/me`);
    assert.equal(a1.json().who, "Bearer A");
    assert.equal(b1.json().who, "Bearer B");
    assert.equal(a2.headers["x-cache"], "HIT");
    assert.equal(a2.json().who, "Bearer A");
    assert.equal(b2.headers["x-cache"], "HIT");
    assert.equal(b2.json().who, "Bearer B");
    assert.equal(anon.json().who, undefined, "no credentials → not someone else's entry");
    assert.equal(up.hits(), 3);
  });

  test("a shared route serves one entry to every client", async () => {
    const { up, gate } = await setup((_q, res) => json(res, { pub: true }), { ttl: "60s", shared: true });
    await request(`${gate.url}/p`, { headers: { authorization: "Bearer A" } });
    const b = await request(`${gate.url}/p`, { headers: { authorization: "Bearer B" } });
    assert.equal(b.headers["x-cache"], "HIT");
    assert.equal(up.hits(), 1);
  });
});

describe("POST caching by canonical JSON body", () => {
  const post = (url: string, body: string, headers: Record<string, string> = {}) =>
    request(url, {
      method: "POST",
      body,
      headers: {
        "content-type": "application/json",
        "content-length": String(Buffer.byteLength(body)),
        ...headers,
      },
    });

  test("equal JSON bodies share an entry whatever their key order and spacing", async () => {
    const { up, gate } = await setup(
      (req, res) => {
        let b = "";
        req.on("data", (c) => {
          b += c;
        });
        req.on("end", () => json(res, { echo: JSON.parse(b) }));
      },
      { methods: ["POST"], ttl: "60s", body: { exclude: ["trace_id"] } },
    );
    const a = await post(`${gate.url}/run`, '{"query":"hi","inputs":{"a":1,"b":2},"trace_id":"t1"}');
    const b = await post(`${gate.url}/run`, '{ "inputs": {"b":2, "a":1}, "query": "hi", "trace_id": "t2" }');
    const c = await post(`${gate.url}/run`, '{"query":"bye","inputs":{"a":1,"b":2}}');
    assert.equal(a.headers["x-cache"], "MISS");
    assert.equal(b.headers["x-cache"], "HIT");
    assert.equal(c.headers["x-cache"], "MISS");
    const again = await post(`${gate.url}/run`, '{"query":"hi","inputs":{"a":1,"b":2}}');
    assert.equal(again.headers["x-cache"], "HIT", "a cached POST to the same URI does not invalidate it");
    assert.equal(up.hits(), 2);
  });

  test("a non-JSON or oversize body passes through uncached and intact", async () => {
    const { up, gate } = await setup(
      (req, res) => {
        let n = 0;
        req.on("data", (c: Buffer) => {
          n += c.length;
        });
        req.on("end", () => json(res, { bytes: n }));
      },
      { methods: ["POST"], ttl: "60s", body: { maxBytes: "1KiB" } },
    );
    const text = await post(`${gate.url}/t`, "not json", { "content-type": "text/plain" });
    assert.equal(text.json().bytes, 8);
    const big = JSON.stringify({ pad: "x".repeat(5000) });
    const r1 = await post(`${gate.url}/t`, big);
    const r2 = await post(`${gate.url}/t`, big);
    assert.equal(r1.json().bytes, big.length, "every byte of the oversize body reached the upstream");
    assert.equal(r2.headers["x-cache"], "BYPASS");
    assert.equal(up.hits(), 3);
  });
});

describe("stampede protection", () => {
  test("coalesces 200 concurrent misses into one upstream request", async () => {
    const { up, gate } = await setup((_q, res) => {
      setTimeout(() => json(res, { slow: true }, { "cache-control": "max-age=60" }), 200);
    });
    const started = performance.now();
    const rs = await Promise.all(
      Array.from({ length: 200 }, () => request(`${gate.url}/cold`, { timeoutMs: 5000 })),
    );
    const took = performance.now() - started;
    assert.equal(up.hits(), 1);
    assert.ok(rs.every((r) => r.status === 200 && r.json().slow === true));
    assert.equal(rs.filter((r) => r.headers["x-cache"] === "MISS").length, 1);
    console.log(`# 200 concurrent cold requests: 1 upstream request, all answered in ${took.toFixed(0)} ms`);
  });
});

describe("hit-for-miss", () => {
  // An upstream taking 150 ms per request that counts how many it serves at once, per burst.
  async function slowUpstream(extra: Record<string, unknown>) {
    const state = { cacheable: false, inFlight: 0, peak: 0 };
    const { up, gate } = await setup(
      (_q, res, n) => {
        state.inFlight++;
        state.peak = Math.max(state.peak, state.inFlight);
        setTimeout(() => {
          state.inFlight--;
          json(res, { n }, state.cacheable ? { "cache-control": "max-age=1" } : {});
        }, 150);
      },
      {},
      extra,
    );
    const burst = async (size = 10) => {
      state.peak = 0;
      const before = up.hits();
      const rs = await Promise.all(
        Array.from({ length: size }, () => request(`${gate.url}/hfm`, { timeoutMs: 5000 })),
      );
      assert.ok(rs.every((r) => r.status === 200));
      return { upstream: up.hits() - before, peak: state.peak, rs };
    };
    return { state, gate, burst };
  }

  test("once a key proves uncacheable its misses go upstream in parallel; a cacheable response restores coalescing", async () => {
    const { state, gate, burst } = await slowUpstream({});
    const first = await burst();
    // Nothing known yet: one leads, nine wait for its headers, see they cannot be stored and go together.
    assert.deepEqual([first.upstream, first.peak], [10, 9]);
    let metrics = (await request(`${gate.adminUrl}/metrics`)).text;
    assert.match(metrics, /^cachegate_uncacheable_keys 1$/m);
    assert.ok(
      first.rs.every((r) => r.headers["x-cache"] === "MISS"),
      "no follower was answered from cache",
    );

    const second = await burst();
    assert.deepEqual([second.upstream, second.peak], [10, 10], "all ten at once, none waiting for another");

    state.cacheable = true;
    const third = await burst(); // still marked: in parallel; the first stored response ends the mark
    assert.deepEqual([third.upstream, third.peak], [10, 10]);
    metrics = (await request(`${gate.adminUrl}/metrics`)).text;
    assert.match(metrics, /^cachegate_uncacheable_keys 0$/m);
    const hit = await request(`${gate.url}/hfm`);
    assert.equal(hit.headers["x-cache"], "HIT");

    await sleep(1_300); // max-age=1 with ±10% jitter: expired
    const fourth = await burst();
    assert.equal(fourth.upstream, 1, "coalesced again: one upstream request for ten misses");
    assert.equal(fourth.rs.filter((r) => r.headers["x-cache"] === "MISS").length, 1);
  });

  test("cache.hitForMiss: 0 keeps coalescing every burst on an uncacheable key", async () => {
    const { gate, burst } = await slowUpstream({ cache: { hitForMiss: 0 } });
    for (let i = 0; i < 2; i++) {
      const b = await burst();
      assert.deepEqual([b.upstream, b.peak], [10, 9], `burst ${i + 1}: a leader, then nine together`);
    }
    const metrics = (await request(`${gate.adminUrl}/metrics`)).text;
    assert.match(metrics, /^cachegate_uncacheable_keys 0$/m);
  });
});

describe("purge", () => {
  test("purges by tag, URL and prefix through the admin API, with the token", async () => {
    const { up, gate } = await setup((req, res, n) =>
      json(
        res,
        { n },
        { "cache-control": "max-age=60", "cache-tag": req.url?.startsWith("/t/") ? "group-a other" : "none" },
      ),
    );
    for (const p of ["/t/1", "/t/2", "/u/1", "/u/2", "/x"]) await request(`${gate.url}${p}`);
    const purge = (body: unknown, token = "test-admin-token-123456") =>
      request(`${gate.adminUrl}/purge`, {
        method: "POST",
        body: JSON.stringify(body),
        headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
      });
    assert.equal((await purge({ tags: ["group-a"] }, "wrong-token-0000000")).status, 401);
    const r = await purge({ tags: ["group-a"] });
    assert.equal(r.status, 200);
    assert.equal(r.json<{ purged: { memory: number } }>().purged.memory, 2);
    assert.equal((await request(`${gate.url}/t/1`)).headers["x-cache"], "MISS");
    assert.equal((await request(`${gate.url}/u/1`)).headers["x-cache"], "HIT");
    await purge({ prefixes: [`127.0.0.1:${gate.port}/u/`] });
    assert.equal((await request(`${gate.url}/u/2`)).headers["x-cache"], "MISS");
    await purge({ urls: [`127.0.0.1:${gate.port}/x`] });
    assert.equal((await request(`${gate.url}/x`)).headers["x-cache"], "MISS");
    assert.equal((await purge({})).status, 400);
    assert.equal(up.hits(), 5 + 3);
  });
});
