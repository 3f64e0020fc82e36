// The embedded store for one node: the store interface (store.ts) over the SQLite replica
// (location-store.ts) and its offline table (offline-store.ts). better-sqlite3 stays synchronous
// inside, so every method does its work in the calling turn and hands back a settled Promise;
// updateAor's read, plan and write happen in one turn with nothing in between, the write in one
// transaction, which is what makes it atomic. The CSeq guard lives in memory: one process owns the file.
import type { Binding } from '../registrar/registration.js';
import type { AorUpstream } from '../registrar/aor-throttle.js';
import { RegisterSequence } from '../registrar/register-sequence.js';
import { LocationStore, type OpenOptions } from './location-store.js';
import { OfflineStore } from './offline-store.js';
import type { AorCounts, AorState, AorWrite, BindingStore, NewOfflineMessage, OfflineMessage, OfflineMessageStore, QueueSummary, Store, Writable } from './store.js';

/** A reply can cross an older one only for as long as this (the upstream timeout plus margin). */
export const DEFAULT_CSEQ_RETENTION_MS = 37_000;

class SqliteBindings implements BindingStore {
  constructor(private readonly db: LocationStore, private readonly sequence: RegisterSequence, private readonly clock: () => number) {}

  bindingsOf(aor: string): Promise<Binding[]> { return Promise.resolve(this.db.bindingsOf(aor)); }

  updateAor<T>(aor: string, callId: string, plan: (state: AorState) => AorWrite<T>): Promise<T> {
    try {
      const now = this.clock();
      const bindings = this.db.bindingsOf(aor);
      const upstream = this.db.aorUpstream(aor);
      const decided = plan({ bindings, lastCseq: this.sequence.lastApplied(aor, callId, now), upstream });
      if (decided.bindings !== undefined) {
        // AoR mode writes the devices and the upstream registration in one transaction.
        if (decided.upstream !== undefined) this.db.saveAor(aor, decided.bindings, bindings, decided.upstream);
        else this.db.replaceAor(aor, decided.bindings, bindings);
        if (decided.recordCseq !== undefined) this.sequence.record(aor, callId, decided.recordCseq, now);
      }
      return Promise.resolve(decided.result);
    } catch (err) {
      return Promise.reject(err instanceof Error ? err : new Error(String(err)));
    }
  }

  replaceAor(aor: string, bindings: Binding[]): Promise<void> { return run(() => this.db.replaceAor(aor, bindings)); }
  absorbRefresh(aor: string, contact: string, expiresAt: number, cseq: number, now: number): Promise<void> {
    return run(() => this.db.absorbRefresh(aor, contact, expiresAt, cseq, now));
  }
  liveBindings(aor: string, now: number): Promise<Binding[]> { return run(() => this.db.liveBindings(aor, now)); }
  liveBindingsByContact(contact: string, now: number): Promise<Binding[]> { return run(() => this.db.liveBindingsByContact(contact, now)); }
  lapsedBindingsByContact(contact: string, now: number): Promise<Binding[]> { return run(() => this.db.lapsedBindingsByContact(contact, now)); }
  bindingsByInsertionKey(key: string): Promise<Binding[]> { return run(() => this.db.bindingsByInsertionKey(key)); }
  pendingDeregistrations(now: number, limit: number): Promise<Binding[]> { return run(() => this.db.pendingDeregistrations(now, limit)); }
  countPendingDeregistrations(now: number): Promise<number> { return run(() => this.db.countPendingDeregistrations(now)); }
  markLapsed(aor: string, contact: string, updatedAt: number, now: number): Promise<void> { return run(() => this.db.markLapsed(aor, contact, updatedAt, now)); }
  deleteIfUnchanged(aor: string, contact: string, updatedAt: number): Promise<{ deleted: boolean; emptied: boolean }> {
    return run(() => {
      const deleted = this.db.deleteIfUnchanged(aor, contact, updatedAt);
      return { deleted, emptied: deleted && this.db.bindingsOf(aor).length === 0 };
    });
  }
  liveBindingsView(aor: string, now: number): Promise<Binding[]> { return run(() => this.db.liveBindingsView(aor, now)); }
  aorUpstream(aor: string): Promise<AorUpstream | undefined> { return run(() => this.db.aorUpstream(aor)); }
  aorUpstreamByKey(key: string): Promise<AorUpstream | undefined> { return run(() => this.db.aorUpstreamByKey(key)); }
  pendingAorDeregistrations(now: number, limit: number): Promise<AorUpstream[]> { return run(() => this.db.pendingAorDeregistrations(now, limit)); }
  countPendingAorDeregistrations(now: number): Promise<number> { return run(() => this.db.countPendingAorDeregistrations(now)); }
  markAorLapsed(aor: string, updatedAt: number, now: number): Promise<void> { return run(() => this.db.markAorLapsed(aor, updatedAt, now)); }
  deleteAorUpstreamIfUnchanged(aor: string, updatedAt: number): Promise<boolean> { return run(() => this.db.deleteAorUpstreamIfUnchanged(aor, updatedAt)); }
  isKnownAor(aor: string): Promise<boolean> { return run(() => this.db.isKnownAor(aor)); }
  isLiveSource(aor: string, address: string, port: number, now: number): Promise<boolean> { return run(() => this.db.isLiveSource(aor, address, port, now)); }
  listLiveAfter(now: number, opts: { after?: { aor: string; contact: string }; aorPrefix?: string; limit: number }): Promise<Binding[]> {
    return run(() => this.db.listLiveAfter(now, opts));
  }
  counts(now: number): Promise<AorCounts> { return run(() => this.db.counts(now)); }
  purgeExpiredBatch(now: number, limit: number): Promise<{ removed: number; emptiedAors: number }> { return run(() => this.db.purgeExpiredBatch(now, limit)); }
  countStored(): Promise<AorCounts> { return run(() => this.db.countStored()); }
}

class SqliteOffline implements OfflineMessageStore {
  constructor(private readonly db: OfflineStore) {}
  add(m: NewOfflineMessage): Promise<number> { return run(() => this.db.add(m)); }
  queueOf(recipient: string): Promise<{ messages: number; bytes: number }> { return run(() => this.db.queueOf(recipient)); }
  totals(): Promise<{ messages: number; bytes: number }> { return run(() => ({ ...this.db.totals() })); }
  nextOf(recipient: string, now: number): Promise<OfflineMessage | undefined> { return run(() => this.db.nextOf(recipient, now)); }
  recipientsDue(now: number): Promise<string[]> { return run(() => this.db.recipientsDue(now)); }
  recipients(): Promise<string[]> { return run(() => this.db.recipients()); }
  delivered(message: OfflineMessage): Promise<void> { return run(() => this.db.delivered(message)); }
  postpone(message: OfflineMessage, nextAttemptAt: number): Promise<void> { return run(() => this.db.postpone(message.id, nextAttemptAt)); }
  takeExpired(now: number, limit: number): Promise<OfflineMessage[]> { return run(() => this.db.takeExpired(now, limit)); }
  summary(): Promise<QueueSummary[]> { return run(() => this.db.summary()); }
  listOf(recipient: string): Promise<OfflineMessage[]> { return run(() => this.db.listOf(recipient)); }
  purge(recipient: string): Promise<number> { return run(() => this.db.purge(recipient)); }
}

/** Run synchronous work now; its result or its exception as a settled Promise. */
function run<T>(work: () => T): Promise<T> {
  try {
    return Promise.resolve(work());
  } catch (err) {
    return Promise.reject(err instanceof Error ? err : new Error(String(err)));
  }
}

export interface SqliteStoreOptions extends OpenOptions {
  /** How long an applied CSeq is remembered (the upstream timeout plus margin). */
  cseqRetentionMs?: number;
  clock?: () => number;
}

export class SqliteStore implements Store {
  readonly kind = 'sqlite' as const;
  readonly bindings: BindingStore;
  readonly offline: OfflineMessageStore;
  /** The SQLite replica itself, for what only SQLite has (migrations, schema version, checkpoints). */
  readonly replica: LocationStore;

  constructor(readonly file: string, opts: SqliteStoreOptions = {}) {
    this.replica = new LocationStore(file, opts);
    this.bindings = new SqliteBindings(this.replica, new RegisterSequence(opts.cseqRetentionMs ?? DEFAULT_CSEQ_RETENTION_MS), opts.clock ?? Date.now);
    this.offline = new SqliteOffline(new OfflineStore(this.replica));
  }

  get describe(): string { return this.file; }
  get unavailableReason(): string | undefined {
    return this.replica.readOnlyReason === undefined ? undefined : `database read-only: ${this.replica.readOnlyReason}`;
  }
  reopenWritable(): Promise<boolean> { return run(() => this.replica.reopenWritable()); }
  checkWritable(): Promise<Writable> { return run(() => this.replica.checkWritable()); }
  close(): Promise<void> { return run(() => this.replica.close()); }
}
