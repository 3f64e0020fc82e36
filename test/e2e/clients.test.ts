// End to end with real SIP clients, not sipp: alice on baresip and bob on Linphone's linphonec,
// provisioned the two ways phones are (a domain name, and midreg's own IP address as "SIP
// server"), register through drachtio-server → midreg → Kamailio with digest auth, and exchange a
// MESSAGE that the other client really shows. Runs when DRACHTIO_BIN is set.
import { strict as assert } from 'node:assert';
import { liveBindingsOf } from '../support/replica.js';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import type { Binding } from '../../lib/registrar/registration.js';
import { BARESIP_BIN, hasBinary, startBaresip, type SipClient, type SipClientOptions } from '../support/baresip.js';
import { LINPHONEC_BIN, startLinphonec } from '../support/linphone.js';
import { e2eSkipReason, logLines } from '../support/processes.js';
import { DOMAIN_MODES, startStack, type Stack } from '../support/stack.js';

function clientsSkipReason(): string | undefined {
  const e2e = e2eSkipReason();
  if (e2e) return e2e;
  const missing = !hasBinary(BARESIP_BIN, '-h') ? `${BARESIP_BIN} not found (Debian package baresip-core, or set BARESIP_BIN)`
    : !hasBinary(LINPHONEC_BIN, '-v') ? `${LINPHONEC_BIN} not found (Debian package linphone-cli, or set LINPHONEC_BIN)`
      : undefined;
  // Like e2eSkipReason(): where CI requires the end-to-end suites, a missing client is a failure.
  if (missing && process.env['MIDREG_E2E'] === 'required') throw new Error(`MIDREG_E2E=required but the clients suite cannot run: ${missing}`);
  return missing;
}

const skip = clientsSkipReason();
if (skip) console.log(`# e2e clients suite SKIPPED: ${skip}`);

function replica(stack: Stack, user: string): Promise<Binding[]> {
  return liveBindingsOf(stack, stack.domain.aor(user));
}

/**
 * The sender as a client shows it, without the port: linphonec shows (and sends) its chat
 * addresses without one even where the AoR was written with midreg's port (ip mode); baresip
 * keeps it. The AoR is the same either way (RFC 3261 §10.3 step 5 compares without the port).
 */
const withoutPort = (uri: string): string => uri.replace(/:\d+$/, '');

for (const mode of DOMAIN_MODES) {
  describe(`real SIP clients (baresip, linphonec) through midreg, domain by ${mode}`, { skip: skip ?? false, timeout: 120_000 }, () => {
    let stack: Stack;
    let alice: SipClient | undefined;
    let bob: SipClient | undefined;

    before(async () => {
      stack = await startStack({ domain: mode });
      const { uriHost } = stack.domain;
      const common = (user: string, peer: string): SipClientOptions => ({
        user,
        password: `pw-${user}`,
        domain: uriHost,
        // A domain name does not resolve to midreg here: the clients get it as outbound proxy,
        // as phones get one where DNS does not point at the SIP server. By IP, the domain is it.
        ...(mode === 'name' ? { outboundProxy: stack.sipTarget } : {}),
        expiresSec: 60,
        contacts: [`sip:${peer}@${uriHost}`],
        dir: join(stack.workDir, `ua-${user}`),
      });
      alice = await startBaresip(common('alice', 'bob'));
      bob = await startLinphonec(common('bob', 'alice'));
    });

    after(async () => {
      await alice?.stop();
      await bob?.stop();
      await stack?.stop();
    });

    it('both clients register with digest auth; the replica and the registrar hold each binding', async () => {
      assert.ok(alice && bob);
      await Promise.all([alice.registered(15_000), bob.registered(15_000)]);
      for (const ua of [alice, bob]) {
        const bindings = (await replica(stack, ua.user));
        assert.equal(bindings.length, 1, `${ua.kind} ${ua.user}: one binding in the replica`);
        const [b] = bindings;
        assert.ok(b);
        assert.match(b.contact, new RegExp(`@127\\.0\\.0\\.1:${ua.sipPort}\\b`), `${ua.kind}'s Contact`);
        assert.deepEqual(b.source, { address: '127.0.0.1', port: ua.sipPort, transport: 'udp' }, `${ua.kind} registered from its own port`);
        const seconds = (b.expiresAt - Date.now()) / 1000;
        assert.ok(seconds > 30 && seconds <= 60, `${ua.kind}: the granted 60 s (${seconds.toFixed(1)} s left)`);
        const upstream = await stack.kamailio?.lookup(`${ua.user}@${stack.domain.host}`);
        assert.equal(upstream?.length, 1, `Kamailio holds ${ua.user}'s binding`);
        assert.equal(upstream?.[0]?.callId, b.callId, 'the registrar saw the client\'s own Call-ID');
      }
      // Each went through a digest challenge: the registrar's 401, then the 200.
      for (const user of ['alice', 'bob']) {
        const statuses = logLines(stack.midreg, { event: 'register', aor: stack.domain.aor(user) }).map((l) => l['status']);
        assert.ok(statuses.includes(401) && statuses.includes(200), `${user}: 401 then 200 relayed (${statuses.join(',')})`);
      }
    });

    it('baresip → linphonec: bob\'s client shows alice\'s text', async () => {
      assert.ok(alice && bob);
      const text = `hello bob, alice here (${mode} ${Date.now()})`;
      await alice.sendMessage(`sip:bob@${stack.domain.uriHost}`, text);
      const { from } = await bob.shownMessage(text, 10_000);
      assert.equal(withoutPort(from), stack.domain.aor('alice'), `shown as from ${from}`);
    });

    it('linphonec → baresip: alice\'s client shows bob\'s text', async () => {
      assert.ok(alice && bob);
      const text = `hi alice, bob here (${mode} ${Date.now()})`;
      await bob.sendMessage(`sip:alice@${stack.domain.uriHost}`, text);
      const { from } = await alice.shownMessage(text, 10_000);
      assert.equal(withoutPort(from), stack.domain.aor('bob'), `shown as from ${from}`);
      // Both went through midreg's replica, not around it. The recipient shows the text before
      // its 200 reaches midreg, which logs the delivery then: wait for that line, bounded.
      await stack.midreg.waitFor(/"outcome":"delivered"[^\n]*\n[\s\S]*"outcome":"delivered"/, 5000);
      assert.ok(logLines(stack.midreg, { event: 'message', outcome: 'delivered' }).length >= 2);
    });
  });
}
