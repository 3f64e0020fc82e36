// AoR mode's upstream state in the SQLite replica: written with the devices in one transaction,
// found by key, still there after a reopen (no refresh storm: nothing to re-learn), and the
// de-registration job's view of which AoRs have lost their last device.
import { strict as assert } from 'node:assert';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { ABSORB_FLUSH_MS, LocationStore } from '../../lib/store/location-store.js';
import { aorContactKey, type AorUpstream } from '../../lib/registrar/aor-throttle.js';
import type { Binding } from '../../lib/registrar/registration.js';

const dir = mkdtempSync(join(tmpdir(), 'midreg-aor-'));
after(() => rmSync(dir, { recursive: true, force: true }));

const NOW = Date.now();
const AOR = 'sip:erin@example.test';
const up: AorUpstream = { aor: AOR, contact: `sip:erin@10.0.0.1:5060;ctid=${aorContactKey(AOR)}`, key: aorContactKey(AOR), callId: 'c-1', cseq: 2, expiresAt: NOW + 3_600_000, lapsedAt: null, updatedAt: NOW };
const dev = (contact: string, expiresAt: number): Binding => ({
  aor: AOR, contact, expiresAt, upstreamExpiresAt: null, lapsedAt: null, q: null, instance: null, regId: null, path: null,
  callId: 'c-1', cseq: 2, userAgent: null, source: { address: '192.0.2.7', port: 5062, transport: 'udp' }, insertion: null, registeredAt: NOW, updatedAt: NOW,
});

describe('aor_upstream in the replica', () => {
  it('is saved with the devices, found by key, survives a reopen, and shows in the operator view', () => {
    const file = join(dir, 'a.sqlite');
    let store = new LocationStore(file);
    store.saveAor(AOR, [dev('sip:erin@192.0.2.7:5062', NOW + 60_000)], [], up);
    store.close();
    store = new LocationStore(file);
    try {
      assert.deepEqual(store.aorUpstream(AOR), up);
      assert.deepEqual(store.aorUpstreamByKey(up.key), up);
      const [view] = store.liveBindingsView(AOR, NOW);
      assert.deepEqual([view?.upstreamExpiresAt, view?.insertion?.contact], [up.expiresAt, up.contact]);
      // Routing and the relay read the device as it is (no upstream of its own).
      assert.equal(store.liveBindings(AOR, NOW)[0]?.upstreamExpiresAt, null);
      assert.equal(store.listLiveAfter(NOW, { limit: 10 })[0]?.upstreamExpiresAt, up.expiresAt);
    } finally { store.close(); }
  });

  it('an AoR is pending de-registration once its last device expired, not before; lapsed or renewed ones are left alone', () => {
    const store = new LocationStore(join(dir, 'b.sqlite'));
    try {
      store.saveAor(AOR, [dev('sip:erin@192.0.2.7:5062', NOW + 1000)], [], up);
      assert.deepEqual(store.pendingAorDeregistrations(NOW, 10), []);
      assert.deepEqual(store.pendingAorDeregistrations(NOW + 2000, 10).map((u) => u.aor), [AOR]);
      assert.equal(store.countPendingAorDeregistrations(NOW + 2000), 1);
      store.markAorLapsed(AOR, up.updatedAt, NOW + 2000);
      assert.deepEqual(store.pendingAorDeregistrations(NOW + 2000, 10), []);
      assert.equal(store.aorUpstream(AOR)?.lapsedAt, NOW + 2000);
      // Renewed meanwhile (another updated_at): a late 2xx to the removal does not forget it.
      store.saveAor(AOR, [], store.bindingsOf(AOR), { ...up, updatedAt: NOW + 5 });
      assert.equal(store.deleteAorUpstreamIfUnchanged(AOR, up.updatedAt), false);
      assert.equal(store.deleteAorUpstreamIfUnchanged(AOR, NOW + 5), true);
      assert.equal(store.aorUpstream(AOR), undefined);
    } finally { store.close(); }
  });

  it('the expiry sweep removes upstream registrations that ended by themselves', () => {
    const store = new LocationStore(join(dir, 'c.sqlite'));
    try {
      store.saveAor(AOR, [], [], { ...up, expiresAt: NOW + 10 });
      store.purgeExpiredBatch(NOW + 20, 100);
      assert.equal(store.aorUpstream(AOR), undefined);
    } finally { store.close(); }
  });
});

describe('locally answered refreshes (throttling) are written in batches', () => {
  it('are seen at once by this process, written to the file within ABSORB_FLUSH_MS, and never lost on close', async () => {
    const file = join(dir, 'd.sqlite');
    const store = new LocationStore(file);
    store.replaceAor(AOR, [dev('sip:erin@192.0.2.7:5062', NOW + 60_000), dev('sip:erin@192.0.2.7:5064', NOW + 60_000)]);
    const other = (): Binding[] => { const r = new LocationStore(file, { readonly: true }); try { return r.bindingsOf(AOR); } finally { r.close(); } };
    store.absorbRefresh(AOR, 'sip:erin@192.0.2.7:5062', NOW + 120_000, 3, NOW + 1);
    assert.deepEqual(store.bindingsOf(AOR).map((b) => [b.expiresAt, b.cseq]), [[NOW + 120_000, 3], [NOW + 60_000, 2]]);
    assert.equal(other()[0]?.cseq, 2, 'not on disk at once');
    await new Promise((r) => setTimeout(r, ABSORB_FLUSH_MS + 50));
    assert.deepEqual(other().map((b) => b.cseq), [3, 2], 'on disk within ABSORB_FLUSH_MS');
    // Any other read or write first writes what is pending (the sweep never sees a stale expiry).
    store.absorbRefresh(AOR, 'sip:erin@192.0.2.7:5064', NOW + 90_000, 7, NOW + 2);
    assert.equal(store.liveBindings(AOR, NOW).find((b) => b.contact.endsWith('5064'))?.cseq, 7);
    assert.equal(other().find((b) => b.contact.endsWith('5064'))?.cseq, 7);
    store.absorbRefresh(AOR, 'sip:erin@192.0.2.7:5064', NOW + 95_000, 8, NOW + 3);
    store.close();
    assert.equal(other().find((b) => b.contact.endsWith('5064'))?.cseq, 8, 'close writes what is pending');
  });
});
