// The store interface every backend implements: SQLite (one node, lib/store/sqlite-store.ts) and
// Redis (several nodes sharing one replica, lib/store/redis-store.ts). Every method returns a
// Promise so a networked store fits; the SQLite one answers synchronously inside.
//
// Atomicity: a REGISTER reply's read-plan-write of its AoR is ONE store operation, updateAor(),
// never bindingsOf() followed by replaceAor(). Once the store is asynchronous two replies for one
// AoR could otherwise interleave between the read and the write (the later write built on a stale
// read and undoing the earlier one). SQLite runs the planner inside one synchronous turn (nothing
// else runs on the thread, and the write is one transaction); Redis reads the AoR with its version,
// plans, and commits with a Lua compare-and-set that fails if anyone wrote the AoR meanwhile, then
// re-reads and plans again (optimistic, bounded retries). The planner is a pure function, so
// running it twice is harmless. A per-AoR queue inside each node keeps its own replies from
// colliding at all; the compare-and-set only ever retries across nodes.
import type { Binding } from '../registrar/registration.js';
import type { AorUpstream } from '../registrar/aor-throttle.js';

/** What the planner sees of one AoR. */
export interface AorState {
  /** Every stored binding of the AoR, live or not (the planner must not change them). */
  bindings: Binding[];
  /**
   * The highest CSeq of this REGISTER's Call-ID already applied for the AoR while a crossing
   * reply can still arrive (RFC 3261 §10.3 step 7, lib/registrar/register-sequence.ts). Shared
   * by every node of a Redis store.
   */
  lastCseq: number | undefined;
  /** AoR mode (MIDREG_MODE=aor): what midreg holds at the registrar for the AoR; undefined when nothing. */
  upstream: AorUpstream | undefined;
}

/** The planner's decision: the AoR's new binding set (or nothing to write) and the value to hand back. */
export interface AorWrite<T> {
  /** Exactly the AoR's bindings after the write; undefined writes nothing. */
  bindings?: Binding[] | undefined;
  /** Remember this CSeq as applied for the Call-ID (only with a write). */
  recordCseq?: number | undefined;
  /** AoR mode: the AoR's upstream registration after the write (null: none); undefined leaves it as it is. */
  upstream?: AorUpstream | null | undefined;
  result: T;
}

export interface AorCounts { bindings: number; aors: number }

export type Writable = { ok: true } | { ok: false; reason: string };

export interface BindingStore {
  /** Every stored binding of the AoR, live or not. */
  bindingsOf(aor: string): Promise<Binding[]>;
  /**
   * Read the AoR (and the Call-ID's last applied CSeq), let `plan` decide, write what it returned:
   * atomically with respect to every other writer of the AoR. `plan` is pure and may run more
   * than once (a Redis conflict); only the last run's result is returned.
   */
  updateAor<T>(aor: string, callId: string, plan: (state: AorState) => AorWrite<T>): Promise<T>;
  /** Replace the AoR's bindings with exactly `bindings` (tools and tests; the relay uses updateAor). */
  replaceAor(aor: string, bindings: Binding[]): Promise<void>;
  /** A refresh midreg answered itself (contact mode): the phone's new expiry and the CSeq it used. No-op if the binding is gone. */
  absorbRefresh(aor: string, contact: string, expiresAt: number, cseq: number, now: number): Promise<void>;
  /** Bindings still live at `now`, highest q first. */
  liveBindings(aor: string, now: number): Promise<Binding[]>;
  /** Live bindings whose contact URI is exactly `contact`. */
  liveBindingsByContact(contact: string, now: number): Promise<Binding[]>;
  /** Contact mode: bindings of this contact expired for the phone but still registered upstream. */
  lapsedBindingsByContact(contact: string, now: number): Promise<Binding[]>;
  /** Every stored binding whose Contact midreg rewrote with `key`, newest expiry first. */
  bindingsByInsertionKey(key: string): Promise<Binding[]>;
  /** Contact mode: up to `limit` bindings to de-register upstream. */
  pendingDeregistrations(now: number, limit: number): Promise<Binding[]>;
  countPendingDeregistrations(now: number): Promise<number>;
  markLapsed(aor: string, contact: string, updatedAt: number, now: number): Promise<void>;
  /** Delete the binding unless written after `updatedAt`; `emptied` when the AoR has no binding left. */
  deleteIfUnchanged(aor: string, contact: string, updatedAt: number): Promise<{ deleted: boolean; emptied: boolean }>;
  /** liveBindings as operators see them: in AoR mode each device with its AoR's upstream expiry, Contact and lapse. */
  liveBindingsView(aor: string, now: number): Promise<Binding[]>;
  /** AoR mode: what midreg holds at the registrar for the AoR, if anything. */
  aorUpstream(aor: string): Promise<AorUpstream | undefined>;
  /** AoR mode: the AoR whose upstream Contact carries this key. */
  aorUpstreamByKey(key: string): Promise<AorUpstream | undefined>;
  /** AoR mode: up to `limit` AoRs whose last device is gone while midreg's Contact is still registered upstream. */
  pendingAorDeregistrations(now: number, limit: number): Promise<AorUpstream[]>;
  countPendingAorDeregistrations(now: number): Promise<number>;
  /** AoR mode: midreg's removal was not accepted; kept (480) until it ends upstream, unless renewed since `updatedAt`. */
  markAorLapsed(aor: string, updatedAt: number, now: number): Promise<void>;
  /** AoR mode: forget the upstream registration unless renewed after `updatedAt`; true when removed. */
  deleteAorUpstreamIfUnchanged(aor: string, updatedAt: number): Promise<boolean>;
  /** Whether the registrar has accepted `aor` at least once. */
  isKnownAor(aor: string): Promise<boolean>;
  /** Whether a live binding of `aor` was registered from this source address and port. */
  isLiveSource(aor: string, address: string, port: number, now: number): Promise<boolean>;
  /** One page of live bindings strictly after `after` in (AoR, contact) order. */
  listLiveAfter(now: number, opts: { after?: { aor: string; contact: string }; aorPrefix?: string; limit: number }): Promise<Binding[]>;
  counts(now: number): Promise<AorCounts>;
  /** Delete up to `limit` expired bindings; how many, and how many AoRs that left empty. */
  purgeExpiredBatch(now: number, limit: number): Promise<{ removed: number; emptiedAors: number }>;
  /** Every stored binding and AoR, expired or not (start-up). */
  countStored(): Promise<AorCounts>;
}

/** One stored MESSAGE, as midreg received it. `id` is unique per store. */
export interface OfflineMessage {
  id: number;
  recipient: string;
  sender: string;
  fromHeader: string;
  toHeader: string;
  contentType: string;
  body: string;
  /** The Date header it arrived with, or the one midreg added. */
  date: string;
  receivedAt: number;
  expiresAt: number;
  attempts: number;
  nextAttemptAt: number;
}

export type NewOfflineMessage = Omit<OfflineMessage, 'id' | 'attempts' | 'nextAttemptAt'>;

/** What one recipient has waiting. */
export interface QueueSummary { recipient: string; messages: number; bytes: number; oldestAt: number }

export interface OfflineMessageStore {
  /** Store one message; durable when the promise resolves. Returns its id. */
  add(m: NewOfflineMessage): Promise<number>;
  queueOf(recipient: string): Promise<{ messages: number; bytes: number }>;
  /** Messages and body bytes stored for all recipients. */
  totals(): Promise<{ messages: number; bytes: number }>;
  /** The recipient's oldest message still within its time to live. */
  nextOf(recipient: string, now: number): Promise<OfflineMessage | undefined>;
  /** Recipients with a live binding and a message whose next attempt is due. */
  recipientsDue(now: number): Promise<string[]>;
  recipients(): Promise<string[]>;
  delivered(message: OfflineMessage): Promise<void>;
  /** A delivery attempt failed: one more attempt counted, the next one not before `nextAttemptAt`. */
  postpone(message: OfflineMessage, nextAttemptAt: number): Promise<void>;
  /** Remove up to `limit` messages whose time to live ended; returns them (for the log). */
  takeExpired(now: number, limit: number): Promise<OfflineMessage[]>;
  summary(): Promise<QueueSummary[]>;
  /** Messages waiting for one recipient, oldest first, expired ones included until swept. */
  listOf(recipient: string): Promise<OfflineMessage[]>;
  /** Drop every message waiting for `recipient`; returns how many. */
  purge(recipient: string): Promise<number>;
}

/** One backend: bindings (with throttling state and the CSeq guard) and offline messages. */
export interface Store {
  readonly kind: 'sqlite' | 'redis';
  /** Where it is, for logs (file path, or Redis address without credentials). */
  readonly describe: string;
  readonly bindings: BindingStore;
  readonly offline: OfflineMessageStore;
  /** Why writes cannot be done right now (read-only file, Redis unreachable); undefined when they can. */
  readonly unavailableReason: string | undefined;
  /** Try to become writable again (SQLite reopens the file); true when writable. */
  reopenWritable(): Promise<boolean>;
  /** Whether a write can be done right now (file writable, Redis answering). */
  checkWritable(): Promise<Writable>;
  close(): Promise<void>;
}
