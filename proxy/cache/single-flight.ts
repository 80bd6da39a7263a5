// Request coalescing: one upstream fetch per key at a time, in this process and (with Redis) across instances.
//
// In-process: the first acquire for a key leads; every concurrent acquire follows and is resolved, all at once,
// by the leader's release. Across instances the in-process leader also takes a Redis lease
// (SET <prefix>l:<key> <instanceId:nonce> NX PX leaseMs). When another instance holds it, this process follows
// that remote flight instead: the remote leader's release deletes its lease and announces the outcome on the bus;
// a lost message or a crashed leader is caught by polling the lease (gone → "failed": re-check the cache, maybe
// lead). Redis trouble never blocks a request: any error while acquiring makes the caller a leader.
import type { Cluster, Redis } from "ioredis";
import type { RedisBus } from "./bus.js";

export type FlightOutcome = "stored" | "uncacheable" | "failed";

export interface Leader {
  role: "leader";
  /** Ends the flight and wakes every follower with `outcome`. Idempotent: later calls do nothing. */
  release(outcome: FlightOutcome): void;
}

export interface Follower {
  role: "follower";
  /** The leader's outcome, or "timeout" after `timeoutMs` (the waiter is then forgotten). */
  wait(timeoutMs: number): Promise<FlightOutcome | "timeout">;
}

export interface SingleFlightOptions {
  redis?: Redis | Cluster;
  bus?: RedisBus;
  keyPrefix: string;
  instanceId: string;
  /** Lifetime of the Redis lease: how long other instances wait for a leader that never releases (crashed). */
  leaseMs: number;
  onError(op: string, err: unknown): void;
  /** Upper bound on the lease SET, whatever the client's own timeouts: a slow Redis must not delay requests. */
  acquireTimeoutMs?: number;
  /**
   * Hit-for-miss: after a flight acquired with `remember` ends "uncacheable" while requests here waited for it,
   * `pass(key)` answers for this long, so the next misses of that key go upstream in parallel instead of each
   * waiting for a leader first. A flight nobody waited for marks nothing (a URL asked once costs no mark). 0: off.
   */
  passMs?: number;
}

/**
 * A key whose last response was uncacheable (hit-for-miss). A miss carrying it goes upstream without coalescing;
 * its `release` keeps the mark true: "stored" ends it, "uncacheable" extends it, "failed" leaves it as it is.
 */
export interface Pass extends Leader {
  until: number;
}

const FLIGHT_CHANNEL = "flight";
const POLL_INTERVAL_MS = 100;
const DEFAULT_ACQUIRE_TIMEOUT_MS = 250;
// setTimeout fires at once for delays it cannot represent (above 2^31 - 1 ms): treat those as "no timeout".
const MAX_TIMER_MS = 2 ** 31 - 1;
const OUTCOMES: ReadonlySet<unknown> = new Set<FlightOutcome>(["stored", "uncacheable", "failed"]);

// A lease poll that finds the lease gone waits this long for the completion message before settling "failed".
const MESSAGE_GRACE_MS = 20;
// How often local leaders past their lease are looked for. Only leaders nobody waits on are left to this sweep (a
// follower arms an exact timer for the lease's end): it keeps the map from holding a lost leader forever.
const REAP_INTERVAL_MS = 1_000;
// Flights that end between two rebuilds of the flights Map, plus its size (a young collection comes every few
// hundred requests).
const REBUILD_EVERY = 64;
// Keys remembered as uncacheable at most; past it the oldest marks are forgotten (those keys coalesce again).
const MAX_PASSES = 10_000;

// Deletes the lease only while it is still ours (after it expired another instance may hold the key), then
// announces the outcome. One script, so the two are atomic: any poll that sees the lease gone runs after the
// PUBLISH, and any follower that re-acquires on the message finds the lease already gone.
const RELEASE_SCRIPT = `
local deleted = 0
if redis.call("get", KEYS[1]) == ARGV[1] then deleted = redis.call("del", KEYS[1]) end
if ARGV[2] ~= "" then redis.call("publish", ARGV[2], ARGV[3]) end
return deleted`;

type Waiter = (outcome: FlightOutcome | "timeout") => void;

interface Flight {
  readonly key: string;
  /** How long this flight may lead before it is considered lost (the lease's PX). */
  readonly leaseMs: number;
  /** "pending": waiting for the lease SET; "leader": this process fetches; "remote": another instance does. */
  role: "pending" | "leader" | "remote";
  outcome: FlightOutcome | undefined;
  readonly waiters: Set<Waiter>;
  /** Lease value, set when the lease is (or may be) ours. */
  lease: string | undefined;
  /** A remote completion that arrived while the lease SET was still on its way. */
  early: FlightOutcome | undefined;
  /** Leader: the local lease's end, armed once a follower waits for it. Remote: the next lease poll. */
  timer: NodeJS.Timeout | undefined;
  /** Leader: when the local lease ends (Date.now() ms); the flight settles "failed" then at the latest. */
  deadline: number;
  /** An "uncacheable" outcome marks the key for `pass` (the request path's flights, not background refreshes). */
  readonly remember: boolean;
}

interface FlightMessage {
  key: string;
  outcome: FlightOutcome;
  instanceId: string;
}

function isFlightMessage(msg: unknown): msg is FlightMessage {
  if (typeof msg !== "object" || msg === null) return false;
  const m = msg as Record<string, unknown>;
  return typeof m.key === "string" && typeof m.instanceId === "string" && OUTCOMES.has(m.outcome);
}

export class SingleFlight {
  private flights = new Map<string, Flight>();
  /** Deletions from `flights` since it was last rebuilt (see settle). */
  private churn = 0;
  private readonly passes = new Map<string, Pass>();
  private readonly passMs: number;
  private led = 0;
  private nonce = 0;
  private closed = false;
  private readonly acquireTimeoutMs: number;
  private reaper: NodeJS.Timeout | undefined;

  constructor(private readonly opts: SingleFlightOptions) {
    this.acquireTimeoutMs = opts.acquireTimeoutMs ?? DEFAULT_ACQUIRE_TIMEOUT_MS;
    this.passMs = opts.passMs ?? 0;
    opts.bus?.subscribe(FLIGHT_CHANNEL, this.onRemoteRelease);
  }

  /** Keys currently led by this process (for metrics). */
  inFlight(): number {
    return this.led;
  }

  /** Keys currently remembered as uncacheable (for metrics; expired marks count until they are next looked at). */
  passing(): number {
    return this.passes.size;
  }

  /**
   * The key's hit-for-miss mark while its last response (within `passMs`) was uncacheable: the caller goes upstream
   * without acquiring, and releases the mark with its own outcome. Undefined otherwise.
   */
  pass(key: string): Pass | undefined {
    if (this.passes.size === 0) return undefined;
    const mark = this.passes.get(key);
    if (mark === undefined) return undefined;
    if (mark.until > Date.now()) return mark;
    this.passes.delete(key);
    return undefined;
  }

  /**
   * `leaseMs` overrides the configured lease for this key (a long LLM stream needs a longer one). `remember`: an
   * "uncacheable" outcome marks the key for `pass`. Without Redis the answer is synchronous (no promise on the miss
   * path); with Redis the lease SET makes it a promise.
   */
  acquire(
    key: string,
    leaseMs: number = this.opts.leaseMs,
    remember = false,
  ): Leader | Follower | Promise<Leader | Follower> {
    const existing = this.flights.get(key);
    if (existing) {
      if (existing.role !== "leader" || existing.deadline > Date.now()) return this.follower(existing);
      this.settle(existing, "failed"); // its lease has ended: this acquire leads
    }
    // Registered before any await, so every acquire from here on follows this flight.
    const flight: Flight = {
      key,
      leaseMs,
      role: "pending",
      outcome: undefined,
      waiters: new Set(),
      lease: undefined,
      early: undefined,
      timer: undefined,
      deadline: Number.POSITIVE_INFINITY,
      remember,
    };
    this.flights.set(key, flight);
    const redis = this.opts.redis;
    if (!redis || this.closed) return this.lead(flight);
    return this.acquireLease(flight, redis);
  }

  private async acquireLease(
    flight: Flight,
    redis: NonNullable<SingleFlightOptions["redis"]>,
  ): Promise<Leader | Follower> {
    const key = flight.key;

    const leaseKey = this.leaseKey(key);
    const lease = `${this.opts.instanceId}:${++this.nonce}`;
    flight.lease = lease;
    const set = redis.set(leaseKey, lease, "PX", flight.leaseMs, "NX");
    let timer: NodeJS.Timeout | undefined;
    const timedOut = new Promise<"timeout">((resolve) => {
      timer = setTimeout(() => resolve("timeout"), this.acquireTimeoutMs);
      timer.unref();
    });
    let reply: "OK" | null | "timeout";
    try {
      reply = await Promise.race([set, timedOut]);
    } catch (err) {
      this.opts.onError("flight.acquire", err);
      flight.lease = undefined;
      return this.lead(flight);
    } finally {
      clearTimeout(timer);
    }
    if (reply === "timeout") {
      this.opts.onError("flight.acquire", new Error(`lease SET took over ${this.acquireTimeoutMs} ms`));
      // The SET may still land: the lease stays recorded, so release() deletes it (or it expires after leaseMs).
      set.then(
        (late) => {
          if (late === "OK" && flight.outcome !== undefined) void this.releaseLease(flight.key, lease);
        },
        () => {},
      );
      return this.lead(flight);
    }
    if (reply === "OK") return this.lead(flight);

    // Another instance holds the lease: follow its flight, with this caller as the first follower.
    flight.lease = undefined;
    flight.role = "remote";
    if (flight.early !== undefined) this.settle(flight, flight.early);
    else this.schedulePoll(flight);
    return this.follower(flight);
  }

  /** Stops lease polling and wakes remote followers with "failed" (they fall back to fetching themselves). */
  close(): void {
    this.closed = true;
    clearInterval(this.reaper);
    this.reaper = undefined;
    for (const flight of [...this.flights.values()]) {
      if (flight.role === "remote") this.settle(flight, "failed");
    }
  }

  private lead(flight: Flight): Leader {
    flight.role = "leader";
    this.led++;
    // The local twin of the Redis lease: a leader that never releases (a lost code path, an upstream slower than
    // leaseMs) stops holding its followers, and the next acquire leads, as other instances do once the lease expires.
    // No timer per flight (one per miss, most of them released long before): a follower arms one for the lease's
    // end when it waits for it, the next acquire of the key checks the deadline, and a coarse sweep does the rest.
    flight.deadline = Date.now() + flight.leaseMs;
    if (!this.reaper && !this.closed) {
      this.reaper = setInterval(this.reap, REAP_INTERVAL_MS);
      this.reaper.unref();
    }
    return {
      role: "leader",
      release: (outcome) => {
        if (flight.outcome !== undefined) return;
        this.settle(flight, outcome);
        if (flight.lease !== undefined) void this.releaseLease(flight.key, flight.lease, outcome);
      },
    };
  }

  private follower(flight: Flight): Follower {
    return {
      role: "follower",
      wait: (timeoutMs) => {
        if (flight.outcome !== undefined) return Promise.resolve(flight.outcome);
        if (!(timeoutMs > 0)) return Promise.resolve("timeout");
        // A local leader settles by its own deadline at the latest: a follower that would wait at least as long
        // needs no timer of its own (the common case: one timer per flight instead of one per follower).
        const now = Date.now();
        if (flight.role === "leader" && flight.deadline <= now + timeoutMs) {
          // Referenced, as a follower's own timer would be: someone awaits an answer.
          const left = Math.max(0, flight.deadline - now);
          if (flight.timer === undefined && left < MAX_TIMER_MS) {
            flight.timer = setTimeout(() => this.settle(flight, "failed"), left);
          }
          return new Promise((resolve) => void flight.waiters.add(resolve));
        }
        return new Promise((resolve) => {
          let timer: NodeJS.Timeout | undefined;
          const waiter: Waiter = (outcome) => {
            clearTimeout(timer);
            resolve(outcome);
          };
          // Kept referenced (and always cleared): a caller awaiting an answer should get one before the process exits.
          if (timeoutMs < MAX_TIMER_MS) {
            timer = setTimeout(() => {
              flight.waiters.delete(waiter);
              resolve("timeout");
            }, timeoutMs);
          }
          flight.waiters.add(waiter);
        });
      },
    };
  }

  /** Settles the local leaders whose lease has ended; stops once there is no flight left. */
  private readonly reap = (): void => {
    const now = Date.now();
    for (const flight of this.flights.values()) {
      if (flight.role === "leader" && flight.deadline <= now) this.settle(flight, "failed");
    }
    if (this.flights.size === 0) {
      clearInterval(this.reaper);
      this.reaper = undefined;
    }
  };

  /** Records the outcome, ends the flight and wakes its waiters synchronously, all of them. */
  private settle(flight: Flight, outcome: FlightOutcome): void {
    if (flight.outcome !== undefined) return;
    flight.outcome = outcome;
    if (flight.role === "leader") this.led--;
    clearTimeout(flight.timer);
    flight.timer = undefined;
    if (this.flights.get(flight.key) === flight) {
      this.flights.delete(flight.key);
      // A Map with an entry per miss, once old, keeps the flights it held alive through young collections
      // (upstream/watch-list.ts): a fresh copy now and then keeps its table young (copies cost at most one
      // entry per deletion). Measured (test/unit/watch-list.test.ts): ~230 B promoted per miss without, ~75-120 with.
      if (++this.churn >= REBUILD_EVERY + this.flights.size) {
        this.churn = 0;
        this.flights = new Map(this.flights);
      }
    }
    // Before the waiters are woken (and forgotten): only a flight someone here waited for marks its key.
    if (flight.remember && (outcome !== "uncacheable" || flight.waiters.size > 0))
      this.mark(flight.key, outcome);
    for (const waiter of flight.waiters) waiter(outcome);
    flight.waiters.clear();
  }

  /** Hit-for-miss bookkeeping of an outcome for `key`: "uncacheable" marks it, "stored" forgets it. */
  private mark(key: string, outcome: FlightOutcome): void {
    if (outcome === "stored") {
      if (this.passes.size > 0) this.passes.delete(key);
      return;
    }
    if (outcome !== "uncacheable" || !(this.passMs > 0)) return;
    const now = Date.now();
    const known = this.passes.get(key);
    if (known !== undefined) {
      known.until = now + this.passMs;
      return;
    }
    if (this.passes.size >= MAX_PASSES) {
      const oldest = this.passes.keys().next();
      if (!oldest.done) this.passes.delete(oldest.value);
    }
    // A bypassing request's outcome is bookkept like a flight's: "uncacheable" extends the mark, "stored" ends it.
    this.passes.set(key, {
      role: "leader",
      until: now + this.passMs,
      release: (result) => this.mark(key, result),
    });
  }

  /** Compare-and-delete of the lease, plus the completion message when `outcome` is given and there is a bus. */
  private async releaseLease(key: string, lease: string, outcome?: FlightOutcome): Promise<void> {
    const msg: FlightMessage | undefined =
      outcome === undefined ? undefined : { key, outcome, instanceId: this.opts.instanceId };
    const wire =
      msg && this.opts.bus ? this.opts.bus.wire(FLIGHT_CHANNEL, msg) : { channel: "", payload: "" };
    try {
      await this.opts.redis?.eval(RELEASE_SCRIPT, 1, this.leaseKey(key), lease, wire.channel, wire.payload);
    } catch (err) {
      this.opts.onError("flight.release", err);
    }
  }

  private leaseKey(key: string): string {
    return `${this.opts.keyPrefix}l:${key}`;
  }

  // Fallback for a lost message or a crashed leader; one timer per remote flight, not per follower.
  private schedulePoll(flight: Flight): void {
    flight.timer = setTimeout(() => void this.poll(flight), POLL_INTERVAL_MS);
    flight.timer.unref();
  }

  private async poll(flight: Flight): Promise<void> {
    flight.timer = undefined;
    if (flight.outcome !== undefined || !this.opts.redis) return;
    let exists: number;
    try {
      exists = await this.opts.redis.exists(this.leaseKey(flight.key));
    } catch (err) {
      // Fail open: the followers go upstream rather than wait on a Redis that does not answer.
      this.opts.onError("flight.poll", err);
      this.settle(flight, "failed");
      return;
    }
    if (flight.outcome !== undefined) return;
    if (exists !== 0) {
      this.schedulePoll(flight);
      return;
    }
    // The leader's message may be a moment behind the poll's reply (another connection): give it a chance.
    flight.timer = setTimeout(() => this.settle(flight, "failed"), MESSAGE_GRACE_MS);
    flight.timer.unref();
  }

  private readonly onRemoteRelease = (msg: unknown, from: string): void => {
    if (from === this.opts.instanceId || !isFlightMessage(msg) || msg.instanceId === this.opts.instanceId)
      return;
    const flight = this.flights.get(msg.key);
    if (!flight) return;
    if (flight.role === "remote") this.settle(flight, msg.outcome);
    // The lease SET is still on its way: if it reports the lease as held, this completion is the one we follow.
    else if (flight.role === "pending") flight.early = msg.outcome;
  };
}
