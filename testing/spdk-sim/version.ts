/**
 * What differs between the SPDK releases the simulator imitates, each difference seen in a
 * recording of the real target (test/fixtures/spdk/) or in its sources:
 * - v25.09 is built without OCF (the recording answers -32601 to bdev_ocf_*);
 * - `bdev_aio_create` takes a `uuid` only from v24.09 on (v24.01 fails to decode it);
 * - v25.09's bdev_get_bdevs adds the write/unmap layout fields, lists more
 *   `supported_io_types` in a new order and a `system` memory domain; bdev_lvol_get_lvols
 *   adds `num_allocated_clusters`; nvmf listen addresses lose v24.01's `transport`;
 * - v24.01 cannot inflate an esnap clone whose external snapshot has smaller blocks than the
 *   lvstore (-32602 "Input/output error", seen on a real v24.01 with a 4096-byte lvstore and
 *   a 512-byte image); v25.09 can (its recording inflates a 512-byte image into a 4 KiB one);
 * - v25.09's nvmf_subsystem_get_controllers adds `cntrltype` (recorded on both).
 */
export const SPDK_VERSIONS = ['24.01', '25.09'] as const;
export type SpdkVersion = (typeof SPDK_VERSIONS)[number];

export interface VersionProfile {
  version: SpdkVersion;
  major: number;
  minor: number;
  /** OCF compiled in (bdev_ocf_*). */
  ocf: boolean;
  /** bdev_aio_create accepts `uuid`. */
  aioUuid: boolean;
  /** bdev_lvol_set_parent, bdev_lvol_set_parent_bdev, shallow copy, thread_get_io_channels. */
  lvolReparent: boolean;
  /** v25.09's bdev_get_bdevs fields and io-type table. */
  newBdevFields: boolean;
  /** `num_allocated_clusters` in bdev_lvol_get_lvols. */
  lvolAllocatedInList: boolean;
  /** nvmf listen addresses carry the deprecated `transport` key. */
  listenTransportKey: boolean;
  /** Inflate of an esnap clone whose external snapshot has smaller blocks than the lvstore works. */
  inflateSmallerEsnapBlocks: boolean;
  /** NVMe version an SPDK NVMe-oF target reports (ctrlr vs). */
  nvmeVersion: string;
  /** nvmf_subsystem_get_controllers lists `cntrltype`. */
  nvmfCntrlType: boolean;
}

const PROFILES: Record<SpdkVersion, VersionProfile> = {
  '24.01': {
    version: '24.01',
    major: 24,
    minor: 1,
    ocf: true,
    aioUuid: false,
    lvolReparent: false,
    newBdevFields: false,
    lvolAllocatedInList: false,
    listenTransportKey: true,
    inflateSmallerEsnapBlocks: false,
    nvmeVersion: '1.3',
    nvmfCntrlType: false,
  },
  '25.09': {
    version: '25.09',
    major: 25,
    minor: 9,
    ocf: false,
    aioUuid: true,
    lvolReparent: true,
    newBdevFields: true,
    lvolAllocatedInList: true,
    listenTransportKey: false,
    inflateSmallerEsnapBlocks: true,
    nvmeVersion: '1.4',
    nvmfCntrlType: true,
  },
};

export function versionProfile(v: SpdkVersion): VersionProfile {
  return PROFILES[v];
}

export function parseSpdkVersion(text: string): SpdkVersion | undefined {
  const t = text.trim().replace(/^v/, '');
  return (SPDK_VERSIONS as readonly string[]).includes(t) ? (t as SpdkVersion) : undefined;
}
