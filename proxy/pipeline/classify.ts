// Stage 3, classify: is this request a cache candidate (method, route rules, bypass header), and under which key?
// Opted-in POSTs are read (bounded) so their canonical JSON body becomes part of the key.
import type { IncomingMessage } from "node:http";
import { BodyKeyError, bodyHash, primaryKey, sha256, sortQuery } from "../cache/key.js";
import type { CacheState, RequestContext } from "../context.js";
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

export function createClassifyStage(): RequestStage {
  return {
    name: "classify",
    run(ctx: RequestContext): Verdict | Promise<Verdict> {
      const route = ctx.route;
      if (!route) return CONTINUE;
      const rules = route.config.cache;
      const method = ctx.method;
      if (!rules.enabled || ctx.req.headers[rules.bypassHeader] !== undefined) return CONTINUE; // X-Cache: BYPASS
      const allowed =
        method === "HEAD" ? rules.methods.includes("GET") : rules.methods.includes(method as "GET");
      if (!allowed) return CONTINUE; // not a cache candidate (unsafe methods still invalidate, in store)
      if (method === "POST") return classifyPost(ctx);
      ctx.cache = state(ctx, "");
      return CONTINUE;
    },
  };
}

async function classifyPost(ctx: RequestContext): Promise<Verdict> {
  const rules = (ctx.route as NonNullable<RequestContext["route"]>).config.cache;
  const { body, read } = await readBounded(ctx.req, rules.body.maxBytes);
  if (!body) {
    // Too large to key: pass it through uncached, streaming the rest (the part read is replayed first).
    ctx.upstreamBodyPrefix = read;
    return CONTINUE;
  }
  ctx.upstreamBody = body;
  let hash: string;
  try {
    hash = bodyHash(body, rules.body.include, rules.body.exclude);
  } catch (err) {
    if (err instanceof BodyKeyError) return CONTINUE; // not JSON: pass through uncached, never rejected
    throw err;
  }
  const s = state(ctx, hash);
  s.body = body;
  ctx.cache = s;
  return CONTINUE;
}

function state(ctx: RequestContext, body: string): CacheState {
  const route = ctx.route as NonNullable<RequestContext["route"]>;
  const rules = route.config.cache;
  const headers = ctx.req.headers;
  const tenantHeader = rules.tenantHeader ?? "authorization";
  const tenantValue = rules.shared ? undefined : headers[tenantHeader];
  const tenant =
    tenantValue === undefined ? "" : sha256(Array.isArray(tenantValue) ? tenantValue.join(",") : tenantValue);
  const host = headers.host ?? "";
  const target = rules.sortQuery ? sortQuery(ctx.url) : ctx.url;
  const key = primaryKey({
    method: ctx.method === "POST" ? "POST" : "GET",
    upstream: route.upstream.name,
    host,
    target,
    tenant,
    body,
  });
  const reqNoStore = /(^|,)\s*no-store\s*(,|$)/i.test(String(headers["cache-control"] ?? ""));
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
  };
}

export function isUnsafe(method: string): boolean {
  return UNSAFE.has(method);
}
