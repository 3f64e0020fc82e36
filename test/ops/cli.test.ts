// The `midreg` CLI run as a child process, the way an operator runs it, against a replica file
// that this process keeps open and writes to (as the running service would).
import { strict as assert } from 'node:assert';
import { execFile } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { startAdminServer } from '../../lib/ops/admin.js';
import { SqliteStore } from '../../lib/store/sqlite-store.js';
import { Metrics } from '../../lib/ops/metrics.js';
import { ReachabilityTable } from '../../lib/reachability/reachability.js';
import { adminStore, binding, captureLogger, fillReplica, LIVE_AORS, LIVE_BINDINGS } from './fixtures.js';

const CLI = fileURLToPath(new URL('../../app/cli.js', import.meta.url));
const dir = mkdtempSync(join(tmpdir(), 'midreg-cli-'));
const file = join(dir, 'replica.sqlite');
const NOW = Date.now();
const sqlite = new SqliteStore(file);
const store = sqlite.replica;
fillReplica(store, NOW);
const cleanup: Array<() => Promise<void> | void> = [];
after(async () => {
  for (const step of cleanup.reverse()) await step();
  store.close();
  rmSync(dir, { recursive: true, force: true });
});

/** The environment without any MIDREG_ setting of the machine running the tests. */
function cleanEnv(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('MIDREG_')) env[k] = v;
  return { ...env, ...extra };
}

function midreg(args: string[], env: Record<string, string> = {}): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [CLI, ...args], { env: cleanEnv(env), cwd: dir, maxBuffer: 64 * 1024 * 1024 }, (err, stdout, stderr) => {
      const code = err ? (typeof err.code === 'number' ? err.code : -1) : 0;
      resolve({ code, stdout, stderr });
    });
  });
}

describe('midreg CLI', () => {
  describe('registrations', () => {
    it('prints a table of live bindings: AoR, contact, source, expiry, upstream expiry, q, User-Agent', async () => {
      const { code, stdout, stderr } = await midreg(['registrations', '--db', file]);
      assert.equal(code, 0, stderr);
      const lines = stdout.trimEnd().split('\n');
      assert.match(lines[0] ?? '', /^AOR\s+CONTACT\s+SOURCE\s+EXPIRES\s+UPSTREAM\s+Q\s+USER-AGENT$/);
      const phone = lines.find((l) => l.includes('sip:alice@198.51.100.7:5062'));
      assert.ok(phone, stdout);
      const cells = phone.split(/\s{2,}/);
      assert.equal(cells[0], 'sip:alice@example.test');
      assert.equal(cells[2], 'udp:198.51.100.7:5062');
      const expires = Number(/^(\d+)s$/.exec(cells[3] ?? '')?.[1]);
      assert.ok(expires > 3500 && expires <= 3600, `expires ${cells[3]}`);
      assert.equal(cells[4], '-', 'no upstream expiry in mirror mode');
      assert.equal(cells[5], '0.8');
      assert.equal(cells[6], 'Yealink SIP-T46S 66.86.0.15');
      assert.match(stdout, /^sip:alice@example\.test\s+sip:alice@10\.1\.1\.1\s+-\s+\d+s\s+-\s+-\s+-$/m, 'no source, q or UA shown as -');
      assert.ok(!stdout.includes('sip:bob@'), 'expired bindings are not shown');
      assert.equal(lines.filter((l) => l.startsWith('sip:')).length, LIVE_BINDINGS);
      assert.equal(lines.at(-1), `${LIVE_BINDINGS} bindings, ${LIVE_AORS} AoRs`);
    });

    it('shows one AoR however it is spelt, and sees what the service wrote a moment ago', async () => {
      const one = await midreg(['registrations', 'Alice@Example.TEST', '--db', file]);
      assert.equal(one.code, 0, one.stderr);
      assert.equal(one.stdout.split('\n').filter((l) => l.startsWith('sip:')).length, 3);
      assert.ok(!one.stdout.includes('sip:carol@'));

      store.replaceAor('sip:erin@example.test', [binding('sip:erin@example.test', 'sip:erin@192.0.2.50', Date.now() + 60_000)]);
      try {
        const fresh = await midreg(['registrations', 'sip:erin@example.test', '--db', file]);
        assert.equal(fresh.code, 0, fresh.stderr);
        assert.match(fresh.stdout, /sip:erin@192\.0\.2\.50/);
      } finally {
        store.replaceAor('sip:erin@example.test', []);
      }
    });

    it('prints the admin API binding fields with --json, reading MIDREG_DB by default', async () => {
      const { code, stdout, stderr } = await midreg(['registrations', '--json'], { MIDREG_DB: file });
      assert.equal(code, 0, stderr);
      const bindings = JSON.parse(stdout) as Array<Record<string, unknown>>;
      assert.equal(bindings.length, LIVE_BINDINGS);
      assert.deepEqual(Object.keys(bindings[0] ?? {}).sort(), ['aor', 'call_id', 'contact', 'cseq', 'expires_at', 'expires_in', 'instance', 'lapsed_at', 'path',
        'q', 'reachability', 'reg_id', 'registered_at', 'source', 'updated_at', 'upstream_contact', 'upstream_expires_in', 'user_agent']);
      assert.equal(bindings[0]?.['reachability'], null, 'the file cannot know what the running service learnt by qualify');
      const phone = bindings.find((b) => b['contact'] === 'sip:alice@198.51.100.7:5062');
      assert.deepEqual(phone?.['source'], { address: '198.51.100.7', port: 5062, transport: 'udp' });
      assert.equal(phone?.['reg_id'], 1);
    });

    it('fails clearly for an unknown AoR, a missing file and a file that is not a replica', async () => {
      const unknown = await midreg(['registrations', 'sip:nobody@example.test', '--db', file]);
      assert.equal(unknown.code, 1);
      assert.equal(unknown.stderr, 'midreg: no live registration for sip:nobody@example.test\n');

      const missing = join(dir, 'missing.sqlite');
      const gone = await midreg(['registrations', '--db', missing]);
      assert.equal(gone.code, 1);
      assert.equal(gone.stderr, `midreg: no database at ${missing} (give --db FILE or set MIDREG_DB)\n`);
      assert.equal(existsSync(missing), false, 'the CLI never creates a database');

      const other = join(dir, 'other.sqlite');
      writeFileSync(other, '');
      const wrong = await midreg(['registrations', '--db', other]);
      assert.equal(wrong.code, 1);
      assert.match(wrong.stderr, /^midreg: .*other\.sqlite.*\n$/, 'one line naming the file, no stack trace');
      assert.equal(wrong.stderr.split('\n').length, 2);
    });
  });

  describe('export', () => {
    it('writes every live binding once as JSON lines, with progress on stderr when asked', async () => {
      const out = join(dir, 'export.jsonl');
      const { code, stderr } = await midreg(['export', '--db', file, '--out', out, '--progress', '--batch', '5']);
      assert.equal(code, 0, stderr);
      const lines = readFileSync(out, 'utf8').trimEnd().split('\n');
      assert.equal(lines.length, LIVE_BINDINGS);
      const rows = lines.map((l) => JSON.parse(l) as { aor: string; contact: string; expires_in: number });
      assert.equal(new Set(rows.map((r) => `${r.aor} ${r.contact}`)).size, LIVE_BINDINGS);
      assert.ok(rows.every((r) => r.expires_in > 0));
      const progress = stderr.trimEnd().split('\n');
      assert.equal(progress[0], `exported 5/${LIVE_BINDINGS}`);
      assert.equal(progress.at(-1), `exported ${LIVE_BINDINGS}/${LIVE_BINDINGS}`);
      assert.ok(progress.every((l) => /^exported \d+\/14$/.test(l)), stderr);
    });

    it('writes to stdout and keeps stderr quiet when it is not a terminal', async () => {
      const { code, stdout, stderr } = await midreg(['export', '--db', file]);
      assert.equal(code, 0, stderr);
      assert.equal(stderr, '');
      assert.equal(stdout.trimEnd().split('\n').length, LIVE_BINDINGS);
    });

    it('fails clearly for an unwritable output file or a bad batch size', async () => {
      const bad = await midreg(['export', '--db', file, '--out', join(dir, 'no-such-dir', 'x.jsonl')]);
      assert.equal(bad.code, 1);
      assert.match(bad.stderr, /^midreg: cannot write .*no-such-dir\/x\.jsonl: ENOENT/);
      const batch = await midreg(['export', '--db', file, '--batch', '0']);
      assert.notEqual(batch.code, 0);
      assert.match(batch.stderr, /--batch.*must be an integer from 1/);
    });
  });

  describe('stats', () => {
    it('counts bindings and AoRs offline from the replica with --db', async () => {
      const text = await midreg(['stats', '--db', file]);
      assert.equal(text.code, 0, text.stderr);
      assert.match(text.stdout, new RegExp(`^bindings\\s+${LIVE_BINDINGS} live, ${LIVE_AORS} AoRs$`, 'm'));
      const json = await midreg(['stats', '--db', file, '--json']);
      assert.deepEqual(JSON.parse(json.stdout), { database: file, bindings: LIVE_BINDINGS, aors: LIVE_AORS });
    });

    it("asks the running service's admin API, with the token from --token or MIDREG_ADMIN_TOKEN", async () => {
      const token = 'cli-test-token-5d41402abc4b2a76';
      const metrics = new Metrics({ registrations: () => store.counts(Date.now()) });
      metrics.registerAnswered(200, 30);
      metrics.registerAnswered(401, 20);
      metrics.registerAnswered(401, 20);
      metrics.messageOutcome('delivered');
      metrics.drachtioConnected(true);
      const server = await startAdminServer({
        host: '127.0.0.1', port: 0, token, logger: captureLogger().logger,
        deps: { store: adminStore(sqlite), metrics, drachtioConnected: () => true },
      });
      cleanup.push(() => server.close());
      const url = `http://127.0.0.1:${server.port}`;

      const text = await midreg(['stats', '--url', url, '--token', token]);
      assert.equal(text.code, 0, text.stderr);
      assert.match(text.stdout, /^drachtio-server\s+connected$/m);
      assert.match(text.stdout, new RegExp(`^bindings\\s+${LIVE_BINDINGS} stored, ${LIVE_AORS} AoRs$`, 'm'));
      assert.match(text.stdout, /^REGISTER answered\s+2xx 1, 3xx 0, 4xx 2, 5xx 0, 6xx 0$/m);
      assert.match(text.stdout, /^MESSAGE\s+delivered 1, not_found 0/m);

      const json = await midreg(['stats', '--json'], { MIDREG_ADMIN_PORT: String(server.port), MIDREG_ADMIN_TOKEN: token });
      assert.equal(json.code, 0, json.stderr);
      const stats = JSON.parse(json.stdout) as Record<string, unknown>;
      assert.deepEqual(stats['register'], { '2xx': 1, '3xx': 0, '4xx': 2, '5xx': 0, '6xx': 0 });
      assert.equal(stats['bindings'], LIVE_BINDINGS);

      const wrong = await midreg(['stats', '--url', url, '--token', 'not-the-token']);
      assert.equal(wrong.code, 1);
      assert.match(wrong.stderr, /^midreg: the admin API at http:\/\/127\.0\.0\.1:\d+ refused the token \(401\)/);
      assert.ok(!wrong.stderr.includes('not-the-token'), 'the token is not echoed');
      const none = await midreg(['stats', '--url', url]);
      assert.equal(none.code, 1);
      assert.match(none.stderr, /requires a token \(401\): give --token or set MIDREG_ADMIN_TOKEN/);
    });

    it('fails clearly when the service cannot be reached or is not named', async () => {
      const metrics = new Metrics({ registrations: () => ({ bindings: 0, aors: 0 }) });
      const server = await startAdminServer({ host: '127.0.0.1', port: 0, logger: captureLogger().logger, deps: { store: adminStore(sqlite), metrics, drachtioConnected: () => true } });
      const port = server.port;
      await server.close();
      const down = await midreg(['stats', '--url', `http://127.0.0.1:${port}`]);
      assert.equal(down.code, 1);
      assert.match(down.stderr, new RegExp(`^midreg: cannot reach the midreg admin API at http://127\\.0\\.0\\.1:${port}: .*ECONNREFUSED`));

      const unnamed = await midreg(['stats']);
      assert.equal(unnamed.code, 1);
      assert.match(unnamed.stderr, /^midreg: no admin API to ask: give --url/);
    });
  });
});

describe('midreg reachability', () => {
  it("shows each binding's state and round trip from the running service (the file cannot know them)", async () => {
    const table = new ReachabilityTable();
    const now = Date.now();
    const [phone, other] = store.liveBindings('sip:alice@example.test', now);
    assert.ok(phone && other);
    table.record(phone, { kind: 'reachable', rttMs: 7 }, now);
    table.record(other, { kind: 'unreachable', why: 'timeout' }, now - 3000);
    const metrics = new Metrics({ registrations: () => store.counts(Date.now()) });
    const server = await startAdminServer({
      host: '127.0.0.1', port: 0, logger: captureLogger().logger,
      deps: { store: adminStore(sqlite), metrics, drachtioConnected: () => true, reachability: (b) => table.of(b), reachabilityTotals: () => table.counts() },
    });
    cleanup.push(() => server.close());
    const url = `http://127.0.0.1:${server.port}`;

    const one = await midreg(['reachability', 'alice@example.test', '--url', url]);
    assert.equal(one.code, 0, one.stderr);
    const lines = one.stdout.trimEnd().split('\n');
    assert.match(lines[0] ?? '', /^AOR\s+CONTACT\s+SOURCE\s+STATE\s+RTT\s+SINCE$/);
    assert.match(one.stdout, /^sip:alice@example\.test\s+sip:alice@198\.51\.100\.7:5062\s+udp:198\.51\.100\.7:5062\s+reachable\s+7ms\s+-$/m);
    assert.match(one.stdout, new RegExp(`\\sunreachable\\s+-\\s+${new Date(now - 3000).toISOString().replace(/\./g, '\\.')}$`, 'm'));
    assert.match(one.stdout, /^3 bindings: 1 reachable, 1 unreachable, 1 unknown$/m);

    const all = await midreg(['reachability', '--json'], { MIDREG_ADMIN_PORT: String(server.port) });
    assert.equal(all.code, 0, all.stderr);
    const bindings = JSON.parse(all.stdout) as Array<{ reachability: { state: string } | null }>;
    assert.equal(bindings.length, LIVE_BINDINGS, 'every page of the admin API');

    const stats = await midreg(['stats', '--url', url]);
    assert.equal(stats.code, 0, stats.stderr);
    assert.match(stats.stdout, new RegExp(`^reachability\\s+1 reachable, 1 unreachable, ${LIVE_BINDINGS - 2} unknown$`, 'm'));

    const nobody = await midreg(['reachability', 'nobody@example.test', '--url', url]);
    assert.equal(nobody.code, 1);
    assert.match(nobody.stderr, /^midreg: no live registration for sip:nobody@example\.test/);
    const unnamed = await midreg(['reachability']);
    assert.equal(unnamed.code, 1);
    assert.match(unnamed.stderr, /reachability is known only to the running service/);
  });
});

describe('midreg offline', () => {
  it('lists the queue per recipient and one recipient\'s messages (never their text) from the file; --purge goes through the service', async () => {
    const offline = sqlite.offline;
    for (const body of ['one', 'two']) {
      await offline.add({
        recipient: 'sip:dave@example.test', sender: 'sip:erin@example.test', fromHeader: '<sip:erin@example.test>;tag=e', toHeader: '<sip:dave@example.test>',
        contentType: 'text/plain', body, date: 'Mon, 01 Jan 2024 10:00:00 GMT', receivedAt: NOW, expiresAt: NOW + 60_000,
      });
    }
    const table = await midreg(['offline', '--db', file]);
    assert.equal(table.code, 0, table.stderr);
    assert.match(table.stdout, /^AOR\s+MESSAGES\s+BYTES\s+OLDEST\nsip:dave@example\.test\s+2\s+6\s/);
    const one = await midreg(['offline', 'Dave@Example.test', '--db', file, '--json']);
    const listed = JSON.parse(one.stdout) as Array<Record<string, unknown>>;
    assert.deepEqual(listed.map((m) => [m['from'], m['bytes']]), [['sip:erin@example.test', 3], ['sip:erin@example.test', 3]]);
    assert.ok(!one.stdout.includes('"one"'), 'never the text');
    const noService = await midreg(['offline', 'sip:dave@example.test', '--purge']);
    assert.equal(noService.code, 1);
    assert.match(noService.stderr, /^midreg: no admin API to ask/);
    assert.equal(await offline.purge('sip:dave@example.test'), 2);
  });
});

