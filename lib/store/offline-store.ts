// Offline messages in the replica's SQLite file (table offline_message, sql/005): written before
// the 202 goes out, so a crash loses nothing midreg acknowledged; removed only after the
// recipient's 2xx or when the time to live ends. Every statement prepared once per connection.
import type Database from 'better-sqlite3';
import type { LocationStore } from './location-store.js';

import type { NewOfflineMessage, OfflineMessage, QueueSummary } from './store.js';

export type { NewOfflineMessage, OfflineMessage, QueueSummary };

interface Row {
  id: number; recipient: string; sender: string; from_header: string; to_header: string; content_type: string; body: string;
  date: string; received_at: number; expires_at: number; attempts: number; next_attempt_at: number;
}

const fromRow = (r: Row): OfflineMessage => ({
  id: r.id, recipient: r.recipient, sender: r.sender, fromHeader: r.from_header, toHeader: r.to_header, contentType: r.content_type,
  body: r.body, date: r.date, receivedAt: r.received_at, expiresAt: r.expires_at, attempts: r.attempts, nextAttemptAt: r.next_attempt_at,
});

/** Bytes as SQLite's length(CAST(body AS BLOB)) counts them. */
const bodyBytes = (body: string): number => Buffer.byteLength(body, 'utf8');


function prepare(db: Database.Database) {
  return {
    insert: db.prepare<[string, string, string, string, string, string, string, number, number, number]>(`INSERT INTO offline_message
      (recipient, sender, from_header, to_header, content_type, body, date, received_at, expires_at, next_attempt_at)
      VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`),
    queueOf: db.prepare<[string], { messages: number; bytes: number }>(
      'SELECT count(*) AS messages, coalesce(sum(length(CAST(body AS BLOB))), 0) AS bytes FROM offline_message WHERE recipient = ?'),
    totalBytes: db.prepare<[], { bytes: number; messages: number }>(
      'SELECT coalesce(sum(length(CAST(body AS BLOB))), 0) AS bytes, count(*) AS messages FROM offline_message'),
    pendingOf: db.prepare<[string, number], Row>('SELECT * FROM offline_message WHERE recipient = ? AND expires_at > ? ORDER BY id'),
    // One row: delivering a user's queue must not read the whole queue for each message.
    nextOf: db.prepare<[string, number], Row>('SELECT * FROM offline_message WHERE recipient = ? AND expires_at > ? ORDER BY id LIMIT 1'),
    // Only recipients with a live binding: the others wait for their registration, at no cost per tick.
    recipientsDue: db.prepare<[number, number, number], { recipient: string }>(`SELECT DISTINCT m.recipient FROM offline_message m
      WHERE m.next_attempt_at <= ? AND m.expires_at > ? AND EXISTS (SELECT 1 FROM binding b WHERE b.aor = m.recipient AND b.expires_at > ?)`),
    recipients: db.prepare<[], { recipient: string }>('SELECT DISTINCT recipient FROM offline_message'),
    remove: db.prepare<[number]>('DELETE FROM offline_message WHERE id = ?'),
    postpone: db.prepare<[number, number]>('UPDATE offline_message SET attempts = attempts + 1, next_attempt_at = ? WHERE id = ?'),
    expired: db.prepare<[number, number], Row>('SELECT * FROM offline_message WHERE expires_at <= ? ORDER BY id LIMIT ?'),
    summary: db.prepare<[], QueueSummary>(`SELECT recipient, count(*) AS messages, sum(length(CAST(body AS BLOB))) AS bytes,
      min(received_at) AS oldestAt FROM offline_message GROUP BY recipient ORDER BY recipient`),
    purge: db.prepare<[string]>('DELETE FROM offline_message WHERE recipient = ?'),
  };
}

export class OfflineStore {
  private db: Database.Database | undefined;
  private stmt!: ReturnType<typeof prepare>;
  /** Kept as rows change, so admitting a message never sums the whole table. */
  private total: { messages: number; bytes: number } | undefined;

  constructor(private readonly replica: LocationStore) {}

  /** Statements for the replica's current connection (it reopens after a read-only fallback). */
  private get s(): ReturnType<typeof prepare> {
    const db = this.replica.database;
    if (db !== this.db) {
      this.stmt = prepare(db);
      this.db = db;
    }
    return this.stmt;
  }

  /** Store one message; it is on disk when this returns (the WAL commit of one statement). */
  add(m: NewOfflineMessage): number {
    const totals = this.totals();
    const info = this.s.insert.run(m.recipient, m.sender, m.fromHeader, m.toHeader, m.contentType, m.body, m.date, m.receivedAt, m.expiresAt, m.receivedAt);
    totals.messages += 1;
    totals.bytes += bodyBytes(m.body);
    return Number(info.lastInsertRowid);
  }

  queueOf(recipient: string): { messages: number; bytes: number } {
    return this.s.queueOf.get(recipient) ?? { messages: 0, bytes: 0 };
  }

  /** Messages and body bytes stored for all recipients. */
  totals(): { messages: number; bytes: number } {
    this.total ??= { ...(this.s.totalBytes.get() ?? { messages: 0, bytes: 0 }) };
    return this.total;
  }

  private forget(count: number, bytes: number): void {
    const totals = this.totals();
    totals.messages = Math.max(0, totals.messages - count);
    totals.bytes = Math.max(0, totals.bytes - bytes);
  }

  /** The recipient's messages still within their time to live, oldest first. */
  pendingOf(recipient: string, now: number): OfflineMessage[] {
    return this.s.pendingOf.all(recipient, now).map(fromRow);
  }

  /** The recipient's oldest message still within its time to live. */
  nextOf(recipient: string, now: number): OfflineMessage | undefined {
    const row = this.s.nextOf.get(recipient, now);
    return row ? fromRow(row) : undefined;
  }

  /** Recipients with a live binding and a message whose next attempt is due. */
  recipientsDue(now: number): string[] {
    return this.s.recipientsDue.all(now, now, now).map((r) => r.recipient);
  }

  recipients(): string[] {
    return this.s.recipients.all().map((r) => r.recipient);
  }

  delivered(message: OfflineMessage): void {
    if (this.s.remove.run(message.id).changes > 0) this.forget(1, bodyBytes(message.body));
  }

  postpone(id: number, nextAttemptAt: number): void {
    this.s.postpone.run(nextAttemptAt, id);
  }

  /** Remove up to `limit` messages whose time to live ended; returns them (for the log). */
  takeExpired(now: number, limit: number): OfflineMessage[] {
    const rows = this.s.expired.all(now, limit).map(fromRow);
    for (const row of rows) if (this.s.remove.run(row.id).changes > 0) this.forget(1, bodyBytes(row.body));
    return rows;
  }

  summary(): QueueSummary[] {
    return this.s.summary.all();
  }

  /** Messages waiting for one recipient, oldest first, expired ones included until swept. */
  listOf(recipient: string): OfflineMessage[] {
    return this.s.pendingOf.all(recipient, 0).map(fromRow);
  }

  /** Drop every message waiting for `recipient`; returns how many. */
  purge(recipient: string): number {
    const { bytes } = this.queueOf(recipient);
    const removed = this.s.purge.run(recipient).changes;
    this.forget(removed, bytes);
    return removed;
  }
}
