import type { EventEmitter } from 'node:events';
import type { ImageSource } from '../api/cachedimage.js';
import type { ExportOptions, ListenAddress, RemoteDiskRef } from './remote.js';
import type { BootProfile } from '../contract/boot-profile.js';

export type { ExportOptions, ListenAddress, RemoteDiskRef } from './remote.js';

/**
 * The backend port: the one interface the agent uses to hold disks, and the contract every
 * driver keeps. Two drivers implement it: `spdk` (spdk_tgt over JSON-RPC, src/backend/spdk)
 * and `qsd` (qemu-storage-daemon over QMP, src/backend/qsd). Nothing above this port (agent,
 * migration, CLI) imports a driver's types: what a caller needs to decide is here.
 *
 * "Caller" below is the code that uses a driver; "driver" is the code that implements this.
 *
 * Idempotency (drivers)
 * - Every `ensure*` (and attachRemoteDisk, exportDisk) looks at what exists first and makes
 *   only what is missing; called again with the same spec it returns the same object. A
 *   half-made object left by a crash (an import, a clone not yet resized) is found and
 *   completed or redone, never reported as finished.
 * - Every `delete*` (and unexportDisk, detachRemoteDisk) of something already gone succeeds.
 * - An `ensure*` that finds an object of that name which does not match the spec (a
 *   controller serving another disk, or with another readonly flag) fails with `busy`; it
 *   never changes or replaces the object.
 * - So a caller may repeat any call after a crash, a timeout or a `transport` error whose
 *   outcome it does not know: repeating it is how it finds out.
 *
 * Concurrency: what a caller may assume (the weaker of the two drivers)
 * - Any method may be called while other calls are in flight, on the same or other objects;
 *   the driver never corrupts its state or SPDK's/QEMU's because of it.
 * - Calls on one object (an image name, a disk id, a controller name) run one after another in
 *   the order they were made. Calls on different objects may run in parallel or one after
 *   another: a caller must not depend on either.
 * - The driver does not order calls on *related* objects: a controller for a disk whose
 *   ensureDisk has not resolved yet fails `notFound`; a deleteDisk while a controller serves
 *   the disk, or a deleteImage while a disk is being cloned from it, is not refused by every
 *   driver. The caller orders them (disk before controller; controller before disk deletion)
 *   and enforces the safety rules (agent/safety.ts) right before each destructive call.
 * - What each driver adds, which callers may use for speed but not for correctness:
 *   spdk: per-key locks (disk id, controller name), one import per image shared by every
 *         caller, clones of one image spread over parallel clone lanes (one per snapshot, since
 *         SPDK answers busy to two metadata operations on one snapshot), reads in flight shared.
 *   qsd:  every disk, controller and migration call runs one at a time through one queue; one
 *         import per image shared by every caller.
 *
 * observe()
 * - Lists the backend's own state at the time of the call (spdk: three SPDK listings; qsd: the
 *   state directory and the daemon's block nodes and exports); nothing is cached between calls,
 *   except what the backend cannot tell (imports running in this process).
 * - Not atomic: a call that runs concurrently may show in one list and not yet in another, and
 *   a listing shared with a read already in flight may predate the call by one round trip. A
 *   caller re-observes right before a destructive call instead of trusting an older view.
 * - Reports only what this driver recognises as its own (its naming rules); foreign objects
 *   are left out, never deleted. A `transport` error means the state is unknown, not empty.
 *
 * Events: 'connected' after the backend became reachable again, which may be a new process
 * (controllers, and for qsd every open disk, are gone): the caller re-observes and reconciles;
 * health().instance tells a new process from the same one where the driver can.
 * 'disconnected' when it went away (calls fail `transport` until 'connected').
 *
 * Errors: every method rejects with a BackendError (see its `kind`s below and the list of what a
 * caller does with each at BackendError); drivers map their transport's errors in one place
 * each (spdk/errors.ts, qsd's toBackendError, image-source.ts for downloads).
 *
 * Drivers do not enforce the agent's safety rules (the reconciler does, and re-checks right
 * before calling), but they never destroy data they were not asked to.
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
  /**
   * The ranges another node's first boot of this image read (contract boot-profile.ts, already
   * validated by the agent; backends check it again): a lazy golden hydrates them first.
   * Backends that cannot replay ignore it.
   */
  bootProfile?: BootProfile;
}

/**
 * 'importing': disks cannot clone it yet; 'hydrating': disks clone it now while its data still
 * arrives underneath (a lazy golden); 'ready': whole and local; 'failed'.
 */
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
  /**
   * Phase 'hydrating': since when (ms since the epoch) the source cannot be read, while it still
   * cannot (hydration paused); absent while it hydrates. What a caller measures a failover by.
   */
  sourceUnreachableSinceMs?: number;
  /** Peers reading through this node's export of the golden now (lazy readers + hydration streams), when the backend can tell: the load peers choose a source by. */
  peerReaders?: number;
  /** The boot profile this node recorded or replayed for the image, published for other nodes. */
  bootProfile?: BootProfile;
}

export type DiskSourceSpec = { kind: 'image'; image: string } | { kind: 'blank' } | { kind: 'bdev'; bdev: string };

export interface DiskSpec {
  /** Deterministic backend name from (VMI uid, disk name); see src/contract/layout.ts. */
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
  /**
   * Names the backend process (a new spdk_tgt or QSD gets a new one), when the driver can tell:
   * a 'connected' after a transient drop of the RPC connection keeps it, a real restart does
   * not. Without it a caller must take every reconnect for a restart.
   */
  instance?: string;
}

/** The port; see the contract above. Emits 'connected' and 'disconnected'. */
export interface StorageBackend extends EventEmitter {
  readonly kind: 'spdk' | 'qsd';
  /** Directory under which controller sockets live (`<vhostDir>/<slot>/<disk>`, contract/layout.ts). */
  readonly vhostDir: string;
  /**
   * Connects (waiting for a backend that is restarting), loads or makes the storage the
   * driver keeps images and disks in, and recovers what a backend restart left behind.
   * Throws `invalid` (configuration), `busy` (its storage is held by something else),
   * `transport`, `internal`; after a failed start nothing of it keeps the process alive.
   */
  start(): Promise<void>;
  /** Cancels running imports and disconnects; the backend's objects stay as they are. */
  close(): Promise<void>;
  /** Never throws: reachability and version, for probes and `doctor`. */
  health(): Promise<BackendHealth>;
  /** Everything the driver holds now (see "observe()" above). Throws `transport`, `internal`. */
  observe(): Promise<ObservedState>;
  /**
   * Imports the image if it is not cached (download, verify sha256, make it cloneable). Safe
   * to call again after a crash: a half-made import is found and redone, never mistaken for
   * a ready image. Resolves once disks can be cloned from it (hydration may continue).
   * Concurrent calls for one image share one import; `signal` detaches this caller only.
   * Throws `invalid` (name, source, size), `checksum`, `download`, `notFound` (source file),
   * `noSpace`, `transport`, `internal`.
   */
  ensureImage(spec: ImageSpec, signal?: AbortSignal): Promise<ObservedImage>;
  /** Throws `busy` while disks are clones of it or its import runs; `invalid` for a bad name. */
  deleteImage(name: string): Promise<void>;
  /**
   * Clones the image (thin), creates a blank disk or adopts an existing bdev, at least
   * `capacityBytes` large; an existing disk smaller than asked is grown (never shrunk).
   * Throws `invalid` (id, capacity below the image, a bdev the node manages), `notFound`
   * (image not cached, bdev missing), `noSpace`, `busy`, `transport`, `internal`.
   */
  ensureDisk(spec: DiskSpec): Promise<ObservedDisk>;
  /** Deletes an owned disk (never a `bdev` volume's bdev). Throws `busy` while clones depend on it. */
  deleteDisk(id: string): Promise<void>;
  /**
   * Creates the controller and its socket (making the slot directory); the agent then fixes
   * the socket's owner and mode. Throws `invalid` (name not `<slot>/<disk>`, socket path over
   * sun_path, queues), `notFound` (diskRef), `busy` (the disk is served by another controller,
   * or a controller of this name serves something else), `transport`, `internal`.
   */
  ensureController(spec: ControllerSpec): Promise<ObservedController>;
  /** Deletes it even while QEMU is connected (the caller checks sessions). Throws `invalid` (name), `transport`, `internal`. */
  deleteController(name: string): Promise<void>;

  // ---- live migration (optional: a backend without them cannot take part in one) ----------
  /**
   * Makes the disk reachable from another node (idempotent). The disk may be served by a
   * controller at the same time; deleting that controller later keeps the export.
   * Throws `notFound` (disk), `invalid` (address), `transport`, `internal`.
   */
  exportDisk?(id: string, opts: ExportOptions): Promise<RemoteDiskRef>;
  /** Stops exporting the disk; an export that is gone already counts as done. */
  unexportDisk?(id: string): Promise<void>;
  /**
   * Opens a disk exported by another node as the local disk `localId` (idempotent). The
   * result's `ref` is what ControllerSpec.diskRef takes; `owned` is false (detach, never delete).
   * Throws `transport` (source unreachable: retry), `invalid` (ref), `internal`.
   */
  attachRemoteDisk?(ref: RemoteDiskRef, localId: string): Promise<ObservedDisk>;
  /** Closes a remote disk; refuses (`busy`) while a controller serves it. Gone already counts as done. */
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

  // ---- peer distribution (optional) ---------------------------------------------------------
  /**
   * Moves the hydrating lazy golden of `spec.name` onto another source of the same content:
   * `spec.peer` (another node's export of the same content key), or without it the image's
   * origin. For a source that died mid-hydration; disks cloned from the golden keep running,
   * what is hydrated stays, the copy goes on from the new source, and a restart reopens the new
   * one (it is recorded). Idempotent: on the source it has already, the copy is (re)started; a
   * golden that stands alone (ready) is left as it is. Throws `notFound` (no lazy golden of that
   * name), `checksum` (it failed verification), `invalid` (the new source's size differs from the
   * golden's, or the origin cannot be read lazily: choose another), `transport` (the new source
   * does not answer: choose another, or retry later), `internal`. On every error the golden
   * keeps the source it had. A backend without it keeps waiting for the source to come back.
   * spdk switches to another peer only (a second path of the same NVMe controller): the origin
   * is `invalid` there.
   */
  retargetImage?(spec: ImageSpec): Promise<ObservedImage>;
  /**
   * Serves the golden of image `name` read-only to the peer nodes in `opts.allowedNodes`
   * (idempotent; the allowed set is replaced by the latest call). Never open to any host:
   * spdk lists each peer's host NQN (hostNqnOf), qsd restricts its NBD export likewise.
   * Throws `notFound` (no golden), `invalid` (address), `transport`, `internal`.
   */
  exportImage?(name: string, opts: ImageExportOptions): Promise<RemoteDiskRef>;
  /**
   * Stops serving the golden to peers. The caller first makes sure no peer still reads through
   * it (a peer's NodeImageCache names its source until it has hydrated). Gone counts as done.
   */
  unexportImage?(name: string): Promise<void>;
}

export interface ImageExportOptions {
  listenAddress: ListenAddress;
  /** Node names allowed to read the export; empty means nobody (not everybody). */
  allowedNodes: string[];
}

export interface DiskHydration {
  id: string;
  /** 'standalone': no block is read from another node; 'paused': source unreachable, retrying. */
  state: 'standalone' | 'hydrating' | 'paused';
  percent: number;
  message?: string;
}

/**
 * What went wrong, as every driver reports it, and what a caller does with it:
 * - `transport`  backend unreachable, lost mid-call, restarted, or the call timed out; the
 *                call's outcome is unknown. Transient: retry with backoff (every call is
 *                idempotent), then re-observe.
 * - `busy`       the object is in use or a conflicting operation runs (SPDK EBUSY, an import
 *                running, a disk with clones, a disk served by another controller). Transient:
 *                retry with backoff; if it persists, report it and let a later round try.
 * - `invalid`    the request breaks a rule (a name, a size, a path, a bdev the node manages):
 *                permanent until the input changes. Report it to the user; do not retry.
 * - `notFound`   something the call needs does not exist (image not cached, bdev, source file):
 *                make it first, or report. (A delete of something gone succeeds instead.)
 * - `noSpace`    the node's storage is full: report; retry only after space was freed.
 * - `checksum`   an image's content does not match its sha256: report; never use it.
 * - `download`   fetching an image failed (HTTP, timeout, abort): report, retry after the
 *                image's own backoff.
 * - `internal`   the backend is in a state the driver did not expect: report, do not retry.
 */
export const BACKEND_ERROR_KINDS = ['notFound', 'invalid', 'noSpace', 'busy', 'transport', 'checksum', 'download', 'internal'] as const;
export type BackendErrorKind = (typeof BACKEND_ERROR_KINDS)[number];

/** The kinds a retry can cure. */
const TRANSIENT_KINDS: ReadonlySet<BackendErrorKind> = new Set(['busy', 'transport']);

export class BackendError extends Error {
  override readonly name = 'BackendError';
  constructor(
    message: string,
    readonly kind: BackendErrorKind,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }

  /** A retry after a backoff may succeed: decided by the kind the driver's mapping chose. */
  get transient(): boolean {
    return TRANSIENT_KINDS.has(this.kind);
  }
}

/**
 * An error that says what it is and whether a retry can help: BackendError, and (structurally,
 * so that callers need no driver's types) the errors of the layers under a driver, which a
 * test double may throw as they are.
 */
export interface ClassifiedError extends Error {
  readonly kind: string;
  readonly transient: boolean;
}

export function isClassifiedError(e: unknown): e is ClassifiedError {
  if (!(e instanceof Error)) return false;
  const c = e as Partial<ClassifiedError>;
  return typeof c.kind === 'string' && typeof c.transient === 'boolean';
}

/** The first classified error in `err`'s cause chain: the outermost mapping decides. */
export function classifiedError(err: unknown): ClassifiedError | undefined {
  for (let e: unknown = err, depth = 0; e !== undefined && e !== null && depth < 5; e = (e as { cause?: unknown }).cause, depth++) {
    if (isClassifiedError(e)) return e;
  }
  return undefined;
}

/** busy and transport (of a BackendError or of the layer under a driver) are worth retrying. */
export function isTransientError(err: unknown): boolean {
  return classifiedError(err)?.transient ?? false;
}
