// Per-client limits end to end: 429s with Retry-After and the IETF RateLimit fields, cache hits counted, per-route
// policies, dry run, two instances sharing one limit through a real redis-server, and Redis dying mid-run.
import assert from "node:assert/strict";
import type { ServerResponse } from "node:http";
import { after, before, describe, test } from "node:test";
import { Redis } from "ioredis";
import { startGate, type TestGate } from "../helpers/cachegate.js";
import { type Reply, request, sleep } from "../helpers/http.js";
import { startRedis, type TestRedis } from "../helpers/redis.js";
import { startUpstream, type TestUpstream } from "../helpers/upstream.js";

const ADMIN = { host: "127.0.0.1", port: 0, token: "test-admin-token-123456" };
const toClose: Array<{ close(): Promise<void> }> = [];
let redis: TestRedis;
before(async () => {
  redis = await startRedis();
});
after(async () => {
  for (const c of toClose.reverse()) await c.close();
  await redis.stop();
});

function json(res: ServerResponse, body: unknown, headers: Record<string, string> = {}) {
  const buf = Buffer.from(JSON.stringify(body));
  res.writeHead(200, { "content-type": "application/json", "content-length": buf.length, ...headers });
  res.end(buf);
}

async function upstream(delayMs = 0, headers: Record<string, string> = {}): Promise<TestUpstream> {
  const up = await startUpstream((req, res) => {
    setTimeout(() => json(res, { url: req.url }, headers), delayMs);
  });
  toClose.push(up);
  return up;
}

async function gate(up: TestUpstream, extra: Record<string, unknown>): Promise<TestGate> {
  const g = await startGate({
    upstreams: [{ name: "up", url: up.url }],
    routes: [{ name: "all", upstream: "up" }],
    admin: ADMIN,
    log: { level: "info" },
    ...extra,
  });
  toClose.push({ close: () => g.close(500) });
  return g;
}

const bearer = (key: string) => ({ authorization: `Bearer ${key}` });

/** Polls `cond` every 10 ms for at most `timeoutMs`. */
async function until(cond: () => boolean | Promise<boolean>, what: string, timeoutMs = 5_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(10);
  }
}

const redisReady = (g: TestGate) => until(() => g.cache.redis?.status === "ready", "the Redis client");

async function metrics(g: TestGate): Promise<string> {
  return (await request(`${g.adminUrl}/metrics`)).text;
}

async function sequence(url: string, n: number, headers: Record<string, string> = {}): Promise<Reply[]> {
  const out: Reply[] = [];
  for (let i = 0; i < n; i++) out.push(await request(url, { headers }));
  return out;
}

describe("per-client rate limits", () => {
  test("a client over its limit gets 429 with Retry-After, RateLimit fields and a stable code; another key is unaffected", async () => {
    const up = await upstream();
    const g = await gate(up, { limits: { enabled: true, requests: 3, per: "10s" } });
    const secret = "app-s3cr3t-key-A";
    const replies = await sequence(`${g.url}/v1/chat`, 5, bearer(secret));
    assert.deepEqual(
      replies.map((r) => r.status),
      [200, 200, 200, 429, 429],
    );
    // Allowed responses carry the fields too, counting down.
    for (const [i, r] of replies.slice(0, 3).entries()) {
      assert.equal(r.headers["ratelimit-policy"], '"default";q=3;w=10');
      assert.match(String(r.headers.ratelimit), new RegExp(`^"default";r=${2 - i};t=(10|9)$`));
    }
    const refused = replies[3] as Reply;
    assert.equal(refused.headers["content-type"], "application/json; charset=utf-8");
    assert.equal(refused.headers["cache-control"], "no-store");
    assert.equal(refused.json<{ error: { code: string } }>().error.code, "rate_limited");
    const retryAfter = Number(refused.headers["retry-after"]);
    assert.ok(
      Number.isInteger(retryAfter) && retryAfter >= 1 && retryAfter <= 10,
      `Retry-After ${retryAfter}`,
    );
    assert.equal(refused.headers["ratelimit-policy"], '"default";q=3;w=10');
    assert.equal(
      refused.headers.ratelimit,
      `"default";r=0;t=${retryAfter}`,
      "Retry-After points at the end of the window",
    );
    assert.equal(up.hits(), 3, "refused requests never reach the upstream");

    const other = await request(`${g.url}/v1/chat`, { headers: bearer("app-other-key-B") });
    assert.equal(other.status, 200);
    assert.match(String(other.headers.ratelimit), /^"default";r=2;/);

    assert.match(await metrics(g), /cachegate_rate_limited_total\{route="all",mode="enforced"\} 2/);
    assert.ok(!JSON.stringify(g.logs()).includes(secret), "the API key never reaches a log line");
    const note = g.logs().find((l) => l.msg === "client over its limit (logged once per client per window)");
    assert.match(String(note?.client), /^auth:[0-9a-f]{32}$/);
  });

  test("cache hits are limited too: the upstream is asked once while 429s appear", async () => {
    const up = await upstream(0, { "cache-control": "max-age=60" });
    const g = await gate(up, { limits: { enabled: true, clientId: "ip", requests: 3, per: "10s" } });
    const replies = await sequence(`${g.url}/cached`, 5);
    assert.deepEqual(
      replies.map((r) => [r.status, r.headers["x-cache"]]),
      [
        [200, "MISS"],
        [200, "HIT"],
        [200, "HIT"],
        [429, "BYPASS"],
        [429, "BYPASS"],
      ],
    );
    assert.match(String(replies[2]?.headers.ratelimit), /^"default";r=0;/, "a hit carries the fields");
    assert.equal(up.hits(), 1);
  });

  test("a route's own limits override the global ones, and limits: { enabled: false } exempts a route", async () => {
    const up = await upstream();
    const g = await gate(up, {
      limits: { enabled: true, requests: 3, per: "10s" },
      routes: [
        {
          name: "strict",
          upstream: "up",
          match: { pathPrefix: "/strict" },
          limits: { enabled: true, requests: 1, per: "5s" },
        },
        { name: "health", upstream: "up", match: { pathPrefix: "/health" }, limits: { enabled: false } },
        { name: "all", upstream: "up" },
      ],
    });
    const key = bearer("route-test-key");
    const strict = await sequence(`${g.url}/strict/x`, 2, key);
    assert.deepEqual(
      strict.map((r) => r.status),
      [200, 429],
    );
    assert.equal(strict[1]?.headers["ratelimit-policy"], '"strict";q=1;w=5');
    assert.match(strict[1]?.json<{ error: { message: string } }>().error.message ?? "", /1 requests per 5 s/);

    const global = await sequence(`${g.url}/other`, 4, key);
    assert.deepEqual(
      global.map((r) => r.status),
      [200, 200, 200, 429],
      "the global budget is separate from the route's",
    );
    const health = await sequence(`${g.url}/health`, 10, key);
    assert.ok(health.every((r) => r.status === 200 && r.headers.ratelimit === undefined));
    const m = await metrics(g);
    assert.match(m, /cachegate_rate_limited_total\{route="strict",mode="enforced"\} 1/);
    assert.match(m, /cachegate_rate_limited_total\{route="all",mode="enforced"\} 1/);
  });

  test("dry run never refuses and shows clients nothing, but counts in the metric and logs once per window", async () => {
    const up = await upstream();
    const g = await gate(up, { limits: { enabled: true, requests: 2, per: "10s", dryRun: true } });
    const replies = await sequence(`${g.url}/dry`, 6, bearer("dry-run-key"));
    assert.ok(replies.every((r) => r.status === 200));
    assert.ok(
      replies.every((r) => r.headers.ratelimit === undefined && r.headers["ratelimit-policy"] === undefined),
    );
    assert.equal(up.hits(), 6);
    const m = await metrics(g);
    assert.match(m, /cachegate_rate_limited_total\{route="all",mode="dry_run"\} 4/);
    assert.doesNotMatch(m, /mode="enforced"/);
    const warnings = g.logs().filter((l) => String(l.msg).includes("dry run: not enforced"));
    assert.equal(warnings.length, 1);
    assert.equal(warnings[0]?.level, 40, "warn");
  });

  test("a client's requests beyond `concurrent` in flight get 429; a slot frees when the response ends or the client leaves", async () => {
    const holding: ServerResponse[] = [];
    const up = await startUpstream((req, res) => {
      if (req.url?.startsWith("/hold")) holding.push(res);
      else json(res, { url: req.url });
    });
    toClose.push(up);
    const g = await gate(up, { limits: { enabled: true, requests: 100, per: "10s", concurrent: 1 } });
    const key = bearer("concurrency-key");
    const first = request(`${g.url}/hold/1`, { headers: key });
    await until(() => holding.length === 1, "the first request to reach the upstream");
    const second = await request(`${g.url}/x/2`, { headers: key });
    assert.equal(second.status, 429);
    assert.equal(second.headers["retry-after"], "1");
    assert.equal(second.headers["ratelimit-policy"], '"default";q=100;w=10');
    assert.equal(second.headers.ratelimit, undefined, "no rate window was spent");
    assert.match(
      second.json<{ error: { message: string } }>().error.message,
      /concurrent requests .*\(at most 1\)/,
    );
    assert.equal((await request(`${g.url}/x/3`, { headers: bearer("someone-else") })).status, 200);

    json(holding.shift() as ServerResponse, { held: true });
    assert.equal((await first).status, 200);
    const third = await request(`${g.url}/x/4`, { headers: key });
    assert.equal(third.status, 200, "the first request's slot was released when its response ended");
    assert.match(String(third.headers.ratelimit), /^"default";r=98;/, "the refused request spent no quota");

    const leaving = request(`${g.url}/hold/5`, { headers: key, timeoutMs: 200 }).catch(() => "gone");
    await until(() => holding.length === 1, "the leaving request to reach the upstream");
    assert.equal(await leaving, "gone");
    await until(
      async () => (await request(`${g.url}/x/6`, { headers: key })).status === 200,
      "the slot of the client that left to be free",
    );
  });
});

describe("limits shared through Redis", () => {
  test("two instances sharing Redis enforce one limit: 20 requests alternating, exactly 10 allowed", async () => {
    const up = await upstream();
    const keyPrefix = "rltest-shared:";
    const extra = {
      redis: { url: redis.url, keyPrefix },
      limits: { enabled: true, requests: 10, per: "2s" },
      routes: [{ name: "all", upstream: "up", cache: { enabled: false } }],
    };
    const a = await gate(up, extra);
    const b = await gate(up, extra);
    await Promise.all([redisReady(a), redisReady(b)]); // a request before that would be decided locally
    const secret = "shared-s3cr3t";
    const statuses: number[] = [];
    const remaining: string[] = [];
    for (let i = 0; i < 20; i++) {
      const r = await request(`${(i % 2 === 0 ? a : b).url}/v1/x`, { headers: bearer(secret) });
      statuses.push(r.status);
      remaining.push(String(r.headers.ratelimit).split(";")[1] ?? "");
    }
    assert.equal(statuses.filter((s) => s === 200).length, 10, statuses.join(","));
    assert.equal(statuses.filter((s) => s === 429).length, 10);
    assert.deepEqual(
      statuses.slice(0, 10),
      Array(10).fill(200),
      "the first ten, whichever instance took them",
    );
    assert.deepEqual(
      remaining.slice(0, 10),
      ["r=9", "r=8", "r=7", "r=6", "r=5", "r=4", "r=3", "r=2", "r=1", "r=0"],
      "one counter across both instances",
    );
    const m = (await metrics(a)) + (await metrics(b));
    assert.doesNotMatch(m, /cachegate_rate_limit_fallback_total [1-9]/, "Redis decided every request");

    const client = new Redis(redis.url, { lazyConnect: true });
    try {
      await client.connect();
      const keys = await client.keys(`${keyPrefix}rl:*`);
      assert.equal(keys.length, 1, keys.join(", "));
      assert.match(keys[0] ?? "", /^rltest-shared:rl:default:auth:[0-9a-f]{32}$/);
      assert.ok(!keys.some((k) => k.includes(secret)));
      const ttl = await client.pttl(keys[0] ?? "");
      assert.ok(ttl > 0 && ttl <= 2_000, `window TTL ${ttl} ms`);
    } finally {
      client.disconnect();
    }
  });

  test("Redis killed: limits are still enforced per instance, with zero 5xx and every answer under 300 ms", async () => {
    const own = await startRedis();
    toClose.push({ close: () => own.stop() });
    const up = await upstream();
    const g = await gate(up, {
      redis: { url: own.url, keyPrefix: "rltest-dead:" },
      limits: { enabled: true, requests: 3, per: "10s" },
    });
    await redisReady(g);
    const key = bearer("dead-redis-key");
    assert.equal((await request(`${g.url}/before`, { headers: key })).status, 200, "counted in Redis");
    own.kill();
    await sleep(50);
    const results: Array<{ status: number; ms: number }> = [];
    for (let i = 0; i < 8; i++) {
      const started = performance.now();
      const r = await request(`${g.url}/after/${i}`, { headers: key, timeoutMs: 3_000 });
      results.push({ status: r.status, ms: performance.now() - started });
    }
    const statuses = results.map((r) => r.status);
    assert.ok(
      statuses.every((s) => s === 200 || s === 429),
      `statuses: ${statuses.join(",")}`,
    );
    // The local insurance limiter starts from zero: 3 more allowed, then refused.
    assert.deepEqual(statuses, [200, 200, 200, 429, 429, 429, 429, 429]);
    const slowest = Math.max(...results.map((r) => r.ms));
    assert.ok(slowest < 300, `slowest answer ${slowest.toFixed(1)} ms`);
    const m = await metrics(g);
    assert.match(m, /cachegate_rate_limit_fallback_total [1-9]/);
    assert.ok(
      g.logs().some((l) => String(l.msg).startsWith("rate limits: Redis unavailable")),
      "the fallback is logged",
    );
  });
});
