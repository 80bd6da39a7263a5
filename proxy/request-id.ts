// Request ids for requests that bring none: UUID-shaped (36 characters, a version-4 layout) so log pipelines that
// expect UUIDs keep parsing them, but made of a random per-process prefix and a sequence number instead of 122 fresh
// random bits. crypto.randomUUID formats 16 random bytes as hex on every call (twenty string pieces, flattened again
// when the header is written): priced at 2-3 % of a pass-through request's CPU in same-core pairs (weak evidence at
// that size: the pairs spread ±2 % per round). A prefix
// drawn once per process (74 random bits) keeps ids from different instances, workers and restarts apart; the
// sequence keeps them apart within one process for 2^48 requests. Request ids are labels, not secrets: nothing
// authorizes by them, so their being guessable within a process costs nothing.
import { randomUUID } from "node:crypto";

const SEQUENCE_SPAN = 2 ** 48;
const ID_LENGTH = 36;
/** Ids made at once: one flat string of BATCH ids, which `next` hands out as slices. */
const BATCH = 64;

export class RequestIds {
  /** "xxxxxxxx-xxxx-4xxx-yxxx-": the first four groups of a random UUID. */
  private readonly prefix: string;
  private seq = 0;
  private block = "";
  private at = BATCH;

  constructor(seed: string = randomUUID()) {
    this.prefix = seed.slice(0, 24);
  }

  /**
   * The next id. Ids are made BATCH at a time and joined into one flat string; each id is a slice of it. A
   * concatenated id would be a V8 cons string, which node's header-value check (a regular expression) must first
   * flatten in the runtime, once per request (perf: `Runtime_RegExpExec` under ClientRequest); a slice of a flat
   * string is read in place.
   */
  next(): string {
    if (this.at === BATCH) this.refill();
    const start = this.at * ID_LENGTH;
    this.at++;
    return this.block.slice(start, start + ID_LENGTH);
  }

  private refill(): void {
    const ids = new Array<string>(BATCH);
    for (let i = 0; i < BATCH; i++) {
      this.seq = (this.seq + 1) % SEQUENCE_SPAN;
      ids[i] = this.prefix + this.seq.toString(16).padStart(12, "0");
    }
    this.block = ids.join("");
    this.at = 0;
  }
}
