// CI-runnable: midreg (in-process, real drachtio-srf client, real SQLite file) against a fake
// drachtio-server that replays exchanges recorded from the real drachtio-server and Kamailio
// (test/wire/recordings, re-recorded by `npm run record`). Asserts what a user would notice:
// what the UA was answered, what reached the registrar, what the replica holds.
import { strict as assert } from 'node:assert';
import { describe, it } from 'node:test';
import { header, statusOf } from '../support/wire-frame.js';
import { registrarReplies, replay, uaRegisters, uaResponses, upstreamRegisters } from './replay-midreg.js';

describe('REGISTER relay at the drachtio wire (recorded from real drachtio-server + Kamailio)', () => {
  it('relays the UA\'s request unchanged end to end and passes the challenge and the 200 back as the registrar sent them', async () => {
    const r = await replay('register-auth');
    const answered = uaResponses(r);
    const fromRegistrar = registrarReplies(r);
    assert.deepEqual(answered.map(statusOf), [401, 200]);
    assert.equal(header(answered[0] ?? '', 'WWW-Authenticate'), header(fromRegistrar[0] ?? '', 'WWW-Authenticate'), 'challenge passed through unchanged');
    assert.equal(header(answered[1] ?? '', 'Contact'), header(fromRegistrar[1] ?? '', 'Contact'));
    const [first, second] = upstreamRegisters(r);
    const [uaFirst, uaSecond] = uaRegisters(r);
    assert.ok(first && second && uaFirst && uaSecond);
    for (const [up, ua] of [[first, uaFirst.sip], [second, uaSecond.sip]] as const) {
      assert.equal(header(up, 'Call-ID'), header(ua, 'Call-ID'));
      assert.equal(header(up, 'CSeq'), header(ua, 'CSeq'));
      assert.equal(header(up, 'From'), header(ua, 'From'));
      assert.equal(header(up, 'Max-Forwards'), String(Number(header(ua, 'Max-Forwards')) - 1));
      assert.match(header(up, 'Path') ?? '', /^<sip:127\.0\.0\.1:\d+;lr>$/);
      assert.equal(header(up, 'Require'), undefined, 'no Require: path forced on the registrar');
    }
    assert.equal(header(second, 'Authorization'), header(uaSecond.sip, 'Authorization'), 'credentials relayed untouched');
    const [binding] = r.replica('alice');
    assert.ok(binding);
    assert.equal(binding.contact, /<([^>]+)>/.exec(header(fromRegistrar[1] ?? '', 'Contact') ?? '')?.[1]);
    const granted = (binding.expiresAt - Date.now()) / 1000;
    assert.ok(granted > 290 && granted <= 300, `granted ${granted}s (asked 3600, registrar granted 300)`);
    assert.deepEqual(binding.source, { address: uaSecond.address, port: uaSecond.port, transport: 'udp' });
  });

  it('a challenge and a 403 reach the UA and change nothing in the replica', async () => {
    const r = await replay('register-rejected');
    assert.deepEqual(uaResponses(r).map(statusOf), [401, 200, 401, 401, 403]);
    assert.equal(r.replica('bob').length, 1, 'bob\'s binding survives a later challenged REGISTER');
    assert.deepEqual(r.replica('carol'), []);
  });

  it('a device the registrar evicted disappears from the replica', async () => {
    const r = await replay('evicted-upstream');
    const lastContact = /<([^>]+)>/.exec(header(registrarReplies(r).at(-1) ?? '', 'Contact') ?? '')?.[1];
    assert.deepEqual(r.replica('singledave').map((b) => b.contact), [lastContact]);
  });

  it('Contact: * reaches the registrar (compact form, so drachtio-server survives) and empties the AoR', async () => {
    const r = await replay('deregister-star');
    const star = upstreamRegisters(r).filter((sip) => /^m: \*$/m.test(sip));
    assert.equal(star.length, 2, 'challenged and authenticated Contact: * both relayed');
    assert.ok(star.every((sip) => !/^contact:/im.test(sip)));
    assert.deepEqual(uaResponses(r).map(statusOf), [401, 200, 401, 200, 401, 200]);
    assert.deepEqual(r.replica('frank'), []);
  });

  it('a query REGISTER (no Contact) is relayed, not refused, and its reply refreshes the replica', async () => {
    const r = await replay('query');
    const queries = upstreamRegisters(r).filter((sip) => header(sip, 'Contact') === undefined);
    assert.equal(queries.length, 2);
    assert.deepEqual(uaResponses(r).slice(-1).map(statusOf), [200]);
    assert.equal(r.replica('gina').length, 1);
  });

  it('a silent registrar: the UA gets midreg\'s own 408 within the configured timeout and nothing is stored', async () => {
    const started = Date.now();
    const r = await replay('upstream-silent', { MIDREG_UPSTREAM_TIMEOUT_MS: '300' });
    assert.deepEqual(uaResponses(r).map(statusOf), [408]);
    assert.ok(Date.now() - started < 3000);
    assert.deepEqual(r.replica('ivan'), []);
  });
});
