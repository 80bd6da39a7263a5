// Fixed-count load for the counting benchmarks (bench:inventory, bench:instructions): `n` GETs, each with its own URL
// (or all on one URL, as `npm run bench` sends them).
import http from "node:http";

/** Every load phase gives up after this long (a hung proxy must not hang the benchmark). */
export const PHASE_DEADLINE_MS = 60_000;

/**
 * `n` GETs over `connections` keep-alive connections, each with its own URL (`/x?i=<from + k>`), or all to `/x` when
 * `sameUrl`; rejects on any non-200, on a connection error, or after `deadlineMs`.
 */
export async function loadDistinct(
  port: number,
  n: number,
  connections: number,
  from: number,
  deadlineMs = PHASE_DEADLINE_MS,
  sameUrl = false,
): Promise<void> {
  const agent = new http.Agent({ keepAlive: true, maxSockets: connections });
  let sent = 0;
  let done = 0;
  try {
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(
        () => reject(new Error(`load did not finish in ${deadlineMs} ms`)),
        deadlineMs,
      );
      const next = () => {
        if (sent >= n) return;
        const i = from + sent++;
        const req = http.get(
          { host: "127.0.0.1", port, path: sameUrl ? "/x" : `/x?i=${i}`, agent },
          (res) => {
            if (res.statusCode !== 200) {
              clearTimeout(timer);
              reject(new Error(`request ${i} got ${res.statusCode}`));
            }
            res.resume();
            res.on("end", () => {
              if (++done === n) {
                clearTimeout(timer);
                resolve();
              } else next();
            });
          },
        );
        req.on("error", (err) => {
          clearTimeout(timer);
          reject(err);
        });
      };
      for (let c = 0; c < Math.min(connections, n); c++) next();
    });
  } finally {
    agent.destroy();
  }
}
