import { strict as assert } from 'node:assert';
import { describe, it } from 'node:test';
import { FloodGuard } from '../../lib/ops/flood-guard.js';
import { limitPlan, type Binding } from '../../lib/registrar/registration.js';

describe('flood guard', () => {
  it('lets a source burst, then sheds it with 503 + Retry-After until its rate refills', () => {
    let now = 0;
    const guard = new FloodGuard({ perSourceRate: 2, perSourceBurst: 3, maxInFlight: 0, exempt: () => false }, () => now);
    const results = Array.from({ length: 5 }, () => guard.admit('198.51.100.1', 5060));
    assert.deepEqual(results.map((r) => r.kind), ['admit', 'admit', 'admit', 'reject', 'reject']);
    const rejected = results[3];
    assert.ok(rejected?.kind === 'reject' && rejected.status === 503 && rejected.retryAfterSec >= 1 && rejected.why === 'source-rate');
    assert.equal(guard.admit('198.51.100.2', 5060).kind, 'admit', 'another source is not affected');
    now += 500;
    assert.equal(guard.admit('198.51.100.1', 5060).kind, 'admit', 'one token back after 1/rate seconds');
    assert.equal(guard.admit('198.51.100.1', 5060).kind, 'reject');
  });

  it('never limits the platform', () => {
    const guard = new FloodGuard({ perSourceRate: 1, perSourceBurst: 1, maxInFlight: 0, exempt: (a, p) => a === '192.0.2.1' && p === 5060 });
    for (let i = 0; i < 100; i++) assert.equal(guard.admit('192.0.2.1', 5060).kind, 'admit');
    assert.equal(guard.admit('192.0.2.1', 40000).kind, 'admit');
    assert.equal(guard.admit('192.0.2.1', 40000).kind, 'reject', 'same IP, other port: a UA, limited');
  });

  it('caps transactions in flight and frees a slot on release', () => {
    const guard = new FloodGuard({ perSourceRate: 0, perSourceBurst: 1, maxInFlight: 2, exempt: () => false });
    const a = guard.admit('198.51.100.1', 1);
    const b = guard.admit('198.51.100.2', 1);
    const c = guard.admit('198.51.100.3', 1);
    assert.ok(c.kind === 'reject' && c.why === 'overload');
    assert.ok(a.kind === 'admit' && b.kind === 'admit');
    a.release();
    a.release();
    assert.equal(guard.active, 1, 'a double release frees one slot only');
    assert.equal(guard.admit('198.51.100.3', 1).kind, 'admit');
  });

  it('rides out a busy moment: slow transactions beside fast ones shed nothing', () => {
    let now = 0;
    const guard = new FloodGuard({ perSourceRate: 0, perSourceBurst: 1, maxInFlight: 0, queueTargetMs: 50, exempt: () => false }, () => now);
    // 300 in flight at once, as a 150 ms hiccup at 2,000/s leaves them, but some finish fast.
    const held = Array.from({ length: 300 }, () => guard.admit('198.51.100.1', 1));
    for (let interval = 0; interval < 5; interval++) {
      for (let i = 0; i < 20; i++) {
        const quick = guard.admit('198.51.100.2', 1);
        assert.equal(quick.kind, 'admit', `interval ${interval}: nothing is shed`);
        now += 2;
        if (quick.kind === 'admit') quick.release();
        const slow = held.pop();
        now += 3;
        if (slow?.kind === 'admit') slow.release();
      }
    }
    assert.equal(guard.queued, false);
  });

  /** 200 requests a second for `ms`, each answered `latencyMs` after it was admitted; what each got. */
  const drive = (guard: FloodGuard, clock: { now: number }, pending: { at: number; release: () => void }[], ms: number, latencyMs: number): string[] => {
    const statuses: string[] = [];
    for (const end = clock.now + ms; clock.now < end; clock.now += 5) {
      while (pending.length > 0 && (pending[0]?.at ?? Infinity) <= clock.now) pending.shift()?.release();
      const a = guard.admit('198.51.100.1', 1);
      statuses.push(a.kind === 'admit' ? 'admit' : a.why);
      if (a.kind === 'admit') pending.push({ at: clock.now + latencyMs, release: a.release });
    }
    return statuses;
  };

  it('sheds while a queue stands in front of every transaction, and stops once it drains', () => {
    const clock = { now: 0 };
    const guard = new FloodGuard({ perSourceRate: 0, perSourceBurst: 1, maxInFlight: 0, queueTargetMs: 50, exempt: () => false }, () => clock.now);
    const pending: { at: number; release: () => void }[] = [];
    assert.ok(drive(guard, clock, pending, 1000, 2).every((s) => s === 'admit'), 'a registrar 2 ms away: nothing shed');
    // Then every transaction waits 300 ms: a queue has formed in front of all of them.
    const statuses = drive(guard, clock, pending, 1000, 300);
    assert.ok(statuses.slice(0, 60).every((s) => s === 'admit'), 'not before a slow transaction has completed');
    assert.ok(statuses.slice(100).includes('queue'), 'sheds once the queue has stood for an interval');
    assert.ok(guard.active <= 80, `in flight bounded by the throughput the target allows (${guard.active})`);
    // The registrar is fast again: the queue drains and admission resumes.
    clock.now += 400;
    while (pending.length > 0) pending.shift()?.release();
    assert.ok(drive(guard, clock, pending, 300, 1).slice(-20).every((s) => s === 'admit'), 'admits again');
    assert.equal(guard.queued, false, 'no queue any more');
  });

  it('does not read a far registrar as a queue: a steady 150 ms round trip sheds nothing', () => {
    const clock = { now: 0 };
    const guard = new FloodGuard({ perSourceRate: 0, perSourceBurst: 1, maxInFlight: 0, queueTargetMs: 50, exempt: () => false }, () => clock.now);
    const statuses = drive(guard, clock, [], 5000, 150);
    assert.deepEqual([...new Set(statuses)], ['admit'], 'all 1,000 admitted');
    assert.equal(guard.queued, false);
  });

  it('never keeps shedding without evidence: transactions stuck in flight do not lock admission', () => {
    let now = 0;
    const guard = new FloodGuard({ perSourceRate: 0, perSourceBurst: 1, maxInFlight: 0, queueTargetMs: 50, exempt: () => false }, () => now);
    // An interval of fast transactions sets the baseline…
    for (let i = 0; i < 20; i++) {
      const a = guard.admit('198.51.100.1', 1);
      now += 1;
      if (a.kind === 'admit') a.release();
    }
    now = 100;
    // …a burst of slow transactions sets the limit…
    const slow = Array.from({ length: 40 }, () => guard.admit('198.51.100.1', 1));
    now = 400;
    for (const a of slow.slice(0, 20)) if (a.kind === 'admit') a.release();
    now = 501;
    assert.equal(guard.queued, true);
    // …then the other 20 hang (a registrar that never answers) and new requests are shed. One
    // interval later there is no evidence of a queue any more, and requests get in again.
    now = 620;
    assert.equal(guard.admit('198.51.100.1', 1).kind, 'admit');
    assert.equal(guard.active, 21);
  });

  it('keeps a bounded number of source buckets', () => {
    const guard = new FloodGuard({ perSourceRate: 1, perSourceBurst: 1, maxInFlight: 0, exempt: () => false, maxTrackedSources: 10 });
    assert.equal(guard.admit('10.0.0.0', 1).kind, 'admit');
    for (let i = 1; i <= 20; i++) guard.admit(`10.0.0.${i}`, 1);
    assert.equal(guard.admit('10.0.0.0', 1).kind, 'admit', 'the oldest bucket was evicted, so the source starts fresh');
  });
});

describe('replica bounds', () => {
  const b = (contact: string, callId: string, expiresAt: number): Binding => ({
    aor: 'sip:a@example.test', contact, expiresAt, q: null, instance: null, regId: null, path: null, callId, cseq: 1,
    userAgent: null, source: null, insertion: null, upstreamExpiresAt: null, lapsedAt: null, registeredAt: 0, updatedAt: 0,
  });
  it('keeps the device that just registered and the longest-lived others when an AoR has too many bindings', () => {
    const plan = { kind: 'save' as const, aor: 'sip:a@example.test', bindings: [b('sip:1@h', 'old', 500), b('sip:2@h', 'old', 900), b('sip:3@h', 'now', 100)], added: ['sip:3@h'], refreshed: [], removed: [] };
    const limited = limitPlan(plan, 'now', 0, false, { maxBindingsPerAor: 2, maxAors: 10 });
    assert.equal(limited.kind, 'trimmed');
    if (limited.kind === 'trimmed') {
      assert.deepEqual(limited.plan.bindings.map((x) => x.contact), ['sip:3@h', 'sip:2@h']);
      assert.deepEqual(limited.dropped, ['sip:1@h']);
    }
  });
  it('refuses a new AoR once the replica holds maxAors, but not an existing one', () => {
    const plan = { kind: 'save' as const, aor: 'sip:a@example.test', bindings: [b('sip:1@h', 'c', 1)], added: [], refreshed: [], removed: [] };
    assert.deepEqual(limitPlan(plan, 'c', 10, true, { maxBindingsPerAor: 5, maxAors: 10 }), { kind: 'refused', reason: 'max-aors' });
    assert.equal(limitPlan(plan, 'c', 10, false, { maxBindingsPerAor: 5, maxAors: 10 }).kind, 'within');
  });
});
