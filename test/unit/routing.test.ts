import { strict as assert } from 'node:assert';
import { describe, it } from 'node:test';
import type { Binding } from '../../lib/registrar/registration.js';
import { branchFor, chooseFinal, classifySender, flowChains, flowFailure, flowUri, instanceKey, locate, nextFlow, resolveTarget, senderStatus, UDP_SAFE_BYTES, understoodScheme, type Branch } from '../../lib/messaging/routing.js';
import { forkOverFlows } from '../../lib/messaging/message-router.js';
import type { SipReply } from '../../lib/sip/drachtio.js';
import type { UpstreamOutcome } from '../../lib/sip/upstream.js';

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

describe('RFC 5626 flows: one target per device, its flows newest first', () => {
  const uuid = '"<urn:uuid:00000000-0000-1000-8000-AABBCCDDEEFF>"';
  it('groups the flows of each +sip.instance into one target, newest first; bindings without one are targets of their own', () => {
    // A 2xx rewrites updatedAt of every binding it lists: the newer flow is the one registered later.
    const oldTcp = binding({ contact: 'sip:bob@10.0.0.5:5060;transport=tcp', instance: uuid, regId: 1, registeredAt: 100, updatedAt: 300 });
    const newTls = binding({ contact: 'sip:bob@10.0.0.5:5061;transport=tls', instance: '"<URN:UUID:00000000-0000-1000-8000-aabbccddeeff>"', regId: 2, registeredAt: 200, updatedAt: 300 });
    const desk = binding({ contact: 'sip:bob@10.0.0.9', instance: null, updatedAt: 50 });
    const laptop = binding({ contact: 'sip:bob@10.0.0.7', instance: '"<urn:uuid:11111111-0000-1000-8000-000000000000>"', updatedAt: 10 });
    const chains = flowChains([oldTcp, desk, newTls, laptop]);
    assert.deepEqual(chains.map((c) => c.flows.map((b) => b.contact)), [[newTls.contact, oldTcp.contact], [desk.contact], [laptop.contact]]);
    assert.deepEqual(chains.map((c) => c.instance), ['urn:uuid:00000000-0000-1000-8000-aabbccddeeff', undefined, 'urn:uuid:11111111-0000-1000-8000-000000000000']);
  });

  it('compares instance URNs without quotes, brackets or case', () => {
    assert.equal(instanceKey('"<urn:uuid:AB>"'), 'urn:uuid:ab');
    assert.equal(instanceKey(null), undefined);
    assert.equal(instanceKey('""'), undefined);
  });

  it('RFC 5626 §7: the next flow only after 430, 408 or a transport error, never after any other answer', () => {
    const reply = (status: number, local = false) => ({ kind: 'reply' as const, status, local });
    assert.equal(flowFailure(reply(430)), 'flow-failed');
    assert.equal(flowFailure(reply(408)), 'timeout');
    assert.equal(flowFailure(reply(503, true)), 'transport', 'drachtio-server\'s own 503: the request never left');
    assert.equal(flowFailure(reply(410, true)), 'transport', 'drachtio-server\'s own 410 for a cached connection that closed');
    assert.equal(flowFailure(reply(408, true)), 'timeout');
    assert.equal(flowFailure({ kind: 'timeout' }), 'timeout');
    assert.equal(flowFailure({ kind: 'unreachable' }), 'transport');
    for (const status of [200, 202, 403, 404, 480, 486, 500, 503, 603]) assert.equal(flowFailure(reply(status)), undefined, `${status} is the device's answer`);
    assert.equal(flowFailure({ kind: 'too-large' }), undefined, 'too large for every flow alike');
    assert.deepEqual(nextFlow(reply(430), 0, 2), { kind: 'next', index: 1, failure: 'flow-failed' });
    assert.deepEqual(nextFlow(reply(430), 1, 2), { kind: 'final' }, 'no flow left');
    assert.deepEqual(nextFlow(reply(486), 0, 3), { kind: 'final' });
  });

  it('a 430 is never passed on to the sender (RFC 5626 §11: not for endpoints): 480', () => {
    assert.deepEqual(senderStatus(430), { status: 480, reason: 'Temporarily Unavailable (flow failed)' });
    assert.deepEqual(senderStatus(486), { status: 486 });
  });
});

describe('forkOverFlows: devices in parallel, each device\'s flows in turn', () => {
  const uuid = '"<urn:uuid:22222222-0000-1000-8000-000000000000>"';
  const flow = (port: number, updatedAt: number): Extract<Branch, { kind: 'send' }> => {
    const b = binding({ contact: `sip:bob@10.0.0.5:${port};transport=tcp`, instance: uuid, regId: port, updatedAt });
    return { kind: 'send', binding: b, requestUri: b.contact, nextHop: undefined, route: undefined };
  };
  const answer = (status: number, local = false): UpstreamOutcome => ({
    kind: 'reply', elapsedMs: 1,
    reply: { status, reason: String(status), body: '', header: () => undefined, headers: () => [], contacts: () => [], local } satisfies SipReply,
  });

  it('fails over to the next flow on 430 and on a transport error, and answers with the flow that took it', async () => {
    const [newest, middle, oldest] = [flow(5003, 3), flow(5002, 2), flow(5001, 1)];
    const answers = new Map<string, UpstreamOutcome>([[newest.requestUri, answer(430)], [middle.requestUri, answer(503, true)], [oldest.requestUri, answer(200)]]);
    const sent: string[] = [];
    const steps: string[] = [];
    const result = await forkOverFlows([[newest, middle, oldest]], (b) => { sent.push(b.requestUri); return Promise.resolve(answers.get(b.requestUri) ?? answer(500)); }, (s) => steps.push(`${s.failure}:${s.status}`));
    assert.equal(result.status, 200);
    assert.deepEqual(sent, [newest.requestUri, middle.requestUri, oldest.requestUri], 'one flow at a time, newest first');
    assert.deepEqual(steps, ['flow-failed:430', 'transport:503']);
  });

  it('stops at the first answer that is the device\'s own: the older flow never sees the request', async () => {
    const [newest, oldest] = [flow(5003, 3), flow(5001, 1)];
    const sent: string[] = [];
    const result = await forkOverFlows([[newest, oldest]], (b) => { sent.push(b.requestUri); return Promise.resolve(answer(486)); });
    assert.equal(result.status, 486);
    assert.deepEqual(sent, [newest.requestUri]);
  });

  it('a device whose every flow failed with 430 is reported to the sender as 480; another device\'s 2xx still wins', async () => {
    const [newest, oldest] = [flow(5003, 3), flow(5001, 1)];
    const alone = await forkOverFlows([[newest, oldest]], () => Promise.resolve(answer(430)));
    assert.equal(alone.status, 480);
    assert.equal(alone.reply, undefined, 'the 430\'s headers are not relayed');
    const desk = binding({ contact: 'sip:bob@10.0.0.9' });
    const withDesk = await forkOverFlows([[newest, oldest], [{ kind: 'send', binding: desk, requestUri: desk.contact, nextHop: undefined, route: undefined }]],
      (b) => Promise.resolve(b.requestUri === desk.contact ? answer(200) : answer(430)));
    assert.equal(withDesk.status, 200);
  });
});
