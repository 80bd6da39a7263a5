// POST /purge on the admin port: {"keys"?, "tags"?, "urls"?, "prefixes"?, "soft"?}. Reaches every instance's
// memory tier through Redis pub/sub and removes Redis entries (see cache/invalidation.ts).
import type { IncomingMessage, ServerResponse } from "node:http";
import type { Logger } from "pino";
import { z } from "zod";
import type { Invalidator } from "../cache/invalidation.js";
import { errorBody } from "../errors.js";
import type { AdminHandler } from "./admin-server.js";

const MAX_BODY = 1024 * 1024; // 1 MiB of purge request

const purgeSchema = z
  .strictObject({
    keys: z.array(z.string().min(1)).max(10_000).optional(),
    tags: z.array(z.string().min(1)).max(10_000).optional(),
    urls: z.array(z.string().min(1)).max(10_000).optional(),
    prefixes: z.array(z.string().min(1)).max(1_000).optional(),
    soft: z.boolean().default(false),
  })
  .refine(
    (p) =>
      (p.keys?.length ?? 0) + (p.tags?.length ?? 0) + (p.urls?.length ?? 0) + (p.prefixes?.length ?? 0) > 0,
    {
      message: "name at least one of keys, tags, urls, prefixes",
    },
  );

function reply(res: ServerResponse, status: number, body: Buffer | string): void {
  res.writeHead(status, {
    "content-type": "application/json; charset=utf-8",
    "content-length": Buffer.byteLength(body),
  });
  res.end(body);
}

async function readJson(req: IncomingMessage): Promise<unknown> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const c of req) {
    size += (c as Buffer).length;
    if (size > MAX_BODY) throw new Error("purge request larger than 1 MiB");
    chunks.push(c as Buffer);
  }
  return JSON.parse(Buffer.concat(chunks).toString("utf8"));
}

export type PurgeRequest = z.output<typeof purgeSchema>;

/** What the purge endpoint drives: this process's invalidator, or (with --workers) a fan-out to every worker. */
export interface Purger {
  purge(request: PurgeRequest): Promise<{ memory: number; redis: number }>;
}

export function createPurgeHandler(invalidator: Purger | Invalidator, logger: Logger): AdminHandler {
  return async (req, res) => {
    let parsed: z.output<typeof purgeSchema>;
    try {
      const r = purgeSchema.safeParse(await readJson(req));
      if (!r.success) {
        const msg = r.error.issues.map((i) => `${i.path.join(".") || "(body)"}: ${i.message}`).join("; ");
        return reply(res, 400, errorBody("invalid_request", msg));
      }
      parsed = r.data;
    } catch (err) {
      return reply(
        res,
        400,
        errorBody("invalid_request", `purge body must be JSON: ${(err as Error).message}`),
      );
    }
    const counts = await invalidator.purge(parsed);
    logger.info({ purge: parsed, purged: counts }, "purge");
    reply(res, 200, JSON.stringify({ purged: counts, soft: parsed.soft }));
  };
}
