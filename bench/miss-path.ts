// Miss-path benchmark: requests/s through cachegate when every request goes upstream (a route with caching off),
//   limiter     with the upstream concurrency limiter (bottleneck, patched; adaptive limit, defaults)
//   no-limiter  with `concurrency.enabled: false`
//   unpatched   with the limiter but bottleneck's original setTimeout-based internals (what the patch fixes)
// against one node:http upstream serving 1 KiB of JSON. The upstream and each cachegate run in their own child
// process; autocannon runs here, on loopback. Each target is warmed up, then measured in rounds, the order of the
// targets alternating between rounds (ABBA) so machine drift hits all alike; the median per target is reported.
//
//   node --import tsx bench/miss-path.ts      (npm run bench:miss)
//   BENCH_DURATION=10 BENCH_WARMUP=5 BENCH_ROUNDS=2 BENCH_CONNECTIONS=50 BENCH_TARGETS=limiter,no-limiter
//
// The bar: limiter ≥ 0.9 × no-limiter requests/s. Results go to bench/results/miss-path-<ISO date>.json.
import { type ChildProcess, spawn } from "node:child_process";
import { mkdirSync, writeFileSync } from "node:fs";
import http from "node:http";
import os from "node:os";
import { dirname, join, resolve } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import autocannon from "autocannon";

const BENCH_DIR = dirname(fileURLToPath(import.meta.url));
const ROOT = resolve(BENCH_DIR, "..");
const TARGET_RATIO = 0.9;
const STARTUP_TIMEOUT_MS = 30_000;

type Target = "limiter" | "no-limiter" | "unpatched";
const ALL: readonly Target[] = ["limiter", "no-limiter", "unpatched"];

function intEnv(name: string, fallback: number, min: number, max: number): number {
  const raw = process.env[name];
  if (raw === undefined || raw === "") return fallback;
  const n = Number(raw);
  if (!Number.isInteger(n) || n < min || n > max) {
    throw new Error(`${name} must be an integer from ${min} to ${max}, got "${raw}"`);
  }
  return n;
}

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
    rounds: intEnv("BENCH_ROUNDS", 2, 1, 20),
    targets: ALL.filter((t) => wanted.includes(t)),
  };
})();

interface Child {
  name: string;
  proc: ChildProcess;
  url: string;
  lines: string[];
}
const children: ChildProcess[] = [];

function startChild(name: string, file: string, env: Record<string, string>): Promise<Child> {
  const proc = spawn(process.execPath, ["--import", "tsx", join(BENCH_DIR, file)], {
    cwd: ROOT,
    env: { ...process.env, ...env },
    stdio: ["pipe", "pipe", "inherit"], // stdin open: the child exits when this process goes away
  });
  children.push(proc);
  return new Promise((resolvePromise, reject) => {
    const timer = setTimeout(
      () => reject(new Error(`${name}: no port within ${STARTUP_TIMEOUT_MS} ms`)),
      STARTUP_TIMEOUT_MS,
    );
    proc.once("exit", (code) => {
      clearTimeout(timer);
      reject(new Error(`${name} exited before it was ready (code ${code})`));
    });
    const lines: string[] = [];
    createInterface({ input: proc.stdout as NodeJS.ReadableStream }).on("line", (line) => {
      let msg: { ready?: boolean; port?: number } | undefined;
      try {
        msg = JSON.parse(line) as { ready?: boolean; port?: number };
      } catch {
        msg = undefined;
      }
      if (msg?.ready && typeof msg.port === "number") {
        clearTimeout(timer);
        resolvePromise({ name, proc, url: `http://127.0.0.1:${msg.port}/`, lines });
      } else {
        lines.push(line);
      }
    });
  });
}

async function stopChildren(): Promise<void> {
  const alive = children.filter((p) => p.exitCode === null && p.signalCode === null);
  for (const p of alive) p.kill("SIGTERM");
  await Promise.all(
    alive.map(
      (p) =>
        new Promise<void>((r) => {
          const t = setTimeout(() => {
            p.kill("SIGKILL");
            r();
          }, 5_000);
          p.once("exit", () => {
            clearTimeout(t);
            r();
          });
        }),
    ),
  );
}

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

function median(values: number[]): number {
  const s = [...values].sort((a, b) => a - b);
  const mid = Math.floor(s.length / 2);
  return s.length % 2 ? (s[mid] as number) : ((s[mid - 1] as number) + (s[mid] as number)) / 2;
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

async function main(): Promise<number> {
  const { durationS, warmupS, rounds, targets, connections } = settings;
  console.log(
    `cachegate miss-path benchmark: ${connections} connections, ${warmupS} s warm-up, ${rounds} round(s) of ` +
      `${durationS} s, targets ${targets.join(", ")}; node ${process.version}, ${os.cpus().length} CPUs`,
  );
  const upstream = await startChild("upstream", "upstream.ts", {});
  const gates = new Map<Target, Child>();
  for (const t of targets) {
    gates.set(t, await startChild(t, "miss-gate.ts", { BENCH_UPSTREAM_URL: upstream.url, BENCH_VARIANT: t }));
  }
  for (const g of gates.values()) await sanity(g.url);

  if (warmupS > 0) {
    for (const [t, g] of gates) {
      const r = await cannon(g.url, warmupS);
      console.log(`warm-up  ${t.padEnd(10)} ${r.requests.average.toFixed(0).padStart(7)} req/s (discarded)`);
    }
  }
  const runs: Run[] = [];
  for (let round = 1; round <= rounds; round++) {
    const order = round % 2 === 1 ? targets : [...targets].reverse();
    for (const t of order) {
      const gate = gates.get(t) as Child;
      const cpuBefore = (await probe(gate))?.cpuUs ?? Number.NaN;
      const r = await cannon(gate.url, durationS);
      const cpuAfter = (await probe(gate))?.cpuUs ?? Number.NaN;
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
  const stats: Record<string, unknown> = {};
  for (const [t, g] of gates) if (t !== "no-limiter") stats[t] = (await probe(g))?.stats;
  console.log(`limiter counters at the end: ${JSON.stringify(stats)}`);

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
  const file = join(BENCH_DIR, "results", `miss-path-${date.toISOString().replace(/:/g, "-")}.json`);
  mkdirSync(dirname(file), { recursive: true });
  const report = {
    benchmark: "miss-path",
    date: date.toISOString(),
    machine: { node: process.version, cpus: os.cpus().length, loadAverageAtEnd: os.loadavg() },
    settings,
    summary,
    ratio: { limiterVsNoLimiter: ratio, cpuPerRequestNoLimiterVsLimiter: cpuRatio, target: TARGET_RATIO },
    limiterStats: stats,
    runs,
  };
  writeFileSync(file, `${JSON.stringify(report, null, 2)}\n`);
  console.log(`results: ${file}`);
  return 0;
}

// Hard bound on the whole run, whatever hangs.
const limitS =
  60 +
  settings.targets.length * (settings.warmupS + 25) +
  settings.rounds * settings.targets.length * (settings.durationS + 25);
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
