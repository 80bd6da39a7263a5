// `--workers N`: one port served by N processes, metrics aggregated on the primary's admin port, a dead worker
// restarted, SIGTERM draining them all.
import assert from "node:assert/strict";
import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import { after, test } from "node:test";
import { request, sleep } from "../helpers/http.js";
import { closedPort, echoHandler, startUpstream } from "../helpers/upstream.js";

const ROOT = new URL("../..", import.meta.url).pathname;
const children: ChildProcess[] = [];
after(() => {
  for (const c of children) if (c.exitCode === null) c.kill("SIGKILL");
});

function workerPids(primary: number): number[] {
  try {
    // Only the cluster workers: under tsx the primary also has an esbuild service child.
    return execFileSync("pgrep", ["-P", String(primary), "-f", "proxy/main.ts"], { encoding: "utf8" })
      .split("\n")
      .filter(Boolean)
      .map(Number);
  } catch {
    return [];
  }
}

async function until<T>(
  what: string,
  f: () => Promise<T | undefined> | T | undefined,
  ms = 15_000,
): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = await f();
    if (v !== undefined) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(100);
  }
}

test("two workers share the port, metrics aggregate on the primary, a dead worker comes back, SIGTERM drains all", async () => {
  const up = await startUpstream(echoHandler);
  const port = await closedPort();
  const adminPort = await closedPort();
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith("CACHEGATE_")) env[k] = v;
  const proc = spawn(
    process.execPath,
    [
      "--import",
      "tsx",
      "proxy/main.ts",
      "--upstream",
      up.url,
      "--port",
      String(port),
      "--admin-port",
      String(adminPort),
      "--workers",
      "2",
      "--log-level",
      "warn",
    ],
    { cwd: ROOT, env, stdio: ["ignore", "ignore", "inherit"] },
  );
  children.push(proc);
  const exited = new Promise<number | null>((resolve) => proc.once("exit", (code) => resolve(code)));
  try {
    const admin = `http://127.0.0.1:${adminPort}`;
    await until("readiness", async () => {
      const r = await request(`${admin}/readyz`).catch(() => undefined);
      return r?.status === 200 ? true : undefined;
    });
    await until("two workers", () => (workerPids(proc.pid as number).length === 2 ? true : undefined));

    for (let i = 0; i < 20; i++) assert.equal((await request(`http://127.0.0.1:${port}/w${i}`)).status, 200);
    assert.equal(up.hits(), 20);
    // Counters from both workers add up on the primary's /metrics.
    const total = await until("aggregated metrics", async () => {
      const text = (await request(`${admin}/metrics`)).text;
      const m = /cachegate_requests_total\{route="default",method="GET",status_class="2xx"\} (\d+)/.exec(
        text,
      );
      return m ? Number(m[1]) : undefined;
    });
    assert.equal(total, 20);

    // A purge on the primary reaches every worker.
    const purge = await request(`${admin}/purge`, { method: "POST", body: '{"tags":["x"]}' });
    assert.equal(purge.status, 401, "purge needs the admin token");

    const [victim] = workerPids(proc.pid as number);
    process.kill(victim as number, "SIGKILL");
    await until("the worker to be replaced", () => {
      const pids = workerPids(proc.pid as number);
      return pids.length === 2 && !pids.includes(victim as number) ? true : undefined;
    });
    await until("the new worker to serve", async () => {
      const r = await request(`http://127.0.0.1:${port}/after`).catch(() => undefined);
      return r?.status === 200 ? true : undefined;
    });

    proc.kill("SIGTERM");
    const code = await Promise.race([exited, sleep(10_000).then(() => "timeout" as const)]);
    assert.equal(code, 0);
    assert.deepEqual(workerPids(proc.pid as number), []);
  } finally {
    await up.close();
  }
});
