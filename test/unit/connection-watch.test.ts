import { strict as assert } from 'node:assert';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { connect, createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import type { Binding } from '../../lib/registrar/registration.js';
import { ConnectionWatch, connectionPorts, isConnectionFlow, judgeFlow, normalizeAddress, pollDelay, scanProcNetTcp } from '../../lib/reachability/connection-watch.js';
import { ReachabilityTable } from '../../lib/reachability/reachability.js';
import { createLogger } from '../../lib/ops/logger.js';

const HEADER = '  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode';
/** A /proc/net/tcp line: addresses as the kernel writes them (hex, host byte order). */
const line = (n: number, local: string, remote: string, state: string): string => `   ${n}: ${local} ${remote} ${state} 00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0`;
// 127.0.0.1 = 0100007F; port 5061 = 13C5, 40000 = 9C40, 40001 = 9C41.
const TCP4 = [HEADER,
  line(0, '0100007F:13C5', '00000000:0000', '0A'),
  line(1, '0100007F:13C5', '0100007F:9C40', '01'),
  line(2, '0100007F:13C5', '0100007F:9C41', '08'),
  'garbage line',
].join('\n');
// [2001:db8::5]:40002 connected to [::]:5061 (listening) — each 32-bit word little-endian.
const TCP6 = [HEADER,
  line(0, '00000000000000000000000000000000:13C5', '00000000000000000000000000000000:0000', '0A'),
  line(1, '00000000000000000000000000000000:13C5', 'B80D0120000000000000000005000000:9C42', '01'),
].join('\n');

function binding(over: Partial<Binding>): Binding {
  return {
    aor: 'sip:bob@example.test', contact: 'sip:bob@10.0.0.5:5061;transport=tls', expiresAt: 2e12, q: null, instance: null, regId: null,
    path: null, callId: 'c', cseq: 1, userAgent: null, source: { address: '127.0.0.1', port: 40000, transport: 'tls' },
    insertion: null, upstreamExpiresAt: null, lapsedAt: null, registeredAt: 0, updatedAt: 0, ...over,
  };
}

describe('reading the kernel\'s TCP table', () => {
  it('reads established peers of the given ports from IPv4 and IPv6 tables, skipping what is not an entry', () => {
    const v4 = scanProcNetTcp(TCP4, new Set([5061]));
    assert.equal(v4.visible, true);
    assert.deepEqual([...v4.established], ['127.0.0.1:40000'], 'CLOSE_WAIT (08) is not established; the garbage line is skipped');
    assert.deepEqual([...scanProcNetTcp(TCP6, new Set([5061])).established], [`${normalizeAddress('2001:db8::5')}:40002`]);
  });

  it('keeps reading when slot numbers grow past four digits (100,000 sockets)', () => {
    const wide = [HEADER, line(99998, '0100007F:13C5', '00000000:0000', '0A'), line(123456, '0100007F:13C5', '0A00000A:9C40', '01')].join('\n');
    const view = scanProcNetTcp(wide, new Set([5061]));
    assert.equal(view.visible, true);
    assert.deepEqual([...view.established], ['10.0.0.10:40000']);
  });

  it('reads the host\'s real table: a connection to a listener shows up, then goes once closed', async () => {
    const server = createServer(() => {});
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const port = (server.address() as { port: number }).port;
    const client = connect(port, '127.0.0.1');
    await new Promise<void>((resolve) => client.on('connect', resolve));
    const peer = `127.0.0.1:${client.localPort ?? 0}`;
    const before = scanProcNetTcp(readFileSync('/proc/net/tcp', 'latin1'), new Set([port]));
    client.destroy();
    server.close();
    await new Promise((resolve) => setTimeout(resolve, 50));
    const after = scanProcNetTcp(readFileSync('/proc/net/tcp', 'latin1'), new Set([port]));
    assert.equal(before.visible, true);
    assert.ok(before.established.has(peer), `${peer} established`);
    assert.equal(after.established.has(peer), false, 'closed connection gone');
  });

  it('looks less often when one look costs more than a tenth of the interval', () => {
    assert.equal(pollDelay(500, 20), 500);
    assert.equal(pollDelay(500, 120), 1200);
  });

  it('normalizes addresses the way both sides write them', () => {
    assert.equal(normalizeAddress('[2001:DB8::5]'), '2001:0db8:0000:0000:0000:0000:0000:0005');
    assert.equal(normalizeAddress('::ffff:192.0.2.7'), '192.0.2.7');
    assert.equal(normalizeAddress('192.0.2.7'), '192.0.2.7');
  });

  it('takes drachtio-server\'s connection-oriented ports from its announced addresses', () => {
    assert.deepEqual([...connectionPorts(['udp/127.0.0.1:5060', 'tcp/127.0.0.1:5060', 'tls/127.0.0.1:5061', 'ws/127.0.0.1:8088', 'wss/[::1]:8089'])].sort(), [5060, 5061, 8088, 8089]);
  });

  it('sees established peers on those ports only, and whether the listeners are visible at all', () => {
    const view = scanProcNetTcp(TCP6, new Set([5061]), scanProcNetTcp(TCP4, new Set([5061])));
    assert.equal(view.visible, true);
    assert.deepEqual([...view.established].sort(), [`${normalizeAddress('2001:db8::5')}:40002`, '127.0.0.1:40000'].sort(), 'CLOSE_WAIT (08) is not established');
    assert.equal(scanProcNetTcp(TCP4, new Set([5070])).visible, false, 'another namespace: nothing to judge by');
  });

  it('judges a flow closed only after it was seen established', () => {
    const est = new Set(['127.0.0.1:40000']);
    assert.deepEqual(judgeFlow('127.0.0.1:40000', false, est), { kind: 'open' });
    assert.deepEqual(judgeFlow('127.0.0.1:40001', false, est), { kind: 'not-seen-yet' });
    assert.deepEqual(judgeFlow('127.0.0.1:40001', true, est), { kind: 'closed' });
  });

  it('watches TCP, TLS and WebSocket bindings, not UDP ones', () => {
    for (const t of ['tcp', 'tls', 'ws', 'wss']) assert.equal(isConnectionFlow(binding({ source: { address: '127.0.0.1', port: 1, transport: t } })), true, t);
    assert.equal(isConnectionFlow(binding({ source: { address: '127.0.0.1', port: 1, transport: 'udp' } })), false);
    assert.equal(isConnectionFlow(binding({ source: null })), false);
  });
});

describe('the connection watch', () => {
  const logger = createLogger({ level: 'error', format: 'json' });

  function setup(bindings: Binding[]): { watch: ConnectionWatch; table: ReachabilityTable; write(text: string): void; closed: Binding[]; done(): void } {
    const dir = mkdtempSync(join(tmpdir(), 'cw-'));
    const file = join(dir, 'tcp');
    const table = new ReachabilityTable();
    const closed: Binding[] = [];
    const store = {
      liveBindings: (aor: string, now: number) => Promise.resolve(bindings.filter((b) => b.aor === aor && b.expiresAt > now)),
      listLiveAfter: (now: number) => Promise.resolve(bindings.filter((b) => b.expiresAt > now)),
    };
    const watch = new ConnectionWatch({ table, store, sipAddresses: () => ['udp/127.0.0.1:5060', 'tls/127.0.0.1:5061'], intervalMs: 100, logger, files: [file], onClosed: (b) => closed.push(b), clock: () => 1000 });
    return { watch, table, write: (text) => writeFileSync(file, text), closed, done: () => rmSync(dir, { recursive: true, force: true }) };
  }

  it('marks a binding unreachable (closed) once its connection is gone, once, and forgets it with the binding', async () => {
    const phone = binding({});
    const udp = binding({ contact: 'sip:bob@10.0.0.6', source: { address: '127.0.0.1', port: 40009, transport: 'udp' } });
    const all = [phone, udp];
    const t = setup(all);
    try {
      await t.watch.seed();
      assert.equal(t.watch.size, 1, 'only the TLS binding is watched');
      t.write(TCP4);
      assert.deepEqual((await t.watch.check()), [], 'established: nothing to do');
      t.write([HEADER, line(0, '0100007F:13C5', '00000000:0000', '0A')].join('\n'));
      assert.deepEqual((await t.watch.check()).map((b) => b.contact), [phone.contact]);
      assert.deepEqual(t.table.of(phone), { state: 'unreachable', since: 1000, checkedAt: 1000, why: 'closed' });
      assert.equal(t.closed.length, 1);
      assert.deepEqual((await t.watch.check()), [], 'judged once');
      // The phone registers again from a new connection: the old flow is gone from the replica.
      all.splice(0, 1, binding({ source: { address: '127.0.0.1', port: 40001, transport: 'tls' } }));
      await t.watch.track(phone.aor);
      assert.deepEqual(t.table.of(phone), { state: 'unknown' }, 'the old flow is forgotten');
      assert.equal(t.watch.size, 1);
    } finally { t.done(); }
  });

  it('indexes a TCP/TLS binding after its REGISTER, and a UDP REGISTER of an unwatched AoR reads nothing', async () => {
    const bindings: Binding[] = [];
    const t = setup(bindings);
    try {
      bindings.push(binding({ aor: 'sip:carol@example.test', contact: 'sip:carol@10.0.0.7', source: { address: '127.0.0.1', port: 40010, transport: 'udp' } }));
      await t.watch.track('sip:carol@example.test', 'udp');
      assert.equal(t.watch.size, 0);
      // A UDP REGISTER that (as far as the watch knows) cannot have added a flow: not even looked at.
      bindings.push(binding({ aor: 'sip:carol@example.test', contact: 'sip:carol@10.0.0.8', source: { address: '127.0.0.1', port: 40011, transport: 'tcp' } }));
      await t.watch.track('sip:carol@example.test', 'udp');
      assert.equal(t.watch.size, 0, 'skipped without a store read');
      await t.watch.track('sip:carol@example.test', 'tcp');
      assert.equal(t.watch.size, 1, 'a TCP REGISTER is indexed');
      // Once the AoR has a watched flow, a UDP REGISTER is looked at (it may have replaced that flow).
      bindings.splice(1, 1);
      await t.watch.track('sip:carol@example.test', 'udp');
      assert.equal(t.watch.size, 0, 'the replaced TCP flow is dropped');
    } finally { t.done(); }
  });

  it('judges nothing when drachtio-server\'s listeners are not visible (another host or namespace)', async () => {
    const t = setup([binding({})]);
    try {
      await t.watch.seed();
      t.write(TCP4);
      (await t.watch.check());
      t.write([HEADER, line(0, '0100007F:1000', '00000000:0000', '0A')].join('\n'));
      assert.deepEqual((await t.watch.check()), []);
      assert.equal(t.table.of(binding({})).state, 'unknown');
    } finally { t.done(); }
  });

  it('never judges a flow it has not seen established', async () => {
    const t = setup([binding({ source: { address: '127.0.0.1', port: 40007, transport: 'tls' } })]);
    try {
      await t.watch.seed();
      t.write(TCP4);
      assert.deepEqual((await t.watch.check()), []);
      assert.equal(t.closed.length, 0);
    } finally { t.done(); }
  });
});
