// End to end: what midreg does when its dependencies fail, and that it recovers by itself.
import { strict as assert } from 'node:assert';
import { spawn, spawnSync } from 'node:child_process';
import { mkdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { startKamailio } from '../support/kamailio.js';
import { e2eSkipReason, freePort, logLines, startDrachtio } from '../support/processes.js';
import { receivedResponses, runSipp, type SippResult } from '../support/sipp.js';
import { DOMAIN_MODES, startStack, type Stack } from '../support/stack.js';
import { allLiveBindingsInFile } from '../support/replica.js';

const skip = e2eSkipReason();
if (skip) console.log(`# e2e failures suite SKIPPED: ${skip}`);

async function register(stack: Stack, user: string, expires = '120'): Promise<SippResult & { localPort: number }> {
  const localPort = await freePort();
  const result = await runSipp({ scenario: 'register-auth', target: stack.sipTarget, localPort, vars: { domain: stack.domain.uriHost, user, expires }, timeoutSec: 10 });
  return Object.assign(result, { localPort });
}
const finals = (r: SippResult): number[] => receivedResponses(r.messages).map((x) => x.status).filter((s) => s >= 200);

function replicaContacts(dbFile: string, aor?: string): string[] {
  const all = allLiveBindingsInFile(dbFile).filter((b) => aor === undefined || b.aor === aor);
  return all.map((b) => `${b.aor} ${b.contact}`).sort();
}

for (const mode of DOMAIN_MODES) describe(`dependency failures, end to end (domain: ${mode})`, { skip: skip ?? false, timeout: 180_000 }, () => {
  let stack: Stack;
  before(async () => { stack = await startStack({ domain: mode }); });
  after(async () => { await stack?.stop(); });

  it('drachtio-server restarts: midreg reconnects and serves again without a restart of its own', async () => {
    assert.deepEqual(finals(await register(stack, 'rita')), [401, 200]);
    const { sipPort, adminPort } = stack.drachtio;
    await stack.drachtio.stop('SIGKILL');
    await stack.midreg.waitFor(/lost drachtio-server; reconnecting/, 5000);
    stack.drachtio = await startDrachtio(stack.workDir, { sipPort, adminPort });
    const connects = (): number => logLines(stack.midreg, { message: 'connected to drachtio-server' }).length;
    const deadline = Date.now() + 15_000;
    while (connects() < 2 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
    assert.equal(connects(), 2, 'reconnected');
    assert.deepEqual(finals(await register(stack, 'rita')), [401, 200]);
    assert.equal(stack.midreg.child.exitCode, null);
  });

  it('the registrar goes down and comes back: UAs are answered in bounded time meanwhile, and service resumes by itself', async () => {
    const kamailio = stack.kamailio;
    assert.ok(kamailio);
    const before = replicaContacts(stack.dbFile, stack.domain.aor('rita'));
    await kamailio.stop();
    const started = Date.now();
    const down = await register(stack, 'rita');
    assert.ok([408, 503].includes(finals(down)[0] ?? 0), `answered ${finals(down).join(',')}`);
    assert.ok(Date.now() - started < 5000);
    assert.deepEqual(replicaContacts(stack.dbFile, stack.domain.aor('rita')), before, 'replica untouched while the registrar is down');
    stack.kamailio = await startKamailio({ port: kamailio.port, workDir: join(stack.workDir, 'k2') });
    assert.deepEqual(finals(await register(stack, 'rita')), [401, 200]);
  });
});

const canMount = (): boolean => {
  if (process.getuid?.() !== 0) return false;
  const probe = `/tmp/midreg-mount-probe-${process.pid}`;
  mkdirSync(probe, { recursive: true });
  const ok = spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=64k', 'tmpfs', probe]).status === 0;
  if (ok) spawnSync('umount', [probe]);
  rmSync(probe, { recursive: true, force: true });
  return ok;
};
const mountSkip = skip ?? (canMount() ? undefined : 'needs root and tmpfs mounts (to fill or write-protect the database\'s filesystem)');
if (!skip && mountSkip) console.log(`# e2e database-failure tests SKIPPED: ${mountSkip}`);

for (const mode of DOMAIN_MODES) describe(`database failures: REGISTERs still relayed, replica resynchronised afterwards (domain: ${mode})`, { skip: mountSkip ?? false, timeout: 180_000 }, () => {
  let stack: Stack;
  let mountPoint: string;
  before(async () => {
    mountPoint = `/tmp/midreg-db-${process.pid}`;
    mkdirSync(mountPoint, { recursive: true });
    assert.equal(spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=2m', 'tmpfs', mountPoint]).status, 0);
    stack = await startStack({ domain: mode, env: { MIDREG_DB: join(mountPoint, 'midreg.sqlite') } });
  });
  after(async () => {
    await stack?.stop();
    spawnSync('umount', [mountPoint]);
    rmSync(mountPoint, { recursive: true, force: true });
  });
  const db = (): string => join(mountPoint, 'midreg.sqlite');

  it('disk full: the UA still gets its 200, the error is logged, and the next 2xx after space returns resyncs the AoR', async () => {
    assert.deepEqual(finals(await register(stack, 'sam')), [401, 200]);
    const filler = join(mountPoint, 'filler');
    spawnSync('dd', ['if=/dev/zero', `of=${filler}`, 'bs=4k', 'count=1000'], { stdio: 'ignore' });
    const failed = await register(stack, 'tomtom');
    assert.deepEqual(finals(failed), [401, 200], 'the UA keeps service');
    await stack.midreg.waitFor(/replica not written/, 3000);
    assert.deepEqual(replicaContacts(db(), stack.domain.aor('tomtom')), []);
    rmSync(filler);
    await new Promise((r) => setTimeout(r, 1100));
    const again = await register(stack, 'tomtom');
    assert.deepEqual(finals(again), [401, 200]);
    assert.equal(replicaContacts(db(), stack.domain.aor('tomtom')).length, 2, 'resynchronised: both devices the registrar lists');
    assert.equal(replicaContacts(db(), stack.domain.aor('sam')).length, 1, 'nothing lost');
  });

  it('a database held locked by another process: relayed regardless, without stalling, and the replica catches up', async () => {
    const locker = spawn('sqlite3', [db()], { stdio: ['pipe', 'ignore', 'ignore'] });
    locker.stdin.write('BEGIN EXCLUSIVE; INSERT INTO binding (aor, contact, expires_at, registered_at, updated_at) VALUES (\'lock\', \'lock\', 0, 0, 0);\n');
    await new Promise((r) => setTimeout(r, 300));
    try {
      const started = Date.now();
      assert.deepEqual(finals(await register(stack, 'uma')), [401, 200]);
      assert.ok(Date.now() - started < 3000, 'a locked database does not stall SIP handling');
      assert.deepEqual(replicaContacts(db(), stack.domain.aor('uma')), []);
    } finally {
      locker.stdin.end('ROLLBACK;\n');
      await new Promise((r) => locker.once('exit', r));
    }
    await new Promise((r) => setTimeout(r, 1100));
    assert.deepEqual(finals(await register(stack, 'uma')), [401, 200]);
    assert.equal(replicaContacts(db(), stack.domain.aor('uma')).length, 2, 'both devices, once the lock is gone');
  });

  it('a read-only database at start: midreg starts, says so, relays REGISTERs, and writes again once the filesystem is writable', async () => {
    await stack.midreg.stop('SIGTERM');
    assert.equal(spawnSync('mount', ['-o', 'remount,ro', mountPoint]).status, 0, 'remount read-only');
    try {
      await stack.restartMidreg({ MIDREG_PURGE_INTERVAL_SEC: '1' });
      await stack.midreg.waitFor(/running with a read-only replica/, 3000);
      assert.deepEqual(finals(await register(stack, 'vic')), [401, 200], 'the UA keeps service');
      assert.deepEqual(replicaContacts(db(), stack.domain.aor('vic')), []);
      assert.equal(replicaContacts(db(), stack.domain.aor('sam')).length, 1, 'the existing replica is still readable');
    } finally {
      assert.equal(spawnSync('mount', ['-o', 'remount,rw', mountPoint]).status, 0);
    }
    await stack.midreg.waitFor(/database writable again/, 5000);
    await new Promise((r) => setTimeout(r, 1100)); // the pause after vic's failed write
    assert.deepEqual(finals(await register(stack, 'vic')), [401, 200]);
    assert.equal(replicaContacts(db(), stack.domain.aor('vic')).length, 2, 'resynchronised from the next 2xx');
    assert.ok(logLines(stack.midreg, { message: 'REGISTER relayed but replica not written' }).length >= 1);
  });
});

for (const mode of DOMAIN_MODES) describe(`kill -9 under REGISTER load (domain: ${mode})`, { skip: skip ?? false, timeout: 180_000 }, () => {
  it('after restart every binding in SQLite is one the registrar granted, and the file is intact', async () => {
    const stack = await startStack({ domain: mode, env: { MIDREG_RATE_LIMIT: '0' } });
    try {
      const load = runSipp({
        scenario: 'register-load', target: stack.sipTarget, localPort: await freePort(), vars: { domain: stack.domain.uriHost, user: 'open', expires: '300' },
        calls: 900, timeoutSec: 20, extraArgs: ['-r', '300', '-l', '200'],
      });
      await new Promise((r) => setTimeout(r, 2000));
      await stack.midreg.stop('SIGKILL');
      await load;
      await stack.restartMidreg();
      const integrity = spawnSync('sqlite3', [stack.dbFile, 'PRAGMA integrity_check;'], { encoding: 'utf8' });
      assert.equal(integrity.stdout.trim(), 'ok');
      const replica = replicaContacts(stack.dbFile);
      assert.ok(replica.length > 100, `load reached the replica (${replica.length} bindings)`);
      // Kamailio's ul.dump gives up on this many AoRs, so each replica AoR is looked up there.
      const notGranted: string[] = [];
      for (const entry of replica) {
        const [aor, contact] = entry.split(' ');
        const upstream = await stack.kamailio?.lookup(aor ?? '') ?? [];
        if (!upstream.some((b) => b.contact === contact)) notGranted.push(entry);
      }
      assert.deepEqual(notGranted, [], 'no binding the registrar did not grant');
    } finally {
      await stack.stop();
    }
  });
});
