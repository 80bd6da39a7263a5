#!/usr/bin/env node
import cluster from "node:cluster";
// CLI entry: arguments → config → start → signals. Exit codes: 0 ok, 1 invalid config or failed start, 2 bad usage.
import { existsSync, readFileSync } from "node:fs";
import { availableParallelism } from "node:os";
import { ConfigError, type ConfigFlags, loadConfig } from "../config/load.js";
import type { Config } from "../config/schema.js";
import { parseCli, USAGE } from "./cli.js";
import { serveWorker, startPrimary } from "./cluster.js";
import { createLogger } from "./observability/logger.js";
import { PluginError } from "./plugins.js";
import { startCachegate } from "./server.js";
import { applyV8Flags } from "./v8-flags.js";

function version(): string {
  // Runs as proxy/main.ts (tsx, `npm run dev`) or as dist/proxy/main.js: package.json is one or two levels up.
  const candidates = ["../package.json", "../../package.json"].map((p) => new URL(p, import.meta.url));
  const file = candidates.find((u) => existsSync(u)) ?? (candidates[1] as URL);
  const pkg = JSON.parse(readFileSync(file, "utf8")) as { version: string };
  return pkg.version;
}

async function main(): Promise<number> {
  applyV8Flags();
  let cli: ReturnType<typeof parseCli>;
  try {
    cli = parseCli(process.argv.slice(2));
  } catch (err) {
    process.stderr.write(`cachegate: ${(err as Error).message}\nTry 'cachegate --help'.\n`);
    return 2;
  }
  if (cli.help) {
    process.stdout.write(`${USAGE}\n`);
    return 0;
  }
  if (cli.version) {
    process.stdout.write(`${version()}\n`);
    return 0;
  }

  let loaded: ReturnType<typeof loadConfig>;
  try {
    loaded = loadConfig(cli.flags);
  } catch (err) {
    if (err instanceof ConfigError) {
      process.stderr.write(`cachegate: ${err.message}\n`);
      return 1;
    }
    throw err;
  }
  const { config, file } = loaded;
  if (cli.checkConfig) {
    process.stdout.write(
      `configuration OK${file ? ` (${file})` : ""}: ${config.upstreams.length} upstream(s), ` +
        `${config.routes.length} route(s), listen ${config.listen.host}:${config.listen.port}\n`,
    );
    return 0;
  }

  const workers = config.workers === "auto" ? availableParallelism() : config.workers;
  if (workers > 1 && cluster.isPrimary) return runPrimary(config, workers, cli.flags);
  const worker = cluster.isWorker;

  let gate: Awaited<ReturnType<typeof startCachegate>>;
  try {
    // In a worker the primary owns the admin port (aggregated metrics, purge fan-out).
    gate = await startCachegate(worker ? { ...config, admin: { ...config.admin, enabled: false } } : config, {
      reloadConfig: () => loadConfig(cli.flags).config,
    });
  } catch (err) {
    if (err instanceof PluginError) {
      process.stderr.write(`cachegate: ${err.code}: ${err.message}\n`);
      return 1;
    }
    throw err;
  }
  const { logger } = gate;
  if (worker) serveWorker(gate);
  process.on("uncaughtException", (err) => {
    logger.fatal({ err }, "uncaught exception; exiting");
    logger.flush();
    process.exit(1);
  });
  process.on("unhandledRejection", (err) => logger.error({ err }, "unhandled promise rejection"));

  return new Promise<number>((resolve) => {
    let stopping = false;
    const stop = (signal: NodeJS.Signals) => {
      // A worker may get the signal twice (systemd signals the whole group, then the primary relays it):
      // only a second signal to a standalone process means "stop now".
      if (stopping && worker) return;
      if (stopping) {
        logger.warn({ signal }, "second signal: exiting without waiting for in-flight requests");
        logger.flush();
        process.exit(1);
      }
      stopping = true;
      logger.info({ signal, deadlineMs: config.server.shutdownTimeout }, "draining");
      gate.close().then(
        () => resolve(0),
        (err: unknown) => {
          logger.error({ err }, "error while draining");
          resolve(1);
        },
      );
    };
    process.on("SIGTERM", stop);
    process.on("SIGINT", stop);
    // SIGHUP: re-read the config and apply it in place; an invalid one is logged and the running one stays.
    process.on("SIGHUP", () => {
      try {
        gate.reload(loadConfig(cli.flags).config);
      } catch (err) {
        if (!(err instanceof ConfigError)) throw err;
        logger.error(
          { problems: err.problems, source: err.source },
          "config reload refused; the running config stays",
        );
      }
    });
  });
}

/** The primary of `--workers N`: forks, restarts and drains the workers; serves the admin port. */
async function runPrimary(config: Config, workers: number, flags: ConfigFlags): Promise<number> {
  const logger = createLogger(config.log.level);
  const primary = await startPrimary(config, workers, logger, () => loadConfig(flags).config);
  return new Promise<number>((resolve) => {
    let stopping = false;
    const stop = (signal: NodeJS.Signals) => {
      if (stopping) {
        logger.warn({ signal }, "second signal: exiting without waiting for the workers");
        logger.flush();
        process.exit(1);
      }
      stopping = true;
      logger.info({ signal, workers: primary.workers() }, "draining workers");
      primary.close(config.server.shutdownTimeout).then(
        () => resolve(0),
        () => resolve(1),
      );
    };
    process.on("SIGTERM", stop);
    process.on("SIGINT", stop);
  });
}

main().then(
  (code) => {
    process.exitCode = code;
    // A worker's IPC channel to the primary would keep it alive after draining.
    if (cluster.isWorker) process.exit(code);
  },
  (err: unknown) => {
    process.stderr.write(`cachegate: failed to start: ${(err as Error).message}\n`);
    process.exitCode = 1;
  },
);
