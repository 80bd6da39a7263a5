// The keep-alive Agent for plain-HTTP upstreams: node's http.Agent with a cheaper way to hand out a pooled socket.
//
// Node's Agent#addRequest starts every request by copying the request's options and the Agent's into a new
// null-prototype object (`{ __proto__: null, ...options, ...this.options }`). V8 makes such an object a dictionary,
// so the copy runs in the runtime, property by property: ~4 µs per request here (perf, 2026-12-06: 4.6 µs of the
// 129 µs cachegate spends per pass-through request, the largest single item beyond bare http-proxy-3's own path,
// which pays it too). On the path almost every request takes — a free pooled socket for its origin — that copy is
// only read for the pool's name, which the request's own options give alike (this Agent's options hold none of the
// name's parts: host, port, localAddress, family, socketPath).
//
// So `addRequest` takes a free socket itself, doing what node's does on that path, in the same order: drop
// destroyed sockets at the head of the free list, take the most recently freed one (lifo), re-arm its async id
// (`asyncResetHandle`), `reuseSocket`, `req.onSocket` with the request's own timeout (`setRequestSocket`), and
// list it as in use. Everything else (no free socket: connect a new one or queue) is node's own addRequest. Checked
// against node 20's lib/_http_agent.js. The fast path is off where the one internal it needs (the socket's async id
// symbol) is not found; in nodes whose Agent can tunnel through a proxy taken from the environment
// (Agent#prepareForHttpsProxy, NODE_USE_ENV_PROXY), whose reuse path may have to tunnel first; and for an Agent whose
// own options name the pool. test/unit/upstream-agent.test.ts runs reuse, lifo order, destroyed sockets, queueing at
// maxSockets and the request timeout on this Agent and on a stock one.
import http, { type ClientRequest } from "node:http";
import net, { type Socket } from "node:net";

/** node's `async_id_symbol` (lib/internal/async_hooks.js), found on a fresh socket; undefined if absent. */
const asyncIdSymbol: symbol | undefined = (() => {
  const probe = new net.Socket();
  const found = Object.getOwnPropertySymbols(probe).find((s) => s.description === "async_id_symbol");
  probe.destroy();
  return found;
})();

/** What node's agent gives a socket's handle as the async resource when the socket is reused. */
class ReusedHandle {
  constructor(
    readonly type: number,
    readonly handle: unknown,
  ) {}
}

interface AsyncHandle {
  asyncReset(resource: object): void;
  getProviderType(): number;
  getAsyncId(): number;
}

type PoolSocket = Socket & { _handle?: Partial<AsyncHandle> | null } & Record<symbol, unknown>;
type Pool = Record<string, Socket[] | undefined>;

/** Whether the fast path can run in this node: the internal it relies on exists, and reuse never tunnels. */
export const POOLED_FAST_PATH =
  asyncIdSymbol !== undefined &&
  typeof (http.Agent.prototype as unknown as Record<string, unknown>).prepareForHttpsProxy !== "function";

/** Agent options that node's addRequest would let override the request's own parts of the pool name. */
const NAME_PARTS = ["host", "port", "localAddress", "family", "socketPath"] as const;

export class PooledAgent extends http.Agent {
  /** The fast path applies: node and these options allow it. */
  private readonly fast: boolean;

  constructor(options: http.AgentOptions) {
    // The fast path hands out the most recently freed socket: scheduling must be lifo, as it is by default.
    super({ ...options, scheduling: "lifo" });
    const given = options as Record<string, unknown>;
    this.fast = POOLED_FAST_PATH && NAME_PARTS.every((k) => given[k] === undefined);
  }

  addRequest(req: ClientRequest, options: http.ClientRequestArgs): void {
    if (!this.fast) return void superAddRequest.call(this, req, options);
    const name = this.getName(options);
    const freePool = this.freeSockets as Pool;
    const free = freePool[name];
    if (free === undefined) return void superAddRequest.call(this, req, options);
    while (free.length > 0 && (free[0] as Socket).destroyed) free.shift();
    const socket = free.pop() as PoolSocket | undefined;
    if (free.length === 0) delete freePool[name];
    if (socket === undefined) return void superAddRequest.call(this, req, options);

    const inUse = this.sockets as Pool;
    let sockets = inUse[name];
    if (sockets === undefined) {
      sockets = [];
      inUse[name] = sockets;
    }
    // asyncResetHandle: the reused handle gets a new async id, as node's own reuse does.
    const handle = socket._handle;
    if (handle && typeof handle.asyncReset === "function") {
      const h = handle as AsyncHandle;
      h.asyncReset(new ReusedHandle(h.getProviderType(), h));
      socket[asyncIdSymbol as symbol] = h.getAsyncId(); // defined wherever `fast` is
    }
    this.reuseSocket(socket, req);
    // setRequestSocket
    (req as ClientRequest & { onSocket(s: Socket): void }).onSocket(socket);
    const agentTimeout = (this as unknown as { options: { timeout?: number } }).options.timeout || 0;
    const timeout = (req as ClientRequest & { timeout?: number }).timeout;
    if (timeout !== undefined && timeout !== agentTimeout) socket.setTimeout(timeout);
    sockets.push(socket);
  }
}

const superAddRequest = (
  http.Agent.prototype as unknown as { addRequest(req: ClientRequest, options: http.ClientRequestArgs): void }
).addRequest;
