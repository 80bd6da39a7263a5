// What the demo shows: running totals, a live status area (redrawn in place on a terminal, plain periodic lines
// otherwise), and the closing summary table.
import type { Result } from "./workload.js";

const HIT_VALUES = new Set(["HIT", "STALE", "REVALIDATED"]);

export function isHit(r: Result): boolean {
  return HIT_VALUES.has(r.cache);
}

export function percentile(sorted: readonly number[], p: number): number | undefined {
  if (sorted.length === 0) return undefined;
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[i];
}

export class Tally {
  readonly results: Result[] = [];
  inFlight = 0;

  constructor(readonly total: number) {}

  add(r: Result): void {
    this.results.push(r);
  }

  get done(): number {
    return this.results.length;
  }
  get hits(): Result[] {
    return this.results.filter((r) => !r.error && isHit(r));
  }
  get misses(): Result[] {
    return this.results.filter((r) => !r.error && r.cache === "MISS");
  }
  get errors(): Result[] {
    return this.results.filter((r) => r.error !== undefined);
  }
  get streaming(): number {
    return this.results.filter((r) => r.spec.streaming).length;
  }
  /** Hits over answered requests (errors excluded). */
  hitRatio(): number {
    const answered = this.done - this.errors.length;
    return answered === 0 ? 0 : this.hits.length / answered;
  }
  latency(rs: readonly Result[], p: number): number | undefined {
    return percentile(
      rs.map((r) => r.ms).sort((a, b) => a - b),
      p,
    );
  }
  tokensSaved(): { tokens: number; priceUsd: number } {
    let tokens = 0;
    let priceUsd = 0;
    for (const r of this.hits) {
      tokens += r.tokens;
      priceUsd += r.priceUsd;
    }
    return { tokens, priceUsd };
  }
}

const fmtMs = (ms: number | undefined) =>
  ms === undefined ? "—" : ms < 10 ? `${ms.toFixed(1)} ms` : `${Math.round(ms)} ms`;
const fmtInt = (n: number) => n.toLocaleString("en-US");
const fmtPct = (x: number) => `${(x * 100).toFixed(1)}%`;
const fmtUsd = (x: number) => `$${x.toFixed(4)}`;

function bar(fraction: number, width: number): string {
  const full = Math.round(Math.min(1, Math.max(0, fraction)) * width);
  return `${"█".repeat(full)}${"░".repeat(width - full)}`;
}

function speedup(t: Tally): string {
  const hit = t.latency(t.hits, 50);
  const miss = t.latency(t.misses, 50);
  if (hit === undefined || miss === undefined || hit <= 0) return "";
  return `  (hits ${Math.round(miss / hit)}× faster)`;
}

/** The status area: four lines. */
export function statusLines(t: Tally, elapsedMs: number): string[] {
  const saved = t.tokensSaved();
  return [
    `progress   ${bar(t.done / t.total, 30)} ${t.done}/${t.total}  ${t.inFlight} in flight  ${(elapsedMs / 1000).toFixed(1)} s`,
    `hit ratio  ${fmtPct(t.hitRatio())}  (${t.hits.length} hits, ${t.misses.length} misses, ${t.errors.length} errors)`,
    `latency    cached p50 ${fmtMs(t.latency(t.hits, 50))}   uncached p50 ${fmtMs(t.latency(t.misses, 50))}${speedup(t)}`,
    `saved      ${fmtInt(saved.tokens)} tokens  (${fmtUsd(saved.priceUsd)})`,
  ];
}

/** One line for logs and pipes. */
export function plainLine(t: Tally, elapsedMs: number): string {
  const saved = t.tokensSaved();
  return (
    `[${(elapsedMs / 1000).toFixed(1).padStart(5)} s] ${t.done}/${t.total} requests, hit ratio ${fmtPct(t.hitRatio())}, ` +
    `cached p50 ${fmtMs(t.latency(t.hits, 50))}, uncached p50 ${fmtMs(t.latency(t.misses, 50))}, ` +
    `tokens saved ${fmtInt(saved.tokens)}`
  );
}

/**
 * Redraws `statusLines` in place when `out` is a terminal (cursor up + clear line, cursor hidden meanwhile);
 * otherwise prints `plainLine` every `plainEveryMs`.
 */
export class LiveView {
  private drawn = 0;
  private lastPlain = 0;

  constructor(
    private readonly out: NodeJS.WriteStream,
    private readonly plainEveryMs = 2_000,
  ) {}

  get tty(): boolean {
    return this.out.isTTY === true;
  }

  update(t: Tally, elapsedMs: number, force = false): void {
    if (this.tty) {
      const lines = statusLines(t, elapsedMs);
      let s = this.drawn === 0 ? "\x1b[?25l" : `\x1b[${this.drawn}F`; // hide cursor, or back to the first line
      for (const l of lines) s += `\x1b[2K${l}\n`;
      this.out.write(s);
      this.drawn = lines.length;
    } else if (force || elapsedMs - this.lastPlain >= this.plainEveryMs) {
      this.lastPlain = elapsedMs;
      this.out.write(`${plainLine(t, elapsedMs)}\n`);
    }
  }

  /** Leaves the last status on screen and gives the cursor back. */
  finish(): void {
    if (this.tty && this.drawn > 0) this.out.write("\x1b[?25h");
    this.drawn = 0;
  }
}

function table(rows: string[][]): string {
  const widths = rows[0]?.map((_, c) => Math.max(...rows.map((r) => (r[c] ?? "").length))) ?? [];
  return rows
    .map((r) =>
      r.map((cell, c) => (c === 0 ? cell.padEnd(widths[c] ?? 0) : cell.padStart(widths[c] ?? 0))).join("   "),
    )
    .join("\n");
}

export interface SummaryExtras {
  wallMs: number;
  /** Generations the upstream actually ran (known when the demo started the simulator). */
  upstreamGenerations?: number;
  /** cachegate_dify_tokens_saved_total, when the Dify plugin is loaded. */
  pluginTokensSaved?: number;
}

export function summary(t: Tally, extras: SummaryExtras): string {
  const hits = t.hits;
  const misses = t.misses;
  const saved = t.tokensSaved();
  const missTokens = misses.reduce((a, r) => a + r.tokens, 0);
  const kv: string[][] = [
    [
      "requests",
      `${t.done} (${t.done - t.streaming} blocking, ${t.streaming} streaming, ${t.errors.length} failed)`,
    ],
    ["hit ratio", `${fmtPct(t.hitRatio())} (${hits.length} hits, ${misses.length} misses)`],
    ["tokens saved", `${fmtInt(saved.tokens)} (${fmtUsd(saved.priceUsd)} at the upstream's price)`],
  ];
  if (extras.pluginTokensSaved !== undefined) {
    kv.push(["  by the plugin", `${fmtInt(extras.pluginTokensSaved)} (cachegate_dify_tokens_saved_total)`]);
  }
  if (extras.upstreamGenerations !== undefined) {
    kv.push(["upstream calls", `${extras.upstreamGenerations} generations for ${t.done} requests`]);
  }
  kv.push(["wall time", `${(extras.wallMs / 1000).toFixed(1)} s`]);
  const latency = table([
    ["", "cached (hits)", "uncached (misses)"],
    ["requests", String(hits.length), String(misses.length)],
    ["latency p50", fmtMs(t.latency(hits, 50)), fmtMs(t.latency(misses, 50))],
    ["latency p95", fmtMs(t.latency(hits, 95)), fmtMs(t.latency(misses, 95))],
    ["latency max", fmtMs(t.latency(hits, 100)), fmtMs(t.latency(misses, 100))],
    ["tokens", fmtInt(saved.tokens), fmtInt(missTokens)],
  ]);
  const head = kv.map(([k, v]) => `  ${(k ?? "").padEnd(16)}${v}`).join("\n");
  const indented = latency
    .split("\n")
    .map((l) => `  ${l}`)
    .join("\n");
  const errors = t.errors.slice(0, 5).map((r) => `  error: request #${r.spec.index}: ${r.error}`);
  return ["", "Summary", head, "", indented, ...errors, ""].join("\n");
}
