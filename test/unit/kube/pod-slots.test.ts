import { afterEach, describe, expect, it } from 'vitest';
import { PodSlotPoller, type SlotLister } from '../../../src/kube/pod-slots.js';
import type { PodSlot } from '../../../src/kube/podresources.js';
import { silentLogger } from '../../../src/log.js';

/** A kubelet that answers what `answers` says next (a list, or an error), and counts calls. */
function kubelet(answers: Array<PodSlot[] | Error>): SlotLister & { calls: number; closed: boolean; release?: () => void; hold: boolean } {
  const k = {
    calls: 0,
    closed: false,
    hold: false,
    release: undefined as (() => void) | undefined,
    async listSlots(): Promise<PodSlot[]> {
      k.calls++;
      if (k.hold) await new Promise<void>((r) => (k.release = r));
      const a = answers.length > 1 ? answers.shift()! : answers[0]!;
      if (a instanceof Error) throw a;
      return a;
    },
    close(): void {
      k.closed = true;
    },
  };
  return k;
}

const slot = (pod: string, s: string): PodSlot => ({ namespace: 'default', pod, container: 'compute', slot: s });
let poller: PodSlotPoller | undefined;
afterEach(async () => {
  await poller?.stop();
  poller = undefined;
});

describe('PodSlotPoller', () => {
  it('keeps the last known slots while the kubelet fails (a kubelet restart is not every pod leaving), and says so', async () => {
    const k = kubelet([[slot('p1', 'slot-01')], new Error('connect ENOENT kubelet.sock'), [slot('p1', 'slot-01'), slot('p2', 'slot-02')]]);
    poller = new PodSlotPoller({ podResources: k, logger: silentLogger, pollMs: 60_000 });
    let changes = 0;
    poller.on('change', () => changes++);
    expect(poller.ok).toBeUndefined();
    await poller.start();
    expect([poller.ok, poller.slots, changes]).toEqual([true, [slot('p1', 'slot-01')], 1]);

    await poller.poll();
    expect(poller.ok).toBe(false);
    expect(poller.lastError).toMatch(/ENOENT/);
    expect(poller.slots).toEqual([slot('p1', 'slot-01')]);
    expect(changes).toBe(1);

    await poller.poll();
    expect([poller.ok, poller.lastError, poller.slots.length, changes]).toEqual([true, undefined, 2, 2]);
    // The same answer again is no change.
    await poller.poll();
    expect(changes).toBe(2);
  });

  it('a failure before the first answer leaves the view waiting (ok undefined), not failed', async () => {
    poller = new PodSlotPoller({ podResources: kubelet([new Error('unavailable')]), logger: silentLogger, pollMs: 60_000 });
    await poller.start();
    expect(poller.ok).toBeUndefined();
    expect(poller.lastError).toBe('unavailable');
  });

  it('polls asked for during a poll run once more after it, not once each', async () => {
    const k = kubelet([[slot('p1', 'slot-01')]]);
    poller = new PodSlotPoller({ podResources: k, logger: silentLogger, pollMs: 60_000 });
    await poller.start();
    k.hold = true;
    const first = poller.poll();
    const more = [poller.poll(), poller.poll(), poller.poll()];
    k.hold = false;
    k.release?.();
    await Promise.all([first, ...more]);
    expect(k.calls).toBe(3);
    await poller.stop();
    expect(k.closed).toBe(true);
    poller = undefined;
  });
});
