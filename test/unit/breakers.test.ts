// The breaker registry (opossum underneath): what counts as a failure, when it opens, half-open probing, Retry-After.
import assert from "node:assert/strict";
import { after, describe, test } from "node:test";
import { ProxyError } from "../../proxy/errors.js";
import {
  type BreakerState,
  Breakers,
  breakerFailure,
  COUNTING_STATUS,
  type UpstreamBreaker,
} from "../../proxy/resilience/breakers.js";
import { configFrom } from "../helpers/cachegate.js";
import { sleep } from "../helpers/http.js";

const registries: Breakers[] = [];
after(() => {
  for (const r of registries) r.shutdown();
});

function breaker(opts: Record<string, unknown> = {}): { b: UpstreamBreaker; transitions: BreakerState[] } {
  const config = configFrom({
    upstreams: [
      {
        name: "up",
        url: "http://127.0.0.1:9",
        breaker: { volumeThreshold: 5, errorThresholdPercentage: 50, resetTimeout: 200, ...opts },
      },
    ],
    routes: [{ name: "all", upstream: "up" }],
  });
  const breakers = new Breakers(config.upstreams);
  registries.push(breakers);
  const transitions: BreakerState[] = [];
  breakers.on("transition", (t) => transitions.push(t.to));
  const b = breakers.get("up");
  assert.ok(b);
  return { b, transitions };
}

const status = (code: number) => () => Promise.resolve({ status: code });
const isFailure = (r: { status: number }) => r.status >= 500;
const rejectWith = (code: ProxyError["code"]) => () => Promise.reject(new ProxyError(code));

describe("circuit breakers", () => {
  test("a 5xx counts as a failure but is still returned to the caller", async () => {
    const { b } = breaker();
    const r = await b.run(status(502), isFailure);
    assert.equal(r.status, 502);
    assert.equal(b.stats().failures, 1);
  });

  test("fire/outcome (the forward stage's way): a result rejected as breakerFailure counts and is given back", async () => {
    const { b } = breaker();
    const settle = <T>(p: Promise<T>) =>
      p.then(
        (r) => r,
        (err: unknown) => b.outcome<T>(err),
      );
    const fiveHundred = { status: 500 };
    for (let i = 0; i < 4; i++) {
      const r = await settle(b.fire(() => Promise.reject(breakerFailure(fiveHundred))));
      assert.equal(r, fiveHundred, "the 5xx itself comes back");
    }
    assert.equal((await settle(b.fire(() => Promise.resolve({ status: 200 })))).status, 200);
    assert.equal(b.stats().failures, 4);
    assert.equal(b.stats().successes, 1);
    await assert.rejects(settle(b.fire(rejectWith("upstream_reset"))), /upstream/);
    assert.equal(b.state(), "open", "5 failures of 6 calls");
    await assert.rejects(settle(b.fire(status(200))), (err: ProxyError) => {
      assert.equal(err.code, "upstream_circuit_open");
      assert.equal(err.status, 503);
      return true;
    });
  });

  test("opossum's rolling stats count every call once, whichever way it ended", async () => {
    const { b } = breaker({ volumeThreshold: 100 });
    for (let i = 0; i < 3; i++) await b.run(status(200), isFailure);
    await b.run(status(503), isFailure);
    await assert.rejects(b.run(rejectWith("upstream_reset"), isFailure), /upstream/);
    await assert.rejects(b.run(rejectWith("client_closed"), isFailure)); // not the upstream's fault
    await assert.rejects(
      b.run(() => {
        throw new Error("thrown before any promise");
      }, isFailure),
      /thrown before/,
    );
    const s = b.stats();
    assert.equal(s.fires, 7);
    assert.equal(s.successes, 5, "3 answers, the client that left, and an error of ours are not failures");
    assert.equal(s.failures, 2);
    assert.equal(b.state(), "closed");
  });

  test("the rolling window counts calls without keeping a latency per call (nothing reads them)", async () => {
    assert.equal(COUNTING_STATUS, true, "opossum's Status was not found where opossum 9 keeps it");
    const { b } = breaker({ volumeThreshold: 1000 });
    for (let i = 0; i < 50; i++) await b.run(status(200), isFailure);
    for (let i = 0; i < 10; i++) await b.run(status(500), isFailure);
    const s = b.stats();
    assert.equal(s.fires, 60);
    assert.equal(s.successes, 50);
    assert.equal(s.failures, 10);
    // opossum's own Status would hold 60 latencies here (one per success or failure).
    const windows = (b as unknown as { cb: { status: { window: { latencyTimes: number[] }[] } } }).cb.status
      .window;
    assert.equal(
      windows.reduce((n, w) => n + w.latencyTimes.length, 0),
      0,
    );
    assert.equal(b.state(), "closed", "10 failures in 60 calls is under the 50 % threshold");
  });

  test("opens only once volumeThreshold calls were made, at more than the error percentage", async () => {
    const { b, transitions } = breaker();
    for (let i = 0; i < 4; i++) await b.run(status(500), isFailure);
    assert.equal(b.state(), "closed", "4 failures out of 4 is below a volume threshold of 5");
    await b.run(status(500), isFailure);
    assert.equal(b.state(), "open");
    assert.deepEqual(transitions, ["open"]);
    await assert.rejects(b.run(status(200), isFailure), (err: ProxyError) => {
      assert.equal(err.code, "upstream_circuit_open");
      assert.equal(err.status, 503);
      assert.equal(err.headers["retry-after"], "1");
      return true;
    });
  });

  test("stays closed while failures are at or under the error percentage", async () => {
    const { b } = breaker();
    for (let i = 0; i < 5; i++) await b.run(status(200), isFailure);
    for (let i = 0; i < 5; i++) await b.run(status(503), isFailure);
    assert.equal(b.state(), "closed", "5 of 10 is 50 %, not more than 50 %");
    await b.run(status(503), isFailure);
    assert.equal(b.state(), "open", "6 of 11 is");
  });

  test("4xx responses and clients that went away are not failures", async () => {
    const { b } = breaker();
    for (let i = 0; i < 20; i++) await b.run(status(i % 2 ? 404 : 429), isFailure);
    for (let i = 0; i < 20; i++) await assert.rejects(b.run(rejectWith("client_closed"), isFailure));
    assert.equal(b.state(), "closed");
    assert.equal(b.stats().failures, 0);
  });

  test("timeouts, refused and reset connections and bad responses are failures", async () => {
    const { b } = breaker({ volumeThreshold: 4 });
    for (const code of [
      "upstream_timeout",
      "upstream_unreachable",
      "upstream_reset",
      "upstream_bad_response",
    ] as const) {
      await assert.rejects(b.run(rejectWith(code), isFailure), { code });
    }
    assert.equal(b.state(), "open");
  });

  test("Retry-After counts down to the half-open probe", async () => {
    const { b } = breaker({ resetTimeout: 3_000 });
    for (let i = 0; i < 5; i++) await b.run(status(500), isFailure);
    assert.equal(b.retryAfterSeconds(), 3);
    assert.equal(b.openError().headers["retry-after"], "3");
  });

  test("half-open lets exactly one probe through; its success closes the breaker", async () => {
    const { b, transitions } = breaker();
    for (let i = 0; i < 5; i++) await b.run(status(500), isFailure);
    assert.equal(b.admits(), false);
    await sleep(260);
    assert.equal(b.state(), "half-open");
    assert.equal(b.admits(), true);
    let release: (() => void) | undefined;
    const probe = b.run(
      () => new Promise<{ status: number }>((resolve) => (release = () => resolve({ status: 200 }))),
      isFailure,
    );
    assert.equal(b.admits(), false, "the probe is out: everyone else fails fast");
    await assert.rejects(b.run(status(200), isFailure), { code: "upstream_circuit_open" });
    release?.();
    assert.equal((await probe).status, 200);
    assert.equal(b.state(), "closed");
    assert.deepEqual(transitions, ["open", "half-open", "closed"]);
  });

  test("a failed probe opens it again; a probe whose client left proves nothing and opens it too", async () => {
    const { b, transitions } = breaker();
    for (let i = 0; i < 5; i++) await b.run(status(500), isFailure);
    await sleep(260);
    await b.run(status(503), isFailure);
    assert.equal(b.state(), "open");
    await sleep(260);
    await assert.rejects(b.run(rejectWith("client_closed"), isFailure));
    assert.equal(b.state(), "open");
    assert.deepEqual(transitions, ["open", "half-open", "open", "half-open", "open"]);
  });

  test("while closed, calls are counted without opossum's fire; calls in flight across a change obey opossum's rules", async () => {
    const { b, transitions } = breaker();
    const cb = (b as unknown as { cb: { on(e: string, f: () => void): void } }).cb;
    let fired = 0;
    cb.on("fire", () => fired++);
    // Started while closed: a slow success and a slow failure, then three failures open the breaker.
    let release: (() => void) | undefined;
    const slow = b.run(
      () => new Promise<{ status: number }>((resolve) => (release = () => resolve({ status: 200 }))),
      isFailure,
    );
    let fail: (() => void) | undefined;
    const slowFailure = b.run(
      () => new Promise<{ status: number }>((resolve) => (fail = () => resolve({ status: 502 }))),
      isFailure,
    );
    for (let i = 0; i < 2; i++) await b.run(status(500), isFailure);
    assert.equal(b.state(), "closed", "4 calls fired: under the volume threshold of 5");
    await b.run(status(500), isFailure);
    assert.equal(fired, 0, "no call went through opossum's fire while the breaker was closed");
    assert.equal(b.state(), "open", "3 failures of 5 calls fired (2 still in flight)");
    assert.equal(b.stats().fires, 5, "a call counts as fired when it starts, as with fire");
    // A failure that started before the breaker opened still counts, and it stays open.
    fail?.();
    assert.equal((await slowFailure).status, 502);
    assert.equal(b.stats().failures, 4);
    assert.equal(b.state(), "open");
    // A success that started while closed and ends while half-open closes it, as opossum's own success does.
    await sleep(260);
    assert.equal(b.state(), "half-open");
    release?.();
    assert.equal((await slow).status, 200);
    assert.equal(b.state(), "closed");
    assert.deepEqual(transitions, ["open", "half-open", "closed"]);
    assert.equal(fired, 0);
    // The window still holds the failures: the next one opens it, and then opossum's fire decides (and refuses).
    await b.run(status(500), isFailure);
    assert.equal(b.state(), "open");
    await assert.rejects(b.run(status(200), isFailure), { code: "upstream_circuit_open" });
    assert.equal(fired, 1, "the refused call went through fire");
  });

  test("upstreams with breaker.enabled false have no breaker", () => {
    const config = configFrom({
      upstreams: [{ name: "up", url: "http://127.0.0.1:9", breaker: { enabled: false } }],
      routes: [{ name: "all", upstream: "up" }],
    });
    const breakers = new Breakers(config.upstreams);
    assert.equal(breakers.get("up"), undefined);
  });
});
