import { strict as assert } from 'node:assert';
import { existsSync, mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { LocationStore, readMigrations } from '../../lib/store/location-store.js';
import type { Binding } from '../../lib/registrar/registration.js';

const dir = mkdtempSync(join(tmpdir(), 'midreg-store-'));
after(() => rmSync(dir, { recursive: true, force: true }));

function binding(aor: string, contact: string, expiresAt: number, over: Partial<Binding> = {}): Binding {
  return {
    aor, contact, expiresAt, q: null, instance: null, regId: null, path: '<sip:edge.example;lr>', callId: 'c1', cseq: 1,
    userAgent: "ua'; DROP TABLE binding; --", source: { address: '192.0.2.1', port: 5060, transport: 'udp' },
    insertion: null, upstreamExpiresAt: null, lapsedAt: null, registeredAt: 1, updatedAt: 1, ...over,
  };
}

describe('location store on a SQLite file', () => {
  it('applies the numbered migrations from sql/ on first open', () => {
    const file = join(dir, 'fresh.sqlite');
    const store = new LocationStore(file);
    const migrations = readMigrations();
    assert.ok(migrations.length >= 1);
    assert.deepEqual(store.migrationsApplied, migrations.map((m) => m.name));
    assert.equal(store.schemaVersion, migrations.at(-1)?.version);
    store.close();
    const again = new LocationStore(file);
    assert.deepEqual(again.migrationsApplied, [], 'nothing re-applied on restart');
    again.close();
  });

  it('keeps bindings across a restart and returns them intact', () => {
    const file = join(dir, 'restart.sqlite');
    const now = Date.now();
    const first = new LocationStore(file);
    const b = binding('sip:alice@example.test', 'sip:alice@10.0.0.1:5060', now + 60_000, { q: 0.5, instance: '"<urn:uuid:x>"', regId: 1 });
    first.replaceAor(b.aor, [b]);
    first.close();
    const second = new LocationStore(file);
    assert.deepEqual(second.liveBindings('sip:alice@example.test', now), [b]);
    second.close();
  });

  it('replaceAor makes the AoR hold exactly the given set', () => {
    const store = new LocationStore(join(dir, 'replace.sqlite'));
    const now = Date.now();
    const aor = 'sip:bob@example.test';
    store.replaceAor(aor, [binding(aor, 'sip:b1@h', now + 1000), binding(aor, 'sip:b2@h', now + 1000)]);
    store.replaceAor(aor, [binding(aor, 'sip:b2@h', now + 5000)]);
    assert.deepEqual(store.liveBindings(aor, now).map((b) => [b.contact, b.expiresAt]), [['sip:b2@h', now + 5000]]);
    // The relay hands over what it just read instead of letting the store read it again.
    store.replaceAor(aor, [binding(aor, 'sip:b3@h', now + 5000)], store.bindingsOf(aor));
    assert.deepEqual(store.bindingsOf(aor).map((b) => b.contact), ['sip:b3@h'], 'the binding the registrar dropped is gone');
    assert.throws(() => store.replaceAor(aor, [], [binding('sip:eve@example.test', 'sip:e@h', now)]), /binding of sip:eve@example.test/);
    assert.deepEqual(store.bindingsOf(aor).map((b) => b.contact), ['sip:b3@h'], 'a refused call changes nothing');
    store.close();
  });

  it('never returns expired bindings and purges them in batches', () => {
    const store = new LocationStore(join(dir, 'purge.sqlite'));
    const now = Date.now();
    for (let i = 0; i < 25; i++) {
      const aor = `sip:u${i}@example.test`;
      store.replaceAor(aor, [binding(aor, `sip:u${i}@h`, i < 20 ? now - 1 : now + 60_000)]);
    }
    assert.deepEqual(store.liveBindings('sip:u0@example.test', now), []);
    assert.equal(store.counts(now).bindings, 5);
    assert.deepEqual(store.purgeExpiredBatch(now, 8), { removed: 8, emptiedAors: 8 });
    assert.deepEqual(store.purgeExpiredBatch(now, 8), { removed: 8, emptiedAors: 8 });
    assert.deepEqual(store.purgeExpiredBatch(now, 8), { removed: 4, emptiedAors: 4 });
    assert.deepEqual(store.purgeExpiredBatch(now, 8), { removed: 0, emptiedAors: 0 });
    assert.equal(store.counts(now).bindings, 5);
    const two = 'sip:two@example.test';
    store.replaceAor(two, [binding(two, 'sip:old@h', now - 1), binding(two, 'sip:new@h', now + 60_000)]);
    assert.deepEqual(store.purgeExpiredBatch(now, 8), { removed: 1, emptiedAors: 0 }, 'an AoR with a live binding left is not emptied');
    assert.deepEqual(store.bindingsOf(two).map((b) => b.contact), ['sip:new@h']);
    store.close();
  });

  it('bindings that expired while closed are gone after the start-up sweep', () => {
    const file = join(dir, 'downtime.sqlite');
    const now = Date.now();
    const first = new LocationStore(file);
    first.replaceAor('sip:c@example.test', [binding('sip:c@example.test', 'sip:c@h', now + 50)]);
    first.close();
    const later = now + 1000;
    const second = new LocationStore(file);
    assert.equal(second.purgeExpiredBatch(later, 1000).removed, 1);
    assert.deepEqual(second.bindingsOf('sip:c@example.test'), []);
    second.close();
  });

  it('reports a read-only database as not writable', () => {
    const file = join(dir, 'ro.sqlite');
    new LocationStore(file).close();
    const ro = new LocationStore(file, { readonly: true });
    const check = ro.checkWritable();
    assert.equal(check.ok, false);
    ro.close();
  });

  it('checkpoints on its own thread, keeps the WAL bounded while REGISTERs never pause, and closes clean', async () => {
    const file = join(dir, 'checkpoint.sqlite');
    const store = new LocationStore(file);
    const now = Date.now();
    // About 5 pages (20 KB) per new AoR: 100 MB of WAL if nothing ever rewound it. The writer
    // never yields, so the checkpoint thread can never catch up on its own.
    let largestWal = 0;
    for (let i = 0; i < 20_000; i++) {
      store.replaceAor(`sip:u${i}@example.test`, [binding(`sip:u${i}@example.test`, `sip:u${i}@192.0.2.1`, now + 60_000)]);
      if (i % 250 === 249) largestWal = Math.max(largestWal, statSync(`${file}-wal`).size);
    }
    assert.ok(largestWal > 0, 'the writes went through the WAL');
    // The writer's pass is skipped (busy) while the thread's runs and retried on later commits: some slack.
    assert.ok(largestWal < 128 * 1024 * 1024, `WAL bounded near 64 MiB, got ${(largestWal / 1048576).toFixed(1)} MiB`);
    const deadline = Date.now() + 3000;
    // A pass that met the writer's own checkpoint reports -1 (busy): wait for one that copied.
    while ((store.lastCheckpoint?.copied ?? 0) <= 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    assert.ok((store.lastCheckpoint?.copied ?? 0) > 0, 'the checkpoint thread copied WAL frames back into the database');
    // Once the writes stop, the thread catches up with every frame on its own: the database file
    // holds everything and the next write can rewind the WAL.
    const caughtUp = (): boolean => store.lastCheckpoint !== undefined && store.lastCheckpoint.walFrames > 0 && store.lastCheckpoint.copied === store.lastCheckpoint.walFrames;
    const idleDeadline = Date.now() + 3000;
    while (!caughtUp() && Date.now() < idleDeadline) await new Promise((r) => setTimeout(r, 50));
    assert.ok(caughtUp(), `idle, the checkpoint caught up with the WAL: ${JSON.stringify(store.lastCheckpoint)}`);
    store.close();
    assert.equal(existsSync(`${file}-wal`), false, 'closed in rollback mode: no WAL left behind');
    const reopened = new LocationStore(file, { readonly: true });
    assert.equal(reopened.liveBindings('sip:u19999@example.test', now).length, 1);
    reopened.close();
  });
});
