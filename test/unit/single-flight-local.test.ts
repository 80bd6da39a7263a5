// In-process coalescing (no Redis): one leader per key, every follower woken by the leader's release.
import assert from "node:assert/strict";
import { performance } from "node:perf_hooks";
import { describe, test } from "node:test";
import { type Follower, type Leader, SingleFlight } from "../../proxy/cache/single-flight.js";

function localFlights(errors: string[] = [], leaseMs = 5_000): SingleFlight {
  return new SingleFlight({
    keyPrefix: "test:",
    instanceId: "local",
    leaseMs,
    onError: (op) => errors.push(op),
  });
}

function split(flights: Array<Leader | Follower>): { leaders: Leader[]; followers: Follower[] } {
  const leaders = flights.filter((f): f is Leader => f.role === "leader");
  const followers = flights.filter((f): f is Follower => f.role === "follower");
  return { leaders, followers };
}

test("coalesces 200 concurrent acquires into one leader whose release wakes all 199 followers at once", async () => {
  const errors: string[] = [];
  const sf = localFlights(errors);
  const latencies: number[] = [];
  // Several rounds: one scheduling stall of a shared machine must not decide the latency assertion.
  for (let round = 0; round < 5; round++) {
    const key = `k${round}`;
    const { leaders, followers } = split(
      await Promise.all(Array.from({ length: 200 }, () => sf.acquire(key))),
    );
    assert.equal(leaders.length, 1);
    assert.equal(followers.length, 199);
    assert.equal(sf.inFlight(), 1);

    const resolvedAt: number[] = [];
    const waits = followers.map((f) =>
      f.wait(5_000).then((outcome) => {
        resolvedAt.push(performance.now());
        return outcome;
      }),
    );
    const releasedAt = performance.now();
    leaders[0]?.release("stored");
    const outcomes = await Promise.all(waits);

    assert.equal(outcomes.length, 199);
    assert.deepEqual(new Set(outcomes), new Set(["stored"]));
    assert.equal(sf.inFlight(), 0);
    latencies.push(Math.max(...resolvedAt) - releasedAt);
  }
  const sorted = [...latencies].sort((x, y) => x - y);
  const median = sorted[2] as number;
  console.log(`local release → last of 199 followers (ms): ${latencies.map((l) => l.toFixed(2)).join(", ")}`);
  assert.ok(median < 50, `followers resolved ${latencies.join(", ")} ms after release`);
  assert.deepEqual(errors, []);
});

test("a follower that waits after the release still gets the outcome, immediately", async () => {
  const sf = localFlights();
  const leader = await sf.acquire("k");
  const follower = await sf.acquire("k");
  assert.equal(leader.role, "leader");
  assert.equal(follower.role, "follower");
  if (leader.role !== "leader" || follower.role !== "follower") return;
  leader.release("uncacheable");
  assert.equal(await follower.wait(10), "uncacheable");
});

test("a wait times out with 'timeout' and the flight stays led until its leader releases", async () => {
  const sf = localFlights();
  const leader = await sf.acquire("k");
  const follower = await sf.acquire("k");
  assert.ok(leader.role === "leader" && follower.role === "follower");

  const started = performance.now();
  assert.equal(await follower.wait(30), "timeout");
  const waited = performance.now() - started;
  assert.ok(waited >= 25 && waited < 500, `timed out after ${waited.toFixed(1)} ms`);
  assert.equal(sf.inFlight(), 1);

  // The timed-out waiter is gone; a second wait on the same follower still hears the release.
  const again = follower.wait(5_000);
  leader.release("failed");
  assert.equal(await again, "failed");
  assert.equal(sf.inFlight(), 0);
});

test("a zero or negative wait resolves 'timeout' at once unless the flight is over", async () => {
  const sf = localFlights();
  const leader = await sf.acquire("k");
  const follower = await sf.acquire("k");
  assert.ok(leader.role === "leader" && follower.role === "follower");
  assert.equal(await follower.wait(0), "timeout");
  assert.equal(await follower.wait(-1), "timeout");
  leader.release("stored");
  assert.equal(await follower.wait(0), "stored");
});

test("release is idempotent: the first outcome wins and a second release does not end a newer flight", async () => {
  const sf = localFlights();
  const first = await sf.acquire("k");
  const follower = await sf.acquire("k");
  assert.ok(first.role === "leader" && follower.role === "follower");
  first.release("stored");
  first.release("failed");
  assert.equal(await follower.wait(100), "stored");
  assert.equal(sf.inFlight(), 0);

  const second = await sf.acquire("k");
  const laterFollower = await sf.acquire("k");
  assert.ok(second.role === "leader" && laterFollower.role === "follower");
  first.release("failed"); // stale handle from the earlier flight
  assert.equal(sf.inFlight(), 1);
  assert.equal(await laterFollower.wait(30), "timeout");
  second.release("uncacheable");
  assert.equal(await laterFollower.wait(100), "uncacheable");
  assert.equal(sf.inFlight(), 0);
});

test("a new flight after a release gets a new leader, and different keys lead independently", async () => {
  const sf = localFlights();
  const a1 = await sf.acquire("a");
  const b1 = await sf.acquire("b");
  assert.equal(a1.role, "leader");
  assert.equal(b1.role, "leader");
  assert.equal(sf.inFlight(), 2);
  if (a1.role === "leader") a1.release("stored");
  const a2 = await sf.acquire("a");
  assert.equal(a2.role, "leader");
  assert.equal(sf.inFlight(), 2);
  if (a2.role === "leader") a2.release("stored");
  if (b1.role === "leader") b1.release("stored");
  assert.equal(sf.inFlight(), 0);
});

test("a leader that never releases frees its followers with 'failed' after leaseMs, and the next acquire leads", async () => {
  const sf = localFlights([], 100);
  const lost = await sf.acquire("k"); // never released: a lost code path
  const follower = await sf.acquire("k");
  assert.ok(lost.role === "leader" && follower.role === "follower");
  const started = performance.now();
  assert.equal(await follower.wait(2_000), "failed");
  const waited = performance.now() - started;
  assert.ok(waited >= 90 && waited < 1_000, `freed after ${waited.toFixed(0)} ms`);
  assert.equal(sf.inFlight(), 0);
  const next = await sf.acquire("k");
  assert.equal(next.role, "leader");
  lost.release("stored"); // too late: neither an error nor the end of the new flight
  assert.equal(sf.inFlight(), 1);
  if (next.role === "leader") next.release("stored");
  assert.equal(sf.inFlight(), 0);
});

test("a lost leader nobody follows: the next acquire after leaseMs leads, and a sweep drops it from the count", async () => {
  // A leader costs no timer of its own: its lease's end is checked by the next acquire and by a once-a-second sweep.
  const sf = localFlights([], 50);
  const lost = await sf.acquire("a"); // never released
  const alsoLost = await sf.acquire("b"); // never released, never asked for again
  assert.ok(lost.role === "leader" && alsoLost.role === "leader");
  assert.equal(sf.inFlight(), 2);
  await new Promise((r) => setTimeout(r, 80));
  const next = await sf.acquire("a");
  assert.equal(next.role, "leader", "the lease ended: a new leader, not a follower of the lost one");
  assert.equal(sf.inFlight(), 2, "a's lost leader settled; b's still counted until the sweep");
  if (next.role === "leader") next.release("stored");
  const end = Date.now() + 3_000;
  while (sf.inFlight() > 0 && Date.now() < end) await new Promise((r) => setTimeout(r, 50));
  assert.equal(sf.inFlight(), 0, "the sweep settled b's lost leader");
  const again = await sf.acquire("b");
  assert.equal(again.role, "leader");
  if (again.role === "leader") again.release("stored");
  sf.close();
});

describe("hit-for-miss", () => {
  const passFlights = (passMs: number) =>
    new SingleFlight({ keyPrefix: "test:", instanceId: "local", leaseMs: 5_000, passMs, onError: () => {} });
  /** A flight on `key` that one follower waits for, released with `outcome`. */
  const contested = async (sf: SingleFlight, key: string, outcome: "uncacheable" | "stored") => {
    const leader = await sf.acquire(key, 5_000, true);
    const follower = await sf.acquire(key, 5_000, true);
    assert.ok(leader.role === "leader" && follower.role === "follower");
    const waited = follower.wait(1_000);
    leader.release(outcome);
    assert.equal(await waited, outcome);
  };

  test("an uncacheable outcome marks the key; a stored one clears it; refresh flights never mark", async () => {
    const sf = passFlights(60_000);
    const leader = await sf.acquire("k", 5_000, true);
    const follower = await sf.acquire("k", 5_000, true);
    assert.ok(leader.role === "leader" && follower.role === "follower");
    const waited = follower.wait(1_000);
    assert.equal(sf.pass("k"), undefined, "no mark while the first fetch is in flight");
    leader.release("uncacheable");
    assert.equal(await waited, "uncacheable");
    const mark = sf.pass("k");
    assert.ok(mark, "the key is marked");
    assert.equal(sf.pass("k"), mark, "one mark per key, not one per request");
    assert.equal(sf.passing(), 1);
    mark.release("failed");
    assert.equal(sf.pass("k"), mark, "a failed fetch says nothing about cacheability");
    mark.release("stored");
    assert.equal(sf.pass("k"), undefined, "a stored response ends the mark");
    assert.equal(sf.passing(), 0);

    const refresh = await sf.acquire("refresh:k"); // remember defaults to false
    assert.equal(refresh.role, "leader");
    if (refresh.role === "leader") refresh.release("uncacheable");
    assert.equal(sf.pass("refresh:k"), undefined);
    const stored = await sf.acquire("s", 5_000, true);
    if (stored.role === "leader") stored.release("stored");
    assert.equal(sf.pass("s"), undefined);
    assert.equal(sf.passing(), 0);

    // Nobody waited: an uncacheable response of a URL asked once costs no mark.
    const alone = await sf.acquire("once", 5_000, true);
    assert.equal(alone.role, "leader");
    if (alone.role === "leader") alone.release("uncacheable");
    assert.equal(sf.pass("once"), undefined);
    assert.equal(sf.passing(), 0);
    sf.close();
  });

  test("a mark lasts passMs, an uncacheable release extends it, and passMs 0 turns marking off", async () => {
    const sf = passFlights(150);
    await contested(sf, "k", "uncacheable");
    const mark = sf.pass("k");
    assert.ok(mark);
    await new Promise((r) => setTimeout(r, 100));
    mark.release("uncacheable"); // a bypassing request saw another uncacheable response: 150 ms from now
    await new Promise((r) => setTimeout(r, 100));
    assert.equal(sf.pass("k"), mark, "extended: still marked 200 ms after it was made");
    await new Promise((r) => setTimeout(r, 120));
    assert.equal(sf.pass("k"), undefined, "expired");
    assert.equal(sf.passing(), 0, "an expired mark is dropped when looked at");

    const off = passFlights(0);
    await contested(off, "k", "uncacheable");
    assert.equal(off.pass("k"), undefined);
    assert.equal(off.passing(), 0);
    sf.close();
    off.close();
  });

  test("marks are bounded: past 10000 keys the oldest is forgotten", async () => {
    const sf = passFlights(60_000);
    for (let i = 0; i <= 10_000; i++) await contested(sf, `k${i}`, "uncacheable");
    assert.equal(sf.passing(), 10_000);
    assert.equal(sf.pass("k0"), undefined, "the oldest mark went");
    assert.ok(sf.pass("k1") && sf.pass("k10000"));
    sf.close();
  });
});
