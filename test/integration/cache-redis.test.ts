// Two cachegate instances sharing a real redis-server: the L2 tier, cross-instance coalescing, purge fan-out,
// and Redis dying mid-run.
import assert from "node:assert/strict";
import type { ServerResponse } from "node:http";
import { after, before, describe, test } from "node:test";
import { startGate, type TestGate } from "../helpers/cachegate.js";
import { type RequestOptions, request as rawRequest, sleep } from "../helpers/http.js";
import { startRedis, type TestRedis } from "../helpers/redis.js";
import { startUpstream, type TestUpstream } from "../helpers/upstream.js";

// Behind nginx every instance sees the public Host; the key includes it, so the tests send one too.
const request = (url: string, opts: RequestOptions = {}) =>
  rawRequest(url, { ...opts, headers: { host: "api.test", ...opts.headers } });

let redis: TestRedis;
const toClose: Array<{ close(): Promise<void> }> = [];
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

let prefixN = 0;
async function pair(
  delayMs = 0,
  cacheControl = "max-age=60",
): Promise<{ up: TestUpstream; a: TestGate; b: TestGate }> {
  let n = 0;
  const up = await startUpstream((req, res) => {
    n++;
    const mine = n;
    setTimeout(
      () => json(res, { n: mine, url: req.url }, { "cache-control": cacheControl, "cache-tag": "t1" }),
      delayMs,
    );
  });
  toClose.push(up);
  // A key prefix per pair keeps tests apart on the one Redis.
  const keyPrefix = `cgtest${++prefixN}:`;
  const mk = () =>
    startGate({
      upstreams: [{ name: "up", url: up.url }],
      routes: [{ name: "api", upstream: "up" }],
      redis: { url: redis.url, keyPrefix },
      admin: { host: "127.0.0.1", port: 0, token: "test-admin-token-123456" },
      log: { level: "warn" },
    });
  const a = await mk();
  const b = await mk();
  toClose.push({ close: () => a.close(500) }, { close: () => b.close(500) });
  await sleep(100); // both clients connected and subscribed
  return { up, a, b };
}

describe("two instances sharing Redis", () => {
  test("an entry stored by one instance is a Redis-tier hit on the other, then a memory hit", async () => {
    const { up, a, b } = await pair();
    const first = await request(`${a.url}/shared`);
    assert.equal(first.headers["x-cache"], "MISS");
    await sleep(50);
    const fromRedis = await request(`${b.url}/shared`);
    assert.equal(fromRedis.headers["x-cache"], "HIT");
    assert.equal(fromRedis.headers["x-cache-tier"], "redis");
    assert.equal(fromRedis.text, first.text, "byte-identical body through the binary entry format");
    const fromMemory = await request(`${b.url}/shared`);
    assert.equal(fromMemory.headers["x-cache-tier"], "memory", "the Redis hit backfilled memory");
    assert.equal(up.hits(), 1);
  });

  test("200 concurrent cold requests spread over both instances make exactly one upstream request", async () => {
    const { up, a, b } = await pair(200);
    const started = performance.now();
    const rs = await Promise.all(
      Array.from({ length: 200 }, (_, i) =>
        request(`${(i % 2 ? a : b).url}/stampede`, { timeoutMs: 10_000 }),
      ),
    );
    const took = performance.now() - started;
    assert.equal(up.hits(), 1);
    assert.ok(rs.every((r) => r.status === 200 && r.json().n === 1));
    console.log(
      `# 200 cold requests over 2 instances: ${up.hits()} upstream request, all answered in ${took.toFixed(0)} ms`,
    );
  });

  test("a purge on one instance removes the entry from the other's memory and from Redis", async () => {
    const { up, a, b } = await pair();
    await request(`${a.url}/p`);
    await sleep(50);
    assert.equal((await request(`${b.url}/p`)).headers["x-cache"], "HIT");
    assert.equal((await request(`${b.url}/p`)).headers["x-cache-tier"], "memory");
    const r = await request(`${a.adminUrl}/purge`, {
      method: "POST",
      body: JSON.stringify({ tags: ["t1"] }),
      headers: { authorization: "Bearer test-admin-token-123456" },
    });
    assert.equal(r.status, 200);
    await sleep(100); // pub/sub fan-out
    const after = await request(`${b.url}/p`);
    assert.equal(after.headers["x-cache"], "MISS", "gone from B's memory and from Redis");
    assert.equal(up.hits(), 2);
  });

  test("Redis killed mid-run: no 5xx, memory hits continue, misses still reach the upstream", async () => {
    const { up, a } = await pair();
    await request(`${a.url}/warm`);
    redis.kill();
    await sleep(50);
    const statuses: number[] = [];
    const caches: string[] = [];
    for (let i = 0; i < 30; i++) {
      const r = await request(`${a.url}/${i % 3 === 0 ? "warm" : `cold${i}`}`, { timeoutMs: 3000 });
      statuses.push(r.status);
      caches.push(String(r.headers["x-cache"]));
    }
    assert.ok(
      statuses.every((s) => s === 200),
      `statuses: ${statuses.join(",")}`,
    );
    assert.equal(
      caches.filter((c) => c === "HIT").length,
      10,
      "the warm entry kept being served from memory",
    );
    const metrics = (await request(`${a.adminUrl}/metrics`)).text;
    assert.match(metrics, /cachegate_redis_errors_total\{op="[a-z.]+"\} [1-9]/);
    await redis.restart();
    // Once Redis is back the instance reconnects by itself and stores to L2 again.
    let l2 = false;
    for (let i = 0; i < 50 && !l2; i++) {
      await sleep(100);
      await request(`${a.url}/after-restart-${i}`);
      const other = await startGateProbe(up, i);
      l2 = other;
    }
    assert.ok(l2, "entries reach Redis again after it restarts");
  });
});

/** True when the entry for /after-restart-i is in Redis (a HIT from the Redis tier of a fresh instance). */
async function startGateProbe(up: TestUpstream, i: number): Promise<boolean> {
  const probe = await startGate({
    upstreams: [{ name: "up", url: up.url }],
    routes: [{ name: "api", upstream: "up" }],
    redis: { url: redis.url, keyPrefix: `cgtest${prefixN}:` },
    log: { level: "silent" },
  });
  try {
    await sleep(50);
    const r = await request(`${probe.url}/after-restart-${i}`);
    return r.headers["x-cache-tier"] === "redis";
  } finally {
    await probe.close(200);
  }
}
