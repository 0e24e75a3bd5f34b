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

export interface NvmfTarget {
  /** The subsystem `nqn` if it is listening on `address` and admits `hostnqn`; undefined otherwise. */
  connect(nqn: string, address: ListenAddress, hostnqn: string): RemoteSubsystem | undefined;
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

  static key(a: Pick<ListenAddress, 'trtype' | 'traddr' | 'trsvcid'>): string {
    return `${a.trtype.toUpperCase()}|${a.traddr}|${a.trsvcid}`;
  }

  listen(address: ListenAddress, target: NvmfTarget): boolean {
    const key = NvmfFabric.key(address);
    const owner = this.listeners.get(key);
    if (owner && owner !== target) return false;
    this.listeners.set(key, target);
    return true;
  }

  unlisten(address: ListenAddress, target: NvmfTarget): void {
    const key = NvmfFabric.key(address);
    if (this.listeners.get(key) === target) this.listeners.delete(key);
  }

  unlistenAll(target: NvmfTarget): void {
    for (const [key, t] of this.listeners) if (t === target) this.listeners.delete(key);
  }

  lookup(address: Pick<ListenAddress, 'trtype' | 'traddr' | 'trsvcid'>): NvmfTarget | undefined {
    return this.listeners.get(NvmfFabric.key(address));
  }
}

export const defaultFabric = new NvmfFabric();
