// Reads samples from a gate's admin /metrics text (Prometheus exposition format).
import type { TestGate } from "./cachegate.js";
import { request } from "./http.js";

/** The value of one sample, e.g. metric(gate, 'cachegate_breaker_state{upstream="up"}'); undefined if absent. */
export async function metric(gate: TestGate, sample: string): Promise<number | undefined> {
  const text = (await request(`${gate.adminUrl}/metrics`)).text;
  for (const line of text.split("\n")) {
    if (line.startsWith(`${sample} `)) return Number(line.slice(sample.length + 1));
  }
  return undefined;
}
