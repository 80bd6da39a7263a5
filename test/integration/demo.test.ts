// `npm run demo` end to end, small: the simulated Dify, cachegate in front of it and the load, as a child process.
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { rmSync } from "node:fs";
import { dirname } from "node:path";
import { Writable } from "node:stream";
import { describe, test } from "node:test";
import { LiveView, Tally } from "../../bench/demo/report.js";
import { planRequests, usageOf } from "../../bench/demo/workload.js";

const ROOT = new URL("../..", import.meta.url).pathname;
const REQUESTS = 30;

function runDemo(
  env: Record<string, string>,
): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ["--import", "tsx", "bench/demo/run.ts"], {
      cwd: ROOT,
      // No CACHEGATE_* from the test's environment; the demo's own knobs only.
      env: { PATH: process.env.PATH, NO_PROXY: "127.0.0.1", ...env },
      stdio: ["ignore", "pipe", "pipe"],
    });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (c: Buffer) => {
      stdout += c.toString("utf8");
    });
    child.stderr.on("data", (c: Buffer) => {
      stderr += c.toString("utf8");
    });
    const timer = setTimeout(() => child.kill("SIGKILL"), 60_000);
    child.once("error", reject);
    child.once("exit", (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

describe("npm run demo", () => {
  test("serves repeated prompts from the cache, reports the hit ratio and exits 0", async () => {
    const { code, stdout, stderr } = await runDemo({
      DEMO_REQUESTS: String(REQUESTS),
      DEMO_ANSWER_MS: "100",
      DEMO_DURATION: "1",
      DEMO_CONCURRENCY: "8",
    });
    const log = /^cachegate's JSON log: (.+)$/m.exec(stdout)?.[1];
    if (log?.includes("cachegate-demo-")) rmSync(dirname(log), { recursive: true, force: true });
    assert.equal(code, 0, `exit ${code}\n${stdout}\n${stderr}`);
    const summary = stdout.slice(stdout.indexOf("\nSummary\n"));
    assert.ok(summary.length > 10, `no summary in:\n${stdout}`);
    assert.match(summary, new RegExp(`^\\s+requests\\s+${REQUESTS} \\(`, "m"));
    const ratio = Number(/^\s+hit ratio\s+([\d.]+)%/m.exec(summary)?.[1]);
    assert.ok(ratio > 0 && ratio < 100, `hit ratio ${ratio}%:\n${summary}`);
    const generations = Number(/^\s+upstream calls\s+(\d+) generations/m.exec(summary)?.[1]);
    assert.ok(
      generations > 0 && generations < REQUESTS,
      `the upstream generated ${generations} answers for ${REQUESTS}`,
    );
    const saved = Number((/^\s+tokens saved\s+([\d,]+)/m.exec(summary)?.[1] ?? "").replaceAll(",", ""));
    assert.ok(saved > 0, `tokens saved: ${saved}`);
    // stdout is a pipe here: periodic plain lines, no cursor control.
    assert.ok(!stdout.includes("\x1b["), "no ANSI escape sequences");
    assert.match(stdout, /^\[\s*[\d.]+ s\] \d+\/30 requests, hit ratio/m);
  });

  test("refuses an out-of-range setting with exit 2 before starting anything", async () => {
    const { code, stderr } = await runDemo({ DEMO_REQUESTS: "0" });
    assert.equal(code, 2);
    assert.match(stderr, /DEMO_REQUESTS must be an integer from 1 to 10000, got "0"/);
  });
});

describe("demo parts", () => {
  test("the workload is reproducible and mixes repeated, new and streaming prompts", () => {
    const a = planRequests(200, { seed: 7, freshShare: 0.25, streamShare: 0.25 });
    const b = planRequests(200, { seed: 7, freshShare: 0.25, streamShare: 0.25 });
    assert.deepEqual(a, b);
    const repeated = a.filter((s) => !s.fresh);
    assert.ok(new Set(repeated.map((s) => s.query)).size < repeated.length / 2, "FAQ prompts repeat");
    assert.ok(a.some((s) => s.fresh) && a.some((s) => s.streaming) && a.some((s) => !s.streaming));
  });

  test("usage is read from blocking JSON and from the message_end frame of a stream", () => {
    const usage = { total_tokens: 1161, total_price: "0.0012890" };
    assert.deepEqual(usageOf(JSON.stringify({ metadata: { usage } }), false), {
      tokens: 1161,
      priceUsd: 0.001289,
    });
    const sse =
      'data: {"event":"message","answer":"Hi"}\n\nevent: ping\n\n' +
      `data: ${JSON.stringify({ event: "message_end", metadata: { usage } })}\n\n`;
    assert.deepEqual(usageOf(sse, true), { tokens: 1161, priceUsd: 0.001289 });
  });

  test("on a terminal the status area is redrawn in place, and the cursor is given back", () => {
    let written = "";
    const out = new Writable({
      write(chunk: Buffer, _enc, cb) {
        written += chunk.toString("utf8");
        cb();
      },
    }) as unknown as NodeJS.WriteStream;
    (out as { isTTY?: boolean }).isTTY = true;
    const view = new LiveView(out);
    const tally = new Tally(10);
    view.update(tally, 100);
    view.update(tally, 300);
    view.finish();
    assert.ok(written.startsWith("\x1b[?25l"), "cursor hidden");
    assert.equal(written.split("\x1b[4F").length - 1, 1, "second frame moves up over the first");
    assert.ok(written.endsWith("\x1b[?25h"), "cursor shown again");
  });
});
