// The plugin's Prometheus metrics, and the usage a stored Dify response records (what a hit saved).
import { Counter, type Registry } from "prom-client";
import type { CacheEntry } from "../plugin-api.js";
import { isObject, type JsonObject } from "./key.js";
import type { DifyKind } from "./policy.js";
import { difyEvent, parseFrames } from "./sse.js";

export type DifyResult = "hit" | "miss" | "bypass";

export interface Usage {
  tokens: number;
  /** total_price, when the response states one (chat and completion; workflow results carry only tokens). */
  cost: number | undefined;
  currency: string;
}

export interface DifyMetrics {
  request(kind: DifyKind, result: DifyResult): void;
  saved(usage: Usage): void;
}

// Several cachegate instances may share a process (tests): reuse a metric the registry already has.
function counter<L extends string>(
  registry: Registry,
  name: string,
  help: string,
  labelNames: L[],
): Counter<L> {
  const existing = registry.getSingleMetric(name);
  if (existing) return existing as Counter<L>;
  return new Counter({ name, help, labelNames, registers: [registry] });
}

export function createDifyMetrics(registry: Registry): DifyMetrics {
  const requests = counter(
    registry,
    "cachegate_dify_requests_total",
    "Dify service-API requests by kind (completion, workflow, chat, app_config, other) and result (hit, miss, bypass).",
    ["kind", "result"],
  );
  const tokens = counter(
    registry,
    "cachegate_dify_tokens_saved_total",
    "LLM tokens not spent because a stored Dify response was served (the stored response's usage, per hit).",
    [],
  );
  const cost = counter(
    registry,
    "cachegate_dify_cost_saved_total",
    "Model cost not spent because a stored Dify response was served (its metadata.usage.total_price), by currency.",
    ["currency"],
  );
  return {
    request: (kind, result) => requests.inc({ kind, result }),
    saved(usage) {
      if (usage.tokens > 0) tokens.inc(usage.tokens);
      if (usage.cost !== undefined && usage.cost > 0) cost.inc({ currency: usage.currency }, usage.cost);
    },
  };
}

// Label values come from a fixed shape: an ISO 4217-like code, else "other".
function currencyLabel(v: unknown): string {
  return typeof v === "string" && /^[A-Z]{3}$/.test(v) ? v : "other";
}

function num(v: unknown): number | undefined {
  const n = typeof v === "number" ? v : typeof v === "string" && v.trim() !== "" ? Number(v) : Number.NaN;
  return Number.isFinite(n) && n >= 0 ? n : undefined;
}

/** metadata.usage of a chat or completion answer (blocking body or message_end frame). */
function fromMessage(obj: JsonObject): Usage | undefined {
  const metadata = obj.metadata;
  const usage = isObject(metadata) ? metadata.usage : undefined;
  if (!isObject(usage)) return undefined;
  const tokens = num(usage.total_tokens);
  if (tokens === undefined) return undefined;
  return { tokens, cost: num(usage.total_price), currency: currencyLabel(usage.currency) };
}

/** data.total_tokens of a workflow run (blocking body or workflow_finished frame). */
function fromWorkflow(obj: JsonObject): Usage | undefined {
  const data = obj.data;
  const tokens = isObject(data) ? num(data.total_tokens) : undefined;
  return tokens === undefined ? undefined : { tokens, cost: undefined, currency: "other" };
}

/** The usage a stored response records; a Chatflow stream has both events, and message_end (with a price) wins. */
export function usageOf(body: Buffer, contentType: string): Usage | undefined {
  const text = body.toString("utf8");
  if (contentType.toLowerCase().startsWith("text/event-stream")) {
    let workflow: Usage | undefined;
    const { frames } = parseFrames(text);
    // The terminal events are at the end: read backwards.
    for (let i = frames.length - 1; i >= 0; i--) {
      const frame = frames[i];
      const e = frame ? difyEvent(frame) : undefined;
      if (e?.name === "message_end") return fromMessage(e.json);
      if (e?.name === "workflow_finished") workflow ??= fromWorkflow(e.json);
    }
    return workflow;
  }
  try {
    const json: unknown = JSON.parse(text);
    if (!isObject(json)) return undefined;
    return fromMessage(json) ?? fromWorkflow(json);
  } catch {
    return undefined;
  }
}

// A memory-tier hit hands over the same stored object every time: parse its body once.
const known = new WeakMap<Buffer, Usage | null>();

export function entryUsage(entry: CacheEntry): Usage | undefined {
  const cached = known.get(entry.body);
  if (cached !== undefined) return cached ?? undefined;
  const ct = entry.headers["content-type"];
  const usage = usageOf(entry.body, Array.isArray(ct) ? (ct[0] ?? "") : (ct ?? ""));
  known.set(entry.body, usage ?? null);
  return usage;
}
