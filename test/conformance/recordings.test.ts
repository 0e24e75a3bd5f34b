import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import type { SpdkVersion } from '../../testing/spdk-sim/index.js';
import { REPO_ROOT } from '../helpers/cli.js';
import { loadRecording } from './replay.js';
import { RecordingRig } from './rig.js';

const FIXTURES = path.join(REPO_ROOT, 'test', 'fixtures', 'spdk');

// Why some recorded answers are not reproduced (each listed line must still differ).
const METHODS_LISTED = 'rpc_get_methods lists only the methods the simulator implements; the others answer -32601';
const SHALLOW =
  'bdev_lvol_start_shallow_copy / bdev_lvol_check_shallow_copy are not modelled (the agent does not use them)';
const CHANNELS =
  'thread_get_io_channels is not modelled: the simulator has no SPDK threads';
const VM =
  "the 'VM' holding a channel is spdk_dd reading through vhost-user, which the replay cannot run; the same -110 / deleting with a real vhost session is pinned in test/unit/simulator/lazy.test.ts";
const DATA =
  'clusters allocated by data (spdk_dd writes, copy progress when a source died): the simulator keeps no data';
const CNTLID =
  'controller ids taken by spdk_dd initiators and by reconnect attempts the replay does not make';
const HOSTS =
  'nvmf_subsystem_get_controllers is not modelled';

const AGENT_KNOWN: Record<number, string> = {
  11: METHODS_LISTED,
  12: METHODS_LISTED,
};

const LAZY_KNOWN: Record<number, string> = {
  165: SHALLOW,
  166: SHALLOW,
  167: SHALLOW,
  168: SHALLOW,
  169: SHALLOW,
  170: SHALLOW,
  171: SHALLOW,
  175: SHALLOW,
  176: SHALLOW,
  177: SHALLOW,
  178: SHALLOW,
  179: SHALLOW,
  180: SHALLOW,
  181: SHALLOW,
  182: SHALLOW,
  183: SHALLOW,
  184: SHALLOW,
  245: CHANNELS,
  250: CHANNELS,
  292: CHANNELS,
  353: CHANNELS,
  386: CHANNELS,
  251: VM,
  252: VM,
  293: VM,
  294: VM,
  354: VM,
  355: VM,
  185: DATA,
  187: DATA,
  336: DATA,
  348: DATA,
  384: DATA,
  410: DATA,
  459: DATA,
  486: DATA,
  338: CNTLID,
  472: CNTLID,
  485: CNTLID,
  342: HOSTS,
  356: HOSTS,
};

interface Case {
  file: string;
  version: SpdkVersion;
  scratchLen?: number;
  minExchanges: number;
  /** Line -> why the simulator answers otherwise (each must still differ: remove it when fixed). */
  known: Record<number, string>;
}

const CASES: Case[] = [
  { file: 'v24.01-agent-transcript.jsonl', version: '24.01', scratchLen: 21, minExchanges: 150, known: AGENT_KNOWN },
  { file: 'v25.09-agent-transcript.jsonl', version: '25.09', scratchLen: 21, minExchanges: 150, known: AGENT_KNOWN },
  { file: 'v25.09-lazy-transcript.jsonl', version: '25.09', minExchanges: 350, known: LAZY_KNOWN },
];

let rig: RecordingRig | undefined;
afterEach(async () => {
  await rig?.tearDown();
  rig = undefined;
});

describe.each(CASES)('recording $file replayed against spdk-sim --version $version', (c) => {
  it('answers as recorded, events driving the rig', async () => {
    rig = new RecordingRig(c.version, c.scratchLen);
    await rig.setUp();
    const r = rig;
    const exchanges = await loadRecording(path.join(FIXTURES, c.file), (l) => r.mapPaths(l));
    const report = await r.replay(exchanges);
    expect(report.compared).toBeGreaterThanOrEqual(c.minExchanges);
    const unexpected = [...report.problems].filter(([line]) => c.known[line] === undefined).map(([line, p]) => `#${line} ${exchanges[line - 1]?.note ?? exchanges[line - 1]?.event ?? ''}: ${p.join('; ')}`);
    const fixed = Object.keys(c.known).map(Number).filter((line) => !report.problems.has(line)).map((line) => `#${line} now answers as recorded: drop it from the known differences`);
    if (process.env.REPLAY_DEBUG) console.log([...unexpected, ...fixed].join("\n"));
    expect([...unexpected, ...fixed]).toEqual([]);
  }, 60_000);
});
