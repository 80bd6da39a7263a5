// The hand-built access line: valid JSON, the same fields as the record, hostile paths escaped, absent fields left out.
import assert from "node:assert/strict";
import { test } from "node:test";
import type { RequestSummary } from "../../proxy/observability/events.js";
import { createAccessLog, createLogger, isoNow, ms } from "../../proxy/observability/logger.js";

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
