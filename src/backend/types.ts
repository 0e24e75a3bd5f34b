import type { EventEmitter } from 'node:events';
import type { ImageSource } from '../api/cachedimage.js';
import type { ExportOptions, RemoteDiskRef } from './remote.js';

export type { ExportOptions, ListenAddress, RemoteDiskRef } from './remote.js';

/**
 * The one interface the agent uses to hold disks. Two drivers implement it: `spdk` (spdk_tgt
 * over JSON-RPC) and `qsd` (qemu-storage-daemon over QMP). Every `ensure*` is idempotent: it
 * looks at what exists first and creates only what is missing; every `delete*` of something
 * already gone succeeds. Drivers do not enforce the agent's safety rules (the reconciler
 * does, and re-checks right before calling), but they never destroy data they were not asked
 * to.
 */

/** A golden image the node caches. `name` is the CachedImage name. */
export interface ImageSpec {
  name: string;
  source: ImageSource;
  format: 'raw' | 'qcow2';
  /** Expected virtual size, when the CachedImage says it. */
  sizeBytes?: number;
  /**
   * A peer node's golden of this image, exported read-only: the node then makes a lazy golden
   * that reads through to it and hydrates in the background (backends that support it).
   */
  peer?: RemoteDiskRef;
}

export type ImagePhase = 'importing' | 'hydrating' | 'ready' | 'failed';

export interface ObservedImage {
  name: string;
  phase: ImagePhase;
  /** Virtual size of the image. */
  sizeBytes: number;
  /** Backend object that disks clone from (golden lvol alias, or golden file path). */
  ref: string;
  /** How many disks are clones of this image now. */
  cloneCount: number;
  message?: string;
  /** Phase 'hydrating': how much of the image is local, 0..100. */
  hydratedPercent?: number;
}

export type DiskSourceSpec = { kind: 'image'; image: string } | { kind: 'blank' } | { kind: 'bdev'; bdev: string };

export interface DiskSpec {
  /** Deterministic backend name from (VMI uid, disk name); see agent/naming.ts. */
  id: string;
  source: DiskSourceSpec;
  /** Requested capacity; absent for `bdev` disks served as they are. */
  capacityBytes?: number;
}

export interface ObservedDisk {
  id: string;
  /** What a controller serves: an lvol alias (`lvs/name`), a bdev name, or a QSD node name. */
  ref: string;
  sizeBytes: number;
  /** The image this disk is a clone of, if any. */
  image?: string;
  /** Number of clones/snapshots that depend on this disk (deleting it would break them). */
  dependents: number;
  /** False for `bdev` volumes: we serve them but never delete them. */
  owned: boolean;
}

export interface ControllerSpec {
  /** `<slot>/<disk>`: the socket is `<vhostDir>/<slot>/<disk>`. */
  name: string;
  /** ObservedDisk.ref of the disk to serve. */
  diskRef: string;
  readonly: boolean;
  /** Virtqueues; SPDK sizes them from the guest, QSD takes num-queues. */
  queues?: number;
  cpumask?: string;
}

export interface ObservedController {
  name: string;
  diskRef: string;
  readonly: boolean;
  socketPath: string;
  /** Connected vhost-user front ends (QEMU), when the backend can tell. */
  sessions: number;
}

export interface ObservedState {
  images: ObservedImage[];
  disks: ObservedDisk[];
  controllers: ObservedController[];
}

export interface BackendHealth {
  ok: boolean;
  kind: 'spdk' | 'qsd';
  version?: string;
  message?: string;
}

/** Emits 'connected' (backend reachable again, possibly restarted) and 'disconnected'. */
export interface StorageBackend extends EventEmitter {
  readonly kind: 'spdk' | 'qsd';
  /** Directory under which controller sockets live (`<vhostDir>/<slot>/<disk>`). */
  readonly vhostDir: string;
  start(): Promise<void>;
  close(): Promise<void>;
  health(): Promise<BackendHealth>;
  observe(): Promise<ObservedState>;
  /**
   * Imports the image if it is not cached (download, verify sha256, make it cloneable). Safe
   * to call again after a crash: a half-made import is found and redone, never mistaken for
   * a ready image. Resolves once disks can be cloned from it (hydration may continue).
   */
  ensureImage(spec: ImageSpec, signal?: AbortSignal): Promise<ObservedImage>;
  deleteImage(name: string): Promise<void>;
  ensureDisk(spec: DiskSpec): Promise<ObservedDisk>;
  deleteDisk(id: string): Promise<void>;
  /** Creates the controller and its socket; the agent then fixes the socket's owner and mode. */
  ensureController(spec: ControllerSpec): Promise<ObservedController>;
  deleteController(name: string): Promise<void>;

  // ---- live migration (optional: a backend without them cannot take part in one) ----------
  /**
   * Makes the disk reachable from another node (idempotent). The disk may be served by a
   * controller at the same time; deleting that controller later keeps the export.
   */
  exportDisk?(id: string, opts: ExportOptions): Promise<RemoteDiskRef>;
  /** Stops exporting the disk; an export that is gone already counts as done. */
  unexportDisk?(id: string): Promise<void>;
  /**
   * Opens a disk exported by another node as the local disk `localId` (idempotent). The
   * result's `ref` is what ControllerSpec.diskRef takes; `owned` is false (detach, never delete).
   */
  attachRemoteDisk?(ref: RemoteDiskRef, localId: string): Promise<ObservedDisk>;
  /** Closes a remote disk; refuses while a controller serves it. Gone already counts as done. */
  detachRemoteDisk?(localId: string): Promise<void>;

  // ---- lazy disks (optional) ---------------------------------------------------------------
  /**
   * Makes the local disk `localId` a copy-on-write disk over a disk exported by another node
   * (idempotent): writes stay local, unread blocks are read from the export until
   * hydrateDisk() has copied them. The result is owned (deleting it never touches the remote).
   */
  cloneRemoteDisk?(ref: RemoteDiskRef, localId: string): Promise<ObservedDisk>;
  /**
   * Copies into disk `id` every block it still reads from another node, then drops that
   * dependency. Idempotent: starts the copy if none runs, otherwise reports it; a disk that
   * depends on no other node answers 'standalone' at once. The copy survives a restart of
   * the daemon (it resumes) and pauses while the source is unreachable.
   */
  hydrateDisk?(id: string): Promise<DiskHydration>;
}

export interface DiskHydration {
  id: string;
  /** 'standalone': no block is read from another node; 'paused': source unreachable, retrying. */
  state: 'standalone' | 'hydrating' | 'paused';
  percent: number;
  message?: string;
}

export class BackendError extends Error {
  override readonly name = 'BackendError';
  constructor(
    message: string,
    readonly kind: 'notFound' | 'invalid' | 'noSpace' | 'busy' | 'transport' | 'checksum' | 'download' | 'internal',
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}
