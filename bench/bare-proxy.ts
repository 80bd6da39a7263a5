// The reference: a bare http-proxy-3 proxy with a keep-alive agent and an error listener, nothing else.
import http from "node:http";
import { createProxyServer } from "http-proxy-3";
import { announce, exitOnParentSignal, listenLoopback, portOf, requireEnv } from "./child.js";

const target = requireEnv("BENCH_UPSTREAM_URL");
const agent = new http.Agent({ keepAlive: true, maxSockets: 256 });
const proxy = createProxyServer({ target, agent });
proxy.on("error", (_err, _req, res) => {
  // Count a failed forward as a 502 (non-2xx in the results), never as a hang or a crash.
  if (res instanceof http.ServerResponse) {
    if (!res.headersSent) res.writeHead(502, { "content-type": "text/plain" });
    res.end("bad gateway");
  } else {
    res.destroy();
  }
});

const server = http.createServer((req, res) => proxy.web(req, res));
await listenLoopback(server);
announce("http-proxy-3", portOf(server));
exitOnParentSignal(
  () =>
    new Promise<void>((resolve) => {
      server.closeAllConnections();
      server.close(() => resolve());
      agent.destroy();
    }),
);
