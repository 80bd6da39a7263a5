// Benchmark settings from the environment.

/** An integer environment variable within [min, max]; `fallback` when unset or empty; a clear error otherwise. */
export function intEnv(name: string, fallback: number, min: number, max: number): number {
  const raw = process.env[name];
  if (raw === undefined || raw === "") return fallback;
  const n = Number(raw);
  if (!Number.isInteger(n) || n < min || n > max) {
    throw new Error(`${name} must be an integer from ${min} to ${max}, got "${raw}"`);
  }
  return n;
}

/** "cachegate+--flag+--other": the variant before the first "+", node options after it (to price a V8 flag). */
export const baseVariant = (name: string): string => name.split("+")[0] as string;
export const nodeArgs = (name: string): string[] => name.split("+").slice(1);

/** Variant name → bench/cachegate-server.ts environment. */
export const VARIANTS: Record<string, Record<string, string>> = {
  cachegate: {},
  "cachegate-nocache": { BENCH_CACHE_OFF: "1" },
  "cachegate-warn": { BENCH_LOG_LEVEL: "warn" },
  "cachegate-hits": { BENCH_CACHE_HITS: "1" },
  "cachegate-nobreaker": { BENCH_BREAKER_OFF: "1" },
  "cachegate-nolimit": { BENCH_CONCURRENCY_OFF: "1" },
  // Issue 2's scope: forwarding with access lines and metrics, but no cache, breaker or concurrency limiter.
  "cachegate-forward": { BENCH_CACHE_OFF: "1", BENCH_BREAKER_OFF: "1", BENCH_CONCURRENCY_OFF: "1" },
  // The floor of the server and pipeline alone: no cache, breaker, limiter or access lines.
  "cachegate-floor": {
    BENCH_CACHE_OFF: "1",
    BENCH_BREAKER_OFF: "1",
    BENCH_CONCURRENCY_OFF: "1",
    BENCH_LOG_LEVEL: "warn",
  },
};
