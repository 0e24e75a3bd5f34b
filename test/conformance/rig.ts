import fs from 'node:fs/promises';
import { existsSync, lstatSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { NvmfFabric, SpdkSimulator, type SpdkVersion } from '../../testing/spdk-sim/index.js';
import { RawRpcClient } from '../unit/simulator/rpc-client.js';
import { ReplayConnection, UuidMap, diff, requestId, type Exchange } from './replay.js';

/**
 * Replays a recording with `event` lines (test/fixtures/spdk/README.md) against simulators:
 * one per recorded target (A, B, or the single unnamed one), all joined by one simulated
 * NVMe-oF fabric. The recording's scratch directory `/rec` is a temporary directory of the same
 * path length (socket-path limits depend on it). Events drive the rig:
 * - `file` / `mkdir`: create the file (sparse, of the recorded size) or directory;
 * - `start` / `restart` / `kill` / `stop`: start a simulator with the recorded -m/-r/-S, kill it
 *   as SIGKILL does (lvstore metadata on aio files survives in a state directory, controller
 *   sockets are left behind) or stop it as SIGTERM does;
 * - `check` of a path: the file's existence (and socket type) is checked on disk;
 * - not replayable, each for a stated reason (SKIPPED below): data moved by spdk_dd and the
 *   byte comparisons made from it, timings, target log lines, checks derived from responses
 *   already compared.
 * The simulators are instances in this process rather than separate processes: the fabric
 * that lets B attach A's subsystem is an in-process object (testing/spdk-sim/fabric.ts).
 */
export const SKIPPED: Record<string, string> = {
  spdk_dd: 'moves data through vhost-user or NVMe/TCP; the simulator keeps no data and speaks neither protocol',
  spdk_dd_started: 'a data reader running in the background (see spdk_dd)',
  verify: 'compares bytes read by spdk_dd; the simulator keeps no data',
  timing: 'a duration on the recording machine; tests make no timed assertions',
  log: "the target's own log lines, not part of its JSON-RPC answers",
  section: 'a heading of the recording',
  meta: 'who recorded what, when',
};

export interface ReplayReport {
  /** Exchanges compared (requests answered or recorded as unanswered, late answers). */
  compared: number;
  /** Events acted on (files, directories, starts, kills, stops, path checks). */
  acted: number;
  /** Event kind -> how many were skipped (reasons in SKIPPED). */
  skipped: Record<string, number>;
  /** Line number (1-based) -> differences found there. */
  problems: Map<number, string[]>;
}

interface Target {
  sim: SpdkSimulator;
  conn: ReplayConnection;
}

const NO_ANSWER_WAIT_MS = 200;

export class RecordingRig {
  private dir = '';
  private readonly fabric = new NvmfFabric();
  private readonly targets = new Map<string, Target>();
  private readonly dead: SpdkSimulator[] = [];
  private readonly uuids = new UuidMap();

  constructor(
    private readonly version: SpdkVersion,
    /** Length of the recording machine's scratch path (`real_scratch_len`), if it matters. */
    private readonly scratchLen?: number,
  ) {}

  /** A temporary directory standing for `/rec`, of the recorded length when that is known. */
  async setUp(): Promise<void> {
    const base = os.tmpdir();
    const pad = this.scratchLen === undefined ? 8 : this.scratchLen - base.length - 1 - 6;
    if (pad < 1) throw new Error(`the temporary directory ${base} is too long to stand for a ${this.scratchLen}-byte scratch path`);
    this.dir = await fs.mkdtemp(path.join(base, 'r'.repeat(pad)));
    await fs.mkdir(path.join(this.dir, '.state'));
  }

  /** The recording's text with `/rec` mapped to this rig's directory. */
  mapPaths(line: string): string {
    return line.split('"/rec/').join(`"${this.dir}/`).split('/rec/').join(`${this.dir}/`).split('"/rec"').join(`"${this.dir}"`);
  }

  async tearDown(): Promise<void> {
    for (const t of this.targets.values()) t.conn.client.close();
    for (const sim of this.dead) await sim.stop();
    for (const t of this.targets.values()) await t.sim.stop();
    if (this.dir) await fs.rm(this.dir, { recursive: true, force: true });
  }

  async replay(exchanges: Exchange[]): Promise<ReplayReport> {
    const report: ReplayReport = { compared: 0, acted: 0, skipped: {}, problems: new Map() };
    for (const [i, ex] of exchanges.entries()) {
      const found: string[] = [];
      if (ex.event !== undefined) {
        if (SKIPPED[ex.event] !== undefined) report.skipped[ex.event] = (report.skipped[ex.event] ?? 0) + 1;
        else if (ex.event === 'check' && typeof ex.path !== 'string') report.skipped['check (derived)'] = (report.skipped['check (derived)'] ?? 0) + 1;
        else {
          found.push(...(await this.act(ex)));
          report.acted++;
        }
      } else {
        found.push(...(await this.exchange(ex)));
        report.compared++;
      }
      if (found.length > 0) report.problems.set(i + 1, found);
    }
    return report;
  }

  private async act(ex: Exchange): Promise<string[]> {
    const name = typeof ex.target === 'string' ? ex.target : '-';
    switch (ex.event) {
      case 'file': {
        const fh = await fs.open(String(ex.path), 'w');
        await fh.truncate(Number(ex.bytes));
        await fh.close();
        return [];
      }
      case 'mkdir':
        await fs.mkdir(String(ex.path), { recursive: true });
        return [];
      case 'start':
        await this.start(name, ex.argv as string[]);
        return [];
      case 'restart':
        await this.kill(name, 'SIGKILL');
        await this.start(name, ex.argv as string[]);
        return [];
      case 'kill':
      case 'stop':
        await this.kill(name, String(ex.how ?? ex.signal ?? 'SIGKILL'));
        return [];
      case 'check': {
        const p = String(ex.path);
        const exists = existsSync(p);
        const problems: string[] = [];
        if (typeof ex.exists === 'boolean' && exists !== ex.exists) problems.push(`check ${p}: exists ${exists}, recorded ${ex.exists}`);
        if (exists && typeof ex.is_socket === 'boolean' && lstatSync(p).isSocket() !== ex.is_socket) problems.push(`check ${p}: is_socket differs`);
        return problems;
      }
      default:
        return [`unknown event ${ex.event}`];
    }
  }

  private async start(name: string, argv: string[]): Promise<void> {
    const arg = (flag: string): string | undefined => {
      const i = argv.indexOf(flag);
      return i >= 0 ? argv[i + 1] : undefined;
    };
    const socketPath = arg('-r');
    const vhostDir = arg('-S');
    if (!socketPath || !vhostDir) throw new Error(`start of ${name}: no -r/-S in ${argv.join(' ')}`);
    await fs.mkdir(vhostDir, { recursive: true });
    const sim = new SpdkSimulator({
      socketPath,
      vhostDir,
      stateDir: path.join(this.dir, '.state'),
      cpumask: arg('-m') ?? '0x1',
      version: this.version,
      fabric: this.fabric,
      // SPDK waits 10 s before answering -110; the answer is the same a moment later.
      detachTimeoutMs: 300,
    });
    await sim.start();
    this.targets.set(name, { sim, conn: new ReplayConnection(await RawRpcClient.connect(socketPath)) });
  }

  private async kill(name: string, how: string): Promise<void> {
    const t = this.targets.get(name);
    if (!t) return;
    this.targets.delete(name);
    t.conn.client.close();
    if (how === 'SIGTERM') await t.sim.stop();
    else {
      await t.sim.kill();
      this.dead.push(t.sim);
    }
  }

  private async exchange(ex: Exchange): Promise<string[]> {
    const name = typeof ex.target === 'string' ? ex.target : '-';
    const t = this.targets.get(name);
    if (!t) return [`no target ${name} is running`];
    t.conn.send(ex);
    if (ex.response !== undefined) {
      const got = await t.conn.answer(ex.response.id, 5000);
      if (got.kind !== 'answer') return [`expected an answer, got ${got.kind}`];
      return diff(ex.response, got.body, this.uuids);
    }
    if (ex.outcome === 'no response: timed out') {
      const id = requestId(ex);
      const got = id === undefined ? await t.conn.anyAnswer(NO_ANSWER_WAIT_MS) : await t.conn.answer(id, NO_ANSWER_WAIT_MS);
      return got.kind === 'none' ? [] : [`expected no answer, got ${JSON.stringify(got)}`];
    }
    return [`neither a response nor a known outcome: ${JSON.stringify(ex).slice(0, 200)}`];
  }
}
