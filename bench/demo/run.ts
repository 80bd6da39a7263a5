// `npm run demo`: a slow simulated Dify (answers take ~1 s) with cachegate in front of it (memory tier only, in this
// process), a realistic mix of repeated and new prompts (some streaming), and a live view of the hit ratio, cached vs
// uncached latency and tokens saved. Offline: everything listens on 127.0.0.1 ports picked by the OS.
//
//   DEMO_REQUESTS=200      requests in all (1-10000)
//   DEMO_CONCURRENCY=8     requests in flight at once (1-64)
//   DEMO_DURATION=20       seconds the arrivals are spread over (0 = as fast as the concurrency allows; max 600)
//   DEMO_ANSWER_MS=1000    how long the simulated Dify takes per answer (0-60000)
//   DEMO_STREAM_SHARE=25   percent of requests in streaming (SSE) mode
//   DEMO_FRESH_SHARE=25    percent of requests that ask a question nobody asked before
//   DEMO_SEED=42           the workload's random seed (same seed, same requests)
//   DEMO_TARGET=URL        drive an already running cachegate (e.g. the compose stack's nginx, http://127.0.0.1:8080)
//                          instead of starting the simulator and cachegate here
//
// With the Dify plugin built in (plugins/dify), cachegate runs `plugins: [dify]`; the route's own cache rules
// (override, 10 min, POST keyed by body, per API key) apply wherever the plugin leaves the decision to the route.
import { mkdtempSync, writeFileSync } from "node:fs";
import http from "node:http";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { loadConfig } from "../../config/load.js";
import { BUILTIN_PLUGINS } from "../../plugins/index.js";
import { logDestination } from "../../proxy/observability/log-destination.js";
import { createLogger } from "../../proxy/observability/logger.js";
import { type Cachegate, startCachegate } from "../../proxy/server.js";
import { type DifySim, startDifySim } from "./dify-upstream.js";
import { LiveView, summary, Tally } from "./report.js";
import { planRequests, send } from "./workload.js";

const TOKENS_SAVED_METRIC = "cachegate_dify_tokens_saved_total";
const REFRESH_MS = 200;

function intEnv(name: string, fallback: number, min: number, max: number): number {
  const raw = process.env[name];
  if (raw === undefined || raw === "") return fallback;
  const n = Number(raw);
  if (!Number.isInteger(n) || n < min || n > max) {
    console.error(`demo: ${name} must be an integer from ${min} to ${max}, got "${raw}"`);
    process.exit(2);
  }
  return n;
}

const settings = {
  requests: intEnv("DEMO_REQUESTS", 200, 1, 10_000),
  concurrency: intEnv("DEMO_CONCURRENCY", 8, 1, 64),
  durationMs: intEnv("DEMO_DURATION", 20, 0, 600) * 1000,
  answerMs: intEnv("DEMO_ANSWER_MS", 1000, 0, 60_000),
  streamShare: intEnv("DEMO_STREAM_SHARE", 25, 0, 100) / 100,
  freshShare: intEnv("DEMO_FRESH_SHARE", 25, 0, 100) / 100,
  seed: intEnv("DEMO_SEED", 42, 0, 2 ** 31),
  target: process.env.DEMO_TARGET?.replace(/\/+$/, "") || undefined,
};
// Every request ends by then (cachegate's own upstream timeouts are longer: minutes, as Dify needs).
const requestTimeoutMs = Math.max(10_000, settings.answerMs * 5);
// The whole run is bounded too: the arrivals, twice the time every request could take as a miss, one more timeout.
const deadlineMs =
  settings.durationMs +
  Math.ceil(settings.requests / settings.concurrency) * settings.answerMs * 2 +
  requestTimeoutMs +
  5_000;

interface Stack {
  url: string;
  sim: DifySim;
  gate: Cachegate;
  plugin: boolean;
  logFile: string;
}

/** The demo's route: POSTs cached for 10 min whatever Dify's (absent) headers say, keyed per API key and body. */
function demoConfigFile(dir: string): string {
  const file = join(dir, "config.json");
  const cache = {
    mode: "override",
    ttl: "10m",
    methods: ["GET", "HEAD", "POST"],
    tenantHeader: "authorization",
  };
  const raw = {
    listen: { host: "127.0.0.1", port: 0 },
    admin: { host: "127.0.0.1", port: 0 },
    upstreams: [{ name: "dify", url: "http://127.0.0.1:5001" }],
    routes: [{ name: "dify-api", match: { pathPrefix: "/v1/" }, upstream: "dify", cache }],
  };
  writeFileSync(file, JSON.stringify(raw, null, 2));
  return file;
}

async function startStack(): Promise<Stack> {
  const sim = await startDifySim({ answerMs: settings.answerMs });
  const dir = mkdtempSync(join(tmpdir(), "cachegate-demo-"));
  const logFile = join(dir, "cachegate.log");
  const configFile = demoConfigFile(dir);
  const logger = createLogger("info", logDestination(logFile));
  // An empty environment: the shell's CACHEGATE_* variables must not change what the demo shows.
  const start = (plugins: string[]) =>
    startCachegate(loadConfig({ config: configFile, upstream: sim.url, plugin: plugins }, {}).config, {
      logger,
      defaultMetrics: false,
    });
  let plugin = "dify" in BUILTIN_PLUGINS;
  let gate: Cachegate;
  try {
    gate = await start(plugin ? ["dify"] : []);
  } catch (err) {
    if (!plugin) throw err;
    console.error(`demo: the dify plugin did not start (${(err as Error).message}); running without it`);
    plugin = false;
    gate = await start([]);
  }
  return { url: `http://127.0.0.1:${gate.port}`, sim, gate, plugin, logFile };
}

async function pluginTokensSaved(gate: Cachegate): Promise<number | undefined> {
  const metric = gate.metrics.registry.getSingleMetric(TOKENS_SAVED_METRIC);
  if (!metric) return undefined;
  const { values } = await metric.get();
  return values.reduce((a, v) => a + v.value, 0);
}

async function main(): Promise<number> {
  // `npm run demo | head`: the reader went away; nothing left to show.
  process.stdout.on("error", (err: NodeJS.ErrnoException) => {
    if (err.code === "EPIPE") process.exit(0);
    throw err;
  });
  const stack = settings.target === undefined ? await startStack() : undefined;
  const target = stack?.url ?? (settings.target as string);
  const out = process.stdout;
  if (stack) {
    const caching = stack.plugin
      ? "dify plugin: completions cached per API key, user and prompt"
      : "POST /v1/* cached 10 min per API key and body";
    const pace =
      settings.durationMs > 0 ? `over ~${settings.durationMs / 1000} s` : "as fast as they are answered";
    out.write(
      `Dify simulator ${stack.sim.url} (answers take ${settings.answerMs} ms)\n` +
        `  ← cachegate ${stack.url} (memory tier; ${caching})\n` +
        `  ← ${settings.requests} requests, ${settings.concurrency} at a time, ${pace}\n\n`,
    );
  } else {
    out.write(`Driving ${target}: ${settings.requests} requests, ${settings.concurrency} at a time\n\n`);
  }

  const specs = planRequests(settings.requests, settings);
  const tally = new Tally(specs.length);
  const view = new LiveView(out);
  const agent = new http.Agent({ keepAlive: true, maxSockets: settings.concurrency });
  const started = performance.now();
  const elapsed = () => performance.now() - started;
  const interval = settings.durationMs / specs.length;
  let next = 0;
  let interrupted = false;

  const worker = async () => {
    while (!interrupted && next < specs.length) {
      const spec = specs[next++];
      if (!spec) break;
      const due = spec.index * interval - elapsed();
      if (due > 0) await new Promise((resolve) => setTimeout(resolve, due));
      if (interrupted) break;
      tally.inFlight++;
      const result = await send(target, agent, spec, requestTimeoutMs);
      tally.inFlight--;
      tally.add(result);
    }
  };

  const onSignal = () => {
    interrupted = true;
    agent.destroy();
  };
  process.once("SIGINT", onSignal);
  process.once("SIGTERM", onSignal);
  const ticker = setInterval(() => view.update(tally, elapsed()), REFRESH_MS);
  let deadlineTimer: NodeJS.Timeout | undefined;
  const deadline = new Promise<void>((resolve) => {
    deadlineTimer = setTimeout(() => {
      interrupted = true;
      agent.destroy();
      resolve();
    }, deadlineMs);
  });
  await Promise.race([Promise.all(Array.from({ length: settings.concurrency }, worker)), deadline]);
  clearTimeout(deadlineTimer);
  clearInterval(ticker);
  view.update(tally, elapsed(), true);
  view.finish();

  const text = summary(tally, {
    wallMs: elapsed(),
    upstreamGenerations: stack?.sim.stats().generations,
    pluginTokensSaved: stack ? await pluginTokensSaved(stack.gate) : undefined,
  });
  out.write(`${text}\n`);
  if (stack) out.write(`cachegate's JSON log: ${stack.logFile}\n`);

  agent.destroy();
  if (stack) {
    await stack.gate.close(1_000);
    stack.gate.logger.flush();
    await stack.sim.close();
  }
  if (interrupted && tally.done < tally.total) {
    console.error(`demo: stopped after ${tally.done} of ${tally.total} requests`);
    return 1;
  }
  return tally.errors.length > 0 ? 1 : 0;
}

main().then(
  (code) => {
    process.exitCode = code;
  },
  (err: unknown) => {
    process.stdout.write("\x1b[?25h".repeat(process.stdout.isTTY ? 1 : 0));
    console.error(`demo: ${(err as Error).stack ?? String(err)}`);
    process.exitCode = 1;
  },
);
