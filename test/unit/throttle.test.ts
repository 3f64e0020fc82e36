// Contact throttling decisions, case by case: which REGISTER midreg may answer itself (and every
// reason it must relay instead), how a relayed one is raised, what the phone is told.
import { strict as assert } from 'node:assert';
import { describe, it } from 'node:test';
import { isFinalRefusal, localAnswerContacts, raiseExpires, refusalOutcome, requestedExpiry, throttleDecision } from '../../lib/registrar/throttle.js';
import { planReplicaUpdate, type Binding, type RegisterAttempt } from '../../lib/registrar/registration.js';
import { classifyDeregistration, deregistrationRequest } from '../../lib/registrar/upstream-deregistration.js';

const NOW = 1_700_000_000_000;
const AOR = 'sip:alice@example.test';
const CONTACT = 'sip:alice@192.0.2.7:5062';
const SOURCE = { address: '192.0.2.7', port: 5062, transport: 'udp' };

function stored(over: Partial<Binding> = {}): Binding {
  return {
    aor: AOR, contact: CONTACT, expiresAt: NOW + 60_000, upstreamExpiresAt: NOW + 3_600_000, lapsedAt: null,
    q: null, instance: null, regId: null, path: null, callId: 'call-1', cseq: 5, userAgent: null, source: SOURCE,
    insertion: null, registeredAt: NOW - 60_000, updatedAt: NOW - 60_000, ...over,
  };
}

function refresh(over: Partial<RegisterAttempt> = {}, params: Record<string, string> = {}): RegisterAttempt {
  return { aor: AOR, callId: 'call-1', cseq: 6, contacts: [{ uri: CONTACT, params }], path: null, userAgent: null, source: { ...SOURCE }, ...over };
}

const decide = (attempt: RegisterAttempt, bindings: Binding[] = [stored()], expires: string | undefined = '60', margin = 60) =>
  throttleDecision(attempt, expires, bindings, NOW, margin);

describe('throttleDecision: answered locally only for a refresh of an accepted binding over the same flow', () => {
  it('absorbs a refresh: same Call-ID and Contact, higher CSeq, same source, non-zero expiry, upstream outlives it', () => {
    const d = decide(refresh());
    assert.equal(d.kind, 'absorb');
    assert.ok(d.kind === 'absorb' && d.expires === 60 && d.binding.contact === CONTACT);
  });

  it('the Contact expires parameter wins over Expires', () => {
    const d = decide(refresh({}, { expires: '90' }), [stored()], '3600');
    assert.ok(d.kind === 'absorb' && d.expires === 90);
  });

  const relays: Array<[string, RegisterAttempt, Binding[], string | undefined, string]> = [
    ['a query', refresh({ contacts: 'none' }), [stored()], undefined, 'query'],
    ['Contact: *', refresh({ contacts: 'star' }), [stored()], '0', 'star'],
    ['several Contacts', refresh({ contacts: [{ uri: CONTACT, params: {} }, { uri: 'sip:alice@192.0.2.7:5063', params: {} }] }), [stored()], '60', 'several-contacts'],
    ['no expiry at all', refresh(), [stored()], '', 'no-expiry'],
    ['a de-registration (Expires: 0)', refresh(), [stored()], '0', 'deregister'],
    ['a de-registration (expires=0 on the Contact)', refresh({}, { expires: '0' }), [stored()], '60', 'deregister'],
    ['a new device (unknown Contact)', refresh({ contacts: [{ uri: 'sip:alice@192.0.2.8:5062', params: {} }] }), [stored()], '60', 'new-contact'],
    ['a first REGISTER (nothing stored)', refresh(), [], '60', 'new-contact'],
    ['a new Call-ID', refresh({ callId: 'call-2' }), [stored()], '60', 'other-call-id'],
    ['the same CSeq', refresh({ cseq: 5 }), [stored()], '60', 'cseq-not-higher'],
    ['a lower CSeq', refresh({ cseq: 4 }), [stored()], '60', 'cseq-not-higher'],
    ['another source port', refresh({ source: { ...SOURCE, port: 5064 } }), [stored()], '60', 'other-source'],
    ['another source address', refresh({ source: { ...SOURCE, address: '192.0.2.99' } }), [stored()], '60', 'other-source'],
    ['another transport', refresh({ source: { ...SOURCE, transport: 'tcp' } }), [stored()], '60', 'other-source'],
    ['a binding with no source', refresh(), [stored({ source: null })], '60', 'other-source'],
    ['a changed +sip.instance', refresh({}, { '+sip.instance': '"<urn:uuid:2>"' }), [stored({ instance: '"<urn:uuid:1>"' })], '60', 'changed-contact'],
    ['a dropped +sip.instance', refresh(), [stored({ instance: '"<urn:uuid:1>"' })], '60', 'changed-contact'],
    ['a changed reg-id', refresh({}, { 'reg-id': '2' }), [stored({ regId: 1 })], '60', 'changed-contact'],
    ['a binding registered in mirror mode', refresh(), [stored({ upstreamExpiresAt: null })], '60', 'not-registered-upstream'],
    ['a lapsed binding', refresh(), [stored({ expiresAt: NOW - 1, lapsedAt: NOW - 1 })], '60', 'lapsed'],
    ['a binding expired for the phone', refresh(), [stored({ expiresAt: NOW })], '60', 'phone-expired'],
    ['an upstream registration ending within expiry + margin', refresh(), [stored({ upstreamExpiresAt: NOW + 119_000 })], '60', 'upstream-ending'],
  ];
  for (const [what, attempt, bindings, expires, reason] of relays) {
    it(`relays ${what} (${reason})`, () => {
      assert.deepEqual(decide(attempt, bindings, expires), { kind: 'relay', reason });
    });
  }

  it('absorbs exactly while the upstream registration outlives expiry + margin', () => {
    assert.equal(decide(refresh(), [stored({ upstreamExpiresAt: NOW + 120_000 })]).kind, 'absorb');
    assert.equal(decide(refresh(), [stored({ upstreamExpiresAt: NOW + 120_000 })], '60', 61).kind, 'relay');
  });

  it('matches the Contact as RFC 3261 §19.1.4 compares URIs, and keeps the instance as given', () => {
    const instance = '"<urn:uuid:1>"';
    const d = decide(refresh({ contacts: [{ uri: 'sip:alice@192.0.2.7:5062', params: { '+sip.instance': instance, 'reg-id': '1' } }] }), [stored({ contact: 'SIP:alice@192.0.2.7:5062', instance, regId: 1 })]);
    assert.equal(d.kind, 'absorb');
  });
});

describe('raiseExpires: the REGISTER as the registrar gets it in contact mode', () => {
  it('raises the Expires header and Contact expires parameters, never a zero', () => {
    assert.deepEqual(raiseExpires([{ uri: CONTACT, params: {} }], '60', 3600), { contacts: [{ uri: CONTACT, params: {} }], expiresHeader: '3600' });
    assert.deepEqual(raiseExpires([{ uri: CONTACT, params: { expires: '60', q: '0.5' } }], undefined, 3600), { contacts: [{ uri: CONTACT, params: { expires: '3600', q: '0.5' } }], expiresHeader: undefined });
    assert.deepEqual(raiseExpires([{ uri: CONTACT, params: { expires: '0' } }], undefined, 3600), { contacts: [{ uri: CONTACT, params: { expires: '0' } }], expiresHeader: undefined });
    assert.deepEqual(raiseExpires([{ uri: CONTACT, params: {} }], '0', 3600), { contacts: [{ uri: CONTACT, params: {} }], expiresHeader: '0' });
  });

  it('never lowers a longer expiry, so a phone retrying after a 423 with Min-Expires above MIDREG_OUTGOING_EXPIRES gets through', () => {
    assert.equal(raiseExpires([{ uri: CONTACT, params: {} }], '7200', 3600).expiresHeader, '7200');
    assert.deepEqual(raiseExpires([{ uri: CONTACT, params: { expires: '7200' } }], undefined, 3600).contacts[0]?.params, { expires: '7200' });
  });

  it('gives a REGISTER without any expiry an Expires header', () => {
    assert.equal(raiseExpires([{ uri: CONTACT, params: {} }], undefined, 1800).expiresHeader, '1800');
  });

  it('requestedExpiry: Contact parameter, else Expires, else undefined', () => {
    assert.equal(requestedExpiry({ uri: CONTACT, params: { expires: '30' } }, '60'), 30);
    assert.equal(requestedExpiry({ uri: CONTACT, params: {} }, '60'), 60);
    assert.equal(requestedExpiry({ uri: CONTACT, params: {} }, undefined), undefined);
  });
});

describe('what the phone is told', () => {
  it('a local 200 lists every current binding with its remaining time as the phone sees it (RFC 3261 §10.3 step 8)', () => {
    const other = stored({ contact: 'sip:alice@192.0.2.8:5070', expiresAt: NOW + 30_500, q: 0.5, instance: '"<urn:uuid:9>"', regId: 1 });
    const gone = stored({ contact: 'sip:alice@192.0.2.9:5070', expiresAt: NOW - 1 });
    assert.equal(localAnswerContacts([stored(), other, gone], NOW),
      `<${CONTACT}>;expires=60, <sip:alice@192.0.2.8:5070>;expires=31;q=0.5;+sip.instance="<urn:uuid:9>";reg-id=1`);
    assert.equal(localAnswerContacts([gone], NOW), undefined);
  });

  it('a relayed registration: phone expiry min(asked, granted), upstream expiry as granted; other devices keep theirs', () => {
    const other = stored({ contact: 'sip:alice@192.0.2.8:5070', callId: 'call-9', expiresAt: NOW + 20_000 });
    const plan = planReplicaUpdate(refresh({ cseq: 7 }), {
      status: 200, contacts: [{ uri: CONTACT, params: { expires: '3600' } }, { uri: other.contact, params: { expires: '3500' } }, { uri: 'sip:alice@10.9.9.9', params: { expires: '100' } }],
      expiresHeader: undefined, throttle: { requested: new Map([[CONTACT, 60]]) },
    }, { bindings: [stored(), other], lastCseq: 5 }, NOW);
    assert.equal(plan.kind, 'save');
    const by = new Map(plan.kind === 'save' ? plan.bindings.map((b) => [b.contact, b]) : []);
    assert.deepEqual([by.get(CONTACT)?.expiresAt, by.get(CONTACT)?.upstreamExpiresAt, by.get(CONTACT)?.cseq], [NOW + 60_000, NOW + 3_600_000, 7]);
    assert.deepEqual([by.get(other.contact)?.expiresAt, by.get(other.contact)?.upstreamExpiresAt], [NOW + 20_000, NOW + 3_500_000]);
    assert.deepEqual([by.get('sip:alice@10.9.9.9')?.expiresAt, by.get('sip:alice@10.9.9.9')?.upstreamExpiresAt], [NOW + 100_000, null], 'not registered by midreg: mirrored, never de-registered by midreg');
  });

  it('the phone never gets more than the registrar granted', () => {
    const plan = planReplicaUpdate(refresh(), { status: 200, contacts: [{ uri: CONTACT, params: { expires: '30' } }], expiresHeader: undefined, throttle: { requested: new Map([[CONTACT, 60]]) } }, { bindings: [], lastCseq: undefined }, NOW);
    assert.ok(plan.kind === 'save' && plan.bindings[0]?.expiresAt === NOW + 30_000 && plan.bindings[0].upstreamExpiresAt === NOW + 30_000);
  });

  it('mirror mode keeps no upstream expiry', () => {
    const plan = planReplicaUpdate(refresh(), { status: 200, contacts: [{ uri: CONTACT, params: { expires: '300' } }], expiresHeader: undefined }, { bindings: [], lastCseq: undefined }, NOW);
    assert.ok(plan.kind === 'save' && plan.bindings[0]?.upstreamExpiresAt === null && plan.bindings[0].expiresAt === NOW + 300_000);
  });
});

describe('the registrar is obeyed', () => {
  it('final refusals remove the binding; challenges, 423, 3xx and 5xx do not', () => {
    for (const s of [403, 404, 400, 420, 480, 489, 603, 606]) assert.equal(isFinalRefusal(s), true, String(s));
    for (const s of [200, 302, 401, 407, 423, 500, 503]) assert.equal(isFinalRefusal(s), false, String(s));
  });

  // Two devices of one AoR (AoR mode) or two phones of one user (contact mode): the refused one is call-1.
  const other = stored({ contact: 'sip:alice@192.0.2.8:5062', callId: 'call-2', cseq: 3, source: { address: '192.0.2.8', port: 5062, transport: 'udp' } });
  const both = [stored(), other];

  it('a final refusal of a phone\'s relayed refresh removes its own binding and keeps the other device', () => {
    const out = refusalOutcome(refresh(), 403, both, undefined);
    assert.ok(out.kind === 'remove');
    assert.deepEqual(out.removed.map((b) => b.contact), [CONTACT]);
    assert.deepEqual(out.kept, [other]);
    // From another source (the phone behind a new NAT port) it is still that phone's Call-ID and Contact.
    assert.equal(refusalOutcome(refresh({ source: { ...SOURCE, port: 6000 } }), 403, both, undefined).kind, 'remove');
    const last = refusalOutcome(refresh(), 603, [stored()], undefined);
    assert.ok(last.kind === 'remove' && last.kept.length === 0, 'the last device goes too');
  });

  it('nothing goes for a challenge, 423, 5xx, a stranger\'s Call-ID, a late answer to an older CSeq, or a REGISTER without Contact', () => {
    for (const status of [401, 407, 423, 500, 503, 302]) assert.deepEqual(refusalOutcome(refresh(), status, both, undefined), { kind: 'none', why: 'not-a-final-refusal' }, String(status));
    assert.deepEqual(refusalOutcome(refresh({ callId: 'stranger' }), 403, both, undefined), { kind: 'none', why: 'not-its-binding' });
    assert.deepEqual(refusalOutcome(refresh({ contacts: [{ uri: 'sip:alice@192.0.2.99:5062', params: {} }] }), 403, both, undefined), { kind: 'none', why: 'not-its-binding' });
    // CSeq 4 refused after CSeq 5 was applied (the stored binding), or after a remembered CSeq 7.
    assert.deepEqual(refusalOutcome(refresh({ cseq: 4 }), 403, both, undefined), { kind: 'none', why: 'stale-cseq' });
    assert.deepEqual(refusalOutcome(refresh({ cseq: 6 }), 403, both, 7), { kind: 'none', why: 'stale-cseq' });
    assert.deepEqual(refusalOutcome(refresh({ contacts: 'star' }), 403, both, undefined), { kind: 'none', why: 'no-contact' });
    assert.deepEqual(refusalOutcome(refresh({ contacts: 'none' }), 403, both, undefined), { kind: 'none', why: 'no-contact' });
  });
});

describe('upstream de-registration of a phone that stopped refreshing', () => {
  it('same Call-ID, next CSeq, the Contact the registrar holds with expires=0 (RFC 3261 §10.2.2)', () => {
    const req = deregistrationRequest(stored({ cseq: 9 }), 'sip:127.0.0.1:5070');
    assert.equal(req.uri, 'sip:127.0.0.1:5070');
    assert.equal(req.headers['call-id'], 'call-1');
    assert.equal(req.headers['cseq'], '10 REGISTER');
    assert.equal(req.headers['contact'], `<${CONTACT}>;expires=0`);
    assert.equal(req.headers['expires'], '0');
    assert.equal(req.headers['to'], `<${AOR}>`);
    assert.match(req.headers['from'] ?? '', /^<sip:alice@example\.test>;tag=[0-9a-f]{12}$/);
    const inserted = deregistrationRequest(stored({ insertion: { contact: 'sip:alice@10.0.0.1:5060;ctid=abc', key: 'abc' } }), 'sip:r');
    assert.equal(inserted.headers['contact'], '<sip:alice@10.0.0.1:5060;ctid=abc>;expires=0');
  });

  it('classifies the registrar\'s answer', () => {
    assert.equal(classifyDeregistration(200), 'ok');
    assert.equal(classifyDeregistration(401), 'challenged');
    assert.equal(classifyDeregistration(407), 'challenged');
    assert.equal(classifyDeregistration(403), 'refused');
    assert.equal(classifyDeregistration(500), 'refused');
  });
});
