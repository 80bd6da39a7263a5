// Concurrent A/B: the cost of cachegate variants relative to bare http-proxy-3, measured so that a noisy machine hits
// every variant alike. All proxies are pinned to CPU 1 and loaded at the same time (one wrk per proxy, wrk and the
// upstream pinned to CPU 0): the scheduler shares CPU 1 fairly, so in each round a variant's req/s divided by
// http-proxy-3's is its cost ratio, whatever the machine's speed was in that round. On these shared machines this
// spread ±3 % where sequential runs (`npm run bench`) spread ±25 %. Use it to compare changes; `npm run bench`
// remains the figure of record (autocannon, unpinned, one target at a time).
//
//   npm run bench:ab                    defaults: 50 connections per wrk, 5 s warm-up, 5 rounds of 5 s
//   AB_TARGETS=cachegate,cachegate-nocache,cachegate-warn   variants besides http-proxy-3 (always first); the
//     ablations cachegate-nobreaker, -nolimit, -forward (no cache, breaker or limiter) and -floor (that, and no
//     access lines) price one feature each. More than three variants at once spreads CPU 1 thin: prefer pairs.
//   AB_TARGETS=cachegate,cachegate+--single-threaded-gc   a variant with node options after "+" (each its own)
//   AB_ROUNDS, AB_DURATION (s), AB_CONNECTIONS
//   AB_BASELINE_DIR=.bench-base         also run the default cachegate compiled from another version of the code, to
//     compare two versions in one run. Make it inside this checkout (so node_modules resolve), e.g.
//     git stash && npx tsc -p tsconfig.bench.json --outDir .bench-base && git stash pop
//
// Needs Linux with at least 2 CPUs, `taskset` (util-linux) and `wrk` (apt-get install wrk). Loopback only; every run
// is bounded by AB_DURATION. Results: bench/results/ab-<ISO date>.json.
import { existsSync, mkdirSync, writeFileSync } from "node:fs";
import os from "node:os";
import { join, resolve } from "node:path";
import { need, wrkOnCpu0 } from "./pinned-wrk.js";
import { cpuSeconds, ROOT, startChild, stopChildren } from "./processes.js";
import { baseVariant, intEnv, nodeArgs, VARIANTS } from "./settings.js";

const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)] as number;
};

async function main(): Promise<number> {
  if (process.platform !== "linux" || os.cpus().length < 2)
    throw new Error("bench:ab needs Linux with 2+ CPUs");
  need("bench:ab", "taskset", "util-linux");
  need("bench:ab", "wrk", "apt-get install wrk");
  const rounds = intEnv("AB_ROUNDS", 5, 1, 50);
  const duration = intEnv("AB_DURATION", 5, 1, 60);
  const connections = intEnv("AB_CONNECTIONS", 50, 1, 1000);
  const variants = (process.env.AB_TARGETS ?? "cachegate,cachegate-nocache").split(",").map((s) => s.trim());
  for (const v of variants) {
    if (!VARIANTS[baseVariant(v)])
      throw new Error(`AB_TARGETS: unknown "${v}" (known: ${Object.keys(VARIANTS).join(", ")})`);
  }

  const upstream = await startChild("upstream", "upstream.ts", {}, [], { cpu: 0 });
  const env = { BENCH_UPSTREAM_URL: upstream.url };
  const targets = [
    { name: "http-proxy-3", child: await startChild("http-proxy-3", "bare-proxy.ts", env, [], { cpu: 1 }) },
  ];
  const baselineDir = process.env.AB_BASELINE_DIR;
  if (baselineDir) {
    const dir = resolve(baselineDir, "bench");
    if (!existsSync(join(dir, "cachegate-server.js")))
      throw new Error(`AB_BASELINE_DIR: no compiled bench in ${dir} (see the header of bench/ab.ts)`);
    targets.push({
      name: "baseline",
      child: await startChild("baseline", "cachegate-server.ts", env, [], { cpu: 1, benchDir: dir }),
    });
  }
  for (const v of variants) {
    targets.push({
      name: v,
      child: await startChild(
        v,
        "cachegate-server.ts",
        { ...env, ...VARIANTS[baseVariant(v)] },
        nodeArgs(v),
        { cpu: 1 },
      ),
    });
  }
  console.log(
    `bench:ab: ${targets.map((t) => t.name).join(", ")} on CPU 1, wrk on CPU 0, ${connections} connections each, ` +
      `${rounds} rounds of ${duration} s`,
  );
  await Promise.all(targets.map((t) => wrkOnCpu0(`${t.child.url}/ab`, connections, 5)));

  const results = targets.map(() => [] as Array<{ rps: number; cpuUsPerReq: number | undefined }>);
  for (let r = 0; r < rounds; r++) {
    const before = targets.map((t) => cpuSeconds(t.child.proc.pid));
    const rps = await Promise.all(targets.map((t) => wrkOnCpu0(`${t.child.url}/ab`, connections, duration)));
    targets.forEach((t, i) => {
      const a = before[i];
      const b = cpuSeconds(t.child.proc.pid);
      const cpu =
        a !== undefined && b !== undefined ? ((b - a) * 1e6) / ((rps[i] as number) * duration) : undefined;
      results[i]?.push({ rps: rps[i] as number, cpuUsPerReq: cpu });
    });
    console.log(
      `round ${r + 1}/${rounds}: ${targets.map((t, i) => `${t.name} ${Math.round(rps[i] as number)}`).join("  ")}`,
    );
  }

  const base = results[0] as Array<{ rps: number }>;
  const summary = targets.map((t, i) => {
    const runs = results[i] ?? [];
    const ratios = runs.map((x, k) => x.rps / (base[k] as { rps: number }).rps);
    const cpus = runs.flatMap((x) => (x.cpuUsPerReq === undefined ? [] : [x.cpuUsPerReq]));
    return {
      target: t.name,
      ratio: median(ratios),
      ratios,
      cpuUsPerReq: cpus.length ? median(cpus) : undefined,
    };
  });
  console.log("\nreq/s relative to http-proxy-3 in the same round (median [per round]), CPU µs per request:");
  for (const s of summary) {
    console.log(
      `  ${s.target.padEnd(18)} ${s.ratio.toFixed(3)}  [${s.ratios.map((x) => x.toFixed(2)).join(" ")}]  ` +
        `${s.cpuUsPerReq === undefined ? "-" : s.cpuUsPerReq.toFixed(0)} µs`,
    );
  }
  const dir = join(ROOT, "bench", "results");
  mkdirSync(dir, { recursive: true });
  const file = join(dir, `ab-${new Date().toISOString().replace(/:/g, "-")}.json`);
  writeFileSync(
    file,
    `${JSON.stringify({ date: new Date().toISOString(), rounds, duration, connections, summary }, null, 2)}\n`,
  );
  console.log(`\nresults: ${file}`);
  return 0;
}

let code = 1;
try {
  code = await main();
} catch (err) {
  console.error(`bench:ab: ${(err as Error).message}`);
} finally {
  await stopChildren();
}
process.exit(code);
