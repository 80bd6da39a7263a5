// Starts cachegate in-process on loopback port 0 (admin too), with logs captured in memory.
import { Writable } from "node:stream";
import pino from "pino";
import { loadConfig } from "../../config/load.js";
import type { Config } from "../../config/schema.js";
import { type Cachegate, startCachegate } from "../../proxy/server.js";

export interface TestGate extends Cachegate {
  readonly url: string;
  readonly adminUrl: string;
  /** Parsed JSON log lines written so far. */
  logs(): Array<Record<string, unknown>>;
}

/**
 * `raw` is a config object as a file would hold it (YAML-shaped); listen/admin default to 127.0.0.1:0.
 * Validation goes through the real loader, so tests exercise the same defaults as production.
 */
export async function startGate(
  raw: Record<string, unknown>,
  env: NodeJS.ProcessEnv = {},
): Promise<TestGate> {
  const config = configFrom(raw, env);
  const lines: string[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _enc, cb) {
      lines.push(...chunk.toString("utf8").split("\n").filter(Boolean));
      cb();
    },
  });
  const logger = pino(
    { level: config.log.level, redact: { paths: ["req.headers.authorization"], censor: "[REDACTED]" } },
    sink,
  );
  const gate = await startCachegate(config, { logger, defaultMetrics: false });
  return {
    ...gate,
    close: gate.close,
    url: `http://127.0.0.1:${gate.port}`,
    adminUrl: `http://127.0.0.1:${gate.adminPort}`,
    logs: () => lines.map((l) => JSON.parse(l) as Record<string, unknown>),
  };
}

export function configFrom(raw: Record<string, unknown>, env: NodeJS.ProcessEnv = {}): Config {
  const withPorts = {
    listen: { host: "127.0.0.1", port: 0 },
    admin: { host: "127.0.0.1", port: 0 },
    ...raw,
  };
  const file = writeTemp(withPorts);
  return loadConfig({ config: file }, env).config;
}

import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

function writeTemp(obj: unknown): string {
  const dir = mkdtempSync(join(tmpdir(), "cachegate-test-"));
  const file = join(dir, "config.json");
  writeFileSync(file, JSON.stringify(obj));
  return file;
}

/** The smallest config: one upstream, one catch-all route. */
export function simpleConfig(
  upstreamUrl: string,
  extra: Record<string, unknown> = {},
): Record<string, unknown> {
  return {
    upstreams: [{ name: "up", url: upstreamUrl }],
    routes: [{ name: "all", upstream: "up" }],
    log: { level: "info" },
    ...extra,
  };
}
