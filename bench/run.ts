// Pass-through benchmark (no caching): requests/s and latency of
//   direct        the upstream itself,
//   http-proxy-3  a bare http-proxy-3 proxy with a keep-alive agent (the reference),
//   cachegate     cachegate with the config `--upstream URL` gives, logging at info to /dev/null,
//   cachegate-nocache  the same with the route's cache off (plain forwarding),
//   cachegate-hits     the same with every response cached (memory-tier hits),
// all against one node:http upstream serving a 1 KiB JSON body. The upstream and each proxy run in their own child
// process; autocannon runs here. Every target is warmed up once, then measured in many short slices, one slice per
// target per round, in ABBA order: this machine's speed moves by up to 2x over tens of seconds, and slices of a
// couple of seconds put every target through the same slow and fast spells (10 s runs per target did not: the
// ratio moved between 0.5x and 0.9x from one invocation to the next). Per target, req/s is all its requests over
// all its slices' time; each round's own cachegate/http-proxy-3 ratio is reported too.
//
//   npm run bench                       defaults: 50 connections, 5 s warm-up, 12 rounds of 2 s slices
//   BENCH_DURATION=5 npm run bench      seconds per slice
//   BENCH_CONNECTIONS, BENCH_ROUNDS, BENCH_WARMUP (seconds, 0 = none)
//   BENCH_TARGETS=http-proxy-3,cachegate   a subset (comma-separated); cachegate-forward only when named here
//   BENCH_CPU_PROF=dir                  run the proxy children with `node --cpu-prof`, profiles in dir/<target>/
//
// Reported per target: req/s, median p50/p99 latency of its slices, errors/non-2xx, and (Linux) the CPU µs per
// request of the target's server process, read from /proc, which varies far less than req/s when other work shares
// the machine. Results are printed as a table and written to bench/results/passthrough-<ISO date>.json.
import { execFileSync } from "node:child_process";
import { mkdirSync, writeFileSync } from "node:fs";
import http from "node:http";
import os from "node:os";
import { dirname, join, resolve } from "node:path";
import autocannon from "autocannon";
import { BODY_BYTES } from "./body.js";
import { cpuSeconds, ROOT, startChild, stopChildren } from "./processes.js";
import { intEnv, VARIANTS } from "./settings.js";
import { median } from "./stats.js";
import { table } from "./table.js";

/** The issue's bar: cachegate pass-through at >= 0.8x the requests/s of bare http-proxy-3. */
const TARGET_RATIO = 0.8;

// cachegate-hits: the same cachegate with the route's cache forced on (override, 60 s): after the warm-up's first
// request every request is a memory-tier hit. 'direct' (a node:http server answering a prebuilt body) is the ceiling.
// cachegate-nocache: the route's cache off, so nothing is looked up, coalesced or stored: the plain forwarding path.
// "cachegate" looks every request up, finds nothing, and forwards it; the first response marks the URL uncacheable
// (hit-for-miss, cache.hitForMiss), so from then on its misses go upstream independently, without coalescing.
// (Before hit-for-miss they coalesced into waves: each waited for a leader's headers, learned that the response was
// uncacheable and went together, a load shape cheaper per request than 50 independent requests at saturation but
// one extra upstream round trip of latency per request; 0.89x then, against 0.66x for cachegate-nocache.)
// cachegate-forward (only when named in BENCH_TARGETS): issue 2's own scope, forwarding with access lines and metrics
// but without the cache, circuit breaker and concurrency limiter that later issues added.
const ALL_TARGETS = [
  "direct",
  "http-proxy-3",
  "cachegate",
  "cachegate-nocache",
  "cachegate-hits",
  "cachegate-forward",
] as const;
type TargetName = (typeof ALL_TARGETS)[number];
const DEFAULT_TARGETS = ALL_TARGETS.filter((t) => t !== "cachegate-forward");

interface Settings {
  durationS: number;
  warmupS: number;
  connections: number;
  rounds: number;
  targets: TargetName[];
  cpuProfDir: string | undefined;
}

function readSettings(): Settings {
  const rawTargets = process.env.BENCH_TARGETS;
  let targets: TargetName[] = [...DEFAULT_TARGETS];
  if (rawTargets) {
    const wanted = rawTargets.split(",").map((s) => s.trim());
    for (const t of wanted) {
      if (!ALL_TARGETS.includes(t as TargetName)) {
        throw new Error(`BENCH_TARGETS: unknown target "${t}" (known: ${ALL_TARGETS.join(", ")})`);
      }
    }
    targets = ALL_TARGETS.filter((t) => wanted.includes(t));
  }
  return {
    durationS: intEnv("BENCH_DURATION", 2, 1, 120),
    warmupS: intEnv("BENCH_WARMUP", 5, 0, 60),
    connections: intEnv("BENCH_CONNECTIONS", 50, 1, 1000),
    rounds: intEnv("BENCH_ROUNDS", 12, 1, 100),
    targets,
    cpuProfDir: process.env.BENCH_CPU_PROF ? resolve(process.env.BENCH_CPU_PROF) : undefined,
  };
}

// ---------------------------------------------------------------------------------------------- measuring

/** CPU µs per request of one process over a run, or undefined when unknown. */
function cpuPerRequest(before: number | undefined, after: number | undefined, requests: number) {
  return before === undefined || after === undefined || requests === 0
    ? undefined
    : ((after - before) * 1e6) / requests;
}

/** One request outside the load run: the target must answer 200 with the upstream's 1 KiB body. */
function sanityCheck(target: string, url: string): Promise<void> {
  return new Promise((resolvePromise, reject) => {
    const req = http.get(url, { agent: false, timeout: 5_000 }, (res) => {
      let bytes = 0;
      res.on("data", (c: Buffer) => {
        bytes += c.length;
      });
      res.on("end", () => {
        // The variant really is what it claims: cache off answers BYPASS, the default route a MISS.
        const xCache = res.headers["x-cache"];
        const wantCache = VARIANTS[target]?.BENCH_CACHE_OFF
          ? "BYPASS"
          : target === "cachegate"
            ? "MISS"
            : undefined;
        if (res.statusCode !== 200 || bytes !== BODY_BYTES) {
          reject(new Error(`${target}: sanity check got ${res.statusCode} with ${bytes} bytes`));
        } else if (wantCache !== undefined && xCache !== wantCache) {
          reject(new Error(`${target}: sanity check got X-Cache ${String(xCache)}, expected ${wantCache}`));
        } else {
          resolvePromise();
        }
      });
      res.on("error", reject);
    });
    req.on("timeout", () => req.destroy(new Error(`${target}: sanity check timed out`)));
    req.on("error", reject);
  });
}

/** autocannon for `durationS`, bounded: stopped after duration + 15 s, abandoned 5 s after that. */
function cannon(url: string, connections: number, durationS: number): Promise<autocannon.Result> {
  return new Promise((resolvePromise, reject) => {
    let stopTimer: NodeJS.Timeout | undefined;
    let giveUpTimer: NodeJS.Timeout | undefined;
    const instance = autocannon(
      { url, connections, duration: durationS, pipelining: 1, timeout: 10 },
      (err, result) => {
        clearTimeout(stopTimer);
        clearTimeout(giveUpTimer);
        if (err) reject(err instanceof Error ? err : new Error(String(err)));
        else resolvePromise(result);
      },
    );
    stopTimer = setTimeout(() => instance.stop(), (durationS + 15) * 1000);
    giveUpTimer = setTimeout(
      () => reject(new Error(`autocannon against ${url} did not finish`)),
      (durationS + 20) * 1000,
    );
  });
}

interface RunResult {
  target: TargetName;
  round: number;
  rps: number;
  p50Ms: number;
  p99Ms: number;
  meanMs: number;
  requests: number;
  errors: number;
  timeouts: number;
  non2xx: number;
  durationS: number;
  /** CPU µs per request of the target's server process (the upstream, for `direct`). */
  cpuUsPerReq: number | undefined;
  /** CPU µs per request of the upstream process during the run. */
  upstreamCpuUsPerReq: number | undefined;
}

function toRun(
  target: TargetName,
  round: number,
  r: autocannon.Result,
  cpu: {
    target: [number | undefined, number | undefined];
    upstream: [number | undefined, number | undefined];
  },
): RunResult {
  return {
    target,
    round,
    rps: r.requests.average,
    p50Ms: r.latency.p50,
    p99Ms: r.latency.p99,
    meanMs: r.latency.average,
    requests: r.requests.total,
    errors: r.errors,
    timeouts: r.timeouts,
    non2xx: r.non2xx,
    durationS: r.duration,
    cpuUsPerReq: cpuPerRequest(...cpu.target, r.requests.total),
    upstreamCpuUsPerReq: cpuPerRequest(...cpu.upstream, r.requests.total),
  };
}

const sum = (values: number[]) => values.reduce((a, b) => a + b, 0);

/** `target`'s req/s divided by http-proxy-3's in the same round, for every round that ran both. */
function roundRatios(runs: RunResult[], target: TargetName, rounds: number): number[] {
  const out: number[] = [];
  for (let round = 1; round <= rounds; round++) {
    const t = runs.find((r) => r.round === round && r.target === target);
    const bare = runs.find((r) => r.round === round && r.target === "http-proxy-3");
    if (t && bare && bare.rps > 0) out.push(t.rps / bare.rps);
  }
  return out;
}

interface Summary {
  target: TargetName;
  runs: number;
  rps: number;
  p50Ms: number;
  p99Ms: number;
  rpsMin: number;
  rpsMax: number;
  cpuUsPerReq: number | undefined;
  errors: number;
  non2xx: number;
}

function summarize(target: TargetName, runs: RunResult[]): Summary {
  const mine = runs.filter((r) => r.target === target);
  return {
    target,
    runs: mine.length,
    // All requests over all slices' time: every slice counts by its length, a stalled one included.
    rps: sum(mine.map((r) => r.requests)) / sum(mine.map((r) => r.durationS)),
    p50Ms: median(mine.map((r) => r.p50Ms)),
    p99Ms: median(mine.map((r) => r.p99Ms)),
    rpsMin: Math.min(...mine.map((r) => r.rps)),
    rpsMax: Math.max(...mine.map((r) => r.rps)),
    cpuUsPerReq: mine.some((r) => r.cpuUsPerReq === undefined)
      ? undefined
      : sum(mine.map((r) => r.cpuUsPerReq! * r.requests)) / sum(mine.map((r) => r.requests)),
    errors: sum(mine.map((r) => r.errors)),
    non2xx: sum(mine.map((r) => r.non2xx)),
  };
}

// ---------------------------------------------------------------------------------------------- reporting

const fmt = (n: number | undefined, digits = 0) =>
  n !== undefined && Number.isFinite(n) ? n.toFixed(digits) : "n/a";

function gitInfo(): { commit: string | undefined; dirty: string[] } {
  try {
    const commit = execFileSync("git", ["rev-parse", "HEAD"], { cwd: ROOT, encoding: "utf8" }).trim();
    const dirty = execFileSync("git", ["status", "--porcelain", "--", "proxy", "config", "package.json"], {
      cwd: ROOT,
      encoding: "utf8",
    })
      .split("\n")
      .filter(Boolean);
    return { commit, dirty };
  } catch {
    return { commit: undefined, dirty: [] };
  }
}

// ---------------------------------------------------------------------------------------------- main

async function main(): Promise<number> {
  const settings = readSettings();
  const { durationS, warmupS, connections, rounds, targets, cpuProfDir } = settings;
  const proxies = targets.filter((t) => t !== "direct");
  const runsPlanned = rounds * targets.length;
  const plannedS = warmupS * targets.length + durationS * runsPlanned;
  console.log(
    `cachegate pass-through benchmark: ${connections} connections, ${warmupS} s warm-up per target, ` +
      `${rounds} round(s) of ${durationS} s slices per target, targets ${targets.join(", ")} (~${plannedS} s of load)`,
  );
  console.log(
    `node ${process.version}, ${os.cpus().length} CPUs, load average ${os
      .loadavg()
      .map((l) => l.toFixed(2))
      .join(" ")}`,
  );

  const upstream = await startChild("upstream", "upstream.ts", {});
  const env = { BENCH_UPSTREAM_URL: upstream.url };
  // One directory per child: with `--import tsx` the module loader runs on its own thread, which writes a profile too.
  const profArgs = (name: string) =>
    cpuProfDir ? ["--cpu-prof", "--cpu-prof-dir", join(cpuProfDir, name)] : [];
  const started = await Promise.all(
    proxies.map((t) =>
      t === "http-proxy-3"
        ? startChild(t, "bare-proxy.ts", env, profArgs(t))
        : startChild(t, "cachegate-server.ts", { ...env, ...(VARIANTS[t] ?? {}) }, profArgs(t)),
    ),
  );
  const urls = new Map<TargetName, string>([["direct", upstream.url]]);
  const pids = new Map<TargetName, number | undefined>([["direct", upstream.proc.pid]]);
  for (const [i, t] of proxies.entries()) {
    urls.set(t, started[i]!.url);
    pids.set(t, started[i]!.proc.pid);
  }
  for (const t of targets) await sanityCheck(t, urls.get(t)!);
  console.log(
    `children ready: ${[upstream, ...started].map((c) => `${c.name} pid ${c.proc.pid} ${c.url}`).join(", ")}`,
  );

  if (warmupS > 0) {
    for (const t of targets) {
      const r = await cannon(urls.get(t)!, connections, warmupS);
      console.log(`warm-up   ${t.padEnd(12)} ${fmt(r.requests.average).padStart(7)} req/s (discarded)`);
    }
  }

  const runs: RunResult[] = [];
  for (let round = 1; round <= rounds; round++) {
    // ABBA: the proxies alternate which goes first, so a slow drift of the machine does not favour either.
    const order: TargetName[] = [
      ...(targets.includes("direct") ? (["direct"] as const) : []),
      ...(round % 2 === 1 ? proxies : [...proxies].reverse()),
    ];
    for (const t of order) {
      const pid = pids.get(t);
      const before = [cpuSeconds(pid), cpuSeconds(upstream.proc.pid)] as const;
      const result = await cannon(urls.get(t)!, connections, durationS);
      const cpu = {
        target: [before[0], cpuSeconds(pid)] as [number | undefined, number | undefined],
        upstream: [before[1], cpuSeconds(upstream.proc.pid)] as [number | undefined, number | undefined],
      };
      runs.push(toRun(t, round, result, cpu));
    }
    // One line per round: req/s (CPU µs/req) per target, and this round's cachegate/http-proxy-3 ratio.
    const mine = runs.filter((r) => r.round === round);
    const bareRps = mine.find((r) => r.target === "http-proxy-3")?.rps;
    const gateRps = mine.find((r) => r.target === "cachegate")?.rps;
    console.log(
      `round ${String(round).padStart(2)}/${rounds}  ` +
        targets
          .map((t) => mine.find((r) => r.target === t)!)
          .map(
            (r) =>
              `${r.target} ${fmt(r.rps)} (${fmt(r.cpuUsPerReq)} µs)${r.errors + r.non2xx > 0 ? ` ERR ${r.errors + r.non2xx}` : ""}`,
          )
          .join("  ") +
        (bareRps && gateRps ? `  ratio ${(gateRps / bareRps).toFixed(2)}` : ""),
    );
  }

  const summaries = targets.map((t) => summarize(t, runs));
  const by = new Map(summaries.map((s) => [s.target, s]));
  console.log(
    `\n${rounds} slice(s) of ${durationS} s per target, ${connections} connections, 1 KiB JSON, loopback ` +
      "(req/s and CPU over all slices; p50/p99 the median of the slices'):\n",
  );
  console.log(
    table([
      ["target", "req/s", "min-max req/s", "p50 ms", "p99 ms", "CPU µs/req", "errors", "non-2xx"],
      ...summaries.map((s) => [
        s.target,
        fmt(s.rps),
        `${fmt(s.rpsMin)}-${fmt(s.rpsMax)}`,
        fmt(s.p50Ms, 1),
        fmt(s.p99Ms, 1),
        fmt(s.cpuUsPerReq),
        String(s.errors),
        String(s.non2xx),
      ]),
    ]),
  );

  const gate = by.get("cachegate");
  const bare = by.get("http-proxy-3");
  const direct = by.get("direct");
  const hits = by.get("cachegate-hits");
  const nocache = by.get("cachegate-nocache");
  const forward = by.get("cachegate-forward");
  const ratios = {
    cachegateNocacheVsHttpProxy3: nocache && bare ? nocache.rps / bare.rps : undefined,
    cachegateForwardVsHttpProxy3: forward && bare ? forward.rps / bare.rps : undefined,
    cachegateHitsVsDirect: hits && direct ? hits.rps / direct.rps : undefined,
    cachegateVsHttpProxy3: gate && bare ? gate.rps / bare.rps : undefined,
    cachegateVsDirect: gate && direct ? gate.rps / direct.rps : undefined,
    httpProxy3VsDirect: bare && direct ? bare.rps / direct.rps : undefined,
    cpuPerRequestCachegateVsHttpProxy3:
      gate?.cpuUsPerReq && bare?.cpuUsPerReq ? gate.cpuUsPerReq / bare.cpuUsPerReq : undefined,
  };
  console.log("");
  if (ratios.cachegateVsHttpProxy3 !== undefined)
    console.log(`cachegate / http-proxy-3 req/s: ${ratios.cachegateVsHttpProxy3.toFixed(2)}x`);
  if (ratios.cachegateNocacheVsHttpProxy3 !== undefined)
    console.log(
      `cachegate (cache off) / http-proxy-3 req/s: ${ratios.cachegateNocacheVsHttpProxy3.toFixed(2)}x`,
    );
  if (ratios.cachegateForwardVsHttpProxy3 !== undefined)
    console.log(
      `cachegate-forward (issue 2's scope) / http-proxy-3 req/s: ${ratios.cachegateForwardVsHttpProxy3.toFixed(2)}x`,
    );
  if (ratios.cachegateVsDirect !== undefined)
    console.log(`cachegate / direct req/s:       ${ratios.cachegateVsDirect.toFixed(2)}x`);
  if (ratios.cachegateHitsVsDirect !== undefined)
    console.log(
      `cachegate hits / direct req/s:  ${ratios.cachegateHitsVsDirect.toFixed(2)}x (the Node ceiling)`,
    );
  if (ratios.httpProxy3VsDirect !== undefined)
    console.log(`http-proxy-3 / direct req/s:    ${ratios.httpProxy3VsDirect.toFixed(2)}x`);
  if (ratios.cpuPerRequestCachegateVsHttpProxy3 !== undefined) {
    console.log(
      `cachegate / http-proxy-3 CPU per request: ${ratios.cpuPerRequestCachegateVsHttpProxy3.toFixed(2)}x ` +
        "(server process only; steadier than req/s on a busy machine)",
    );
  }
  // Each round runs the proxies back to back (ABBA); the spread of the rounds' own ratios shows how far the overall
  // figure can be trusted.
  const perRound = {
    cachegate: roundRatios(runs, "cachegate", rounds),
    cachegateNocache: roundRatios(runs, "cachegate-nocache", rounds),
    cachegateForward: roundRatios(runs, "cachegate-forward", rounds),
  };
  for (const [label, list] of [
    ["cachegate", perRound.cachegate],
    ["cachegate (cache off)", perRound.cachegateNocache],
    ["cachegate-forward", perRound.cachegateForward],
  ] as const) {
    if (list.length > 0) {
      console.log(
        `${label} / http-proxy-3 req/s per round: ${list.map((r) => r.toFixed(2)).join(" ")} ` +
          `(median ${median(list).toFixed(2)}x)`,
      );
    }
  }
  // Met only when both the overall ratio and the median of the rounds' own ratios reach the target.
  const roundsMedian = median(perRound.cachegate);
  const met =
    ratios.cachegateVsHttpProxy3 === undefined
      ? undefined
      : ratios.cachegateVsHttpProxy3 >= TARGET_RATIO && roundsMedian >= TARGET_RATIO;
  if (met !== undefined) {
    console.log(
      `Issue target: cachegate pass-through >= ${TARGET_RATIO}x bare http-proxy-3 req/s: ` +
        `${met ? "MET" : "NOT MET"} (${ratios.cachegateVsHttpProxy3!.toFixed(2)}x; ` +
        `median of rounds ${roundsMedian.toFixed(2)}x)`,
    );
  }
  if (direct) {
    console.log(
      "Note: autocannon, the upstream and the proxy share this machine's CPUs; 'direct' is bounded by autocannon itself. " +
        "CPU µs/req is the target's server process (for 'direct', the upstream).",
    );
  }

  const date = new Date();
  const file = join(ROOT, "bench", "results", `passthrough-${date.toISOString().replace(/:/g, "-")}.json`);
  mkdirSync(dirname(file), { recursive: true });
  const report = {
    benchmark: "passthrough",
    date: date.toISOString(),
    machine: {
      node: process.version,
      platform: `${os.platform()} ${os.release()} ${os.arch()}`,
      cpus: os.cpus().length,
      cpuModel: os.cpus()[0]?.model,
      loadAverageAtEnd: os.loadavg(),
    },
    git: gitInfo(),
    settings: {
      ...settings,
      bodyBytes: BODY_BYTES,
      pipelining: 1,
      order: "warm-up each, then per round one slice of direct + proxies ABBA",
    },
    summary: summaries,
    ratios,
    perRound,
    target: { cachegateVsHttpProxy3AtLeast: TARGET_RATIO, met },
    runs,
  };
  writeFileSync(file, `${JSON.stringify(report, null, 2)}\n`);
  console.log(`\nresults: ${file}`);
  return 0;
}

// Hard bound on the whole run, whatever hangs: startup, every warm-up and run with its grace, and shutdown.
function watchdog(): void {
  let s: Settings;
  try {
    s = readSettings();
  } catch {
    return;
  }
  const limitS = 60 + s.targets.length * (s.warmupS + 25) + s.rounds * s.targets.length * (s.durationS + 25);
  setTimeout(() => {
    console.error(`bench: still running after ${limitS} s; stopping`);
    stopChildren().finally(() => process.exit(1));
  }, limitS * 1000).unref();
}

for (const signal of ["SIGINT", "SIGTERM"] as const) {
  process.once(signal, () => {
    console.error(`bench: ${signal}; stopping children`);
    stopChildren().finally(() => process.exit(130));
  });
}

watchdog();
let exitCode = 1;
try {
  exitCode = await main();
} catch (err) {
  console.error(`bench: ${err instanceof Error ? err.message : String(err)}`);
} finally {
  await stopChildren();
}
process.exit(exitCode);
