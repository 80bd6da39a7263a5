// The idle sweeper on real loopback sockets with a hand-driven clock: silent sockets expire once, busy ones never;
// response deadlines expire once at their time.
import assert from "node:assert/strict";
import { once } from "node:events";
import http from "node:http";
import net, { type AddressInfo, type Socket } from "node:net";
import { test } from "node:test";
import { type DeadlineWatch, IdleSweeper, type IdleWatch } from "../../proxy/upstream/idle-sweeper.js";

/** A connected client/server socket pair on loopback; the server side echoes nothing, it only reads. */
async function socketPair(): Promise<{ client: Socket; peer: Socket; close: () => void }> {
  const server = net.createServer();
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  const accepted = once(server, "connection");
  const client = net.connect((server.address() as AddressInfo).port, "127.0.0.1");
  await once(client, "connect");
  const [peer] = (await accepted) as [Socket];
  return {
    client,
    peer,
    close: () => {
      client.destroy();
      peer.destroy();
      server.close();
    },
  };
}

function watchOn(socket: Socket, limitMs: number): IdleWatch & { expired: number; finished: boolean } {
  return {
    idleSocket: socket,
    idleLimitMs: limitMs,
    idleBytes: 0,
    idleSince: 0,
    expired: 0,
    finished: false,
    idleFinished() {
      return this.finished;
    },
    idleExpired() {
      this.expired++;
    },
  };
}

async function written(socket: Socket, data: string): Promise<void> {
  await new Promise<void>((resolve, reject) => socket.write(data, (err) => (err ? reject(err) : resolve())));
}

test("a silent watched socket expires once after its limit; one that keeps moving bytes never does", async () => {
  let now = 1_000;
  const sweeper = new IdleSweeper(60_000, () => now);
  const silent = await socketPair();
  const busy = await socketPair();
  try {
    const quiet = watchOn(silent.client, 500);
    const active = watchOn(busy.client, 500);
    sweeper.watch(quiet);
    sweeper.watch(active);
    for (let step = 0; step < 8; step++) {
      now += 200;
      await written(busy.client, "x");
      sweeper.sweep();
    }
    assert.equal(quiet.expired, 1, "expires exactly once, however often the sweeper runs past the limit");
    assert.equal(active.expired, 0, "bytes written count as activity");
    // Bytes read count too: the peer talks, the watched side stays quiet.
    const reader = watchOn(busy.client, 500);
    sweeper.watch(reader);
    for (let step = 0; step < 5; step++) {
      now += 200;
      busy.peer.write("y");
      await once(busy.client, "data");
      sweeper.sweep();
    }
    assert.equal(reader.expired, 0, "bytes read count as activity");
    // A finished watch is dropped, never expired.
    reader.finished = true;
    active.finished = true;
    now += 10_000;
    sweeper.sweep();
    assert.equal(reader.expired, 0);
    assert.equal(active.expired, 0);
  } finally {
    silent.close();
    busy.close();
  }
});

test("free pooled sockets idle past the timeout are closed; a socket reused in between is kept", async () => {
  let now = 0;
  const sweeper = new IdleSweeper(60_000, () => now);
  let connections = 0;
  const server = http.createServer((_req, res) => res.end("ok"));
  server.keepAliveTimeout = 60_000;
  server.on("connection", () => connections++);
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  const port = (server.address() as AddressInfo).port;
  const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
  const get = async (): Promise<void> => {
    const req = http.get({ host: "127.0.0.1", port, agent, path: "/" });
    const [res] = (await once(req, "response")) as [http.IncomingMessage];
    res.resume();
    await once(res, "end");
    // The agent frees the socket on the next tick after the response ends.
    await new Promise((r) => setImmediate(r));
  };
  const freeCount = () => Object.values(agent.freeSockets).reduce((n, list) => n + (list?.length ?? 0), 0);
  try {
    sweeper.watchAgent(agent, 1_000);
    await get();
    assert.equal(freeCount(), 1);
    sweeper.sweep(); // first seen free at t=0
    now = 600;
    await get(); // reused: the same socket, new bytes
    assert.equal(connections, 1);
    sweeper.sweep(); // moved since last seen: idle from t=600
    now = 1_400;
    sweeper.sweep();
    assert.equal(freeCount(), 1, "800 ms since its last use: still pooled");
    now = 1_700;
    sweeper.sweep();
    await new Promise((r) => setImmediate(r));
    assert.equal(freeCount(), 0, "1100 ms idle: closed and dropped from the pool");
    await get();
    assert.equal(connections, 2, "the next request opens a fresh connection");
  } finally {
    sweeper.unwatchAgent(agent);
    agent.destroy();
    server.close();
  }
});

test("a deadline expires once, on the first sweep at or after it; an unwatched one never does", () => {
  let now = 1_000;
  const sweeper = new IdleSweeper(60_000, () => now);
  const expired: string[] = [];
  const watch = (name: string, deadline: number): DeadlineWatch => ({
    deadline,
    deadlineExpired: () => expired.push(name),
  });
  const a = watch("a", 1_500);
  const b = watch("b", 1_500);
  sweeper.watchDeadline(a);
  sweeper.watchDeadline(b);
  assert.equal(sweeper.watching, 2);
  sweeper.unwatchDeadline(b); // settled before its deadline (the response came)
  now = 1_499;
  sweeper.sweep();
  assert.deepEqual(expired, []);
  now = 1_500;
  sweeper.sweep();
  assert.deepEqual(expired, ["a"]);
  now = 5_000;
  sweeper.sweep();
  assert.deepEqual(expired, ["a"], "once only");
  assert.equal(sweeper.watching, 0);
});
