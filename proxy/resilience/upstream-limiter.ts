// Upstream concurrency on the miss path: per upstream, a bottleneck limiter whose maxConcurrent is the adaptive
// limit (adaptive-limit.ts), a bounded queue and a bounded wait. Knows nothing of HTTP; the forward stage takes a
// slot before asking the upstream and gives it back when the response body has ended, because an LLM upstream is
// busy for the whole event stream, not just until the headers. Cache hits never come here.
//
// Slots and permits. Every request in flight holds a permit, and a permit is a running bottleneck job: bottleneck
// (maxConcurrent = the limit) is what caps the number in flight, in this process or, shared, across instances.
// A released permit is handed straight to the oldest waiting request, or lingers (SLOT_LINGER_MS: 5 s locally,
// 100 ms when shared) for the next one before its job ends. So bottleneck is asked only when more permits are needed
// than are held: measured, one bottleneck job costs ~120 µs of CPU even with the patch in bottleneck.ts, which a job
// per request would pay on every miss (bench/miss-path.ts prints the limiter's counters, jobs among them).
//
// Queue bounds (our queue, FIFO; bottleneck's own queue only ever holds permit requests, at most `limit` of them):
//   maxQueue  once `limit + maxQueue` requests want the upstream (holding or waiting for a slot), the next is
//             refused at once (reason "queue_full").
//   maxWait   a request that has not got a slot after maxWait is refused (reason "wait_timeout"). 0 means no time
//             limit but also no queue: a request waits only for a slot that is free right now.
//   Both answer 503 upstream_overloaded with Retry-After = maxWait rounded up (≥ 1 s): by then every request now
//   queued has started or given up. A client that goes away while waiting leaves the queue at once.
//
// Shared limits (`concurrency.shared` with Redis): bottleneck clustering (datastore "ioredis", one connection on a
// duplicate of the cache's client, limiter id "{cachegate}:<keyPrefix>:<upstream>" — the hash tag keeps all its
// keys in one Redis Cluster slot). Redis never blocks a request:
//   - until the clustered limiter is ready (it waits for Redis forever when Redis is down at start) permits come
//     from this process's local limiter, with the same limit;
//   - a Redis error marks the shared limiter unusable: permit requests go to the local limiter, and the shared one
//     is used again once a probe against it succeeds (every SHARED_RETRY_MS).
// So while Redis is away the upstream may see up to N instances × limit. Permits whose release could not reach
// Redis stay counted there until bottleneck reclaims them (its client timeout); a lingering permit holds a unit of
// the shared limit for up to 100 ms. Both are reasons why sharing is off by default (README, Resilience).
import { EventEmitter } from "node:events";
import { Cluster, type Redis } from "ioredis";
import type { UpstreamConfig } from "../../config/schema.js";
import { ProxyError } from "../errors.js";
import { type ListNode, WatchList } from "../upstream/watch-list.js";
import { AdaptiveLimit, type SampleOutcome } from "./adaptive-limit.js";
import { Bottleneck } from "./bottleneck.js";

type ConcurrencyConfig = UpstreamConfig["concurrency"];

export type RejectReason = "queue_full" | "wait_timeout";

/** How the request that held a slot went. */
export interface SlotOutcome {
  /** Time to the upstream's response headers, ms (time spent waiting for the slot excluded). */
  ttfbMs?: number;
  status?: number;
  /** A ProxyError code when there was no response (upstream_timeout, client_closed, …). */
  error?: string;
}

/** One unit of upstream concurrency. Hold it until the response body has ended. */
export interface Slot {
  /** Reports the response headers (feeds the adaptive limit); only the first report counts. */
  observe(outcome: SlotOutcome): void;
  /** Gives the slot back (observing `outcome` if nothing was observed yet). Idempotent. */
  release(outcome?: SlotOutcome): void;
}

export interface LimiterStats {
  limit: number;
  inFlight: number;
  /** Requests waiting for a slot. */
  queued: number;
  baselineMs: number | undefined;
  /** Slots asked for since start: cache hits never ask, so this stays 0 under a hit-only load. */
  acquired: number;
  rejected: Record<RejectReason, number>;
  /** Where permits come from right now. */
  mode: "local" | "shared";
  /** bottleneck jobs started: permits obtained from bottleneck (a reused permit needs none). */
  jobs: number;
  /** Permits held: in flight plus lingering idle. */
  held: number;
  /** Requests that had to queue (no lingering slot was free). */
  waited: number;
}

export interface LimiterEvents {
  limit: [{ upstream: string; limit: number; previous: number }];
  rejected: [{ upstream: string; reason: RejectReason }];
  /** Shared mode only: permits now come from Redis (`shared: true`) or from this process (false). */
  mode: [{ upstream: string; shared: boolean; reason: string }];
}

/** The outcome as the controller sees it: 5xx, 429 and timeouts say "back off". */
export function classifyOutcome(o: SlotOutcome): SampleOutcome {
  if (o.status !== undefined) return o.status >= 500 || o.status === 429 ? "overload" : "ok";
  return o.error === "upstream_timeout" ? "overload" : "ignore";
}

const OVERLOAD_RETRY_MIN_S = 1;
/**
 * How long an idle permit is kept for the next request before it goes back to bottleneck. Locally an idle permit
 * blocks nobody (every request here takes it first), so it may wait long: asking bottleneck again costs a job and,
 * under load, a dozen turns of a busy event loop. A shared permit idles for at most 100 ms, since it holds a unit
 * of the limit other instances could use.
 */
export const SLOT_LINGER_MS = { local: 5_000, shared: 100 } as const;
/** A shared limiter that failed is probed again this often. */
const SHARED_RETRY_MS = 2_000; // 2 s

/** Something that says when the request gave up (the client's response: "close"). */
export interface CancelSource {
  once(event: "close", listener: () => void): unknown;
  removeListener(event: "close", listener: () => void): unknown;
}

interface Waiter {
  resolve(slot: Slot): void;
  reject(err: ProxyError): void;
  timer: NodeJS.Timeout | undefined;
  /** Stops listening for the request giving up. */
  cancel: (() => void) | undefined;
  /** Its place in the queue; undefined once it left it. */
  node: ListNode<Waiter> | undefined;
}

/** Where permits come from: the local bottleneck, or the clustered one. */
interface Source {
  readonly name: "local" | "shared";
  /** Replaced (shared only) when Redis lost the limiter's state: see `probeShared`. */
  limiter: Bottleneck;
  /** Permits of this source held (in flight or idle). */
  held: number;
  /** Permit requests sent to this source's bottleneck and not answered yet. */
  pending: number;
}

/** A running bottleneck job: one unit of the upstream's limit, held by a request or lingering idle. */
interface Permit {
  readonly source: Source;
  /** Ends the bottleneck job: the unit goes back to bottleneck. */
  readonly done: () => void;
  idleSince: number;
}

/** A slot in use: a class, not closures, since one is made per upstream request. */
class HeldSlot implements Slot {
  private observed = false;
  private released = false;
  private readonly inFlightAtStart: number;

  constructor(
    private readonly owner: UpstreamLimiter,
    private readonly permit: Permit,
  ) {
    this.inFlightAtStart = owner.onTaken();
  }

  observe(o: SlotOutcome): void {
    if (this.observed) return;
    this.observed = true;
    this.owner.sample(o, this.inFlightAtStart);
  }

  release(o?: SlotOutcome): void {
    if (this.released) return;
    this.released = true;
    if (o) this.observe(o);
    this.owner.onReleased(this.permit);
  }
}

/** One upstream's limiter. */
export class UpstreamLimiter {
  private readonly control: AdaptiveLimit | undefined;
  private readonly local: Source;
  private readonly shared: Source | undefined;
  private sharedUsable = false;
  private sharedProbe: NodeJS.Timeout | undefined;
  /** Builds the clustered bottleneck (shared mode). */
  private readonly clustered: (() => Bottleneck) | undefined;
  private current: number;
  private applying: Promise<unknown> = Promise.resolve();
  private inFlight = 0;
  /** FIFO with O(1) removal; not a Set, whose churn keeps queued requests alive (upstream/watch-list.ts). */
  private readonly waiters = new WatchList<Waiter>();
  private acquired = 0;
  private jobs = 0;
  private waited = 0;
  private readonly rejected: Record<RejectReason, number> = { queue_full: 0, wait_timeout: 0 };
  /** Released permits lingering for reuse, the most recently released last. */
  private readonly idle: Permit[] = [];
  private sweeper: NodeJS.Timeout | undefined;
  private closed = false;
  private readonly retryAfter: string;

  constructor(
    readonly upstream: string,
    private readonly cfg: ConcurrencyConfig,
    private readonly emitter: EventEmitter<LimiterEvents>,
    shared?: { connection: Bottleneck.IORedisConnection; id: string },
    now?: () => number,
  ) {
    this.current = cfg.initial;
    this.control = cfg.adaptive
      ? new AdaptiveLimit({
          initial: cfg.initial,
          min: cfg.min,
          max: cfg.max,
          tolerance: cfg.latencyTolerance,
          ...(now ? { now } : {}),
        })
      : undefined;
    this.retryAfter = String(Math.max(OVERLOAD_RETRY_MIN_S, Math.ceil(cfg.maxWait / 1000)));
    const settings = { maxConcurrent: cfg.initial };
    this.local = { name: "local", limiter: new Bottleneck(settings), held: 0, pending: 0 };
    if (shared) {
      this.clustered = () => {
        const limiter = new Bottleneck({
          maxConcurrent: this.current,
          id: shared.id,
          datastore: "ioredis",
          connection: shared.connection,
          clearDatastore: false,
        });
        limiter.on("error", (err: unknown) => this.sharedFailed(err));
        return limiter;
      };
      this.shared = { name: "shared", limiter: this.clustered(), held: 0, pending: 0 };
      this.probeShared();
    }
  }

  stats(): LimiterStats {
    return {
      limit: this.current,
      inFlight: this.inFlight,
      queued: this.waiters.size,
      baselineMs: this.control?.baselineMs,
      acquired: this.acquired,
      rejected: { ...this.rejected },
      mode: this.shared && this.sharedUsable ? "shared" : "local",
      jobs: this.jobs,
      held: this.local.held + (this.shared?.held ?? 0),
      waited: this.waited,
    };
  }

  private preferred(): Source {
    return this.shared && this.sharedUsable ? this.shared : this.local;
  }

  /**
   * A slot, once the upstream may take one more request; rejects with 503 upstream_overloaded otherwise, or with
   * client_closed when `cancelOn` emits "close" while waiting (the request leaves the queue).
   */
  acquire(cancelOn?: CancelSource): Promise<Slot> {
    const slot = this.tryAcquire();
    return slot ? Promise.resolve(slot) : this.wait(cancelOn);
  }

  /** A slot at once when a released one is lingering (the common case under load); else undefined. */
  tryAcquire(): Slot | undefined {
    if (this.closed) return undefined;
    for (let p = this.idle.pop(); p; p = this.idle.pop()) {
      if (p.source === this.preferred()) {
        this.acquired++;
        return new HeldSlot(this, p);
      }
      this.retire(p);
    }
    return undefined;
  }

  /** `acquire` without the lingering-permit shortcut: queue for a permit from bottleneck. */
  wait(cancelOn?: CancelSource): Promise<Slot> {
    this.acquired++;
    if (this.closed) return Promise.reject(this.refuse("queue_full"));
    const queueRoom = this.cfg.maxWait === 0 ? 0 : this.cfg.maxQueue;
    if (this.inFlight + this.waiters.size >= this.current + queueRoom) {
      return Promise.reject(this.refuse("queue_full"));
    }
    this.waited++;
    return new Promise<Slot>((resolve, reject) => {
      const w: Waiter = { resolve, reject, timer: undefined, cancel: undefined, node: undefined };
      w.node = this.waiters.push(w);
      if (this.cfg.maxWait > 0) {
        w.timer = setTimeout(() => this.abandon(w, "wait_timeout"), this.cfg.maxWait);
      }
      if (cancelOn) {
        const cancel = () => this.abandon(w, undefined);
        cancelOn.once("close", cancel);
        w.cancel = () => cancelOn.removeListener("close", cancel);
      }
      this.pump();
    });
  }

  /** Asks bottleneck for as many permits as there are waiters without one on the way, within the limit. */
  private pump(): void {
    if (this.closed) return;
    const source = this.preferred();
    let wanted = Math.min(this.waiters.size - source.pending, this.current - source.held - source.pending);
    for (; wanted > 0; wanted--) this.requestPermit(source);
  }

  private requestPermit(source: Source): void {
    source.pending++;
    const job = () =>
      new Promise<void>((done) => {
        source.pending--;
        source.held++;
        this.jobs++;
        this.handOut({ source, done, idleSince: 0 });
      });
    source.limiter.schedule(job).catch((err: unknown) => {
      // Never started (a job that ran only ends when its permit is retired): Redis failed, or we closed.
      source.pending--;
      if (source === this.shared) this.sharedFailed(err);
      this.pump();
    });
  }

  /** A permit to use: the oldest waiter gets it, else it lingers for the next request. */
  private handOut(p: Permit): void {
    if (this.closed || p.source !== this.preferred() || p.source.held > this.current) {
      this.retire(p);
      this.pump();
      return;
    }
    const next = this.waiters.first();
    if (next) {
      const w = next.item as Waiter;
      this.waiters.remove(next);
      w.node = undefined;
      if (w.timer) clearTimeout(w.timer);
      w.cancel?.();
      w.resolve(new HeldSlot(this, p));
      return;
    }
    p.idleSince = performance.now();
    this.idle.push(p);
    if (!this.sweeper) {
      this.sweeper = setInterval(() => this.sweep(), this.shared ? SLOT_LINGER_MS.shared : 1_000);
      this.sweeper.unref();
    }
  }

  /** Bookkeeping of a HeldSlot: taken. Returns the number in flight, this one included. */
  onTaken(): number {
    return ++this.inFlight;
  }

  /** Bookkeeping of a HeldSlot: given back. */
  onReleased(permit: Permit): void {
    this.inFlight--;
    this.handOut(permit);
  }

  private retire(p: Permit): void {
    p.source.held--;
    p.done();
  }

  /** Returns permits idle for a whole linger period to bottleneck. */
  private sweep(): void {
    const now = performance.now();
    // Oldest first; a shared permit and a local one may alternate, so look at every idle permit.
    for (let i = 0; i < this.idle.length; ) {
      const p = this.idle[i] as Permit;
      if (p.idleSince <= now - SLOT_LINGER_MS[p.source.name]) {
        this.idle.splice(i, 1);
        this.retire(p);
      } else i++;
    }
    if (this.idle.length === 0) {
      clearInterval(this.sweeper);
      this.sweeper = undefined;
    }
  }

  /** Takes a waiter out: refused for `reason`, or (undefined) its client went away. */
  private abandon(w: Waiter, reason: RejectReason | undefined): void {
    if (!w.node) return;
    this.waiters.remove(w.node);
    w.node = undefined;
    if (w.timer) clearTimeout(w.timer);
    w.cancel?.();
    w.reject(reason ? this.refuse(reason) : new ProxyError("client_closed"));
  }

  private refuse(reason: RejectReason): ProxyError {
    this.rejected[reason]++;
    this.emitter.emit("rejected", { upstream: this.upstream, reason });
    const message =
      reason === "queue_full"
        ? `upstream "${this.upstream}" has ${this.inFlight} requests in flight and ${this.waiters.size} waiting`
        : `no slot for upstream "${this.upstream}" within ${this.cfg.maxWait} ms`;
    return new ProxyError("upstream_overloaded", message, { "retry-after": this.retryAfter });
  }

  /** Feeds one finished request to the adaptive limit (HeldSlot.observe). */
  sample(o: SlotOutcome, inFlight: number): void {
    if (!this.control) return;
    const next = this.control.onSample({ outcome: classifyOutcome(o), ttfbMs: o.ttfbMs, inFlight });
    if (next !== this.current) this.setLimit(next);
  }

  private setLimit(limit: number): void {
    const previous = this.current;
    this.current = limit;
    this.emitter.emit("limit", { upstream: this.upstream, limit, previous });
    // Lower: idle permits above the limit go back now, busy ones when released (handOut). Higher: ask for more
    // once bottleneck knows.
    for (let i = 0; i < this.idle.length; ) {
      const p = this.idle[i] as Permit;
      if (p.source.held > limit) {
        this.idle.splice(i, 1);
        this.retire(p);
      } else i++;
    }
    // Applied in order; a burst of changes collapses into the latest value.
    this.applying = this.applying.then(() => {
      if (this.closed || this.current !== limit) return;
      const settings = { maxConcurrent: limit };
      const updates: Array<Promise<unknown>> = [
        Promise.resolve(this.local.limiter.updateSettings(settings) as unknown),
      ];
      if (this.shared && this.sharedUsable) {
        updates.push(
          Promise.resolve(this.shared.limiter.updateSettings(settings) as unknown).catch((err: unknown) =>
            this.sharedFailed(err),
          ),
        );
      }
      return Promise.all(updates)
        .catch(() => undefined)
        .then(() => this.pump());
    });
  }

  /** Checks that the shared limiter answers (it is ready and Redis replies); then uses it. */
  private probeShared(): void {
    const shared = this.shared;
    if (!shared || this.closed) return;
    clearTimeout(this.sharedProbe);
    this.sharedProbe = undefined;
    // ready() stays pending while Redis is down at start: nothing waits on it but this probe.
    const limiter = shared.limiter;
    limiter
      .ready()
      .then(() => limiter.updateSettings({ maxConcurrent: this.current }) as unknown)
      .then(
        () => {
          if (this.closed || this.sharedUsable || shared.limiter !== limiter) return;
          this.sharedUsable = true;
          this.emitter.emit("mode", { upstream: this.upstream, shared: true, reason: "redis ready" });
        },
        (err: unknown) => {
          // Redis restarted empty: bottleneck 2.19.5 re-creates its keys only when the error message is exactly
          // "SETTINGS_KEY_NOT_FOUND", but Redis 7 replies "ERR SETTINGS_KEY_NOT_FOUND" (likewise UNKNOWN_CLIENT),
          // so that limiter never recovers. A new limiter on the same id writes its settings again.
          if (this.clustered && /SETTINGS_KEY_NOT_FOUND|UNKNOWN_CLIENT/.test(String(err))) {
            // Not disconnect(): it would unsubscribe the channel the new limiter (same id) subscribes to.
            limiter.removeAllListeners();
            clearInterval(
              (limiter as unknown as { _store?: { heartbeat?: NodeJS.Timeout } })._store?.heartbeat,
            );
            shared.limiter = this.clustered();
          }
          this.sharedFailed(err);
        },
      );
  }

  private sharedFailed(err: unknown): void {
    const shared = this.shared;
    if (!shared || this.closed) return;
    if (this.sharedUsable) {
      this.sharedUsable = false;
      this.emitter.emit("mode", {
        upstream: this.upstream,
        shared: false,
        reason: err instanceof Error ? err.message : String(err),
      });
      // Permit requests still out to Redis may never be answered: whoever waits gets local permits instead.
      this.pump();
    }
    this.sharedProbe ??= setTimeout(() => this.probeShared(), SHARED_RETRY_MS);
    this.sharedProbe.unref();
  }

  /** Refuses new requests and the waiting ones; slots in use stay valid until released. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    clearTimeout(this.sharedProbe);
    clearInterval(this.sweeper);
    for (const p of this.idle.splice(0)) this.retire(p);
    for (const w of this.waiters.items()) this.abandon(w, "queue_full");
    await this.local.limiter.disconnect(false).catch(() => undefined);
    // The shared limiter is left to UpstreamLimiters, which drops its whole Redis connection: the limiter's own
    // disconnect() would UNSUBSCRIBE in promises nobody handles, an unhandled rejection while Redis is down.
  }
}

export interface UpstreamLimitersOptions {
  /** With `concurrency.shared` on some upstream: the cache's client (duplicated here; never closed here). */
  redis?: Redis | Cluster;
  keyPrefix?: string;
  now?: () => number;
}

/** Every upstream's limiter (upstreams with `concurrency.enabled: false` have none). */
export class UpstreamLimiters extends EventEmitter<LimiterEvents> {
  private readonly limiters = new Map<string, UpstreamLimiter>();
  private readonly connection: Bottleneck.IORedisConnection | undefined;

  constructor(upstreams: readonly UpstreamConfig[], opts: UpstreamLimitersOptions = {}) {
    super();
    const wantShared = upstreams.some((u) => u.concurrency.enabled && u.concurrency.shared);
    // bottleneck quits the clients of its connection on disconnect: give it a duplicate we own.
    const redis = wantShared ? opts.redis : undefined;
    const client = redis && (redis instanceof Cluster ? redis.duplicate() : redis.duplicate());
    this.connection = client ? new Bottleneck.IORedisConnection({ client }) : undefined;
    // Errors reach each limiter's "error" listener too; this one keeps ioredis from reporting them as unhandled.
    this.connection?.on("error", () => {});
    for (const u of upstreams) {
      if (!u.concurrency.enabled) continue;
      const shared =
        this.connection && u.concurrency.shared
          ? { connection: this.connection, id: `{cachegate}:${opts.keyPrefix ?? ""}:${u.name}` }
          : undefined;
      this.limiters.set(u.name, new UpstreamLimiter(u.name, u.concurrency, this, shared, opts.now));
    }
  }

  get(upstream: string): UpstreamLimiter | undefined {
    return this.limiters.get(upstream);
  }

  [Symbol.iterator](): IterableIterator<UpstreamLimiter> {
    return this.limiters.values();
  }

  async close(): Promise<void> {
    await Promise.all([...this.limiters.values()].map((l) => l.close()));
    // Not quit(): with Redis down it would wait; our duplicate clients are simply dropped.
    await this.connection?.disconnect(false).catch(() => undefined);
  }
}
