// Pub/sub between cachegate instances (purge fan-out, coalescing completions) over one dedicated subscriber
// connection. Pub/sub is fire-and-forget: a message published while a subscriber is disconnected is lost, so
// every user of the bus needs a fallback (lease polling, TTLs).
//
// Wire format: JSON `{"instanceId": sender, "msg": payload}` on channel `${keyPrefix}${channel}`.
import { Cluster, type Redis } from "ioredis";

export type BusHandler = (msg: unknown, from: string) => void;

export interface RedisBusOptions {
  /** Prefixes every channel name, so several deployments can share one Redis. */
  keyPrefix: string;
  /** Stamped on every message; receivers compare it with their own to ignore what they sent. */
  instanceId: string;
  onError(op: string, err: unknown): void;
  /** Called when the subscriber is ready again after losing its connection (messages may have been missed). */
  onReconnect?(): void;
}

const CLOSE_WAIT_MS = 1_000;

export class RedisBus {
  private readonly sub: Redis | Cluster;
  private readonly handlers = new Map<string, Set<BusHandler>>();
  private closed = false;
  /** One report per outage: the subscriber retries every few seconds and each attempt fails the same way. */
  private connectionErrorReported = false;
  private readyOnce = false;

  constructor(
    private readonly client: Redis | Cluster,
    private readonly opts: RedisBusOptions,
  ) {
    // A subscribed connection cannot be shared with commands (RESP2 refuses them, and a blocking command would delay
    // messages), so the bus owns a duplicate. We resubscribe ourselves on every "ready": ioredis' autoResubscribe
    // only replays channels the server had confirmed, so a SUBSCRIBE sent while Redis was down would be lost for good.
    this.sub =
      client instanceof Cluster
        ? client.duplicate(undefined, { lazyConnect: false, enableOfflineQueue: false })
        : client.duplicate({ lazyConnect: false, enableOfflineQueue: false, autoResubscribe: false });
    this.sub.on("ready", this.onReady);
    this.sub.on("error", this.onConnectionError);
    this.sub.on("message", this.onMessage);
  }

  /** Adds `handler` for messages on `channel` (without the prefix), from every instance including this one. */
  subscribe(channel: string, handler: BusHandler): void {
    if (this.closed) return;
    const full = this.opts.keyPrefix + channel;
    let set = this.handlers.get(full);
    if (!set) {
      set = new Set();
      this.handlers.set(full, set);
      if (this.sub.status === "ready") this.sendSubscribe([full]);
    }
    set.add(handler);
  }

  /** Publishes `msg` as JSON on the main connection; failures go to onError, never to the caller. */
  async publish(channel: string, msg: unknown): Promise<void> {
    if (this.closed) return;
    try {
      const wire = this.wire(channel, msg);
      await this.client.publish(wire.channel, wire.payload);
    } catch (err) {
      this.opts.onError("bus.publish", err);
    }
  }

  /** The Redis channel and payload `publish` would send, for a PUBLISH issued inside a Lua script. */
  wire(channel: string, msg: unknown): { channel: string; payload: string } {
    return {
      channel: this.opts.keyPrefix + channel,
      payload: JSON.stringify({ instanceId: this.opts.instanceId, msg }),
    };
  }

  /** Closes the subscriber connection (the main client belongs to the caller and stays open). */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.handlers.clear();
    this.sub.off("ready", this.onReady);
    this.sub.off("message", this.onMessage);
    if (this.sub.status === "end") return;
    const ended = new Promise<void>((resolve) => {
      const timer = setTimeout(resolve, CLOSE_WAIT_MS);
      timer.unref();
      this.sub.once("end", () => {
        clearTimeout(timer);
        resolve();
      });
    });
    // The error listener stays: an "error" event without one is printed by ioredis; onConnectionError ignores it.
    this.sub.disconnect();
    await ended;
  }

  private sendSubscribe(channels: string[]): void {
    // A rejected SUBSCRIBE is retried by the next "ready" (after a reconnect).
    this.sub.subscribe(...channels).catch((err: unknown) => this.opts.onError("bus.subscribe", err));
  }

  private readonly onReady = (): void => {
    this.connectionErrorReported = false;
    // Messages published while we were disconnected are lost: let the owner resynchronise (drop local copies).
    if (this.readyOnce) this.opts.onReconnect?.();
    this.readyOnce = true;
    if (this.handlers.size > 0) this.sendSubscribe([...this.handlers.keys()]);
  };

  private readonly onConnectionError = (err: unknown): void => {
    if (this.closed || this.connectionErrorReported) return;
    this.connectionErrorReported = true;
    this.opts.onError("bus.connection", err);
  };

  private readonly onMessage = (channel: string, raw: string): void => {
    const set = this.handlers.get(channel);
    if (!set) return;
    let from: unknown;
    let msg: unknown;
    try {
      const parsed = JSON.parse(raw) as unknown;
      if (typeof parsed === "object" && parsed !== null) {
        from = (parsed as { instanceId?: unknown }).instanceId;
        msg = (parsed as { msg?: unknown }).msg;
      }
    } catch (err) {
      this.opts.onError("bus.decode", err);
      return;
    }
    if (typeof from !== "string") {
      this.opts.onError("bus.decode", new Error(`message on ${channel} carries no instanceId`));
      return;
    }
    for (const handler of set) {
      try {
        handler(msg, from);
      } catch (err) {
        this.opts.onError("bus.handler", err);
      }
    }
  };
}
