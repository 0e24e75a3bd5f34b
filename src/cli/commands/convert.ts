/**
 * `kubevirt-spdk convert --vmi VMI.yaml --domain IN.xml [--socket-dir DIR]`: prints the domain
 * XML rewritten with the VMI's SPDK disks, exactly what the hook sidecar would return.
 */
import { readFile } from 'node:fs/promises';
import { z } from 'zod';
import { ValidationError } from '../../api/errors.js';
import { parseVmiYaml } from '../../api/vmi.js';
import { DEFAULT_SOCKET_DIR, convertDomain } from '../../converter/index.js';
import { decodeUtf8Strict } from '../../converter/utf8.js';
import { defineCommand, text, type Command } from '../../config.js';

const ConvertConfigSchema = z
  .object({
    vmi: text('FILE').optional().describe('The VirtualMachineInstance (YAML or JSON) carrying `kubevirt-spdk.io/volumes`. Required.'),
    domain: text('FILE').optional().describe('libvirt domain XML as virt-launcher defines it (`-` reads stdin). Required.'),
    socketDir: text('DIR').default(DEFAULT_SOCKET_DIR).describe('vhost socket directory inside the pod, written into the domain XML.'),
  })
  .superRefine((c, ctx) => {
    if (c.vmi === undefined || c.domain === undefined) ctx.addIssue({ code: z.ZodIssueCode.custom, path: [], message: '--vmi and --domain are required' });
  });

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

export const command: Command<typeof ConvertConfigSchema> = {
  ...defineCommand({ name: 'convert', schema: ConvertConfigSchema, synopsis: ['--vmi VMI.yaml --domain IN.xml [--socket-dir DIR]'] }),
  async run(c) {
    const vmiFile = c.vmi ?? '';
    const vmi = parseVmiYaml(await readInput(vmiFile, '--vmi'), vmiFile);
    const domainXml = await readInput(c.domain ?? '', '--domain');
    process.stdout.write(convertDomain(domainXml, vmi, { socketDir: c.socketDir }));
    return 0;
  },
};
