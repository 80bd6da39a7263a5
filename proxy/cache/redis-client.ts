// One ioredis client (standalone, Sentinel or Cluster) with settings under which a dead or hung Redis is a fast
// miss: ioredis' defaults held a GET for 73 s on a dead server (../shared/LIBRARIES.md §5).
import { Cluster, type ClusterOptions, Redis, type RedisOptions } from "ioredis";
import type { Config } from "../../config/schema.js";

export type RedisClient = Redis | Cluster;
type RedisConfig = Config["redis"];

const RECONNECT_STEP_MS = 200;
const RECONNECT_MAX_MS = 2_000; // 2 s: reconnects go on forever, at most this far apart
const RECONNECT_JITTER_MS = 100; // so a fleet of proxies does not reconnect in lockstep

/** Delay before reconnect attempt `attempt` (1, 2, ...): linear, capped, never giving up. */
export function reconnectDelay(attempt: number): number {
  return (
    Math.min(attempt * RECONNECT_STEP_MS, RECONNECT_MAX_MS) + Math.floor(Math.random() * RECONNECT_JITTER_MS)
  );
}

/** Settings for every connection, whatever the mode. */
function safetyOptions(cfg: RedisConfig) {
  return {
    maxRetriesPerRequest: 1, // a command caught by a disconnect fails after one reconnect attempt
    commandTimeout: cfg.commandTimeout, // a slow Redis is a miss, never a slow request
    connectTimeout: cfg.connectTimeout,
    lazyConnect: false,
    // keyPrefix stays unset: the tier prefixes keys itself, so SCAN MATCH patterns see the real key names.
  } satisfies RedisOptions;
}

/** Username, password, db and TLS from a redis:// or rediss:// URL (the template for Sentinel and Cluster modes). */
export function connectionFromUrl(
  url: string | undefined,
): Pick<RedisOptions, "username" | "password" | "db" | "tls"> {
  if (url === undefined) return {};
  const u = new URL(url);
  const out: Pick<RedisOptions, "username" | "password" | "db" | "tls"> = {};
  if (u.username) out.username = decodeURIComponent(u.username);
  if (u.password) out.password = decodeURIComponent(u.password);
  const db = u.pathname.replace(/^\//, "");
  if (db !== "") out.db = Number(db);
  if (u.protocol === "rediss:") out.tls = {};
  return out;
}

function hostPort(url: string): { host: string; port: number } {
  const u = new URL(url);
  return { host: u.hostname.replace(/^\[|\]$/g, ""), port: u.port === "" ? 6379 : Number(u.port) };
}

/**
 * The client for `cfg`, or undefined when no Redis is configured. Never throws on a down server: it connects in
 * the background, reconnects forever, and hands every connection error to `onError` (ioredis emits "error" on
 * each failed reconnect, and an "error" event with no listener would crash the process).
 */
export function createRedisClient(
  cfg: RedisConfig,
  onError: (err: unknown) => void,
): RedisClient | undefined {
  const safety = safetyOptions(cfg);
  let client: RedisClient;
  if (cfg.cluster !== undefined) {
    const { db: _db, ...credentials } = connectionFromUrl(cfg.url ?? cfg.cluster[0]); // a cluster has only db 0
    const options: ClusterOptions = {
      clusterRetryStrategy: reconnectDelay,
      enableOfflineQueue: false, // while no node is reachable, commands fail at once instead of queueing
      // Bounded redirection retries: a resharding cluster costs a few misses, not seconds per request.
      maxRedirections: 3,
      retryDelayOnFailover: 100,
      retryDelayOnClusterDown: 100,
      retryDelayOnTryAgain: 100,
      slotsRefreshTimeout: cfg.connectTimeout,
      redisOptions: { ...safety, ...credentials },
    };
    const cluster = new Cluster(cfg.cluster.map(hostPort), options);
    cluster.on("node error", (err: unknown) => onError(err));
    client = cluster;
  } else if (cfg.sentinels !== undefined) {
    client = new Redis({
      ...safety,
      ...connectionFromUrl(cfg.url),
      sentinels: cfg.sentinels.map((s) => ({ host: s.host, port: s.port })),
      name: cfg.sentinelName as string, // the schema requires it with sentinels
      enableOfflineQueue: false,
      retryStrategy: reconnectDelay,
    });
  } else if (cfg.url !== undefined) {
    client = new Redis(cfg.url, { ...safety, enableOfflineQueue: false, retryStrategy: reconnectDelay });
  } else {
    return undefined;
  }
  client.on("error", (err: unknown) => onError(err));
  return client;
}
