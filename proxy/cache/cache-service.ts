// Builds the cache from config: memory tier, optional Redis (tier, pub/sub bus, coalescing leases, purge fan-out),
// the writer and the background refresher. Redis trouble is counted and logged at most once per interval.
import { randomUUID } from "node:crypto";
import type { Cluster, Redis } from "ioredis";
import type { Logger } from "pino";
import type { Config } from "../../config/schema.js";
import type { ProxyEvents } from "../observability/events.js";
import type { TrustedProxies } from "../upstream/forwarded.js";
import type { Forwarder } from "../upstream/forwarder.js";
import { RedisBus } from "./bus.js";
import { Invalidator } from "./invalidation.js";
import { MemoryTier } from "./memory-tier.js";
import { createRedisClient } from "./redis-client.js";
import { RedisTier } from "./redis-tier.js";
import { BackgroundRefresher } from "./refresh.js";
import { SingleFlight } from "./single-flight.js";
import { TieredCache } from "./tiered-cache.js";
import { CacheWriter } from "./writer.js";

const ERROR_LOG_INTERVAL_MS = 10_000;

export interface CacheService {
  readonly instanceId: string;
  readonly cache: TieredCache;
  readonly memory: MemoryTier;
  readonly redis: Redis | Cluster | undefined;
  readonly flights: SingleFlight;
  readonly invalidator: Invalidator;
  readonly writer: CacheWriter;
  readonly refresher: BackgroundRefresher;
  close(): Promise<void>;
}

export function createCacheService(
  config: Config,
  deps: { logger: Logger; events: ProxyEvents; forwarder: Forwarder; trust: TrustedProxies },
): CacheService {
  const { logger, events } = deps;
  const instanceId = randomUUID();
  const lastLogged = new Map<string, number>();
  const redisError = (op: string, err: unknown) => {
    events.emit("redis:error", { op });
    const now = Date.now();
    if (now - (lastLogged.get(op) ?? 0) >= ERROR_LOG_INTERVAL_MS) {
      lastLogged.set(op, now);
      logger.warn(
        { op, err: (err as Error)?.message ?? String(err) },
        "redis error (treated as a miss; logged once per 10 s per operation)",
      );
    }
  };

  const memory = new MemoryTier(config.cache.memory);
  const client = createRedisClient(config.redis, (err) => redisError("connection", err));
  const keyPrefix = config.redis.keyPrefix;
  const redisTier = client
    ? new RedisTier(client, { keyPrefix, onError: (_tier, op, err) => redisError(op, err) })
    : undefined;
  const bus = client
    ? new RedisBus(client, {
        keyPrefix,
        instanceId,
        onError: redisError,
        // Purges broadcast while we were cut off never reached this memory tier: drop it rather than serve them.
        onReconnect: () => {
          void memory.clear().then((n) => {
            if (n > 0)
              logger.warn(
                { dropped: n },
                "redis pub/sub reconnected: memory tier cleared (purges may have been missed)",
              );
          });
        },
      })
    : undefined;
  const cache = new TieredCache(memory, redisTier);
  const flights = new SingleFlight({
    redis: client,
    bus,
    keyPrefix,
    instanceId,
    leaseMs: config.cache.coalesceTimeout,
    passMs: config.cache.hitForMiss,
    onError: redisError,
  });
  const invalidator = new Invalidator({ memory, redis: redisTier, bus, instanceId, onError: redisError });
  const writer = new CacheWriter(cache, {
    jitter: config.cache.jitter,
    tagHeaders: config.cache.tagHeaders.map((h) => h.toLowerCase()),
    onError: (err) => redisError("store", err),
  });
  const refresher = new BackgroundRefresher({
    flights,
    forwarder: deps.forwarder,
    writer,
    cache,
    trust: deps.trust,
    logger,
    onRefresh: (outcome) => events.emit("cache:refresh", { outcome }),
  });

  return {
    instanceId,
    cache,
    memory,
    redis: client,
    flights,
    invalidator,
    writer,
    refresher,
    async close() {
      flights.close();
      await bus?.close();
      await cache.close();
    },
  };
}
