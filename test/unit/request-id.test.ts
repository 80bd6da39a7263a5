import assert from "node:assert/strict";
import { test } from "node:test";
import { RequestIds } from "../../proxy/request-id.js";

const UUID_V4_SHAPE = /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;

test("request ids are UUID-shaped, distinct, and share one random prefix per generator", () => {
  const ids = new RequestIds();
  const seen = new Set<string>();
  for (let i = 0; i < 5000; i++) {
    const id = ids.next();
    assert.match(id, UUID_V4_SHAPE);
    seen.add(id);
  }
  assert.equal(seen.size, 5000);
  const [a, b] = [...seen];
  assert.equal(a?.slice(0, 24), b?.slice(0, 24));
  assert.equal(a?.slice(24), "000000000001");
  assert.equal(b?.slice(24), "000000000002");
});

test("two generators (two processes, workers or restarts) draw different prefixes", () => {
  const prefixes = new Set<string>();
  for (let i = 0; i < 200; i++) prefixes.add(new RequestIds().next().slice(0, 24));
  assert.equal(prefixes.size, 200);
});

test("the sequence fills its 12 hex digits and wraps to zero after 2^48 ids", () => {
  const ids = new RequestIds("0f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f9");
  (ids as unknown as { seq: number }).seq = 2 ** 48 - 2;
  assert.equal(ids.next(), "0f1e2d3c-4b5a-4978-8695-ffffffffffff");
  assert.equal(ids.next(), "0f1e2d3c-4b5a-4978-8695-000000000000");
  assert.equal(ids.next(), "0f1e2d3c-4b5a-4978-8695-000000000001");
});
