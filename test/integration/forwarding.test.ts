import assert from "node:assert/strict";
import { once } from "node:events";
import http from "node:http";
import net from "node:net";
import { after, describe, test } from "node:test";
import { idleSweeper } from "../../proxy/upstream/idle-sweeper.js";
import { simpleConfig, startGate, type TestGate } from "../helpers/cachegate.js";
import { generated, readFrames, request, sleep } from "../helpers/http.js";
import { closedPort, echoHandler, startUpstream, type TestUpstream } from "../helpers/upstream.js";

const toClose: Array<{ close(): Promise<void> }> = [];
after(async () => {
  for (const c of toClose.reverse()) await c.close();
});

async function gateFor(
  up: TestUpstream,
  extra: Record<string, unknown> = {},
  upstreamExtra = {},
): Promise<TestGate> {
  const cfg = simpleConfig(up.url, extra);
  cfg.upstreams = [{ name: "up", url: up.url, ...upstreamExtra }];
  const gate = await startGate(cfg);
  toClose.push({ close: () => gate.close(500) });
  return gate;
}

async function upstream(handler: Parameters<typeof startUpstream>[0]): Promise<TestUpstream> {
  const up = await startUpstream(handler);
  toClose.push(up);
  return up;
}

describe("forwarding", () => {
  test("forwards every method with its body, status and end-to-end headers", async () => {
    const up = await upstream(echoHandler);
    const gate = await gateFor(up);
    for (const method of ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]) {
      const body = method === "GET" || method === "OPTIONS" ? undefined : `{"m":"${method}"}`;
      const r = await request(`${gate.url}/things/1?b=2&a=1`, {
        method,
        body,
        headers: body
          ? { "content-type": "application/json", "content-length": Buffer.byteLength(body) }
          : {},
      });
      assert.equal(r.status, 200, method);
      const seen = r.json<{ method: string; url: string; bytes: number }>();
      assert.equal(seen.method, method);
      assert.equal(seen.url, "/things/1?b=2&a=1", "path and query pass unchanged");
      assert.equal(seen.bytes, body ? Buffer.byteLength(body) : 0);
    }
    assert.equal(up.hits(), 6);
  });

  test("joins an upstream URL's path to the request's; an upstream URL without one adds nothing", async () => {
    const up = await upstream(echoHandler);
    const seen = async (upstreamUrl: string, path: string) => {
      const gate = await startGate(simpleConfig(upstreamUrl));
      toClose.push({ close: () => gate.close(500) });
      const r = await request(`${gate.url}${path}`);
      assert.equal(r.status, 200, upstreamUrl);
      return r.json<{ url: string }>().url;
    };
    assert.equal(await seen(`${up.url}/base`, "/v1/x?q=1"), "/base/v1/x?q=1");
    assert.equal(await seen(`${up.url}/base/`, "/v1/x?q=1"), "/base/v1/x?q=1");
    assert.equal(await seen(`${up.url}/`, "/v1//x?q=a%20b"), "/v1//x?q=a%20b");
    assert.equal(await seen(up.url, "/"), "/");
    assert.equal(up.hits(), 4);
  });

  test("HEAD is forwarded and answered without a body", async () => {
    const up = await upstream((_req, res) => {
      res.writeHead(200, { "content-type": "text/plain", "content-length": "5" });
      res.end();
    });
    const gate = await gateFor(up);
    const r = await request(`${gate.url}/x`, { method: "HEAD" });
    assert.equal(r.status, 200);
    assert.equal(r.headers["content-length"], "5");
    assert.equal(r.body.length, 0);
    assert.equal(up.requests[0]?.method, "HEAD");
  });

  test("removes hop-by-hop headers in both directions, including those named by Connection", async () => {
    const up = await upstream((req, res) => {
      res.writeHead(200, {
        connection: "keep-alive, x-upstream-hop",
        "x-upstream-hop": "secret",
        "x-end-to-end": "kept",
        "proxy-connection": "keep-alive",
        "content-type": "application/json",
      });
      res.end(JSON.stringify(req.headers));
    });
    const gate = await gateFor(up);
    const r = await request(`${gate.url}/h`, {
      headers: {
        connection: "x-client-hop",
        "x-client-hop": "1",
        "keep-alive": "timeout=5",
        "proxy-connection": "keep-alive",
        te: "trailers",
        upgrade: "h2c",
        "x-kept": "yes",
      },
    });
    const seen = r.json<Record<string, string>>();
    for (const h of ["x-client-hop", "keep-alive", "proxy-connection", "te", "upgrade"]) {
      assert.equal(seen[h], undefined, `${h} must not reach the upstream`);
    }
    assert.equal(seen["x-kept"], "yes");
    assert.equal(r.headers["x-upstream-hop"], undefined);
    assert.equal(r.headers["proxy-connection"], undefined);
    assert.equal(r.headers["x-end-to-end"], "kept");
  });

  test("appends to X-Forwarded-For from a trusted proxy and replaces it from anyone else", async () => {
    const up = await upstream(echoHandler);
    const trusted = await gateFor(up); // default trustProxy includes 127.0.0.1
    const untrusted = await gateFor(up, { trustProxy: [] });
    const headers = {
      "x-forwarded-for": "203.0.113.7",
      "x-forwarded-proto": "https",
      "x-forwarded-host": "api.example",
    };

    const a = (await request(`${trusted.url}/a`, { headers })).json<{ headers: Record<string, string> }>()
      .headers;
    assert.equal(a["x-forwarded-for"], "203.0.113.7, 127.0.0.1");
    assert.equal(a["x-forwarded-proto"], "https");
    assert.equal(a["x-forwarded-host"], "api.example");

    const b = (await request(`${untrusted.url}/b`, { headers })).json<{ headers: Record<string, string> }>()
      .headers;
    assert.equal(
      b["x-forwarded-for"],
      "127.0.0.1",
      "a forged X-Forwarded-For from an untrusted peer is dropped",
    );
    assert.equal(b["x-forwarded-proto"], "http");
    assert.equal(b["x-forwarded-host"], `127.0.0.1:${untrusted.port}`);

    const ends: Array<{ clientIp: string }> = [];
    trusted.events.once("request:end", (s) => ends.push(s));
    await request(`${trusted.url}/c`, { headers });
    assert.equal(
      ends[0]?.clientIp,
      "203.0.113.7",
      "the client address comes from the trusted proxy's header",
    );
  });

  test("rewrites Host to the upstream by default and preserves it when configured", async () => {
    const up = await upstream(echoHandler);
    const rewrite = await gateFor(up);
    const preserve = await gateFor(up, {}, { preserveHost: true });
    const a = (await request(`${rewrite.url}/`, { headers: { host: "public.example" } })).json<{
      headers: Record<string, string>;
    }>();
    assert.equal(a.headers.host, `127.0.0.1:${up.port}`);
    const b = (await request(`${preserve.url}/`, { headers: { host: "public.example" } })).json<{
      headers: Record<string, string>;
    }>();
    assert.equal(b.headers.host, "public.example");
  });

  test("a response body leaves the idle sweeper when it closes, not at the sweeper's next tick", async () => {
    // A watch left for the next tick keeps the whole exchange alive through young-generation GCs (promoted).
    const up = await upstream(echoHandler);
    const gate = await gateFor(up);
    for (let i = 0; i < 5; i++) {
      const r = await request(`${gate.url}/w${i}`);
      assert.equal(r.status, 200);
      await new Promise((resolve) => setImmediate(resolve));
      assert.equal(idleSweeper.watching, 0, `request ${i}: its body was unwatched on close`);
    }
    // The watch is really taken while a body flows: a slow body is watched until it ends.
    const slow = await upstream((_req, res) => {
      res.writeHead(200, { "content-type": "text/plain" });
      res.write("a");
      setTimeout(() => res.end("b"), 100);
    });
    const slowGate = await gateFor(slow);
    const pending = request(`${slowGate.url}/slow`);
    await sleep(50);
    assert.equal(idleSweeper.watching, 1, "a flowing body is watched");
    assert.equal((await pending).body.toString(), "ab");
    await new Promise((resolve) => setImmediate(resolve));
    assert.equal(idleSweeper.watching, 0);
  });

  test("propagates a well-formed X-Request-Id and replaces a malformed one", async () => {
    const up = await upstream(echoHandler);
    const gate = await gateFor(up);
    const a = await request(`${gate.url}/`, { headers: { "x-request-id": "abc-123.X" } });
    assert.equal(a.headers["x-request-id"], "abc-123.X");
    assert.equal(a.json<{ headers: Record<string, string> }>().headers["x-request-id"], "abc-123.X");
    const b = await request(`${gate.url}/`, { headers: { "x-request-id": "bad id with spaces" } });
    assert.match(String(b.headers["x-request-id"]), /^[0-9a-f-]{36}$/);
    const c = await request(`${gate.url}/`);
    assert.match(String(c.headers["x-request-id"]), /^[0-9a-f-]{36}$/);
    assert.notEqual(b.headers["x-request-id"], c.headers["x-request-id"]);
    const logged = gate.logs().filter((l) => l.msg === "request");
    assert.ok(
      logged.some((l) => l.reqId === "abc-123.X"),
      "the access log carries the request id",
    );
  });

  test("reuses keep-alive connections to the upstream", async () => {
    const up = await upstream(echoHandler);
    let connections = 0;
    up.server.on("connection", () => connections++);
    const gate = await gateFor(up);
    for (let i = 0; i < 20; i++) assert.equal((await request(`${gate.url}/k${i}`)).status, 200);
    assert.equal(up.hits(), 20);
    assert.equal(connections, 1, "20 sequential requests use one pooled upstream connection");
  });

  test("keeps the upstream connections a burst opened: the next bursts reuse them all", async () => {
    // The upstream answers only once N requests are waiting, so N upstream connections are open at once; N is above
    // the pool's former maxFreeSockets default (64), past which node destroys freed sockets and the next burst
    // reconnects (measured before the default changed: 28 % of requests opened a connection at 200 concurrent).
    const N = 120;
    let waiting: http.ServerResponse[] = [];
    const up = await upstream((req, res) => {
      req.resume();
      waiting.push(res);
      if (waiting.length === N) {
        for (const r of waiting) r.end("ok");
        waiting = [];
      }
    });
    let connections = 0;
    up.server.on("connection", () => connections++);
    const gate = await gateFor(up, {}, { concurrency: { enabled: false } });
    for (let wave = 0; wave < 3; wave++) {
      const replies = await Promise.all(
        Array.from({ length: N }, (_, i) => request(`${gate.url}/w${wave}/${i}`)),
      );
      for (const r of replies) assert.equal(r.status, 200);
    }
    assert.equal(up.hits(), 3 * N);
    assert.equal(connections, N, "the second and third bursts use the first burst's connections");
  });
});

describe("event streams", () => {
  test("delivers each SSE frame as soon as the upstream sends it", async () => {
    const up = await upstream((_req, res) => {
      res.writeHead(200, { "content-type": "text/event-stream" });
      let i = 0;
      const t = setInterval(() => {
        res.write(`data: ${i++}\n\n`);
        if (i === 5) {
          clearInterval(t);
          res.end();
        }
      }, 150);
    });
    const gate = await gateFor(up);
    const r = await readFrames(`${gate.url}/stream`);
    assert.equal(r.status, 200);
    assert.equal(r.headers["x-accel-buffering"], "no", "tells nginx not to buffer");
    assert.equal(r.headers["content-encoding"], undefined);
    assert.deepEqual(
      r.frames.map((f) => f.data),
      ["data: 0", "data: 1", "data: 2", "data: 3", "data: 4"],
    );
    const first = r.frames[0]?.at ?? 0;
    const last = r.frames[4]?.at ?? 0;
    assert.ok(first < 400, `first frame after ${first} ms`);
    assert.ok(last - first >= 450, `frames spread over ${last - first} ms, not delivered at once`);
  });

  test("an event stream silent for longer than the idle timeout is not cut", async () => {
    const up = await upstream((_req, res) => {
      res.writeHead(200, { "content-type": "text/event-stream; charset=utf-8" });
      res.write("event: ping\n\n");
      setTimeout(() => res.end('data: {"event":"message_end"}\n\n'), 900);
    });
    const gate = await gateFor(up, {}, { timeouts: { idle: "300ms", streamIdle: 0 } });
    const r = await readFrames(`${gate.url}/long`);
    assert.deepEqual(
      r.frames.map((f) => f.data),
      ["event: ping", 'data: {"event":"message_end"}'],
    );
  });

  test("a plain response silent for longer than the idle timeout is cut", async () => {
    const up = await upstream((_req, res) => {
      res.writeHead(200, { "content-type": "application/json" });
      res.write('{"partial":');
      // never finishes
    });
    const gate = await gateFor(up, {}, { timeouts: { idle: "300ms" } });
    const started = performance.now();
    await assert.rejects(request(`${gate.url}/stall`), /aborted|socket hang up|ECONNRESET/);
    assert.ok(performance.now() - started < 2000);
  });
});

describe("failure modes", () => {
  test("an unreachable upstream gets a fast 502 upstream_unreachable", async () => {
    const port = await closedPort();
    const gate = await startGate(simpleConfig(`http://127.0.0.1:${port}`));
    toClose.push({ close: () => gate.close(500) });
    const started = performance.now();
    const r = await request(`${gate.url}/x`);
    assert.equal(r.status, 502);
    assert.equal(r.headers["content-type"], "application/json; charset=utf-8");
    const body = r.json<{ error: { code: string; requestId: string } }>();
    assert.equal(body.error.code, "upstream_unreachable");
    assert.equal(body.error.requestId, r.headers["x-request-id"]);
    assert.ok(performance.now() - started < 1000, "fails fast");
  });

  /** A request to an upstream that never answers, under `timeouts.response`: a 504 upstream_timeout, and when. */
  async function timedOut(response: string): Promise<{ took: number; asked: number }> {
    let asked = 0;
    const up = await upstream(() => {
      asked++; // hold the request forever
    });
    const gate = await gateFor(up, {}, { timeouts: { response } });
    const started = performance.now();
    const r = await request(`${gate.url}/slow`);
    const took = performance.now() - started;
    assert.equal(r.status, 504);
    assert.equal(r.json<{ error: { code: string } }>().error.code, "upstream_timeout");
    return { took, asked };
  }

  test("an upstream that does not answer in time gets a 504 upstream_timeout", async () => {
    const { took } = await timedOut("300ms");
    assert.ok(took >= 280 && took < 1500, `took ${took} ms`);
  });

  test("a long response timeout (watched by the sweeper, not a timer) gives its 504 within a tick of it", async () => {
    const { took, asked } = await timedOut("2s");
    assert.equal(asked, 1);
    assert.ok(took >= 1990 && took < 2600, `took ${took} ms (2 s, plus at most one 250 ms tick)`);
  });

  test("an upstream that aborts mid-body aborts the client connection promptly", async () => {
    const up = await upstream((req, res) => {
      res.writeHead(200, { "content-type": "application/octet-stream", "content-length": "100000" });
      res.write(Buffer.alloc(1000));
      setTimeout(() => req.socket.destroy(), 50);
    });
    const gate = await gateFor(up);
    const started = performance.now();
    await assert.rejects(request(`${gate.url}/cut`), /aborted|socket hang up|ECONNRESET/);
    assert.ok(performance.now() - started < 1000, "the client is not left hanging");
    await sleep(50);
    const line = gate.logs().find((l) => l.msg === "request" && l.path === "/cut");
    assert.equal(line?.error, "upstream_aborted");
  });

  test("a client that goes away aborts the upstream request", async () => {
    let upstreamSawClose: () => void = () => {};
    const closed = new Promise<void>((r) => {
      upstreamSawClose = r;
    });
    const up = await upstream((_req, res) => {
      res.writeHead(200, { "content-type": "text/event-stream" });
      res.write("data: 1\n\n");
      res.on("close", () => upstreamSawClose());
    });
    const gate = await gateFor(up);
    await new Promise<void>((resolve, reject) => {
      const req = http.get(`${gate.url}/abandon`, (res) => {
        res.once("data", () => {
          req.destroy();
          resolve();
        });
      });
      req.on("error", () => {});
      setTimeout(() => reject(new Error("no first frame")), 3000);
    });
    await Promise.race([closed, sleep(2000).then(() => assert.fail("upstream request was not aborted"))]);
  });

  test("a client that goes away before the upstream answers aborts the upstream request too", async () => {
    let upstreamSawClose: () => void = () => {};
    const closed = new Promise<void>((r) => {
      upstreamSawClose = r;
    });
    const up = await upstream((req) => {
      req.socket.on("close", () => upstreamSawClose());
    });
    const gate = await gateFor(up);
    const req = http.get(`${gate.url}/never`);
    req.on("error", () => {});
    while (up.hits() === 0) await sleep(10);
    req.destroy();
    await Promise.race([closed, sleep(2000).then(() => assert.fail("upstream socket was not closed"))]);
    await sleep(50);
    const line = gate.logs().find((l) => l.msg === "request" && l.path === "/never");
    assert.equal(line?.status, 499);
  });

  test("retries an idempotent request once when a pooled upstream connection turns out dead", async () => {
    // A raw upstream that answers the first request with keep-alive, then drops the connection when the next
    // request arrives on it: the race a keep-alive pool meets when the upstream closes an idle socket.
    let connections = 0;
    const server = net.createServer((socket) => {
      connections++;
      let served = 0;
      socket.on("data", () => {
        served++;
        if (served === 1) {
          socket.write("HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: keep-alive\r\n\r\nok");
        } else {
          socket.destroy();
        }
      });
    });
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    toClose.push({ close: () => new Promise((r) => server.close(() => r())) });
    const port = (server.address() as net.AddressInfo).port;
    const gate = await startGate(simpleConfig(`http://127.0.0.1:${port}`));
    toClose.push({ close: () => gate.close(500) });
    assert.equal((await request(`${gate.url}/one`)).status, 200);
    const second = await request(`${gate.url}/two`);
    assert.equal(second.status, 200, "the retry on a fresh connection succeeded");
    assert.equal(second.text, "ok");
    assert.equal(connections, 2);
    // A POST is never retried: its body is gone.
    const post = await request(`${gate.url}/three`, {
      method: "POST",
      body: "x",
      headers: { "content-length": 1 },
    });
    assert.equal(post.status, 502);
  });

  test("a request with dot segments in the path is refused with a JSON error", async () => {
    const up = await upstream(echoHandler);
    const gate = await gateFor(up);
    for (const path of ["/v1/../admin", "/v1/%2e%2e/admin", "/./x"]) {
      const r = await new Promise<{ status: number; body: string }>((resolve, reject) => {
        const req = http.request({ host: "127.0.0.1", port: gate.port, path, agent: false }, (res) => {
          let body = "";
          res.on("data", (c) => {
            body += c;
          });
          res.on("end", () => resolve({ status: res.statusCode ?? 0, body }));
        });
        req.on("error", reject);
        req.end();
      });
      assert.equal(r.status, 400, path);
      assert.equal(JSON.parse(r.body).error.code, "invalid_request");
    }
    assert.equal(up.hits(), 0);
  });

  test("a request no route matches gets 404 route_not_found", async () => {
    const up = await upstream(echoHandler);
    const gate = await startGate({
      upstreams: [{ name: "up", url: up.url }],
      routes: [{ name: "api", match: { pathPrefix: "/v1/", methods: ["GET"] }, upstream: "up" }],
    });
    toClose.push({ close: () => gate.close(500) });
    assert.equal((await request(`${gate.url}/v1/ok`)).status, 200);
    assert.equal((await request(`${gate.url}/v1/ok`, { method: "HEAD" })).status, 200, "HEAD follows GET");
    const r = await request(`${gate.url}/other`);
    assert.equal(r.status, 404);
    assert.equal(r.json<{ error: { code: string } }>().error.code, "route_not_found");
    const p = await request(`${gate.url}/v1/ok`, { method: "POST", body: "" });
    assert.equal(p.status, 404);
    assert.equal(up.hits(), 2);
  });
});

describe("large bodies", () => {
  test("streams 100 MiB each way without buffering it", async () => {
    const SIZE = 100 * 1024 * 1024;
    const up = await upstream((req, res) => {
      if (req.method === "POST") {
        let n = 0;
        req.on("data", (c: Buffer) => {
          n += c.length;
        });
        req.on("end", () => res.end(String(n)));
        return;
      }
      res.writeHead(200, { "content-type": "application/octet-stream", "content-length": SIZE });
      generated(SIZE).pipe(res);
    });
    const gate = await gateFor(up);
    global.gc?.();
    const rssBefore = process.memoryUsage().rss;
    let peak = rssBefore;
    const sampler = setInterval(() => {
      peak = Math.max(peak, process.memoryUsage().rss);
    }, 20);
    try {
      const up1 = await request(`${gate.url}/upload`, {
        method: "POST",
        body: generated(SIZE),
        headers: { "content-type": "application/octet-stream", "transfer-encoding": "chunked" },
        timeoutMs: 60_000,
      });
      assert.equal(up1.text, String(SIZE), "the upstream received every byte");

      const received = await new Promise<number>((resolve, reject) => {
        http
          .get(`${gate.url}/download`, { agent: false }, (res) => {
            let n = 0;
            res.on("data", (c: Buffer) => {
              n += c.length;
            });
            res.on("end", () => resolve(n));
            res.on("error", reject);
          })
          .on("error", reject);
      });
      assert.equal(received, SIZE);
    } finally {
      clearInterval(sampler);
    }
    const growthMiB = (peak - rssBefore) / 1024 / 1024;
    // Client, proxy and upstream share this process; 200 MiB moved, so buffering would show as >= 100 MiB.
    assert.ok(growthMiB < 64, `resident memory grew by ${growthMiB.toFixed(1)} MiB`);
  });
});

describe("backpressure", () => {
  test("a client that stops reading stops the upstream too (nothing piles up in the proxy), then gets every byte", async () => {
    const SIZE = 96 * 1024 * 1024;
    let produced = 0;
    const up = await upstream((_req, res) => {
      res.writeHead(200, { "content-type": "application/octet-stream", "content-length": SIZE });
      const src = generated(SIZE);
      src.on("data", (c: Buffer) => {
        produced += c.length;
      });
      src.pipe(res);
    });
    const gate = await gateFor(up);
    const { atPause, received } = await new Promise<{ atPause: number; received: number }>(
      (resolve, reject) => {
        http
          .get(`${gate.url}/big`, { agent: false }, (res) => {
            res.pause();
            // Long enough for the upstream to produce all of it, were the proxy reading without pause.
            setTimeout(() => {
              const atPause = produced;
              let n = 0;
              res.on("data", (c: Buffer) => {
                n += c.length;
              });
              res.on("end", () => resolve({ atPause, received: n }));
              res.resume();
            }, 800);
            res.on("error", reject);
          })
          .on("error", reject);
      },
    );
    assert.equal(received, SIZE);
    // What socket buffers on two loopback hops can hold (a few MiB each), far below the whole body.
    assert.ok(
      atPause < SIZE / 2,
      `the upstream had produced ${(atPause / 2 ** 20).toFixed(1)} MiB while the client paused`,
    );
  });
});

describe("websockets", () => {
  test("passes WebSocket upgrades through in both directions", async () => {
    const { WebSocketServer, WebSocket } = await import("ws");
    const up = await upstream((_req, res) => res.end());
    const wss = new WebSocketServer({ server: up.server });
    wss.on("connection", (ws, req) => {
      ws.send(`hello ${req.headers["x-forwarded-for"]}`);
      ws.on("message", (m) => ws.send(`echo ${m}`));
    });
    const gate = await gateFor(up);
    const ws = new WebSocket(`ws://127.0.0.1:${gate.port}/socket`);
    const messages: string[] = [];
    await new Promise<void>((resolve, reject) => {
      ws.on("message", (m) => {
        messages.push(String(m));
        if (messages.length === 1) ws.send("ping");
        if (messages.length === 2) resolve();
      });
      ws.on("error", reject);
      setTimeout(() => reject(new Error("websocket timed out")), 3000);
    });
    ws.close();
    wss.close();
    assert.deepEqual(messages, ["hello 127.0.0.1", "echo ping"]);
  });
});

describe("operations", () => {
  test("exposes request metrics with route labels, never raw paths", async () => {
    const up = await upstream(echoHandler);
    const gate = await gateFor(up);
    await request(`${gate.url}/users/123`);
    await request(`${gate.url}/users/456`);
    const r = await request(`${gate.adminUrl}/metrics`);
    assert.equal(r.status, 200);
    assert.match(r.text, /cachegate_requests_total\{route="all",method="GET",status_class="2xx"\} 2/);
    assert.match(r.text, /cachegate_request_duration_seconds_count\{route="all",cache="MISS"\} 2/);
    assert.match(r.text, /cachegate_upstream_response_seconds_count\{upstream="up",status_class="2xx"\} 2/);
    assert.doesNotMatch(r.text, /users\/123/);
    assert.equal((await request(`${gate.adminUrl}/healthz`)).status, 200);
    assert.equal((await request(`${gate.adminUrl}/readyz`)).status, 200);
    assert.equal((await request(`${gate.adminUrl}/nope`)).status, 404);
  });

  test("the access line's bytes are each response's own, on a kept-alive connection too", async () => {
    const up = await upstream((req, res) => {
      const body = "x".repeat(req.url === "/small" ? 10 : 5000);
      res.writeHead(200, { "content-type": "text/plain", "content-length": body.length });
      res.end(body);
    });
    const gate = await gateFor(up);
    const socket = net.connect(gate.port, "127.0.0.1");
    await once(socket, "connect");
    const got: number[] = [];
    let buffered = Buffer.alloc(0);
    socket.on("data", (d: Buffer) => {
      buffered = Buffer.concat([buffered, d]);
    });
    for (const path of ["/big", "/small", "/big"]) {
      buffered = Buffer.alloc(0);
      socket.write(`GET ${path} HTTP/1.1\r\nhost: t\r\n\r\n`);
      // The whole response: headers, then content-length bytes of body.
      for (let i = 0; i < 200; i++) {
        const end = buffered.indexOf("\r\n\r\n");
        const len =
          end === -1 ? -1 : Number(/content-length: (\d+)/i.exec(buffered.subarray(0, end).toString())?.[1]);
        if (end !== -1 && buffered.length === end + 4 + len) break;
        await sleep(5);
      }
      got.push(buffered.length);
    }
    socket.destroy();
    await sleep(20);
    const logged = gate
      .logs()
      .filter((l) => l.msg === "request")
      .map((l) => l.bytes);
    assert.deepEqual(logged, got, "bytes as the client received them, per response");
    assert.ok((got[0] as number) > 5000 && (got[1] as number) < 1000);
  });

  test("writes one access line per request with the fields ops need and no credentials", async () => {
    const up = await upstream(echoHandler);
    const gate = await gateFor(up);
    await request(`${gate.url}/logged?token=secret`, {
      headers: { authorization: "Bearer sk-very-secret", cookie: "sid=secret" },
    });
    await sleep(20);
    const lines = gate.logs().filter((l) => l.msg === "request");
    assert.equal(lines.length, 1);
    const l = lines[0] as Record<string, unknown>;
    assert.equal(l.method, "GET");
    assert.equal(l.path, "/logged", "the query string (which can hold secrets) is not logged");
    assert.equal(l.route, "all");
    assert.equal(l.status, 200);
    assert.ok(typeof l.bytes === "number" && l.bytes > 0);
    assert.ok(typeof l.durationMs === "number");
    assert.ok(typeof l.upstreamMs === "number");
    assert.ok(typeof l.reqId === "string");
    assert.doesNotMatch(JSON.stringify(gate.logs()), /secret/);
  });

  test("close() lets an in-flight request finish, then stops", async () => {
    const up = await upstream((_req, res) => setTimeout(() => res.end("done"), 400));
    const gate = await startGate(simpleConfig(up.url));
    const inflight = request(`${gate.url}/slow`);
    await sleep(100);
    const closing = gate.close(5000);
    const r = await inflight;
    assert.equal(r.status, 200);
    assert.equal(r.text, "done");
    assert.equal(r.headers.connection, "close", "the client is told to reconnect elsewhere");
    await closing;
    await assert.rejects(request(`${gate.url}/after`, { timeoutMs: 1000 }), /ECONNREFUSED/);
  });

  test("close() cuts requests still running at the deadline", async () => {
    const up = await upstream(() => {
      // never answers
    });
    const gate = await startGate(simpleConfig(up.url));
    const inflight = request(`${gate.url}/forever`).then(
      () => "answered",
      () => "cut",
    );
    await sleep(100);
    const started = performance.now();
    await gate.close(300);
    assert.ok(performance.now() - started < 1500);
    assert.equal(await inflight, "cut");
  });
});
