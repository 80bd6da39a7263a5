// The benchmarks' child processes (upstream, bare proxy, cachegate variants): started from bench/<file>, compiled or
// through tsx, ready once they print their port; stopped together. And the CPU time a process has used (/proc).
import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import { readFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import type { ReadyLine } from "./child.js";

const BENCH_DIR = dirname(fileURLToPath(import.meta.url));
/** The repository root (compiled runs live in .bench-dist/bench/: two levels up there). */
export const ROOT = resolve(BENCH_DIR, import.meta.url.endsWith(".js") ? "../.." : "..");

export interface Child {
  readonly name: string;
  readonly proc: ChildProcess;
  readonly port: number;
  readonly url: string;
  /** stdout lines after the ready line (kept when `keepLines`, else echoed with the child's name). */
  readonly lines: string[];
}

export interface StartOptions {
  /** Pin the child (and its threads) to this CPU with taskset (Linux). */
  cpu?: number;
  /** Keep the child's later stdout lines in `lines` instead of echoing them. */
  keepLines?: boolean;
  /**
   * Run `file` compiled, from this bench directory instead of this checkout's (bench:ab's AB_BASELINE_DIR); also
   * when the caller runs through tsx, which would otherwise run this checkout's sources in its place.
   */
  benchDir?: string;
  /** A command the child runs under, e.g. `["valgrind", "--tool=callgrind"]` (then `node` and its arguments). */
  prefix?: string[];
  /** How long to wait for the ready line (default 30 s; a child under valgrind starts far slower). */
  startupTimeoutMs?: number;
}

const children: ChildProcess[] = [];
const STARTUP_TIMEOUT_MS = 30_000;

// `npm run bench` compiles the bench and the proxy with tsc first (tsconfig.bench.json) and runs the output, so the
// proxy is measured as it runs in production: tsx's transform wraps every function in a naming helper, which
// costs real time on a hot path that creates closures per request.
const COMPILED = import.meta.url.endsWith(".js");

/** Starts `node bench/<file>` (compiled, or through tsx) and waits for its ready line (port) on stdout. */
export function startChild(
  name: string,
  file: string,
  env: Record<string, string>,
  nodeArgs: string[] = [],
  opts: StartOptions = {},
): Promise<Child> {
  const { cpu, keepLines = false, benchDir, prefix = [], startupTimeoutMs = STARTUP_TIMEOUT_MS } = opts;
  const args =
    COMPILED || benchDir
      ? [...nodeArgs, join(benchDir ?? BENCH_DIR, file.replace(/\.ts$/, ".js"))]
      : [...nodeArgs, "--import", "tsx", join(BENCH_DIR, file)];
  const wrapped = [...(cpu === undefined ? [] : ["taskset", "-c", String(cpu)]), ...prefix];
  const [command, argv] =
    wrapped.length === 0
      ? [process.execPath, args]
      : [wrapped[0] as string, [...wrapped.slice(1), process.execPath, ...args]];
  const proc = spawn(command, argv, {
    cwd: ROOT,
    env: { ...process.env, ...env },
    // stdin stays open: a child exits when it closes, i.e. when this process dies however it dies.
    stdio: ["pipe", "pipe", "inherit"],
  });
  children.push(proc);
  return new Promise<Child>((resolvePromise, reject) => {
    const timer = setTimeout(() => {
      reject(new Error(`${name} did not report its port within ${startupTimeoutMs} ms`));
    }, startupTimeoutMs);
    const onExit = (code: number | null, signal: NodeJS.Signals | null) => {
      clearTimeout(timer);
      reject(new Error(`${name} exited before it was ready (code ${code}, signal ${signal})`));
    };
    proc.once("exit", onExit);
    proc.once("error", (err) => {
      clearTimeout(timer);
      reject(err);
    });
    const kept: string[] = [];
    let ready = false;
    const lines = createInterface({ input: proc.stdout! });
    lines.on("line", (line) => {
      if (ready) {
        if (keepLines) kept.push(line);
        else if (line.trim()) process.stdout.write(`[${name}] ${line}\n`);
        return;
      }
      let msg: Partial<ReadyLine> | undefined;
      try {
        msg = JSON.parse(line) as Partial<ReadyLine>;
      } catch {
        msg = undefined;
      }
      if (msg?.ready && typeof msg.port === "number") {
        clearTimeout(timer);
        proc.off("exit", onExit);
        proc.once("exit", (code, signal) => {
          if (!shuttingDown && !stopping.has(proc))
            console.error(`bench: ${name} exited unexpectedly (code ${code}, signal ${signal})`);
        });
        ready = true;
        resolvePromise({ name, proc, port: msg.port, url: `http://127.0.0.1:${msg.port}`, lines: kept });
      } else if (line.trim()) {
        process.stdout.write(`[${name}] ${line}\n`);
      }
    });
  });
}

function waitExit(proc: ChildProcess, ms: number): Promise<boolean> {
  if (proc.exitCode !== null || proc.signalCode !== null) return Promise.resolve(true);
  return new Promise((resolvePromise) => {
    const timer = setTimeout(() => resolvePromise(false), ms);
    proc.once("exit", () => {
      clearTimeout(timer);
      resolvePromise(true);
    });
  });
}

/** Children being stopped on purpose (their exit is not reported as unexpected). */
const stopping = new WeakSet<ChildProcess>();

/** SIGTERM to one child, SIGKILL after 5 s; resolves once it has exited. */
export async function stopChild(child: Child): Promise<void> {
  const p = child.proc;
  if (p.exitCode !== null || p.signalCode !== null) return;
  stopping.add(p);
  p.kill("SIGTERM");
  if (!(await waitExit(p, 5_000))) {
    p.kill("SIGKILL");
    await waitExit(p, 2_000);
  }
}

let shuttingDown = false;

/** SIGTERM to every child (they exit normally, so CPU profiles get written), SIGKILL to those still there after 5 s. */
export async function stopChildren(): Promise<void> {
  shuttingDown = true;
  const alive = children.filter((p) => p.exitCode === null && p.signalCode === null);
  for (const p of alive) p.kill("SIGTERM");
  const exited = await Promise.all(alive.map((p) => waitExit(p, 5_000)));
  const stuck = alive.filter((_, i) => !exited[i]);
  for (const p of stuck) {
    console.error(`bench: child ${p.pid} ignored SIGTERM; killing it`);
    p.kill("SIGKILL");
  }
  await Promise.all(stuck.map((p) => waitExit(p, 2_000)));
}

let clockTicks: number | undefined;

/**
 * CPU seconds (user + system) a process has used so far, from /proc (Linux); undefined elsewhere. CPU time per
 * request barely depends on how busy the machine is, unlike requests/s, so it is the steadier figure here.
 */
export function cpuSeconds(pid: number | undefined): number | undefined {
  if (pid === undefined || process.platform !== "linux") return undefined;
  try {
    clockTicks ??= Number(execFileSync("getconf", ["CLK_TCK"], { encoding: "utf8" }).trim()) || 100;
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    // Fields after the command name (which may hold spaces): state is field 3, utime 14, stime 15.
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    return (Number(fields[11]) + Number(fields[12])) / clockTicks;
  } catch {
    return undefined;
  }
}
