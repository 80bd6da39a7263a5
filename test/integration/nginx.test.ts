// nginx.conf.example, rendered by test/helpers/nginx.ts, in front of two real cachegate instances over one upstream.
import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import http from "node:http";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, test } from "node:test";
import type { RequestSummary } from "../../proxy/observability/events.js";
import { simpleConfig, startGate, type TestGate } from "../helpers/cachegate.js";
import { renderNginxConf, startNginx, type TestNginx, testNginxConf } from "../helpers/nginx.js";
import { echoHandler, startUpstream, type TestUpstream } from "../helpers/upstream.js";

const FRAMES = 5;
const FRAME_INTERVAL_MS = 150;

let upstream: TestUpstream;
let gates: TestGate[] = [];
let nginx: TestNginx | undefined;
const served = new Map<TestGate, RequestSummary[]>();

before(async () => {
  upstream = await startUpstream((req, res) => {
    if (req.url === "/v1/chat-messages") {
      // An SSE upstream that says nothing about buffering: no X-Accel-Buffering, no Content-Length.
      res.writeHead(200, { "content-type": "text/event-stream", "cache-control": "no-cache" });
      let n = 0;
      const timer = setInterval(() => {
        n++;
        res.write(`data: ${n}\n\n`);
        if (n === FRAMES) {
          clearInterval(timer);
          res.end();
        }
      }, FRAME_INTERVAL_MS);
      res.once("close", () => clearInterval(timer));
      return;
    }
    echoHandler(req, res);
  });
  gates = await Promise.all([startGate(simpleConfig(upstream.url)), startGate(simpleConfig(upstream.url))]);
  for (const gate of gates) {
    const list: RequestSummary[] = [];
    served.set(gate, list);
    gate.events.on("request:end", (s) => list.push(s));
  }
  nginx = await startNginx({ upstreamPorts: gates.map((g) => g.port) });
});

after(async () => {
  await nginx?.stop();
  await Promise.all(gates.map((g) => g.close(1000)));
  await upstream?.close();
});

/** One request on a fresh connection (no keep-alive), so every request is a new pick by nginx. */
function get(
  url: string,
  headers: Record<string, string> = {},
): Promise<{ status: number; headers: http.IncomingHttpHeaders; body: string }> {
  return new Promise((resolve, reject) => {
    const req = http.get(url, { agent: false, headers, timeout: 5_000 }, (res) => {
      let body = "";
      res.setEncoding("utf8");
      res.on("data", (c: string) => {
        body += c;
      });
      res.on("end", () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body }));
      res.on("error", reject);
    });
    req.on("timeout", () => req.destroy(new Error(`no response from ${url} within 5 s`)));
    req.on("error", reject);
  });
}

function nginxUrl(path: string): string {
  assert.ok(nginx, "nginx did not start");
  return `${nginx.url}${path}`;
}

test("spreads requests over both cachegate instances", async () => {
  const sent = 40;
  const hitsBefore = upstream.hits();
  const servedBefore = gates.map((g) => served.get(g)?.length ?? 0);
  for (let i = 0; i < sent; i++) {
    // The last request carries its own id, which must reach the upstream unchanged.
    const headers: Record<string, string> = i === sent - 1 ? { "x-request-id": "client-chosen-id.42" } : {};
    const res = await get(nginxUrl(`/spread/${i}`), headers);
    assert.equal(res.status, 200, res.body);
  }

  const perGate = gates.map((g, i) => (served.get(g)?.length ?? 0) - (servedBefore[i] ?? 0));
  assert.equal(
    perGate.reduce((a, b) => a + b, 0),
    sent,
    `gates served ${perGate.join(" + ")}`,
  );
  for (const [i, n] of perGate.entries())
    assert.ok(n > 0, `gate ${i} served none of ${sent} (${perGate.join("/")})`);
  assert.equal(upstream.hits() - hitsBefore, sent);

  const seen = upstream.requests.slice(hitsBefore);
  for (const r of seen) {
    const xff = r.headers["x-forwarded-for"];
    assert.ok(typeof xff === "string" && xff.includes("127.0.0.1"), `x-forwarded-for: ${String(xff)}`);
    assert.equal(r.headers["x-forwarded-proto"], "http");
    assert.equal(r.headers["x-forwarded-host"], "127.0.0.1");
  }
  // Ids nginx minted ($request_id: 32 hex digits) reach the upstream, proving they were not replaced downstream.
  for (const r of seen.slice(0, -1)) assert.match(String(r.headers["x-request-id"]), /^[0-9a-f]{32}$/);
  assert.equal(seen.at(-1)?.headers["x-request-id"], "client-chosen-id.42");
});

test("delivers an SSE stream frame by frame through nginx", async () => {
  const started = performance.now();
  const arrivals: Array<{ frame: string; at: number }> = [];
  const { status, contentType, encoding } = await new Promise<{
    status: number;
    contentType: string | undefined;
    encoding: string | undefined;
  }>((resolve, reject) => {
    const req = http.get(
      nginxUrl("/v1/chat-messages"),
      // Browsers always offer gzip; compressing an event stream would hold frames back until a deflate block fills.
      { agent: false, headers: { accept: "text/event-stream", "accept-encoding": "gzip" }, timeout: 5_000 },
      (res) => {
        let buf = "";
        res.setEncoding("utf8");
        res.on("data", (chunk: string) => {
          buf += chunk;
          for (let end = buf.indexOf("\n\n"); end !== -1; end = buf.indexOf("\n\n")) {
            arrivals.push({ frame: buf.slice(0, end), at: performance.now() - started });
            buf = buf.slice(end + 2);
          }
        });
        res.on("end", () =>
          resolve({
            status: res.statusCode ?? 0,
            contentType: res.headers["content-type"],
            encoding: res.headers["content-encoding"],
          }),
        );
        res.on("error", reject);
      },
    );
    req.on("timeout", () => req.destroy(new Error("SSE stream stalled for 5 s")));
    req.on("error", reject);
  });

  assert.equal(status, 200);
  assert.match(String(contentType), /^text\/event-stream/);
  assert.equal(encoding, undefined, "nginx compressed the event stream");
  assert.deepEqual(
    arrivals.map((a) => a.frame),
    Array.from({ length: FRAMES }, (_, i) => `data: ${i + 1}`),
  );
  const first = arrivals[0]?.at ?? Number.NaN;
  const last = arrivals.at(-1)?.at ?? Number.NaN;
  const times = arrivals.map((a) => Math.round(a.at)).join(", ");
  // Sent at 150, 300, ... 750 ms: buffered, they would all arrive together at the end.
  assert.ok(first < 400, `first frame arrived after ${Math.round(first)} ms (${times})`);
  assert.ok(
    last - first >= 400,
    `frames arrived within ${Math.round(last - first)} ms of each other (${times})`,
  );
});

test("nginx -t accepts nginx.conf.example as shipped", () => {
  // Only filesystem paths move to a temp dir; listen 80 and the 8080/8081 servers stay (-t binds nothing).
  const prefix = mkdtempSync(join(tmpdir(), "cachegate-nginx-t-"));
  try {
    const conf = join(prefix, "nginx.conf");
    writeFileSync(conf, renderNginxConf({ prefix }));
    const output = testNginxConf(conf, prefix);
    assert.match(output, /syntax is ok/);
    assert.match(output, /test is successful/);
  } finally {
    rmSync(prefix, { recursive: true, force: true });
  }
});
