import { createServer, type Server } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { readFile } from 'node:fs/promises';
import { afterEach, describe, expect, it } from 'vitest';
import type { ImageSpec } from '../../src/backend/types.js';
import { desiredOf, vmi } from '../unit/agent/fixtures.js';
import { MiB, SimRig, hostImage } from './sim-rig.js';

/**
 * Faults from the review of hostile inputs, on the real spdk backend, RPC client and agent
 * against the simulator: a source that never ends or crawls must neither fill the node nor
 * hold up other VMIs, and nothing of a refused import may stay behind.
 */
let rig: SimRig | undefined;
let server: Server | undefined;
const sockets = new Set<Socket>();
afterEach(async () => {
  for (const s of sockets) s.destroy();
  sockets.clear();
  await new Promise((r) => (server ? server.close(r) : r(undefined)));
  server = undefined;
  await rig?.cleanup();
  rig = undefined;
});

async function serve(handler: Parameters<typeof createServer>[1]): Promise<string> {
  server = createServer(handler);
  server.on('connection', (s) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });
  await new Promise<void>((r) => server?.listen(0, '127.0.0.1', r));
  return `http://127.0.0.1:${(server.address() as AddressInfo).port}/img.raw`;
}

describe('hostile image sources against the spdk backend', () => {
  it('an endless body stops at the declared size: the disk fails with why, no import left-over, the other VMI is served', async () => {
    rig = await SimRig.create();
    const r = rig;
    const url = await serve((_req, res) => {
      res.writeHead(200);
      const chunk = Buffer.alloc(64 * 1024, 1);
      const pump = (): void => {
        while (!res.destroyed && res.write(chunk));
        if (!res.destroyed) res.once('drain', pump);
      };
      pump();
    });
    const endless: ImageSpec = { name: 'endless', format: 'raw', source: { http: { url, sha256: 'a'.repeat(64) } }, sizeBytes: 4 * MiB };
    const good = await hostImage(r.dir, 'fedora');
    const desired = desiredOf(
      [vmi('a', 'slot-01', [{ name: 'root', image: 'endless', capacity: '8Mi' }]), vmi('b', 'slot-02', [{ name: 'root', image: 'fedora', capacity: '8Mi' }])],
      [endless, good],
    );
    const rep = await r.converge(r.agent, desired, 10);
    const a = rep.vmis.find((v) => v.vmi.name === 'a')?.disks[0];
    const b = rep.vmis.find((v) => v.vmi.name === 'b')?.disks[0];
    expect(b?.phase).toBe('Ready');
    expect(a?.phase).not.toBe('Ready');
    expect(a?.message).toMatch(/larger than its declared size allows: stopped after \d+ bytes/);
    const snap = r.snapshot();
    expect(snap.lvols.filter((l) => l.name.includes('endless'))).toEqual([]);
  });

  it('a crawling download (a byte every 500 ms) leaves the disk Importing while another VMI gets Ready in the same rounds', async () => {
    rig = await SimRig.create({ fetchOptions: { idleTimeoutMs: 5_000 } });
    const r = rig;
    const good = await hostImage(r.dir, 'fedora');
    // Other bytes than fedora's: the same content would be one golden (content keys).
    const crawled = await hostImage(r.dir, 'crawled');
    const body = await readFile((crawled.source as { hostPath: { path: string } }).hostPath.path);
    const url = await serve((_req, res) => {
      res.writeHead(200, { 'content-length': body.length });
      let sent = 0;
      const t = setInterval(() => (res.destroyed ? clearInterval(t) : res.write(body.subarray(sent, ++sent))), 500);
      res.on('close', () => clearInterval(t));
    });
    const slow: ImageSpec = { name: 'slow', format: 'raw', source: { http: { url, sha256: (crawled.source as { hostPath: { sha256: string } }).hostPath.sha256 } } };
    const desired = desiredOf(
      [vmi('a', 'slot-01', [{ name: 'root', image: 'slow', capacity: '8Mi' }]), vmi('b', 'slot-02', [{ name: 'root', image: 'fedora', capacity: '8Mi' }])],
      [slow, good],
    );
    r.desired = desired;
    r.agent.setDesired(desired);
    // Plain rounds (not converge, which waits for imports): each ends while "slow" crawls.
    let rep = await r.agent.reconcile('first');
    for (let i = 0; i < 20 && rep.vmis.find((v) => v.vmi.name === 'b')?.disks[0]?.phase !== 'Ready'; i++) rep = await r.agent.reconcile(`again-${i}`);
    expect(rep.vmis.find((v) => v.vmi.name === 'b')?.disks[0]?.phase).toBe('Ready');
    expect(rep.vmis.find((v) => v.vmi.name === 'a')?.disks[0]?.phase).toBe('Importing');
  });
});
