import { describe, expect, it } from 'vitest';
import { plainFileName } from '../../../../src/backend/qsd/session.js';

describe('plainFileName: a node is found by its own file even when its backing is overridden', () => {
  it("takes the format node's own file out of QEMU's json: file name", () => {
    // What QEMU 7.2 reports for a disk whose backing is a lazy golden's copy-on-read filter.
    const reported =
      'json:{"backing": {"driver": "copy-on-read", "file": {"driver": "qcow2", "file": {"driver": "file", "filename": "/s/images/k.qcow2"}}}, "driver": "qcow2", "file": {"driver": "file", "filename": "/s/disks/d1.qcow2"}}';
    expect(plainFileName(reported)).toBe('/s/disks/d1.qcow2');
  });
  it('takes it out of the json: name a disk gets once its golden was switched to another source', () => {
    // As qemu-storage-daemon 7.2 named a disk over a lazy golden after the golden's backing was reopened onto another peer.
    const reported =
      'json:{"backing": {"backing": {"server.path": "/s/node-c/nbd.sock", "driver": "nbd", "export": "img.sha256-b2", "server.type": "unix"}, "driver": "qcow2", "file": {"driver": "file", "filename": "/s/node-b/qsd/images/sha256-b2.qcow2"}}, "driver": "qcow2", "file": {"driver": "file", "filename": "/s/node-b/qsd/disks/d-6c9110fa5c79-root.qcow2"}}';
    expect(plainFileName(reported)).toBe('/s/node-b/qsd/disks/d-6c9110fa5c79-root.qcow2');
  });
  it('leaves plain names, nodes with no file child of their own, and garbage as they are', () => {
    expect(plainFileName('/s/disks/d1.qcow2')).toBe('/s/disks/d1.qcow2');
    const filter = 'json:{"driver": "copy-on-read", "file": {"driver": "qcow2", "file": {"driver": "file", "filename": "/s/images/k.qcow2"}}}';
    expect(plainFileName(filter)).toBe(filter);
    expect(plainFileName('json:{not json')).toBe('json:{not json');
    expect(plainFileName('nbd+unix:///img?socket=/s/a.sock')).toBe('nbd+unix:///img?socket=/s/a.sock');
    expect(plainFileName('json:{"driver": "nbd", "server.path": "/s/a.sock"}')).toBe('json:{"driver": "nbd", "server.path": "/s/a.sock"}');
  });
});
