import { readFile } from 'node:fs/promises';
import path from 'node:path';
import type { NodeAgent } from '../agent/agent.js';
import type { RemoteDiskRef } from '../backend/remote.js';
import { diskId } from '../contract/index.js';
import { writeFileAtomic } from '../fsutil.js';
import type { Logger } from '../log.js';
import type { MigrationJournal } from '../migration/schemas.js';
import { errorText } from './informer.js';
import {
  MAX_EXPORT_ENTRIES,
  MigrationHydratedSchema,
  exportEntriesOf,
  exportsOn,
  hydratedOn,
  nextHydratedList,
  type ExportEntry,
  type HydratedEntry,
  type MigrationRecord,
} from './migration-view.js';

/**
 * What this node says and hears about migrations through NodeImageCache status, which only
 * agents write (a VMI's owner can write the VMI, not a NodeImageCache). A source publishes its
 * exports (`migrationExports`), which the target reads from the node its record names as the
 * source; a target publishes the disks that stand alone there (`migrationHydrated`, kept in
 * `<stateDir>/migration-hydrated.json` while the disk is here), and the source lets go of them
 * once the node its record names as the target says so. Each word is heard only from the other
 * node of its record. The MigrationAgent (migration.ts) decides what to say.
 */
export interface MigrationNodeStatusOptions {
  stateDir: string;
  /** The disks this node holds now (a disk no longer held is no longer said to stand alone). */
  agent: Partial<Pick<NodeAgent, 'ownedNow'>>;
  logger: Logger;
  /** Target: publishes the disks that stand alone here (the node's NodeImageCache `migrationHydrated`). */
  publishHydrated?: (entries: readonly HydratedEntry[]) => void;
  /** Source: publishes the exports the targets clone (the node's NodeImageCache `migrationExports`). */
  publishExports?: (entries: readonly ExportEntry[]) => void;
}

export class MigrationNodeStatus {
  /** Target: the disks it said stand alone here, kept while they are here (the source may read them after this node forgot the migration). */
  private hydrated: HydratedEntry[] = [];
  private hydratedPublished = false;
  /** Source: the exports last published (JSON), to publish only changes. */
  private exportsPublished: string | undefined;

  constructor(private readonly o: MigrationNodeStatusOptions) {}

  private get hydratedFile(): string {
    return path.join(this.o.stateDir, 'migration-hydrated.json');
  }

  /** Loads the list of hydrated disks a previous run said (agent restart). */
  async load(): Promise<void> {
    const said = await readFile(this.hydratedFile, 'utf8').catch(() => undefined);
    if (said === undefined) return;
    try {
      this.hydrated = MigrationHydratedSchema.parse(JSON.parse(said));
    } catch (e) {
      // Lost, the word only delays the sources (they keep their copies): never a wrong delete.
      this.o.logger.warn({ event: 'migration.hydrated-unreadable', file: this.hydratedFile, error: errorText(e) }, 'ignoring an unreadable list of hydrated disks');
    }
  }

  /**
   * Source: the disks of a migration its target says stand alone there, from the NodeImageCache
   * of the node this node's own record names as the target (another node's word is not the target's).
   */
  targetSays(caches: readonly unknown[] | undefined, uid: string, j: MigrationJournal): Set<string> {
    return j.role === 'source' ? hydratedOn(caches ?? [], j.peer, uid, j.migrationUid) : new Set();
  }

  /** Target: the exports of the migration on the node its record names as the source. */
  sourceExports(caches: readonly unknown[] | undefined, source: string | undefined, uid: string, migration: string): Record<string, RemoteDiskRef> | undefined {
    return exportsOn(caches ?? [], source, uid, migration);
  }

  /** Source: publishes what every record still exports (a record forgotten exports nothing). */
  sayExports(records: Iterable<MigrationRecord>): void {
    const entries = [...records].flatMap((r) => [r.journal, r.previous].flatMap((j) => (j ? exportEntriesOf(r.vmi.uid, j) : []))).slice(0, MAX_EXPORT_ENTRIES);
    const key = JSON.stringify(entries);
    if (key === this.exportsPublished || !this.o.publishExports) return;
    this.o.publishExports(entries);
    this.exportsPublished = key;
    this.o.logger.info({ event: 'migration.exports-published', exports: entries.map((e) => `${e.vmi}/${e.disk}@${e.migration}`) }, 'exports published in the NodeImageCache');
  }

  /**
   * Target: adds what a journal says stands alone here, drops the disks this node no longer
   * holds from their migration, persists the list (before any record is forgotten) and
   * publishes it in the node's NodeImageCache.
   */
  async sayHydrated(now: readonly HydratedEntry[]): Promise<void> {
    const owned = this.o.agent.ownedNow?.();
    const holds = (e: HydratedEntry): boolean => owned === undefined || owned[diskId(e.vmi, e.disk)]?.migration === e.migration;
    const next = nextHydratedList(this.hydrated, now, holds);
    if (JSON.stringify(next) !== JSON.stringify(this.hydrated)) {
      await writeFileAtomic(this.hydratedFile, `${JSON.stringify(next)}\n`);
      const added = next.filter((e) => !this.hydrated.some((h) => h.vmi === e.vmi && h.migration === e.migration && h.disk === e.disk));
      for (const e of added) this.o.logger.info({ event: 'migration.hydrated-published', vmi: e.vmi, migration: e.migration, disk: e.disk }, 'disk stands alone here; published for the source');
      this.hydrated = next;
      this.hydratedPublished = false;
    }
    if (!this.hydratedPublished && this.o.publishHydrated) {
      this.o.publishHydrated(this.hydrated);
      this.hydratedPublished = true;
    }
  }
}
