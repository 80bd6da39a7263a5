// Memory-tier behaviour beyond the shared contract: the byte and entry bounds, LRU order, no clones, no stray timer.
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { recordSize } from "../../proxy/cache/entry.js";
import { type EvictReason, MemoryTier } from "../../proxy/cache/memory-tier.js";
import { responseRecord } from "../contract/tier.contract.js";

const HOUR_MS = 3_600_000;
const KiB = 1024;
const record = (key: string, bodyBytes = 1_000) => responseRecord({ key, body: Buffer.alloc(bodyBytes, 7) });

test("never exceeds its byte budget while ten times its size of distinct entries are written", async () => {
  const maxBytes = 64 * KiB;
  const tier = new MemoryTier({ maxBytes, maxEntries: 1_000_000, maxEntryBytes: maxBytes });
  const key = (i: number) => `k${String(i).padStart(5, "0")}`; // equal lengths: every record costs the same
  const size = recordSize(record(key(0)));
  const writes = Math.ceil((10 * maxBytes) / size);
  const fits = Math.floor(maxBytes / size);
  for (let i = 0; i < writes; i++) {
    await tier.set(record(key(i)), HOUR_MS);
    assert.ok(tier.stats().bytes <= maxBytes, `${tier.stats().bytes} bytes after write ${i}`);
  }
  const { entries, bytes, evictions } = tier.stats();
  assert.equal(entries, fits);
  assert.equal(bytes, fits * size);
  assert.equal(evictions, writes - fits);
  for (let i = writes - fits; i < writes; i++) assert.ok(tier.getSync(key(i)), `recent ${key(i)} survives`);
  for (let i = 0; i < writes - fits; i++)
    assert.equal(tier.getSync(key(i)), undefined, `old ${key(i)} evicted`);
  await tier.close();
});

test("evicts the least recently used entry, so an entry read recently survives", async () => {
  const tier = new MemoryTier({ maxBytes: 1024 * KiB, maxEntries: 3, maxEntryBytes: 1024 * KiB });
  const evicted: Array<[string, EvictReason]> = [];
  tier.onEvict((key, reason) => evicted.push([key, reason]));
  for (const key of ["a", "b", "c"]) await tier.set(record(key), HOUR_MS);
  assert.ok(await tier.get("a")); // a is now the most recently used; b the least
  await tier.set(record("d"), HOUR_MS);
  assert.deepEqual(evicted, [["b", "capacity"]]);
  assert.ok(tier.getSync("a"));
  assert.equal(tier.getSync("b"), undefined);
  assert.ok(tier.getSync("c"));
  assert.ok(tier.getSync("d"));
  await tier.close();
});

test("writing three times maxEntries with overwrites never throws and keeps at most maxEntries", async () => {
  const maxEntries = 10;
  const errors: unknown[] = [];
  const tier = new MemoryTier({
    maxBytes: 1024 * KiB,
    maxEntries,
    maxEntryBytes: 1024 * KiB,
    onError: (_tier, _op, err) => errors.push(err),
  });
  for (let i = 0; i < 3 * maxEntries; i++) {
    // Every other write overwrites a key that is present: node-cache alone throws ECACHEFULL there when full.
    const key = i % 2 === 0 ? `k${i}` : `k${i - 1}`;
    tier.setSync(record(key), HOUR_MS);
    await tier.set(record(key), HOUR_MS);
    assert.ok(tier.stats().entries <= maxEntries);
  }
  assert.equal(tier.stats().entries, maxEntries);
  assert.equal(tier.stats().evictions, (3 * maxEntries) / 2 - maxEntries);
  assert.ok(tier.getSync("k28"));
  assert.deepEqual(errors, []);
  await tier.close();
});

test("does not store a record above maxEntryBytes, counts it, and drops the older record of that key", async () => {
  const tier = new MemoryTier({ maxBytes: 1024 * KiB, maxEntries: 100, maxEntryBytes: 4 * KiB });
  await tier.set(record("big", 1_000), HOUR_MS);
  assert.ok(tier.getSync("big"));
  await tier.set(record("big", 8 * KiB), HOUR_MS);
  assert.equal(tier.getSync("big"), undefined);
  assert.deepEqual(tier.stats(), { entries: 0, bytes: 0, evictions: 0, expirations: 0, rejectedTooLarge: 1 });
  assert.deepEqual(await tier.keysForTag("items"), []);
  await tier.close();
});

test("hands out the stored object itself, not a clone", async () => {
  const tier = new MemoryTier({ maxBytes: 1024 * KiB, maxEntries: 10, maxEntryBytes: 1024 * KiB });
  const r = record("same");
  await tier.set(r, HOUR_MS);
  assert.equal(tier.getSync("same"), r);
  assert.equal(await tier.get("same"), r);
  await tier.close();
});

test("honours sub-second TTLs exactly and reaps expired entries in the background, freeing their bytes", async () => {
  const tier = new MemoryTier({
    maxBytes: 1024 * KiB,
    maxEntries: 10,
    maxEntryBytes: 1024 * KiB,
    checkPeriodMs: 50,
  });
  const expired: string[] = [];
  tier.onEvict((key, reason) => expired.push(`${key}:${reason}`));
  await tier.set(record("soon"), 120);
  await tier.set(record("later"), HOUR_MS);
  await sleep(60);
  assert.ok(tier.getSync("soon"), "still fresh at 60 ms");
  await sleep(200); // never read again: only the checkperiod sweep can remove it
  assert.deepEqual(expired, ["soon:expired"]);
  assert.deepEqual(tier.stats(), {
    entries: 1,
    bytes: recordSize(record("later")),
    evictions: 0,
    expirations: 1,
    rejectedTooLarge: 0,
  });
  await tier.close();
});

test("rejects invalid options with the exact reason", () => {
  assert.throws(
    () => new MemoryTier({ maxBytes: 0, maxEntries: 1, maxEntryBytes: 1 }),
    /expected opts.maxBytes to be a positive integer, got 0/,
  );
  assert.throws(
    () => new MemoryTier({ maxBytes: 1, maxEntries: 1.5, maxEntryBytes: 1 }),
    /expected opts.maxEntries to be a positive integer, got 1.5/,
  );
});

test("its checkperiod timer does not keep the process alive", async () => {
  const script = `
    const { MemoryTier } = await import("./proxy/cache/memory-tier.ts");
    const tier = new MemoryTier({ maxBytes: 1e6, maxEntries: 10, maxEntryBytes: 1e5, checkPeriodMs: 1000 });
    await tier.set({ kind: "vary", key: "k", vary: ["accept"], storedAt: 0 }, 3600000);
    console.log("stored", tier.stats().entries);
  `;
  const started = Date.now();
  const child = spawn(process.execPath, ["--import", "tsx", "--input-type=module", "-e", script], {
    cwd: new URL("../..", import.meta.url).pathname,
    stdio: ["ignore", "pipe", "pipe"],
  });
  let out = "";
  child.stdout.on("data", (c: Buffer) => {
    out += c.toString();
  });
  child.stderr.on("data", (c: Buffer) => {
    out += c.toString();
  });
  const code = await Promise.race([
    new Promise<number | null>((resolve) => child.once("exit", (c) => resolve(c))),
    sleep(3_000).then(() => "still running" as const),
  ]);
  if (code === "still running") child.kill("SIGKILL");
  assert.equal(code, 0, out);
  assert.match(out, /stored 1/);
  assert.ok(Date.now() - started < 3_000);
});
