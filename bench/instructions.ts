// Instructions per request, counted by valgrind's callgrind: the one cost figure on these machines that does not move
// with their load. The same binary's CPU per request moves by up to 2x within minutes here, so `npm run bench` cannot
// tell a 5 % change from noise; this can, for targets without the adaptive concurrency limiter (the same target
// measured twice agrees within 1 %). With the limiter (the default cachegate) counts move with the limit valgrind's
// slowness drives it to: 386k, 400k and 386k for one build on 2026-12-06. Compare versions in one run, and repeat.
//
//   npm run bench:instructions              http-proxy-3, cachegate, cachegate-nocache, cachegate-floor
//   INSTR_TARGETS=cachegate,cachegate-forward   variants as in bench:ab (http-proxy-3 always first)
//   INSTR_BASELINE_DIR=.bench-base          also the default cachegate compiled from another version of the code
//                                           (built as for bench:ab's AB_BASELINE_DIR, see README)
//   INSTR_BASELINE_VARIANT=cachegate-forward   the baseline build as that variant instead: without the adaptive
//                                           limiter the counts repeat within ~1 %, so a small change shows
//   INSTR_WARMUP (default 15000), INSTR_REQUESTS (default 5000), INSTR_CONNECTIONS (default 50)
//   INSTR_SAME_URL=1                        every request to /x, as `npm run bench` sends them (the default route
//                                           then answers from its hit-for-miss mark instead of leading a flight)
//   INSTR_CACHE_SIM=1                       also simulate the caches: L1 data and last-level misses per request
//   BENCH_V8_DEFAULTS=1                     cachegate without the CLI's V8 flags (proxy/v8-flags.ts); the same
//                                           count either way (403k vs 405k for cachegate-nocache, 2026-12-05).
//                                           With INSTR_CACHE_SIM the counts themselves rise and vary (494k, 578k):
//                                           compare instruction counts only between runs without it.
//
// Each target runs under `valgrind --tool=callgrind --instr-atstart=no`: the warm-up runs uninstrumented (a few
// times slower than native, so the JIT reaches its steady state), then instrumentation is switched on for exactly
// INSTR_REQUESTS requests and the counters are dumped. Requests have their own URLs (`/x?i=N`), as in
// bench:inventory, so on the default route every request is a miss that leads its own flight.
//
// What it does not see: time. Cache misses (unless INSTR_CACHE_SIM), the kernel's share of each syscall, other
// processes on the machine. And under instrumentation the proxy runs ~50x slower, with its threads serialized, so
// whatever is driven by the clock (the adaptive concurrency limit, timers, V8's GC and tiering heuristics) can behave
// differently from a native run. Use it to compare versions of the code and to find where instructions go (the
// dumps stay in the printed directory: `callgrind_annotate <file>`), and `npm run bench` for what the machine does.
// Needs valgrind (`apt-get install -y valgrind`); loopback only; every phase is bounded in count and time.
import { execFile, spawnSync } from "node:child_process";
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import os from "node:os";
import { join, resolve } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { promisify } from "node:util";
import { loadDistinct } from "./load.js";
import { type Child, ROOT, type StartOptions, startChild, stopChild, stopChildren } from "./processes.js";
import { intEnv, VARIANTS } from "./settings.js";
import { table } from "./table.js";

const run = promisify(execFile);
/** Under valgrind a phase is far slower than native: bounds for startup, each load phase and a dump. */
const STARTUP_MS = 300_000;
const PHASE_MS = 900_000;
const DUMP_MS = 60_000;

interface Settings {
  targets: string[];
  baselineDir: string | undefined;
  /** The variant the baseline build runs as (default: the default cachegate). */
  baselineVariant: string;
  warmup: number;
  requests: number;
  connections: number;
  cacheSim: boolean;
  sameUrl: boolean;
}

function readSettings(): Settings {
  const wanted = (process.env.INSTR_TARGETS ?? "cachegate,cachegate-nocache,cachegate-floor")
    .split(",")
    .map((s) => s.trim())
    .filter(Boolean);
  for (const v of wanted) {
    if (v !== "http-proxy-3" && !VARIANTS[v]) {
      throw new Error(
        `INSTR_TARGETS: unknown target "${v}" (known: http-proxy-3, ${Object.keys(VARIANTS).join(", ")})`,
      );
    }
  }
  const baselineVariant = process.env.INSTR_BASELINE_VARIANT || "cachegate";
  if (!VARIANTS[baselineVariant]) {
    throw new Error(
      `INSTR_BASELINE_VARIANT: unknown variant "${baselineVariant}" (known: ${Object.keys(VARIANTS).join(", ")})`,
    );
  }
  return {
    targets: ["http-proxy-3", ...wanted.filter((v) => v !== "http-proxy-3")],
    baselineDir: process.env.INSTR_BASELINE_DIR || undefined,
    baselineVariant,
    warmup: intEnv("INSTR_WARMUP", 15_000, 0, 500_000),
    requests: intEnv("INSTR_REQUESTS", 5_000, 100, 200_000),
    connections: intEnv("INSTR_CONNECTIONS", 50, 1, 500),
    cacheSim: process.env.INSTR_CACHE_SIM === "1",
    sameUrl: process.env.INSTR_SAME_URL === "1",
  };
}

/** Fails with what to install when valgrind or callgrind_control is missing. */
function requireValgrind(): void {
  for (const [cmd, args] of [
    ["valgrind", ["--version"]],
    ["callgrind_control", ["-h"]],
  ] as const) {
    const r = spawnSync(cmd, args, { encoding: "utf8" });
    if (r.error || r.status !== 0) {
      throw new Error(
        `bench:instructions needs ${cmd} (valgrind with callgrind): apt-get install -y valgrind ` +
          `(${r.error?.message ?? `exit ${r.status}`})`,
      );
    }
  }
}

/** Counters of a callgrind dump: its `events:` names against its `totals:` (or summed `summary:`) values. */
function parseCallgrindTotals(text: string): Record<string, number> {
  const events = /^events:\s*(.+)$/m.exec(text)?.[1]?.trim().split(/\s+/);
  const totals = (/^totals:\s*(.+)$/m.exec(text) ?? /^summary:\s*(.+)$/m.exec(text))?.[1]
    ?.trim()
    .split(/\s+/);
  if (!events || !totals) throw new Error("callgrind dump without events/totals lines");
  return Object.fromEntries(events.map((e, i) => [e, Number(totals[i] ?? 0)]));
}

/** The first dump (`<base>.<pid>.1`) once callgrind has written it completely. */
async function readDump(dir: string, base: string, pid: number): Promise<string> {
  const name = `${base}.${pid}.1`;
  const file = join(dir, name);
  const deadline = Date.now() + DUMP_MS;
  while (Date.now() < deadline) {
    if (existsSync(file)) {
      const text = readFileSync(file, "utf8");
      if (/^totals:/m.test(text)) return text;
    }
    await sleep(200);
  }
  throw new Error(`no callgrind dump ${name} in ${dir} after ${DUMP_MS} ms`);
}

async function control(pid: number, ...args: string[]): Promise<void> {
  await run("callgrind_control", [...args, String(pid)], { timeout: DUMP_MS });
}

interface Measured {
  target: string;
  requests: number;
  perRequest: Record<string, number>;
  dump: string;
}

async function measure(
  target: string,
  file: string,
  env: Record<string, string>,
  opts: StartOptions,
  s: Settings,
  dir: string,
): Promise<Measured> {
  const prefix = [
    "valgrind",
    "-q",
    "--tool=callgrind",
    "--instr-atstart=no",
    `--callgrind-out-file=${join(dir, target)}.%p`,
    // The JIT rewrites code in place.
    "--smc-check=all-non-file",
    ...(s.cacheSim ? ["--cache-sim=yes"] : []),
  ];
  const child: Child = await startChild(target, file, env, [], {
    ...opts,
    prefix,
    startupTimeoutMs: STARTUP_MS,
  });
  const pid = child.proc.pid;
  if (pid === undefined) throw new Error(`${target}: no pid`);
  try {
    if (s.warmup > 0) await loadDistinct(child.port, s.warmup, s.connections, 0, PHASE_MS, s.sameUrl);
    await control(pid, "-i", "on");
    await loadDistinct(child.port, s.requests, s.connections, 1_000_000, PHASE_MS, s.sameUrl);
    await control(pid, "-i", "off");
    await control(pid, "-d");
    const text = await readDump(dir, target, pid);
    const totals = parseCallgrindTotals(text);
    const perRequest = Object.fromEntries(Object.entries(totals).map(([k, v]) => [k, v / s.requests]));
    return { target, requests: s.requests, perRequest, dump: join(dir, `${target}.${pid}.1`) };
  } finally {
    await stopChild(child);
  }
}

async function main(): Promise<void> {
  const s = readSettings();
  requireValgrind();
  // Checked before anything is measured: a wrong baseline directory must not cost minutes of valgrind first.
  const baselineDir = s.baselineDir ? resolve(s.baselineDir, "bench") : undefined;
  if (baselineDir && !existsSync(join(baselineDir, "cachegate-server.js"))) {
    throw new Error(`INSTR_BASELINE_DIR: no compiled bench in ${baselineDir} (see README, Performance)`);
  }
  const dir = join(os.tmpdir(), `cachegate-instructions-${new Date().toISOString().replace(/[:.]/g, "-")}`);
  mkdirSync(dir, { recursive: true });

  const upstream = await startChild("upstream", "upstream.ts", {});
  const env = { BENCH_UPSTREAM_URL: upstream.url };
  const jobs: Array<{ name: string; file: string; env: Record<string, string>; opts: StartOptions }> = [
    ...s.targets.map((t) =>
      t === "http-proxy-3"
        ? { name: t, file: "bare-proxy.ts", env, opts: {} }
        : { name: t, file: "cachegate-server.ts", env: { ...env, ...(VARIANTS[t] ?? {}) }, opts: {} },
    ),
    ...(baselineDir
      ? [
          {
            name: s.baselineVariant === "cachegate" ? "baseline" : `baseline ${s.baselineVariant}`,
            file: "cachegate-server.ts",
            env: { ...env, ...(VARIANTS[s.baselineVariant] ?? {}) },
            opts: { benchDir: baselineDir },
          },
        ]
      : []),
  ];
  console.log(
    `bench:instructions: ${jobs.map((j) => j.name).join(", ")}; ${s.warmup} warm-up requests uninstrumented, ` +
      `then ${s.requests} counted, ${s.connections} connections, ${s.sameUrl ? "one URL" : "distinct URLs"}${s.cacheSim ? ", cache simulation" : ""}`,
  );
  console.log(`node ${process.version}, ${os.cpus().length} CPUs; callgrind dumps in ${dir}`);

  const results: Measured[] = [];
  for (const j of jobs) {
    const started = Date.now();
    const m = await measure(j.name, j.file, j.env, j.opts, s, dir);
    results.push(m);
    console.log(
      `${j.name.padEnd(20)} ${Math.round(m.perRequest.Ir ?? 0)} instructions/request (${Math.round((Date.now() - started) / 1000)} s)`,
    );
  }

  const bare = results[0]?.perRequest.Ir ?? Number.NaN;
  const missCols = s.cacheSim ? ["D1mr+D1mw", "DLmr+DLmw"] : [];
  const rows = results.map((m) => {
    const p = m.perRequest;
    const misses = s.cacheSim
      ? [((p.D1mr ?? 0) + (p.D1mw ?? 0)).toFixed(0), ((p.DLmr ?? 0) + (p.DLmw ?? 0)).toFixed(1)]
      : [];
    return [m.target, (p.Ir ?? 0).toFixed(0), `${((p.Ir ?? 0) / bare).toFixed(3)}x`, ...misses];
  });
  console.log(`\n${table([["target", "Ir/request", "vs http-proxy-3", ...missCols], ...rows])}`);

  const date = new Date().toISOString();
  const file = join(ROOT, "bench", "results", `instructions-${date.replace(/:/g, "-")}.json`);
  mkdirSync(join(ROOT, "bench", "results"), { recursive: true });
  writeFileSync(
    file,
    `${JSON.stringify({ benchmark: "instructions", date, node: process.version, settings: s, results }, null, 2)}\n`,
  );
  console.log(`\nresults: ${file}`);
}

try {
  await main();
} catch (err) {
  console.error(`bench:instructions: ${err instanceof Error ? err.message : String(err)}`);
  process.exitCode = 1;
} finally {
  await stopChildren();
}
