// Self-test of test/helpers/redis.ts: the private redis-server starts, answers, survives a crash, stops.
import assert from "node:assert/strict";
import { test } from "node:test";
import { redisPing, startRedis } from "../helpers/redis.js";

test("a private redis-server answers PING, comes back on the same port after SIGKILL, and stops", async () => {
  const redis = await startRedis();
  try {
    assert.equal(redis.url, `redis://127.0.0.1:${redis.port}`);
    assert.equal(await redisPing(redis.port), "+PONG");

    redis.kill();
    await assert.rejects(async () => {
      // SIGKILL is asynchronous: poll (bounded) until the port stops answering.
      const deadline = Date.now() + 2_000;
      while (Date.now() < deadline) {
        await redisPing(redis.port, 200);
        await new Promise((resolve) => setTimeout(resolve, 20));
      }
    }, /ECONNREFUSED|closed before a PING reply|ECONNRESET/);

    await redis.restart();
    assert.equal(await redisPing(redis.port), "+PONG");
  } finally {
    await redis.stop();
  }
  await assert.rejects(redisPing(redis.port, 500), /ECONNREFUSED/);
});
