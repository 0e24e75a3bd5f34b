import { execFileSync, spawnSync } from 'node:child_process';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { toBackendError } from '../../../../src/backend/qsd/index.js';
import {
  checkFileName,
  controllerNameOf,
  exportIdFor,
  nodeNamesFor,
  parseControllerName,
} from '../../../../src/backend/qsd/naming.js';
import { parseQcow2Header } from '../../../../src/backend/qsd/qcow2.js';
import { QmpError } from '../../../../src/backend/qsd/qmp.js';
import { BackendError } from '../../../../src/backend/types.js';

const label = fc.stringMatching(/^[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?$/);
const controllerName = fc.tuple(label, label).map(([s, d]) => `${s}/${d}`);

describe('qsd naming', () => {
  it('export ids are well-formed QEMU ids and decode back to the controller name', () => {
    fc.assert(
      fc.property(controllerName, (name) => {
        const id = exportIdFor(name);
        expect(id).toMatch(/^[A-Za-z][A-Za-z0-9._-]*$/);
        expect(controllerNameOf(id)).toBe(name);
      }),
    );
  });

  it('ignores exports that are not ours', () => {
    expect(controllerNameOf('test-nbd')).toBeUndefined();
    expect(controllerNameOf('vhost.bad_zz')).toBeUndefined();
  });

  it('node names fit QEMU limits and differ between controllers', () => {
    fc.assert(
      fc.property(controllerName, controllerName, (a, b) => {
        const na = nodeNamesFor(a);
        for (const n of [na.format, na.file]) {
          expect(n.length).toBeLessThanOrEqual(31);
          expect(n).toMatch(/^[A-Za-z][A-Za-z0-9_-]*$/);
        }
        if (a !== b) expect(nodeNamesFor(b).format).not.toBe(na.format);
      }),
    );
  });

  it('rejects controller names that are not <slot>/<disk>', () => {
    expect(parseControllerName('slot-07/rootdisk')).toEqual({ slot: 'slot-07', disk: 'rootdisk' });
    for (const bad of ['rootdisk', 'a/b/c', '../x', 'slot/..', 'Slot/disk', 'slot/', '/disk']) {
      expect(() => parseControllerName(bad), bad).toThrow(BackendError);
    }
  });

  it('rejects file names that could leave their directory', () => {
    expect(checkFileName('disk id', 'vm-1.root')).toBe('vm-1.root');
    for (const bad of ['../x', 'a/b', '.hidden', '', 'x'.repeat(201)]) {
      expect(() => checkFileName('disk id', bad), bad).toThrow(/disk id/);
    }
  });
});

describe('toBackendError', () => {
  const cmd = (cls: string, desc: string): QmpError => new QmpError('command', 'x', desc, cls);
  it('classifies QMP failures and keeps the text', () => {
    expect(toBackendError(cmd('GenericError', "Failed to find node with node-name='k1'"), 'w').kind).toBe('notFound');
    expect(toBackendError(cmd('DeviceNotFound', 'whatever'), 'w').kind).toBe('notFound');
    expect(toBackendError(cmd('GenericError', "Node 'k1' is busy: node is used as root of export 'e'"), 'w').kind).toBe('busy');
    expect(toBackendError(new QmpError('closed', 'x', 'connection closed'), 'w').kind).toBe('transport');
    expect(toBackendError(new QmpError('timeout', 'x', 'no reply'), 'w').kind).toBe('transport');
    const e = toBackendError(cmd('GenericError', 'something odd'), 'controller s/d');
    expect(e.kind).toBe('internal');
    expect(e.message).toBe('controller s/d: x: something odd (GenericError)');
  });
});

const haveQemuImg = spawnSync('qemu-img', ['--version'], { stdio: 'ignore' }).status === 0;

describe('parseQcow2Header', () => {
  it('returns undefined for anything that is not qcow2', () => {
    expect(parseQcow2Header(Buffer.alloc(512))).toBeUndefined();
    expect(parseQcow2Header(Buffer.from('QFI'))).toBeUndefined();
  });

  // The header must agree with what qemu-img itself writes.
  it.skipIf(!haveQemuImg)('reads size and backing file of images made by qemu-img', async () => {
    const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'qc-'));
    try {
      const base = path.join(dir, 'base.raw');
      const top = path.join(dir, 'top.qcow2');
      const blank = path.join(dir, 'blank.qcow2');
      execFileSync('qemu-img', ['create', '-q', '-f', 'raw', base, '1M']);
      execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', '-F', 'raw', '-b', base, top, '3M']);
      execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', blank, '5G']);
      expect(parseQcow2Header(await fs.readFile(top))).toMatchObject({ virtualSize: 3 * 1024 * 1024, backingFile: base });
      const b = parseQcow2Header(await fs.readFile(blank));
      expect(b).toMatchObject({ virtualSize: 5 * 1024 ** 3 });
      expect(b?.backingFile).toBeUndefined();
    } finally {
      await fs.rm(dir, { recursive: true, force: true });
    }
  });
});
