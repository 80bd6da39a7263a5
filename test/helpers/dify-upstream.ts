// A Dify-shaped upstream on 127.0.0.1 port 0 (../../../shared/DIFY.md §2): the service API under /v1, blocking JSON
// and event streams framed as Dify frames them (`data: <json>\n\n`, no `event:` line, `event: ping\n\n`
// keep-alives, message_end with metadata.usage, error frames with HTTP 200, workflow_finished with a status).
// Every answer carries fresh ids, so a replay is recognisable. `inputs.scenario` picks a behaviour:
//   "error"   stream: an error frame (HTTP 200); blocking: 400 completion_request_error
//   "busy"    429 too_many_requests
//   "spaced"  frames in the old json.dumps form (", " and ": " separators, \uXXXX escapes)
//   "cut"     the stream stops mid-way (socket destroyed)
//   "slow"    frames 40 ms apart
// Workflows finish with `inputs.status` (default "succeeded").
import { randomUUID } from "node:crypto";
import type { IncomingMessage, ServerResponse } from "node:http";
import { startUpstream, type TestUpstream } from "./upstream.js";

export const USAGE = {
  prompt_tokens: 100,
  completion_tokens: 20,
  total_tokens: 120,
  total_price: "0.0012000",
  currency: "USD",
  latency: 0.5,
};
export const WORKFLOW_TOKENS = 150;

export interface DifyStub extends TestUpstream {
  /** Requests received for this method and path (query ignored). */
  count(method: string, path: string): number;
}

type Json = Record<string, unknown>;

/** Python's json.dumps with its defaults: ", " and ": " separators, ensure_ascii. */
export function pyDumps(v: unknown): string {
  if (Array.isArray(v)) return `[${v.map(pyDumps).join(", ")}]`;
  if (v !== null && typeof v === "object") {
    return `{${Object.entries(v as Json)
      .map(([k, x]) => `${pyDumps(k)}: ${pyDumps(x)}`)
      .join(", ")}}`;
  }
  if (typeof v === "string") {
    return JSON.stringify(v).replace(
      /[\u007f-\uffff]/g,
      (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, "0")}`,
    );
  }
  return JSON.stringify(v);
}

function sendJson(res: ServerResponse, status: number, body: unknown): undefined {
  const buf = Buffer.from(JSON.stringify(body));
  res.writeHead(status, {
    "content-type": "application/json",
    "content-length": buf.length,
    "x-version": "1.9.0",
    "x-env": "PRODUCTION",
    ...(status === 401 ? { "www-authenticate": 'Bearer realm="api"' } : {}),
  });
  res.end(buf);
}

function readJson(req: IncomingMessage): Promise<Json> {
  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("end", () => {
      try {
        const v: unknown = JSON.parse(Buffer.concat(chunks).toString("utf8") || "{}");
        resolve(typeof v === "object" && v !== null ? (v as Json) : {});
      } catch {
        resolve({});
      }
    });
  });
}

/** Writes `events` as Dify does, a ping after the first; "cut" stops after two frames. */
function stream(res: ServerResponse, events: Json[], scenario: string): void {
  res.writeHead(200, {
    "content-type": "text/event-stream; charset=utf-8",
    "x-version": "1.9.0",
    "x-env": "PRODUCTION",
  });
  const frames: string[] = [];
  events.forEach((e, i) => {
    frames.push(`data: ${scenario === "spaced" ? pyDumps(e) : JSON.stringify(e)}\n\n`);
    if (i === 0) frames.push("event: ping\n\n");
  });
  const gap = scenario === "slow" ? 40 : 0;
  let i = 0;
  const next = () => {
    if (res.destroyed) return;
    if (scenario === "cut" && i === 2) {
      res.socket?.destroy();
      return;
    }
    const frame = frames[i++];
    if (frame === undefined) return void res.end();
    res.write(frame);
    if (gap > 0) setTimeout(next, gap);
    else setImmediate(next);
  };
  next();
}

function answerFor(inputs: Json, query: unknown): string {
  const q = typeof query === "string" && query !== "" ? query : String(inputs.query ?? "");
  return `Echo: ${q} — ok`;
}

function generation(res: ServerResponse, body: Json, mode: "completion" | "chat"): undefined {
  const inputs = (body.inputs ?? {}) as Json;
  const scenario = String(inputs.scenario ?? "");
  if (scenario === "busy") {
    return sendJson(res, 429, { code: "too_many_requests", message: "Too many requests.", status: 429 });
  }
  const taskId = randomUUID();
  const messageId = randomUUID();
  const createdAt = Math.floor(Date.now() / 1000);
  const conversation =
    mode === "chat"
      ? {
          conversation_id:
            typeof body.conversation_id === "string" && body.conversation_id
              ? body.conversation_id
              : randomUUID(),
        }
      : {};
  const answer = answerFor(inputs, body.query);
  if (body.response_mode !== "streaming") {
    if (scenario === "error") {
      return sendJson(res, 400, { code: "completion_request_error", message: "model failed", status: 400 });
    }
    return sendJson(res, 200, {
      event: "message",
      task_id: taskId,
      id: messageId,
      message_id: messageId,
      ...conversation,
      mode,
      answer,
      metadata: { usage: USAGE, retriever_resources: [] },
      created_at: createdAt,
    });
  }
  const common = { task_id: taskId, message_id: messageId, ...conversation, created_at: createdAt };
  const words = answer.split(/(?= )/);
  const events: Json[] = words.map((w) => ({ event: "message", id: messageId, ...common, answer: w }));
  if (scenario === "error") {
    events.push({
      event: "error",
      ...common,
      code: "completion_request_error",
      status: 400,
      message: "model failed",
    });
  } else {
    events.push({
      event: "message_end",
      id: messageId,
      ...common,
      metadata: { usage: USAGE, retriever_resources: [] },
    });
  }
  stream(res, events, scenario);
}

function workflow(res: ServerResponse, body: Json, workflowId: string): undefined {
  const inputs = (body.inputs ?? {}) as Json;
  const scenario = String(inputs.scenario ?? "");
  const status = String(inputs.status ?? "succeeded");
  const runId = randomUUID();
  const taskId = randomUUID();
  const now = Math.floor(Date.now() / 1000);
  const data = {
    id: runId,
    workflow_id: workflowId,
    status,
    outputs: status === "succeeded" ? { result: `Bonjour ${String(inputs.query ?? "")}` } : null,
    error: status === "succeeded" ? null : "node failed",
    elapsed_time: 1.23,
    total_tokens: WORKFLOW_TOKENS,
    total_steps: 3,
    created_at: now,
    finished_at: now + 1,
  };
  if (body.response_mode !== "streaming") {
    return sendJson(res, 200, { task_id: taskId, workflow_run_id: runId, data });
  }
  const top = { task_id: taskId, workflow_run_id: runId };
  stream(
    res,
    [
      { event: "workflow_started", ...top, data: { id: runId, workflow_id: workflowId, created_at: now } },
      { event: "node_started", ...top, data: { id: randomUUID(), node_id: "llm", title: "LLM" } },
      { event: "text_chunk", ...top, data: { text: "Bonjour" } },
      { event: "node_finished", ...top, data: { id: randomUUID(), node_id: "llm", status } },
      { event: "workflow_finished", ...top, data },
    ],
    scenario,
  );
}

export async function startDifyUpstream(
  keys: readonly string[] = ["app-key-A", "app-key-B"],
): Promise<DifyStub> {
  let n = 0;
  const up = await startUpstream((req, res) => {
    n++;
    const url = new URL(req.url ?? "/", "http://dify");
    const path = url.pathname;
    const auth = /^bearer\s+(.+)$/i.exec(String(req.headers.authorization ?? ""));
    if (!auth) {
      return sendJson(res, 401, {
        code: "unauthorized",
        message: "Authorization header must be provided and start with 'Bearer'",
        status: 401,
      });
    }
    if (!keys.includes(auth[1] ?? "")) {
      return sendJson(res, 401, { code: "unauthorized", message: "Access token is invalid", status: 401 });
    }
    if (req.method === "GET" && /^\/v1\/(parameters|meta|info|site)$/.test(path)) {
      return sendJson(res, 200, { user_input_form: [], opening_statement: "Hi", n, key: auth[1] });
    }
    if (req.method === "GET" && path === "/v1/conversations") {
      return sendJson(res, 200, { data: [], has_more: false, limit: 20, n });
    }
    void readJson(req).then((body) => {
      if (req.method !== "POST")
        return sendJson(res, 404, { code: "not_found", message: "Not Found", status: 404 });
      if (path === "/v1/completion-messages") return generation(res, body, "completion");
      if (path === "/v1/chat-messages") return generation(res, body, "chat");
      if (path === "/v1/workflows/run") return workflow(res, body, "7c3e33d4-published");
      const byId = /^\/v1\/workflows\/([^/]+)\/run$/.exec(path);
      if (byId) return workflow(res, body, byId[1] ?? "");
      if (path.startsWith("/v1/apps/annotations")) return sendJson(res, 200, { id: randomUUID(), ...body });
      return sendJson(res, 404, { code: "not_found", message: "Not Found", status: 404 });
    });
  });
  return {
    ...up,
    count: (method, path) =>
      up.requests.filter((r) => r.method === method && r.url.split("?")[0] === path).length,
  };
}
