import { readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

/**
 * The standalone agent (and `--help`) must not load gRPC or the Kubernetes client: they are
 * slow to load and cluster-only. Cluster pieces are imported lazily (`await import`), which
 * this walk of the static `import`/`export ... from` graph does not follow.
 */
const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');
const STATIC_IMPORT = /^(?:import|export)\s+(type\s+)?(?:[^;'"]*?\s+from\s+)?['"]([^'"]+)['"]/gm;

function packagesReachedFrom(entry: string): Map<string, string> {
  const packages = new Map<string, string>();
  const seen = new Set<string>();
  const queue = [entry];
  for (let file = queue.pop(); file !== undefined; file = queue.pop()) {
    if (seen.has(file)) continue;
    seen.add(file);
    for (const m of readFileSync(file, 'utf8').matchAll(STATIC_IMPORT)) {
      const [, typeOnly, spec] = m;
      if (typeOnly || spec === undefined) continue;
      if (spec.startsWith('.')) queue.push(path.resolve(path.dirname(file), spec.replace(/\.js$/, '.ts')));
      else if (!packages.has(spec)) packages.set(spec, path.relative(ROOT, file));
    }
  }
  return packages;
}

describe('the agent command', () => {
  it('loads neither gRPC nor the Kubernetes client until cluster mode asks for them', () => {
    const reached = packagesReachedFrom(path.join(ROOT, 'src/cli/commands/agent.ts'));
    const heavy = [...reached].filter(([pkg]) => pkg.startsWith('@grpc/') || pkg.startsWith('@kubernetes/')).map(([pkg, from]) => `${pkg} (from ${from})`);
    expect(heavy).toEqual([]);
    // The walk does see packages: a broken pattern would pass the check above vacuously.
    expect(reached.has('zod')).toBe(true);
  });
});
