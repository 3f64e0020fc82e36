// The one module that owns better-sqlite3: the replica of the main registrar's location table.
// Migrations from sql/ are applied at open; every statement is prepared once; each multi-row
// change runs in one transaction so a crash never leaves an AoR half-written.
import Database from 'better-sqlite3';
import { existsSync, mkdirSync, readdirSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Binding } from './registration.js';

const SQL_DIR = join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'sql');
/** Rows deleted per sweep transaction: about 4 ms at 1M bindings, so a sweep never holds up SIP for long (bench/scale.ts). */
export const PURGE_BATCH = 100;
/** A reply can only be stale while midreg still waits for it; an hour is far past any timeout. */
const SEQUENCE_RETENTION_MS = 3_600_000;

interface BindingRow {
  aor: string;
  contact: string;
  expires_at: number;
  q: number | null;
  instance: string | null;
  reg_id: number | null;
  path: string | null;
  call_id: string | null;
  cseq: number | null;
  user_agent: string | null;
  source_address: string | null;
  source_port: number | null;
  transport: string | null;
  registered_at: number;
  updated_at: number;
}

export class StoreError extends Error {}

export interface Migration { version: number; name: string; sql: string }

export function readMigrations(dir = SQL_DIR): Migration[] {
  return readdirSync(dir)
    .filter((name) => /^\d+_.+\.sql$/.test(name))
    .map((name) => ({ version: Number(name.split('_')[0]), name, sql: readFileSync(join(dir, name), 'utf8') }))
    .sort((a, b) => a.version - b.version);
}

function toRow(b: Binding): BindingRow {
  return {
    aor: b.aor,
    contact: b.contact,
    expires_at: b.expiresAt,
    q: b.q,
    instance: b.instance,
    reg_id: b.regId,
    path: b.path,
    call_id: b.callId,
    cseq: b.cseq,
    user_agent: b.userAgent,
    source_address: b.source?.address ?? null,
    source_port: b.source?.port ?? null,
    transport: b.source?.transport ?? null,
    registered_at: b.registeredAt,
    updated_at: b.updatedAt,
  };
}

function fromRow(r: BindingRow): Binding {
  return {
    aor: r.aor,
    contact: r.contact,
    expiresAt: r.expires_at,
    q: r.q,
    instance: r.instance,
    regId: r.reg_id,
    path: r.path,
    callId: r.call_id,
    cseq: r.cseq,
    userAgent: r.user_agent,
    source: r.source_address !== null && r.source_port !== null
      ? { address: r.source_address, port: r.source_port, transport: r.transport ?? 'udp' }
      : null,
    registeredAt: r.registered_at,
    updatedAt: r.updated_at,
  };
}

/**
 * The smallest string greater than every string starting with `prefix`, in SQLite's BINARY
 * (UTF-8 byte) order, which is code point order; undefined when no such bound exists.
 */
function prefixEnd(prefix: string): string | undefined {
  const points = [...prefix].map((c) => c.codePointAt(0) ?? 0);
  while (points.length > 0) {
    const last = (points.pop() ?? 0) + 1;
    if (last > 0x10ffff) continue;
    points.push(last >= 0xd800 && last <= 0xdfff ? 0xe000 : last);
    return String.fromCodePoint(...points);
  }
  return undefined;
}

export interface OpenOptions {
  readonly?: boolean;
  /** When the file exists but cannot be opened for writing, open it read-only instead of failing. */
  fallbackToReadonly?: boolean;
}

function prepareStatements(db: Database.Database) {
  return {
    bindingsOf: db.prepare<[string], BindingRow>('SELECT * FROM binding WHERE aor = ? ORDER BY contact'),
    liveOf: db.prepare<[string, number], BindingRow>(
      'SELECT * FROM binding WHERE aor = ? AND expires_at > ? ORDER BY q DESC NULLS LAST, updated_at DESC'),
    sequenceOf: db.prepare<[string, string], { cseq: number }>(
      'SELECT cseq FROM register_sequence WHERE aor = ? AND call_id = ?'),
    deleteAor: db.prepare<[string]>('DELETE FROM binding WHERE aor = ?'),
    insert: db.prepare<BindingRow>(`INSERT INTO binding (aor, contact, expires_at, q, instance, reg_id, path,
      call_id, cseq, user_agent, source_address, source_port, transport, registered_at, updated_at)
      VALUES (@aor, @contact, @expires_at, @q, @instance, @reg_id, @path, @call_id, @cseq, @user_agent,
      @source_address, @source_port, @transport, @registered_at, @updated_at)`),
    upsertSequence: db.prepare<[string, string, number, number]>(`INSERT INTO register_sequence (aor, call_id, cseq, seen_at)
      VALUES (?, ?, ?, ?) ON CONFLICT (aor, call_id) DO UPDATE SET cseq = max(cseq, excluded.cseq), seen_at = excluded.seen_at`),
    expiredBatch: db.prepare<[number, number], { aor: string; contact: string }>(
      'SELECT aor, contact FROM binding WHERE expires_at <= ? LIMIT ?'),
    deleteBinding: db.prepare<[string, string]>('DELETE FROM binding WHERE aor = ? AND contact = ?'),
    aorExists: db.prepare<[string], { n: number }>('SELECT 1 AS n FROM binding WHERE aor = ? LIMIT 1'),
    countAll: db.prepare<[], { bindings: number; aors: number }>(
      'SELECT count(*) AS bindings, count(DISTINCT aor) AS aors FROM binding'),
    purgeSequences: db.prepare<[number, number]>(
      'DELETE FROM register_sequence WHERE (aor, call_id) IN (SELECT aor, call_id FROM register_sequence WHERE seen_at <= ? LIMIT ?)'),
    liveByContact: db.prepare<[string, number], BindingRow>(
      'SELECT * FROM binding WHERE contact = ? AND expires_at > ? ORDER BY updated_at DESC'),
    liveFromSource: db.prepare<[string, string, number, number], { n: number }>(
      'SELECT 1 AS n FROM binding WHERE aor = ? AND source_address = ? AND source_port = ? AND expires_at > ? LIMIT 1'),
    countLive: db.prepare<[number], { bindings: number; aors: number }>(
      'SELECT count(*) AS bindings, count(DISTINCT aor) AS aors FROM binding WHERE expires_at > ?'),
    // `+expires_at` keeps the planner on the primary key, so a page is a short range read
    // and never a sort of every live binding.
    listLiveAfter: db.prepare<[string, string, number, number], BindingRow>(
      'SELECT * FROM binding WHERE (aor, contact) > (?, ?) AND +expires_at > ? ORDER BY aor, contact LIMIT ?'),
    listLiveAfterBelow: db.prepare<[string, string, string, number, number], BindingRow>(
      'SELECT * FROM binding WHERE (aor, contact) > (?, ?) AND aor < ? AND +expires_at > ? ORDER BY aor, contact LIMIT ?'),
    probeBegin: db.prepare('BEGIN IMMEDIATE'),
    probeWrite: db.prepare(`INSERT INTO register_sequence (aor, call_id, cseq, seen_at) VALUES ('', '', 0, 0)
      ON CONFLICT (aor, call_id) DO UPDATE SET seen_at = 0`),
    probeRollback: db.prepare('ROLLBACK'),
  };
}

type Statements = ReturnType<typeof prepareStatements>;

export class LocationStore {
  private db!: Database.Database;
  private stmt!: Statements;
  private replaceTx!: (aor: string, rows: BindingRow[], sequence: { callId: string; cseq: number; at: number }) => void;
  private purgeTx!: (now: number, limit: number) => { removed: number; emptiedAors: number; bindingsRemoved: number };

  /** Applied migrations, newest last (empty when the file was already up to date). */
  readonly migrationsApplied: string[] = [];
  /** Why the store runs read-only although it was opened for writing (undefined when writable). */
  readOnlyReason: string | undefined;

  constructor(readonly file: string, private readonly opts: OpenOptions = {}) {
    try {
      this.attach(this.openDb(opts.readonly === true));
    } catch (err) {
      const reason = err instanceof Error ? err.message : String(err);
      if (!opts.fallbackToReadonly || opts.readonly || !existsSync(file)) throw new StoreError(`cannot open database ${file}: ${reason}`);
      // The replica still routes MESSAGE when it cannot be written; REGISTERs keep being relayed.
      try {
        this.attach(this.openDb(true));
      } catch (again) {
        throw new StoreError(`cannot open database ${file}: ${reason}; read-only: ${again instanceof Error ? again.message : String(again)}`);
      }
      this.readOnlyReason = reason;
    }
  }

  private openDb(readonly: boolean): Database.Database {
    if (!readonly && this.file !== ':memory:') mkdirSync(dirname(this.file), { recursive: true });
    const db = new Database(this.file, { readonly, fileMustExist: readonly });
    try {
      // better-sqlite3 is synchronous: a lock wait blocks every SIP transaction, so keep it short.
      db.pragma('busy_timeout = 100');
      if (!readonly) {
        db.pragma('journal_mode = WAL');
        db.pragma('synchronous = NORMAL');
        this.migrate(db);
      } else if (Number(db.pragma('user_version', { simple: true })) < (readMigrations().at(-1)?.version ?? 0)) {
        throw new Error('schema older than this midreg and the file cannot be written to migrate it');
      }
      return db;
    } catch (err) {
      db.close();
      throw err;
    }
  }

  private attach(db: Database.Database): void {
    this.db = db;
    const stmt = prepareStatements(db);
    this.stmt = stmt;
    this.replaceTx = db.transaction((aor: string, rows: BindingRow[], sequence: { callId: string; cseq: number; at: number }) => {
      stmt.deleteAor.run(aor);
      for (const row of rows) stmt.insert.run(row);
      stmt.upsertSequence.run(aor, sequence.callId, sequence.cseq, sequence.at);
    });
    this.purgeTx = db.transaction((now: number, limit: number) => {
      const expired = stmt.expiredBatch.all(now, limit);
      for (const row of expired) stmt.deleteBinding.run(row.aor, row.contact);
      let emptiedAors = 0;
      for (const aor of new Set(expired.map((row) => row.aor))) if (!stmt.aorExists.get(aor)) emptiedAors++;
      // Old sequence rows go in the same small batches, so no single call is long either.
      const sequences = expired.length < limit ? stmt.purgeSequences.run(now - SEQUENCE_RETENTION_MS, limit - expired.length).changes : 0;
      return { removed: expired.length + sequences, emptiedAors, bindingsRemoved: expired.length };
    });
  }

  /** After a read-only fallback: try to reopen for writing. True when the store is writable. */
  reopenWritable(): boolean {
    if (this.readOnlyReason === undefined) return true;
    let db: Database.Database;
    try {
      db = this.openDb(false);
    } catch (err) {
      this.readOnlyReason = err instanceof Error ? err.message : String(err);
      return false;
    }
    this.db.close();
    this.attach(db);
    this.readOnlyReason = undefined;
    return true;
  }

  private migrate(db: Database.Database): void {
    const current = Number(db.pragma('user_version', { simple: true }));
    for (const migration of readMigrations()) {
      if (migration.version <= current) continue;
      db.transaction(() => {
        db.exec(migration.sql);
        db.pragma(`user_version = ${migration.version}`);
      })();
      this.migrationsApplied.push(migration.name);
    }
  }

  get schemaVersion(): number {
    return Number(this.db.pragma('user_version', { simple: true }));
  }

  /** Every stored binding of the AoR (live or not) and the last CSeq applied for this Call-ID. */
  stateOf(aor: string, callId: string): { bindings: Binding[]; lastCseq: number | undefined } {
    return {
      bindings: this.stmt.bindingsOf.all(aor).map(fromRow),
      lastCseq: this.stmt.sequenceOf.get(aor, callId)?.cseq,
    };
  }

  /** Replace the AoR's bindings with exactly `bindings`, in one transaction. */
  replaceAor(aor: string, bindings: Binding[], sequence: { callId: string; cseq: number; at: number }): void {
    this.replaceTx(aor, bindings.map(toRow), sequence);
  }

  /** Bindings still live at `now`, highest q first. */
  liveBindings(aor: string, now: number): Binding[] {
    return this.stmt.liveOf.all(aor, now).map(fromRow);
  }

  /** Live bindings whose contact URI is exactly `contact` (a request the platform routed to a registered contact). */
  liveBindingsByContact(contact: string, now: number): Binding[] {
    return this.stmt.liveByContact.all(contact, now).map(fromRow);
  }

  /** Whether a live binding of `aor` was registered from this source address and port. */
  isLiveSource(aor: string, address: string, port: number, now: number): boolean {
    return this.stmt.liveFromSource.get(aor, address, port, now) !== undefined;
  }

  /**
   * One page of live bindings strictly after `after` in (AoR, contact) order, optionally only of
   * AoRs starting with `aorPrefix`. Paging by (AoR, contact), a page that ends inside an AoR is resumed
   * without repeating or skipping a binding, however many contacts the AoR has.
   */
  listLiveAfter(now: number, opts: { after?: { aor: string; contact: string }; aorPrefix?: string; limit: number }): Binding[] {
    const prefix = opts.aorPrefix ?? '';
    // No binding has an empty contact, so (prefix, '') sorts before every row of the range.
    const start = opts.after !== undefined && opts.after.aor >= prefix ? opts.after : { aor: prefix, contact: '' };
    const end = prefix === '' ? undefined : prefixEnd(prefix);
    const rows = end === undefined
      ? this.stmt.listLiveAfter.all(start.aor, start.contact, now, opts.limit)
      : this.stmt.listLiveAfterBelow.all(start.aor, start.contact, end, now, opts.limit);
    return rows.map(fromRow);
  }

  counts(now: number): { bindings: number; aors: number } {
    return this.stmt.countLive.get(now) ?? { bindings: 0, aors: 0 };
  }

  /** Delete up to `limit` expired bindings; returns how many went. Small batches keep each call short. */
  purgeExpired(now: number, limit = PURGE_BATCH): number {
    let removed = 0;
    for (let batch = Math.min(limit, PURGE_BATCH); removed < limit; ) {
      const step = this.purgeExpiredBatch(now, Math.min(batch, limit - removed)).bindingsRemoved;
      removed += step;
      if (step < batch) break;
    }
    return removed;
  }

  /**
   * Delete up to `limit` expired bindings (then old sequence rows) in one transaction and say how
   * many AoRs that left empty, so callers keep their counts without a COUNT over the table.
   * `removed` counts every row deleted: 0 means nothing is left to sweep.
   */
  purgeExpiredBatch(now: number, limit = PURGE_BATCH): { removed: number; emptiedAors: number; bindingsRemoved: number } {
    return this.purgeTx(now, limit);
  }

  /** Every stored binding and AoR, expired or not (a full scan: for start-up, not for hot paths). */
  countStored(): { bindings: number; aors: number } {
    return this.stmt.countAll.get() ?? { bindings: 0, aors: 0 };
  }

  /** Whether a write transaction can be taken right now (file writable, not locked, disk not full). */
  checkWritable(): { ok: true } | { ok: false; reason: string } {
    if (this.readOnlyReason !== undefined) return { ok: false, reason: `opened read-only: ${this.readOnlyReason}` };
    try {
      this.stmt.probeBegin.run();
      try {
        this.stmt.probeWrite.run();
      } finally {
        this.stmt.probeRollback.run();
      }
      return { ok: true };
    } catch (err) {
      return { ok: false, reason: err instanceof Error ? err.message : String(err) };
    }
  }

  close(): void {
    if (!this.db.open) return;
    if (!this.db.readonly && this.readOnlyReason === undefined) {
      // A WAL-mode file cannot be opened on read-only media without its -shm file, which a clean
      // close removes; leaving it in rollback mode keeps it readable anywhere (open turns WAL back on).
      try { this.db.pragma('journal_mode = DELETE'); } catch { /* another connection still has it open */ }
    }
    this.db.close();
  }
}
