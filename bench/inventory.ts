// Work inventory: what each proxy does per request, counted exactly rather than timed. On these shared machines the
// same binary's CPU per request moves by 2x within minutes, so a change of a few percent cannot be seen in req/s;
// the number of listeners added and removed, events emitted, promises, timers and ticks per request can, and
// every one of them costs CPU. Use it next to `npm run bench:ab`: a change that should make the path cheaper must
// show here as fewer operations.
//
//   npm run bench:inventory                 http-proxy-3 and cachegate, cachegate-nocache
//   INVENTORY_TARGETS=cachegate,cachegate-forward   variants as in bench:ab (http-proxy-3 always first)
//   INVENTORY_REQUESTS (default 2000), INVENTORY_CONNECTIONS (default 50)
//
// Each request has its own URL (`/x?i=N`), so no two requests coalesce on the default route: every one is a leader
// that goes upstream (the same shape as many clients asking different things). Loopback only; bounded by count and a
// 60 s deadline per phase. Results: bench/results/inventory-<ISO date>.json.
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { loadDistinct } from "./load.js";
import { type Child, ROOT, startChild, stopChildren } from "./processes.js";
import { intEnv, VARIANTS } from "./settings.js";

async function readCounts(file: string): Promise<Record<string, number>> {
  const end = Date.now() + 5_000;
  while (!existsSync(file)) {
    if (Date.now() > end) throw new Error(`no counts written to ${file}`);
    await sleep(20);
  }
  return JSON.parse(readFileSync(file, "utf8")) as Record<string, number>;
}

async function inventory(child: Child, file: string, requests: number, connections: number) {
  rmSync(file, { force: true });
  await loadDistinct(child.port, Math.min(500, requests), connections, 0); // warm-up: pools filled, code optimized
  child.proc.kill("SIGUSR1");
  await sleep(100);
  await loadDistinct(child.port, requests, connections, 1_000_000);
  await sleep(200); // the last responses' close handlers
  child.proc.kill("SIGUSR2");
  const counts = await readCounts(file);
  return Object.fromEntries(Object.entries(counts).map(([k, v]) => [k, v / requests]));
}

function category(key: string): string {
  const [kind, what = ""] = key.split("\t");
  if (kind === "async")
    return what === "PROMISE" ? "promises" : what === "Timeout" ? "timers" : `async ${what}`;
  if (kind === "emit") return "emits";
  return kind?.startsWith("listener remove") ? "listeners removed" : "listeners added";
}

async function main(): Promise<void> {
  const requests = intEnv("INVENTORY_REQUESTS", 2000, 100, 100_000);
  const connections = intEnv("INVENTORY_CONNECTIONS", 50, 1, 500);
  const wanted = (process.env.INVENTORY_TARGETS || "cachegate,cachegate-nocache")
    .split(",")
    .map((s) => s.trim());
  for (const v of wanted) {
    if (!VARIANTS[v])
      throw new Error(`INVENTORY_TARGETS: unknown "${v}" (known: ${Object.keys(VARIANTS).join(", ")})`);
  }
  const targets = ["http-proxy-3", ...wanted.filter((v) => v !== "http-proxy-3")];
  const dir = join(os.tmpdir(), `cachegate-inventory-${process.pid}`);
  mkdirSync(dir, { recursive: true });
  const hook = ["--import", join(ROOT, ".bench-dist", "bench", "inventory-hook.js")];
  const upstream = await startChild("upstream", "upstream.ts", {});
  const results: Record<string, Record<string, number>> = {};
  try {
    for (const t of targets) {
      const file = join(dir, `${t}.json`);
      const env = { BENCH_UPSTREAM_URL: upstream.url, INVENTORY_OUT: file, ...(VARIANTS[t] ?? {}) };
      const child =
        t === "http-proxy-3"
          ? await startChild(t, "bare-proxy.ts", env, hook)
          : await startChild(t, "cachegate-server.ts", env, hook);
      results[t] = await inventory(child, file, requests, connections);
      console.log(`${t}: ${requests} requests counted`);
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }

  const fmt = (n: number | undefined) => (n ?? 0).toFixed(2).padStart(8);
  const header = `${"per request".padEnd(26)}${targets.map((t) => t.padStart(20)).join("")}`;
  const totals = (r: Record<string, number>) => {
    const m = new Map<string, number>();
    for (const [k, v] of Object.entries(r)) m.set(category(k), (m.get(category(k)) ?? 0) + v);
    return m;
  };
  const byCategory = targets.map((t) => totals(results[t] ?? {}));
  const categories = [...new Set(byCategory.flatMap((m) => [...m.keys()]))].sort();
  console.log(`\n${header}`);
  for (const c of categories) {
    console.log(`${c.padEnd(26)}${byCategory.map((m) => fmt(m.get(c)).padStart(20)).join("")}`);
  }
  const bare = results["http-proxy-3"] ?? {};
  for (const t of targets.slice(1)) {
    const r = results[t] ?? {};
    const keys = [...new Set([...Object.keys(bare), ...Object.keys(r)])];
    const diffs = keys
      .map((k) => [k, (r[k] ?? 0) - (bare[k] ?? 0)] as const)
      .filter(([, d]) => Math.abs(d) >= 0.05)
      .sort((a, b) => Math.abs(b[1]) - Math.abs(a[1]));
    console.log(`\n${t} minus http-proxy-3, per request (|difference| >= 0.05):`);
    for (const [k, d] of diffs.slice(0, 40))
      console.log(`${(d > 0 ? "+" : "") + d.toFixed(2)}`.padStart(8), k.replace("\t", "  "));
  }

  const date = new Date();
  const file = join(ROOT, "bench", "results", `inventory-${date.toISOString().replace(/:/g, "-")}.json`);
  mkdirSync(join(ROOT, "bench", "results"), { recursive: true });
  writeFileSync(
    file,
    `${JSON.stringify({ benchmark: "inventory", date, requests, connections, results }, null, 2)}\n`,
  );
  console.log(`\nresults: ${file}`);
}

try {
  await main();
} catch (err) {
  console.error(`bench:inventory: ${err instanceof Error ? err.message : String(err)}`);
  process.exitCode = 1;
} finally {
  await stopChildren();
}
