import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { stringify } from 'yaml';
import { parseVmi, type Vmi } from '../../../src/api/vmi.js';
import type { ImageSpec } from '../../../src/backend/types.js';
import { NodeAgent, type NodeAgentOptions } from '../../../src/agent/agent.js';
import { buildDesired, type DesiredState } from '../../../src/agent/desired.js';
import { standaloneVmi } from '../../../src/agent/standalone.js';
import { FakeBackend, GiB } from '../../helpers/fake-backend.js';

export { GiB };

/** Socket owner the test process can chown to (itself unless root). */
export const testSocket = {
  uid: process.getuid?.() === 0 ? 107 : (process.getuid?.() ?? 0),
  gid: process.getuid?.() === 0 ? 107 : (process.getgid?.() ?? 0),
  mode: 0o660,
};

export const image = (name: string, sizeBytes = GiB): ImageSpec => ({
  name,
  source: { hostPath: { path: `/images/${name}.raw` } },
  format: 'raw',
  sizeBytes,
});

export interface VolumeOpts {
  name: string;
  image?: string;
  blank?: boolean;
  bdev?: string;
  capacity?: string;
  readonly?: boolean;
}

export function vmi(name: string, slot: string | undefined, volumes: VolumeOpts[] | string, uid = `uid-${name}`): Vmi {
  const annotations: Record<string, string> = {};
  annotations['kubevirt-spdk.io/volumes'] =
    typeof volumes === 'string'
      ? volumes
      : stringify(
          volumes.map((v) => ({
            name: v.name,
            spdkVhostBlkDisk: {
              ...(v.image ? { image: v.image } : {}),
              ...(v.blank ? { blank: {} } : {}),
              ...(v.bdev ? { bdev: v.bdev } : {}),
              ...(v.capacity ?? (v.bdev ? undefined : '2Gi') ? { capacity: v.capacity ?? '2Gi' } : {}),
              ...(v.readonly ? { readonly: true } : {}),
            },
          })),
        );
  if (slot) annotations['kubevirt-spdk.io/slot'] = slot;
  return parseVmi({ metadata: { name, namespace: 'default', uid, annotations } });
}

/** The desired state of VMI files (their slot annotation read at the edge, as standalone mode does). */
export function desiredOf(vmis: Vmi[], images: ImageSpec[]): DesiredState {
  return buildDesired({ vmis: vmis.map((v) => standaloneVmi(`${v.metadata.name}.yaml`, v)), images });
}

export interface Harness {
  dir: string;
  backend: FakeBackend;
  agent: NodeAgent;
  newAgent(extra?: Partial<NodeAgentOptions>): Promise<NodeAgent>;
  cleanup(): Promise<void>;
}

/** A fake backend and an agent on temp dirs; `newAgent` makes a second agent on the same state (a restart). */
export async function harness(extra: Partial<NodeAgentOptions> = {}): Promise<Harness> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'ag-'));
  const backend = new FakeBackend(path.join(dir, 'vhost'));
  const make = async (more: Partial<NodeAgentOptions> = {}): Promise<NodeAgent> => {
    const a = new NodeAgent({
      backend,
      stateDir: path.join(dir, 'state'),
      socket: testSocket,
      orphanGraceMs: 0,
      resyncMs: 0,
      retry: { attempts: 3, baseMs: 1, maxMs: 2 },
      ...extra,
      ...more,
    });
    await a.init();
    return a;
  };
  const agent = await make();
  // maxRetries: a "crashed" agent is abandoned, not stopped, and may still be writing its state.
  return { dir, backend, agent, newAgent: make, cleanup: () => rm(dir, { recursive: true, force: true, maxRetries: 5 }) };
}
