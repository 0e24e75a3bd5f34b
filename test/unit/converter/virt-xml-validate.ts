/**
 * Runs libvirt's own schema check (`virt-xml-validate FILE domain`, which needs xmllint) on a
 * converter output, so that the tests hold the converter to what libvirt accepts.
 */
import { execFile } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { spawnSync } from 'node:child_process';

const run = promisify(execFile);

/** False when the binaries are missing (tests that need them are skipped with a reason). */
export const haveVirtXmlValidate =
  spawnSync('virt-xml-validate', ['--help'], { stdio: 'ignore' }).error === undefined &&
  spawnSync('xmllint', ['--version'], { stdio: 'ignore' }).error === undefined;

/** Resolves when libvirt's domain schema accepts the XML; rejects with xmllint's complaint. */
export async function expectValidDomain(xml: string): Promise<void> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'dom-'));
  const file = path.join(dir, 'domain.xml');
  try {
    await writeFile(file, xml);
    try {
      await run('virt-xml-validate', [file, 'domain']);
    } catch (e) {
      const err = e as { stderr?: string; stdout?: string };
      throw new Error(`virt-xml-validate rejected the domain:\n${err.stderr ?? ''}${err.stdout ?? ''}\n--- domain ---\n${xml}`);
    }
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}
