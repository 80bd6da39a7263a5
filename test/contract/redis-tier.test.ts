// The shared tier contract against a private real redis-server (one for the file, a fresh key prefix per test).
import { once } from "node:events";
import { after, before } from "node:test";
import { createRedisClient } from "../../proxy/cache/redis-client.js";
import { RedisTier } from "../../proxy/cache/redis-tier.js";
import { startRedis, type TestRedis } from "../helpers/redis.js";
import { tierContract } from "./tier.contract.js";

let redis: TestRedis;
let n = 0;

before(async () => {
  redis = await startRedis();
});
after(async () => {
  await redis.stop();
});

tierContract("redis", async () => {
  const keyPrefix = `contract${++n}:`;
  const errors: unknown[] = [];
  const client = createRedisClient(
    { url: redis.url, keyPrefix, commandTimeout: 1_000, connectTimeout: 2_000 },
    (err) => errors.push(err),
  );
  if (!client) throw new Error("expected a client for a redis url");
  // enableOfflineQueue is off: commands sent before "ready" fail at once.
  if (client.status !== "ready") await once(client, "ready");
  const tier = new RedisTier(client, { keyPrefix, onError: (_tier, op, err) => errors.push({ op, err }) });
  return {
    tier,
    cleanup: async () => {
      await tier.close();
      if (errors.length > 0) throw new Error(`unexpected Redis errors: ${JSON.stringify(errors)}`);
    },
  };
});
