// README's metrics table lists every cachegate_* metric a running instance (with the Dify plugin) registers.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";
import { startGate } from "../helpers/cachegate.js";
import { request } from "../helpers/http.js";
import { echoHandler, startUpstream } from "../helpers/upstream.js";

test("every exported cachegate_* metric is documented in README's metrics table", async () => {
  const up = await startUpstream(echoHandler);
  const gate = await startGate({
    upstreams: [{ name: "up", url: up.url }],
    routes: [{ name: "all", upstream: "up" }],
    plugins: ["dify"],
    limits: { enabled: true },
  });
  try {
    const text = (await request(`${gate.adminUrl}/metrics`)).text;
    const exported = new Set([...text.matchAll(/^# TYPE (cachegate_\w+) /gm)].map((m) => m[1] as string));
    assert.ok(exported.size > 15, `found ${exported.size} metrics`);
    const readme = readFileSync(new URL("../../README.md", import.meta.url), "utf8");
    const documented = new Set(
      readme
        .split("\n")
        .filter((l) => l.startsWith("| `cachegate_"))
        .map((l) => /`(cachegate_\w+)`/.exec(l)?.[1]),
    );
    const missing = [...exported].filter((m) => !documented.has(m));
    assert.deepEqual(missing, [], `undocumented metrics: ${missing.join(", ")}`);
  } finally {
    await gate.close(500);
    await up.close();
  }
});
