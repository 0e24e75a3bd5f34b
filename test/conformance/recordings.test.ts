import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import type { SpdkVersion } from '../../src/simulator/index.js';
import { REPO_ROOT } from '../helpers/cli.js';
import { loadRecording } from './replay.js';
import { RecordingRig } from './rig.js';

const FIXTURES = path.join(REPO_ROOT, 'test', 'fixtures', 'spdk');

interface Case {
  file: string;
  version: SpdkVersion;
  scratchLen?: number;
  minExchanges: number;
  /** Line -> why the simulator answers otherwise (each must still differ: remove it when fixed). */
  known: Record<number, string>;
}

const CASES: Case[] = [
  { file: 'v24.01-agent-transcript.jsonl', version: '24.01', scratchLen: 21, minExchanges: 150, known: {} },
  { file: 'v25.09-agent-transcript.jsonl', version: '25.09', scratchLen: 21, minExchanges: 150, known: {} },
  { file: 'v25.09-lazy-transcript.jsonl', version: '25.09', minExchanges: 350, known: {} },
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
