// Purges across instances through a real redis-server: two "instances" (each a memory tier, a Redis tier on its own
// client, a bus and an Invalidator) share one Redis keyspace.

import assert from "node:assert/strict";
import { once } from "node:events";
import { after, before, test } from "node:test";
import { Redis } from "ioredis";
import { RedisBus } from "../../proxy/cache/bus.js";
import { type CacheEntry, storageTtlMs } from "../../proxy/cache/entry.js";
import { Invalidator } from "../../proxy/cache/invalidation.js";
import { MemoryTier } from "../../proxy/cache/memory-tier.js";
import { currentAgeMs } from "../../proxy/cache/policy.js";
import { RedisTier } from "../../proxy/cache/redis-tier.js";
import { startRedis, type TestRedis } from "../helpers/redis.js";
import { until } from "../helpers/wait.js";

const CLIENT_OPTIONS = { maxRetriesPerRequest: 1, enableOfflineQueue: false, commandTimeout: 100 };
const HOST = "api.example";

let server: TestRedis;
let prefixSeq = 0;

before(async () => {
  server = await startRedis();
});
after(async () => {
  await server.stop();
});

function entry(key: string, url: string, tags: string[], storedAt = Date.now()): CacheEntry {
  return {
    kind: "response",
    key,
    primaryKey: key,
    url,
    route: "api",
    status: 200,
    headers: { "content-type": "application/json", etag: `"${key}"` },
    body: Buffer.from(JSON.stringify({ key })),
    storedAt,
    initialAgeMs: 0,
    freshMs: 60_000,
    swrMs: 30_000,
    sieMs: 0,
    mustRevalidate: false,
    tags,
    policy: {},
  };
}

interface Instance {
  memory: MemoryTier;
  redis: RedisTier;
  client: Redis;
  bus: RedisBus;
  invalidator: Invalidator;
  errors: string[];
}

async function instance(id: string, keyPrefix: string, waitReady = true): Promise<Instance> {
  const errors: string[] = [];
  const onError = (op: string) => errors.push(op);
  const client = new Redis(server.url, CLIENT_OPTIONS);
  client.on("error", () => {}); // expected while redis-server is down in the restart tests
  if (waitReady && client.status !== "ready") await once(client, "ready");
  const memory = new MemoryTier({
    maxBytes: 8 * 1024 * 1024,
    maxEntries: 1_000,
    maxEntryBytes: 1024 * 1024,
    checkPeriodMs: 0,
  });
  const redis = new RedisTier(client, { keyPrefix, onError: (_tier, op) => errors.push(`redis.${op}`) });
  const bus = new RedisBus(client, { keyPrefix, instanceId: id, onError });
  const invalidator = new Invalidator({ memory, redis, bus, instanceId: id, onError });
  return { memory, redis, client, bus, invalidator, errors };
}

async function subscribers(client: Redis, channel: string): Promise<number> {
  try {
    const reply = (await client.pubsub("NUMSUB", channel)) as [string, number];
    return Number(reply[1]);
  } catch {
    return 0; // not reconnected yet
  }
}

async function twoInstances(): Promise<{
  a: Instance;
  b: Instance;
  keyPrefix: string;
  close(): Promise<void>;
}> {
  const keyPrefix = `inv${++prefixSeq}:`;
  const a = await instance("a", keyPrefix);
  const b = await instance("b", keyPrefix);
  await until("both buses subscribed", async () => (await subscribers(a.client, `${keyPrefix}purge`)) === 2);
  return {
    a,
    b,
    keyPrefix,
    async close() {
      for (const i of [a, b]) {
        await i.bus.close();
        await i.memory.close();
        await i.redis.close(); // quits the client
      }
    },
  };
}

/** Stores `e` as a response would be: in both memory tiers (each instance saw it) and in Redis. */
async function store(a: Instance, b: Instance, e: CacheEntry): Promise<void> {
  const ttl = storageTtlMs(e);
  await Promise.all([a.memory.set(e, ttl), b.memory.set(e, ttl), a.redis.set(e, ttl)]);
}

test("a purge by tag on one instance removes the entry from its memory, the other's memory and Redis", async () => {
  const { a, b, close } = await twoInstances();
  try {
    await store(a, b, entry("k1", `${HOST}/users/1`, ["user:1", "users"]));
    await store(a, b, entry("k2", `${HOST}/users/2`, ["user:2", "users"]));
    assert.equal((await b.redis.get("k1"))?.kind, "response");

    const counts = await a.invalidator.purge({ tags: ["user:1"] });

    assert.deepEqual(counts, { memory: 1, redis: 1 });
    assert.equal(a.memory.getSync("k1"), undefined);
    assert.equal(await a.redis.get("k1"), undefined);
    await until("instance B dropped k1 from memory", () => b.memory.getSync("k1") === undefined, 1_000);
    for (const i of [a, b])
      assert.equal(i.memory.getSync("k2")?.kind, "response", "other tags are untouched");
    assert.equal((await a.redis.get("k2"))?.kind, "response");
    assert.deepEqual([...a.errors, ...b.errors], []);
  } finally {
    await close();
  }
});

test("a purge by URL prefix removes every entry under it everywhere and leaves the rest", async () => {
  const { a, b, close } = await twoInstances();
  try {
    await store(a, b, entry("u1", `${HOST}/api/items?page=1`, []));
    await store(a, b, entry("u2", `${HOST}/api/items/7`, []));
    await store(a, b, entry("u3", `${HOST}/apix`, []));
    await store(a, b, entry("u4", `${HOST}/other`, []));

    const counts = await b.invalidator.purge({ prefixes: [`${HOST}/api/`] });

    assert.deepEqual(counts, { memory: 2, redis: 2 });
    await until(
      "instance A dropped both from memory",
      () => a.memory.getSync("u1") === undefined && a.memory.getSync("u2") === undefined,
      1_000,
    );
    for (const i of [a, b]) {
      assert.equal(i.memory.getSync("u1"), undefined);
      assert.equal(i.memory.getSync("u2"), undefined);
      assert.equal(i.memory.getSync("u3")?.kind, "response", "a sibling path is not under the prefix");
      assert.equal(i.memory.getSync("u4")?.kind, "response");
    }
    assert.equal(await a.redis.get("u1"), undefined);
    assert.equal(await a.redis.get("u2"), undefined);
    assert.equal((await a.redis.get("u3"))?.kind, "response");

    // An exact URL purge matches only that URL.
    assert.deepEqual(await a.invalidator.purge({ urls: [`${HOST}/other`] }), { memory: 1, redis: 1 });
    await until("instance B dropped u4", () => b.memory.getSync("u4") === undefined, 1_000);
    assert.deepEqual([...a.errors, ...b.errors], []);
  } finally {
    await close();
  }
});

test("a soft purge keeps the record everywhere, stale from now on, for the rest of its storage time", async () => {
  const { a, b, keyPrefix, close } = await twoInstances();
  try {
    const storedAt = Date.now() - 10_000;
    const original = entry("s1", `${HOST}/docs`, ["docs"], storedAt);
    await store(a, b, original);
    await store(a, b, entry("s2", `${HOST}/keep`, ["keep"]));
    const remainingMs = storedAt + storageTtlMs(original) - Date.now(); // ~140 s

    const counts = await a.invalidator.purge({ tags: ["docs"], soft: true });

    assert.deepEqual(counts, { memory: 1, redis: 1 });
    const fromRedis = await a.redis.get("s1");
    assert.equal(fromRedis?.kind, "response");
    if (fromRedis?.kind !== "response") return;
    assert.ok(currentAgeMs(fromRedis, Date.now()) >= fromRedis.freshMs, "stale now");
    assert.ok(fromRedis.freshMs < original.freshMs);
    assert.equal(fromRedis.storedAt, storedAt, "age is kept: the record is stale now, not newly stored");
    assert.equal(fromRedis.swrMs, original.swrMs);
    assert.deepEqual(fromRedis.body, original.body);
    const pttl = await a.client.pttl(`${keyPrefix}e:s1`);
    assert.ok(Math.abs(pttl - remainingMs) < 2_000, `Redis TTL ${pttl} ms, expected about ${remainingMs} ms`);

    const memA = a.memory.getSync("s1");
    assert.equal(memA?.kind === "response" && currentAgeMs(memA, Date.now()) >= memA.freshMs, true);
    await until("instance B marked s1 stale", () => {
      const r = b.memory.getSync("s1");
      return r?.kind === "response" && currentAgeMs(r, Date.now()) >= r.freshMs;
    });
    for (const i of [a, b]) {
      const kept = i.memory.getSync("s2");
      assert.equal(kept?.kind === "response" && kept.freshMs, 60_000, "other entries stay fresh");
    }
    // Still found by its tag (the rewrite keeps the indexes), and a second soft purge changes nothing.
    assert.deepEqual(await a.invalidator.purge({ tags: ["docs"], soft: true }), { memory: 1, redis: 1 });
    assert.ok(Math.abs((await a.client.pttl(`${keyPrefix}e:s1`)) - remainingMs) < 2_000);
    // A hard purge after a soft one removes it.
    assert.deepEqual(await a.invalidator.purge({ keys: ["s1"] }), { memory: 1, redis: 1 });
    await until("instance B dropped s1", () => b.memory.getSync("s1") === undefined, 1_000);
    assert.deepEqual([...a.errors, ...b.errors], []);
  } finally {
    await close();
  }
});

test("purges still reach the other instance after redis-server is killed and restarted", async () => {
  const { a, b, keyPrefix, close } = await twoInstances();
  try {
    server.kill();
    await server.restart();
    // A new server knows no subscribers: two means both buses reconnected and subscribed again.
    await until(
      "both buses resubscribed",
      async () => (await subscribers(a.client, `${keyPrefix}purge`)) === 2,
      10_000,
    );
    await until("instance A's main client is back", () => a.client.status === "ready", 10_000);

    const e = entry("r1", `${HOST}/after-restart`, ["restart"]);
    a.memory.setSync(e, storageTtlMs(e));
    b.memory.setSync(e, storageTtlMs(e));
    const counts = await a.invalidator.purge({ tags: ["restart"] });
    assert.deepEqual(counts, { memory: 1, redis: 0 }, "Redis lost its data in the restart");
    await until("instance B dropped r1 after the restart", () => b.memory.getSync("r1") === undefined, 1_000);
  } finally {
    await close();
  }
});

test("a bus created while redis-server is down subscribes once it comes up", async () => {
  const keyPrefix = `inv${++prefixSeq}:`;
  await server.stop();
  const a = await instance("a", keyPrefix, false);
  const b = await instance("b", keyPrefix, false);
  try {
    // Purging while Redis is down: the local memory tier is purged and the failures are reported, not thrown.
    const e = entry("d1", `${HOST}/down`, ["down"]);
    a.memory.setSync(e, storageTtlMs(e));
    assert.deepEqual(await a.invalidator.purge({ tags: ["down"] }), { memory: 1, redis: 0 });
    assert.ok(a.errors.includes("bus.publish"), `errors: ${a.errors.join(", ")}`);

    await server.restart();
    await until(
      "both buses subscribed",
      async () => (await subscribers(a.client, `${keyPrefix}purge`)) === 2,
      10_000,
    );
    await until("instance A's main client is back", () => a.client.status === "ready", 10_000);
    b.memory.setSync(e, storageTtlMs(e));
    await a.invalidator.purge({ keys: ["d1"] });
    await until("instance B dropped d1", () => b.memory.getSync("d1") === undefined, 1_000);
  } finally {
    for (const i of [a, b]) {
      await i.bus.close();
      await i.memory.close();
      await i.redis.close();
    }
  }
});
