/**
 * `kubevirt-spdk doctor`: checks this node and says what is wrong in plain words. It looks
 * where an agent with default flags would (src/agent/config.ts), unless told otherwise.
 */
import { z } from 'zod';
import { AGENT_DEFAULTS, AgentFlagsSchema } from '../../agent/config.js';
import { SpdkBackendConfigSchema } from '../../backend/spdk/backend.js';
import { defineCommand, duration, int, text, type Command } from '../../config.js';
import { diagnose, render } from '../doctor/checks.js';
import { gatherFacts } from '../doctor/gather.js';

export { checkLvstore, diagnose, parseMeminfo, render, type CheckStatus, type DoctorFacts, type Finding, type LvstoreFact } from '../doctor/checks.js';
export { gatherFacts, type GatherOptions } from '../doctor/gather.js';

/** The lvstore the agent's spdk backend makes when nothing names another. */
const AGENT_LVSTORE: string = SpdkBackendConfigSchema.shape.lvstore.shape.name.parse(undefined);

const DoctorConfigSchema = z.object({
  backend: AgentFlagsSchema.shape.backend.describe('Which backend to check: `spdk` or `qsd`.'),
  spdkSocket: AgentFlagsSchema.shape.spdkSocket.describe('spdk_tgt JSON-RPC socket to probe.'),
  vhostDir: text('DIR').default('/var/lib/kubevirt-spdk/vhost').describe('Vhost socket directory to check (existence, permissions).'),
  lvstore: text('NAME').default(AGENT_LVSTORE).describe('Name of the lvstore whose free space is checked.'),
  qemuUid: int({ value: 'UID' }).default(String(AGENT_DEFAULTS.socketOwner.uid)).describe('uid QEMU runs as; sockets must be connectable by it.'),
  qemuGid: int({ value: 'GID' }).default(String(AGENT_DEFAULTS.socketOwner.gid)).describe('gid QEMU runs as.'),
  kubeletDir: text('DIR').default('/var/lib/kubelet/device-plugins').describe('kubelet device plugin directory (is kubelet.sock there?).'),
  procMeminfo: text('FILE').default('/proc/meminfo').describe('Where to read hugepage counters (for tests: a fixture file).'),
  sysHugepages: text('DIR').default('/sys/kernel/mm/hugepages').describe('Where to read per-size hugepage pools.'),
  qsdBinary: text('PATH').default('qemu-storage-daemon').describe('qemu-storage-daemon binary to look for (qsd backend).'),
  kubeconfig: text('FILE').optional().describe('kubeconfig for the cluster checks; else `~/.kube/config`, or the in-cluster config in a pod.'),
  noKube: z.boolean().default(false).describe('Skip the cluster checks.'),
  namespace: text('NAME').default('kubevirt-spdk').describe('Namespace of the kubevirt-spdk deployment.'),
  timeout: duration({ above: 0, bounds: 'above 0' }).default('3s').describe('Deadline of each probe.'),
  json: z.boolean().default(false).describe('Print the findings as JSON.'),
});

export const command: Command<typeof DoctorConfigSchema> = {
  ...defineCommand({
    name: 'doctor',
    schema: DoctorConfigSchema,
    flags: { kubeconfig: { env: 'KUBECONFIG' } },
    notes: 'exit status: 0 all good, 1 something is wrong, 2 bad usage',
  }),
  async run(c) {
    const facts = await gatherFacts({
      backend: c.backend,
      spdkSocket: c.spdkSocket,
      vhostDir: c.vhostDir,
      lvstore: c.lvstore,
      qemu: { uid: c.qemuUid, gid: c.qemuGid },
      kubeletDir: c.kubeletDir,
      meminfo: c.procMeminfo,
      sysHugepages: c.sysHugepages,
      qsdBinary: c.qsdBinary,
      ...(c.kubeconfig ? { kubeconfig: c.kubeconfig } : {}),
      namespace: c.namespace,
      timeoutMs: c.timeout,
      skipKube: c.noKube,
    });
    const findings = diagnose(facts);
    const ok = !findings.some((x) => x.status === 'fail');
    if (c.json) process.stdout.write(`${JSON.stringify({ ok, findings, facts }, null, 2)}\n`);
    else process.stdout.write(render(findings));
    return ok ? 0 : 1;
  },
};
