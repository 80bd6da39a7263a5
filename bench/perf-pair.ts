// Where the time goes, per request: two proxies pinned together on CPU 1 (wrk and the upstream on CPU 0), sampled
// by `perf record` while both are loaded, and each process's samples turned into CPU µs per request — by kind
// (JIT-compiled JavaScript, V8 builtins, V8 runtime, node/libuv/llhttp, libc, kernel, GC), and the symbols whose
// cost differs most between the two. Loaded at the same time on the same CPU, both meet the same machine: on
// 2026-12-06 this priced the access log and the circuit breaker at ~3 % of a request each with far less spread than
// req/s ratios, and showed the same node code running slower in cachegate than in bare http-proxy-3.
//
//   npm run bench:perf                               http-proxy-3 against cachegate, 10 s after an 8 s warm-up
//   PERF_PAIR=cachegate-warn,cachegate               any two of http-proxy-3 and the bench:ab variants (settings.ts)
//   PERF_PAIR=cachegate,cachegate+--some-v8-flag     node options after "+" (as in bench:ab), to price a V8 flag
//   PERF_BASELINE_DIR=.bench-base                    the second target compiled from another version (see bench:ab)
//   PERF_SECONDS, PERF_CONNECTIONS, PERF_TOP (symbols listed, default 25)
//
// Needs Linux with 2+ CPUs, `perf` (linux-perf / linux-tools), `taskset` and `wrk`; run as root or with
// kernel.perf_event_paranoid <= 0. Loopback only; every run is bounded by PERF_SECONDS. Prints only.
import { execFile } from "node:child_process";
import { existsSync, readdirSync, rmSync } from "node:fs";
import os from "node:os";
import { join, resolve } from "node:path";
import { promisify } from "node:util";
import { need, wrkOnCpu0 } from "./pinned-wrk.js";
import { ROOT, startChild, stopChildren } from "./processes.js";
import { baseVariant, intEnv, nodeArgs, VARIANTS } from "./settings.js";

const run = promisify(execFile);
const FREQ = 4000;
/** The profiled children, for cleaning up their perf files. */
const childPids: number[] = [];

/** The kind of code a sampled leaf frame is. */
export function kindOf(symbol: string, dso: string): string {
  if (dso.includes("kernel")) return "kernel";
  if (dso.includes("perf-") || symbol.startsWith("JS:")) return "JavaScript (JIT)";
  if (symbol.startsWith("Builtins_")) return "V8 builtins";
  if (/Heap|Scaveng|Marking|Sweep|Evacuat|GC/.test(symbol)) return "GC";
  if (symbol.startsWith("v8::")) return "V8 runtime";
  if (/^(node::|uv_|uv__|llhttp)/.test(symbol)) return "node, libuv, llhttp";
  if (dso.includes("libc")) return "libc";
  return "other";
}

interface Profile {
  kinds: Map<string, number>;
  symbols: Map<string, number>;
}

/** Leaf samples per pid from `perf script -G -F pid,ip,sym,dso` output. */
export function parseLeaves(text: string, pids: number[]): Map<number, Profile> {
  const out = new Map<number, Profile>(pids.map((p) => [p, { kinds: new Map(), symbols: new Map() }]));
  const add = (m: Map<string, number>, k: string) => m.set(k, (m.get(k) ?? 0) + 1);
  for (const line of text.split("\n")) {
    const m = /^\s*(\d+)\s+[0-9a-f]+\s+(.*?)\s+\((.*)\)\s*$/.exec(line);
    if (!m) continue;
    const profile = out.get(Number(m[1]));
    if (!profile) continue;
    const symbol = (m[2] as string).replace(/^JS:[*~^+]?/, "JS:");
    add(profile.kinds, kindOf(symbol, m[3] as string));
    add(
      profile.symbols,
      symbol.replace(/file:\/\/\/.*?\/\.bench-[a-z]+\//, "").replace(/\S*node_modules\//, ""),
    );
  }
  return out;
}

async function main(): Promise<number> {
  if (process.platform !== "linux" || os.cpus().length < 2)
    throw new Error("bench:perf needs Linux with 2+ CPUs");
  need("bench:perf", "perf", "apt-get install linux-perf");
  need("bench:perf", "taskset", "util-linux");
  need("bench:perf", "wrk", "apt-get install wrk");
  const seconds = intEnv("PERF_SECONDS", 10, 2, 60);
  const connections = intEnv("PERF_CONNECTIONS", 50, 1, 1000);
  const top = intEnv("PERF_TOP", 25, 0, 200);
  const pair = (process.env.PERF_PAIR ?? "http-proxy-3,cachegate").split(",").map((s) => s.trim());
  if (pair.length !== 2) throw new Error("PERF_PAIR: give exactly two targets");
  for (const t of pair.map(baseVariant)) {
    if (t !== "http-proxy-3" && !VARIANTS[t])
      throw new Error(`PERF_PAIR: unknown "${t}" (known: http-proxy-3, ${Object.keys(VARIANTS).join(", ")})`);
  }
  const baselineDir = process.env.PERF_BASELINE_DIR;
  if (baselineDir && !existsSync(join(resolve(baselineDir), "bench", "cachegate-server.js")))
    throw new Error(
      `PERF_BASELINE_DIR: no compiled bench in ${resolve(baselineDir, "bench")} (see bench:ab)`,
    );

  const upstream = await startChild("upstream", "upstream.ts", {}, [], { cpu: 0 });
  const env = { BENCH_UPSTREAM_URL: upstream.url };
  const children = await Promise.all(
    pair.map((t, i) =>
      startChild(
        t,
        baseVariant(t) === "http-proxy-3" ? "bare-proxy.ts" : "cachegate-server.ts",
        { ...env, ...(VARIANTS[baseVariant(t)] ?? {}) },
        ["--perf-basic-prof", ...nodeArgs(t)],
        { cpu: 1, ...(i === 1 && baselineDir ? { benchDir: resolve(baselineDir, "bench") } : {}) },
      ),
    ),
  );
  for (const c of children) if (c.proc.pid !== undefined) childPids.push(c.proc.pid);
  const names = pair.map((t, i) => (i === 1 && baselineDir ? `${t} (${baselineDir})` : t));
  console.log(`bench:perf: ${names.join(" and ")} on CPU 1, wrk and the upstream on CPU 0, ${seconds} s`);
  await Promise.all(children.map((c) => wrkOnCpu0(c.url, connections, 8)));

  const data = join(os.tmpdir(), `cachegate-perf-${process.pid}.data`);
  const loads = Promise.all(children.map((c) => wrkOnCpu0(c.url, connections, seconds + 2)));
  await new Promise((r) => setTimeout(r, 1000));
  await run("perf", [
    "record",
    "-q",
    "-F",
    String(FREQ),
    "-C",
    "1",
    "-o",
    data,
    "--",
    "sleep",
    String(seconds),
  ]);
  const rps = await loads;
  const { stdout } = await run("perf", ["script", "-i", data, "-G", "-F", "pid,ip,sym,dso"], {
    maxBuffer: 1 << 30,
  });
  rmSync(data, { force: true });
  const pids = children.map((c) => c.proc.pid as number);
  const profiles = parseLeaves(stdout, pids);

  // Samples → CPU µs per request: samples / FREQ seconds over (req/s × seconds) requests.
  const us = (i: number, samples: number) => (samples / FREQ / ((rps[i] as number) * seconds)) * 1e6;
  const [a, b] = [profiles.get(pids[0] as number), profiles.get(pids[1] as number)] as [Profile, Profile];
  const total = (p: Profile) => [...p.kinds.values()].reduce((x, y) => x + y, 0);
  const headers = [pair[0] as string, baselineDir ? "baseline" : (pair[1] as string)];
  const width = Math.max(12, ...headers.map((h) => h.length + 2));
  const col = (s: string) => s.padStart(width);
  console.log(
    `\nreq/s: ${names[0]} ${Math.round(rps[0] as number)}, ${names[1]} ${Math.round(rps[1] as number)}`,
  );
  console.log(
    `\nCPU µs per request${" ".repeat(14)}${col(headers[0] as string)}${col(headers[1] as string)}  difference`,
  );
  const row = (label: string, x: number, y: number) =>
    console.log(
      `  ${label.padEnd(30)}${col(x.toFixed(1))}${col(y.toFixed(1))}  ${(y - x >= 0 ? "+" : "") + (y - x).toFixed(1)}`,
    );
  row("all", us(0, total(a)), us(1, total(b)));
  const kinds = [...new Set([...a.kinds.keys(), ...b.kinds.keys()])];
  for (const k of kinds.sort((x, y) => us(1, b.kinds.get(y) ?? 0) - us(1, b.kinds.get(x) ?? 0))) {
    row(k, us(0, a.kinds.get(k) ?? 0), us(1, b.kinds.get(k) ?? 0));
  }
  if (top > 0) {
    const symbols = [...new Set([...a.symbols.keys(), ...b.symbols.keys()])];
    const diff = (s: string) => us(1, b.symbols.get(s) ?? 0) - us(0, a.symbols.get(s) ?? 0);
    symbols.sort((x, y) => Math.abs(diff(y)) - Math.abs(diff(x)));
    console.log(`\nsymbols whose cost differs most (µs per request, ${names[1]} minus ${names[0]}):`);
    for (const s of symbols.slice(0, top)) {
      const d = diff(s);
      console.log(`  ${((d >= 0 ? "+" : "") + d.toFixed(2)).padStart(7)}  ${s.slice(0, 110)}`);
    }
  }
  return 0;
}

// Only when run (a test may import the parser).
if (process.argv[1]?.endsWith("perf-pair.js") || process.argv[1]?.endsWith("perf-pair.ts")) {
  let code = 1;
  try {
    code = await main();
  } catch (err) {
    console.error(`bench:perf: ${(err as Error).message}`);
  } finally {
    await stopChildren();
    // --perf-basic-prof leaves /tmp/perf-<pid>.map and, in the children's working directory, isolate-*-<pid>-v8.log.
    for (const pid of childPids) {
      rmSync(`/tmp/perf-${pid}.map`, { force: true });
      for (const f of readdirSync(ROOT))
        if (f.endsWith(`-${pid}-v8.log`)) rmSync(join(ROOT, f), { force: true });
    }
  }
  process.exit(code);
}
