// Stage 3, classify: is this request a cache candidate (method, route rules, bypass header), and under which key?
// Opted-in POSTs are read (bounded) so their canonical JSON body becomes part of the key.
import type { IncomingMessage } from "node:http";
import type { RouteCacheConfig } from "../../config/schema.js";
import { BodyKeyError, bodyHash, primaryKey, sha256, sortQuery } from "../cache/key.js";
import type { CacheState, RequestContext } from "../context.js";
import type { PluginHost } from "../plugins.js";
import { CONTINUE, type RequestStage, type Verdict } from "./pipeline.js";

const UNSAFE = new Set(["POST", "PUT", "PATCH", "DELETE"]);

/**
 * Reads at most `limit` bytes. When the body is larger it stops (the stream is paused, not consumed) and returns
 * `undefined` plus the chunks read, which the forwarder replays before piping the rest.
 */
function readBounded(
  req: IncomingMessage,
  limit: number,
): Promise<{ body: Buffer | undefined; read: Buffer[] }> {
  return new Promise((resolve, reject) => {
    const read: Buffer[] = [];
    let size = 0;
    const cleanup = () => {
      req.off("data", onData);
      req.off("end", onEnd);
      req.off("error", onError);
    };
    const onData = (chunk: Buffer) => {
      read.push(chunk);
      size += chunk.length;
      if (size > limit) {
        req.pause();
        cleanup();
        resolve({ body: undefined, read });
      }
    };
    const onEnd = () => {
      cleanup();
      resolve({ body: Buffer.concat(read, size), read });
    };
    const onError = (err: Error) => {
      cleanup();
      reject(err);
    };
    req.on("data", onData);
    req.on("end", onEnd);
    req.on("error", onError);
  });
}

/**
 * The request body, read once and kept for the forwarder: undefined when there is none or it is larger than `max`
 * (then the part read is kept as a prefix and the rest streams on).
 */
export async function requestBody(ctx: RequestContext, max: number): Promise<Buffer | undefined> {
  if (ctx.upstreamBody) return ctx.upstreamBody.length <= max ? ctx.upstreamBody : undefined;
  if (ctx.upstreamBodyPrefix) return undefined;
  const { body, read } = await readBounded(ctx.req, max);
  if (!body) {
    ctx.upstreamBodyPrefix = read;
    return undefined;
  }
  ctx.upstreamBody = body;
  return body;
}

export function createClassifyStage(plugins: PluginHost): RequestStage {
  const withPlugins = plugins.has("classify");
  return {
    name: "classify",
    run(ctx: RequestContext): Verdict | Promise<Verdict> {
      const route = ctx.route;
      if (!route) return CONTINUE;
      const rules = route.config.cache;
      if (!rules.enabled || ctx.req.headers[rules.bypassHeader] !== undefined) return CONTINUE; // X-Cache: BYPASS
      if (withPlugins) return classifyWithPlugins(ctx, plugins);
      return classifyByRoute(ctx);
    },
  };
}

function classifyByRoute(ctx: RequestContext): Verdict | Promise<Verdict> {
  const rules = (ctx.route as NonNullable<RequestContext["route"]>).config.cache;
  const method = ctx.method;
  const allowed = method === "HEAD" ? rules.methods.includes("GET") : rules.methods.includes(method as "GET");
  if (!allowed) return CONTINUE; // not a cache candidate (unsafe methods still invalidate, in store)
  if (method === "POST") return classifyPost(ctx);
  ctx.cache = state(ctx, "", rules);
  return CONTINUE;
}

async function classifyWithPlugins(ctx: RequestContext, plugins: PluginHost): Promise<Verdict> {
  const view = plugins.view(ctx, (max) => requestBody(ctx, max));
  const decision = await plugins.classify(view);
  if (decision === undefined) return classifyByRoute(ctx);
  if (!decision.cache) return CONTINUE; // a plugin said never: forwarded as is (X-Cache: BYPASS)
  const routeRules = (ctx.route as NonNullable<RequestContext["route"]>).config.cache;
  const rules: RouteCacheConfig = { ...routeRules, ...decision.rules, body: routeRules.body };
  const s = state(ctx, sha256(decision.key), rules, decision.target);
  s.tags = decision.tags ?? [];
  s.coalesceTimeoutMs = decision.coalesceTimeoutMs;
  s.kind = decision.kind;
  s.body = ctx.upstreamBody;
  ctx.cache = s;
  return CONTINUE;
}

async function classifyPost(ctx: RequestContext): Promise<Verdict> {
  const rules = (ctx.route as NonNullable<RequestContext["route"]>).config.cache;
  // Too large to key: passed through uncached, streaming the rest (the part read is replayed first).
  const body = await requestBody(ctx, rules.body.maxBytes);
  if (!body) return CONTINUE;
  let hash: string;
  try {
    hash = bodyHash(body, rules.body.include, rules.body.exclude);
  } catch (err) {
    if (err instanceof BodyKeyError) return CONTINUE; // not JSON: pass through uncached, never rejected
    throw err;
  }
  const s = state(ctx, hash, rules);
  s.body = body;
  ctx.cache = s;
  return CONTINUE;
}

function state(ctx: RequestContext, body: string, rules: RouteCacheConfig, keyTarget = ctx.url): CacheState {
  const route = ctx.route as NonNullable<RequestContext["route"]>;
  const headers = ctx.req.headers;
  const tenantHeader = rules.tenantHeader ?? "authorization";
  const tenantValue = rules.shared ? undefined : headers[tenantHeader];
  const tenant =
    tenantValue === undefined ? "" : sha256(Array.isArray(tenantValue) ? tenantValue.join(",") : tenantValue);
  const host = headers.host ?? "";
  const target = rules.sortQuery ? sortQuery(keyTarget) : keyTarget;
  const key = primaryKey({
    method: ctx.method === "POST" ? "POST" : "GET",
    upstream: route.upstream.name,
    host,
    target,
    tenant,
    body,
  });
  const cc = headers["cache-control"];
  const reqNoStore = cc !== undefined && /(^|,)\s*no-store\s*(,|$)/i.test(cc);
  return {
    rules,
    primaryKey: key,
    key,
    vary: undefined,
    url: `${host}${ctx.url}`,
    tenantScoped: rules.shared || rules.tenantHeader !== undefined,
    // HEAD is answered from GET entries but its own (body-less) response is never stored.
    storable: ctx.method !== "HEAD" && !reqNoStore,
    stale: undefined,
    flight: undefined,
    body: undefined,
    tags: [],
    coalesceTimeoutMs: undefined,
    kind: undefined,
  };
}

export function isUnsafe(method: string): boolean {
  return UNSAFE.has(method);
}
