// Command-line parsing. Kept apart from main.ts so tests can check the contract without starting a process.
import { parseArgs } from "node:util";
import type { ConfigFlags } from "../config/load.js";

export const USAGE = `Usage: cachegate [options]

A caching reverse proxy for HTTP/JSON APIs (Dify first).

Options:
  -c, --config FILE      YAML or JSON config file (env CACHEGATE_CONFIG)
  -u, --upstream URL     forward every path to URL; alone it is a complete config (env CACHEGATE_UPSTREAM)
      --host HOST        listen address (env CACHEGATE_HOST, default 0.0.0.0)
  -p, --port N           listen port (env CACHEGATE_PORT, default 8080)
      --admin-port N     admin port for /healthz, /readyz, /metrics (env CACHEGATE_ADMIN_PORT, default 9091)
      --redis URL        Redis for the shared cache tier (env CACHEGATE_REDIS_URL)
      --plugin NAME      load a plugin; repeatable (env CACHEGATE_PLUGINS, comma-separated)
      --log-level LEVEL  fatal|error|warn|info|debug|trace|silent (env CACHEGATE_LOG_LEVEL)
      --workers N|auto   worker processes sharing the proxy port; auto = one per core (env CACHEGATE_WORKERS)
      --check-config     validate the configuration, print a summary and exit (0 valid, 1 invalid)
  -h, --help             show this help
  -v, --version          show the version

Precedence: built-in defaults < config file < CACHEGATE_* environment < command-line flags.
Admin token: set admin.token in the file or CACHEGATE_ADMIN_TOKEN.`;

export interface CliOptions {
  flags: ConfigFlags;
  checkConfig: boolean;
  help: boolean;
  version: boolean;
}

export function parseCli(argv: string[]): CliOptions {
  const { values } = parseArgs({
    args: argv,
    strict: true,
    allowPositionals: false,
    options: {
      config: { type: "string", short: "c" },
      upstream: { type: "string", short: "u" },
      host: { type: "string" },
      port: { type: "string", short: "p" },
      "admin-port": { type: "string" },
      redis: { type: "string" },
      plugin: { type: "string", multiple: true },
      "log-level": { type: "string" },
      workers: { type: "string" },
      "check-config": { type: "boolean" },
      help: { type: "boolean", short: "h" },
      version: { type: "boolean", short: "v" },
    },
  });
  const flags: ConfigFlags = {};
  if (values.config !== undefined) flags.config = values.config;
  if (values.upstream !== undefined) flags.upstream = values.upstream;
  if (values.host !== undefined) flags.host = values.host;
  if (values.port !== undefined) flags.port = values.port;
  if (values["admin-port"] !== undefined) flags.adminPort = values["admin-port"];
  if (values.redis !== undefined) flags.redis = values.redis;
  if (values.plugin !== undefined) flags.plugin = values.plugin;
  if (values["log-level"] !== undefined) flags.logLevel = values["log-level"];
  if (values.workers !== undefined) flags.workers = values.workers;
  return {
    flags,
    checkConfig: values["check-config"] === true,
    help: values.help === true,
    version: values.version === true,
  };
}
