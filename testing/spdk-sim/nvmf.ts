import { RpcError, rawErrno, JSONRPC_INVALID_PARAMS, JSONRPC_INTERNAL_ERROR } from './errors.js';
import { NvmfFabric, type NvmfInitiator, type NvmfTarget, type RemoteSubsystem } from './fabric.js';
import { OcfModel } from './ocf.js';
import type * as P from './params.js';
import { DISCOVERY_NQN, Pending, type Json } from './registry.js';
import type { ListenAddress, NvmeController, NvmfSubsystem } from './state.js';

const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

/** An NGUID (32 hex digits) as the UUID an initiator gives the namespace's bdev. */
export function nguidToUuid(nguid: string): string {
  const h = nguid.toLowerCase();
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

/** NVMe-oF target (subsystems, listeners, namespaces) and NVMe initiator (attach/detach). */
export class NvmfModel extends OcfModel implements NvmfTarget, NvmfInitiator {
  // ---------------------------------------------------------------- NVMe-oF target

  nvmfCreateTransport(p: P.NvmfCreateTransport): Json {
    const trtype = p.trtype.toUpperCase();
    if (!['TCP', 'RDMA', 'VFIOUSER'].includes(trtype)) throw new RpcError(JSONRPC_INVALID_PARAMS, `Invalid transport type '${p.trtype}'`);
    // Real v24.01 answers a second create of the same transport with -32603.
    if (this.transports.has(trtype)) throw new RpcError(JSONRPC_INTERNAL_ERROR, `Transport type '${trtype}' already exists`);
    const { trtype: _t, tgt_name: _n, ...opts } = p;
    this.transports.set(trtype, opts as Record<string, Json>);
    return true;
  }

  nvmfGetTransports(p: P.NvmfGetTransports | undefined): Json {
    const list = [...this.transports.entries()].filter(([t]) => p?.trtype === undefined || t === p.trtype.toUpperCase());
    if (p?.trtype !== undefined && list.length === 0) throw new RpcError(JSONRPC_INVALID_PARAMS, `Invalid parameters`);
    return list.map(([trtype, opts]) => ({
      trtype,
      max_queue_depth: 128,
      max_io_qpairs_per_ctrlr: 127,
      in_capsule_data_size: 4096,
      max_io_size: 131072,
      io_unit_size: 131072,
      max_aq_depth: 128,
      num_shared_buffers: 511,
      buf_cache_size: 4294967295,
      dif_insert_or_strip: false,
      zcopy: false,
      ...(trtype === 'TCP' ? { c2h_success: true, sock_priority: 0 } : {}),
      abort_timeout_sec: 1,
      // From v24.05 on (absent on a real v24.01).
      ...(this.profile.newBdevFields ? { ack_timeout: 0, data_wr_pool_size: 0 } : {}),
      ...opts,
    }));
  }

  nvmfCreateSubsystem(p: P.NvmfCreateSubsystem): Json {
    if (!p.nqn.startsWith('nqn.') || p.nqn.length > 223 || this.subsystems.has(p.nqn) || p.nqn === DISCOVERY_NQN) {
      throw new RpcError(JSONRPC_INTERNAL_ERROR, `Unable to create subsystem ${p.nqn}`);
    }
    this.subsystems.set(p.nqn, {
      nqn: p.nqn,
      serialNumber: p.serial_number ?? '00000000000000000000',
      modelNumber: p.model_number ?? 'SPDK bdev Controller',
      allowAnyHost: p.allow_any_host ?? false,
      hosts: [],
      // SPDK_NVMF_DEFAULT_MAX_NAMESPACES, as nvmf_get_subsystems reports it.
      maxNamespaces: p.max_namespaces && p.max_namespaces > 0 ? p.max_namespaces : 32,
      listeners: [],
      namespaces: [],
    });
    return true;
  }

  protected subsystem(nqn: string): NvmfSubsystem {
    const s = this.subsystems.get(nqn);
    if (!s) throw new RpcError(JSONRPC_INVALID_PARAMS, `Unable to find subsystem with NQN ${nqn}`);
    return s;
  }

  nvmfDeleteSubsystem(p: P.NqnOnly): Json {
    const s = this.subsystems.get(p.nqn);
    if (!s) throw new RpcError(JSONRPC_INVALID_PARAMS, 'Invalid parameters');
    for (const l of s.listeners) this.unlistenIfUnused(l, s);
    this.subsystems.delete(p.nqn);
    return true;
  }

  protected unlistenIfUnused(address: ListenAddress, except: NvmfSubsystem): void {
    const key = NvmfFabric.key(address);
    const used = [...this.subsystems.values()].some((s) => s !== except && s.listeners.some((l) => NvmfFabric.key(l) === key));
    if (!used) this.env.fabric.unlisten(address, this);
  }

  nvmfAddListener(p: P.NvmfListener): Json {
    const s = this.subsystem(p.nqn);
    const a = p.listen_address;
    const address: ListenAddress = { trtype: a.trtype.toUpperCase(), adrfam: (a.adrfam ?? 'IPv4').replace(/^ipv/i, 'IPv'), traddr: a.traddr, trsvcid: a.trsvcid ?? '' };
    if (!this.transports.has(address.trtype)) throw new RpcError(JSONRPC_INVALID_PARAMS, 'Invalid parameters');
    const key = NvmfFabric.key(address);
    if (s.listeners.some((l) => NvmfFabric.key(l) === key)) {
      // v24.01 accepts the same listener again; later releases refuse it (both recorded).
      if (this.profile.listenTransportKey) return true;
      throw new RpcError(JSONRPC_INVALID_PARAMS, 'Invalid parameters');
    }
    // v25.09 lists the newest listener first (recorded). Listed before the fabric learns of
    // it, so that hosts reconnecting on that news find the subsystem listening.
    if (this.profile.newBdevFields) s.listeners.unshift(address);
    else s.listeners.push(address);
    if (!this.env.fabric.listen(address, this)) {
      s.listeners = s.listeners.filter((l) => l !== address);
      this.env.log('listen address in use by another target', { traddr: address.traddr, trsvcid: address.trsvcid });
      throw new RpcError(JSONRPC_INVALID_PARAMS, 'Invalid parameters');
    }
    return true;
  }

  nvmfRemoveListener(p: P.NvmfListener): Json {
    const s = this.subsystem(p.nqn);
    const key = NvmfFabric.key({ trtype: p.listen_address.trtype, traddr: p.listen_address.traddr, trsvcid: p.listen_address.trsvcid ?? '' });
    const found = s.listeners.find((l) => NvmfFabric.key(l) === key);
    if (!found) throw new RpcError(JSONRPC_INVALID_PARAMS, 'Invalid parameters');
    s.listeners = s.listeners.filter((l) => l !== found);
    // Hosts connected through it lose their connection.
    if (s.controllers) s.controllers = s.controllers.filter((c) => c.address !== key);
    this.unlistenIfUnused(found, s);
    return true;
  }

  nvmfAddNamespace(p: P.NvmfAddNs): Json {
    const s = this.subsystem(p.nqn);
    const b = this.resolveBdev(p.namespace.bdev_name);
    const used = new Set(s.namespaces.map((n) => n.nsid));
    let nsid = p.namespace.nsid ?? 0;
    if (nsid === 0) {
      nsid = 1;
      while (used.has(nsid)) nsid++;
    }
    const full = s.maxNamespaces > 0 && nsid > s.maxNamespaces;
    // `nguid` is 32 hex digits (a UUID with dashes is refused, as recorded); `uuid` a UUID.
    const nguidText = p.namespace.nguid;
    const badIds = (nguidText !== undefined && !/^[0-9a-f]{32}$/i.test(nguidText)) || (p.namespace.uuid !== undefined && !UUID_RE.test(p.namespace.uuid));
    if (!b || this.claimOf(b) || used.has(nsid) || full || badIds) {
      this.env.log('Unable to add namespace', { nqn: p.nqn, bdev: p.namespace.bdev_name });
      throw new RpcError(JSONRPC_INVALID_PARAMS, 'Invalid parameters');
    }
    // The NGUID defaults to the bdev's UUID, whatever `uuid` says: initiators name their bdev
    // by the NGUID (v25.09 recording, section d).
    const nguid = (nguidText ?? this.bdevUuid(b).replace(/-/g, '')).toUpperCase();
    s.namespaces.push({ nsid, bdevName: b.name, uuid: p.namespace.uuid ?? this.bdevUuid(b), nguid });
    s.namespaces.sort((x, y) => x.nsid - y.nsid);
    return nsid;
  }

  nvmfRemoveNamespace(p: P.NvmfRemoveNs): Json {
    const s = this.subsystem(p.nqn);
    if (!s.namespaces.some((n) => n.nsid === p.nsid)) throw new RpcError(JSONRPC_INVALID_PARAMS, 'Invalid parameters');
    const dropped = s.namespaces.filter((n) => n.nsid === p.nsid);
    s.namespaces = s.namespaces.filter((n) => n.nsid !== p.nsid);
    for (const ns of dropped) this.env.fabric.namespaceGone(s.listeners, s.nqn, ns.nguid);
    return true;
  }

  nvmfHost(p: P.NvmfHost, add: boolean): Json {
    const s = this.subsystem(p.nqn);
    s.hosts = s.hosts.filter((h) => h !== p.host);
    if (add) s.hosts.push(p.host);
    return true;
  }

  nvmfAllowAnyHost(p: P.NvmfAllowAnyHost): Json {
    this.subsystem(p.nqn).allowAnyHost = p.allow_any_host;
    return true;
  }

  nvmfGetSubsystems(p: P.NvmfGetSubsystems | undefined): Json {
    const discovery = {
      nqn: DISCOVERY_NQN,
      subtype: 'Discovery',
      listen_addresses: [],
      allow_any_host: true,
      hosts: [],
    };
    let list: Json[] = [
      discovery,
      ...[...this.subsystems.values()].map((s) => ({
        nqn: s.nqn,
        subtype: 'NVMe',
        listen_addresses: s.listeners.map((l) => (this.profile.listenTransportKey ? { transport: l.trtype, ...l } : { ...l })),
        allow_any_host: s.allowAnyHost,
        hosts: s.hosts.map((nqn) => ({ nqn })),
        serial_number: s.serialNumber,
        model_number: s.modelNumber,
        max_namespaces: s.maxNamespaces,
        min_cntlid: 1,
        max_cntlid: 65519,
        namespaces: s.namespaces.map((n) => ({ nsid: n.nsid, bdev_name: n.bdevName, name: n.bdevName, nguid: n.nguid, uuid: n.uuid })),
      })),
    ];
    if (p?.nqn !== undefined) {
      list = list.filter((s) => (s as { nqn: string }).nqn === p.nqn);
      if (list.length === 0) throw new RpcError(JSONRPC_INVALID_PARAMS, 'Invalid parameters');
    }
    return list;
  }

  /**
   * nvmf_subsystem_get_controllers: one entry per connected host controller (recorded on real
   * v24.01 and v25.09: gone when the host detaches or its process dies; an unknown or missing
   * NQN answers -32602 "Invalid parameters").
   */
  nvmfGetControllers(p: P.NqnOnly | undefined): Json {
    const s = p ? this.subsystems.get(p.nqn) : undefined;
    if (!s) throw new RpcError(JSONRPC_INVALID_PARAMS, 'Invalid parameters');
    return (s.controllers ?? []).map((c) => ({
      cntlid: c.cntlid,
      ...(this.profile.nvmfCntrlType ? { cntrltype: 'io' } : {}),
      hostnqn: c.hostnqn,
      hostid: c.hostid,
      num_io_qpairs: 1,
    }));
  }

  /** NvmfTarget: the host closed its connection to controller `cntlid`. */
  disconnect(nqn: string, cntlid: number): void {
    const s = this.subsystems.get(nqn);
    if (s?.controllers) s.controllers = s.controllers.filter((c) => c.cntlid !== cntlid);
  }

  /** NvmfTarget: what an initiator attaching to this simulator's subsystem sees. */
  connect(nqn: string, address: ListenAddress, hostnqn: string, hostid: string): RemoteSubsystem | undefined {
    const s = this.subsystems.get(nqn);
    if (!s) return undefined;
    const key = NvmfFabric.key(address);
    if (!s.listeners.some((l) => NvmfFabric.key(l) === key)) return undefined;
    if (!s.allowAnyHost && !s.hosts.includes(hostnqn)) return undefined;
    const namespaces = s.namespaces.flatMap((ns) => {
      const b = this.bdevs.get(ns.bdevName);
      return b ? [{ nsid: ns.nsid, uuid: nguidToUuid(ns.nguid), ...this.bdevSize(b), unmap: this.supportsUnmap(b) }] : [];
    });
    const cntlid = s.nextCntlid ?? 1;
    s.nextCntlid = cntlid + 1;
    s.controllers = [...(s.controllers ?? []), { cntlid, hostnqn, hostid, address: key }];
    return { namespaces, serialNumber: s.serialNumber, modelNumber: s.modelNumber, cntlid };
  }

  // ---------------------------------------------------------------- NVMe initiator

  nvmeAttach(p: P.NvmeAttach): Json {
    const existing = this.nvmeControllers.get(p.name);
    // v24.01 ends the message with a newline; v25.09 does not (recorded).
    if (existing) throw new RpcError(-114, `A controller named ${p.name} already exists with the specified network path${this.profile.listenTransportKey ? '\n' : ''}`);
    const trtype = p.trtype.toUpperCase();
    const address: ListenAddress = { trtype, adrfam: (p.adrfam ?? 'IPv4').replace(/^ipv/i, 'IPv'), traddr: p.traddr, trsvcid: p.trsvcid ?? '4420' };
    // One host id per target process, and the default host NQN made of it (as recorded).
    this.hostId ??= this.env.randomUuid();
    this.defaultHostNqn ??= `nqn.2014-08.org.nvmexpress:uuid:${this.hostId}`;
    const hostnqn = p.hostnqn ?? this.defaultHostNqn;
    const subnqn = p.subnqn ?? DISCOVERY_NQN;
    // The same path under a second name: -17, before any connect (v25.09 recording, section d).
    if ([...this.nvmeControllers.values()].some((c) => NvmfFabric.key(c.trid) === NvmfFabric.key(address) && c.trid.subnqn === subnqn)) throw rawErrno('EEXIST');
    // Real v24.01: a port nobody listens on answers -19 "No such device"; a listening target
    // that refuses the connect (unknown NQN, host not allowed) -32602 "Invalid parameters".
    const target = trtype === 'PCIE' ? undefined : this.env.fabric.lookup(address);
    const remote = target?.connect(subnqn, address, hostnqn, this.hostId);
    if (!remote) {
      this.env.log('failed to connect to NVMe controller', { name: p.name, traddr: p.traddr, trsvcid: address.trsvcid, subnqn });
      // A closed port: -19 on v24.01, -5 on v25.09 (both recorded).
      if (!target) throw this.profile.newBdevFields ? rawErrno('EIO') : rawErrno('ENODEV');
      throw new RpcError(JSONRPC_INVALID_PARAMS, 'Invalid parameters');
    }
    const namespaces = remote.namespaces;
    if (namespaces.some((ns) => this.resolveBdev(`${p.name}n${ns.nsid}`))) throw rawErrno('EEXIST');
    // A namespace whose UUID a bdev here already has silently fails to register (recorded when
    // a target attaches its own listener): the answer lists only the others.
    const fresh = namespaces.filter((ns) => !this.bdevByUuid(ns.uuid));
    const names = fresh.map((ns) => `${p.name}n${ns.nsid}`);
    this.nvmeControllers.set(p.name, { name: p.name, trid: { ...address, subnqn }, hostnqn, bdevs: names, serialNumber: remote.serialNumber, modelNumber: remote.modelNumber, cntlid: remote.cntlid, state: 'enabled', lossTimeoutSec: p.ctrlr_loss_timeout_sec ?? 0 });
    this.env.fabric.watch(address, this);
    if (target) this.env.fabric.linked(this, target, subnqn, remote.cntlid);
    fresh.forEach((ns, i) => {
      this.register({ kind: 'nvme', name: names[i] ?? '', uuid: ns.uuid, blockSize: ns.blockSize, numBlocks: ns.numBlocks, controller: p.name, nsid: ns.nsid, unmap: ns.unmap });
    });
    return names;
  }

  /**
   * Detach unregisters the controller's bdevs. While an esnap clone still reads through one
   * (it ignores the hot-remove) or a reader kept its I/O channel after an inflate, the
   * controller stays `deleting` and the answer is -110 after SPDK's 10 s wait; it goes away
   * by itself when the last user lets go (v25.09 recording, sections d and e).
   */
  nvmeDetach(p: P.NvmeDetach): Json | Pending {
    const c = this.nvmeControllers.get(p.name);
    if (!c || c.state === 'deleting') throw rawErrno('ENODEV');
    for (const b of c.bdevs) this.unregister(b);
    const held = (): boolean => c.bdevs.some((b) => this.unregistering.has(b) || this.channelHeld(b));
    if (!held()) {
      this.nvmeControllers.delete(p.name);
      this.env.fabric.unlinked(this, c.trid.subnqn, c.cntlid);
      return true;
    }
    c.state = 'deleting';
    this.pendingDetach.set(p.name, held);
    return new Pending(() => !held(), rawErrno('ETIMEDOUT'), () => true, this.env.detachTimeoutMs ?? 10_000);
  }

  private controllersAt(address: ListenAddress): NvmeController[] {
    const key = NvmfFabric.key(address);
    return [...this.nvmeControllers.values()].filter((c) => NvmfFabric.key(c.trid) === key);
  }

  /**
   * NvmfInitiator: the target went away (killed, or its listener removed). With the default
   * ctrlr_loss_timeout_sec of 0 the controller fails at once; with a timeout it keeps
   * reconnecting. Its bdevs stay (v25.09 recording, section g).
   */
  targetGone(address: ListenAddress): void {
    for (const c of this.controllersAt(address)) if (c.state === 'enabled') c.state = c.lossTimeoutSec !== 0 ? 'reconnect_is_delayed' : 'failed';
  }

  /** NvmfInitiator: a target listens there again; reconnecting controllers connect. */
  targetBack(address: ListenAddress): void {
    for (const c of this.controllersAt(address)) if (c.state === 'reconnect_is_delayed') this.reconnect(c);
  }

  /** NvmfInitiator: the target dropped a namespace: its bdev here goes (reads through it fail). */
  namespaceGone(address: ListenAddress, nqn: string, nguid: string): void {
    const uuid = nguidToUuid(nguid);
    for (const c of this.controllersAt(address)) {
      if (c.trid.subnqn !== nqn) continue;
      for (const name of c.bdevs) {
        const b = this.bdevs.get(name);
        if (b?.kind === 'nvme' && b.uuid === uuid) {
          b.gone = true;
          this.unregister(name);
        }
      }
    }
  }

  private reconnect(c: NvmeController): boolean {
    const target = this.env.fabric.lookup(c.trid);
    this.hostId ??= this.env.randomUuid();
    const remote = target?.connect(c.trid.subnqn, c.trid, c.hostnqn, this.hostId);
    if (!target || !remote) return false;
    this.env.fabric.unlinked(this, c.trid.subnqn, c.cntlid);
    this.env.fabric.linked(this, target, c.trid.subnqn, remote.cntlid);
    c.state = 'enabled';
    c.cntlid = remote.cntlid;
    return true;
  }

  /** bdev_nvme_reset_controller: a failed controller connects again if its target is back. */
  nvmeReset(p: P.NameOnly): Json {
    const c = this.nvmeControllers.get(p.name);
    if (!c || c.state === 'deleting') throw rawErrno('ENODEV');
    // Not recorded: a reset whose target is still away is reported as an I/O error here.
    if (!this.reconnect(c)) throw new RpcError(JSONRPC_INTERNAL_ERROR, 'Input/output error');
    return true;
  }

  /** Controllers in `deleting` whose last user let go disappear. */
  protected reapControllers(): void {
    for (const [name, held] of this.pendingDetach) {
      if (!held()) {
        this.pendingDetach.delete(name);
        const c = this.nvmeControllers.get(name);
        this.nvmeControllers.delete(name);
        if (c) this.env.fabric.unlinked(this, c.trid.subnqn, c.cntlid);
      }
    }
  }

  protected readonly pendingDetach = new Map<string, () => boolean>();
  private defaultHostNqn: string | undefined;
  /** The host id this target's initiator sends (one per process, as SPDK makes it). */
  private hostId: string | undefined;

  nvmeGetControllers(p: P.OptionalName | undefined): Json {
    this.reapControllers();
    let list = [...this.nvmeControllers.values()];
    if (p?.name !== undefined) {
      const c = this.nvmeControllers.get(p.name);
      if (!c) throw rawErrno('ENODEV');
      list = [c];
    }
    return list.map((c) => ({
      name: c.name,
      ctrlrs: [{ state: c.state, trid: { ...c.trid }, cntlid: c.cntlid, host: { nqn: c.hostnqn, addr: '', svcid: '' } }],
    }));
  }
}
