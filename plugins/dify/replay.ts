// Replays a stored event stream frame by frame, `gapMs` apart, so a client sees tokens arrive as it would live.
import { Readable } from "node:stream";
import { parseFrames } from "./sse.js";

class PacedFrames extends Readable {
  private sent = 0;
  private timer: NodeJS.Timeout | undefined;

  constructor(
    private readonly frames: readonly Buffer[],
    private readonly gapMs: number,
  ) {
    super();
  }

  override _read(): void {
    if (this.timer !== undefined) return;
    if (this.sent === 0 || this.sent >= this.frames.length) {
      this.next();
      return;
    }
    this.timer = setTimeout(() => {
      this.timer = undefined;
      this.next();
    }, this.gapMs);
  }

  private next(): void {
    const frame = this.frames[this.sent++];
    this.push(frame ?? null);
  }

  override _destroy(err: Error | null, cb: (err?: Error | null) => void): void {
    clearTimeout(this.timer); // the client left: no more frames
    this.timer = undefined;
    cb(err);
  }
}

/** A stream of the stored body's frames; the first at once, each next one `gapMs` later. */
export function pacedReplay(body: Buffer, gapMs: number): Readable {
  const { frames, rest } = parseFrames(body.toString("utf8"));
  const chunks = frames.map((f) => Buffer.from(f.raw, "utf8"));
  if (rest !== "") chunks.push(Buffer.from(rest, "utf8"));
  return new PacedFrames(chunks, gapMs);
}
