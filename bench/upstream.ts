// Benchmark upstream: node:http with keep-alive, answering every request with the same 1 KiB JSON body.
import http from "node:http";
import { makeBody } from "./body.js";
import { announce, exitOnParentSignal, listenLoopback, portOf } from "./child.js";

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
