// Benchmark upstream: node:http with keep-alive, answering every request with the same 1 KiB JSON body.
import http from "node:http";
import { announce, exitOnParentSignal, listenLoopback, portOf } from "./child.js";

export const BODY_BYTES = 1024;

/** A JSON document of exactly `BODY_BYTES` bytes (ASCII, so characters = bytes). */
function makeBody(): Buffer {
  const base = { id: "bench-0001", kind: "passthrough", items: [1, 2, 3, 4, 5], ok: true, pad: "" };
  const without = JSON.stringify(base).length;
  base.pad = "x".repeat(BODY_BYTES - without);
  const buf = Buffer.from(JSON.stringify(base));
  if (buf.length !== BODY_BYTES) throw new Error(`body is ${buf.length} bytes, expected ${BODY_BYTES}`);
  return buf;
}

const body = makeBody();
const headers = { "content-type": "application/json", "content-length": String(body.length) };

const server = http.createServer(
  // Idle keep-alive sockets must outlive the gaps between runs, or the proxies' pools meet closed sockets.
  { keepAliveTimeout: 120_000, noDelay: true },
  (req, res) => {
    req.resume();
    res.writeHead(200, headers);
    res.end(body);
  },
);

await listenLoopback(server);
announce("upstream", portOf(server));
exitOnParentSignal(
  () =>
    new Promise<void>((resolve) => {
      server.closeAllConnections();
      server.close(() => resolve());
    }),
);
