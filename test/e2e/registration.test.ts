// End to end: sipp UAs → real drachtio-server → midreg → real Kamailio (digest auth,
// max_expires 300, max_contacts 3, single-contact users). Runs when DRACHTIO_BIN is set.
import { strict as assert } from 'node:assert';
import { liveBindingsOf, withStackStore } from '../support/replica.js';
import { createSocket } from 'node:dgram';
import { after, before, describe, it } from 'node:test';
import type { Binding } from '../../lib/registrar/registration.js';
import { e2eSkipReason, freePort, logLines } from '../support/processes.js';
import { runSipp, receivedResponses, type SippResult } from '../support/sipp.js';
import { DOMAIN_MODES, startStack, type Stack } from '../support/stack.js';

const skip = e2eSkipReason();
if (skip) console.log(`# e2e registration suite SKIPPED: ${skip}`);

function replica(stack: Stack, user: string): Promise<Binding[]> {
  return liveBindingsOf(stack, stack.domain.aor(user));
}

async function sipp(stack: Stack, scenario: string, vars: Record<string, string>, localPort?: number): Promise<SippResult & { localPort: number }> {
  const port = localPort ?? await freePort();
  const result = await runSipp({ scenario, target: stack.sipTarget, localPort: port, vars: { domain: stack.domain.uriHost, ...vars }, timeoutSec: 15 });
  return Object.assign(result, { localPort: port });
}

function assertPassed(result: SippResult): void {
  assert.equal(result.code, 0, `sipp ${result.command} failed (${result.code}):\n${result.stdout.slice(-1500)}\n${result.errors.slice(-1500)}\n${result.messages.slice(-3000)}`);
}

function finalStatuses(result: SippResult): number[] {
  return receivedResponses(result.messages).map((r) => r.status).filter((s) => s >= 200);
}

for (const mode of DOMAIN_MODES) describe(`registration replica, end to end (domain: ${mode})`, { skip: skip ?? false, timeout: 180_000 }, () => {
  let stack: Stack;
  before(async () => { stack = await startStack({ domain: mode }); });
  after(async () => { await stack?.stop(); });

  it('401 → authenticated retry → 200 through midreg, and the granted expiry (not the requested one) lands in SQLite', async () => {
    const result = await sipp(stack, 'register-auth', { user: 'alice', expires: '3600' });
    assertPassed(result);
    assert.deepEqual(finalStatuses(result), [401, 200]);
    assert.match(result.messages, /;expires=300/);
    const [binding, ...more] = (await replica(stack, 'alice'));
    assert.equal(more.length, 0);
    assert.ok(binding);
    const grantedSeconds = (binding.expiresAt - Date.now()) / 1000;
    assert.ok(grantedSeconds > 290 && grantedSeconds <= 300, `granted expiry ${grantedSeconds}s`);
    assert.equal(binding.contact, `sip:alice@127.0.0.1:${result.localPort}`);
    assert.deepEqual(binding.source, { address: '127.0.0.1', port: result.localPort, transport: 'udp' });
    assert.equal(binding.userAgent, 'sipp-midreg-test');
    // The registrar stored our Path, so calls from the platform come back through midreg.
    const upstream = await stack.kamailio?.lookup(stack.domain.aor('alice'));
    assert.equal(upstream?.length, 1);
    assert.match(upstream?.[0]?.path ?? '', new RegExp(`127\\.0\\.0\\.1:${stack.drachtio.sipPort}`));
    assert.equal(upstream?.[0]?.callId, binding.callId, 'the registrar saw the UA\'s own Call-ID');
    // The phone wrote `REGISTER sip:<domain>`; with midreg's own address as the domain, the
    // registrar gets its own URI instead (drachtio-server refuses to send to itself).
    assert.match(result.messages, new RegExp(`REGISTER sip:${stack.domain.uriHost.replace(/\./g, '\\.')} SIP/2\\.0`));
    const relayed = logLines(stack.midreg, { message: 'REGISTER relayed', aor: stack.domain.aor('alice'), status: 200 });
    assert.equal(relayed.length, 1);
    assert.equal(relayed[0]?.['upstreamRuri'], stack.domain.mode === 'ip' ? stack.midregEnv['MIDREG_UPSTREAM'] : undefined);
  });

  it('the replica holds a binding before its UA receives the 200 (window measured over 10 registrations)', async () => {
    const windows: number[] = [];
    for (let i = 0; i < 10; i++) {
      const result = await sipp(stack, 'register-auth', { user: `win${i}`, expires: '120' });
      assertPassed(result);
      // sipp stamps each message with local wall-clock time; the last received one is the 200.
      const stamps = [...result.messages.matchAll(/^-+ (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+)\n(?:UDP|TCP) message received/gm)];
      const last = stamps.at(-1)?.[1];
      assert.ok(last, 'sipp logged the 200');
      const receivedAt = new Date(last.replace(' ', 'T')).getTime();
      const [binding] = (await replica(stack, `win${i}`));
      assert.ok(binding);
      windows.push(binding.updatedAt - receivedAt);
    }
    windows.sort((a, b) => a - b);
    console.log(`# replica-vs-200 window (ms, negative = replica first): min ${windows[0]} median ${windows[5]} max ${windows[9]}`);
    assert.ok((windows[9] ?? Infinity) <= 2, `binding written at most 2 ms after the UA got its 200 (max ${windows[9]} ms)`);
  });

  it('a challenged REGISTER and a wrong password change nothing in the replica', async () => {
    const aliceBefore = (await replica(stack, 'alice'));
    assertPassed(await sipp(stack, 'register-challenge-only', { user: 'alice' }));
    assert.deepEqual((await replica(stack, 'alice')), aliceBefore, 'a 401 leaves the existing binding as it was');
    assertPassed(await sipp(stack, 'register-challenge-only', { user: 'bob' }));
    const bad = await sipp(stack, 'register-badpw', { user: 'carol' });
    assertPassed(bad);
    assert.deepEqual((await replica(stack, 'bob')), []);
    assert.deepEqual((await replica(stack, 'carol')), []);
    const lines = logLines(stack.midreg, { event: 'register', aor: stack.domain.aor('bob') });
    assert.ok(lines.some((l) => l['status'] === 401 && l['decision'] === 'not-2xx'), 'one info line per decision');
  });

  it('a device evicted by the registrar disappears from the replica', async () => {
    const first = await sipp(stack, 'register-auth', { user: 'singledave', expires: '120' });
    assertPassed(first);
    assert.equal((await replica(stack, 'singledave')).length, 1);
    const second = await sipp(stack, 'register-auth', { user: 'singledave', expires: '120' });
    assertPassed(second);
    assert.deepEqual((await replica(stack, 'singledave')).map((b) => b.contact), [`sip:singledave@127.0.0.1:${second.localPort}`]);
  });

  it('max_contacts: the registrar\'s refusal of a 4th device reaches the UA and the replica keeps the 3', async () => {
    for (let i = 0; i < 3; i++) assertPassed(await sipp(stack, 'register-auth', { user: 'erin', expires: '120' }));
    assert.equal((await replica(stack, 'erin')).length, 3);
    const fourth = await sipp(stack, 'register-auth', { user: 'erin', expires: '120' });
    const statuses = finalStatuses(fourth);
    assert.equal(statuses.at(-1), 503, `4th device answered ${statuses.join(',')}`);
    assert.equal((await replica(stack, 'erin')).length, 3);
  });

  it('de-registration of one contact removes it; Contact: * removes all (and drachtio-server survives)', async () => {
    const keep = await sipp(stack, 'register-auth', { user: 'frank', expires: '120' });
    const drop = await sipp(stack, 'register-auth', { user: 'frank', expires: '120' });
    assertPassed(keep); assertPassed(drop);
    assert.equal((await replica(stack, 'frank')).length, 2);
    assertPassed(await sipp(stack, 'deregister', { user: 'frank' }, drop.localPort));
    assert.deepEqual((await replica(stack, 'frank')).map((b) => b.contact), [`sip:frank@127.0.0.1:${keep.localPort}`]);
    assertPassed(await sipp(stack, 'register-auth', { user: 'frank', expires: '120' }, drop.localPort));
    assert.equal((await replica(stack, 'frank')).length, 2);
    const star = await sipp(stack, 'deregister-star', { user: 'frank' });
    assertPassed(star);
    assert.deepEqual((await replica(stack, 'frank')), []);
    assert.deepEqual(await stack.kamailio?.lookup(stack.domain.aor('frank')), []);
    // drachtio-server still serves after the 200 to a Contact: * (a proxied one would crash it).
    assertPassed(await sipp(stack, 'register-auth', { user: 'frank', expires: '120' }));
  });

  it('a query REGISTER (no Contact) is relayed, answered with the bindings, and refreshes the replica', async () => {
    const reg = await sipp(stack, 'register-auth', { user: 'gina', expires: '60' });
    assertPassed(reg);
    const before = (await replica(stack, 'gina'))[0];
    assert.ok(before);
    const query = await sipp(stack, 'query', { user: 'gina' });
    assertPassed(query);
    assert.match(query.messages, new RegExp(`sip:gina@127\\.0\\.0\\.1:${reg.localPort}`));
    const after = (await replica(stack, 'gina'))[0];
    assert.ok(after && after.updatedAt > before.updatedAt, 'query reply rewrote the AoR');
    assert.deepEqual(after.source, before.source, 'the binding keeps where it registered from');
  });

  it('the replica survives a restart; bindings that expired while midreg was down are gone after start', async () => {
    assertPassed(await sipp(stack, 'register-auth', { user: 'hank', expires: '10' }));
    assert.equal((await replica(stack, 'hank')).length, 1);
    await stack.midreg.stop('SIGTERM');
    await new Promise((r) => setTimeout(r, 11_000));
    const midreg = await stack.restartMidreg();
    assert.equal((await replica(stack, 'gina')).length, 1, 'gina kept across restart');
    await midreg.waitFor(/expiry sweep done/, 5000);
    assert.deepEqual(await withStackStore(stack, (store) => store.bindings.bindingsOf(stack.domain.aor('hank'))), [], 'hank purged at start');
    assert.ok(logLines(midreg, { message: 'expiry sweep done', reason: 'start' }).some((l) => Number(l['expiredRemoved']) >= 1));
  });
});

describe('upstream failures, end to end', { skip: skip ?? false, timeout: 180_000 }, () => {
  it('a silent upstream is answered 408 in bounded time and leaves the replica untouched', async () => {
    const blackHole = createSocket('udp4');
    await new Promise<void>((resolve) => blackHole.bind(0, '127.0.0.1', () => resolve()));
    const port = blackHole.address().port;
    const stack = await startStack({ upstream: `sip:127.0.0.1:${port}`, env: { MIDREG_UPSTREAM_TIMEOUT_MS: '1500' } });
    try {
      const started = Date.now();
      const result = await sipp(stack, 'register-any-final', { user: 'ivan' });
      assertPassed(result);
      assert.deepEqual(finalStatuses(result), [408]);
      assert.ok(Date.now() - started < 6000, 'answered in bounded time');
      assert.deepEqual((await replica(stack, 'ivan')), []);
    } finally {
      await stack.stop();
      blackHole.close();
    }
  });

  it('an upstream with nothing listening is answered at once and midreg keeps serving', async () => {
    const port = await freePort();
    const stack = await startStack({ upstream: `sip:127.0.0.1:${port}` });
    try {
      const result = await sipp(stack, 'register-any-final', { user: 'judy' });
      assertPassed(result);
      assert.ok([503, 408].includes(finalStatuses(result)[0] ?? 0));
      assert.deepEqual((await replica(stack, 'judy')), []);
      assert.equal(stack.midreg.child.exitCode, null, 'midreg still running');
    } finally {
      await stack.stop();
    }
  });
});
