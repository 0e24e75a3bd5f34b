import type { ListenAddress } from './state.js';

/** What an initiator learns about a namespace when it connects to a subsystem. */
export interface RemoteNamespace {
  nsid: number;
  uuid: string;
  blockSize: number;
  numBlocks: number;
  unmap: boolean;
}

/** What a connect learns about a subsystem: its namespaces and its controller identity. */
export interface RemoteSubsystem {
  namespaces: RemoteNamespace[];
  serialNumber: string;
  modelNumber: string;
  /** The controller id the target gives this connection (one more per connect). */
  cntlid: number;
}

/** An NVMe-oF host: told when the target behind an address goes, comes back, or drops a namespace. */
export interface NvmfInitiator {
  targetGone(address: ListenAddress): void;
  targetBack(address: ListenAddress): void;
  namespaceGone(address: ListenAddress, nqn: string, uuid: string): void;
}

export interface NvmfTarget {
  /**
   * The subsystem `nqn` if it is listening on `address` and admits `hostnqn`; undefined
   * otherwise. A connect makes a controller on the target (nvmf_subsystem_get_controllers).
   */
  connect(nqn: string, address: ListenAddress, hostnqn: string, hostid: string): RemoteSubsystem | undefined;
  /** The host's connection of controller `cntlid` closed (detach, or the host process died). */
  disconnect(nqn: string, cntlid: number): void;
}

/**
 * Simulated NVMe-oF network. The simulator does not move data, so instead of a TCP
 * connection, `bdev_nvme_attach_controller` looks the listener up here and learns the remote
 * namespaces' sizes from the simulator that serves them. Simulators in one process share
 * `defaultFabric` unless given their own; simulators in different processes cannot see each
 * other (the attach then fails as a refused connection would).
 */
export class NvmfFabric {
  private readonly listeners = new Map<string, NvmfTarget>();
  private readonly watchers = new Map<string, Set<NvmfInitiator>>();
  private readonly addresses = new Map<string, ListenAddress>();
  /** Open host connections: which target's controller each initiator holds. */
  private readonly links = new Map<NvmfInitiator, Array<{ target: NvmfTarget; nqn: string; cntlid: number }>>();

  /** `initiator` holds controller `cntlid` of `target`'s subsystem `nqn`. */
  linked(initiator: NvmfInitiator, target: NvmfTarget, nqn: string, cntlid: number): void {
    const list = this.links.get(initiator) ?? [];
    list.push({ target, nqn, cntlid });
    this.links.set(initiator, list);
  }

  /** `initiator` closed its connection to controller `cntlid` of `nqn` (a detach, or a reconnect replacing it). */
  unlinked(initiator: NvmfInitiator, nqn: string, cntlid: number): void {
    const list = this.links.get(initiator) ?? [];
    for (const l of list.filter((x) => x.nqn === nqn && x.cntlid === cntlid)) l.target.disconnect(l.nqn, l.cntlid);
    this.links.set(initiator, list.filter((x) => !(x.nqn === nqn && x.cntlid === cntlid)));
  }

  /** `initiator` holds a controller connected to `address`. */
  watch(address: ListenAddress, initiator: NvmfInitiator): void {
    const key = NvmfFabric.key(address);
    const set = this.watchers.get(key) ?? new Set<NvmfInitiator>();
    set.add(initiator);
    this.watchers.set(key, set);
  }

  /** The initiator's process went away: its TCP connections close, so targets drop its controllers. */
  unwatch(initiator: NvmfInitiator): void {
    for (const set of this.watchers.values()) set.delete(initiator);
    for (const l of this.links.get(initiator) ?? []) l.target.disconnect(l.nqn, l.cntlid);
    this.links.delete(initiator);
  }

  /** A target dropped a namespace of `nqn` that its listeners at `addresses` exported. */
  namespaceGone(addresses: ListenAddress[], nqn: string, uuid: string): void {
    for (const a of addresses) for (const w of [...(this.watchers.get(NvmfFabric.key(a)) ?? [])]) w.namespaceGone(a, nqn, uuid);
  }

  private notify(key: string, what: 'targetGone' | 'targetBack'): void {
    const address = this.addresses.get(key);
    if (address) for (const w of [...(this.watchers.get(key) ?? [])]) w[what](address);
  }

  static key(a: Pick<ListenAddress, 'trtype' | 'traddr' | 'trsvcid'>): string {
    return `${a.trtype.toUpperCase()}|${a.traddr}|${a.trsvcid}`;
  }

  listen(address: ListenAddress, target: NvmfTarget): boolean {
    const key = NvmfFabric.key(address);
    const owner = this.listeners.get(key);
    if (owner && owner !== target) return false;
    this.listeners.set(key, target);
    this.addresses.set(key, { ...address });
    if (!owner) this.notify(key, 'targetBack');
    return true;
  }

  unlisten(address: ListenAddress, target: NvmfTarget): void {
    const key = NvmfFabric.key(address);
    if (this.listeners.get(key) === target) {
      this.listeners.delete(key);
      this.notify(key, 'targetGone');
    }
  }

  unlistenAll(target: NvmfTarget): void {
    // The target is gone: nothing to tell it; its hosts' links die with it.
    for (const [initiator, list] of this.links) this.links.set(initiator, list.filter((l) => l.target !== target));
    for (const [key, t] of this.listeners) {
      if (t === target) {
        this.listeners.delete(key);
        this.notify(key, 'targetGone');
      }
    }
  }

  lookup(address: Pick<ListenAddress, 'trtype' | 'traddr' | 'trsvcid'>): NvmfTarget | undefined {
    return this.listeners.get(NvmfFabric.key(address));
  }
}

export const defaultFabric = new NvmfFabric();
