import { Redis } from "ioredis";
import { startRedis } from "../test/helpers/redis.js";
import { UpstreamLimiters } from "../proxy/resilience/upstream-limiter.js";
import { reconnectDelay } from "../proxy/cache/redis-client.js";
const r = await startRedis();
const client = new Redis(r.url, { maxRetriesPerRequest: 1, commandTimeout: 100, connectTimeout: 2000, enableOfflineQueue: false, retryStrategy: reconnectDelay });
client.on("error", () => {});
const cfg = { enabled: true, adaptive: false, initial: 3, min: 1, max: 10, maxQueue: 10, maxWait: 5000, latencyTolerance: 2, shared: true };
const ls = new UpstreamLimiters([{ name: "up", concurrency: cfg } as never], { redis: client, keyPrefix: "t:" });
ls.on("mode", (m) => console.log(new Date().toISOString(), "mode", m));
const l = ls.get("up")!;
const t0 = Date.now();
const wait = async (ms: number) => new Promise((r) => setTimeout(r, ms));
await wait(500);
console.log("stats", l.stats());
await r.stop();
await wait(300);
try { const s = await l.acquire(); s.release(); console.log("acq ok during down", l.stats().mode); } catch (e) { console.log("acq err", e); }
await wait(1000);
await r.restart();
for (let i = 0; i < 10; i++) { await wait(1000); console.log(i, l.stats().mode); }
await ls.close(); client.disconnect(); await r.stop();
