import { existsSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

/**
 * Path of a file under the package's `proto/` directory. From source a module sits one or two
 * levels below the package root, from a build (dist/...) one more: walk up instead of
 * hard-coding either.
 */
export function protoPath(relative: string): string {
  const here = path.dirname(fileURLToPath(import.meta.url));
  for (let dir = here; ; dir = path.dirname(dir)) {
    const candidate = path.join(dir, 'proto', relative);
    if (existsSync(candidate)) return candidate;
    if (path.dirname(dir) === dir) throw new Error(`proto file ${relative} not found above ${here}`);
  }
}
