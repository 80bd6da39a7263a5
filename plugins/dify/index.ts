// The Dify plugin (`--plugin dify`): caches Dify service-API generation calls and app configuration, following
// ../../docs/dify.md (policy, key recipe, what is replayed, deviations from DIFY.md).
//
//   classify     endpoint table (policy.ts) → bypass, or a key (key.ts) with rules: ttl, POST, keyed per API key
//   shouldStore  200 + a complete, successful answer only (response.ts, sse.ts); pings dropped from streams
//   onHit        tokens and cost saved, from the stored response's usage (metrics.ts)
//   onResponse   requests by kind and result; stored streams replayed frame by frame (replay.ts); purge after
//                annotation writes
import { sha256 } from "../../proxy/cache/key.js";
import { type ClassifyDecision, definePlugin, type PluginRequest } from "../plugin-api.js";
import { difyConfigSchema } from "./config.js";
import {
  appConfigKey,
  generationKey,
  hasFiles,
  isBlankConversation,
  isObject,
  KEY_VERSION,
  keyTarget,
  TRACE_QUERY_PARAMS,
} from "./key.js";
import { createDifyMetrics, entryUsage } from "./metrics.js";
import { type DifyKind, endpointFor, subpathOf } from "./policy.js";
import { pacedReplay } from "./replay.js";
import { judgeAppConfig, judgeGeneration } from "./response.js";

type Rules = NonNullable<Extract<ClassifyDecision, { cache: true }>["rules"]>;

/** What classify learnt about a request, for the later hooks. */
interface DifyState {
  kind: DifyKind;
  /** Which validator judges the response before it is stored; undefined: not cached. */
  store: "completion" | "workflow" | "chat" | "app_config" | undefined;
  /** Purge tag for everything stored under this request's API key. */
  keyTag: string | undefined;
  purgeKeyOnSuccess: boolean;
  hit: boolean;
}

const STATE = "dify";

function stateOf(req: PluginRequest): DifyState | undefined {
  return req.state.get(STATE) as DifyState | undefined;
}

/** "dify-key:" + 16 hex of sha256(the key), so an operator can compute it: printf %s "$KEY" | sha256sum. */
function keyTagOf(authorization: string | undefined): string | undefined {
  const token = authorization?.replace(/^\s*bearer\s+/i, "").trim();
  return token ? `dify-key:${sha256(token).slice(0, 16)}` : undefined;
}

export default definePlugin({
  name: "dify",
  configSchema: difyConfigSchema,
  setup(api) {
    const cfg = api.config;
    const metrics = createDifyMetrics(api.registry);
    // Keyed per API key (tenantHeader: the core hashes Authorization into the key), so Dify's authorized and
    // cache-header-less responses become storable, for `ttl` whatever the route says. No stale serving: a
    // background refresh of a generation call would spend tokens nobody asked for.
    const base: Rules = {
      mode: "override",
      methods: ["GET", "HEAD", "POST"],
      statuses: [200],
      tenantHeader: "authorization",
      shared: false,
      staleWhileRevalidate: 0,
      staleIfError: 0,
    };
    const generationRules: Rules = { ...base, ttl: cfg.generationTtl };
    const appConfigRules: Rules = { ...base, ttl: cfg.appConfigTtl };
    const bypass = (reason: string): ClassifyDecision => ({ cache: false, reason });

    api.hook("classify", async (req) => {
      const subpath = subpathOf(req.path, cfg.pathPrefix);
      if (subpath === undefined) return undefined; // not the service API: the route's own rules decide
      const endpoint = endpointFor(req.method, subpath);
      const auth = req.headers.authorization;
      const keyTag = keyTagOf(auth);
      const state: DifyState = {
        kind: endpoint.kind,
        store: undefined,
        keyTag,
        purgeKeyOnSuccess: endpoint.action === "bypass" && endpoint.purgeKey === true,
        hit: false,
      };
      req.state.set(STATE, state);
      if (endpoint.action === "bypass") return bypass(endpoint.reason);
      if (!keyTag) return bypass("no API key (Dify answers 401)");
      const tags = ["dify", keyTag];

      if (endpoint.action === "app_config") {
        state.store = "app_config";
        return {
          cache: true,
          key: appConfigKey(req.path),
          // No user argument in app.py: ?user= changes nothing but would split the entry per end user.
          target: keyTarget(req.path, req.query, ["user", ...TRACE_QUERY_PARAMS]),
          rules: appConfigRules,
          tags,
          kind: "app_config",
        };
      }

      if (endpoint.kind === "chat" && !cfg.cacheChatMessages)
        return bypass("chat (opt-in: cacheChatMessages)");
      const body = await req.json(cfg.maxBodyBytes);
      if (!isObject(body)) return bypass("body is not a JSON object, or too large to key");
      if (!isBlankConversation(body.conversation_id)) return bypass("conversation_id (stateful)");
      if (!cfg.cacheFiles && hasFiles(body)) return bypass("files (opt-in: cacheFiles)");
      state.store = endpoint.kind;
      return {
        cache: true,
        key: generationKey({
          method: req.method,
          path: req.path,
          body,
          // Chat keeps `user` always: a replayed conversation_id belongs to the original end user.
          perUser: endpoint.kind === "chat" || !cfg.shareAcrossUsers,
        }),
        target: keyTarget(req.path, req.query, TRACE_QUERY_PARAMS),
        rules: generationRules,
        coalesceTimeoutMs: cfg.coalesceTimeout,
        tags,
        kind: endpoint.kind,
      };
    });

    const storeRules = { allowAgent: cfg.cacheAgentChat, allowSignedUrls: cfg.storeSignedFileUrls };
    api.hook("shouldStore", ({ request, status, headers, body }) => {
      const kind = stateOf(request)?.store;
      if (kind === undefined) return true; // not a request this plugin keyed
      const verdict =
        kind === "app_config"
          ? judgeAppConfig(status, headers, body)
          : judgeGeneration(kind, status, headers, body, storeRules);
      if (!verdict.store) {
        api.logger.debug(
          { reqId: request.id, path: request.path, reason: verdict.reason },
          "dify: not stored",
        );
        return false;
      }
      return verdict.body ? { body: verdict.body } : true;
    });

    api.hook("onHit", (req, entry) => {
      const state = stateOf(req);
      if (state) state.hit = true;
      const usage = entryUsage(entry);
      if (usage) metrics.saved(usage);
    });

    api.hook("onResponse", (req, response) => {
      const subpath = subpathOf(req.path, cfg.pathPrefix);
      if (subpath === undefined) return response;
      // No state: the classify hook did not run (route cache disabled, or the bypass header).
      const state = stateOf(req);
      const kind = state?.kind ?? endpointFor(req.method, subpath).kind;
      metrics.request(kind, state?.hit ? "hit" : state?.store ? "miss" : "bypass");
      if (
        state?.purgeKeyOnSuccess &&
        state.keyTag &&
        cfg.purgeOnAnnotationChange &&
        response.status >= 200 &&
        response.status < 300
      ) {
        void api.purge({ tags: [state.keyTag] });
      }
      if (state?.hit && cfg.replayPacing > 0 && Buffer.isBuffer(response.body)) {
        const type = String(response.headers["content-type"] ?? "").toLowerCase();
        if (type.startsWith("text/event-stream")) {
          delete response.headers["content-length"]; // chunked, as Dify sends it
          return { ...response, body: pacedReplay(response.body, cfg.replayPacing) };
        }
      }
      return response;
    });

    api.logger.debug({ keyVersion: KEY_VERSION, prefix: cfg.pathPrefix }, "dify plugin ready");
  },
});
