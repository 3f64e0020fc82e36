// End to end: AoR throttling (MIDREG_MODE=aor) with raw phones → real drachtio-server → midreg →
// real Kamailio with digest auth. Kamailio's max_expires is 20 s (UPSTREAM_SEC), so the upstream
// registration ends and is renewed within the test. What Kamailio received is read from its own
// statistics (kamcmd) and its request log (Call-ID and CSeq of each REGISTER).
import { strict as assert } from 'node:assert';
import { after, before, describe, it } from 'node:test';
import { liveBindingsOf } from '../support/replica.js';
import type { Binding } from '../../lib/registrar/registration.js';
import { e2eSkipReason, freePort, logLines } from '../support/processes.js';
import { sipMessage } from '../hostile/corpus.js';
import { headerOf, sendAndCollect, SipPeer, type Answerer, type RequestHandler } from '../support/raw-sip.js';
import { branchOf, cseqOf, RawCallee, RawCaller, tagOf } from '../support/raw-call.js';
import { RawDevice } from '../support/raw-device.js';
import { DOMAIN_MODES, startStack, type Stack } from '../support/stack.js';
import { loggedOnce, metric, until, upstreamCseqs } from '../support/throttling-checks.js';

const skip = e2eSkipReason();
if (skip) console.log(`# e2e AoR throttling suite SKIPPED: ${skip}`);

const UPSTREAM_SEC = 20;
const PURGE_SEC = 1;

function replica(stack: Stack, user: string): Promise<Binding[]> {
  return liveBindingsOf(stack, stack.domain.aor(user));
}

/** REGISTERs Kamailio has received in all (its own core statistic). */
async function kamailioRegisters(stack: Stack): Promise<number> {
  const text = await stack.kamailio?.rpc('stats.get_statistics', 'rcv_requests_register') ?? '';
  const match = /rcv_requests_register\s*=\s*(\d+)/.exec(text);
  assert.ok(match, `kamcmd statistics: ${text}`);
  return Number(match[1]);
}

/** Every Contact of a response, however the header was split over lines. */
const contactsOf = (msg: { headers: Array<[string, string]> } | undefined): string => (msg?.headers ?? []).filter(([n]) => n === 'contact').map(([, v]) => v).join(', ');

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

for (const mode of DOMAIN_MODES) describe(`AoR throttling, end to end (domain: ${mode})`, { skip: skip ?? false, timeout: 240_000 }, () => {
  let stack: Stack;
  let adminPort: number;
  const devices: RawDevice[] = [];
  const device = async (user: string, answer?: Answerer | { handle: RequestHandler }): Promise<RawDevice> => {
    const d = await RawDevice.open(stack, user, answer);
    devices.push(d);
    return d;
  };
  before(async () => {
    adminPort = await freePort();
    stack = await startStack({
      domain: mode,
      kamailioDefines: [`MAX_EXPIRES=${UPSTREAM_SEC}`],
      env: { MIDREG_MODE: 'aor', MIDREG_REFRESH_MARGIN_SEC: '2', MIDREG_PURGE_INTERVAL_SEC: String(PURGE_SEC), MIDREG_ADMIN_PORT: String(adminPort) },
    });
  });
  after(async () => {
    for (const d of devices) await d.close();
    await stack?.stop();
  });

  /** What Kamailio holds for the user: only midreg's AoR Contact, or nothing. */
  const upstreamOf = async (user: string) => (await stack.kamailio?.lookup(stack.domain.aor(user))) ?? [];
  const midregHost = (): string => stack.sipTarget;

  it('first REGISTER relayed with its 401; the registrar holds midreg\'s AoR Contact; refreshes answered by midreg (Kamailio\'s statistics unchanged); the upstream registration renewed before it lapses', async () => {
    const alice = await device('alice');
    const first = await alice.register(5);
    assert.deepEqual(first.finals, [401, 200]);
    assert.deepEqual(upstreamCseqs(stack, alice.callId), [1, 2], 'the registrar challenged the first REGISTER and accepted the second');
    const held = await upstreamOf('alice');
    assert.equal(held.length, 1);
    assert.match(held[0]?.contact ?? '', new RegExp(`^sip:alice@${midregHost().replace(/\./g, '\\.')};ctid=[A-Za-z0-9_-]+$`), 'the registrar holds midreg\'s Contact, not the phone\'s');
    // The phone sees its own binding with its own 5 s, and a Date (RFC 3261 §10.3 step 8).
    const ok = first.last;
    assert.equal(contactsOf(ok), `<${alice.contact}>;expires=5`);
    assert.ok(headerOf(ok ?? { headers: [] }, 'Date'));

    // 8 refreshes 2 s apart asking 5 s. Upstream got 20 s: absorbed while more than 5 + 2 s remain.
    const before = await kamailioRegisters(stack);
    let relayed = 0;
    for (let i = 0; i < 8; i++) {
      await sleep(2000);
      const seenBefore = upstreamCseqs(stack, alice.callId).length;
      const r = await alice.register(5);
      assert.deepEqual(r.finals, [200], `refresh ${i + 1}`);
      assert.match(contactsOf(r.last), new RegExp(`^<${alice.contact}>;expires=5$`), 'the phone never sees midreg\'s Contact nor the upstream expiry');
      if (upstreamCseqs(stack, alice.callId).length > seenBefore) relayed += 1;
    }
    const absorbed = logLines(stack.midreg, { message: 'REGISTER answered locally', callId: alice.callId });
    assert.equal(absorbed.length, 8 - relayed);
    assert.ok(relayed >= 1 && relayed <= 2, `the upstream registration renewed (${relayed} relayed)`);
    assert.equal(logLines(stack.midreg, { message: 'REGISTER relayed', callId: alice.callId, relayReason: 'upstream-ending', status: 200 }).length, relayed);
    assert.equal(await kamailioRegisters(stack) - before, relayed, 'Kamailio received only the renewals');
    assert.equal((await upstreamOf('alice')).length, 1, 'still registered upstream');
    assert.ok(await metric(adminPort, 'midreg_register_absorbed_total') >= 8 - relayed);
    assert.equal(await metric(adminPort, 'midreg_mode{mode="aor"}'), 1);
    // Per binding: the phone's expiry and the AoR's upstream one, as operators see them.
    const view = await (await fetch(`http://127.0.0.1:${adminPort}/registrations/${encodeURIComponent(stack.domain.aor('alice'))}`)).json() as { bindings: Array<{ contact: string; expires_in: number; upstream_expires_in: number | null; upstream_contact: string | null }> };
    assert.equal(view.bindings.length, 1);
    assert.equal(view.bindings[0]?.contact, alice.contact);
    assert.ok((view.bindings[0]?.upstream_expires_in ?? 0) > (view.bindings[0]?.expires_in ?? 99), JSON.stringify(view.bindings[0]));
    assert.match(view.bindings[0]?.upstream_contact ?? '', /;ctid=/);
  });

  it('the same Call-ID from another port and a second device are relayed and challenged; the registrar keeps one Contact; after a restart refreshes are still absorbed', async () => {
    const bob1 = await device('bob');
    assert.deepEqual((await bob1.register(60)).finals, [401, 200]);
    // A forged refresh: bob1's Call-ID, Contact and next CSeq, from another port, no credentials.
    const forger = await SipPeer.open();
    devices.push({ close: () => forger.close() } as RawDevice);
    const domain = stack.domain.uriHost;
    const forged = await sendAndCollect(forger, stack.drachtio.sipPort, sipMessage(`REGISTER sip:${domain} SIP/2.0`, [
      `Via: SIP/2.0/UDP 127.0.0.1:${forger.port};branch=z9hG4bK-forged-${mode}`, 'Max-Forwards: 70',
      `From: <sip:bob@${domain}>;tag=forged`, `To: <sip:bob@${domain}>`, `Call-ID: ${bob1.callId}`, `CSeq: ${bob1.cseq + 1} REGISTER`,
      `Contact: <${bob1.contact}>`, 'Expires: 60',
    ]), { transport: 'udp', waitMs: 5000, graceMs: 0 });
    assert.deepEqual(forged.statuses.filter((s) => s >= 200), [401], 'the registrar challenged the REGISTER from another port');
    await loggedOnce(stack.midreg, { message: 'REGISTER relayed', callId: bob1.callId, relayReason: 'other-source', status: 401 });

    const bob2 = await device('bob');
    const second = await bob2.register(60);
    assert.deepEqual(second.finals, [401, 200], 'a second device is challenged by the registrar (no bypass, unlike OpenSIPS issue 3193)');
    await loggedOnce(stack.midreg, { message: 'REGISTER relayed', callId: bob2.callId, relayReason: 'new-contact', status: 401 });
    assert.equal((await upstreamOf('bob')).length, 1, 'the registrar holds one Contact for the AoR');
    assert.deepEqual((await replica(stack, 'bob')).map((b) => b.contact).sort(), [bob1.contact, bob2.contact].sort());
    const listed = contactsOf(second.last);
    assert.ok(listed.includes(bob1.contact) && listed.includes(bob2.contact) && !listed.includes('ctid='), `the 200 lists both devices: ${listed}`);

    // Removing a device needs the registrar's consent too (OpenSIPS mode 2 answers it 200 for a
    // device that is not the AoR's last, without the registrar seeing it).
    const removal = await sendAndCollect(forger, stack.drachtio.sipPort, sipMessage(`REGISTER sip:${domain} SIP/2.0`, [
      `Via: SIP/2.0/UDP 127.0.0.1:${forger.port};branch=z9hG4bK-unreg-${mode}`, 'Max-Forwards: 70',
      `From: <sip:bob@${domain}>;tag=unreg`, `To: <sip:bob@${domain}>`, `Call-ID: unreg-${mode}-${Date.now()}`, 'CSeq: 1 REGISTER',
      `Contact: <${bob2.contact}>`, 'Expires: 0',
    ]), { transport: 'udp', waitMs: 5000, graceMs: 0 });
    assert.deepEqual(removal.statuses.filter((s) => s >= 200), [401], 'a de-registration without credentials is challenged by the registrar');
    assert.equal((await replica(stack, 'bob')).length, 2, 'and removes nothing');

    // Refreshes ask 10 s: the registrar granted 20 (its max_expires), so 10 + 2 s of margin fit.
    const seen = upstreamCseqs(stack, bob1.callId).length;
    assert.deepEqual((await bob1.register(10)).finals, [200]);
    assert.equal(upstreamCseqs(stack, bob1.callId).length, seen, 'bob1\'s own refresh is absorbed');

    const midreg = await stack.restartMidreg();
    const beforeRestart = await kamailioRegisters(stack);
    assert.deepEqual((await bob1.register(10)).finals, [200]);
    assert.deepEqual((await bob2.register(10)).finals, [200]);
    assert.equal(await kamailioRegisters(stack), beforeRestart, 'absorbed after a restart too: no refresh storm');
    assert.equal(logLines(midreg, { message: 'REGISTER answered locally' }).length, 2);
  });

  it('an AoR whose last device stops refreshing is removed upstream; a challenged removal leaves it lapsed (480); MESSAGE and INVITE reach every live device', async () => {
    const open = await device('openstop');
    assert.deepEqual((await open.register(5)).finals, [200]);
    const started = Date.now();
    const lapsy = await device('lapsy');
    assert.deepEqual((await lapsy.register(5)).finals, [401, 200]);
    const answer: Answerer = (req) => (req.method === 'MESSAGE' ? { status: 200, reason: 'OK' } : req.method === 'INVITE' ? { status: 486, reason: 'Busy Here' } : undefined);
    const carol1 = await device('carol', answer);
    const carol2 = await device('carol', answer);
    assert.deepEqual((await carol1.register(60)).finals, [401, 200]);
    assert.deepEqual((await carol2.register(60)).finals, [401, 200]);
    assert.equal((await upstreamOf('openstop')).length, 1);

    await until('openstop removed upstream', (5 + PURGE_SEC + 4) * 1000, async () => ((await upstreamOf('openstop')).length === 0 ? true : undefined));
    assert.ok(Date.now() - started <= (5 + PURGE_SEC + 3) * 1000, `removed after ${Date.now() - started} ms`);
    // Kamailio drops the Contact before midreg has its 200 and logs: wait for the line, then count.
    const removedLine = { message: 'AoR de-registered upstream: its last device is gone', aor: stack.domain.aor('openstop') };
    await until('midreg logs the removal', 2000, () => logLines(stack.midreg, removedLine)[0]);
    assert.equal(logLines(stack.midreg, removedLine).length, 1);

    await until('lapsy\'s removal challenged', 10_000, () => logLines(stack.midreg, { aor: stack.domain.aor('lapsy'), event: 'deregister', status: 401 })[0]);
    assert.equal((await upstreamOf('lapsy')).length, 1, 'the registrar keeps it (midreg has no credentials)');
    assert.ok(await metric(adminPort, 'midreg_upstream_deregistrations_total{result="ok"}') >= 1);
    assert.ok(await metric(adminPort, 'midreg_upstream_deregistrations_total{result="challenged"}') >= 1);

    const platform = stack.kamailio?.port ?? 0;
    const caller = await SipPeer.open();
    try {
      const request = (method: 'INVITE' | 'MESSAGE', to: string) => {
        const id = `${method.toLowerCase()}-${to}-${mode}-${Date.now()}`;
        return sendAndCollect(caller, platform, sipMessage(`${method} sip:${to}@${stack.domain.uriHost} SIP/2.0`, [
          `Via: SIP/2.0/UDP 127.0.0.1:${caller.port};branch=z9hG4bK-${id}`, 'Max-Forwards: 70', `From: <sip:openx@${stack.domain.uriHost}>;tag=${id}`,
          `To: <sip:${to}@${stack.domain.uriHost}>`, `Call-ID: ${id}`, `CSeq: 1 ${method}`,
          ...(method === 'INVITE' ? [`Contact: <sip:openx@127.0.0.1:${caller.port}>`] : ['Content-Type: text/plain']),
        ], method === 'MESSAGE' ? 'hello both' : ''), { transport: 'udp', waitMs: 6000 });
      };
      // The lapsed AoR: known upstream, no device: 480 (RFC 3261 §21.4.18), not a forward to a dead phone.
      assert.deepEqual((await request('INVITE', 'lapsy')).statuses.filter((s) => s >= 200).slice(0, 1), [480]);
      assert.deepEqual((await request('MESSAGE', 'lapsy')).statuses.filter((s) => s >= 200).slice(0, 1), [480]);
      // Both of carol's devices get the MESSAGE and the INVITE (forked by midreg).
      assert.deepEqual((await request('MESSAGE', 'carol')).statuses.filter((s) => s >= 200).slice(0, 1), [200]);
      assert.ok(await carol1.peer.waitFor(() => carol1.received('MESSAGE').length === 1 && carol2.received('MESSAGE').length === 1, 3000), 'MESSAGE reached both devices');
      assert.deepEqual((await request('INVITE', 'carol')).statuses.filter((s) => s >= 200).slice(0, 1), [486]);
      assert.ok(await carol1.peer.waitFor(() => carol1.received('INVITE').length >= 1 && carol2.received('INVITE').length >= 1, 3000), 'INVITE reached both devices');
    } finally {
      await caller.close();
    }
  });

  it('a device\'s de-registration keeps the AoR upstream while another remains; the last one\'s, and Contact: *, clear both sides', async () => {
    const dana1 = await device('dana');
    const dana2 = await device('dana');
    assert.deepEqual((await dana1.register(60)).finals, [401, 200]);
    assert.deepEqual((await dana2.register(60)).finals, [401, 200]);
    const gone = await dana2.register(0);
    assert.equal(gone.finals.at(-1), 200);
    // Relayed (the registrar authenticates it), asking MIDREG_OUTGOING_EXPIRES for midreg's Contact: dana1 still needs it.
    await loggedOnce(stack.midreg, { message: 'REGISTER relayed', callId: dana2.callId, relayReason: 'deregister', status: 200, upstreamExpires: '3600' });
    assert.deepEqual((await replica(stack, 'dana')).map((b) => b.contact), [dana1.contact]);
    assert.equal((await upstreamOf('dana')).length, 1, 'midreg\'s Contact stays: dana1 is still there');
    assert.deepEqual((await dana1.register(0, { star: true })).finals.at(-1), 200);
    assert.deepEqual(await replica(stack, 'dana'), []);
    assert.deepEqual(await upstreamOf('dana'), []);

    const erin = await device('erin');
    assert.deepEqual((await erin.register(60)).finals, [401, 200]);
    assert.equal((await erin.register(0)).finals.at(-1), 200);
    assert.deepEqual(await replica(stack, 'erin'), []);
    assert.deepEqual(await upstreamOf('erin'), [], 'the last device\'s de-registration removed midreg\'s Contact');
  });

  it('an INVITE forked to an AoR\'s devices: one answers 200, the one still ringing gets CANCEL and answers 487; the caller gets one 200, ACKs it and hangs up (RFC 3261 §16.7 step 10)', async () => {
    const uriHost = stack.domain.uriHost;
    const caller = await RawCaller.open(`sip:openx@${uriHost}`, `sip:hana@${uriHost}`);
    devices.push({ close: () => caller.close() } as RawDevice);
    // Device A answers once the caller has heard both devices ring: by then drachtio-server holds a
    // provisional on both branches, so B's branch is "pending" in §16.7 step 10's sense.
    const bothRang = async (): Promise<void> => {
      const rang = () => new Set(caller.inviteResponses().filter((r) => r.status === 180).map((r) => tagOf(headerOf(r, 'to')))).size >= 2;
      if (!await caller.peer.waitFor(rang, 10_000)) throw new Error('the caller did not hear both devices ring');
    };
    let hanaA: RawDevice | undefined;
    let hanaB: RawDevice | undefined;
    const calleeA = new RawCallee({ kind: 'answer', answerWhen: bothRang }, () => hanaA?.contact ?? '');
    const calleeB = new RawCallee({ kind: 'ring' }, () => hanaB?.contact ?? '');
    try {
      hanaA = await device('hana', { handle: calleeA.handle });
      hanaB = await device('hana', { handle: calleeB.handle });
      assert.deepEqual((await hanaA.register(60)).finals, [401, 200]);
      assert.deepEqual((await hanaB.register(60)).finals, [401, 200]);
      assert.equal((await upstreamOf('hana')).length, 1, 'the registrar knows one Contact for hana: midreg forks');

      // From the platform, as a call for hana reaches Kamailio: it routes to midreg's AoR Contact.
      const ok = await caller.invite(stack.kamailio?.port ?? 0, 15_000);
      assert.equal(ok?.status, 200, `the caller's final: ${caller.inviteResponses().map((r) => r.status).join(',')}`);
      assert.equal(/<([^>]+)>/.exec(headerOf(ok, 'contact') ?? '')?.[1], hanaA.contact, 'the 200 is device A\'s');
      await caller.ack(ok);
      assert.ok(await hanaA.peer.waitFor(() => calleeA.acked(200), 5000), 'device A got the ACK of its 200');

      // B, still ringing, gets a CANCEL for its own branch (RFC 3261 §9.1: same Request-URI, Call-ID,
      // CSeq number and top Via branch as the INVITE it cancels) and answers 487, which is ACKed.
      assert.ok(await hanaB.peer.waitFor(() => calleeB.acked(487), 10_000), `device B's branch CANCELled and its 487 ACKed (B got: ${hanaB.peer.received.map((m) => m.method ?? m.status).join(',')})`);
      const [inviteB] = hanaB.received('INVITE');
      const cancels = hanaB.received('CANCEL');
      assert.ok(inviteB && cancels.length >= 1);
      for (const cancel of cancels) {
        assert.equal(cancel.startLine, inviteB.startLine.replace(/^INVITE/, 'CANCEL'), 'the CANCEL names the INVITE\'s Request-URI');
        const same = ['call-id', 'from', 'to'];
        assert.deepEqual(same.map((h): string | undefined => headerOf(cancel, h)), same.map((h): string | undefined => headerOf(inviteB, h)));
        assert.deepEqual([cseqOf(cancel), branchOf(cancel)], [{ seq: cseqOf(inviteB).seq, method: 'CANCEL' }, branchOf(inviteB)]);
        // docs/drachtio-findings.md D9: drachtio-server's CANCEL carries no Max-Forwards (RFC 3261 §8.1.1 makes it mandatory).
        assert.equal(headerOf(cancel, 'max-forwards'), undefined);
      }
      assert.deepEqual(calleeB.finals, [487]);
      assert.deepEqual(hanaA.received('CANCEL'), [], 'the answering device is not CANCELled');

      assert.equal(await caller.bye(ok, 10_000), 200, 'the call hangs up along the route set');
      assert.equal(hanaA.received('BYE').length >= 1, true, 'device A got the BYE');
      assert.deepEqual(hanaB.received('BYE'), []);
      // Exactly one final answer for the caller: 2xx from device A only (a retransmission of it
      // carries the same To tag), never B's 487 (§16.7 step 5: only 2xx are forwarded after a final).
      const finals = caller.inviteResponses().filter((r) => (r.status ?? 0) >= 200);
      assert.deepEqual([...new Set(finals.map((r) => `${r.status} ${tagOf(headerOf(r, 'to')) ?? ''}`))], [`200 ${tagOf(headerOf(ok, 'to')) ?? ''}`]);
      await loggedOnce(stack.midreg, { message: 'request proxied', method: 'INVITE', callId: headerOf(ok, 'call-id'), status: 200 });
      const [proxied] = logLines(stack.midreg, { message: 'request proxied', method: 'INVITE', callId: headerOf(ok, 'call-id') });
      assert.equal((proxied?.['destination'] as unknown[] | undefined)?.length, 2, 'forked to both devices');
    } finally {
      calleeA.stop();
      calleeB.stop();
    }
  });

  it('a device that responds only after another answered is CANCELled once it does (RFC 3261 §9.1: no CANCEL before a provisional); the caller still gets one 200', async () => {
    const uriHost = stack.domain.uriHost;
    const caller = await RawCaller.open(`sip:openx@${uriHost}`, `sip:jade@${uriHost}`);
    devices.push({ close: () => caller.close() } as RawDevice);
    let jadeA: RawDevice | undefined;
    let jadeB: RawDevice | undefined;
    const got = async (what: string, cond: () => boolean): Promise<void> => {
      if (!await caller.peer.waitFor(cond, 10_000)) throw new Error(what);
    };
    // A rings and answers once B has the INVITE; B stays silent (not even 100) until the caller has A's 200.
    const calleeA = new RawCallee({ kind: 'answer', answerWhen: () => got('B never got the INVITE', () => (jadeB?.received('INVITE').length ?? 0) > 0) }, () => jadeA?.contact ?? '');
    const calleeB = new RawCallee({ kind: 'ring', ringWhen: () => got('the caller never got the 200', () => caller.inviteResponses().some((r) => r.status === 200)) }, () => jadeB?.contact ?? '');
    try {
      jadeA = await device('jade', { handle: calleeA.handle });
      jadeB = await device('jade', { handle: calleeB.handle });
      assert.deepEqual((await jadeA.register(60)).finals, [401, 200]);
      assert.deepEqual((await jadeB.register(60)).finals, [401, 200]);
      const ok = await caller.invite(stack.kamailio?.port ?? 0, 15_000);
      assert.equal(ok?.status, 200);
      await caller.ack(ok);
      assert.ok(await jadeB.peer.waitFor(() => calleeB.acked(487), 10_000), `B CANCELled once it rang, its 487 ACKed (B got: ${jadeB.peer.received.map((m) => m.method ?? m.status).join(',')})`);
      const [inviteB] = jadeB.received('INVITE');
      const [cancel] = jadeB.received('CANCEL');
      assert.ok(inviteB && cancel);
      assert.deepEqual([branchOf(cancel), headerOf(cancel, 'call-id')], [branchOf(inviteB), headerOf(inviteB, 'call-id')], 'the CANCEL matches B\'s INVITE transaction');
      // docs/drachtio-findings.md D9: this late CANCEL is built from B's response, so its To carries
      // B's tag, which RFC 3261 §9.1 forbids ("identical to those in the request being cancelled,
      // including tags"); a UAS matching by branch (§9.2, §17.2.3), as this one does, still stops.
      assert.equal(headerOf(cancel, 'to'), `${headerOf(inviteB, 'to') ?? ''};tag=${calleeB.tags[0] ?? ''}`);
      assert.equal(await caller.bye(ok, 10_000), 200);
      const finals = caller.inviteResponses().filter((r) => (r.status ?? 0) >= 200);
      assert.deepEqual([...new Set(finals.map((r) => `${r.status} ${tagOf(headerOf(r, 'to')) ?? ''}`))], [`200 ${tagOf(headerOf(ok, 'to')) ?? ''}`]);
    } finally {
      calleeA.stop();
      calleeB.stop();
    }
  });

  it('a registrar that refuses a relayed refresh is obeyed: the device gets the 403 and its own binding goes, the AoR\'s other device stays; once the last is refused midreg removes its Contact upstream', async () => {
    const answer: Answerer = (req) => (req.method === 'MESSAGE' ? { status: 200, reason: 'OK' } : undefined);
    const ivy1 = await device('ivy', answer);
    const ivy2 = await device('ivy', answer);
    assert.deepEqual((await ivy1.register(60)).finals, [401, 200]);
    assert.deepEqual((await ivy2.register(60)).finals, [401, 200]);
    assert.equal((await replica(stack, 'ivy')).length, 2);

    // The operator disables the account at the registrar.
    await stack.kamailio?.rpc('pv.shvSet', 'disabled', 'str', 'ivy');
    // ivy1 refreshes asking 60 s: more than the 20 s upstream registration has left (plus the
    // margin), so midreg relays it ('upstream-ending') with the phone's own credentials.
    const refused = await ivy1.register(60);
    assert.equal(refused.finals.at(-1), 403, `ivy1's finals: ${refused.finals.join(',')}`);
    assert.equal(refused.last?.reason, 'Account Disabled', 'the phone gets the registrar\'s own answer');
    await loggedOnce(stack.midreg, { message: 'REGISTER relayed', callId: ivy1.callId, relayReason: 'upstream-ending', status: 403, refusedRemoved: 1 });
    assert.deepEqual((await replica(stack, 'ivy')).map((b) => b.contact), [ivy2.contact], 'ivy1\'s binding is gone, ivy2\'s stays');
    const view = await (await fetch(`http://127.0.0.1:${adminPort}/registrations/${encodeURIComponent(stack.domain.aor('ivy'))}`)).json() as { bindings: Array<{ contact: string }> };
    assert.deepEqual(view.bindings.map((b) => b.contact), [ivy2.contact], 'the admin API shows it gone');
    assert.equal((await upstreamOf('ivy')).length, 1, 'midreg\'s Contact stays upstream while ivy2 is there');

    const platform = stack.kamailio?.port ?? 0;
    const sender = await SipPeer.open();
    devices.push({ close: () => sender.close() } as RawDevice);
    const message = (body: string) => {
      const id = `msg-ivy-${mode}-${Date.now()}`;
      return { id, sent: sendAndCollect(sender, platform, sipMessage(`MESSAGE sip:ivy@${stack.domain.uriHost} SIP/2.0`, [
        `Via: SIP/2.0/UDP 127.0.0.1:${sender.port};branch=z9hG4bK-${id}`, 'Max-Forwards: 70', `From: <sip:openx@${stack.domain.uriHost}>;tag=${id}`,
        `To: <sip:ivy@${stack.domain.uriHost}>`, `Call-ID: ${id}`, 'CSeq: 1 MESSAGE', 'Content-Type: text/plain',
      ], body), { transport: 'udp', waitMs: 6000 }) };
    };
    const first = message('only ivy2');
    assert.deepEqual((await first.sent).statuses.filter((s) => s >= 200).slice(0, 1), [200]);
    await loggedOnce(stack.midreg, { message: 'MESSAGE delivered', callId: first.id, branches: 1 });
    const to = logLines(stack.midreg, { message: 'MESSAGE delivered', callId: first.id })[0]?.['to'] as string[] | undefined;
    assert.ok(to?.length === 1 && to[0]?.includes(`127.0.0.1:${ivy2.peer.port}`), `midreg sends it to ivy2's flow only: ${JSON.stringify(to)}`);
    assert.equal(ivy2.received('MESSAGE').length, 1);
    assert.equal(ivy1.received('MESSAGE').length, 0, 'the MESSAGE no longer reaches the refused device');

    // ivy2's own refresh is refused too: the AoR has no device left, and the purge run removes
    // midreg's Contact upstream (the registrar challenges midreg, which has no credentials, so
    // the AoR stays lapsed: requests for it get 480, none reaches a device).
    assert.equal((await ivy2.register(60)).finals.at(-1), 403);
    assert.deepEqual(await replica(stack, 'ivy'), []);
    await until('midreg tries to remove ivy\'s Contact upstream', (PURGE_SEC + 5) * 1000, () => logLines(stack.midreg, { event: 'deregister', mode: 'aor', aor: stack.domain.aor('ivy') })[0]);
    const second = message('nobody');
    assert.deepEqual((await second.sent).statuses.filter((s) => s >= 200).slice(0, 1), [480]);
    assert.equal(ivy1.received('MESSAGE').length + ivy2.received('MESSAGE').length, 1);
  });
});
