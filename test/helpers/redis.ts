// A private redis-server on a free loopback port, no persistence, for tests of the Redis tier and its faults.

import { type ChildProcess, spawn } from "node:child_process";
import { mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { connect } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { findExecutable } from "./binaries.js";
import { closedPort } from "./upstream.js";

const READY_TIMEOUT_MS = 5_000;
const STOP_TIMEOUT_MS = 5_000;
const PING_TIMEOUT_MS = 1_000;
const NOT_FOUND = 'redis-server not found: install it with "apt-get install -y redis-server"';

export interface TestRedis {
  readonly port: number;
  readonly url: string;
  /** SIGTERM (Redis shuts down cleanly), SIGKILL after 5 s; waits for the exit. */
  stop(): Promise<void>;
  /** SIGKILL, no waiting: the server vanishes mid-conversation, as in a crash. */
  kill(): void;
  /** Starts it again on the same port (stopping it first if it still runs); resolves once it answers PING. */
  restart(): Promise<void>;
}

/** /usr/bin/redis-server, else the first on PATH; throws with the install command when there is none. */
export function redisBinary(): string {
  return findExecutable("redis-server", "/usr/bin", NOT_FOUND);
}

/** Sends an inline `PING` over a raw socket; resolves with the first reply line (`+PONG` when healthy). */
export function redisPing(port: number, timeoutMs = PING_TIMEOUT_MS): Promise<string> {
  return new Promise((resolve, reject) => {
    const s = connect({ port, host: "127.0.0.1" });
    let buf = "";
    s.setTimeout(timeoutMs, () =>
      s.destroy(new Error(`no PING reply from 127.0.0.1:${port} within ${timeoutMs} ms`)),
    );
    s.once("connect", () => s.write("PING\r\n"));
    s.on("data", (chunk: Buffer) => {
      buf += chunk.toString("utf8");
      const end = buf.indexOf("\r\n");
      if (end !== -1) {
        s.destroy();
        resolve(buf.slice(0, end));
      }
    });
    s.once("error", reject);
    s.once("close", () => reject(new Error(`connection to 127.0.0.1:${port} closed before a PING reply`)));
  });
}

function exited(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => child.once("exit", () => resolve()));
}

export async function startRedis(): Promise<TestRedis> {
  const bin = redisBinary();
  const dir = mkdtempSync(join(tmpdir(), "cachegate-redis-"));
  const port = await closedPort();
  let child: ChildProcess | undefined;
  let output = "";
  // Safety net: a test process that dies without calling stop() must not leave redis holding the port.
  const onExit = () => child?.kill("SIGKILL");
  process.once("exit", onExit);

  const waitForExit = async (c: ChildProcess): Promise<void> => {
    let timer: NodeJS.Timeout | undefined;
    const done = exited(c);
    const timedOut = await Promise.race([
      done.then(() => false),
      new Promise<boolean>((resolve) => {
        timer = setTimeout(() => resolve(true), STOP_TIMEOUT_MS);
      }),
    ]);
    clearTimeout(timer);
    if (timedOut) {
      c.kill("SIGKILL");
      await done;
    }
  };

  const launch = async (): Promise<void> => {
    output = "";
    mkdirSync(dir, { recursive: true }); // stop() removed it; restart() after stop() still works
    const c = spawn(
      bin,
      [
        "--port",
        String(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--daemonize",
        "no",
        "--dir",
        dir,
      ],
      { stdio: ["ignore", "pipe", "pipe"] },
    );
    child = c;
    const collect = (chunk: Buffer) => {
      output += chunk.toString("utf8");
    };
    c.stdout?.on("data", collect);
    c.stderr?.on("data", collect);
    const deadline = Date.now() + READY_TIMEOUT_MS;
    let last = "";
    for (;;) {
      if (c.exitCode !== null || c.signalCode !== null) {
        throw new Error(`redis-server exited during startup (${c.exitCode ?? c.signalCode}):\n${output}`);
      }
      try {
        last = await redisPing(port, 250);
        if (last === "+PONG") return;
      } catch (err) {
        last = (err as Error).message;
      }
      if (Date.now() > deadline) {
        c.kill("SIGKILL");
        await exited(c);
        throw new Error(
          `redis-server on ${port} did not answer PING within ${READY_TIMEOUT_MS} ms (${last}):\n${output}`,
        );
      }
      await new Promise((resolve) => setTimeout(resolve, 25));
    }
  };

  const stop = async (): Promise<void> => {
    if (!child) return;
    child.kill("SIGTERM");
    await waitForExit(child);
  };

  try {
    await launch();
  } catch (err) {
    process.off("exit", onExit);
    rmSync(dir, { recursive: true, force: true });
    throw err;
  }

  return {
    port,
    url: `redis://127.0.0.1:${port}`,
    stop: async () => {
      await stop();
      process.off("exit", onExit);
      rmSync(dir, { recursive: true, force: true });
    },
    kill: () => {
      child?.kill("SIGKILL");
    },
    restart: async () => {
      if (child) {
        // Either still running (stop it) or just SIGKILLed by kill() (wait until the port is really free).
        if (child.exitCode === null && child.signalCode === null) child.kill("SIGTERM");
        await waitForExit(child);
      }
      await launch();
    },
  };
}
