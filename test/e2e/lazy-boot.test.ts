/**
 * End to end on one machine: a guest (TCG, started by the system libvirtd from the
 * converter's domain XML) boots from a qsd disk whose image is still arriving from a loopback
 * HTTP origin. Hydration is capped to a trickle so that the guest provably boots, reads the
 * image and writes before it ends; then the cap is lifted, hydration completes, the origin
 * goes away, and the guest keeps running and reads back every record it wrote.
 */
import { createHash, randomBytes } from 'node:crypto';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseVmiYaml } from '../../src/api/vmi.js';
import { QsdBackend } from '../../src/backend/qsd/index.js';
import { convertDomain } from '../../src/converter/index.js';
import { REPO_ROOT } from '../helpers/cli.js';
import { e2eDomain, ensureGuestBuilt, GuestConsole } from '../helpers/guest.js';
import { defineAndStart, destroyAndUndefine, ensureLibvirt, waitShutOff, whyNoLibvirt, type LibvirtDaemons } from '../helpers/libvirt.js';
import { startOrigin, type Origin } from '../helpers/origin.js';
import { createGoldenImage, QEMU_SOCKET_OWNER } from '../helpers/qsd.js';

const FIXTURES = path.join(REPO_ROOT, 'test', 'fixtures', 'e2e');
const MiB = 1024 * 1024;
const DISK_BYTES = 64 * MiB;

const haveCurl = spawnSync('sh', ['-c', 'ls /usr/lib/*/qemu/block-curl.so'], { stdio: 'ignore' }).status === 0;
const skipReason = (await whyNoLibvirt()) ?? (haveCurl ? undefined : 'QEMU curl block driver missing (qemu-block-extra; make deps)');
if (skipReason) console.warn(`lazy-boot e2e skipped: ${skipReason}`);


describe('a VM booted from a lazily hydrating qsd disk', () => {
  let tmp: string | undefined;
  let daemons: LibvirtDaemons | undefined;
  let backend: QsdBackend | undefined;
  let origin: Origin | undefined;
  let con: GuestConsole | undefined;
  let domainName: string | undefined;
  let guest: { kernel: string; initrd: string } | undefined;

  beforeAll(async () => {
    if (skipReason) return;
    guest = await ensureGuestBuilt();
    daemons = await ensureLibvirt();
    tmp = await fs.mkdtemp(path.join(os.tmpdir(), 'ksl-'));
    await fs.chmod(tmp, 0o755);
  }, 300_000);

  afterAll(async () => {
    con?.close();
    if (domainName) await destroyAndUndefine(domainName);
    await backend?.close();
    await origin?.stop();
    await daemons?.stop();
    if (tmp) await fs.rm(tmp, { recursive: true, force: true });
  }, 60_000);

  it.skipIf(skipReason)(
    'boots and writes before hydration ends, and keeps running after the origin is gone',
    async () => {
      const dir = tmp as string;
      const run = randomBytes(4).toString('hex');
      const goldenMarker = `KS-GOLDEN lazy-${run}`;
      const tag = `lazy-${run}`;
      const goldenFile = path.join(dir, 'golden.raw');
      await createGoldenImage(goldenFile, DISK_BYTES, goldenMarker);
      const image = await fs.readFile(goldenFile);
      origin = await startOrigin(image);

      const vhostDir = path.join(dir, 'v');
      // A trickle: hydration cannot end before the guest has booted (lifted below).
      backend = new QsdBackend({ stateDir: path.join(dir, 's'), vhostDir, managed: true, lazyImages: true, hydrationBytesPerSecond: 64 * 1024 });
      await backend.start();
      await fs.chmod(vhostDir, 0o755);
      const b = backend;
      const phase = async (): Promise<string | undefined> => (await b.observe()).images.find((i) => i.name === 'e2e-golden')?.phase;
      const img = await b.ensureImage({ name: 'e2e-golden', source: { http: { url: origin.url, sha256: createHash('sha256').update(image).digest('hex') } }, format: 'raw', sizeBytes: DISK_BYTES });
      expect(img.phase).toBe('hydrating');
      const disk = await b.ensureDisk({ id: `lazy-${run}`, source: { kind: 'image', image: 'e2e-golden' } });
      const ctrl = await b.ensureController({ name: 'slot-01/rootdisk', diskRef: disk.ref, readonly: false });
      await fs.chown(ctrl.socketPath, QEMU_SOCKET_OWNER.uid, QEMU_SOCKET_OWNER.gid);
      await fs.chmod(ctrl.socketPath, QEMU_SOCKET_OWNER.mode);

      const vmi = parseVmiYaml((await fs.readFile(path.join(FIXTURES, 'vmi.yaml'), 'utf8')).replace('name: vmi-e2e', `name: vmi-lazy-${run}`));
      const { name, consoleSocket, template } = await e2eDomain(dir, vmi, guest as { kernel: string; initrd: string }, tag);
      const domainXml = convertDomain(template, vmi, { socketDir: path.dirname(ctrl.socketPath) });
      expect(domainXml).toContain(`path="${ctrl.socketPath}"`);
      const xmlFile = path.join(dir, 'domain.xml');
      await fs.writeFile(xmlFile, domainXml);
      await destroyAndUndefine(name);
      domainName = name;
      await defineAndStart(domainXml, xmlFile, name);
      con = await GuestConsole.connect(consoleSocket);

      // The guest reads the image through the lazy golden and writes, while it hydrates.
      await con.waitFor('BOOT', 120_000);
      await con.waitFor('DISK', 60_000, /^\/dev\/vda /);
      expect((await con.waitFor('GOLDEN', 30_000)).rest).toBe(goldenMarker);
      expect((await con.waitFor('MARKER', 30_000)).rest).toBe(`OK ${tag}`);
      const seq = Number((await con.waitFor('SEQ', 30_000, (r) => Number(r) >= 3)).rest);
      expect(await phase()).toBe('hydrating');

      // Lift the cap; hydration ends under the running guest, then the origin goes away.
      const jobs = await b.qmpExecute<Array<{ device: string }>>('query-block-jobs');
      expect(jobs).toHaveLength(1);
      await b.qmpExecute('block-job-set-speed', { device: jobs[0]?.device, speed: 0 });
      const deadline = Date.now() + 120_000;
      while ((await phase()) === 'hydrating' && Date.now() < deadline) await new Promise((r) => setTimeout(r, 200));
      expect(await phase()).toBe('ready');
      await origin.stop();
      const after = Number((await con.waitFor('SEQ', 60_000, (r) => Number(r) >= seq + 5)).rest);
      expect(after).toBeGreaterThanOrEqual(seq + 5);

      const stopped = Number((await con.stopWriting()).rest);
      expect((await con.waitFor('VERIFY', 60_000)).rest).toBe(`OK ${stopped}`);
      await con.waitFor('POWEROFF', 20_000);
      await waitShutOff(name, 30_000);
    },
    300_000,
  );
});
