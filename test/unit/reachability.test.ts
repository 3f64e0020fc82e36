import { strict as assert } from 'node:assert';
import { describe, it } from 'node:test';
import type { Binding } from '../../lib/registrar/registration.js';
import { ALL_UNREACHABLE, chooseReachable, pingVerdict, ReachabilityTable } from '../../lib/reachability/reachability.js';
import { MAX_QUALIFY_IN_FLIGHT, MIN_TICK_MS, nextRoundDelay, pingsThisTick, planRound } from '../../lib/reachability/qualify-pacing.js';
import { Qualifier } from '../../lib/reachability/qualifier.js';
import type { OutboundRequest, SipReply } from '../../lib/sip/drachtio.js';
import { createLogger } from '../../lib/ops/logger.js';

function binding(contact: string, over: Partial<Binding> = {}): Binding {
  return {
    aor: 'sip:bob@example.test', contact, expiresAt: 2e12, q: null, instance: null, regId: null,
    path: null, callId: 'c', cseq: 1, userAgent: null, source: { address: '203.0.113.5', port: 40123, transport: 'udp' },
    insertion: null, upstreamExpiresAt: null, lapsedAt: null, registeredAt: 0, updatedAt: 0, ...over,
  };
}

function reply(status: number, local = false): SipReply {
  return { status, reason: '', body: '', header: () => undefined, headers: () => [], contacts: () => [], local };
}

describe('what a qualify ping says', () => {
  it('any final answer from the phone is reachable, even an error; silence and transport failures are not', () => {
    for (const status of [200, 404, 405, 481, 503]) {
      assert.deepEqual(pingVerdict({ kind: 'reply', reply: reply(status), elapsedMs: 12 }), { kind: 'reachable', rttMs: 12 }, String(status));
    }
    assert.deepEqual(pingVerdict({ kind: 'timeout', elapsedMs: 3000 }), { kind: 'unreachable', why: 'timeout' });
    assert.deepEqual(pingVerdict({ kind: 'unreachable', error: 'ECONNREFUSED', elapsedMs: 1 }), { kind: 'unreachable', why: 'transport' });
    assert.deepEqual(pingVerdict({ kind: 'too-large', bytes: 99_999, elapsedMs: 0 }), { kind: 'unreachable', why: 'transport' });
  });

  it("drachtio-server's own 503 (ICMP, refused connection) and 408 are its transport failing, not the phone answering", () => {
    assert.deepEqual(pingVerdict({ kind: 'reply', reply: reply(503, true), elapsedMs: 1 }), { kind: 'unreachable', why: 'transport' });
    assert.deepEqual(pingVerdict({ kind: 'reply', reply: reply(408, true), elapsedMs: 32_000 }), { kind: 'unreachable', why: 'timeout' });
  });

  it('a 430 Flow Failed is an edge proxy saying the flow is gone (RFC 5626 §5.3.1), not the phone answering', () => {
    assert.deepEqual(pingVerdict({ kind: 'reply', reply: reply(430), elapsedMs: 3 }), { kind: 'unreachable', why: 'transport' });
  });
});

describe('the reachability table', () => {
  it('is unknown until pinged, keeps the RTT, and the first silent moment as "since"', () => {
    const table = new ReachabilityTable();
    const b = binding('sip:bob@10.0.0.7');
    assert.deepEqual(table.of(b), { state: 'unknown' });
    table.record(b, { kind: 'reachable', rttMs: 8 }, 1000);
    assert.deepEqual(table.of(b), { state: 'reachable', rttMs: 8, checkedAt: 1000 });
    table.record(b, { kind: 'unreachable', why: 'timeout' }, 2000);
    table.record(b, { kind: 'unreachable', why: 'timeout' }, 3000);
    assert.deepEqual(table.of(b), { state: 'unreachable', since: 2000, checkedAt: 3000, why: 'timeout' });
    table.record(b, { kind: 'reachable', rttMs: 5 }, 4000);
    assert.equal(table.of(b).state, 'reachable');
    assert.deepEqual(table.counts(), { reachable: 1, unreachable: 0 });
  });

  it('is per flow: the same contact registered again from another address starts unknown there', () => {
    const table = new ReachabilityTable();
    table.record(binding('sip:bob@10.0.0.7'), { kind: 'unreachable', why: 'timeout' }, 1000);
    const moved = binding('sip:bob@10.0.0.7', { source: { address: '198.51.100.1', port: 5060, transport: 'udp' } });
    assert.deepEqual(table.of(moved), { state: 'unknown' });
  });

  it('forgets flows not seen live during a round, so it never outgrows the replica', () => {
    const table = new ReachabilityTable();
    const gone = binding('sip:bob@10.0.0.7');
    const kept = binding('sip:bob@10.0.0.8');
    table.record(gone, { kind: 'reachable', rttMs: 1 }, 1);
    table.record(kept, { kind: 'reachable', rttMs: 1 }, 1);
    assert.equal(table.sweep(), 0, 'both seen in the round they were recorded in');
    table.touch(kept);
    assert.equal(table.sweep(), 1);
    assert.equal(table.of(gone).state, 'unknown');
    assert.equal(table.of(kept).state, 'reachable');
    assert.equal(table.size, 1);
  });
});

describe('which bindings a request goes to', () => {
  const a = binding('sip:bob@10.0.0.7');
  const b = binding('sip:bob@10.0.0.8');
  const c = binding('sip:bob@10.0.0.9');
  const states = (map: Record<string, 'reachable' | 'unreachable'>) => (x: Binding) => {
    const s = map[x.contact];
    return s === 'reachable' ? { state: s, rttMs: 1, checkedAt: 0 } as const : s === 'unreachable' ? { state: s, since: 0, checkedAt: 0, why: 'timeout' } as const : { state: 'unknown' } as const;
  };

  it('skips the known unreachable while a reachable or unknown one is left, keeping the order', () => {
    assert.deepEqual(chooseReachable([a, b, c], states({ [a.contact]: 'unreachable', [b.contact]: 'reachable' })), { kind: 'send', bindings: [b, c], skipped: [a] });
    assert.deepEqual(chooseReachable([a, b], states({ [a.contact]: 'unreachable' })), { kind: 'send', bindings: [b], skipped: [a] }, 'unknown is tried');
    assert.deepEqual(chooseReachable([a, b], states({})), { kind: 'send', bindings: [a, b], skipped: [] }, 'qualify has said nothing yet');
  });

  it('with every binding unreachable there is nowhere to go: 480 (RFC 3261 §21.4.18)', () => {
    assert.deepEqual(chooseReachable([a, b], states({ [a.contact]: 'unreachable', [b.contact]: 'unreachable' })), { kind: 'all-unreachable', skipped: [a, b] });
    assert.equal(ALL_UNREACHABLE.status, 480);
    assert.equal(chooseReachable([], states({})).kind, 'send', 'no bindings is not "unreachable" (the caller answers 404/480 for that)');
  });
});

describe('spreading pings over the interval', () => {
  it('pings every binding once per interval, evenly: few bindings far apart, many in small batches', () => {
    assert.deepEqual(planRound(2, 1000), { tickMs: 500, perTick: 1 });
    assert.deepEqual(planRound(100_000, 60_000), { tickMs: MIN_TICK_MS, perTick: 34 });
    assert.deepEqual(planRound(0, 60_000), { tickMs: 1000, perTick: 1 });
    for (const [count, interval] of [[1, 1000], [7, 1000], [1000, 30_000], [100_000, 60_000], [1_000_000, 60_000]] as const) {
      const plan = planRound(count, interval);
      const roundMs = Math.ceil(count / plan.perTick) * plan.tickMs;
      assert.ok(roundMs <= interval + plan.tickMs, `${count} in ${interval} ms: the round takes ${roundMs} ms`);
      assert.ok(roundMs >= interval * 0.5 || count <= interval / 1000, `${count} in ${interval} ms: spread, not bunched (${roundMs} ms)`);
    }
  });

  it('holds back while too many pings wait for an answer', () => {
    const plan = { tickMs: 20, perTick: 34 };
    assert.equal(pingsThisTick(plan, 0), 34);
    assert.equal(pingsThisTick(plan, MAX_QUALIFY_IN_FLIGHT - 10), 10);
    assert.equal(pingsThisTick(plan, MAX_QUALIFY_IN_FLIGHT), 0);
  });

  it('starts the next round one interval after this one started, or at once when it ran over', () => {
    assert.equal(nextRoundDelay(1000, 1600, 1000), 400);
    assert.equal(nextRoundDelay(1000, 2500, 1000), MIN_TICK_MS);
  });
});

describe('the qualifier', () => {
  it('pings every live binding once a round over its own flow, bounded in flight, and records the answers', async () => {
    const bindings = Array.from({ length: 5 }, (_, i) => binding(`sip:bob@10.0.0.${i}`, { aor: `sip:u${i}@example.test`, source: { address: '127.0.0.1', port: 6000 + i, transport: 'udp' } }));
    const sent: OutboundRequest[] = [];
    let inFlight = 0;
    let maxSeen = 0;
    const table = new ReachabilityTable();
    const qualifier = new Qualifier({
      sender: {
        request: async (out) => {
          sent.push(out);
          inFlight += 1;
          maxSeen = Math.max(maxSeen, inFlight);
          await new Promise((r) => setTimeout(r, 30));
          inFlight -= 1;
          // u3 never answers; u4's flow fails.
          if (out.uri.endsWith('10.0.0.3')) return new Promise<SipReply>(() => undefined);
          return reply(out.uri.endsWith('10.0.0.4') ? 503 : 404, out.uri.endsWith('10.0.0.4'));
        },
      },
      store: {
        counts: () => Promise.resolve({ bindings: bindings.length, aors: bindings.length }),
        listLiveAfter: (_now, opts) => Promise.resolve(bindings.filter((b) => !opts.after || b.aor > opts.after.aor || (b.aor === opts.after.aor && b.contact > opts.after.contact)).slice(0, opts.limit)),
      },
      table,
      intervalMs: 500,
      timeoutMs: 100,
      selfHost: () => '127.0.0.1:5060',
      ready: () => true,
      logger: createLogger({ level: 'error', format: 'json' }),
      maxInFlight: 2,
    });
    const until = async (test: () => boolean): Promise<void> => {
      const deadline = Date.now() + 3000;
      while (!test() && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
    };
    const started = Date.now();
    qualifier.start();
    await until(() => sent.length >= 5);
    assert.equal(sent.length, 5, 'each binding once in the first round');
    assert.deepEqual(new Set(sent.map((o) => o.uri)).size, 5);
    assert.ok(Date.now() - started >= 300, 'spread over the interval, not all at once');
    await until(() => sent.length >= 6);
    qualifier.stop();
    assert.ok(Date.now() - started >= 500, 'the second round waits for the interval');
    await new Promise((r) => setTimeout(r, 150));
    assert.ok(maxSeen <= 2, `never more than maxInFlight waiting (${maxSeen})`);
    const ping = sent[0];
    assert.equal(ping?.method, 'OPTIONS');
    assert.equal(ping?.uri, 'sip:bob@10.0.0.0');
    assert.equal(ping?.nextHop, 'sip:127.0.0.1:6000;transport=udp', 'the address the REGISTER came from');
    assert.equal(ping?.headers['max-forwards'], '70');
    assert.match(ping?.headers['from'] ?? '', /^<sip:midreg@127\.0\.0\.1:5060>;tag=/);
    assert.equal(table.of(bindings[0] as Binding).state, 'reachable', '404 is an answer');
    assert.equal(table.of(bindings[3] as Binding).state, 'unreachable', 'silence');
    assert.equal(table.of(bindings[4] as Binding).state, 'unreachable', 'a local 503');
  });
});
