// A private nginx (master + workers) rendered from nginx.conf.example into a temp dir, on a free loopback port.
// The rendering follows the contract written at the top of nginx.conf.example: exact-string replacements only,
// each target required exactly once, so a drift in the example fails loudly here instead of testing a stale copy.
import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { connect } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { findExecutable } from "./binaries.js";
import { closedPort } from "./upstream.js";

export const EXAMPLE_CONF = new URL("../../nginx.conf.example", import.meta.url).pathname;

const READY_TIMEOUT_MS = 5_000;
const STOP_TIMEOUT_MS = 5_000;
const NOT_FOUND = 'nginx not found: install it with "apt-get install -y nginx"';

export interface TestNginx {
  readonly port: number;
  readonly url: string;
  /** SIGQUIT (graceful), then SIGKILL to the whole process group if it has not exited within 5 s. */
  stop(): Promise<void>;
  /** The error log written so far (kept after stop()). */
  errorLog(): string;
}

export interface RenderOptions {
  /** Temp dir holding pid, logs and *_temp_path dirs (the nginx prefix). */
  prefix: string;
  /** Replaces `listen 80;`; omitted: kept as shipped. */
  listenPort?: number;
  /** Replaces the two example `server 127.0.0.1:808x` lines; omitted: kept as shipped. */
  upstreamPorts?: number[];
}

/** /usr/sbin/nginx, else the first `nginx` on PATH; throws with the install command when there is none. */
export function nginxBinary(): string {
  return findExecutable("nginx", "/usr/sbin", NOT_FOUND);
}

/**
 * Replaces the one directive line (comments ignored) whose trimmed text is `target` with `lines`, each indented
 * like the original; `[]` deletes it. Throws unless exactly one such line exists.
 */
function replaceLine(conf: string, target: string, lines: string[]): string {
  const all = conf.split("\n");
  const hits = all.flatMap((l, i) => (l.trim() === target ? [i] : []));
  const at = hits[0];
  if (hits.length !== 1 || at === undefined) {
    throw new Error(
      `nginx.conf.example must contain the line "${target}" exactly once, found ${hits.length} ` +
        "(see its rendering contract); update the example or test/helpers/nginx.ts",
    );
  }
  const indent = /^\s*/.exec(all[at] ?? "")?.[0] ?? "";
  all.splice(at, 1, ...lines.map((l) => indent + l));
  return all.join("\n");
}

/** The example with filesystem paths moved into `opts.prefix` and, when given, the ports swapped. */
export function renderNginxConf(opts: RenderOptions): string {
  const p = opts.prefix;
  const tempDirs = ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"];
  for (const name of tempDirs) mkdirSync(join(p, "temp", name), { recursive: true });
  let conf = readFileSync(EXAMPLE_CONF, "utf8");
  // Workers run as root so they can use temp dirs under a root-owned 0700 mkdtemp dir; unprivileged: no user switch.
  const isRoot = process.getuid?.() === 0;
  conf = replaceLine(conf, "user www-data;", isRoot ? ["user root;"] : []);
  conf = replaceLine(conf, "pid /run/nginx.pid;", [`pid ${join(p, "nginx.pid")};`]);
  conf = replaceLine(conf, "error_log /var/log/nginx/error.log warn;", [
    `error_log ${join(p, "error.log")} info;`,
  ]);
  conf = replaceLine(conf, "access_log /var/log/nginx/access.log cachegate;", [
    `access_log ${join(p, "access.log")} cachegate;`,
  ]);
  conf = replaceLine(conf, "http {", [
    "http {",
    ...tempDirs.map((name) => `  ${name}_temp_path ${join(p, "temp", name)};`),
  ]);
  if (opts.listenPort !== undefined) {
    conf = replaceLine(conf, "listen 80;", [`listen 127.0.0.1:${opts.listenPort};`]);
  }
  if (opts.upstreamPorts !== undefined) {
    if (opts.upstreamPorts.length === 0) throw new Error("startNginx needs at least one upstream port");
    const params = " max_fails=3 fail_timeout=10s;";
    const servers = opts.upstreamPorts.map((port) => `server 127.0.0.1:${port}${params}`);
    conf = replaceLine(conf, `server 127.0.0.1:8080${params}`, servers);
    conf = replaceLine(conf, `server 127.0.0.1:8081${params}`, []);
  }
  // Foreground master with workers, as in production; the test owns the process.
  return `daemon off;\nmaster_process on;\n${conf}`;
}

/**
 * `-p <prefix> -c <conf>`, plus `-e` (nginx >= 1.19.5) so even messages logged before the config is read land in
 * the prefix rather than in the compiled-in /var/log/nginx/error.log.
 */
function nginxArgs(bin: string, prefix: string, confPath: string): string[] {
  const v = spawnSync(bin, ["-v"], { encoding: "utf8", timeout: 5_000 });
  const [major = 0, minor = 0, patch = 0] = (/nginx\/(\d+)\.(\d+)\.(\d+)/.exec(v.stderr ?? "") ?? [])
    .slice(1)
    .map(Number);
  const hasE = major > 1 || (major === 1 && (minor > 19 || (minor === 19 && patch >= 5)));
  return ["-p", prefix, ...(hasE ? ["-e", join(prefix, "error.log")] : []), "-c", confPath];
}

/** `nginx -t` on a rendered config; throws with nginx's own output when it rejects it. */
export function testNginxConf(confPath: string, prefix: string): string {
  const bin = nginxBinary();
  const r = spawnSync(bin, ["-t", ...nginxArgs(bin, prefix, confPath)], {
    encoding: "utf8",
    timeout: 10_000,
  });
  const output = `${r.stdout ?? ""}${r.stderr ?? ""}`;
  if (r.status !== 0) {
    throw new Error(`nginx -t rejected ${confPath} (exit ${r.status ?? r.signal}):\n${output}`);
  }
  return output;
}

function canConnect(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect({ port, host: "127.0.0.1" });
    s.once("connect", () => {
      s.destroy();
      resolve(true);
    });
    s.once("error", () => resolve(false));
  });
}

function exited(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => child.once("exit", () => resolve()));
}

function killGroup(pid: number | undefined, signal: NodeJS.Signals): void {
  if (pid === undefined) return;
  try {
    process.kill(-pid, signal); // the group: workers too, which outlive a SIGKILLed master
  } catch {
    // already gone
  }
}

export async function startNginx(opts: { upstreamPorts: number[] }): Promise<TestNginx> {
  const bin = nginxBinary();
  const prefix = mkdtempSync(join(tmpdir(), "cachegate-nginx-"));
  const port = await closedPort();
  const confPath = join(prefix, "nginx.conf");
  const errorLogPath = join(prefix, "error.log");
  let lastLog = "";
  const errorLog = () => {
    if (existsSync(errorLogPath)) lastLog = readFileSync(errorLogPath, "utf8");
    return lastLog;
  };
  try {
    writeFileSync(confPath, renderNginxConf({ prefix, listenPort: port, upstreamPorts: opts.upstreamPorts }));
    testNginxConf(confPath, prefix);
  } catch (err) {
    rmSync(prefix, { recursive: true, force: true });
    throw err;
  }

  // Own process group, so stop() can reach the workers even if the master has to be SIGKILLed.
  const child = spawn(bin, nginxArgs(bin, prefix, confPath), {
    detached: true,
    stdio: ["ignore", "pipe", "pipe"],
  });
  let output = "";
  const collect = (chunk: Buffer) => {
    output += chunk.toString("utf8");
  };
  child.stdout?.on("data", collect);
  child.stderr?.on("data", collect);
  child.once("error", (err) => {
    output += `spawn failed: ${err.message}\n`;
  });
  // Safety net: a test process that dies without calling stop() must not leave nginx holding the port.
  const onExit = () => killGroup(child.pid, "SIGKILL");
  process.once("exit", onExit);

  let stopping: Promise<void> | undefined;
  const stop = (): Promise<void> => {
    stopping ??= (async () => {
      const done = exited(child);
      killGroup(child.pid, "SIGQUIT");
      let timer: NodeJS.Timeout | undefined;
      const timedOut = await Promise.race([
        done.then(() => false),
        new Promise<boolean>((resolve) => {
          timer = setTimeout(() => resolve(true), STOP_TIMEOUT_MS);
        }),
      ]);
      clearTimeout(timer);
      // Workers finishing a graceful quit may outlive the master by a moment; SIGKILL is a no-op if all are gone.
      killGroup(child.pid, "SIGKILL");
      if (timedOut) await done;
      process.off("exit", onExit);
      errorLog();
      rmSync(prefix, { recursive: true, force: true });
    })();
    return stopping;
  };

  const deadline = Date.now() + READY_TIMEOUT_MS;
  for (;;) {
    if (child.exitCode !== null || child.signalCode !== null) {
      await stop();
      throw new Error(
        `nginx exited during startup (${child.exitCode ?? child.signalCode}):\n${output}\n${lastLog}`,
      );
    }
    if (await canConnect(port)) break;
    if (Date.now() > deadline) {
      await stop();
      throw new Error(
        `nginx did not accept connections on ${port} within ${READY_TIMEOUT_MS} ms:\n${lastLog}`,
      );
    }
    await new Promise((resolve) => setTimeout(resolve, 25));
  }

  return { port, url: `http://127.0.0.1:${port}`, stop, errorLog };
}
