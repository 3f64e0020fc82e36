// The REGISTER relay against a real SQLite replica, with the registrar's replies under the test's
// control: two REGISTERs of one Call-ID in flight whose replies cross. The SIP engine is replaced
// by plain objects of the boundary's types; the store, the plan and the in-memory sequence are real.
import { strict as assert } from 'node:assert';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { SqliteStore } from '../../lib/store/sqlite-store.js';
import { createLogger } from '../../lib/ops/logger.js';
import { createRegisterHandler } from '../../lib/registrar/registration-relay.js';
import type { NameAddr, OutboundRequest, SipReply, SipRequest, SipResponder } from '../../lib/sip/drachtio.js';

const dir = mkdtempSync(join(tmpdir(), 'midreg-relay-'));
after(() => rmSync(dir, { recursive: true, force: true }));

const AOR = 'sip:carol@example.test';

function register(cseq: number, contact: string, via = `SIP/2.0/UDP 192.0.2.7:${5060 + cseq};branch=z9hG4bK-${cseq};rport`): SipRequest {
  const headers: Record<string, string> = {
    via, 'call-id': 'carol-call-1', 'max-forwards': '70', expires: '300', contact: `<${contact}>`,
    from: `<${AOR}>;tag=c1`, to: `<${AOR}>`, cseq: `${cseq} REGISTER`,
  };
  return {
    method: 'REGISTER', uri: 'sip:example.test', body: '',
    source: { address: '192.0.2.7', port: 5060 + cseq, transport: 'udp' },
    header: (name) => headers[name.toLowerCase()],
    headers: () => Object.entries(headers),
    nameAddr: () => ({ uri: AOR, params: {} }),
    contacts: () => [{ uri: contact, params: {} }],
    cseq: () => ({ seq: cseq, method: 'REGISTER' }),
    registration: () => ({ kind: 'parsed', type: 'register', expires: 300 }),
    proxyTo: () => Promise.reject(new Error('not proxied')),
  };
}

function ok(contacts: NameAddr[]): SipReply {
  return { status: 200, reason: 'OK', body: '', header: (name) => (name.toLowerCase() === 'expires' ? '300' : undefined), headers: () => [], contacts: () => contacts };
}

function responder(): SipResponder & { sent: number[] } {
  const sent: number[] = [];
  return { sent, get finalSent() { return sent.length > 0; }, send(status) { sent.push(status); } };
}

describe('REGISTER relay and the replica', () => {
  it('a reply to an older CSeq that arrives after a newer one was applied does not overwrite the replica', async () => {
    const store = new SqliteStore(join(dir, 'crossing.sqlite'));
    const pending: { out: OutboundRequest; answer: (reply: SipReply) => void }[] = [];
    const handler = createRegisterHandler({
      sender: { request: (out) => new Promise((resolve) => { pending.push({ out, answer: resolve }); }) },
      store: store.bindings,
      upstream: { uri: 'sip:127.0.0.1:5080', timeoutMs: 2000 },
      domains: ['example.test'],
      sipAddresses: () => ['udp/127.0.0.1:5060'],
      pathUri: () => undefined,
      logger: createLogger({ level: 'error', format: 'json' }),
      limits: { maxBindingsPerAor: 32, maxAors: 1000 },
      counters: { bindings: 0, aors: 0 },
    });
    try {
      const [older, newer] = [responder(), responder()];
      const first = handler(register(1, 'sip:carol@192.0.2.7:5061'), older);
      const second = handler(register(2, 'sip:carol@192.0.2.7:5062'), newer);
      assert.equal(pending.length, 2, 'both REGISTERs relayed');
      assert.equal(pending[0]?.out.headers['cseq'], '1 REGISTER', 'the registrar sees the UA\'s own CSeq');

      // The registrar processed CSeq 2 last: its answer lists only the newer contact.
      pending[1]?.answer(ok([{ uri: 'sip:carol@192.0.2.7:5062', params: { expires: '300' } }]));
      await second;
      pending[0]?.answer(ok([{ uri: 'sip:carol@192.0.2.7:5061', params: { expires: '300' } }]));
      await first;

      assert.deepEqual([older.sent, newer.sent], [[200], [200]], 'both UAs get the registrar\'s answer unchanged');
      const live = store.replica.liveBindings(AOR, Date.now());
      assert.deepEqual(live.map((b) => [b.contact, b.cseq, b.source?.port]), [['sip:carol@192.0.2.7:5062', 2, 5062]],
        'the replica keeps what the newest REGISTER left');
    } finally {
      await store.close();
    }
  });

  it('after a restart, a stale reply is still caught by the CSeq the stored binding carries', async () => {
    const file = join(dir, 'restart.sqlite');
    const logger = createLogger({ level: 'error', format: 'json' });
    const deps = (store: SqliteStore, answer: (out: OutboundRequest) => SipReply) => createRegisterHandler({
      sender: { request: (out) => Promise.resolve(answer(out)) },
      store: store.bindings,
      upstream: { uri: 'sip:127.0.0.1:5080', timeoutMs: 2000 },
      domains: ['example.test'],
      sipAddresses: () => ['udp/127.0.0.1:5060'],
      pathUri: () => undefined,
      logger,
      limits: { maxBindingsPerAor: 32, maxAors: 1000 },
      counters: { bindings: 0, aors: 0 },
    });
    const before = new SqliteStore(file);
    await deps(before, () => ok([{ uri: 'sip:carol@192.0.2.7:5065', params: { expires: '300' } }]))(register(5, 'sip:carol@192.0.2.7:5065'), responder());
    await before.close();

    const after = new SqliteStore(file);
    try {
      const res = responder();
      await deps(after, () => ok([{ uri: 'sip:carol@192.0.2.7:5064', params: { expires: '300' } }]))(register(4, 'sip:carol@192.0.2.7:5064'), res);
      assert.deepEqual(res.sent, [200]);
      assert.deepEqual(after.replica.liveBindings(AOR, Date.now()).map((b) => b.contact), ['sip:carol@192.0.2.7:5065']);
    } finally {
      await after.close();
    }
  });

  it('a phone provisioned by IP (REGISTER sip:<midreg>:<port>) is relayed to the registrar\'s URI with every end-to-end header unchanged', async () => {
    const store = new SqliteStore(join(dir, 'by-ip.sqlite'));
    const aor = 'sip:dora@203.0.113.5';
    const headers: Record<string, string> = {
      'call-id': 'dora-1', 'max-forwards': '70', expires: '300', contact: '<sip:dora@192.0.2.9:5062>',
      from: `<${aor}:5060>;tag=d1`, to: `<${aor}:5060>`, cseq: '2 REGISTER',
      authorization: 'Digest username="dora", realm="203.0.113.5", nonce="n1", uri="sip:203.0.113.5:5060", response="0123456789abcdef0123456789abcdef"',
    };
    const req: SipRequest = {
      method: 'REGISTER', uri: 'sip:203.0.113.5:5060', body: '',
      source: { address: '192.0.2.9', port: 5062, transport: 'udp' },
      header: (name) => headers[name.toLowerCase()],
      headers: () => Object.entries(headers),
      nameAddr: (name) => ({ uri: `${aor}:5060`, params: name === 'From' ? { tag: 'd1' } : ({} as Record<string, string>) }),
      contacts: () => [{ uri: 'sip:dora@192.0.2.9:5062', params: {} }],
      cseq: () => ({ seq: 2, method: 'REGISTER' }),
      registration: () => ({ kind: 'parsed', type: 'register', expires: 300 }),
      proxyTo: () => Promise.reject(new Error('not proxied')),
    };
    const sent: OutboundRequest[] = [];
    const handler = createRegisterHandler({
      sender: { request: (out) => { sent.push(out); return Promise.resolve(ok([{ uri: 'sip:dora@192.0.2.9:5062', params: { expires: '120' } }])); } },
      store: store.bindings,
      upstream: { uri: 'sip:10.0.0.5:5080;transport=tcp', timeoutMs: 2000 },
      domains: ['example.test', '203.0.113.5'],
      // drachtio-server listens on a private address; phones know midreg by its public one.
      sipAddresses: () => ['udp/10.0.0.2:5060', 'tcp/10.0.0.2:5060'],
      pathUri: () => undefined,
      logger: createLogger({ level: 'error', format: 'json' }),
      limits: { maxBindingsPerAor: 32, maxAors: 1000 },
      counters: { bindings: 0, aors: 0 },
    });
    try {
      const res = responder();
      await handler(req, res);
      assert.deepEqual(res.sent, [200]);
      assert.equal(sent[0]?.uri, 'sip:10.0.0.5:5080;transport=tcp', 'the registrar gets its own URI, not midreg\'s address');
      for (const name of ['to', 'from', 'call-id', 'cseq', 'contact', 'authorization', 'expires']) {
        assert.equal(sent[0]?.headers[name], headers[name], `${name} unchanged`);
      }
      assert.deepEqual(store.replica.liveBindings(aor, Date.now()).map((b) => b.contact), ['sip:dora@192.0.2.9:5062'], 'the AoR stays user@<midreg IP>');
    } finally {
      await store.close();
    }
  });

  it('contact insertion: the registrar gets midreg\'s Contacts, the phone its own back, the replica both; queries and other devices map too', async () => {
    const store = new SqliteStore(join(dir, 'insertion.sqlite'));
    const aor = 'sip:erin@example.test';
    const phone = 'sip:erin@192.168.1.10:5062;transport=tcp';
    const request = (cseq: number, contact: string | undefined): SipRequest => {
      const headers: Record<string, string> = {
        'call-id': 'erin-1', 'max-forwards': '70', from: `<${aor}>;tag=e1`, to: `<${aor}>`, cseq: `${cseq} REGISTER`,
        ...(contact ? { contact: `<${contact}>;expires=600;+sip.instance="<urn:uuid:e1>";reg-id=1` } : {}),
      };
      return {
        method: 'REGISTER', uri: 'sip:example.test', body: '', source: { address: '198.51.100.4', port: 40000, transport: 'tcp' },
        header: (name) => headers[name.toLowerCase()], headers: () => Object.entries(headers),
        nameAddr: () => ({ uri: aor, params: {} }),
        contacts: () => (contact ? [{ uri: contact, params: { expires: '600', '+sip.instance': '"<urn:uuid:e1>"', 'reg-id': '1' } }] : 'none'),
        cseq: () => ({ seq: cseq, method: 'REGISTER' }), registration: () => ({ kind: 'parsed', type: 'register', expires: 600 }),
        proxyTo: () => Promise.reject(new Error('not proxied')),
      };
    };
    const sent: OutboundRequest[] = [];
    let registrarContacts: NameAddr[] = [];
    const answered: Array<Record<string, string>> = [];
    const handler = createRegisterHandler({
      sender: { request: (out) => { sent.push(out); return Promise.resolve({ ...ok(registrarContacts), headers: () => [['contact', registrarContacts.map((c) => `<${c.uri}>`).join(', ')]] }); } },
      store: store.bindings,
      upstream: { uri: 'sip:10.0.0.5:5060', timeoutMs: 2000 },
      domains: ['example.test'],
      sipAddresses: () => ['udp/203.0.113.5:5060'],
      pathUri: () => undefined,
      contactInsertion: { self: () => ({ scheme: 'sip', hostport: '203.0.113.5:5060', transport: 'udp' }) },
      logger: createLogger({ level: 'error', format: 'json' }),
      limits: { maxBindingsPerAor: 32, maxAors: 1000 },
      counters: { bindings: 0, aors: 0 },
    });
    const res = (): SipResponder => ({ finalSent: false, send: (_status, opts) => { answered.push(opts?.headers ?? {}); } });
    try {
      // The registrar is told only midreg's address, with every header parameter of the phone's Contact.
      registrarContacts = [];
      const relay = handler(request(1, phone), res());
      const upstreamContact = /^<([^>]+)>/.exec(sent[0]?.headers['contact'] ?? '')?.[1] ?? '';
      assert.match(upstreamContact, /^sip:erin@203\.0\.113\.5:5060;ctid=[A-Za-z0-9_-]{22}$/);
      assert.match(sent[0]?.headers['contact'] ?? '', /;expires=600;\+sip\.instance="<urn:uuid:e1>";reg-id=1$/);
      assert.equal(sent[0]?.headers['path'], undefined, 'no Path unless asked');
      await relay;
      // It answers with its binding (midreg's Contact) and another device registered elsewhere.
      registrarContacts = [{ uri: upstreamContact, params: { expires: '300' } }, { uri: 'sip:erin@198.51.100.99:5060', params: { expires: '120' } }];
      await handler(request(2, phone), res());
      assert.equal(answered[1]?.['contact'], `<${phone}>;expires=300, <sip:erin@198.51.100.99:5060>;expires=120`, 'the phone finds its own Contact with the granted expiry');
      const stored = store.replica.liveBindings(aor, Date.now());
      const mine = stored.find((b) => b.contact === phone);
      assert.deepEqual(mine?.insertion, { contact: upstreamContact, key: upstreamContact.split('ctid=')[1] });
      assert.deepEqual(mine?.source, { address: '198.51.100.4', port: 40000, transport: 'tcp' });
      assert.equal(stored.find((b) => b.contact !== phone)?.insertion, null, 'bound elsewhere: stored as listed, no insertion');
      // A query (no Contact) is answered from what the registrar lists, mapped by the stored keys.
      await handler(request(3, undefined), res());
      assert.equal(answered[2]?.['contact'], `<${phone}>;expires=300, <sip:erin@198.51.100.99:5060>;expires=120`);
      assert.equal(store.replica.bindingsByInsertionKey(mine?.insertion?.key ?? '').length, 1);
      // The registrar evicts the phone's binding: gone from the replica, key and all.
      registrarContacts = [{ uri: 'sip:erin@198.51.100.99:5060', params: { expires: '120' } }];
      await handler(request(4, undefined), res());
      assert.deepEqual(store.replica.bindingsByInsertionKey(mine?.insertion?.key ?? ''), []);
    } finally {
      await store.close();
    }
  });
});

describe('RFC 5626 Flow-Timer on the way back to the phone (MIDREG_FLOW_TIMER_SEC)', () => {
  const answerWith = async (transport: string, requireHeader: string | undefined, flowTimerSec: number, via?: string): Promise<Record<string, string>> => {
    const store = new SqliteStore(join(dir, `flow-timer-${transport}-${String(requireHeader)}-${flowTimerSec}-${via === undefined ? 1 : 2}.sqlite`));
    const contact = 'sip:carol@192.0.2.7:5061';
    const reply: SipReply = {
      ...ok([{ uri: contact, params: { expires: '300' } }]),
      header: (name) => ({ expires: '300', ...(requireHeader ? { require: requireHeader } : {}) } as Record<string, string>)[name.toLowerCase()],
      headers: () => [['contact', `<${contact}>;expires=300`], ...(requireHeader ? [['require', requireHeader] as [string, string]] : [])],
    };
    const handler = createRegisterHandler({
      sender: { request: () => Promise.resolve(reply) },
      store: store.bindings,
      upstream: { uri: 'sip:127.0.0.1:5080', timeoutMs: 2000 },
      domains: ['example.test'],
      sipAddresses: () => ['udp/127.0.0.1:5060'],
      pathUri: () => undefined,
      flowTimerSec,
      logger: createLogger({ level: 'error', format: 'json' }),
      limits: { maxBindingsPerAor: 32, maxAors: 1000 },
      counters: { bindings: 0, aors: 0 },
    });
    const answered: Array<Record<string, string>> = [];
    const req = register(1, contact, via ?? `SIP/2.0/${transport.toUpperCase()} 192.0.2.7:5061;branch=z9hG4bK-ft`);
    await handler({ ...req, source: { ...req.source, transport: transport === 'ws' ? 'tcp' : transport } }, { finalSent: false, send: (_s, opts) => { answered.push(opts?.headers ?? {}); } });
    await store.close();
    return answered[0] ?? {};
  };

  it('is added to a 2xx whose registrar required outbound, over UDP and TCP', async () => {
    assert.equal((await answerWith('udp', 'outbound', 25))['flow-timer'], '25');
    assert.equal((await answerWith('tcp', 'path, outbound', 25))['flow-timer'], '25');
  });

  it('is not added without Require: outbound, when off, or over TLS (drachtio-server answers no CRLF ping there)', async () => {
    assert.equal((await answerWith('udp', undefined, 25))['flow-timer'], undefined);
    assert.equal((await answerWith('udp', 'outbound', 0))['flow-timer'], undefined);
    assert.equal((await answerWith('tls', 'outbound', 25))['flow-timer'], undefined);
  });

  it('is not added to a WebSocket client (drachtio-server reports its flow as tcp; its Via says WS), nor behind another proxy', async () => {
    assert.equal((await answerWith('ws', 'outbound', 25))['flow-timer'], undefined);
    assert.equal((await answerWith('udp', 'outbound', 25, 'SIP/2.0/UDP 192.0.2.9:5060;branch=z9hG4bK-p, SIP/2.0/UDP 192.0.2.7:5061;branch=z9hG4bK-ua'))['flow-timer'], undefined);
  });
});
