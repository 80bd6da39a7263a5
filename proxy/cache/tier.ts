// The contract every cache tier keeps (memory and Redis pass the same suite: test/contract/tier.contract.ts).
// A tier never throws into a request: failures are reported through `onError` and read as misses / no-ops.
import type { StoredRecord } from "./entry.js";

export type TierName = "memory" | "redis";

export interface CacheTier {
  readonly name: TierName;
  /** The record, or undefined on a miss, an expired record, or a tier failure. */
  get(key: string): Promise<StoredRecord | undefined>;
  /** Stores `record` for `ttlMs` (> 0). Indexes response records by their tags and URL for purges. */
  set(record: StoredRecord, ttlMs: number): Promise<void>;
  /** Removes these keys; resolves with how many existed. */
  delete(keys: readonly string[]): Promise<number>;
  /** Keys of response records carrying `tag`. */
  keysForTag(tag: string): Promise<string[]>;
  /** Keys of response records whose `url` equals `url`, or starts with it when `prefix` is true. */
  keysForUrl(url: string, prefix: boolean): Promise<string[]>;
  /** Releases timers and connections. */
  close(): Promise<void>;
}

export type TierErrorReporter = (tier: TierName, op: string, err: unknown) => void;
