import assert from "node:assert/strict";
import { test } from "node:test";
import type { RequestContext, ResponsePlan } from "../../proxy/context.js";
import { CONTINUE, type Pipeline, respond, runPipeline } from "../../proxy/pipeline/pipeline.js";

const ctx = {} as RequestContext;
const plan = (status: number): ResponsePlan => ({ status, headers: {}, body: null });

test("stops at the first stage that responds and lets response stages replace the response", async () => {
  const ran: string[] = [];
  const pipeline: Pipeline = {
    requestStages: [
      {
        name: "a",
        run: () => {
          ran.push("a");
          return CONTINUE;
        },
      },
      {
        name: "b",
        run: async () => {
          ran.push("b");
          return respond(plan(203));
        },
      },
      {
        name: "c",
        run: () => {
          ran.push("c");
          return respond(plan(500));
        },
      },
    ],
    responseStages: [
      {
        name: "store",
        run: (_c, r) => {
          ran.push("store");
          return { ...r, status: r.status + 1 };
        },
      },
    ],
  };
  const out = await runPipeline(pipeline, ctx);
  assert.equal(out.status, 204);
  assert.deepEqual(ran, ["a", "b", "store"]);
});

test("fails loudly when no stage responds", async () => {
  await assert.rejects(
    runPipeline({ requestStages: [{ name: "a", run: () => CONTINUE }], responseStages: [] }, ctx),
    /without a response/,
  );
});
