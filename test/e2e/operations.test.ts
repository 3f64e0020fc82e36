// End to end: operating a running midreg — health, metrics, the CLI on its live database,
// what its logs leave out, and a SIGTERM in the middle of a REGISTER load.
import { strict as assert } from 'node:assert';
import { execFile } from 'node:child_process';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { after, before, describe, it } from 'node:test';
import { e2eSkipReason, freePort, logLines, REPO_ROOT, startDrachtio } from '../support/processes.js';
import { runSipp } from '../support/sipp.js';
import { DOMAIN_MODES, startStack, type Stack } from '../support/stack.js';
import { allLiveBindings } from '../support/replica.js';

const skip = e2eSkipReason();
if (skip) console.log(`# e2e operations suite SKIPPED: ${skip}`);
const run = promisify(execFile);
const cli = (args: string[], env: Record<string, string> = {}): Promise<{ stdout: string; stderr: string }> =>
  run(process.execPath, [join(REPO_ROOT, 'dist', 'app', 'cli.js'), ...args], { env: { PATH: process.env['PATH'] ?? '', ...env } });

async function health(port: number): Promise<{ status: number; body: { reasons?: string[] } }> {
  const res = await fetch(`http://127.0.0.1:${port}/health`);
  return { status: res.status, body: await res.json() as { reasons?: string[] } };
}

/** Where the CLI reads the stack's replica: its SQLite file, or its Redis (MIDREG_TEST_STORE=redis). */
const replicaArgs = (stack: Stack): string[] => (stack.redis ? ['--store', stack.redis.url] : ['--db', stack.dbFile]);

for (const mode of DOMAIN_MODES) describe(`operating a running midreg (domain: ${mode})`, { skip: skip ?? false, timeout: 180_000 }, () => {
  let stack: Stack;
  let adminPort: number;
  before(async () => {
    adminPort = await freePort();
    stack = await startStack({ domain: mode, env: { MIDREG_ADMIN_PORT: String(adminPort) } });
  });
  after(async () => { await stack?.stop(); });

  it('/health is 200 while drachtio-server is connected, 503 with the reason while it is gone, 200 again when it returns', async () => {
    assert.equal((await health(adminPort)).status, 200);
    const { sipPort, adminPort: drachtioAdmin } = stack.drachtio;
    await stack.drachtio.stop('SIGKILL');
    await stack.midreg.waitFor(/lost drachtio-server/, 5000);
    const down = await health(adminPort);
    assert.equal(down.status, 503);
    assert.ok(down.body.reasons?.some((r) => /drachtio/.test(r)), JSON.stringify(down.body));
    stack.drachtio = await startDrachtio(stack.workDir, { sipPort, adminPort: drachtioAdmin });
    const deadline = Date.now() + 15_000;
    while ((await health(adminPort)).status !== 200 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 200));
    assert.equal((await health(adminPort)).status, 200);
  });

  it('a registration shows in the CLI (read from the live database), the admin API, /stats and /metrics; no credentials in the logs', async () => {
    const port = await freePort();
    const reg = await runSipp({ scenario: 'register-auth', target: stack.sipTarget, localPort: port, vars: { domain: stack.domain.uriHost, user: 'olga', expires: '3600' }, timeoutSec: 10 });
    assert.equal(reg.code, 0);
    const table = await cli(['registrations', ...replicaArgs(stack)]);
    assert.match(table.stdout, new RegExp(`${stack.domain.aor('olga').replace(/\./g, '\\.')}.*sip:olga@127\\.0\\.0\\.1:${port}.*udp:127\\.0\\.0\\.1:${port}`));
    const json = JSON.parse((await cli(['registrations', stack.domain.aor('olga'), ...replicaArgs(stack), '--json'])).stdout) as Array<{ expires_in: number }>;
    assert.equal(json.length, 1);
    assert.ok((json[0]?.expires_in ?? 0) > 290 && (json[0]?.expires_in ?? 0) <= 300, 'the granted 300 s, not the requested 3600');
    const api = await (await fetch(`http://127.0.0.1:${adminPort}/registrations/${encodeURIComponent(stack.domain.aor('olga'))}`)).json() as { bindings: unknown[] };
    assert.equal(api.bindings.length, 1);
    const stats = JSON.parse((await cli(['stats', '--url', `http://127.0.0.1:${adminPort}`, '--json'])).stdout) as { register: Record<string, number>; bindings: number };
    assert.ok((stats.register['2xx'] ?? 0) >= 1 && (stats.register['4xx'] ?? 0) >= 1, JSON.stringify(stats));
    assert.ok(stats.bindings >= 1);
    const metrics = await (await fetch(`http://127.0.0.1:${adminPort}/metrics`)).text();
    assert.match(metrics, /midreg_register_relayed_total\{class="2xx"\} [1-9]/);
    assert.match(metrics, /midreg_drachtio_connected 1/);
    const output = stack.midreg.output();
    assert.ok(!/Digest|response=|nonce=|pw-olga/.test(output), 'no Authorization contents or passwords logged');
    assert.ok(logLines(stack.midreg, { message: 'REGISTER relayed', status: 200 }).length >= 1, 'JSON lines, one per decision');
  });
});

for (const mode of DOMAIN_MODES) describe(`SIGTERM under REGISTER load (domain: ${mode})`, { skip: skip ?? false, timeout: 180_000 }, () => {
  it('exits 0 after finishing what is in flight, and loses no binding the registrar granted', async () => {
    const stack = await startStack({ domain: mode, env: { MIDREG_RATE_LIMIT: '0' } });
    try {
      const load = runSipp({
        scenario: 'register-load', target: stack.sipTarget, localPort: await freePort(), vars: { domain: stack.domain.uriHost, user: 'open', expires: '300' },
        calls: 900, timeoutSec: 20, extraArgs: ['-r', '300', '-l', '200'],
      });
      await new Promise((r) => setTimeout(r, 1500));
      const code = await stack.midreg.stop('SIGTERM', 10_000);
      assert.equal(code, 0, 'clean exit');
      await load;
      const replica = new Set((await allLiveBindings(stack)).map((b) => `${b.aor} ${b.contact}`));
      assert.ok(replica.size > 100, `load reached the replica (${replica.size})`);
      // Every AoR the registrar holds from this load must be in the replica with the same contact.
      const missing: string[] = [];
      for (let i = 1; i <= 900; i++) {
        for (const b of await stack.kamailio?.lookup(stack.domain.aor(`open${i}`)) ?? []) {
          if (!replica.has(`${stack.domain.aor(`open${i}`)} ${b.contact}`)) missing.push(`open${i} ${b.contact}`);
        }
      }
      assert.deepEqual(missing, [], 'granted upstream but not in the replica');
    } finally {
      await stack.stop();
    }
  });
});
