// cachegate for the miss-path benchmark: one upstream, one route with caching off (every request is a miss that
// goes upstream), logging at info to /dev/null. BENCH_VARIANT picks what is measured:
//   limiter     concurrency limiter on (adaptive, defaults), breaker on
//   no-limiter  `concurrency.enabled: false`, breaker on
//   unpatched   like limiter, with bottleneck's original (setTimeout-based) internals restored
// BENCH_CONCURRENCY='{"adaptive":false,"initial":256}' merges keys into `concurrency` (to measure other settings).
import { mkdtempSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { announce, exitOnParentSignal, requireEnv } from "./child.js";

const upstream = requireEnv("BENCH_UPSTREAM_URL");
const variant = requireEnv("BENCH_VARIANT");
if (!["limiter", "no-limiter", "unpatched"].includes(variant)) {
  console.error(`miss-gate: unknown BENCH_VARIANT "${variant}"`);
  process.exit(2);
}

// Keep bottleneck's original methods before cachegate patches them, to put them back for "unpatched".
type Proto = Record<string, unknown>;
const require = createRequire(import.meta.url);
const local = (require("bottleneck/lib/LocalDatastore.js") as { prototype: Proto }).prototype;
const events = (require("bottleneck/lib/Events.js") as { prototype: Proto }).prototype;
const original = { yieldLoop: local.yieldLoop, trigger: events.trigger };

const { loadConfig } = await import("../config/load.js");
const { createLogger } = await import("../proxy/observability/logger.js");
const { logDestination } = await import("../proxy/observability/log-destination.js");
const { startCachegate } = await import("../proxy/server.js");
const { BOTTLENECK_PATCH } = await import("../proxy/resilience/bottleneck.js");
if (variant === "unpatched") {
  local.yieldLoop = original.yieldLoop;
  events.trigger = original.trigger;
} else if (variant === "limiter" && !BOTTLENECK_PATCH.applied) {
  console.error(`miss-gate: ${BOTTLENECK_PATCH.reason}`);
}

const dir = mkdtempSync(join(tmpdir(), "cachegate-bench-"));
const file = join(dir, "config.json");
writeFileSync(
  file,
  JSON.stringify({
    listen: { host: "127.0.0.1", port: 0 },
    admin: { host: "127.0.0.1", port: 0 },
    log: { level: "info" },
    upstreams: [
      {
        name: "bench",
        url: upstream,
        concurrency: {
          enabled: variant !== "no-limiter",
          ...(process.env.BENCH_CONCURRENCY ? (JSON.parse(process.env.BENCH_CONCURRENCY) as object) : {}),
        },
      },
    ],
    routes: [{ name: "miss", upstream: "bench", cache: { enabled: false } }],
  }),
);
// An empty env: CACHEGATE_* variables of the shell must not change what is measured.
const { config } = loadConfig({ config: file }, {});
const logger = createLogger(config.log.level, logDestination("/dev/null"));
const gate = await startCachegate(config, { logger, defaultMetrics: true });

// The parent reads this process's CPU time around each run (CPU per request is steadier than requests/s on a busy
// machine) and the limiter's counters at the end: proof that requests went through it.
process.on("SIGUSR2", () => {
  const l = gate.limiters.get("bench");
  const cpu = process.cpuUsage();
  process.stdout.write(`${JSON.stringify({ stats: l ? l.stats() : null, cpuUs: cpu.user + cpu.system })}\n`);
});

announce(`cachegate-${variant}`, gate.port);
exitOnParentSignal(async () => {
  await gate.close(500);
  logger.flush();
});
