import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { test } from "node:test";
import {
  BodyKeyError,
  bodyHash,
  canonicalJson,
  primaryKey,
  sortQuery,
  variantKey,
  varyNames,
} from "../../proxy/cache/key.js";

const parts = { method: "GET", upstream: "u", host: "h", target: "/p", tenant: "", body: "" };

test("the primary key changes with every part and never contains the raw values", () => {
  const base = primaryKey(parts);
  assert.match(base, /^[0-9a-f]{64}$/);
  for (const [k, v] of Object.entries({
    method: "POST",
    upstream: "v",
    host: "h2",
    target: "/q",
    tenant: "t",
    body: "b",
  })) {
    assert.notEqual(primaryKey({ ...parts, [k]: v }), base, k);
  }
  // Parts cannot run into each other.
  assert.notEqual(
    primaryKey({ ...parts, host: "ab", target: "/c" }),
    primaryKey({ ...parts, host: "a", target: "b/c" }),
  );
});

test("the primary key is the SHA-256 of its canonical string, however often and in whatever order it is asked", () => {
  // Keys are shared through Redis with other instances (and other versions): the memo must never change them.
  const expected = (p: typeof parts) =>
    createHash("sha256")
      .update(`v1\x1f${p.method}\x1f${p.upstream}\x1f${p.host}\x1f${p.target}\x1f${p.tenant}\x1f${p.body}`)
      .digest("hex");
  const asked: (typeof parts)[] = [];
  // More distinct keys than the memo holds (it starts over), some asked again, and targets too long to be kept.
  for (let i = 0; i < 9000; i++) asked.push({ ...parts, target: `/p?i=${i % 5000}` });
  for (let i = 0; i < 20; i++) asked.push({ ...parts, target: `/${"x".repeat(500 + i * 7)}` });
  for (const p of asked) {
    assert.equal(primaryKey(p), expected(p));
    assert.equal(primaryKey(p), expected(p), "asked again at once");
  }
  const recent = asked.slice(-300, -20).reverse();
  for (const p of recent) assert.equal(primaryKey(p), expected(p), "asked again later");
});

test("sorts query parameters stably, keeping repeated names in order", () => {
  assert.equal(sortQuery("/p?b=2&a=1&b=1"), "/p?a=1&b=2&b=1");
  assert.equal(sortQuery("/p"), "/p");
  assert.equal(sortQuery("/p?x=1"), "/p?x=1");
});

test("canonical JSON ignores key order and whitespace but not values", () => {
  const a = canonicalJson(JSON.parse('{"b": 1, "a": {"y": [1, {"d": 2, "c": 3}], "x": "s"}}'));
  const b = canonicalJson(JSON.parse('{"a":{"x":"s","y":[1,{"c":3,"d":2}]},"b":1}'));
  assert.equal(a, b);
  assert.equal(a, '{"a":{"x":"s","y":[1,{"c":3,"d":2}]},"b":1}');
  assert.notEqual(canonicalJson({ a: "x " }), canonicalJson({ a: "x" }), "string values are kept exactly");
});

test("include keeps only the listed field paths and exclude drops nested ones", () => {
  const body = { inputs: { q: "hi", timestamp: 5 }, user: "u1", trace: "t" };
  assert.equal(canonicalJson(body, ["inputs.q", "user"]), '{"inputs":{"q":"hi"},"user":"u1"}');
  assert.equal(canonicalJson(body, [], ["inputs.timestamp", "trace"]), '{"inputs":{"q":"hi"},"user":"u1"}');
  assert.deepEqual(body.inputs, { q: "hi", timestamp: 5 }, "the body itself is not modified");
});

test("bodyHash refuses non-JSON with a BodyKeyError", () => {
  assert.throws(() => bodyHash(Buffer.from("a=1"), [], []), BodyKeyError);
  assert.equal(
    bodyHash(Buffer.from('{"a":1, "b":2}'), [], []),
    bodyHash(Buffer.from('{"b":2,"a":1}'), [], []),
  );
});

test("Vary names are normalised and the variant key follows the request's values", () => {
  assert.deepEqual(varyNames("Accept-Encoding, accept-language"), ["accept-encoding", "accept-language"]);
  assert.deepEqual(varyNames(["a", "*"]), ["*"]);
  assert.deepEqual(varyNames(undefined), []);
  const p = "k";
  assert.equal(variantKey(p, [], {}), "k");
  const gz = variantKey(p, ["accept-encoding"], { "accept-encoding": "gzip, br" });
  assert.equal(
    variantKey(p, ["accept-encoding"], { "accept-encoding": "gzip,br" }),
    gz,
    "whitespace around commas",
  );
  assert.notEqual(variantKey(p, ["accept-encoding"], { "accept-encoding": "br" }), gz);
  assert.notEqual(
    variantKey(p, ["accept-encoding"], {}),
    variantKey(p, ["accept-encoding"], { "accept-encoding": "" }),
  );
});
