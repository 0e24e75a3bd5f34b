import { z } from 'zod';

/**
 * How one node reaches a disk that lives on another node during (and after) a live
 * migration: the source exports the disk, the target attaches it and serves it as its own.
 * A RemoteDiskRef is data: the source's agent records it (journal, VMI status) and the
 * target's agent reads it back, so it is a schema, not just a type.
 */

const port = z.number().int().min(1).max(65535);

/** Where an export listens: TCP on the node's address, or a unix socket (single-host tests). */
export const ListenAddressSchema = z.discriminatedUnion('kind', [
  z.object({ kind: z.literal('tcp'), host: z.string().min(1), port }).strict(),
  z.object({ kind: z.literal('unix'), path: z.string().min(1) }).strict(),
]);
export type ListenAddress = z.output<typeof ListenAddressSchema>;

export const RemoteDiskRefSchema = z.discriminatedUnion('transport', [
  z
    .object({
      /** SPDK: NVMe-oF over TCP; `nvmf_*` on the source, `bdev_nvme_attach_controller` on the target. */
      transport: z.literal('nvmf-tcp'),
      host: z.string().min(1),
      port,
      adrfam: z.enum(['ipv4', 'ipv6']),
      subnqn: z.string().regex(/^nqn\./, 'an NQN starting with "nqn."'),
      sizeBytes: z.number().int().nonnegative(),
    })
    .strict(),
  z
    .object({
      /** qemu-storage-daemon: an NBD export on the source, a `driver=nbd` node on the target. */
      transport: z.literal('nbd'),
      address: ListenAddressSchema,
      exportName: z.string().min(1),
      sizeBytes: z.number().int().nonnegative(),
    })
    .strict(),
]);
export type RemoteDiskRef = z.output<typeof RemoteDiskRefSchema>;

export interface ExportOptions {
  listenAddress: ListenAddress;
}

/** Deterministic NQN of a disk's export: the target derives it again after a restart. */
export const exportNqn = (diskId: string): string => `nqn.2024-01.io.kubevirt-spdk:${diskId}`;

/** NQN of a golden image's read-only export to peers (by the image's backend name). */
export const imageExportNqn = (image: string): string => `nqn.2024-01.io.kubevirt-spdk:image:${image}`;

/** The host NQN a node connects with: exports list the peers allowed by it (never allow_any_host). */
export const hostNqnOf = (node: string): string => `nqn.2024-01.io.kubevirt-spdk:host:${node}`;

/** `host` as an address family SPDK understands. */
export const adrfamOf = (host: string): 'ipv4' | 'ipv6' => (host.includes(':') ? 'ipv6' : 'ipv4');
