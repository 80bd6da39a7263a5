import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { kindOf, parseLeaves } from "../../bench/perf-pair.js";

describe("bench:perf's perf script parser", () => {
  test("counts leaf samples per process and kind, and only for the processes asked about", () => {
    const text = [
      " 101 ffffffff8133bc8f kvm_clock_get_cycles ([kernel.kallsyms])",
      " 101     7fb5e365ec79 Builtins_LoadIC (/usr/bin/node)",
      " 101     7fb5c396a739 JS:*onRequest file:///work/main/.bench-dist/proxy/server.js:241:23 (/tmp/perf-101.map)",
      " 101     7fb5c396a739 JS:~onRequest file:///work/main/.bench-dist/proxy/server.js:241:23 (/tmp/perf-101.map)",
      " 202           10817fd v8::internal::TieringManager::ShouldOptimize (/usr/bin/node)",
      " 202           18b8879 uv__read (/usr/bin/node)",
      " 202           18b8879 v8::internal::ScavengerCollector::CollectGarbage (/usr/bin/node)",
      " 303           18b8879 uv__read (/usr/bin/node)",
      "",
      "garbage line",
    ].join("\n");
    const p = parseLeaves(text, [101, 202]);
    assert.equal(p.size, 2);
    const a = p.get(101);
    const b = p.get(202);
    assert.deepEqual(Object.fromEntries(a?.kinds ?? []), {
      kernel: 1,
      "V8 builtins": 1,
      "JavaScript (JIT)": 2,
    });
    // Both tiers of one function are one symbol, without the checkout's path.
    assert.equal(a?.symbols.get("JS:onRequest proxy/server.js:241:23"), 2);
    assert.deepEqual(Object.fromEntries(b?.kinds ?? []), {
      "V8 runtime": 1,
      "node, libuv, llhttp": 1,
      GC: 1,
    });
  });

  test("kinds", () => {
    assert.equal(kindOf("__GI___libc_write", "/usr/lib/x86_64-linux-gnu/libc.so.6"), "libc");
    assert.equal(kindOf("llhttp__internal_execute", "/usr/bin/node"), "node, libuv, llhttp");
    assert.equal(kindOf("node::StreamBase::CallJSOnreadMethod", "/usr/bin/node"), "node, libuv, llhttp");
    assert.equal(kindOf("something", "/usr/lib/libstdc++.so.6"), "other");
  });
});
