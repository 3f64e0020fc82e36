// Contact insertion (MIDREG_INSERTION=contact): the Contact the registrar gets, and the way back
// from the registrar's reply to the phone's own Contact (lib/registrar/contact-insertion.ts).
import { strict as assert } from 'node:assert';
import { describe, it } from 'node:test';
import {
  formatContact, insertedContactUri, insertionKey, keyOf, mapReplyContacts, rewriteContacts, selfAddressFrom, type SelfAddress,
} from '../../lib/registrar/contact-insertion.js';
import { parseUri } from '../../lib/sip/drachtio.js';

const self: SelfAddress = { scheme: 'sip', hostport: '203.0.113.5:5060', transport: 'udp' };
const AOR = 'sip:alice@example.com';

describe('the Contact the registrar gets', () => {
  it('midreg\'s address, the phone\'s user, the key; nothing of the phone\'s address', () => {
    const key = insertionKey(AOR, 'sip:alice@192.168.1.10:5062;transport=tcp');
    const uri = insertedContactUri('sip:alice@192.168.1.10:5062;transport=tcp', key, self);
    assert.equal(uri, `sip:alice@203.0.113.5:5060;ctid=${key}`);
    assert.ok(!uri.includes('192.168'), 'the private address stays with midreg');
    assert.match(key, /^[A-Za-z0-9_-]{22}$/);
    assert.ok(parseUri(uri), 'a URI drachtio-srf parses');
  });

  it('the same key for every refresh of a binding (equivalent spellings included), another for another binding or AoR', () => {
    const key = insertionKey(AOR, 'sip:alice@192.168.1.10:5062');
    assert.equal(insertionKey(AOR, 'SIP:alice@192.168.1.10:5062'), key, 'scheme compares case-insensitively (RFC 3261 §19.1.4)');
    assert.equal(insertionKey(AOR, 'sip:%61lice@192.168.1.10:5062'), key, 'an escaped unreserved character is the character');
    assert.notEqual(insertionKey(AOR, 'sip:alice@192.168.1.10:5063'), key);
    assert.notEqual(insertionKey('sip:bob@example.com', 'sip:alice@192.168.1.10:5062'), key);
  });

  it('escaped user parts stay escaped; a contact without user gets none; IPv6, sips and TCP addresses of midreg', () => {
    const escaped = 'sip:%2B49%20301@[2001:db8::10]:5060';
    assert.ok(insertedContactUri(escaped, 'k1', self).startsWith('sip:%2B49%20301@203.0.113.5:5060;ctid=k1'));
    assert.equal(insertedContactUri('sip:192.168.1.10', 'k2', self), 'sip:203.0.113.5:5060;ctid=k2');
    const v6 = selfAddressFrom('sips:[2001:db8::5]:5061;lr;transport=tls');
    assert.deepEqual(v6, { scheme: 'sips', hostport: '[2001:db8::5]:5061', transport: 'tls' });
    assert.equal(insertedContactUri('sips:bob@[2001:db8::10]', 'k3', v6 as SelfAddress), 'sips:bob@[2001:db8::5]:5061;ctid=k3;transport=tls');
    assert.deepEqual(selfAddressFrom('sip:127.0.0.1:5080;lr'), { scheme: 'sip', hostport: '127.0.0.1:5080', transport: 'udp' });
  });

  it('every header parameter is kept (expires, q, +sip.instance with its quotes, reg-id, feature tags)', () => {
    const params = { expires: '600', q: '0.7', '+sip.instance': '"<urn:uuid:f81d4fae-7dec-11d0-a765-00a0c91e6bf6>"', 'reg-id': '1', video: '' };
    const { header, byKey } = rewriteContacts(AOR, [{ uri: 'sip:alice@192.168.1.10:5062', params }, { uri: 'sips:alice@[2001:db8::10]:5061', params: {} }], self);
    const [k1, k2] = [...byKey.keys()];
    assert.equal(header, `<sip:alice@203.0.113.5:5060;ctid=${k1}>;expires=600;q=0.7;+sip.instance="<urn:uuid:f81d4fae-7dec-11d0-a765-00a0c91e6bf6>";reg-id=1;video, `
      + `<sip:alice@203.0.113.5:5060;ctid=${k2}>`);
    assert.equal(byKey.get(k1 ?? '')?.uri, 'sip:alice@192.168.1.10:5062');
    assert.equal(byKey.get(k2 ?? '')?.uri, 'sips:alice@[2001:db8::10]:5061');
  });
});

describe('the registrar\'s reply, back to the phone', () => {
  it('each Contact midreg wrote becomes the phone\'s own, with the expiry the registrar granted (RFC 3261 §10.2.4)', () => {
    const phone = 'sips:alice@[2001:db8::10]:5061;transport=tls';
    const key = insertionKey(AOR, phone);
    const registrarEcho = `sip:alice@203.0.113.5:5060;ctid=${key}`;
    const mapped = mapReplyContacts([
      { uri: registrarEcho, params: { expires: '300', '+sip.instance': '"<urn:uuid:1>"' } },
      { uri: 'sip:alice@198.51.100.20:5060', params: { expires: '120' } },
      { uri: 'sip:alice@203.0.113.5:5060;ctid=forgedforgedforgedforg', params: { expires: '90' } },
    ], (k) => (k === key ? phone : undefined));
    assert.deepEqual(mapped[0], { contact: { uri: phone, params: { expires: '300', '+sip.instance': '"<urn:uuid:1>"' } }, insertion: { contact: registrarEcho, key } });
    assert.deepEqual(mapped[1], { contact: { uri: 'sip:alice@198.51.100.20:5060', params: { expires: '120' } }, insertion: null }, 'bound elsewhere: unchanged');
    assert.equal(mapped[2]?.insertion, null, 'a key midreg does not know is not mapped to anything');
    assert.equal(formatContact(mapped[0]?.contact ?? { uri: '', params: {} }), `<${phone}>;expires=300;+sip.instance="<urn:uuid:1>"`);
  });

  it('finds the key however the registrar spells the parameter, and only in the URI\'s parameters', () => {
    assert.equal(keyOf('sip:alice@203.0.113.5:5060;CTID=abc_DEF-123;transport=tcp'), 'abc_DEF-123');
    assert.equal(keyOf('<sip:alice@203.0.113.5;ctid=k9>'), 'k9');
    assert.equal(keyOf('sip:alice@203.0.113.5?ctid=k9'), undefined, 'a header of the URI is not a parameter');
    assert.equal(keyOf('sip:alice@203.0.113.5;ctidx=k9'), undefined);
  });
});
