/**
 * `kubevirt-spdk convert --vmi VMI.yaml --domain IN.xml [--socket-dir DIR]`: prints the domain
 * XML rewritten with the VMI's SPDK disks, exactly what the hook sidecar would return.
 */
import { readFile } from 'node:fs/promises';
import { parseArgs } from 'node:util';
import { ValidationError } from '../../api/errors.js';
import { parseVmiYaml } from '../../api/vmi.js';
import { DEFAULT_SOCKET_DIR, convertDomain } from '../../converter/index.js';
import { decodeUtf8Strict } from '../../converter/utf8.js';

const USAGE = `usage: kubevirt-spdk convert --vmi VMI.yaml --domain IN.xml [--socket-dir DIR]

  --vmi FILE         the VirtualMachineInstance (YAML or JSON) with kubevirt-spdk.io/volumes
  --domain FILE      libvirt domain XML as virt-launcher defines it ("-" reads stdin)
  --socket-dir DIR   vhost socket directory inside the pod (default ${DEFAULT_SOCKET_DIR})
`;

async function readInput(file: string, flag: string): Promise<string> {
  try {
    if (file === '-') {
      const chunks: Buffer[] = [];
      for await (const c of process.stdin) chunks.push(c as Buffer);
      return decodeUtf8Strict(Buffer.concat(chunks), flag);
    }
    return decodeUtf8Strict(await readFile(file), flag);
  } catch (e) {
    if (e instanceof ValidationError) throw e;
    throw new ValidationError([`${flag}: cannot read ${file}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`]);
  }
}

export async function run(argv: string[]): Promise<number> {
  let values: { vmi?: string; domain?: string; 'socket-dir'?: string; help?: boolean };
  try {
    ({ values } = parseArgs({
      args: argv,
      options: {
        vmi: { type: 'string' },
        domain: { type: 'string' },
        'socket-dir': { type: 'string' },
        help: { type: 'boolean', short: 'h' },
      },
      strict: true,
    }));
  } catch (e) {
    process.stderr.write(`kubevirt-spdk convert: ${(e as Error).message}\n\n${USAGE}`);
    return 2;
  }
  if (values.help) {
    process.stdout.write(USAGE);
    return 0;
  }
  if (!values.vmi || !values.domain) {
    process.stderr.write(`kubevirt-spdk convert: --vmi and --domain are required\n\n${USAGE}`);
    return 2;
  }
  const vmi = parseVmiYaml(await readInput(values.vmi, '--vmi'), values.vmi);
  const domainXml = await readInput(values.domain, '--domain');
  const socketDir = values['socket-dir'];
  process.stdout.write(convertDomain(domainXml, vmi, socketDir === undefined ? {} : { socketDir }));
  return 0;
}
