// CI-runnable: MESSAGE routing and a call, replayed from exchanges recorded with the real
// drachtio-server, Kamailio as the platform and sipp UAs (test/wire/record.ts).
import { strict as assert } from 'node:assert';
import { describe, it } from 'node:test';
import { findFrames, header, sipOf, statusOf, tokensOf } from '../support/wire-frame.js';
import { proxyCommands, replay, sentRequests, uaResponses } from './replay-midreg.js';

describe('MESSAGE and proxying at the drachtio wire (recorded from real drachtio-server + Kamailio)', () => {
  it('delivers from the replica to the registered contact at its source address, then refuses unknown users, unregistered senders and big bodies', async () => {
    const r = await replay('message', { MIDREG_MAX_MESSAGE_BYTES: '1000' });
    // Where bob's REGISTER came from, as drachtio-server reported it.
    const bobRegister = findFrames(r.recorded, { type: 'sip', method: 'REGISTER' }).find((f) => /^To: <sip:bob@/mi.test(sipOf(f) ?? ''));
    assert.ok(bobRegister);
    const bobSource = `${tokensOf(bobRegister)[5]}:${tokensOf(bobRegister)[6]}`;
    const delivered = findFrames(r.sent, { type: 'sip', method: 'MESSAGE' });
    assert.equal(delivered.length, 1, 'only the MESSAGE for a live binding went out');
    const [out] = delivered;
    assert.ok(out);
    assert.equal(tokensOf(out)[4]?.split('\r')[0], `sip:${bobSource};transport=udp`, 'next hop is the NAT source of the REGISTER');
    assert.match(sipOf(out) ?? '', new RegExp(`^MESSAGE sip:bob@${bobSource.replace(/\./g, '\\.')} SIP/2\\.0`), 'Request-URI is the registered contact');
    assert.equal(header(sipOf(out) ?? '', 'Content-Type'), 'text/plain');
    // What the senders were answered, in order: 200 from bob, then midreg's own refusals.
    const messageAnswers = uaResponses(r).filter((sip) => /^CSeq: \d+ MESSAGE/mi.test(sip)).map(statusOf);
    assert.deepEqual(messageAnswers, [200, 404, 403, 413]);
    assert.equal(r.replica('bob').length, 1);
  });

  it('a call is proxied to the platform with Record-Route, and the platform\'s INVITE comes back to the callee\'s binding', async () => {
    const r = await replay('call');
    const proxied = proxyCommands(r);
    const upstream = sentRequests(r, 'REGISTER')[0] ? /sip:[\d.]+:\d+/.exec(findFrames(r.sent, { type: 'sip', method: 'REGISTER' }).map((f) => tokensOf(f)[4] ?? '')[0] ?? '')?.[0] : undefined;
    assert.ok(upstream);
    assert.equal(proxied.length, 2, 'one INVITE proxied each way');
    assert.equal(proxied[0]?.destination, upstream, 'caller\'s INVITE goes to the platform');
    const bobRegister = findFrames(r.recorded, { type: 'sip', method: 'REGISTER' }).find((f) => /^To: <sip:bob@/mi.test(sipOf(f) ?? ''));
    assert.ok(bobRegister);
    assert.equal(proxied[1]?.destination, `sip:${tokensOf(bobRegister)[5]}:${tokensOf(bobRegister)[6]};transport=udp`, 'platform\'s INVITE goes to bob\'s registered source');
    assert.ok(findFrames(r.sent, { type: 'proxy' }).every((f) => tokensOf(f)[3] === 'remainInDialog'), 'INVITEs are record-routed');
  });
});
