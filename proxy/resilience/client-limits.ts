// Per-client limits: a sustained request rate with an optional burst allowance (rate-limiter-flexible, fixed
// windows), and an optional cap on requests in flight. Knows nothing of HTTP: the rate-limit stage derives the
// client key and turns decisions into responses.
//
// Shared state: with Redis, every instance counts in the same keys (RateLimiterRedis, one atomic Lua script per
// request), so N instances enforce ONE limit. When Redis fails (down, hung past commandTimeout, not ready — the
// client has enableOfflineQueue off, so a dead server fails at once) each limiter falls back to its
// `insuranceLimiter`: the same quota in this process's memory. Limits stay enforced (per instance, so a fleet of N
// lets through up to N× while Redis is away); a request is never let through unchecked and never fails with a 5xx.
//
// Windows are whole seconds: Redis TTLs here are set in seconds (the library floors fractional durations, and a
// sub-second one would never expire) and the IETF RateLimit-Policy `w` parameter is an integer number of seconds
// ("Sub-second precision is not supported", draft-ietf-httpapi-ratelimit-headers-11 §3.1.3). `quotaFor` scales a
// `per` that is not a whole number of seconds to the shortest whole-second window with the same average rate.
//
// Burst: BurstyRateLimiter consults a second limiter only when the sustained one refuses. Its quota is `burst`
// requests per BURST_WINDOWS sustained windows: a client that keeps to the rate never touches it; one that spikes
// may overspend by `burst` requests, and the allowance comes back BURST_WINDOWS windows after it was first used.
//
// Concurrency (`concurrent`): counted in this process only. An in-flight count in Redis would leak slots whenever
// an instance died mid-request; per-instance counting is exact and needs no cleanup. Behind a load balancer over N
// instances a client may therefore have up to N × `concurrent` requests in flight.
import crypto from "node:crypto";
import { EventEmitter } from "node:events";
import type { IncomingHttpHeaders } from "node:http";
import type { Cluster, Redis } from "ioredis";
import {
  BurstyRateLimiter,
  RateLimiterMemory,
  RateLimiterRedis,
  RateLimiterRes,
} from "rate-limiter-flexible";
import type { Config, LimitsConfig } from "../../config/schema.js";

/** The burst allowance is measured over this many sustained windows. */
export const BURST_WINDOWS = 10;
/** A concurrency refusal says "retry after 1 s": no window tells when a slot frees up. */
export const CONCURRENCY_RETRY_MS = 1_000;
/** The longest window `quotaFor` uses to keep a fractional `per` exact; beyond it the quota is rounded. */
const MAX_EXACT_WINDOW_MS = 60_000; // 60 s
/** The policy name (and Redis key segment) of the top-level `limits`. */
export const DEFAULT_POLICY = "default";

/** What the limiter enforces: `points` requests per `seconds`. */
export interface Quota {
  readonly points: number;
  readonly seconds: number;
}

function gcd(a: number, b: number): number {
  return b === 0 ? a : gcd(b, a % b);
}

/**
 * `requests` per `perMs` as a whole-second quota. A whole number of seconds is kept as is; otherwise the window
 * is stretched to the shortest whole-second multiple of `perMs` (5 per 250 ms → 20 per 1 s; 3 per 1.5 s → 6 per
 * 3 s) while that stays within 60 s, else rounded to whole seconds with the points scaled to the same rate.
 */
export function quotaFor(requests: number, perMs: number): Quota {
  if (!Number.isInteger(perMs) || perMs <= 0) {
    throw new RangeError(`expected per to be a positive integer of milliseconds, got ${perMs}`);
  }
  if (perMs % 1000 === 0) return { points: requests, seconds: perMs / 1000 };
  const k = 1000 / gcd(perMs, 1000);
  if (perMs * k <= MAX_EXACT_WINDOW_MS) return { points: requests * k, seconds: (perMs * k) / 1000 };
  const seconds = Math.max(1, Math.round(perMs / 1000));
  return { points: Math.max(1, Math.round((requests * seconds * 1000) / perMs)), seconds };
}

/** What the request that asked may do, and what to tell its client. */
export interface LimitDecision {
  /** The limits' verdict. In dry run it is still reported, but must not be enforced. */
  allowed: boolean;
  /** The sustained quota: requests per `window` seconds. */
  limit: number;
  window: number;
  /** Requests left in the current window (of the sustained quota; a burst allowance is not included). */
  remaining: number;
  /** ms until the current window ends. */
  resetMs: number;
  /** ms the client should wait before trying again; 0 when allowed. */
  retryAfterMs: number;
  /** The policy's name: "default" for the top-level limits, else the route's name. */
  policy: string;
  dryRun: boolean;
  /** Which limit refused (or would have): the rate, or the in-flight count. */
  reason: "rate" | "concurrency" | undefined;
  /** The first refusal of this client in this window on this instance: worth one log line. */
  firstRefusal: boolean;
}

/** A hold on one of a client's in-flight slots. */
export interface ConcurrencyGrant {
  /** False when the client already had `limit` requests in flight. */
  readonly allowed: boolean;
  /** A slot was taken (allowed, or over the limit in dry run): `release` must be called when the response ends. */
  readonly held: boolean;
  readonly limit: number;
  /** Idempotent. */
  release(): void;
}

export interface RouteLimitStats {
  allowed: number;
  limited: number;
  dryRunLimited: number;
}

export interface ClientLimiterEvents {
  /** A refusal, enforced or (dry run) only counted. `route` is the request's route. */
  limited: [{ route: string; policy: string; dryRun: boolean; reason: "rate" | "concurrency" }];
  /** A decision was taken by the local insurance limiter because Redis failed. */
  fallback: [{ policy: string }];
}

export interface ClientLimiterOptions {
  /** Shared counters across instances; without it every limit is local to this process. */
  redis?: Redis | Cluster;
  /** Prefix of every Redis key (config `redis.keyPrefix`). */
  keyPrefix: string;
}

/** The headers a client key may be derived from, and the client address (the route stage honoured trustProxy). */
export interface ClientIdentity {
  readonly req: { readonly headers: IncomingHttpHeaders };
  readonly clientIp: string;
}

function firstValue(v: string | string[] | undefined): string | undefined {
  const s = Array.isArray(v) ? v.join(", ") : v;
  return s === undefined || s === "" ? undefined : s;
}

// crypto.hash (Node ≥ 20.12) skips the Hash object: ~4× faster for short inputs. Read off the namespace, since a
// named import would fail to link on older Node 20 releases.
const sha256Hex: (value: string) => string =
  typeof crypto.hash === "function"
    ? (value) => crypto.hash("sha256", value, "hex")
    : (value) => crypto.createHash("sha256").update(value).digest("hex");

function digest(value: string): string {
  // 128 bits of SHA-256: a stable key that neither logs nor Redis can turn back into the credential.
  return sha256Hex(value).slice(0, 32);
}

/**
 * Who the client is for `limits`: `auth:<hash of Authorization>` (clientId auth), `hdr:<hash of the header>`
 * (clientId header), else, and whenever that header is absent, `ip:<client address>`. Credentials are hashed,
 * never kept.
 */
export function clientKey(ctx: ClientIdentity, limits: LimitsConfig): string {
  if (limits.clientId === "auth") {
    const auth = firstValue(ctx.req.headers.authorization);
    if (auth !== undefined) return `auth:${digest(auth)}`;
  } else if (limits.clientId === "header" && limits.clientHeader !== undefined) {
    const value = firstValue(ctx.req.headers[limits.clientHeader]);
    if (value !== undefined) return `hdr:${digest(value)}`;
  }
  return `ip:${ctx.clientIp}`;
}

interface Consumer {
  consume(key: string): Promise<RateLimiterRes>;
}

/** The insurance limiter: memory, same quota, and it reports every time Redis failed and it had to decide. */
class InsuranceLimiter extends RateLimiterMemory {
  constructor(
    opts: { points: number; duration: number; keyPrefix: string },
    private readonly onUse: (() => void) | undefined,
  ) {
    super(opts);
  }

  override consume(
    key: string | number,
    points?: number,
    options?: Record<string, unknown>,
  ): Promise<RateLimiterRes> {
    this.onUse?.();
    return super.consume(key, points, options);
  }
}

async function settle(p: Promise<RateLimiterRes>): Promise<{ res: RateLimiterRes; allowed: boolean }> {
  try {
    return { res: await p, allowed: true };
  } catch (err) {
    if (err instanceof RateLimiterRes) return { res: err, allowed: false };
    throw err;
  }
}

const NOOP = () => {};

class Policy {
  readonly quota: Quota;
  private readonly limiter: Consumer;
  /** The insurance limiters on their own: what decides when the store path fails in an unforeseen way. */
  private readonly local: Consumer;
  /** One point per window per client: lets the first refusal of a window through to the logs, no more. */
  private readonly logGate: RateLimiterMemory;
  private readonly inFlight = new Map<string, number>();

  constructor(
    readonly name: string,
    readonly limits: LimitsConfig,
    opts: ClientLimiterOptions,
    onFallback: () => void,
  ) {
    this.quota = quotaFor(limits.requests, limits.per);
    const { points, seconds } = this.quota;
    // A route named "default" must not share keys with the top-level policy.
    const segment = name === DEFAULT_POLICY ? DEFAULT_POLICY : `route:${name}`;
    const prefix = `${opts.keyPrefix}rl:${segment}`;
    const burst = limits.burst > 0 ? { points: limits.burst, duration: seconds * BURST_WINDOWS } : undefined;
    this.logGate = new RateLimiterMemory({ points: 1, duration: seconds, keyPrefix: `${prefix}:log` });

    const redis = opts.redis;
    if (redis === undefined) {
      const rate = new RateLimiterMemory({ points, duration: seconds, keyPrefix: prefix });
      this.limiter = burst
        ? new BurstyRateLimiter(rate, new RateLimiterMemory({ ...burst, keyPrefix: `${prefix}:burst` }))
        : rate;
      this.local = this.limiter;
      return;
    }
    // Only the sustained limiter's insurance reports: the burst limiter is consulted after it, so a failing
    // Redis counts once per request.
    const rateInsurance = new InsuranceLimiter({ points, duration: seconds, keyPrefix: prefix }, onFallback);
    const rate = new RateLimiterRedis({
      storeClient: redis,
      keyPrefix: prefix,
      points,
      duration: seconds,
      insuranceLimiter: rateInsurance,
      rejectIfRedisNotReady: true, // a reconnecting client fails at once instead of waiting for a timeout
      // Once a key is over its quota, refuse it from memory until its window ends: a flooding client costs no
      // Redis round trips. Exact, since the block lasts exactly as long as the shared key.
      inMemoryBlockOnConsumed: points + 1,
    });
    if (!burst) {
      this.limiter = rate;
      this.local = rateInsurance;
      return;
    }
    const burstPrefix = `${prefix}:burst`;
    const burstInsurance = new InsuranceLimiter({ ...burst, keyPrefix: burstPrefix }, undefined);
    this.limiter = new BurstyRateLimiter(
      rate,
      new RateLimiterRedis({
        storeClient: redis,
        keyPrefix: burstPrefix,
        ...burst,
        insuranceLimiter: burstInsurance,
        rejectIfRedisNotReady: true,
        inMemoryBlockOnConsumed: burst.points + 1,
      }),
    );
    this.local = new BurstyRateLimiter(rateInsurance, burstInsurance);
  }

  acquire(key: string): ConcurrencyGrant {
    const limit = this.limits.concurrent;
    const n = this.inFlight.get(key) ?? 0;
    const allowed = n < limit;
    if (!allowed && !this.limits.dryRun) return { allowed, held: false, limit, release: NOOP };
    this.inFlight.set(key, n + 1);
    let released = false;
    return {
      allowed,
      held: true,
      limit,
      release: () => {
        if (released) return;
        released = true;
        const left = (this.inFlight.get(key) ?? 1) - 1;
        if (left <= 0) this.inFlight.delete(key);
        else this.inFlight.set(key, left);
      },
    };
  }

  inFlightFor(key: string): number {
    return this.inFlight.get(key) ?? 0;
  }

  async consume(key: string): Promise<{ res: RateLimiterRes; allowed: boolean }> {
    try {
      return await settle(this.limiter.consume(key));
    } catch {
      // Not a verdict but an error the insurance did not absorb: decide locally rather than fail open or 5xx.
      return settle(this.local.consume(key));
    }
  }

  /** True once per client per window. */
  firstRefusal(key: string): Promise<boolean> {
    return this.logGate.consume(key).then(
      () => true,
      () => false,
    );
  }

  clear(): void {
    this.inFlight.clear();
  }
}

interface RouteLimits {
  readonly policy: Policy;
  readonly stats: RouteLimitStats;
}

/** Every route's client limits, built once from the config. */
export class ClientLimiter extends EventEmitter<ClientLimiterEvents> {
  private readonly routes = new Map<string, RouteLimits>();
  private fallbacks = 0;

  constructor(config: Pick<Config, "limits" | "routes">, opts: ClientLimiterOptions) {
    super();
    const onFallback = (policy: string) => () => {
      this.fallbacks++;
      this.emit("fallback", { policy });
    };
    let shared: Policy | undefined;
    for (const route of config.routes) {
      let policy: Policy | undefined;
      if (route.limits !== undefined) {
        // A route's own limits replace the top-level ones entirely (enabled: false exempts the route).
        if (route.limits.enabled) policy = new Policy(route.name, route.limits, opts, onFallback(route.name));
      } else if (config.limits.enabled) {
        // Routes without limits of their own share one budget per client: the top-level policy.
        shared ??= new Policy(DEFAULT_POLICY, config.limits, opts, onFallback(DEFAULT_POLICY));
        policy = shared;
      }
      if (policy)
        this.routes.set(route.name, { policy, stats: { allowed: 0, limited: 0, dryRunLimited: 0 } });
    }
  }

  /** The limits that apply to `routeName`, or undefined when it is not limited. */
  limitsFor(routeName: string): LimitsConfig | undefined {
    return this.routes.get(routeName)?.policy.limits;
  }

  /**
   * Takes one of the client's in-flight slots, or undefined when the route has no concurrency limit. Over the
   * limit no slot is taken — except in dry run, where it is (the count stays true) and `allowed` says false.
   * Synchronous, so the caller can tie `release` to the response's end before anything else can happen.
   */
  acquire(routeName: string, key: string): ConcurrencyGrant | undefined {
    const entry = this.routes.get(routeName);
    if (!entry || entry.policy.limits.concurrent === 0) return undefined;
    return entry.policy.acquire(key);
  }

  /** Requests `key` has in flight under the policy of `routeName` on this instance. */
  inFlight(routeName: string, key: string): number {
    return this.routes.get(routeName)?.policy.inFlightFor(key) ?? 0;
  }

  /**
   * Counts one request of `key` on `routeName` and says whether it may proceed. `grant` is this request's
   * `acquire` result: a refused grant (not in dry run) refuses the request without spending from the rate quota.
   * Throws when the route is not limited (ask `limitsFor` first).
   */
  async check(routeName: string, key: string, grant?: ConcurrencyGrant): Promise<LimitDecision> {
    const entry = this.routes.get(routeName);
    if (!entry) throw new Error(`no client limits apply to route "${routeName}"`);
    const { policy, stats } = entry;
    const dryRun = policy.limits.dryRun;
    let allowed = false;
    let reason: LimitDecision["reason"];
    let remaining = 0;
    let resetMs = 0;
    let retryAfterMs = CONCURRENCY_RETRY_MS;
    if (grant && !grant.allowed && !dryRun) {
      reason = "concurrency";
    } else {
      const { res, allowed: rateAllowed } = await policy.consume(key);
      const concurrencyAllowed = grant?.allowed ?? true;
      allowed = rateAllowed && concurrencyAllowed;
      remaining = Math.max(0, res.remainingPoints);
      resetMs = Math.max(0, res.msBeforeNext);
      if (!rateAllowed) retryAfterMs = resetMs;
      else if (allowed) retryAfterMs = 0;
      if (!concurrencyAllowed) reason = "concurrency";
      else if (!rateAllowed) reason = "rate";
    }
    let firstRefusal = false;
    if (allowed) {
      stats.allowed++;
    } else {
      if (dryRun) stats.dryRunLimited++;
      else stats.limited++;
      this.emit("limited", { route: routeName, policy: policy.name, dryRun, reason: reason ?? "rate" });
      firstRefusal = await policy.firstRefusal(key);
    }
    // One literal, always the same shape: this runs for every limited request.
    return {
      allowed,
      limit: policy.quota.points,
      window: policy.quota.seconds,
      remaining,
      resetMs,
      retryAfterMs,
      policy: policy.name,
      dryRun,
      reason,
      firstRefusal,
    };
  }

  /** Decisions per limited route, and how many were taken locally because Redis failed. */
  stats(): { routes: Record<string, RouteLimitStats>; fallbacks: number } {
    const routes: Record<string, RouteLimitStats> = {};
    for (const [name, { stats }] of this.routes) routes[name] = { ...stats };
    return { routes, fallbacks: this.fallbacks };
  }

  /** Drops in-flight counts and listeners. The Redis client belongs to the cache service, which closes it. */
  close(): void {
    for (const { policy } of this.routes.values()) policy.clear();
    this.removeAllListeners();
  }
}
