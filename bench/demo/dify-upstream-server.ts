// The Dify simulator as a process of its own: the compose stack's `dify-sim` service (docker/Dockerfile, target
// demo-upstream), or by hand: `node --import tsx bench/demo/dify-upstream-server.ts`.
//   DIFY_SIM_HOST (default 0.0.0.0), DIFY_SIM_PORT (default 5001, Dify's api port), DIFY_SIM_ANSWER_MS (default 1000)
import { startDifySim } from "./dify-upstream.js";

function intEnv(name: string, fallback: number, min: number, max: number): number {
  const raw = process.env[name];
  if (raw === undefined || raw === "") return fallback;
  const n = Number(raw);
  if (!Number.isInteger(n) || n < min || n > max) {
    console.error(`dify-sim: ${name} must be an integer from ${min} to ${max}, got "${raw}"`);
    process.exit(2);
  }
  return n;
}

const sim = await startDifySim({
  host: process.env.DIFY_SIM_HOST || "0.0.0.0",
  port: intEnv("DIFY_SIM_PORT", 5001, 0, 65535),
  answerMs: intEnv("DIFY_SIM_ANSWER_MS", 1000, 0, 600_000),
});
console.log(JSON.stringify({ msg: "dify-sim listening", port: sim.port, pid: process.pid }));

let stopping = false;
const stop = () => {
  if (stopping) process.exit(1);
  stopping = true;
  const { generations, tokens } = sim.stats();
  sim.close().then(() => {
    console.log(JSON.stringify({ msg: "dify-sim stopped", generations, tokens }));
    process.exit(0);
  });
};
process.on("SIGTERM", stop);
process.on("SIGINT", stop);
