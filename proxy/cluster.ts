// `--workers N`: one primary process that owns the admin port (health, readiness, metrics aggregated over every
// worker with prom-client's AggregatorRegistry, purge fanned out to every worker) and N workers that serve the
// proxy port through node:cluster. A worker that dies is restarted with backoff; SIGTERM drains them all.
import cluster, { type Worker } from "node:cluster";
import { randomUUID } from "node:crypto";
import type http from "node:http";
import type { AddressInfo } from "node:net";
import { AggregatorRegistry, type Registry } from "prom-client";
import type { Config } from "../config/schema.js";
import { createAdminServer } from "./admin/admin-server.js";
import { createPurgeHandler, type PurgeRequest, type Purger } from "./admin/purge.js";
import { createReloadHandler } from "./admin/reload.js";
import type { Logger } from "./observability/logger.js";
import { type Cachegate, restartOnlyChanges } from "./server.js";

const RESTART_MIN_MS = 100;
const RESTART_MAX_MS = 10_000;
/** A worker that lived this long is considered healthy again: its next crash restarts it at once. */
const STABLE_MS = 30_000;
const PURGE_REPLY_TIMEOUT_MS = 5_000;

type PurgeMessage = { type: "cachegate:purge"; id: string; request: PurgeRequest };
type PurgeReply = { type: "cachegate:purged"; id: string; counts: { memory: number; redis: number } };
type ReadyMessage = { type: "cachegate:ready" };

function isMessage<T extends { type: string }>(m: unknown, type: T["type"]): m is T {
  return typeof m === "object" && m !== null && (m as { type?: unknown }).type === type;
}

/** Worker side: answer the primary's purge fan-out and report readiness. */
export function serveWorker(gate: Cachegate): void {
  // Constructing one installs prom-client's worker-side listener for the primary's metrics requests.
  new AggregatorRegistry();
  AggregatorRegistry.setRegistries([gate.metrics.registry]);
  process.on("message", (msg: unknown) => {
    if (!isMessage<PurgeMessage>(msg, "cachegate:purge")) return;
    gate.cache.invalidator.purge(msg.request).then(
      (counts) => process.send?.({ type: "cachegate:purged", id: msg.id, counts } satisfies PurgeReply),
      () =>
        process.send?.({
          type: "cachegate:purged",
          id: msg.id,
          counts: { memory: 0, redis: 0 },
        } satisfies PurgeReply),
    );
  });
  process.send?.({ type: "cachegate:ready" } satisfies ReadyMessage);
}

export interface Primary {
  readonly adminPort: number | undefined;
  /** Workers currently serving. */
  readonly workers: () => number;
  close(deadlineMs: number): Promise<void>;
}

export async function startPrimary(
  config: Config,
  count: number,
  logger: Logger,
  readConfig: () => Config,
): Promise<Primary> {
  const aggregator = new AggregatorRegistry();
  const ready = new Set<number>();
  const started = new Map<number, number>();
  let failures = 0;
  let stopping = false;

  const fork = () => {
    const w = cluster.fork();
    started.set(w.id, Date.now());
    w.on("message", (msg: unknown) => {
      if (isMessage<ReadyMessage>(msg, "cachegate:ready")) ready.add(w.id);
    });
    return w;
  };
  cluster.on("exit", (w: Worker, code, signal) => {
    ready.delete(w.id);
    const lived = Date.now() - (started.get(w.id) ?? Date.now());
    started.delete(w.id);
    if (stopping) return;
    failures = lived >= STABLE_MS ? 0 : failures + 1;
    const delay = failures === 0 ? 0 : Math.min(RESTART_MIN_MS * 2 ** (failures - 1), RESTART_MAX_MS);
    logger.error({ worker: w.id, code, signal, restartInMs: delay }, "worker exited; restarting");
    setTimeout(() => {
      if (!stopping) fork();
    }, delay).unref();
  });
  for (let i = 0; i < count; i++) fork();

  // Purge reaches every worker's memory tier (and, through them, Redis): the counts are summed (memory) and the
  // largest Redis count is kept (every worker deletes the same Redis keys).
  const purger: Purger = {
    purge(request) {
      const workers = Object.values(cluster.workers ?? {}).filter((w): w is Worker => w !== undefined);
      const id = randomUUID();
      const replies = workers.map(
        (w) =>
          new Promise<PurgeReply["counts"]>((resolve) => {
            const timer = setTimeout(() => resolve({ memory: 0, redis: 0 }), PURGE_REPLY_TIMEOUT_MS);
            const onMessage = (msg: unknown) => {
              if (isMessage<PurgeReply>(msg, "cachegate:purged") && msg.id === id) {
                clearTimeout(timer);
                w.off("message", onMessage);
                resolve(msg.counts);
              }
            };
            w.on("message", onMessage);
            w.send({ type: "cachegate:purge", id, request } satisfies PurgeMessage);
          }),
      );
      return Promise.all(replies).then((all) => ({
        memory: all.reduce((n, c) => n + c.memory, 0),
        redis: all.reduce((n, c) => Math.max(n, c.redis), 0),
      }));
    },
  };

  // Reload: the primary validates first (a bad file is refused here, with its message), then every worker re-reads
  // and applies it on SIGHUP.
  const reloadWorkers = (next: Config) => {
    for (const w of Object.values(cluster.workers ?? {})) w?.process.kill("SIGHUP");
    return { restartRequired: restartOnlyChanges(config, next) };
  };
  process.on("SIGHUP", () => {
    try {
      reloadWorkers(readConfig());
    } catch (err) {
      logger.error({ err: (err as Error).message }, "config reload refused; the running config stays");
    }
  });

  let admin: http.Server | undefined;
  let adminPort: number | undefined;
  if (config.admin.enabled) {
    admin = createAdminServer({
      token: config.admin.token,
      registry: {
        metrics: () => aggregator.clusterMetrics(),
        contentType: aggregator.contentType as Registry["contentType"],
      },
      ready: () => !stopping && ready.size > 0,
      routes: {
        "POST /purge": createPurgeHandler(purger, logger),
        "POST /reload": createReloadHandler(readConfig, reloadWorkers, logger),
      },
    });
    const server = admin;
    adminPort = await new Promise<number>((resolve, reject) => {
      server.once("error", reject);
      server.listen(config.admin.port, config.admin.host, () =>
        resolve((server.address() as AddressInfo).port),
      );
    });
  }
  logger.info({ workers: count, adminPort }, "cachegate primary started");

  return {
    adminPort,
    workers: () => ready.size,
    async close(deadlineMs) {
      stopping = true;
      const workers = Object.values(cluster.workers ?? {}).filter((w): w is Worker => w !== undefined);
      const exits = workers.map((w) => new Promise<void>((resolve) => w.once("exit", () => resolve())));
      // Each worker drains on SIGTERM itself (in-flight requests finish up to its own deadline).
      for (const w of workers) w.process.kill("SIGTERM");
      const hard = setTimeout(() => {
        for (const w of workers) if (!w.isDead()) w.process.kill("SIGKILL");
      }, deadlineMs + 2_000);
      hard.unref();
      await Promise.all(exits);
      clearTimeout(hard);
      if (admin) {
        admin.closeAllConnections();
        await new Promise<void>((resolve) => admin?.close(() => resolve()));
      }
      logger.info("cachegate primary stopped");
    },
  };
}
