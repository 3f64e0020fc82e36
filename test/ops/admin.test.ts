// The admin API over real HTTP on 127.0.0.1, reading a real SQLite replica.
import { strict as assert } from 'node:assert';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { AdminConfigError, isLoopback, startAdminServer, type AdminDeps, type AdminServer } from '../../lib/ops/admin.js';
import { SqliteStore } from '../../lib/store/sqlite-store.js';
import { Metrics } from '../../lib/ops/metrics.js';
import { ReachabilityTable } from '../../lib/reachability/reachability.js';
import { adminStore, binding, captureLogger, fillReplica, LIVE_AORS, LIVE_BINDINGS } from './fixtures.js';

const dir = mkdtempSync(join(tmpdir(), 'midreg-admin-'));
const file = join(dir, 'replica.sqlite');
const NOW = Date.now();
const sqlite = new SqliteStore(file);
// Filled and inspected synchronously; the admin API reads through the store interface.
const store = sqlite.replica;
fillReplica(store, NOW);
const open: Array<{ close(): Promise<void> | void }> = [];
after(async () => {
  for (const thing of open.reverse()) await thing.close();
  store.close();
  rmSync(dir, { recursive: true, force: true });
});

let drachtioUp = true;
const metrics = new Metrics({ registrations: () => store.counts(NOW), now: () => NOW });
const deps: AdminDeps = { store: adminStore(sqlite), drachtioConnected: () => drachtioUp, metrics, now: () => NOW };

async function serve(over: Partial<AdminDeps> = {}, token?: string): Promise<{ server: AdminServer; url: string; lines: string[] }> {
  const { logger, lines } = captureLogger();
  const server = await startAdminServer({ host: '127.0.0.1', port: 0, ...(token ? { token } : {}), deps: { ...deps, ...over }, logger });
  open.push(server);
  return { server, url: `http://127.0.0.1:${server.port}`, lines };
}

async function getJson(url: string, init: RequestInit = {}): Promise<{ status: number; body: Record<string, unknown>; headers: Headers }> {
  const res = await fetch(url, init);
  const body = (await res.json()) as Record<string, unknown>;
  return { status: res.status, body, headers: res.headers };
}

interface BindingJson { aor: string; contact: string; [field: string]: unknown }
interface Page { bindings: BindingJson[]; next: string | null }

describe('admin API', () => {
  let base: string;
  before(async () => { base = (await serve()).url; });

  describe('GET /health', () => {
    it('is 200 ok while drachtio-server is connected and the replica is writable', async () => {
      drachtioUp = true;
      const res = await getJson(`${base}/health`);
      assert.equal(res.status, 200);
      assert.match(res.headers.get('content-type') ?? '', /^application\/json/);
      assert.deepEqual(res.body, { status: 'ok', drachtio: 'connected', database: 'writable' });
    });

    it('is 503 naming drachtio-server when it is not connected', async () => {
      drachtioUp = false;
      try {
        const res = await getJson(`${base}/health`);
        assert.equal(res.status, 503);
        assert.equal(res.body['status'], 'unavailable');
        assert.equal(res.body['drachtio'], 'disconnected');
        assert.equal(res.body['database'], 'writable');
        assert.deepEqual(res.body['reasons'], ['drachtio-server not connected']);
      } finally {
        drachtioUp = true;
      }
    });

    it('is 503 naming the database when the replica cannot be written, with every reason', async () => {
      const readonly = new SqliteStore(file, { readonly: true });
      open.push(readonly);
      const { url } = await serve({ store: adminStore(readonly) });
      const res = await getJson(`${url}/health`);
      assert.equal(res.status, 503);
      assert.equal(res.body['database'], 'not_writable');
      const reasons = res.body['reasons'] as string[];
      assert.equal(reasons.length, 1);
      assert.match(reasons[0] ?? '', /^database not writable: .*readonly/);

      drachtioUp = false;
      try {
        const both = await getJson(`${url}/health`);
        assert.equal(both.status, 503);
        assert.equal((both.body['reasons'] as string[]).length, 2);
      } finally {
        drachtioUp = true;
      }
    });
  });

  describe('GET /registrations', () => {
    it('pages through every live binding exactly once, even when a page ends inside an AoR', async () => {
      const seen: BindingJson[] = [];
      let from: string | null = null;
      let pages = 0;
      do {
        const query: string = from ? `limit=2&from=${encodeURIComponent(from)}` : 'limit=2';
        const res = await getJson(`${base}/registrations?${query}`);
        assert.equal(res.status, 200);
        const page = res.body as unknown as Page;
        assert.ok(page.bindings.length <= 2);
        seen.push(...page.bindings);
        from = page.next;
        pages += 1;
      } while (from !== null && pages < 50);
      assert.equal(pages, LIVE_BINDINGS / 2);
      const keys = seen.map((b) => `${b.aor} ${b.contact}`);
      assert.equal(new Set(keys).size, LIVE_BINDINGS, 'no binding twice');
      assert.deepEqual(keys, [...keys].sort(), 'ordered by AoR, then contact');
      assert.equal(seen.filter((b) => b.aor === 'sip:alice@example.test').length, 3, "alice's 3 contacts, split over two pages");
      assert.ok(!keys.some((k) => k.startsWith('sip:bob@')), 'expired bindings are not listed');
    });

    it('returns the first page with a cursor by default, and searches by AoR prefix', async () => {
      const all = (await getJson(`${base}/registrations`)).body as unknown as Page;
      assert.equal(all.bindings.length, LIVE_BINDINGS);
      assert.equal(all.next, null);

      const alice = (await getJson(`${base}/registrations?aor=Alice`)).body as unknown as Page;
      assert.deepEqual(alice.bindings.map((b) => b.aor), Array(3).fill('sip:alice@example.test'));

      const users = (await getJson(`${base}/registrations?aor=${encodeURIComponent('sip:u0')}&limit=4`)).body as unknown as Page;
      assert.equal(users.bindings.length, 4);
      assert.ok(users.next);
      const rest = (await getJson(`${base}/registrations?aor=sip:u0&limit=100&from=${encodeURIComponent(users.next)}`)).body as unknown as Page;
      assert.deepEqual([...users.bindings, ...rest.bindings].map((b) => b.aor),
        Array.from({ length: 10 }, (_, i) => `sip:u${String(i).padStart(2, '0')}@example.test`));

      const bob = (await getJson(`${base}/registrations?aor=bob`)).body as unknown as Page;
      assert.deepEqual(bob, { bindings: [], next: null });
    });

    it('answers 400 to a bad limit or cursor', async () => {
      for (const query of ['limit=0', 'limit=abc', 'limit=1001', 'from=not-a-cursor']) {
        const res = await getJson(`${base}/registrations?${query}`);
        assert.equal(res.status, 400, query);
        assert.equal(typeof res.body['error'], 'string');
      }
    });
  });

  describe('GET /registrations/<AoR>', () => {
    it("returns one AoR's live bindings, highest q first, with every documented field", async () => {
      const res = await getJson(`${base}/registrations/${encodeURIComponent('sip:alice@example.test')}`);
      assert.equal(res.status, 200);
      assert.equal(res.body['aor'], 'sip:alice@example.test');
      const bindings = res.body['bindings'] as BindingJson[];
      assert.deepEqual(bindings.map((b) => b['q']), [0.8, 0.5, null]);
      assert.deepEqual(bindings[0], {
        aor: 'sip:alice@example.test',
        contact: 'sip:alice@198.51.100.7:5062',
        expires_in: 3600,
        expires_at: new Date(NOW + 3_600_000).toISOString(),
        upstream_expires_in: null,
        lapsed_at: null,
        source: { address: '198.51.100.7', port: 5062, transport: 'udp' },
        user_agent: 'Yealink SIP-T46S 66.86.0.15',
        q: 0.8,
        instance: '"<urn:uuid:00000000-0000-1000-8000-000a95a0e128>"',
        reg_id: 1,
        path: '<sip:edge.example.test;lr>',
        upstream_contact: null,
        call_id: 'sip:alice@example.test-call',
        cseq: 7,
        registered_at: new Date(NOW).toISOString(),
        updated_at: new Date(NOW).toISOString(),
        reachability: null,
      });
      assert.equal(bindings[2]?.['source'], null, 'a binding midreg never saw registered has no source');
    });

    it('shows what qualify knows of each binding: state, round trip, unreachable since', async () => {
      const table = new ReachabilityTable();
      const [phone, other, unseen] = store.liveBindings('sip:alice@example.test', NOW);
      assert.ok(phone && other && unseen);
      table.record(phone, { kind: 'reachable', rttMs: 12 }, NOW - 1000);
      table.record(other, { kind: 'unreachable', why: 'timeout' }, NOW - 5000);
      table.record(other, { kind: 'unreachable', why: 'timeout' }, NOW - 2000);
      const { url } = await serve({ reachability: (b) => table.of(b) });
      const res = await getJson(`${url}/registrations/${encodeURIComponent('sip:alice@example.test')}`);
      const shown = (res.body['bindings'] as BindingJson[]).map((b) => b['reachability']);
      assert.deepEqual(shown, [
        { state: 'reachable', rtt_ms: 12, since: null, checked_at: new Date(NOW - 1000).toISOString() },
        { state: 'unreachable', rtt_ms: null, since: new Date(NOW - 5000).toISOString(), checked_at: new Date(NOW - 2000).toISOString() },
        { state: 'unknown', rtt_ms: null, since: null, checked_at: null },
      ]);
      const page = await getJson(`${url}/registrations?aor=alice`);
      assert.deepEqual((page.body['bindings'] as BindingJson[]).map((b) => (b['reachability'] as { state: string }).state).sort(), ['reachable', 'unknown', 'unreachable']);
    });

    it('finds the AoR however the operator spells it, and 404s an unknown or expired one', async () => {
      for (const spelling of [encodeURIComponent('SIP:Alice@Example.TEST'), 'sip:alice@example.test', encodeURIComponent('<sip:alice@example.test>'), 'alice%40example.test']) {
        const res = await getJson(`${base}/registrations/${spelling}`);
        assert.equal(res.status, 200, spelling);
        assert.equal((res.body['bindings'] as unknown[]).length, 3, spelling);
      }
      for (const aor of ['sip:nobody@example.test', 'sip:bob@example.test']) {
        const res = await getJson(`${base}/registrations/${encodeURIComponent(aor)}`);
        assert.equal(res.status, 404, aor);
        assert.deepEqual(res.body, { error: 'no live registration', aor });
      }
    });
  });

  describe('the offline queue: GET /offline, GET and DELETE /offline/<AoR>', () => {
    it('lists per recipient and one recipient\'s messages without their text, and purges one recipient\'s, surviving a reopen of the file', async () => {
      const offline = sqlite.offline;
      const add = (recipient: string, body: string, at: number): Promise<number> => offline.add({
        recipient, sender: 'sip:alice@example.test', fromHeader: '<sip:alice@example.test>;tag=a', toHeader: `<${recipient}>`,
        contentType: 'text/plain', body, date: 'Mon, 01 Jan 2024 10:00:00 GMT', receivedAt: at, expiresAt: at + 60_000,
      });
      await add('sip:bob@example.test', 'secret words', NOW - 2000);
      await add('sip:bob@example.test', 'more', NOW - 1000);
      await add('sip:carol@example.test', 'hi', NOW);
      const purgedLog: Array<[string, number]> = [];
      const { url } = await serve({ offline, onOfflinePurged: (aor, n) => { purgedLog.push([aor, n]); } });
      const queue = await getJson(`${url}/offline`);
      assert.equal(queue.status, 200);
      assert.deepEqual(queue.body, {
        messages: 3, bytes: 18,
        recipients: [
          { aor: 'sip:bob@example.test', messages: 2, bytes: 16, oldest_at: new Date(NOW - 2000).toISOString() },
          { aor: 'sip:carol@example.test', messages: 1, bytes: 2, oldest_at: new Date(NOW).toISOString() },
        ],
      });
      const bob = await getJson(`${url}/offline/${encodeURIComponent('SIP:Bob@Example.test')}`);
      assert.equal((bob.body['messages'] as unknown[]).length, 2);
      assert.ok(!JSON.stringify(bob.body).includes('secret words'), 'never the text');
      const purged = await getJson(`${url}/offline/${encodeURIComponent('sip:bob@example.test')}`, { method: 'DELETE' });
      assert.deepEqual(purged.body, { aor: 'sip:bob@example.test', purged: 2 });
      assert.deepEqual(purgedLog, [['sip:bob@example.test', 2]]);
      assert.deepEqual(await offline.totals(), { messages: 1, bytes: 2 }, 'the totals follow');
      const reopened = new SqliteStore(file, { readonly: true });
      open.push(reopened);
      assert.deepEqual((await reopened.offline.summary()).map((q) => q.recipient), ['sip:carol@example.test'], 'on disk');
      assert.equal((await getJson(`${url}/registrations`, { method: 'DELETE' })).status, 405, 'DELETE only where listed');
      await offline.purge('sip:carol@example.test');
    });

    it('answers 404 while offline messages are off', async () => {
      const res = await getJson(`${base}/offline`);
      assert.equal(res.status, 404);
      assert.match(String(res.body['error']), /MIDREG_OFFLINE_MESSAGES/);
    });
  });

  describe('routing', () => {
    it('answers 404 to an unknown path and 405 (with Allow) to a wrong method', async () => {
      for (const path of ['/', '/nope', '/registrations/a/b', '/health/']) {
        assert.equal((await getJson(`${base}${path}`)).status, 404, path);
      }
      const head = await fetch(`${base}/health`, { method: 'HEAD' });
      assert.equal(head.status, 200);
      assert.equal(await head.text(), '');
      for (const method of ['POST', 'DELETE', 'PUT']) {
        const res = await getJson(`${base}/health`, { method });
        assert.equal(res.status, 405, method);
        assert.equal(res.headers.get('allow'), 'GET, HEAD');
      }
    });
  });

  describe('GET /metrics and /stats', () => {
    it('exposes counters, the upstream latency histogram, replica gauges and process metrics', async () => {
      const scrape = async (): Promise<string> => {
        const res = await fetch(`${base}/metrics`);
        assert.equal(res.status, 200);
        assert.match(res.headers.get('content-type') ?? '', /^text\/plain; version=0\.0\.4/);
        return res.text();
      };
      const first = await scrape();
      assert.match(first, /^midreg_register_relayed_total\{class="2xx"\} 0$/m, 'zero series exist before any REGISTER');
      assert.match(first, new RegExp(`^midreg_bindings ${LIVE_BINDINGS}$`, 'm'));
      assert.match(first, new RegExp(`^midreg_aors ${LIVE_AORS}$`, 'm'));

      metrics.registerAnswered(200, 40);
      metrics.registerAnswered(200, 12);
      metrics.registerAnswered(401, 15);
      metrics.registerAnswered(408, 8000);
      metrics.registerAnswered(403, undefined);
      metrics.messageOutcome('delivered');
      metrics.messageOutcome('delivered');
      metrics.messageOutcome('not_found');
      metrics.replicaWriteFailed();
      metrics.drachtioConnected(true);
      store.replaceAor('sip:dave@example.test', [binding('sip:dave@example.test', 'sip:dave@192.0.2.40', NOW + 60_000)]);

      const text = await scrape();
      for (const line of [
        'midreg_register_relayed_total{class="2xx"} 2',
        'midreg_register_relayed_total{class="4xx"} 3',
        'midreg_register_relayed_total{class="5xx"} 0',
        'midreg_upstream_reply_seconds_count 4',
        'midreg_upstream_reply_seconds_bucket{le="0.05"} 3',
        'midreg_upstream_reply_seconds_bucket{le="8"} 4',
        'midreg_message_total{outcome="delivered"} 2',
        'midreg_message_total{outcome="not_found"} 1',
        'midreg_message_total{outcome="relayed"} 0',
        'midreg_replica_write_failures_total 1',
        'midreg_drachtio_connected 1',
        `midreg_bindings ${LIVE_BINDINGS + 1}`,
        `midreg_aors ${LIVE_AORS + 1}`,
        'midreg_qualify_sent_total 0',
        'midreg_qualify_pings_total{result="timeout"} 0',
        `midreg_bindings_reachability{state="unknown"} ${LIVE_BINDINGS + 1}`,
        'midreg_bindings_reachability{state="unreachable"} 0',
      ]) {
        assert.ok(text.split('\n').includes(line), `missing: ${line}`);
      }
      assert.match(text, /^process_cpu_user_seconds_total \d/m);
      assert.match(text, /^nodejs_eventloop_lag_seconds \d/m);

      const stats = await getJson(`${base}/stats`);
      assert.equal(stats.status, 200);
      assert.deepEqual(stats.body, {
        started_at: new Date(NOW).toISOString(),
        uptime_seconds: 0,
        drachtio: 'connected',
        bindings: LIVE_BINDINGS + 1,
        aors: LIVE_AORS + 1,
        register: { '2xx': 2, '3xx': 0, '4xx': 3, '5xx': 0, '6xx': 0 },
        register_absorbed: 0,
        message: { delivered: 2, not_found: 1, forbidden: 0, too_large: 0, failed: 0, relayed: 0, stored: 0, offline_refused: 0, unreachable: 0 },
        replica_write_failures: 1,
      });
      store.replaceAor('sip:dave@example.test', []);
    });

    it('keeps its counters to itself: a second Metrics starts from zero', () => {
      const other = new Metrics({ registrations: () => ({ bindings: 0, aors: 0 }) });
      other.registerAnswered(500, 1);
      assert.equal(other.snapshot().register['5xx'], 1);
      assert.equal(metrics.snapshot().register['5xx'], 0);
    });

    it('still serves /metrics when the replica cannot be counted', async () => {
      const broken = new Metrics({ registrations: () => { throw new Error('database is locked'); } });
      const { url } = await serve({ metrics: broken });
      const res = await fetch(`${url}/metrics`);
      assert.equal(res.status, 200);
      const text = await res.text();
      assert.match(text, /^midreg_bindings Nan$/m);
      assert.match(text, /^process_cpu_user_seconds_total \d/m);
    });
  });

  describe('token', () => {
    const token = 'k3y-only-the-operator-knows-8f2a';

    it('is required on every route, health included, and compared exactly', async () => {
      const { url, lines } = await serve({}, token);
      for (const path of ['/health', '/metrics', '/stats', '/registrations', '/registrations/sip%3Aalice%40example.test', '/nope']) {
        const none = await getJson(`${url}${path}`);
        assert.equal(none.status, 401, `${path} without a token`);
        assert.equal(none.headers.get('www-authenticate'), 'Bearer realm="midreg"');
        for (const wrong of [`Bearer ${token.slice(0, -1)}`, `Bearer ${token}x`, `Basic ${token}`, token]) {
          assert.equal((await getJson(`${url}${path}`, { headers: { Authorization: wrong } })).status, 401, `${path} with ${wrong}`);
        }
      }
      assert.equal((await getJson(`${url}/health`, { headers: { Authorization: `Bearer ${token}` } })).status, 200);
      assert.equal((await getJson(`${url}/stats`, { headers: { Authorization: `bearer ${token}` } })).status, 200);
      assert.equal((await getJson(`${url}/nope`, { headers: { Authorization: `Bearer ${token}` } })).status, 404);
      assert.ok(lines.some((l) => l.includes('admin request refused')), 'refusals are logged');
      assert.ok(!lines.some((l) => l.includes(token.slice(0, 12))), 'the token never reaches the log');
    });

    it('must be set to listen beyond loopback', async () => {
      const { logger } = captureLogger();
      // A server that starts by mistake is closed again, so the failure is reported instead of hanging the run.
      const attempt = (opts: { host: string; token?: string }): Promise<AdminServer> => {
        const started = startAdminServer({ ...opts, port: 0, deps, logger });
        started.then((server) => server.close(), () => undefined);
        return started;
      };
      for (const host of ['0.0.0.0', '::', '192.0.2.1']) {
        await assert.rejects(attempt({ host }), (err: unknown) =>
          err instanceof AdminConfigError && err.message.includes(host) && /without a token/.test(err.message));
        await assert.rejects(attempt({ host, token: '' }), AdminConfigError, 'an empty token is no token');
      }
      assert.deepEqual(['127.0.0.1', '127.5.0.1', '::1', '[::1]', 'localhost'].filter(isLoopback).length, 5);
    });
  });

  it('reports a port already in use as a start-up error', async () => {
    const { server } = await serve();
    const { logger } = captureLogger();
    await assert.rejects(startAdminServer({ host: '127.0.0.1', port: server.port, deps, logger }), /cannot serve the admin API on 127\.0\.0\.1:\d+: .*EADDRINUSE/);
  });
});
