// End to end: qualify (MIDREG_QUALIFY_INTERVAL_SEC) through the real drachtio-server and Kamailio.
// bob has two devices registered; each is a raw SIP peer that answers OPTIONS and MESSAGE on the
// socket it registered from while it is "alive" and stays silent otherwise ("open…" users register
// without credentials, test/kamailio/kamailio.cfg). A device that goes silent is marked unreachable
// within two intervals and a MESSAGE to bob reaches only the live one, at once; with both silent
// alice gets 480 at once; a device that answers again is reachable again and gets the next MESSAGE.
import { strict as assert } from 'node:assert';
import { after, before, describe, it } from 'node:test';
import { sipMessage } from '../hostile/corpus.js';
import { e2eSkipReason, freePort, logLines } from '../support/processes.js';
import { headerOf, sendAndCollect, SipPeer, type Received, type SipMessage } from '../support/raw-sip.js';
import { rawRequest } from '../support/raw-ua.js';
import { DOMAIN_MODES, startStack, type Stack } from '../support/stack.js';

const skip = e2eSkipReason();
if (skip) console.log(`# e2e qualify suite SKIPPED: ${skip}`);

const INTERVAL_MS = 1000;
const TIMEOUT_MS = 400;

let seq = 0;
const send = rawRequest;

/** A request from the platform (a trusted peer) to a user; resolves with its final statuses and how long the first took. */
async function fromPlatform(stack: Stack, platform: SipPeer, user: string): Promise<{ statuses: number[]; ms: number; callId: string }> {
  const id = `qp-${process.pid}-${seq++}`;
  const domain = stack.domain.uriHost;
  const started = Date.now();
  const ex = await sendAndCollect(platform, stack.drachtio.sipPort, sipMessage(`OPTIONS sip:${user}@${domain} SIP/2.0`, [
    `Via: SIP/2.0/UDP 127.0.0.1:${platform.port};branch=z9hG4bK-${id}`, 'Max-Forwards: 70',
    `From: <sip:platform@127.0.0.1:${platform.port}>;tag=${id}`, `To: <sip:${user}@${domain}>`, `Call-ID: ${id}`, 'CSeq: 1 OPTIONS',
  ], ''), { transport: 'udp', waitMs: 5000, graceMs: 0 });
  const final = ex.received.find((m) => (m.status ?? 0) >= 200);
  return { statuses: ex.statuses.filter((st) => st >= 200), ms: (final?.at ?? Date.now()) - started, callId: id };
}

/** A phone that answers OPTIONS and MESSAGE with 200 while `alive`, and nothing otherwise. */
class Device {
  private constructor(readonly peer: SipPeer, private readonly state: { alive: boolean }) {}
  static async open(): Promise<Device> {
    const state = { alive: true };
    const peer = await SipPeer.open({ answer: (req: SipMessage) => (state.alive && (req.method === 'OPTIONS' || req.method === 'MESSAGE') ? { status: 200, reason: 'OK' } : undefined) });
    return new Device(peer, state);
  }
  get alive(): boolean { return this.state.alive; }
  set alive(value: boolean) { this.state.alive = value; }
  get contact(): string { return `sip:openbob@127.0.0.1:${this.peer.port}`; }
  messages(): Received[] { return this.peer.received.filter((m) => m.method === 'MESSAGE'); }
  pings(): Received[] { return this.peer.received.filter((m) => m.method === 'OPTIONS'); }
}

interface ReachabilityJson { state: string; rtt_ms: number | null; since: string | null }

async function reachabilityOf(adminUrl: string, aor: string): Promise<Map<string, ReachabilityJson>> {
  const res = await fetch(`${adminUrl}/registrations/${encodeURIComponent(aor)}`, { signal: AbortSignal.timeout(2000) });
  const body = (await res.json()) as { bindings?: Array<{ contact: string; reachability: ReachabilityJson }> };
  return new Map((body.bindings ?? []).map((b) => [b.contact, b.reachability]));
}

/** Waits until `test` holds (polling every 25 ms) or `timeoutMs` passes; returns how long it took. */
async function until(what: string, test: () => Promise<boolean>, timeoutMs: number): Promise<number> {
  const started = Date.now();
  while (!(await test())) {
    if (Date.now() - started > timeoutMs) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
  return Date.now() - started;
}

for (const mode of DOMAIN_MODES) {
  describe(`qualify, end to end (domain: ${mode})`, { skip: skip ?? false, timeout: 120_000 }, () => {
    let stack: Stack;
    let admin: string;
    let alice: SipPeer;
    let platform: SipPeer;
    let phone: Device;
    let laptop: Device;
    let laptopClosed = false;
    before(async () => {
      const adminPort = await freePort();
      // Stands in for the platform: its requests go to users (MIDREG_TRUSTED_PEERS).
      platform = await SipPeer.open();
      stack = await startStack({
        domain: mode,
        env: {
          MIDREG_QUALIFY_INTERVAL_SEC: String(INTERVAL_MS / 1000), MIDREG_QUALIFY_TIMEOUT_MS: String(TIMEOUT_MS), MIDREG_ADMIN_PORT: String(adminPort),
          MIDREG_TRUSTED_PEERS: `127.0.0.1:${platform.port}`,
        },
      });
      admin = `http://127.0.0.1:${adminPort}`;
      alice = await SipPeer.open({ answer: (req) => (req.method === 'OPTIONS' ? { status: 200, reason: 'OK' } : undefined) });
      phone = await Device.open();
      laptop = await Device.open();
      assert.deepEqual((await send(stack, alice, 'REGISTER', 'openalice')).statuses, [200]);
      assert.deepEqual((await send(stack, phone.peer, 'REGISTER', 'openbob')).statuses, [200]);
      assert.deepEqual((await send(stack, laptop.peer, 'REGISTER', 'openbob')).statuses, [200]);
    });
    after(async () => {
      for (const p of [alice, platform, phone?.peer, laptopClosed ? undefined : laptop?.peer]) await p?.close();
      await stack?.stop();
    });

    const bob = (): string => stack.domain.aor('openbob');
    const stateOf = async (d: Device): Promise<string | undefined> => (await reachabilityOf(admin, bob())).get(d.contact)?.state;

    it('pings each binding over its own flow, and both devices become reachable with a round-trip time', async () => {
      await until('both of bob\'s devices reachable', async () => (await stateOf(phone)) === 'reachable' && (await stateOf(laptop)) === 'reachable', 3 * INTERVAL_MS);
      const shown = await reachabilityOf(admin, bob());
      for (const d of [phone, laptop]) assert.equal(typeof shown.get(d.contact)?.rtt_ms, 'number');
      const ping = phone.pings()[0];
      assert.ok(ping, 'the phone was pinged on the socket it registered from');
      assert.equal(ping.startLine, `OPTIONS ${phone.contact} SIP/2.0`, 'Request-URI: the binding\'s contact');
      assert.equal(headerOf(ping, 'Max-Forwards'), '70');
      assert.match(headerOf(ping, 'From') ?? '', /^<sip:midreg@[^>]+>;tag=/);
    });

    it('a device that stops answering is unreachable within two intervals; a MESSAGE reaches only the live one, at once', async () => {
      laptop.alive = false;
      const took = await until('the laptop unreachable', async () => (await stateOf(laptop)) === 'unreachable', 4 * INTERVAL_MS);
      assert.ok(took <= 2 * INTERVAL_MS, `marked unreachable after ${took} ms (interval ${INTERVAL_MS} ms)`);
      assert.equal(await stateOf(phone), 'reachable');

      const phoneBefore = phone.messages().length;
      const laptopBefore = laptop.peer.received.length;
      const sent = await send(stack, alice, 'MESSAGE', 'openalice', { to: 'openbob', body: 'to the live device' });
      assert.deepEqual(sent.statuses, [200]);
      assert.ok(sent.ms < 1000, `answered in ${sent.ms} ms, not after a timeout`);
      assert.equal(phone.messages().length, phoneBefore + 1);
      assert.equal(phone.messages().at(-1)?.body.toString(), 'to the live device');
      assert.equal(laptop.peer.received.slice(laptopBefore).filter((m) => m.method === 'MESSAGE').length, 0, 'nothing forked to the silent laptop');

      // A request from the platform to bob goes to the live device too.
      const asked = await fromPlatform(stack, platform, 'openbob');
      assert.deepEqual(asked.statuses, [200]);
      assert.ok(phone.pings().some((m) => headerOf(m, 'Call-ID') === asked.callId), 'the platform\'s request reached the live phone');
      assert.ok(!laptop.pings().some((m) => headerOf(m, 'Call-ID') === asked.callId), 'and not the silent laptop');
    });

    it('with both devices silent the sender gets 480 at once, and the replica keeps both bindings', async () => {
      phone.alive = false;
      await until('the phone unreachable too', async () => (await stateOf(phone)) === 'unreachable', 4 * INTERVAL_MS);
      const before = phone.messages().length + laptop.messages().length;
      const sent = await send(stack, alice, 'MESSAGE', 'openalice', { to: 'openbob', body: 'nobody home' });
      assert.deepEqual(sent.statuses, [480]);
      assert.ok(sent.ms < 500, `480 after ${sent.ms} ms`);
      assert.equal(phone.messages().length + laptop.messages().length, before, 'no branch sent');
      assert.equal((await reachabilityOf(admin, bob())).size, 2, 'reachability is never a deletion');
      const asked = await fromPlatform(stack, platform, 'openbob');
      assert.deepEqual(asked.statuses, [480], 'the platform learns it at once too');
      assert.ok(asked.ms < 500, `480 after ${asked.ms} ms`);
    });

    it('a device that answers again becomes reachable and gets the next MESSAGE', async () => {
      laptop.alive = true;
      const took = await until('the laptop reachable again', async () => (await stateOf(laptop)) === 'reachable', 4 * INTERVAL_MS);
      assert.ok(took <= 2 * INTERVAL_MS, `reachable again after ${took} ms`);
      const sent = await send(stack, alice, 'MESSAGE', 'openalice', { to: 'openbob', body: 'welcome back' });
      assert.deepEqual(sent.statuses, [200]);
      assert.equal(laptop.messages().at(-1)?.body.toString(), 'welcome back');

      const metrics = await (await fetch(`${admin}/metrics`)).text();
      assert.match(metrics, /^midreg_qualify_pings_total\{result="timeout"\} [1-9]\d*$/m);
      assert.match(metrics, /^midreg_qualify_pings_total\{result="answered"\} [1-9]\d*$/m);
      assert.match(metrics, /^midreg_message_total\{outcome="unreachable"\} 1$/m);
      assert.match(metrics, /^midreg_bindings_reachability\{state="unreachable"\} 1$/m, 'the phone is still silent');
    });

    it('a device whose socket is gone (ICMP port unreachable) is unreachable too, not answered by drachtio-server\'s own error', async () => {
      await until('the laptop reachable', async () => (await stateOf(laptop)) === 'reachable', 4 * INTERVAL_MS);
      laptopClosed = true;
      await laptop.peer.close();
      const took = await until('the closed laptop unreachable', async () => (await stateOf(laptop)) === 'unreachable', 4 * INTERVAL_MS);
      assert.ok(took <= 2 * INTERVAL_MS, `marked unreachable after ${took} ms`);
      const line = logLines(stack.midreg, { message: 'binding unreachable', contact: laptop.contact }).at(-1);
      assert.equal(line?.['why'], 'transport', 'drachtio-server\'s own 503 is a transport failure');
      assert.equal(line?.['status'], 503);
      const metrics = await (await fetch(`${admin}/metrics`)).text();
      assert.match(metrics, /^midreg_qualify_pings_total\{result="failed"\} [1-9]\d*$/m);
    });
  });
}
