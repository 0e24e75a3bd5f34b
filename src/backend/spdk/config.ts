import { z } from 'zod';
import type { Logger } from '../../log.js';
import type { SpdkApi } from '../../spdk/api.js';
import type { SpdkRpcClient } from '../../spdk/client.js';
import type { FetchOptions, fetchImage } from '../image-source.js';

/**
 * Block size of a development aio lvstore base when none is given. 512, not 4096: an lvol's
 * block size is its lvstore's, and that is the logical block size the guest sees; distro disk
 * images carry partition tables in 512-byte LBAs, which a guest on 4096-byte blocks misreads.
 * A 4Kn device as base (`existing`) works too: images are then imported at 4096.
 */
export const DEFAULT_AIO_BLOCK_SIZE = 512;

const BaseBdevSchema = z.discriminatedUnion('kind', [
  z
    .object({
      kind: z.literal('aio'),
      filename: z.string().min(1),
      /** Size of the file when it has to be created; an existing file is used as it is. */
      sizeMiB: z.number().int().positive().optional(),
      /** 512 or 4096; DEFAULT_AIO_BLOCK_SIZE when unset (real SPDK cannot detect it for a file). */
      blockSize: z.union([z.literal(512), z.literal(4096)]).optional(),
      name: z.string().min(1).optional(),
    })
    .strict(),
  z.object({ kind: z.literal('malloc'), sizeMiB: z.number().int().positive(), name: z.string().min(1).optional() }).strict(),
  z.object({ kind: z.literal('existing'), name: z.string().min(1) }).strict(),
]);

/** The data part of the options: what a CLI flag or a config file can say. */
export const SpdkBackendConfigSchema = z
  .object({
    lvstore: z
      .object({
        name: z.string().min(1).max(63).regex(/^[A-Za-z0-9_.-]+$/, 'must be [A-Za-z0-9_.-]').default('kvs'),
        baseBdev: BaseBdevSchema,
        /** cluster_sz of a newly created lvstore (SPDK's default is 4 MiB). */
        clusterSizeBytes: z.number().int().positive().optional(),
      })
      .strict(),
    vhostDir: z.string().min(1),
    /** Downloaded images live in `<stateDir>/images/` until they are in the lvstore. */
    stateDir: z.string().min(1),
    cpumask: z.string().optional(),
    /** Snapshots an image's disks are cloned from in parallel under load (golden + fan-outs). */
    cloneLanes: z.number().int().min(1).max(16).default(4),
    /**
     * This node's name: lazy sources are attached with its host NQN (hostNqnOf), which peers'
     * image exports admit. Without it the target's default host NQN is used.
     */
    nodeName: z.string().min(1).max(200).regex(/^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$/, 'a Kubernetes node name').optional(),
    /**
     * An image fetched to the node's file becomes usable at once on SPDK v24.09+ (an aio bdev
     * with a stable uuid under a lazy golden, hydrated in the background) instead of after the
     * full copy into the lvstore. v24.01 always imports in full.
     */
    lazyLocal: z.boolean().default(false),
    /** Deadline of bdev_lvol_inflate, which copies the whole image. */
    inflateTimeoutMs: z.number().int().positive().default(60 * 60_000),
  })
  .strict();
export type SpdkBackendConfig = z.output<typeof SpdkBackendConfigSchema>;
export type BaseBdevSpec = z.output<typeof BaseBdevSchema>;

export type SpdkBackendOptions = z.input<typeof SpdkBackendConfigSchema> & {
  client: SpdkRpcClient;
  /** Defaults to `new SpdkApi(client)`. */
  api?: SpdkApi;
  logger?: Logger;
  /** Replaces the image fetcher (tests, other transports). */
  fetchImage?: typeof fetchImage;
  fetchOptions?: Omit<FetchOptions, 'signal' | 'logger'>;
};
