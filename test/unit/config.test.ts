// The config contract: the example file, precedence of file < env < flags, and error lines that name source, key and reason.
import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { parse as parseYaml } from "yaml";
import type { z } from "zod";
import { ConfigError, type ConfigFlags, formatPath, loadConfig } from "../../config/load.js";
import { configSchema } from "../../config/schema.js";
import { parseCli } from "../../proxy/cli.js";

const EXAMPLE = new URL("../../config/cachegate.example.yaml", import.meta.url).pathname;
const exampleText = readFileSync(EXAMPLE, "utf8");

let dir: string;
before(() => {
  dir = mkdtempSync(join(tmpdir(), "cachegate-config-test-"));
});
after(() => {
  rmSync(dir, { recursive: true, force: true });
});

let fileCount = 0;
/** Writes `content` (an object as JSON, or YAML text) to a fresh file and returns its path. */
function writeConfig(
  content: string | Record<string, unknown>,
  ext = typeof content === "string" ? "yaml" : "json",
) {
  const file = join(dir, `config-${++fileCount}.${ext}`);
  writeFileSync(file, typeof content === "string" ? content : JSON.stringify(content));
  return file;
}

/** Loads and expects a ConfigError; returns it for assertions on source and lines. */
function loadError(flags: ConfigFlags, env: NodeJS.ProcessEnv = {}): ConfigError {
  try {
    loadConfig(flags, env);
  } catch (err) {
    assert.ok(err instanceof ConfigError, `expected a ConfigError, got ${String(err)}`);
    return err;
  }
  assert.fail("expected loadConfig to throw a ConfigError");
}

const DIFY = { name: "dify", url: "http://127.0.0.1:5001" };
const minimal = (extra: Record<string, unknown> = {}) => ({
  upstreams: [DIFY],
  routes: [{ name: "default", upstream: "dify" }],
  ...extra,
});

type Path = Array<string | number>;
/** A leaf key of the schema; `optionalAt` is where the nearest optional ancestor (or the leaf itself) sits. */
type Leaf = { path: Path; optionalAt: Path | undefined };

/** Every leaf key of a zod schema; array elements that are objects appear as index 0. */
function schemaLeaves(schema: z.core.$ZodType, path: Path = [], optionalAt?: Path): Leaf[] {
  const def = schema._zod.def;
  switch (def.type) {
    case "default":
    case "prefault":
      return schemaLeaves((def as z.core.$ZodDefaultDef).innerType, path, optionalAt);
    case "optional":
      return schemaLeaves((def as z.core.$ZodOptionalDef).innerType, path, optionalAt ?? path);
    case "pipe":
      return schemaLeaves((def as z.core.$ZodPipeDef).in, path, optionalAt);
    case "array": {
      const inner = schemaLeaves((def as z.core.$ZodArrayDef).element, [...path, 0], optionalAt);
      // An array of scalars (trustProxy, plugins, methods) is itself the leaf.
      return inner.length === 1 && inner[0]?.path.length === path.length + 1 ? [{ path, optionalAt }] : inner;
    }
    case "object":
      return Object.entries((def as z.core.$ZodObjectDef).shape).flatMap(([key, child]) =>
        schemaLeaves(child, [...path, key], optionalAt),
      );
    default:
      return [{ path, optionalAt }];
  }
}

/**
 * The value of a commented-out example ("# key: value") for `path`, looked up within its top-level section, so that
 * `# url:` under redis is not mistaken for an upstream's url.
 */
function commentedExample(path: Path): unknown {
  const lines = exampleText.split("\n");
  const start = lines.findIndex((l) => l.startsWith(`${path[0]}:`));
  if (start === -1) return undefined;
  const next = lines.findIndex((l, i) => i > start && /^[A-Za-z]/.test(l));
  const key = String(path[path.length - 1]);
  const re = new RegExp(`^\\s*#\\s*${key}:\\s*(\\S.*)$`);
  for (const line of lines.slice(start + 1, next === -1 ? undefined : next)) {
    const m = re.exec(line);
    if (m) return parseYaml(m[1] as string);
  }
  return undefined;
}

/** Optional keys the example shows commented out, in the sets that are valid together. */
const COMMENTED_OUT = [
  ["admin.token"],
  ["redis.url"],
  ["redis.sentinels", "redis.sentinelName"],
  ["redis.cluster"],
  ["routes[0].cache.tenantHeader"],
  ["routes[0].match.methods"],
  ["routes[0].limits"],
  ["limits.clientHeader"],
];

function getPath(value: unknown, path: Path): unknown {
  let node = value;
  for (const p of path) {
    if (typeof node !== "object" || node === null) return undefined;
    node = (node as Record<string | number, unknown>)[p];
  }
  return node;
}

function setPath(target: Record<string, unknown>, path: Path, value: unknown): void {
  let node = target as Record<string | number, unknown>;
  for (const p of path.slice(0, -1)) {
    node[p] ??= {};
    node = node[p] as Record<string | number, unknown>;
  }
  node[path[path.length - 1] as string | number] = value;
}

/** Every key name in a plain object tree (array elements included). */
function keyNames(value: unknown, out = new Set<string>()): Set<string> {
  if (Array.isArray(value)) for (const v of value) keyNames(v, out);
  else if (typeof value === "object" && value !== null) {
    for (const [k, v] of Object.entries(value)) {
      out.add(k);
      keyNames(v, out);
    }
  }
  return out;
}

describe("the example config", () => {
  test("loads, with the Dify upstream, its two routes and the documented listeners", () => {
    const { config, file } = loadConfig({ config: EXAMPLE }, {});
    assert.equal(file, EXAMPLE);
    assert.deepEqual(
      config.upstreams.map((u) => [u.name, u.url]),
      [["dify", "http://127.0.0.1:5001"]],
    );
    assert.deepEqual(
      config.routes.map((r) => [r.name, r.match.pathPrefix, r.upstream]),
      [
        ["dify-api", "/v1/", "dify"],
        ["default", "/", "dify"],
      ],
    );
    assert.deepEqual(config.listen, { host: "0.0.0.0", port: 8080 });
    assert.deepEqual(config.admin, { enabled: true, host: "127.0.0.1", port: 9091 });
    assert.equal(config.admin.token, undefined, "the admin token stays commented out");
    assert.equal(config.redis.url, undefined);
  });

  test("sets every key to the schema default, so its comments describe the defaults", () => {
    const example = loadConfig({ config: EXAMPLE }, {}).config;
    const raw = parseYaml(exampleText) as { routes: unknown };
    const defaults = loadConfig({ config: writeConfig(minimal({ routes: raw.routes })) }, {}).config;
    assert.deepEqual(example, defaults);
  });

  test("contains every key of the schema, optional ones as commented-out examples that are valid", () => {
    const raw = parseYaml(exampleText) as Record<string, unknown>;
    const leaves = schemaLeaves(configSchema);
    assert.ok(leaves.length >= 30, `walked only ${leaves.length} keys: the schema walk is broken`);
    const examples = new Map<string, { path: Path; value: unknown }>();
    for (const { path, optionalAt } of leaves) {
      if (getPath(raw, path) !== undefined) continue;
      assert.ok(optionalAt, `${formatPath(path)} is missing from the example and has no default`);
      const where = formatPath(optionalAt);
      if (examples.has(where)) continue;
      const value = commentedExample(optionalAt);
      const key = String(optionalAt[optionalAt.length - 1]);
      assert.ok(value !== undefined, `${where}: neither set nor shown commented out ("# ${key}: ...")`);
      examples.set(where, { path: optionalAt, value });
    }
    assert.deepEqual([...examples.keys()].sort(), COMMENTED_OUT.flat().sort());
    for (const group of COMMENTED_OUT) {
      const withExamples = structuredClone(raw);
      for (const where of group) {
        const example = examples.get(where);
        if (example) setPath(withExamples, example.path, example.value);
      }
      const { config } = loadConfig({ config: writeConfig(withExamples) }, {});
      for (const where of group) {
        const path = examples.get(where)?.path ?? [];
        assert.notEqual(getPath(config, path), undefined, `${where} did not reach the loaded config`);
      }
    }
  });

  test("documents every key it sets with a comment on the line before", () => {
    const lines = exampleText.split("\n");
    const undocumented = lines.flatMap((line, i) => {
      if (!/^\s*(- )?[A-Za-z]+:/.test(line)) return [];
      const prev = lines[i - 1] ?? "";
      return /^\s*#/.test(prev) ? [] : [`line ${i + 1}: ${line.trim()}`];
    });
    assert.deepEqual(undocumented, []);
  });

  test("mentions every key of the fully defaulted config", () => {
    const { config } = loadConfig({ upstream: "http://127.0.0.1:5001" }, {});
    for (const key of keyNames(config))
      assert.match(exampleText, new RegExp(`\\b${key}:`), `"${key}" missing`);
  });

  test("says how to set the admin token from CACHEGATE_ADMIN_TOKEN", () => {
    assert.match(exampleText, /^\s*# token: /m);
    assert.match(exampleText, /CACHEGATE_ADMIN_TOKEN/);
  });
});

describe("sources and precedence", () => {
  test("--upstream URL alone gives one upstream named default and a catch-all route", () => {
    const { config, file } = loadConfig({ upstream: "http://127.0.0.1:5001" }, {});
    assert.equal(file, undefined);
    assert.deepEqual(
      config.upstreams.map((u) => [u.name, u.url]),
      [["default", "http://127.0.0.1:5001"]],
    );
    assert.deepEqual(
      config.routes.map((r) => [r.name, r.match, r.upstream]),
      [["default", { pathPrefix: "/" }, "default"]],
    );
  });

  test("CACHEGATE_UPSTREAM alone is a complete config too", () => {
    const { config } = loadConfig({}, { CACHEGATE_UPSTREAM: "http://127.0.0.1:5001" });
    assert.equal(config.upstreams[0]?.url, "http://127.0.0.1:5001");
    assert.equal(config.routes[0]?.upstream, "default");
  });

  test("without a file or an upstream it says how to give one", () => {
    const err = loadError({});
    assert.deepEqual(err.problems, ["no upstream configured: pass --upstream URL or --config FILE"]);
  });

  test("a flag beats CACHEGATE_* env, which beats the file, which beats the default", () => {
    const file = writeConfig(minimal({ listen: { port: 1000 }, log: { level: "warn" } }));
    const env = { CACHEGATE_PORT: "2000" };
    assert.equal(loadConfig({ config: file }, {}).config.listen.port, 1000);
    assert.equal(loadConfig({ config: file }, env).config.listen.port, 2000);
    assert.equal(loadConfig({ config: file, port: "3000" }, env).config.listen.port, 3000);
    // Keys no source mentions keep the file's value or the default.
    const { config } = loadConfig({ config: file, port: "3000" }, env);
    assert.equal(config.log.level, "warn");
    assert.equal(config.listen.host, "0.0.0.0");
  });

  test("every CACHEGATE_* variable maps to its key", () => {
    const { config } = loadConfig(
      {},
      {
        CACHEGATE_CONFIG: writeConfig(minimal()),
        CACHEGATE_HOST: "127.0.0.1",
        CACHEGATE_PORT: "8081",
        CACHEGATE_ADMIN_PORT: "9092",
        CACHEGATE_REDIS_URL: "redis://127.0.0.1:6379/1",
        CACHEGATE_PLUGINS: "a, b,,c",
        CACHEGATE_LOG_LEVEL: "debug",
      },
    );
    assert.deepEqual(config.listen, { host: "127.0.0.1", port: 8081 });
    assert.equal(config.admin.port, 9092);
    assert.equal(config.redis.url, "redis://127.0.0.1:6379/1");
    assert.deepEqual(config.plugins, ["a", "b", "c"]);
    assert.equal(config.log.level, "debug");
  });

  test("repeated --plugin flags replace CACHEGATE_PLUGINS rather than add to it", () => {
    const { flags } = parseCli(["--upstream", "http://127.0.0.1:5001", "--plugin", "x", "--plugin", "y"]);
    const { config } = loadConfig(flags, { CACHEGATE_PLUGINS: "a,b" });
    assert.deepEqual(config.plugins, ["x", "y"]);
  });

  test("CACHEGATE_ADMIN_TOKEN sets admin.token, over the file's", () => {
    const token = "env-token-0123456789abcdef";
    const file = writeConfig(minimal({ admin: { token: "file-token-0123456789" } }));
    assert.equal(loadConfig({ config: file }, {}).config.admin.token, "file-token-0123456789");
    assert.equal(loadConfig({ config: file }, { CACHEGATE_ADMIN_TOKEN: token }).config.admin.token, token);
  });

  test("a too short CACHEGATE_ADMIN_TOKEN is reported as coming from CACHEGATE_ADMIN_TOKEN", () => {
    const err = loadError({ upstream: "http://127.0.0.1:5001" }, { CACHEGATE_ADMIN_TOKEN: "short" });
    assert.deepEqual(err.problems, [
      "admin.token (from CACHEGATE_ADMIN_TOKEN): expected at least 16 characters",
    ]);
  });

  test("a bad CACHEGATE_PORT names CACHEGATE_PORT, the key and the value", () => {
    const err = loadError({ upstream: "http://127.0.0.1:5001" }, { CACHEGATE_PORT: "80a" });
    assert.equal(err.source, "CACHEGATE_PORT");
    assert.deepEqual(err.problems, [
      'listen.port (from CACHEGATE_PORT): expected a port number 0-65535, got "80a"',
    ]);
    assert.match(err.message, /CACHEGATE_PORT/);
  });

  test("a bad --admin-port names the flag and admin.port", () => {
    const err = loadError({ upstream: "http://127.0.0.1:5001", adminPort: "70000" });
    assert.deepEqual(err.problems, [
      'admin.port (from --admin-port): expected a port number 0-65535, got "70000"',
    ]);
  });

  test("a bad --log-level names the flag and lists the levels", () => {
    const err = loadError({ upstream: "http://127.0.0.1:5001", logLevel: "loud" });
    assert.equal(err.problems.length, 1);
    assert.match(
      err.problems[0] ?? "",
      /^log\.level \(from --log-level\): expected one of "fatal", .*"silent"$/,
    );
  });

  test("a bad --upstream URL names the flag", () => {
    const err = loadError({ upstream: "ftp://127.0.0.1/" });
    assert.match(
      err.problems[0] ?? "",
      /^upstreams\[0\]\.url \(from --upstream\): expected an absolute http/,
    );
  });

  test("--upstream with a file of one upstream replaces that upstream's url and keeps the rest", () => {
    const file = writeConfig(
      minimal({ upstreams: [{ ...DIFY, preserveHost: true }], routes: [{ name: "api", upstream: "dify" }] }),
    );
    const { config } = loadConfig({ config: file, upstream: "http://10.0.0.5:5001" }, {});
    assert.equal(config.upstreams.length, 1);
    assert.deepEqual(
      [config.upstreams[0]?.name, config.upstreams[0]?.url, config.upstreams[0]?.preserveHost],
      ["dify", "http://10.0.0.5:5001", true],
    );
    assert.deepEqual(
      config.routes.map((r) => r.name),
      ["api"],
    );
  });

  test("--upstream with a file of two upstreams is refused as ambiguous", () => {
    const file = writeConfig(minimal({ upstreams: [DIFY, { name: "other", url: "http://127.0.0.1:5002" }] }));
    const err = loadError({ config: file, upstream: "http://127.0.0.1:6000" });
    assert.equal(err.source, file);
    assert.equal(err.problems.length, 1);
    assert.match(
      err.problems[0] ?? "",
      /^upstreams \(from --upstream\): ambiguous, the config defines 2 upstreams/,
    );
  });
});

describe("errors name the file, the key path and the reason", () => {
  test("an unknown key names its path", () => {
    const file = writeConfig(minimal({ routes: [{ name: "default", upstream: "dify", extra: 1 }] }));
    const err = loadError({ config: file });
    assert.equal(err.source, file);
    assert.deepEqual(err.problems, ['routes[0]: unknown key "extra"']);
    assert.match(
      err.message,
      new RegExp(`^invalid configuration \\(${file}\\):\\n  routes\\[0\\]: unknown key "extra"$`),
    );
  });

  test("unknown keys are reported at the root and deep inside upstreams", () => {
    const file = writeConfig(
      minimal({ listn: {}, upstreams: [{ ...DIFY, timeouts: { conect: "1s", idel: "1s" } }] }),
    );
    assert.deepEqual(loadError({ config: file }).problems.sort(), [
      '(root): unknown key "listn"',
      'upstreams[0].timeouts: unknown keys "conect", "idel"',
    ]);
  });

  test("a route naming an unknown upstream lists the known ones", () => {
    const file = writeConfig(
      minimal({
        routes: [
          { name: "a", upstream: "dify" },
          { name: "b", upstream: "dify" },
          { name: "c", upstream: "difyy" },
        ],
      }),
    );
    assert.deepEqual(loadError({ config: file }).problems, [
      'routes[2].upstream: unknown upstream "difyy" (known: dify)',
    ]);
  });

  test("duplicate upstream names are rejected at the second one", () => {
    const file = writeConfig(minimal({ upstreams: [DIFY, { name: "dify", url: "http://127.0.0.1:5002" }] }));
    assert.deepEqual(loadError({ config: file }).problems, ['upstreams[1].name: duplicate upstream "dify"']);
  });

  test("duplicate route names are rejected at the second one", () => {
    const file = writeConfig(
      minimal({
        routes: [
          { name: "api", match: { pathPrefix: "/v1/" }, upstream: "dify" },
          { name: "api", upstream: "dify" },
        ],
      }),
    );
    assert.deepEqual(loadError({ config: file }).problems, ['routes[1].name: duplicate route "api"']);
  });

  test("a bad duration names the key and the bad value", () => {
    const file = writeConfig(`${exampleText.replace("shutdownTimeout: 30s", "shutdownTimeout: 30 sec")}`);
    assert.deepEqual(loadError({ config: file }).problems, [
      'server.shutdownTimeout: expected a duration such as "500ms", "30s", "5m" or "1h", got "30 sec"',
    ]);
  });

  test("a negative or fractional millisecond duration names the key and the value", () => {
    const file = writeConfig(minimal({ upstreams: [{ ...DIFY, timeouts: { connect: -5, idle: 1.5 } }] }));
    assert.deepEqual(loadError({ config: file }).problems, [
      "upstreams[0].timeouts.connect: expected a non-negative integer of milliseconds, got -5",
      "upstreams[0].timeouts.idle: expected a non-negative integer of milliseconds, got 1.5",
    ]);
  });

  test("durations and sizes accept every documented unit", () => {
    const file = writeConfig(
      minimal({
        server: {
          requestTimeout: "1h",
          headersTimeout: "1.5s",
          keepAliveTimeout: 250,
          maxHeaderSize: "1MiB",
        },
        upstreams: [{ ...DIFY, timeouts: { connect: "250ms", response: "2m" } }],
      }),
    );
    const { config } = loadConfig({ config: file }, {});
    assert.equal(config.server.requestTimeout, 3_600_000);
    assert.equal(config.server.headersTimeout, 1_500);
    assert.equal(config.server.keepAliveTimeout, 250);
    assert.equal(config.server.maxHeaderSize, 1024 * 1024);
    assert.deepEqual(
      [config.upstreams[0]?.timeouts.connect, config.upstreams[0]?.timeouts.response],
      [250, 120_000],
    );
  });

  test("a bad size names the key and the bad value", () => {
    const file = writeConfig(minimal({ server: { maxHeaderSize: "16 kilobytes" } }));
    assert.deepEqual(loadError({ config: file }).problems, [
      'server.maxHeaderSize: expected a size such as "512KiB" or "5MiB", got "16 kilobytes"',
    ]);
  });

  test("a value of the wrong type is not reported as missing", () => {
    const file = writeConfig(minimal({ listen: { port: "8080" } }));
    const problems = loadError({ config: file }).problems;
    assert.equal(problems.length, 1);
    assert.match(problems[0] ?? "", /^listen\.port: .*expected number, received string/);
  });

  test("a missing required key is reported as required", () => {
    const file = writeConfig(minimal({ upstreams: [{ name: "dify" }] }));
    assert.deepEqual(loadError({ config: file }).problems, ["upstreams[0].url: required"]);
  });

  test("a file without upstreams says one is needed", () => {
    const file = writeConfig({ upstreams: [], routes: [{ name: "default", upstream: "dify" }] });
    const problems = loadError({ config: file }).problems;
    assert.ok(
      problems.includes("upstreams: expected at least one upstream (or pass --upstream URL)"),
      problems.join("\n"),
    );
  });

  test("the admin port must differ from the listen port", () => {
    const file = writeConfig(minimal({ listen: { port: 9000 }, admin: { port: 9000 } }));
    assert.deepEqual(loadError({ config: file }).problems, ["admin.port: must differ from listen.port"]);
  });

  test("invalid YAML names the file and the line", () => {
    const file = writeConfig("upstreams:\n  - name: dify\n    url: http://127.0.0.1:5001\n   routes: [\n");
    const err = loadError({ config: file });
    assert.equal(err.source, file);
    assert.match(err.message, new RegExp(`\\(${file}\\)`));
    assert.match(err.problems[0] ?? "", /^not valid YAML at line 4: /);
  });

  test("a YAML file that is not a mapping is refused", () => {
    const file = writeConfig("- just\n- a list\n");
    assert.deepEqual(loadError({ config: file }).problems, ["(root): expected a mapping of keys to values"]);
  });

  test("a missing file names the file", () => {
    const file = join(dir, "does-not-exist.yaml");
    const err = loadError({ config: file });
    assert.equal(err.source, file);
    assert.match(err.problems[0] ?? "", /^cannot read the file: ENOENT/);
    assert.ok(err.message.includes(file));
  });

  test("a JSON config file is accepted", () => {
    const file = writeConfig(minimal({ listen: { port: 8123 } }));
    assert.ok(file.endsWith(".json"));
    const { config } = loadConfig({ config: file }, {});
    assert.equal(config.listen.port, 8123);
    assert.equal(config.upstreams[0]?.name, "dify");
  });

  test("invalid JSON names the file", () => {
    const file = writeConfig('{"upstreams": [,]}', "json");
    const err = loadError({ config: file });
    assert.equal(err.source, file);
    assert.match(err.problems[0] ?? "", /^not valid JSON: /);
  });
});

describe("the loaded config", () => {
  test("is deeply frozen", () => {
    const { config } = loadConfig({ config: EXAMPLE }, {});
    const nodes: unknown[] = [
      config,
      config.listen,
      config.trustProxy,
      config.upstreams,
      config.upstreams[0],
      config.upstreams[0]?.timeouts,
      config.routes[0]?.match,
    ];
    for (const node of nodes) assert.ok(Object.isFrozen(node));
    assert.throws(() => {
      (config.listen as { port: number }).port = 1;
    }, TypeError);
    assert.throws(() => (config.routes as unknown[]).push({}), TypeError);
    assert.equal(config.listen.port, 8080);
  });

  test("is a fresh object each load, untouched by later loads with other sources", () => {
    const a = loadConfig({ config: EXAMPLE }, {}).config;
    const b = loadConfig({ config: EXAMPLE, port: "8099" }, {}).config;
    assert.equal(a.listen.port, 8080);
    assert.equal(b.listen.port, 8099);
  });
});
