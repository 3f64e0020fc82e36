// `npm run demo`: the whole chain on 127.0.0.1 in one command, for someone without a PBX at hand.
// Starts a Kamailio registrar (users alice and bob, password pw-<user>), drachtio-server, midreg
// and two real SIP clients (baresip), registers both through midreg with digest auth, sends a
// MESSAGE from alice to bob, prints what happened at each hop and the `midreg registrations`
// view, and stops everything it started. Exit 0 on success, 1 on failure (with the reason),
// 2 when something it needs is not installed. `npm run demo -- --ip` provisions the clients with
// midreg's IP address instead of the domain name `example.test`.
import { execFile } from 'node:child_process';
import { accessSync, constants } from 'node:fs';
import { join } from 'node:path';
import { BARESIP_BIN, hasBinary, startBaresip, type SipClient } from '../support/baresip.js';
import { drachtioBin, logLines, REPO_ROOT, SHARED_ENGINE } from '../support/processes.js';
import { startStack, type DomainMode, type Stack } from '../support/stack.js';

/** The whole demo, start to stop; it normally takes a few seconds. */
const DEADLINE_MS = 55_000;
const TEXT = 'Hello Bob, this is Alice, through midreg';

class Missing extends Error {}

function executable(path: string): boolean {
  try { accessSync(path, constants.X_OK); return true; } catch { return false; }
}

/** DRACHTIO_BIN, else the engine shipped next to the repository (../shared/engine/drachtio). */
function drachtioBinary(): string {
  const bin = drachtioBin();
  if (!bin) throw new Missing(`no drachtio-server: set DRACHTIO_BIN to a drachtio-server binary (${SHARED_ENGINE} does not exist; drachtio-server is on neither npm nor Debian: build it from its public source, see README "Tests")`);
  if (!executable(bin)) throw new Missing(`${bin} is not an executable file (set DRACHTIO_BIN to a drachtio-server binary)`);
  return bin;
}

function checkPrerequisites(): void {
  process.env['DRACHTIO_BIN'] = drachtioBinary();
  if (!hasBinary('kamailio', '-v')) throw new Missing('kamailio not found: install the Debian package kamailio');
  if (!hasBinary(BARESIP_BIN, '-h')) throw new Missing(`${BARESIP_BIN} not found: install the Debian package baresip-core`);
}

const say = (line = ''): void => { process.stdout.write(`${line}\n`); };
const indent = (text: string): string => text.trimEnd().split('\n').map((l) => `    ${l}`).join('\n');

/** What drachtio-server's log says it received and sent since `from`: direction, peer, first line. */
function drachtioWire(stack: Stack, from: number): string[] {
  const lines = stack.drachtio.output().slice(from).split('\n');
  const out: string[] = [];
  lines.forEach((line, i) => {
    const m = /(recv|send) \d+ bytes (from|to) (\w+)\/\[([^\]]+)\]:(\d+)/.exec(line);
    const first = lines[i + 1]?.trim();
    if (!m || !first) return;
    const who = Number(m[5]) === stack.kamailio?.port ? 'Kamailio' : `${m[4]}:${m[5]}`;
    out.push(`${m[1] === 'recv' ? '<-' : '->'} ${who.padEnd(15)} ${first}`);
  });
  return out;
}

function midregLines(stack: Stack, event: string, from: number): string[] {
  return logLines(stack.midreg, { event }).slice(from).map((l) => {
    const fields = ['aor', 'status', 'decision', 'outcome', 'to', 'bindings']
      .filter((k) => l[k] !== undefined)
      .map((k) => `${k}=${typeof l[k] === 'string' ? String(l[k]) : JSON.stringify(l[k])}`);
    return `${String(l['message'])}: ${fields.join(' ')}`;
  });
}

function cli(args: string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(process.execPath, [join(REPO_ROOT, 'dist', 'app', 'cli.js'), ...args], { timeout: 10_000, encoding: 'utf8' }, (err, stdout, stderr) => {
      if (err) reject(new Error(`midreg ${args.join(' ')} failed: ${err.message} ${stderr}`));
      else resolve(stdout);
    });
  });
}

async function demo(mode: DomainMode, started: { stack?: Stack; clients: SipClient[] }): Promise<void> {
  say('== 1. starting the chain on 127.0.0.1');
  const stack = await startStack({ domain: mode });
  started.stack = stack;
  const host = stack.domain.uriHost;
  say(`   Kamailio (main registrar, digest auth, users alice/pw-alice and bob/pw-bob)  sip:127.0.0.1:${stack.kamailio?.port}`);
  say(`   drachtio-server (SIP)                                                       sip:${stack.sipTarget}`);
  say(`   midreg (replica ${stack.dbFile})`);
  say(`   SIP domain: ${host}${mode === 'name' ? ` (the clients use ${stack.sipTarget} as outbound proxy)` : ' (midreg\'s own address, as a phone provisioned by IP)'}`);

  say();
  say('== 2. two baresip clients register through midreg');
  const wireFrom = stack.drachtio.output().length;
  const client = (user: string, peer: string): Promise<SipClient> => startBaresip({
    user, password: `pw-${user}`, domain: host, expiresSec: 120,
    ...(mode === 'name' ? { outboundProxy: stack.sipTarget } : {}),
    contacts: [`sip:${peer}@${host}`], dir: join(stack.workDir, `ua-${user}`),
  });
  // One after the other, so the hops below read in order.
  const alice = await client('alice', 'bob');
  started.clients.push(alice);
  await alice.registered(10_000);
  const bob = await client('bob', 'alice');
  started.clients.push(bob);
  await bob.registered(10_000);
  for (const ua of [alice, bob]) {
    const line = /^\S+: \{\d+\/UDP\/v4\} 200 [^\n]*/m.exec(ua.output())?.[0] ?? '';
    say(`   ${ua.user} (baresip on 127.0.0.1:${ua.sipPort}) says: ${line}`);
  }
  say('   drachtio-server (its log: what it received and sent):');
  say(indent(drachtioWire(stack, wireFrom).join('\n')));
  say('   midreg (its JSON log):');
  say(indent(midregLines(stack, 'register', 0).join('\n')));
  say('   Kamailio (kamcmd ul.lookup):');
  for (const user of ['alice', 'bob']) {
    for (const b of await stack.kamailio?.lookup(`${user}@${stack.domain.host}`) ?? []) {
      say(`    ${user}@${stack.domain.host}: ${b.contact} expires in ${b.expires} s, Path ${b.path ?? '(none)'}`);
    }
  }

  say();
  say(`== 3. alice sends a MESSAGE to sip:bob@${host}: "${TEXT}"`);
  const messageWireFrom = stack.drachtio.output().length;
  await alice.sendMessage(`sip:bob@${host}`, TEXT);
  const { from } = await bob.shownMessage(TEXT, 10_000);
  // bob's client shows the text before its 200 reaches midreg, which logs the delivery and
  // then has drachtio-server send the 200 on to alice: wait for both, bounded.
  await stack.midreg.waitFor(/"outcome":"delivered"/, 5000);
  await stack.drachtio.waitFor(new RegExp(`send \\d+ bytes to udp/\\[127\\.0\\.0\\.1\\]:${alice.sipPort} [^\\n]*\\nSIP/2\\.0 200[^\\n]*\\n(?:[^\\n]*\\n){0,12}?CSeq: \\d+ MESSAGE`), 5000);
  say('   drachtio-server:');
  say(indent(drachtioWire(stack, messageWireFrom).join('\n')));
  say('   midreg (delivered from its replica, not through Kamailio):');
  say(indent(midregLines(stack, 'message', 0).join('\n')));
  say(`   bob's baresip shows: ${from}: "${TEXT}"`);

  say();
  say(`== 4. node dist/app/cli.js registrations --db ${stack.dbFile}`);
  say(indent(await cli(['registrations', '--db', stack.dbFile])));
}

async function main(): Promise<number> {
  try {
    checkPrerequisites();
  } catch (err) {
    if (!(err instanceof Missing)) throw err;
    process.stderr.write(`demo: ${err.message}\n`);
    return 2;
  }
  const mode: DomainMode = process.argv.includes('--ip') ? 'ip' : 'name';
  const started: { stack?: Stack; clients: SipClient[] } = { clients: [] };
  // Every step has its own bounded wait; this bounds the whole, stops included. On expiry the
  // exit hook of test/support/children.ts kills whatever is still running.
  const deadline = setTimeout(() => {
    process.stderr.write(`demo FAILED: not done within ${DEADLINE_MS / 1000} s\n`);
    process.exit(1);
  }, DEADLINE_MS);
  let code = 0;
  try {
    await demo(mode, started);
  } catch (err) {
    process.stderr.write(`demo FAILED: ${err instanceof Error ? err.message : String(err)}\n`);
    code = 1;
  } finally {
    say();
    say('== 5. stopping everything the demo started');
    for (const c of started.clients) await c.stop();
    await started.stack?.stop();
    clearTimeout(deadline);
  }
  if (code === 0) say('demo OK: both clients registered through midreg, and bob\'s client showed alice\'s MESSAGE');
  return code;
}

process.exitCode = await main();
