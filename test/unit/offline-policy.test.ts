// Offline messages, the pure decisions (lib/messaging/offline-policy.ts): who may have a message
// kept, which bound refuses it with which status, the retry backoff and the Date a message carries.
import { strict as assert } from 'node:assert';
import { describe, it } from 'node:test';
import { admitOffline, retryDelayMs, SenderRate, sipDate, type OfflineLimits, type OfflineRequest } from '../../lib/messaging/offline-policy.js';

const limits: OfflineLimits = { ttlSec: 60, maxPerRecipient: 3, maxBytesPerRecipient: 1000, maxTotalBytes: 5000, senderPerMinute: 2 };
const request = (over: Partial<OfflineRequest> = {}): OfflineRequest => ({
  recipientKnown: true, queue: { messages: 0, bytes: 0 }, totalBytes: 0, messageBytes: 100, senderWithinRate: () => true, ...over,
});

describe('which MESSAGE is kept for later delivery', () => {
  it('a user the registrar accepted once, within every bound: stored (202)', () => {
    assert.deepEqual(admitOffline(request(), limits, 404), { kind: 'store' });
  });

  it('a user never registered keeps today\'s 404 (or 480), and costs the sender no token', () => {
    let asked = 0;
    const refusal = admitOffline(request({ recipientKnown: false, senderWithinRate: () => { asked++; return true; } }), limits, 480);
    assert.ok(refusal.kind === 'refuse' && refusal.status === 480);
    assert.equal(asked, 0);
  });

  it('each bound refuses with 486 and says which; what is stored is never dropped to make room', () => {
    const cases: Array<[Partial<OfflineRequest>, RegExp]> = [
      [{ senderWithinRate: () => false }, /Too Many Offline Messages/],
      [{ queue: { messages: 3, bytes: 300 } }, /Offline Mailbox Full/],
      [{ queue: { messages: 1, bytes: 950 } }, /Offline Mailbox Full/],
      [{ totalBytes: 4950 }, /Offline Store Full/],
    ];
    for (const [over, reason] of cases) {
      const refusal = admitOffline(request(over), limits, 404);
      assert.ok(refusal.kind === 'refuse', JSON.stringify(over));
      assert.equal(refusal.status, 486);
      assert.match(refusal.reason, reason);
    }
    const rate = admitOffline(request({ senderWithinRate: () => false }), limits, 404);
    assert.ok(rate.kind === 'refuse' && rate.retryAfterSec === 60, 'the sender rate says when to try again');
    assert.equal(admitOffline(request({ queue: { messages: 2, bytes: 900 } }), limits, 404).kind, 'store', 'exactly at the bound is still within it');
  });
});

describe('sender rate, backoff, Date', () => {
  it('a sender gets its per-minute budget, refilled over the minute; others are not affected', () => {
    const rate = new SenderRate(2);
    assert.deepEqual([rate.take('a', 0), rate.take('a', 0), rate.take('a', 0)], [true, true, false]);
    assert.equal(rate.take('b', 0), true);
    assert.equal(rate.take('a', 29_000), false);
    assert.equal(rate.take('a', 30_000), true, 'one token back after half a minute');
  });

  it('retries back off from 30 s, doubling, to an hour', () => {
    assert.deepEqual([0, 1, 2, 6, 7, 50].map(retryDelayMs), [30_000, 60_000, 120_000, 1_920_000, 3_600_000, 3_600_000]);
  });

  it('Date is RFC 1123 in GMT (RFC 3261 §20.17)', () => {
    assert.equal(sipDate(Date.UTC(2026, 11, 5, 1, 2, 3)), 'Sat, 05 Dec 2026 01:02:03 GMT');
  });
});
