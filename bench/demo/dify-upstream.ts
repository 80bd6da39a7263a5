// A slow Dify-like service API for the demo and the compose stack: no LLM, just Dify's wire format
// (shared/DIFY.md §2) at Dify's pace. Answers are deterministic in the request (the same prompt gets the same
// answer and token counts), IDs are fresh per call, as Dify's are.
//
//   POST /v1/completion-messages, /v1/chat-messages   blocking JSON, or `data: {...}\n\n` SSE frames ending in
//                                                       message_end with metadata.usage (tokens and price)
//   POST /v1/workflows/run                             blocking JSON, or workflow_started/text_chunk/workflow_finished
//   GET  /v1/parameters, /v1/info                      app configuration (fast)
//   GET  /health                                       200 {"status":"ok"} (container healthcheck)
//
// Node built-ins only: the compose stack runs it compiled, in an image without node_modules.
import { createHash, randomUUID } from "node:crypto";
import http, { type IncomingMessage, type ServerResponse } from "node:http";
import type { AddressInfo, Socket } from "node:net";

export interface DifySimOptions {
  /** Time to produce a whole answer (blocking: before the response; streaming: spread over the frames). */
  answerMs: number;
  host?: string;
  port?: number;
}

export interface DifySimStats {
  /** Generations run (each one would have cost tokens on a real Dify). */
  generations: number;
  /** Tokens those generations used. */
  tokens: number;
}

export interface DifySim {
  readonly url: string;
  readonly port: number;
  stats(): DifySimStats;
  close(): Promise<void>;
}

/** Price per 1,000 tokens in USD, about what a small hosted model charges. */
const PRICE_PER_1K_TOKENS = 0.002;
/** Largest request body read; Dify's own limit is far higher, but the simulator needs only prompts. */
const MAX_BODY_BYTES = 1024 * 1024; // 1 MiB
const STREAM_FRAMES = 8;
const WORDS = [
  "cachegate",
  "stores",
  "the",
  "answer",
  "so",
  "a",
  "repeated",
  "question",
  "costs",
  "no",
  "tokens",
  "and",
  "returns",
  "in",
  "milliseconds",
  "instead",
  "of",
  "seconds",
];

export interface Usage {
  prompt_tokens: number;
  completion_tokens: number;
  total_tokens: number;
  total_price: string;
  currency: "USD";
  latency: number;
}

function digest(text: string): Buffer {
  return createHash("sha256").update(text).digest();
}

/** A deterministic answer and token count for a prompt: the same prompt always costs the same. */
export function answerFor(prompt: string): {
  answer: string;
  promptTokens: number;
  completionTokens: number;
} {
  const h = digest(prompt);
  const words = 12 + ((h[0] ?? 0) % 24);
  const out: string[] = [];
  for (let i = 0; i < words; i++) out.push(WORDS[(h[(i % 31) + 1] ?? 0) % WORDS.length] as string);
  const promptTokens = 200 + Math.ceil(prompt.length / 4) + ((h[1] ?? 0) % 400);
  return { answer: out.join(" "), promptTokens, completionTokens: Math.round(words * 1.3) };
}

function usageOf(promptTokens: number, completionTokens: number, latencyS: number): Usage {
  const total = promptTokens + completionTokens;
  return {
    prompt_tokens: promptTokens,
    completion_tokens: completionTokens,
    total_tokens: total,
    total_price: ((total / 1000) * PRICE_PER_1K_TOKENS).toFixed(7),
    currency: "USD",
    latency: latencyS,
  };
}

/** Dify's error envelope (libs/external_api.py). */
function sendError(res: ServerResponse, status: number, code: string, message: string): void {
  sendJson(res, status, { code, message, status });
}

function sendJson(
  res: ServerResponse,
  status: number,
  body: unknown,
  extra: http.OutgoingHttpHeaders = {},
): void {
  const buf = Buffer.from(JSON.stringify(body));
  res.writeHead(status, {
    "content-type": "application/json",
    "content-length": buf.length,
    "x-version": "1.9.0-sim",
    "x-env": "DEMO",
    ...extra,
  });
  res.end(buf);
}

function readJson(req: IncomingMessage): Promise<Record<string, unknown> | undefined> {
  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    let size = 0;
    req.on("data", (c: Buffer) => {
      size += c.length;
      if (size <= MAX_BODY_BYTES) chunks.push(c);
    });
    req.on("error", () => resolve(undefined));
    req.on("end", () => {
      if (size > MAX_BODY_BYTES) return resolve(undefined);
      try {
        const v: unknown = JSON.parse(Buffer.concat(chunks).toString("utf8"));
        resolve(
          typeof v === "object" && v !== null && !Array.isArray(v)
            ? (v as Record<string, unknown>)
            : undefined,
        );
      } catch {
        resolve(undefined);
      }
    });
  });
}

/** Sleeps `ms`, or resolves early (false) when the client goes away. */
function wait(ms: number, res: ServerResponse): Promise<boolean> {
  return new Promise((resolve) => {
    if (res.destroyed) return resolve(false);
    const onClose = () => {
      clearTimeout(timer);
      resolve(false);
    };
    const timer = setTimeout(() => {
      res.off("close", onClose);
      resolve(true);
    }, ms);
    res.once("close", onClose);
  });
}

export async function startDifySim(opts: DifySimOptions): Promise<DifySim> {
  const stats: DifySimStats = { generations: 0, tokens: 0 };
  const sockets = new Set<Socket>();

  async function generate(
    req: IncomingMessage,
    res: ServerResponse,
    kind: "chat" | "completion" | "workflow",
  ) {
    const body = await readJson(req);
    if (!body)
      return sendError(res, 400, "invalid_param", "Invalid JSON payload received or JSON payload is empty.");
    if (typeof body.user !== "string" || body.user === "")
      return sendError(res, 400, "invalid_param", "user is required");
    const inputs = typeof body.inputs === "object" && body.inputs !== null ? body.inputs : {};
    const query = typeof body.query === "string" ? body.query : "";
    if (kind === "chat" && query === "") return sendError(res, 400, "invalid_param", "query is required");
    const prompt = `${kind}|${query}|${JSON.stringify(inputs)}`;
    const { answer, promptTokens, completionTokens } = answerFor(prompt);
    const usage = usageOf(promptTokens, completionTokens, opts.answerMs / 1000);
    const ids = {
      task_id: randomUUID(),
      message_id: randomUUID(),
      conversation_id: kind === "chat" ? randomUUID() : undefined,
      created_at: Math.floor(Date.now() / 1000),
    };
    stats.generations++;
    stats.tokens += usage.total_tokens;

    if (body.response_mode !== "streaming") {
      if (!(await wait(opts.answerMs, res))) return;
      if (kind === "workflow") {
        return sendJson(res, 200, {
          task_id: ids.task_id,
          workflow_run_id: ids.message_id,
          data: {
            id: ids.message_id,
            workflow_id: "7c3e33d4-0000-4000-8000-000000000000",
            status: "succeeded",
            outputs: { result: answer },
            error: null,
            elapsed_time: usage.latency,
            total_tokens: usage.total_tokens,
            total_steps: 3,
            created_at: ids.created_at,
            finished_at: ids.created_at + Math.ceil(usage.latency),
          },
        });
      }
      return sendJson(res, 200, {
        event: "message",
        ...ids,
        id: ids.message_id,
        mode: kind,
        answer,
        metadata: { usage, retriever_resources: [] },
      });
    }

    // Streaming: chunked text/event-stream, one `data: <json>\n\n` frame per chunk, no event: line (Dify's framing).
    res.writeHead(200, {
      "content-type": "text/event-stream; charset=utf-8",
      "cache-control": "no-cache",
      "x-version": "1.9.0-sim",
      "x-env": "DEMO",
    });
    res.flushHeaders();
    const frame = (event: Record<string, unknown>) => res.write(`data: ${JSON.stringify(event)}\n\n`);
    const words = answer.split(" ");
    const per = Math.ceil(words.length / STREAM_FRAMES);
    if (kind === "workflow")
      frame({ event: "workflow_started", workflow_run_id: ids.message_id, task_id: ids.task_id, data: {} });
    for (let i = 0; i < words.length; i += per) {
      if (!(await wait(opts.answerMs / STREAM_FRAMES, res))) return;
      const text = (i === 0 ? "" : " ") + words.slice(i, i + per).join(" ");
      if (kind === "workflow")
        frame({ event: "text_chunk", workflow_run_id: ids.message_id, task_id: ids.task_id, data: { text } });
      else frame({ event: "message", ...ids, id: ids.message_id, answer: text });
    }
    if (kind === "workflow") {
      frame({
        event: "workflow_finished",
        workflow_run_id: ids.message_id,
        task_id: ids.task_id,
        data: { status: "succeeded", outputs: { result: answer }, total_tokens: usage.total_tokens },
      });
    } else {
      frame({
        event: "message_end",
        ...ids,
        id: ids.message_id,
        metadata: { usage, retriever_resources: [] },
      });
    }
    res.end();
  }

  const server = http.createServer((req, res) => {
    const path = (req.url ?? "/").split("?")[0] ?? "/";
    const route = `${req.method} ${path}`;
    if (route === "GET /health") return sendJson(res, 200, { status: "ok" });
    // wraps.py: every service API call needs `Authorization: Bearer <key>` (scheme case-insensitive).
    if (!/^bearer\s+\S+/i.test(req.headers.authorization ?? "")) {
      return sendError(
        res,
        401,
        "unauthorized",
        "Authorization header must be provided and start with 'Bearer'",
      );
    }
    switch (route) {
      case "POST /v1/completion-messages":
        return void generate(req, res, "completion");
      case "POST /v1/chat-messages":
        return void generate(req, res, "chat");
      case "POST /v1/workflows/run":
        return void generate(req, res, "workflow");
      case "GET /v1/parameters":
        return sendJson(res, 200, {
          opening_statement: "Ask me about cachegate.",
          user_input_form: [],
          file_upload: {},
        });
      case "GET /v1/info":
        return sendJson(res, 200, {
          name: "cachegate demo",
          description: "simulated Dify app",
          tags: [],
          mode: "completion",
        });
      default:
        return sendError(res, 404, "not_found", "The requested URL was not found on the server.");
    }
  });
  server.on("connection", (s: Socket) => {
    sockets.add(s);
    s.once("close", () => sockets.delete(s));
  });
  const host = opts.host ?? "127.0.0.1";
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(opts.port ?? 0, host, () => resolve());
  });
  const port = (server.address() as AddressInfo).port;
  return {
    url: `http://${host === "0.0.0.0" ? "127.0.0.1" : host}:${port}`,
    port,
    stats: () => ({ ...stats }),
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  };
}
