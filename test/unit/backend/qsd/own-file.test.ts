import { describe, expect, it } from 'vitest';
import { ownFile } from '../../../../src/backend/qsd/session.js';

describe('ownFile: a block node\'s own file', () => {
  it('takes it out of the json: name QEMU gives a disk whose golden was switched to another source', () => {
    // As qemu-storage-daemon 7.2 named a disk over a lazy golden after the golden's backing was reopened onto another peer.
    const name =
      'json:{"backing": {"backing": {"server.path": "/s/node-c/nbd.sock", "driver": "nbd", "export": "img.sha256-b2", "server.type": "unix"}, "driver": "qcow2", "file": {"driver": "file", "filename": "/s/node-b/qsd/images/sha256-b2.qcow2"}}, "driver": "qcow2", "file": {"driver": "file", "filename": "/s/node-b/qsd/disks/d-6c9110fa5c79-root.qcow2"}}';
    expect(ownFile(name)).toBe('/s/node-b/qsd/disks/d-6c9110fa5c79-root.qcow2');
  });

  it('leaves plain names, and json: names without a file or that do not parse, as they are', () => {
    expect(ownFile('/s/disks/d.qcow2')).toBe('/s/disks/d.qcow2');
    expect(ownFile('nbd+unix:///img?socket=/s/a.sock')).toBe('nbd+unix:///img?socket=/s/a.sock');
    expect(ownFile('json:{"driver": "nbd", "server.path": "/s/a.sock"}')).toBe('json:{"driver": "nbd", "server.path": "/s/a.sock"}');
    expect(ownFile('json:{broken')).toBe('json:{broken');
  });
});
