// Stampede benchmark: 200 clients ask for the same cold URL at once, in front of a 200 ms origin.
// Compared in one run: nginx proxy_cache with proxy_cache_lock (the usual answer), one cachegate (memory tier),
// and two cachegate instances sharing a real redis-server (requests alternate between them).
// Prints, per setup, how many requests reached the origin and how long the last client waited.
//
//   npm run bench:stampede            (STAMPEDE_CLIENTS=200 STAMPEDE_ROUNDS=3 STAMPEDE_ORIGIN_MS=200)
import { type ChildProcess, spawn } from "node:child_process";
import { chmodSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import http from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import { nginxBinary } from "../test/helpers/nginx.js";
import { startRedis } from "../test/helpers/redis.js";
import { closedPort } from "../test/helpers/upstream.js";

const CLIENTS = Number(process.env.STAMPEDE_CLIENTS ?? 200);
const ROUNDS = Number(process.env.STAMPEDE_ROUNDS ?? 3);
const ORIGIN_MS = Number(process.env.STAMPEDE_ORIGIN_MS ?? 200);
const BENCH_DIR = dirname(fileURLToPath(import.meta.url));
const COMPILED = import.meta.url.endsWith(".js");
const children: ChildProcess[] = [];

function killAll(): void {
  for (const c of children) if (c.exitCode === null) c.kill("SIGKILL");
}
process.on("exit", killAll);
const watchdog = setTimeout(() => {
  console.error("stampede benchmark: overran 3 minutes, stopping");
  killAll();
  process.exit(1);
}, 180_000);
watchdog.unref();

/** The origin: counts requests per path, answers after ORIGIN_MS with a cacheable 1 KiB JSON body. */
async function startOrigin(): Promise<{ port: number; hits: Map<string, number>; close(): void }> {
  const hits = new Map<string, number>();
  const body = Buffer.from(JSON.stringify({ data: "x".repeat(1000) }));
  const server = http.createServer((req, res) => {
    hits.set(req.url ?? "", (hits.get(req.url ?? "") ?? 0) + 1);
    setTimeout(() => {
      res.writeHead(200, {
        "content-type": "application/json",
        "content-length": body.length,
        "cache-control": "max-age=60",
      });
      res.end(body);
    }, ORIGIN_MS);
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  return { port: (server.address() as AddressInfo).port, hits, close: () => server.close() };
}

function startGate(upstream: string, redisUrl?: string): Promise<string> {
  const file = join(BENCH_DIR, COMPILED ? "cachegate-server.js" : "cachegate-server.ts");
  const proc = spawn(process.execPath, COMPILED ? [file] : ["--import", "tsx", file], {
    env: { ...process.env, BENCH_UPSTREAM_URL: upstream, ...(redisUrl ? { BENCH_REDIS_URL: redisUrl } : {}) },
    stdio: ["pipe", "pipe", "inherit"],
  });
  children.push(proc);
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error("cachegate did not start in 30 s")), 30_000);
    createInterface({ input: proc.stdout! }).on("line", (line) => {
      try {
        const msg = JSON.parse(line) as { port?: number };
        if (msg.port) {
          clearTimeout(timer);
          resolve(`http://127.0.0.1:${msg.port}`);
        }
      } catch {
        // not the ready line
      }
    });
  });
}

async function startNginxCache(originPort: number): Promise<{ url: string; stop(): void }> {
  const dir = mkdtempSync(join(tmpdir(), "stampede-nginx-"));
  chmodSync(dir, 0o777);
  for (const d of ["cache", "tmp"]) {
    mkdirSync(join(dir, d));
    chmodSync(join(dir, d), 0o777);
  }
  const port = await closedPort();
  const conf = join(dir, "nginx.conf");
  writeFileSync(
    conf,
    `daemon off; master_process on; worker_processes auto; pid ${dir}/nginx.pid; error_log ${dir}/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path ${dir}/tmp; proxy_temp_path ${dir}/tmp; fastcgi_temp_path ${dir}/tmp;
  uwsgi_temp_path ${dir}/tmp; scgi_temp_path ${dir}/tmp;
  proxy_cache_path ${dir}/cache levels=1:2 keys_zone=c:10m max_size=100m inactive=10m use_temp_path=off;
  upstream origin { server 127.0.0.1:${originPort}; keepalive 64; }
  server {
    listen 127.0.0.1:${port};
    location / {
      proxy_pass http://origin; proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_cache c; proxy_cache_lock on; proxy_cache_lock_timeout 10s; proxy_cache_valid 200 60s;
    }
  }
}
`,
  );
  const proc = spawn(nginxBinary(), ["-p", dir, "-c", conf], { stdio: "ignore", detached: true });
  children.push(proc);
  for (let i = 0; i < 50; i++) {
    await new Promise((r) => setTimeout(r, 100));
    const ok = await fetch(`http://127.0.0.1:${port}/ready-probe`).then(
      () => true,
      () => false,
    );
    if (ok) break;
  }
  return {
    url: `http://127.0.0.1:${port}`,
    stop: () => {
      try {
        process.kill(-(proc.pid as number), "SIGKILL");
      } catch {
        // already gone
      }
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

function get(url: string): Promise<number> {
  return new Promise((resolve, reject) => {
    // One Host for every instance, as behind nginx: the cache key includes the Host.
    const req = http.get(url, { agent: false, headers: { host: "api.bench" } }, (res) => {
      res.resume();
      res.on("end", () => resolve(res.statusCode ?? 0));
    });
    req.setTimeout(10_000, () => req.destroy(new Error("timeout")));
    req.on("error", reject);
  });
}

interface Round {
  originHits: number;
  lastMs: number;
  p50Ms: number;
  errors: number;
}

async function round(urls: string[], path: string, origin: { hits: Map<string, number> }): Promise<Round> {
  const started = performance.now();
  const times: number[] = [];
  let errors = 0;
  await Promise.all(
    Array.from({ length: CLIENTS }, (_, i) =>
      get(`${urls[i % urls.length]}${path}`).then(
        (status) => {
          if (status !== 200) errors++;
          times.push(performance.now() - started);
        },
        () => {
          errors++;
        },
      ),
    ),
  );
  times.sort((a, b) => a - b);
  return {
    originHits: origin.hits.get(path) ?? 0,
    lastMs: times[times.length - 1] ?? Number.NaN,
    p50Ms: times[Math.floor(times.length / 2)] ?? Number.NaN,
    errors,
  };
}

async function main(): Promise<void> {
  console.log(
    `stampede: ${CLIENTS} concurrent clients, one cold URL, origin answers in ${ORIGIN_MS} ms, ${ROUNDS} rounds`,
  );
  const origin = await startOrigin();
  const upstream = `http://127.0.0.1:${origin.port}`;
  const redis = await startRedis();
  const nginx = await startNginxCache(origin.port);
  const one = await startGate(upstream);
  const pair = await Promise.all([startGate(upstream, redis.url), startGate(upstream, redis.url)]);
  await new Promise((r) => setTimeout(r, 300)); // Redis clients connected and subscribed
  const setups: Array<[string, string[]]> = [
    ["nginx proxy_cache_lock", [nginx.url]],
    ["cachegate (memory)", [one]],
    ["cachegate x2 + Redis", pair],
  ];
  const results: Array<{ setup: string; rounds: Round[] }> = [];
  for (const [setup, urls] of setups) {
    // Warm connections and JIT once on another path.
    await Promise.all(urls.map((u) => get(`${u}/warm`)));
    const rounds: Round[] = [];
    for (let r = 0; r < ROUNDS; r++)
      rounds.push(await round(urls, `/cold/${setup.replace(/\W+/g, "-")}/${r}`, origin));
    results.push({ setup, rounds });
  }
  console.log("");
  console.log("setup                     origin requests   p50 ms   last client ms   errors");
  for (const { setup, rounds } of results) {
    const med = (f: (r: Round) => number) => {
      const v = rounds.map(f).sort((a, b) => a - b);
      return v[Math.floor(v.length / 2)] ?? Number.NaN;
    };
    const hits = rounds.map((r) => r.originHits).join("/");
    console.log(
      `${setup.padEnd(25)} ${hits.padStart(15)} ${med((r) => r.p50Ms)
        .toFixed(0)
        .padStart(8)} ${med((r) => r.lastMs)
        .toFixed(0)
        .padStart(16)} ${String(rounds.reduce((n, r) => n + r.errors, 0)).padStart(8)}`,
    );
  }
  console.log(
    `\n(medians over ${ROUNDS} rounds; origin requests per round; every client opens its own connection)`,
  );
  nginx.stop();
  killAll();
  await redis.stop();
  origin.close();
  clearTimeout(watchdog);
}

main().then(
  () => process.exit(0),
  (err: unknown) => {
    console.error(err);
    killAll();
    process.exit(1);
  },
);
