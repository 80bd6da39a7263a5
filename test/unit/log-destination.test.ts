// The batching log destination: lines arrive whole and in order, within the delay, on flush, and on exit.
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { logDestination } from "../../proxy/observability/log-destination.js";
import { createLogger } from "../../proxy/observability/logger.js";

const dir = mkdtempSync(join(tmpdir(), "cachegate-log-"));
after(() => rmSync(dir, { recursive: true, force: true }));

const read = (file: string) => {
  try {
    return readFileSync(file, "utf8");
  } catch {
    return "";
  }
};

/** SonicBoom opens a path asynchronously. */
const opened = (file: string) =>
  until(() => {
    try {
      readFileSync(file);
      return true;
    } catch {
      return false;
    }
  }, 2000);

async function until(cond: () => boolean, ms: number): Promise<boolean> {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    if (cond()) return true;
    await sleep(5);
  }
  return cond();
}

test("lines are gathered and written together within the delay, in order", async () => {
  const file = join(dir, "a.log");
  const dest = logDestination(file, { maxDelayMs: 150 });
  const logger = createLogger("info", dest);
  assert.ok(await opened(file));
  for (let i = 0; i < 50; i++) logger.info({ i }, "line");
  await sleep(30);
  assert.equal(read(file), "", "nothing written before the delay is over");
  assert.ok(await until(() => read(file).split("\n").length === 51, 2000), "all 50 lines after the delay");
  const got = read(file)
    .trim()
    .split("\n")
    .map((l) => JSON.parse(l).i);
  assert.deepEqual(
    got,
    Array.from({ length: 50 }, (_, i) => i),
  );
  dest.end();
});

test("a line that does not fit the batch is written at once, and flush() writes what is pending", async () => {
  const file = join(dir, "b.log");
  const dest = logDestination(file, { maxDelayMs: 60_000, maxBytes: 1000 });
  assert.ok(await opened(file));
  dest.write(`${"x".repeat(600)}\n`);
  dest.write(`${"y".repeat(600)}\n`); // neither fits a 1000-byte batch (at 3 bytes per character, worst case)
  assert.ok(await until(() => read(file).length === 1202, 2000), "written without waiting for the delay");
  assert.match(read(file), /^x{600}\ny{600}\n$/, "whole and in order");
  dest.write("z\n");
  await sleep(50);
  assert.equal(read(file).length, 1202, "a small line waits");
  await new Promise<void>((resolve, reject) => dest.flush((err) => (err ? reject(err) : resolve())));
  assert.ok(read(file).endsWith("z\n"));
  dest.end();
});

test("many batches of multi-byte lines arrive whole and in order", async () => {
  const file = join(dir, "d.log");
  const dest = logDestination(file, { maxDelayMs: 10, maxBytes: 4096 });
  assert.ok(await opened(file));
  const lines = Array.from({ length: 3000 }, (_, i) => `{"i":${i},"s":"é€😀 ${"x".repeat(i % 97)}"}\n`);
  for (const l of lines) dest.write(l);
  await new Promise<void>((resolve, reject) => dest.flush((err) => (err ? reject(err) : resolve())));
  assert.ok(await until(() => read(file).length === lines.join("").length, 3000));
  assert.equal(read(file), lines.join(""));
  dest.end();
});

test("when the destination does not keep up, batches beyond the pending limit are dropped and counted", async () => {
  const file = join(dir, "e.log");
  // Written before the file is even open: everything is still pending in SonicBoom.
  const dest = logDestination(file, { maxDelayMs: 60_000, maxBytes: 2048, maxPendingBytes: 1000 });
  const line = `${"a".repeat(599)}\n`;
  dest.write(line);
  dest.flushSync(); // not open yet: hands the batch over, writes nothing (and does not throw)
  dest.write(line);
  dest.flush(); // 1200 bytes would be pending: this batch is dropped
  assert.equal(dest.droppedBytes, 600);
  assert.ok(await opened(file));
  assert.ok(await until(() => read(file).length === 600, 2000), "the batch that fitted is written");
  dest.end();
  assert.equal(dest.write(line), false, "a write after end() is refused, never thrown");
});

test("a process that exits, even through process.exit, writes what it had pending", () => {
  const file = join(dir, "c.log");
  const script = `
    import { logDestination } from ${JSON.stringify(new URL("../../proxy/observability/log-destination.ts", import.meta.url).href)};
    import { createLogger } from ${JSON.stringify(new URL("../../proxy/observability/logger.ts", import.meta.url).href)};
    const dest = logDestination(process.argv[1], { maxDelayMs: 60_000 });
    const logger = createLogger("info", dest);
    setTimeout(() => {
      for (let i = 0; i < 20; i++) logger.info({ i }, "before exit");
      logger.fatal("last words");
      process.exit(3);
    }, 100);
  `;
  const r = spawnSync(process.execPath, ["--import", "tsx", "--input-type=module", "-e", script, file], {
    encoding: "utf8",
    timeout: 20_000,
  });
  assert.equal(r.status, 3, r.stderr);
  const lines = read(file).trim().split("\n");
  assert.equal(lines.length, 21);
  assert.equal(JSON.parse(lines[20] as string).msg, "last words");
});

test("a process that exits at once after opening a log file keeps its lines and exits cleanly", () => {
  // SonicBoom opens a path asynchronously; exiting before that completed lost the lines and threw in pino's exit hook.
  const file = join(dir, "sub", "d.log");
  const script = `
    import { logDestination } from ${JSON.stringify(new URL("../../proxy/observability/log-destination.ts", import.meta.url).href)};
    import { createLogger } from ${JSON.stringify(new URL("../../proxy/observability/logger.ts", import.meta.url).href)};
    const logger = createLogger("info", logDestination(process.argv[1]));
    logger.info("at once");
    process.exit(0);
  `;
  const r = spawnSync(process.execPath, ["--import", "tsx", "--input-type=module", "-e", script, file], {
    encoding: "utf8",
    timeout: 20_000,
  });
  assert.equal(r.status, 0, r.stderr);
  assert.doesNotMatch(r.stderr, /not ready/);
  assert.equal(JSON.parse(read(file).trim()).msg, "at once");
});
