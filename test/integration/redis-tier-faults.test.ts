// The Redis tier against a real redis-server that crashes, comes back, or stops answering: every operation stays
// bounded, resolves (a miss / no-op), and is reported; none throws.
import assert from "node:assert/strict";
import { once } from "node:events";
import type { AddressInfo } from "node:net";
import { createServer, connect as netConnect, type Server, type Socket } from "node:net";
import { after, before, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { createRedisClient, type RedisClient } from "../../proxy/cache/redis-client.js";
import { RedisTier } from "../../proxy/cache/redis-tier.js";
import { responseRecord } from "../contract/tier.contract.js";
import { startRedis, type TestRedis } from "../helpers/redis.js";

const COMMAND_TIMEOUT_MS = 100;
const HOUR_MS = 3_600_000;

interface Harness {
  client: RedisClient;
  tier: RedisTier;
  /** What the tier reported, as "op: message". */
  tierErrors: string[];
  /** What the client emitted as "error" (failed connects and reconnects). */
  clientErrors: unknown[];
}

function harness(url: string, keyPrefix = "faults:"): Harness {
  const tierErrors: string[] = [];
  const clientErrors: unknown[] = [];
  const client = createRedisClient(
    { url, keyPrefix, commandTimeout: COMMAND_TIMEOUT_MS, connectTimeout: 500 },
    (err) => clientErrors.push(err),
  );
  if (!client) throw new Error("expected a client for a redis url");
  const tier = new RedisTier(client, {
    keyPrefix,
    onError: (_tier, op, err) =>
      tierErrors.push(`${op}: ${err instanceof Error ? err.message : String(err)}`),
  });
  return { client, tier, tierErrors, clientErrors };
}

async function ready(client: RedisClient): Promise<void> {
  if (client.status !== "ready") await once(client, "ready");
}

/** Resolves with `p`'s value and how long it took. */
async function timed<T>(p: Promise<T>): Promise<[T, number]> {
  const started = performance.now();
  const value = await p;
  return [value, performance.now() - started];
}

/** A TCP relay to `port` that can be frozen: it then keeps every connection open and forwards nothing. */
async function freezableRelay(
  port: number,
): Promise<{ url: string; freeze(): void; close(): Promise<void> }> {
  let frozen = false;
  const sockets = new Set<Socket>();
  const track = (s: Socket) => {
    sockets.add(s);
    s.on("error", () => s.destroy());
    s.once("close", () => sockets.delete(s));
  };
  const server = createServer((client) => {
    const upstream = netConnect(port, "127.0.0.1");
    track(client);
    track(upstream);
    client.on("data", (chunk: Buffer) => {
      if (!frozen) upstream.write(chunk);
    });
    upstream.on("data", (chunk: Buffer) => {
      if (!frozen) client.write(chunk);
    });
    client.once("close", () => upstream.destroy());
    upstream.once("close", () => client.destroy());
  });
  await listen(server);
  return {
    url: `redis://127.0.0.1:${(server.address() as AddressInfo).port}`,
    freeze: () => {
      frozen = true;
    },
    close: () => closeServer(server, sockets),
  };
}

async function listen(server: Server): Promise<void> {
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
}

function closeServer(server: Server, sockets: Set<Socket>): Promise<void> {
  for (const s of sockets) s.destroy();
  return new Promise((resolve) => server.close(() => resolve()));
}

let redis: TestRedis;
before(async () => {
  redis = await startRedis();
});
after(async () => {
  await redis.stop();
});

test("createRedisClient makes no client when no Redis is configured", () => {
  const client = createRedisClient({ keyPrefix: "x:", commandTimeout: 100, connectTimeout: 100 }, () => {});
  assert.equal(client, undefined);
});

test("turns a killed redis-server into fast misses and no-ops, and works again once it is back", async (t) => {
  const h = harness(redis.url);
  try {
    await ready(h.client);

    await t.test("reads and writes while the server is up", async () => {
      await h.tier.set(responseRecord({ key: "up" }), HOUR_MS);
      const got = await h.tier.get("up");
      assert.equal(got?.key, "up");
      assert.deepEqual(h.tierErrors, []);
    });

    await t.test(
      "after a SIGKILL, get resolves undefined and set resolves within 500 ms each",
      async (st) => {
        redis.kill();
        const [got, getMs] = await timed(h.tier.get("up"));
        assert.equal(got, undefined);
        assert.ok(getMs < 500, `get took ${getMs} ms`);
        const [, setMs] = await timed(h.tier.set(responseRecord({ key: "down" }), HOUR_MS));
        assert.ok(setMs < 500, `set took ${setMs} ms`);
        const [deleted, delMs] = await timed(h.tier.delete(["up"]));
        assert.equal(deleted, 0);
        assert.ok(delMs < 500, `delete took ${delMs} ms`);
        st.diagnostic(
          `get ${getMs.toFixed(1)} ms, set ${setMs.toFixed(1)} ms, delete ${delMs.toFixed(1)} ms`,
        );
        assert.deepEqual(await h.tier.keysForTag("items"), []);
        assert.deepEqual(await h.tier.keysForUrl("example.test/", true), []);
        const ops = h.tierErrors.map((e) => e.split(":")[0]);
        for (const op of ["get", "set", "delete", "keysForTag", "keysForUrl"])
          assert.ok(ops.includes(op), op);
        // Reconnect failures reach the client's error listener instead of crashing the process.
        const deadline = Date.now() + 2_000;
        while (h.clientErrors.length === 0 && Date.now() < deadline) await sleep(20);
        assert.ok(h.clientErrors.length > 0, "the client reported its failed reconnects");
      },
    );

    await t.test("after a restart, works again within 5 s", async (st) => {
      await redis.restart();
      const started = Date.now();
      let got: Awaited<ReturnType<RedisTier["get"]>>;
      do {
        await h.tier.set(responseRecord({ key: "back" }), HOUR_MS);
        got = await h.tier.get("back");
        if (got === undefined) await sleep(50);
      } while (got === undefined && Date.now() - started < 5_000);
      assert.equal(got?.key, "back", `not working ${Date.now() - started} ms after the restart`);
      st.diagnostic(`working again ${Date.now() - started} ms after the restart`);
      assert.deepEqual(await h.tier.keysForTag("items"), ["back"]);
    });
  } finally {
    await h.tier.close();
  }
});

test("a server that accepts TCP but never answers makes every operation resolve within commandTimeout", async (t) => {
  const sockets = new Set<Socket>();
  const silent = createServer((s) => {
    sockets.add(s);
    s.resume(); // reads everything, answers nothing
    s.on("error", () => s.destroy());
  });
  await listen(silent);
  const h = harness(`redis://127.0.0.1:${(silent.address() as AddressInfo).port}`);
  try {
    await once(silent, "connection");
    const bound = COMMAND_TIMEOUT_MS + 100;
    const [got, getMs] = await timed(h.tier.get("k"));
    assert.equal(got, undefined);
    assert.ok(getMs < bound, `get took ${getMs} ms`);
    const [, setMs] = await timed(h.tier.set(responseRecord({ key: "k" }), HOUR_MS));
    assert.ok(setMs < bound, `set took ${setMs} ms`);
    const [deleted, delMs] = await timed(h.tier.delete(["k"]));
    assert.equal(deleted, 0);
    assert.ok(delMs < bound, `delete took ${delMs} ms`);
    assert.equal(h.tierErrors.length, 3, h.tierErrors.join("\n"));
    t.diagnostic(`get ${getMs.toFixed(1)} ms, set ${setMs.toFixed(1)} ms, delete ${delMs.toFixed(1)} ms`);
    t.diagnostic(h.tierErrors.join("; "));
  } finally {
    const [, closeMs] = await timed(h.tier.close());
    assert.ok(closeMs < 700, `close took ${closeMs} ms`);
    await closeServer(silent, sockets);
  }
});

test("a server that stops answering after the connection is ready turns get into a miss after commandTimeout", async (t) => {
  const relay = await freezableRelay(redis.port);
  const h = harness(relay.url);
  try {
    await ready(h.client);
    await h.tier.set(responseRecord({ key: "frozen" }), HOUR_MS);
    assert.equal((await h.tier.get("frozen"))?.key, "frozen");
    relay.freeze();
    const [got, getMs] = await timed(h.tier.get("frozen"));
    assert.equal(got, undefined);
    assert.ok(getMs >= COMMAND_TIMEOUT_MS - 5 && getMs < COMMAND_TIMEOUT_MS + 100, `get took ${getMs} ms`);
    const [, setMs] = await timed(h.tier.set(responseRecord({ key: "frozen" }), HOUR_MS));
    assert.ok(setMs < COMMAND_TIMEOUT_MS + 100, `set took ${setMs} ms`);
    t.diagnostic(`get ${getMs.toFixed(1)} ms, set ${setMs.toFixed(1)} ms`);
    assert.match(h.tierErrors[0] ?? "", /^get: Command timed out/);
    assert.match(h.tierErrors[1] ?? "", /^set: /);
  } finally {
    const [, closeMs] = await timed(h.tier.close());
    assert.ok(closeMs < 700, `close took ${closeMs} ms`);
    await relay.close();
  }
});

test("gives index keys a TTL that covers the longest-lived entry they list", async () => {
  const h = harness(redis.url, "ttl:");
  try {
    await ready(h.client);
    await h.tier.set(responseRecord({ key: "a", tags: ["t"] }), 10_000);
    await h.tier.set(responseRecord({ key: "b", tags: ["t"] }), 60_000);
    await h.tier.set(responseRecord({ key: "c", tags: ["t"] }), 5_000);
    const tagTtl = await h.client.pttl("ttl:t:t");
    const urlTtl = await h.client.pttl("ttl:u:example.test/items?id=1");
    for (const ttl of [tagTtl, urlTtl]) assert.ok(ttl > 55_000 && ttl <= 60_000, `index pttl ${ttl}`);
    assert.ok((await h.client.pttl("ttl:e:c")) <= 5_000);
    assert.deepEqual(h.tierErrors, []);
  } finally {
    await h.tier.close();
  }
});

test("reads a record that fails to decode as a miss, reports it, and deletes it", async () => {
  const h = harness(redis.url, "bad:");
  try {
    await ready(h.client);
    await h.client.set("bad:e:garbled", Buffer.from([0x43, 0x47, 99, 0, 0, 0, 0]));
    assert.equal(await h.tier.get("garbled"), undefined);
    assert.match(h.tierErrors[0] ?? "", /^decode: cache record format 99/);
    const deadline = Date.now() + 1_000;
    while ((await h.client.exists("bad:e:garbled")) === 1 && Date.now() < deadline) await sleep(10);
    assert.equal(await h.client.exists("bad:e:garbled"), 0);
  } finally {
    await h.tier.close();
  }
});
