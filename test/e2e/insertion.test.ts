// End to end: how calls and messages from the platform come back to a phone behind NAT through
// midreg, against a registrar that ignores Path (test/kamailio/kamailio.cfg WITHOUT_PATH, as a
// legacy PBX) and one that honours it. The phone registers from one port but its Contact names
// an address nobody can reach, so only its source flow reaches it. The platform's side (a sipp UAC
// sending to Kamailio, which looks the AoR up and relays) originates an INVITE and a MESSAGE.
// The same scenario runs against OpenSIPS' mid_registrar (mode 0) from ../shared/peers when present.
import { strict as assert } from 'node:assert';
import { liveBindingsOf } from '../support/replica.js';
import type { Binding } from '../../lib/registrar/registration.js';
import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { sipMessage } from '../hostile/corpus.js';
import { startKamailio } from '../support/kamailio.js';
import { e2eSkipReason, freePort, logLines, REPO_ROOT } from '../support/processes.js';
import { sendAndCollect, SipPeer } from '../support/raw-sip.js';
import { receivedResponses, runSipp, startSippUas, type SippResult } from '../support/sipp.js';
import { DOMAIN_MODES, startStack, type Stack } from '../support/stack.js';

const skip = e2eSkipReason();
if (skip) console.log(`# e2e insertion suite SKIPPED: ${skip}`);

const OPENSIPS_START = join(REPO_ROOT, '..', 'shared', 'peers', 'opensips', 'start.sh');

const finals = (r: SippResult): number[] => receivedResponses(r.messages).map((x) => x.status).filter((s) => s >= 200);
/** Requests of `method` a UAS received, from its message log. */
const received = (r: SippResult, method: string): number => r.messages.split(/-{10,}/).filter((m) => new RegExp(`received[\\s\\S]*?\\n${method} `).test(m)).length;
const passed = (r: SippResult): string => `sipp ${r.command} (${r.code}):\n${r.errors.slice(-1000)}\n${r.messages.slice(-2500)}`;

interface Phone { port: number; deadContact: string }

/** A phone behind a simulated NAT: registers from `port`, its Contact names a port nothing listens on. */
async function registerBehindNat(registrarSide: string, domain: string, user: string): Promise<Phone> {
  const port = await freePort();
  const deadContact = `127.0.0.1:${await freePort()}`;
  const reg = await runSipp({ scenario: 'register-nat', target: registrarSide, localPort: port, vars: { user, domain, contact: deadContact, expires: '300' }, timeoutSec: 10 });
  assert.equal(reg.code, 0, passed(reg));
  assert.deepEqual(finals(reg), [401, 200]);
  return { port, deadContact };
}

interface CallResult { call: SippResult; callee: SippResult; message: SippResult; messageCallee: SippResult }

/** The platform's side calls `user` and sends it a MESSAGE, both through the registrar's lookup. */
async function platformReaches(kamailioPort: number, domain: string, user: string, phone: Phone, expectMessage: string): Promise<CallResult> {
  const callee = startSippUas({ scenario: 'uas-invite', localPort: phone.port, calls: 1, timeoutSec: 12 });
  await callee.ready;
  const call = await runSipp({ scenario: 'uac-invite', target: `127.0.0.1:${kamailioPort}`, localPort: await freePort(), vars: { to: user, from: 'carrier', domain, hold: '300' }, timeoutSec: 12 });
  const calleeResult = await callee.stop();
  const messageCallee = startSippUas({ scenario: 'uas-message', localPort: phone.port, calls: 1, timeoutSec: 10 });
  await messageCallee.ready;
  const message = await runSipp({ scenario: 'uac-message', target: `127.0.0.1:${kamailioPort}`, localPort: await freePort(), vars: { to: user, from: 'carrier', domain, expect: expectMessage }, timeoutSec: 10 });
  return { call, callee: calleeResult, message, messageCallee: await messageCallee.stop() };
}

function assertReached(result: CallResult, via: string): void {
  assert.equal(result.call.code, 0, passed(result.call));
  assert.ok(finals(result.call).includes(200), `the call was answered ${via}`);
  assert.equal(received(result.callee, 'INVITE'), 1, `the phone got the INVITE ${via}`);
  assert.equal(received(result.callee, 'ACK'), 1, `the ACK reached the phone ${via}`);
  assert.equal(received(result.callee, 'BYE'), 1, `the BYE reached the phone ${via}`);
  assert.equal(result.message.code, 0, passed(result.message));
  assert.equal(received(result.messageCallee, 'MESSAGE'), 1, `the phone got the MESSAGE ${via}`);
}

for (const mode of DOMAIN_MODES) {
  describe(`contact insertion: a phone behind NAT reached from the platform (domain: ${mode})`, { skip: skip ?? false, timeout: 180_000 }, () => {
    it('registrar without Path, MIDREG_INSERTION=contact: INVITE (ACK, BYE) and MESSAGE from the platform reach the phone through midreg', async () => {
      const stack = await startStack({ domain: mode, kamailioDefines: ['WITHOUT_PATH'], env: { MIDREG_INSERTION: 'contact' } });
      try {
        const phone = await registerBehindNat(stack.sipTarget, stack.domain.uriHost, 'bob');
        const [upstream] = await stack.kamailio?.lookup(stack.domain.aor('bob')) ?? [];
        assert.match(upstream?.contact ?? '', new RegExp(`^sip:bob@127\\.0\\.0\\.1:${stack.drachtio.sipPort};ctid=[A-Za-z0-9_-]{22}$`), 'the registrar holds midreg\'s Contact');
        assert.equal(upstream?.path, undefined, 'and no Path');
        const [binding] = (await readReplica(stack, 'bob'));
        assert.equal(binding?.contact, `sip:bob@${phone.deadContact}`, 'the replica keeps the phone\'s own Contact');
        assert.equal(binding?.insertion?.contact, upstream?.contact, '…and the one the registrar holds');

        const result = await platformReaches(stack.kamailio?.port ?? 0, stack.domain.uriHost, 'bob', phone, '200');
        assertReached(result, 'through midreg');
        const proxied = logLines(stack.midreg, { event: 'proxy', method: 'INVITE', direction: 'to-user' });
        assert.equal(proxied.length, 1, 'the INVITE went through midreg');
        assert.match(result.callee.messages, new RegExp(`INVITE sip:bob@127\\.0\\.0\\.1:${phone.port};transport=udp SIP/2\\.0`), 'to the phone\'s user at the address it registered from');
        assert.match(result.messageCallee.messages, new RegExp(`MESSAGE sip:bob@${phone.deadContact.replace(/\./g, '\\.')} SIP/2\\.0`), 'a MESSAGE carries the phone\'s own Contact');

        // A key midreg never issued reaches nothing, even from a registered phone ("open…" users
        // register without credentials, test/kamailio/kamailio.cfg).
        const sender = await SipPeer.open();
        try {
          const id = `forged-${mode}-${Date.now()}`;
          const headers = (method: string): string[] => [
            `Via: SIP/2.0/UDP 127.0.0.1:${sender.port};branch=z9hG4bK-${id}-${method}`, 'Max-Forwards: 70',
            `From: <sip:openmallory@${stack.domain.uriHost}>;tag=${id}`, `To: <sip:openmallory@${stack.domain.uriHost}>`,
            `Call-ID: ${id}-${method}`, `CSeq: 1 ${method}`,
          ];
          const reg = await sendAndCollect(sender, stack.drachtio.sipPort, sipMessage(`REGISTER sip:${stack.domain.uriHost} SIP/2.0`,
            [...headers('REGISTER'), `Contact: <sip:openmallory@127.0.0.1:${sender.port}>`, 'Expires: 60']), { transport: 'udp', waitMs: 3000 });
          assert.deepEqual(reg.statuses.filter((x) => x >= 200), [200]);
          const forged = await sendAndCollect(sender, stack.drachtio.sipPort, sipMessage(`MESSAGE sip:bob@127.0.0.1:${stack.drachtio.sipPort};ctid=AAAAAAAAAAAAAAAAAAAAAA SIP/2.0`,
            [...headers('MESSAGE'), 'Content-Type: text/plain'], 'hello?'), { transport: 'udp', waitMs: 3000 });
          assert.deepEqual(forged.statuses.filter((x) => x >= 200), [404], 'a forged key gets 404, never a relay');
        } finally {
          await sender.close();
        }

        // De-registration removes the binding the registrar holds under midreg's Contact.
        const dereg = await runSipp({ scenario: 'register-nat', target: stack.sipTarget, localPort: phone.port, vars: { user: 'bob', domain: stack.domain.uriHost, contact: phone.deadContact, expires: '0' }, timeoutSec: 10 });
        assert.equal(dereg.code, 0, passed(dereg));
        assert.deepEqual(await stack.kamailio?.lookup(stack.domain.aor('bob')), []);
        assert.deepEqual((await readReplica(stack, 'bob')), []);
      } finally {
        await stack.stop();
      }
    });

    it('registrar with Path, MIDREG_INSERTION=contact: the same, and the registrar is not given a Path', async () => {
      const stack = await startStack({ domain: mode, env: { MIDREG_INSERTION: 'contact' } });
      try {
        const phone = await registerBehindNat(stack.sipTarget, stack.domain.uriHost, 'carol');
        assert.equal((await stack.kamailio?.lookup(stack.domain.aor('carol')))?.[0]?.path, undefined);
        assertReached(await platformReaches(stack.kamailio?.port ?? 0, stack.domain.uriHost, 'carol', phone, '200'), 'through midreg');
      } finally {
        await stack.stop();
      }
    });

    it('registrar without Path and midreg with Path insertion: the platform cannot reach the phone (why contact insertion exists)', async () => {
      const stack = await startStack({ domain: mode, kamailioDefines: ['WITHOUT_PATH'] });
      try {
        const phone = await registerBehindNat(stack.sipTarget, stack.domain.uriHost, 'dave');
        const [upstream] = await stack.kamailio?.lookup(stack.domain.aor('dave')) ?? [];
        assert.equal(upstream?.contact, `sip:dave@${phone.deadContact}`, 'the registrar holds the phone\'s unreachable Contact');
        const result = await platformReaches(stack.kamailio?.port ?? 0, stack.domain.uriHost, 'dave', phone, '408');
        assert.ok(!finals(result.call).includes(200), 'the call is not answered');
        assert.equal(received(result.callee, 'INVITE'), 0, 'the phone never sees the INVITE');
        assert.equal(received(result.messageCallee, 'MESSAGE'), 0, 'nor the MESSAGE');
        console.log(`# without insertion, a registrar that ignores Path sends to the phone's own Contact ${upstream?.contact}: INVITE answered ${finals(result.call).join(',') || 'nothing'}, MESSAGE ${finals(result.message).join(',') || 'nothing'}`);
      } finally {
        await stack.stop();
      }
    });
  });
}

function readReplica(stack: Stack, user: string): Promise<Binding[]> {
  return liveBindingsOf(stack, stack.domain.aor(user));
}

const peerSkip = skip ?? (existsSync(OPENSIPS_START) ? undefined : `no OpenSIPS peer at ${OPENSIPS_START}`);
describe('the same scenario against OpenSIPS mid_registrar, mode 0 (../shared/peers/opensips)', { skip: peerSkip ?? false, timeout: 120_000 }, () => {
  it('registrar without Path: INVITE (ACK, BYE) and MESSAGE from the platform reach the phone through OpenSIPS', async () => {
    const kamPort = await freePort();
    const workDir = join('/tmp', `mr-osp-${process.pid}`);
    const kamailio = await startKamailio({ port: kamPort, workDir: join(workDir, 'k'), defines: ['WITHOUT_PATH'] });
    const opensipsPort = await freePort();
    const pid = Number(execFileSync('bash', [OPENSIPS_START, '0', `127.0.0.1:${opensipsPort}`, `sip:127.0.0.1:${kamPort}`, join(workDir, 'o')], { encoding: 'utf8' }).trim());
    try {
      const phone = await registerBehindNat(`127.0.0.1:${opensipsPort}`, 'example.test', 'erin');
      const [upstream] = await kamailio.lookup('erin@example.test');
      assert.match(upstream?.contact ?? '', /;ctid=/, 'OpenSIPS gave the registrar its own Contact');
      const result = await platformReaches(kamPort, 'example.test', 'erin', phone, '200');
      assertReached(result, 'through OpenSIPS');
      const ruri = /^(INVITE \S+)/m.exec(result.callee.messages)?.[1];
      console.log(`# OpenSIPS mode 0 delivered "${ruri}" to the phone behind NAT (its Contact ${phone.deadContact}, registered from port ${phone.port})`);
    } finally {
      try { process.kill(-pid, 'SIGTERM'); } catch { try { process.kill(pid, 'SIGTERM'); } catch { /* gone */ } }
      await kamailio.stop();
    }
  });
});
