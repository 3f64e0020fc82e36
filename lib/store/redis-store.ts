// The store for several nodes: the same interface as SQLite (store.ts) in Redis, standalone,
// Cluster or Sentinel, through ioredis (one client for all three, Lua through defineCommand,
// auto-pipelining so the commands of one operation leave in one write).
//
// Keys. Everything of one AoR shares the hash tag {aor}, so it sits in one Cluster slot and one
// Lua script may touch all of it:
//   mr:{aor}:b   HASH contact → binding (JSON), and `#v` → version, bumped by every write
//   mr:{aor}:q   HASH Call-ID → highest CSeq applied (the CSeq guard), PEXPIRE = reply window
//   mr:{aor}:k   STRING: the registrar accepted the AoR once (offline messages may wait for it)
//   mr:{aor}:m   HASH message id → offline message (JSON)
//   mr:{aor}:u   STRING AoR mode: midreg's registration of the AoR at the registrar (JSON), PEXPIREAT its end
// Indexes, each its own key (its own slot), written after the AoR's script, never inside it:
//   mr:aors      ZSET (score 0) of AoRs with bindings, for paging in (AoR, contact) order
//   mr:del       ZSET AoR → when its next binding may be deleted (expiry sweep)
//   mr:dereg     ZSET AoR → when its next binding needs de-registering upstream (contact mode)
//   mr:ct:{c}    SET of AoRs with contact c (requests the platform sends to a registered contact)
//   mr:ik:{key}  STRING AoR of a contact-insertion key
//   mr:uk:{key}  STRING AoR mode: AoR of the ;ctid= key of midreg's upstream Contact
//   mr:aordereg  ZSET AoR mode: AoR → when its last device ends (its upstream Contact then needs removing)
//   mr:cnt       HASH bindings, aors (counted from each write's difference)
//   mr:om:id     STRING message id counter;  mr:om:due, mr:om:exp  ZSET recipient → next attempt / expiry
//   mr:om:tot    HASH messages, bytes
//   mr:node:<uri> STRING heartbeat of a node (PX TTL);  mr:nodes  SET of node URIs ever seen
// Redis TTLs: the AoR's hash expires a grace period after its last binding could be deleted, the
// CSeq guard after the reply window, index entries of a contact or key with their AoR. So an AoR
// nobody sweeps still goes away; an index entry left behind by a crash between the AoR's write and
// the index update is dropped when a lookup or the sweep finds it stale.
//
// Atomicity: updateAor reads the AoR (HGETALL + HGET of the guard, one round trip), runs the pure
// planner, and commits with a Lua compare-and-set on `#v` that writes only the changed bindings;
// on a conflict (another node wrote the AoR meanwhile) it reads and plans again. Within one node
// operations on one AoR are queued, so conflicts only ever come from other nodes.
import { Cluster, Redis, type ClusterOptions, type RedisOptions } from 'ioredis';
import type { AorUpstream } from '../registrar/aor-throttle.js';
import type { Binding } from '../registrar/registration.js';
import type { NodeRegistry } from '../cluster/node-directory.js';
import type { StoreTarget } from './store-url.js';
import type {
  AorCounts, AorState, AorWrite, BindingStore, NewOfflineMessage, OfflineMessage, OfflineMessageStore, QueueSummary, Store, Writable,
} from './store.js';

type Client = Redis | Cluster;

/** An AoR's hash outlives its last binding's deletion time by this much (expired-but-unswept lookups, 480 vs 404). */
export const AOR_GRACE_MS = 600_000;
/** A compare-and-set lost to another node this many times in a row fails the write. */
const MAX_CAS_ATTEMPTS = 16;
/** How long one command may take before the operation fails instead of hanging SIP. */
export const COMMAND_TIMEOUT_MS = 1000;

const VERSION_FIELD = '#v';

const WRITE_LUA = `
local v = redis.call('HGET', KEYS[1], '#v') or '0'
if v ~= ARGV[1] then return -1 end
local ndel = tonumber(ARGV[9])
local i = 10
for j = 1, ndel do redis.call('HDEL', KEYS[1], ARGV[i]); i = i + 1 end
while i < #ARGV do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]); i = i + 2 end
local nv = tonumber(v) + 1
local fields = redis.call('HLEN', KEYS[1]) - redis.call('HEXISTS', KEYS[1], '#v')
if fields == 0 then
  redis.call('DEL', KEYS[1])
else
  redis.call('HSET', KEYS[1], '#v', nv)
  redis.call('PEXPIREAT', KEYS[1], ARGV[2])
end
if ARGV[3] ~= '' then
  local cur = tonumber(redis.call('HGET', KEYS[2], ARGV[3]) or '-1')
  if tonumber(ARGV[4]) > cur then redis.call('HSET', KEYS[2], ARGV[3], ARGV[4]) end
  redis.call('PEXPIRE', KEYS[2], ARGV[5])
end
if ARGV[6] ~= '' then redis.call('SET', KEYS[3], ARGV[6], 'NX') end
if ARGV[7] == '-' then
  redis.call('DEL', KEYS[4])
elseif ARGV[7] ~= '' then
  redis.call('SET', KEYS[4], ARGV[7], 'PXAT', ARGV[8])
end
return nv
`;

interface Scripts {
  mrWrite(b: string, q: string, k: string, u: string, expected: string, pexpireAt: string, callId: string, cseq: string, retention: string, knownAt: string,
    upstream: string, upstreamExpireAt: string, ndel: string, ...rest: string[]): Promise<number>;
}

const keys = {
  bindings: (aor: string) => `mr:{${aor}}:b`,
  cseq: (aor: string) => `mr:{${aor}}:q`,
  known: (aor: string) => `mr:{${aor}}:k`,
  messages: (aor: string) => `mr:{${aor}}:m`,
  upstream: (aor: string) => `mr:{${aor}}:u`,
  upstreamKey: (k: string) => `mr:uk:{${k}}`,
  aorDeregistrations: 'mr:aordereg',
  aors: 'mr:aors',
  deletions: 'mr:del',
  deregistrations: 'mr:dereg',
  contact: (c: string) => `mr:ct:{${c}}`,
  insertion: (k: string) => `mr:ik:{${k}}`,
  counts: 'mr:cnt',
  messageId: 'mr:om:id',
  messagesDue: 'mr:om:due',
  messagesExpiring: 'mr:om:exp',
  messageTotals: 'mr:om:tot',
  node: (uri: string) => `mr:node:${uri}`,
  nodes: 'mr:nodes',
};

/** When a binding may be deleted: its expiry, or its upstream registration's end if later (contact mode). */
function deletionAt(b: Binding): number {
  return Math.max(b.expiresAt, b.upstreamExpiresAt ?? 0);
}
/** Contact mode: when it needs de-registering upstream; undefined when it never will. */
function deregistrationAt(b: Binding): number | undefined {
  return b.upstreamExpiresAt !== null && b.upstreamExpiresAt > b.expiresAt && b.lapsedAt === null ? b.expiresAt : undefined;
}

/** UTF-8 byte order (Redis' and SQLite's), not UTF-16 code unit order. */
function byteCompare(a: string, b: string): number {
  return Buffer.compare(Buffer.from(a, 'utf8'), Buffer.from(b, 'utf8'));
}

function parseBindings(hash: Record<string, string>): { version: string; bindings: Binding[] } {
  const bindings: Binding[] = [];
  for (const [field, value] of Object.entries(hash)) {
    if (field === VERSION_FIELD) continue;
    bindings.push(JSON.parse(value) as Binding);
  }
  bindings.sort((x, y) => byteCompare(x.contact, y.contact));
  return { version: hash[VERSION_FIELD] ?? '0', bindings };
}

const byPreference = (x: Binding, y: Binding): number => (y.q ?? -1) - (x.q ?? -1) || y.updatedAt - x.updatedAt;

function parseUpstream(json: string | null): AorUpstream | undefined {
  return json === null ? undefined : JSON.parse(json) as AorUpstream;
}

/** AoR mode: when the AoR's last device ends (0 with none), after which its upstream Contact is removed. */
function lastDeviceEnd(devices: readonly Binding[]): number {
  return devices.reduce((max, b) => Math.max(max, b.expiresAt), 0);
}

/** A device as operators see it in AoR mode: with its AoR's upstream Contact, expiry and lapse (as SQLite's view does). */
function withUpstream(b: Binding, u: AorUpstream): Binding {
  return {
    ...b,
    insertion: b.insertion ?? { contact: u.contact, key: u.key },
    upstreamExpiresAt: b.upstreamExpiresAt ?? u.expiresAt,
    lapsedAt: b.lapsedAt ?? u.lapsedAt,
  };
}

export class RedisUnavailableError extends Error {}

function clientFor(target: Extract<StoreTarget, { kind: 'redis' }>): Client {
  const common: RedisOptions = {
    // A Redis that is down or hung fails the operation at once or within a second: SIP never
    // waits on it (REGISTER is still relayed, MESSAGE answered 503). Nothing queues while offline.
    enableOfflineQueue: false,
    commandTimeout: COMMAND_TIMEOUT_MS,
    maxRetriesPerRequest: 0,
    enableAutoPipelining: true,
    lazyConnect: true,
    retryStrategy: (times) => Math.min(100 * times, 2000),
    ...(target.username !== undefined ? { username: target.username } : {}),
    ...(target.password !== undefined ? { password: target.password } : {}),
    ...(target.tls ? { tls: {} } : {}),
  };
  if (target.mode === 'standalone') return new Redis({ ...common, host: target.node.host, port: target.node.port, db: target.db });
  if (target.mode === 'sentinel') {
    return new Redis({ ...common, sentinels: target.sentinels, name: target.name, db: target.db });
  }
  const options: ClusterOptions = {
    enableOfflineQueue: false,
    enableAutoPipelining: true,
    lazyConnect: true,
    clusterRetryStrategy: (times) => Math.min(100 * times, 2000),
    redisOptions: { ...common, enableAutoPipelining: false },
  };
  return new Cluster(target.nodes, options);
}

/** Run operations on one AoR one after another (within this node). */
class AorQueue {
  private readonly tails = new Map<string, Promise<unknown>>();
  run<T>(aor: string, op: () => Promise<T>): Promise<T> {
    const previous = this.tails.get(aor) ?? Promise.resolve();
    const next = previous.then(op, op);
    const tail = next.catch(() => undefined);
    this.tails.set(aor, tail);
    void tail.then(() => { if (this.tails.get(aor) === tail) this.tails.delete(aor); });
    return next;
  }
}

class RedisBindings implements BindingStore {
  private readonly queue = new AorQueue();

  constructor(private readonly redis: Client, private readonly scripts: Scripts, private readonly cseqRetentionMs: number, private readonly clock: () => number) {}

  async bindingsOf(aor: string): Promise<Binding[]> {
    return parseBindings(await this.redis.hgetall(keys.bindings(aor))).bindings;
  }

  updateAor<T>(aor: string, callId: string, plan: (state: AorState) => AorWrite<T>): Promise<T> {
    return this.queue.run(aor, async () => {
      for (let attempt = 0; attempt < MAX_CAS_ATTEMPTS; attempt++) {
        const [hash, last, upstreamJson] = await Promise.all([
          this.redis.hgetall(keys.bindings(aor)), this.redis.hget(keys.cseq(aor), callId), this.redis.get(keys.upstream(aor)),
        ]);
        const { version, bindings } = parseBindings(hash);
        const upstream = parseUpstream(upstreamJson);
        const decided = plan({ bindings, lastCseq: last === null ? undefined : Number(last), upstream });
        if (decided.bindings === undefined) return decided.result;
        const record = decided.recordCseq !== undefined ? { callId, cseq: decided.recordCseq } : undefined;
        const committed = await this.commit(aor, version, bindings, decided.bindings, record, { before: upstream, after: decided.upstream });
        if (committed) return decided.result;
      }
      throw new Error(`AoR ${aor} kept changing under ${MAX_CAS_ATTEMPTS} attempts to write it`);
    });
  }

  /** Read-modify-write of one AoR without a Call-ID (tools, the sweep, de-registration). */
  private modify<T>(aor: string, change: (bindings: Binding[]) => { bindings?: Binding[]; result: T }): Promise<T> {
    return this.updateAor(aor, '', (state) => change(state.bindings));
  }

  /** AoR mode: read-modify-write of the AoR's upstream registration, atomically with its devices (which stay as they are). */
  private modifyUpstream<T>(aor: string, change: (upstream: AorUpstream | undefined) => { upstream?: AorUpstream | null; result: T }): Promise<T> {
    return this.updateAor(aor, '', (state) => {
      const decided = change(state.upstream);
      return decided.upstream === undefined ? { result: decided.result } : { bindings: state.bindings, upstream: decided.upstream, result: decided.result };
    });
  }

  /** Compare-and-set of the AoR to `after`; false when another writer got there first. */
  private async commit(
    aor: string, version: string, before: Binding[], after: Binding[], record: { callId: string; cseq: number } | undefined,
    upstream: { before: AorUpstream | undefined; after: AorUpstream | null | undefined },
  ): Promise<boolean> {
    const stray = after.find((b) => b.aor !== aor);
    if (stray) throw new Error(`binding of ${stray.aor} given for ${aor}`);
    const beforeByContact = new Map(before.map((b) => [b.contact, b]));
    const afterContacts = new Set(after.map((b) => b.contact));
    const removed = before.filter((b) => !afterContacts.has(b.contact));
    const upserts: string[] = [];
    for (const b of after) {
      const json = JSON.stringify(b);
      const old = beforeByContact.get(b.contact);
      if (old === undefined || JSON.stringify(old) !== json) upserts.push(b.contact, json);
    }
    const lastDeletion = after.reduce((max, b) => Math.max(max, deletionAt(b)), 0);
    const knownAt = before.length === 0 && after[0] ? String(after[0].registeredAt) : '';
    if (upstream.after && upstream.after.aor !== aor) throw new Error(`upstream registration of ${upstream.after.aor} given for ${aor}`);
    const upstreamArg = upstream.after === undefined ? '' : upstream.after === null ? '-' : JSON.stringify(upstream.after);
    const result = await this.scripts.mrWrite(
      keys.bindings(aor), keys.cseq(aor), keys.known(aor), keys.upstream(aor), version, String(Math.max(lastDeletion + AOR_GRACE_MS, this.clock() + AOR_GRACE_MS)),
      record?.callId ?? '', String(record?.cseq ?? 0), String(this.cseqRetentionMs), knownAt,
      upstreamArg, String(upstream.after ? upstream.after.expiresAt : 0), String(removed.length), ...removed.map((b) => b.contact), ...upserts,
    );
    if (result < 0) return false;
    await Promise.all([this.reindex(aor, before, after, lastDeletion), this.reindexUpstream(aor, after, upstream.before, upstream.after)]);
    return true;
  }

  /** The indexes after a committed write (auto-pipelined: one round trip per Redis node). */
  private async reindex(aor: string, before: Binding[], after: Binding[], lastDeletion: number): Promise<void> {
    const r = this.redis;
    const ops: Array<Promise<unknown>> = [];
    const expireAt = lastDeletion + AOR_GRACE_MS;
    if (after.length > 0) {
      ops.push(r.zadd(keys.aors, 0, aor));
      ops.push(r.zadd(keys.deletions, Math.min(...after.map(deletionAt)), aor));
      const dereg = after.map(deregistrationAt).filter((t): t is number => t !== undefined);
      ops.push(dereg.length > 0 ? r.zadd(keys.deregistrations, Math.min(...dereg), aor) : r.zrem(keys.deregistrations, aor));
    } else if (before.length > 0) {
      ops.push(r.zrem(keys.aors, aor), r.zrem(keys.deletions, aor), r.zrem(keys.deregistrations, aor));
    }
    const kept = new Set(after.map((b) => b.contact));
    for (const b of before) if (!kept.has(b.contact)) ops.push(r.srem(keys.contact(b.contact), aor));
    const beforeContacts = new Set(before.map((b) => b.contact));
    for (const b of after) {
      if (!beforeContacts.has(b.contact)) ops.push(r.sadd(keys.contact(b.contact), aor));
      ops.push(r.pexpireat(keys.contact(b.contact), expireAt));
    }
    const keysAfter = new Set(after.flatMap((b) => (b.insertion ? [b.insertion.key] : [])));
    for (const b of before) if (b.insertion && !keysAfter.has(b.insertion.key)) ops.push(r.del(keys.insertion(b.insertion.key)));
    for (const key of keysAfter) ops.push(r.set(keys.insertion(key), aor, 'PXAT', expireAt));
    const dBindings = after.length - before.length;
    const dAors = (after.length > 0 ? 1 : 0) - (before.length > 0 ? 1 : 0);
    if (dBindings !== 0) ops.push(r.hincrby(keys.counts, 'bindings', dBindings));
    if (dAors !== 0) ops.push(r.hincrby(keys.counts, 'aors', dAors));
    await Promise.all(ops);
  }

  /**
   * AoR mode indexes: the upstream Contact's key, and when the AoR's last device ends (its
   * upstream Contact is then removed: pendingAorDeregistrations). Nothing for the other modes.
   */
  private async reindexUpstream(aor: string, after: Binding[], before: AorUpstream | undefined, written: AorUpstream | null | undefined): Promise<void> {
    const current = written === undefined ? before : written ?? undefined;
    if (current === undefined && before === undefined) return;
    const r = this.redis;
    const ops: Array<Promise<unknown>> = [];
    if (written === null && before) ops.push(r.del(keys.upstreamKey(before.key)));
    if (written) ops.push(r.set(keys.upstreamKey(written.key), aor, 'PXAT', written.expiresAt));
    if (current && current.lapsedAt === null) ops.push(r.zadd(keys.aorDeregistrations, lastDeviceEnd(after), aor));
    else ops.push(r.zrem(keys.aorDeregistrations, aor));
    await Promise.all(ops);
  }

  async replaceAor(aor: string, bindings: Binding[]): Promise<void> {
    await this.modify(aor, () => ({ bindings, result: undefined }));
  }

  async absorbRefresh(aor: string, contact: string, expiresAt: number, cseq: number, now: number): Promise<void> {
    await this.modify(aor, (bindings) => {
      if (!bindings.some((b) => b.contact === contact)) return { result: undefined };
      return { bindings: bindings.map((b) => (b.contact === contact ? { ...b, expiresAt, cseq, updatedAt: now } : b)), result: undefined };
    });
  }

  async liveBindings(aor: string, now: number): Promise<Binding[]> {
    return (await this.bindingsOf(aor)).filter((b) => b.expiresAt > now).sort(byPreference);
  }

  /** Bindings with this contact, through the contact index (stale entries are skipped). */
  private async byContact(contact: string): Promise<Binding[]> {
    const aors = await this.redis.smembers(keys.contact(contact));
    const found = await Promise.all(aors.map(async (aor) => {
      const json = await this.redis.hget(keys.bindings(aor), contact);
      return json === null ? [] : [JSON.parse(json) as Binding];
    }));
    return found.flat();
  }

  async liveBindingsByContact(contact: string, now: number): Promise<Binding[]> {
    return (await this.byContact(contact)).filter((b) => b.expiresAt > now).sort((x, y) => y.updatedAt - x.updatedAt);
  }

  async lapsedBindingsByContact(contact: string, now: number): Promise<Binding[]> {
    return (await this.byContact(contact)).filter((b) => b.expiresAt <= now && b.upstreamExpiresAt !== null && b.upstreamExpiresAt > now);
  }

  async bindingsByInsertionKey(key: string): Promise<Binding[]> {
    const aor = await this.redis.get(keys.insertion(key));
    if (aor === null) return [];
    return (await this.bindingsOf(aor)).filter((b) => b.insertion?.key === key).sort((x, y) => y.expiresAt - x.expiresAt);
  }

  async pendingDeregistrations(now: number, limit: number): Promise<Binding[]> {
    const aors = await this.redis.zrangebyscore(keys.deregistrations, '-inf', now, 'LIMIT', 0, limit);
    const all = await Promise.all(aors.map((aor) => this.bindingsOf(aor)));
    return all.flat()
      .filter((b) => b.upstreamExpiresAt !== null && b.upstreamExpiresAt > now && b.expiresAt <= now && b.lapsedAt === null)
      .sort((x, y) => x.expiresAt - y.expiresAt)
      .slice(0, limit);
  }

  /** AoRs with a de-registration due (an AoR rarely has two): a gauge, not an exact count. */
  countPendingDeregistrations(now: number): Promise<number> {
    return this.redis.zcount(keys.deregistrations, '-inf', now);
  }

  async markLapsed(aor: string, contact: string, updatedAt: number, now: number): Promise<void> {
    await this.modify(aor, (bindings) => {
      if (!bindings.some((b) => b.contact === contact && b.updatedAt === updatedAt)) return { result: undefined };
      return { bindings: bindings.map((b) => (b.contact === contact ? { ...b, lapsedAt: now } : b)), result: undefined };
    });
  }

  deleteIfUnchanged(aor: string, contact: string, updatedAt: number): Promise<{ deleted: boolean; emptied: boolean }> {
    return this.modify<{ deleted: boolean; emptied: boolean }>(aor, (bindings) => {
      if (!bindings.some((b) => b.contact === contact && b.updatedAt === updatedAt)) return { result: { deleted: false, emptied: false } };
      const kept = bindings.filter((b) => b.contact !== contact);
      return { bindings: kept, result: { deleted: true, emptied: kept.length === 0 } };
    });
  }

  async liveBindingsView(aor: string, now: number): Promise<Binding[]> {
    const [live, upstream] = await Promise.all([this.liveBindings(aor, now), this.aorUpstream(aor)]);
    return upstream ? live.map((b) => withUpstream(b, upstream)) : live;
  }

  async aorUpstream(aor: string): Promise<AorUpstream | undefined> {
    return parseUpstream(await this.redis.get(keys.upstream(aor)));
  }

  async aorUpstreamByKey(key: string): Promise<AorUpstream | undefined> {
    const aor = await this.redis.get(keys.upstreamKey(key));
    if (aor === null) return undefined;
    const upstream = await this.aorUpstream(aor);
    return upstream?.key === key ? upstream : undefined;
  }

  async pendingAorDeregistrations(now: number, limit: number): Promise<AorUpstream[]> {
    const aors = await this.redis.zrangebyscore(keys.aorDeregistrations, '-inf', now, 'LIMIT', 0, limit);
    const due: AorUpstream[] = [];
    await Promise.all(aors.map(async (aor) => {
      const [upstream, live] = await Promise.all([this.aorUpstream(aor), this.liveBindings(aor, now)]);
      // The index is written after the AoR's script: put right whatever a crash in between left.
      if (!upstream || upstream.expiresAt <= now || upstream.lapsedAt !== null) await this.redis.zrem(keys.aorDeregistrations, aor);
      else if (live.length > 0) await this.redis.zadd(keys.aorDeregistrations, lastDeviceEnd(live), aor);
      else due.push(upstream);
    }));
    return due.sort((x, y) => x.expiresAt - y.expiresAt);
  }

  /** AoRs whose last device is gone (a gauge: an entry left by a crash counts until the job looks at it). */
  countPendingAorDeregistrations(now: number): Promise<number> {
    return this.redis.zcount(keys.aorDeregistrations, '-inf', now);
  }

  async markAorLapsed(aor: string, updatedAt: number, now: number): Promise<void> {
    await this.modifyUpstream(aor, (u) => (u && u.updatedAt === updatedAt ? { upstream: { ...u, lapsedAt: now }, result: undefined } : { result: undefined }));
  }

  deleteAorUpstreamIfUnchanged(aor: string, updatedAt: number): Promise<boolean> {
    return this.modifyUpstream(aor, (u) => (u && u.updatedAt === updatedAt ? { upstream: null, result: true } : { result: false }));
  }

  async isKnownAor(aor: string): Promise<boolean> {
    return (await this.redis.exists(keys.known(aor))) > 0;
  }

  async isLiveSource(aor: string, address: string, port: number, now: number): Promise<boolean> {
    return (await this.bindingsOf(aor)).some((b) => b.expiresAt > now && b.source?.address === address && b.source.port === port);
  }

  async listLiveAfter(now: number, opts: { after?: { aor: string; contact: string }; aorPrefix?: string; limit: number }): Promise<Binding[]> {
    const prefix = opts.aorPrefix ?? '';
    const after = opts.after !== undefined && byteCompare(opts.after.aor, prefix) >= 0 ? opts.after : undefined;
    let min = after ? `[${after.aor}` : prefix === '' ? '-' : `[${prefix}`;
    const out: Binding[] = [];
    const batch = Math.max(16, Math.min(opts.limit, 1000));
    for (;;) {
      const aors = await this.redis.zrangebylex(keys.aors, min, '+', 'LIMIT', 0, batch);
      for (const aor of aors) {
        if (!aor.startsWith(prefix)) return out;
        const [stored, upstream] = await Promise.all([this.bindingsOf(aor), this.aorUpstream(aor)]);
        const live = stored.filter((b) => b.expiresAt > now
          && (after === undefined || aor !== after.aor || byteCompare(b.contact, after.contact) > 0));
        for (const b of live) {
          out.push(upstream ? withUpstream(b, upstream) : b);
          if (out.length >= opts.limit) return out;
        }
      }
      const last = aors.at(-1);
      if (aors.length < batch || last === undefined) return out;
      min = `(${last}`;
    }
  }

  /** Bindings and AoRs stored, from the counts every write keeps (expired but unswept included). */
  async counts(): Promise<AorCounts> {
    const c = await this.redis.hgetall(keys.counts);
    return { bindings: Math.max(0, Number(c['bindings'] ?? 0)), aors: Math.max(0, Number(c['aors'] ?? 0)) };
  }

  countStored(): Promise<AorCounts> {
    return this.counts();
  }

  async purgeExpiredBatch(now: number, limit: number): Promise<{ removed: number; emptiedAors: number }> {
    const aors = await this.redis.zrangebyscore(keys.deletions, '-inf', now, 'LIMIT', 0, limit);
    let removed = 0;
    let emptiedAors = 0;
    for (const aor of aors) {
      const result = await this.modify(aor, (bindings) => {
        const kept = bindings.filter((b) => !(b.expiresAt <= now && (b.upstreamExpiresAt === null || b.upstreamExpiresAt <= now)));
        if (kept.length === bindings.length) return { result: { removed: 0, emptied: bindings.length === 0 } };
        return { bindings: kept, result: { removed: bindings.length - kept.length, emptied: kept.length === 0 } };
      });
      removed += result.removed;
      if (result.removed > 0 && result.emptied) emptiedAors += 1;
      // Nothing to delete although the index said so: the hash's own TTL ran out first, or a
      // crash came between a write and its index update. Put the index right so it is not found again.
      if (result.removed === 0) await this.repairDeletionIndex(aor);
    }
    return { removed, emptiedAors };
  }

  private async repairDeletionIndex(aor: string): Promise<void> {
    const bindings = await this.bindingsOf(aor);
    if (bindings.length === 0) await Promise.all([this.redis.zrem(keys.deletions, aor), this.redis.zrem(keys.aors, aor), this.redis.zrem(keys.deregistrations, aor)]);
    else await this.redis.zadd(keys.deletions, Math.min(...bindings.map(deletionAt)), aor);
  }
}

class RedisOffline implements OfflineMessageStore {
  constructor(private readonly redis: Client, private readonly bindings: RedisBindings) {}

  private async messagesOf(recipient: string): Promise<OfflineMessage[]> {
    const hash = await this.redis.hgetall(keys.messages(recipient));
    return Object.values(hash).map((v) => JSON.parse(v) as OfflineMessage).sort((x, y) => x.id - y.id);
  }

  /** The recipient's due and expiry index entries, from what it has left. */
  private async reindex(recipient: string, left: OfflineMessage[]): Promise<void> {
    if (left.length === 0) {
      await Promise.all([this.redis.zrem(keys.messagesDue, recipient), this.redis.zrem(keys.messagesExpiring, recipient)]);
      return;
    }
    await Promise.all([
      this.redis.zadd(keys.messagesDue, Math.min(...left.map((m) => m.nextAttemptAt)), recipient),
      this.redis.zadd(keys.messagesExpiring, Math.min(...left.map((m) => m.expiresAt)), recipient),
    ]);
  }

  async add(m: NewOfflineMessage): Promise<number> {
    const id = await this.redis.incr(keys.messageId);
    const message: OfflineMessage = { ...m, id, attempts: 0, nextAttemptAt: m.receivedAt };
    await this.redis.hset(keys.messages(m.recipient), String(id), JSON.stringify(message));
    await Promise.all([
      this.redis.zadd(keys.messagesDue, 'LT', m.receivedAt, m.recipient),
      this.redis.zadd(keys.messagesExpiring, 'LT', m.expiresAt, m.recipient),
      this.redis.hincrby(keys.messageTotals, 'messages', 1),
      this.redis.hincrby(keys.messageTotals, 'bytes', Buffer.byteLength(m.body, 'utf8')),
    ]);
    return id;
  }

  async queueOf(recipient: string): Promise<{ messages: number; bytes: number }> {
    const all = await this.messagesOf(recipient);
    return { messages: all.length, bytes: all.reduce((n, m) => n + Buffer.byteLength(m.body, 'utf8'), 0) };
  }

  async totals(): Promise<{ messages: number; bytes: number }> {
    const t = await this.redis.hgetall(keys.messageTotals);
    return { messages: Math.max(0, Number(t['messages'] ?? 0)), bytes: Math.max(0, Number(t['bytes'] ?? 0)) };
  }

  async nextOf(recipient: string, now: number): Promise<OfflineMessage | undefined> {
    return (await this.messagesOf(recipient)).find((m) => m.expiresAt > now);
  }

  async recipientsDue(now: number): Promise<string[]> {
    const due = await this.redis.zrangebyscore(keys.messagesDue, '-inf', now, 'LIMIT', 0, 1000);
    const live = await Promise.all(due.map(async (aor) => ((await this.bindings.liveBindings(aor, now)).length > 0 ? [aor] : [])));
    return live.flat();
  }

  recipients(): Promise<string[]> {
    return this.redis.zrange(keys.messagesDue, 0, -1);
  }

  private async remove(recipient: string, ids: number[], bodies: string[]): Promise<number> {
    if (ids.length === 0) return 0;
    const removed = await this.redis.hdel(keys.messages(recipient), ...ids.map(String));
    if (removed > 0) {
      await Promise.all([
        this.redis.hincrby(keys.messageTotals, 'messages', -removed),
        this.redis.hincrby(keys.messageTotals, 'bytes', -bodies.reduce((n, b) => n + Buffer.byteLength(b, 'utf8'), 0)),
      ]);
    }
    await this.reindex(recipient, await this.messagesOf(recipient));
    return removed;
  }

  async delivered(message: OfflineMessage): Promise<void> {
    await this.remove(message.recipient, [message.id], [message.body]);
  }

  async postpone(message: OfflineMessage, nextAttemptAt: number): Promise<void> {
    const key = keys.messages(message.recipient);
    const json = await this.redis.hget(key, String(message.id));
    if (json === null) return;
    const m = JSON.parse(json) as OfflineMessage;
    await this.redis.hset(key, String(message.id), JSON.stringify({ ...m, attempts: m.attempts + 1, nextAttemptAt }));
    await this.reindex(message.recipient, await this.messagesOf(message.recipient));
  }

  async takeExpired(now: number, limit: number): Promise<OfflineMessage[]> {
    const recipients = await this.redis.zrangebyscore(keys.messagesExpiring, '-inf', now, 'LIMIT', 0, limit);
    const taken: OfflineMessage[] = [];
    for (const recipient of recipients) {
      const expired = (await this.messagesOf(recipient)).filter((m) => m.expiresAt <= now).slice(0, limit - taken.length);
      await this.remove(recipient, expired.map((m) => m.id), expired.map((m) => m.body));
      if (expired.length === 0) await this.reindex(recipient, await this.messagesOf(recipient));
      taken.push(...expired);
      if (taken.length >= limit) break;
    }
    return taken;
  }

  async summary(): Promise<QueueSummary[]> {
    const recipients = (await this.redis.zrange(keys.messagesDue, 0, -1)).sort(byteCompare);
    const out: QueueSummary[] = [];
    for (const recipient of recipients) {
      const all = await this.messagesOf(recipient);
      if (all.length === 0) continue;
      out.push({ recipient, messages: all.length, bytes: all.reduce((n, m) => n + Buffer.byteLength(m.body, 'utf8'), 0), oldestAt: Math.min(...all.map((m) => m.receivedAt)) });
    }
    return out;
  }

  listOf(recipient: string): Promise<OfflineMessage[]> {
    return this.messagesOf(recipient);
  }

  async purge(recipient: string): Promise<number> {
    const all = await this.messagesOf(recipient);
    return this.remove(recipient, all.map((m) => m.id), all.map((m) => m.body));
  }
}

export interface RedisStoreOptions {
  cseqRetentionMs?: number;
  clock?: () => number;
  /** Told when Redis stops (reason) or starts (undefined) answering. */
  onStatus?: (reason: string | undefined) => void;
}

export class RedisStore implements Store, NodeRegistry {
  readonly kind = 'redis' as const;
  readonly bindings: RedisBindings;
  readonly offline: OfflineMessageStore;
  readonly client: Client;
  private lastError: string | undefined;
  private ready = false;

  constructor(private readonly target: Extract<StoreTarget, { kind: 'redis' }>, readonly describe: string, private readonly opts: RedisStoreOptions = {}) {
    this.client = clientFor(target);
    this.client.defineCommand('mrWrite', { numberOfKeys: 4, lua: WRITE_LUA });
    this.client.on('ready', () => {
      const was = !this.ready;
      this.ready = true;
      this.lastError = undefined;
      if (was) this.opts.onStatus?.(undefined);
    });
    this.client.on('error', (err: Error) => { this.lastError = err.message; });
    this.client.on('end', () => this.lost('connection closed'));
    this.client.on('close', () => this.lost('connection closed'));
    this.client.on('node error', (err: Error) => { this.lastError = err.message; });
    this.bindings = new RedisBindings(this.client, this.client as unknown as Scripts, opts.cseqRetentionMs ?? 37_000, opts.clock ?? Date.now);
    this.offline = new RedisOffline(this.client, this.bindings);
  }

  private lost(why: string): void {
    if (!this.ready) return;
    this.ready = false;
    this.opts.onStatus?.(this.lastError ?? why);
  }

  /** Connect (bounded); a Redis that is down now is retried in the background and reported by unavailableReason. */
  async connect(timeoutMs = 5000): Promise<boolean> {
    const connecting = this.client.connect().then(() => true, (err: unknown) => { this.lastError = err instanceof Error ? err.message : String(err); return false; });
    const timer = new Promise<boolean>((resolve) => { setTimeout(() => resolve(false), timeoutMs).unref(); });
    return Promise.race([connecting, timer]);
  }

  get unavailableReason(): string | undefined {
    if (this.ready && this.client.status === 'ready') return undefined;
    return `redis not answering (${this.lastError ?? this.client.status})`;
  }

  reopenWritable(): Promise<boolean> {
    return Promise.resolve(this.unavailableReason === undefined);
  }

  async checkWritable(): Promise<Writable> {
    const reason = this.unavailableReason;
    if (reason !== undefined) return { ok: false, reason };
    try {
      await this.client.ping();
      return { ok: true };
    } catch (err) {
      return { ok: false, reason: `redis: ${err instanceof Error ? err.message : String(err)}` };
    }
  }

  /** This node is alive for `ttlMs` more (other nodes route through it meanwhile). */
  async heartbeat(nodeUri: string, ttlMs: number): Promise<void> {
    await Promise.all([
      this.client.set(keys.node(nodeUri), String(this.opts.clock?.() ?? Date.now()), 'PX', ttlMs),
      this.client.sadd(keys.nodes, nodeUri),
    ]);
  }

  /** Every node that ever sent a heartbeat, and whether its heartbeat is still there. */
  async nodes(): Promise<Array<{ uri: string; alive: boolean }>> {
    const uris = await this.client.smembers(keys.nodes);
    return Promise.all(uris.map(async (uri) => ({ uri, alive: (await this.client.exists(keys.node(uri))) > 0 })));
  }

  /** Forget a stopping node at once, so the others fail its requests fast instead of waiting for its TTL. */
  async leave(nodeUri: string): Promise<void> {
    await this.client.del(keys.node(nodeUri));
  }

  async close(): Promise<void> {
    this.ready = false;
    try {
      await this.client.quit();
    } catch {
      this.client.disconnect();
    }
  }

  get targetMode(): string { return this.target.mode; }
}
