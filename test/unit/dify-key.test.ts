import assert from "node:assert/strict";
import { describe, test } from "node:test";
import {
  appConfigKey,
  canonicalBody,
  generationKey,
  hasFiles,
  isBlankConversation,
  keyTarget,
  responseMode,
} from "../../plugins/dify/key.js";
import { endpointFor, subpathOf } from "../../plugins/dify/policy.js";

const key = (body: Record<string, unknown>, perUser = true, path = "/v1/completion-messages") =>
  generationKey({ method: "POST", path, body, perUser });

describe("dify key recipe", () => {
  const base = { inputs: { query: "hi", lang: "fr" }, user: "alice", response_mode: "blocking" };

  test("ignores user-invisible fields: trace_id, auto_generate_name, retriever_from", () => {
    assert.equal(
      key({ ...base, trace_id: "abc", auto_generate_name: true, retriever_from: "api" }),
      key(base),
    );
  });

  test("treats absent, null, empty and blank conversation_id alike, and absent, null and [] files alike", () => {
    const k = key(base);
    for (const conversation_id of [undefined, null, "", "  \t"])
      assert.equal(key({ ...base, conversation_id }), k);
    for (const files of [undefined, null, []]) assert.equal(key({ ...base, files }), k);
    assert.notEqual(key({ ...base, conversation_id: "c-1" }), k);
    assert.ok(isBlankConversation(" ") && !isBlankConversation("c-1"));
  });

  test("sorts keys recursively and ignores whitespace, but keeps string values exactly", () => {
    const reordered = JSON.parse('{ "user": "alice", "inputs": { "lang": "fr", "query": "hi" } }') as Record<
      string,
      unknown
    >;
    assert.equal(key(reordered), key(base), "absent response_mode is blocking");
    assert.notEqual(key({ ...base, inputs: { query: "hi ", lang: "fr" } }), key(base));
    assert.notEqual(key({ ...base, inputs: { query: "Hi", lang: "fr" } }), key(base));
  });

  test("keys on user unless shared, on the response mode and on the path (workflow version)", () => {
    assert.notEqual(key({ ...base, user: "bob" }), key(base));
    assert.equal(key({ ...base, user: "bob" }, false), key(base, false));
    assert.notEqual(key({ ...base, response_mode: "streaming" }), key(base));
    assert.notEqual(key(base, true, "/v1/workflows/a/run"), key(base, true, "/v1/workflows/b/run"));
    assert.equal(responseMode({}), "blocking");
    assert.equal(responseMode({ response_mode: null }), "blocking");
    assert.equal(responseMode({ response_mode: "streaming" }), "streaming");
  });

  test("the canonical body drops the keyed-apart fields", () => {
    assert.equal(
      canonicalBody({ ...base, files: null, conversation_id: "", trace_id: "t" }),
      '{"inputs":{"lang":"fr","query":"hi"}}',
    );
  });

  test("finds files in `files` and as file objects among the inputs", () => {
    const file = { type: "image", transfer_method: "local_file", upload_file_id: "f-1" };
    assert.equal(hasFiles(base), false);
    assert.equal(hasFiles({ ...base, files: null }), false);
    assert.equal(hasFiles({ ...base, files: [file] }), true);
    assert.equal(hasFiles({ ...base, inputs: { doc: file } }), true);
    assert.equal(hasFiles({ ...base, inputs: { docs: [file] } }), true);
    assert.equal(hasFiles({ ...base, inputs: { note: { transfer: "x" } } }), false);
  });

  test("the keyed target drops only the ignored query parameters", () => {
    const q = new URLSearchParams("user=alice&trace_id=t&x=1");
    assert.equal(keyTarget("/v1/parameters", q, ["user", "trace_id"]), "/v1/parameters?x=1");
    assert.equal(keyTarget("/v1/parameters", new URLSearchParams("user=a"), ["user"]), "/v1/parameters");
    assert.equal(appConfigKey("/v1/meta"), appConfigKey("/v1/meta"));
    assert.notEqual(appConfigKey("/v1/meta"), appConfigKey("/v1/info"));
  });
});

describe("dify endpoint table", () => {
  test("classifies generation, app configuration and everything else", () => {
    assert.deepEqual(endpointFor("POST", "/completion-messages"), { action: "generate", kind: "completion" });
    assert.deepEqual(endpointFor("POST", "/workflows/run"), { action: "generate", kind: "workflow" });
    assert.deepEqual(endpointFor("POST", "/workflows/abc/run"), { action: "generate", kind: "workflow" });
    assert.deepEqual(endpointFor("POST", "/chat-messages"), { action: "generate", kind: "chat" });
    for (const p of ["/parameters", "/meta", "/info", "/site"]) {
      assert.equal(endpointFor("GET", p).action, "app_config");
    }
    for (const [m, p] of [
      ["POST", "/chat-messages/t1/stop"],
      ["POST", "/completion-messages/t1/stop"],
      ["POST", "/workflows/tasks/t1/stop"],
      ["GET", "/workflow/r1/events"],
      ["GET", "/conversations"],
      ["GET", "/messages/m1/suggested"],
      ["GET", "/workflows/run/r1"],
      ["POST", "/messages/m1/feedbacks"],
      ["DELETE", "/conversations/c1"],
      ["POST", "/files/upload"],
      ["GET", "/datasets"],
      ["POST", "/parameters"],
      ["GET", "/completion-messages"],
    ] as const) {
      assert.equal(endpointFor(m, p).action, "bypass", `${m} ${p}`);
    }
    const annotation = endpointFor("POST", "/apps/annotations");
    assert.ok(annotation.action === "bypass" && annotation.purgeKey === true);
    assert.ok(endpointFor("GET", "/apps/annotations").action === "bypass");
    assert.equal((endpointFor("GET", "/apps/annotations") as { purgeKey?: boolean }).purgeKey, undefined);
  });

  test("matches the prefix on a segment boundary", () => {
    assert.equal(subpathOf("/v1/meta", "/v1"), "/meta");
    assert.equal(subpathOf("/v10/meta", "/v1"), undefined);
    assert.equal(subpathOf("/console/api/apps", "/v1"), undefined);
    assert.equal(subpathOf("/meta", ""), "/meta");
  });
});
