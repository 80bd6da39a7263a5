// Coalescing across instances through a real redis-server: two SingleFlight instances with their own clients and
// buses stand for two cachegate processes.
import assert from "node:assert/strict";
import { once } from "node:events";
import { performance } from "node:perf_hooks";
import { after, before, test } from "node:test";
import { Redis } from "ioredis";
import { RedisBus } from "../../proxy/cache/bus.js";
import { type Follower, type Leader, SingleFlight } from "../../proxy/cache/single-flight.js";
import { startRedis, type TestRedis } from "../helpers/redis.js";
import { until } from "../helpers/wait.js";

// Production-like settings, for the outage test.
const CLIENT_OPTIONS = { maxRetriesPerRequest: 1, enableOfflineQueue: false, commandTimeout: 100 };
// The coordination tests check who leads and who hears what, not timeouts: on a loaded CI machine a 100 ms command
// timeout would make an instance fail open (lead) and turn a scheduling hiccup into a wrong leader count.
const PATIENT = { commandTimeout: 2_000, acquireTimeoutMs: 2_000 };
const ROUNDS = 5;

let server: TestRedis;
let prefixSeq = 0;

before(async () => {
  server = await startRedis();
});
after(async () => {
  await server.stop();
});

async function client(commandTimeout = CLIENT_OPTIONS.commandTimeout): Promise<Redis> {
  const c = new Redis(server.url, { ...CLIENT_OPTIONS, commandTimeout });
  c.on("error", () => {}); // connection errors are expected in the tests that kill redis-server
  if (c.status !== "ready") await once(c, "ready");
  return c;
}

interface Instance {
  id: string;
  flights: SingleFlight;
  bus: RedisBus;
  client: Redis;
  errors: string[];
}

/** Two "processes" on one Redis, subscribed (confirmed by PUBSUB NUMSUB) before the test starts. */
async function twoInstances(
  leaseMs: number,
  passMs = 0,
): Promise<{ a: Instance; b: Instance; keyPrefix: string; close(): Promise<void> }> {
  const keyPrefix = `sf${++prefixSeq}:`;
  const make = async (id: string): Promise<Instance> => {
    const errors: string[] = [];
    const onError = (op: string, err: unknown) => errors.push(`${op}: ${(err as Error).message}`);
    const c = await client(PATIENT.commandTimeout);
    const bus = new RedisBus(c, { keyPrefix, instanceId: id, onError });
    const flights = new SingleFlight({
      redis: c,
      bus,
      keyPrefix,
      instanceId: id,
      leaseMs,
      onError,
      acquireTimeoutMs: PATIENT.acquireTimeoutMs,
      passMs,
    });
    return { id, flights, bus, client: c, errors };
  };
  const a = await make("a");
  const b = await make("b");
  await until("both buses subscribed", async () => {
    const reply = (await a.client.pubsub("NUMSUB", `${keyPrefix}flight`)) as [string, number];
    return Number(reply[1]) === 2;
  });
  return {
    a,
    b,
    keyPrefix,
    async close() {
      for (const i of [a, b]) {
        i.flights.close();
        await i.bus.close();
        i.client.disconnect();
      }
    },
  };
}

function leaders(flights: Array<Leader | Follower>): Leader[] {
  return flights.filter((f): f is Leader => f.role === "leader");
}
function followers(flights: Array<Leader | Follower>): Follower[] {
  return flights.filter((f): f is Follower => f.role === "follower");
}

function median(xs: number[]): number {
  const sorted = [...xs].sort((x, y) => x - y);
  return sorted[Math.floor(sorted.length / 2)] as number;
}

test("100 concurrent acquires over two instances elect one leader; its release reaches remote followers by pub/sub", async () => {
  const { a, b, keyPrefix, close } = await twoInstances(5_000);
  const remoteLatencies: number[] = [];
  const localLatencies: number[] = [];
  try {
    // Several rounds: one scheduling stall of this (shared) machine must not decide a latency assertion.
    for (let round = 0; round < ROUNDS; round++) {
      const key = `GET /x/${round}`;
      const acquires = Array.from({ length: 100 }, (_, i) => (i % 2 === 0 ? a : b).flights.acquire(key));
      const results = await Promise.all(acquires);
      const onA = results.filter((_, i) => i % 2 === 0);
      const onB = results.filter((_, i) => i % 2 === 1);
      assert.equal(leaders(results).length, 1, "exactly one leader over both instances");
      assert.equal(a.flights.inFlight() + b.flights.inFlight(), 1);
      const leader = leaders(results)[0] as Leader;
      const leaderOnA = leaders(onA).length === 1;
      const remote = followers(leaderOnA ? onB : onA);
      const local = followers(leaderOnA ? onA : onB);
      assert.equal(remote.length, 50);
      assert.equal(local.length, 49);
      assert.equal(await a.client.exists(`${keyPrefix}l:${key}`), 1, "the leader holds the Redis lease");

      const timed = (fs: Follower[]) =>
        fs.map((f) => f.wait(2_000).then((outcome) => ({ outcome, at: performance.now() })));
      const remoteWaits = timed(remote);
      const localWaits = timed(local);
      await new Promise((resolve) => setTimeout(resolve, 30)); // the followers are really waiting now
      const releasedAt = performance.now();
      leader.release("stored");
      const remoteDone = await Promise.all(remoteWaits);
      const localDone = await Promise.all(localWaits);

      // "stored", not "failed": the message, not the lease poll, resolved them.
      assert.deepEqual(new Set(remoteDone.map((r) => r.outcome)), new Set(["stored"]));
      assert.deepEqual(new Set(localDone.map((r) => r.outcome)), new Set(["stored"]));
      remoteLatencies.push(Math.max(...remoteDone.map((r) => r.at)) - releasedAt);
      localLatencies.push(Math.max(...localDone.map((r) => r.at)) - releasedAt);

      await until("lease deleted", async () => (await a.client.exists(`${keyPrefix}l:${key}`)) === 0);
      assert.equal(a.flights.inFlight() + b.flights.inFlight(), 0);
      const next = await (leaderOnA ? b : a).flights.acquire(key);
      assert.equal(next.role, "leader", "after the release the other instance can lead");
      if (next.role === "leader") next.release("failed");
    }
    const fmt = (xs: number[]) => xs.map((x) => x.toFixed(1)).join(", ");
    console.log(
      `release → last local follower (ms): ${fmt(localLatencies)}; median ${median(localLatencies).toFixed(2)}`,
    );
    console.log(
      `release → last remote follower (ms): ${fmt(remoteLatencies)}; median ${median(remoteLatencies).toFixed(2)}`,
    );
    assert.ok(
      median(remoteLatencies) < 50,
      `remote followers resolved ${fmt(remoteLatencies)} ms after release`,
    );
    assert.ok(
      median(localLatencies) < 50,
      `local followers resolved ${fmt(localLatencies)} ms after release`,
    );
    assert.deepEqual([...a.errors, ...b.errors], []);
  } finally {
    await close();
  }
});

test("followers of a leader that never releases (crashed) resolve 'failed' once its lease expires", async () => {
  const { a, b, close } = await twoInstances(300);
  try {
    const crashed = await a.flights.acquire("k");
    assert.equal(crashed.role, "leader"); // dropped without release: the process "died"
    const f1 = await b.flights.acquire("k");
    const f2 = await b.flights.acquire("k");
    assert.equal(f1.role, "follower");
    assert.equal(f2.role, "follower");
    if (f1.role !== "follower" || f2.role !== "follower") return;
    const started = performance.now();
    const outcomes = await Promise.all([f1.wait(2_000), f2.wait(2_000)]);
    const waited = performance.now() - started;
    assert.deepEqual(outcomes, ["failed", "failed"]);
    console.log(`crashed leader: followers resolved after ${waited.toFixed(0)} ms (lease 300 ms)`);
    assert.ok(waited >= 250 && waited < 1_000, `resolved after ${waited.toFixed(0)} ms`);
    const again = await b.flights.acquire("k");
    assert.equal(again.role, "leader", "with the lease gone, the follower's instance leads the retry");
    if (again.role === "leader") again.release("stored");
    assert.deepEqual([...a.errors, ...b.errors], []);
  } finally {
    await close();
  }
});

test("a remote follower whose completion message is lost still resolves by polling the lease", async () => {
  const { a, b, close } = await twoInstances(5_000);
  try {
    // B has no bus: it can only learn of the release through the lease.
    const deaf = new SingleFlight({
      redis: b.client,
      keyPrefix: "",
      instanceId: "deaf",
      leaseMs: 5_000,
      acquireTimeoutMs: PATIENT.acquireTimeoutMs,
      onError: (op) => b.errors.push(op),
    });
    const lead = new SingleFlight({
      redis: a.client,
      keyPrefix: "",
      instanceId: "lead",
      leaseMs: 5_000,
      acquireTimeoutMs: PATIENT.acquireTimeoutMs,
      onError: (op) => a.errors.push(op),
    });
    const leader = await lead.acquire("p");
    const follower = await deaf.acquire("p");
    assert.ok(leader.role === "leader" && follower.role === "follower");
    const waiting = follower.wait(2_000);
    const releasedAt = performance.now();
    leader.release("stored");
    assert.equal(
      await waiting,
      "failed",
      "a lease gone without a message reads as failed: re-check, maybe lead",
    );
    const ms = performance.now() - releasedAt;
    assert.ok(ms < 500, `resolved ${ms.toFixed(0)} ms after release (poll every ~100 ms)`);
    deaf.close();
    lead.close();
    assert.deepEqual([...a.errors, ...b.errors], []);
  } finally {
    await close();
  }
});

test("a follower's wait timeout resolves 'timeout' while the remote flight goes on", async () => {
  const { a, b, close } = await twoInstances(5_000);
  try {
    const leader = await a.flights.acquire("t");
    const follower = await b.flights.acquire("t");
    assert.ok(leader.role === "leader" && follower.role === "follower");
    assert.equal(await follower.wait(50), "timeout");
    const later = follower.wait(2_000);
    leader.release("uncacheable");
    assert.equal(await later, "uncacheable");
  } finally {
    await close();
  }
});

test("with redis-server killed, acquire still returns a leader quickly and reports the error", async () => {
  const errors: string[] = [];
  const c = await client();
  const sf = new SingleFlight({
    redis: c,
    keyPrefix: "down:",
    instanceId: "x",
    leaseMs: 1_000,
    onError: (op) => errors.push(op),
  });
  try {
    server.kill();
    const started = performance.now();
    const first = await sf.acquire("k");
    const follower = await sf.acquire("k");
    const ms = performance.now() - started;
    console.log(`acquire with redis-server killed: ${ms.toFixed(1)} ms`);
    assert.equal(first.role, "leader");
    assert.equal(follower.role, "follower", "in-process coalescing still works without Redis");
    assert.ok(ms < 300, `acquire took ${ms.toFixed(0)} ms`);
    assert.ok(errors.includes("flight.acquire"), `errors: ${errors.join(", ")}`);
    if (first.role === "leader") first.release("stored");
    if (follower.role === "follower") assert.equal(await follower.wait(100), "stored");

    // Another key while Redis is still down: each acquire is bounded, none queues behind the outage.
    const t2 = performance.now();
    const second = await sf.acquire("k2");
    assert.equal(second.role, "leader");
    assert.ok(performance.now() - t2 < 300);
    if (second.role === "leader") second.release("failed");
  } finally {
    sf.close();
    c.disconnect();
    await server.restart();
  }
});

test("an uncacheable outcome marks the key for hit-for-miss where requests waited for it, remote followers included", async () => {
  const { a, b, close } = await twoInstances(5_000, 60_000);
  try {
    const key = "GET /uncacheable";
    const leader = await a.flights.acquire(key, 5_000, true);
    const local = await a.flights.acquire(key, 5_000, true);
    const remote = await b.flights.acquire(key, 5_000, true);
    assert.ok(leader.role === "leader" && local.role === "follower" && remote.role === "follower");
    const waited = Promise.all([local.wait(2_000), remote.wait(2_000)]);
    leader.release("uncacheable");
    assert.deepEqual(await waited, ["uncacheable", "uncacheable"], "the remote one told by the message");
    assert.ok(a.flights.pass(key), "marked where it was fetched (a request waited there)");
    assert.ok(b.flights.pass(key), "marked where it was followed");

    // An instance where nobody waited marks nothing.
    const alone = await b.flights.acquire("GET /asked-once", 5_000, true);
    assert.equal(alone.role, "leader");
    if (alone.role === "leader") alone.release("uncacheable");
    assert.equal(b.flights.pass("GET /asked-once"), undefined);
    assert.deepEqual([...a.errors, ...b.errors], []);
  } finally {
    await close();
  }
});
