// Server-sent events as Dify writes them (DIFY.md §2): `data: <json>\n\n` frames whose event type is the JSON field
// `event` (no `event:` line), bare `event: ping\n\n` keep-alives. Frames are parsed (WHATWG HTML §9.2.6 "event stream
// interpretation"), never byte-matched: current Dify writes compact orjson, older releases spaced json.dumps with
// \uXXXX escapes, and both must read the same.

export interface SseFrame {
  /** The frame as received, its terminating blank line included (so kept frames are replayed byte for byte). */
  raw: string;
  /** The `event:` field, if the frame has one. */
  event: string | undefined;
  /** The `data:` lines joined with "\n"; undefined when the frame has none (keep-alives, comments). */
  data: string | undefined;
}

export interface ParsedStream {
  frames: SseFrame[];
  /** Text after the last complete frame: non-empty when the stream stopped mid-frame. */
  rest: string;
}

const LINE = /\r\n|\n|\r/g;

/** Splits an event stream into frames. Lines end in CRLF, LF or CR; a blank line ends a frame. */
export function parseFrames(text: string): ParsedStream {
  const frames: SseFrame[] = [];
  const src = text.charCodeAt(0) === 0xfeff ? text.slice(1) : text; // a leading BOM is not part of the stream
  let frameStart = 0;
  let lineStart = 0;
  let event: string | undefined;
  let data: string[] = [];
  let hasLines = false;
  LINE.lastIndex = 0;
  for (let m = LINE.exec(src); m !== null; m = LINE.exec(src)) {
    const line = src.slice(lineStart, m.index);
    lineStart = m.index + m[0].length;
    if (line === "") {
      if (hasLines) {
        frames.push({
          raw: src.slice(frameStart, lineStart),
          event,
          data: data.length > 0 ? data.join("\n") : undefined,
        });
      }
      frameStart = lineStart;
      event = undefined;
      data = [];
      hasLines = false;
      continue;
    }
    hasLines = true;
    if (line.startsWith(":")) continue; // a comment
    const colon = line.indexOf(":");
    const field = colon === -1 ? line : line.slice(0, colon);
    let value = colon === -1 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "data") data.push(value);
    else if (field === "event") event = value;
  }
  return { frames, rest: src.slice(frameStart) };
}

/** A keep-alive: Dify's `event: ping` with no data, or a frame of comments only. Dropped from stored streams. */
export function isKeepAlive(frame: SseFrame): boolean {
  return frame.data === undefined && (frame.event === "ping" || frame.event === undefined);
}

export interface DifyEvent {
  /** The JSON `event` field (Dify's event type), else the SSE `event:` field, else "message". */
  name: string;
  json: Record<string, unknown>;
}

/** The Dify event a data frame carries, or undefined when its data is not a JSON object. */
export function difyEvent(frame: SseFrame): DifyEvent | undefined {
  if (frame.data === undefined) return undefined;
  let json: unknown;
  try {
    json = JSON.parse(frame.data);
  } catch {
    return undefined;
  }
  if (typeof json !== "object" || json === null || Array.isArray(json)) return undefined;
  const obj = json as Record<string, unknown>;
  const name = typeof obj.event === "string" ? obj.event : (frame.event ?? "message");
  return { name, json: obj };
}

/** Which app family produced the stream; it decides the success terminal event. */
export type StreamKind = "completion" | "chat" | "workflow";

export interface StreamRules {
  /** Agent events (agent_thought, agent_message) are acceptable. */
  allowAgent: boolean;
}

export type StreamVerdict = { ok: true; body: string; events: DifyEvent[] } | { ok: false; reason: string };

// Events that may follow the terminal event (text-to-speech audio is sent after message_end).
const MAY_TRAIL = new Set(["message_end", "workflow_finished", "tts_message", "tts_message_end"]);

function workflowStatus(e: DifyEvent): unknown {
  const data = e.json.data;
  return typeof data === "object" && data !== null ? (data as Record<string, unknown>).status : undefined;
}

/**
 * Whether a complete stream may be stored (DIFY.md §3 "Cacheable only when"): it ends on frame boundaries, every
 * data frame is a JSON object, it carries its kind's success terminal event (completion and chat: message_end, plus a
 * succeeded workflow_finished for Chatflows; workflow: workflow_finished with status "succeeded"), nothing but audio
 * follows it, and it has no error, pause or human-input event. The body to store is the stream without keep-alives.
 */
export function validateStream(text: string, kind: StreamKind, rules: StreamRules): StreamVerdict {
  const { frames, rest } = parseFrames(text);
  if (rest.trim() !== "") return { ok: false, reason: "stream ended inside a frame" };
  const kept: string[] = [];
  const events: DifyEvent[] = [];
  let messageEnd = false;
  let workflowStarted = false;
  let workflowSucceeded = false;
  for (const frame of frames) {
    if (isKeepAlive(frame)) continue;
    kept.push(frame.raw);
    if (frame.data === undefined) continue;
    const e = difyEvent(frame);
    if (!e) return { ok: false, reason: "a data frame is not a JSON object" };
    events.push(e);
    switch (e.name) {
      case "error":
        return { ok: false, reason: "error event" };
      case "workflow_paused":
        return { ok: false, reason: "workflow paused" };
      case "message_end":
        messageEnd = true;
        break;
      case "workflow_started":
        workflowStarted = true;
        break;
      case "workflow_finished":
        if (workflowStatus(e) !== "succeeded") return { ok: false, reason: "workflow did not succeed" };
        workflowSucceeded = true;
        break;
      case "agent_thought":
      case "agent_message":
        if (!rules.allowAgent) return { ok: false, reason: "agent events (tools ran)" };
        break;
      default:
        if (e.name.startsWith("human_input")) return { ok: false, reason: "human input requested" };
    }
  }
  const last = events[events.length - 1];
  if (!last) return { ok: false, reason: "no events" };
  if (!MAY_TRAIL.has(last.name)) return { ok: false, reason: `stream ended on "${last.name}"` };
  if (kind === "workflow" && !workflowSucceeded) return { ok: false, reason: "no workflow_finished" };
  if (kind !== "workflow" && !messageEnd) return { ok: false, reason: "no message_end" };
  if (kind === "chat" && workflowStarted && !workflowSucceeded) {
    return { ok: false, reason: "Chatflow without workflow_finished" };
  }
  return { ok: true, body: kept.join(""), events };
}
