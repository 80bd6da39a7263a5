// Preloaded into a benchmark child by `npm run bench:inventory` (node --import): counts what the process does per
// request, exactly, where CPU time is noisy. Counted: EventEmitter listener additions and removals and emits (by
// class and event name), and async resources created (async_hooks init, by type: PROMISE, Timeout, TickObject …).
// SIGUSR1 clears the counts and starts counting; SIGUSR2 stops and writes them as JSON to $INVENTORY_OUT.
// Enabling async_hooks slows promises down: the counts are the result here, not the child's speed.
import { createHook } from "node:async_hooks";
import { EventEmitter } from "node:events";
import { writeFileSync } from "node:fs";

const out = process.env.INVENTORY_OUT;
const counts = new Map<string, number>();
let counting = false;

const count = (key: string) => counts.set(key, (counts.get(key) ?? 0) + 1);
const nameOf = (emitter: object) => emitter.constructor?.name ?? "Object";

type Method = (this: EventEmitter, event: string | symbol, ...rest: unknown[]) => unknown;
const proto = EventEmitter.prototype as unknown as Record<string, Method>;
const kinds: Record<string, string> = {
  on: "add",
  addListener: "add",
  once: "add once",
  prependListener: "add",
  prependOnceListener: "add once",
  removeListener: "remove",
  off: "remove",
};
for (const [method, kind] of Object.entries(kinds)) {
  const original = proto[method] as Method;
  proto[method] = function (this: EventEmitter, event, ...rest) {
    if (counting) count(`listener ${kind}\t${nameOf(this)}.${String(event)}`);
    return original.call(this, event, ...rest);
  };
}
const emit = proto.emit as Method;
proto.emit = function (this: EventEmitter, event, ...rest) {
  if (counting) count(`emit\t${nameOf(this)}.${String(event)} (${this.listenerCount(event)} listeners)`);
  return emit.call(this, event, ...rest);
};

createHook({
  init(_id, type) {
    if (counting) count(`async\t${type}`);
  },
}).enable();

process.on("SIGUSR1", () => {
  counts.clear();
  counting = true;
});
process.on("SIGUSR2", () => {
  counting = false;
  if (out) writeFileSync(out, JSON.stringify(Object.fromEntries(counts)));
});
