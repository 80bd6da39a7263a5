// Memory in front of Redis. A memory hit is answered synchronously (no promise on the hot path); a Redis hit
// backfills memory for the rest of the record's life.
import type { IncomingHttpHeaders } from "node:http";
import { type CacheEntry, type StoredRecord, storageTtlMs } from "./entry.js";
import { variantKey } from "./key.js";
import type { MemoryTier } from "./memory-tier.js";
import type { CacheTier, TierName } from "./tier.js";

export interface Found {
  entry: CacheEntry;
  tier: TierName;
}

/** What a lookup learned: the entry (if any) and the key its variant lives under. */
export interface LookupResult {
  found: Found | undefined;
  /** The storage key for this request's variant (the primary key when the resource does not vary). */
  key: string;
  /** Vary field names, when the primary key holds a vary record. */
  vary: string[] | undefined;
}

// Vary records carry no lifetime of their own; a backfilled copy lives this long at most in memory.
const VARY_BACKFILL_MS = 60_000;

export function remainingTtlMs(entry: CacheEntry, now: number): number {
  return entry.storedAt + storageTtlMs(entry) - now;
}

export class TieredCache {
  constructor(
    readonly memory: MemoryTier,
    readonly redis: CacheTier | undefined,
  ) {}

  /** Memory-only lookup; undefined when memory cannot answer (a miss there, with Redis configured, is "maybe"). */
  lookupSync(primary: string, headers: IncomingHttpHeaders): LookupResult | undefined {
    const rec = this.memory.getSync(primary);
    if (rec?.kind === "vary") {
      const key = variantKey(primary, rec.vary, headers);
      const entry = this.memory.getSync(key);
      if (entry?.kind === "response") return { found: { entry, tier: "memory" }, key, vary: rec.vary };
      return this.redis ? undefined : { found: undefined, key, vary: rec.vary };
    }
    if (rec?.kind === "response")
      return { found: { entry: rec, tier: "memory" }, key: primary, vary: undefined };
    return this.redis ? undefined : { found: undefined, key: primary, vary: undefined };
  }

  /** Full lookup through both tiers. */
  lookup(primary: string, headers: IncomingHttpHeaders): LookupResult | Promise<LookupResult> {
    return this.lookupSync(primary, headers) ?? this.lookupSlow(primary, headers);
  }

  private async lookupSlow(primary: string, headers: IncomingHttpHeaders): Promise<LookupResult> {
    const rec = await this.get(primary);
    if (rec?.record.kind === "vary") {
      const vary = rec.record.vary;
      const key = variantKey(primary, vary, headers);
      const v = await this.get(key);
      return {
        found: v?.record.kind === "response" ? { entry: v.record, tier: v.tier } : undefined,
        key,
        vary,
      };
    }
    if (rec?.record.kind === "response")
      return { found: { entry: rec.record, tier: rec.tier }, key: primary, vary: undefined };
    return { found: undefined, key: primary, vary: undefined };
  }

  private async get(key: string): Promise<{ record: StoredRecord; tier: TierName } | undefined> {
    const mem = this.memory.getSync(key);
    if (mem) return { record: mem, tier: "memory" };
    if (!this.redis) return undefined;
    const rec = await this.redis.get(key);
    if (!rec) return undefined;
    const ttl = rec.kind === "response" ? remainingTtlMs(rec, Date.now()) : VARY_BACKFILL_MS;
    if (ttl > 0) await this.memory.set(rec, ttl);
    return { record: rec, tier: "redis" };
  }

  /** Stores a response (and its vary record) in both tiers; resolves when Redis has it too (or failed). */
  async store(entry: CacheEntry, vary: string[] | undefined, now: number): Promise<void> {
    const ttl = remainingTtlMs(entry, now);
    if (ttl <= 0) return;
    const writes: Array<Promise<void>> = [];
    if (vary && vary.length > 0) {
      const varyRecord: StoredRecord = { kind: "vary", key: entry.primaryKey, vary, storedAt: now };
      writes.push(this.memory.set(varyRecord, ttl));
      if (this.redis) writes.push(this.redis.set(varyRecord, ttl));
    }
    writes.push(this.memory.set(entry, ttl));
    if (this.redis) writes.push(this.redis.set(entry, ttl));
    await Promise.all(writes);
  }

  async close(): Promise<void> {
    await this.memory.close();
    await this.redis?.close();
  }
}
