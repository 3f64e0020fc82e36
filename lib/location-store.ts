// The one module that owns better-sqlite3: the replica of the main registrar's location table.
// Migrations from sql/ are applied at open; every statement is prepared once; each multi-row
// change runs in one transaction so a crash never leaves an AoR half-written.
import Database from 'better-sqlite3';
import { mkdirSync, readdirSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Binding } from './registration.js';

const SQL_DIR = join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'sql');
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

export interface OpenOptions { readonly?: boolean }

export class LocationStore {
  private readonly db: Database.Database;
  private readonly stmt;
  private readonly replaceTx;

  /** Applied migrations, newest last (empty when the file was already up to date). */
  readonly migrationsApplied: string[] = [];

  constructor(readonly file: string, opts: OpenOptions = {}) {
    try {
      if (!opts.readonly && file !== ':memory:') mkdirSync(dirname(file), { recursive: true });
      this.db = new Database(file, { readonly: opts.readonly === true, fileMustExist: opts.readonly === true });
      this.db.pragma('busy_timeout = 2000');
      if (!opts.readonly) {
        this.db.pragma('journal_mode = WAL');
        this.db.pragma('synchronous = NORMAL');
        this.migrate();
      }
    } catch (err) {
      throw new StoreError(`cannot open database ${file}: ${err instanceof Error ? err.message : String(err)}`);
    }
    const db = this.db;
    this.stmt = {
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
      purgeBindings: db.prepare<[number, number]>(
        'DELETE FROM binding WHERE (aor, contact) IN (SELECT aor, contact FROM binding WHERE expires_at <= ? LIMIT ?)'),
      purgeSequences: db.prepare<[number]>('DELETE FROM register_sequence WHERE seen_at <= ?'),
      liveByContact: db.prepare<[string, number], BindingRow>(
        'SELECT * FROM binding WHERE contact = ? AND expires_at > ? ORDER BY updated_at DESC'),
      liveFromSource: db.prepare<[string, string, number, number], { n: number }>(
        'SELECT 1 AS n FROM binding WHERE aor = ? AND source_address = ? AND source_port = ? AND expires_at > ? LIMIT 1'),
      countLive: db.prepare<[number], { bindings: number; aors: number }>(
        'SELECT count(*) AS bindings, count(DISTINCT aor) AS aors FROM binding WHERE expires_at > ?'),
      listLive: db.prepare<[number, string, number], BindingRow>(
        'SELECT * FROM binding WHERE expires_at > ? AND aor >= ? ORDER BY aor, contact LIMIT ?'),
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
    this.replaceTx = db.transaction((aor: string, rows: BindingRow[], sequence: { callId: string; cseq: number; at: number }) => {
      this.stmt.deleteAor.run(aor);
      for (const row of rows) this.stmt.insert.run(row);
      this.stmt.upsertSequence.run(aor, sequence.callId, sequence.cseq, sequence.at);
    });
  }

  private migrate(): void {
    const current = Number(this.db.pragma('user_version', { simple: true }));
    for (const migration of readMigrations()) {
      if (migration.version <= current) continue;
      this.db.transaction(() => {
        this.db.exec(migration.sql);
        this.db.pragma(`user_version = ${migration.version}`);
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

  /** One page of live bindings ordered by AoR, starting at `fromAor`. */
  listLive(now: number, fromAor = '', limit = 1000): Binding[] {
    return this.stmt.listLive.all(now, fromAor, limit).map(fromRow);
  }

  /**
   * One page of live bindings strictly after `after` in (AoR, contact) order, optionally only of
   * AoRs starting with `aorPrefix`. Unlike listLive, a page that ends inside an AoR is resumed
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
  purgeExpired(now: number, limit = 2000): number {
    const removed = this.stmt.purgeBindings.run(now, limit).changes;
    if (removed < limit) this.stmt.purgeSequences.run(now - SEQUENCE_RETENTION_MS);
    return removed;
  }

  /** Whether a write transaction can be taken right now (file writable, not locked, disk not full). */
  checkWritable(): { ok: true } | { ok: false; reason: string } {
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
    if (this.db.open) this.db.close();
  }
}
