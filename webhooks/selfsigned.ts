import { execFile } from 'node:child_process';
import { promisify } from 'node:util';

const run = promisify(execFile);

/**
 * Writes a self-signed certificate and key (EC P-256) for `localhost` and 127.0.0.1: for
 * standalone runs, tests and benchmarks. In a cluster the certificate comes from a Secret.
 */
export async function writeSelfSignedCert(certFile: string, keyFile: string, commonName = 'localhost', days = 1): Promise<void> {
  await run(
    'openssl',
    [
      'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes',
      '-keyout', keyFile, '-out', certFile, '-days', String(days),
      '-subj', `/CN=${commonName}`, '-addext', 'subjectAltName=DNS:localhost,IP:127.0.0.1',
    ],
    { timeout: 10_000 },
  );
}
