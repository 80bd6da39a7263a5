// The shared tier: records in Redis (binary, entry.ts format) with purge indexes as Redis SETs.
//
//   ${keyPrefix}e:${key}  encodeRecord(record), PX ttl
//   ${keyPrefix}t:${tag}  SET of keys of response records with that tag   } PEXPIRE = max(own pttl, entry ttl),
//   ${keyPrefix}u:${url}  SET of keys of response records with that url   } so an index dies with its last entry
//
// Index members are not removed on delete or overwrite; readers keep only members whose entry still exists
// (a key overwritten with other tags can still be listed under its old tags: purging it is harmless).
// Every Redis failure is reported to `onError` and read as a miss / no-op: a failing store never fails a request.
import { Cluster, type Redis } from "ioredis";
import { decodeRecord, EntryFormatError, encodeRecord, type StoredRecord } from "./entry.js";
import type { RedisClient } from "./redis-client.js";
import type { CacheTier, TierErrorReporter } from "./tier.js";

export interface RedisTierOptions {
  keyPrefix: string;
  onError: TierErrorReporter;
  /**
   * Upper bound on get/set/delete, over the client's own commandTimeout (cluster redirections retry past it).
   * Default: twice the client's commandTimeout, or 1 s when it has none.
   */
  opTimeoutMs?: number;
}

// SADD, then extend the index's TTL to cover the new member: PEXPIRE only ever grows it (PTTL is -1 for a new
// set). A script rather than PEXPIRE NX/GT, which need Redis 7; one key per call, so it is Cluster-safe.
const INDEX_SCRIPT = `redis.call("SADD", KEYS[1], ARGV[1])
local ttl = tonumber(ARGV[2])
if redis.call("PTTL", KEYS[1]) < ttl then redis.call("PEXPIRE", KEYS[1], ttl) end
return 1`;

const SCAN_COUNT = 500;
const SCAN_MAX_KEYS = 100_000; // index keys gathered per prefix purge before stopping (reported)
const SCAN_MAX_CALLS = 20_000; // SCAN calls per node (~10M keys visited) before stopping (reported)
const BATCH = 500; // keys per pipeline or multi-key command
const CLOSE_TIMEOUT_MS = 500;

/** `s` as a literal inside a SCAN MATCH glob. */
export function escapeGlob(s: string): string {
  return s.replace(/[*?[\]\\]/g, "\\$&");
}

export class RedisTierTimeoutError extends Error {
  readonly code = "cache_tier_timeout";
}

export class RedisTier implements CacheTier {
  readonly name = "redis" as const;
  private readonly client: RedisClient;
  private readonly prefix: string;
  private readonly onError: TierErrorReporter;
  private readonly opTimeoutMs: number;
  private closing: Promise<void> | undefined;

  constructor(client: RedisClient, opts: RedisTierOptions) {
    this.client = client;
    this.prefix = opts.keyPrefix;
    this.onError = opts.onError;
    const commandTimeout =
      client instanceof Cluster ? client.options.redisOptions?.commandTimeout : client.options.commandTimeout;
    this.opTimeoutMs = opts.opTimeoutMs ?? (commandTimeout ? 2 * commandTimeout : 1_000);
  }

  async get(key: string): Promise<StoredRecord | undefined> {
    const entryKey = this.entryKey(key);
    let buf: Buffer | null;
    try {
      buf = await this.bounded(this.client.getBuffer(entryKey));
    } catch (err) {
      this.onError(this.name, "get", err);
      return undefined;
    }
    if (buf === null) return undefined;
    try {
      const record = decodeRecord(buf);
      if (record.key !== key) throw new EntryFormatError(`record for "${record.key}" stored under "${key}"`);
      return record;
    } catch (err) {
      this.onError(this.name, "decode", err);
      // Unreadable (another format version, corruption): drop it so the next response replaces it.
      this.client.del(entryKey).catch((e: unknown) => this.onError(this.name, "delete", e));
      return undefined;
    }
  }

  async set(record: StoredRecord, ttlMs: number): Promise<void> {
    if (!(ttlMs > 0)) return;
    const ttl = Math.max(1, Math.ceil(ttlMs));
    const entryKey = this.entryKey(record.key);
    const value = encodeRecord(record);
    const indexKeys =
      record.kind === "response"
        ? [...new Set(record.tags)].map((t) => this.tagKey(t)).concat(this.urlKey(record.url))
        : [];
    try {
      if (this.client instanceof Cluster) {
        // Keys live on different slots: one command each (a Cluster pipeline must stay on one node).
        const c = this.client;
        await this.bounded(
          Promise.all([
            ...indexKeys.map((k) => c.eval(INDEX_SCRIPT, 1, k, record.key, ttl)),
            c.set(entryKey, value, "PX", ttl),
          ]),
        );
      } else {
        // One server: the entry and its index entries become visible together.
        const tx = this.client.multi();
        for (const k of indexKeys) tx.eval(INDEX_SCRIPT, 1, k, record.key, ttl);
        tx.set(entryKey, value, "PX", ttl);
        throwFirstError(await this.bounded(tx.exec()));
      }
    } catch (err) {
      this.onError(this.name, "set", err);
    }
  }

  async delete(keys: readonly string[]): Promise<number> {
    const entryKeys = [...new Set(keys)].map((k) => this.entryKey(k));
    let removed = 0;
    try {
      for (let i = 0; i < entryKeys.length; i += BATCH) {
        const chunk = entryKeys.slice(i, i + BATCH);
        if (this.client instanceof Cluster) {
          // No multi-key DEL across slots.
          const c = this.client;
          const counts = await this.bounded(Promise.all(chunk.map((k) => c.del(k))));
          for (const n of counts) removed += n;
        } else {
          removed += await this.bounded(this.client.del(...chunk));
        }
      }
    } catch (err) {
      this.onError(this.name, "delete", err);
    }
    return removed;
  }

  async keysForTag(tag: string): Promise<string[]> {
    try {
      return await this.liveMembers(this.tagKey(tag));
    } catch (err) {
      this.onError(this.name, "keysForTag", err);
      return [];
    }
  }

  async keysForUrl(url: string, prefix: boolean): Promise<string[]> {
    try {
      if (!prefix) return await this.liveMembers(this.urlKey(url));
      const indexKeys = await this.scan(`${escapeGlob(this.urlKey(url))}*`);
      const members = new Set<string>();
      for (const list of await this.perKey("smembers", indexKeys)) for (const m of list) members.add(m);
      return await this.existing([...members]);
    } catch (err) {
      this.onError(this.name, "keysForUrl", err);
      return [];
    }
  }

  /** Quits the client; a client that does not say goodbye within 500 ms is disconnected. */
  close(): Promise<void> {
    this.closing ??= (async () => {
      let timer: NodeJS.Timeout | undefined;
      const quitted = await Promise.race([
        this.client.quit().then(
          () => true,
          () => false,
        ),
        new Promise<false>((resolve) => {
          timer = setTimeout(resolve, CLOSE_TIMEOUT_MS, false);
        }),
      ]);
      clearTimeout(timer);
      if (!quitted) this.client.disconnect();
    })();
    return this.closing;
  }

  private entryKey(key: string): string {
    return `${this.prefix}e:${key}`;
  }

  private tagKey(tag: string): string {
    return `${this.prefix}t:${tag}`;
  }

  private urlKey(url: string): string {
    return `${this.prefix}u:${url}`;
  }

  /** Members of one index whose entries still exist; the others are removed from the index on the way. */
  private async liveMembers(indexKey: string): Promise<string[]> {
    const members = await this.client.smembers(indexKey);
    const live = await this.existing(members);
    if (live.length < members.length) {
      const alive = new Set(live);
      const stale = members.filter((m) => !alive.has(m));
      await this.client.srem(indexKey, ...stale).catch((e: unknown) => this.onError(this.name, "srem", e));
    }
    return live;
  }

  private async existing(keys: string[]): Promise<string[]> {
    const counts = await this.perKey(
      "exists",
      keys.map((k) => this.entryKey(k)),
    );
    return keys.filter((_, i) => counts[i] === 1);
  }

  /** One single-key command per key: pipelined on one server, routed per key on a Cluster. */
  private async perKey<C extends "exists" | "smembers">(
    command: C,
    keys: string[],
  ): Promise<Array<Awaited<ReturnType<Redis[C]>>>> {
    type Reply = Awaited<ReturnType<Redis[C]>>;
    const out: Reply[] = [];
    for (let i = 0; i < keys.length; i += BATCH) {
      const chunk = keys.slice(i, i + BATCH);
      if (this.client instanceof Cluster) {
        const c = this.client;
        out.push(...((await Promise.all(chunk.map((k) => c[command](k)))) as Reply[]));
      } else {
        const p = this.client.pipeline();
        for (const k of chunk) p[command](k);
        out.push(...(throwFirstError(await p.exec()) as Reply[]));
      }
    }
    return out;
  }

  /** Keys matching `pattern` on every master (a Cluster spreads keys over nodes), bounded. */
  private async scan(pattern: string): Promise<string[]> {
    const nodes: Redis[] = this.client instanceof Cluster ? this.client.nodes("master") : [this.client];
    const found = new Set<string>();
    for (const node of nodes) {
      let cursor = "0";
      let calls = 0;
      do {
        const [next, keys] = await node.scan(cursor, "MATCH", pattern, "COUNT", SCAN_COUNT);
        for (const k of keys) found.add(k);
        cursor = next;
        calls++;
        if (found.size >= SCAN_MAX_KEYS || calls >= SCAN_MAX_CALLS) {
          this.onError(
            this.name,
            "keysForUrl",
            new Error(
              `prefix scan for ${pattern} stopped after ${found.size} index keys and ${calls} SCAN calls`,
            ),
          );
          return [...found];
        }
      } while (cursor !== "0");
    }
    return [...found];
  }

  /** `p`, or a rejection once opTimeoutMs has passed (the command's own late result is then ignored). */
  private bounded<T>(p: Promise<T>): Promise<T> {
    let timer: NodeJS.Timeout | undefined;
    const deadline = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () => reject(new RedisTierTimeoutError(`Redis did not answer within ${this.opTimeoutMs} ms`)),
        this.opTimeoutMs,
      );
    });
    return Promise.race([p, deadline]).finally(() => clearTimeout(timer));
  }
}

/** The replies of a pipeline or transaction, or the first error among them. */
function throwFirstError(results: Array<[Error | null, unknown]> | null): unknown[] {
  if (results === null) throw new Error("Redis transaction was aborted");
  return results.map(([err, reply]) => {
    if (err) throw err;
    return reply;
  });
}
