// Routes and upstreams compiled once from the frozen config. Matching is first-match in config order.
import type http from "node:http";
import https from "node:https";
import type { Config, RouteConfig, UpstreamConfig } from "../config/schema.js";
import { idleSweeper } from "./upstream/idle-sweeper.js";
import { PooledAgent } from "./upstream/pooled-agent.js";

export interface Upstream {
  readonly name: string;
  readonly url: URL;
  readonly config: UpstreamConfig;
  /** Keep-alive pool: without one http-proxy-3 sends `Connection: close` and every request pays a handshake. */
  readonly agent: http.Agent;
}

export interface CompiledRoute {
  readonly name: string;
  readonly pathPrefix: string;
  readonly methods: ReadonlySet<string> | null;
  readonly upstream: Upstream;
  readonly config: RouteConfig;
}

export function createUpstream(config: UpstreamConfig): Upstream {
  const url = new URL(config.url);
  const options: http.AgentOptions = {
    keepAlive: true,
    keepAliveMsecs: config.pool.keepAlive,
    maxSockets: config.pool.maxSockets,
    maxFreeSockets: config.pool.maxFreeSockets,
    scheduling: "lifo",
  };
  const agent = url.protocol === "https:" ? new https.Agent(options) : new PooledAgent(options);
  // node's Agent#addRequest copies the Agent's `options` into each request's own (a null-prototype object, a
  // dictionary); PooledAgent skips that when it reuses a socket, but new connections, queued requests and https
  // upstreams still pay it. Keys only the Agent itself uses are dropped from there once the constructor has read them
  // into agent.keepAliveMsecs, .maxFreeSockets and .scheduling. With them each request's copy crossed a dictionary
  // size step: +1.6 KB allocated per request (sampling heap profiler). test/unit/upstream-agent.test.ts checks the
  // pool still honours them.
  const perRequest = (agent as unknown as { options: Record<string, unknown> }).options;
  delete perRequest.keepAliveMsecs;
  delete perRequest.maxFreeSockets;
  delete perRequest.scheduling;
  // Pooled sockets idle for freeSocketTimeout are closed by the sweeper, not by the Agent's `timeout` option, which
  // re-arms a socket timer on every request (idle-sweeper.ts).
  idleSweeper.watchAgent(agent, config.pool.freeSocketTimeout);
  return { name: config.name, url, config, agent };
}

export class Router {
  readonly routes: readonly CompiledRoute[];
  readonly upstreams: ReadonlyMap<string, Upstream>;

  constructor(config: Config) {
    const upstreams = new Map<string, Upstream>();
    for (const u of config.upstreams) upstreams.set(u.name, createUpstream(u));
    this.upstreams = upstreams;
    this.routes = config.routes.map((r) => {
      const upstream = upstreams.get(r.upstream);
      // The schema already rejected unknown upstream names; this guards against a schema regression.
      if (!upstream) throw new Error(`route ${r.name}: unknown upstream ${r.upstream}`);
      return {
        name: r.name,
        pathPrefix: r.match.pathPrefix,
        methods: r.match.methods ? new Set<string>(r.match.methods) : null,
        upstream,
        config: r,
      };
    });
  }

  match(method: string, path: string): CompiledRoute | undefined {
    for (const r of this.routes) {
      if (r.methods && !r.methods.has(method === "HEAD" && r.methods.has("GET") ? "GET" : method)) continue;
      if (path.startsWith(r.pathPrefix)) return r;
    }
    return undefined;
  }

  close(): void {
    for (const u of this.upstreams.values()) {
      idleSweeper.unwatchAgent(u.agent);
      u.agent.destroy();
    }
  }
}
