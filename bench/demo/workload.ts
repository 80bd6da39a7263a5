// The demo's traffic: a seeded mix of popular FAQ prompts (asked again and again), new one-off prompts, and
// streaming calls, sent as Dify completion-messages requests; and one request → one measured result.
import http from "node:http";

export interface RequestSpec {
  /** 0-based position in the run. */
  index: number;
  query: string;
  streaming: boolean;
  /** A prompt nobody asked before (a guaranteed miss). */
  fresh: boolean;
}

export interface Result {
  spec: RequestSpec;
  status: number;
  /** The X-Cache header: HIT, MISS, STALE, REVALIDATED, BYPASS, or "" when absent. */
  cache: string;
  /** Request start to the last body byte. */
  ms: number;
  /** metadata.usage.total_tokens and total_price of the answer (blocking JSON or the message_end frame). */
  tokens: number;
  priceUsd: number;
  error?: string;
}

const FAQ = [
  "How do I reset my password?",
  "What are your opening hours?",
  "How can I cancel my subscription?",
  "Do you ship internationally?",
  "How long does delivery take?",
  "What payment methods do you accept?",
  "How do I change my billing address?",
  "Can I get a refund after 30 days?",
  "How do I contact support?",
  "Is there a student discount?",
  "How do I export my data?",
  "What is your privacy policy?",
  "How do I enable two-factor authentication?",
  "Can I use the API on the free plan?",
  "How are API rate limits calculated?",
  "Where can I download invoices?",
  "How do I invite team members?",
  "What happens when my trial ends?",
  "Do you offer an SLA?",
  "How do I delete my account?",
  "Which regions are my data stored in?",
  "How do I upgrade my plan?",
  "Can I pause my subscription?",
  "How do I report a bug?",
];

/** mulberry32: a tiny seeded PRNG, so a demo run is reproducible. */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** `count` requests: `freshShare` of them new prompts, the rest FAQ prompts by Zipf-like popularity (1/rank). */
export function planRequests(count: number, opts: { seed: number; freshShare: number; streamShare: number }) {
  const rand = prng(opts.seed);
  const weights = FAQ.map((_, i) => 1 / (i + 1));
  const total = weights.reduce((a, b) => a + b, 0);
  const pick = (): string => {
    let r = rand() * total;
    for (let i = 0; i < FAQ.length; i++) {
      r -= weights[i] as number;
      if (r <= 0) return FAQ[i] as string;
    }
    return FAQ[FAQ.length - 1] as string;
  };
  const specs: RequestSpec[] = [];
  for (let index = 0; index < count; index++) {
    const fresh = rand() < opts.freshShare;
    const query = fresh ? `One-off question #${index} (seed ${opts.seed}): ${pick()}` : pick();
    specs.push({ index, query, fresh, streaming: rand() < opts.streamShare });
  }
  return specs;
}

interface Usage {
  total_tokens?: unknown;
  total_price?: unknown;
}

function usageIn(value: unknown): Usage | undefined {
  const meta = (value as { metadata?: { usage?: Usage } } | null)?.metadata;
  return typeof meta?.usage === "object" && meta.usage !== null ? meta.usage : undefined;
}

/** Usage from a blocking JSON answer, or from the message_end frame of an event stream. */
export function usageOf(body: string, streaming: boolean): { tokens: number; priceUsd: number } {
  let usage: Usage | undefined;
  try {
    if (!streaming) usage = usageIn(JSON.parse(body));
    else {
      for (const frame of body.split("\n\n")) {
        const data = frame
          .split("\n")
          .filter((l) => l.startsWith("data:"))
          .map((l) => l.slice(5).trimStart())
          .join("\n");
        if (!data) continue; // `event: ping` has no data line
        const event = JSON.parse(data) as { event?: string };
        if (event.event === "message_end") usage = usageIn(event);
      }
    }
  } catch {
    usage = undefined;
  }
  const tokens = Number(usage?.total_tokens ?? 0);
  const priceUsd = Number(usage?.total_price ?? 0);
  return { tokens: Number.isFinite(tokens) ? tokens : 0, priceUsd: Number.isFinite(priceUsd) ? priceUsd : 0 };
}

/** POST /v1/completion-messages through `target`; never throws (a failure is a Result with `error`). */
export function send(
  target: string,
  agent: http.Agent,
  spec: RequestSpec,
  timeoutMs: number,
): Promise<Result> {
  const started = performance.now();
  const body = JSON.stringify({
    inputs: { query: spec.query },
    response_mode: spec.streaming ? "streaming" : "blocking",
    user: "faq-widget",
  });
  return new Promise((resolve) => {
    const done = (partial: Omit<Result, "spec" | "ms">) =>
      resolve({ spec, ms: performance.now() - started, ...partial });
    const req = http.request(
      `${target}/v1/completion-messages`,
      {
        method: "POST",
        agent,
        timeout: timeoutMs,
        headers: {
          authorization: "Bearer app-demo-0123456789abcdef",
          "content-type": "application/json",
          "content-length": Buffer.byteLength(body),
        },
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on("data", (c: Buffer) => chunks.push(c));
        res.on("error", (err) =>
          done({ status: res.statusCode ?? 0, cache: "", tokens: 0, priceUsd: 0, error: err.message }),
        );
        res.on("end", () => {
          const status = res.statusCode ?? 0;
          const text = Buffer.concat(chunks).toString("utf8");
          const cache = String(res.headers["x-cache"] ?? "");
          const ok = status >= 200 && status < 300;
          done({
            status,
            cache,
            ...usageOf(text, spec.streaming),
            ...(ok ? {} : { error: `HTTP ${status}` }),
          });
        });
      },
    );
    req.on("timeout", () => req.destroy(new Error(`no answer within ${timeoutMs} ms`)));
    req.on("error", (err) => done({ status: 0, cache: "", tokens: 0, priceUsd: 0, error: err.message }));
    req.end(body);
  });
}
