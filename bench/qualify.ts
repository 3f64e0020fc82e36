#!/usr/bin/env node
// `npm run bench:qualify`: what qualify (MIDREG_QUALIFY_INTERVAL_SEC, README "Reachability") costs
// (issue 19, "Bench"). Everything on 127.0.0.1, bounded in count and time:
//
//   1. a replica of N bindings (default 100,000, one per AoR `openqN`), written straight into
//      midreg's SQLite file before it starts, every contact at one sipp UAS that answers OPTIONS
//      (bench/sipp/uas-qualify.xml); the MESSAGE receivers at a second one of their own, so the
//      MESSAGE load and the pings do not queue behind each other in one sipp; Kamailio as the
//      registrar.
//   2. qualify alone: midreg with MIDREG_QUALIFY_INTERVAL_SEC=I (default 60 s) pings the N
//      bindings, N/I OPTIONS per second (≈1,667/s for 100,000 at 60 s). Measured over a window
//      once the round is under way: pings sent, answered, timed out; node and drachtio-server CPU
//      µs per OPTIONS.
//   3. the REGISTER and MESSAGE maxima with qualify running, then with qualify off (midreg
//      restarted on the same replica): the same rising rates, the bench's pass rule (0 failures,
//      0 retransmissions, ≥ 95 % of offered); the issue's target is "≤ 10 % lower with qualify".
//
// Saves bench/results/<timestamp>-qualify.json and .md.
//
//   node dist/bench/qualify.js [--bindings 100000] [--interval 60] [--window 20] [--rates 250,500,750,1000,1250,1500,1750,2000,2250,2500] [--step 5] [--keep]
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import type { Binding } from '../lib/registrar/registration.js';
import { LocationStore } from '../lib/store/location-store.js';
import { cpuDelta, machineBusyCpu, probeProcess, sampleCpu, waitForQuiet, type CpuProbe } from './cpu.js';
import { describeFailure, runLoad, startUas, type LoadResult } from './load.js';
import {
  BENCH_DIR, delay, finishRun, freePort, KAMAILIO_CFG, environmentLine, resultsHeader, runBench, type Service, startDrachtio, startKamailio, startMidreg, startRun,
} from './procs.js';
import { fmt1, fmtInt, markdownTable, textTable, type Table } from './report.js';

const SIPP_DIR = join(BENCH_DIR, 'sipp');
const DOMAIN = 'example.test';
/** MESSAGE receivers (openrcvN) and the sender (opensender1), also pre-filled. */
const RECEIVERS = 100;

const HELP = `usage: node dist/bench/qualify.js [options]   (npm run bench:qualify -- [options])
  --bindings <n>  bindings in the replica, all qualified (default 100000)
  --interval <s>  MIDREG_QUALIFY_INTERVAL_SEC (default 60)
  --window <s>    how long qualify alone is measured (default 20)
  --rates <list>  REGISTER/MESSAGE per second tried, ascending; a sweep stops at its first failed rate (default 250,500,750,1000,1250,1500,1750,2000,2250,2500)
  --step <s>      seconds per sweep step (default 5)
  --keep          keep the work dir (logs, sipp statistics)
  --help`;

interface Options { bindings: number; interval: number; window: number; rates: number[]; step: number; keep: boolean }

function parseOptions(argv: string[]): Options {
  const { values } = parseArgs({
    args: argv,
    options: {
      bindings: { type: 'string', default: '100000' },
      interval: { type: 'string', default: '60' },
      window: { type: 'string', default: '20' },
      rates: { type: 'string', default: '250,500,750,1000,1250,1500,1750,2000,2250,2500' },
      step: { type: 'string', default: '5' },
      keep: { type: 'boolean', default: false },
      help: { type: 'boolean', default: false },
    },
    strict: true,
  });
  if (values.help) { process.stdout.write(`${HELP}\n`); process.exit(0); }
  const int = (name: string, raw: string, max: number): number => {
    const n = Number(raw);
    if (!Number.isInteger(n) || n <= 0 || n > max) throw new Error(`--${name}: "${raw}" is not an integer in 1..${max}`);
    return n;
  };
  const rates = values.rates.split(',').map(Number);
  if (rates.some((r) => !Number.isInteger(r) || r <= 0 || r > 20_000)) throw new Error(`--rates: "${values.rates}" is not a list of positive integers`);
  return {
    bindings: int('bindings', values.bindings, 1_000_000), interval: int('interval', values.interval, 3600),
    window: int('window', values.window, 300), rates: rates.sort((a, b) => a - b), step: int('step', values.step, 60), keep: values.keep,
  };
}

function binding(aor: string, user: string, port: number, now: number): Binding {
  return {
    aor, contact: `sip:${user}@127.0.0.1:${port}`, expiresAt: now + 3 * 3600_000, upstreamExpiresAt: null, lapsedAt: null,
    q: null, instance: null, regId: null, path: null, callId: `${user}-bench`, cseq: 1, userAgent: 'bench',
    source: { address: '127.0.0.1', port, transport: 'udp' }, insertion: null, registeredAt: now, updatedAt: now,
  };
}

/** The replica midreg starts with: N qualified phones, the MESSAGE receivers and the sender. */
function prefill(file: string, n: number, uasPort: number, receiverPort: number, senderPort: number): void {
  const store = new LocationStore(file);
  const now = Date.now();
  try {
    for (let i = 1; i <= n; i++) {
      const user = `openq${i}`;
      const aor = `sip:${user}@${DOMAIN}`;
      store.replaceAor(aor, [binding(aor, user, uasPort, now)]);
    }
    for (let i = 1; i <= RECEIVERS; i++) {
      const aor = `sip:openrcv${i}@${DOMAIN}`;
      store.replaceAor(aor, [binding(aor, `openrcv${i}`, receiverPort, now)]);
    }
    store.replaceAor(`sip:opensender1@${DOMAIN}`, [binding(`sip:opensender1@${DOMAIN}`, 'opensender1', senderPort, now)]);
  } finally {
    store.close();
  }
}

/** UDP datagrams the kernel dropped for want of receive buffer, host-wide (/proc/net/snmp Udp RcvbufErrors). */
function udpReceiveDrops(): number {
  const lines = readFileSync('/proc/net/snmp', 'utf8').split('\n').filter((l) => l.startsWith('Udp:'));
  const names = lines[0]?.split(/\s+/) ?? [];
  const values = lines[1]?.split(/\s+/) ?? [];
  const at = names.indexOf('RcvbufErrors');
  return at > 0 ? Number(values[at] ?? 0) : 0;
}

/** A counter or gauge from midreg's /metrics (summed over its series matching `labels`). */
async function metric(adminPort: number, name: string, labels = ''): Promise<number> {
  const text = await (await fetch(`http://127.0.0.1:${adminPort}/metrics`, { signal: AbortSignal.timeout(5000) })).text();
  let sum = 0;
  for (const line of text.split('\n')) {
    if (!line.startsWith(name)) continue;
    const m = /^(\S+?)(\{[^}]*\})?\s+(\S+)$/.exec(line);
    if (!m || m[1] !== name || (labels && !(m[2] ?? '').includes(labels))) continue;
    sum += Number(m[3]);
  }
  return sum;
}

interface Step { kind: 'register' | 'message'; qualify: boolean; rate: number; pass: boolean; why: string[]; achieved: number; p99Ms: number; otherPct: number }

async function main(): Promise<void> {
  const run = startRun<Options>('qualify', { parse: parseOptions, help: HELP, workPrefix: 'mrbq-', stampSuffix: '-qualify' });
  const { opts, stamp, workDir, lines, log, meta } = run;
  log(`midreg qualify bench ${stamp}: ${environmentLine(meta)}`);
  const offered = opts.bindings / opts.interval;
  log(`options: ${fmtInt(opts.bindings)} bindings qualified every ${opts.interval} s (${fmtInt(offered)} OPTIONS/s), window ${opts.window} s; sweep ${opts.rates.join(', ')}/s × ${opts.step} s; work dir ${workDir}`);
  log('The machine may be shared: every figure below is noisy; "other" is CPU used outside the measured processes.');

  const t0 = Date.now();
  const clock = (): string => `[${((Date.now() - t0) / 1000).toFixed(0)} s]`;
  const uasPort = await freePort();
  const receiverPort = await freePort();
  const senderPort = await freePort();
  const dbFile = join(workDir, 'midreg.sqlite');
  prefill(dbFile, opts.bindings, uasPort, receiverPort, senderPort);
  log(`${clock()} replica pre-filled: ${fmtInt(opts.bindings + RECEIVERS + 1)} bindings`);

  const totalBudgetSec = 60 + opts.window + 2 * 2 * opts.rates.length * (opts.step + 6) + 120;
  const uas = startUas({ scenario: join(SIPP_DIR, 'uas-qualify.xml'), localPort: uasPort, timeoutSec: totalBudgetSec, dir: join(workDir, 'uas') });
  const receivers = startUas({ scenario: join(SIPP_DIR, 'uas-qualify.xml'), localPort: receiverPort, timeoutSec: totalBudgetSec, dir: join(workDir, 'receivers') });
  await uas.ready;
  await receivers.ready;
  mkdirSync(join(workDir, 'reg'), { recursive: true });
  const registrar = await startKamailio(join(workDir, 'reg'), { cfg: KAMAILIO_CFG, name: 'kamailio-registrar', tcp: true });
  const drachtio = await startDrachtio(workDir);
  const adminPort = await freePort();
  const env = (qualify: boolean): Record<string, string> => ({
    DRACHTIO_HOST: '127.0.0.1', DRACHTIO_PORT: String(drachtio.adminPort), DRACHTIO_SECRET: drachtio.secret,
    MIDREG_UPSTREAM: `sip:127.0.0.1:${registrar.port};transport=tcp`, MIDREG_DOMAINS: DOMAIN, MIDREG_DB: dbFile,
    MIDREG_UPSTREAM_TIMEOUT_MS: '4000', MIDREG_LOG_FORMAT: 'json', MIDREG_LOG_LEVEL: 'info', MIDREG_TRUSTED_PEERS: '127.0.0.1',
    MIDREG_ADMIN_PORT: String(adminPort),
    MIDREG_QUALIFY_INTERVAL_SEC: qualify ? String(opts.interval) : '0',
  });
  let app: Service | undefined;
  const steps: Step[] = [];
  let qualifyAlone: Record<string, number> | undefined;
  let error: string | undefined;
  const maxima: Record<string, number> = {};
  try {
    for (const qualify of [true, false]) {
      app = await startMidreg({ workDir, env: env(qualify), logName: `midreg-${qualify ? 'qualify' : 'off'}.log` });
      const probes: CpuProbe[] = [probeProcess('node', app.pid), probeProcess('drachtio', drachtio.pid)];
      if (qualify) {
        // Let the round settle (its first ticks, the SQLite cache warming), then measure.
        await delay(5000);
        const sent0 = await metric(adminPort, 'midreg_qualify_sent_total');
        const answered0 = await metric(adminPort, 'midreg_qualify_pings_total', 'result="answered"');
        const timeout0 = await metric(adminPort, 'midreg_qualify_pings_total', 'result="timeout"');
        const failed0 = await metric(adminPort, 'midreg_qualify_pings_total', 'result="failed"');
        const before = sampleCpu(probes);
        const machineBefore = machineBusyCpu();
        const dropsBefore = udpReceiveDrops();
        const started = Date.now();
        await delay(opts.window * 1000);
        const wallSec = (Date.now() - started) / 1000;
        const cpu = cpuDelta(before, sampleCpu(probes));
        const machineSec = machineBusyCpu() - machineBefore;
        const udpDrops = udpReceiveDrops() - dropsBefore;
        const sent = (await metric(adminPort, 'midreg_qualify_sent_total')) - sent0;
        const answered = (await metric(adminPort, 'midreg_qualify_pings_total', 'result="answered"')) - answered0;
        const timedOut = (await metric(adminPort, 'midreg_qualify_pings_total', 'result="timeout"')) - timeout0;
        const failed = (await metric(adminPort, 'midreg_qualify_pings_total', 'result="failed"')) - failed0;
        const ours = (cpu['node'] ?? 0) + (cpu['drachtio'] ?? 0);
        qualifyAlone = {
          wallSec, sent, answered, timedOut, failed, sentPerSec: sent / wallSec, answeredPerSec: answered / wallSec,
          nodeUsPerOptions: sent > 0 ? ((cpu['node'] ?? 0) * 1e6) / sent : 0,
          drachtioUsPerOptions: sent > 0 ? ((cpu['drachtio'] ?? 0) * 1e6) / sent : 0,
          nodePct: ((cpu['node'] ?? 0) / wallSec) * 100, drachtioPct: ((cpu['drachtio'] ?? 0) / wallSec) * 100,
          otherPct: Math.max(0, ((machineSec - ours) / wallSec) * 100),
          udpDrops,
        };
        log(`${clock()} qualify alone over ${fmt1(wallSec)} s: ${fmtInt(qualifyAlone['sentPerSec'] ?? 0)} OPTIONS/s sent (target ${fmtInt(offered)}), ${fmtInt(answered)} answered, ${fmtInt(timedOut)} timed out, ${fmtInt(failed)} failed, ${fmtInt(udpDrops)} UDP datagrams dropped host-wide (RcvbufErrors); `
          + `node ${fmt1(qualifyAlone['nodeUsPerOptions'] ?? 0)} µs + drachtio ${fmt1(qualifyAlone['drachtioUsPerOptions'] ?? 0)} µs per OPTIONS (node ${fmt1(qualifyAlone['nodePct'] ?? 0)} %, drachtio ${fmt1(qualifyAlone['drachtioPct'] ?? 0)} % of a core; other ${fmt1(qualifyAlone['otherPct'] ?? 0)} %)`);
      }
      for (const kind of ['register', 'message'] as const) {
        let max = 0;
        for (const rate of opts.rates) {
          let step = await sweepStep(kind, qualify, rate);
          if (!step.pass) step = await sweepStep(kind, qualify, rate); // one more try: the machine is shared
          if (!step.pass) break;
          max = rate;
        }
        maxima[`${kind}-${qualify ? 'qualify' : 'off'}`] = max;
        log(`${clock()} ${kind.toUpperCase()} maximum with qualify ${qualify ? 'on' : 'off'}: ${max > 0 ? `${fmtInt(max)}/s` : 'below the lowest rate'}${max === opts.rates[opts.rates.length - 1] ? ' (the highest rate tried)' : ''}`);
      }
      await app.stop(10_000);
      app = undefined;
    }
  } catch (err) {
    error = err instanceof Error ? err.message : String(err);
    log(`error: ${error}`);
  } finally {
    await app?.stop(10_000);
    await uas.finish(0);
    await receivers.finish(0);
    await drachtio.stop();
    await registrar.stop();
  }

  async function sweepStep(kind: 'register' | 'message', qualify: boolean, rate: number): Promise<Step> {
    const otherBefore = await waitForQuiet(5000);
    const calls = Math.max(1, Math.round(rate * opts.step));
    const dir = join(workDir, `${qualify ? 'q' : 'o'}-${kind}-${rate}-${Date.now()}`);
    const common = { target: `127.0.0.1:${drachtio.sipPort}`, rate, calls, limit: Math.max(50, rate), dir, recvTimeoutMs: 2000 };
    const load: LoadResult = kind === 'register'
      ? await runLoad({ ...common, scenario: join(SIPP_DIR, 'register.xml'), localPort: await freePort(), vars: { prefix: `openbq${qualify ? 'q' : 'o'}${rate}x`, domain: DOMAIN, expires: '300' } })
      : await runLoad({ ...common, scenario: join(SIPP_DIR, 'message.xml'), localPort: senderPort, vars: { from: 'opensender1', domain: DOMAIN }, injection: receiversFile() });
    const why = describeFailure(load);
    const step: Step = { kind, qualify, rate, pass: why.length === 0, why, achieved: load.achievedRate, p99Ms: load.responseMs.p99, otherPct: otherBefore };
    steps.push(step);
    log(`  ${kind.padEnd(8)} qualify ${qualify ? 'on ' : 'off'} ${String(rate).padStart(5)}/s: ${step.pass ? 'ok  ' : 'FAIL'} ${fmtInt(load.achievedRate)}/s p99 ${Math.round(load.responseMs.p99)} ms${why.length > 0 ? ` — ${why.join('; ')}` : ''}`);
    await delay(400);
    return step;
  }

  function receiversFile(): string {
    const file = join(workDir, 'receivers.csv');
    if (!existsSync(file)) writeFileSync(file, `SEQUENTIAL\n${Array.from({ length: RECEIVERS }, (_, i) => `openrcv${i + 1};`).join('\n')}\n`);
    return file;
  }

  const durationSec = (Date.now() - t0) / 1000;
  const ratio = (kind: string): string => {
    const on = maxima[`${kind}-qualify`];
    const off = maxima[`${kind}-off`];
    if (on === undefined || off === undefined || off === 0) return 'n/a';
    // Below the lowest rate tried: all that is known is that it is lower than that.
    if (on === 0) return `more than ${fmt1((1 - (opts.rates[0] ?? 0) / off) * 100)} % lower`;
    return `${fmt1((1 - on / off) * 100)} % lower`;
  };
  const tables: Table[] = [];
  if (qualifyAlone) {
    tables.push({
      title: `Qualify alone: ${fmtInt(opts.bindings)} bindings every ${opts.interval} s`,
      head: ['OPTIONS/s sent', 'target', 'answered', 'timed out', 'failed', 'UDP drops', 'node µs/OPTIONS', 'drachtio µs/OPTIONS', 'node % core', 'drachtio % core', 'other %'],
      rows: [[fmtInt(qualifyAlone['sentPerSec'] ?? 0), fmtInt(offered), fmtInt(qualifyAlone['answered'] ?? 0), fmtInt(qualifyAlone['timedOut'] ?? 0), fmtInt(qualifyAlone['failed'] ?? 0), fmtInt(qualifyAlone['udpDrops'] ?? 0),
        fmt1(qualifyAlone['nodeUsPerOptions'] ?? 0), fmt1(qualifyAlone['drachtioUsPerOptions'] ?? 0), fmt1(qualifyAlone['nodePct'] ?? 0), fmt1(qualifyAlone['drachtioPct'] ?? 0), fmt1(qualifyAlone['otherPct'] ?? 0)]],
    });
  }
  tables.push({
    title: 'Maxima (0 failures, 0 retransmissions, ≥ 95 % of offered); issue 19 target: ≤ 10 % lower with qualify',
    head: ['', 'qualify on', 'qualify off', 'effect'],
    rows: (['register', 'message'] as const).map((k) => [k.toUpperCase(), `${fmtInt(maxima[`${k}-qualify`] ?? 0)}/s`, `${fmtInt(maxima[`${k}-off`] ?? 0)}/s`, ratio(k)]),
  });
  log('');
  for (const t of tables) { for (const l of textTable(t)) log(l); log(''); }
  log(`bench finished in ${fmt1(durationSec / 60)} min${error ? ` with an error: ${error}` : ''}`);

  finishRun(run, {
    keep: opts.keep,
    error,
    json: { meta: { ...meta, bench: 'qualify', durationSec, workDir: opts.keep ? workDir : undefined }, qualifyAlone, maxima, steps, error },
    markdown: [
      ...resultsHeader(run, 'midreg qualify benchmark', 'qualify'),
      `Options: ${fmtInt(opts.bindings)} bindings, interval ${opts.interval} s, window ${opts.window} s; sweep ${opts.rates.map(fmtInt).join(', ')}/s × ${opts.step} s. Took ${fmt1(durationSec / 60)} min. The machine may have been shared with other work: figures are noisy.`,
      '',
      ...tables.flatMap(markdownTable),
      ...(error ? ['### Error', '', error, ''] : []),
      '### Log',
      '',
      '```',
      ...lines,
      '```',
      '',
    ],
  });
}

runBench('qualify', main);
