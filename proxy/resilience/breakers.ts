// One circuit breaker (opossum) per upstream. Knows nothing of HTTP: the forward stage runs each upstream call
// through `run`, the breaker stage asks `admits()` before queueing for a slot, and metrics and logs listen to the
// "transition" events emitted here.
//
// What counts:
//   failure      a 5xx response (it still goes to the client), upstream_timeout, upstream_unreachable,
//                upstream_reset, upstream_bad_response
//   not counted  1xx-4xx responses (429 included: the adaptive limiter handles "slow down"), a client that went
//                away (client_closed), anything else we threw ourselves
// The breaker opens when, within `rollingWindow`, at least `volumeThreshold` calls were made and more than
// `errorThresholdPercentage` % of them failed. After `resetTimeout` it is half-open: exactly one request (the
// probe; opossum's own rule) goes upstream while every other fails fast; the probe's success closes the breaker,
// its failure opens it for another `resetTimeout`. A probe whose client left before the upstream answered proves
// nothing, so in half-open state client_closed counts as a failure (open again) rather than as a success.
//
// Options we never use (../shared/LIBRARIES.md §2): opossum's `timeout` (the forwarder has its own connect and
// response timeouts, and opossum's would abandon calls that are still running), `capacity` (its rejections count as
// failures, so overload would trip the breaker — concurrency is upstream-limiter.ts's job), and the breaker-wide
// AbortController (one timeout there aborts every unrelated call in flight).
import { EventEmitter } from "node:events";
import { createRequire } from "node:module";
import CircuitBreaker from "opossum";
import type { UpstreamConfig } from "../../config/schema.js";
import { ProxyError } from "../errors.js";

export type BreakerState = "closed" | "half-open" | "open";

export const BREAKER_STATE_VALUE: Readonly<Record<BreakerState, number>> = Object.freeze({
  closed: 0,
  "half-open": 1,
  open: 2,
});

export interface BreakerEvents {
  transition: [{ upstream: string; from: BreakerState; to: BreakerState }];
}

type BreakerConfig = UpstreamConfig["breaker"];

const FAILURE_CODES: ReadonlySet<string> = new Set([
  "upstream_timeout",
  "upstream_unreachable",
  "upstream_reset",
  "upstream_bad_response",
]);

/** A response that counts as a failure (5xx) but is still the answer: it travels through opossum inside this. */
class FailedResult<T> extends Error {
  constructor(readonly result: T) {
    super("upstream answered with a server error");
  }
}

/**
 * For a call that judges its own results (`UpstreamBreaker.fire`): reject with this to have `result` counted as a
 * failure and still returned by `outcome`.
 */
export function breakerFailure<T>(result: T): Error {
  return new FailedResult(result);
}

// opossum's rolling window (lib/status.js) pushes every call's latency into the current bucket's `latencyTimes`,
// whether or not percentiles are enabled; with them disabled (as here) nothing ever reads those arrays. Under load
// each 1 s bucket's array grows to one entry per call and lives for the whole window, so its backing stores are
// copied as it grows and end up in the old generation: measured with --trace-gc-nvp (wrk, 50 connections, one
// upstream, default cachegate), 40 bytes promoted to the old generation per request with opossum's Status, 14-15
// with one that only counts, as many as with no breaker at all (14). So each breaker gets its own Status
// (opossum's `status` option) whose `increment` counts and records no latency, and no per-second snapshot (we
// listen to none). Status is not part of opossum's public index; it is found by path and its window by the
// symbol's description, and if either is not where opossum 9 keeps them, the stock Status is used.
interface StatusLike {
  increment(property: string, latency?: number): void;
  shutdown(): void;
}
type StatusClass = new (options: Record<string, unknown>) => StatusLike;

function countingStatusClass(): StatusClass | undefined {
  try {
    const Status = createRequire(import.meta.url)("opossum/lib/status.js") as StatusClass;
    const probe = new Status({ rollingCountBuckets: 1, rollingCountTimeout: 1000, enableSnapshots: false });
    probe.shutdown();
    const windowKey = Object.getOwnPropertySymbols(probe).find((s) => s.description === "window");
    const window = windowKey && (probe as unknown as Record<symbol, unknown>)[windowKey];
    const first = Array.isArray(window) ? (window[0] as Record<string, unknown> | undefined) : undefined;
    if (!windowKey || typeof first?.successes !== "number" || !Array.isArray(first.latencyTimes))
      return undefined;
    const key: symbol = windowKey;
    return class CountingStatus extends Status {
      override increment(property: string): void {
        const bucket = (this as unknown as Record<symbol, Record<string, number>[]>)[key]?.[0];
        if (bucket) bucket[property] = (bucket[property] as number) + 1;
      }
    };
  } catch {
    return undefined;
  }
}

const CountingStatus = countingStatusClass();
/** Whether breakers use the counting-only Status (false: opossum moved its internals; the stock one is used). */
export const COUNTING_STATUS = CountingStatus !== undefined;

type Call = () => Promise<unknown>;
type Judge = (result: unknown) => boolean;

/**
 * opossum's action: the call, with a failing result turned into a rejection opossum can count. Without a judge
 * the call rejects by itself (breakerFailure) and its promise is used as it is.
 */
function judged(call: Call, isFailure: Judge | undefined): Promise<unknown> {
  if (!isFailure) return call();
  return call().then((result) => (isFailure(result) ? Promise.reject(new FailedResult(result)) : result));
}

export class UpstreamBreaker {
  private readonly cb: CircuitBreaker<[Call, Judge | undefined], unknown>;
  private previous: BreakerState = "closed";
  private openedAt = 0;
  /** The counting Status opossum keeps its rolling window in (undefined: opossum's own, and every call fires). */
  private readonly status: StatusLike | undefined;

  constructor(
    readonly upstream: string,
    private readonly cfg: BreakerConfig,
    emitter: EventEmitter<BreakerEvents>,
    private readonly now: () => number = Date.now,
  ) {
    // The rolling window's settings: opossum's own Status reads them from the breaker's options, ours is given them.
    const window = {
      rollingCountTimeout: cfg.rollingWindow,
      rollingCountBuckets: cfg.rollingBuckets,
      rollingPercentilesEnabled: false,
      enableSnapshots: false,
    };
    this.status = CountingStatus ? new CountingStatus(window) : undefined;
    this.cb = new CircuitBreaker<[Call, Judge | undefined], unknown>(judged, {
      name: upstream,
      timeout: false,
      resetTimeout: cfg.resetTimeout,
      errorThresholdPercentage: cfg.errorThresholdPercentage,
      volumeThreshold: cfg.volumeThreshold,
      ...window,
      ...(this.status ? { status: this.status as unknown as CircuitBreaker.Status } : {}),
      // Returning true means "not a failure" (opossum then reports a success, which closes a half-open breaker).
      errorFilter: (err: unknown) => !this.isFailure(err),
    });
    const moved = (to: BreakerState) => {
      const from = this.previous;
      this.previous = to;
      if (to === "open") this.openedAt = this.now();
      if (from !== to) emitter.emit("transition", { upstream, from, to });
    };
    this.cb.on("open", () => moved("open"));
    this.cb.on("halfOpen", () => moved("half-open"));
    this.cb.on("close", () => moved("closed"));
  }

  private isFailure(err: unknown): boolean {
    if (err instanceof FailedResult) return true;
    if (!(err instanceof ProxyError)) return false;
    if (err.code === "client_closed") return this.cb.halfOpen;
    return FAILURE_CODES.has(err.code);
  }

  state(): BreakerState {
    if (this.cb.closed) return "closed";
    return this.cb.halfOpen ? "half-open" : "open";
  }

  /** Whether a request may go upstream now: closed, or half-open with the probe not yet taken. */
  admits(): boolean {
    return this.cb.closed || (this.cb.halfOpen && this.cb.pendingClose);
  }

  /** Whole seconds until a probe may go upstream (at least 1). */
  retryAfterSeconds(): number {
    if (this.state() !== "open") return 1;
    const left = this.openedAt + this.cfg.resetTimeout - this.now();
    return Math.max(1, Math.ceil(left / 1000));
  }

  /** The refusal given while the breaker is open, with Retry-After. */
  openError(): ProxyError {
    return new ProxyError(
      "upstream_circuit_open",
      `upstream "${this.upstream}" is failing; requests are refused until it recovers`,
      { "retry-after": String(this.retryAfterSeconds()) },
    );
  }

  /**
   * Runs `call` through the breaker. Its result is returned even when `isFailure` says it counts as a failure
   * (a 5xx goes to the client all the same). Rejects with 503 upstream_circuit_open when the breaker refuses.
   * Promise chains rather than async functions: this runs for every upstream call, and each async wrapper costs a
   * promise and a microtask turn more.
   */
  run<T>(call: () => Promise<T>, isFailure: (result: T) => boolean): Promise<T> {
    return this.fire(() => judged(call as Call, isFailure as Judge)).then(
      undefined,
      this.unwrap,
    ) as Promise<T>;
  }

  /**
   * `run` for a caller that settles the promise itself (the forward stage, two promises fewer per request): `call`
   * rejects with `breakerFailure(result)` for a result that counts as a failure, and the caller passes every
   * rejection through `outcome`.
   */
  fire<T>(call: () => Promise<T>): Promise<T> {
    if (this.status !== undefined && this.cb.closed) return this.direct(call, this.status);
    return this.cb.fire(call as Call, undefined) as Promise<T>;
  }

  /**
   * A call made while the breaker is closed, counted in opossum's rolling window as opossum's `fire` counts it
   * (a fire now; a success, or a failure and opossum's opening rule, when it settles) but without `fire` itself:
   * per call that costs a promise and its executor, two more promises for its then/catch, two emitted events and
   * an argument array or two, ~8 % of a forwarded request's CPU (bench:perf, cachegate against the same without a
   * breaker). Here: the call's own promise and one `then`. Everything else (half-open, open, the reset timer, the
   * probe) is opossum's: a breaker that is not closed gets every call through `fire`.
   */
  private direct<T>(call: () => Promise<T>, status: StatusLike): Promise<T> {
    status.increment("fires");
    let pending: Promise<T>;
    try {
      pending = call();
    } catch (err) {
      this.settled(err);
      return Promise.reject(err);
    }
    return pending.then(this.succeeded, this.failed) as Promise<T>;
  }

  private readonly succeeded = <T>(result: T): T => {
    this.settled(undefined);
    return result;
  };

  private readonly failed = (err: unknown): never => {
    this.settled(err);
    throw err;
  };

  /** opossum's bookkeeping for a settled call (its handleError, errorFilter, `success` listener and `fail`). */
  private settled(err: unknown): void {
    const status = this.status as StatusLike;
    const cb = this.cb;
    if (err === undefined || !this.isFailure(err)) {
      status.increment("successes");
      if (cb.halfOpen) cb.close(); // opossum closes a half-open breaker on any success
      return;
    }
    status.increment("failures");
    if (cb.warmUp) return;
    const stats = cb.stats;
    if (stats.fires < cb.volumeThreshold && !cb.halfOpen) return;
    if ((stats.failures / stats.fires) * 100 > this.cfg.errorThresholdPercentage || cb.halfOpen) cb.open();
  }

  /** For a rejection of `fire`: the result that counted as a failure, or throws (a refusal as our coded 503). */
  outcome<T>(err: unknown): T {
    return this.unwrap(err) as T;
  }

  /** A failure that is still the answer comes back as the result; a refusal becomes our coded 503. */
  private readonly unwrap = (err: unknown): unknown => {
    if (err instanceof FailedResult) return err.result;
    if ((err as { code?: unknown } | null)?.code === "EOPENBREAKER") throw this.openError();
    throw err;
  };

  /** opossum's rolling counts (fires, failures, successes, rejects …), for tests and debugging. */
  stats(): CircuitBreaker.Stats {
    return this.cb.stats;
  }

  shutdown(): void {
    this.cb.shutdown();
  }
}

/** Every upstream's breaker (upstreams with `breaker.enabled: false` have none). */
export class Breakers extends EventEmitter<BreakerEvents> {
  private readonly breakers = new Map<string, UpstreamBreaker>();

  constructor(upstreams: readonly UpstreamConfig[], now?: () => number) {
    super();
    for (const u of upstreams) {
      if (u.breaker.enabled) this.breakers.set(u.name, new UpstreamBreaker(u.name, u.breaker, this, now));
    }
  }

  get(upstream: string): UpstreamBreaker | undefined {
    return this.breakers.get(upstream);
  }

  [Symbol.iterator](): IterableIterator<UpstreamBreaker> {
    return this.breakers.values();
  }

  /** Clears opossum's timers (rolling window, reset timeout). */
  shutdown(): void {
    for (const b of this.breakers.values()) b.shutdown();
  }
}
