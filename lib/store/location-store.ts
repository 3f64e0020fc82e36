// The one module that owns better-sqlite3: the replica of the main registrar's location table.
// Migrations from sql/ are applied at open; every statement is prepared once; each multi-row
// change runs in one transaction so a crash never leaves an AoR half-written.
import Database from 'better-sqlite3';
import { existsSync, mkdirSync, readdirSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { isMainThread, parentPort, Worker, workerData } from 'node:worker_threads';
import type { Binding } from '../registrar/registration.js';
import type { AorUpstream } from '../registrar/aor-throttle.js';

// dist/lib/store/ → the repository's sql/
const SQL_DIR = join(dirname(fileURLToPath(import.meta.url)), '..', '..', '..', 'sql');

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
  upstream_contact: string | null;
  insertion_key: string | null;
  upstream_expires_at: number | null;
  lapsed_at: number | null;
  node: string | null;
  registered_at: number;
  updated_at: number;
}

interface AorUpstreamRow {
  aor: string;
  contact: string;
  key: string;
  call_id: string;
  cseq: number;
  expires_at: number;
  lapsed_at: number | null;
  updated_at: number;
}

function fromUpstreamRow(r: AorUpstreamRow): AorUpstream {
  return { aor: r.aor, contact: r.contact, key: r.key, callId: r.call_id, cseq: r.cseq, expiresAt: r.expires_at, lapsedAt: r.lapsed_at ?? null, updatedAt: r.updated_at };
}

function toUpstreamRow(u: AorUpstream): AorUpstreamRow {
  return { aor: u.aor, contact: u.contact, key: u.key, call_id: u.callId, cseq: u.cseq, expires_at: u.expiresAt, lapsed_at: u.lapsedAt, updated_at: u.updatedAt };
}

/**
 * Bindings as operators see them: in AoR mode a device's upstream expiry, lapse and upstream
 * Contact are its AoR's (aor_upstream); in the other modes the binding's own columns.
 */
const VIEW_COLUMNS = `b.aor, b.contact, b.expires_at, b.q, b.instance, b.reg_id, b.path, b.call_id, b.cseq, b.user_agent,
  b.source_address, b.source_port, b.transport, COALESCE(b.upstream_contact, u.contact) AS upstream_contact,
  COALESCE(b.insertion_key, u.key) AS insertion_key, COALESCE(b.upstream_expires_at, u.expires_at) AS upstream_expires_at,
  COALESCE(b.lapsed_at, u.lapsed_at) AS lapsed_at, b.registered_at, b.updated_at`;

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
    upstream_contact: b.insertion?.contact ?? null,
    insertion_key: b.insertion?.key ?? null,
    upstream_expires_at: b.upstreamExpiresAt,
    lapsed_at: b.lapsedAt,
    node: b.node ?? null,
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
    insertion: r.upstream_contact !== null && r.insertion_key !== null ? { contact: r.upstream_contact, key: r.insertion_key } : null,
    upstreamExpiresAt: r.upstream_expires_at ?? null,
    lapsedAt: r.lapsed_at ?? null,
    ...(r.node !== null && r.node !== undefined ? { node: r.node } : {}),
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
  /**
   * Told when background checkpointing starts failing (message) or works again (undefined).
   * Writes still succeed meanwhile; only the WAL file grows.
   */
  onCheckpointStatus?: (error: string | undefined) => void;
  /** Told when writing a batch of locally answered refreshes failed (they are retried a second later). */
  onAbsorbWriteError?: (err: unknown) => void;
}

/** After a failed write of absorbed refreshes, the next try waits this long. */
const ABSORB_RETRY_MS = 1000;
/**
 * Locally answered refreshes are written at most this long after the first of a batch. A crash
 * loses at most this much of refresh extensions: the binding stays, with the expiry and CSeq of the
 * refresh before (the phone's next refresh has a higher CSeq anyway, and is absorbed).
 */
export const ABSORB_FLUSH_MS = 200;

interface PendingAbsorb { aor: string; contact: string; expiresAt: number; cseq: number; updatedAt: number }

/** How often the checkpoint thread copies the WAL back into the database file. */
export const CHECKPOINT_INTERVAL_MS = 200;
/** How soon the next checkpoint runs after one that found new frames to copy. */
const CHECKPOINT_CATCH_UP_MS = 20;
/** After a checkpoint the WAL is rewound, not shrunk; past this size it is truncated. */
const WAL_SIZE_LIMIT_BYTES = 64 * 1024 * 1024;
/**
 * Only a writer rewinds the WAL, and only when a checkpoint has caught up with every frame. The
 * checkpoint thread never catches up while REGISTERs keep coming (each pass ends with two fsyncs),
 * and the WAL grew by about 20 KB per REGISTER without bound: half a gigabyte in 12 s at 2,000/s.
 * So the writer still checkpoints itself once the WAL holds this many pages (64 MiB): by then the
 * thread has copied all but its last interval's frames, so the inline pass copies little, though
 * it pays the two fsyncs (10 to 20 ms on the bench's disk) once per 64 MiB written.
 */
const WAL_INLINE_CHECKPOINT_PAGES = 16_384;

const CHECKPOINTER_ROLE = 'midreg-checkpointer';
/** States of the word the main thread and the checkpoint thread share. */
const CHECKPOINT_IDLE = 0;
const CHECKPOINT_BUSY = 1;
const CHECKPOINT_STOPPED = 2;

interface CheckpointerData { role: typeof CHECKPOINTER_ROLE; file: string; state: SharedArrayBuffer; intervalMs: number }
type CheckpointReport = { ok: true; walFrames: number; copied: number; ms: number } | { ok: false; error: string };

/**
 * The checkpoint thread. SQLite's automatic checkpoint runs inside the COMMIT that crosses 1000
 * WAL pages: on the one thread that also answers SIP, one REGISTER in about two hundred waited
 * 15 to 20 ms for it, most of that two fsyncs (bench/results). Here a PASSIVE checkpoint, which
 * never blocks the writer (https://sqlite.org/wal.html#checkpointing), runs on its own thread and
 * copies nearly everything; the writer finishes the job rarely (WAL_INLINE_CHECKPOINT_PAGES).
 * The connection is opened per checkpoint so that an idle thread holds nothing that would stop
 * the main connection from leaving WAL mode on close.
 */
function runCheckpointer(data: CheckpointerData): void {
  const state = new Int32Array(data.state);
  let lastCopied = -1;
  const tick = (): void => {
    if (Atomics.compareExchange(state, 0, CHECKPOINT_IDLE, CHECKPOINT_BUSY) !== CHECKPOINT_IDLE) return;
    let report: CheckpointReport;
    const started = performance.now();
    try {
      // A lock held elsewhere is waited for briefly: the next tick tries again.
      const db = new Database(data.file, { fileMustExist: true, timeout: 100 });
      try {
        db.pragma('synchronous = NORMAL');
        const [row] = db.pragma('wal_checkpoint(PASSIVE)') as { busy: number; log: number; checkpointed: number }[];
        report = { ok: true, walFrames: row?.log ?? 0, copied: row?.checkpointed ?? 0, ms: performance.now() - started };
      } finally {
        db.close();
      }
    } catch (err) {
      report = { ok: false, error: err instanceof Error ? err.message : String(err) };
    } finally {
      Atomics.store(state, 0, CHECKPOINT_IDLE);
      Atomics.notify(state, 0);
    }
    parentPort?.postMessage(report);
    // While the writer keeps adding frames, come back soon: the less is left uncopied, the less
    // the writer's own rare checkpoint (WAL_INLINE_CHECKPOINT_PAGES) has to copy.
    const advanced = report.ok && report.copied !== lastCopied && report.copied > 0;
    lastCopied = report.ok ? report.copied : lastCopied;
    setTimeout(tick, advanced ? CHECKPOINT_CATCH_UP_MS : data.intervalMs);
  };
  setTimeout(tick, data.intervalMs);
}

if (!isMainThread && (workerData as Partial<CheckpointerData> | null)?.role === CHECKPOINTER_ROLE) {
  runCheckpointer(workerData as CheckpointerData);
}

function prepareStatements(db: Database.Database) {
  return {
    bindingsOf: db.prepare<[string], BindingRow>('SELECT * FROM binding WHERE aor = ? ORDER BY contact'),
    liveOf: db.prepare<[string, number], BindingRow>(
      'SELECT * FROM binding WHERE aor = ? AND expires_at > ? ORDER BY q DESC NULLS LAST, updated_at DESC'),
    liveViewOf: db.prepare<[string, number], BindingRow>(
      `SELECT ${VIEW_COLUMNS} FROM binding b LEFT JOIN aor_upstream u ON u.aor = b.aor WHERE b.aor = ? AND b.expires_at > ? ORDER BY b.q DESC NULLS LAST, b.updated_at DESC`),
    aorUpstream: db.prepare<[string], AorUpstreamRow>('SELECT * FROM aor_upstream WHERE aor = ?'),
    aorUpstreamByKey: db.prepare<[string], AorUpstreamRow>('SELECT * FROM aor_upstream WHERE key = ?'),
    upsertAorUpstream: db.prepare<AorUpstreamRow>(`INSERT INTO aor_upstream (aor, contact, key, call_id, cseq, expires_at, lapsed_at, updated_at)
      VALUES (@aor, @contact, @key, @call_id, @cseq, @expires_at, @lapsed_at, @updated_at)
      ON CONFLICT (aor) DO UPDATE SET contact = excluded.contact, key = excluded.key, call_id = excluded.call_id, cseq = excluded.cseq,
      expires_at = excluded.expires_at, lapsed_at = excluded.lapsed_at, updated_at = excluded.updated_at`),
    deleteAorUpstream: db.prepare<[string]>('DELETE FROM aor_upstream WHERE aor = ?'),
    deleteAorUpstreamIfUnchanged: db.prepare<[string, number]>('DELETE FROM aor_upstream WHERE aor = ? AND updated_at = ?'),
    markAorLapsed: db.prepare<[number, string, number]>('UPDATE aor_upstream SET lapsed_at = ? WHERE aor = ? AND updated_at = ?'),
    // An AoR whose last device is gone, still registered upstream, not yet tried.
    pendingAorDeregistrations: db.prepare<[number, number, number], AorUpstreamRow>(
      `SELECT * FROM aor_upstream u WHERE u.expires_at > ? AND u.lapsed_at IS NULL
       AND NOT EXISTS (SELECT 1 FROM binding b WHERE b.aor = u.aor AND b.expires_at > ?) ORDER BY u.expires_at LIMIT ?`),
    countPendingAorDeregistrations: db.prepare<[number, number], { n: number }>(
      `SELECT count(*) AS n FROM aor_upstream u WHERE u.expires_at > ? AND u.lapsed_at IS NULL
       AND NOT EXISTS (SELECT 1 FROM binding b WHERE b.aor = u.aor AND b.expires_at > ?)`),
    purgeAorUpstream: db.prepare<[number]>('DELETE FROM aor_upstream WHERE expires_at <= ?'),
    // One statement for a new binding and a refresh. On a refresh the row is rewritten in place:
    // the contact index is left alone, only the expiry index moves. Against UPDATE-then-INSERT
    // it spares each new binding a search of the primary key that finds nothing.
    upsert: db.prepare<BindingRow>(`INSERT INTO binding (aor, contact, expires_at, q, instance, reg_id, path,
      call_id, cseq, user_agent, source_address, source_port, transport, upstream_contact, insertion_key, upstream_expires_at, lapsed_at, node, registered_at, updated_at)
      VALUES (@aor, @contact, @expires_at, @q, @instance, @reg_id, @path, @call_id, @cseq, @user_agent,
      @source_address, @source_port, @transport, @upstream_contact, @insertion_key, @upstream_expires_at, @lapsed_at, @node, @registered_at, @updated_at)
      ON CONFLICT (aor, contact) DO UPDATE SET expires_at = excluded.expires_at, q = excluded.q,
      instance = excluded.instance, reg_id = excluded.reg_id, path = excluded.path, call_id = excluded.call_id,
      cseq = excluded.cseq, user_agent = excluded.user_agent, source_address = excluded.source_address,
      source_port = excluded.source_port, transport = excluded.transport, upstream_contact = excluded.upstream_contact,
      insertion_key = excluded.insertion_key, upstream_expires_at = excluded.upstream_expires_at,
      lapsed_at = excluded.lapsed_at, node = excluded.node, registered_at = excluded.registered_at,
      updated_at = excluded.updated_at`),
    contactsOf: db.prepare<[string], { contact: string }>('SELECT contact FROM binding WHERE aor = ?'),
    // A binding still registered upstream (contact mode) stays until midreg de-registered it there
    // or its upstream registration ended: until then requests for it are answered 480.
    expiredBatch: db.prepare<[number, number, number], { aor: string; contact: string }>(
      'SELECT aor, contact FROM binding WHERE expires_at <= ? AND (upstream_expires_at IS NULL OR upstream_expires_at <= ?) LIMIT ?'),
    lapsedByContact: db.prepare<[string, number, number], BindingRow>(
      'SELECT * FROM binding WHERE contact = ? AND expires_at <= ? AND upstream_expires_at > ?'),
    pendingDeregistrations: db.prepare<[number, number, number], BindingRow>(
      'SELECT * FROM binding WHERE upstream_expires_at > ? AND expires_at <= ? AND lapsed_at IS NULL ORDER BY expires_at LIMIT ?'),
    countPendingDeregistrations: db.prepare<[number, number], { n: number }>(
      'SELECT count(*) AS n FROM binding WHERE upstream_expires_at > ? AND expires_at <= ? AND lapsed_at IS NULL'),
    markLapsed: db.prepare<[number, string, string, number]>('UPDATE binding SET lapsed_at = ? WHERE aor = ? AND contact = ? AND updated_at = ?'),
    deleteIfUnchanged: db.prepare<[string, string, number]>('DELETE FROM binding WHERE aor = ? AND contact = ? AND updated_at = ?'),
    absorbRefresh: db.prepare<[number, number, number, string, string]>(
      'UPDATE binding SET expires_at = ?, cseq = ?, updated_at = ? WHERE aor = ? AND contact = ?'),
    deleteBinding: db.prepare<[string, string]>('DELETE FROM binding WHERE aor = ? AND contact = ?'),
    aorExists: db.prepare<[string], { n: number }>('SELECT 1 AS n FROM binding WHERE aor = ? LIMIT 1'),
    countAll: db.prepare<[], { bindings: number; aors: number }>(
      'SELECT count(*) AS bindings, count(DISTINCT aor) AS aors FROM binding'),
    liveByContact: db.prepare<[string, number], BindingRow>(
      'SELECT * FROM binding WHERE contact = ? AND expires_at > ? ORDER BY updated_at DESC'),
    rememberAor: db.prepare<[string, number]>('INSERT OR IGNORE INTO known_aor (aor, first_seen_at) VALUES (?, ?)'),
    isKnownAor: db.prepare<[string], { n: number }>('SELECT 1 AS n FROM known_aor WHERE aor = ?'),
    byInsertionKey: db.prepare<[string], BindingRow>(
      'SELECT * FROM binding WHERE insertion_key = ? ORDER BY expires_at DESC'),
    liveFromSource: db.prepare<[string, string, number, number], { n: number }>(
      'SELECT 1 AS n FROM binding WHERE aor = ? AND source_address = ? AND source_port = ? AND expires_at > ? LIMIT 1'),
    countLive: db.prepare<[number], { bindings: number; aors: number }>(
      'SELECT count(*) AS bindings, count(DISTINCT aor) AS aors FROM binding WHERE expires_at > ?'),
    // `+expires_at` keeps the planner on the primary key, so a page is a short range read
    // and never a sort of every live binding.
    listLiveAfter: db.prepare<[string, string, number, number], BindingRow>(
      `SELECT ${VIEW_COLUMNS} FROM binding b LEFT JOIN aor_upstream u ON u.aor = b.aor WHERE (b.aor, b.contact) > (?, ?) AND +b.expires_at > ? ORDER BY b.aor, b.contact LIMIT ?`),
    listLiveAfterBelow: db.prepare<[string, string, string, number, number], BindingRow>(
      `SELECT ${VIEW_COLUMNS} FROM binding b LEFT JOIN aor_upstream u ON u.aor = b.aor WHERE (b.aor, b.contact) > (?, ?) AND b.aor < ? AND +b.expires_at > ? ORDER BY b.aor, b.contact LIMIT ?`),
    probeBegin: db.prepare('BEGIN IMMEDIATE'),
    // No binding has an empty AoR; the row is rolled back anyway.
    probeWrite: db.prepare(`INSERT INTO binding (aor, contact, expires_at, registered_at, updated_at) VALUES ('', '', 0, 0, 0)
      ON CONFLICT (aor, contact) DO UPDATE SET expires_at = 0`),
    probeRollback: db.prepare('ROLLBACK'),
  };
}

type Statements = ReturnType<typeof prepareStatements>;

export class LocationStore {
  private db!: Database.Database;
  private stmt!: Statements;
  private replaceTx!: (aor: string, rows: BindingRow[], stored: readonly string[] | undefined) => void;
  private purgeTx!: (now: number, limit: number) => { removed: number; emptiedAors: number };
  private saveAorTx!: (aor: string, rows: BindingRow[], stored: readonly string[] | undefined, upstream: AorUpstreamRow | null) => void;
  private absorbTx!: (batch: readonly PendingAbsorb[]) => void;
  /**
   * Refreshes midreg answered itself (throttling), not yet written: by AoR, then contact. Written
   * together ABSORB_FLUSH_MS after the first, in one transaction: one commit per batch instead of
   * one per REGISTER (each commit rewrote the row's page and an expiry-index page, the largest
   * per-refresh cost in the CPU profile). Every other read or write of the store writes them first,
   * and bindingsOf overlays them, so this process never sees a stale binding.
   */
  private pendingAbsorbs = new Map<string, Map<string, PendingAbsorb>>();
  private absorbFlush: NodeJS.Timeout | undefined;

  private checkpointer: { worker: Worker; state: Int32Array } | undefined;
  private checkpointError: string | undefined;
  /** The last checkpoint the background thread reported (undefined before the first). */
  lastCheckpoint: Extract<CheckpointReport, { ok: true }> | undefined;

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
    this.startCheckpointer();
  }

  private startCheckpointer(): void {
    if (this.db.readonly || this.file === ':memory:' || this.checkpointer) return;
    const state = new Int32Array(new SharedArrayBuffer(4));
    let worker: Worker;
    try {
      const data: CheckpointerData = { role: CHECKPOINTER_ROLE, file: this.file, state: state.buffer as SharedArrayBuffer, intervalMs: CHECKPOINT_INTERVAL_MS };
      worker = new Worker(new URL(import.meta.url), { workerData: data });
    } catch (err) {
      this.reportCheckpoint({ ok: false, error: `checkpoint thread not started, checkpointing inline: ${err instanceof Error ? err.message : String(err)}` });
      return;
    }
    worker.unref();
    worker.on('message', (report: CheckpointReport) => this.reportCheckpoint(report));
    worker.on('error', (err) => {
      // Never let the WAL grow without bound: SQLite checkpoints inline again.
      this.checkpointer = undefined;
      if (this.db.open) this.db.pragma('wal_autocheckpoint = 1000');
      this.reportCheckpoint({ ok: false, error: `checkpoint thread failed, checkpointing inline: ${err.message}` });
    });
    this.db.pragma(`wal_autocheckpoint = ${WAL_INLINE_CHECKPOINT_PAGES}`);
    this.checkpointer = { worker, state };
  }

  private reportCheckpoint(report: CheckpointReport): void {
    if (report.ok) {
      this.lastCheckpoint = report;
      if (this.checkpointError !== undefined) { this.checkpointError = undefined; this.opts.onCheckpointStatus?.(undefined); }
    } else if (report.error !== this.checkpointError) {
      this.checkpointError = report.error;
      this.opts.onCheckpointStatus?.(report.error);
    }
  }

  /** Stop the checkpoint thread before close, waiting (synchronously, bounded) for a checkpoint in progress. */
  private stopCheckpointer(): void {
    const running = this.checkpointer;
    if (!running) return;
    this.checkpointer = undefined;
    const deadline = Date.now() + 5000;
    for (;;) {
      const was = Atomics.compareExchange(running.state, 0, CHECKPOINT_IDLE, CHECKPOINT_STOPPED);
      if (was !== CHECKPOINT_BUSY || Date.now() > deadline) break;
      Atomics.wait(running.state, 0, CHECKPOINT_BUSY, Math.max(1, deadline - Date.now()));
    }
    void running.worker.terminate();
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
        db.pragma(`journal_size_limit = ${WAL_SIZE_LIMIT_BYTES}`);
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
    this.replaceTx = db.transaction((aor: string, rows: BindingRow[], stored: readonly string[] | undefined) => {
      // Only what changed is written: each page touched is one more 4 KiB frame in the WAL.
      const kept = new Set(rows.map((row) => row.contact));
      const before = stored ?? stmt.contactsOf.all(aor).map((row) => row.contact);
      for (const contact of before) if (!kept.has(contact)) stmt.deleteBinding.run(aor, contact);
      for (const row of rows) stmt.upsert.run(row);
      // An AoR new to the replica: remember that the registrar accepted it (offline messages may
      // be kept for it). Refreshes skip this, so it costs nothing per REGISTER.
      if (before.length === 0 && rows[0]) stmt.rememberAor.run(aor, rows[0].registered_at);
    });
    this.saveAorTx = db.transaction((aor: string, rows: BindingRow[], stored: readonly string[] | undefined, upstream: AorUpstreamRow | null) => {
      this.replaceTx(aor, rows, stored);
      if (upstream) stmt.upsertAorUpstream.run(upstream);
      else stmt.deleteAorUpstream.run(aor);
    });
    this.absorbTx = db.transaction((batch: readonly PendingAbsorb[]) => {
      for (const a of batch) stmt.absorbRefresh.run(a.expiresAt, a.cseq, a.updatedAt, a.aor, a.contact);
    });
    this.purgeTx = db.transaction((now: number, limit: number) => {
      // AoR mode: registrations that ended at the registrar by themselves (lapsed ones included).
      stmt.purgeAorUpstream.run(now);
      const expired = stmt.expiredBatch.all(now, now, limit);
      for (const row of expired) stmt.deleteBinding.run(row.aor, row.contact);
      let emptiedAors = 0;
      for (const aor of new Set(expired.map((row) => row.aor))) if (!stmt.aorExists.get(aor)) emptiedAors++;
      return { removed: expired.length, emptiedAors };
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
    this.startCheckpointer();
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

  /** Every stored binding of the AoR, live or not. */
  bindingsOf(aor: string): Binding[] {
    const rows = this.stmt.bindingsOf.all(aor).map(fromRow);
    const pending = this.pendingAbsorbs.get(aor);
    if (!pending) return rows;
    return rows.map((b) => {
      const p = pending.get(b.contact);
      return p ? { ...b, expiresAt: p.expiresAt, cseq: p.cseq, updatedAt: p.updatedAt } : b;
    });
  }

  /** Write the pending absorbed refreshes now (before any other read or write, and on close). */
  flushAbsorbed(): void {
    if (this.pendingAbsorbs.size === 0) return;
    if (this.absorbFlush) { clearTimeout(this.absorbFlush); this.absorbFlush = undefined; }
    const batch = [...this.pendingAbsorbs.values()].flatMap((byContact) => [...byContact.values()]);
    this.pendingAbsorbs = new Map();
    try {
      this.absorbTx(batch);
    } catch (err) {
      // Kept for the next try, unless a newer refresh of the same binding came meanwhile.
      for (const a of batch) {
        const byContact = this.pendingAbsorbs.get(a.aor) ?? new Map<string, PendingAbsorb>();
        if (!byContact.has(a.contact)) byContact.set(a.contact, a);
        this.pendingAbsorbs.set(a.aor, byContact);
      }
      this.absorbFlush = setTimeout(() => { this.absorbFlush = undefined; this.flushQuietly(); }, ABSORB_RETRY_MS);
      this.absorbFlush.unref();
      throw err;
    }
  }

  private flushQuietly(): void {
    try { this.flushAbsorbed(); } catch (err) { this.opts.onAbsorbWriteError?.(err); }
  }

  /**
   * Replace the AoR's bindings with exactly `bindings`, in one transaction. `stored` may name the
   * contacts `bindingsOf(aor)` returned earlier in the same synchronous turn (nothing can have
   * written in between), which spares reading them again.
   */
  replaceAor(aor: string, bindings: Binding[], stored?: readonly Binding[]): void {
    this.flushQuietly();
    const stray = bindings.find((b) => b.aor !== aor) ?? stored?.find((b) => b.aor !== aor);
    if (stray) throw new StoreError(`binding of ${stray.aor} given for ${aor}`);
    this.replaceTx(aor, bindings.map(toRow), stored?.map((b) => b.contact));
  }

  /** Bindings still live at `now`, highest q first. */
  liveBindings(aor: string, now: number): Binding[] {
    this.flushQuietly();
    return this.stmt.liveOf.all(aor, now).map(fromRow);
  }

  /** liveBindings as operators see them: in AoR mode each device carries its AoR's upstream registration. */
  liveBindingsView(aor: string, now: number): Binding[] {
    this.flushQuietly();
    return this.stmt.liveViewOf.all(aor, now).map(fromRow);
  }

  /** AoR mode: what midreg holds at the registrar for this AoR, if anything. */
  aorUpstream(aor: string): AorUpstream | undefined {
    const row = this.stmt.aorUpstream.get(aor);
    return row ? fromUpstreamRow(row) : undefined;
  }

  /** AoR mode: the AoR whose upstream Contact carries this key (a request the registrar sent there). */
  aorUpstreamByKey(key: string): AorUpstream | undefined {
    const row = this.stmt.aorUpstreamByKey.get(key);
    return row ? fromUpstreamRow(row) : undefined;
  }

  /**
   * AoR mode: the AoR's devices become exactly `devices` and its upstream registration `upstream`
   * (null: none), in one transaction. `stored` as for replaceAor.
   */
  saveAor(aor: string, devices: Binding[], stored: readonly Binding[] | undefined, upstream: AorUpstream | null): void {
    this.flushQuietly();
    const stray = devices.find((b) => b.aor !== aor) ?? stored?.find((b) => b.aor !== aor) ?? (upstream && upstream.aor !== aor ? upstream : undefined);
    if (stray) throw new StoreError(`binding of ${stray.aor} given for ${aor}`);
    this.saveAorTx(aor, devices.map(toRow), stored?.map((b) => b.contact), upstream ? toUpstreamRow(upstream) : null);
  }

  /** AoR mode: up to `limit` AoRs whose last device is gone while midreg's Contact is still registered upstream. */
  pendingAorDeregistrations(now: number, limit: number): AorUpstream[] {
    this.flushQuietly();
    return this.stmt.pendingAorDeregistrations.all(now, now, limit).map(fromUpstreamRow);
  }

  countPendingAorDeregistrations(now: number): number {
    this.flushQuietly();
    return this.stmt.countPendingAorDeregistrations.get(now, now)?.n ?? 0;
  }

  /** AoR mode: midreg's removal was not accepted; kept (480) until it ends upstream, unless re-registered since `updatedAt`. */
  markAorLapsed(aor: string, updatedAt: number, now: number): void {
    this.stmt.markAorLapsed.run(now, aor, updatedAt);
  }

  /** AoR mode: forget the upstream registration unless it was renewed after `updatedAt`; true when removed. */
  deleteAorUpstreamIfUnchanged(aor: string, updatedAt: number): boolean {
    return this.stmt.deleteAorUpstreamIfUnchanged.run(aor, updatedAt).changes > 0;
  }

  /**
   * Contact mode: bindings with this contact URI that expired for the phone but are still
   * registered upstream (the phone stopped refreshing): requests for them get 480.
   */
  lapsedBindingsByContact(contact: string, now: number): Binding[] {
    this.flushQuietly();
    return this.stmt.lapsedByContact.all(contact, now, now).map(fromRow);
  }

  /** Contact mode: up to `limit` bindings to de-register upstream (expired for the phone, still registered there, not tried yet). */
  pendingDeregistrations(now: number, limit: number): Binding[] {
    this.flushQuietly();
    return this.stmt.pendingDeregistrations.all(now, now, limit).map(fromRow);
  }

  countPendingDeregistrations(now: number): number {
    this.flushQuietly();
    return this.stmt.countPendingDeregistrations.get(now, now)?.n ?? 0;
  }

  /**
   * The registrar did not accept midreg's de-registration of the binding as it was at `updatedAt`:
   * keep it, answered 480, until its upstream expiry. A binding the phone registered again since is left alone.
   */
  markLapsed(aor: string, contact: string, updatedAt: number, now: number): void {
    this.flushQuietly();
    this.stmt.markLapsed.run(now, aor, contact, updatedAt);
  }

  /** Delete the binding unless it was written after `updatedAt` (the phone registered again meanwhile); true when deleted. */
  deleteIfUnchanged(aor: string, contact: string, updatedAt: number): boolean {
    this.flushQuietly();
    return this.stmt.deleteIfUnchanged.run(aor, contact, updatedAt).changes > 0;
  }

  /** A refresh midreg answered itself (contact mode): the phone's new expiry and the CSeq it used. */
  absorbRefresh(aor: string, contact: string, expiresAt: number, cseq: number, now: number): void {
    if (this.readOnlyReason !== undefined || this.db.readonly) throw new StoreError(`database is read-only: ${this.readOnlyReason ?? 'opened read-only'}`);
    const byContact = this.pendingAbsorbs.get(aor) ?? new Map<string, PendingAbsorb>();
    byContact.set(contact, { aor, contact, expiresAt, cseq, updatedAt: now });
    this.pendingAbsorbs.set(aor, byContact);
    if (!this.absorbFlush) {
      this.absorbFlush = setTimeout(() => { this.absorbFlush = undefined; this.flushQuietly(); }, ABSORB_FLUSH_MS);
      this.absorbFlush.unref();
    }
  }

  /** Live bindings whose contact URI is exactly `contact` (a request the platform routed to a registered contact). */
  liveBindingsByContact(contact: string, now: number): Binding[] {
    this.flushQuietly();
    return this.stmt.liveByContact.all(contact, now).map(fromRow);
  }

  /**
   * Every stored binding whose Contact midreg rewrote with `key` (contact insertion), live or
   * expired but not yet swept, newest expiry first: the caller tells "no such binding" (404) from
   * "it expired" (480).
   */
  bindingsByInsertionKey(key: string): Binding[] {
    this.flushQuietly();
    return this.stmt.byInsertionKey.all(key).map(fromRow);
  }

  /** Whether the registrar has accepted `aor` at least once (a 2xx listed a binding for it). */
  isKnownAor(aor: string): boolean {
    return this.stmt.isKnownAor.get(aor) !== undefined;
  }

  /** The open database, for the other stores of lib/store/ that keep their tables in the same file. */
  get database(): Database.Database {
    return this.db;
  }

  /** Whether a live binding of `aor` was registered from this source address and port. */
  isLiveSource(aor: string, address: string, port: number, now: number): boolean {
    this.flushQuietly();
    return this.stmt.liveFromSource.get(aor, address, port, now) !== undefined;
  }

  /**
   * One page of live bindings strictly after `after` in (AoR, contact) order, optionally only of
   * AoRs starting with `aorPrefix`. Paging by (AoR, contact), a page that ends inside an AoR is resumed
   * without repeating or skipping a binding, however many contacts the AoR has.
   */
  listLiveAfter(now: number, opts: { after?: { aor: string; contact: string }; aorPrefix?: string; limit: number }): Binding[] {
    this.flushQuietly();
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
    this.flushQuietly();
    return this.stmt.countLive.get(now) ?? { bindings: 0, aors: 0 };
  }

  /**
   * Delete up to `limit` expired bindings in one transaction and say how many AoRs that left
   * empty, so callers keep their counts without a COUNT over the table. Fewer than `limit`
   * removed means nothing is left to sweep.
   */
  purgeExpiredBatch(now: number, limit: number): { removed: number; emptiedAors: number } {
    this.flushQuietly();
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
    if (this.db.open) this.flushQuietly();
    this.stopCheckpointer();
    if (!this.db.open) return;
    if (!this.db.readonly && this.readOnlyReason === undefined) {
      // A WAL-mode file cannot be opened on read-only media without its -shm file, which a clean
      // close removes; leaving it in rollback mode keeps it readable anywhere (open turns WAL back on).
      try { this.db.pragma('journal_mode = DELETE'); } catch { /* another connection still has it open */ }
    }
    this.db.close();
  }
}
