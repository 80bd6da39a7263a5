import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { usageOf } from "../../plugins/dify/metrics.js";
import { judgeAppConfig, judgeGeneration } from "../../plugins/dify/response.js";
import { parseFrames, validateStream } from "../../plugins/dify/sse.js";
import { pyDumps } from "../helpers/dify-upstream.js";

const usage = {
  prompt_tokens: 10,
  completion_tokens: 5,
  total_tokens: 15,
  total_price: "0.002",
  currency: "USD",
};
const msg = (answer: string) => ({ event: "message", task_id: "t", message_id: "m", answer, created_at: 1 });
const end = { event: "message_end", task_id: "t", id: "m", message_id: "m", metadata: { usage } };
const wf = (status: string) => ({
  event: "workflow_finished",
  workflow_run_id: "r",
  data: { status, total_tokens: 42 },
});

/** Dify's framing: `data: <json>\n\n`, with a ping after the first frame. */
function sse(events: unknown[], dumps: (v: unknown) => string = JSON.stringify, eol = "\n"): string {
  return events
    .map((e, i) => `data: ${dumps(e)}${eol}${eol}${i === 0 ? `event: ping${eol}${eol}` : ""}`)
    .join("");
}

const rules = { allowAgent: false };

describe("SSE frame parser", () => {
  test("splits frames on blank lines with LF, CRLF or CR endings, and reads fields per the SSE spec", () => {
    for (const eol of ["\n", "\r\n", "\r"]) {
      const text = `: comment${eol}data: a${eol}data:b${eol}${eol}event: ping${eol}${eol}event: x${eol}data: {}${eol}${eol}`;
      const { frames, rest } = parseFrames(text);
      assert.equal(rest, "");
      assert.deepEqual(
        frames.map((f) => [f.event, f.data]),
        [
          [undefined, "a\nb"],
          ["ping", undefined],
          ["x", "{}"],
        ],
      );
      assert.equal(frames.map((f) => f.raw).join(""), text, "raw frames cover the stream byte for byte");
    }
  });

  test("reports an unterminated last frame as rest", () => {
    const { frames, rest } = parseFrames('data: {"a":1}\n\ndata: {"b"');
    assert.equal(frames.length, 1);
    assert.equal(rest, 'data: {"b"');
  });
});

describe("stream validation", () => {
  test("accepts a completion stream in orjson and in json.dumps form, dropping pings only", () => {
    for (const dumps of [JSON.stringify, pyDumps]) {
      const text = sse([msg("Bonjour "), msg("le monde — ✓"), end], dumps);
      const v = validateStream(text, "completion", rules);
      assert.ok(v.ok, JSON.stringify(v));
      assert.equal(v.body, text.replace("event: ping\n\n", ""));
      assert.deepEqual(
        v.events.map((e) => e.name),
        ["message", "message", "message_end"],
      );
    }
    assert.match(pyDumps(msg("—")), /"answer": "\\u2014"/, "the helper really writes the old form");
  });

  test("refuses error, pause and human-input events, agent events, and a stream without its terminal event", () => {
    const refused: Array<[unknown[], "completion" | "chat" | "workflow", RegExp]> = [
      [
        [msg("a"), { event: "error", code: "completion_request_error", status: 400, message: "x" }],
        "completion",
        /error/,
      ],
      [[msg("a"), end, { event: "error", status: 500 }], "completion", /error/],
      [
        [
          { event: "workflow_started", data: {} },
          { event: "workflow_paused", data: {} },
        ],
        "workflow",
        /paused/,
      ],
      [[msg("a"), { event: "human_input_required", data: {} }, end], "chat", /human input/],
      [[{ event: "agent_thought", thought: "search" }, msg("a"), end], "chat", /agent/],
      [[msg("a")], "completion", /ended on "message"/],
      [[msg("a"), end, msg("b")], "completion", /ended on "message"/],
      [[{ event: "workflow_started", data: {} }, wf("failed")], "workflow", /did not succeed/],
      [[{ event: "workflow_started", data: {} }, wf("partial-succeeded")], "workflow", /did not succeed/],
      [
        [{ event: "workflow_started", data: {} }, msg("a"), end],
        "chat",
        /Chatflow without workflow_finished/,
      ],
      [[end], "workflow", /no workflow_finished/],
      [[wf("succeeded")], "completion", /no message_end/],
    ];
    for (const [events, kind, reason] of refused) {
      const v = validateStream(sse(events), kind, rules);
      assert.ok(!v.ok, JSON.stringify(events));
      assert.match(v.reason, reason);
    }
    assert.equal(validateStream(`${sse([msg("a"), end])}data: {"ev`, "completion", rules).ok, false);
    assert.equal(validateStream("data: not json\n\n", "completion", rules).ok, false);
    assert.equal(validateStream("", "completion", rules).ok, false);
  });

  test("accepts Chatflows (message_end then workflow_finished), trailing audio, and agents when allowed", () => {
    const chatflow = [{ event: "workflow_started", data: {} }, msg("a"), end, wf("succeeded")];
    assert.ok(validateStream(sse(chatflow), "chat", rules).ok);
    assert.ok(
      validateStream(sse([msg("a"), end, { event: "tts_message_end", audio: "" }]), "completion", rules).ok,
    );
    const agent = [{ event: "agent_thought", thought: "t" }, { event: "agent_message", answer: "a" }, end];
    assert.ok(validateStream(sse(agent), "chat", { allowAgent: true }).ok);
    assert.ok(
      validateStream(sse([{ event: "workflow_started", data: {} }, wf("succeeded")]), "workflow", rules).ok,
    );
  });
});

describe("store verdicts", () => {
  const json = { "content-type": "application/json" };
  const stream = { "content-type": "text/event-stream; charset=utf-8" };
  const opts = { allowAgent: false, allowSignedUrls: false };
  const buf = (v: unknown) => Buffer.from(typeof v === "string" ? v : JSON.stringify(v));

  test("stores blocking answers and succeeded runs with HTTP 200 only", () => {
    const answer = { event: "message", answer: "hi", metadata: { usage } };
    assert.equal(judgeGeneration("completion", 200, json, buf(answer), opts).store, true);
    assert.equal(judgeGeneration("completion", 400, json, buf(answer), opts).store, false);
    assert.equal(
      judgeGeneration("completion", 200, json, buf({ code: "x", status: 400 }), opts).store,
      false,
    );
    assert.equal(
      judgeGeneration("workflow", 200, json, buf({ data: { status: "succeeded" } }), opts).store,
      true,
    );
    for (const status of ["failed", "stopped", "partial-succeeded", "paused"]) {
      assert.equal(
        judgeGeneration("workflow", 200, json, buf({ data: { status } }), opts).store,
        false,
        status,
      );
    }
    assert.equal(
      judgeGeneration("completion", 200, { "content-type": "text/html" }, buf("<p>"), opts).store,
      false,
    );
    assert.equal(
      judgeGeneration("completion", 200, { ...json, "content-encoding": "gzip" }, buf(answer), opts).store,
      false,
    );
  });

  test("returns the stream without pings as the body to store", () => {
    const text = sse([msg("a"), end]);
    const v = judgeGeneration("completion", 200, stream, buf(text), opts);
    assert.ok(v.store && v.body);
    assert.equal(v.body.toString(), text.replace("event: ping\n\n", ""));
  });

  test("refuses responses carrying signed file URLs unless allowed", () => {
    const signed = "https://dify.example/files/f1/file-preview?timestamp=1700000000&nonce=ab12&sign=xyz%3D";
    const answer = buf({ event: "message", answer: `see ${signed}` });
    assert.equal(judgeGeneration("completion", 200, json, answer, opts).store, false);
    assert.equal(
      judgeGeneration("completion", 200, json, answer, { ...opts, allowSignedUrls: true }).store,
      true,
    );
    const withFile = sse([
      { event: "message_file", id: "f", type: "image", url: "/files/tools/x.png" },
      msg("a"),
      end,
    ]);
    assert.equal(judgeGeneration("chat", 200, stream, buf(withFile), opts).store, false);
  });

  test("stores app configuration as a 200 JSON object", () => {
    assert.equal(judgeAppConfig(200, json, buf({ user_input_form: [] })).store, true);
    assert.equal(judgeAppConfig(200, json, buf("[1]")).store, false);
    assert.equal(judgeAppConfig(404, json, buf({ code: "not_found" })).store, false);
  });
});

describe("usage of a stored response", () => {
  test("reads metadata.usage from a blocking answer or message_end, total_tokens from a workflow", () => {
    assert.deepEqual(
      usageOf(Buffer.from(JSON.stringify({ answer: "a", metadata: { usage } })), "application/json"),
      {
        tokens: 15,
        cost: 0.002,
        currency: "USD",
      },
    );
    assert.deepEqual(usageOf(Buffer.from(sse([msg("a"), end], pyDumps)), "text/event-stream")?.tokens, 15);
    assert.equal(
      usageOf(
        Buffer.from(JSON.stringify({ data: { status: "succeeded", total_tokens: 42 } })),
        "application/json",
      )?.tokens,
      42,
    );
    assert.equal(
      usageOf(
        Buffer.from(sse([{ event: "workflow_started", data: {} }, wf("succeeded")])),
        "text/event-stream",
      )?.tokens,
      42,
    );
    const chatflow = sse([{ event: "workflow_started", data: {} }, msg("a"), end, wf("succeeded")]);
    assert.equal(
      usageOf(Buffer.from(chatflow), "text/event-stream")?.cost,
      0.002,
      "message_end wins in a Chatflow",
    );
    assert.equal(usageOf(Buffer.from("{}"), "application/json"), undefined);
  });
});
