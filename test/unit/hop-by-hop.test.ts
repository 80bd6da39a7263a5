import assert from "node:assert/strict";
import type { IncomingHttpHeaders } from "node:http";
import { test } from "node:test";
import { endToEndResponseHeaders, withoutRequestHopByHop } from "../../proxy/upstream/hop-by-hop.js";

test("request: drops the fixed hop-by-hop set and every field Connection names, keeps the rest", () => {
  const h: IncomingHttpHeaders = {
    connection: "keep-alive, X-Trace-Hop",
    "x-trace-hop": "1",
    "keep-alive": "timeout=5",
    te: "trailers",
    trailer: "x",
    upgrade: "websocket",
    "proxy-connection": "keep-alive",
    expect: "100-continue",
    authorization: "Bearer k",
    "content-length": "3",
  };
  const before = { ...h };
  assert.deepEqual(withoutRequestHopByHop(h, false), { authorization: "Bearer k", "content-length": "3" });
  assert.deepEqual(h, before, "the request's own headers object is left as it was");
});

test("request: keeps chunked framing when there is no Content-Length, and Upgrade for WebSockets", () => {
  const h: IncomingHttpHeaders = {
    "transfer-encoding": "chunked",
    connection: "Upgrade",
    upgrade: "websocket",
  };
  assert.equal(withoutRequestHopByHop(h, true), h, "nothing to remove: the same object, not a copy");
  assert.deepEqual(h, { "transfer-encoding": "chunked", connection: "Upgrade", upgrade: "websocket" });
});

test("response: removes hop-by-hop fields and those named by Connection", () => {
  const out = endToEndResponseHeaders({
    connection: "close, x-internal",
    "x-internal": "secret",
    "transfer-encoding": "chunked",
    "keep-alive": "timeout=5",
    "content-type": "application/json",
    "set-cookie": ["a=1", "b=2"],
  });
  assert.deepEqual(out, { "content-type": "application/json", "set-cookie": ["a=1", "b=2"] });
});
