// Builds the one frozen Config from, in rising precedence: schema defaults < config file < CACHEGATE_* env < CLI flags.
// Every failure is a ConfigError whose lines name the source (file, variable or flag), the key path and the reason.
import { readFileSync } from "node:fs";
import { resolve } from "node:path";
import { parse as parseYaml, YAMLParseError } from "yaml";
import type { z } from "zod";
import { type Config, configSchema } from "./schema.js";

/** Settings given on the command line; each overrides the same key from the file and the environment. */
export interface ConfigFlags {
  config?: string;
  upstream?: string;
  host?: string;
  port?: string;
  adminPort?: string;
  redis?: string;
  plugin?: string[];
  logLevel?: string;
  workers?: string;
}

export class ConfigError extends Error {
  readonly code = "config_invalid";
  constructor(
    readonly source: string,
    readonly problems: string[],
  ) {
    super(`invalid configuration (${source}):\n${problems.map((p) => `  ${p}`).join("\n")}`);
    this.name = "ConfigError";
  }
}

/** Environment variables and the flag that has the same meaning. */
const ENV_FLAGS: ReadonlyArray<[env: string, flag: keyof ConfigFlags, cli: string]> = [
  ["CACHEGATE_CONFIG", "config", "--config"],
  ["CACHEGATE_UPSTREAM", "upstream", "--upstream"],
  ["CACHEGATE_HOST", "host", "--host"],
  ["CACHEGATE_PORT", "port", "--port"],
  ["CACHEGATE_ADMIN_PORT", "adminPort", "--admin-port"],
  ["CACHEGATE_REDIS_URL", "redis", "--redis"],
  ["CACHEGATE_PLUGINS", "plugin", "--plugin"],
  ["CACHEGATE_LOG_LEVEL", "logLevel", "--log-level"],
  ["CACHEGATE_WORKERS", "workers", "--workers"],
];

type Raw = Record<string, unknown>;
type Override = { path: (string | number)[]; value: unknown; source: string };

function isRecord(v: unknown): v is Raw {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

export function formatPath(path: ReadonlyArray<PropertyKey>): string {
  let out = "";
  for (const p of path) {
    if (typeof p === "number") out += `[${p}]`;
    else out += out ? `.${String(p)}` : String(p);
  }
  return out || "(root)";
}

function readConfigFile(file: string): Raw {
  let text: string;
  try {
    text = readFileSync(file, "utf8");
  } catch (err) {
    throw new ConfigError(file, [`cannot read the file: ${(err as Error).message}`]);
  }
  let data: unknown;
  try {
    data = file.endsWith(".json") ? JSON.parse(text) : parseYaml(text, { prettyErrors: true });
  } catch (err) {
    const where = err instanceof YAMLParseError && err.linePos ? ` at line ${err.linePos[0].line}` : "";
    throw new ConfigError(file, [
      `not valid ${file.endsWith(".json") ? "JSON" : "YAML"}${where}: ${(err as Error).message.split("\n")[0]}`,
    ]);
  }
  if (data === null || data === undefined) return {};
  if (!isRecord(data)) throw new ConfigError(file, ["(root): expected a mapping of keys to values"]);
  return data;
}

function toPort(value: string, source: string, key: string): number {
  const n = Number(value);
  if (!/^\d+$/.test(value) || n > 65535) {
    throw new ConfigError(source, [
      `${key} (from ${source}): expected a port number 0-65535, got "${value}"`,
    ]);
  }
  return n;
}

/** Flags after the env has been folded in; `sources` says where each came from, for error messages. */
function mergeEnv(
  flags: ConfigFlags,
  env: NodeJS.ProcessEnv,
): { merged: ConfigFlags; sources: Map<string, string> } {
  const merged: ConfigFlags = {};
  const sources = new Map<string, string>();
  for (const [envName, key, cli] of ENV_FLAGS) {
    const fromFlag = flags[key];
    const fromEnv = env[envName];
    if (fromFlag !== undefined && !(Array.isArray(fromFlag) && fromFlag.length === 0)) {
      (merged as Record<string, unknown>)[key] = fromFlag;
      sources.set(key, cli);
    } else if (fromEnv !== undefined && fromEnv !== "") {
      const value =
        key === "plugin"
          ? fromEnv
              .split(",")
              .map((s) => s.trim())
              .filter(Boolean)
          : fromEnv;
      (merged as Record<string, unknown>)[key] = value;
      sources.set(key, envName);
    }
  }
  return { merged, sources };
}

function setPath(target: Raw, path: (string | number)[], value: unknown): void {
  let node: Raw = target;
  for (const key of path.slice(0, -1)) {
    const next = node[key as string];
    // Arrays are containers too: `upstreams[0].url` must land inside the file's upstream list, not replace it.
    if (!isRecord(next) && !Array.isArray(next)) node[key as string] = {};
    node = node[key as string] as Raw;
  }
  node[path[path.length - 1] as string] = value;
}

function deepFreeze<T>(value: T): T {
  if (typeof value === "object" && value !== null && !Object.isFrozen(value)) {
    Object.freeze(value);
    for (const v of Object.values(value)) deepFreeze(v);
  }
  return value;
}

export interface LoadedConfig {
  config: Config;
  /** The config file's absolute path, if one was read. */
  file: string | undefined;
}

export function loadConfig(flags: ConfigFlags, env: NodeJS.ProcessEnv = process.env): LoadedConfig {
  const { merged, sources } = mergeEnv(flags, env);
  const file = merged.config ? resolve(merged.config) : undefined;
  const raw: Raw = file ? readConfigFile(file) : {};
  const origin = file ?? "command line and environment";
  if (!file && merged.upstream === undefined) {
    throw new ConfigError(origin, ["no upstream configured: pass --upstream URL or --config FILE"]);
  }

  const overrides: Override[] = [];
  const src = (k: keyof ConfigFlags) => sources.get(k) ?? "";
  if (merged.host !== undefined)
    overrides.push({ path: ["listen", "host"], value: merged.host, source: src("host") });
  if (merged.port !== undefined) {
    overrides.push({
      path: ["listen", "port"],
      value: toPort(merged.port, src("port"), "listen.port"),
      source: src("port"),
    });
  }
  if (merged.adminPort !== undefined) {
    const value = toPort(merged.adminPort, src("adminPort"), "admin.port");
    overrides.push({ path: ["admin", "port"], value, source: src("adminPort") });
  }
  if (merged.redis !== undefined)
    overrides.push({ path: ["redis", "url"], value: merged.redis, source: src("redis") });
  if (merged.logLevel !== undefined) {
    overrides.push({ path: ["log", "level"], value: merged.logLevel, source: src("logLevel") });
  }
  if (merged.workers !== undefined) {
    const w =
      merged.workers === "auto"
        ? "auto"
        : /^\d+$/.test(merged.workers)
          ? Number(merged.workers)
          : merged.workers;
    overrides.push({ path: ["workers"], value: w, source: src("workers") });
  }
  if (merged.plugin !== undefined)
    overrides.push({ path: ["plugins"], value: merged.plugin, source: src("plugin") });
  // The admin token comes from the file or the environment, never a flag (flags show in `ps`).
  if (env.CACHEGATE_ADMIN_TOKEN) {
    overrides.push({
      path: ["admin", "token"],
      value: env.CACHEGATE_ADMIN_TOKEN,
      source: "CACHEGATE_ADMIN_TOKEN",
    });
  }
  if (merged.upstream !== undefined) applyUpstream(raw, merged.upstream, src("upstream"), overrides, origin);

  for (const o of overrides) setPath(raw, o.path, o.value);

  // reportInput: zod 4 leaves `issue.input` out otherwise, and describeIssues tells "required" from "wrong type" by it.
  const result = configSchema.safeParse(raw, { reportInput: true });
  if (!result.success) throw new ConfigError(origin, describeIssues(result.error.issues, overrides));
  return { config: deepFreeze(result.data), file };
}

/**
 * `--upstream URL` alone is a complete config: one upstream and a catch-all route. With a file that has exactly one
 * upstream it replaces that upstream's URL; with several it is ambiguous and refused.
 */
function applyUpstream(raw: Raw, url: string, source: string, overrides: Override[], origin: string): void {
  const ups = raw.upstreams;
  if (ups === undefined || (Array.isArray(ups) && ups.length === 0)) {
    overrides.push({ path: ["upstreams"], value: [{ name: "default", url }], source });
    if (raw.routes === undefined) {
      overrides.push({ path: ["routes"], value: [{ name: "default", upstream: "default" }], source });
    }
    return;
  }
  if (Array.isArray(ups) && ups.length === 1 && isRecord(ups[0])) {
    overrides.push({ path: ["upstreams", 0, "url"], value: url, source });
    return;
  }
  const count = Array.isArray(ups) ? ups.length : 0;
  throw new ConfigError(origin, [
    `upstreams (from ${source}): ambiguous, the config defines ${count} upstreams; set each upstream's url in the file instead`,
  ]);
}

function describeIssues(issues: z.core.$ZodIssue[], overrides: Override[]): string[] {
  return issues.map((issue) => {
    const path = issue.path;
    const from = overrides.find((o) => o.path.every((p, i) => path[i] === p));
    let message = issue.message;
    if (issue.code === "unrecognized_keys") {
      message = `unknown key${issue.keys.length > 1 ? "s" : ""} ${issue.keys.map((k) => `"${k}"`).join(", ")}`;
    } else if (issue.code === "invalid_value" && "values" in issue) {
      message = `expected one of ${issue.values.map((v) => JSON.stringify(v)).join(", ")}`;
    } else if (issue.code === "invalid_type" && issue.input === undefined) {
      message = "required";
    }
    return `${formatPath(path)}${from ? ` (from ${from.source})` : ""}: ${message}`;
  });
}
