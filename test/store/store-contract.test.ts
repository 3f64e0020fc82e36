// One behaviour for every store: the same assertions against SQLite, one Redis server and a
// three-master Redis Cluster (Debian's redis-server, started here on free ports).
import { strict as assert } from 'node:assert';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import type { Binding } from '../../lib/registrar/registration.js';
import { RedisStore } from '../../lib/store/redis-store.js';
import { SqliteStore } from '../../lib/store/sqlite-store.js';
import type { Store } from '../../lib/store/store.js';
import { describeTarget, parseStoreUrl } from '../../lib/store/store-url.js';
import { redisSkipReason, startRedis, startRedisCluster } from '../support/redis.js';

const dir = mkdtempSync(join(tmpdir(), 'midreg-contract-'));
after(() => rmSync(dir, { recursive: true, force: true }));

function binding(aor: string, contact: string, expiresAt: number, over: Partial<Binding> = {}): Binding {
  return {
    aor, contact, expiresAt, q: null, instance: null, regId: null, path: null, callId: 'c1', cseq: 1,
    userAgent: 'ua', source: { address: '192.0.2.1', port: 5060, transport: 'udp' },
    insertion: null, upstreamExpiresAt: null, lapsedAt: null, registeredAt: 1, updatedAt: 1, ...over,
  };
}

async function openRedis(url: string): Promise<RedisStore> {
  const target = parseStoreUrl(url, '');
  assert.ok(target.kind === 'redis');
  const store = new RedisStore(target, describeTarget(target));
  assert.ok(await store.connect(10_000), `connected to ${url}`);
  return store;
}

interface Backend { name: string; open(): Promise<Store>; stop(): Promise<void> }

const skip = redisSkipReason();
const backends: Backend[] = [{ name: 'SQLite', open: () => Promise.resolve(new SqliteStore(join(dir, `s-${Date.now()}-${Math.random()}.sqlite`))), stop: () => Promise.resolve() }];
let redisUrl = '';
let clusterUrl = '';
const stops: Array<() => Promise<void>> = [];
if (skip === undefined) {
  backends.push({ name: 'Redis', open: () => openRedis(redisUrl), stop: () => Promise.resolve() });
  backends.push({ name: 'Redis Cluster', open: () => openRedis(clusterUrl), stop: () => Promise.resolve() });
}

before(async () => {
  if (skip !== undefined) return;
  const redis = await startRedis(dir);
  redisUrl = redis.url;
  stops.push(() => redis.stop());
  const cluster = await startRedisCluster(dir);
  clusterUrl = cluster.url;
  stops.push(() => cluster.stop());
});
after(async () => { for (const stop of stops) await stop(); });

let unique = 0;
/** An AoR no other test of this run touched (the Redis servers are shared by the backends' tests). */
const freshAor = (user: string): string => `sip:${user}-${process.pid}-${++unique}@example.test`;

for (const backend of backends) {
  describe(`store contract: ${backend.name}`, () => {
    let store: Store;
    before(async () => { store = await backend.open(); });
    after(async () => { await store.close(); });

    it('updateAor writes what the planner returns, hands back its result, and remembers the CSeq per Call-ID', async () => {
      const now = Date.now();
      const aor = freshAor('alice');
      const seen: Array<number | undefined> = [];
      const result = await store.bindings.updateAor(aor, 'call-A', (state) => {
        seen.push(state.lastCseq);
        assert.deepEqual(state.bindings, []);
        return { bindings: [binding(aor, 'sip:a2@h', now + 60_000, { q: 0.5 }), binding(aor, 'sip:a1@h', now + 60_000, { q: 1 })], recordCseq: 7, result: 'saved' };
      });
      assert.equal(result, 'saved');
      assert.deepEqual((await store.bindings.bindingsOf(aor)).map((b) => b.contact), ['sip:a1@h', 'sip:a2@h'], 'in contact order');
      assert.deepEqual((await store.bindings.liveBindings(aor, now)).map((b) => b.contact), ['sip:a1@h', 'sip:a2@h'], 'highest q first');
      await store.bindings.updateAor(aor, 'call-A', (state) => { seen.push(state.lastCseq); return { result: undefined }; });
      await store.bindings.updateAor(aor, 'call-B', (state) => { seen.push(state.lastCseq); return { result: undefined }; });
      assert.deepEqual(seen, [undefined, 7, undefined]);
      assert.ok(await store.bindings.isKnownAor(aor));
      assert.ok(!(await store.bindings.isKnownAor(freshAor('nobody'))));
      assert.ok(await store.bindings.isLiveSource(aor, '192.0.2.1', 5060, now));
      assert.ok(!(await store.bindings.isLiveSource(aor, '192.0.2.1', 5061, now)));
    });

    it('loses no update when many replies for one AoR are applied at once', async () => {
      const now = Date.now();
      const aor = freshAor('bob');
      // A second store instance is a second node writing the same AoR (for SQLite: the same process).
      const other = backend.name === 'SQLite' ? store : await backend.open();
      try {
        await Promise.all(Array.from({ length: 20 }, (_, i) => (i % 2 === 0 ? store : other).bindings.updateAor(aor, `call-${i}`, (state) => ({
          bindings: [...state.bindings, binding(aor, `sip:b${String(i).padStart(2, '0')}@h`, now + 60_000)],
          result: undefined,
        }))));
        assert.equal((await store.bindings.bindingsOf(aor)).length, 20, 'every contact added, none overwritten by a stale read');
      } finally {
        if (other !== store) await other.close();
      }
    });

    it('finds bindings by contact and by insertion key, and tells lapsed ones apart', async () => {
      const now = Date.now();
      const aor = freshAor('carol');
      const contact = `sip:carol-${unique}@198.51.100.3:5060`;
      await store.bindings.replaceAor(aor, [
        binding(aor, contact, now + 60_000, { insertion: { contact: 'sip:carol@203.0.113.5;ctid=K', key: `K${unique}` } }),
        binding(aor, `${contact};x=lapsed`, now - 1000, { upstreamExpiresAt: now + 600_000 }),
      ]);
      assert.deepEqual((await store.bindings.liveBindingsByContact(contact, now)).map((b) => b.aor), [aor]);
      assert.deepEqual((await store.bindings.bindingsByInsertionKey(`K${unique}`)).map((b) => b.contact), [contact]);
      assert.deepEqual(await store.bindings.bindingsByInsertionKey('no-such-key'), []);
      assert.deepEqual((await store.bindings.lapsedBindingsByContact(`${contact};x=lapsed`, now)).map((b) => b.aor), [aor]);
      assert.deepEqual(await store.bindings.liveBindingsByContact(`${contact};x=lapsed`, now), []);
      await store.bindings.replaceAor(aor, []);
      assert.deepEqual(await store.bindings.liveBindingsByContact(contact, now), [], 'the index follows a removal');
      assert.deepEqual(await store.bindings.bindingsByInsertionKey(`K${unique}`), []);
    });

    it('pages through live bindings in (AoR, contact) order, by prefix', async () => {
      const now = Date.now();
      const prefix = `sip:page${process.pid}x${++unique}`;
      for (const [user, n] of [['a', 3], ['b', 1], ['c', 2]] as const) {
        const aor = `${prefix}${user}@example.test`;
        await store.bindings.replaceAor(aor, Array.from({ length: n }, (_, i) => binding(aor, `sip:${user}${i}@h`, now + 60_000)));
      }
      await store.bindings.replaceAor(`${prefix}d@example.test`, [binding(`${prefix}d@example.test`, 'sip:d@h', now - 1)]);
      const seen: string[] = [];
      let after: { aor: string; contact: string } | undefined;
      for (let pages = 0; pages < 10; pages++) {
        const page = await store.bindings.listLiveAfter(now, { limit: 2, aorPrefix: prefix, ...(after ? { after } : {}) });
        seen.push(...page.map((b) => `${b.aor.slice(prefix.length, prefix.length + 1)} ${b.contact}`));
        const last = page.at(-1);
        if (page.length < 2 || !last) break;
        after = { aor: last.aor, contact: last.contact };
      }
      assert.deepEqual(seen, ['a sip:a0@h', 'a sip:a1@h', 'a sip:a2@h', 'b sip:b0@h', 'c sip:c0@h', 'c sip:c1@h']);
    });

    it('sweeps expired bindings, keeps those still registered upstream, and de-registers in contact mode', async () => {
      const now = Date.now();
      const aor = freshAor('dave');
      await store.bindings.replaceAor(aor, [
        binding(aor, 'sip:gone@h', now - 5000),
        binding(aor, 'sip:lapsing@h', now - 5000, { upstreamExpiresAt: now + 3_600_000, updatedAt: 42 }),
        binding(aor, 'sip:live@h', now + 60_000),
      ]);
      let removed = 0;
      for (let i = 0; i < 100; i++) {
        const step = await store.bindings.purgeExpiredBatch(now, 1000);
        removed += step.removed;
        if (step.removed < 1000) break;
      }
      assert.ok(removed >= 1);
      assert.deepEqual((await store.bindings.bindingsOf(aor)).map((b) => b.contact), ['sip:lapsing@h', 'sip:live@h']);
      const pending = (await store.bindings.pendingDeregistrations(now, 1000)).filter((b) => b.aor === aor);
      assert.deepEqual(pending.map((b) => b.contact), ['sip:lapsing@h']);
      assert.ok(await store.bindings.countPendingDeregistrations(now) >= 1);
      await store.bindings.markLapsed(aor, 'sip:lapsing@h', 42, now);
      assert.deepEqual((await store.bindings.pendingDeregistrations(now, 1000)).filter((b) => b.aor === aor), [], 'tried: not pending any more');
      assert.deepEqual(await store.bindings.deleteIfUnchanged(aor, 'sip:lapsing@h', 41), { deleted: false, emptied: false }, 'written since: kept');
      assert.deepEqual(await store.bindings.deleteIfUnchanged(aor, 'sip:lapsing@h', 42), { deleted: true, emptied: false });
      await store.bindings.absorbRefresh(aor, 'sip:live@h', now + 120_000, 9, now);
      const [live] = await store.bindings.bindingsOf(aor);
      assert.deepEqual([live?.expiresAt, live?.cseq], [now + 120_000, 9]);
      assert.deepEqual(await store.bindings.deleteIfUnchanged(aor, 'sip:live@h', now), { deleted: true, emptied: true });
    });

    it('AoR mode: keeps midreg\'s upstream registration with the devices, finds it by key, and names it for removal once the last device ends', async () => {
      const now = Date.now();
      const aor = freshAor('aorm');
      const key = `k-${process.pid}-${unique}`;
      const upstream = { aor, contact: `sip:aorm@192.0.2.9;ctid=${key}`, key, callId: 'up-1', cseq: 3, expiresAt: now + 3_600_000, lapsedAt: null, updatedAt: now };
      await store.bindings.updateAor(aor, 'dev-1', (state) => {
        assert.equal(state.upstream, undefined);
        return { bindings: [binding(aor, 'sip:d1@h', now + 1_000), binding(aor, 'sip:d2@h', now + 60_000)], upstream, result: undefined };
      });
      assert.deepEqual(await store.bindings.aorUpstream(aor), upstream);
      assert.deepEqual(await store.bindings.aorUpstreamByKey(key), upstream);
      assert.equal(await store.bindings.aorUpstreamByKey('no-such-key'), undefined);
      const view = await store.bindings.liveBindingsView(aor, now);
      assert.deepEqual(view.map((b) => [b.contact, b.upstreamExpiresAt, b.insertion?.key]), [['sip:d1@h', upstream.expiresAt, key], ['sip:d2@h', upstream.expiresAt, key]]);
      assert.deepEqual((await store.bindings.pendingAorDeregistrations(now + 30_000, 10)).filter((u) => u.aor === aor), [], 'a device is still live');
      // The planner sees the upstream registration next time, and a write that leaves it keeps it.
      await store.bindings.updateAor(aor, 'dev-2', (state) => {
        assert.deepEqual(state.upstream, upstream);
        return { bindings: state.bindings.filter((b) => b.contact !== 'sip:d2@h'), result: undefined };
      });
      assert.deepEqual(await store.bindings.aorUpstream(aor), upstream, 'left as it was');
      const due = (await store.bindings.pendingAorDeregistrations(now + 2_000, 10)).filter((u) => u.aor === aor);
      assert.deepEqual(due, [upstream], 'the last device ended: midreg\'s Contact is due for removal');
      assert.ok(await store.bindings.countPendingAorDeregistrations(now + 2_000) >= 1);
      assert.equal(await store.bindings.deleteAorUpstreamIfUnchanged(aor, now - 1), false, 'renewed since: kept');
      await store.bindings.markAorLapsed(aor, now, now + 2_000);
      assert.equal((await store.bindings.aorUpstream(aor))?.lapsedAt, now + 2_000);
      assert.deepEqual((await store.bindings.pendingAorDeregistrations(now + 2_000, 10)).filter((u) => u.aor === aor), [], 'a lapsed one is not tried again');
      assert.equal(await store.bindings.deleteAorUpstreamIfUnchanged(aor, now), true);
      assert.equal(await store.bindings.aorUpstream(aor), undefined);
      assert.equal(await store.bindings.aorUpstreamByKey(key), undefined);
    });

    it('keeps offline messages in order until delivered, postponed ones wait, expired ones are taken', async () => {
      const now = Date.now();
      const aor = freshAor('erin');
      const add = (body: string, receivedAt: number, ttl = 60_000): Promise<number> => store.offline.add({
        recipient: aor, sender: 'sip:frank@example.test', fromHeader: '<sip:frank@example.test>;tag=f', toHeader: `<${aor}>`,
        contentType: 'text/plain', body, date: 'Mon, 01 Jan 2024 10:00:00 GMT', receivedAt, expiresAt: receivedAt + ttl,
      });
      const totals = await store.offline.totals();
      const first = await add('one', now - 2000);
      await add('two', now - 1000);
      await add('old', now - 100_000, 1000);
      assert.deepEqual(await store.offline.queueOf(aor), { messages: 3, bytes: 9 });
      assert.deepEqual(await store.offline.totals(), { messages: totals.messages + 3, bytes: totals.bytes + 9 });
      assert.ok((await store.offline.recipients()).includes(aor));
      assert.ok(!(await store.offline.recipientsDue(now)).includes(aor), 'not registered: not due');
      await store.bindings.replaceAor(aor, [binding(aor, 'sip:erin@h', now + 60_000)]);
      assert.ok((await store.offline.recipientsDue(now)).includes(aor), 'registered: due');
      const next = await store.offline.nextOf(aor, now);
      assert.equal(next?.id, first);
      assert.equal(next?.body, 'one');
      if (next) await store.offline.postpone(next, now + 30_000);
      assert.equal((await store.offline.listOf(aor)).find((m) => m.id === first)?.attempts, 1);
      const expired = await store.offline.takeExpired(now, 100);
      assert.deepEqual(expired.filter((m) => m.recipient === aor).map((m) => m.body), ['old']);
      if (next) await store.offline.delivered(next);
      assert.deepEqual((await store.offline.listOf(aor)).map((m) => m.body), ['two']);
      assert.ok((await store.offline.summary()).some((q) => q.recipient === aor && q.messages === 1));
      assert.equal(await store.offline.purge(aor), 1);
      assert.deepEqual(await store.offline.totals(), totals, 'the totals follow');
    });

    it('is writable and says so', async () => {
      assert.deepEqual(await store.checkWritable(), { ok: true });
      assert.equal(store.unavailableReason, undefined);
    });
  });
}
