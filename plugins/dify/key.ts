// The cache key recipe for Dify generation calls (DIFY.md §3). The result is the plugin's part of the key; the core
// adds a hash of Authorization (the route's tenant scope), the upstream, the host and the path, then hashes it all.
//
//   dify:v1 | METHOD | path | user (unless shared) | response mode | canonicalJSON(body minus the ignored fields)
import { canonicalJson } from "../../proxy/cache/key.js";

export const KEY_VERSION = "dify:v1";

/** Fields that change nothing in the answer: observability, naming, logging, and the two keyed on their own. */
const NOT_KEYED = ["user", "response_mode", "trace_id", "auto_generate_name", "retriever_from"] as const;

/** Query parameters that change nothing in the answer (observability; `trace_id_helper`). */
export const TRACE_QUERY_PARAMS = ["trace_id"] as const;

export type JsonObject = Record<string, unknown>;

export function isObject(v: unknown): v is JsonObject {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

/** Absent, null, "" and whitespace-only mean "new conversation" (Dify strips it and turns empty into None). */
export function isBlankConversation(v: unknown): boolean {
  return v === undefined || v === null || (typeof v === "string" && v.trim() === "");
}

/** Absent, null and [] all mean "no files" (dify-client 2.3.2 sends `files: null`). */
function isNoFiles(v: unknown): boolean {
  return v === undefined || v === null || (Array.isArray(v) && v.length === 0);
}

/** A Dify file object: `{type, transfer_method: remote_url|local_file|tool_file, url | upload_file_id}`. */
function isFileObject(v: unknown): boolean {
  return isObject(v) && typeof v.transfer_method === "string";
}

/** Whether the request carries files: top-level `files`, or file objects in `inputs` (file variables). */
export function hasFiles(body: JsonObject): boolean {
  if (!isNoFiles(body.files)) return true;
  const inputs = body.inputs;
  if (!isObject(inputs)) return false;
  for (const value of Object.values(inputs)) {
    if (isFileObject(value)) return true;
    if (Array.isArray(value) && value.some(isFileObject)) return true;
  }
  return false;
}

/** Absent (or null) means blocking; anything else is kept as sent (an invalid mode is Dify's 400 to give). */
export function responseMode(body: JsonObject): string {
  const mode = body.response_mode;
  return mode === undefined || mode === null
    ? "blocking"
    : typeof mode === "string"
      ? mode
      : canonicalJson(mode);
}

/** The body as keyed: ignored fields dropped, "no conversation" and "no files" each in one form. */
export function canonicalBody(body: JsonObject): string {
  const rest: JsonObject = { ...body };
  for (const field of NOT_KEYED) delete rest[field];
  if (isBlankConversation(rest.conversation_id)) delete rest.conversation_id;
  if (isNoFiles(rest.files)) delete rest.files;
  return canonicalJson(rest);
}

export interface GenerationKeyInput {
  method: string;
  /** The request path (with the prefix; includes the workflow id of /workflows/{id}/run). */
  path: string;
  body: JsonObject;
  /** Key on `user` (default); false shares one entry between all end users of the API key. */
  perUser: boolean;
}

/** Unit separators keep parts from running into each other; the core hashes the result. */
export function generationKey(input: GenerationKeyInput): string {
  const user = input.perUser ? canonicalJson(input.body.user ?? null) : "";
  return [
    KEY_VERSION,
    input.method,
    input.path,
    user,
    responseMode(input.body),
    canonicalBody(input.body),
  ].join("\x1f");
}

/** The key of an app-configuration GET: nothing but the path (the API key is the core's tenant part). */
export function appConfigKey(path: string): string {
  return [KEY_VERSION, "GET", path].join("\x1f");
}

/** The request target keyed by the core: the path and the query without the parameters in `ignored`. */
export function keyTarget(path: string, query: URLSearchParams, ignored: readonly string[]): string {
  const kept = new URLSearchParams();
  for (const [name, value] of query) if (!ignored.includes(name)) kept.append(name, value);
  const q = kept.toString();
  return q ? `${path}?${q}` : path;
}
