import assert from "node:assert/strict";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, test } from "node:test";
import { PluginError } from "../../proxy/plugins.js";
import { startGate } from "../helpers/cachegate.js";
import { request } from "../helpers/http.js";
import { startUpstream } from "../helpers/upstream.js";

const toClose: Array<{ close(): Promise<void> }> = [];
after(async () => {
  for (const c of toClose.reverse()) await c.close();
});

async function upstream() {
  let n = 0;
  const up = await startUpstream((_req, res) => {
    n++;
    const body = JSON.stringify({ n });
    // No cache headers at all, like Dify: only a plugin (or a route ttl) makes this cacheable.
    res.writeHead(200, { "content-type": "application/json", "content-length": Buffer.byteLength(body) });
    res.end(body);
  });
  toClose.push(up);
  return up;
}

/** Writes a plugin module (zod available as `z`) to a fresh directory and returns its path. */
function pluginFile(fileName: string, definition: string): string {
  const file = join(mkdtempSync(join(tmpdir(), "cg-plugin-")), fileName);
  const zod = JSON.stringify(new URL("../../node_modules/zod/index.js", import.meta.url).href);
  writeFileSync(file, `import { z } from ${zod};\nexport default ${definition};`);
  return file;
}

describe("plugins", () => {
  test("the example plugin caches its prefix, bypasses its never-path and stamps hits", async () => {
    const up = await upstream();
    const gate = await startGate({
      upstreams: [{ name: "up", url: up.url }],
      routes: [{ name: "all", upstream: "up" }],
      plugins: [
        {
          name: "request-tagger",
          config: { prefix: "/catalog/", neverPath: "/catalog/live", ttlSeconds: 30 },
        },
      ],
    });
    toClose.push({ close: () => gate.close(500) });
    const a = await request(`${gate.url}/catalog/items`);
    const b = await request(`${gate.url}/catalog/items`);
    assert.equal(a.headers["x-cache"], "MISS");
    assert.equal(b.headers["x-cache"], "HIT");
    assert.equal(b.headers["x-served-by-plugin"], "request-tagger");
    assert.equal(a.headers["x-served-by-plugin"], undefined);
    await request(`${gate.url}/catalog/live`);
    const live = await request(`${gate.url}/catalog/live`);
    assert.equal(live.headers["x-cache"], "BYPASS");
    await request(`${gate.url}/other`);
    assert.equal(
      (await request(`${gate.url}/other`)).headers["x-cache"],
      "MISS",
      "outside the prefix the route decides",
    );
    assert.equal(up.hits(), 5);
    // The plugin's tag reaches the entry: a purge by tag removes it.
    const purged = await gate.cache.invalidator.purge({ tags: ["catalog"] });
    assert.equal(purged.memory, 1);
    assert.equal((await request(`${gate.url}/catalog/items`)).headers["x-cache"], "MISS");
  });

  test("a plugin loaded from a file path runs with its own validated config", async () => {
    const up = await upstream();
    const file = pluginFile(
      "header-plugin.mjs",
      `{
         name: "header",
         configSchema: z.strictObject({ value: z.string() }),
         setup(api) {
           api.hook("onResponse", (_req, res) => { res.headers["x-plugin"] = api.config.value; return res; });
         },
       }`,
    );
    const gate = await startGate({
      upstreams: [{ name: "up", url: up.url }],
      routes: [{ name: "all", upstream: "up" }],
      plugins: [{ path: file, config: { value: "from-file" } }],
    });
    toClose.push({ close: () => gate.close(500) });
    assert.equal((await request(`${gate.url}/x`)).headers["x-plugin"], "from-file");
  });

  test("a response node:http refuses to write (a plugin's invalid header) is a 500 for that request only", async () => {
    const up = await upstream();
    const file = pluginFile(
      "bad-header-plugin.mjs",
      `{
         name: "bad-header",
         configSchema: z.strictObject({}),
         setup(api) {
           api.hook("onResponse", (req, res) => {
             if (req.path === "/bad") res.headers["x-bad"] = "line\\nbreak";
             return res;
           });
         },
       }`,
    );
    const gate = await startGate({
      upstreams: [{ name: "up", url: up.url }],
      routes: [{ name: "all", upstream: "up" }],
      plugins: [{ path: file }],
    });
    toClose.push({ close: () => gate.close(500) });
    const bad = await request(`${gate.url}/bad`);
    assert.equal(bad.status, 500);
    assert.equal(bad.json<{ error: { code: string } }>().error.code, "internal_error");
    assert.equal(bad.headers["x-bad"], undefined);
    const good = await request(`${gate.url}/good`);
    assert.equal(good.status, 200, "the process and its other requests are unaffected");
  });

  test("bad plugins stop the boot with a coded error", async () => {
    const up = await upstream();
    const base = { upstreams: [{ name: "up", url: up.url }], routes: [{ name: "all", upstream: "up" }] };
    const boot = (plugins: unknown[]) => startGate({ ...base, plugins });
    await assert.rejects(
      boot(["no-such-plugin"]),
      (e: unknown) => e instanceof PluginError && e.code === "plugin_not_found",
    );
    await assert.rejects(
      boot([{ name: "request-tagger", config: { ttlSeconds: -1 } }]),
      (e: unknown) =>
        e instanceof PluginError &&
        e.code === "plugin_config_invalid" &&
        /plugins\[0\]\.config\.ttlSeconds/.test(e.message),
    );
    const file = pluginFile(
      "bad-hook.mjs",
      `{ name: "bad", configSchema: { safeParse: (v) => ({ success: true, data: v }) },
         setup(api) { api.hook("onBeforeEverything", () => {}); } }`,
    );
    await assert.rejects(
      boot([file]),
      (e: unknown) => e instanceof PluginError && e.code === "plugin_hook_unknown",
    );
  });
});
