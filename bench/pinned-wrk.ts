// Shared by bench:ab and bench:perf: the tools they need, and wrk pinned to CPU 0.
import { execFile, execFileSync } from "node:child_process";
import { promisify } from "node:util";

const run = promisify(execFile);

/** Throws `<bench> needs <command> (<hint>)` when `command` is not on PATH. */
export function need(bench: string, command: string, hint: string): void {
  try {
    execFileSync("sh", ["-c", `command -v ${command}`], { stdio: "ignore" });
  } catch {
    throw new Error(`${bench} needs ${command} (${hint})`);
  }
}

/** wrk (one thread) on CPU 0 against `url` for `seconds`; its req/s. Non-2xx responses or socket errors throw. */
export async function wrkOnCpu0(url: string, connections: number, seconds: number): Promise<number> {
  const { stdout } = await run("taskset", [
    "-c",
    "0",
    "wrk",
    "-t1",
    `-c${connections}`,
    `-d${seconds}s`,
    "--timeout",
    "5s",
    url,
  ]);
  const m = /Requests\/sec:\s+([\d.]+)/.exec(stdout);
  if (!m) throw new Error(`wrk printed no Requests/sec:\n${stdout}`);
  const errors = /Non-2xx or 3xx responses: (\d+)|Socket errors: (.*)/.exec(stdout);
  if (errors) throw new Error(`wrk saw errors against ${url}: ${errors[0]}`);
  return Number(m[1]);
}
