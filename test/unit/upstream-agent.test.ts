// The per-upstream keep-alive Agent: its pool settings hold even though they are kept out of the options every
// request copies (routing.ts), and pooled sockets are reused.
import assert from "node:assert/strict";
import http from "node:http";
import type { AddressInfo } from "node:net";
import { test } from "node:test";
import { createUpstream } from "../../proxy/routing.js";
import { idleSweeper } from "../../proxy/upstream/idle-sweeper.js";
import { configFrom } from "../helpers/cachegate.js";

function get(agent: http.Agent, port: number): Promise<{ reused: boolean }> {
  return new Promise((resolve, reject) => {
    const req = http.get({ host: "127.0.0.1", port, path: "/", agent }, (res) => {
      res.resume();
      res.on("end", () => resolve({ reused: req.reusedSocket }));
    });
    req.on("error", reject);
  });
}

test("pool settings hold: at most maxFreeSockets stay pooled, keep-alive delay set, LIFO reuse", async () => {
  const server = http.createServer((_req, res) => {
    // Slow enough that three requests overlap and need three sockets.
    setTimeout(() => res.end("ok"), 30);
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const port = (server.address() as AddressInfo).port;
  const config = configFrom({
    upstreams: [
      {
        name: "up",
        url: `http://127.0.0.1:${port}`,
        pool: { maxFreeSockets: 1, keepAlive: "12s", freeSocketTimeout: "1m" },
      },
    ],
    routes: [{ name: "all", upstream: "up" }],
  });
  const upstream = createUpstream(config.upstreams[0] as (typeof config.upstreams)[number]);
  const agent = upstream.agent as http.Agent & {
    keepAliveMsecs: number;
    scheduling: string;
    options: Record<string, unknown>;
  };
  try {
    assert.equal(agent.maxFreeSockets, 1);
    assert.equal(agent.keepAliveMsecs, 12_000);
    assert.equal(agent.scheduling, "lifo");
    assert.equal(agent.options.keepAlive, true, "keepAlive still reaches every connection's options");
    for (const k of ["keepAliveMsecs", "maxFreeSockets", "scheduling"]) assert.ok(!(k in agent.options), k);

    await Promise.all([get(agent, port), get(agent, port), get(agent, port)]);
    await new Promise((r) => setImmediate(r));
    const free = Object.values(agent.freeSockets).reduce((n, list) => n + (list?.length ?? 0), 0);
    assert.equal(free, 1, "three sockets were used, one is kept (maxFreeSockets: 1)");
    assert.equal((await get(agent, port)).reused, true, "the kept socket is reused");
  } finally {
    idleSweeper.unwatchAgent(agent);
    agent.destroy();
    server.closeAllConnections();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  }
});
