// The hand-built access line: valid JSON, the same fields as the record, hostile paths escaped, absent fields left out.
import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { accessLineBound, encodeAccessLine } from "../../proxy/observability/access-line.js";
import type { RequestSummary } from "../../proxy/observability/events.js";
import { logDestination } from "../../proxy/observability/log-destination.js";
import {
  accessLineString,
  createAccessLog,
  createLogger,
  isoNow,
  ms,
} from "../../proxy/observability/logger.js";

function capture(level: "info" | "warn" = "info") {
  const lines: string[] = [];
  const log = createAccessLog(createLogger(level, { write: (l: string) => void lines.push(l) }));
  return { log, lines };
}

const base: RequestSummary = {
  reqId: "abc-123",
  method: "GET",
  path: "/v1/x",
  route: "default",
  upstream: "dify",
  status: 200,
  bytes: 1234,
  durationMs: 1.2345678,
  upstreamMs: undefined,
  cache: "MISS",
  cacheTier: undefined,
  coalesced: false,
  clientIp: "127.0.0.1",
  error: undefined,
  aborted: false,
};

test("one JSON line per request, with the record's fields and the logger's own", () => {
  const { log, lines } = capture();
  log(base, false);
  assert.equal(lines.length, 1);
  assert.ok(lines[0]?.endsWith("}\n"));
  const line = JSON.parse(lines[0] as string);
  assert.equal(line.level, "info");
  assert.equal(line.service, "cachegate");
  assert.equal(line.msg, "request");
  assert.ok(!Number.isNaN(Date.parse(line.time)));
  assert.equal(line.durationMs, 1.235, "durations in ms with µs precision");
  for (const k of [
    "reqId",
    "method",
    "path",
    "route",
    "upstream",
    "status",
    "bytes",
    "cache",
    "clientIp",
  ] as const)
    assert.equal(line[k], base[k], k);
  assert.equal(line.coalesced, false);
  assert.equal(line.aborted, false);
  for (const k of ["upstreamMs", "cacheTier", "error"])
    assert.ok(!(k in line), `${k} is left out when absent`);
});

test("paths with quotes, backslashes, control and non-ASCII characters are escaped, never break the line", () => {
  const { log, lines } = capture();
  const path = '/a"b\\c\n{"level":"fatal"}\u0000é/\u2028';
  log({ ...base, path, upstreamMs: 0.5, cacheTier: "memory", error: "upstream_reset", aborted: true }, true);
  assert.equal(lines.length, 1);
  assert.equal((lines[0] as string).split("\n").length, 2, "exactly one newline, at the end");
  const line = JSON.parse(lines[0] as string);
  assert.equal(line.path, path);
  assert.equal(line.level, "warn");
  assert.equal(line.upstreamMs, 0.5);
  assert.equal(line.cacheTier, "memory");
  assert.equal(line.error, "upstream_reset");
  assert.equal(line.aborted, true);
});

test("the level applies: info lines are dropped at warn, warn lines are kept", () => {
  const { log, lines } = capture("warn");
  log(base, false);
  assert.equal(lines.length, 0);
  log({ ...base, status: 502, error: "upstream_unreachable" }, true);
  assert.equal(lines.length, 1);
});

test("durations print as String(Math.round(n * 1000) / 1000) would, from integer arithmetic", () => {
  const samples = [
    0, 0.0004, 0.0005, 0.001, 0.01, 0.1, 0.5, 1, 1.05, 1.2345678, 1.2, 12, 999.9996, 1000, 65.0001,
  ];
  for (let i = 0; i < 2000; i++) samples.push(Math.random() * 10 ** ((i % 7) - 2));
  for (const n of samples) assert.equal(ms(n), String(Math.round(n * 1000) / 1000), `ms(${n})`);
});

test("the time field is Date#toISOString, to the millisecond, across second and day boundaries", () => {
  const at = [
    Date.UTC(2026, 11, 3, 12, 0, 0, 0),
    Date.UTC(2026, 11, 3, 12, 0, 0, 7),
    Date.UTC(2026, 11, 3, 12, 0, 0, 42),
    Date.UTC(2026, 11, 3, 12, 0, 0, 999),
    Date.UTC(2026, 11, 3, 12, 0, 1, 0),
    Date.UTC(2026, 11, 31, 23, 59, 59, 999),
    Date.UTC(2027, 0, 1, 0, 0, 0, 1),
  ];
  for (const t of [...at, ...at.reverse()]) assert.equal(isoNow(t), new Date(t).toISOString());
});

// The production destination gets the line encoded straight into its batch (access-line.ts): it must be the same
// bytes as the string, for every field shape the string path handles.
test("the line encoded into the batch buffer is byte for byte the string line", () => {
  const prefix = ',"service":"cachegate","pid":42';
  const prefixBytes = Buffer.from(prefix, "utf8");
  const now = Date.UTC(2026, 11, 5, 13, 0, 0, 7);
  const paths = [
    "/",
    "/v1/chat-messages",
    '/a"b\\c\n{"level":"fatal"}\u0000é/\u2028',
    "/\ud83d\ude00/\ud800lone/\u007f/~",
    "x".repeat(3000),
  ];
  const numbers = [0, 7, 10, 99, 100, 1234, 65535, 2 ** 40 + 3, Number.MAX_SAFE_INTEGER, -1, 1.5, Number.NaN];
  const durations = [
    0,
    0.0004,
    0.0005,
    0.05,
    1.2345678,
    12,
    999.9996,
    1e6 + 0.25,
    -3,
    Number.POSITIVE_INFINITY,
  ];
  const summaries: RequestSummary[] = [];
  for (const path of paths)
    for (const [i, n] of numbers.entries()) {
      summaries.push({
        ...base,
        path,
        status: n,
        bytes: numbers[(i + 3) % numbers.length] as number,
        durationMs: durations[i % durations.length] as number,
        upstreamMs: i % 2 ? (durations[(i + 1) % durations.length] as number) : undefined,
        cacheTier: i % 3 ? "memory" : undefined,
        error: i % 4 ? undefined : "upstream_reset",
        coalesced: i % 2 === 0,
        aborted: i % 5 === 0,
        clientIp: i % 2 ? "::ffff:127.0.0.1" : 'evil"\u00e9\n',
        method: i % 2 ? "GET" : "PROPFIND",
        reqId: i % 2 ? "0f1e2d3c-4b5a-4978-8695-000000000001" : "client.id:1",
      });
    }
  // Method, route/upstream and cache status are written as cached segments, up to 256 values per field, then piece
  // by piece: both ways must give the same bytes.
  for (let i = 0; i < 300; i++) {
    summaries.push({
      ...base,
      method: `M${i}`,
      route: i % 7 ? `route-${i}` : "dify-chat",
      upstream: i % 3 ? "dify" : `upé${i}`,
      cache: ["MISS", "HIT", "STALE", "BYPASS", `X${i}`][i % 5] as string,
    });
  }
  for (let i = 0; i < 500; i++) {
    let path = "/";
    for (let j = 0; j < i % 40; j++)
      path += String.fromCharCode(Math.floor(Math.random() * (j % 3 ? 128 : 0x10000)));
    summaries.push({ ...base, path, durationMs: Math.random() * 10 ** ((i % 7) - 2), bytes: i * 977 });
  }
  for (const s of summaries)
    for (const warn of [false, true]) {
      const want = Buffer.from(accessLineString(s, warn, prefix, now), "utf8");
      const bound = accessLineBound(s, prefixBytes.length);
      const buf = Buffer.alloc(bound + 16, 0xee);
      const end = encodeAccessLine(buf, 8, s, warn, prefixBytes, now);
      assert.ok(end - 8 <= bound, `within the bound (${end - 8} > ${bound})`);
      assert.equal(buf.subarray(8, end).toString("utf8"), want.toString("utf8"));
      assert.ok(buf.subarray(8, end).equals(want), `bytes of ${JSON.stringify(s.path).slice(0, 80)}`);
      assert.equal(buf[7], 0xee, "nothing written before the offset");
      assert.equal(buf[end], 0xee, "nothing written after the end");
    }
});

test("access lines reach the production (batched) destination intact and in order with the logger's own lines", async () => {
  const dir = mkdtempSync(join(tmpdir(), "cachegate-access-"));
  try {
    const file = join(dir, "access.log");
    const dest = logDestination(file, { maxDelayMs: 60_000, maxBytes: 4096 });
    const logger = createLogger("info", dest);
    const log = createAccessLog(logger);
    const hostile = '/p"\\\n\u00e9\ud83d\ude00';
    for (let i = 0; i < 200; i++) {
      log({ ...base, reqId: `r${i}`, path: i % 7 ? `/v1/x/${i}` : hostile, bytes: i }, i % 10 === 0);
      if (i % 50 === 0) logger.info({ i }, "between");
    }
    // A line longer than a whole batch goes through the string path.
    log({ ...base, reqId: "long", path: `/${"y".repeat(5000)}` }, false);
    await new Promise<void>((resolve, reject) => logger.flush((err) => (err ? reject(err) : resolve())));
    const lines = readFileSync(file, "utf8")
      .trimEnd()
      .split("\n")
      .map((l) => JSON.parse(l));
    assert.equal(lines.length, 205);
    const access = lines.filter((l) => l.msg === "request");
    assert.deepEqual(
      access.map((l) => l.reqId),
      [...Array.from({ length: 200 }, (_, i) => `r${i}`), "long"],
    );
    for (const [i, l] of access.slice(0, 200).entries()) {
      assert.equal(l.path, i % 7 ? `/v1/x/${i}` : hostile);
      assert.equal(l.bytes, i);
      assert.equal(l.level, i % 10 === 0 ? "warn" : "info");
      assert.equal(l.service, "cachegate");
    }
    assert.equal(access[200].path.length, 5001);
    const between = lines.map((l, idx) => (l.msg === "between" ? idx : -1)).filter((idx) => idx >= 0);
    assert.deepEqual(between, [1, 52, 103, 154], "the logger's own lines stay where they were logged");
    dest.end();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
