// Finding the real server binaries the tests start. A missing one fails the test with the install command.
import { accessSync, constants } from "node:fs";
import { delimiter, join } from "node:path";

/** `preferredDir/name`, else the first `name` on PATH; throws `hint` when there is none. */
export function findExecutable(name: string, preferredDir: string, hint: string): string {
  const dirs = [preferredDir, ...(process.env.PATH ?? "").split(delimiter).filter(Boolean)];
  for (const dir of dirs) {
    const candidate = join(dir, name);
    try {
      accessSync(candidate, constants.X_OK);
      return candidate;
    } catch {
      // not here; keep looking
    }
  }
  throw new Error(hint);
}
