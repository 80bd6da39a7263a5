// The ops package (docker/, .dockerignore) checked without a Docker engine: every reference between the files must
// resolve — compose → Dockerfile stages and mounted files, nginx → compose services, Prometheus → admin ports,
// Grafana → datasource and metrics cachegate documents — and the configs must pass the real loaders (cachegate's,
// `nginx -t`).
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import {
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { createInterface } from "node:readline";
import { after, describe, test } from "node:test";
import pino from "pino";
import { Registry } from "prom-client";
import { parse as parseYaml } from "yaml";
import { loadConfig } from "../../config/load.js";
import type { Config } from "../../config/schema.js";
import { BUILTIN_PLUGINS } from "../../plugins/index.js";
import { PluginHost } from "../../proxy/plugins.js";
import { simpleConfig, startGate } from "../helpers/cachegate.js";
import { nginxBinary, testNginxConf } from "../helpers/nginx.js";
import { closedPort, echoHandler, startUpstream } from "../helpers/upstream.js";

const ROOT = resolve(new URL("../..", import.meta.url).pathname);
const DOCKER = join(ROOT, "docker");
const read = (p: string) => readFileSync(join(ROOT, p), "utf8");
const TOKEN = "test-admin-token-0123456789abcdef";
/** The image's config path: CMD in the Dockerfile, the mount target in compose. */
const CONFIG_PATH = "/etc/cachegate/config.yaml";

type Dict = Record<string, unknown>;
const isDict = (v: unknown): v is Dict => typeof v === "object" && v !== null && !Array.isArray(v);
function dict(v: unknown, what: string): Dict {
  assert.ok(isDict(v), `${what}: expected a mapping`);
  return v;
}

// ---------------------------------------------------------------------------------------------------------------
// Parsers for the files under test.

interface Instruction {
  op: string;
  args: string;
}
interface Stage {
  name: string;
  image: string;
  steps: Instruction[];
}

/** Dockerfile stages with their instructions (comments dropped, `\` continuations joined). */
function parseDockerfile(text: string): Stage[] {
  const lines: string[] = [];
  let pending = "";
  for (const raw of text.split("\n")) {
    const line = raw.trim();
    if (pending === "" && (line === "" || line.startsWith("#"))) continue;
    if (line.endsWith("\\")) {
      pending += `${line.slice(0, -1).trim()} `;
      continue;
    }
    lines.push(pending + line);
    pending = "";
  }
  const stages: Stage[] = [];
  const globalArgs = new Map<string, string>(); // ARGs before the first FROM: usable in FROM lines
  for (const line of lines) {
    const m = /^(\w+)\s+(.*)$/.exec(line);
    assert.ok(m, `unparsable Dockerfile line: ${line}`);
    const op = (m[1] as string).toUpperCase();
    const args = m[2] as string;
    if (op === "FROM") {
      const from = /^(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?$/i.exec(args);
      assert.ok(from, `unparsable FROM: ${args}`);
      const image = (from[1] as string).replace(/\$\{(\w+)\}/g, (_, n: string) => globalArgs.get(n) ?? "");
      stages.push({ image, name: from[2] ?? String(stages.length), steps: [] });
    } else if (op === "ARG" && stages.length === 0) {
      const arg = /^(\w+)=(\S+)$/.exec(args);
      if (arg) globalArgs.set(arg[1] as string, arg[2] as string);
    } else {
      assert.ok(stages.length > 0, `${op} before the first FROM`);
      stages.at(-1)?.steps.push({ op, args });
    }
  }
  return stages;
}

/** The JSON array of an exec-form instruction, or undefined for the shell form. */
function execForm(args: string): string[] | undefined {
  try {
    const v: unknown = JSON.parse(args);
    return Array.isArray(v) && v.every((s) => typeof s === "string") ? v : undefined;
  } catch {
    return undefined;
  }
}

function last(stage: Stage, op: string): Instruction | undefined {
  return stage.steps.filter((s) => s.op === op).at(-1);
}

/** Directive lines of an nginx config: comments and blank lines dropped, whitespace trimmed. */
function directives(conf: string): string[] {
  return conf
    .split("\n")
    .map((l) => l.replace(/#.*$/, "").trim())
    .filter(Boolean);
}

/** host:port of every `server` in `upstream <name> { … }`. */
function upstreamServers(conf: string, name: string): Array<{ host: string; port: number }> {
  const block = new RegExp(`upstream\\s+${name}\\s*\\{([^}]*)\\}`).exec(directives(conf).join("\n"));
  assert.ok(block, `no upstream ${name} block`);
  return [...(block[1] as string).matchAll(/^server\s+([^:\s]+):(\d+)/gm)].map((m) => ({
    host: m[1] as string,
    port: Number(m[2]),
  }));
}

/** Metric names documented in README.md's metrics table (`process_*` style rows become prefixes). */
function documentedMetrics(): { names: Map<string, string>; prefixes: string[] } {
  const readme = read("README.md");
  const start = readme.indexOf("### Metrics");
  assert.ok(start >= 0, 'README.md has no "### Metrics" section');
  const names = new Map<string, string>(); // name → type
  const prefixes: string[] = [];
  const rows = readme
    .slice(start)
    .split("\n")
    .slice(1)
    .filter((l) => l.startsWith("|"));
  for (const row of rows) {
    const cells = row.split("|").map((c) => c.trim());
    const first = cells[1] ?? "";
    if (!first.startsWith("`")) continue; // header and separator rows
    for (const m of first.matchAll(/`([a-z_:*]+)`/g)) {
      const name = m[1] as string;
      if (name.endsWith("*")) prefixes.push(name.slice(0, -1));
      else names.set(name, cells[2] ?? "");
    }
  }
  assert.ok(names.size > 5, "README.md's metrics table parsed to almost nothing; did its layout change?");
  return { names, prefixes };
}

/** Is `series` (as written in PromQL) a documented metric? Histogram series carry _bucket/_sum/_count. */
function isDocumented(series: string, doc: ReturnType<typeof documentedMetrics>): boolean {
  if (doc.names.has(series)) return true;
  if (doc.prefixes.some((p) => series.startsWith(p))) return true;
  const m = /^(.*)_(bucket|sum|count)$/.exec(series);
  const type = m ? doc.names.get(m[1] as string) : undefined;
  return type === "histogram" || (type === "summary" && m?.[2] !== "bucket");
}

const METRIC_RE = /\b(?:cachegate|process|nodejs)_[a-z0-9_]+\b/g;
/** Identifiers used as series selectors (`name{` or `name[`), whatever their prefix: catches typos. */
const SELECTOR_RE = /\b([a-zA-Z_:][a-zA-Z0-9_:]*)\s*[{[]/g;
const PROMQL_NOT_METRICS = new Set([
  "by",
  "without",
  "on",
  "ignoring",
  "group_left",
  "group_right",
  "offset",
]);

function metricsIn(expr: string): string[] {
  const out = new Set(expr.match(METRIC_RE) ?? []);
  for (const m of expr.matchAll(SELECTOR_RE)) {
    const id = m[1] as string;
    if (!PROMQL_NOT_METRICS.has(id)) out.add(id);
  }
  return [...out];
}

// ---------------------------------------------------------------------------------------------------------------
// The files.

const compose = dict(parseYaml(read("docker/compose.yaml"), { merge: true }), "docker/compose.yaml");
const services = dict(compose.services, "services");
const serviceNames = Object.keys(services);
const service = (name: string) => dict(services[name], `services.${name}`);
const dockerfileText = read("docker/Dockerfile");
const stages = parseDockerfile(dockerfileText);
const runtime = stages.at(-1) as Stage;

function buildOf(name: string): { dockerfile: string; target: string | undefined } | undefined {
  const build = service(name).build;
  if (build === undefined) return undefined;
  const b = typeof build === "string" ? { context: build } : dict(build, `services.${name}.build`);
  const context = resolve(DOCKER, String(b.context ?? "."));
  return {
    dockerfile: resolve(context, String(b.dockerfile ?? "Dockerfile")),
    target: b.target === undefined ? undefined : String(b.target),
  };
}

/** The cachegate instances: services built from the Dockerfile's runtime (last) stage. */
const gateServices = serviceNames.filter((n) => {
  const b = buildOf(n);
  return b !== undefined && (b.target ?? runtime.name) === runtime.name;
});

function dependsOn(name: string): Map<string, string> {
  const d = service(name).depends_on;
  if (d === undefined) return new Map();
  if (Array.isArray(d)) return new Map(d.map((s) => [String(s), "service_started"]));
  return new Map(
    Object.entries(dict(d, `services.${name}.depends_on`)).map(([k, v]) => [
      k,
      String(isDict(v) ? (v.condition ?? "service_started") : "service_started"),
    ]),
  );
}

interface Mount {
  source: string;
  target: string;
}
/** Bind mounts (short syntax `./src:/target[:ro]` or long syntax with type: bind), sources resolved. */
function bindMounts(name: string): Mount[] {
  const vols = service(name).volumes;
  if (vols === undefined) return [];
  assert.ok(Array.isArray(vols), `services.${name}.volumes: expected a list`);
  return vols.flatMap((v): Mount[] => {
    if (typeof v === "string") {
      const [source = "", target = ""] = v.split(":");
      if (!source.startsWith(".") && !source.startsWith("/")) return []; // a named volume
      return [{ source: resolve(DOCKER, source), target }];
    }
    const m = dict(v, `services.${name}.volumes[]`);
    if (m.type !== "bind") return [];
    return [{ source: resolve(DOCKER, String(m.source)), target: String(m.target) }];
  });
}

function mountOf(name: string, target: string): Mount {
  const m = bindMounts(name).find((x) => x.target === target);
  assert.ok(m, `services.${name} mounts nothing at ${target}`);
  return m;
}

function envOf(name: string): Dict {
  const env = service(name).environment;
  if (env === undefined) return {};
  if (Array.isArray(env)) {
    return Object.fromEntries(env.map((e) => String(e).split(/=(.*)/s).slice(0, 2) as [string, string]));
  }
  return dict(env, `services.${name}.environment`);
}

const loadDockerConfig = (env: NodeJS.ProcessEnv = { CACHEGATE_ADMIN_TOKEN: TOKEN }): Config =>
  loadConfig({ config: join(DOCKER, "cachegate.yaml") }, env).config;

// ---------------------------------------------------------------------------------------------------------------

describe("docker/Dockerfile", () => {
  test("has a build stage and ends in a node:20 slim runtime stage", () => {
    assert.ok(stages.length >= 2, "multi-stage");
    assert.equal(runtime.image, "node:20-bookworm-slim");
    const build = stages.find((s) => s.name === "build");
    assert.ok(build, "a stage named build");
    const runs = build.steps.filter((s) => s.op === "RUN").map((s) => s.args);
    assert.ok(
      runs.some((r) => /\bnpm ci\b/.test(r)),
      "build stage runs npm ci",
    );
    assert.ok(
      runs.some((r) => /\bnpm run build\b/.test(r)),
      "build stage runs the build",
    );
  });

  test("the runtime stage installs production dependencies only and copies dist/ from the build", () => {
    const runs = runtime.steps.filter((s) => s.op === "RUN").map((s) => s.args);
    assert.ok(
      runs.some((r) => /\bnpm ci\b.*--omit=dev/.test(r) && /--ignore-scripts/.test(r)),
      `runtime RUN: ${runs.join(" | ")}`,
    );
    const copies = runtime.steps.filter((s) => s.op === "COPY").map((s) => s.args);
    assert.ok(
      copies.some((c) => /^--from=build\s+\/app\/dist\/?\s+dist\/?$/.test(c)),
      `runtime COPY: ${copies.join(" | ")}`,
    );
    const pkg = JSON.parse(read("package.json")) as { bin: Record<string, string> };
    assert.equal(pkg.bin.cachegate, "dist/proxy/main.js", "the ENTRYPOINT runs what package.json's bin runs");
  });

  test("runs node in exec form (signals reach it), with the config at the documented path", () => {
    const entry = last(runtime, "ENTRYPOINT");
    assert.ok(entry, "ENTRYPOINT");
    assert.deepEqual(execForm(entry.args), ["node", "dist/proxy/main.js"]);
    const cmd = last(runtime, "CMD");
    assert.ok(cmd, "CMD");
    assert.deepEqual(execForm(cmd.args), ["--config", CONFIG_PATH]);
  });

  test("every stage that runs something runs it as a non-root user", () => {
    for (const stage of stages.filter((s) => last(s, "ENTRYPOINT") || last(s, "CMD"))) {
      const user = last(stage, "USER");
      assert.ok(user, `stage ${stage.name}: USER`);
      assert.doesNotMatch(user.args, /^(root|0)(:|$)/, `stage ${stage.name} runs as ${user.args}`);
      const entry = last(stage, "ENTRYPOINT");
      if (entry) assert.ok(execForm(entry.args), `stage ${stage.name}: exec-form ENTRYPOINT`);
    }
  });

  test("HEALTHCHECK probes the admin /healthz, EXPOSE lists the proxy and admin ports", () => {
    const hc = last(runtime, "HEALTHCHECK");
    assert.ok(hc, "HEALTHCHECK");
    assert.match(
      hc.args,
      /\bCMD\s+\[/,
      "exec-form healthcheck (the slim image has no curl, no shell wrapper)",
    );
    assert.match(hc.args, /127\.0\.0\.1:.*9091|CACHEGATE_ADMIN_PORT/);
    assert.match(hc.args, /\/healthz/);
    const exposed = runtime.steps
      .filter((s) => s.op === "EXPOSE")
      .flatMap((s) => s.args.split(/\s+/))
      .map((p) => Number(p.replace(/\/tcp$/, "")));
    assert.deepEqual(exposed.sort(), [8080, 9091]);
  });

  test("the built-in config listens on 0.0.0.0 (proxy 8080, admin 9091) and takes its upstream from the env", () => {
    const copy = runtime.steps.find((s) => s.op === "COPY" && s.args.endsWith(` ${CONFIG_PATH}`));
    assert.ok(copy, `a default config copied to ${CONFIG_PATH}`);
    const src = copy.args.split(/\s+/)[0] as string;
    const { config } = loadConfig(
      { config: join(ROOT, src) },
      { CACHEGATE_UPSTREAM: "http://dify-api:5001", CACHEGATE_ADMIN_TOKEN: TOKEN },
    );
    assert.equal(config.listen.host, "0.0.0.0");
    assert.equal(config.listen.port, 8080);
    assert.equal(config.admin.host, "0.0.0.0");
    assert.equal(config.admin.port, 9091);
    assert.equal(config.upstreams[0]?.url, "http://dify-api:5001");
  });

  test("every file it copies from the build context exists and is not excluded by .dockerignore", () => {
    const ignored = directives(read(".dockerignore")).map((p) => p.replace(/\/$/, ""));
    const sources = stages.flatMap((s) =>
      s.steps
        .filter((i) => (i.op === "COPY" || i.op === "ADD") && !/^--from=/.test(i.args))
        .flatMap((i) =>
          i.args
            .split(/\s+/)
            .filter((a) => !a.startsWith("--"))
            .slice(0, -1),
        ),
    );
    assert.ok(sources.length >= 5, `sources: ${sources.join(", ")}`);
    for (const src of sources) {
      assert.ok(existsSync(join(ROOT, src)), `COPY ${src}: no such file in the repository`);
      const top = src.replace(/\/$/, "");
      assert.ok(
        !ignored.includes(top) && !ignored.includes(top.split("/")[0] as string),
        `${src} is dockerignored`,
      );
    }
    for (const must of ["node_modules", "dist", ".git"]) {
      assert.ok(ignored.includes(must), `.dockerignore keeps ${must} out of the context`);
    }
  });

  test("the runtime needs no dev dependency: proxy/, config/ and plugins/ import only production packages", () => {
    const pkg = JSON.parse(read("package.json")) as { dependencies: Record<string, string> };
    const walk = (dir: string): string[] =>
      readdirSync(join(ROOT, dir), { withFileTypes: true }).flatMap((e) =>
        e.isDirectory() ? walk(join(dir, e.name)) : e.name.endsWith(".ts") ? [join(dir, e.name)] : [],
      );
    const missing: string[] = [];
    for (const file of ["proxy", "config", "plugins"].flatMap(walk)) {
      const src = read(file);
      // Value imports only: `import type` and `export type` vanish from the compiled output.
      const specs = [
        ...src.matchAll(/^\s*(?:import|export)(?!\s+type\b)[^"';]*?from\s+"([^"]+)"/gm),
        ...src.matchAll(/\bimport\(\s*"([^"]+)"\s*\)/g),
      ].map((m) => m[1] as string);
      for (const spec of specs) {
        if (spec.startsWith(".") || spec.startsWith("node:")) continue;
        const name = spec.startsWith("@")
          ? spec.split("/").slice(0, 2).join("/")
          : (spec.split("/")[0] as string);
        if (!(name in pkg.dependencies)) missing.push(`${file}: ${spec}`);
      }
    }
    assert.deepEqual(missing, [], "imported at run time but not in package.json dependencies");
  });
});

describe("the demo-upstream image contents", () => {
  const stage = stages.find((s) => s.name === "demo-upstream");
  let dir: string | undefined;
  after(() => {
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  test("compile as the Dockerfile compiles them and serve /health, then stop on SIGTERM", async () => {
    assert.ok(stage, "a demo-upstream stage");
    const tsconfig = /tsc -p (\S+)/.exec(
      (stages.find((s) => s.name === "build") as Stage).steps.map((s) => s.args).join("\n"),
    )?.[1];
    assert.ok(tsconfig, "the build stage compiles the simulator with tsc -p <file>");
    dir = mkdtempSync(join(tmpdir(), "cachegate-demo-image-"));
    const tsc = spawnSync(
      process.execPath,
      [join(ROOT, "node_modules/typescript/bin/tsc"), "-p", join(ROOT, tsconfig), "--outDir", dir],
      { cwd: ROOT, encoding: "utf8", timeout: 60_000 },
    );
    assert.equal(tsc.status, 0, `tsc failed:\n${tsc.stdout}${tsc.stderr}`);
    // As the stage lays it out: package.json (for "type": "module") beside the compiled files, no node_modules.
    writeFileSync(join(dir, "package.json"), read("package.json"));
    const entry = execForm((last(stage, "ENTRYPOINT") as Instruction).args) ?? [];
    assert.equal(entry[0], "node");
    const script = join(dir, entry[1] as string);
    assert.ok(existsSync(script), `${entry[1]} is not what tsc emits`);

    const child = spawn(process.execPath, [script], {
      cwd: dir,
      env: {
        PATH: process.env.PATH,
        DIFY_SIM_HOST: "127.0.0.1",
        DIFY_SIM_PORT: "0",
        DIFY_SIM_ANSWER_MS: "10",
      },
      stdio: ["ignore", "pipe", "pipe"],
    });
    const exited = new Promise<number | null>((res) => child.once("exit", (code) => res(code)));
    try {
      const lines = createInterface({ input: child.stdout });
      const ready = await Promise.race([
        new Promise<{ port: number }>((res) =>
          lines.once("line", (l) => res(JSON.parse(l) as { port: number })),
        ),
        new Promise<never>((_, rej) => setTimeout(() => rej(new Error("no ready line within 10 s")), 10_000)),
      ]);
      const health = await fetch(`http://127.0.0.1:${ready.port}/health`);
      assert.equal(health.status, 200);
      const answer = await fetch(`http://127.0.0.1:${ready.port}/v1/completion-messages`, {
        method: "POST",
        headers: { authorization: "Bearer app-x", "content-type": "application/json" },
        body: JSON.stringify({ inputs: { query: "hi" }, user: "u", response_mode: "blocking" }),
      });
      const body = (await answer.json()) as { metadata: { usage: { total_tokens: number } } };
      assert.ok(body.metadata.usage.total_tokens > 0);
    } finally {
      child.kill("SIGTERM");
    }
    assert.equal(await exited, 0, "exits 0 on SIGTERM");
  });
});

describe("docker/compose.yaml", () => {
  test("runs nginx, two cachegate instances, the upstream, Redis, Prometheus and Grafana", () => {
    for (const s of ["nginx", "redis", "prometheus", "grafana", "dify-sim"]) {
      assert.ok(serviceNames.includes(s), `service ${s}`);
    }
    assert.deepEqual(gateServices.sort(), ["cachegate-1", "cachegate-2"]);
  });

  test("every build points at an existing Dockerfile and one of its stages", () => {
    for (const name of serviceNames) {
      const b = buildOf(name);
      if (!b) {
        assert.ok(typeof service(name).image === "string", `services.${name}: neither build nor image`);
        continue;
      }
      assert.ok(
        existsSync(b.dockerfile),
        `services.${name}.build.dockerfile: ${b.dockerfile} does not exist`,
      );
      const names = parseDockerfile(readFileSync(b.dockerfile, "utf8")).map((s) => s.name);
      if (b.target)
        assert.ok(names.includes(b.target), `services.${name}.build.target ${b.target} not in ${names}`);
    }
  });

  test("every bind-mounted file exists in the repository", () => {
    let count = 0;
    for (const name of serviceNames) {
      for (const m of bindMounts(name)) {
        count++;
        assert.ok(
          m.source.startsWith(`${ROOT}/`),
          `services.${name}: ${m.source} lies outside the repository`,
        );
        assert.ok(existsSync(m.source), `services.${name}: ${m.source} does not exist`);
        const fileTarget = /\.(ya?ml|conf|json)$/.test(m.target);
        assert.equal(statSync(m.source).isFile(), fileTarget, `services.${name}: ${m.source} → ${m.target}`);
      }
    }
    assert.ok(count >= 6, `only ${count} bind mounts`);
  });

  test("depends_on names existing services, and service_healthy ones have a healthcheck", () => {
    for (const name of serviceNames) {
      for (const [dep, condition] of dependsOn(name)) {
        assert.ok(serviceNames.includes(dep), `services.${name}.depends_on: unknown service ${dep}`);
        assert.ok(
          ["service_started", "service_healthy", "service_completed_successfully"].includes(condition),
          `services.${name}.depends_on.${dep}: condition ${condition}`,
        );
        if (condition === "service_healthy") {
          assert.ok(
            service(dep).healthcheck,
            `${name} waits for ${dep} to be healthy, but it has no healthcheck`,
          );
        }
      }
    }
    assert.equal(dependsOn("nginx").get("cachegate-1"), "service_healthy");
    for (const g of gateServices) {
      assert.equal(dependsOn(g).get("redis"), "service_healthy");
      assert.ok(dependsOn(g).has("dify-sim"));
    }
  });

  test("every service has a healthcheck", () => {
    for (const name of serviceNames) {
      const hc = dict(service(name).healthcheck, `services.${name}.healthcheck`);
      assert.ok(
        Array.isArray(hc.test) && hc.test[0] === "CMD",
        `services.${name}: exec-form healthcheck test`,
      );
    }
  });

  test("cachegate instances mount docker/cachegate.yaml at the image's config path and get the token from the env", () => {
    for (const g of gateServices) {
      assert.equal(mountOf(g, CONFIG_PATH).source, join(DOCKER, "cachegate.yaml"));
      assert.match(String(envOf(g).CACHEGATE_ADMIN_TOKEN), /^\$\{CACHEGATE_ADMIN_TOKEN(:?[?-].*)?\}$/);
      assert.equal(service(g).command, undefined, "the image's CMD (--config) applies");
    }
  });
});

describe("docker/cachegate.yaml", () => {
  test("passes the real config loader", () => {
    const config = loadDockerConfig();
    assert.equal(config.admin.token, TOKEN);
    assert.equal(config.listen.host, "0.0.0.0");
    assert.equal(config.admin.host, "0.0.0.0", "Prometheus in another container scrapes the admin port");
  });

  test("points at compose services: Redis and the upstream", () => {
    const config = loadDockerConfig();
    const redis = new URL(config.redis.url ?? "");
    assert.equal(redis.hostname, "redis");
    assert.ok(serviceNames.includes(redis.hostname));
    assert.equal(redis.port || "6379", "6379");
    for (const u of config.upstreams) {
      const host = new URL(u.url).hostname;
      assert.ok(serviceNames.includes(host), `upstream ${u.name}: ${host} is not a compose service`);
      assert.equal(new URL(u.url).port, String(envOf(host).DIFY_SIM_PORT ?? 5001));
    }
  });

  test("loads its plugins", async () => {
    const config = loadDockerConfig();
    for (const p of config.plugins) {
      const name = typeof p === "string" ? p : p.name;
      assert.ok(name && name in BUILTIN_PLUGINS, `plugin ${JSON.stringify(p)} is not built in`);
    }
    const host = await PluginHost.load(config.plugins, {
      logger: pino({ level: "silent" }),
      registry: new Registry(),
    });
    await host.close();
  });

  test("trusts the compose network's addresses, so nginx's X-Forwarded-For is believed", () => {
    const config = loadDockerConfig();
    for (const cidr of ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"])
      assert.ok(config.trustProxy.includes(cidr));
  });
});

describe("docker/nginx.conf", () => {
  const conf = read("docker/nginx.conf");

  test("sends traffic to the cachegate services on their proxy port", () => {
    const port = loadDockerConfig().listen.port;
    const servers = upstreamServers(conf, "cachegate");
    assert.deepEqual(servers.map((s) => s.host).sort(), [...gateServices].sort());
    for (const s of servers) assert.equal(s.port, port, `${s.host}:${s.port}`);
    assert.equal(mountOf("nginx", "/etc/nginx/nginx.conf").source, join(DOCKER, "nginx.conf"));
    const published = (service("nginx").ports as unknown[]).map(String);
    assert.ok(
      published.some((p) => p.endsWith(":80")),
      "nginx's listen 80 is published",
    );
  });

  test("is nginx.conf.example with only the worker user and the upstream servers changed", () => {
    const expected = directives(read("nginx.conf.example")).map((l) =>
      l === "user www-data;"
        ? "user nginx;"
        : l
            .replace(/^server 127\.0\.0\.1:8080 /, "server cachegate-1:8080 ")
            .replace(/^server 127\.0\.0\.1:8081 /, "server cachegate-2:8080 "),
    );
    const actual = directives(conf);
    const diff = expected.flatMap((l, i) =>
      actual[i] === l ? [] : [`line ${i}: expected "${l}", got "${actual[i]}"`],
    );
    assert.deepEqual(
      diff,
      [],
      "docker/nginx.conf drifted from nginx.conf.example: carry the example's change over (see its header)",
    );
    assert.equal(actual.length, expected.length);
  });

  test("nginx -t accepts it with the upstream hosts replaced by loopback ports", async () => {
    const prefix = mkdtempSync(join(tmpdir(), "cachegate-docker-nginx-"));
    try {
      const temps = ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"];
      for (const t of temps) mkdirSync(join(prefix, "temp", t), { recursive: true });
      const [p1, p2, listen] = [await closedPort(), await closedPort(), await closedPort()];
      const isRoot = process.getuid?.() === 0;
      const swaps: Array<[string, string]> = [
        ["user nginx;", isRoot ? "user root;" : ""],
        ["pid /run/nginx.pid;", `pid ${join(prefix, "nginx.pid")};`],
        ["error_log /var/log/nginx/error.log warn;", `error_log ${join(prefix, "error.log")} warn;`],
        [
          "access_log /var/log/nginx/access.log cachegate;",
          `access_log ${join(prefix, "access.log")} cachegate;`,
        ],
        ["http {", `http {\n${temps.map((t) => `${t}_temp_path ${join(prefix, "temp", t)};`).join("\n")}`],
        ["listen 80;", `listen 127.0.0.1:${listen};`],
        [
          "server cachegate-1:8080 max_fails=3 fail_timeout=10s;",
          `server 127.0.0.1:${p1} max_fails=3 fail_timeout=10s;`,
        ],
        [
          "server cachegate-2:8080 max_fails=3 fail_timeout=10s;",
          `server 127.0.0.1:${p2} max_fails=3 fail_timeout=10s;`,
        ],
      ];
      let lines = conf.split("\n");
      for (const [from, to] of swaps) {
        const hits = lines.filter((l) => l.trim() === from).length;
        assert.equal(hits, 1, `docker/nginx.conf must contain "${from}" exactly once`);
        lines = lines.map((l) => (l.trim() === from ? to : l));
      }
      const path = join(prefix, "nginx.conf");
      writeFileSync(path, lines.join("\n"));
      nginxBinary(); // throws with the install command when nginx is missing
      const out = testNginxConf(path, prefix);
      assert.match(out, /test is successful/);
    } finally {
      rmSync(prefix, { recursive: true, force: true });
    }
  });
});

describe("docker/prometheus.yml", () => {
  test("scrapes every cachegate instance's admin port, and nothing that is not one", () => {
    const prom = dict(parseYaml(read("docker/prometheus.yml")), "prometheus.yml");
    const port = loadDockerConfig().admin.port;
    const targets = (prom.scrape_configs as Dict[]).flatMap((job) =>
      ((job.static_configs ?? []) as Dict[]).flatMap((sc) => (sc.targets ?? []) as string[]),
    );
    assert.deepEqual(targets.sort(), gateServices.map((g) => `${g}:${port}`).sort());
    for (const job of prom.scrape_configs as Dict[]) assert.equal(job.metrics_path ?? "/metrics", "/metrics");
    assert.equal(
      mountOf("prometheus", "/etc/prometheus/prometheus.yml").source,
      join(DOCKER, "prometheus.yml"),
    );
  });
});

describe("Grafana provisioning and the dashboard", () => {
  const provisioned = dict(
    parseYaml(read("docker/grafana/provisioning/datasources/prometheus.yaml")),
    "datasources/prometheus.yaml",
  );
  const datasource = dict((provisioned.datasources as unknown[])[0], "datasources[0]");
  const dashboard = dict(JSON.parse(read("docker/grafana/dashboards/cachegate.json")), "cachegate.json");
  const panels = (dashboard.panels as Dict[]).filter((p) => p.type !== "row");
  const exprs = panels.flatMap((p) => ((p.targets ?? []) as Dict[]).map((t) => String(t.expr ?? "")));

  test("the datasource is the compose stack's Prometheus", () => {
    assert.equal(datasource.type, "prometheus");
    assert.ok(typeof datasource.uid === "string" && datasource.uid.length > 0);
    const url = new URL(String(datasource.url));
    assert.ok(serviceNames.includes(url.hostname), `${url.hostname} is not a compose service`);
    assert.equal(url.port, "9090");
    mountOf("grafana", "/etc/grafana/provisioning/datasources");
  });

  test("the dashboard provider reads the directory the dashboard is mounted in", () => {
    const providers = dict(
      parseYaml(read("docker/grafana/provisioning/dashboards/dashboards.yaml")),
      "dashboards.yaml",
    ).providers as Dict[];
    const path = String(dict(providers[0]?.options, "providers[0].options").path);
    const mount = mountOf("grafana", path);
    assert.ok(existsSync(join(mount.source, "cachegate.json")));
    mountOf("grafana", "/etc/grafana/provisioning/dashboards");
    const home = String(envOf("grafana").GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH ?? "");
    if (home) assert.equal(dirname(home), path);
  });

  test("every panel and query uses the provisioned datasource uid", () => {
    assert.ok(panels.length >= 7);
    for (const p of panels) {
      const ds = dict(p.datasource, `panel "${p.title}": datasource`);
      assert.equal(ds.uid, datasource.uid, `panel "${p.title}"`);
      const targets = (p.targets ?? []) as Dict[];
      assert.ok(targets.length > 0, `panel "${p.title}" has no query`);
      for (const t of targets) {
        assert.equal(
          dict(t.datasource, `panel "${p.title}" target`).uid,
          datasource.uid,
          `panel "${p.title}"`,
        );
      }
    }
    for (const v of ((dashboard.templating as Dict).list ?? []) as Dict[]) {
      assert.equal(dict(v.datasource, `variable ${v.name}`).uid, datasource.uid);
    }
  });

  test("shows request rate, hit ratio by tier, latency quantiles, concurrency limit, breaker, 429s, tokens saved", () => {
    const all = exprs.join("\n");
    for (const needle of [
      "cachegate_requests_total",
      "cachegate_cache_requests_total",
      "cachegate_cache_hits_total",
      "by (tier)",
      "histogram_quantile(0.5, sum by (le) (rate(cachegate_request_duration_seconds_bucket",
      "histogram_quantile(0.95,",
      "histogram_quantile(0.99,",
      "cachegate_upstream_concurrency_limit",
      "cachegate_breaker_state",
      "cachegate_rate_limited_total",
      "cachegate_dify_tokens_saved_total",
    ]) {
      assert.ok(all.includes(needle), `no panel query uses ${needle}`);
    }
  });

  test("every metric a panel queries is registered by a running cachegate with the dify plugin", async () => {
    const up = await startUpstream(echoHandler);
    const gate = await startGate({ ...simpleConfig(up.url), plugins: ["dify"], log: { level: "silent" } });
    try {
      const registered = new Set((await gate.metrics.registry.getMetricsAsJSON()).map((m) => m.name));
      const series = (name: string) =>
        registered.has(name.replace(/_(bucket|sum|count)$/, "")) || registered.has(name);
      const cachegateOnly = exprs.flatMap(metricsIn).filter((m) => m.startsWith("cachegate_"));
      assert.deepEqual([...new Set(cachegateOnly.filter((m) => !series(m)))], [], "not registered");
    } finally {
      await gate.close(100);
      await up.close();
    }
  });

  test("every metric a panel queries is one README.md documents as exported", () => {
    const doc = documentedMetrics();
    const variables = (((dashboard.templating as Dict).list ?? []) as Dict[]).map((v) =>
      String(v.definition ?? ""),
    );
    const undocumented = new Set<string>();
    for (const expr of [...exprs, ...variables]) {
      const used = metricsIn(expr);
      assert.ok(used.length > 0, `no metric found in ${expr}`);
      for (const m of used) if (!isDocumented(m, doc)) undocumented.add(m);
    }
    assert.deepEqual(
      [...undocumented].sort(),
      [],
      "queried by docker/grafana/dashboards/cachegate.json but not in README.md's metrics table: document them there or fix the query",
    );
  });
});
