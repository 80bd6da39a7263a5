// Upstream concurrency end to end: real upstreams with controllable latency, cachegate in front, the limit read from
// the admin /metrics endpoint, and two instances sharing a limit through a real redis-server.
import assert from "node:assert/strict";
import type { ServerResponse } from "node:http";
import { after, describe, test } from "node:test";
import { simpleConfig, startGate, type TestGate } from "../helpers/cachegate.js";
import { type Reply, readFrames, request, sleep } from "../helpers/http.js";
import { metric } from "../helpers/metrics.js";
import { startRedis, type TestRedis } from "../helpers/redis.js";
import { closedPort, startUpstream, type TestUpstream } from "../helpers/upstream.js";

const toClose: Array<{ close(): Promise<void> }> = [];
after(async () => {
  for (const c of toClose.reverse()) await c.close();
});

/** An upstream answering after `delayMs` (changeable), counting how many requests it holds at once. */
async function slowUpstream(delayMs: number): Promise<{
  up: TestUpstream;
  peak(): number;
  setDelay(ms: number): void;
  resetPeak(): void;
}> {
  let delay = delayMs;
  let open = 0;
  let peak = 0;
  const up = await startUpstream((req, res) => {
    open++;
    peak = Math.max(peak, open);
    const answer = () => {
      open--;
      const body = JSON.stringify({ url: req.url });
      res.writeHead(200, { "content-type": "application/json", "content-length": body.length });
      res.end(body);
    };
    setTimeout(answer, delay);
  });
  toClose.push(up);
  return {
    up,
    peak: () => peak,
    setDelay: (ms) => {
      delay = ms;
    },
    resetPeak: () => {
      peak = open;
    },
  };
}

/** An upstream that holds every request until the test lets them go. */
async function heldUpstream(): Promise<{ up: TestUpstream; letGo(): void }> {
  const held: ServerResponse[] = [];
  let released = false;
  const answer = (res: ServerResponse) => {
    res.writeHead(200, { "content-type": "text/plain", "content-length": "2" });
    res.end("ok");
  };
  const up = await startUpstream((_req, res) => (released ? answer(res) : held.push(res)));
  toClose.push(up);
  return {
    up,
    letGo: () => {
      released = true;
      for (const res of held.splice(0)) answer(res);
    },
  };
}

async function gateFor(
  up: TestUpstream,
  concurrency: Record<string, unknown>,
  extra: Record<string, unknown> = {},
  cache: Record<string, unknown> = { enabled: false },
): Promise<TestGate> {
  const cfg = simpleConfig(up.url, extra);
  cfg.upstreams = [{ name: "up", url: up.url, concurrency }];
  cfg.routes = [{ name: "all", upstream: "up", cache }];
  const gate = await startGate(cfg);
  toClose.push({ close: () => gate.close(500) });
  return gate;
}

async function waitFor(what: string, ok: () => boolean | Promise<boolean>, ms = 5_000): Promise<void> {
  const deadline = performance.now() + ms;
  while (!(await ok())) {
    if (performance.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(20);
  }
}

const code = (r: Reply) => r.json<{ error: { code: string } }>().error.code;

describe("upstream concurrency", () => {
  test("never has more requests in flight upstream than the limit", async () => {
    const s = await slowUpstream(80);
    const gate = await gateFor(s.up, { adaptive: false, initial: 3 });
    const replies = await Promise.all(Array.from({ length: 15 }, (_, i) => request(`${gate.url}/c/${i}`)));
    assert.deepEqual(new Set(replies.map((r) => r.status)), new Set([200]));
    assert.equal(s.peak(), 3);
    assert.equal(s.up.hits(), 15);
    assert.equal(await metric(gate, 'cachegate_upstream_concurrency_limit{upstream="up"}'), 3);
    assert.equal(await metric(gate, 'cachegate_upstream_in_flight{upstream="up"}'), 0);
  });

  test("an event stream holds its slot until the stream ends", async () => {
    const up = await startUpstream((req, res) => {
      if (req.url !== "/sse") {
        res.writeHead(200, { "content-length": "2" });
        return void res.end("ok");
      }
      res.writeHead(200, { "content-type": "text/event-stream" });
      let n = 0;
      const timer = setInterval(() => {
        res.write(`data: ${n}\n\n`);
        if (++n === 3) {
          clearInterval(timer);
          res.end();
        }
      }, 150);
    });
    toClose.push(up);
    const gate = await gateFor(up, { adaptive: false, initial: 1, min: 1 });
    const started = performance.now();
    const stream = readFrames(`${gate.url}/sse`);
    await sleep(60);
    const other = await request(`${gate.url}/other`);
    const otherDone = performance.now() - started;
    const frames = await stream;
    assert.equal(frames.frames.length, 3);
    assert.equal(other.status, 200);
    assert.ok(
      otherDone >= 400,
      `the second request waited for the stream to end (${otherDone.toFixed(0)} ms)`,
    );
  });

  test("beyond limit + maxQueue: 503 upstream_overloaded at once with Retry-After; the queued ones complete", async () => {
    const h = await heldUpstream();
    const gate = await gateFor(h.up, { adaptive: false, initial: 2, maxQueue: 2, maxWait: "3s" });
    const admitted = Array.from({ length: 4 }, (_, i) => request(`${gate.url}/q/${i}`));
    await waitFor("two requests upstream", () => h.up.hits() === 2);
    await waitFor(
      "two queued",
      async () => (await metric(gate, 'cachegate_upstream_queued{upstream="up"}')) === 2,
    );
    for (let i = 0; i < 3; i++) {
      const started = performance.now();
      const r = await request(`${gate.url}/q/over${i}`);
      assert.ok(performance.now() - started < 100, "refused without waiting");
      assert.equal(r.status, 503);
      assert.equal(code(r), "upstream_overloaded");
      assert.equal(r.headers["retry-after"], "3");
    }
    h.letGo();
    for (const r of await Promise.all(admitted)) assert.equal(r.status, 200);
    assert.equal(h.up.hits(), 4);
    assert.equal(
      await metric(gate, 'cachegate_upstream_rejected_total{upstream="up",reason="queue_full"}'),
      3,
    );
    assert.equal(
      await metric(gate, 'cachegate_upstream_rejected_total{upstream="up",reason="wait_timeout"}'),
      0,
    );
  });

  test("a request that waits longer than maxWait gets 503 upstream_overloaded, never a hang", async () => {
    const h = await heldUpstream();
    const gate = await gateFor(h.up, { adaptive: false, initial: 1, min: 1, maxWait: "300ms" });
    const first = request(`${gate.url}/w/1`);
    await waitFor("the first request upstream", () => h.up.hits() === 1);
    const started = performance.now();
    const r = await request(`${gate.url}/w/2`);
    const waited = performance.now() - started;
    assert.equal(r.status, 503);
    assert.equal(code(r), "upstream_overloaded");
    assert.equal(r.headers["retry-after"], "1");
    assert.ok(waited >= 280 && waited < 2_000, `refused after ${waited.toFixed(0)} ms`);
    assert.equal(h.up.hits(), 1, "it never reached the upstream");
    h.letGo();
    assert.equal((await first).status, 200);
    assert.equal(
      await metric(gate, 'cachegate_upstream_rejected_total{upstream="up",reason="wait_timeout"}'),
      1,
    );
  });

  test("cache hits never touch the limiter", async () => {
    const s = await slowUpstream(0);
    const gate = await gateFor(s.up, { initial: 2 }, {}, { mode: "override", ttl: "60s" });
    assert.equal((await request(`${gate.url}/hot`)).headers["x-cache"], "MISS");
    const limiter = gate.limiters.get("up");
    assert.ok(limiter);
    assert.equal(limiter.stats().acquired, 1);
    // 400 hits, 20 at a time: far more concurrency than the limit of 2, none of it upstream.
    for (let round = 0; round < 20; round++) {
      const replies = await Promise.all(Array.from({ length: 20 }, () => request(`${gate.url}/hot`)));
      for (const r of replies) assert.equal(r.headers["x-cache"], "HIT");
    }
    assert.equal(limiter.stats().acquired, 1, "400 hits, no slot asked for");
    assert.equal(s.up.hits(), 1);
  });

  test("latency climbing lowers the concurrency limit, and recovery raises it again", async () => {
    const s = await slowUpstream(5);
    const gate = await gateFor(s.up, {
      adaptive: true,
      initial: 16,
      min: 2,
      max: 64,
      maxQueue: 1_000,
      maxWait: "10s",
    });
    const limit = () => metric(gate, 'cachegate_upstream_concurrency_limit{upstream="up"}');
    const statuses = new Set<number>();
    let phaseEnd = 0;
    let n = 0;
    // 24 clients, each sending one request after another until the phase ends (bounded by time and count).
    const phase = async (ms: number) => {
      phaseEnd = performance.now() + ms;
      await Promise.all(
        Array.from({ length: 24 }, async () => {
          while (performance.now() < phaseEnd && n < 40_000) {
            statuses.add((await request(`${gate.url}/l/${n++}`)).status);
          }
        }),
      );
    };
    await phase(2_000);
    const before = (await limit()) as number;
    const baseline = (await metric(
      gate,
      'cachegate_upstream_latency_baseline_seconds{upstream="up"}',
    )) as number;
    assert.ok(baseline > 0 && baseline < 0.06, `baseline ${baseline} s`);
    s.setDelay(120);
    await phase(2_500);
    const climbed = (await limit()) as number;
    assert.ok(climbed < before, `limit fell from ${before} to ${climbed} as latency climbed`);
    s.setDelay(5);
    await phase(3_000);
    const recovered = (await limit()) as number;
    assert.ok(recovered > climbed, `limit rose from ${climbed} to ${recovered} after recovery`);
    assert.deepEqual([...statuses], [200], "no request failed on the way");
  });

  test("upstreams with concurrency.enabled false have no limiter", async () => {
    const s = await slowUpstream(300);
    const gate = await gateFor(s.up, { enabled: false });
    await Promise.all(Array.from({ length: 40 }, (_, i) => request(`${gate.url}/u/${i}`)));
    assert.ok(s.peak() > 32, `${s.peak()} at once upstream, more than the default limit of 32`);
    assert.equal(gate.limiters.get("up"), undefined);
    assert.equal(await metric(gate, 'cachegate_upstream_concurrency_limit{upstream="up"}'), undefined);
  });
});

describe("shared upstream concurrency (redis)", () => {
  let redis: TestRedis;

  test("two instances sharing Redis respect one limit", async () => {
    redis = await startRedis();
    toClose.push({ close: () => redis.stop() });
    const s = await slowUpstream(150);
    const shared = { adaptive: false, initial: 3, shared: true, maxWait: "10s" };
    const a = await gateFor(s.up, shared, { redis: { url: redis.url } });
    const b = await gateFor(s.up, shared, { redis: { url: redis.url } });
    await waitFor("both limiters shared", () =>
      [a, b].every((g) => g.limiters.get("up")?.stats().mode === "shared"),
    );
    const replies = await Promise.all(
      Array.from({ length: 16 }, (_, i) => request(`${(i % 2 ? a : b).url}/s/${i}`, { timeoutMs: 15_000 })),
    );
    assert.deepEqual(new Set(replies.map((r) => r.status)), new Set([200]));
    assert.equal(s.peak(), 3, "3 in flight across both instances, not 3 each");

    // Redis goes away: requests keep flowing (each instance enforces the limit alone), no 5xx, no hang.
    await redis.stop();
    s.setDelay(20);
    const started = performance.now();
    const during = await Promise.all(
      Array.from({ length: 20 }, (_, i) => request(`${(i % 2 ? a : b).url}/d/${i}`, { timeoutMs: 10_000 })),
    );
    assert.deepEqual(new Set(during.map((r) => r.status)), new Set([200]));
    assert.ok(performance.now() - started < 8_000, "no request waited on the dead Redis");
    await waitFor("both limiters local", () =>
      [a, b].every((g) => g.limiters.get("up")?.stats().mode === "local"),
    );
    const warn = a
      .logs()
      .find((l) => String(l.msg).startsWith("redis unusable for the shared concurrency limit"));
    assert.ok(warn, "the fallback is logged");

    // Redis is back (empty): the instances share the limit again.
    await redis.restart();
    await waitFor(
      "both limiters shared again",
      () => [a, b].every((g) => g.limiters.get("up")?.stats().mode === "shared"),
      10_000,
    );
    s.setDelay(150);
    s.resetPeak();
    const again = await Promise.all(
      Array.from({ length: 16 }, (_, i) => request(`${(i % 2 ? a : b).url}/r/${i}`, { timeoutMs: 15_000 })),
    );
    assert.deepEqual(new Set(again.map((r) => r.status)), new Set([200]));
    assert.equal(s.peak(), 3);
  });

  test("Redis down at start: requests are served at once with the local limit", async () => {
    const s = await slowUpstream(5);
    const port = await closedPort();
    const gate = await gateFor(
      s.up,
      { adaptive: false, initial: 2, shared: true },
      { redis: { url: `redis://127.0.0.1:${port}`, connectTimeout: "200ms" } },
    );
    const started = performance.now();
    const replies = await Promise.all(Array.from({ length: 10 }, (_, i) => request(`${gate.url}/x/${i}`)));
    assert.deepEqual(new Set(replies.map((r) => r.status)), new Set([200]));
    assert.ok(performance.now() - started < 2_000);
    assert.equal(s.peak(), 2);
    assert.equal(gate.limiters.get("up")?.stats().mode, "local");
  });
});
