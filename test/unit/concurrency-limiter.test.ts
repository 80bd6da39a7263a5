// The per-upstream concurrency limiter on its own (local mode): the cap, the bounded queue and wait, cancellation,
// permit reuse, adaptive limit changes, and the bottleneck patch it relies on.
import assert from "node:assert/strict";
import { EventEmitter } from "node:events";
import { after, describe, test } from "node:test";
import type { UpstreamConfig } from "../../config/schema.js";
import type { ProxyError } from "../../proxy/errors.js";
import { BOTTLENECK_PATCH, Bottleneck } from "../../proxy/resilience/bottleneck.js";
import {
  type LimiterEvents,
  SLOT_LINGER_MS,
  type Slot,
  UpstreamLimiter,
} from "../../proxy/resilience/upstream-limiter.js";
import { configFrom } from "../helpers/cachegate.js";
import { sleep } from "../helpers/http.js";

type Concurrency = UpstreamConfig["concurrency"];
const limiters: UpstreamLimiter[] = [];
after(async () => {
  for (const l of limiters) await l.close();
});

function limiter(opts: Partial<Concurrency> = {}): {
  l: UpstreamLimiter;
  events: EventEmitter<LimiterEvents>;
} {
  const cfg: Concurrency = {
    enabled: true,
    adaptive: false,
    initial: 3,
    min: 1,
    max: 50,
    maxQueue: 10,
    maxWait: 5_000,
    latencyTolerance: 2,
    shared: false,
    ...opts,
  };
  const events = new EventEmitter<LimiterEvents>();
  const l = new UpstreamLimiter("up", cfg, events);
  limiters.push(l);
  return { l, events };
}

/** Runs `n` requests through `l`, each holding its slot for `holdMs`; returns the peak number held at once. */
async function load(l: UpstreamLimiter, n: number, holdMs: number): Promise<number> {
  let held = 0;
  let peak = 0;
  await Promise.all(
    Array.from({ length: n }, async () => {
      const slot = await l.acquire();
      held++;
      peak = Math.max(peak, held);
      await sleep(holdMs);
      held--;
      slot.release({ status: 200, ttfbMs: holdMs });
    }),
  );
  return peak;
}

describe("upstream concurrency limiter", () => {
  test("bottleneck 2.19.5 is patched: its steps no longer wait on 1 ms timers", async () => {
    assert.equal(BOTTLENECK_PATCH.applied, true, BOTTLENECK_PATCH.reason);
    // Counted, not timed (a busy machine makes a jobs/s threshold flaky): unpatched, every job makes four
    // zero-delay setTimeout calls (Node clamps each to 1 ms, which caps a limiter at ~400 jobs/s, ../shared/LIBRARIES.md
    // §3); patched, one. bottleneck looks setTimeout up on the global object at each call.
    const b = new Bottleneck({ maxConcurrent: 50 });
    const realSetTimeout = globalThis.setTimeout;
    let zeroDelay = 0;
    globalThis.setTimeout = ((fn: (...a: unknown[]) => void, ms?: number, ...args: unknown[]) => {
      if (!(typeof ms === "number" && ms > 0)) zeroDelay++;
      return realSetTimeout(fn, ms, ...args);
    }) as typeof setTimeout;
    const jobs = 200;
    let ran = 0;
    try {
      await Promise.all(
        Array.from({ length: jobs }, () =>
          b.schedule(() => {
            ran++;
            return Promise.resolve();
          }),
        ),
      );
    } finally {
      globalThis.setTimeout = realSetTimeout;
    }
    assert.equal(ran, jobs);
    assert.ok(
      zeroDelay <= jobs * 1.5,
      `${zeroDelay} zero-delay timers for ${jobs} jobs (unpatched: ${jobs * 4})`,
    );
    await b.disconnect();
  });

  test("never lets more than the limit hold a slot", async () => {
    const { l } = limiter({ initial: 3 });
    assert.equal(await load(l, 12, 30), 3);
    assert.equal(l.stats().inFlight, 0);
    assert.equal(l.stats().acquired, 12);
  });

  test("refuses at once beyond limit + maxQueue, with 503 upstream_overloaded and Retry-After", async () => {
    const { l, events } = limiter({ initial: 2, maxQueue: 2, maxWait: 4_000 });
    const reasons: string[] = [];
    events.on("rejected", (r) => reasons.push(r.reason));
    const granted = [l.acquire(), l.acquire(), l.acquire(), l.acquire()];
    const started = performance.now();
    await assert.rejects(l.acquire(), (err: ProxyError) => {
      assert.equal(err.code, "upstream_overloaded");
      assert.equal(err.status, 503);
      assert.equal(err.headers["retry-after"], "4");
      return true;
    });
    assert.ok(performance.now() - started < 50, "refused without waiting");
    assert.deepEqual(reasons, ["queue_full"]);
    const slots = await Promise.all(granted.slice(0, 2));
    assert.equal(l.stats().queued, 2);
    for (const s of slots) s.release();
    for (const s of await Promise.all(granted.slice(2))) s.release();
    assert.equal(l.stats().rejected.queue_full, 1);
  });

  test("a request that waits longer than maxWait is refused (wait_timeout), never left hanging", async () => {
    const { l } = limiter({ initial: 1, maxWait: 200 });
    const first = await l.acquire();
    const started = performance.now();
    await assert.rejects(l.acquire(), (err: ProxyError) => err.code === "upstream_overloaded");
    const waited = performance.now() - started;
    assert.ok(waited >= 190 && waited < 1_000, `refused after ${Math.round(waited)} ms`);
    assert.equal(l.stats().rejected.wait_timeout, 1);
    assert.equal(l.stats().queued, 0);
    first.release();
    (await l.acquire()).release();
  });

  test("waiters are served first come, first served", async () => {
    const { l } = limiter({ initial: 1 });
    const first = await l.acquire();
    const order: number[] = [];
    const waiting = [1, 2, 3].map((i) =>
      l.acquire().then((s) => {
        order.push(i);
        s.release();
      }),
    );
    await sleep(20);
    first.release();
    await Promise.all(waiting);
    assert.deepEqual(order, [1, 2, 3]);
  });

  test("a request whose client leaves while waiting leaves the queue", async () => {
    const { l } = limiter({ initial: 1 });
    const first = await l.acquire();
    const client = new EventEmitter();
    const waiting = l.acquire(client as never);
    await sleep(10);
    assert.equal(l.stats().queued, 1);
    client.emit("close");
    await assert.rejects(waiting, { code: "client_closed" });
    assert.equal(l.stats().queued, 0);
    assert.equal(
      l.stats().rejected.queue_full + l.stats().rejected.wait_timeout,
      0,
      "not an overload refusal",
    );
    first.release();
  });

  test("released slots are reused without a bottleneck job, and go back to bottleneck once idle", async () => {
    const { l } = limiter({ initial: 4 });
    for (let i = 0; i < 200; i++) (await l.acquire()).release({ status: 200, ttfbMs: 1 });
    assert.equal(l.stats().acquired, 200);
    assert.equal(l.stats().jobs, 1, "one permit from bottleneck, reused 199 times");
    assert.equal(l.stats().held, 1);
    assert.equal(SLOT_LINGER_MS.local, 5_000);
    await sleep(SLOT_LINGER_MS.local + 1_200);
    assert.equal(l.stats().held, 0, "returned after lingering");
  });

  test("release is idempotent", async () => {
    const { l } = limiter({ initial: 1 });
    const s: Slot = await l.acquire();
    s.release();
    s.release();
    assert.equal(l.stats().inFlight, 0);
    const again = await l.acquire();
    assert.equal(l.stats().inFlight, 1);
    again.release();
  });

  test("the adaptive limit follows overload signals, and the cap follows the limit", async () => {
    const { l, events } = limiter({ adaptive: true, initial: 20, min: 2, max: 50, maxQueue: 50 });
    const changes: number[] = [];
    events.on("limit", (c) => changes.push(c.limit));
    // Windows close after ≥ 10 samples and 200 ms; 503s back off × 0.9 per window.
    const deadline = performance.now() + 5_000;
    while (l.stats().limit > 5 && performance.now() < deadline) {
      const slot = await l.acquire();
      await sleep(5);
      slot.release({ status: 503, ttfbMs: 5 });
    }
    const limit = l.stats().limit;
    assert.ok(limit <= 5, `limit came down to ${limit}`);
    assert.ok(changes.length > 0 && changes.every((c, i) => i === 0 || c < (changes[i - 1] as number)));
    await sleep(50); // bottleneck has applied the new maxConcurrent
    assert.ok((await load(l, 20, 20)) <= limit + 1, "in flight follows the lowered limit");
  });

  test("config: a shared limit needs a bounded wait (maxWait 0 is refused with shared: true)", () => {
    const raw = (concurrency: Record<string, unknown>) => ({
      upstreams: [{ name: "up", url: "http://127.0.0.1:9", concurrency }],
      routes: [{ name: "all", upstream: "up" }],
    });
    assert.throws(
      () => configFrom(raw({ shared: true, maxWait: 0 })),
      /upstreams\[0\]\.concurrency\.maxWait: must be above 0 with shared: true/,
    );
    assert.equal(configFrom(raw({ shared: false, maxWait: 0 })).upstreams[0]?.concurrency.maxWait, 0);
  });

  test("close() refuses waiters and new requests", async () => {
    const { l } = limiter({ initial: 1 });
    const first = await l.acquire();
    const waiting = assert.rejects(l.acquire(), { code: "upstream_overloaded" });
    await l.close();
    await waiting;
    await assert.rejects(l.acquire(), { code: "upstream_overloaded" });
    first.release();
  });
});
