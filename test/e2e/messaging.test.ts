// End to end: MESSAGE between registered users delivered from the replica, refusals, and a call
// through midreg and the platform (Kamailio), which reaches the callee back via midreg's Path.
import { strict as assert } from 'node:assert';
import { after, before, describe, it } from 'node:test';
import { sipMessage } from '../hostile/corpus.js';
import { e2eSkipReason, freePort, logLines } from '../support/processes.js';
import { sendAndCollect, SipPeer } from '../support/raw-sip.js';
import { receivedResponses, runSipp, startSippUas, type SippResult } from '../support/sipp.js';
import { DOMAIN_MODES, startStack, type Stack } from '../support/stack.js';

const skip = e2eSkipReason();
if (skip) console.log(`# e2e messaging suite SKIPPED: ${skip}`);

async function sipp(stack: Stack, scenario: string, vars: Record<string, string>, localPort: number): Promise<SippResult> {
  return runSipp({ scenario, target: stack.sipTarget, localPort, vars: { domain: stack.domain.uriHost, ...vars }, timeoutSec: 15 });
}

function assertPassed(result: SippResult): void {
  assert.equal(result.code, 0, `sipp ${result.command} failed (${result.code}):\n${result.errors.slice(-1500)}\n${result.messages.slice(-3000)}`);
}

const finals = (r: SippResult): number[] => receivedResponses(r.messages).map((x) => x.status).filter((s) => s >= 200);
/** How many requests a UAS received, from its message log. */
const received = (r: SippResult, method: string): string[] => r.messages.split(/-{10,}/).filter((m) => new RegExp(`received[\\s\\S]*?\\n${method} sip:`).test(m));

for (const mode of DOMAIN_MODES) describe(`MESSAGE and calls through midreg, end to end (domain: ${mode})`, { skip: skip ?? false, timeout: 180_000 }, () => {
  let stack: Stack;
  const port: Record<string, number> = {};
  before(async () => {
    stack = await startStack({ domain: mode, env: { MIDREG_MAX_MESSAGE_BYTES: '1000' } });
    for (const user of ['alice', 'bob', 'bob2', 'carol']) port[user] = await freePort();
    for (const [user, p] of [['alice', port['alice']], ['bob', port['bob']], ['bob', port['bob2']], ['carol', port['carol']]] as const) {
      assertPassed(await sipp(stack, 'register-auth', { user, expires: '300' }, p ?? 0));
    }
  });
  after(async () => { await stack?.stop(); });

  it('delivers to every registered device of the recipient and returns the 200', async () => {
    const uas1 = startSippUas({ scenario: 'uas-message', localPort: port['bob'] ?? 0, calls: 1, timeoutSec: 10 });
    const uas2 = startSippUas({ scenario: 'uas-message', localPort: port['bob2'] ?? 0, calls: 1, timeoutSec: 10 });
    await Promise.all([uas1.ready, uas2.ready]);
    const sent = await sipp(stack, 'uac-message', { to: 'bob', from: 'alice', expect: '200' }, port['alice'] ?? 0);
    assertPassed(sent);
    const [r1, r2] = await Promise.all([uas1.done, uas2.done]);
    assert.equal(received(r1, 'MESSAGE').length, 1, 'device 1 got it');
    assert.equal(received(r2, 'MESSAGE').length, 1, 'device 2 got it');
    assert.match(r1.messages, new RegExp(`MESSAGE sip:bob@127\\.0\\.0\\.1:${port['bob']} SIP/2\\.0`), 'Request-URI is the registered contact');
    assert.ok(logLines(stack.midreg, { event: 'message', outcome: 'delivered' }).length >= 1);
  });

  it('and the other way: bob → alice', async () => {
    const uas = startSippUas({ scenario: 'uas-message', localPort: port['alice'] ?? 0, calls: 1, timeoutSec: 10 });
    await uas.ready;
    assertPassed(await sipp(stack, 'uac-message', { to: 'alice', from: 'bob', expect: '200', body: 'hi alice' }, port['bob'] ?? 0));
    const r = await uas.done;
    assert.equal(received(r, 'MESSAGE').length, 1);
    assert.match(r.messages, /hi alice/);
  });

  it('404 for an unknown user, 403 for an unregistered or spoofed sender, 413 for an oversized body', async () => {
    assertPassed(await sipp(stack, 'uac-message', { to: 'nobody', from: 'alice', expect: '404' }, port['alice'] ?? 0));
    assertPassed(await sipp(stack, 'uac-message', { to: 'bob', from: 'mallory', expect: '403' }, await freePort()));
    assertPassed(await sipp(stack, 'uac-message', { to: 'bob', from: 'carol', expect: '403' }, port['alice'] ?? 0));
    assertPassed(await sipp(stack, 'uac-message', { to: 'bob', from: 'alice', expect: '413', body: 'x'.repeat(1200) }, port['alice'] ?? 0));
  });

  it('after de-registration a MESSAGE is no longer delivered', async () => {
    assertPassed(await sipp(stack, 'deregister', { user: 'carol' }, port['carol'] ?? 0));
    assertPassed(await sipp(stack, 'uac-message', { to: 'carol', from: 'alice', expect: '404' }, port['alice'] ?? 0));
  });

  it('a call alice → bob through midreg and the platform: INVITE/200/ACK/BYE, the platform reaching bob via Path', async () => {
    // bob has two devices; a UAS on each answers, the platform forks to both via midreg.
    const uas1 = startSippUas({ scenario: 'uas-invite', localPort: port['bob'] ?? 0, calls: 1, timeoutSec: 15 });
    const uas2 = startSippUas({ scenario: 'uas-invite', localPort: port['bob2'] ?? 0, calls: 1, timeoutSec: 15 });
    await Promise.all([uas1.ready, uas2.ready]);
    const call = await sipp(stack, 'uac-invite', { to: 'bob', from: 'alice', hold: '500' }, port['alice'] ?? 0);
    await Promise.all([uas1.stop(), uas2.stop()]);
    assertPassed(call);
    assert.ok(finals(call).includes(200));
    const proxied = logLines(stack.midreg, { event: 'proxy', method: 'INVITE' });
    assert.ok(proxied.some((l) => l['direction'] === 'to-platform'), 'caller side went to the platform');
    assert.ok(proxied.some((l) => l['direction'] === 'to-user'), 'the platform came back through midreg (Path)');
  });

  it('a call bob → alice the other way, and the INVITE reached the platform with its user part', async () => {
    const uas = startSippUas({ scenario: 'uas-invite', localPort: port['alice'] ?? 0, calls: 1, timeoutSec: 15 });
    await uas.ready;
    const call = await sipp(stack, 'uac-invite', { to: 'alice', from: 'bob', hold: '300' }, port['bob'] ?? 0);
    const answered = await uas.stop();
    assertPassed(call);
    assert.ok(finals(call).includes(200));
    assert.equal(received(answered, 'INVITE').length, 1, 'alice\'s phone got the INVITE');
    // The platform looked alice up by the Request-URI's user: a bare address would be a 404.
    const platformRuri = stack.domain.mode === 'ip' ? `sip:alice@127.0.0.1:${stack.kamailio?.port}` : 'sip:alice@example.test';
    assert.ok((stack.kamailio?.log() ?? '').includes(`INVITE ${platformRuri} from`), `the platform got INVITE ${platformRuri}`);
  });

  it('OPTIONS and SUBSCRIBE to a user reach that user\'s phone through the platform, user part intact', async () => {
    const answers = (method: string): boolean => method === 'OPTIONS' || method === 'SUBSCRIBE';
    const pat = await SipPeer.open({ answer: (req) => (req.method !== undefined && answers(req.method) ? { status: 200, reason: 'OK' } : undefined) });
    const caller = await SipPeer.open();
    try {
      const id = `subs-${mode}-${Date.now()}`;
      const headers = (method: string, cseq: number, to: string, via: number): string[] => [
        `Via: SIP/2.0/UDP 127.0.0.1:${via};branch=z9hG4bK-${id}-${method}`, 'Max-Forwards: 70',
        `From: <sip:openpat@${stack.domain.uriHost}>;tag=${id}`, `To: <sip:${to}@${stack.domain.uriHost}>`,
        `Call-ID: ${id}-${method}`, `CSeq: ${cseq} ${method}`,
      ];
      // "open…" users register without credentials (test/kamailio/kamailio.cfg).
      const reg = await sendAndCollect(pat, stack.drachtio.sipPort, sipMessage(`REGISTER sip:${stack.domain.uriHost} SIP/2.0`,
        [...headers('REGISTER', 1, 'openpat', pat.port), `Contact: <sip:openpat@127.0.0.1:${pat.port}>`, 'Expires: 120']), { transport: 'udp', waitMs: 3000 });
      assert.deepEqual(reg.statuses.filter((x) => x >= 200), [200], 'openpat registered');
      for (const method of ['OPTIONS', 'SUBSCRIBE']) {
        const extra = method === 'SUBSCRIBE' ? ['Event: presence', 'Expires: 60', `Contact: <sip:caller@127.0.0.1:${caller.port}>`] : [];
        const ex = await sendAndCollect(caller, stack.drachtio.sipPort, sipMessage(`${method} sip:openpat@${stack.domain.uriHost} SIP/2.0`,
          [...headers(method, 1, 'openpat', caller.port), ...extra]), { transport: 'udp', waitMs: 5000 });
        assert.deepEqual(ex.statuses.filter((x) => x >= 200), [200], `${method} answered by openpat's phone`);
        assert.ok(pat.received.some((m) => m.method === method), `${method} reached openpat's phone`);
      }
    } finally {
      await pat.close();
      await caller.close();
    }
  });
});
