// Runs every test/**/*.test.ts with Node's built-in runner through tsx (Node 20 has no --test globbing).
// Usage: node test/run.mjs [substring ...]   — only files whose path contains one of the substrings.
import { spawnSync } from "node:child_process";
import { readdirSync } from "node:fs";
import { join, relative } from "node:path";

const root = new URL("..", import.meta.url).pathname;
function walk(dir) {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) => {
    const p = join(dir, e.name);
    if (e.isDirectory()) return walk(p);
    return e.name.endsWith(".test.ts") ? [relative(root, p)] : [];
  });
}
const filters = process.argv.slice(2);
const files = walk(join(root, "test"))
  .filter((f) => filters.length === 0 || filters.some((s) => f.includes(s)))
  .sort();
if (files.length === 0) {
  console.error(`no test files match ${filters.join(", ")}`);
  process.exit(1);
}
const r = spawnSync(
  process.execPath,
  [
    "--import",
    "tsx",
    "--test",
    "--test-reporter=spec",
    "--test-concurrency=2",
    "--test-timeout=120000",
    ...files,
  ],
  {
    cwd: root,
    stdio: "inherit",
    env: { ...process.env, NO_PROXY: "127.0.0.1,localhost", no_proxy: "127.0.0.1,localhost" },
  },
);
process.exit(r.status ?? 1);
