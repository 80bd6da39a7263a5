// Built-in plugins, loaded by name (`--plugin dify`). Imported lazily: an unused plugin costs nothing at start-up.
import type { PluginDefinition } from "./plugin-api.js";

export const BUILTIN_PLUGINS: Record<string, () => Promise<PluginDefinition>> = {
  dify: async () => (await import("./dify/index.js")).default as unknown as PluginDefinition,
  "request-tagger": async () =>
    (await import("./examples/request-tagger.js")).default as unknown as PluginDefinition,
};
