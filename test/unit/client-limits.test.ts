// Per-client limits in memory (no Redis): exact allowances, burst, window reset, concurrency, client identity.
import assert from "node:assert/strict";
import type { IncomingHttpHeaders } from "node:http";
import { describe, test } from "node:test";
import pino from "pino";
import type { RequestContext } from "../../proxy/context.js";
import { ProxyEvents } from "../../proxy/observability/events.js";
import { CONTINUE } from "../../proxy/pipeline/pipeline.js";
import { createRateLimitStage } from "../../proxy/pipeline/rate-limit.js";
import {
  ClientLimiter,
  type ClientLimiterEvents,
  clientKey,
  type LimitDecision,
  quotaFor,
} from "../../proxy/resilience/client-limits.js";
import { configFrom, simpleConfig } from "../helpers/cachegate.js";
import { sleep } from "../helpers/http.js";

const UPSTREAM = "http://127.0.0.1:9";

function limiterFor(limits: Record<string, unknown>, extra: Record<string, unknown> = {}): ClientLimiter {
  const config = configFrom(simpleConfig(UPSTREAM, { limits: { enabled: true, ...limits }, ...extra }));
  return new ClientLimiter(config, { keyPrefix: "test:" });
}

async function checkN(
  limiter: ClientLimiter,
  n: number,
  key = "c1",
  route = "all",
): Promise<LimitDecision[]> {
  const out: LimitDecision[] = [];
  for (let i = 0; i < n; i++) out.push(await limiter.check(route, key));
  return out;
}

const allowedCount = (ds: LimitDecision[]) => ds.filter((d) => d.allowed).length;

function identity(headers: IncomingHttpHeaders, clientIp = "10.0.0.1") {
  return { req: { headers }, clientIp };
}

describe("rate", () => {
  test("allows exactly `requests` per window, then refuses with the time left in the window", async () => {
    const limiter = limiterFor({ requests: 5, per: "2s" });
    const ds = await checkN(limiter, 7);
    assert.deepEqual(
      ds.map((d) => d.allowed),
      [true, true, true, true, true, false, false],
    );
    assert.deepEqual(
      ds.slice(0, 5).map((d) => d.remaining),
      [4, 3, 2, 1, 0],
    );
    const refused = ds[5] as LimitDecision;
    assert.equal(refused.limit, 5);
    assert.equal(refused.window, 2);
    assert.equal(refused.policy, "default");
    assert.equal(refused.reason, "rate");
    assert.equal(refused.dryRun, false);
    assert.ok(refused.retryAfterMs > 1_500 && refused.retryAfterMs <= 2_000, `${refused.retryAfterMs}`);
    assert.equal(refused.retryAfterMs, refused.resetMs);
    assert.equal(ds[0]?.retryAfterMs, 0);
    // Another client has its own quota.
    assert.equal((await limiter.check("all", "c2")).allowed, true);
    assert.deepEqual(limiter.stats(), {
      routes: { all: { allowed: 6, limited: 2, dryRunLimited: 0 } },
      fallbacks: 0,
    });
    limiter.close();
  });

  test("gives the quota back when the window ends", async () => {
    const limiter = limiterFor({ requests: 2, per: "1s" });
    const ds = await checkN(limiter, 3);
    assert.equal(allowedCount(ds), 2);
    await sleep((ds[2] as LimitDecision).retryAfterMs + 50);
    const after = await limiter.check("all", "c1");
    assert.equal(after.allowed, true);
    assert.equal(after.remaining, 1, "a fresh window");
    limiter.close();
  });

  test("a burst allowance lets a spike overspend by `burst` requests, and it does not come back next window", async () => {
    const limiter = limiterFor({ requests: 2, per: "1s", burst: 3 });
    const spike = await checkN(limiter, 7);
    assert.deepEqual(
      spike.map((d) => d.allowed),
      [true, true, true, true, true, false, false],
      "2 sustained + 3 burst",
    );
    assert.equal(spike[3]?.remaining, 0, "burst requests report no sustained quota left");
    const refused = spike[5] as LimitDecision;
    assert.ok(refused.retryAfterMs <= 1_000, "retry when the sustained window ends");
    await sleep(refused.retryAfterMs + 50);
    const next = await checkN(limiter, 3);
    assert.deepEqual(
      next.map((d) => d.allowed),
      [true, true, false],
      "the burst refills over 10 windows, not 1",
    );
    limiter.close();
  });

  test("scales a per that is not whole seconds to the shortest whole-second window at the same rate", async () => {
    assert.deepEqual(quotaFor(10, 1_000), { points: 10, seconds: 1 });
    assert.deepEqual(quotaFor(100, 60_000), { points: 100, seconds: 60 });
    assert.deepEqual(quotaFor(5, 250), { points: 20, seconds: 1 });
    assert.deepEqual(quotaFor(3, 1_500), { points: 6, seconds: 3 });
    assert.deepEqual(quotaFor(1, 333), { points: 3, seconds: 1 }, "no exact window within 60 s: rounded");
    assert.throws(() => quotaFor(1, 0), /expected per to be a positive integer of milliseconds, got 0/);
    const limiter = limiterFor({ requests: 1, per: "200ms" });
    const ds = await checkN(limiter, 6);
    assert.equal(allowedCount(ds), 5);
    assert.equal(ds[0]?.limit, 5);
    assert.equal(ds[0]?.window, 1);
    limiter.close();
  });

  test("rejects a zero window at boot", () => {
    assert.throws(() => configFrom(simpleConfig(UPSTREAM, { limits: { per: 0 } })), /per.*must be above 0/s);
  });
});

describe("routes", () => {
  test("a route's own limits replace the top-level ones; routes without limits share the top-level budget", async () => {
    const limiter = limiterFor(
      { requests: 2, per: "10s" },
      {
        routes: [
          {
            name: "strict",
            upstream: "up",
            match: { pathPrefix: "/strict" },
            limits: { enabled: true, requests: 1, per: "10s" },
          },
          { name: "exempt", upstream: "up", match: { pathPrefix: "/health" }, limits: { enabled: false } },
          { name: "a", upstream: "up", match: { pathPrefix: "/a" } },
          { name: "b", upstream: "up" },
        ],
      },
    );
    assert.equal(limiter.limitsFor("exempt"), undefined);
    await assert.rejects(limiter.check("exempt", "c1"), /no client limits apply to route "exempt"/);

    const strict = await checkN(limiter, 2, "c1", "strict");
    assert.deepEqual(
      strict.map((d) => [d.allowed, d.policy, d.limit]),
      [
        [true, "strict", 1],
        [false, "strict", 1],
      ],
    );
    const shared = [
      await limiter.check("a", "c1"),
      await limiter.check("b", "c1"),
      await limiter.check("a", "c1"),
    ];
    assert.deepEqual(
      shared.map((d) => [d.allowed, d.policy]),
      [
        [true, "default"],
        [true, "default"],
        [false, "default"],
      ],
      "one budget of 2 across routes a and b",
    );
    assert.deepEqual(limiter.stats().routes, {
      strict: { allowed: 1, limited: 1, dryRunLimited: 0 },
      a: { allowed: 1, limited: 1, dryRunLimited: 0 },
      b: { allowed: 1, limited: 0, dryRunLimited: 0 },
    });
    limiter.close();
  });

  test("nothing is limited when limits are off everywhere, and the stage then answers synchronously", () => {
    const limiter = new ClientLimiter(configFrom(simpleConfig(UPSTREAM)), { keyPrefix: "test:" });
    assert.equal(limiter.limitsFor("all"), undefined);
    assert.equal(limiter.acquire("all", "c1"), undefined);
    const stage = createRateLimitStage(limiter, {
      events: new ProxyEvents(),
      logger: pino({ level: "silent" }),
    });
    const ctx = { route: { name: "all" }, req: { headers: {} }, clientIp: "10.0.0.1" };
    assert.equal(stage.run(ctx as unknown as RequestContext), CONTINUE, "the verdict itself, not a promise");
    limiter.close();
  });
});

describe("dry run and events", () => {
  test("dry run reports would-be refusals, flags the first one per window for the log, and emits them", async () => {
    const limiter = limiterFor({ requests: 1, per: "10s", dryRun: true });
    const events: Array<ClientLimiterEvents["limited"][0]> = [];
    limiter.on("limited", (e) => events.push(e));
    const ds = await checkN(limiter, 4);
    assert.deepEqual(
      ds.map((d) => [d.allowed, d.dryRun, d.firstRefusal]),
      [
        [true, true, false],
        [false, true, true],
        [false, true, false],
        [false, true, false],
      ],
    );
    assert.deepEqual(limiter.stats().routes.all, { allowed: 1, limited: 0, dryRunLimited: 3 });
    assert.equal(events.length, 3);
    assert.deepEqual(events[0], { route: "all", policy: "default", dryRun: true, reason: "rate" });
    limiter.close();
  });
});

describe("concurrency", () => {
  test("refuses a client's third in-flight request until one is released; release is idempotent", async () => {
    const limiter = limiterFor({ requests: 100, per: "10s", concurrent: 2 });
    const a = limiter.acquire("all", "c1");
    const b = limiter.acquire("all", "c1");
    assert.ok(a?.allowed && a.held && b?.allowed && b.held);
    assert.equal((await limiter.check("all", "c1", a)).allowed, true);
    assert.equal((await limiter.check("all", "c1", b)).allowed, true);
    assert.equal(limiter.inFlight("all", "c1"), 2);

    const c = limiter.acquire("all", "c1");
    assert.ok(c);
    assert.equal(c.allowed, false);
    assert.equal(c.held, false, "a refused request takes no slot");
    const refused = await limiter.check("all", "c1", c);
    assert.equal(refused.allowed, false);
    assert.equal(refused.reason, "concurrency");
    assert.equal(refused.retryAfterMs, 1_000);
    assert.equal(limiter.inFlight("all", "c1"), 2);

    assert.equal(limiter.acquire("all", "c2")?.allowed, true, "another client has its own slots");

    a?.release();
    a?.release();
    assert.equal(limiter.inFlight("all", "c1"), 1, "a second release frees nothing more");
    const d = limiter.acquire("all", "c1");
    assert.equal(d?.allowed, true);
    const allowed = await limiter.check("all", "c1", d);
    assert.equal(allowed.allowed, true);
    assert.equal(allowed.remaining, 97, "the refused request spent nothing from the rate quota");
    b?.release();
    d?.release();
    assert.equal(limiter.inFlight("all", "c1"), 0);
    limiter.close();
  });

  test("in dry run an over-limit request still takes a slot, and is counted once", async () => {
    const limiter = limiterFor({ requests: 1, per: "10s", concurrent: 1, dryRun: true });
    const a = limiter.acquire("all", "c1");
    await limiter.check("all", "c1", a);
    const b = limiter.acquire("all", "c1");
    assert.equal(b?.allowed, false);
    assert.equal(b?.held, true);
    assert.equal(limiter.inFlight("all", "c1"), 2);
    const d = await limiter.check("all", "c1", b);
    assert.equal(d.allowed, false);
    assert.equal(d.reason, "concurrency");
    assert.equal(limiter.stats().routes.all?.dryRunLimited, 1, "over both limits, counted once");
    a?.release();
    b?.release();
    assert.equal(limiter.inFlight("all", "c1"), 0);
    limiter.close();
  });
});

describe("client identity", () => {
  const auth = {
    clientId: "auth",
    requests: 1,
    per: 1000,
    burst: 0,
    concurrent: 0,
    dryRun: false,
    enabled: true,
  } as const;

  test("auth: a hash of the Authorization header, never its value; the client address without one", () => {
    const secret = "Bearer app-s3cr3tT0k3nValue";
    const key = clientKey(identity({ authorization: secret }), auth);
    assert.match(key, /^auth:[0-9a-f]{32}$/);
    assert.ok(!key.includes("s3cr3t") && !key.includes("Bearer"), key);
    assert.equal(
      clientKey(identity({ authorization: secret }, "10.9.9.9"), auth),
      key,
      "stable across addresses",
    );
    assert.notEqual(clientKey(identity({ authorization: "Bearer other" }), auth), key);
    assert.equal(clientKey(identity({}), auth), "ip:10.0.0.1");
    assert.equal(clientKey(identity({ authorization: "" }), auth), "ip:10.0.0.1", "empty counts as absent");
  });

  test("header: a hash of the configured header, falling back to the address; ip: the address only", () => {
    const header = { ...auth, clientId: "header", clientHeader: "x-api-key" } as const;
    const key = clientKey(identity({ "x-api-key": "k-123456", authorization: "Bearer x" }), header);
    assert.match(key, /^hdr:[0-9a-f]{32}$/);
    assert.ok(!key.includes("k-123456"));
    assert.equal(clientKey(identity({ authorization: "Bearer x" }), header), "ip:10.0.0.1");
    const ip = { ...auth, clientId: "ip" } as const;
    assert.equal(clientKey(identity({ authorization: "Bearer x" }, "2001:db8::1"), ip), "ip:2001:db8::1");
  });
});
