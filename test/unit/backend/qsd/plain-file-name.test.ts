import { describe, expect, it } from 'vitest';
import { plainFileName } from '../../../../src/backend/qsd/session.js';

describe('plainFileName: a node is found by its own file even when its backing is overridden', () => {
  it("takes the format node's own file out of QEMU's json: file name", () => {
    // What QEMU 7.2 reports for a disk whose backing is a lazy golden's copy-on-read filter.
    const reported =
      'json:{"backing": {"driver": "copy-on-read", "file": {"driver": "qcow2", "file": {"driver": "file", "filename": "/s/images/k.qcow2"}}}, "driver": "qcow2", "file": {"driver": "file", "filename": "/s/disks/d1.qcow2"}}';
    expect(plainFileName(reported)).toBe('/s/disks/d1.qcow2');
  });
  it('leaves plain names, nodes with no file child of their own, and garbage as they are', () => {
    expect(plainFileName('/s/disks/d1.qcow2')).toBe('/s/disks/d1.qcow2');
    const filter = 'json:{"driver": "copy-on-read", "file": {"driver": "qcow2", "file": {"driver": "file", "filename": "/s/images/k.qcow2"}}}';
    expect(plainFileName(filter)).toBe(filter);
    expect(plainFileName('json:{not json')).toBe('json:{not json');
  });
});
