/**
 * The node agent's flags (both modes, and standalone's files) with their defaults, bounds and
 * descriptions, and the one place where the NodeAgent's options are made from them. The
 * `agent` command (src/cli/commands/agent.ts) adds cluster mode's flags and the rules between
 * modes; `doctor` reads the agent's defaults from here.
 */
import path from 'node:path';
import { z } from 'zod';
import { duration, int, oneOf, port, quantity, text, typed } from '../config.js';
import type { StorageBackend } from '../backend/types.js';
import type { NodeAgentOptions } from './agent.js';

const MiB = 2 ** 20;

/** `UID:GID` of every vhost socket. */
export const socketOwner = (): z.ZodEffects<z.ZodString, { uid: number; gid: number }, string> =>
  typed<{ uid: number; gid: number }>({ value: 'UID:GID' }, (t) => {
    const m = /^(\d+):(\d+)$/.exec(t);
    return m ? { ok: { uid: Number(m[1]), gid: Number(m[2]) } } : { error: `"${t}" must be UID:GID (numbers)` };
  });

const octalMode = typed<number>({ value: 'MODE' }, (t) => (/^0?[0-7]{3}$/.test(t) ? { ok: parseInt(t, 8) } : { error: `"${t}" must be an octal mode like 0660` }));
const blockSize = typed<512 | 4096>({ value: '512|4096' }, (t) => (t === '512' || t === '4096' ? { ok: Number(t) as 512 | 4096 } : { error: `"${t}" must be 512 or 4096` }));

export const AgentFlagsSchema = z.object({
  standalone: z.boolean().default(false).describe('Run driven by files (`--vmis`, `--images`, a `kubevirt-spdk.io/slot` annotation per VMI). Without it the agent runs in cluster mode against the API server.'),
  vmis: text('DIR').optional().describe('Standalone: directory of VMI YAML files: the desired state. Each VMI needs `kubevirt-spdk.io/volumes` and `kubevirt-spdk.io/slot`. Required with `--standalone`.'),
  images: text('FILE').optional().describe('Standalone: file of `CachedImage` documents (YAML stream or a `List`). Required with `--standalone`.'),
  backend: oneOf(['spdk', 'qsd']).default('spdk').describe('`spdk` (spdk_tgt over JSON-RPC) or `qsd` (qemu-storage-daemon, managed by the agent).'),
  vhostDir: text('DIR').describe("Directory where controllers bind their sockets (`<vhost-dir>/<slot>/<disk>`); spdk_tgt's `-S`."),
  stateDir: text('DIR').describe('Agent state: journal, `status.json`, per-slot readiness files `slots/<slot>.json`, the development lvstore file.'),
  once: z.boolean().default(false).describe('Standalone: reconcile until converged, print a summary, exit 0 when every disk is Ready, 1 otherwise.'),
  timeout: duration().default('120s').describe('With `--once`: how long to keep reconciling (and waiting for the backend) before giving up.'),
  spdkSocket: text('PATH').default('/var/tmp/spdk.sock').describe('spdk_tgt JSON-RPC unix socket (`spdk` backend).'),
  lvstoreBdev: text('NAME').optional().describe('Base bdev of the lvstore (an NVMe namespace bdev in production). Without it the agent creates a sparse aio file `<state-dir>/lvstore.img` of `--lvstore-size`.'),
  lvstoreSize: quantity({ min: 64 * MiB, minText: '64Mi' }).default('64Gi').describe('Size of the development aio lvstore file.'),
  lvstoreBlockSize: blockSize
    .optional()
    .describe(
      'Block size (512 or 4096) of the development aio lvstore file, fixed when the file is made and recorded in the state dir (a restart re-creates it exactly). Default: as recorded, else 512 (the guest sees it as its logical block size; distro images expect 512).',
    ),
  socketOwner: socketOwner().default('107:107').describe('`UID:GID` given to every vhost socket: QEMU in virt-launcher runs as 107:107.'),
  socketMode: octalMode.default('0660').describe('Octal mode of every vhost socket.'),
  orphanGrace: duration().default('5m').describe('How long an object that no VMI claims is kept before it is collected.'),
  resync: duration().default('30s').describe('Period of the full reconcile (list the backend, compare, repair).'),
  cacheMaxSize: quantity().optional().describe('Image cache limit: total virtual size of golden images. No limit when absent.'),
  cacheMaxCount: int().optional().describe('Image cache limit: number of golden images. No limit when absent.'),
  node: text('NAME').optional().describe('Node name written into the status (`node`, and `dataNode` of Ready disks, which is `local` without it). Required in cluster mode.'),
  metricsPort: port()
    .optional()
    .describe('Serve `/metrics` (Prometheus), `/healthz` and `/readyz` on this TCP port (0 = any free port). Standalone: no metrics server when absent.'),
  bdevDir: text('DIR')
    .optional()
    .describe("qsd only: the directory `bdev: <name>` volumes are served from (`<dir>/<name>`, a file or block device, or the admin's link to one). Without it the qsd backend serves no `bdev:` volume."),
  lazyImages: z
    .boolean()
    .default(false)
    .describe(
      "Images are usable at once and copied into the node in the background. qsd: an http(s) origin (format raw) is read through QEMU's curl driver while it is copied, and verified after. spdk (v24.09 or later, else a full import): the image is fetched and verified into a file on the node, then served from it while it is copied into the lvstore (the file is kept until then). Default: a full import first. Both backends read images lazily from peer nodes without it.",
    ),
  bootRecordWindow: duration({ below: 600_001, bounds: 'from 0s to 10m' })
    .default('30s')
    .describe(
      'qsd only: a lazy golden made with no boot profile known in the cluster records one: its hydration is paused from its creation until its first boot stopped reading new blocks (3 s quiet), at most this long after the first disk opened; other nodes then hydrate those blocks first. `0s`: never record (profiles from other nodes are still replayed). Standalone: never records (no other node would use it).',
    ),
  sourceFailoverAfter: duration()
    .default('2s')
    .describe(
      "Cluster mode: how long a lazy image's hydration source (a peer node, or the origin) may stay unreachable before the hydration moves to another source of the same content: the next peer, finally the origin (qsd; spdk moves to another peer only). Counted from the moment the copy stopped: qsd, once QEMU's NBD client has waited 10 s for the peer to reconnect; spdk, once no path of the source's NVMe controller is connected. Short by default: on qsd a restarting peer is already waited for by those 10 s, and from then until the switch a guest's reads of blocks not yet hydrated fail.",
    ),
  nbdPskFile: text('FILE')
    .optional()
    .describe(
      "qsd only: the cluster's NBD pre-shared key, a `keys.psk` file (lines `username:hexkey`, key at least 16 bytes; not accessible by others) or a directory holding one, the same on every node. With it every NBD export (goldens to peers, migration) and every NBD read of another node use TLS-PSK: only holders of the key connect. Without it NBD is plain and open to any host that reaches port 4420 (a warning at start says so).",
    ),
});

export type AgentFlags = z.output<typeof AgentFlagsSchema>;

/** The agent's defaults, for tools that look at what an agent would use (doctor). */
export const AGENT_DEFAULTS = {
  backend: AgentFlagsSchema.shape.backend.parse(undefined),
  spdkSocket: AgentFlagsSchema.shape.spdkSocket.parse(undefined),
  socketOwner: AgentFlagsSchema.shape.socketOwner.parse(undefined),
} as const;

/**
 * The NodeAgent's options from the config: built here once, for both modes (cluster mode adds
 * the node, the logger and its status hook itself).
 */
export function agentOptionsOf(c: AgentFlags, backend: StorageBackend): Omit<NodeAgentOptions, 'onVmiStatus' | 'node' | 'logger'> {
  return {
    backend,
    stateDir: path.resolve(c.stateDir),
    socket: { ...c.socketOwner, mode: c.socketMode },
    orphanGraceMs: c.orphanGrace,
    // --once reconciles on its own schedule; no background resync in between.
    resyncMs: c.once ? 0 : c.resync,
    sourceFailoverAfterMs: c.sourceFailoverAfter,
    cache: { ...(c.cacheMaxSize !== undefined ? { maxSizeBytes: c.cacheMaxSize } : {}), ...(c.cacheMaxCount !== undefined ? { maxCount: c.cacheMaxCount } : {}) },
  };
}
