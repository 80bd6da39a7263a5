// Uncacheable-URL benchmark: concurrent clients on one URL whose responses cannot be stored, in front of a slow
// origin, through cachegate with hit-for-miss off (`cache.hitForMiss: 0`: every miss waits for the one in flight,
// learns that its response cannot be stored, and only then goes upstream) and on (the default: once the first
// response proved the URL uncacheable, misses go upstream at once, in parallel).
// Both cachegates run in this process (the load is a few hundred requests/s: latency, not CPU, is measured),
// alternately (ABBA), against one node:http origin on loopback. Prints req/s, p50/p99 latency and origin requests.
//
//   npm run bench:uncacheable   UNCACHEABLE_ORIGIN_MS=100 UNCACHEABLE_CONNECTIONS=20 UNCACHEABLE_DURATION=5 (s)
//                               UNCACHEABLE_ROUNDS=2
import http from "node:http";
import autocannon from "autocannon";
import { startGate, type TestGate } from "../test/helpers/cachegate.js";
import { listenLoopback, portOf } from "./child.js";
import { intEnv } from "./settings.js";
import { median } from "./stats.js";
import { table } from "./table.js";

const ORIGIN_MS = intEnv("UNCACHEABLE_ORIGIN_MS", 100, 1, 10_000);
const CONNECTIONS = intEnv("UNCACHEABLE_CONNECTIONS", 20, 2, 500);
const DURATION_S = intEnv("UNCACHEABLE_DURATION", 5, 1, 60);
const ROUNDS = intEnv("UNCACHEABLE_ROUNDS", 2, 1, 10);

let originRequests = 0;
const origin = http.createServer({ keepAliveTimeout: 120_000 }, (req, res) => {
  originRequests++;
  req.resume();
  // No Cache-Control, no validators: not storable, as many JSON APIs answer.
  setTimeout(() => {
    res.writeHead(200, { "content-type": "application/json" });
    res.end('{"ok":true}');
  }, ORIGIN_MS);
});
await listenLoopback(origin);
const originUrl = `http://127.0.0.1:${portOf(origin)}`;

const variants = { "hitForMiss 0": 0, "hitForMiss 2m (default)": "2m" } as const;
type Variant = keyof typeof variants;
const totals = new Map<
  Variant,
  { requests: number; seconds: number; origin: number; p50: number[]; p99: number[] }
>();

console.log(
  `uncacheable-URL benchmark: ${CONNECTIONS} connections on one URL, ${ORIGIN_MS} ms origin, ${ROUNDS} round(s) of ${DURATION_S} s per variant`,
);
const names = Object.keys(variants) as Variant[];
for (let round = 0; round < ROUNDS; round++) {
  const order = round % 2 === 0 ? names : [...names].reverse();
  for (const name of order) {
    const gate: TestGate = await startGate({
      upstreams: [{ name: "origin", url: originUrl }],
      routes: [{ name: "all", upstream: "origin" }],
      admin: { enabled: false },
      cache: { hitForMiss: variants[name] },
      log: { level: "warn" },
    });
    try {
      const before = originRequests;
      const r = await autocannon({ url: `${gate.url}/same`, connections: CONNECTIONS, duration: DURATION_S });
      const t = totals.get(name) ?? { requests: 0, seconds: 0, origin: 0, p50: [], p99: [] };
      t.requests += r.requests.total;
      t.seconds += DURATION_S;
      t.origin += originRequests - before;
      t.p50.push(r.latency.p50);
      t.p99.push(r.latency.p99);
      totals.set(name, t);
      console.log(
        `round ${round + 1}/${ROUNDS}  ${name.padEnd(24)} ${r.requests.average.toFixed(0)} req/s  p50 ${r.latency.p50} ms  p99 ${r.latency.p99} ms  errors ${r.errors + r.non2xx}`,
      );
    } finally {
      await gate.close(500);
    }
  }
}
origin.closeAllConnections();
origin.close();

console.log();
console.log(
  table([
    ["variant", "req/s", "p50 ms", "p99 ms", "origin requests"],
    ...names.map((name) => {
      const t = totals.get(name);
      if (!t) return [name, "-", "-", "-", "-"];
      return [
        name,
        (t.requests / t.seconds).toFixed(0),
        String(median(t.p50)),
        String(median(t.p99)),
        String(t.origin),
      ];
    }),
  ]),
);
