import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { AGENT_DEFAULTS, agentOptionsOf } from '../../../src/agent/config.js';
import { parseAgentArgs } from '../../../src/cli/commands/agent.js';
import { FakeBackend } from '../../helpers/fake-backend.js';

const standalone = ['--standalone', '--vmis', 'v', '--images', 'i.yaml', '--vhost-dir', 'vh', '--state-dir', 'st'];

describe('the agent options, made once from the config', () => {
  it('carry the socket policy, grace, resync and cache limits the flags say', () => {
    const backend = new FakeBackend('vh');
    const c = parseAgentArgs([...standalone, '--socket-owner', '1:2', '--socket-mode', '0600', '--orphan-grace', '1m', '--resync', '10s', '--cache-max-size', '2Gi', '--cache-max-count', '3'], {});
    expect(agentOptionsOf(c, backend)).toEqual({
      backend,
      stateDir: path.resolve('st'),
      socket: { uid: 1, gid: 2, mode: 0o600 },
      orphanGraceMs: 60_000,
      resyncMs: 10_000,
      cache: { maxSizeBytes: 2 * 2 ** 30, maxCount: 3 },
    });
  });

  it('defaults: QEMU 107:107 and 0660, 5m grace, 30s resync, no cache limit; --once reconciles without a background resync', () => {
    const backend = new FakeBackend('vh');
    expect(agentOptionsOf(parseAgentArgs(standalone, {}), backend)).toMatchObject({ socket: { uid: 107, gid: 107, mode: 0o660 }, orphanGraceMs: 300_000, resyncMs: 30_000, cache: {} });
    expect(agentOptionsOf(parseAgentArgs([...standalone, '--once'], {}), backend).resyncMs).toBe(0);
    expect(AGENT_DEFAULTS).toEqual({ backend: 'spdk', spdkSocket: '/var/tmp/spdk.sock', socketOwner: { uid: 107, gid: 107 } });
  });

  it('names the flag and the rule of a bad value', () => {
    expect(() => parseAgentArgs([...standalone, '--socket-mode', '999', '--lvstore-size', '1Mi', '--backend', 'nfs'], {})).toThrow(
      '--backend: "nfs" must be one of spdk, qsd; --lvstore-size: "1Mi" must be a quantity of at least 64Mi; --socket-mode: "999" must be an octal mode like 0660',
    );
  });
});
