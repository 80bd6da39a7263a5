// The V8 flags the CLI applies before it starts the server.
import assert from "node:assert/strict";
import { mock, test } from "node:test";
import v8 from "node:v8";
import { applyV8Flags, V8_FLAGS } from "../../proxy/v8-flags.js";

test("applyV8Flags turns allocation-site pretenuring off and widens the inlining budget, through v8.setFlagsFromString", () => {
  const set = mock.method(v8, "setFlagsFromString");
  try {
    applyV8Flags();
    const expected = ["--no-allocation-site-pretenuring", "--max-inlined-bytecode-size-cumulative=3000"];
    assert.deepEqual(
      set.mock.calls.map((c) => c.arguments[0]),
      expected,
    );
    assert.deepEqual(V8_FLAGS, expected);
  } finally {
    set.mock.restore();
  }
});
