import { strict as assert } from 'node:assert';
import { describe, it } from 'node:test';
import type { Binding } from '../../lib/registrar/registration.js';
import { branchFor, chooseFinal, classifySender, flowUri, instanceKey, locate, oneFlowPerInstance, resolveTarget, UDP_SAFE_BYTES, understoodScheme } from '../../lib/messaging/routing.js';

function binding(over: Partial<Binding> = {}): Binding {
  return {
    aor: 'sip:bob@example.test', contact: 'sip:bob@10.0.0.7:5060', expiresAt: 2e12, q: null, instance: null, regId: null,
    path: null, callId: 'c', cseq: 1, userAgent: null, source: { address: '203.0.113.5', port: 40123, transport: 'udp' },
    insertion: null, upstreamExpiresAt: null, lapsedAt: null, registeredAt: 0, updatedAt: 0, ...over,
  };
}

describe('MESSAGE routing decisions', () => {
  it('reaches a NAT\'d UA at the address its REGISTER came from, keeping the contact as Request-URI', () => {
    assert.deepEqual(branchFor(binding(), 500), {
      kind: 'send', binding: binding(), requestUri: 'sip:bob@10.0.0.7:5060', nextHop: 'sip:203.0.113.5:40123;transport=udp', route: undefined,
    });
    const tls = branchFor(binding({ source: { address: '2001:db8::1', port: 5061, transport: 'tls' } }), 500);
    assert.ok(tls.kind === 'send' && tls.nextHop === 'sips:[2001:db8::1]:5061;transport=tls');
  });

  it('follows a registered Path instead of the source address (RFC 3327)', () => {
    const branch = branchFor(binding({ path: '<sip:edge.example.test;lr>' }), 5000);
    assert.ok(branch.kind === 'send' && branch.route === '<sip:edge.example.test;lr>' && branch.nextHop === undefined);
  });

  it('refuses to push more than 1300 bytes over UDP (RFC 3428 §8) but not over TCP', () => {
    assert.deepEqual(branchFor(binding(), UDP_SAFE_BYTES + 1).kind, 'skip');
    assert.equal(branchFor(binding(), UDP_SAFE_BYTES).kind, 'send');
    assert.equal(branchFor(binding({ source: { address: '203.0.113.5', port: 40123, transport: 'tcp' } }), 60_000).kind, 'send');
  });

  it('targets bindings by contact first, then by served AoR, else upstream; no live binding is reported as such', () => {
    const b = binding();
    assert.deepEqual(resolveTarget({ byContact: [b], servedAor: undefined, byAor: [] }), { kind: 'bindings', bindings: [b], via: 'contact', aor: undefined });
    assert.deepEqual(resolveTarget({ byContact: [], servedAor: 'sip:bob@example.test', byAor: [b] }), { kind: 'bindings', bindings: [b], via: 'aor', aor: 'sip:bob@example.test' });
    assert.deepEqual(resolveTarget({ byContact: [], servedAor: 'sip:bob@example.test', byAor: [] }), { kind: 'no-binding', aor: 'sip:bob@example.test' });
    assert.deepEqual(resolveTarget({ byContact: [], servedAor: undefined, byAor: [] }), { kind: 'upstream' });
  });

  it('picks the branch response per RFC 3261 §16.7: first 2xx, else 6xx, else lowest class', () => {
    assert.equal(chooseFinal([486, 200, 202]), 1);
    assert.equal(chooseFinal([486, 603, 500]), 1);
    assert.equal(chooseFinal([503, 486, 408]), 1);
    assert.equal(chooseFinal([]), -1);
  });

  it('only the platform or the registered source of the From AoR may send', () => {
    const peers = ['192.0.2.1:5060'];
    assert.equal(classifySender({ address: '192.0.2.1', port: 5060 }, peers, () => false).kind, 'trusted-peer');
    assert.equal(classifySender({ address: '192.0.2.1', port: 5999 }, peers, () => false).kind, 'unknown');
    assert.equal(classifySender({ address: '198.51.100.9', port: 1234 }, peers, () => true).kind, 'registered');
  });
});

describe('requests to a Contact midreg gave the registrar (contact insertion)', () => {
  const own = { sipAddresses: ['udp/203.0.113.5:5060'], domains: ['example.test'] };
  const stored = binding({ contact: 'sip:bob@10.0.0.7:5060', insertion: { contact: 'sip:bob@203.0.113.5:5060;ctid=K1', key: 'K1' } });
  const lookup = {
    liveBindingsByContact: () => Promise.resolve([]),
    liveBindings: () => Promise.resolve([]),
    bindingsByInsertionKey: (key: string) => Promise.resolve(key === 'K1' ? [stored] : key === 'OLD' ? [binding({ expiresAt: 1000 })] : []),
  };

  it('reach the stored binding of that key, and the phone under its own user at the address it registered from', async () => {
    const target = await locate('sip:bob@203.0.113.5:5060;ctid=K1', lookup, own, 2000);
    assert.ok(target.kind === 'bindings' && target.via === 'insertion' && target.bindings[0] === stored);
    const branch = branchFor(stored, 500);
    assert.ok(branch.kind === 'send');
    assert.equal(branch.requestUri, 'sip:bob@10.0.0.7:5060', 'a MESSAGE carries the phone\'s own Contact');
    assert.equal(flowUri(branch), 'sip:bob@203.0.113.5:40123;transport=udp', 'a proxied request names the phone\'s user at its NAT address');
  });

  it('a forged key reaches nothing (404), an expired binding\'s key gets 480, a key elsewhere is not ours to look up', async () => {
    assert.deepEqual(await locate('sip:bob@203.0.113.5:5060;ctid=FORGED', lookup, own, 2000), { kind: 'unknown-key', key: 'FORGED' });
    assert.deepEqual(await locate('sip:bob@203.0.113.5;ctid=OLD', lookup, own, 2000), { kind: 'expired-key', key: 'OLD', aor: 'sip:bob@example.test' });
    assert.deepEqual(await locate('sip:bob@198.51.100.1:5060;ctid=K1', lookup, own, 2000), { kind: 'upstream' }, 'not midreg\'s address');
  });
});

describe('Request-URI schemes (RFC 3261 §16.3 item 2)', () => {
  it('routes sip, sips and tel whatever their case; anything else is 416 material', () => {
    for (const uri of ['sip:bob@example.test', 'SIPS:bob@example.test', 'tel:+4930123456']) assert.ok(understoodScheme(uri), uri);
    for (const uri of ['nobodyKnowsThisScheme:totallyopaquecontent', 'soap.beep://192.0.2.103:3002', 'http://example.test/', 'no-scheme']) assert.ok(!understoodScheme(uri), uri);
  });
});

describe('RFC 5626 flows: one per instance, the newest', () => {
  const uuid = '"<urn:uuid:00000000-0000-1000-8000-AABBCCDDEEFF>"';
  it('keeps only the most recently registered flow of each +sip.instance, and every binding without one', () => {
    const oldTcp = binding({ contact: 'sip:bob@10.0.0.5:5060;transport=tcp', instance: uuid, regId: 1, updatedAt: 100 });
    const newTls = binding({ contact: 'sip:bob@10.0.0.5:5061;transport=tls', instance: '"<URN:UUID:00000000-0000-1000-8000-aabbccddeeff>"', regId: 2, updatedAt: 200 });
    const desk = binding({ contact: 'sip:bob@10.0.0.9', instance: null, updatedAt: 50 });
    const laptop = binding({ contact: 'sip:bob@10.0.0.7', instance: '"<urn:uuid:11111111-0000-1000-8000-000000000000>"', updatedAt: 10 });
    const { kept, dropped } = oneFlowPerInstance([oldTcp, desk, newTls, laptop]);
    assert.deepEqual(kept.map((b) => b.contact), [desk.contact, newTls.contact, laptop.contact]);
    assert.deepEqual(dropped.map((b) => b.contact), [oldTcp.contact]);
  });

  it('compares instance URNs without quotes, brackets or case', () => {
    assert.equal(instanceKey('"<urn:uuid:AB>"'), 'urn:uuid:ab');
    assert.equal(instanceKey(null), undefined);
    assert.equal(instanceKey('""'), undefined);
  });
});
