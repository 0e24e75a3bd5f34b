/**
 * End to end on one machine: the converter's domain XML is defined and started by the system
 * libvirtd, the guest's disk is a vhost-user-blk export of a qcow2 clone of a golden image
 * (qemu-storage-daemon), and the guest reports on its serial console what it read and wrote.
 * Then the backend is SIGKILLed and restarted under the guest's running I/O: QEMU reconnects
 * and the guest verifies that no record was lost.
 *
 * The guest's I/O pause across the restart is logged for the disk's reconnectInterval (libvirt
 * `<reconnect timeout>`) of 1 s and of 10 s (a second boot, ~20 s; KS_E2E_QUICK=1 skips it;
 * that VM also has `kubevirt.io/memfd: "false"`, so its shared memory is libvirt's file backing).
 * The numbers are reported, never asserted: QEMU looks at the socket again once per interval,
 * so the pause is about the backend's downtime plus up to one interval.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { parseVmiYaml } from '../../src/api/vmi.js';
import { convertDomain } from '../../src/converter/index.js';
import { REPO_ROOT } from '../helpers/cli.js';
import { e2eDomain, ensureGuestBuilt, GuestConsole } from '../helpers/guest.js';
import {
  defineAndStart,
  destroyAndUndefine,
  ensureLibvirt,
  validateDomainXml,
  waitShutOff,
  whyNoLibvirt,
  type LibvirtDaemons,
} from '../helpers/libvirt.js';
import { createGoldenImage, createOverlay, QsdProcess, readDiskBytes, sha256File } from '../helpers/qsd.js';

const FIXTURES = path.join(REPO_ROOT, 'test', 'fixtures', 'e2e');
const DISK_BYTES = 64 * 1024 * 1024;
// The guest's layout (hack/guest/init.sh): its marker at 1 MiB, record n at 2 MiB + 4 KiB * n.
const GUEST_MARKER_OFFSET = 1024 * 1024;
const SEQ_OFFSET = 2 * 1024 * 1024;

// Needs root for the system libvirtd and for chown of the vhost socket to QEMU's uid/gid.
const skipReason = await whyNoLibvirt();
if (skipReason) console.warn(`vm-boot e2e skipped: ${skipReason}`);


/** The longest gap between two consecutive sequence records the host saw, from `from` on: the guest's I/O pause. */
function ioPauseMs(con: GuestConsole, from: number): number {
  const times = con.events.filter((e) => e.word === 'SEQ' && e.at !== undefined).map((e) => e.at as number);
  let last = times.filter((t) => t <= from).pop() ?? from;
  let worst = 0;
  for (const t of times.filter((x) => x > from)) {
    worst = Math.max(worst, t - last);
    last = t;
  }
  return worst;
}

describe('a VM booted by libvirt from a vhost-user-blk clone of a golden image', () => {
  let tmp: string | undefined;
  let daemons: LibvirtDaemons | undefined;
  let qsd: QsdProcess | undefined;
  let guestConsole: GuestConsole | undefined;
  let domainName: string | undefined;
  let guest: { kernel: string; initrd: string } | undefined;
  const pauses: string[] = [];

  beforeAll(async () => {
    if (skipReason) return;
    guest = await ensureGuestBuilt();
    daemons = await ensureLibvirt();
    // Short: the vhost and console sockets live here (sun_path is 107 bytes).
    tmp = await fs.mkdtemp(path.join(os.tmpdir(), 'kse-'));
    // libvirt's QEMU (not root) must reach the kernel, the initrd and the sockets in here.
    await fs.chmod(tmp, 0o755);
  }, 300_000);

  afterAll(async () => {
    await cleanup();
    await daemons?.stop();
    if (tmp) await fs.rm(tmp, { recursive: true, force: true });
    if (pauses.length) console.info(`vm-boot e2e: guest I/O pause across a backend SIGKILL + restart: ${pauses.join('; ')}`);
  }, 60_000);

  async function cleanup(): Promise<void> {
    guestConsole?.close();
    guestConsole = undefined;
    if (domainName) await destroyAndUndefine(domainName);
    domainName = undefined;
    await qsd?.kill();
    qsd = undefined;
  }

  /** One VM whose disk has the given reconnectInterval: boot, markers, restart under I/O, verify. */
  async function bootAndRestart(intervalS: number, memfdOff = false): Promise<void> {
    {
      const dir = path.join(tmp as string, `r${intervalS}`);
      await fs.mkdir(dir, { mode: 0o755 });
      await fs.chmod(dir, 0o755);
      // Where the time goes, printed at the end (informational: never asserted).
      const t0 = Date.now();
      const phases: string[] = [];
      const mark = (what: string) => phases.push(`${what} ${((Date.now() - t0) / 1000).toFixed(1)}s`);
      const run = randomBytes(4).toString('hex');
      const goldenMarker = `KS-GOLDEN e2e-${run}`;
      const tag = `e2e-${run}`;

      // The golden image and its per-VM clone, served by qemu-storage-daemon.
      const golden = path.join(dir, 'golden.raw');
      const overlay = path.join(dir, 'rootdisk.qcow2');
      await createGoldenImage(golden, DISK_BYTES, goldenMarker);
      const goldenSha = await sha256File(golden);
      await createOverlay(golden, overlay);

      // The domain: KubeVirt-like template -> our converter -> libvirt.
      let vmiText = (await fs.readFile(path.join(FIXTURES, 'vmi.yaml'), 'utf8')).replace('reconnectInterval: 1s', `reconnectInterval: ${intervalS}s`);
      // The second VM also runs with memfd off (KubeVirt's hugepages-without-memfd switch): its
      // memory must still be shared with the backend, through libvirt's file backing.
      if (memfdOff) vmiText = vmiText.replace('  annotations:\n', '  annotations:\n    kubevirt.io/memfd: "false"\n');
      const vmi = parseVmiYaml(vmiText.replace('name: vmi-e2e', `name: vmi-e2e-r${intervalS}`));
      const { name, consoleSocket, template } = await e2eDomain(dir, vmi, guest as { kernel: string; initrd: string }, tag);
      const domainXml = convertDomain(template, vmi, { socketDir: dir });
      const xmlFile = path.join(dir, 'domain.xml');
      await fs.writeFile(xmlFile, domainXml);
      expect(await validateDomainXml(xmlFile)).toBeUndefined();
      expect(domainXml).toContain(`path="${path.join(dir, 'rootdisk')}"`);
      expect(domainXml).toContain(`<reconnect enabled="yes" timeout="${intervalS}"/>`);
      expect(domainXml.includes('<source type="memfd"/>')).toBe(!memfdOff);
      expect(domainXml).toContain('<access mode="shared"/>');

      qsd = new QsdProcess({ image: overlay, format: 'qcow2', socketPath: path.join(dir, 'rootdisk') });
      await qsd.start();
      mark('backend up');

      // A stale domain of an interrupted run would make define fail.
      await destroyAndUndefine(name);
      domainName = name;
      await defineAndStart(domainXml, xmlFile, name);
      mark('domain started');
      guestConsole = await GuestConsole.connect(consoleSocket);
      const con = guestConsole;

      // 1. The guest sees the golden image through its clone and writes its own marker.
      await con.waitFor('BOOT', 60_000);
      mark('guest init');
      await con.waitFor('DISK', 30_000, /^\/dev\/vda /);
      expect((await con.waitFor('GOLDEN', 20_000)).rest).toBe(goldenMarker);
      expect((await con.waitFor('MARKER', 20_000)).rest).toBe(`OK ${tag}`);
      expect(await sha256File(golden)).toBe(goldenSha);
      mark('markers checked');

      // 2. Kill the backend while the guest writes its sequence, then bring it back.
      const seqNo = (e: { rest: string }) => Number(e.rest);
      const before = seqNo(await con.waitFor('SEQ', 20_000, (r) => Number(r) >= 3));
      const killedAt = Date.now();
      await qsd.kill('SIGKILL');
      await qsd.start();
      const downMs = Date.now() - killedAt;
      mark('backend restarted');
      // Records well past the kill point were completed by the restarted backend.
      const after = seqNo(await con.waitFor('SEQ', 60_000 + intervalS * 1000, (r) => Number(r) >= before + 5));
      expect(after).toBeGreaterThanOrEqual(before + 5);
      mark('I/O resumed');
      pauses.push(`reconnectInterval ${intervalS} s: backend down ${(downMs / 1000).toFixed(2)} s, guest I/O paused ${(ioPauseMs(con, killedAt) / 1000).toFixed(2)} s`);

      // 3. The guest reads every record back.
      const stopped = Number((await con.stopWriting()).rest);
      expect(stopped).toBeGreaterThan(after);
      expect((await con.waitFor('VERIFY', 30_000)).rest).toBe(`OK ${stopped}`);
      await con.waitFor('POWEROFF', 10_000);
      await waitShutOff(name, 30_000);
      mark('verified, powered off');
      await qsd.kill('SIGTERM');
      qsd = undefined;

      // 4. The writes live in the clone; the golden image is untouched.
      expect(await sha256File(golden)).toBe(goldenSha);
      const marker = await readDiskBytes(overlay, GUEST_MARKER_OFFSET, 64, dir);
      expect(marker.toString('latin1')).toMatch(new RegExp(`^KS-GUEST ${tag}\n`));
      const last = await readDiskBytes(overlay, SEQ_OFFSET + (stopped - 1) * 4096, 32, dir);
      expect(last.toString('latin1')).toMatch(new RegExp(`^KSSEQ ${stopped - 1}\n`));
      mark('clone checked');
      console.info(`vm-boot e2e (reconnectInterval ${intervalS} s): ${phases.join(', ')}`);
    }
    await cleanup();
  }

  it.skipIf(skipReason)(
    'reads the golden marker, writes its own data, and keeps every record across a backend SIGKILL and restart',
    () => bootAndRestart(1),
    180_000,
  );

  it.skipIf(skipReason || !!process.env.KS_E2E_QUICK)(
    'the same with reconnectInterval 10 s and kubevirt.io/memfd "false": the guest pauses up to the interval longer (logged)',
    () => bootAndRestart(10, true),
    180_000,
  );
});
