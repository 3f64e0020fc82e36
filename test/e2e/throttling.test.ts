// End to end: contact throttling (MIDREG_MODE=contact) with sipp phones → real drachtio-server →
// midreg → real Kamailio with digest auth. Kamailio's max_expires is lowered to 20 s (MAX_EXPIRES)
// so an upstream registration ends, and is renewed, within the test. Kamailio logs every request
// it receives with its CSeq and Call-ID, which is how "the registrar never saw it" is checked.
import { strict as assert } from 'node:assert';
import { liveBindingsOf } from '../support/replica.js';
import { after, before, describe, it } from 'node:test';
import { ABSORB_FLUSH_MS } from '../../lib/store/location-store.js';
import type { Binding } from '../../lib/registrar/registration.js';
import { e2eSkipReason, freePort, logLines } from '../support/processes.js';
import { sipMessage } from '../hostile/corpus.js';
import { sendAndCollect, SipPeer, type Answerer } from '../support/raw-sip.js';
import { RawDevice } from '../support/raw-device.js';
import { headerOf } from '../support/raw-sip.js';
import { receivedResponses, runSipp, startSippUas, type SippResult } from '../support/sipp.js';
import { DOMAIN_MODES, startStack, type Stack } from '../support/stack.js';
import { loggedOnce, metric, until, upstreamCseqs } from '../support/throttling-checks.js';

const skip = e2eSkipReason();
if (skip) console.log(`# e2e throttling suite SKIPPED: ${skip}`);

/** Kamailio's max_expires in this suite: every upstream registration is granted this. */
const UPSTREAM_SEC = 20;
const PURGE_SEC = 1;

function replica(stack: Stack, user: string): Promise<Binding[]> {
  return liveBindingsOf(stack, stack.domain.aor(user));
}

async function sipp(stack: Stack, scenario: string, vars: Record<string, string>, localPort?: number, opts: { target?: string; callId?: string } = {}): Promise<SippResult & { localPort: number }> {
  const port = localPort ?? await freePort();
  const result = await runSipp({
    scenario, target: opts.target ?? stack.sipTarget, localPort: port, vars: { domain: stack.domain.uriHost, ...vars }, timeoutSec: 30,
    ...(opts.callId ? { extraArgs: ['-cid_str', opts.callId] } : {}),
  });
  return Object.assign(result, { localPort: port });
}

function assertPassed(result: SippResult): void {
  assert.equal(result.code, 0, `sipp ${result.command} failed (${result.code}):\n${result.stdout.slice(-1500)}\n${result.errors.slice(-1500)}\n${result.messages.slice(-3000)}`);
}

const finals = (r: SippResult): number[] => receivedResponses(r.messages).map((x) => x.status).filter((s) => s >= 200);
const callIdOf = (r: SippResult): string => /^Call-ID:\s*(\S+)/mi.exec(r.messages)?.[1] ?? assert.fail('no Call-ID in the sipp trace');

for (const mode of DOMAIN_MODES) describe(`contact throttling, end to end (domain: ${mode})`, { skip: skip ?? false, timeout: 240_000 }, () => {
  let stack: Stack;
  let adminPort: number;
  before(async () => {
    adminPort = await freePort();
    stack = await startStack({
      domain: mode,
      kamailioDefines: [`MAX_EXPIRES=${UPSTREAM_SEC}`],
      env: { MIDREG_MODE: 'contact', MIDREG_REFRESH_MARGIN_SEC: '2', MIDREG_PURGE_INTERVAL_SEC: String(PURGE_SEC), MIDREG_ADMIN_PORT: String(adminPort) },
    });
  });
  after(async () => { await stack?.stop(); });

  it('first REGISTER relayed with its 401; refreshes answered by midreg, unseen by the registrar; the upstream registration renewed before it lapses', async () => {
    // 10 REGISTERs in one call: CSeq 1 (401), 2 (credentials, 200), then 8 refreshes 2 s apart
    // asking 5 s. Upstream gets 20 s at t=0: refreshes are absorbed while more than 5 + 2 s of it
    // remain, the one after that is relayed and renews it.
    const run = await sipp(stack, 'register-refresh', { user: 'alice', expires: '5' });
    assertPassed(run);
    assert.deepEqual(finals(run), [401, 200, 200, 200, 200, 200, 200, 200, 200, 200]);
    const callId = callIdOf(run);
    const seen = upstreamCseqs(stack, callId);
    assert.deepEqual(seen.slice(0, 2), [1, 2], 'the registrar challenged the first REGISTER and accepted the second');
    const renewals = seen.slice(2);
    assert.ok(renewals.length >= 1 && renewals.length <= 2, `one renewal relayed (the registrar saw CSeqs ${seen.join(',')})`);
    const absorbed = logLines(stack.midreg, { message: 'REGISTER answered locally', callId });
    assert.equal(absorbed.length, 8 - renewals.length, 'every other refresh answered by midreg');
    for (const line of absorbed) assert.ok(!seen.includes(Number(line['cseq'])), `CSeq ${String(line['cseq'])} never reached the registrar`);
    const renewal = logLines(stack.midreg, { message: 'REGISTER relayed', callId, relayReason: 'upstream-ending' });
    assert.equal(renewal.length, renewals.length, 'relayed because the upstream registration was ending');
    // The phone is told its own 5 s, never the registrar's 20 s; midreg's own 200s carry a Date.
    const oks = receivedResponses(run.messages).filter((r) => r.status === 200);
    for (const ok of oks) assert.match(ok.text, /;expires=5\b/, ok.text);
    assert.ok(oks.filter((ok) => /^Date: /m.test(ok.text)).length >= absorbed.length, 'local 200s carry Date');
    const upstream = await stack.kamailio?.lookup(stack.domain.aor('alice'));
    assert.equal(upstream?.length, 1, 'still registered upstream after the run');
    // Absorbed refreshes reach the store in batches, within ABSORB_FLUSH_MS (lib/store/location-store.ts).
    const binding = await until('the last refresh\'s CSeq in the replica', ABSORB_FLUSH_MS + 2000, async () => (await replica(stack, 'alice')).find((b) => b.cseq === 10));
    assert.ok(binding.upstreamExpiresAt && binding.upstreamExpiresAt - binding.expiresAt > 5_000, 'replica keeps the upstream expiry apart from the phone\'s');
  });

  it('the same Call-ID from another port, and a second device, are relayed and challenged; after a restart the phone\'s refresh is still absorbed', async () => {
    const phone = await sipp(stack, 'register-auth', { user: 'bob', expires: '60' });
    assertPassed(phone);
    const [b] = (await replica(stack, 'bob'));
    assert.ok(b?.callId && b.cseq !== null);
    assert.ok(b.expiresAt - Date.now() <= UPSTREAM_SEC * 1000, 'phone expiry capped at what the registrar granted');
    const refresh = (seq: number, expect: string, port?: number) => sipp(stack, 'register-replay', {
      user: 'bob', seq: String(seq), contact: b.contact, expires: '15', expect,
    }, port, { callId: b.callId ?? '' });

    const forged = await refresh(b.cseq + 1, '401');
    assertPassed(forged);
    assert.ok(upstreamCseqs(stack, b.callId).includes(b.cseq + 1), 'the registrar got the REGISTER from the other port');
    await loggedOnce(stack.midreg, { message: 'REGISTER relayed', callId: b.callId, relayReason: 'other-source', status: 401 });

    const second = await sipp(stack, 'register-challenge-only', { user: 'bob' });
    assertPassed(second);
    assert.deepEqual(upstreamCseqs(stack, callIdOf(second)), [1], 'a second device reaches the registrar');
    assert.equal((await replica(stack, 'bob')).length, 1);

    const own = await refresh(b.cseq + 2, '200', phone.localPort);
    assertPassed(own);
    assert.ok(!upstreamCseqs(stack, b.callId).includes(b.cseq + 2), 'the phone\'s own refresh is absorbed');

    const midreg = await stack.restartMidreg();
    const afterRestart = await refresh(b.cseq + 3, '200', phone.localPort);
    assertPassed(afterRestart);
    assert.ok(!upstreamCseqs(stack, b.callId).includes(b.cseq + 3), 'absorbed after a restart too: no refresh storm');
    assert.equal(logLines(midreg, { message: 'REGISTER answered locally', callId: b.callId, cseq: b.cseq + 3 }).length, 1);
  });

  it('a phone that stops refreshing is de-registered upstream; a challenged de-registration leaves it lapsed (counted, 480); a live phone still gets MESSAGE', async () => {
    const open = await sipp(stack, 'register-noauth', { user: 'openstop', expires: '10' });
    assertPassed(open);
    const started = Date.now();
    const lapsy = await sipp(stack, 'register-auth', { user: 'lapsy', expires: '10' });
    assertPassed(lapsy);
    const livePort = await freePort();
    assertPassed(await sipp(stack, 'register-auth', { user: 'livy', expires: '60' }, livePort));
    assert.equal((await stack.kamailio?.lookup(stack.domain.aor('openstop')))?.length, 1);

    // Removed upstream within its expiry plus the sweep interval (and a second of slack).
    await until('openstop removed upstream', (10 + PURGE_SEC + 3) * 1000, async () => ((await stack.kamailio?.lookup(stack.domain.aor('openstop')))?.length === 0 ? true : undefined));
    assert.ok(Date.now() - started <= (10 + PURGE_SEC + 1) * 1000 + 1000, `removed after ${Date.now() - started} ms`);
    // Kamailio drops the Contact before midreg has its 200 and writes the replica.
    await until('openstop gone from the replica', 2000, async () => ((await replica(stack, 'openstop')).length === 0 ? true : undefined));

    await until('lapsy\'s de-registration challenged', 10_000, () => logLines(stack.midreg, { aor: stack.domain.aor('lapsy'), event: 'deregister', status: 401 })[0]);
    assert.equal((await stack.kamailio?.lookup(stack.domain.aor('lapsy')))?.length, 1, 'the registrar keeps it (midreg has no credentials)');
    assert.ok(await metric(adminPort, 'midreg_upstream_deregistrations_total{result="ok"}') >= 1);
    assert.ok(await metric(adminPort, 'midreg_upstream_deregistrations_total{result="challenged"}') >= 1);
    assert.ok(await metric(adminPort, 'midreg_register_absorbed_total') >= 1);

    // The platform routes MESSAGEs for both through midreg (Path): the lapsed one gets 480.
    const platform = `127.0.0.1:${stack.kamailio?.port ?? 0}`;
    assertPassed(await sipp(stack, 'uac-message', { to: 'lapsy', from: 'openx', expect: '480', body: 'are you there' }, undefined, { target: platform }));
    // An INVITE the platform routes to the lapsed contact is answered 480 by midreg too.
    const caller = await SipPeer.open();
    try {
      const id = `lapsed-invite-${mode}-${Date.now()}`;
      const invite = await sendAndCollect(caller, stack.kamailio?.port ?? 0, sipMessage(`INVITE sip:lapsy@${stack.domain.uriHost} SIP/2.0`, [
        `Via: SIP/2.0/UDP 127.0.0.1:${caller.port};branch=z9hG4bK-${id}`, 'Max-Forwards: 70', `From: <sip:openx@${stack.domain.uriHost}>;tag=${id}`,
        `To: <sip:lapsy@${stack.domain.uriHost}>`, `Call-ID: ${id}`, 'CSeq: 1 INVITE', `Contact: <sip:openx@127.0.0.1:${caller.port}>`,
      ]), { transport: 'udp', waitMs: 3000 });
      assert.deepEqual(invite.statuses.filter((s) => s >= 200).slice(0, 1), [480], `INVITE answered ${invite.statuses.join(',')}`);
    } finally {
      await caller.close();
    }
    const uas = startSippUas({ scenario: 'uas-message', localPort: livePort, calls: 1, timeoutSec: 10 });
    await uas.ready;
    assertPassed(await sipp(stack, 'uac-message', { to: 'livy', from: 'openx', expect: '200', body: 'hello' }, undefined, { target: platform }));
    assert.equal((await uas.done).code, 0, 'the live phone got the MESSAGE');
  });

  it('a de-registration and Contact: * clear both sides', async () => {
    const keep = await sipp(stack, 'register-auth', { user: 'dana', expires: '60' });
    const drop = await sipp(stack, 'register-auth', { user: 'dana', expires: '60' });
    assertPassed(keep); assertPassed(drop);
    assert.equal((await replica(stack, 'dana')).length, 2);
    assertPassed(await sipp(stack, 'deregister', { user: 'dana' }, drop.localPort));
    const contactOf = (port: number): string => `sip:dana@127.0.0.1:${port}`;
    assert.deepEqual((await replica(stack, 'dana')).map((b) => b.contact), [contactOf(keep.localPort)]);
    assert.deepEqual((await stack.kamailio?.lookup(stack.domain.aor('dana')))?.map((b) => b.contact), [contactOf(keep.localPort)]);
    assertPassed(await sipp(stack, 'deregister-star', { user: 'dana' }));
    assert.deepEqual((await replica(stack, 'dana')), []);
    assert.deepEqual(await stack.kamailio?.lookup(stack.domain.aor('dana')), []);
  });
});

// Contact throttling together with contact insertion (MIDREG_INSERTION=contact): the registrar
// holds midreg's `;ctid=` Contact per phone, refreshes are still absorbed, midreg's own
// de-registration names the Contact the registrar holds, and requests come back by key.
for (const mode of DOMAIN_MODES) describe(`contact throttling with contact insertion, end to end (domain: ${mode})`, { skip: skip ?? false, timeout: 120_000 }, () => {
  let stack: Stack;
  const devices: RawDevice[] = [];
  before(async () => {
    stack = await startStack({
      domain: mode,
      kamailioDefines: [`MAX_EXPIRES=${UPSTREAM_SEC}`],
      env: { MIDREG_MODE: 'contact', MIDREG_INSERTION: 'contact', MIDREG_REFRESH_MARGIN_SEC: '2', MIDREG_PURGE_INTERVAL_SEC: String(PURGE_SEC) },
    });
  });
  after(async () => {
    for (const d of devices) await d.close();
    await stack?.stop();
  });

  it('the registrar holds midreg\'s Contact; refreshes are absorbed; MESSAGE comes back by key; a phone that stops refreshing is removed upstream by that Contact, a challenged one answered 480', async () => {
    const answer: Answerer = (req) => (req.method === 'MESSAGE' ? { status: 200, reason: 'OK' } : undefined);
    const fran = await RawDevice.open(stack, 'fran', answer);
    const openq = await RawDevice.open(stack, 'openquit');
    devices.push(fran, openq);
    assert.deepEqual((await fran.register(10)).finals, [401, 200]);
    assert.deepEqual((await openq.register(5)).finals, [200]);
    const [held] = (await stack.kamailio?.lookup(stack.domain.aor('fran'))) ?? [];
    assert.match(held?.contact ?? '', /;ctid=/, 'the registrar holds midreg\'s Contact');
    const [b] = await replica(stack, 'fran');
    assert.equal(b?.contact, fran.contact);
    assert.ok(b?.insertion && b.upstreamExpiresAt !== null);

    const seen = upstreamCseqs(stack, fran.callId).length;
    const refresh = await fran.register(10);
    assert.deepEqual(refresh.finals, [200]);
    assert.equal(upstreamCseqs(stack, fran.callId).length, seen, 'the refresh never reached the registrar');
    await loggedOnce(stack.midreg, { message: 'REGISTER answered locally', callId: fran.callId });
    assert.ok(!(refresh.last?.headers ?? []).some(([n, v]) => n === 'contact' && v.includes('ctid=')), 'the phone never sees midreg\'s Contact');

    // The platform routes by the Contact it holds (midreg's, with the key): the phone gets it.
    const platform = `127.0.0.1:${stack.kamailio?.port ?? 0}`;
    assertPassed(await sipp(stack, 'uac-message', { to: 'fran', from: 'openx', expect: '200', body: 'by key' }, undefined, { target: platform }));
    assert.ok(await fran.peer.waitFor(() => fran.received('MESSAGE').length === 1, 3000));

    // openquit stops: removed upstream, by the Contact the registrar holds (midreg's).
    await until('openquit removed upstream', (5 + PURGE_SEC + 4) * 1000, async () => ((await stack.kamailio?.lookup(stack.domain.aor('openquit')))?.length === 0 ? true : undefined));
    // Kamailio drops the Contact before midreg has its 200 and logs: wait for the line.
    await until('midreg logs openquit\'s removal', 2000, () => logLines(stack.midreg, { message: 'binding de-registered upstream: its phone stopped refreshing', aor: stack.domain.aor('openquit') })[0]);
    // fran stops too: its removal is challenged; the registrar still routes to midreg's Contact, answered 480.
    await until('fran\'s de-registration challenged', 20_000, () => logLines(stack.midreg, { aor: stack.domain.aor('fran'), event: 'deregister', status: 401 })[0]);
    assertPassed(await sipp(stack, 'uac-message', { to: 'fran', from: 'openx', expect: '480', body: 'gone' }, undefined, { target: platform }));
  });
});

// A registrar whose minimum expiry is above MIDREG_OUTGOING_EXPIRES answers 423 to what midreg
// asks. The phone retries with Min-Expires (RFC 3261 §10.2.8); midreg must pass that retry on as
// long as the phone asked, in both throttling modes, or the phone gets 423 for ever.
const MIN_EXPIRES = 120;
for (const throttling of ['contact', 'aor'] as const) describe(`${throttling} throttling behind a registrar with Min-Expires above MIDREG_OUTGOING_EXPIRES`, { skip: skip ?? false, timeout: 120_000 }, () => {
  let stack: Stack;
  before(async () => {
    stack = await startStack({
      domain: 'name',
      kamailioDefines: ['WITH_423', `MIN_EXPIRES=${MIN_EXPIRES}`, 'MAX_EXPIRES=600'],
      env: { MIDREG_MODE: throttling, MIDREG_OUTGOING_EXPIRES: '60', MIDREG_REFRESH_MARGIN_SEC: '2' },
    });
  });
  after(async () => { await stack?.stop(); });

  it('the registrar\'s 423 reaches the phone, and the phone\'s retry with Min-Expires registers it on both sides', async () => {
    const phone = await RawDevice.open(stack, `minnie${throttling}`);
    try {
      const first = await phone.register(30);
      assert.deepEqual(first.finals, [401, 423], 'challenged, then the registrar\'s own 423 passed on');
      const min = Number(first.last ? headerOf(first.last, 'Min-Expires') : NaN);
      assert.equal(min, MIN_EXPIRES, 'Min-Expires passed on unchanged');
      const retry = await phone.register(min);
      assert.deepEqual(retry.finals, [200], 'the retry asking Min-Expires is accepted');
      assert.match(retry.last ? headerOf(retry.last, 'Contact') ?? '' : '', new RegExp(`;expires=(${min}|${min - 1})\\b`), 'the phone is granted what it asked');
      const upstream = await stack.kamailio?.lookup(stack.domain.aor(phone.user));
      assert.equal(upstream?.length, 1, 'registered at the registrar');
      const stored = await until('the binding in the replica', 3000, async () => (await replica(stack, phone.user))[0]);
      assert.equal(stored.contact, phone.contact);
    } finally {
      await phone.close();
    }
  });
});
