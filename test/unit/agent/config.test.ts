import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { AGENT_DEFAULTS, agentOptionsOf } from '../../../src/agent/config.js';
import { backendOptionsOf, parseAgentArgs } from '../../../src/cli/commands/agent.js';
import { FakeBackend } from '../../helpers/fake-backend.js';

const standalone = ['--standalone', '--vmis', 'v', '--images', 'i.yaml', '--vhost-dir', 'vh', '--state-dir', 'st'];

describe('the agent options, made once from the config', () => {
  it('carry the socket policy, grace, resync, cache limits and source failover bound the flags say', () => {
    const backend = new FakeBackend('vh');
    const c = parseAgentArgs([...standalone, '--socket-owner', '1:2', '--socket-mode', '0600', '--orphan-grace', '1m', '--resync', '10s', '--cache-max-size', '2Gi', '--cache-max-count', '3', '--source-failover-after', '45s'], {});
    expect(agentOptionsOf(c, backend)).toEqual({
      backend,
      stateDir: path.resolve('st'),
      socket: { uid: 1, gid: 2, mode: 0o600 },
      orphanGraceMs: 60_000,
      resyncMs: 10_000,
      sourceFailoverAfterMs: 45_000,
      cache: { maxSizeBytes: 2 * 2 ** 30, maxCount: 3 },
    });
  });

  it('defaults: QEMU 107:107 and 0660, 5m grace, 30s resync, 10s source failover, no cache limit; --once reconciles without a background resync', () => {
    const backend = new FakeBackend('vh');
    expect(agentOptionsOf(parseAgentArgs(standalone, {}), backend)).toMatchObject({ socket: { uid: 107, gid: 107, mode: 0o660 }, orphanGraceMs: 300_000, resyncMs: 30_000, sourceFailoverAfterMs: 2_000, cache: {} });
    expect(agentOptionsOf(parseAgentArgs([...standalone, '--once'], {}), backend).resyncMs).toBe(0);
    expect(AGENT_DEFAULTS).toEqual({ backend: 'spdk', spdkSocket: '/var/tmp/spdk.sock', socketOwner: { uid: 107, gid: 107 } });
  });

  it('names the flag and the rule of a bad value', () => {
    expect(() => parseAgentArgs([...standalone, '--socket-mode', '999', '--lvstore-size', '1Mi', '--backend', 'nfs'], {})).toThrow(
      '--backend: "nfs" must be one of spdk, qsd; --lvstore-size: "1Mi" must be a quantity of at least 64Mi; --socket-mode: "999" must be an octal mode like 0660',
    );
  });
});

describe('the backend options, made from the config', () => {
  const cluster = ['--node', 'node-a', '--vhost-dir', 'vh', '--state-dir', 'st'];

  it('spdk: the node name goes to the backend (its host NQN is what peers\' exports admit)', () => {
    expect(backendOptionsOf(parseAgentArgs(cluster, {}))).toMatchObject({ kind: 'spdk', socketPath: '/var/tmp/spdk.sock', options: { nodeName: 'node-a', vhostDir: path.resolve('vh'), stateDir: path.join(path.resolve('st'), 'spdk') } });
    // From the DaemonSet's NODE_NAME too.
    expect(backendOptionsOf(parseAgentArgs(['--vhost-dir', 'vh', '--state-dir', 'st'], { NODE_NAME: 'node-b' }))).toMatchObject({ kind: 'spdk', options: { nodeName: 'node-b' } });
    // A standalone agent without --node: none (the target's default host NQN is used).
    const b = backendOptionsOf(parseAgentArgs(standalone, {}));
    expect(b.kind === 'spdk' && 'nodeName' in b.options).toBe(false);
  });

  it('qsd: --lazy-images turns lazy goldens from the origin on; off by default', () => {
    expect(backendOptionsOf(parseAgentArgs([...cluster, '--backend', 'qsd', '--lazy-images'], {}))).toEqual({
      kind: 'qsd',
      options: { stateDir: path.join(path.resolve('st'), 'qsd'), vhostDir: path.resolve('vh'), managed: true, lazyImages: true, bootOrder: { record: true, capMs: 30_000 } },
    });
    expect(backendOptionsOf(parseAgentArgs([...cluster, '--backend', 'qsd'], {}))).toMatchObject({ kind: 'qsd', options: { lazyImages: false } });
  });

  it('qsd: --boot-record-window bounds the first boot\'s recording; 0s turns recording off', () => {
    expect(backendOptionsOf(parseAgentArgs([...cluster, '--backend', 'qsd', '--boot-record-window', '45s'], {}))).toMatchObject({ options: { bootOrder: { record: true, capMs: 45_000 } } });
    expect(backendOptionsOf(parseAgentArgs([...cluster, '--backend', 'qsd', '--boot-record-window', '0s'], {}))).toMatchObject({ options: { bootOrder: { record: false } } });
    expect(() => parseAgentArgs([...cluster, '--backend', 'qsd', '--boot-record-window', '1h'], {})).toThrow(/boot-record-window/);
    const standalone = ['--standalone', '--vmis', 'v', '--images', 'i.yaml', '--vhost-dir', 'vh', '--state-dir', 'st', '--backend', 'qsd'];
    expect(backendOptionsOf(parseAgentArgs(standalone, {}))).toMatchObject({ options: { bootOrder: { record: false } } });
  });

  it('spdk: --lazy-images serves images from the fetched file while they are copied in (lazyLocal); off by default', () => {
    expect(backendOptionsOf(parseAgentArgs([...cluster, '--lazy-images'], {}))).toMatchObject({ kind: 'spdk', options: { lazyLocal: true } });
    expect(backendOptionsOf(parseAgentArgs(cluster, {}))).toMatchObject({ kind: 'spdk', options: { lazyLocal: false } });
  });
});
