// Shared plumbing for the benchmark's child processes (upstream, bare proxy, cachegate).
// A child announces itself with one JSON line on stdout, and exits when told (SIGTERM/SIGINT) or when its
// parent goes away (stdin closes), so a crashed or killed `npm run bench` never leaves servers behind.
import type { Server } from "node:http";
import type { AddressInfo } from "node:net";

/** The one line a child prints once it listens; the parent waits for it. */
export interface ReadyLine {
  ready: true;
  name: string;
  port: number;
  pid: number;
}

export function announce(name: string, port: number): void {
  const line: ReadyLine = { ready: true, name, port, pid: process.pid };
  process.stdout.write(`${JSON.stringify(line)}\n`);
}

export function portOf(server: Server): number {
  return (server.address() as AddressInfo).port;
}

/**
 * Runs `stop` once on SIGTERM, SIGINT or the parent's stdin closing, then exits with 0 (a normal exit, so
 * `--cpu-prof` gets to write its profile). `stop` is given at most `graceMs`.
 */
export function exitOnParentSignal(stop: () => Promise<void> | void, graceMs = 1500): void {
  let stopping = false;
  const shutdown = () => {
    if (stopping) return;
    stopping = true;
    setTimeout(() => process.exit(0), graceMs).unref();
    Promise.resolve()
      .then(stop)
      .catch((err: unknown) => console.error(`bench child: error while stopping: ${String(err)}`))
      .finally(() => process.exit(0));
  };
  process.on("SIGTERM", shutdown);
  process.on("SIGINT", shutdown);
  process.stdin.on("end", shutdown);
  process.stdin.on("close", shutdown);
  process.stdin.resume();
}

export function requireEnv(name: string): string {
  const v = process.env[name];
  if (!v) {
    console.error(`bench child: ${name} is not set`);
    process.exit(2);
  }
  return v;
}

export function listenLoopback(server: Server): Promise<void> {
  return new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      server.off("error", reject);
      resolve();
    });
  });
}
