// README's configuration reference cannot drift from the schema: every key the schema accepts is documented in a
// README table row, either by its full path or under a table whose header names the prefix
// ("Key (`upstreams[].breaker.`)"). A documented key also covers its children (`redis.sentinels` → `.host`).
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";
import { configSchema } from "../../config/schema.js";

type Def = {
  type: string;
  innerType?: unknown;
  in?: unknown;
  shape?: Record<string, unknown>;
  element?: unknown;
};
const defOf = (s: unknown): Def | undefined => (s as { _zod?: { def?: Def } } | undefined)?._zod?.def;

function leafKeys(schema: unknown, path: string, out: string[]): void {
  let s = schema;
  for (let d = defOf(s); d; d = defOf(s)) {
    if (["default", "prefault", "optional", "nullable", "readonly", "catch"].includes(d.type))
      s = d.innerType;
    else if (d.type === "pipe") s = d.in;
    else break;
  }
  const d = defOf(s);
  if (d?.type === "object" && d.shape) {
    for (const [k, v] of Object.entries(d.shape)) leafKeys(v, path ? `${path}.${k}` : k, out);
    return;
  }
  if (
    d?.type === "array" &&
    ["object", "pipe", "default", "prefault"].includes(defOf(d.element)?.type ?? "")
  ) {
    const before = out.length;
    leafKeys(d.element, `${path}[]`, out);
    if (out.length > before) return;
  }
  out.push(path);
}

/** Every backticked key named in the first cell of a README table row, with its table's prefix applied. */
function documentedKeys(readme: string): Set<string> {
  const keys = new Set<string>();
  let prefix = "";
  for (const line of readme.split("\n")) {
    if (!line.startsWith("|")) {
      prefix = "";
      continue;
    }
    const first = line.split("|")[1] ?? "";
    const header = /^\s*Key \(`([^`]+)`\)/.exec(first);
    if (header) {
      prefix = header[1] as string;
      continue;
    }
    let last = "";
    for (const m of first.matchAll(/`([^`]+)`/g)) {
      let k = m[1] as string;
      if (k.startsWith(".") && last) k = last.replace(/\.[^.]+$/, "") + k; // "`a.b.include` / `.exclude`"
      keys.add(prefix + k);
      last = prefix + k;
    }
  }
  return keys;
}

test("README's configuration tables document every key of the schema", () => {
  const all: string[] = [];
  leafKeys(configSchema, "", all);
  assert.ok(all.length > 80, `the schema walk found ${all.length} keys`);
  const documented = documentedKeys(readFileSync(new URL("../../README.md", import.meta.url), "utf8"));
  const covered = (k: string) => {
    for (let p = k; p; p = p.includes(".") ? p.slice(0, p.lastIndexOf(".")) : "") {
      if (documented.has(p) || documented.has(p.replace(/\[\]$/, ""))) return true;
    }
    return false;
  };
  const missing = all.filter((k) => !covered(k));
  assert.deepEqual(missing, [], `undocumented config keys: ${missing.join(", ")}`);
});
