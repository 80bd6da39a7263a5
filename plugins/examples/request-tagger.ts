// The example plugin from docs/plugins.md: caches GETs under a path prefix for a fixed time (whatever the upstream
// says), tags them for purging, never caches one path, and stamps every cache hit with a header.
import { z } from "zod";
import { definePlugin } from "../plugin-api.js";

export default definePlugin({
  name: "request-tagger",
  configSchema: z.strictObject({
    /** Requests under this prefix are cached for `ttlSeconds`. */
    prefix: z.string().startsWith("/").default("/catalog/"),
    ttlSeconds: z.number().int().min(1).default(60),
    /** Never cached. */
    neverPath: z.string().startsWith("/").default("/catalog/live"),
    tag: z.string().min(1).default("catalog"),
  }),
  setup(api) {
    const { prefix, ttlSeconds, neverPath, tag } = api.config;
    api.hook("classify", (req) => {
      if (req.method !== "GET") return undefined;
      if (req.path === neverPath) return { cache: false, reason: "live data" };
      if (!req.path.startsWith(prefix)) return undefined; // the route's own rules decide
      return {
        cache: true,
        key: req.url,
        rules: { mode: "override", ttl: ttlSeconds * 1000 },
        tags: [tag],
        kind: "catalog",
      };
    });
    api.hook("onResponse", (req, response) => {
      if (req.state.get("hit") === true) response.headers["x-served-by-plugin"] = "request-tagger";
      return response;
    });
    api.hook("onHit", (req) => {
      req.state.set("hit", true);
    });
  },
});
