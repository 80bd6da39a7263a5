import assert from "node:assert/strict";
import { test } from "node:test";
import type { RequestContext, ResponsePlan } from "../../proxy/context.js";
import { isEventStream } from "../../proxy/pipeline/deliver.js";
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
  // All stages synchronous: the error is thrown at once; after an asynchronous stage: the promise rejects.
  assert.throws(
    () => runPipeline({ requestStages: [{ name: "a", run: () => CONTINUE }], responseStages: [] }, ctx),
    /without a response/,
  );
  await assert.rejects(
    Promise.resolve(
      runPipeline(
        { requestStages: [{ name: "a", run: () => Promise.resolve(CONTINUE) }], responseStages: [] },
        ctx,
      ),
    ),
    /without a response/,
  );
});

test("stays synchronous while the stages are, and continues in order after an asynchronous one", async () => {
  const ran: string[] = [];
  const stage = (name: string, verdict: () => ReturnType<Pipeline["requestStages"][number]["run"]>) => ({
    name,
    run: () => {
      ran.push(name);
      return verdict();
    },
  });
  const plan = { status: 200, headers: {}, body: null };
  const sync = runPipeline(
    { requestStages: [stage("a", () => CONTINUE), stage("b", () => respond(plan))], responseStages: [] },
    ctx,
  );
  assert.equal(sync instanceof Promise, false, "no promise when every stage answers synchronously");
  assert.equal((sync as typeof plan).status, 200);

  ran.length = 0;
  const later = runPipeline(
    {
      requestStages: [
        stage("a", () => Promise.resolve(CONTINUE)),
        stage("b", () => CONTINUE),
        stage("c", () => Promise.resolve(respond(plan))),
        stage("never", () => CONTINUE),
      ],
      responseStages: [
        { name: "r1", run: (_c, r) => Promise.resolve({ ...r, status: r.status + 1 }) },
        { name: "r2", run: (_c, r) => ({ ...r, status: r.status + 10 }) },
      ],
    },
    ctx,
  );
  assert.ok(later instanceof Promise);
  assert.equal((await later).status, 211);
  assert.deepEqual(ran, ["a", "b", "c"]);
});

test("isEventStream: text/event-stream in any case, after whitespace, with parameters; nothing else", () => {
  for (const ct of [
    "text/event-stream",
    "Text/Event-Stream; charset=utf-8",
    "  text/event-stream",
    "\ttext/event-stream",
  ])
    assert.equal(isEventStream(ct), true, ct);
  for (const ct of ["application/json", "text/html", "", "event-stream", "xtext/event-stream", undefined, 12])
    assert.equal(isEventStream(ct as string | undefined), false, String(ct));
});
