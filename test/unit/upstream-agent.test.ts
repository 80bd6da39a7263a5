// The per-upstream keep-alive Agent: its pool settings hold even though they are kept out of the options every
// request copies (routing.ts), and pooled sockets are reused. PooledAgent (proxy/upstream/pooled-agent.ts) hands out
// free sockets itself; every scenario below runs on it and on a stock http.Agent with the same options, and both
// must behave alike.
import assert from "node:assert/strict";
import http from "node:http";
import type { AddressInfo, Socket } from "node:net";
import { test } from "node:test";
import { createUpstream } from "../../proxy/routing.js";
import { idleSweeper } from "../../proxy/upstream/idle-sweeper.js";
import { POOLED_FAST_PATH, PooledAgent } from "../../proxy/upstream/pooled-agent.js";
import { configFrom } from "../helpers/cachegate.js";

interface Seen {
  reused: boolean;
  localPort: number;
  socketTimeout: number | undefined;
}

function getOn(agent: http.Agent, port: number, timeout?: number): Promise<Seen> {
  return new Promise((resolve, reject) => {
    const req = http.get({ host: "127.0.0.1", port, path: "/", agent, timeout }, (res) => {
      const socket = req.socket as Socket & { timeout?: number };
      const seen = {
        reused: req.reusedSocket,
        localPort: socket.localPort ?? 0,
        socketTimeout: socket.timeout,
      };
      res.resume();
      res.on("end", () => setImmediate(() => resolve(seen)));
    });
    req.on("error", reject);
  });
}

async function withServer(run: (port: number) => Promise<void>, delayMs = 0): Promise<void> {
  const server = http.createServer((_req, res) => {
    if (delayMs > 0) setTimeout(() => res.end("ok"), delayMs);
    else res.end("ok");
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  try {
    await run((server.address() as AddressInfo).port);
  } finally {
    server.closeAllConnections();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  }
}

const poolSize = (pool: NodeJS.ReadOnlyDict<Socket[]>) =>
  Object.values(pool).reduce((n, list) => n + (list?.length ?? 0), 0);

test("pool settings hold: at most maxFreeSockets stay pooled, keep-alive delay set, LIFO reuse", async () => {
  // Slow enough (30 ms) that three requests overlap and need three sockets.
  await withServer(async (port) => {
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

      await Promise.all([getOn(agent, port), getOn(agent, port), getOn(agent, port)]);
      assert.equal(
        poolSize(agent.freeSockets),
        1,
        "three sockets were used, one is kept (maxFreeSockets: 1)",
      );
      assert.equal((await getOn(agent, port)).reused, true, "the kept socket is reused");
    } finally {
      idleSweeper.unwatchAgent(agent);
      agent.destroy();
    }
  }, 30);
});

test("PooledAgent: the fast path is on where node's reuse path never tunnels through an env proxy", () => {
  const tunnels = typeof (http.Agent.prototype as unknown as Record<string, unknown>).prepareForHttpsProxy;
  assert.equal(
    POOLED_FAST_PATH,
    tunnels !== "function",
    tunnels === "function" ? "must be off here" : "node's async_id_symbol was not found on a socket",
  );
});

for (const kind of ["PooledAgent", "http.Agent"] as const) {
  const make = (o: http.AgentOptions) => (kind === "PooledAgent" ? new PooledAgent(o) : new http.Agent(o));

  test(`${kind}: reuses the most recently freed socket and keeps its pool lists consistent`, async () => {
    const agent = make({ keepAlive: true, scheduling: "lifo" });
    try {
      await withServer(async (port) => {
        // Two overlapping requests open two sockets; the one that finished last is reused first.
        const [a, b] = await Promise.all([getOn(agent, port), getOn(agent, port)]);
        assert.equal(a.reused || b.reused, false);
        assert.equal(poolSize(agent.freeSockets), 2);
        const freeList = Object.values(agent.freeSockets)[0] as Socket[];
        const lastFreed = (freeList[freeList.length - 1] as Socket).localPort;
        const c = await getOn(agent, port);
        assert.equal(c.reused, true);
        assert.equal(c.localPort, lastFreed, "lifo: the last freed socket");
        assert.equal(poolSize(agent.freeSockets), 2, "given back after the response");
        assert.equal(poolSize(agent.sockets), 0, "nothing left in use");
        assert.deepEqual(Object.keys(agent.sockets), [], "empty in-use lists are removed");
      }, 20);
    } finally {
      agent.destroy();
    }
  });

  test(`${kind}: a destroyed pooled socket is never handed out`, async () => {
    const agent = make({ keepAlive: true, scheduling: "lifo" });
    try {
      await withServer(async (port) => {
        await Promise.all([getOn(agent, port), getOn(agent, port)]);
        const freeList = Object.values(agent.freeSockets)[0] as Socket[];
        const [oldest, newest] = freeList as [Socket, Socket];
        // Destroyed while still listed (its "close" has not run yet): the head of the list is skipped.
        oldest.destroy();
        const survivor = newest.localPort;
        const next = await getOn(agent, port);
        assert.equal(next.reused, true);
        assert.equal(next.localPort, survivor);
        const after = await getOn(agent, port);
        assert.equal(after.reused, true);
        assert.equal(after.localPort, survivor, "the destroyed one is gone from the pool");
      }, 20);
    } finally {
      agent.destroy();
    }
  });

  test(`${kind}: a request's own timeout is set on the reused socket; maxSockets queues the rest`, async () => {
    const agent = make({ keepAlive: true, maxSockets: 1 });
    try {
      await withServer(async (port) => {
        await getOn(agent, port);
        const timed = await getOn(agent, port, 4321);
        assert.equal(timed.reused, true);
        assert.equal(timed.socketTimeout, 4321);
        // One socket at most: three concurrent requests take turns on it.
        const turns = await Promise.all([getOn(agent, port), getOn(agent, port), getOn(agent, port)]);
        assert.equal(new Set(turns.map((t) => t.localPort)).size, 1, "one socket for all");
        assert.equal(turns[0]?.localPort, timed.localPort, "the pooled one");
      }, 10);
    } finally {
      agent.destroy();
    }
  });
}

test("PooledAgent: a reused socket gets a new async id, as with node's own reuse", async () => {
  const agent = new PooledAgent({ keepAlive: true });
  const idSymbol = (s: Socket) =>
    Object.getOwnPropertySymbols(s).find((x) => x.description === "async_id_symbol") as symbol;
  try {
    await withServer(async (port) => {
      await getOn(agent, port);
      const pooled = (Object.values(agent.freeSockets)[0] as Socket[])[0] as Socket & Record<symbol, number>;
      const sym = idSymbol(pooled);
      assert.equal(pooled[sym], -1, "a free socket has no async id (node's 'free' handler)");
      const during = await new Promise<{ id: number; handleId: number; same: boolean }>((resolve, reject) => {
        const req = http.get({ host: "127.0.0.1", port, path: "/", agent }, (res) => {
          const s = req.socket as Socket & Record<symbol, number>;
          const handle = (s as unknown as { _handle: { getAsyncId(): number } })._handle;
          resolve({ id: s[sym] as number, handleId: handle.getAsyncId(), same: s === pooled });
          res.resume();
        });
        req.on("error", reject);
      });
      assert.equal(during.same, true, "the pooled socket was reused");
      assert.notEqual(during.id, -1);
      assert.equal(during.id, during.handleId, "the socket carries its handle's new async id");
    });
  } finally {
    agent.destroy();
  }
});

test("PooledAgent: agent options that name the pool (localAddress) leave every request to node's own addRequest", async () => {
  const agent = new PooledAgent({ keepAlive: true, localAddress: "127.0.0.1" });
  assert.equal((agent as unknown as { fast: boolean }).fast, false);
  try {
    await withServer(async (port) => {
      const first = await getOn(agent, port);
      const second = await getOn(agent, port);
      assert.equal(second.reused, true, "node's reuse still works");
      assert.equal(second.localPort, first.localPort);
    });
  } finally {
    agent.destroy();
  }
});
