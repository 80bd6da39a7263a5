// bottleneck, patched in this one place. Every module of cachegate imports Bottleneck from here, never from
// "bottleneck", so the patch is applied before any limiter exists.
//
// Why: in local mode every internal step of bottleneck 2.19.5 awaits `LocalDatastore#yieldLoop`, a
// `setTimeout(0)` (clamped to 1 ms by Node) behind serialized locks, which caps a limiter at ~400 jobs/s whatever
// its concurrency (measured in ../shared/LIBRARIES.md §3; upstream issue SGrondin/bottleneck#144, open; the
// project is unmaintained). The fix yields with `setImmediate` instead: still asynchronous (bottleneck's locking
// relies on that), no longer a 1 ms timer per step. `bench/miss-path.ts` measures the effect on the miss path.
//
// Also: `Events#trigger` builds an async generator per call and re-triggers itself as "debug" for every event,
// listened to or not. We listen to none of bottleneck's events on the hot path, so triggers without listeners
// return a resolved promise at once (profiled: about a third of bottleneck's CPU time per job).
//
// The patch is version-checked: on any other bottleneck version nothing is patched and `BOTTLENECK_PATCH` says why
// (the server logs it), since private internals may have moved.
import { createRequire } from "node:module";
import Bottleneck from "bottleneck";

export { Bottleneck };

const PATCHED_VERSION = "2.19.5";

interface LocalDatastoreClass {
  prototype: { yieldLoop(this: { Promise: PromiseConstructor }, t?: number): Promise<void> };
}
interface EventsClass {
  prototype: {
    trigger(
      this: { _events: Record<string, unknown[] | undefined> },
      name: string,
      ...args: unknown[]
    ): Promise<unknown>;
  };
}

function applyPatch(): { applied: boolean; reason: string } {
  const require = createRequire(import.meta.url);
  const { version } = require("bottleneck/package.json") as { version: string };
  if (version !== PATCHED_VERSION) {
    return {
      applied: false,
      reason: `bottleneck ${version} is not ${PATCHED_VERSION}: left unpatched (slow)`,
    };
  }
  // Same resolved files as the ones bottleneck's own index requires, hence the same (CommonJS-cached) classes.
  const LocalDatastore = require("bottleneck/lib/LocalDatastore.js") as LocalDatastoreClass;
  const Events = require("bottleneck/lib/Events.js") as EventsClass;
  if (
    typeof LocalDatastore.prototype.yieldLoop !== "function" ||
    typeof Events.prototype.trigger !== "function"
  ) {
    return { applied: false, reason: "bottleneck internals not where expected: left unpatched (slow)" };
  }
  LocalDatastore.prototype.yieldLoop = function yieldLoop(t = 0) {
    if (t > 0) return new this.Promise<void>((resolve) => setTimeout(resolve, t));
    return new this.Promise<void>((resolve) => setImmediate(resolve));
  };
  const trigger = Events.prototype.trigger;
  const nothing = Promise.resolve(undefined);
  Events.prototype.trigger = function fastTrigger(name, ...args) {
    const listeners = this._events[name];
    const debug = this._events.debug;
    if ((listeners === undefined || listeners.length === 0) && (debug === undefined || debug.length === 0)) {
      return nothing;
    }
    return trigger.call(this, name, ...args);
  };
  return { applied: true, reason: `bottleneck ${version}: yieldLoop uses setImmediate, idle events skipped` };
}

export const BOTTLENECK_PATCH: Readonly<{ applied: boolean; reason: string }> = Object.freeze(applyPatch());
