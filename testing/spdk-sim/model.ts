import { NvmfModel } from './nvmf.js';
import type { Bdev, ClaimType, Lvol, NvmeController, NvmfSubsystem, OcfVbdev, VhostController } from './state.js';

export { metadataClusters, parseCpumask, Pending, type Json, type ModelEnv, type SessionInfo } from './registry.js';

/**
 * In-memory model of spdk_tgt's bdev, lvol, vhost-blk, NVMe-oF and OCF state, as v24.01 or
 * v25.09 answers (env.profile). Every method mirrors one RPC: it either returns the RPC's
 * result or throws an RpcError with the code and message SPDK uses for that condition (see
 * errors.ts for the two styles). One file per subsystem, each extending the one before:
 * registry.ts (shared state, look-ups, claims, hot-plug) -> bdev-render.ts (bdev_get_bdevs
 * of every kind) -> bdev.ts (malloc, aio) -> lvstore.ts -> lvol.ts -> vhost-ctrl.ts -> ocf.ts
 * -> nvmf.ts (target and initiator) -> here.
 */
export class SpdkModel extends NvmfModel {
  /** Read-only copy of the whole model, for tests. */
  snapshot(sessionsOf: (c: VhostController) => number): ModelSnapshot {
    return structuredClone({
      bdevs: [...this.bdevs.values()].map((b) => ({ name: b.name, kind: b.kind, uuid: this.bdevUuid(b), claim: this.claimOf(b) ?? null, ...this.bdevSize(b) })),
      lvstores: [...this.lvstores.values()].map((l) => ({ uuid: l.uuid, name: l.name, baseBdev: l.baseBdev, clusterSize: l.clusterSize, totalClusters: l.totalClusters, freeClusters: this.freeClusters(l) })),
      lvols: [...this.lvstores.values()].flatMap((lvs) => lvs.lvols.map((l) => ({ ...l, lvs: lvs.name, alias: `${lvs.name}/${l.name}`, degraded: this.isDegraded(l) }))),
      controllers: [...this.controllers.values()].map((c) => ({ ...c, sessions: sessionsOf(c) })),
      ocf: [...this.ocf.values()],
      subsystems: [...this.subsystems.values()],
      nvmeControllers: [...this.nvmeControllers.values()],
      inflating: [...this.lvstores.values()].flatMap((lvs) => lvs.lvols.filter((l) => this.inflating.has(l.uuid)).map((l) => `${lvs.name}/${l.name}`)),
    });
  }
}


export interface ModelSnapshot {
  bdevs: Array<{ name: string; kind: Bdev['kind']; uuid: string; claim: ClaimType | null; blockSize: number; numBlocks: number }>;
  lvstores: Array<{ uuid: string; name: string; baseBdev: string; clusterSize: number; totalClusters: number; freeClusters: number }>;
  lvols: Array<Lvol & { lvs: string; alias: string; degraded: boolean }>;
  controllers: Array<VhostController & { sessions: number }>;
  ocf: OcfVbdev[];
  subsystems: NvmfSubsystem[];
  nvmeControllers: NvmeController[];
  /** Lvols (lvs/name) whose inflate is copying now. */
  inflating: string[];
}
