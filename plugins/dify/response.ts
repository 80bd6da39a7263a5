// Which complete responses may be stored (DIFY.md §3 and §4): HTTP 200 only; blocking JSON that is an answer (chat,
// completion) or a succeeded run (workflow); event streams that validateStream accepts, stored without keep-alives.
// Dify reports failures with HTTP 200 (error frames, workflow status "failed"), so the status alone never decides.
import type { OutgoingHttpHeaders } from "node:http";
import { isObject } from "./key.js";
import { type StreamKind, validateStream } from "./sse.js";

export interface StoreRules {
  allowAgent: boolean;
  /** Responses carrying signed file URLs may be stored (they expire after 300 s: FILES_ACCESS_TIMEOUT). */
  allowSignedUrls: boolean;
}

export type StoreJudgement = { store: true; body?: Buffer } | { store: false; reason: string };

// Dify's signed URLs end in ?timestamp=<s>&nonce=<hex>&sign=<b64> (core/file/helpers.py, tools/signature.py).
const SIGNED_URL = /[?&]timestamp=\d+&nonce=[^&"\s]+&sign=/;

function header(headers: OutgoingHttpHeaders, name: string): string {
  const v = headers[name];
  return v === undefined ? "" : Array.isArray(v) ? v.join(",") : String(v);
}

function mediaType(headers: OutgoingHttpHeaders): string {
  return (header(headers, "content-type").split(";")[0] ?? "").trim().toLowerCase();
}

function judgeBlocking(kind: StreamKind, text: string): StoreJudgement {
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    return { store: false, reason: "body is not JSON" };
  }
  if (!isObject(json)) return { store: false, reason: "body is not a JSON object" };
  if (kind === "workflow") {
    const data = json.data;
    if (!isObject(data) || data.status !== "succeeded")
      return { store: false, reason: "workflow did not succeed" };
    if (data.error !== undefined && data.error !== null && data.error !== "") {
      return { store: false, reason: "workflow reported an error" };
    }
    return { store: true };
  }
  if (json.event === "error" || typeof json.answer !== "string") {
    return { store: false, reason: "not an answer" };
  }
  return { store: true };
}

/** The verdict on a complete generation response for a request of `kind`. */
export function judgeGeneration(
  kind: StreamKind,
  status: number,
  headers: OutgoingHttpHeaders,
  body: Buffer,
  rules: StoreRules,
): StoreJudgement {
  if (status !== 200) return { store: false, reason: `status ${status}` };
  const encoding = header(headers, "content-encoding").trim().toLowerCase();
  if (encoding !== "" && encoding !== "identity")
    return { store: false, reason: "encoded body (not inspected)" };
  const text = body.toString("utf8");
  if (!rules.allowSignedUrls && SIGNED_URL.test(text)) return { store: false, reason: "signed file URLs" };
  const type = mediaType(headers);
  if (type === "application/json") return judgeBlocking(kind, text);
  if (type === "text/event-stream") {
    const v = validateStream(text, kind, { allowAgent: rules.allowAgent });
    if (!v.ok) return { store: false, reason: v.reason };
    if (!rules.allowSignedUrls && v.events.some((e) => e.name === "message_file")) {
      return { store: false, reason: "message_file event (signed URL)" };
    }
    return v.body.length === text.length
      ? { store: true }
      : { store: true, body: Buffer.from(v.body, "utf8") };
  }
  return { store: false, reason: `unexpected content type "${type}"` };
}

/** App configuration: a 200 JSON object. */
export function judgeAppConfig(status: number, headers: OutgoingHttpHeaders, body: Buffer): StoreJudgement {
  if (status !== 200) return { store: false, reason: `status ${status}` };
  if (mediaType(headers) !== "application/json") return { store: false, reason: "not JSON" };
  try {
    return isObject(JSON.parse(body.toString("utf8")))
      ? { store: true }
      : { store: false, reason: "body is not a JSON object" };
  } catch {
    return { store: false, reason: "body is not JSON" };
  }
}
