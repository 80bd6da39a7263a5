import { Redis } from "ioredis";
import { startRedis } from "../test/helpers/redis.js";
import { Bottleneck } from "../proxy/resilience/bottleneck.js";
const r = await startRedis();
const client = new Redis(r.url, { maxRetriesPerRequest: 1, commandTimeout: 100, enableOfflineQueue: false });
await new Promise((res) => client.once("ready", res));
const connection = new Bottleneck.IORedisConnection({ client: client.duplicate() });
const b = new Bottleneck({ maxConcurrent: 64, id: "{cachegate}:bench", datastore: "ioredis", connection, clearDatastore: true });
await b.ready();
for (const conc of [1, 50]) {
  const N = conc === 1 ? 500 : 3000;
  let started = 0; let done = 0;
  const t0 = performance.now(); const c0 = process.cpuUsage();
  await new Promise<void>((res) => {
    const next = () => { if (started >= N) return; started++; b.schedule(() => Promise.resolve()).then(() => { if (++done === N) res(); else next(); }); };
    for (let i = 0; i < conc; i++) next();
  });
  const ms = performance.now() - t0; const c = process.cpuUsage(c0);
  console.log(`clustered conc ${conc}: ${(N / ms * 1000).toFixed(0)} jobs/s, ${((c.user + c.system) / N).toFixed(0)} µs CPU/job (this process)`);
}
const local = new Bottleneck({ maxConcurrent: 64 });
for (const conc of [1, 50]) {
  const N = 3000; let started = 0; let done = 0;
  const t0 = performance.now(); const c0 = process.cpuUsage();
  await new Promise<void>((res) => {
    const next = () => { if (started >= N) return; started++; local.schedule(() => Promise.resolve()).then(() => { if (++done === N) res(); else next(); }); };
    for (let i = 0; i < conc; i++) next();
  });
  const ms = performance.now() - t0; const c = process.cpuUsage(c0);
  console.log(`local patched conc ${conc}: ${(N / ms * 1000).toFixed(0)} jobs/s, ${((c.user + c.system) / N).toFixed(0)} µs CPU/job`);
}
await connection.disconnect(false); client.disconnect(); await r.stop();
process.exit(0);
