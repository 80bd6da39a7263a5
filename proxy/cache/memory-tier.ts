// The in-process tier: node-cache (the mandated store, `useClones: false`) under a byte budget and an entry bound,
// evicting least-recently-used entries itself, because node-cache has neither a byte bound nor LRU, and its `set`
// throws ECACHEFULL at maxKeys even when overwriting (../shared/LIBRARIES.md §4).
import NodeCache from "node-cache";
import { recordSize, type StoredRecord } from "./entry.js";
import type { CacheTier, TierErrorReporter } from "./tier.js";

export interface MemoryTierOptions {
  /** Budget for all records, counted with recordSize(). */
  maxBytes: number;
  maxEntries: number;
  /** Larger records are not stored (counted in stats().rejectedTooLarge). */
  maxEntryBytes: number;
  /** How often node-cache reaps expired keys; 0 turns reaping off (expired keys still miss on read). */
  checkPeriodMs?: number;
  /** Store failures (a node-cache error, a throwing evict listener); the tier itself never throws. */
  onError?: TierErrorReporter;
}

/** Why the tier dropped an entry on its own: the budget needed room, or its TTL ran out. */
export type EvictReason = "capacity" | "expired";
export type EvictListener = (key: string, reason: EvictReason) => void;

export interface MemoryTierStats {
  entries: number;
  bytes: number;
  /** Entries dropped to stay within maxBytes / maxEntries. */
  evictions: number;
  expirations: number;
  rejectedTooLarge: number;
}

/** Removals the caller asked for; only the tier's own (EvictReason) are counted and announced. */
type RemoveReason = EvictReason | "deleted" | "replaced";

interface Slot {
  key: string;
  record: StoredRecord;
  size: number;
  /** Epoch ms; checked on every read so sub-second TTLs are exact whatever node-cache's checkperiod. */
  expiresAt: number;
  /** Neighbours in recency order. A linked list, because refreshing a Map's order (delete + set) on every hit
   * measured 0.3–0.5 M ops/s at 200k keys, slower than everything else on the hit path together. */
  older: Slot | undefined;
  newer: Slot | undefined;
}

/** An index maps a name to one key (the common case for URLs) or to a set of them. */
type Index = Map<string, string | Set<string>>;

const DEFAULT_CHECK_PERIOD_MS = 60_000; // 60 s: reaping walks every key, so not too often

function positiveInteger(name: string, v: unknown): number {
  if (typeof v !== "number" || !Number.isSafeInteger(v) || v <= 0) {
    throw new TypeError(`expected opts.${name} to be a positive integer, got ${String(v)}`);
  }
  return v;
}

export class MemoryTier implements CacheTier {
  readonly name = "memory" as const;
  private readonly maxBytes: number;
  private readonly maxEntries: number;
  private readonly maxEntryBytes: number;
  private readonly onError: TierErrorReporter | undefined;
  private readonly cache: NodeCache;
  /** Every live key. */
  private readonly slots = new Map<string, Slot>();
  /** Ends of the recency list: eviction takes `oldest`, a hit moves its slot to `newest`. */
  private oldest: Slot | undefined;
  private newest: Slot | undefined;
  private readonly byTag: Index = new Map();
  private readonly byUrl: Index = new Map();
  private readonly evictListeners = new Set<EvictListener>();
  /** Set while this tier calls node-cache's del, so the "del" event knows why; unset means node-cache expired it. */
  private removing: RemoveReason | undefined;
  private bytes = 0;
  private evictions = 0;
  private expirations = 0;
  private rejectedTooLarge = 0;

  constructor(opts: MemoryTierOptions) {
    this.maxBytes = positiveInteger("maxBytes", opts.maxBytes);
    this.maxEntries = positiveInteger("maxEntries", opts.maxEntries);
    this.maxEntryBytes = positiveInteger("maxEntryBytes", opts.maxEntryBytes);
    const checkPeriodMs = opts.checkPeriodMs ?? DEFAULT_CHECK_PERIOD_MS;
    if (!Number.isFinite(checkPeriodMs) || checkPeriodMs < 0) {
      throw new TypeError(`expected opts.checkPeriodMs to be a non-negative number, got ${checkPeriodMs}`);
    }
    this.onError = opts.onError;
    this.cache = new NodeCache({
      useClones: false, // a hit hands out the stored object: no copy of the body per request
      stdTTL: 0,
      checkperiod: checkPeriodMs / 1000, // seconds; node-cache unref()s this timer
      deleteOnExpire: true,
      // Never reached while our own bound holds (we evict first); a bookkeeping bug then shows as a reported
      // ECACHEFULL instead of unbounded growth.
      maxKeys: this.maxEntries + 1,
    });
    // Every removal (ours, node-cache's expiry on read, its periodic reaping) passes through "del"; for an expired
    // key node-cache emits "del" before "expired", so "del" alone keeps the books.
    this.cache.on("del", (key: string) => this.forget(key, this.removing ?? "expired"));
  }

  /** The hot path: a plain lookup, no promise. Returns the stored object itself. */
  getSync(key: string): StoredRecord | undefined {
    const slot = this.slots.get(key);
    if (slot === undefined) return undefined;
    if (slot.expiresAt <= Date.now()) {
      this.remove(key, "expired");
      return undefined;
    }
    const record = this.cache.get<StoredRecord>(key);
    if (record === undefined) return undefined;
    if (slot !== this.newest) {
      this.unlink(slot);
      this.append(slot);
    }
    return record;
  }

  get(key: string): Promise<StoredRecord | undefined> {
    return Promise.resolve(this.getSync(key));
  }

  setSync(record: StoredRecord, ttlMs: number): void {
    const key = record.key;
    // The new record supersedes the old one even when it cannot be stored itself.
    if (this.slots.has(key)) this.remove(key, "replaced");
    if (!(ttlMs > 0)) return;
    const size = recordSize(record);
    if (size > this.maxEntryBytes || size > this.maxBytes) {
      this.rejectedTooLarge++;
      return;
    }
    this.makeRoom(size);
    try {
      this.cache.set(key, record, ttlMs / 1000); // node-cache takes seconds (fractions work)
    } catch (err) {
      this.onError?.("memory", "set", err);
      return;
    }
    const slot: Slot = {
      key,
      record,
      size,
      expiresAt: Date.now() + ttlMs,
      older: undefined,
      newer: undefined,
    };
    this.slots.set(key, slot);
    this.append(slot);
    this.bytes += size;
    if (record.kind === "response") {
      for (const tag of record.tags) addTo(this.byTag, tag, key);
      addTo(this.byUrl, record.url, key);
    }
  }

  set(record: StoredRecord, ttlMs: number): Promise<void> {
    this.setSync(record, ttlMs);
    return Promise.resolve();
  }

  delete(keys: readonly string[]): Promise<number> {
    const now = Date.now();
    let existed = 0;
    for (const key of keys) {
      const slot = this.slots.get(key);
      if (slot === undefined) continue;
      if (slot.expiresAt > now) {
        existed++;
        this.remove(key, "deleted");
      } else {
        this.remove(key, "expired");
      }
    }
    return Promise.resolve(existed);
  }

  keysForTag(tag: string): Promise<string[]> {
    return Promise.resolve(this.live(this.byTag.get(tag)));
  }

  keysForUrl(url: string, prefix: boolean): Promise<string[]> {
    if (!prefix) return Promise.resolve(this.live(this.byUrl.get(url)));
    const keys: string[] = [];
    for (const [u, members] of this.byUrl) if (u.startsWith(url)) keys.push(...this.live(members));
    return Promise.resolve(keys);
  }

  /** Called with every entry the tier drops on its own (budget or TTL). Returns an unsubscribe function. */
  /** Removes every record (after a missed purge broadcast); resolves with how many there were. */
  clear(): Promise<number> {
    return this.delete([...this.slots.keys()]);
  }

  onEvict(listener: EvictListener): () => void {
    this.evictListeners.add(listener);
    return () => this.evictListeners.delete(listener);
  }

  stats(): MemoryTierStats {
    return {
      entries: this.slots.size,
      bytes: this.bytes,
      evictions: this.evictions,
      expirations: this.expirations,
      rejectedTooLarge: this.rejectedTooLarge,
    };
  }

  close(): Promise<void> {
    this.cache.flushAll(); // emits no "del": our own maps are cleared below
    this.cache.close(); // after flushAll, which restarts the checkperiod timer
    this.slots.clear();
    this.oldest = undefined;
    this.newest = undefined;
    this.byTag.clear();
    this.byUrl.clear();
    this.bytes = 0;
    return Promise.resolve();
  }

  /** Drops least-recently-used entries until one more record of `size` bytes fits both bounds. */
  private makeRoom(size: number): void {
    while (
      this.oldest !== undefined &&
      (this.slots.size >= this.maxEntries || this.bytes + size > this.maxBytes)
    ) {
      this.remove(this.oldest.key, "capacity");
    }
  }

  private remove(key: string, reason: RemoveReason): void {
    this.removing = reason;
    try {
      this.cache.del(key);
    } catch (err) {
      this.onError?.("memory", "delete", err);
    } finally {
      this.removing = undefined;
    }
    // node-cache had lost the key (no "del" event): keep our accounting right anyway.
    if (this.slots.has(key)) this.forget(key, reason);
  }

  /** Bookkeeping for a key that has left node-cache. */
  private forget(key: string, reason: RemoveReason): void {
    const slot = this.slots.get(key);
    if (slot === undefined) return;
    this.slots.delete(key);
    this.unlink(slot);
    this.bytes -= slot.size;
    const record = slot.record;
    if (record.kind === "response") {
      for (const tag of record.tags) removeFrom(this.byTag, tag, key);
      removeFrom(this.byUrl, record.url, key);
    }
    if (reason === "capacity") this.evictions++;
    else if (reason === "expired") this.expirations++;
    else return;
    for (const listener of this.evictListeners) {
      try {
        listener(key, reason);
      } catch (err) {
        this.onError?.("memory", "onEvict", err);
      }
    }
  }

  private append(slot: Slot): void {
    slot.older = this.newest;
    slot.newer = undefined;
    if (this.newest) this.newest.newer = slot;
    else this.oldest = slot;
    this.newest = slot;
  }

  private unlink(slot: Slot): void {
    if (slot.older) slot.older.newer = slot.newer;
    else this.oldest = slot.newer;
    if (slot.newer) slot.newer.older = slot.older;
    else this.newest = slot.older;
    slot.older = undefined;
    slot.newer = undefined;
  }

  /** Index members still alive (an expired key lingers until read or reaped). */
  private live(members: string | Set<string> | undefined): string[] {
    if (members === undefined) return [];
    const now = Date.now();
    const out: string[] = [];
    for (const key of typeof members === "string" ? [members] : members) {
      const slot = this.slots.get(key);
      if (slot !== undefined && slot.expiresAt > now) out.push(key);
    }
    return out;
  }
}

function addTo(index: Index, name: string, key: string): void {
  const members = index.get(name);
  if (members === undefined) index.set(name, key);
  else if (typeof members !== "string") members.add(key);
  else if (members !== key) index.set(name, new Set([members, key]));
}

function removeFrom(index: Index, name: string, key: string): void {
  const members = index.get(name);
  if (members === key) index.delete(name);
  else if (typeof members === "object") {
    members.delete(key);
    if (members.size === 0) index.delete(name);
  }
}
