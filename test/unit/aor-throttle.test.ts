// AoR throttling decisions, case by case: what is answered locally (only a device's own refresh),
// what the registrar is sent, how its answer changes devices and the upstream registration.
import { strict as assert } from 'node:assert';
import { describe, it } from 'node:test';
import { aorContactKey, aorContactUri, aorDeregistrationRequest, aorThrottleDecision, planAorUpdate, upstreamRegister, type AorUpstream } from '../../lib/registrar/aor-throttle.js';
import type { Binding, RegisterAttempt } from '../../lib/registrar/registration.js';
import { locate } from '../../lib/messaging/routing.js';

const NOW = 1_700_000_000_000;
const AOR = 'sip:alice@example.test';
const PHONE = 'sip:alice@192.0.2.7:5062';
const OTHER = 'sip:alice@192.0.2.8:5070';
const SOURCE = { address: '192.0.2.7', port: 5062, transport: 'udp' };
const SELF = { scheme: 'sip' as const, hostport: '10.0.0.1:5060', transport: 'udp' };
const AOR_CONTACT = aorContactUri(AOR, SELF);

function device(over: Partial<Binding> = {}): Binding {
  return {
    aor: AOR, contact: PHONE, expiresAt: NOW + 60_000, upstreamExpiresAt: null, lapsedAt: null,
    q: null, instance: null, regId: null, path: null, callId: 'call-1', cseq: 5, userAgent: null, source: SOURCE,
    insertion: null, registeredAt: NOW - 60_000, updatedAt: NOW - 60_000, ...over,
  };
}

function upstream(over: Partial<AorUpstream> = {}): AorUpstream {
  return { aor: AOR, contact: AOR_CONTACT, key: aorContactKey(AOR), callId: 'call-1', cseq: 5, expiresAt: NOW + 3_600_000, lapsedAt: null, updatedAt: NOW - 60_000, ...over };
}

function attempt(over: Partial<RegisterAttempt> = {}): RegisterAttempt {
  return { aor: AOR, callId: 'call-1', cseq: 6, contacts: [{ uri: PHONE, params: {} }], path: null, userAgent: null, source: { ...SOURCE }, ...over };
}

describe('AoR mode: the AoR Contact', () => {
  it('is midreg\'s address with the AoR\'s user and a key naming the AoR, the same for every device', () => {
    assert.equal(AOR_CONTACT, `sip:alice@10.0.0.1:5060;ctid=${aorContactKey(AOR)}`);
    assert.notEqual(aorContactKey(AOR), aorContactKey('sip:bob@example.test'));
    assert.equal(aorContactUri(AOR, { ...SELF, transport: 'tcp' }), `sip:alice@10.0.0.1:5060;ctid=${aorContactKey(AOR)};transport=tcp`);
  });
});

describe('aorThrottleDecision: only a device\'s own refresh over its own flow is answered locally', () => {
  const decide = (a: RegisterAttempt, devices: Binding[] = [device()], up: AorUpstream | null = upstream(), expires = '60') =>
    aorThrottleDecision(a, expires, devices, up ?? undefined, NOW, 60);

  it('absorbs a refresh while the AoR\'s upstream registration outlives it', () => {
    const d = decide(attempt());
    assert.ok(d.kind === 'absorb' && d.expires === 60 && d.binding.contact === PHONE);
  });

  const relays: Array<[string, RegisterAttempt, Binding[], AorUpstream | null, string]> = [
    ['a second device of a registered AoR (OpenSIPS issue 3193 answered it 200)', attempt({ callId: 'call-2', contacts: [{ uri: OTHER, params: {} }], source: { ...SOURCE, port: 5070 } }), [device()], upstream(), 'new-contact'],
    ['the same Call-ID from another port', attempt({ source: { ...SOURCE, port: 6000 } }), [device()], upstream(), 'other-source'],
    ['a new Call-ID for the same Contact', attempt({ callId: 'call-9' }), [device()], upstream(), 'other-call-id'],
    ['a CSeq not higher', attempt({ cseq: 5 }), [device()], upstream(), 'cseq-not-higher'],
    ['Contact: *', attempt({ contacts: 'star' }), [device()], upstream(), 'star'],
    ['no upstream registration', attempt(), [device()], null, 'not-registered-upstream'],
    ['a lapsed upstream registration', attempt(), [device()], upstream({ lapsedAt: NOW - 1000 }), 'lapsed'],
    ['an upstream registration ending', attempt(), [device()], upstream({ expiresAt: NOW + 100_000 }), 'upstream-ending'],
  ];
  for (const [name, a, devices, up, reason] of relays) {
    it(`relays ${name}`, () => assert.deepEqual(decide(a, devices, up), { kind: 'relay', reason }));
  }
  it('relays a de-registration', () => assert.deepEqual(decide(attempt(), [device()], upstream(), '0'), { kind: 'relay', reason: 'deregister' }));
});

describe('upstreamRegister: what the registrar is sent', () => {
  it('asks the registrar for as long as the device asked when that is longer (its retry after a 423, RFC 3261 §10.2.8)', () => {
    assert.equal(upstreamRegister(attempt(), '7200', [], AOR_CONTACT, 3600, NOW).expires, '7200');
  });

  it('midreg\'s Contact with MIDREG_OUTGOING_EXPIRES while a device remains', () => {
    assert.deepEqual(upstreamRegister(attempt(), '60', [], AOR_CONTACT, 3600, NOW), { contact: `<${AOR_CONTACT}>;expires=3600`, expires: '3600', removesAor: false });
    // One device leaves, another stays: the AoR stays registered (refreshed with the leaver's credentials).
    assert.equal(upstreamRegister(attempt(), '0', [device(), device({ contact: OTHER })], AOR_CONTACT, 3600, NOW).expires, '3600');
  });
  it('expires=0 when the REGISTER removes the last device, or is Contact: *', () => {
    assert.deepEqual(upstreamRegister(attempt(), '0', [device()], AOR_CONTACT, 3600, NOW), { contact: `<${AOR_CONTACT}>;expires=0`, expires: '0', removesAor: true });
    assert.equal(upstreamRegister(attempt({ contacts: 'star' }), '0', [device(), device({ contact: OTHER })], AOR_CONTACT, 3600, NOW).expires, '0');
    // An expired device does not keep the AoR registered.
    assert.equal(upstreamRegister(attempt(), '0', [device(), device({ contact: OTHER, expiresAt: NOW - 1 })], AOR_CONTACT, 3600, NOW).expires, '0');
  });
  it('a query stays a query', () => {
    assert.deepEqual(upstreamRegister(attempt({ contacts: 'none' }), undefined, [device()], AOR_CONTACT, 3600, NOW), { contact: undefined, expires: undefined, removesAor: false });
  });
});

describe('planAorUpdate: the registrar\'s answer applied to devices and upstream', () => {
  const reply = (seconds: number | undefined, status = 200) => ({ status, contacts: seconds === undefined ? [] : [{ uri: AOR_CONTACT, params: { expires: String(seconds) } }], expiresHeader: undefined });

  it('a device gets min(asked, granted); the upstream row records Call-ID, CSeq and the granted expiry', () => {
    const plan = planAorUpdate(attempt({ callId: 'call-2', cseq: 1, contacts: [{ uri: OTHER, params: { '+sip.instance': '"<urn:uuid:1>"', 'reg-id': '1' } }] }), '600', [device()], upstream(), reply(300), AOR_CONTACT, NOW);
    assert.equal(plan.kind, 'save');
    if (plan.kind !== 'save') return;
    assert.deepEqual(plan.devices.map((b) => [b.contact, (b.expiresAt - NOW) / 1000]).sort(), [[OTHER, 300], [PHONE, 60]].sort());
    const added = plan.devices.find((b) => b.contact === OTHER);
    assert.deepEqual([added?.instance, added?.regId, added?.callId, added?.upstreamExpiresAt], ['"<urn:uuid:1>"', 1, 'call-2', null]);
    assert.deepEqual([plan.upstream?.callId, plan.upstream?.cseq, plan.upstream?.expiresAt], ['call-2', 1, NOW + 300_000]);
    assert.deepEqual(plan.added, [OTHER]);
  });
  it('no device outlives the upstream registration', () => {
    const plan = planAorUpdate(attempt(), '600', [device({ expiresAt: NOW + 500_000 })], upstream(), reply(20), AOR_CONTACT, NOW);
    assert.ok(plan.kind === 'save' && plan.devices.every((b) => b.expiresAt <= NOW + 20_000));
  });
  it('a de-registration removes that device; Contact: * and midreg\'s Contact gone remove all', () => {
    const two = [device(), device({ contact: OTHER, callId: 'call-2' })];
    const one = planAorUpdate(attempt(), '0', two, upstream(), reply(3600), AOR_CONTACT, NOW);
    assert.ok(one.kind === 'save');
    assert.deepEqual(one.kind === 'save' && one.devices.map((b) => b.contact), [OTHER]);
    const star = planAorUpdate(attempt({ contacts: 'star' }), '0', two, upstream(), reply(undefined), AOR_CONTACT, NOW);
    assert.ok(star.kind === 'save' && star.devices.length === 0 && star.upstream === null);
  });
  it('non-2xx and a stale CSeq change nothing', () => {
    assert.deepEqual(planAorUpdate(attempt(), '60', [device()], upstream(), reply(undefined, 401), AOR_CONTACT, NOW), { kind: 'ignore', reason: 'not-2xx' });
    assert.deepEqual(planAorUpdate(attempt({ cseq: 4 }), '60', [device()], upstream(), reply(3600), AOR_CONTACT, NOW), { kind: 'ignore', reason: 'stale-cseq' });
  });
  it('the de-registration midreg sends: last accepted Call-ID, next CSeq, expires=0', () => {
    const r = aorDeregistrationRequest(upstream({ callId: 'call-7', cseq: 41 }), 'sip:10.0.0.9');
    assert.equal(r.headers['call-id'], 'call-7');
    assert.equal(r.headers['cseq'], '42 REGISTER');
    assert.equal(r.headers['contact'], `<${AOR_CONTACT}>;expires=0`);
    assert.equal(r.headers['expires'], '0');
  });
});

describe('locate: a request to midreg\'s AoR Contact', () => {
  const own = { sipAddresses: ['udp/10.0.0.1:5060'], domains: ['example.test'] };
  const lookup = (up: AorUpstream | undefined, live: Binding[]) => ({
    liveBindingsByContact: () => Promise.resolve([]), liveBindings: () => Promise.resolve(live), bindingsByInsertionKey: () => Promise.resolve([]),
    aorUpstreamByKey: () => Promise.resolve(up),
  });
  it('reaches every live device of the AoR', async () => {
    const target = await locate(AOR_CONTACT, lookup(upstream(), [device(), device({ contact: OTHER })]), own, NOW);
    assert.ok(target.kind === 'bindings' && target.via === 'aor-contact' && target.bindings.length === 2);
  });
  it('is lapsed (480) with no live device, or when midreg\'s removal was challenged', async () => {
    assert.equal((await locate(AOR_CONTACT, lookup(upstream(), []), own, NOW)).kind, 'lapsed');
    assert.equal((await locate(AOR_CONTACT, lookup(upstream({ lapsedAt: NOW }), [device()]), own, NOW)).kind, 'lapsed');
  });
  it('an unknown key reaches nothing', async () => {
    assert.equal((await locate(AOR_CONTACT, lookup(undefined, [device()]), own, NOW)).kind, 'unknown-key');
  });
});
