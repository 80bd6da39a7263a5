// The one suite every cache tier passes (STYLE.md habit 5): memory-tier.test.ts and redis-tier.test.ts run it.
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import type { CacheEntry, VaryRecord } from "../../proxy/cache/entry.js";
import type { CacheTier } from "../../proxy/cache/tier.js";

export interface TierUnderTest {
  tier: CacheTier;
  cleanup(): Promise<void>;
}

const ALL_BYTES = Buffer.from(Array.from({ length: 256 }, (_, i) => i));
const HOUR_MS = 3_600_000;

export function responseRecord(over: Partial<CacheEntry> = {}): CacheEntry {
  const key = over.key ?? "k";
  return {
    kind: "response",
    key,
    primaryKey: key,
    url: "example.test/items?id=1",
    route: "api",
    status: 200,
    headers: {
      "content-type": "application/octet-stream",
      "set-cookie": ["a=1; Path=/", "b=2; Path=/"],
      vary: "accept-encoding",
      etag: '"v1"',
    },
    body: ALL_BYTES,
    storedAt: 1_700_000_000_000,
    initialAgeMs: 250,
    freshMs: 60_000,
    swrMs: 30_000,
    sieMs: 120_000,
    mustRevalidate: false,
    tags: ["items", "item-1"],
    policy: { v: 1, sh: true, st: 200, resh: { "cache-control": "max-age=60" } },
    ...over,
  };
}

export function varyRecord(key: string): VaryRecord {
  return { kind: "vary", key, vary: ["accept-encoding", "accept-language"], storedAt: 1_700_000_000_000 };
}

const sorted = (keys: string[]) => [...keys].sort();

/** Registers the shared behaviour tests for the tier `make` builds (a fresh, empty tier per test). */
export function tierContract(name: string, make: () => Promise<TierUnderTest>): void {
  const withTier = (fn: (tier: CacheTier) => Promise<void>) => async () => {
    const { tier, cleanup } = await make();
    try {
      await fn(tier);
    } finally {
      await cleanup();
    }
  };

  describe(`${name} tier contract`, () => {
    test(
      "round-trips a response record byte for byte, array-valued headers included",
      withTier(async (tier) => {
        const record = responseRecord({ key: "rt" });
        await tier.set(record, HOUR_MS);
        const got = await tier.get("rt");
        assert.ok(got && got.kind === "response");
        assert.equal(Buffer.compare(got.body, ALL_BYTES), 0);
        assert.equal(got.body.length, 256);
        assert.deepEqual(got, record);
      }),
    );

    test(
      "round-trips a vary record and does not index it by URL",
      withTier(async (tier) => {
        const record = varyRecord("v");
        await tier.set(record, HOUR_MS);
        assert.deepEqual(await tier.get("v"), record);
        assert.deepEqual(await tier.keysForUrl("", true), []);
      }),
    );

    test(
      "misses a key that was never stored",
      withTier(async (tier) => {
        assert.equal(await tier.get("never-stored"), undefined);
      }),
    );

    test(
      "forgets a record once its TTL has passed, in its indexes too",
      withTier(async (tier) => {
        await tier.set(responseRecord({ key: "short", tags: ["ephemeral"] }), 150);
        assert.ok(await tier.get("short"));
        await sleep(400);
        assert.equal(await tier.get("short"), undefined);
        assert.deepEqual(await tier.keysForTag("ephemeral"), []);
        assert.deepEqual(await tier.keysForUrl("example.test/items?id=1", false), []);
      }),
    );

    test(
      "overwrites a key with the newer record",
      withTier(async (tier) => {
        await tier.set(responseRecord({ key: "ow", body: Buffer.from("old") }), HOUR_MS);
        await tier.set(responseRecord({ key: "ow", body: Buffer.from("new"), status: 203 }), HOUR_MS);
        const got = await tier.get("ow");
        assert.ok(got && got.kind === "response");
        assert.equal(got.body.toString(), "new");
        assert.equal(got.status, 203);
        assert.deepEqual(await tier.keysForTag("items"), ["ow"]);
      }),
    );

    test(
      "delete removes the keys and resolves with how many existed",
      withTier(async (tier) => {
        await tier.set(responseRecord({ key: "d1" }), HOUR_MS);
        await tier.set(varyRecord("d2"), HOUR_MS);
        await tier.set(responseRecord({ key: "keep" }), HOUR_MS);
        assert.equal(await tier.delete(["d1", "d2", "absent"]), 2);
        assert.equal(await tier.get("d1"), undefined);
        assert.equal(await tier.get("d2"), undefined);
        assert.ok(await tier.get("keep"));
        assert.equal(await tier.delete(["d1", "d2"]), 0);
        assert.equal(await tier.delete([]), 0);
      }),
    );

    test(
      "keysForTag finds response records by each of their tags and forgets deleted ones",
      withTier(async (tier) => {
        await tier.set(responseRecord({ key: "a", tags: ["shared", "only-a"] }), HOUR_MS);
        await tier.set(responseRecord({ key: "b", tags: ["shared"] }), HOUR_MS);
        assert.deepEqual(await tier.keysForTag("only-a"), ["a"]);
        assert.deepEqual(sorted(await tier.keysForTag("shared")), ["a", "b"]);
        assert.deepEqual(await tier.keysForTag("unknown"), []);
        await tier.delete(["a"]);
        assert.deepEqual(await tier.keysForTag("shared"), ["b"]);
        assert.deepEqual(await tier.keysForTag("only-a"), []);
      }),
    );

    test(
      "keysForUrl matches the whole URL exactly, or as a prefix when asked",
      withTier(async (tier) => {
        const urls: Record<string, string> = { a: "host/a", aq: "host/a?x=1", ab: "host/ab", b: "host/b" };
        for (const [key, url] of Object.entries(urls)) await tier.set(responseRecord({ key, url }), HOUR_MS);
        assert.deepEqual(await tier.keysForUrl("host/a", false), ["a"]);
        assert.deepEqual(sorted(await tier.keysForUrl("host/a", true)), ["a", "ab", "aq"]);
        assert.deepEqual(await tier.keysForUrl("host/b", true), ["b"]);
        assert.deepEqual(await tier.keysForUrl("host/c", true), []);
        assert.deepEqual(await tier.keysForUrl("host/a?", false), []);
        await tier.delete(["ab"]);
        assert.deepEqual(sorted(await tier.keysForUrl("host/a", true)), ["a", "aq"]);
      }),
    );

    test(
      "matches a URL prefix holding glob characters literally",
      withTier(async (tier) => {
        const urls: Record<string, string> = {
          lit: "host/[a]*?\\x/1",
          litq: "host/[a]*?\\x?q=1",
          glob1: "host/a*?\\x/1", // what [a] would match as a character class
          glob2: "host/[a]zz\\x/1", // what * would match
          glob3: "host/[a]*Z\\x/1", // what ? would match
        };
        for (const [key, url] of Object.entries(urls)) await tier.set(responseRecord({ key, url }), HOUR_MS);
        assert.deepEqual(sorted(await tier.keysForUrl("host/[a]*?\\x", true)), ["lit", "litq"]);
        assert.deepEqual(await tier.keysForUrl("host/[a]*?\\x/1", false), ["lit"]);
        assert.deepEqual(await tier.keysForUrl("host/*", true), []);
      }),
    );
  });
}
