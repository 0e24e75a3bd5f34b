import type { SpdkContext } from './context.js';
import { CloneLanes } from './lanes.js';
import { classifyLvol, fanoutName, fanoutTmpName, goldenName, lvolAlias } from './naming.js';

/**
 * The clone lanes of every cached image (see lanes.ts): the golden and its fan-outs, found
 * again from the listing after a reconnect, and the fan-outs made under load.
 */
export class FanoutLanes {
  /** Clone lanes per image; forgotten on reconnect (a new spdk_tgt) and found again. */
  private readonly lanes = new Map<string, CloneLanes>();
  /** Fan-out clones (`.tmp`) being made now, and left-over ones being deleted now. */
  private readonly tmps = new Set<string>();

  constructor(private readonly ctx: SpdkContext) {}

  clear(): void {
    this.lanes.clear();
  }

  forget(image: string): void {
    this.lanes.delete(image);
  }

  /** The image's clone lanes: its golden and the fan-outs the listing shows. */
  of(image: string, lvols: readonly { name: string }[]): CloneLanes {
    const { ctx } = this;
    let lanes = this.lanes.get(image);
    if (lanes) return lanes;
    const fanouts = fanoutsIn(lvols, image);
    let next = Math.max(0, ...fanouts.map((f) => f.index)) + 1;
    const ready = fanouts.filter((f) => !f.tmp).sort((a, b) => a.index - b.index);
    const snapshots = [lvolAlias(ctx.lvs, goldenName(image)), ...ready.map((f) => lvolAlias(ctx.lvs, f.name))];
    lanes = new CloneLanes(snapshots, ctx.cfg.cloneLanes, () => this.makeFanout(image, next++), ctx.log.child({ image }));
    this.lanes.set(image, lanes);
    return lanes;
  }

  /**
   * A crash while a fan-out was made leaves its clone: an empty child of the golden (or of
   * the new fan-out). Deleted under its parent's lock, in the background.
   */
  tidyLeftovers(lvols: ReadonlyArray<{ name: string }>): void {
    const { ctx } = this;
    const names = new Set(lvols.map((l) => l.name));
    for (const l of lvols) {
      const r = classifyLvol(l.name);
      if (r.role !== 'fanout' || !r.tmp || this.tmps.has(l.name)) continue;
      this.tmps.add(l.name);
      const parent = names.has(fanoutName(r.image, r.index)) ? fanoutName(r.image, r.index) : goldenName(r.image);
      void ctx.snapshotLocks
        .run(lvolAlias(ctx.lvs, parent), () => ctx.deleteLvol(lvolAlias(ctx.lvs, l.name)))
        .catch((e: unknown) => ctx.log.warn({ event: 'clone.fanout.tidy_failed', lvol: l.name, error: String(e) }, 'could not delete a left-over fan-out clone'))
        .finally(() => this.tmps.delete(l.name));
    }
  }

  /**
   * A fan-out: clone the golden, snapshot that clone (the snapshot appears in one step, with
   * no data of its own, between the golden and the clone), delete the clone.
   */
  private async makeFanout(image: string, n: number): Promise<string> {
    const { ctx } = this;
    const golden = lvolAlias(ctx.lvs, goldenName(image));
    const tmp = lvolAlias(ctx.lvs, fanoutTmpName(image, n));
    const fan = lvolAlias(ctx.lvs, fanoutName(image, n));
    this.tmps.add(fanoutTmpName(image, n));
    try {
      await ctx.snapshotLocks.run(golden, async () => {
        await ctx.api.bdevLvolClone({ snapshot_name: golden, clone_name: fanoutTmpName(image, n) });
        await ctx.api.bdevLvolSnapshot({ lvol_name: tmp, snapshot_name: fanoutName(image, n) });
      });
      await ctx.snapshotLocks.run(fan, () => ctx.deleteLvol(tmp));
    } finally {
      this.tmps.delete(fanoutTmpName(image, n));
    }
    ctx.log.info({ event: 'clone.fanout.created', image, fanout: fan }, 'clone lane added');
    return fan;
  }
}

export interface FanoutLvol {
  name: string;
  index: number;
  tmp: boolean;
}

export function fanoutsIn(lvols: ReadonlyArray<{ name: string }>, image: string): FanoutLvol[] {
  return lvols.flatMap((l) => {
    const r = classifyLvol(l.name);
    return r.role === 'fanout' && r.image === image ? [{ name: l.name, index: r.index, tmp: r.tmp }] : [];
  });
}
