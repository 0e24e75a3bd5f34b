import { fileURLToPath } from 'node:url';
import path from 'node:path';

export const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');

/** argv that runs the kubevirt-spdk CLI from source (tsx), for tests that start real processes. */
export function cliArgv(...args: string[]): { command: string; args: string[] } {
  return { command: process.execPath, args: ['--import', 'tsx', path.join(REPO_ROOT, 'src/cli/main.ts'), ...args] };
}

/** argv that runs the SPDK simulator as its own process from source (testing/spdk-sim/main.ts), standing in for spdk_tgt. */
export function simArgv(...args: string[]): { command: string; args: string[] } {
  return { command: process.execPath, args: ['--import', 'tsx', path.join(REPO_ROOT, 'testing/spdk-sim/main.ts'), ...args] };
}
