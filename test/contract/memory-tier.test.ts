import { MemoryTier } from "../../proxy/cache/memory-tier.js";
import { tierContract } from "./tier.contract.js";

tierContract("memory", async () => {
  const tier = new MemoryTier({ maxBytes: 16 * 1024 * 1024, maxEntries: 1_000, maxEntryBytes: 1024 * 1024 });
  return { tier, cleanup: () => tier.close() };
});
