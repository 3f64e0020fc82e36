import { strict as assert } from 'node:assert';
import { describe, it } from 'node:test';
import { asksOutbound, flowTimerToAdd, pathUriFor, viaHops } from '../../lib/registrar/outbound.js';
import type { NameAddr } from '../../lib/sip/drachtio.js';

const outboundContact: NameAddr = { uri: 'sip:bob@192.0.2.7:5060;transport=tcp', params: { '+sip.instance': '"<urn:uuid:00000000-0000-4000-8000-000000000001>"', 'reg-id': '1' } };
const plainContact: NameAddr = { uri: 'sip:bob@192.0.2.7:5060', params: { expires: '300' } };

describe('RFC 5626 at the edge: Via hops', () => {
  it('counts the hops of a comma-joined Via and reads the top one\'s transport', () => {
    assert.deepEqual(viaHops('SIP/2.0/UDP 192.0.2.7:5060;branch=z9hG4bK-1;rport'), { count: 1, transport: 'udp' });
    assert.deepEqual(viaHops('SIP/2.0/WS abcd.invalid;branch=z9hG4bK-2'), { count: 1, transport: 'ws' }, 'a WebSocket client (drachtio-server calls its flow "tcp")');
    assert.deepEqual(viaHops('SIP / 2.0 / TLS proxy.test;branch=z9hG4bK-3, SIP/2.0/UDP 192.0.2.7;branch=z9hG4bK-4'), { count: 2, transport: 'tls' });
    assert.deepEqual(viaHops(undefined), { count: 0, transport: undefined });
  });
});

describe('RFC 5626 §5.1: ";ob" on midreg\'s Path URI', () => {
  const path = 'sip:127.0.0.1:5060;lr';
  it('is added when the REGISTER came straight from the UA and asks for outbound (+sip.instance and reg-id)', () => {
    assert.equal(asksOutbound([plainContact, outboundContact]), true);
    assert.equal(pathUriFor(path, { contacts: [outboundContact], viaCount: 1 }), 'sip:127.0.0.1:5060;lr;ob');
  });
  it('is not added behind another proxy (not the first hop), without reg-id, for * or a query, or twice', () => {
    assert.equal(pathUriFor(path, { contacts: [outboundContact], viaCount: 2 }), path);
    assert.equal(pathUriFor(path, { contacts: [plainContact], viaCount: 1 }), path);
    assert.equal(pathUriFor(path, { contacts: [{ uri: outboundContact.uri, params: { 'reg-id': '1' } }], viaCount: 1 }), path, 'reg-id without +sip.instance is not outbound (§4.2)');
    assert.equal(pathUriFor(path, { contacts: 'star', viaCount: 1 }), path);
    assert.equal(pathUriFor(path, { contacts: 'none', viaCount: 1 }), path);
    assert.equal(pathUriFor('sip:127.0.0.1:5060;lr;ob', { contacts: [outboundContact], viaCount: 1 }), 'sip:127.0.0.1:5060;lr;ob');
    assert.equal(pathUriFor('sip:127.0.0.1:5060;lr;obx=1', { contacts: [outboundContact], viaCount: 1 }), 'sip:127.0.0.1:5060;lr;obx=1;ob');
  });
});

describe('RFC 5626 §5.4: Flow-Timer', () => {
  const base = { status: 200, require: 'outbound', existingFlowTimer: undefined, transport: 'udp', firstHop: true, flowTimerSec: 25 };
  it('is added to a 2xx carrying Require: outbound, over UDP and TCP, when midreg is the last proxy before the UA', () => {
    assert.equal(flowTimerToAdd(base), 25);
    assert.equal(flowTimerToAdd({ ...base, transport: 'TCP', require: 'path, Outbound' }), 25);
  });
  it('is not added behind another proxy, over TLS or WebSocket, without Require: outbound, over the registrar\'s own, to a failure, or when off', () => {
    assert.equal(flowTimerToAdd({ ...base, firstHop: false }), undefined, 'the proxy in front of midreg is the last one');
    assert.equal(flowTimerToAdd({ ...base, transport: 'tls' }), undefined);
    assert.equal(flowTimerToAdd({ ...base, transport: 'ws' }), undefined);
    assert.equal(flowTimerToAdd({ ...base, transport: 'wss' }), undefined);
    assert.equal(flowTimerToAdd({ ...base, require: undefined }), undefined);
    assert.equal(flowTimerToAdd({ ...base, require: 'outboundx' }), undefined);
    assert.equal(flowTimerToAdd({ ...base, existingFlowTimer: '30' }), undefined);
    assert.equal(flowTimerToAdd({ ...base, status: 401 }), undefined);
    assert.equal(flowTimerToAdd({ ...base, flowTimerSec: 0 }), undefined);
  });
});
