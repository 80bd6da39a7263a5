// V8 settings cachegate runs with, applied by the CLI (and the benchmark's server) before the server starts.
//
// --no-allocation-site-pretenuring: V8 allocates objects from a literal site straight into the old generation once
// most of that site's objects survived a young collection. Under a burst that queues requests (the upstream
// concurrency limit, a slow upstream) the per-request literals qualify; allocated old, they then keep every young
// object they point at alive through young collections after their request is over, those objects are promoted,
// and the site's survival stays at 100%: the process does not recover. Measured (dist build, wrk on one URL, 5
// connections after a 50-connection warm-up that queued at the initial limit of 32; `--trace-gc-nvp`,
// `--trace-pretenuring`): in that state ~5.8 KB promoted per request, scavenges of 4-9 ms, a full collection every
// ~2 s, ~20k requests in 4 s; with the flag ~35 B per request and ~33k requests. Without the trigger (no queueing
// at start) both behave alike.
//
// --max-inlined-bytecode-size-cumulative=3000 (V8's default 920): how much bytecode TurboFan inlines into one
// optimized function. A forwarded request runs through many small functions (pipeline stages, node:http, streams,
// http-proxy-3); with the default budget the optimizer stops inlining early in the larger ones. Measured with
// `bench:ab` (cachegate and cachegate with the flag pinned together, 8 rounds each, req/s relative to bare
// http-proxy-3): +1.1, +7.1 and +4.5 % at 3000, +3.3 % at 2000, +3.6 % at 5000, against an A/A spread of -2.0 and
// +1.4 % the same evening. Costs a little more code memory and background compile time; read at each
// optimization, so setting it at run time before the load starts is enough.
import v8 from "node:v8";

export const V8_FLAGS: readonly string[] = [
  "--no-allocation-site-pretenuring",
  "--max-inlined-bytecode-size-cumulative=3000",
];

/** Applies V8_FLAGS to this process (GC and compiler heuristics: safe to set at run time, before the load starts). */
export function applyV8Flags(): void {
  for (const flag of V8_FLAGS) v8.setFlagsFromString(flag);
}
