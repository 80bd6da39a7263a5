// The admin listener: health, readiness and metrics on a port of its own (loopback by default).
// Endpoints other than the probes and /metrics require the admin token (constant-time compare).
import { createHash, timingSafeEqual } from "node:crypto";
import http, { type IncomingMessage, type ServerResponse } from "node:http";
import type { Registry } from "prom-client";
import { ERRORS, type ErrorCode, errorBody } from "../errors.js";

export type AdminHandler = (req: IncomingMessage, res: ServerResponse) => void | Promise<void>;

export interface AdminOptions {
  token: string | undefined;
  /** A registry, or anything that renders one (the cluster primary's aggregate over its workers). */
  registry: Pick<Registry, "metrics" | "contentType">;
  ready(): boolean;
  /** Extra token-protected endpoints, by "METHOD /path" (later issues: purge, reload, stats). */
  routes?: Record<string, AdminHandler>;
}

function sendJson(res: ServerResponse, status: number, body: unknown): void {
  const buf = Buffer.from(JSON.stringify(body));
  res.writeHead(status, { "content-type": "application/json; charset=utf-8", "content-length": buf.length });
  res.end(buf);
}

function sendError(res: ServerResponse, code: ErrorCode): void {
  const buf = errorBody(code, ERRORS[code].message);
  res.writeHead(ERRORS[code].status, {
    "content-type": "application/json; charset=utf-8",
    "content-length": buf.length,
  });
  res.end(buf);
}

const digest = (s: string) => createHash("sha256").update(s).digest();

/** Compares hashes so neither the length nor the content of the token leaks through timing. */
export function tokenMatches(header: string | undefined, token: string): boolean {
  const m = /^Bearer\s+(.+)$/i.exec(header ?? "");
  return m !== null && timingSafeEqual(digest((m[1] as string).trim()), digest(token));
}

export function createAdminServer(opts: AdminOptions): http.Server {
  return http.createServer((req, res) => {
    const path = (req.url ?? "/").split("?")[0];
    const key = `${req.method} ${path}`;
    if (key === "GET /healthz") return sendJson(res, 200, { status: "ok" });
    if (key === "GET /readyz") {
      return opts.ready()
        ? sendJson(res, 200, { status: "ready" })
        : sendJson(res, 503, { status: "draining" });
    }
    if (key === "GET /metrics") {
      opts.registry.metrics().then(
        (text) => {
          res.writeHead(200, { "content-type": opts.registry.contentType });
          res.end(text);
        },
        () => sendError(res, "internal_error"),
      );
      return;
    }
    const handler = opts.routes?.[key];
    if (!handler) return sendError(res, "not_found");
    if (!opts.token || !tokenMatches(req.headers.authorization, opts.token))
      return sendError(res, "unauthorized");
    Promise.resolve(handler(req, res)).catch(() => {
      if (!res.headersSent) sendError(res, "internal_error");
      else res.destroy();
    });
  });
}
