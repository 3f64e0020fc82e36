// Contact throttling in the REGISTER relay, against a real SQLite replica and a fake registrar:
// what goes upstream (raised expiry), what the phone is told, what is answered locally, and what
// a refusal or the upstream de-registration job does to the replica.
import { strict as assert } from 'node:assert';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { SqliteStore } from '../../lib/store/sqlite-store.js';
import { createLogger } from '../../lib/ops/logger.js';
import { createRegisterHandler } from '../../lib/registrar/registration-relay.js';
import { deregisterLapsed, type DeregistrationResult } from '../../lib/registrar/upstream-deregistration.js';
import type { NameAddr, OutboundRequest, SendOptions, SipReply, SipRequest, SipResponder, SourceAddress } from '../../lib/sip/drachtio.js';

const dir = mkdtempSync(join(tmpdir(), 'midreg-throttle-'));
after(() => rmSync(dir, { recursive: true, force: true }));

const AOR = 'sip:dave@example.test';
const CONTACT = 'sip:dave@192.0.2.7:5062';
const PHONE: SourceAddress = { address: '192.0.2.7', port: 5062, transport: 'udp' };
const logger = createLogger({ level: 'error', format: 'json' });

function register(cseq: number, opts: { expires?: string; source?: SourceAddress; callId?: string } = {}): SipRequest {
  const headers: Record<string, string> = {
    'call-id': opts.callId ?? 'dave-call-1', 'max-forwards': '70', expires: opts.expires ?? '300', contact: `<${CONTACT}>`,
    from: `<${AOR}>;tag=d1`, to: `<${AOR}>`, cseq: `${cseq} REGISTER`,
  };
  return {
    method: 'REGISTER', uri: 'sip:example.test', body: '', source: opts.source ?? PHONE,
    header: (name) => headers[name.toLowerCase()],
    headers: () => Object.entries(headers),
    nameAddr: () => ({ uri: AOR, params: {} }),
    contacts: () => [{ uri: CONTACT, params: {} }],
    cseq: () => ({ seq: cseq, method: 'REGISTER' }),
    registration: () => ({ kind: 'parsed', type: 'register', expires: Number(opts.expires ?? '300') }),
    proxyTo: () => Promise.reject(new Error('not proxied')),
  };
}

function reply(status: number, contacts: NameAddr[] = []): SipReply {
  return { status, reason: status === 200 ? 'OK' : 'Refused', body: '', header: () => undefined, headers: () => (contacts.length > 0 ? [['contact', contacts.map((c) => `<${c.uri}>;expires=${c.params['expires'] ?? ''}`).join(', ')]] : []), contacts: () => contacts };
}

function responder(): SipResponder & { sent: Array<{ status: number; opts: SendOptions | undefined }> } {
  const sent: Array<{ status: number; opts: SendOptions | undefined }> = [];
  return { sent, get finalSent() { return sent.length > 0; }, send(status, opts) { sent.push({ status, opts }); } };
}

function setup(file: string, answer: (out: OutboundRequest) => SipReply, opts: { insertion?: boolean } = {}) {
  const sqlite = new SqliteStore(join(dir, file));
  // Assertions read the SQLite replica directly; the relay goes through the store interface.
  const store = sqlite.replica;
  const upstream: OutboundRequest[] = [];
  const counters = { bindings: 0, aors: 0 };
  let absorbed = 0;
  const handler = createRegisterHandler({
    sender: { request: (out) => { upstream.push(out); return Promise.resolve(answer(out)); } },
    store: sqlite.bindings,
    upstream: { uri: 'sip:127.0.0.1:5080', timeoutMs: 2000 },
    domains: ['example.test'],
    sipAddresses: () => ['udp/127.0.0.1:5060'],
    pathUri: () => 'sip:127.0.0.1:5060;lr',
    logger,
    limits: { maxBindingsPerAor: 32, maxAors: 1000 },
    counters,
    throttle: { outgoingExpiresSec: 3600, refreshMarginSec: 60 },
    onRegisterAbsorbed: () => { absorbed += 1; },
    ...(opts.insertion ? { contactInsertion: { self: () => ({ scheme: 'sip' as const, hostport: '127.0.0.1:5060', transport: 'udp' }) } } : {}),
  });
  return { store, bindings: sqlite.bindings, upstream, counters, handler, absorbed: () => absorbed };
}

describe('REGISTER relay in contact mode', () => {
  it('relays the first REGISTER with 3600 asked, tells the phone its own expiry, keeps both; answers the refresh itself', async () => {
    const t = setup('absorb.sqlite', () => reply(200, [{ uri: CONTACT, params: { expires: '3600' } }]));
    try {
      const first = responder();
      await t.handler(register(1), first);
      assert.equal(t.upstream.length, 1);
      assert.equal(t.upstream[0]?.headers['expires'], '3600', 'the registrar is asked for MIDREG_OUTGOING_EXPIRES');
      assert.equal(first.sent[0]?.status, 200);
      assert.equal(first.sent[0]?.opts?.headers?.['contact'], `<${CONTACT}>;expires=300`, 'the phone gets min(asked, granted)');
      const [b] = t.store.bindingsOf(AOR);
      const now = Date.now();
      assert.ok(b && Math.abs(b.expiresAt - (now + 300_000)) < 2000 && Math.abs((b.upstreamExpiresAt ?? 0) - (now + 3_600_000)) < 2000);

      const refresh = responder();
      await t.handler(register(2), refresh);
      assert.equal(t.upstream.length, 1, 'the refresh never reached the registrar');
      assert.equal(t.absorbed(), 1);
      assert.equal(refresh.sent[0]?.status, 200);
      assert.equal(refresh.sent[0]?.opts?.headers?.['contact'], `<${CONTACT}>;expires=300`);
      assert.match(refresh.sent[0]?.opts?.headers?.['date'] ?? '', /^\w{3}, \d\d \w{3} \d{4} \d\d:\d\d:\d\d GMT$/);
      assert.equal(t.store.bindingsOf(AOR)[0]?.cseq, 2, 'the refresh\'s CSeq is recorded');

      await t.handler(register(2), responder());
      assert.equal(t.upstream.length, 2, 'the same CSeq again is relayed');
      await t.handler(register(5, { source: { ...PHONE, port: 5999 } }), responder());
      assert.equal(t.upstream.length, 3, 'another source port is relayed');
      await t.handler(register(6, { callId: 'other' }), responder());
      assert.equal(t.upstream.length, 4, 'another Call-ID is relayed');
      await t.handler(register(7, { expires: '0' }), responder());
      assert.equal(t.upstream.length, 5, 'a de-registration is relayed');
      assert.equal(t.upstream[4]?.headers['expires'], '0', 'a de-registration is not raised');
    } finally {
      t.store.close();
    }
  });

  it('with contact insertion: the registrar gets midreg\'s Contact with the raised expiry, the phone its own with its own expiry', async () => {
    const t = setup('insertion.sqlite', (out) => {
      const uri = /<([^>]+)>/.exec(out.headers['contact'] ?? '')?.[1] ?? '';
      return reply(200, [{ uri, params: { expires: '3600' } }]);
    }, { insertion: true });
    try {
      const first = responder();
      await t.handler(register(1), first);
      assert.match(t.upstream[0]?.headers['contact'] ?? '', /^<sip:dave@127\.0\.0\.1:5060;ctid=[\w-]+>$/);
      assert.equal(t.upstream[0]?.headers['expires'], '3600');
      assert.equal(first.sent[0]?.opts?.headers?.['contact'], `<${CONTACT}>;expires=300`);
      const [b] = t.store.bindingsOf(AOR);
      assert.ok(b?.insertion && b.upstreamExpiresAt !== null);
      const refresh = responder();
      await t.handler(register(2), refresh);
      assert.equal(t.upstream.length, 1, 'absorbed');
      assert.equal(refresh.sent[0]?.opts?.headers?.['contact'], `<${CONTACT}>;expires=300`);
    } finally {
      t.store.close();
    }
  });

  it('a final refusal of a relayed refresh removes the binding; a challenge does not', async () => {
    let status = 200;
    const t = setup('refusal.sqlite', () => (status === 200 ? reply(200, [{ uri: CONTACT, params: { expires: '3600' } }]) : reply(status)));
    try {
      await t.handler(register(1), responder());
      assert.equal(t.store.bindingsOf(AOR).length, 1);
      status = 401;
      const challenged = responder();
      await t.handler(register(2, { source: { ...PHONE, port: 6000 } }), challenged);
      assert.equal(challenged.sent[0]?.status, 401);
      assert.equal(t.store.bindingsOf(AOR).length, 1, 'a challenge leaves it');
      status = 403;
      await t.handler(register(3, { expires: '3600', source: { ...PHONE, port: 6000 }, callId: 'stranger' }), responder());
      assert.equal(t.store.bindingsOf(AOR).length, 1, 'a refused REGISTER under another Call-ID removes nothing');
      const refused = responder();
      await t.handler(register(3, { expires: '3600', source: { ...PHONE, port: 6000 } }), refused);
      assert.equal(refused.sent[0]?.status, 403, 'the phone gets the registrar\'s answer');
      assert.deepEqual(t.store.bindingsOf(AOR), [], 'a 403 removes it: midreg never refreshes a disabled account');
      assert.deepEqual(t.counters, { bindings: 0, aors: 0 });
    } finally {
      t.store.close();
    }
  });

  it('the de-registration job: a 2xx deletes, a challenge keeps the binding lapsed until its upstream expiry', async () => {
    const t = setup('dereg.sqlite', () => reply(200, [{ uri: CONTACT, params: { expires: '3600' } }]));
    try {
      await t.handler(register(4, { expires: '1' }), responder());
      const later = Date.now() + 2000;
      assert.deepEqual(t.store.liveBindings(AOR, later), [], 'expired for the phone');
      assert.equal(t.store.lapsedBindingsByContact(CONTACT, later).length, 1, 'still registered upstream: answered 480');
      const sent: OutboundRequest[] = [];
      const results: DeregistrationResult[] = [];
      let status = 401;
      const deps = {
        sender: { request: (out: OutboundRequest) => { sent.push(out); return Promise.resolve(reply(status)); } },
        store: t.bindings, upstream: { uri: 'sip:127.0.0.1:5080', timeoutMs: 2000 }, logger,
        onResult: (r: DeregistrationResult) => { results.push(r); },
      };
      assert.equal(await deregisterLapsed(deps, later), 1);
      assert.deepEqual([sent[0]?.headers['call-id'], sent[0]?.headers['cseq'], sent[0]?.headers['contact']], ['dave-call-1', '5 REGISTER', `<${CONTACT}>;expires=0`]);
      assert.deepEqual(results, ['challenged']);
      assert.equal(await deregisterLapsed(deps, later), 0, 'a challenged one is not tried again');
      assert.equal(t.store.lapsedBindingsByContact(CONTACT, later).length, 1);
      assert.deepEqual(t.store.purgeExpiredBatch(later, 10), { removed: 0, emptiedAors: 0 }, 'the sweep keeps it until its upstream expiry');
      assert.equal(t.store.purgeExpiredBatch(Date.now() + 3_601_000, 10).removed, 1);

      // The phone registers again while midreg's de-registration is on its way: its binding stays.
      await t.handler(register(6, { expires: '1' }), responder());
      status = 200;
      const racing = { ...deps, sender: { request: (out: OutboundRequest) => {
        t.store.absorbRefresh(AOR, CONTACT, Date.now() + 300_000, 7, Date.now() + 1);
        return deps.sender.request(out);
      } } };
      assert.equal(await deregisterLapsed(racing, later), 1);
      assert.equal(t.store.bindingsOf(AOR).length, 1, 'registered again meanwhile: not deleted');
      t.store.replaceAor(AOR, []);
      await t.handler(register(8, { expires: '1' }), responder());
      assert.equal(await deregisterLapsed(deps, later), 1);
      assert.deepEqual(results, ['challenged', 'ok', 'ok']);
      assert.deepEqual(t.store.bindingsOf(AOR), [], 'de-registered upstream: gone');
    } finally {
      t.store.close();
    }
  });
});
