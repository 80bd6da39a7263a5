// The plugin API: a plugin is `definePlugin({ name, configSchema, setup })`. `setup` receives the plugin's validated
// config and registers hooks with fixed names; an unknown hook name stops the boot with a coded error.
//
//   request ─► route ─► onRequest ─► rate-limit ─► classify (+ classify hook) ─► lookup ─► onHit ─► …
//                                                   forward ─► store (+ shouldStore hook) ─► onResponse ─► deliver
import type { IncomingHttpHeaders, OutgoingHttpHeaders } from "node:http";
import type { Logger } from "pino";
import type { Registry } from "prom-client";
import type { z } from "zod";
import type { RouteCacheConfig } from "../config/schema.js";
import type { CacheEntry } from "../proxy/cache/entry.js";
import type { ResponsePlan } from "../proxy/context.js";

/** What a hook may know about the request (a read-only view; stages own the real context). */
export interface PluginRequest {
  readonly id: string;
  readonly method: string;
  /** Path without the query. */
  readonly path: string;
  /** Path and query. */
  readonly url: string;
  readonly query: URLSearchParams;
  readonly headers: IncomingHttpHeaders;
  readonly route: string;
  readonly upstream: string;
  readonly upstreamUrl: string;
  readonly clientIp: string;
  /** Reads the request body as JSON (at most `maxBytes`, default 1 MiB); undefined if absent, too large or not JSON.
   *  The body is kept and still forwarded upstream. */
  json(maxBytes?: number): Promise<unknown>;
  /** Per-request scratch space for the plugin (shared between its hooks for this request). */
  readonly state: Map<string, unknown>;
}

export type ClassifyDecision =
  /** Leave the route's own decision. */
  | undefined
  /** Never cache this request (it is forwarded as is). */
  | { cache: false; reason: string }
  /** Cache it: `key` replaces the body part of the key; `rules` override the route's cache rules. */
  | {
      cache: true;
      key: string;
      rules?: Partial<Omit<RouteCacheConfig, "body">>;
      /** How long identical concurrent requests wait for this one (default `cache.coalesceTimeout`). */
      coalesceTimeoutMs?: number;
      /** Purge tags for the stored entry. */
      tags?: string[];
      /** Path and query to key on instead of the request's own (e.g. without a parameter the upstream ignores). */
      target?: string;
      /** A label from a small fixed set, for metrics (e.g. "completion"). */
      kind?: string;
    };

export interface StoreCandidate {
  readonly request: PluginRequest;
  readonly status: number;
  readonly headers: OutgoingHttpHeaders;
  /** The complete response body as received. */
  readonly body: Buffer;
}

/** false: do not store. { body }: store this body instead (e.g. an event stream without its keep-alive pings). */
export type StoreVerdict = boolean | { body: Buffer };

export interface Hooks {
  /** After routing: annotate, or answer the request yourself by returning a response. */
  onRequest?(req: PluginRequest): ResponsePlan | undefined | Promise<ResponsePlan | undefined>;
  /** Cache candidate or not, and under which key. The first plugin returning a decision wins. */
  classify?(req: PluginRequest): ClassifyDecision | Promise<ClassifyDecision>;
  /** A complete response is about to be stored: veto it, or replace the stored body. Every plugin must agree. */
  shouldStore?(candidate: StoreCandidate): StoreVerdict;
  /** A response is served from the cache (HIT, STALE, REVALIDATED). */
  onHit?(req: PluginRequest, entry: CacheEntry): void;
  /** Last look at any response before it is written (replace headers or the body stream). */
  onResponse?(req: PluginRequest, response: ResponsePlan): ResponsePlan;
}

export const HOOK_NAMES = ["onRequest", "classify", "shouldStore", "onHit", "onResponse"] as const;
export type HookName = (typeof HOOK_NAMES)[number];

export interface PluginContext<C> {
  readonly config: C;
  readonly logger: Logger;
  /** The Prometheus registry: a plugin may add metrics of its own (prefix them `cachegate_<plugin>_`). */
  readonly registry: Registry;
  /** Registers a hook; the name must be one of HOOK_NAMES. */
  hook<N extends HookName>(name: N, fn: NonNullable<Hooks[N]>): void;
  /** Called when cachegate stops. */
  onClose(fn: () => void | Promise<void>): void;
  /** Purges stored entries (all tiers and instances), e.g. after a write that changes what they hold. Never throws. */
  purge(request: PluginPurge): Promise<void>;
}

/** What a plugin may purge: entries carrying any of these tags, or stored for these "host/path?query" URLs. */
export interface PluginPurge {
  tags?: string[];
  urls?: string[];
}

export interface PluginDefinition<S extends z.ZodType = z.ZodType> {
  readonly name: string;
  readonly configSchema: S;
  setup(api: PluginContext<z.output<S>>): void | Promise<void>;
}

export function definePlugin<S extends z.ZodType>(def: PluginDefinition<S>): PluginDefinition<S> {
  return def;
}

export type { CacheEntry, ResponsePlan };
