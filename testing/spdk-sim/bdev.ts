import { RpcError, rawErrno, JSONRPC_INTERNAL_ERROR } from './errors.js';
import type * as P from './params.js';
import { BdevRender } from './bdev-render.js';
import { Pending, type Json } from './registry.js';
import type { AioBdev, MallocBdev } from './state.js';

/** Base bdevs (malloc, aio). */
export class BdevModel extends BdevRender {
  // ---------------------------------------------------------------- misc

  version(): Json {
    const { version, major, minor } = this.profile;
    return { version: `SPDK v${version}`, fields: { major, minor, patch: 0, suffix: '' } };
  }

  // ---------------------------------------------------------------- malloc / aio

  protected checkNewBdevName(name: string): void {
    if (this.resolveBdev(name)) throw rawErrno('EEXIST');
  }

  mallocCreate(p: P.MallocCreate): Json {
    if (p.block_size % 512 !== 0) throw new RpcError(-22, `Block size ${p.block_size} is not a multiple of 512`);
    if (p.num_blocks === 0) throw new RpcError(-22, 'Disk num_blocks must be greater than 0');
    let name = p.name;
    if (name === undefined || name === '') {
      do name = `Malloc${this.mallocCounter++}`;
      while (this.resolveBdev(name));
    }
    this.checkNewBdevName(name);
    const uuid = p.uuid ?? this.env.randomUuid();
    if (p.uuid !== undefined && this.bdevByUuid(p.uuid)) throw rawErrno('EEXIST');
    const b: MallocBdev = { kind: 'malloc', name, uuid, blockSize: p.block_size, numBlocks: p.num_blocks };
    this.register(b);
    return name;
  }

  protected deleteBaseBdev(name: string, kind: 'malloc' | 'aio'): Json {
    const b = this.bdevs.get(name);
    if (!b || b.kind !== kind) throw rawErrno('ENODEV');
    this.unregister(name);
    return true;
  }

  mallocDelete(p: P.NameOnly): Json {
    return this.deleteBaseBdev(p.name, 'malloc');
  }

  aioCreate(p: P.AioCreate): Json {
    // `uuid` is a parameter from v24.09 on; v24.01's decoder does not know it.
    if (p.uuid !== undefined && !this.profile.aioUuid) throw new RpcError(JSONRPC_INTERNAL_ERROR, 'spdk_json_decode_object failed');
    this.checkNewBdevName(p.name);
    if (p.uuid !== undefined && this.bdevByUuid(p.uuid)) throw rawErrno('EEXIST');
    const size = this.env.fileSize(p.filename);
    // A regular file has no detectable block size (the BLKSSZGET ioctl fails): without
    // `block_size` real SPDK answers -22, as recorded on v24.01.
    const detected = this.env.fileBlockSize?.(p.filename) ?? 0;
    const blockSize = p.block_size && p.block_size > 0 ? p.block_size : detected;
    if (blockSize === 0) {
      this.env.log('Block size could not be auto-detected', { filename: p.filename });
      throw rawErrno('EINVAL');
    }
    if (blockSize < 512 || (blockSize & (blockSize - 1)) !== 0) throw rawErrno('EINVAL');
    // The file must hold whole blocks; an empty file is accepted as a 0-block bdev (recorded).
    if (size % blockSize !== 0) throw rawErrno('EINVAL');
    const numBlocks = size / blockSize;
    const b: AioBdev = {
      kind: 'aio',
      name: p.name,
      // Without `uuid`, an aio bdev gets a new random UUID on every create.
      uuid: p.uuid ?? this.env.randomUuid(),
      blockSize,
      numBlocks,
      filename: p.filename,
      readonly: p.readonly ?? false,
      blockSizeOverride: p.block_size !== undefined && p.block_size > 0,
      fallocate: p.fallocate ?? false,
    };
    this.register(b);
    this.examine(b);
    return p.name;
  }

  /**
   * Deleting an external snapshot in use does not answer until every esnap clone using it is
   * inflated or deleted (v25.09 recording, section a); meanwhile it is gone by name.
   */
  aioDelete(p: P.NameOnly): Json | Pending {
    this.deleteBaseBdev(p.name, 'aio');
    if (!this.unregistering.has(p.name)) return true;
    const name = p.name;
    return new Pending(
      () => {
        this.syncLvolBdevs();
        return !this.unregistering.has(name);
      },
      undefined,
      () => true,
    );
  }
}
