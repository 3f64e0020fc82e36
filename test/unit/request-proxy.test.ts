import { strict as assert } from 'node:assert';
import { describe, it } from 'node:test';
import { createProxyHandler } from '../../lib/messaging/request-proxy.js';
import { createLogger } from '../../lib/ops/logger.js';
import type { Binding } from '../../lib/registrar/registration.js';
import type { SipRequest, SipResponder } from '../../lib/sip/drachtio.js';

function binding(over: Partial<Binding>): Binding {
  return {
    aor: 'sip:bob@example.test', contact: 'sip:bob@10.0.0.7:5060', expiresAt: 2e12, q: null, instance: null, regId: null,
    path: null, callId: 'c', cseq: 1, userAgent: null, source: { address: '203.0.113.5', port: 40123, transport: 'udp' },
    insertion: null, upstreamExpiresAt: null, lapsedAt: null, registeredAt: 0, updatedAt: 0, ...over,
  };
}

/** An INVITE from the platform (a trusted peer) for `uri`; records where midreg proxies it. */
function inviteFromPlatform(uri: string): { req: SipRequest; destinations: Array<string | readonly string[]> } {
  const destinations: Array<string | readonly string[]> = [];
  const headers: Record<string, string> = { 'max-forwards': '70', 'call-id': 'call-1' };
  const req: SipRequest = {
    method: 'INVITE', uri, body: '', source: { address: '127.0.0.1', port: 5070, transport: 'udp' },
    header: (name) => headers[name.toLowerCase()],
    headers: () => Object.entries(headers),
    nameAddr: () => ({ uri: 'sip:alice@example.test', params: {} }),
    contacts: () => 'none',
    cseq: () => ({ seq: 1, method: 'INVITE' }),
    registration: () => ({ kind: 'refused', status: 400 }),
    proxyTo: (destination) => { destinations.push(destination); return Promise.resolve({ finalStatus: 200 }); },
  };
  return { req, destinations };
}

describe('requests from the platform for an AoR (RFC 5626 §7: one target per device)', () => {
  it('go to the newest flow of a device with two flows, not to whichever flow the store lists first', async () => {
    const instance = '"<urn:uuid:33333333-0000-1000-8000-000000000000>"';
    const older = binding({ contact: 'sip:bob@10.0.0.5:5061;transport=tcp', instance, regId: 1, registeredAt: 100, updatedAt: 500, source: { address: '203.0.113.5', port: 41001, transport: 'tcp' } });
    const newer = binding({ contact: 'sip:bob@10.0.0.5:5062;transport=tcp', instance, regId: 2, registeredAt: 200, updatedAt: 500, source: { address: '203.0.113.5', port: 41002, transport: 'tcp' } });
    const handler = createProxyHandler({
      store: {
        liveBindings: () => Promise.resolve([older, newer]),
        liveBindingsByContact: () => Promise.resolve([]),
        bindingsByInsertionKey: () => Promise.resolve([]),
      },
      upstreamUri: 'sip:127.0.0.1:5070', domains: ['example.test'], trustedPeers: ['127.0.0.1:5070'], noBindingStatus: 404,
      sipAddresses: () => ['udp/127.0.0.1:5060'], logger: createLogger({ level: 'error', format: 'json' }),
    });
    const { req, destinations } = inviteFromPlatform('sip:bob@example.test');
    const res: SipResponder = { finalSent: false, send: () => assert.fail('answered by midreg instead of proxied') };
    await handler(req, res);
    assert.deepEqual(destinations, ['sip:203.0.113.5:41002;transport=tcp']);
  });
});
