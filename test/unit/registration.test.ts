import { strict as assert } from 'node:assert';
import { describe, it } from 'node:test';
import { canonicalAor, isServedDomain } from '../../lib/registrar/aor.js';
import { contactKey, grantedExpiry, MAX_EXPIRES, parseDeltaSeconds, planReplicaUpdate, type Binding, type RegisterAttempt } from '../../lib/registrar/registration.js';
import { parseUri, type NameAddr } from '../../lib/sip/drachtio.js';

const NOW = 1_700_000_000_000;
const contact = (uri: string, params: Record<string, string> = {}): NameAddr => ({ uri, params });
const source = { address: '192.0.2.10', port: 40000, transport: 'udp' };

function attempt(over: Partial<RegisterAttempt> = {}): RegisterAttempt {
  return {
    aor: 'sip:alice@example.test', callId: 'call-1', cseq: 2,
    contacts: [contact('sip:alice@10.0.0.1:5060')], path: null, userAgent: 'phone/1.0', source, ...over,
  };
}

function stored(uri: string, over: Partial<Binding> = {}): Binding {
  return {
    aor: 'sip:alice@example.test', contact: uri, expiresAt: NOW + 60_000, q: null, instance: null, regId: null,
    path: null, callId: 'other-call', cseq: 7, userAgent: 'desk/2', source: { address: '198.51.100.7', port: 5062, transport: 'tcp' },
    insertion: null, upstreamExpiresAt: null, lapsedAt: null, registeredAt: NOW - 100_000, updatedAt: NOW - 50_000, ...over,
  };
}

describe('granted expiry (RFC 3261 §10.2.4)', () => {
  it('takes the reply Contact expires param over the reply Expires header', () => {
    assert.equal(grantedExpiry(contact('sip:a@h', { expires: '300' }), '3600'), 300);
  });
  it('falls back to the reply Expires header, then to 3600', () => {
    assert.equal(grantedExpiry(contact('sip:a@h'), '120'), 120);
    assert.equal(grantedExpiry(contact('sip:a@h'), undefined), 3600);
  });
  it('treats malformed values as 3600 and clamps huge ones to 2**32-1', () => {
    assert.equal(parseDeltaSeconds('abc'), 3600);
    assert.equal(parseDeltaSeconds('-5'), 3600);
    assert.equal(parseDeltaSeconds('99999999999999999999'), MAX_EXPIRES);
    assert.equal(parseDeltaSeconds(' 60 '), 60);
  });
});

describe('AoR canonical form (RFC 3261 §10.3 step 5)', () => {
  const aorOf = (uri: string): string => {
    const parsed = parseUri(uri);
    assert.ok(parsed, `parse ${uri}`);
    return canonicalAor(parsed);
  };
  it('drops port and parameters, lower-cases scheme, user and host', () => {
    assert.equal(aorOf('SIP:Alice@Example.TEST:5070;transport=tcp;user=phone'), 'sip:alice@example.test');
  });
  it('unescapes the user part', () => {
    assert.equal(aorOf('sip:al%69ce@example.test'), 'sip:alice@example.test');
  });
  it('matches served domains case-insensitively', () => {
    assert.ok(isServedDomain('EXAMPLE.test', ['example.test']));
    assert.ok(!isServedDomain('evil.test', ['example.test']));
  });
});

describe('reply → replica plan', () => {
  it('ignores anything but a 2xx', () => {
    for (const status of [401, 403, 407, 423, 500, 503, 603]) {
      assert.deepEqual(planReplicaUpdate(attempt(), { status, contacts: [], expiresHeader: undefined }, { bindings: [stored('sip:x@h')], lastCseq: undefined }, NOW), { kind: 'ignore', reason: 'not-2xx' });
    }
  });

  it('stores the granted expiry, not the requested one, with where the REGISTER came from', () => {
    const plan = planReplicaUpdate(
      attempt({ contacts: [contact('sip:alice@10.0.0.1:5060', { expires: '3600', '+sip.instance': '"<urn:uuid:1>"', 'reg-id': '1' })] }),
      { status: 200, contacts: [contact('sip:alice@10.0.0.1:5060', { expires: '300' })], expiresHeader: undefined },
      { bindings: [], lastCseq: undefined }, NOW);
    assert.equal(plan.kind, 'save');
    if (plan.kind !== 'save') return;
    assert.equal(plan.bindings.length, 1);
    const [b] = plan.bindings;
    assert.equal(b?.expiresAt, NOW + 300_000);
    assert.deepEqual(b?.source, source);
    assert.equal(b?.instance, '"<urn:uuid:1>"');
    assert.equal(b?.regId, 1);
    assert.equal(b?.callId, 'call-1');
    assert.deepEqual(plan.added, ['sip:alice@10.0.0.1:5060']);
  });

  it('drops bindings the reply no longer lists and keeps metadata of other devices it still lists', () => {
    const other = stored('sip:alice@198.51.100.7:5062;transport=tcp');
    const evicted = stored('sip:alice@203.0.113.9');
    const plan = planReplicaUpdate(attempt(), {
      status: 200,
      contacts: [contact('sip:alice@10.0.0.1:5060', { expires: '300' }), contact(other.contact, { expires: '42' })],
      expiresHeader: undefined,
    }, { bindings: [other, evicted], lastCseq: undefined }, NOW);
    assert.equal(plan.kind, 'save');
    if (plan.kind !== 'save') return;
    assert.deepEqual(plan.removed, ['sip:alice@203.0.113.9']);
    const kept = plan.bindings.find((b) => b.contact === other.contact);
    assert.deepEqual(kept?.source, other.source);
    assert.equal(kept?.expiresAt, NOW + 42_000);
    assert.equal(kept?.registeredAt, other.registeredAt);
  });

  it('a 200 without Contact (de-registration of the last binding, or Contact: *) empties the AoR', () => {
    const plan = planReplicaUpdate(attempt({ contacts: 'star' }), { status: 200, contacts: [], expiresHeader: undefined },
      { bindings: [stored('sip:a@h'), stored('sip:b@h')], lastCseq: 1 }, NOW);
    assert.equal(plan.kind, 'save');
    if (plan.kind === 'save') { assert.equal(plan.bindings.length, 0); assert.deepEqual(plan.removed.sort(), ['sip:a@h', 'sip:b@h']); }
  });

  it('a contact granted expires=0 in the reply is not kept', () => {
    const plan = planReplicaUpdate(attempt(), { status: 200, contacts: [contact('sip:alice@10.0.0.1:5060', { expires: '0' })], expiresHeader: '0' },
      { bindings: [stored('sip:alice@10.0.0.1:5060')], lastCseq: undefined }, NOW);
    assert.ok(plan.kind === 'save' && plan.bindings.length === 0);
  });

  it('a query reply refreshes bindings registered elsewhere with no source', () => {
    const plan = planReplicaUpdate(attempt({ contacts: 'none' }), { status: 200, contacts: [contact('sip:alice@192.0.2.99', { expires: '100' })], expiresHeader: undefined },
      { bindings: [], lastCseq: undefined }, NOW);
    assert.ok(plan.kind === 'save');
    if (plan.kind === 'save') { assert.equal(plan.bindings[0]?.source, null); assert.equal(plan.bindings[0]?.expiresAt, NOW + 100_000); }
  });

  it('matches the registrar\'s echo of an escaped contact to the UA\'s spelling (RFC 3261 §19.1.4)', () => {
    const plan = planReplicaUpdate(attempt({ contacts: [contact('sip:%2B15551234@10.0.0.1:5060')] }),
      { status: 200, contacts: [contact('sip:+15551234@10.0.0.1:5060', { expires: '60' })], expiresHeader: undefined },
      { bindings: [], lastCseq: undefined }, NOW);
    assert.ok(plan.kind === 'save');
    if (plan.kind === 'save') {
      assert.equal(plan.bindings[0]?.contact, 'sip:+15551234@10.0.0.1:5060', 'stored as the registrar spells it');
      assert.deepEqual(plan.bindings[0]?.source, source, 'and still known as registered from the UA\'s address');
    }
    assert.equal(contactKey('SIP:Bob@EXAMPLE.test:5060;transport=TCP'), 'sip:Bob@example.test:5060;transport=TCP');
    assert.notEqual(contactKey('sip:bob@h'), contactKey('sip:Bob@h'), 'user part stays case-sensitive');
  });

  it('ignores a late reply to an older CSeq of the same Call-ID (RFC 3261 §10.3 step 7)', () => {
    assert.deepEqual(planReplicaUpdate(attempt({ cseq: 3 }), { status: 200, contacts: [contact('sip:alice@10.0.0.1:5060')], expiresHeader: '60' },
      { bindings: [], lastCseq: 4 }, NOW), { kind: 'ignore', reason: 'stale-cseq' });
  });
});
