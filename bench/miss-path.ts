// Miss-path benchmark: requests/s through cachegate when every request goes upstream (a route with caching off),
//   limiter     with the upstream concurrency limiter (bottleneck, patched; adaptive limit, defaults)
//   no-limiter  with `concurrency.enabled: false`
//   unpatched   with the limiter but bottleneck's original setTimeout-based internals (what the patch fixes)
// against one node:http upstream serving 1 KiB of JSON. The upstream and each cachegate run in their own child
// process; autocannon runs here, on loopback. Every run starts a fresh cachegate, warms it up, measures it and stops
// it; the order of the targets alternates between rounds (ABBA) so machine drift hits all alike; the median per
// target is reported, with the cachegate process's CPU time per request (steadier than req/s on a busy machine).
// First it measures bottleneck alone in this process: jobs/s with its original internals and with the patch.
//
//   npm run bench:miss                         compiled with tsc first (tsconfig.bench.json), as `npm run bench`:
//                                              tsx's transform costs real time on closures made per request
//   node --import tsx bench/miss-path.ts       the same through tsx (slower, for quick runs)
//   BENCH_DURATION=10 BENCH_WARMUP=5 BENCH_ROUNDS=3 BENCH_CONNECTIONS=50 BENCH_TARGETS=limiter,no-limiter
//   BENCH_CPU_PROF=dir   run the cachegate children with `node --cpu-prof`, profiles in dir/<target>-<round>/
//   BENCH_VERBOSE=1      print the limiter's counters after every run
//
// The issue's bar: limiter ≥ 0.9 × no-limiter requests/s. Results go to bench/results/miss-path-<ISO date>.json.
import { mkdirSync, writeFileSync } from "node:fs";
import http from "node:http";
import { createRequire } from "node:module";
import os from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import autocannon from "autocannon";
import { type Child, startChild, stopChild, stopChildren } from "./processes.js";
import { intEnv } from "./settings.js";
import { median } from "./stats.js";

const BENCH_DIR = dirname(fileURLToPath(import.meta.url));
/** Compiled to .bench-dist/bench/*.js (npm run bench:miss), or run through tsx from bench/*.ts. */
const COMPILED = import.meta.url.endsWith(".js");
const ROOT = resolve(BENCH_DIR, COMPILED ? "../.." : "..");
const TARGET_RATIO = 0.9;

type Target = "limiter" | "no-limiter" | "unpatched";
const ALL: readonly Target[] = ["limiter", "no-limiter", "unpatched"];

const settings = (() => {
  const wanted = (process.env.BENCH_TARGETS ?? ALL.join(",")).split(",").map((s) => s.trim());
  for (const t of wanted) {
    if (!ALL.includes(t as Target))
      throw new Error(`BENCH_TARGETS: unknown "${t}" (known: ${ALL.join(", ")})`);
  }
  return {
    durationS: intEnv("BENCH_DURATION", 10, 1, 120),
    warmupS: intEnv("BENCH_WARMUP", 5, 0, 60),
    connections: intEnv("BENCH_CONNECTIONS", 50, 1, 1000),
    rounds: intEnv("BENCH_ROUNDS", 3, 1, 20),
    targets: [...new Set(wanted)] as Target[], // in the order given: the first target runs first in odd rounds
  };
})();

function sanity(url: string): Promise<void> {
  return new Promise((resolvePromise, reject) => {
    const req = http.get(url, { agent: false, timeout: 5_000 }, (res) => {
      res.resume();
      res.on("end", () =>
        res.statusCode === 200 && res.headers["x-cache"] === "BYPASS"
          ? resolvePromise()
          : reject(new Error(`${url}: sanity check got ${res.statusCode} X-Cache ${res.headers["x-cache"]}`)),
      );
    });
    req.on("timeout", () => req.destroy(new Error(`${url}: sanity check timed out`)));
    req.on("error", reject);
  });
}

/** autocannon for `durationS`, bounded: stopped after duration + 15 s, abandoned 5 s later. */
function cannon(url: string, durationS: number): Promise<autocannon.Result> {
  return new Promise((resolvePromise, reject) => {
    const instance = autocannon(
      { url, connections: settings.connections, duration: durationS, pipelining: 1, timeout: 10 },
      (err, result) => {
        clearTimeout(stop);
        clearTimeout(giveUp);
        if (err) reject(err instanceof Error ? err : new Error(String(err)));
        else resolvePromise(result);
      },
    );
    const stop = setTimeout(() => instance.stop(), (durationS + 15) * 1000);
    const giveUp = setTimeout(
      () => reject(new Error(`autocannon ${url} did not finish`)),
      (durationS + 20) * 1000,
    );
  });
}

interface Probe {
  stats: unknown;
  cpuUs: number;
}

/** The child's CPU time and limiter counters, asked for with SIGUSR2. */
async function probe(child: Child): Promise<Probe | undefined> {
  const before = child.lines.length;
  child.proc.kill("SIGUSR2");
  for (let i = 0; i < 100 && child.lines.length === before; i++) await new Promise((r) => setTimeout(r, 20));
  const line = child.lines.slice(before).find((l) => l.startsWith('{"stats"'));
  return line ? (JSON.parse(line) as Probe) : undefined;
}

interface Run {
  target: Target;
  round: number;
  rps: number;
  p50Ms: number;
  p99Ms: number;
  errors: number;
  non2xx: number;
  /** CPU time of the cachegate process per request answered, µs. */
  cpuUsPerRequest: number;
}

/**
 * bottleneck on its own, in this process: jobs/s of a local limiter (maxConcurrent 64, 50 jobs in flight) with
 * bottleneck's original internals and with cachegate's patch (proxy/resilience/bottleneck.ts).
 */
async function bottleneckJobsPerSecond(): Promise<{ unpatched: number; patched: number }> {
  type Proto = Record<string, unknown>;
  const require = createRequire(import.meta.url);
  const local = (require("bottleneck/lib/LocalDatastore.js") as { prototype: Proto }).prototype;
  const events = (require("bottleneck/lib/Events.js") as { prototype: Proto }).prototype;
  const original = { yieldLoop: local.yieldLoop, trigger: events.trigger };
  const { Bottleneck } = await import("../proxy/resilience/bottleneck.js");
  const patched = { yieldLoop: local.yieldLoop, trigger: events.trigger };
  const run = async (jobs: number) => {
    const b = new Bottleneck({ maxConcurrent: 64 });
    let started = 0;
    const t0 = performance.now();
    const worker = async () => {
      while (started < jobs) {
        started++;
        await b.schedule(() => Promise.resolve());
      }
    };
    await Promise.all(Array.from({ length: 50 }, worker));
    await b.disconnect();
    return jobs / ((performance.now() - t0) / 1000);
  };
  Object.assign(local, { yieldLoop: original.yieldLoop });
  Object.assign(events, { trigger: original.trigger });
  const unpatched = await run(1_000); // ~2.5 s at ~400 jobs/s
  Object.assign(local, { yieldLoop: patched.yieldLoop });
  Object.assign(events, { trigger: patched.trigger });
  return { unpatched, patched: await run(10_000) };
}

async function main(): Promise<number> {
  const { durationS, warmupS, rounds, targets, connections } = settings;
  console.log(
    `cachegate miss-path benchmark: ${connections} connections, ${rounds} round(s), each target in a fresh process ` +
      `per run (${warmupS} s warm-up, ${durationS} s measured), targets ${targets.join(", ")}; ` +
      `${COMPILED ? "compiled" : "through tsx"}, node ${process.version}, ${os.cpus().length} CPUs`,
  );
  const jobsPerSecond = await bottleneckJobsPerSecond();
  console.log(
    `bottleneck alone (local, 50 jobs in flight): unpatched ${jobsPerSecond.unpatched.toFixed(0)} jobs/s, ` +
      `patched ${jobsPerSecond.patched.toFixed(0)} jobs/s`,
  );
  const upstream = await startChild("upstream", "upstream.ts", {});
  // The upstream's own warm-up (JIT, sockets), so the first target measured does not pay for it.
  if (warmupS > 0) await cannon(upstream.url, warmupS);
  const prof = process.env.BENCH_CPU_PROF;
  const stats: Record<string, unknown> = {};
  const runs: Run[] = [];
  for (let round = 1; round <= rounds; round++) {
    const order = round % 2 === 1 ? targets : [...targets].reverse();
    for (const t of order) {
      // A fresh cachegate per run: no process carries heap state, JIT state or CPU placement from earlier runs,
      // which on a shared 2-core machine mattered more than the limiter itself.
      const args = prof ? ["--cpu-prof", "--cpu-prof-dir", join(resolve(prof), `${t}-${round}`)] : [];
      const gate = await startChild(
        t,
        "miss-gate.ts",
        { BENCH_UPSTREAM_URL: upstream.url, BENCH_VARIANT: t },
        args,
        { keepLines: true },
      );
      await sanity(gate.url);
      if (warmupS > 0) await cannon(gate.url, warmupS);
      const cpuBefore = (await probe(gate))?.cpuUs ?? Number.NaN;
      const r = await cannon(gate.url, durationS);
      const after = await probe(gate);
      const cpuAfter = after?.cpuUs ?? Number.NaN;
      if (after?.stats) stats[`${t} round ${round}`] = after.stats;
      if (process.env.BENCH_VERBOSE && after?.stats)
        console.log(`  ${t} limiter: ${JSON.stringify(after.stats)}`);
      await stopChild(gate);
      const run: Run = {
        target: t,
        round,
        rps: r.requests.average,
        p50Ms: r.latency.p50,
        p99Ms: r.latency.p99,
        errors: r.errors + r.timeouts,
        non2xx: r.non2xx,
        cpuUsPerRequest: (cpuAfter - cpuBefore) / Math.max(1, r.requests.total),
      };
      runs.push(run);
      console.log(
        `round ${round}/${rounds} ${t.padEnd(10)} ${run.rps.toFixed(0).padStart(7)} req/s  p50 ${run.p50Ms} ms  ` +
          `p99 ${run.p99Ms} ms  cpu ${run.cpuUsPerRequest.toFixed(0)} µs/req  errors ${run.errors}  non-2xx ${run.non2xx}`,
      );
    }
  }

  const summary = targets.map((t) => {
    const mine = runs.filter((r) => r.target === t);
    return {
      target: t,
      rps: median(mine.map((r) => r.rps)),
      p50Ms: median(mine.map((r) => r.p50Ms)),
      p99Ms: median(mine.map((r) => r.p99Ms)),
      cpuUsPerRequest: median(mine.map((r) => r.cpuUsPerRequest)),
      errors: mine.reduce((n, r) => n + r.errors, 0),
      non2xx: mine.reduce((n, r) => n + r.non2xx, 0),
    };
  });
  console.log(`\nmedian of ${rounds} run(s) of ${durationS} s, ${connections} connections, caching off:`);
  for (const s of summary) {
    console.log(
      `  ${s.target.padEnd(10)} ${s.rps.toFixed(0).padStart(7)} req/s  p50 ${s.p50Ms} ms  p99 ${s.p99Ms} ms  ` +
        `cpu ${s.cpuUsPerRequest.toFixed(0)} µs/req  errors ${s.errors}  non-2xx ${s.non2xx}`,
    );
  }
  const last = Object.entries(stats).at(-1);
  if (last) console.log(`limiter counters after the last run (${last[0]}): ${JSON.stringify(last[1])}`);

  const rps = (t: Target) => summary.find((s) => s.target === t)?.rps;
  const withL = rps("limiter");
  const without = rps("no-limiter");
  const unpatched = rps("unpatched");
  const ratio = withL !== undefined && without !== undefined ? withL / without : undefined;
  const cpu = (t: Target) => summary.find((s) => s.target === t)?.cpuUsPerRequest;
  const cpuRatio =
    cpu("limiter") !== undefined && cpu("no-limiter") !== undefined
      ? (cpu("no-limiter") as number) / (cpu("limiter") as number)
      : undefined;
  if (ratio !== undefined) {
    console.log(
      `limiter / no-limiter req/s: ${ratio.toFixed(2)}x — target >= ${TARGET_RATIO}x: ${ratio >= TARGET_RATIO ? "MET" : "NOT MET"}`,
    );
  }
  if (cpuRatio !== undefined) {
    console.log(
      `no-limiter / limiter CPU per request (the req/s ratio a CPU-bound proxy would see): ${cpuRatio.toFixed(2)}x`,
    );
  }
  if (unpatched !== undefined && without !== undefined) {
    console.log(`unpatched bottleneck / no-limiter req/s: ${(unpatched / without).toFixed(2)}x`);
  }
  const date = new Date();
  const file = join(ROOT, "bench", "results", `miss-path-${date.toISOString().replace(/:/g, "-")}.json`);
  mkdirSync(dirname(file), { recursive: true });
  const report = {
    benchmark: "miss-path",
    date: date.toISOString(),
    machine: { node: process.version, cpus: os.cpus().length, loadAverageAtEnd: os.loadavg() },
    settings: { ...settings, compiled: COMPILED },
    summary,
    ratio: { limiterVsNoLimiter: ratio, cpuPerRequestNoLimiterVsLimiter: cpuRatio, target: TARGET_RATIO },
    bottleneckJobsPerSecond: jobsPerSecond,
    limiterStats: stats,
    runs,
  };
  writeFileSync(file, `${JSON.stringify(report, null, 2)}\n`);
  console.log(`results: ${file}`);
  return 0;
}

// Hard bound on the whole run, whatever hangs.
// Per run: start-up (≤ 30 s), warm-up and measurement (each ≤ its duration + 20 s), stop (≤ 5 s).
const limitS = 60 + settings.rounds * settings.targets.length * (settings.warmupS + settings.durationS + 80);
setTimeout(() => {
  console.error(`bench: still running after ${limitS} s; stopping`);
  void stopChildren().finally(() => process.exit(1));
}, limitS * 1000).unref();
for (const signal of ["SIGINT", "SIGTERM"] as const) {
  process.once(signal, () => void stopChildren().finally(() => process.exit(130)));
}

let code = 1;
try {
  code = await main();
} catch (err) {
  console.error(`bench: ${err instanceof Error ? err.message : String(err)}`);
} finally {
  await stopChildren();
}
process.exit(code);
