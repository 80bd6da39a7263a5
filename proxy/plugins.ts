// Loads plugins (built-in names or file paths), validates each one's config section, runs their setup, and runs
// their hooks for the pipeline. Every boot failure is a PluginError with a stable code.
import { isAbsolute, resolve } from "node:path";
import { pathToFileURL } from "node:url";
import type { Logger } from "pino";
import type { Registry } from "prom-client";
import type { Config } from "../config/schema.js";
import { BUILTIN_PLUGINS } from "../plugins/index.js";
import {
  type ClassifyDecision,
  HOOK_NAMES,
  type HookName,
  type Hooks,
  type PluginDefinition,
  type PluginPurge,
  type PluginRequest,
  type StoreCandidate,
  type StoreVerdict,
} from "../plugins/plugin-api.js";
import type { CacheEntry } from "./cache/entry.js";
import type { RequestContext, ResponsePlan } from "./context.js";

export type PluginErrorCode =
  | "plugin_not_found"
  | "plugin_invalid"
  | "plugin_config_invalid"
  | "plugin_hook_unknown"
  | "plugin_setup_failed";

export class PluginError extends Error {
  constructor(
    readonly code: PluginErrorCode,
    message: string,
  ) {
    super(message);
    this.name = "PluginError";
  }
}

type PluginSpec = Config["plugins"][number];

function isDefinition(v: unknown): v is PluginDefinition {
  const d = v as Partial<PluginDefinition> | null;
  return (
    typeof d === "object" &&
    d !== null &&
    typeof d.name === "string" &&
    typeof d.setup === "function" &&
    typeof (d.configSchema as { safeParse?: unknown } | undefined)?.safeParse === "function"
  );
}

async function resolveDefinition(
  spec: { name?: string; path?: string },
  where: string,
): Promise<PluginDefinition> {
  if (spec.path) {
    const url = pathToFileURL(isAbsolute(spec.path) ? spec.path : resolve(spec.path)).href;
    let mod: { default?: unknown; plugin?: unknown };
    try {
      mod = (await import(url)) as { default?: unknown; plugin?: unknown };
    } catch (err) {
      throw new PluginError(
        "plugin_not_found",
        `${where}: cannot load plugin file ${spec.path}: ${(err as Error).message}`,
      );
    }
    const def = mod.default ?? mod.plugin;
    if (!isDefinition(def)) {
      throw new PluginError(
        "plugin_invalid",
        `${where}: ${spec.path} does not export a definePlugin(...) result as default`,
      );
    }
    return def;
  }
  const name = spec.name ?? "";
  const load = BUILTIN_PLUGINS[name];
  if (!load) {
    const known = Object.keys(BUILTIN_PLUGINS).join(", ");
    throw new PluginError(
      "plugin_not_found",
      `${where}: unknown plugin "${name}" (built-in: ${known}; or give a path)`,
    );
  }
  return load();
}

export interface LoadedPlugin {
  readonly name: string;
  readonly hooks: Hooks;
}

const REQUEST_VIEW = Symbol("pluginRequest");

export class PluginHost {
  private readonly closers: Array<() => void | Promise<void>> = [];
  private constructor(readonly plugins: readonly LoadedPlugin[]) {}

  static async load(
    specs: readonly PluginSpec[],
    deps: { logger: Logger; registry: Registry; purge?: (request: PluginPurge) => Promise<unknown> },
  ): Promise<PluginHost> {
    const loaded: LoadedPlugin[] = [];
    const closers: Array<() => void | Promise<void>> = [];
    for (const [i, raw] of specs.entries()) {
      const spec = typeof raw === "string" ? (raw.includes("/") ? { path: raw } : { name: raw }) : raw;
      const where = `plugins[${i}]`;
      const def = await resolveDefinition(spec, where);
      const parsed = def.configSchema.safeParse(typeof raw === "string" ? {} : (raw.config ?? {}));
      if (!parsed.success) {
        const lines = parsed.error.issues.map(
          (iss) => `${where}.config.${iss.path.join(".") || "(root)"}: ${iss.message}`,
        );
        throw new PluginError("plugin_config_invalid", `plugin "${def.name}": ${lines.join("; ")}`);
      }
      const hooks: Hooks = {};
      try {
        await def.setup({
          config: parsed.data,
          logger: deps.logger.child({ plugin: def.name }),
          registry: deps.registry,
          hook(name, fn) {
            if (!(HOOK_NAMES as readonly string[]).includes(name)) {
              throw new PluginError(
                "plugin_hook_unknown",
                `plugin "${def.name}": unknown hook "${String(name)}" (known: ${HOOK_NAMES.join(", ")})`,
              );
            }
            (hooks as Record<HookName, unknown>)[name] = fn;
          },
          onClose(fn) {
            closers.push(fn);
          },
          async purge(request) {
            await deps.purge?.(request);
          },
        });
      } catch (err) {
        if (err instanceof PluginError) throw err;
        throw new PluginError(
          "plugin_setup_failed",
          `plugin "${def.name}": setup failed: ${(err as Error).message}`,
        );
      }
      loaded.push({ name: def.name, hooks });
    }
    const host = new PluginHost(loaded);
    host.closers.push(...closers);
    return host;
  }

  get empty(): boolean {
    return this.plugins.length === 0;
  }

  has(name: HookName): boolean {
    return this.plugins.some((p) => p.hooks[name] !== undefined);
  }

  /** The read-only request view hooks receive (one per request). */
  view(ctx: RequestContext, readBody: (max: number) => Promise<Buffer | undefined>): PluginRequest {
    const holder = ctx as unknown as { [REQUEST_VIEW]?: PluginRequest };
    const existing = holder[REQUEST_VIEW];
    if (existing) return existing;
    const q = ctx.url.indexOf("?");
    const view: PluginRequest = {
      id: ctx.id,
      method: ctx.method,
      path: ctx.path,
      url: ctx.url,
      query: new URLSearchParams(q === -1 ? "" : ctx.url.slice(q + 1)),
      headers: ctx.req.headers,
      route: ctx.route?.name ?? "",
      upstream: ctx.upstream?.name ?? "",
      upstreamUrl: ctx.upstream?.url.href ?? "",
      clientIp: ctx.clientIp,
      state: new Map(),
      async json(maxBytes = 1024 * 1024) {
        const body = await readBody(maxBytes);
        if (!body || body.length === 0) return undefined;
        try {
          return JSON.parse(body.toString("utf8")) as unknown;
        } catch {
          return undefined;
        }
      },
    };
    holder[REQUEST_VIEW] = view;
    return view;
  }

  async onRequest(req: PluginRequest): Promise<ResponsePlan | undefined> {
    for (const p of this.plugins) {
      const r = await p.hooks.onRequest?.(req);
      if (r) return r;
    }
    return undefined;
  }

  async classify(req: PluginRequest): Promise<ClassifyDecision> {
    for (const p of this.plugins) {
      const d = await p.hooks.classify?.(req);
      if (d) return d;
    }
    return undefined;
  }

  shouldStore(candidate: StoreCandidate): StoreVerdict {
    let current: StoreCandidate = candidate;
    let replaced = false;
    for (const p of this.plugins) {
      const v = p.hooks.shouldStore?.(current);
      if (v === false) return false;
      if (typeof v === "object") {
        current = { ...current, body: v.body };
        replaced = true;
      }
    }
    return replaced ? { body: current.body } : true;
  }

  onHit(req: PluginRequest, entry: CacheEntry): void {
    for (const p of this.plugins) p.hooks.onHit?.(req, entry);
  }

  onResponse(req: PluginRequest, response: ResponsePlan): ResponsePlan {
    let r = response;
    for (const p of this.plugins) if (p.hooks.onResponse) r = p.hooks.onResponse(req, r);
    return r;
  }

  async close(): Promise<void> {
    for (const c of this.closers) await c();
  }
}
