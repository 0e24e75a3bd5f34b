/**
 * The libvirt domain rewrite: a pure function from (domain XML, VMI) to domain XML that adds
 * one vhost-user-blk disk per SPDK volume and the shared guest memory vhost-user needs.
 *
 * Contract (see DESIGN.md, "Converter"):
 * - idempotent: KubeVirt calls OnDefineDomain twice at boot on q35 and may hand our disk back
 *   stripped of fields its Go structs do not know (the `<source>` of a vhostuser disk). Our
 *   disks are recognised by what KubeVirt never produces for a disk of its own: type
 *   `vhostuser` (KubeVirt has no such disk) with a `ua-spdk-` alias; they are rebuilt, never
 *   duplicated. A user's own disk named `spdk-*` is left alone.
 * - our target names count down from `vdzzz`, out of reach of KubeVirt's hot-plug naming.
 * - `kubevirt.io/memfd: "false"` is respected: memory is made shared, the source KubeVirt chose stays.
 * - everything else keeps its meaning: elements, attributes, their order, comments,
 *   namespaces (`xmlns:qemu`, `<qemu:commandline>`). Only ignorable whitespace between
 *   elements is re-indented.
 * - readonly volumes get no `<readonly/>`: libvirt refuses it on a vhostuser disk. The agent
 *   creates the SPDK controller read-only instead, so the guest sees a read-only disk.
 */
import path from 'node:path';
import type { XMLBuilder } from 'xmlbuilder2/lib/interfaces.js';
import type { Document, Element, Node } from '@oozcitak/dom/lib/dom/interfaces.js';
import { MAX_SOCKET_PATH_BYTES, socketPathTooLong } from '../api/limits.js';
import { MEMFD_ANNOTATION, SPDK_ALIAS_NAME_PREFIX, VOLUMES_FIELD, spdkVolumesOf, vcpuCount, type Vmi } from '../api/vmi.js';
import type { SpdkVolume } from '../api/volumes.js';
import { POD_SOCKET_DIR, podSocketPath, queuesOf } from '../contract/index.js';
import { ConvertError } from './errors.js';
import { ourTargetNames } from './devnames.js';
import { parseXmlStrict } from './xmlparse.js';

export { ConvertError } from './errors.js';

export interface ConvertOptions {
  /** Directory of the vhost sockets inside the virt-launcher pod. */
  socketDir?: string;
}

export const DEFAULT_SOCKET_DIR = POD_SOCKET_DIR;
/** libvirt keeps user aliases that start with `ua-`; ours add `spdk-` to be recognisable. */
export const ALIAS_PREFIX = `ua-${SPDK_ALIAS_NAME_PREFIX}`;

const ELEMENT_NODE = 1;
const TEXT_NODE = 3;

/** libvirt's formatting order inside `<memoryBacking>` (the schema interleaves, we stay tidy). */
const MEMORY_BACKING_ORDER = ['hugepages', 'nosharepages', 'locked', 'source', 'access', 'allocation', 'discard'];
/** `<memoryBacking>` goes after the memory sizes; failing those, after the domain's identity. */
const MEMORY_BACKING_ANCHORS = [['maxMemory', 'memory', 'currentMemory'], ['name', 'uuid', 'genid', 'title', 'description']];

function isElement(node: Node): node is Element {
  return node.nodeType === ELEMENT_NODE;
}

function childNodes(parent: Element): Node[] {
  const out: Node[] = [];
  for (let n = parent.firstChild; n; n = n.nextSibling) out.push(n);
  return out;
}

/** Child elements in libvirt's (null) namespace, optionally of one name. */
function children(parent: Element, name?: string): Element[] {
  const out: Element[] = [];
  for (const child of childNodes(parent)) {
    if (isElement(child) && child.namespaceURI === null && (name === undefined || child.localName === name)) out.push(child);
  }
  return out;
}

function child(parent: Element, name: string): Element | undefined {
  return children(parent, name)[0];
}

function makeElement(doc: Document, name: string, attrs: Record<string, string>, kids: Element[] = []): Element {
  const e = doc.createElementNS(null, name);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  for (const k of kids) e.appendChild(k);
  return e;
}

function aliasOf(device: Element): string | undefined {
  return child(device, 'alias')?.getAttribute('name') ?? undefined;
}

function isOurDisk(device: Element): boolean {
  return device.localName === 'disk' && device.getAttribute('type') === 'vhostuser' && (aliasOf(device)?.startsWith(ALIAS_PREFIX) ?? false);
}

/** A device of the domain that already holds the alias one of our disks needs: refused, never replaced. */
function checkAliases(devices: Element, volumes: SpdkVolume[]): void {
  const byAlias = new Map<string, Element>();
  for (const d of children(devices)) {
    const alias = aliasOf(d);
    if (alias !== undefined && !isOurDisk(d)) byAlias.set(alias, d);
  }
  const problems = volumes.flatMap((v, i) => {
    const owner = byAlias.get(`${ALIAS_PREFIX}${v.name}`);
    return owner ? [`${VOLUMES_FIELD}[${i}].name: "${v.name}" needs the alias "${ALIAS_PREFIX}${v.name}", already used by ${describeDevice(owner)} in the domain`] : [];
  });
  if (problems.length) throw new ConvertError(problems);
}

/** `<disk dev="vda" alias="ua-containerdisk">`: how an error names a device of the domain. */
function describeDevice(device: Element): string {
  const dev = child(device, 'target')?.getAttribute('dev');
  const alias = aliasOf(device);
  return `<${device.localName}${dev ? ` dev="${dev}"` : ''}${alias ? ` alias="${alias}"` : ''}>`;
}

/**
 * Removes whitespace-only text from `parents` so the pretty printer owns the layout. The reader
 * already dropped it from every element that had an element child; only an element this
 * rewrite gave its first element child (`<devices>`, `<memoryBacking>`, `<domain>`) can hold some.
 */
function dropIgnorableWhitespace(parents: readonly Element[]): void {
  for (const el of parents) {
    for (const k of childNodes(el)) if (k.nodeType === TEXT_NODE && /^\s*$/.test(k.nodeValue ?? '')) el.removeChild(k);
  }
}

function socketDirOf(options: ConvertOptions): string {
  const dir = options.socketDir ?? DEFAULT_SOCKET_DIR;
  if (!path.posix.isAbsolute(dir)) throw new ConvertError([`socketDir: "${dir}" must be an absolute path`]);
  return path.posix.normalize(dir).replace(/\/+$/, '') || '/';
}

function checkBootOrders(domain: Element, devices: Element, volumes: SpdkVolume[]): void {
  const wanted = volumes.map((v, i) => ({ i, order: v.spdkVhostBlkDisk.bootOrder })).filter((w) => w.order !== undefined);
  if (wanted.length === 0) return;
  const problems: string[] = [];
  const os = child(domain, 'os');
  const osBoot = os ? child(os, 'boot') : undefined;
  if (osBoot) {
    for (const w of wanted) {
      problems.push(
        `${VOLUMES_FIELD}[${w.i}].spdkVhostBlkDisk.bootOrder: the domain boots by <os><boot dev="${osBoot.getAttribute('dev') ?? ''}"/> and libvirt forbids mixing that with per-device boot order`,
      );
    }
  } else {
    const used = new Map<string, Element>();
    for (const device of children(devices)) {
      if (isOurDisk(device)) continue;
      const order = child(device, 'boot')?.getAttribute('order');
      if (order) used.set(order, device);
    }
    for (const w of wanted) {
      const owner = used.get(String(w.order));
      if (owner) problems.push(`${VOLUMES_FIELD}[${w.i}].spdkVhostBlkDisk.bootOrder: ${w.order} is already used by ${describeDevice(owner)} in the domain`);
    }
  }
  if (problems.length) throw new ConvertError(problems);
}

/**
 * vhost-user needs guest memory that the backend can map: fd-backed and shared. memfd unless
 * the VMI turned memfd off (then libvirt backs shared memory with a file: hugetlbfs for
 * hugepages, its memory directory otherwise). Returns `<memoryBacking>`.
 */
function ensureSharedMemory(doc: Document, domain: Element, memfd: boolean): Element {
  let backing = child(domain, 'memoryBacking');
  if (!backing) {
    backing = makeElement(doc, 'memoryBacking', {});
    const anchor = MEMORY_BACKING_ANCHORS.map((names) => children(domain).filter((e) => names.includes(e.localName)).pop()).find((e) => e);
    domain.insertBefore(backing, anchor ? anchor.nextSibling : domain.firstChild);
  }
  const source = child(backing, 'source');
  // A file-backed source shared with the backend works for vhost-user too: keep KubeVirt's choice.
  if (!memfd) {
    // Anonymous memory has no fd to share; without a source libvirt picks a file.
    if (source?.getAttribute('type') === 'anonymous') backing.removeChild(source);
  } else if (!source) insertOrdered(backing, makeElement(doc, 'source', { type: 'memfd' }));
  else if (source.getAttribute('type') !== 'file') source.setAttribute('type', 'memfd');
  const access = child(backing, 'access');
  if (!access) insertOrdered(backing, makeElement(doc, 'access', { mode: 'shared' }));
  else access.setAttribute('mode', 'shared');
  return backing;
}

function insertOrdered(backing: Element, el: Element): void {
  const rank = MEMORY_BACKING_ORDER.indexOf(el.localName);
  const next = children(backing).find((c) => MEMORY_BACKING_ORDER.indexOf(c.localName) > rank);
  backing.insertBefore(el, next ?? null);
}

function checkNumaAccess(domain: Element): void {
  const numa = child(domain, 'cpu') && child(child(domain, 'cpu') as Element, 'numa');
  if (!numa) return;
  const problems = children(numa, 'cell')
    .filter((c) => c.getAttribute('memAccess') === 'private')
    .map((c) => `domain XML: <cpu><numa><cell id="${c.getAttribute('id') ?? '?'}" memAccess="private"> cannot be used with vhost-user disks, which need shared guest memory`);
  if (problems.length) throw new ConvertError(problems);
}

function parseDomain(domainXml: string): { builder: XMLBuilder; doc: Document; domain: Element } {
  const { builder, doc, root: domain } = parseXmlStrict(domainXml);
  if (domain.nodeName !== 'domain' || domain.namespaceURI !== null) {
    const what = domain.namespaceURI === null ? `<${domain.nodeName}>` : `<${domain.nodeName}> in namespace "${domain.namespaceURI}"`;
    throw new ConvertError([`domain XML: the root element is ${what}, expected a libvirt <domain>`]);
  }
  return { builder, doc, domain };
}

function serialize(builder: XMLBuilder, grown: readonly Element[]): string {
  dropIgnorableWhitespace(grown);
  return `${builder.end({ headless: true, prettyPrint: true, indent: '  ' })}\n`;
}

/** Pure: libvirt domain XML + VMI -> domain XML with the VMI's SPDK disks. */
export function convertDomain(domainXml: string, vmi: Vmi, options: ConvertOptions = {}): string {
  const volumes = spdkVolumesOf(vmi);
  // A VMI without our annotation is none of our business: hand the domain back byte for byte.
  if (volumes.length === 0) return domainXml;
  const socketDir = socketDirOf(options);
  const tooLong = volumes
    .map((v, i) => ({ i, sock: podSocketPath(v.name, socketDir) }))
    .filter((s) => socketPathTooLong(s.sock))
    .map((s) => `${VOLUMES_FIELD}[${s.i}].name: socket path ${s.sock} is longer than ${MAX_SOCKET_PATH_BYTES} bytes (unix socket limit)`);
  if (tooLong.length) throw new ConvertError(tooLong);

  const { builder, doc, domain } = parseDomain(domainXml);
  let devices = child(domain, 'devices');
  if (!devices) {
    devices = makeElement(doc, 'devices', {});
    domain.appendChild(devices);
  }

  // Ours from an earlier call (possibly stripped by KubeVirt) are rebuilt from the VMI.
  for (const d of children(devices, 'disk').filter(isOurDisk)) devices.removeChild(d);
  checkAliases(devices, volumes);
  checkBootOrders(domain, devices, volumes);
  checkNumaAccess(domain);

  const others = children(devices, 'disk');
  const taken = new Set(others.map((d) => child(d, 'target')?.getAttribute('dev')).filter((d): d is string => !!d));
  const names = ourTargetNames('vd', taken, volumes.length);
  const vcpus = vcpuCount(vmi);

  // After the domain's last disk (or first in <devices>): a position that does not depend on
  // our own earlier output, which keeps the rewrite idempotent.
  const lastDisk = others[others.length - 1];
  const emulator = child(devices, 'emulator');
  let before: Node | null = lastDisk ? lastDisk.nextSibling : emulator ? emulator.nextSibling : devices.firstChild;
  volumes.forEach((vol, i) => {
    const d = vol.spdkVhostBlkDisk;
    const kids = [
      makeElement(doc, 'driver', { name: 'qemu', type: 'raw', queues: String(queuesOf(d.queues, vcpus)) }),
      makeElement(doc, 'source', { type: 'unix', path: podSocketPath(vol.name, socketDir) }, [
        makeElement(doc, 'reconnect', { enabled: 'yes', timeout: String(d.reconnectInterval) }),
      ]),
      makeElement(doc, 'target', { dev: names[i] ?? '', bus: 'virtio' }),
    ];
    if (d.bootOrder !== undefined) kids.push(makeElement(doc, 'boot', { order: String(d.bootOrder) }));
    kids.push(makeElement(doc, 'alias', { name: `${ALIAS_PREFIX}${vol.name}` }));
    const disk = makeElement(doc, 'disk', { type: 'vhostuser', device: 'disk' }, kids);
    devices.insertBefore(disk, before);
    before = disk.nextSibling;
  });

  const backing = ensureSharedMemory(doc, domain, vmi.metadata.annotations[MEMFD_ANNOTATION] !== 'false');
  return serialize(builder, [domain, devices, backing]);
}
