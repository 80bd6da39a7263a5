// The metrics' cells report exactly what prom-client's own Counter and Histogram report for the same observations:
// the text exposition, the JSON that cluster aggregation reads, and the aggregate over workers.
import assert from "node:assert/strict";
import { test } from "node:test";
import { AggregatorRegistry, Counter, Histogram, Registry } from "prom-client";
import { CellCounter, CellHistogram } from "../../proxy/observability/cells.js";

function pair() {
  const ref = new Registry();
  const ours = new Registry();
  const buckets = [0.001, 0.01, 0.1, 1, 10];
  const h = new Histogram({
    name: "t_seconds",
    help: "h",
    labelNames: ["route", "cache"],
    buckets,
    registers: [ref],
  });
  const hc = new CellHistogram({
    name: "t_seconds",
    help: "h",
    labelNames: ["route", "cache"] as const,
    buckets,
    registers: [ours],
  });
  const c = new Counter({ name: "t_total", help: "c", labelNames: ["route", "sc"], registers: [ref] });
  const cc = new CellCounter({
    name: "t_total",
    help: "c",
    labelNames: ["route", "sc"] as const,
    registers: [ours],
  });
  return { ref, ours, h, hc, c, cc };
}

/** JSON with keys sorted and prom-client's empty `exemplar` dropped: the same data compares equal. */
function normal(v: unknown): unknown {
  if (Array.isArray(v)) return v.map(normal);
  if (v && typeof v === "object") {
    return Object.fromEntries(
      Object.entries(v)
        .filter(([k, x]) => !(k === "exemplar" && x == null))
        .sort(([a], [b]) => a.localeCompare(b))
        .map(([k, x]) => [k, normal(x)]),
    );
  }
  return v;
}

test("histogram and counter cells expose what prom-client does, boundaries included", async () => {
  const { ref, ours, h, hc, c, cc } = pair();
  // Values on, below and above every bound; two label combinations; repeated scrapes in between.
  const values = [0, 0.0005, 0.001, 0.0011, 0.01, 0.05, 0.1, 1, 9.99, 10, 10.01, 120];
  for (const [i, v] of values.entries()) {
    const route = i % 2 ? "a" : "b";
    const cache = i % 3 ? "HIT" : "MISS";
    h.observe({ route, cache }, v);
    hc.cell(route, cache).observe(v);
    c.inc({ route, sc: "2xx" });
    cc.cell(route, "2xx").pending++;
    if (i === 5) assert.equal(await ours.metrics(), await ref.metrics(), "mid-way scrape");
  }
  assert.equal(await ours.metrics(), await ref.metrics());
  const [rj, oj] = [await ref.getMetricsAsJSON(), await ours.getMetricsAsJSON()];
  assert.deepEqual(normal(oj), normal(rj));
  const agg = async (j: typeof rj) => AggregatorRegistry.aggregate([j, j, j]).metrics();
  assert.equal(await agg(oj), await agg(rj), "aggregated over three workers");
  assert.match(await ours.metrics(), /t_seconds_bucket\{le="0.001",route="b",cache="MISS"\} 1/);
});

test("a counter cell keeps counting across scrapes without counting twice", async () => {
  const { ours, cc } = pair();
  const cell = cc.cell("a", "5xx");
  cell.pending += 3;
  assert.match(await ours.metrics(), /t_total\{route="a",sc="5xx"\} 3/);
  assert.match(await ours.metrics(), /t_total\{route="a",sc="5xx"\} 3/, "a second scrape adds nothing");
  cell.pending++;
  assert.match(await ours.metrics(), /t_total\{route="a",sc="5xx"\} 4/);
  assert.equal(cc.cell("a", "5xx"), cell, "one cell per label combination");
});
