// A small HTTP client for tests: node:http with no pooling surprises, full control over headers and timing.
import http, { type IncomingHttpHeaders, type OutgoingHttpHeaders } from "node:http";
import { Readable } from "node:stream";

export interface Reply {
  status: number;
  headers: IncomingHttpHeaders;
  body: Buffer;
  text: string;
  json<T = Record<string, unknown>>(): T;
}

export interface RequestOptions {
  method?: string;
  headers?: OutgoingHttpHeaders;
  body?: string | Buffer | Readable;
  agent?: http.Agent | false;
  timeoutMs?: number;
}

export function request(url: string, opts: RequestOptions = {}): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const req = http.request(url, {
      method: opts.method ?? "GET",
      headers: opts.headers,
      agent: opts.agent ?? false,
    });
    const timer = setTimeout(
      () => req.destroy(new Error(`test request timed out: ${url}`)),
      opts.timeoutMs ?? 10_000,
    );
    req.on("response", (res) => {
      const chunks: Buffer[] = [];
      res.on("data", (c: Buffer) => chunks.push(c));
      res.on("error", (err) => {
        clearTimeout(timer);
        reject(err);
      });
      res.on("end", () => {
        clearTimeout(timer);
        const body = Buffer.concat(chunks);
        const text = body.toString("utf8");
        resolve({
          status: res.statusCode ?? 0,
          headers: res.headers,
          body,
          text,
          json: <T>() => JSON.parse(text) as T,
        });
      });
    });
    req.on("error", (err) => {
      clearTimeout(timer);
      reject(err);
    });
    if (opts.body instanceof Readable) opts.body.pipe(req);
    else req.end(opts.body);
  });
}

/** Reads an event stream, recording when each `\n\n`-terminated frame arrived (ms since the request). */
export function readFrames(
  url: string,
  opts: RequestOptions = {},
): Promise<{ status: number; headers: IncomingHttpHeaders; frames: Array<{ at: number; data: string }> }> {
  return new Promise((resolve, reject) => {
    const started = performance.now();
    const req = http.request(url, { method: opts.method ?? "GET", headers: opts.headers, agent: false });
    const timer = setTimeout(() => req.destroy(new Error("readFrames timed out")), opts.timeoutMs ?? 10_000);
    req.on("response", (res) => {
      const frames: Array<{ at: number; data: string }> = [];
      let buf = "";
      res.setEncoding("utf8");
      res.on("data", (chunk: string) => {
        buf += chunk;
        let i = buf.indexOf("\n\n");
        while (i !== -1) {
          frames.push({ at: performance.now() - started, data: buf.slice(0, i) });
          buf = buf.slice(i + 2);
          i = buf.indexOf("\n\n");
        }
      });
      res.on("end", () => {
        clearTimeout(timer);
        resolve({ status: res.statusCode ?? 0, headers: res.headers, frames });
      });
      res.on("error", (err) => {
        clearTimeout(timer);
        reject(err);
      });
    });
    req.on("error", (err) => {
      clearTimeout(timer);
      reject(err);
    });
    req.end(opts.body as string | Buffer | undefined);
  });
}

/** A readable of `total` bytes produced in `chunk`-sized pieces, never held in memory at once. */
export function generated(total: number, chunk = 64 * 1024): Readable {
  let sent = 0;
  const piece = Buffer.alloc(chunk, 0x61);
  return new Readable({
    read() {
      if (sent >= total) return void this.push(null);
      const n = Math.min(chunk, total - sent);
      sent += n;
      this.push(n === chunk ? piece : piece.subarray(0, n));
    },
  });
}

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));
