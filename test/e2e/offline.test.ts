// End to end: offline messages (MIDREG_OFFLINE_MESSAGES=on) through the real drachtio-server and
// Kamailio. alice messages bob while bob is not registered (202); bob registers and receives them
// in order with their original Date and From; further messages go straight through; a user who
// never registered gets 404; the per-user bound refuses with 486; a kill -9 of midreg between the
// 202 and bob's registration loses nothing; an expired message is never delivered. The phones are
// raw SIP peers ("open…" users register without credentials, test/kamailio/kamailio.cfg), so one
// socket both registers and answers the MESSAGEs it receives.
import { strict as assert } from 'node:assert';
import { after, before, describe, it } from 'node:test';
import { e2eSkipReason, logLines } from '../support/processes.js';
import { headerOf, SipPeer, type Received } from '../support/raw-sip.js';
import { rawRequest } from '../support/raw-ua.js';
import { DOMAIN_MODES, startStack, type Stack } from '../support/stack.js';

const skip = e2eSkipReason();
if (skip) console.log(`# e2e offline suite SKIPPED: ${skip}`);

/** One request from `peer` to midreg; the final statuses it got. */
const send = async (...args: Parameters<typeof rawRequest>): Promise<number[]> => (await rawRequest(...args)).statuses;

/** MESSAGEs `peer` has received so far, in order. */
const messagesAt = (peer: SipPeer): Received[] => peer.received.filter((m) => m.method === 'MESSAGE');

async function until(what: string, test: () => boolean, timeoutMs = 8000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!test()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

const answers200 = (req: { method?: string }): { status: number; reason: string } | undefined => (req.method === 'MESSAGE' ? { status: 200, reason: 'OK' } : undefined);

for (const mode of DOMAIN_MODES) {
  describe(`offline messages, end to end (domain: ${mode})`, { skip: skip ?? false, timeout: 180_000 }, () => {
    let stack: Stack;
    let alice: SipPeer;
    before(async () => {
      stack = await startStack({ domain: mode, env: { MIDREG_OFFLINE_MESSAGES: 'on', MIDREG_OFFLINE_MAX_PER_USER: '3' } });
      alice = await SipPeer.open();
      assert.deepEqual(await send(stack, alice, 'REGISTER', 'openalice'), [200]);
    });
    after(async () => {
      await alice?.close();
      await stack?.stop();
    });

    it('stored while bob is away (202), kept across kill -9, delivered in order with the original Date and From when he registers', async () => {
      const bob = await SipPeer.open({ answer: answers200 });
      try {
        // bob registered once (the registrar accepted him), then left.
        assert.deepEqual(await send(stack, bob, 'REGISTER', 'openbob'), [200]);
        assert.deepEqual(await send(stack, bob, 'REGISTER', 'openbob', { expires: 0 }), [200]);
        const originalDate = 'Mon, 01 Jan 2024 10:00:00 GMT';
        assert.deepEqual(await send(stack, alice, 'MESSAGE', 'openalice', { to: 'openbob', body: 'first', date: originalDate }), [202]);
        assert.deepEqual(await send(stack, alice, 'MESSAGE', 'openalice', { to: 'openbob', body: 'second' }), [202]);
        assert.deepEqual(await send(stack, alice, 'MESSAGE', 'openalice', { to: 'openbob', body: 'third' }), [202]);
        assert.deepEqual(await send(stack, alice, 'MESSAGE', 'openalice', { to: 'openbob', body: 'fourth' }), [486], 'MIDREG_OFFLINE_MAX_PER_USER=3');
        assert.deepEqual(await send(stack, alice, 'MESSAGE', 'openalice', { to: 'openzed', body: 'to nobody' }), [404], 'never registered: not stored');
        assert.equal(messagesAt(bob).length, 0);

        // A crash after the 202s loses nothing midreg acknowledged.
        await stack.midreg.stop('SIGKILL');
        await stack.restartMidreg();

        assert.deepEqual(await send(stack, bob, 'REGISTER', 'openbob'), [200]);
        await until('bob receives the three stored messages', () => messagesAt(bob).length >= 3);
        await new Promise((r) => setTimeout(r, 300));
        const got = messagesAt(bob);
        assert.deepEqual(got.map((m) => m.body.toString()), ['first', 'second', 'third'], 'in arrival order, each once');
        assert.equal(headerOf(got[0] ?? { headers: [] }, 'Date'), originalDate, 'the original Date');
        assert.ok(!Number.isNaN(Date.parse(headerOf(got[1] ?? { headers: [] }, 'Date') ?? '')), 'a Date added where the sender gave none');
        for (const m of got) assert.match(headerOf(m, 'From') ?? '', /"openalice" <sip:openalice@/, 'the original From');

        // Now bob is here: straight through.
        assert.deepEqual(await send(stack, alice, 'MESSAGE', 'openalice', { to: 'openbob', body: 'live' }), [200]);
        assert.equal(messagesAt(bob).at(-1)?.body.toString(), 'live');
        assert.equal(logLines(stack.midreg, { message: 'offline message delivered' }).length, 3);
      } finally {
        await bob.close();
      }
    });
  });
}

describe('offline messages expire', { skip: skip ?? false, timeout: 60_000 }, () => {
  it('a message past MIDREG_OFFLINE_TTL_SEC is dropped and logged, never delivered', async () => {
    const stack = await startStack({ env: { MIDREG_OFFLINE_MESSAGES: 'on', MIDREG_OFFLINE_TTL_SEC: '1', MIDREG_OFFLINE_RETRY_INTERVAL_SEC: '1' } });
    const alice = await SipPeer.open();
    const carol = await SipPeer.open({ answer: answers200 });
    try {
      assert.deepEqual(await send(stack, alice, 'REGISTER', 'openalice'), [200]);
      assert.deepEqual(await send(stack, carol, 'REGISTER', 'opencarol'), [200]);
      assert.deepEqual(await send(stack, carol, 'REGISTER', 'opencarol', { expires: 0 }), [200]);
      assert.deepEqual(await send(stack, alice, 'MESSAGE', 'openalice', { to: 'opencarol', body: 'too late' }), [202]);
      await stack.midreg.waitFor(/offline message expired undelivered/, 5000);
      assert.deepEqual(await send(stack, carol, 'REGISTER', 'opencarol'), [200]);
      await new Promise((r) => setTimeout(r, 1500));
      assert.equal(messagesAt(carol).length, 0, 'never delivered');
    } finally {
      await alice.close();
      await carol.close();
      await stack.stop();
    }
  });
});
