// The endpoint table: what each Dify service-API endpoint is, and what the plugin does with it (DIFY.md §7).
// Paths are matched after the configured prefix (/v1). The first matching row wins; anything unlisted is bypassed.

/** Metric label for a request (a fixed set). */
export type DifyKind = "completion" | "workflow" | "chat" | "app_config" | "other";

export type EndpointAction =
  /** A generation call: cacheable under the key recipe when stateless (key.ts) and successful (response.ts). */
  | { action: "generate"; kind: "completion" | "workflow" | "chat" }
  /** App configuration: cached per API key, `user` query parameter ignored, short TTL. */
  | { action: "app_config"; kind: "app_config" }
  /** Never cached. `purgeKey`: after success, purge the API key's entries (their answers may have changed). */
  | { action: "bypass"; kind: DifyKind; reason: string; purgeKey?: boolean };

interface Row {
  methods: readonly string[];
  path: RegExp;
  result: EndpointAction;
}

const ID = "[^/]+";
const WRITES = ["POST", "PUT", "PATCH", "DELETE"] as const;
const ANY = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"] as const;
const bypass = (reason: string, kind: DifyKind = "other", purgeKey = false): EndpointAction => ({
  action: "bypass",
  kind,
  reason,
  ...(purgeKey ? { purgeKey } : {}),
});

const TABLE: readonly Row[] = [
  // Generation (§1): stop calls first, so /chat-messages/{task}/stop never reads as a generation.
  { methods: ["POST"], path: /^\/(chat-messages|completion-messages)\/[^/]+\/stop$/, result: bypass("stop") },
  { methods: ["POST"], path: new RegExp(`^/workflows/tasks/${ID}/stop$`), result: bypass("stop") },
  { methods: ["POST"], path: /^\/completion-messages$/, result: { action: "generate", kind: "completion" } },
  { methods: ["POST"], path: /^\/workflows\/run$/, result: { action: "generate", kind: "workflow" } },
  {
    methods: ["POST"],
    path: new RegExp(`^/workflows/${ID}/run$`),
    result: { action: "generate", kind: "workflow" },
  },
  { methods: ["POST"], path: /^\/chat-messages$/, result: { action: "generate", kind: "chat" } },
  // App configuration (app.py): no user argument.
  {
    methods: ["GET", "HEAD"],
    path: /^\/(parameters|meta|info|site)$/,
    result: { action: "app_config", kind: "app_config" },
  },
  // A stateful event stream that resumes a paused run.
  { methods: ANY, path: new RegExp(`^/workflow/${ID}/events$`), result: bypass("stream resume (stateful)") },
  // Annotations change what chat apps answer (annotation reply) and /parameters' features.
  {
    methods: WRITES,
    path: /^\/apps\/annotation(s|-reply)(\/|$)/,
    result: bypass("annotation write", "other", true),
  },
  // Per-user lists, whole-app data, files, audio, suggestions, knowledge: not cached by this plugin.
  {
    methods: ["GET", "HEAD"],
    path: /^\/(conversations|messages)(\/|$)/,
    result: bypass("per-user data"),
  },
  {
    methods: ["GET", "HEAD"],
    path: new RegExp(`^/workflows/run/${ID}$`),
    result: bypass("run details (not user-scoped)"),
  },
  { methods: ANY, path: /^\/datasets(\/|$)/, result: bypass("knowledge API") },
  { methods: ANY, path: /^\/(files|audio-to-text|text-to-audio)(\/|$)/, result: bypass("files and audio") },
];

const UNLISTED_READ = bypass("not a cacheable Dify endpoint");
const UNLISTED_WRITE = bypass("side-effecting call");

/** What to do with `method subpath` (the path after the prefix, without the query). */
export function endpointFor(method: string, subpath: string): EndpointAction {
  for (const row of TABLE) {
    if (row.methods.includes(method) && row.path.test(subpath)) return row.result;
  }
  return method === "GET" || method === "HEAD" ? UNLISTED_READ : UNLISTED_WRITE;
}

/** The path after `prefix`, or undefined when the request is not under it ("/v1" matches "/v1/x", not "/v10"). */
export function subpathOf(path: string, prefix: string): string | undefined {
  if (prefix === "") return path;
  if (!path.startsWith(prefix)) return undefined;
  const rest = path.slice(prefix.length);
  return rest.startsWith("/") ? rest : undefined;
}
