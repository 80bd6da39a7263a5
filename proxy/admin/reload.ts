// POST /reload on the admin port (and SIGHUP, in main.ts): re-read the config and apply it without dropping
// connections. An invalid config is refused with the loader's message (file, key path, reason); the running
// config stays.
import type { Logger } from "pino";
import { ConfigError } from "../../config/load.js";
import type { Config } from "../../config/schema.js";
import { errorBody } from "../errors.js";
import type { AdminHandler } from "./admin-server.js";

export function createReloadHandler(
  read: () => Config,
  apply: (config: Config) => { restartRequired: string[] },
  logger: Logger,
): AdminHandler {
  return (_req, res) => {
    let body: Buffer;
    let status = 200;
    try {
      const result = apply(read());
      body = Buffer.from(JSON.stringify({ reloaded: true, ...result }));
    } catch (err) {
      if (!(err instanceof ConfigError)) throw err;
      logger.error(
        { problems: err.problems, source: err.source },
        "config reload refused; the running config stays",
      );
      status = 400;
      body = errorBody("invalid_request", err.message);
    }
    res.writeHead(status, {
      "content-type": "application/json; charset=utf-8",
      "content-length": body.length,
    });
    res.end(body);
  };
}
