// The adaptive concurrency controller: how many requests one upstream may have in flight. Pure logic with an
// injectable clock; the limiter (upstream-limiter.ts) feeds it samples and applies its output.
//
// Algorithm: Netflix concurrency-limits' Gradient2Limit, fed by a WindowedLimit-style sample window, plus a
// multiplicative decrease on overload signals (as in their AIMDLimit):
//
//   per window (≥ minSamples samples and ≥ minWindowMs, or ≥ maxWindowMs):
//     short    = mean time-to-first-byte of the window's successful samples
//     baseline = long exponential average of `short` (longWindow windows, simple mean while warming up);
//                when baseline / short > 2 it is decayed by 5 % per window, so recovery is not held back by
//                a baseline inflated during a long slow period
//     overload seen (5xx, 429, timeout)     → limit × backoffRatio                          (AIMD decrease)
//     else gradient = clamp(max(tolerance × baseline, baseline + floorMs) / short, 0.5, 1)
//          target   = limit × gradient + √limit                                            (√limit: queue headroom)
//          limit    = limit × (1 − smoothing) + target × smoothing
//          growth only when the window used at least half the limit (an idle upstream proves nothing)
//     limit clamped to [min, max]
//
// floorMs (10 ms) is ours, not Gradient2's: time to first byte includes this process's own event-loop delay, which
// under load is a few milliseconds. Against a fast upstream (2 ms) that alone doubles the latency, and the limit
// would throttle the upstream for cachegate's own busyness, queueing requests in a process that is already the
// bottleneck (seen in bench/miss-path.ts before the floor). A rise of under 10 ms is therefore never congestion.
//
// Inputs are times to the response headers, never total durations: an LLM event stream lasts minutes and says
// nothing about congestion. Queueing time in front of the limiter is not part of a sample either (it would feed
// back on itself). Why not Envoy's variant: it measures the minimum RTT by periodically pinning concurrency to a
// small value, which would stall every caller behind minutes-long streams.
export type SampleOutcome =
  /** The upstream answered (any status but 5xx and 429): a latency sample. */
  | "ok"
  /** 5xx, 429 or a timeout: the upstream is telling us to back off. */
  | "overload"
  /** Not evidence either way (client went away, connection refused — the breaker's business). */
  | "ignore";

export interface LimitSample {
  outcome: SampleOutcome;
  /** Time to the response headers, ms; required for "ok". */
  ttfbMs?: number;
  /** Requests holding a slot when this one finished its headers (this one included). */
  inFlight: number;
}

export interface AdaptiveLimitOptions {
  initial: number;
  min: number;
  max: number;
  /** Time to first byte above baseline × tolerance lowers the limit. */
  tolerance: number;
  /** Clock in ms (tests inject one); default performance.now. */
  now?: () => number;
  minWindowMs?: number;
  maxWindowMs?: number;
  minSamples?: number;
  /** Windows the baseline averages over. */
  longWindow?: number;
  /** Windows averaged plainly before the exponential average takes over. */
  warmupWindows?: number;
  smoothing?: number;
  backoffRatio?: number;
  /** Latency rises smaller than this (ms) are never taken for congestion. */
  floorMs?: number;
}

export const ADAPTIVE_DEFAULTS = {
  minWindowMs: 200, // a window spans at least 200 ms…
  maxWindowMs: 1_000, // …and closes after 1 s with whatever samples it has
  minSamples: 10,
  longWindow: 600, // 600 windows (≥ 2 min) of baseline memory, as Gradient2's default
  warmupWindows: 5, // ≥ 1 s of plain mean before the exponential average
  smoothing: 0.2,
  backoffRatio: 0.9,
  floorMs: 10, // this process's own event-loop delay under load is not the upstream's congestion
} as const;

function positiveInteger(name: string, v: number): void {
  if (!Number.isInteger(v) || v < 1)
    throw new RangeError(`expected ${name} to be a positive integer, got ${v}`);
}

export class AdaptiveLimit {
  private estimate: number;
  private baseline: number | undefined;
  private warmupSum = 0;
  private warmupCount = 0;
  private lastShort: number | undefined;
  // The open window.
  private windowStart: number | undefined;
  private okCount = 0;
  private ttfbSum = 0;
  private overloads = 0;
  private maxInFlight = 0;

  private readonly o: Required<AdaptiveLimitOptions>;

  constructor(opts: AdaptiveLimitOptions) {
    positiveInteger("min", opts.min);
    positiveInteger("max", opts.max);
    positiveInteger("initial", opts.initial);
    if (opts.min > opts.max) throw new RangeError(`expected min ≤ max, got ${opts.min} > ${opts.max}`);
    if (opts.initial < opts.min || opts.initial > opts.max) {
      throw new RangeError(`expected initial within [${opts.min}, ${opts.max}], got ${opts.initial}`);
    }
    if (!(opts.tolerance >= 1)) throw new RangeError(`expected tolerance ≥ 1, got ${opts.tolerance}`);
    this.o = { now: () => performance.now(), ...ADAPTIVE_DEFAULTS, ...opts };
    this.estimate = opts.initial;
  }

  /** The current limit, an integer within [min, max]. */
  get limit(): number {
    return Math.max(this.o.min, Math.min(this.o.max, Math.floor(this.estimate)));
  }

  /** The no-load latency estimate (ms), once there is one. */
  get baselineMs(): number | undefined {
    return this.baseline;
  }

  /** The last window's mean time to first byte (ms). */
  get recentMs(): number | undefined {
    return this.lastShort;
  }

  /** Records one finished request; returns the limit (changed only when a window closes). */
  onSample(sample: LimitSample): number {
    if (sample.outcome === "ignore") return this.limit;
    const now = this.o.now();
    this.windowStart ??= now;
    if (sample.outcome === "ok") {
      const t = sample.ttfbMs;
      if (t === undefined || !Number.isFinite(t) || t < 0) return this.limit;
      this.okCount++;
      this.ttfbSum += t;
    } else {
      this.overloads++;
    }
    if (sample.inFlight > this.maxInFlight) this.maxInFlight = sample.inFlight;
    const elapsed = now - this.windowStart;
    const samples = this.okCount + this.overloads;
    if ((samples >= this.o.minSamples && elapsed >= this.o.minWindowMs) || elapsed >= this.o.maxWindowMs) {
      this.closeWindow();
    }
    return this.limit;
  }

  private closeWindow(): void {
    const { okCount, ttfbSum, overloads, maxInFlight } = this;
    this.windowStart = undefined;
    this.okCount = this.ttfbSum = this.overloads = this.maxInFlight = 0;
    const o = this.o;
    let next = this.estimate;
    if (okCount > 0) this.observe(ttfbSum / okCount);
    if (overloads > 0) {
      next = this.estimate * o.backoffRatio;
    } else if (okCount > 0 && this.baseline !== undefined && this.lastShort !== undefined) {
      const allowed = Math.max(o.tolerance * this.baseline, this.baseline + o.floorMs);
      const gradient = Math.max(0.5, Math.min(1, allowed / this.lastShort));
      const target = this.estimate * gradient + Math.sqrt(this.estimate);
      next = this.estimate * (1 - o.smoothing) + target * o.smoothing;
      // App-limited: a window that never used half the limit cannot justify a larger one.
      if (next > this.estimate && maxInFlight < this.estimate / 2) next = this.estimate;
    }
    this.estimate = Math.max(o.min, Math.min(o.max, next));
  }

  private observe(short: number): void {
    this.lastShort = short;
    const o = this.o;
    if (this.warmupCount < o.warmupWindows) {
      this.warmupCount++;
      this.warmupSum += short;
      this.baseline = this.warmupSum / this.warmupCount;
      return;
    }
    const base = this.baseline ?? short;
    const alpha = 2 / (o.longWindow + 1);
    let next = base * (1 - alpha) + short * alpha;
    // Latency is back to normal after a long slow period: don't wait minutes for the average to come down.
    if (next / short > 2) next *= 0.95;
    this.baseline = next;
  }
}
