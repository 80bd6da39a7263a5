// The dify plugin end to end: the official Node SDK (dify-client@2.3.2) → cachegate → a Dify-shaped upstream.
import assert from "node:assert/strict";
import http from "node:http";
import type { Readable } from "node:stream";
import { after, describe, test } from "node:test";
import { ChatClient, CompletionClient, type DifyClient } from "dify-client";
import { loadConfig } from "../../config/load.js";
import { startCachegate } from "../../proxy/server.js";
import { startGate, type TestGate } from "../helpers/cachegate.js";
import { type DifyStub, startDifyUpstream, USAGE, WORKFLOW_TOKENS } from "../helpers/dify-upstream.js";
import { readFrames, request, sleep } from "../helpers/http.js";

// axios honours HTTP(S)_PROXY: loopback must never go through one.
process.env.NO_PROXY = "127.0.0.1,localhost";
process.env.no_proxy = "127.0.0.1,localhost";

const KEY_A = "app-key-A";
const KEY_B = "app-key-B";

const toClose: Array<{ close(): Promise<void> }> = [];
after(async () => {
  for (const c of toClose.reverse()) await c.close();
});

async function setup(config: Record<string, unknown> = {}): Promise<{ up: DifyStub; gate: TestGate }> {
  const up = await startDifyUpstream();
  toClose.push(up);
  const gate = await startGate({
    upstreams: [{ name: "dify", url: up.url }],
    routes: [{ name: "default", upstream: "dify" }],
    plugins: [{ name: "dify", config }],
  });
  toClose.push({ close: () => gate.close(500) });
  return { up, gate };
}

/** What the SDK's axios calls resolve to (index.d.ts types them as any). */
interface SdkResponse {
  status: number;
  headers: Record<string, string | undefined>;
  data: unknown;
}

const completion = (gate: TestGate, key = KEY_A) => new CompletionClient(key, `${gate.url}/v1`);

async function complete(
  client: CompletionClient,
  inputs: Record<string, unknown>,
  user = "alice",
  stream = false,
  files: unknown = null,
): Promise<SdkResponse> {
  return (await client.createCompletionMessage(inputs, user, stream, files as null)) as SdkResponse;
}

/** The SDK's own runWorkflow (in index.js, missing from its index.d.ts). */
async function runWorkflow(
  client: CompletionClient,
  inputs: Record<string, unknown>,
  user: string,
  stream: boolean,
): Promise<SdkResponse> {
  const sdk = client as unknown as { runWorkflow(i: unknown, u: string, s: boolean): Promise<SdkResponse> };
  return sdk.runWorkflow(inputs, user, stream);
}

function sdkCall(client: DifyClient, path: string, data: unknown, stream = false): Promise<SdkResponse> {
  return client.sendRequest("POST", path, data, undefined, stream) as Promise<SdkResponse>;
}

async function text(res: SdkResponse): Promise<string> {
  let out = "";
  for await (const chunk of res.data as Readable)
    out += Buffer.isBuffer(chunk) ? chunk.toString("utf8") : chunk;
  return out;
}

/** The frames of a stream as Dify wrote them: `data:` frames parsed as JSON, pings kept as the string "ping". */
function frames(body: string): Array<Record<string, unknown> | "ping"> {
  return body
    .split("\n\n")
    .filter((f) => f !== "")
    .map((f) =>
      f === "event: ping" ? "ping" : (JSON.parse(f.replace(/^data: /, "")) as Record<string, unknown>),
    );
}

async function metric(gate: TestGate, name: string, labels = ""): Promise<number> {
  const body = (await request(`${gate.adminUrl}/metrics`)).text;
  const escaped = `${name}${labels ? `{${labels}}` : ""}`.replace(/[{}]/g, "\\$&");
  const m = new RegExp(`^${escaped} (\\S+)$`, "m").exec(body);
  return m ? Number(m[1]) : 0;
}

function post(gate: TestGate, path: string, body: unknown, key = KEY_A) {
  return request(`${gate.url}${path}`, {
    method: "POST",
    headers: { authorization: `Bearer ${key}`, "content-type": "application/json" },
    body: JSON.stringify(body),
  });
}

describe("dify plugin", () => {
  test("answers a repeated blocking completion from the cache with one upstream call", async () => {
    const { up, gate } = await setup();
    const client = completion(gate);
    const a = await complete(client, { query: "hello" });
    const b = await complete(client, { query: "hello" });
    assert.equal(a.headers["x-cache"], "MISS");
    assert.equal(b.headers["x-cache"], "HIT");
    assert.deepEqual(b.data, a.data, "the stored answer, ids included");
    assert.equal((a.data as { answer: string }).answer, "Echo: hello — ok");
    assert.equal(up.count("POST", "/v1/completion-messages"), 1);
  });

  test("replays a stored stream as text/event-stream with the same frames, pings dropped", async () => {
    const { up, gate } = await setup();
    const client = completion(gate);
    for (const scenario of ["", "spaced"]) {
      const first = await complete(client, { query: "stream me", scenario }, "alice", true);
      const live = await text(first);
      const second = await complete(client, { query: "stream me", scenario }, "alice", true);
      const replay = await text(second);
      assert.equal(first.headers["x-cache"], "MISS");
      assert.equal(second.headers["x-cache"], "HIT");
      assert.match(String(second.headers["content-type"]), /^text\/event-stream/);
      const liveFrames = frames(live);
      assert.ok(liveFrames.includes("ping"), "the upstream sent a keep-alive");
      assert.deepEqual(
        frames(replay),
        liveFrames.filter((f) => f !== "ping"),
      );
      assert.ok(!replay.includes("event: ping"));
      if (scenario === "spaced")
        assert.match(replay, /"event": "message_end"/, "stored as received, not rewritten");
    }
    assert.equal(up.count("POST", "/v1/completion-messages"), 2);
  });

  test("keeps response_mode in the key: blocking and streaming never answer each other", async () => {
    const { up, gate } = await setup();
    const client = completion(gate);
    await text(await complete(client, { query: "modes" }, "alice", true));
    const blocking = await complete(client, { query: "modes" }, "alice", false);
    assert.equal(blocking.headers["x-cache"], "MISS");
    assert.equal(typeof (blocking.data as { answer?: unknown }).answer, "string");
    // Absent response_mode means blocking (Dify's default): it shares the blocking entry.
    const absent = await post(gate, "/v1/completion-messages", { inputs: { query: "modes" }, user: "alice" });
    assert.equal(absent.headers["x-cache"], "HIT");
    assert.equal(up.count("POST", "/v1/completion-messages"), 2);
  });

  test("keys on the canonical body: ignored fields, blank conversation_id and empty files share an entry", async () => {
    const { up, gate } = await setup();
    const base = { inputs: { query: "canon", n: 1 }, user: "alice", response_mode: "blocking" };
    const first = await post(gate, "/v1/completion-messages", { ...base, files: null });
    assert.equal(first.headers["x-cache"], "MISS");
    const variants: unknown[] = [
      { ...base },
      { ...base, files: [], conversation_id: "" },
      { ...base, conversation_id: "   ", trace_id: "t-1", auto_generate_name: false, retriever_from: "api" },
      { user: "alice", response_mode: "blocking", inputs: { n: 1, query: "canon" } },
    ];
    for (const body of variants) {
      assert.equal(
        (await post(gate, "/v1/completion-messages", body)).headers["x-cache"],
        "HIT",
        JSON.stringify(body),
      );
    }
    const traced = await post(gate, "/v1/completion-messages?trace_id=abc", base);
    assert.equal(traced.headers["x-cache"], "HIT", "?trace_id is observability only");
    const other = await post(gate, "/v1/completion-messages", { ...base, inputs: { query: "canon", n: 2 } });
    assert.equal(other.headers["x-cache"], "MISS");
    assert.equal(up.count("POST", "/v1/completion-messages"), 2);
  });

  test("never shares entries between API keys", async () => {
    const { up, gate } = await setup({ shareAcrossUsers: true });
    const a1 = await complete(completion(gate, KEY_A), { query: "secret" });
    const b1 = await complete(completion(gate, KEY_B), { query: "secret" });
    const a2 = await complete(completion(gate, KEY_A), { query: "secret" });
    const b2 = await complete(completion(gate, KEY_B), { query: "secret" });
    assert.deepEqual(
      [a1, b1, a2, b2].map((r) => r.headers["x-cache"]),
      ["MISS", "MISS", "HIT", "HIT"],
    );
    assert.notEqual((a1.data as { id: string }).id, (b1.data as { id: string }).id);
    assert.equal((b2.data as { id: string }).id, (b1.data as { id: string }).id);
    assert.equal(up.count("POST", "/v1/completion-messages"), 2);
  });

  test("keys on user by default, and shares between users with shareAcrossUsers", async () => {
    const perUser = await setup();
    await complete(completion(perUser.gate), { query: "q" }, "alice");
    const bob = await complete(completion(perUser.gate), { query: "q" }, "bob");
    assert.equal(bob.headers["x-cache"], "MISS");
    assert.equal(perUser.up.count("POST", "/v1/completion-messages"), 2);

    const shared = await setup({ shareAcrossUsers: true });
    await complete(completion(shared.gate), { query: "q" }, "alice");
    const bobShared = await complete(completion(shared.gate), { query: "q" }, "bob");
    assert.equal(bobShared.headers["x-cache"], "HIT");
    assert.equal(shared.up.count("POST", "/v1/completion-messages"), 1);
  });

  test("bypasses requests that carry files, in files or as file inputs", async () => {
    const { up, gate } = await setup();
    const client = completion(gate);
    const image = { type: "image", transfer_method: "remote_url", url: "https://example.com/cat.png" };
    for (let i = 0; i < 2; i++) {
      const r = await complete(client, { query: "describe" }, "alice", false, [image]);
      assert.equal(r.headers["x-cache"], "BYPASS");
      const asInput = await complete(client, { query: "describe", picture: image }, "alice");
      assert.equal(asInput.headers["x-cache"], "BYPASS");
    }
    assert.equal(up.count("POST", "/v1/completion-messages"), 4);
  });

  test("bypasses chat-messages by default, and with a conversation_id even when chat caching is on", async () => {
    const off = await setup();
    const chat = new ChatClient(KEY_A, `${off.gate.url}/v1`);
    for (let i = 0; i < 2; i++) {
      const r = (await chat.createChatMessage({}, "hi", "alice")) as SdkResponse;
      assert.equal(r.headers["x-cache"], "BYPASS");
    }
    assert.equal(off.up.count("POST", "/v1/chat-messages"), 2);

    const on = await setup({ cacheChatMessages: true });
    const chatOn = new ChatClient(KEY_A, `${on.gate.url}/v1`);
    const first = (await chatOn.createChatMessage({}, "faq", "alice")) as SdkResponse;
    const again = (await chatOn.createChatMessage({}, "faq", "alice")) as SdkResponse;
    assert.equal(first.headers["x-cache"], "MISS");
    assert.equal(again.headers["x-cache"], "HIT");
    const conversation = (first.data as { conversation_id: string }).conversation_id;
    for (let i = 0; i < 2; i++) {
      const followUp = (await chatOn.createChatMessage(
        {},
        "faq",
        "alice",
        false,
        conversation,
      )) as SdkResponse;
      assert.equal(followUp.headers["x-cache"], "BYPASS");
    }
    const otherUser = (await chatOn.createChatMessage({}, "faq", "bob")) as SdkResponse;
    assert.equal(otherUser.headers["x-cache"], "MISS", "chat always keys on user");
    assert.equal(on.up.count("POST", "/v1/chat-messages"), 4);
  });

  test("does not store an error stream sent with HTTP 200, nor non-2xx answers", async () => {
    const { up, gate } = await setup();
    const client = completion(gate);
    for (let i = 0; i < 2; i++) {
      const r = await complete(client, { query: "boom", scenario: "error" }, "alice", true);
      assert.equal(r.status, 200);
      assert.equal(r.headers["x-cache"], "MISS");
      assert.match(await text(r), /"event":"error"/);
    }
    assert.equal(up.count("POST", "/v1/completion-messages"), 2);
    for (const scenario of ["error", "busy"]) {
      for (let i = 0; i < 2; i++) {
        const r = await post(gate, "/v1/completion-messages", { inputs: { scenario }, user: "alice" });
        assert.equal(r.status, scenario === "busy" ? 429 : 400);
        assert.equal(r.headers["x-cache"], "MISS");
      }
    }
    assert.equal(up.count("POST", "/v1/completion-messages"), 6);
    const unknownKey = await post(
      gate,
      "/v1/completion-messages",
      { inputs: {}, user: "a" },
      "app-key-unknown",
    );
    assert.equal(unknownKey.status, 401);
  });

  test("stores a succeeded workflow run, never a failed one, and keys /workflows/{id}/run apart", async () => {
    const { up, gate } = await setup();
    const client = completion(gate);
    for (const stream of [false, true]) {
      const failed = [
        await runWorkflow(client, { query: "x", status: "failed" }, "alice", stream),
        await runWorkflow(client, { query: "x", status: "failed" }, "alice", stream),
      ];
      assert.deepEqual(
        failed.map((r) => r.headers["x-cache"]),
        ["MISS", "MISS"],
      );
      if (stream) for (const r of failed) await text(r);
      const ok1 = await runWorkflow(client, { query: "x" }, "alice", stream);
      if (stream) await text(ok1);
      const ok2 = await runWorkflow(client, { query: "x" }, "alice", stream);
      assert.equal(ok2.headers["x-cache"], "HIT");
      if (stream) assert.match(await text(ok2), /"event":"workflow_finished"/);
      else assert.equal((ok2.data as { data: { status: string } }).data.status, "succeeded");
    }
    assert.equal(up.count("POST", "/v1/workflows/run"), 6);
    const pinned = await sdkCall(client, "/workflows/wf-2/run", { inputs: { query: "x" }, user: "alice" });
    assert.equal(pinned.headers["x-cache"], "MISS", "another workflow version");
    assert.equal((pinned.data as { data: { workflow_id: string } }).data.workflow_id, "wf-2");
  });

  test("counts tokens and cost saved on every hit, from the stored usage", async () => {
    const { gate } = await setup();
    const client = completion(gate);
    await complete(client, { query: "paid" });
    await complete(client, { query: "paid" });
    await complete(client, { query: "paid" });
    await text(await complete(client, { query: "paid" }, "alice", true));
    await text(await complete(client, { query: "paid" }, "alice", true));
    await runWorkflow(client, { query: "w" }, "alice", false);
    await runWorkflow(client, { query: "w" }, "alice", false);
    const hits = 3; // two blocking, one streaming (usage read from message_end)
    assert.equal(
      await metric(gate, "cachegate_dify_tokens_saved_total"),
      hits * USAGE.total_tokens + WORKFLOW_TOKENS,
    );
    const cost = await metric(gate, "cachegate_dify_cost_saved_total", 'currency="USD"');
    assert.ok(Math.abs(cost - hits * Number(USAGE.total_price)) < 1e-9, String(cost));
    assert.equal(await metric(gate, "cachegate_dify_requests_total", 'kind="completion",result="hit"'), 3);
    assert.equal(await metric(gate, "cachegate_dify_requests_total", 'kind="completion",result="miss"'), 2);
    assert.equal(await metric(gate, "cachegate_dify_requests_total", 'kind="workflow",result="hit"'), 1);
  });

  test("coalesces 10 identical concurrent streaming calls into one upstream call, all streams complete", async () => {
    const { up, gate } = await setup();
    const client = completion(gate);
    const results = await Promise.all(
      Array.from({ length: 10 }, async () => {
        const r = await complete(client, { query: "together now", scenario: "slow" }, "alice", true);
        return { cache: r.headers["x-cache"], body: await text(r) };
      }),
    );
    assert.equal(up.count("POST", "/v1/completion-messages"), 1);
    assert.deepEqual(results.map((r) => r.cache).sort(), [...Array(9).fill("HIT"), "MISS"].sort());
    const expected = frames(results.find((r) => r.cache === "MISS")?.body ?? "").filter((f) => f !== "ping");
    for (const r of results) {
      const got = frames(r.body).filter((f) => f !== "ping");
      assert.deepEqual(got, expected);
      assert.equal((got[got.length - 1] as Record<string, unknown>).event, "message_end");
    }
  });

  test("caches GET /parameters per API key, whatever the user query parameter", async () => {
    const { up, gate } = await setup();
    const a = new CompletionClient(KEY_A, `${gate.url}/v1`);
    const b = new CompletionClient(KEY_B, `${gate.url}/v1`);
    const r1 = (await a.getApplicationParameters("alice")) as SdkResponse;
    const r2 = (await a.getApplicationParameters("bob")) as SdkResponse;
    const r3 = (await b.getApplicationParameters("alice")) as SdkResponse;
    assert.deepEqual(
      [r1, r2, r3].map((r) => r.headers["x-cache"]),
      ["MISS", "HIT", "MISS"],
    );
    assert.equal((r3.data as { key: string }).key, KEY_B);
    assert.equal(up.count("GET", "/v1/parameters"), 2);
    const conversations = await request(`${gate.url}/v1/conversations?user=alice`, {
      headers: { authorization: `Bearer ${KEY_A}` },
    });
    assert.equal(conversations.headers["x-cache"], "BYPASS", "per-user lists are never cached");
  });

  test("purges an API key's entries after a successful annotation write", async () => {
    const { up, gate } = await setup();
    const get = (key: string) =>
      request(`${gate.url}/v1/parameters?user=alice`, { headers: { authorization: `Bearer ${key}` } });
    await get(KEY_A);
    await get(KEY_B);
    assert.equal((await get(KEY_A)).headers["x-cache"], "HIT");
    const write = await post(gate, "/v1/apps/annotations", { question: "q", answer: "a" });
    assert.equal(write.status, 200);
    assert.equal(write.headers["x-cache"], "BYPASS");
    await sleep(50); // the purge is not awaited by the response
    assert.equal((await get(KEY_A)).headers["x-cache"], "MISS");
    assert.equal((await get(KEY_B)).headers["x-cache"], "HIT", "another key's entries stay");
    assert.equal(up.count("GET", "/v1/parameters"), 3);
  });

  test("stores nothing when the client aborts mid-stream or the upstream cuts the stream", async () => {
    const { up, gate } = await setup();
    const body = (scenario: string) =>
      JSON.stringify({ inputs: { query: "partial", scenario }, user: "alice", response_mode: "streaming" });
    const headers = { authorization: `Bearer ${KEY_A}`, "content-type": "application/json" };

    // Client abort: read one frame, then hang up.
    await new Promise<void>((resolve, reject) => {
      const req = http.request(`${gate.url}/v1/completion-messages`, {
        method: "POST",
        headers,
        agent: false,
      });
      req.on("response", (res) => {
        res.once("data", () => {
          req.destroy();
          resolve();
        });
      });
      req.on("error", reject);
      req.end(body("slow"));
    });
    await sleep(400); // the upstream would have finished by now
    const afterAbort = await request(`${gate.url}/v1/completion-messages`, {
      method: "POST",
      headers,
      body: body("slow"),
    });
    assert.equal(afterAbort.headers["x-cache"], "MISS");
    assert.match(afterAbort.text, /message_end/);

    // Upstream cut: the client sees a broken stream; nothing is stored.
    for (let i = 0; i < 2; i++) {
      await request(`${gate.url}/v1/completion-messages`, {
        method: "POST",
        headers,
        body: body("cut"),
      }).catch(() => undefined);
    }
    assert.equal(up.count("POST", "/v1/completion-messages"), 4);
  });

  test("paces a replayed stream with replayPacing", async () => {
    const { gate } = await setup({ replayPacing: "60ms" });
    const opts = {
      method: "POST",
      headers: { authorization: `Bearer ${KEY_A}`, "content-type": "application/json" },
      body: JSON.stringify({ inputs: { query: "one two three" }, user: "alice", response_mode: "streaming" }),
    };
    const live = await readFrames(`${gate.url}/v1/completion-messages`, opts);
    const replay = await readFrames(`${gate.url}/v1/completion-messages`, opts);
    assert.equal(replay.headers["x-cache"], "HIT");
    assert.equal(replay.headers["content-length"], undefined);
    assert.equal(replay.frames.length, live.frames.length - 1, "the ping is gone");
    const first = replay.frames[0]?.at ?? 0;
    const last = replay.frames[replay.frames.length - 1]?.at ?? 0;
    assert.ok(last - first >= (replay.frames.length - 1) * 60 - 15, `frames spread over ${last - first} ms`);
  });

  test("one flag is enough: --upstream URL --plugin dify caches Dify calls", async () => {
    const up = await startDifyUpstream();
    toClose.push(up);
    const { config } = loadConfig(
      {
        upstream: up.url,
        plugin: ["dify"],
        host: "127.0.0.1",
        port: "0",
        adminPort: "0",
        logLevel: "silent",
      },
      {},
    );
    const gate = await startCachegate(config, { defaultMetrics: false });
    toClose.push({ close: () => gate.close(500) });
    const client = new CompletionClient(KEY_A, `http://127.0.0.1:${gate.port}/v1`);
    await complete(client, { query: "one flag" });
    const again = await complete(client, { query: "one flag" });
    assert.equal(again.headers["x-cache"], "HIT");
    const params = new CompletionClient(KEY_A, `http://127.0.0.1:${gate.port}/v1`);
    await params.getApplicationParameters("alice");
    assert.equal(((await params.getApplicationParameters("alice")) as SdkResponse).headers["x-cache"], "HIT");
    assert.equal(up.count("POST", "/v1/completion-messages"), 1);
  });

  test("rejects an unknown or invalid config key at boot", async () => {
    const up = await startDifyUpstream();
    toClose.push(up);
    const boot = (config: Record<string, unknown>) =>
      startGate({
        upstreams: [{ name: "dify", url: up.url }],
        routes: [{ name: "default", upstream: "dify" }],
        plugins: [{ name: "dify", config }],
      });
    await assert.rejects(boot({ ttl: "1h" }), /plugin_config_invalid|unknown|Unrecognized/i);
    await assert.rejects(boot({ appConfigTtl: "10m" }), /appConfigTtl/);
  });
});
