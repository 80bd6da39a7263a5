// Purges by key, tag, URL and URL prefix: here in both tiers, then in every other instance's memory tier through
// the bus (Redis is shared, so only the originating instance touches it).
//
// Hard purge deletes. Soft purge keeps the record but makes it stale now (freshMs 0), so it can still be served
// within its stale windows or revalidated with its validators (RFC 9111 §4.3) instead of refetched in full.
// A purge never throws: tier and bus failures go to onError and count as nothing purged.

import type { RedisBus } from "./bus.js";
import { type CacheEntry, storageTtlMs } from "./entry.js";
import { currentAgeMs } from "./policy.js";
import type { CacheTier } from "./tier.js";

export interface PurgeRequest {
  keys?: string[];
  tags?: string[];
  urls?: string[];
  prefixes?: string[];
  soft?: boolean;
}

export interface PurgeCounts {
  memory: number;
  redis: number;
}

export interface InvalidatorOptions {
  memory: CacheTier;
  redis?: CacheTier;
  bus?: RedisBus;
  instanceId: string;
  onError(op: string, err: unknown): void;
}

const PURGE_CHANNEL = "purge";
const MIN_SOFT_TTL_MS = 1_000; // a soft-purged record lives at least 1 s, so it can still be served stale once
const SOFT_CONCURRENCY = 32; // records read and rewritten at a time (one Redis round trip each)

function stringArray(v: unknown): string[] | undefined {
  return Array.isArray(v) && v.every((s) => typeof s === "string") ? v : undefined;
}

/** The request from a bus message, or undefined when it is not one. */
function parsePurge(msg: unknown): PurgeRequest | undefined {
  if (typeof msg !== "object" || msg === null) return undefined;
  const m = msg as Record<string, unknown>;
  const out: PurgeRequest = { soft: m.soft === true };
  for (const field of ["keys", "tags", "urls", "prefixes"] as const) {
    if (m[field] === undefined) continue;
    const list = stringArray(m[field]);
    if (!list) return undefined;
    out[field] = list;
  }
  return out;
}

export class Invalidator {
  constructor(private readonly opts: InvalidatorOptions) {
    opts.bus?.subscribe(PURGE_CHANNEL, this.onRemotePurge);
  }

  /** Purges locally (memory and Redis), then asks the other instances to purge their memory tiers. */
  async purge(req: PurgeRequest): Promise<PurgeCounts> {
    const request: PurgeRequest = { soft: req.soft === true };
    if (req.keys?.length) request.keys = req.keys;
    if (req.tags?.length) request.tags = req.tags;
    if (req.urls?.length) request.urls = req.urls;
    if (req.prefixes?.length) request.prefixes = req.prefixes;
    const { memory, redis, bus } = this.opts;
    const [memoryCount, redisCount] = await Promise.all([
      this.apply(memory, request),
      redis ? this.apply(redis, request) : 0,
    ]);
    // After Redis: an instance that misses in memory on receipt must not find the old record there.
    await bus?.publish(PURGE_CHANNEL, request);
    return { memory: memoryCount, redis: redisCount };
  }

  /** Resolves the request's keys in `tier` and deletes them or marks them stale; resolves with the count. */
  private async apply(tier: CacheTier, req: PurgeRequest): Promise<number> {
    try {
      const keys = await this.resolve(tier, req);
      if (keys.length === 0) return 0;
      return req.soft ? await this.soften(tier, keys) : await tier.delete(keys);
    } catch (err) {
      this.opts.onError(`purge.${tier.name}`, err);
      return 0;
    }
  }

  private async resolve(tier: CacheTier, req: PurgeRequest): Promise<string[]> {
    const lists = await Promise.all([
      ...(req.tags ?? []).map((tag) => tier.keysForTag(tag)),
      ...(req.urls ?? []).map((url) => tier.keysForUrl(url, false)),
      ...(req.prefixes ?? []).map((prefix) => tier.keysForUrl(prefix, true)),
    ]);
    const keys = new Set(req.keys);
    for (const list of lists) for (const key of list) keys.add(key);
    return [...keys];
  }

  /** Rewrites each fresh response record as stale from now on (freshMs = its age); resolves with the count. */
  private async soften(tier: CacheTier, keys: string[]): Promise<number> {
    let count = 0;
    let next = 0;
    const worker = async () => {
      while (next < keys.length) {
        const key = keys[next++] as string;
        const record = await tier.get(key);
        // Vary records hold no response: the variants are purged through their own keys (tags, URL).
        if (record?.kind !== "response") continue;
        count++;
        const now = Date.now();
        const age = currentAgeMs(record, now);
        // Already stale: rewriting would only shorten its life (the TTL is computed from freshMs).
        if (age >= record.freshMs) continue;
        const remaining = record.storedAt + storageTtlMs(record) - now;
        // Stale from now on; its stale-while-revalidate / stale-if-error windows start now.
        const softened: CacheEntry = { ...record, freshMs: Math.max(0, age) };
        await tier.set(softened, Math.max(remaining, MIN_SOFT_TTL_MS));
      }
    };
    await Promise.all(Array.from({ length: Math.min(SOFT_CONCURRENCY, keys.length) }, worker));
    return count;
  }

  private readonly onRemotePurge = (msg: unknown, from: string): void => {
    if (from === this.opts.instanceId) return;
    const req = parsePurge(msg);
    if (!req) {
      this.opts.onError("purge.remote", new Error("purge message is not a purge request"));
      return;
    }
    void this.apply(this.opts.memory, req);
  };
}
