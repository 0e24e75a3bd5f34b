/**
 * A guest (QEMU, TCG) writing O_DIRECT records through a vhost-user-blk disk served by a real
 * spdk_tgt that the agent provisioned; spdk_tgt is SIGKILLed and restarted under the running
 * I/O. The agent re-creates the controller, QEMU reconnects, and the guest must read back every
 * record it wrote. The guest's I/O pause across the restart is printed (not asserted: speed
 * belongs in bench/). Opt-in: SPDK_TGT; needs root, QEMU, the test guest (hack/guest) and
 * hugepages (vhost-user guest memory must be hugepage-backed for SPDK).
 */
import { describe, expect, it } from 'vitest';
import { guestAcrossRestart, whyNoGuest } from './guest-run.js';
import { cases, realSpdkOrSkip } from './target.js';

const targets = realSpdkOrSkip('test/spdk/guest.test.ts');
const skip = targets.length === 0 ? 'SPDK_TGT is not set' : whyNoGuest();
if (targets.length > 0 && skip) process.stdout.write(`[test/spdk/guest.test.ts] skipped: ${skip}\n`);

describe.skipIf(skip !== undefined).each(cases(targets))('a guest across an spdk_tgt restart ($label)', ({ bin }) => {
  it('keeps every acknowledged write; the agent brings the controller back under the running guest', async () => {
    const r = await guestAcrossRestart(bin);
    expect(r.verify, r.transcript.slice(-2000)).toMatch(/^OK \d+$/);
    expect(r.records).toBeGreaterThanOrEqual(40);
    expect(r.agentRecoveryMs).toBeDefined();
    expect(r.agentExit).toBe(0);
    process.stdout.write(
      `[guest ${r.version}] records=${r.records} pause=${r.pauseMs} ms (kill to new socket answering ${r.restartMs} ms; agent recovery ${r.agentRecoveryMs} ms; QEMU reconnect=1)\n`,
    );
  });
});
