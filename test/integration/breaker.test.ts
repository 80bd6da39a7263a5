// The circuit breaker end to end: a real upstream that fails on demand, cachegate in front, metrics from /metrics.
import assert from "node:assert/strict";
import { after, describe, test } from "node:test";
import { simpleConfig, startGate, type TestGate } from "../helpers/cachegate.js";
import { request, sleep } from "../helpers/http.js";
import { metric } from "../helpers/metrics.js";
import { startUpstream, type TestUpstream } from "../helpers/upstream.js";

const toClose: Array<{ close(): Promise<void> }> = [];
after(async () => {
  for (const c of toClose.reverse()) await c.close();
});

/** An upstream whose answer the test switches: status, optional delay, optional cache headers. */
async function switchable(): Promise<{ up: TestUpstream; set(s: Partial<Behaviour>): void }> {
  let b: Behaviour = { status: 200, delayMs: 0, headers: {} };
  const up = await startUpstream((_req, res) => {
    const { status, delayMs, headers } = b;
    setTimeout(() => {
      const body = JSON.stringify({ status });
      res.writeHead(status, {
        "content-type": "application/json",
        "content-length": body.length,
        ...headers,
      });
      res.end(body);
    }, delayMs);
  });
  toClose.push(up);
  return { up, set: (s) => (b = { ...b, ...s }) };
}
interface Behaviour {
  status: number;
  delayMs: number;
  headers: Record<string, string>;
}

async function gateFor(up: TestUpstream, breaker: Record<string, unknown>, extra = {}): Promise<TestGate> {
  const cfg = simpleConfig(up.url, extra);
  cfg.upstreams = [{ name: "up", url: up.url, breaker }];
  const gate = await startGate(cfg);
  toClose.push({ close: () => gate.close(500) });
  return gate;
}

const BREAKER = { volumeThreshold: 5, errorThresholdPercentage: 50, resetTimeout: 300 };

describe("circuit breaker", () => {
  test("opens after the volume threshold of failures, then answers in < 50 ms with 503, Retry-After and the code", async () => {
    const { up, set } = await switchable();
    set({ status: 500 });
    const gate = await gateFor(up, { ...BREAKER, resetTimeout: 5_000 });
    for (let i = 0; i < 5; i++) {
      const r = await request(`${gate.url}/fail/${i}`);
      assert.equal(r.status, 500, "the upstream's 5xx still reaches the client");
    }
    assert.equal(up.hits(), 5);
    for (let i = 0; i < 20; i++) {
      const started = performance.now();
      const r = await request(`${gate.url}/fail/x${i}`);
      const ms = performance.now() - started;
      assert.equal(r.status, 503);
      assert.ok(ms < 50, `answered in ${ms.toFixed(1)} ms`);
      assert.equal(r.json<{ error: { code: string } }>().error.code, "upstream_circuit_open");
      const retryAfter = Number(r.headers["retry-after"]);
      assert.ok(retryAfter >= 1 && retryAfter <= 5, `Retry-After ${r.headers["retry-after"]}`);
      assert.equal(r.headers["cache-control"], "no-store");
    }
    assert.equal(up.hits(), 5, "the upstream is left alone while the breaker is open");
    assert.equal(await metric(gate, 'cachegate_breaker_state{upstream="up"}'), 2);
    assert.equal(await metric(gate, 'cachegate_breaker_transitions_total{upstream="up",to="open"}'), 1);
    assert.equal(await metric(gate, 'cachegate_errors_total{route="all",code="upstream_circuit_open"}'), 20);
    const warn = gate.logs().find((l) => String(l.msg).startsWith("circuit breaker open"));
    assert.ok(warn, "one log line for the transition");
    assert.equal(warn.level, 40);
    assert.equal(warn.upstream, "up");
  });

  test("4xx responses never open it, however many", async () => {
    const { up, set } = await switchable();
    set({ status: 404 });
    const gate = await gateFor(up, BREAKER);
    for (let i = 0; i < 30; i++) assert.equal((await request(`${gate.url}/missing/${i}`)).status, 404);
    assert.equal(up.hits(), 30);
    assert.equal(await metric(gate, 'cachegate_breaker_state{upstream="up"}'), 0);
  });

  test("an unreachable upstream opens it too (connection errors are failures)", async () => {
    const { up } = await switchable();
    const gate = await gateFor(up, BREAKER);
    await up.close();
    for (let i = 0; i < 5; i++) assert.equal((await request(`${gate.url}/down/${i}`)).status, 502);
    const r = await request(`${gate.url}/down/after`);
    assert.equal(r.status, 503);
    assert.equal(r.json<{ error: { code: string } }>().error.code, "upstream_circuit_open");
  });

  test("recovers after resetTimeout: the half-open probe succeeds and closes it", async () => {
    const { up, set } = await switchable();
    set({ status: 503 });
    const gate = await gateFor(up, BREAKER);
    for (let i = 0; i < 5; i++) await request(`${gate.url}/r/${i}`);
    assert.equal((await request(`${gate.url}/r/open`)).status, 503);
    assert.equal(up.hits(), 5);
    set({ status: 200 });
    await sleep(350);
    assert.equal(await metric(gate, 'cachegate_breaker_state{upstream="up"}'), 1, "half-open");
    const probe = await request(`${gate.url}/r/probe`);
    assert.equal(probe.status, 200);
    assert.equal(up.hits(), 6);
    assert.equal(await metric(gate, 'cachegate_breaker_state{upstream="up"}'), 0);
    for (const to of ["open", "half-open", "closed"]) {
      assert.equal(
        await metric(gate, `cachegate_breaker_transitions_total{upstream="up",to="${to}"}`),
        1,
        to,
      );
    }
    for (let i = 0; i < 5; i++) assert.equal((await request(`${gate.url}/r/after/${i}`)).status, 200);
    const info = gate.logs().find((l) => String(l.msg).startsWith("circuit breaker closed"));
    assert.equal(info?.level, 30);
  });

  test("half-open: one probe goes upstream, the others fail fast meanwhile; a failed probe reopens it", async () => {
    const { up, set } = await switchable();
    set({ status: 500 });
    const gate = await gateFor(up, BREAKER);
    for (let i = 0; i < 5; i++) await request(`${gate.url}/h/${i}`);
    await sleep(350);
    set({ status: 500, delayMs: 200 });
    const started = performance.now();
    const replies = await Promise.all(Array.from({ length: 6 }, (_, i) => request(`${gate.url}/h/p${i}`)));
    const statuses = replies.map((r) => r.status).sort();
    assert.deepEqual(
      statuses,
      [500, 503, 503, 503, 503, 503],
      "one probe (the upstream's 500), five refused",
    );
    assert.equal(up.hits(), 6);
    assert.ok(performance.now() - started < 2_000);
    assert.equal(
      await metric(gate, 'cachegate_breaker_state{upstream="up"}'),
      2,
      "the failed probe reopened it",
    );
  });

  test("while open, a stored stale copy is served (X-Cache: STALE) without asking the upstream", async () => {
    const { up, set } = await switchable();
    set({ status: 200, headers: { "cache-control": "max-age=1", etag: '"v1"' } });
    const gate = await gateFor(up, BREAKER);
    const first = await request(`${gate.url}/doc`);
    assert.equal(first.headers["x-cache"], "MISS");
    assert.equal((await request(`${gate.url}/doc`)).headers["x-cache"], "HIT");
    await sleep(1_100); // stale now; kept for revalidation (it has a validator)
    set({ status: 500, headers: {} });
    for (let i = 0; i < 5; i++)
      await request(`${gate.url}/other/${i}`, { headers: { "x-cachegate-bypass": "1" } });
    const hits = up.hits();
    const r = await request(`${gate.url}/doc`);
    assert.equal(r.status, 200);
    assert.equal(r.headers["x-cache"], "STALE");
    assert.equal(r.text, first.text);
    assert.equal(up.hits(), hits, "served from the cache alone");
  });

  test("a must-revalidate entry is never served stale: 503 instead", async () => {
    const { up, set } = await switchable();
    set({ status: 200, headers: { "cache-control": "max-age=1, must-revalidate", etag: '"v1"' } });
    const gate = await gateFor(up, BREAKER);
    assert.equal((await request(`${gate.url}/strict`)).headers["x-cache"], "MISS");
    await sleep(1_100);
    set({ status: 500, headers: {} });
    for (let i = 0; i < 5; i++)
      await request(`${gate.url}/other/${i}`, { headers: { "x-cachegate-bypass": "1" } });
    const r = await request(`${gate.url}/strict`);
    assert.equal(r.status, 503);
    assert.equal(r.json<{ error: { code: string } }>().error.code, "upstream_circuit_open");
  });

  test("breaker.enabled false always forwards", async () => {
    const { up, set } = await switchable();
    set({ status: 500 });
    const gate = await gateFor(up, { ...BREAKER, enabled: false });
    for (let i = 0; i < 20; i++) assert.equal((await request(`${gate.url}/e/${i}`)).status, 500);
    assert.equal(up.hits(), 20);
    assert.equal(await metric(gate, 'cachegate_breaker_state{upstream="up"}'), undefined);
  });
});
