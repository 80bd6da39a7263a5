// Idle limits on upstream sockets without a timer per request. Node's own socket timeouts (the Agent's `timeout`,
// `ClientRequest#setTimeout`) re-arm a timer and add listeners on every request; measured with callgrind against the
// bench upstream, each costs about 6 % of a bare http-proxy-3 request. Here one ticker, running only while something
// is watched, compares each watched socket's byte counters with what it saw before: no byte in or out for
// `limit` ms means idle. A limit therefore fires between `limit` and `limit + SWEEP_INTERVAL_MS` after the last byte.
//
// Two things are watched:
//   response bodies  (upstream/forwarder.ts) an upstream response whose body is still flowing, against the
//                    upstream's `timeouts.idle` (`streamIdle` for event streams); expiry aborts the upstream request.
//   pooled sockets   (routing.ts) a keep-alive Agent's free sockets, against `pool.freeSocketTimeout`; expiry closes
//                    the socket, before the upstream's own keep-alive timeout can race a request onto it.
//   deadlines        (upstream/forwarder.ts) an upstream request waiting for its response headers, against
//                    `timeouts.response` when that is at least COARSE_DEADLINE_MS (shorter ones get a timer of their
//                    own, where 250 ms would be too coarse); expiry aborts the upstream request.
//
// Watches are kept in WatchLists, not Sets: see watch-list.ts for what a per-request Set cost.
import type { Agent } from "node:http";
import type { Socket } from "node:net";
import { type ListNode, WatchList } from "./watch-list.js";

/** How often watched sockets are checked: the precision of every idle limit. */
export const SWEEP_INTERVAL_MS = 250;
/** Deadlines at least this far off are left to the sweeper (at most 250 ms late, 12.5 % of the shortest). */
export const COARSE_DEADLINE_MS = 2_000;

/** Something that must be over by `deadline` (performance.now() ms). */
export interface DeadlineWatch {
  readonly deadline: number;
  /** The deadline passed while still watched. */
  deadlineExpired(): void;
  /** The sweeper's bookkeeping: where this watch sits in its list, while watched. */
  deadlineNode?: ListNode<DeadlineWatch> | undefined;
}

/** Something whose socket must not stay silent for longer than `idleLimitMs` (a response body, say). */
export interface IdleWatch {
  readonly idleSocket: Socket;
  readonly idleLimitMs: number;
  /** Bookkeeping for the sweeper: the socket's byte count when last seen moving, and when that was. */
  idleBytes: number;
  idleSince: number;
  /** Nothing left to watch (the body ended or was destroyed): dropped at the next tick if not unwatched before. */
  idleFinished(): boolean;
  /** The limit passed: stop the exchange. */
  idleExpired(): void;
  /** The sweeper's bookkeeping: where this watch sits in its list, while watched. */
  idleNode?: ListNode<IdleWatch> | undefined;
}

interface FreeSocketState {
  bytes: number;
  since: number;
}

function traffic(socket: Socket): number {
  return socket.bytesRead + socket.bytesWritten;
}

export class IdleSweeper {
  private readonly watches = new WatchList<IdleWatch>();
  private readonly deadlines = new WatchList<DeadlineWatch>();
  private readonly agents = new Map<Agent, number>();
  private readonly free = new WeakMap<Socket, FreeSocketState>();
  private timer: NodeJS.Timeout | undefined;

  constructor(
    private readonly intervalMs = SWEEP_INTERVAL_MS,
    private readonly now: () => number = performance.now.bind(performance),
  ) {}

  /** Watches `w` until it is finished or expires. */
  watch(w: IdleWatch): void {
    w.idleBytes = traffic(w.idleSocket);
    w.idleSince = this.now();
    if (w.idleNode === undefined) w.idleNode = this.watches.push(w);
    this.start();
  }

  /**
   * Stops watching `w` now. Owners call this as soon as their body is over: a watch left for the next tick keeps
   * its exchange's whole object graph alive across young-generation collections, which promotes it (measured under
   * wrk -c50 for 5 s: 719 ms of scavenges, against 152 ms once bodies were unwatched on close).
   */
  unwatch(w: IdleWatch): void {
    if (w.idleNode === undefined) return;
    this.watches.remove(w.idleNode);
    w.idleNode = undefined;
  }

  /** How many watches are registered (tests: finished bodies must not linger until the next tick). */
  get watching(): number {
    return this.watches.size + this.deadlines.size;
  }

  /** Calls `w.deadlineExpired()` once `w.deadline` has passed (checked every tick), unless unwatched before. */
  watchDeadline(w: DeadlineWatch): void {
    if (w.deadlineNode === undefined) w.deadlineNode = this.deadlines.push(w);
    this.start();
  }

  unwatchDeadline(w: DeadlineWatch): void {
    if (w.deadlineNode === undefined) return;
    this.deadlines.remove(w.deadlineNode);
    w.deadlineNode = undefined;
  }

  /** Closes the agent's free sockets once they have been idle for `timeoutMs` (0: never). */
  watchAgent(agent: Agent, timeoutMs: number): void {
    if (timeoutMs <= 0) return;
    this.agents.set(agent, timeoutMs);
    this.start();
  }

  unwatchAgent(agent: Agent): void {
    this.agents.delete(agent);
    this.stopIfIdle();
  }

  /** Runs one check now (the ticker calls this; tests may too). */
  sweep(): void {
    const now = this.now();
    // What expired is called out after each walk: a callback may unwatch other entries.
    let late: DeadlineWatch[] | undefined;
    this.deadlines.filter((d) => {
      if (now < d.deadline) return true;
      d.deadlineNode = undefined;
      if (late) late.push(d);
      else late = [d];
      return false;
    });
    if (late) for (const d of late) d.deadlineExpired();
    let idle: IdleWatch[] | undefined;
    this.watches.filter((w) => {
      if (w.idleFinished()) {
        w.idleNode = undefined;
        return false;
      }
      const bytes = traffic(w.idleSocket);
      if (bytes !== w.idleBytes) {
        w.idleBytes = bytes;
        w.idleSince = now;
        return true;
      }
      if (now - w.idleSince < w.idleLimitMs) return true;
      w.idleNode = undefined;
      if (idle) idle.push(w);
      else idle = [w];
      return false;
    });
    if (idle) for (const w of idle) w.idleExpired();
    for (const [agent, timeoutMs] of this.agents) {
      for (const name in agent.freeSockets) {
        for (const socket of agent.freeSockets[name] ?? []) {
          const bytes = traffic(socket);
          const seen = this.free.get(socket);
          // First seen free, or used (and freed again) since the last look: idle from now.
          if (!seen || seen.bytes !== bytes) this.free.set(socket, { bytes, since: now });
          // The Agent drops a closed socket from its free list by itself.
          else if (now - seen.since >= timeoutMs) socket.destroy();
        }
      }
    }
    this.stopIfIdle();
  }

  private start(): void {
    if (this.timer) return;
    this.timer = setInterval(() => this.sweep(), this.intervalMs);
    this.timer.unref();
  }

  private stopIfIdle(): void {
    if (this.timer && this.watches.size === 0 && this.deadlines.size === 0 && this.agents.size === 0) {
      clearInterval(this.timer);
      this.timer = undefined;
    }
  }
}

/** The process's sweeper: one ticker for every forwarder and pool in it. */
export const idleSweeper = new IdleSweeper();
