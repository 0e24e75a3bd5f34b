import { describe, expect, it } from 'vitest';
import { ValidationError } from '../../../src/api/errors.js';
import { parseAgentArgs } from '../../../src/cli/commands/agent.js';

const base = ['--backend', 'spdk', '--vhost-dir', 'vh', '--state-dir', 'st'];
const problems = (argv: string[], env: NodeJS.ProcessEnv = {}): string[] => {
  try {
    parseAgentArgs(argv, env);
  } catch (e) {
    if (e instanceof ValidationError) return e.problems;
    throw e;
  }
  return [];
};

describe('agent flags in cluster mode (no --standalone)', () => {
  it('takes the node from NODE_NAME, serves /readyz on 9470 and reads PodResources at the kubelet path by default', () => {
    const a = parseAgentArgs(base, { NODE_NAME: 'worker-1' });
    expect(a).toMatchObject({ standalone: false, node: 'worker-1', metricsPort: 9470, podResourcesSocket: '/var/lib/kubelet/pod-resources/kubelet.sock' });
    expect(a.kubeconfig).toBeUndefined();
    expect(parseAgentArgs([...base, '--node', 'n2', '--kubeconfig', 'kc.yaml', '--metrics-port', '0'], { NODE_NAME: 'worker-1' })).toMatchObject({ node: 'n2', kubeconfig: 'kc.yaml', metricsPort: 0 });
  });

  it('names the flag and the rule for what does not apply', () => {
    expect(problems(base)).toEqual(['--node: is required in cluster mode (or set NODE_NAME)']);
    expect(problems([...base, '--node', 'n', '--once', '--vmis', 'd'])).toEqual([
      '--once: only applies with --standalone',
      '--vmis, --images: only apply with --standalone (cluster mode watches the API server)',
    ]);
    expect(problems([...base, '--standalone', '--vmis', 'd', '--images', 'i', '--kubeconfig', 'k'])).toEqual(['--kubeconfig: only applies in cluster mode (without --standalone)']);
  });

  it('standalone mode is unchanged: files, no metrics port unless asked', () => {
    const a = parseAgentArgs([...base, '--standalone', '--vmis', 'd', '--images', 'i'], { NODE_NAME: 'ignored' });
    expect(a).toMatchObject({ standalone: true, vmis: 'd', images: 'i' });
    expect(a.node).toBeUndefined();
    expect(a.metricsPort).toBeUndefined();
  });
});

describe('agent flags: bounds (F12) and the bdev directory (F1)', () => {
  it('a duration beyond what a timer can hold is refused, naming the flag (it would fire at once)', () => {
    expect(problems([...base, '--node', 'n', '--resync', '999999h', '--orphan-grace', '25d']).sort()).toEqual([
      '--orphan-grace: 25d is not a duration (e.g. 30s, 5m)',
      '--resync: 999999h is longer than the limit of 2147483647 ms (about 24 days)',
    ]);
    expect(problems([...base, '--node', 'n', '--orphan-grace', '597h'])).toEqual(['--orphan-grace: 597h is longer than the limit of 2147483647 ms (about 24 days)']);
  });

  it('--bdev-dir applies to qsd only', () => {
    expect(problems([...base, '--node', 'n', '--bdev-dir', '/srv/bdevs'])).toEqual(['--bdev-dir: only applies with --backend qsd (spdk bdevs are named in spdk_tgt)']);
    expect(parseAgentArgs(['--backend', 'qsd', '--vhost-dir', 'vh', '--state-dir', 'st', '--node', 'n', '--bdev-dir', '/srv/bdevs']).bdevDir).toBe('/srv/bdevs');
  });
});
