import { internalError, invalidParams } from './errors.js';
import { LvolModel } from './lvol.js';
import type * as P from './params.js';
import { SUN_PATH_MAX, formatMask, parseCpumask, type Json, type SessionInfo } from './registry.js';
import type { VhostController } from './state.js';

/** vhost-blk controllers (their sockets live in vhost.ts). */
export class VhostModel extends LvolModel {
  // ---------------------------------------------------------------- vhost

  /**
   * The checks of vhost_create_blk_controller before the socket is bound, in SPDK's order:
   * open the bdev for writing, parse the cpumask, refuse a duplicate name, build the path.
   */
  prepareVhostController(p: P.VhostCreateBlk): VhostController {
    const b = this.resolveBdev(p.dev_name);
    if (!b) throw invalidParams('ENODEV');
    // Opening for write fails on a claimed bdev, but vhost itself takes no claim.
    if (this.claimOf(b)) throw invalidParams('EPERM');
    let mask = this.env.coreMask;
    if (p.cpumask !== undefined) {
      const parsed = parseCpumask(p.cpumask);
      if (parsed === undefined || parsed === 0n || (parsed & ~this.env.coreMask) !== 0n) {
        this.env.log('cpumask is invalid', { cpumask: p.cpumask, core_mask: formatMask(this.env.coreMask) });
        throw invalidParams('EINVAL');
      }
      mask = parsed;
    }
    if (this.controllers.has(p.ctrlr)) throw invalidParams('EEXIST');
    // Joined as text, not normalised: `../escape` shows as `<dir>/../escape` (recorded).
    const full = `${this.env.vhostDir.replace(/\/+$/, '')}/${p.ctrlr}`;
    if (p.ctrlr.length === 0) throw invalidParams('EINVAL');
    // A path beyond sun_path is accepted and bound cut to 107 bytes, while
    // vhost_get_controllers shows it whole (recorded on v24.01 and v25.09).
    const bytes = Buffer.from(full);
    const socket = bytes.length > SUN_PATH_MAX ? bytes.subarray(0, SUN_PATH_MAX).toString() : full;
    if (socket !== full) this.env.log('socket path for controller is too long: truncated', { ctrlr: p.ctrlr, socket });
    return {
      name: p.ctrlr,
      bdev: b.name,
      cpumask: formatMask(mask),
      readonly: p.readonly ?? false,
      packedRing: p.packed_ring ?? false,
      socket,
      ...(socket !== full ? { displaySocket: full } : {}),
    };
  }

  addVhostController(c: VhostController): Json {
    this.controllers.set(c.name, c);
    return true;
  }

  removeVhostController(p: P.VhostDelete): VhostController {
    const c = this.controllers.get(p.ctrlr);
    if (!c) throw invalidParams('ENODEV');
    this.controllers.delete(p.ctrlr);
    return c;
  }

  getVhostControllers(p: P.VhostGet | undefined, sessionsOf: (c: VhostController) => SessionInfo[]): Json {
    let list = [...this.controllers.values()];
    // v25.09 keeps controllers in a tree by name; v24.01 in creation order (both recorded).
    if (this.profile.newBdevFields) list.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
    if (p?.name !== undefined) {
      const c = this.controllers.get(p.name);
      if (!c) throw internalError('ENODEV');
      list = [c];
    }
    return list.map((c) => ({
      ctrlr: c.name,
      cpumask: c.cpumask,
      delay_base_us: 0,
      iops_threshold: 60000,
      socket: c.displaySocket ?? c.socket,
      sessions: sessionsOf(c) as unknown as Json,
      backend_specific: { block: { readonly: c.readonly, bdev: c.bdev, transport: 'vhost_user_blk' } },
    }));
  }
}
