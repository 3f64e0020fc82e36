// End to end with a real SIP client, offline messages (MIDREG_OFFLINE_MESSAGES=on): bob on
// baresip registers once and quits (baresip de-registers on a clean exit); alice on baresip sends
// him a MESSAGE, which midreg stores and answers 202; bob's baresip starts again (same account, a
// new process on a new port), registers, and shows alice's text with her original From. Once per
// domain mode (a domain name, and midreg's own IP as "SIP server"). Runs when DRACHTIO_BIN is set.
import { strict as assert } from 'node:assert';
import { liveBindingsOf } from '../support/replica.js';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import type { Binding } from '../../lib/registrar/registration.js';
import { BARESIP_BIN, hasBinary, startBaresip, type SipClient, type SipClientOptions } from '../support/baresip.js';
import { e2eSkipReason, logLines } from '../support/processes.js';
import { DOMAIN_MODES, startStack, type Stack } from '../support/stack.js';

function clientsOfflineSkipReason(): string | undefined {
  const e2e = e2eSkipReason();
  if (e2e) return e2e;
  const missing = !hasBinary(BARESIP_BIN, '-h') ? `${BARESIP_BIN} not found (Debian package baresip-core, or set BARESIP_BIN)` : undefined;
  // Like e2eSkipReason(): where CI requires the end-to-end suites, a missing client is a failure.
  if (missing && process.env['MIDREG_E2E'] === 'required') throw new Error(`MIDREG_E2E=required but the clients-offline suite cannot run: ${missing}`);
  return missing;
}

const skip = clientsOfflineSkipReason();
if (skip) console.log(`# e2e clients-offline suite SKIPPED: ${skip}`);

/** A user's live bindings in midreg's replica, read as an operator would: the SQLite file, read-only. */
function replica(stack: Stack, user: string): Promise<Binding[]> {
  return liveBindingsOf(stack, stack.domain.aor(user));
}

async function until(what: string, test: () => boolean | Promise<boolean>, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await test())) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

for (const mode of DOMAIN_MODES) {
  describe(`a real client's offline message (baresip → baresip) through midreg, domain by ${mode}`, { skip: skip ?? false, timeout: 120_000 }, () => {
    let stack: Stack | undefined;
    const clients: SipClient[] = [];

    after(async () => {
      for (const ua of clients) await ua.stop();
      await stack?.stop();
    });

    it('baresip sends to an offline baresip (202), which then starts, registers and shows the message', async () => {
      stack = await startStack({ domain: mode, env: { MIDREG_OFFLINE_MESSAGES: 'on' } });
      const s = stack;
      const { uriHost } = s.domain;
      const account = (user: string, peer: string, dir: string): SipClientOptions => ({
        user,
        password: `pw-${user}`,
        domain: uriHost,
        // A domain name does not resolve to midreg here: the client gets it as outbound proxy.
        ...(mode === 'name' ? { outboundProxy: s.sipTarget } : {}),
        expiresSec: 60,
        contacts: [`sip:${peer}@${uriHost}`],
        dir: join(s.workDir, dir),
      });
      const start = async (opts: SipClientOptions): Promise<SipClient> => {
        const ua = await startBaresip(opts);
        clients.push(ua);
        return ua;
      };
      const bobAor = s.domain.aor('bob');

      // bob registers once (the registrar accepts him: midreg will know his AoR), then quits.
      const [bobBefore, alice] = await Promise.all([start(account('bob', 'alice', 'ua-bob')), start(account('alice', 'bob', 'ua-alice'))]);
      await Promise.all([bobBefore.registered(15_000), alice.registered(15_000)]);
      const [first, ...more] = (await replica(s, 'bob'));
      assert.ok(first && more.length === 0, 'bob\'s one binding in the replica');
      await bobBefore.stop();
      // A clean exit de-registers (REGISTER with Expires 0): his binding leaves the replica and
      // the registrar, rather than waiting 60 s to expire.
      await until('bob to have no live binding in the replica', async () => (await replica(s, 'bob')).length === 0, 5000);
      await until('the registrar to drop bob\'s binding', async () => (await s.kamailio?.lookup(`bob@${s.domain.host}`))?.length === 0, 5000);
      // Kamailio drops the binding before midreg has its 200 and logs: wait for the line.
      await until('midreg logs bob\'s de-registration', () => logLines(s.midreg, { event: 'register', kind: 'unregister', aor: bobAor, status: 200 }).length > 0, 2000);
      const deregistered = logLines(s.midreg, { event: 'register', kind: 'unregister', aor: bobAor, status: 200 });
      assert.equal(deregistered.length, 1, 'bob\'s de-registration relayed and accepted');
      assert.equal(deregistered[0]?.['removed'], 1, 'it removed his one binding from the replica');

      // alice writes to bob, who is away: stored and answered 202 Accepted.
      const text = `offline hello bob, alice here (${mode} ${Date.now()})`;
      const aliceShown = alice.output().length;
      await alice.sendMessage(`sip:bob@${uriHost}`, text);
      await s.midreg.waitFor(/"message":"MESSAGE stored"/, 5000);
      const stored = logLines(s.midreg, { message: 'MESSAGE stored' });
      assert.equal(stored.length, 1, 'one MESSAGE stored');
      assert.equal(stored[0]?.['status'], 202, 'answered 202 Accepted');
      assert.equal(stored[0]?.['aor'], bobAor, 'stored for bob');
      // baresip 1.0.0 shows the answer to a MESSAGE only when it is a failure (an error or a
      // status >= 300, printed in red: contact module, send_resp_handler), never a 2xx: alice's
      // client must show nothing here. The 202 left midreg before the log line; give it a moment.
      await new Promise((r) => setTimeout(r, 500));
      const aliceSince = alice.output().slice(aliceShown);
      assert.ok(!aliceSince.includes('\u001b[31m'), `alice's baresip shows no failure for the MESSAGE: ${JSON.stringify(aliceSince)}`);
      assert.equal(logLines(s.midreg, { message: 'offline message delivered' }).length, 0, 'nothing delivered while bob is away');

      // bob's baresip starts again: same account, a new process on a new port. It registers, and
      // midreg delivers what waited: his client shows alice's text with her original From.
      const bobAgain = await start(account('bob', 'alice', 'ua-bob'));
      await bobAgain.registered(15_000);
      const { from } = await bobAgain.shownMessage(text, 10_000);
      assert.equal(from, alice.aor, `shown as from alice's own From (${from})`);
      // bob's client shows the text before its 200 reaches midreg, which logs the delivery then.
      await s.midreg.waitFor(/"message":"offline message delivered"/, 5000);
      const delivered = logLines(s.midreg, { message: 'offline message delivered' });
      assert.equal(delivered.length, 1, 'delivered once');
      assert.equal(delivered[0]?.['to'], bobAor);
      assert.equal(delivered[0]?.['from'], s.domain.aor('alice'));
      assert.equal(delivered[0]?.['status'], 200, 'bob\'s baresip answered 200');
      assert.equal(delivered[0]?.['id'], stored[0]?.['id'], 'the message that was stored');
      const [binding] = (await replica(s, 'bob'));
      assert.ok(binding && binding.callId !== first.callId, 'bob\'s new registration (a new Call-ID) is what holds the binding');
      assert.equal(binding.source?.port, bobAgain.sipPort, 'delivered to bob\'s new binding');
    });
  });
}
