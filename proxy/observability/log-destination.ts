// Where log lines go: pino's SonicBoom (asynchronous fs writes, EAGAIN retries, flushSync) with the lines of a
// short interval gathered into one write. SonicBoom alone issues an fs.write per line, or per handful of lines, and
// each goes through libuv's thread pool (a thread wake-up and a futex per write): under load that was the larger
// part of the access log's cost. Gathered for up to `maxDelayMs` (or `maxBytes`), the writes drop from one per few
// requests to a few dozen per second.
//
// What this changes for operators: a line reaches the file or pipe at most `maxDelayMs` (25 ms) later than it was
// logged. Lines buffered here are written synchronously when the process exits (process.exit included, so the
// fatal line of an uncaught exception is not lost); only a SIGKILL or a native crash loses the last interval.
import { mkdirSync, openSync } from "node:fs";
import { dirname } from "node:path";
import type { DestinationStream } from "pino";
import pino from "pino";

type SonicBoom = ReturnType<typeof pino.destination>;

export interface BatchOptions {
  /** Longest a line waits before it is handed to the file (ms). */
  maxDelayMs?: number;
  /** Size of the batch buffer: a batch is written once it would not fit another line. */
  maxBytes?: number;
  /** Bytes SonicBoom may hold unwritten before batches are dropped (default 64 MiB). */
  maxPendingBytes?: number;
}

const DEFAULT_DELAY_MS = 25;
const DEFAULT_MAX_BYTES = 64 * 1024;
/**
 * What SonicBoom may hold while the file or pipe does not keep up (a stalled log collector): beyond this, batches
 * are dropped, counted and reported on stderr, instead of growing the heap until the process dies.
 */
const MAX_PENDING_BYTES = 64 * 1024 * 1024;
const DROP_REPORT_INTERVAL_MS = 10_000;
/** The most UTF-8 bytes one UTF-16 code unit can take (a surrogate pair: 4 bytes for 2 units). */
const MAX_UTF8_PER_UNIT = 3;

/** Every batching destination still open, flushed synchronously on exit (one `exit` listener for all). */
const open = new Set<BatchedDestination>();
/** The shared destination of each file descriptor. */
const byFd = new Map<number, BatchedDestination>();
let exitHooked = false;

function flushAllSync(): void {
  for (const d of open) d.flushSync();
}

export class BatchedDestination implements DestinationStream {
  /**
   * Lines are encoded into this buffer as they come (each line once, while it is small): gathering them as one
   * string instead builds a rope of thousands of pieces that has to be flattened and encoded at the end, which
   * measured as the larger part of the batch's cost.
   */
  private buf: Buffer;
  private used = 0;
  private timer: NodeJS.Timeout | undefined;
  private readonly maxDelayMs: number;
  private readonly maxBytes: number;
  private ended = false;
  /** Bytes dropped since the last report on stderr, and in all. */
  private dropped = 0;
  private droppedReportedAt = 0;
  droppedBytes = 0;

  constructor(
    private readonly sink: SonicBoom,
    opts: BatchOptions = {},
  ) {
    this.maxDelayMs = opts.maxDelayMs ?? DEFAULT_DELAY_MS;
    this.maxBytes = opts.maxBytes ?? DEFAULT_MAX_BYTES;
    this.buf = Buffer.allocUnsafe(this.maxBytes);
    sink.on("drop", (chunk: Buffer) => this.onDrop(chunk.length));
    open.add(this);
    if (!exitHooked) {
      exitHooked = true;
      process.on("exit", flushAllSync);
    }
  }

  write(line: string): boolean {
    if (this.ended) return false;
    const worst = line.length * MAX_UTF8_PER_UNIT;
    if (this.used + worst > this.buf.length) {
      this.drain();
      if (worst > this.buf.length) {
        // Larger than a whole batch: on its own.
        this.hand(Buffer.from(line, "utf8"));
        return true;
      }
    }
    this.used += this.buf.write(line, this.used, "utf8");
    this.armTimer();
    return true;
  }

  /**
   * For a writer that encodes its own line into the batch (the access log, see access-line.ts): room for `bytes`
   * more bytes, the batch handed over first when it has too little. Returns the offset to write at in `batch`, or
   * -1 when this destination is closed or a line that long cannot go into a batch (write it as a string then).
   * Call `commit` with the end offset once the line is written.
   */
  reserve(bytes: number): number {
    if (this.ended || bytes > this.maxBytes) return -1;
    if (this.used + bytes > this.buf.length) this.drain();
    return this.used;
  }

  /** The batch buffer `reserve` made room in (replaced whenever a batch is handed over). */
  get batch(): Buffer {
    return this.buf;
  }

  /** Ends a `reserve`d write: the batch now holds `end` bytes. */
  commit(end: number): void {
    this.used = end;
    this.armTimer();
  }

  private armTimer(): void {
    if (this.timer === undefined) {
      this.timer = setTimeout(this.drain, this.maxDelayMs);
      this.timer.unref();
    }
  }

  /** Hands what is pending to SonicBoom (which writes it asynchronously). */
  private readonly drain = (): void => {
    if (this.timer !== undefined) {
      clearTimeout(this.timer);
      this.timer = undefined;
    }
    if (this.used === 0) return;
    const chunk = this.buf.subarray(0, this.used);
    this.buf = Buffer.allocUnsafe(this.maxBytes);
    this.used = 0;
    this.hand(chunk);
  };

  private onDrop(bytes: number): void {
    this.dropped += bytes;
    this.droppedBytes += bytes;
    const now = Date.now();
    if (now - this.droppedReportedAt < DROP_REPORT_INTERVAL_MS) return;
    this.droppedReportedAt = now;
    process.stderr.write(
      `cachegate: log output is not keeping up; ${this.dropped} bytes of log lines dropped ` +
        "(the log destination had too much waiting to be written)\n",
    );
    this.dropped = 0;
  }

  private hand(chunk: Buffer): void {
    // SonicBoom in buffer mode (see sonic()): its string mode would measure, encode and re-encode every batch.
    (this.sink.write as unknown as (b: Buffer) => boolean)(chunk);
  }

  /**
   * pino's `logger.flush(cb)`: hands over everything pending; `cb` runs once the file has it. (SonicBoom's own
   * flush calls back at once in its default mode, before an asynchronous write has landed: it waits for "drain".)
   */
  flush(cb?: (err?: Error) => void): void {
    this.drain();
    if (!cb) return;
    if (!(this.sink as unknown as { _writing?: boolean })._writing) return void process.nextTick(cb);
    const done = (err?: Error) => {
      this.sink.off("drain", done);
      this.sink.off("error", done);
      cb(err);
    };
    this.sink.once("drain", done);
    this.sink.once("error", done);
  }

  /** Writes everything pending now, synchronously (exit, fatal errors). Never throws. */
  flushSync(): void {
    this.drain();
    try {
      this.sink.flushSync();
    } catch {
      // Not open yet, or already closed: nothing more can be done at this point.
    }
  }

  /** Flushes and closes the file (the destination is unusable afterwards). */
  end(): void {
    if (this.ended) return;
    this.drain();
    this.ended = true;
    open.delete(this);
    for (const [fd, d] of byFd) if (d === this) byFd.delete(fd);
    this.sink.end();
  }
}

/**
 * The production log destination: a file descriptor (1 = stdout) or a path, written asynchronously in batches.
 * Loggers on the same descriptor share one destination (the first caller's options), so their lines keep their order.
 */
export function logDestination(dest: number | string, opts?: BatchOptions): BatchedDestination {
  if (typeof dest === "number") {
    let d = byFd.get(dest);
    if (!d) {
      d = new BatchedDestination(sonic(dest, opts?.maxPendingBytes), opts);
      byFd.set(dest, d);
    }
    return d;
  }
  return new BatchedDestination(sonic(dest, opts?.maxPendingBytes), opts);
}

/**
 * SonicBoom in buffer mode: it is handed whole encoded batches. A path is opened here, synchronously: SonicBoom
 * would open it asynchronously, and a process that exits before that open completes (process.exit right after
 * start) would lose its lines and die in pino's exit hook ("sonic boom is not ready yet"). Opening at once also
 * makes an unwritable path an error at creation, where the caller can name it.
 */
function sonic(dest: number | string, maxPending = MAX_PENDING_BYTES): SonicBoom {
  let fd: number;
  if (typeof dest === "string") {
    mkdirSync(dirname(dest), { recursive: true });
    fd = openSync(dest, "a");
  } else {
    fd = dest;
  }
  return pino.destination({
    dest: fd,
    sync: false,
    contentMode: "buffer",
    maxLength: maxPending,
  } as Parameters<typeof pino.destination>[0]);
}
