// Config reload in place: new routes, rules and limits apply to new requests; in-flight requests and the cache
// survive; an invalid config is refused with its message and the running config stays.
import assert from "node:assert/strict";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import pino from "pino";
import { loadConfig } from "../../config/load.js";
import { startCachegate } from "../../proxy/server.js";
import { request, sleep } from "../helpers/http.js";
import { startUpstream } from "../helpers/upstream.js";

test("a reload swaps routes and rules without dropping in-flight requests or the cache, and refuses a bad file", async () => {
  const a = await startUpstream((req, res) => {
    const body = JSON.stringify({ from: "a", url: req.url });
    const send = () => {
      res.writeHead(200, { "content-type": "application/json", "cache-control": "max-age=60" });
      res.end(body);
    };
    if (req.url === "/slow") setTimeout(send, 500);
    else send();
  });
  const b = await startUpstream((req, res) => {
    res.writeHead(200, { "content-type": "application/json" });
    res.end(JSON.stringify({ from: "b", url: req.url }));
  });
  const dir = mkdtempSync(join(tmpdir(), "cg-reload-"));
  const file = join(dir, "config.yaml");
  const write = (text: string) => writeFileSync(file, text);
  const base = `listen: { host: 127.0.0.1, port: 0 }
admin: { host: 127.0.0.1, port: 0, token: reload-test-token-0123 }
log: { level: silent }
upstreams:
  - { name: a, url: "${a.url}" }
  - { name: b, url: "${b.url}" }
`;
  write(`${base}routes:\n  - { name: all, upstream: a }\n`);
  const read = () => loadConfig({ config: file }, {}).config;
  const gate = await startCachegate(read(), {
    logger: pino({ level: "silent" }),
    defaultMetrics: false,
    reloadConfig: read,
  });
  const url = `http://127.0.0.1:${gate.port}`;
  const admin = `http://127.0.0.1:${gate.adminPort}`;
  const reload = () =>
    request(`${admin}/reload`, {
      method: "POST",
      headers: { authorization: "Bearer reload-test-token-0123" },
    });
  try {
    assert.equal((await request(`${url}/cached`)).headers["x-cache"], "MISS");
    assert.equal((await request(`${url}/cached`)).headers["x-cache"], "HIT");
    const inflight = request(`${url}/slow`);
    await sleep(100);

    // New: /v2/ goes to upstream b with a forced ttl; a per-client limit of 2 requests per 10 s on it.
    write(`${base}routes:
  - { name: v2, match: { pathPrefix: /v2/ }, upstream: b, cache: { mode: override, ttl: 60s }, limits: { enabled: true, requests: 2, per: 10s } }
  - { name: all, upstream: a }
`);
    const r = await reload();
    assert.equal(r.status, 200);
    assert.deepEqual(r.json(), { reloaded: true, restartRequired: [] });

    const slow = await inflight;
    assert.equal(slow.status, 200, "the request that started before the reload finished");
    assert.equal(slow.json().from, "a");
    assert.equal((await request(`${url}/cached`)).headers["x-cache"], "HIT", "the cache survived the reload");
    const v2 = await request(`${url}/v2/x`);
    assert.equal(v2.json().from, "b", "the new route is in force");
    assert.equal((await request(`${url}/v2/x`)).headers["x-cache"], "HIT", "its forced ttl too");
    assert.equal((await request(`${url}/v2/x`)).status, 429, "and its limits");
    assert.equal(gate.current.routes.length, 2);

    // A broken file is refused with the loader's message; the running config stays.
    write(`${base}routes:\n  - { name: all, upstream: nope }\n`);
    const bad = await reload();
    assert.equal(bad.status, 400);
    assert.match(bad.text, /routes\[0\]\.upstream: unknown upstream \\"nope\\"/);
    assert.equal(gate.current.routes.length, 2, "the running config stays");
    assert.equal((await request(`${url}/plain`)).json().from, "a");

    // Changing a start-only key is reported, and the rest still applies.
    write(`${base.replace("port: 0 }", "port: 1 }")}routes:\n  - { name: all, upstream: b }\n`);
    const partial = await reload();
    assert.deepEqual(partial.json<{ restartRequired: string[] }>().restartRequired, ["listen"]);
    assert.equal((await request(`${url}/z`)).json().from, "b");
  } finally {
    await gate.close(500);
    await a.close();
    await b.close();
  }
});
