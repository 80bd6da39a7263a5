// The one strict schema for cachegate's configuration. Checked once at boot (config/load.ts), then frozen.
// Unknown keys are errors everywhere: a typo must never silently fall back to a default.
import { isIP } from "node:net";
import { z } from "zod";

const DURATION_RE = /^(\d+(?:\.\d+)?)\s*(ms|s|m|h)$/;
const DURATION_UNIT_MS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 };

/** A duration: a number of milliseconds, or a string such as "250ms", "30s", "5m", "1h". */
export const duration = z.union([z.number(), z.string()]).transform((v, ctx) => {
  if (typeof v === "number") {
    if (Number.isInteger(v) && v >= 0) return v;
    ctx.addIssue({ code: "custom", message: `expected a non-negative integer of milliseconds, got ${v}` });
    return z.NEVER;
  }
  const m = DURATION_RE.exec(v.trim());
  if (!m) {
    ctx.addIssue({
      code: "custom",
      message: `expected a duration such as "500ms", "30s", "5m" or "1h", got "${v}"`,
    });
    return z.NEVER;
  }
  return Math.round(Number(m[1]) * (DURATION_UNIT_MS[m[2] as string] as number));
});

const SIZE_RE = /^(\d+(?:\.\d+)?)\s*(B|KiB|MiB|GiB|KB|MB|GB)$/i;
const SIZE_UNIT: Record<string, number> = {
  b: 1,
  kib: 1024,
  mib: 1024 ** 2,
  gib: 1024 ** 3,
  kb: 1000,
  mb: 1000 ** 2,
  gb: 1000 ** 3,
};

/** A size in bytes: a number, or a string such as "512KiB", "5MiB". */
export const byteSize = z.union([z.number(), z.string()]).transform((v, ctx) => {
  if (typeof v === "number") {
    if (Number.isInteger(v) && v >= 0) return v;
    ctx.addIssue({ code: "custom", message: `expected a non-negative integer of bytes, got ${v}` });
    return z.NEVER;
  }
  const m = SIZE_RE.exec(v.trim());
  if (!m) {
    ctx.addIssue({ code: "custom", message: `expected a size such as "512KiB" or "5MiB", got "${v}"` });
    return z.NEVER;
  }
  return Math.round(Number(m[1]) * (SIZE_UNIT[(m[2] as string).toLowerCase()] as number));
});

const port = z.number().int().min(0).max(65535);
// Names end up as Prometheus label values and in logs: keep them short and plain.
const name = z
  .string()
  .regex(/^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$/, "expected 1-63 letters, digits, '_', '.' or '-'");

export const HTTP_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"] as const;

const addressOrCidr = z.string().refine((v) => {
  const [addr, bits, extra] = v.split("/");
  if (extra !== undefined || !addr) return false;
  const family = isIP(addr);
  if (family === 0) return false;
  if (bits === undefined) return true;
  const n = Number(bits);
  return Number.isInteger(n) && n >= 0 && n <= (family === 4 ? 32 : 128);
}, "expected an IP address or CIDR such as 10.0.0.0/8 or ::1");

const upstreamUrl = z.string().refine((v) => {
  try {
    const u = new URL(v);
    return (u.protocol === "http:" || u.protocol === "https:") && !u.search && !u.hash && !u.username;
  } catch {
    return false;
  }
}, "expected an absolute http:// or https:// URL without query, fragment or credentials");

const upstreamSchema = z.strictObject({
  name,
  url: upstreamUrl,
  /** Send the client's Host header upstream (true) or the upstream's own host (false, like nginx's default). */
  preserveHost: z.boolean().default(false),
  timeouts: z
    .strictObject({
      connect: duration.default(5_000), // 5 s to open a TCP (and TLS) connection
      response: duration.default(300_000), // 5 min until the response headers arrive
      idle: duration.default(300_000), // 5 min without a byte on the upstream socket
      streamIdle: duration.default(0), // event streams: no idle limit (Dify pings every 10 s, runs last 20 min)
    })
    .prefault({}),
  pool: z
    .strictObject({
      maxSockets: z.number().int().min(1).max(65_536).default(256),
      // As many as maxSockets' default: node destroys a freed socket once this many are idle, so a limit below the
      // concurrency in use makes every burst reconnect (28 % of requests at 200 concurrent with 64). Idle sockets
      // still close after freeSocketTimeout.
      maxFreeSockets: z.number().int().min(0).max(65_536).default(256),
      keepAlive: duration.default(30_000), // 30 s: TCP keep-alive probe delay for idle pooled sockets
      freeSocketTimeout: duration.default(4_000), // 4 s: close a pooled socket idle this long (below common upstream keep-alive of 5 s)
    })
    .prefault({}),
  /** Circuit breaker (opossum): fail fast while the upstream is sick, recover by itself. */
  breaker: z
    .strictObject({
      enabled: z.boolean().default(true),
      errorThresholdPercentage: z.number().min(1).max(100).default(50), // open above this share of failures
      volumeThreshold: z.number().int().min(1).default(10), // …and only after this many calls in the window
      rollingWindow: duration.default(10_000), // 10 s statistics window
      rollingBuckets: z.number().int().min(1).max(100).default(10),
      resetTimeout: duration.default(30_000), // 30 s open before a half-open probe
    })
    .prefault({}),
  /** Upstream concurrency limit on the miss path (bottleneck), adapted to upstream latency. */
  concurrency: z
    .strictObject({
      enabled: z.boolean().default(true),
      adaptive: z.boolean().default(true),
      initial: z.number().int().min(1).default(32),
      min: z.number().int().min(1).default(2),
      max: z.number().int().min(1).default(256),
      maxQueue: z.number().int().min(0).default(1_000), // waiting requests beyond this → 503 upstream_overloaded
      maxWait: duration.default(5_000), // 5 s in the queue at most → 503 upstream_overloaded
      /** Latency above baseline × tolerance lowers the limit (gradient, as Netflix Gradient2 / Envoy). */
      latencyTolerance: z.number().min(1).max(10).default(2),
      /**
       * Share the limit among instances through Redis (bottleneck clustering). Off by default: measured slower and
       * more fragile than local limits (README, "Resilience"); without Redis, or while it is down, limits are local.
       */
      shared: z.boolean().default(false),
    })
    .prefault({})
    .superRefine((c, ctx) => {
      if (c.min > c.max) ctx.addIssue({ code: "custom", path: ["min"], message: "must not exceed max" });
      if (c.initial < c.min || c.initial > c.max) {
        ctx.addIssue({ code: "custom", path: ["initial"], message: "must lie between min and max" });
      }
      // Waiting on other instances' slots must end somewhere (maxWait 0 means "no queue" only locally).
      if (c.shared && c.maxWait === 0) {
        ctx.addIssue({ code: "custom", path: ["maxWait"], message: "must be above 0 with shared: true" });
      }
    }),
});

/** Per-client rate limits; the top-level `limits` applies to every route without its own `limits`. */
export const limitsSchema = z
  .strictObject({
    enabled: z.boolean().default(false),
    /** Who a client is: a hash of Authorization (falling back to the IP), a header's hash, or the client IP. */
    clientId: z.enum(["auth", "header", "ip"]).default("auth"),
    clientHeader: z
      .string()
      .regex(/^[A-Za-z0-9!#$%&'*+.^_`|~-]+$/, "expected an HTTP header name")
      .transform((v) => v.toLowerCase())
      .optional(),
    requests: z.number().int().min(1).default(100), // sustained: this many requests…
    per: duration.default(1_000), // …per this window
    burst: z.number().int().min(0).default(0), // extra requests a client may spend in a spike
    concurrent: z.number().int().min(0).default(0), // in-flight requests per client, 0 = unlimited
    dryRun: z.boolean().default(false), // count and log, never refuse
  })
  .superRefine((l, ctx) => {
    if (l.per === 0) ctx.addIssue({ code: "custom", path: ["per"], message: "must be above 0" });
    if (l.clientId === "header" && !l.clientHeader) {
      ctx.addIssue({ code: "custom", path: ["clientHeader"], message: 'required when clientId is "header"' });
    }
  });

const headerName = z
  .string()
  .regex(/^[A-Za-z0-9!#$%&'*+.^_`|~-]+$/, "expected an HTTP header name")
  .transform((v) => v.toLowerCase());

/** A field path into a JSON body: "inputs.timestamp" (dot-separated object keys). */
const fieldPath = z
  .string()
  .regex(/^[^.]+(\.[^.]+)*$/, 'expected a dot-separated field path such as "inputs.timestamp"');

export const CACHEABLE_METHODS = ["GET", "HEAD", "POST"] as const;

const routeCacheSchema = z
  .strictObject({
    enabled: z.boolean().default(true),
    /**
     * "http": the upstream's Cache-Control/Expires decide (RFC 9111); `ttl` only fills in for responses that carry
     * no freshness information. "override": `ttl` decides for the statuses listed, whatever the upstream says
     * (no-store and private are still obeyed).
     */
    mode: z.enum(["http", "override"]).default("http"),
    ttl: duration.default(0), // 0: only what the upstream's headers allow
    staleWhileRevalidate: duration.default(0), // serve stale this long while one background refresh runs
    staleIfError: duration.default(0), // serve stale this long when the upstream fails (5xx, timeout, refused)
    methods: z.array(z.enum(CACHEABLE_METHODS)).min(1).default(["GET", "HEAD"]),
    /** Statuses `ttl` applies to (forced or filled-in freshness). Upstream-declared freshness follows RFC 9111. */
    statuses: z.array(z.number().int().min(200).max(599)).min(1).default([200]),
    maxEntryBytes: byteSize.default(5 * 1024 * 1024), // 5 MiB: larger responses pass through unstored
    /** A request carrying this header (any value) skips the cache entirely. */
    bypassHeader: headerName.default("x-cachegate-bypass"),
    /**
     * Whose entries are whose. Default: the key carries a hash of Authorization, and responses to requests with
     * Authorization are stored only when the response allows it (public, s-maxage, must-revalidate; RFC 9111 §3.5).
     * `tenantHeader`: key on a hash of this header instead, and store authorized responses (they stay per tenant).
     * `shared: true`: one entry for everyone — only for responses that are truly public.
     */
    tenantHeader: headerName.optional(),
    shared: z.boolean().default(false),
    /** Store responses that set cookies (they are then replayed to every client of the same key). */
    allowSetCookie: z.boolean().default(false),
    /** Sort query parameters in the key, so ?a=1&b=2 and ?b=2&a=1 share an entry. */
    sortQuery: z.boolean().default(true),
    /** POST caching: the canonical JSON body (keys sorted, whitespace dropped) is part of the key. */
    body: z
      .strictObject({
        maxBytes: byteSize.default(1024 * 1024), // 1 MiB: larger bodies pass through uncached
        include: z.array(fieldPath).default([]), // when set, only these fields are keyed
        exclude: z.array(fieldPath).default([]), // fields that never matter (timestamps, trace ids)
      })
      .prefault({}),
    /** Purge tags added to every entry stored by this route. */
    tags: z.array(z.string().min(1)).default([]),
  })
  .prefault({})
  .superRefine((c, ctx) => {
    if (c.shared && c.tenantHeader) {
      ctx.addIssue({
        code: "custom",
        path: ["shared"],
        message: "shared: true and tenantHeader exclude each other",
      });
    }
    if (c.mode === "override" && c.ttl === 0) {
      ctx.addIssue({ code: "custom", path: ["ttl"], message: 'mode "override" needs a ttl above 0' });
    }
  });

const routeSchema = z.strictObject({
  name,
  cache: routeCacheSchema,
  limits: limitsSchema.optional(),
  match: z
    .strictObject({
      pathPrefix: z.string().regex(/^\//, "expected a path starting with '/'").default("/"),
      methods: z.array(z.enum(HTTP_METHODS)).min(1).optional(),
    })
    .prefault({}),
  upstream: name,
});

const redisUrl = z.string().refine((v) => {
  try {
    const u = new URL(v);
    return u.protocol === "redis:" || u.protocol === "rediss:";
  } catch {
    return false;
  }
}, "expected a redis:// or rediss:// URL");

const redisSchema = z
  .strictObject({
    /** Standalone server (or the password/db/TLS template for sentinel and cluster modes). */
    url: redisUrl.optional(),
    /** Sentinel mode: the sentinels and the monitored master's name. */
    sentinels: z
      .array(z.strictObject({ host: z.string().min(1), port: port }))
      .min(1)
      .optional(),
    sentinelName: z.string().min(1).optional(),
    /** Cluster mode: seed nodes. */
    cluster: z.array(redisUrl).min(1).optional(),
    keyPrefix: z.string().default("cachegate:"),
    commandTimeout: duration.default(100), // 100 ms: a slow Redis is a miss, never a slow request
    connectTimeout: duration.default(2_000), // 2 s
  })
  .prefault({})
  .superRefine((r, ctx) => {
    const modes = [r.sentinels ? "sentinels" : "", r.cluster ? "cluster" : ""].filter(Boolean);
    if (modes.length > 1)
      ctx.addIssue({ code: "custom", message: "set either sentinels or cluster, not both" });
    if (r.sentinels && !r.sentinelName) {
      ctx.addIssue({ code: "custom", path: ["sentinelName"], message: "required with sentinels" });
    }
  });

const cacheGlobalSchema = z
  .strictObject({
    memory: z
      .strictObject({
        maxBytes: byteSize.default(256 * 1024 * 1024), // 256 MiB for bodies and headers in this process
        maxEntries: z.number().int().min(1).default(100_000),
        maxEntryBytes: byteSize.default(5 * 1024 * 1024), // 5 MiB: larger responses stay in Redis only
      })
      .prefault({}),
    /** ± fraction applied at random to every freshness lifetime, so entries stored together expire apart. */
    jitter: z.number().min(0).max(0.5).default(0.1),
    /** Response headers whose comma/space-separated values become purge tags. */
    tagHeaders: z.array(z.string().min(1)).default(["cache-tag", "surrogate-key"]),
    /** How long a coalesced follower waits for the leader's response before going upstream itself. */
    coalesceTimeout: duration.default(10_000), // 10 s
    /** Hit-for-miss: after a key's response is uncacheable (and requests waited for it), its misses skip coalescing
     * for this long (0: never). */
    hitForMiss: duration.default(120_000), // 2 min, as Varnish
    /** Probabilistic early refresh (XFetch): beta > 0 refreshes hot entries shortly before they expire. */
    earlyRefreshBeta: z.number().min(0).max(10).default(0),
  })
  .prefault({});

/** A plugin: a built-in name or a file path, or { name | path, config } with the plugin's own config section. */
const pluginSpec = z.union([
  z.string().min(1),
  z
    .strictObject({
      name: z.string().min(1).optional(),
      path: z.string().min(1).optional(),
      config: z.record(z.string(), z.unknown()).default({}),
    })
    .refine((p) => (p.name === undefined) !== (p.path === undefined), "give exactly one of name and path"),
]);

const logLevel = z.enum(["fatal", "error", "warn", "info", "debug", "trace", "silent"]);

export const configSchema = z
  .strictObject({
    listen: z
      .strictObject({ host: z.string().min(1).default("0.0.0.0"), port: port.default(8080) })
      .prefault({}),
    admin: z
      .strictObject({
        enabled: z.boolean().default(true),
        host: z.string().min(1).default("127.0.0.1"),
        port: port.default(9091),
        token: z.string().min(16, "expected at least 16 characters").optional(),
      })
      .prefault({}),
    /** Peers whose X-Forwarded-* headers are believed (your Nginx). Everyone else's are replaced. */
    trustProxy: z.array(addressOrCidr).default(["127.0.0.1", "::1"]),
    server: z
      .strictObject({
        requestTimeout: duration.default(300_000), // 5 min to receive a whole request (Node's default)
        headersTimeout: duration.default(60_000), // 60 s to receive request headers
        keepAliveTimeout: duration.default(75_000), // 75 s: longer than nginx's upstream keepalive_timeout (60 s)
        shutdownTimeout: duration.default(30_000), // 30 s for in-flight requests after SIGTERM
        maxHeaderSize: byteSize.default(16 * 1024), // 16 KiB of request headers
      })
      .prefault({}),
    log: z.strictObject({ level: logLevel.default("info") }).prefault({}),
    /** Worker processes behind the one proxy port (node:cluster); "auto" = one per CPU core. */
    workers: z.union([z.number().int().min(1).max(256), z.literal("auto")]).default(1),
    redis: redisSchema,
    limits: limitsSchema.prefault({}),
    cache: cacheGlobalSchema,
    plugins: z.array(pluginSpec).default([]),
    upstreams: z.array(upstreamSchema).min(1, "expected at least one upstream (or pass --upstream URL)"),
    routes: z.array(routeSchema).min(1, "expected at least one route"),
  })
  .superRefine((cfg, ctx) => {
    const known = new Set<string>();
    cfg.upstreams.forEach((u, i) => {
      if (known.has(u.name)) {
        ctx.addIssue({
          code: "custom",
          path: ["upstreams", i, "name"],
          message: `duplicate upstream "${u.name}"`,
        });
      }
      known.add(u.name);
    });
    const knownList = [...known].join(", ");
    const routeNames = new Set<string>();
    cfg.routes.forEach((r, i) => {
      if (routeNames.has(r.name)) {
        ctx.addIssue({ code: "custom", path: ["routes", i, "name"], message: `duplicate route "${r.name}"` });
      }
      routeNames.add(r.name);
      if (!known.has(r.upstream)) {
        ctx.addIssue({
          code: "custom",
          path: ["routes", i, "upstream"],
          message: `unknown upstream "${r.upstream}" (known: ${knownList})`,
        });
      }
    });
    if (cfg.admin.enabled && cfg.admin.port !== 0 && cfg.admin.port === cfg.listen.port) {
      ctx.addIssue({ code: "custom", path: ["admin", "port"], message: "must differ from listen.port" });
    }
  });

export type ConfigInput = z.input<typeof configSchema>;
export type Config = z.output<typeof configSchema>;
export type UpstreamConfig = Config["upstreams"][number];
export type RouteConfig = Config["routes"][number];
export type RouteCacheConfig = RouteConfig["cache"];
export type LimitsConfig = z.output<typeof limitsSchema>;
export type LogLevel = z.output<typeof logLevel>;
