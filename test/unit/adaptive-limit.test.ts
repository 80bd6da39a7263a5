// The adaptive concurrency controller (Gradient2 with sample windows, multiplicative decrease on overload), driven
// by a fake clock: every window here is 10 samples 25 ms apart, so each closes on its 10th sample.
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import {
  AdaptiveLimit,
  type AdaptiveLimitOptions,
  type SampleOutcome,
} from "../../proxy/resilience/adaptive-limit.js";
import { classifyOutcome } from "../../proxy/resilience/upstream-limiter.js";

function controller(opts: Partial<AdaptiveLimitOptions> = {}) {
  let t = 0;
  const limit = new AdaptiveLimit({ initial: 20, min: 2, max: 100, tolerance: 2, now: () => t, ...opts });
  /** `windows` windows of 10 samples; in flight = the current limit unless given (a busy upstream). */
  const feed = (windows: number, ttfbMs: number, outcome: SampleOutcome = "ok", inFlight?: number) => {
    for (let i = 0; i < windows * 10; i++) {
      t += 25;
      limit.onSample({ outcome, ttfbMs, inFlight: inFlight ?? limit.limit });
    }
    return limit.limit;
  };
  return { limit, feed };
}

describe("adaptive concurrency limit", () => {
  test("a busy upstream with steady latency grows the limit towards max", () => {
    const { feed } = controller();
    const grown = feed(30, 10);
    assert.ok(grown > 30, `limit grew from 20 to ${grown}`);
    assert.ok(feed(200, 10) <= 100, "never above max");
    assert.equal(feed(200, 10), 100);
  });

  test("latency climbing above baseline × tolerance lowers the limit", () => {
    const { limit, feed } = controller();
    const before = feed(10, 10);
    assert.ok(Math.abs((limit.baselineMs ?? 0) - 10) < 0.5, `baseline ${limit.baselineMs} ≈ 10 ms`);
    // At most −10 % per window (Gradient2 caps the gradient at 0.5 and smooths by 0.2): gradual, not a collapse.
    const afterClimb = feed(10, 60);
    assert.ok(
      afterClimb <= (before * 2) / 3,
      `limit fell by a third or more, from ${before} to ${afterClimb}`,
    );
    const later = feed(10, 60);
    assert.ok(later < afterClimb, `and keeps falling while latency stays high (${afterClimb} → ${later})`);
  });

  test("latency within the tolerance does not lower it", () => {
    const { feed } = controller();
    const before = feed(10, 10);
    assert.ok(feed(10, 19) >= before, "19 ms against a 10 ms baseline with tolerance 2 is no congestion");
  });

  test("a few milliseconds more on a very fast upstream are noise (cachegate's own delay), not congestion", () => {
    const { feed } = controller();
    const before = feed(10, 2);
    assert.ok(feed(10, 9) >= before, "2 → 9 ms stays under baseline + 10 ms");
    assert.ok(feed(10, 40) < before, "2 → 40 ms does not");
  });

  test("recovery raises it again, and the baseline comes back down", () => {
    const { limit, feed } = controller();
    feed(10, 10);
    const low = feed(40, 80);
    const inflated = limit.baselineMs ?? 0;
    assert.ok(inflated > 10, "40 slow windows pulled the baseline up a little");
    const recovered = feed(30, 10);
    assert.ok(recovered > low + 5, `limit rose from ${low} to ${recovered}`);
    assert.ok((limit.baselineMs ?? 0) < inflated, "the baseline follows latency back down");
  });

  test("bounds hold: never below min however bad, never above max however good", () => {
    const { feed } = controller({ min: 6, max: 40 });
    feed(5, 10);
    assert.equal(feed(40, 1_000), 6, "latency alone settles at min (its own floor, about 4, is below)");
    assert.equal(feed(100, 0, "overload"), 6);
    assert.equal(feed(300, 10), 40);
  });

  test("a latency that stays high becomes the new baseline after minutes (Gradient2's drift), not never", () => {
    const { limit, feed } = controller();
    feed(5, 10);
    const low = feed(20, 100);
    feed(600, 100);
    assert.ok((limit.baselineMs ?? 0) > 60, `baseline moved towards 100 ms: ${limit.baselineMs}`);
    assert.ok(limit.limit > low, `and the limit grows again (${low} → ${limit.limit})`);
  });

  test("5xx, 429 and timeouts (overload samples) lower it multiplicatively, once per window", () => {
    const { feed } = controller({ initial: 50 });
    assert.equal(feed(1, 0, "overload"), 45, "× 0.9 after one window of overloads, not 0.9^10");
    assert.equal(feed(1, 0, "overload"), 40);
    assert.ok(feed(10, 0, "overload") < 20);
  });

  test("one overload inside a window of successes still backs off", () => {
    let t = 0;
    const limit = new AdaptiveLimit({ initial: 50, min: 2, max: 100, tolerance: 2, now: () => t });
    for (let i = 0; i < 9; i++) {
      t += 25;
      limit.onSample({ outcome: "ok", ttfbMs: 10, inFlight: 50 });
    }
    t += 25;
    limit.onSample({ outcome: "overload", inFlight: 50 });
    assert.equal(limit.limit, 45);
  });

  test("an upstream we barely use (in flight below half the limit) does not earn a larger limit", () => {
    const { feed } = controller();
    assert.equal(feed(50, 10, "ok", 3), 20);
  });

  test("samples that prove nothing (client gone, refused) change nothing", () => {
    const { limit, feed } = controller();
    feed(100, 10, "ignore");
    assert.equal(limit.limit, 20);
    assert.equal(limit.baselineMs, undefined);
  });

  test("a slow trickle of requests still closes windows after maxWindowMs", () => {
    let t = 0;
    const limit = new AdaptiveLimit({ initial: 20, min: 2, max: 100, tolerance: 2, now: () => t });
    for (let i = 0; i < 3; i++) {
      t += 600;
      limit.onSample({ outcome: "overload", inFlight: 20 });
    }
    assert.ok(limit.limit < 20, "two windows of one second closed with 1-2 samples each");
  });

  test("classifies outcomes: 5xx and 429 and timeouts are overload, other statuses latency, the rest ignored", () => {
    assert.equal(classifyOutcome({ status: 200, ttfbMs: 5 }), "ok");
    assert.equal(classifyOutcome({ status: 404, ttfbMs: 5 }), "ok");
    assert.equal(classifyOutcome({ status: 429, ttfbMs: 5 }), "overload");
    assert.equal(classifyOutcome({ status: 503, ttfbMs: 5 }), "overload");
    assert.equal(classifyOutcome({ error: "upstream_timeout" }), "overload");
    assert.equal(classifyOutcome({ error: "client_closed" }), "ignore");
    assert.equal(classifyOutcome({ error: "upstream_unreachable" }), "ignore");
  });

  test("rejects impossible options with exact messages", () => {
    const base = { initial: 5, min: 2, max: 10, tolerance: 2 };
    assert.throws(
      () => new AdaptiveLimit({ ...base, min: 0 }),
      /expected min to be a positive integer, got 0/,
    );
    assert.throws(() => new AdaptiveLimit({ ...base, min: 11 }), /expected min ≤ max, got 11 > 10/);
    assert.throws(
      () => new AdaptiveLimit({ ...base, initial: 12 }),
      /expected initial within \[2, 10\], got 12/,
    );
    assert.throws(() => new AdaptiveLimit({ ...base, tolerance: 0.5 }), /expected tolerance ≥ 1, got 0.5/);
  });
});
