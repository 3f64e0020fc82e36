#!/usr/bin/env node
// `npm run bench:offline`: midreg's offline messages (MIDREG_OFFLINE_MESSAGES=on) under load, with
// the same processes as `npm run bench` (bench/systems.ts: drachtio-server + midreg in front of a
// fresh Kamailio registrar, everything on 127.0.0.1, every load bounded and stopping by itself):
//
//   1. store:   R users `openoffN` register once and de-register (the registrar has accepted them,
//               so midreg may keep messages for them); a registered sender sends M MESSAGEs to them
//               at a fixed rate from the address it registered from (sipp, 202 expected), plus a
//               µs-resolution probe (part of the M) from a second registered sender.
//   2. deliver: the R users register again from one sipp (bench/sipp/register-hold.xml, which
//               answers the delivered MESSAGEs out of call with bench/sipp/uas-message.xml: midreg
//               sends to the address a REGISTER came from, so the users register from the port
//               that answers); time until midreg_offline_messages is 0 (admin API /metrics,
//               polled every 100 ms).
//   3. REGISTER at a fixed rate (distinct AoRs, as the main bench) while the R users register
//      again, once with nothing stored and once with the M messages waiting (stored again first):
//      completed REGISTER/s and p50/p99, for the whole step and the window while the backlog drains.
//
// Saves bench/results/<timestamp>.json and .md.
//
//   node dist/bench/offline.js [--messages 10000] [--recipients 1000] [--store-rate 1000]
//                              [--register-rate 1000] [--register-seconds 10] [--keep]
import { spawn, type ChildProcess } from 'node:child_process';
import { createSocket } from 'node:dgram';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { cpuDelta, machineBusyCpu, PeakThreadWatcher, probeSipp, sampleCpu, waitForQuiet, type CpuProbe } from './cpu.js';
import { quantiles, readStat, runLoad, type LoadResult, type Quantiles } from './load.js';
import {
  BENCH_DIR, delay, finishRun, freePort, environmentLine, RESULTS_DIR, resultsHeader, runBench, startRun,
} from './procs.js';
import { runProbe, type ProbeResult } from './probe.js';
import { formatProfile, summarizeProfile, type ProfileSummary } from './profile.js';
import { fmt1, fmtInt, fmtPct, markdownTable, textTable, type Table } from './report.js';
import { startSystem, type RunningSystem } from './systems.js';

const SIPP_BIN = process.env['SIPP_BIN'] ?? 'sipp';
const SIPP_DIR = join(BENCH_DIR, 'sipp');
const DOMAIN = 'example.test';
const PREFIX = 'openoff';
/** The sipp sender and the probe's sender (both register from the address they send from). */
const SENDER = 'opensender1';
const PROBE_SENDER = 'opensender2';
const PROBE_RATE = 50;
/** Longest wait for a backlog to drain (the run must stop by itself). */
const DRAIN_DEADLINE_MS = 90_000;
const POLL_MS = 100;
/** REGISTER/s of the users coming back (all at once from one sipp). */
const RECIPIENT_RATE = 1000;

const HELP = `usage: node dist/bench/offline.js [options]   (npm run bench:offline -- [options])
  --messages <n>          offline messages stored and delivered (default 10000)
  --recipients <n>        users they are spread over, round robin (default 1000)
  --store-rate <n>        MESSAGE/s offered while storing (default 1000)
  --register-rate <n>     REGISTER/s of the load step with and without a backlog (default 1000)
  --register-seconds <n>  length of that step (default 10)
  --midreg-log-level <l>  MIDREG_LOG_LEVEL (default info, as shipped)
  --profile               run midreg under node --cpu-prof from just before to just after the delivery
                          (bench/results/<timestamp>-offline-deliver.cpuprofile, summarised in the results)
  --keep                  keep the work dir (logs, sipp statistics)
  --help`;

interface Options {
  messages: number;
  recipients: number;
  storeRate: number;
  registerRate: number;
  registerSec: number;
  midregLogLevel: string;
  profile: boolean;
  keep: boolean;
}

function parseOptions(argv: string[]): Options {
  const { values } = parseArgs({
    args: argv,
    options: {
      messages: { type: 'string', default: '10000' },
      recipients: { type: 'string', default: '1000' },
      'store-rate': { type: 'string', default: '1000' },
      'register-rate': { type: 'string', default: '1000' },
      'register-seconds': { type: 'string', default: '10' },
      'midreg-log-level': { type: 'string', default: 'info' },
      profile: { type: 'boolean', default: false },
      keep: { type: 'boolean', default: false },
      help: { type: 'boolean', default: false },
    },
    strict: true,
  });
  if (values.help) { process.stdout.write(`${HELP}\n`); process.exit(0); }
  const positive = (v: string, name: string): number => {
    const n = Number(v);
    if (!Number.isFinite(n) || n <= 0) throw new Error(`--${name}: "${v}" is not a positive number`);
    return n;
  };
  const messages = Math.round(positive(values.messages, 'messages'));
  const recipients = Math.round(positive(values.recipients, 'recipients'));
  if (recipients > messages) throw new Error('--recipients: more recipients than messages');
  return {
    messages,
    recipients,
    storeRate: positive(values['store-rate'], 'store-rate'),
    registerRate: positive(values['register-rate'], 'register-rate'),
    registerSec: positive(values['register-seconds'], 'register-seconds'),
    midregLogLevel: values['midreg-log-level'],
    profile: values.profile,
    keep: values.keep,
  };
}

/** midreg's settings for this bench: offline messages on, bounds out of the way of 10,000 messages from one sender. */
function midregEnv(opts: Options, adminPort: number): Record<string, string> {
  return {
    MIDREG_OFFLINE_MESSAGES: 'on',
    MIDREG_OFFLINE_MAX_PER_USER: String(Math.min(100_000, Math.max(100, Math.ceil(opts.messages / opts.recipients) * 2))),
    MIDREG_OFFLINE_SENDER_RATE: '1000000',
    MIDREG_ADMIN_PORT: String(adminPort),
    // Senders and receivers are users, not the platform: a MESSAGE is accepted only from the
    // address its From AoR registered from (the bench's other parts trust all of 127.0.0.1).
    MIDREG_TRUSTED_PEERS: '',
    // ... and then the per-source guard must not shed the load generator (everything is 127.0.0.1)
    MIDREG_RATE_LIMIT: '0',
  };
}

// ---- helpers -----------------------------------------------------------------------------------


interface OfflineMetrics { waiting: number; delivered: number; retried: number; expired: number; stored: number; refused: number; register2xx: number }

async function readMetrics(adminPort: number): Promise<OfflineMetrics> {
  const res = await fetch(`http://127.0.0.1:${adminPort}/metrics`);
  const text = await res.text();
  // midreg_offline_total{outcome} series appear only once an outcome happened (no zero series)
  const get = (re: RegExp): number => Number(re.exec(text)?.[1] ?? 0);
  return {
    waiting: get(/^midreg_offline_messages (\S+)$/m),
    delivered: get(/^midreg_offline_total\{outcome="delivered"\} (\S+)$/m),
    retried: get(/^midreg_offline_total\{outcome="retry"\} (\S+)$/m),
    expired: get(/^midreg_offline_total\{outcome="expired"\} (\S+)$/m),
    stored: get(/^midreg_message_total\{outcome="stored"\} (\S+)$/m),
    refused: get(/^midreg_message_total\{outcome="offline_refused"\} (\S+)$/m),
    register2xx: get(/^midreg_register_relayed_total\{class="2xx"\} (\S+)$/m),
  };
}

/** CPU per component over an interval, and the busiest 1-s thread of drachtio-server and node. */
function cpuMeter(probes: CpuProbe[]): { stop(): { wallSec: number; cpuSec: Record<string, number>; peakThreadPct: Record<string, number>; otherPct: number } } {
  const watchers = probes.flatMap((p) => (p.pid !== undefined ? [{ name: p.name, watcher: new PeakThreadWatcher(p.pid) }] : []));
  const before = sampleCpu(probes);
  const machineBefore = machineBusyCpu();
  const started = performance.now();
  return {
    stop() {
      const wallSec = (performance.now() - started) / 1000;
      const cpuSec = cpuDelta(before, sampleCpu(probes));
      const peakThreadPct: Record<string, number> = {};
      for (const { name, watcher } of watchers) peakThreadPct[name] = watcher.stop();
      const ours = Object.values(cpuSec).reduce((a, b) => a + b, 0);
      return { wallSec, cpuSec, peakThreadPct, otherPct: Math.max(0, ((machineBusyCpu() - machineBefore - ours) / wallSec) * 100) };
    },
  };
}

/** Datagrams dropped so far on the 127.0.0.1 (or any-address) UDP sockets bound to `port` (/proc/net/udp, last column). */
function udpDrops(port: number): number {
  const hex = port.toString(16).toUpperCase().padStart(4, '0');
  let drops = 0;
  for (const line of readFileSync('/proc/net/udp', 'utf8').split('\n').slice(1)) {
    const f = line.trim().split(/\s+/);
    if (f[1] === `0100007F:${hex}` || f[1] === `00000000:${hex}`) drops += Number(f[f.length - 1] ?? 0) || 0;
  }
  return drops;
}

/** Every response time sipp wrote (-trace_rtt): [ms since sipp started, response time ms]. */
function readRtt(dir: string): Array<{ atMs: number; rtMs: number }> {
  const out: Array<{ atMs: number; rtMs: number }> = [];
  for (const name of readdirSync(dir).filter((f) => f.endsWith('_rtt.csv'))) {
    for (const line of readFileSync(join(dir, name), 'utf8').split('\n')) {
      const [at, rt] = line.split(';');
      if (at === undefined || rt === undefined || !/^[\d.]+$/.test(at)) continue;
      out.push({ atMs: Number(at), rtMs: Number(rt) });
    }
  }
  return out;
}

// ---- the recipients' sipp: registers them and answers what is delivered -------------------------

interface Registrants {
  /** performance.now() when sipp was started. */
  startedAt: number;
  /** Ends sipp (SIGKILL) and reads its figures. */
  stop(): Promise<{ registered: number; registerMs: Quantiles; lastRegisteredMs: number; deadCallMsgs: number; retransmissions: number; code: number; stderr: string }>;
}

const children = new Set<ChildProcess>();
process.once('exit', () => { for (const c of children) c.kill('SIGKILL'); });

function startRegistrants(opts: { target: string; port: number; count: number; rate: number; holdMs: number; dir: string }): Registrants {
  mkdirSync(opts.dir, { recursive: true });
  const timeoutSec = Math.ceil(opts.count / opts.rate + opts.holdMs / 1000 + 10);
  const args = [
    opts.target, '-sf', join(SIPP_DIR, 'register-hold.xml'), '-oocsf', join(SIPP_DIR, 'uas-message.xml'),
    '-m', String(opts.count), '-r', String(opts.rate), '-rp', '1000', '-l', String(opts.count + 10), '-d', String(opts.holdMs),
    '-timeout', `${timeoutSec}s`, '-recv_timeout', '4000', '-nd',
    '-i', '127.0.0.1', '-bind_local', '-p', String(opts.port), '-nostdin',
    // 1,000 phones have 1,000 sockets: one sipp socket for all of them gets the largest buffer
    '-buff_size', '4194304',
    // answer a retransmitted MESSAGE again (as a phone's server transaction does) instead of
    // swallowing it as a message for a call that is over
    '-deadcall_wait', '0',
    '-trace_stat', '-stf', join(opts.dir, 'stat.csv'), '-fd', '1',
    '-trace_rtt', '-rtt_freq', '1',
    '-set', 'prefix', PREFIX, '-set', 'domain', DOMAIN, '-set', 'expires', '300',
  ];
  const startedAt = performance.now();
  const child = spawn(SIPP_BIN, args, { cwd: opts.dir, stdio: ['ignore', 'ignore', 'pipe'] });
  children.add(child);
  let stderr = '';
  child.stderr?.setEncoding('utf8').on('data', (d: string) => { if (stderr.length < 10_000) stderr += d; });
  const watchdog = setTimeout(() => child.kill('SIGKILL'), (timeoutSec + 10) * 1000);
  const done = new Promise<number>((resolve) => {
    child.once('error', (err) => { stderr += String(err); resolve(-1); });
    child.once('close', (code, signal) => resolve(code ?? (signal ? 128 : -1)));
  }).finally(() => { clearTimeout(watchdog); children.delete(child); });
  return {
    startedAt,
    async stop() {
      child.kill('SIGKILL');
      const code = await done;
      const rtt = readRtt(opts.dir);
      const stat = readStat(join(opts.dir, 'stat.csv'));
      return {
        registered: rtt.length,
        registerMs: quantiles(rtt.map((r) => r.rtMs)),
        lastRegisteredMs: Math.max(0, ...rtt.map((r) => r.atMs)),
        deadCallMsgs: Number(stat?.['DeadCallMsgs(C)'] ?? 0),
        retransmissions: Number(stat?.['Retransmissions(C)'] ?? 0),
        code,
        stderr,
      };
    },
  };
}

// ---- µs-resolution MESSAGE probe from a registered sender ----------------------------------------

interface MessageProbe { sent: number; ok: number; lost: number; statuses: Record<string, number>; us: Quantiles }

/**
 * Like bench/probe.ts, for MESSAGE from a user (not a trusted peer): registers `from` from its own
 * socket first, then sends `count` MESSAGEs at `rate` to the recipients (cycled) and times each
 * final answer with process.hrtime. Never retransmits: no answer in time is lost.
 */
async function runMessageProbe(opts: { target: string; rate: number; count: number; from: string; recipients: string[]; timeoutMs: number }): Promise<MessageProbe> {
  const [host, portText] = opts.target.split(':');
  if (host !== '127.0.0.1') throw new Error(`probe target must be 127.0.0.1:<port>, got ${opts.target}`);
  const port = Number(portText);
  const sock = createSocket('udp4');
  await new Promise<void>((resolve) => sock.bind(0, '127.0.0.1', () => resolve()));
  const local = sock.address().port;
  const tag = randomBytes(4).toString('hex');
  const pending = new Map<string, { at: bigint; resolve?: (status: number) => void }>();
  const times: number[] = [];
  const statuses: Record<string, number> = {};
  let ok = 0;
  sock.on('message', (buf) => {
    const text = buf.toString('utf8');
    const status = Number(/^SIP\/2\.0 (\d{3})/.exec(text)?.[1] ?? 0);
    const callId = /^(?:Call-ID|i)\s*:\s*(\S+)/im.exec(text)?.[1] ?? '';
    const p = pending.get(callId);
    if (status < 200 || !p) return;
    pending.delete(callId);
    if (p.resolve) { p.resolve(status); return; }
    statuses[String(status)] = (statuses[String(status)] ?? 0) + 1;
    if (status >= 200 && status < 300) { ok++; times.push(Number(process.hrtime.bigint() - p.at) / 1000); }
  });
  const send = (lines: string[], callId: string, resolve?: (status: number) => void): void => {
    pending.set(callId, { at: process.hrtime.bigint(), ...(resolve ? { resolve } : {}) });
    sock.send(Buffer.from(lines.join('\r\n')), port, '127.0.0.1');
  };
  const aor = `sip:${opts.from}@${DOMAIN}`;
  try {
    const regCallId = `probe-reg-${tag}@127.0.0.1`;
    const regStatus = await new Promise<number>((resolve) => {
      setTimeout(() => resolve(0), 4000);
      send([
        `REGISTER sip:${DOMAIN} SIP/2.0`, `Via: SIP/2.0/UDP 127.0.0.1:${local};branch=z9hG4bK-${tag}-reg;rport`, 'Max-Forwards: 70',
        `From: <${aor}>;tag=${tag}`, `To: <${aor}>`, `Call-ID: ${regCallId}`, 'CSeq: 1 REGISTER',
        `Contact: <sip:${opts.from}@127.0.0.1:${local}>`, 'Expires: 300', 'Content-Length: 0', '', '',
      ], regCallId, resolve);
    });
    if (regStatus !== 200) throw new Error(`probe sender ${opts.from}: REGISTER answered ${regStatus || 'nothing'}`);
    const interval = 1000 / opts.rate;
    const started = Date.now();
    for (let n = 0; n < opts.count; n++) {
      const wait = started + n * interval - Date.now();
      if (wait > 0) await delay(wait);
      const to = `sip:${opts.recipients[n % opts.recipients.length] ?? `${PREFIX}1`}@${DOMAIN}`;
      const body = `offline probe ${n}`;
      const callId = `probe-${tag}-${n}@127.0.0.1`;
      send([
        `MESSAGE ${to} SIP/2.0`, `Via: SIP/2.0/UDP 127.0.0.1:${local};branch=z9hG4bK-${tag}-${n};rport`, 'Max-Forwards: 70',
        `From: <${aor}>;tag=${tag}${n}`, `To: <${to}>`, `Call-ID: ${callId}`, 'CSeq: 1 MESSAGE', 'User-Agent: midreg-bench-probe',
        'Content-Type: text/plain', `Content-Length: ${Buffer.byteLength(body)}`, '', body,
      ], callId);
    }
    const deadline = Date.now() + opts.timeoutMs;
    while (pending.size > 0 && Date.now() < deadline) await delay(20);
    return { sent: opts.count, ok, lost: pending.size, statuses, us: quantiles(times) };
  } finally {
    sock.close();
  }
}

// ---- the phases --------------------------------------------------------------------------------

interface Ctx {
  opts: Options;
  sys: RunningSystem;
  workDir: string;
  adminPort: number;
  uasPort: number;
  senderPort: number;
  injection: string;
  recipients: string[];
  /** drachtio-server's SIP port. */
  sipPort: number;
  log(line: string): void;
}

interface Cpu { wallSec: number; cpuSec: Record<string, number>; cpuPct: Record<string, number>; usPer: Record<string, number>; peakThreadPct: Record<string, number>; otherPct: number }

function cpuOf(m: ReturnType<ReturnType<typeof cpuMeter>['stop']>, count: number): Cpu {
  const cpuPct: Record<string, number> = {};
  const usPer: Record<string, number> = {};
  for (const [name, sec] of Object.entries(m.cpuSec)) {
    cpuPct[name] = (sec / m.wallSec) * 100;
    usPer[name] = count > 0 ? (sec * 1e6) / count : 0;
  }
  return { ...m, cpuPct, usPer };
}

const cpuText = (c: Cpu): string => Object.entries(c.cpuPct)
  .map(([n, p]) => `${n} ${fmtPct(p)}${c.peakThreadPct[n] !== undefined ? ` [${fmtPct(c.peakThreadPct[n] ?? 0)}]` : ''} ${fmtInt(c.usPer[n] ?? 0)} µs`).join(', ');

const usMs = (us: number): string => `${(us / 1000).toFixed(2)} ms`;

function loadFailure(r: LoadResult): string {
  const parts: string[] = [];
  if (r.failed > 0) parts.push(`${fmtInt(r.failed)} failed${r.unexpectedStatuses.length > 0 ? ` (answered ${r.unexpectedStatuses.join('/')})` : ''}`);
  if (r.retransmissions > 0) parts.push(`${fmtInt(r.retransmissions)} retransmissions`);
  if (r.successful < r.calls && r.failed === 0) parts.push(`${fmtInt(r.calls - r.successful)} not completed`);
  return parts.join(', ');
}

/** Register (expires 300) or de-register (expires 0) the recipients from the UAS port, at 500/s. */
async function recipientsRegister(ctx: Ctx, expires: '300' | '0', label: string): Promise<void> {
  await waitForQuiet();
  const r = await runLoad({
    scenario: join(SIPP_DIR, 'register.xml'), target: ctx.sys.target, localPort: ctx.uasPort, rate: 500, calls: ctx.opts.recipients, limit: 500,
    vars: { prefix: PREFIX, domain: DOMAIN, expires }, dir: join(ctx.workDir, `${label}-${Date.now()}`), recvTimeoutMs: 4000,
  });
  if (r.successful !== ctx.opts.recipients) throw new Error(`${label}: ${r.successful}/${ctx.opts.recipients} answered 200 (${loadFailure(r)}): ${r.errorSample.slice(0, 500)}`);
}

async function registerSender(ctx: Ctx): Promise<void> {
  const r = await runLoad({
    scenario: join(SIPP_DIR, 'register.xml'), target: ctx.sys.target, localPort: ctx.senderPort, rate: 10, calls: 1, limit: 1,
    vars: { prefix: SENDER.replace(/\d+$/, ''), domain: DOMAIN, expires: '300' }, dir: join(ctx.workDir, `sender-${Date.now()}`), recvTimeoutMs: 4000,
  });
  if (r.successful !== 1) throw new Error(`registering the sender failed: ${loadFailure(r)} ${r.errorSample.slice(0, 500)}`);
}

interface StoreRecord {
  rate: number;
  messages: number;
  sippCalls: number;
  stored: number;
  refused: number;
  achievedRate: number;
  failure: string;
  retransmissions: number;
  /** sipp's response times (4 ms ticks: CLOCK_MONOTONIC_COARSE). */
  sippMs: Quantiles;
  probe: MessageProbe;
  cpu: Cpu;
  /** node CPU µs per stored message in the first and the second half of the step (does the cost grow with the backlog?). */
  nodeUsFirstHalf: number;
  nodeUsSecondHalf: number;
  waitingAfter: number;
}

async function storeStep(ctx: Ctx, label: string): Promise<StoreRecord> {
  const { opts, sys } = ctx;
  const sendSec = opts.messages / opts.storeRate;
  const probeCount = Math.floor(PROBE_RATE * sendSec * 0.9);
  const sippCalls = opts.messages - probeCount;
  const rate = Math.max(1, Math.round(opts.storeRate * (sippCalls / opts.messages))); // together with the probe: storeRate/s
  const before = await readMetrics(ctx.adminPort);
  await waitForQuiet();
  const nodeProbe = sys.probes().find((p) => p.name === 'node');
  const meter = cpuMeter([...sys.probes(), probeSipp]);
  const nodeAt0 = nodeProbe?.read() ?? 0;
  let nodeAtHalf = nodeAt0;
  const half = setTimeout(() => { nodeAtHalf = nodeProbe?.read() ?? 0; }, (sendSec * 1000) / 2);
  const [load, probe] = await Promise.all([
    runLoad({
      scenario: join(SIPP_DIR, 'message-offline.xml'), target: sys.target, localPort: ctx.senderPort, rate, calls: sippCalls,
      limit: Math.max(50, Math.round(opts.storeRate)), vars: { from: SENDER, domain: DOMAIN }, injection: ctx.injection,
      dir: join(ctx.workDir, `${label}-store`), recvTimeoutMs: 2000,
    }),
    delay(150).then(() => runMessageProbe({ target: sys.target, rate: PROBE_RATE, count: probeCount, from: PROBE_SENDER, recipients: ctx.recipients, timeoutMs: 4000 })),
  ]);
  clearTimeout(half);
  const nodeAtEnd = nodeProbe?.read() ?? 0;
  const after = await readMetrics(ctx.adminPort);
  const stored = after.stored - before.stored;
  const cpu = cpuOf(meter.stop(), stored);
  const halfCount = stored / 2;
  const rec: StoreRecord = {
    rate: opts.storeRate, messages: opts.messages, sippCalls, stored, refused: after.refused - before.refused,
    achievedRate: (load.successful + probe.ok) / Math.max(load.elapsedSec, 1e-9),
    failure: [loadFailure(load), probe.lost > 0 ? `probe: ${probe.lost} lost` : '', probe.ok < probe.sent - probe.lost ? `probe answered ${JSON.stringify(probe.statuses)}` : ''].filter(Boolean).join('; '),
    retransmissions: load.retransmissions,
    sippMs: load.responseMs,
    probe,
    cpu,
    nodeUsFirstHalf: halfCount > 0 ? ((nodeAtHalf - nodeAt0) * 1e6) / halfCount : 0,
    nodeUsSecondHalf: halfCount > 0 ? ((nodeAtEnd - nodeAtHalf) * 1e6) / halfCount : 0,
    waitingAfter: after.waiting,
  };
  ctx.log(`  store ${label}: ${fmtInt(stored)} stored (202) of ${fmtInt(opts.messages)} at ${fmtInt(opts.storeRate)}/s offered → ${fmtInt(rec.achievedRate)}/s; `
    + `probe ×${probe.ok} p50 ${usMs(probe.us.p50)} p99 ${usMs(probe.us.p99)}; sipp p50/p99 ${Math.round(load.responseMs.p50)}/${Math.round(load.responseMs.p99)} ms; `
    + `cpu ${cpuText(cpu)}; node µs/msg 1st half ${fmtInt(rec.nodeUsFirstHalf)}, 2nd ${fmtInt(rec.nodeUsSecondHalf)}; other ${fmtPct(cpu.otherPct)}${rec.failure ? ` — ${rec.failure}` : ''}`);
  if (stored !== opts.messages) throw new Error(`store ${label}: ${stored} of ${opts.messages} messages stored (${rec.failure || 'see the logs'}); refused ${rec.refused}`);
  return rec;
}

interface DrainRecord {
  messages: number;
  /** From starting the recipients' registrations (ms). */
  firstDeliveredMs: number;
  allDeliveredMs: number;
  /** Messages per second from the first registration sent to the last delivery. */
  rate: number;
  delivered: number;
  retried: number;
  registered: number;
  /** When the recipients' last 200 came (ms from their sipp's start). */
  lastRegisteredMs: number;
  registerMs: Quantiles;
  /** Messages to the recipients' sipp for calls already over (sipp's DeadCallMsgs) and its REGISTER retransmissions. */
  sippDeadCallMsgs: number;
  sippRegisterRetransmissions: number;
  /** Datagrams the kernel dropped on drachtio-server's SIP socket during the drain (full receive buffer). */
  drachtioUdpDrops: number;
  timeline: Array<{ ms: number; waiting: number; delivered: number }>;
  timedOut: boolean;
}

/** Starts the recipients' sipp and polls /metrics until the queue is empty (or the deadline). */
async function drain(ctx: Ctx, dir: string, expectMessages: number): Promise<{ done: Promise<DrainRecord>; startedAt: number }> {
  const base = await readMetrics(ctx.adminPort);
  const dropsBefore = udpDrops(ctx.sipPort);
  const registerMs = (ctx.opts.recipients / RECIPIENT_RATE) * 1000;
  const reg = startRegistrants({ target: ctx.sys.target, port: ctx.uasPort, count: ctx.opts.recipients, rate: RECIPIENT_RATE, holdMs: DRAIN_DEADLINE_MS + 10_000, dir });
  const done = (async (): Promise<DrainRecord> => {
    const timeline: DrainRecord['timeline'] = [];
    let firstDeliveredMs = Number.NaN;
    let allDeliveredMs = Number.NaN;
    let last: OfflineMetrics;
    let timedOut = false;
    for (;;) {
      await delay(POLL_MS);
      const ms = performance.now() - reg.startedAt;
      last = await readMetrics(ctx.adminPort);
      const delivered = last.delivered - base.delivered;
      timeline.push({ ms: Math.round(ms), waiting: last.waiting, delivered });
      if (delivered > 0 && Number.isNaN(firstDeliveredMs)) firstDeliveredMs = ms;
      // with nothing stored (the baseline) this is the time it takes the users to register
      if (last.waiting === 0 && delivered >= expectMessages && (expectMessages > 0 || ms > registerMs + 1000)) { allDeliveredMs = ms; break; }
      if (ms > DRAIN_DEADLINE_MS) { timedOut = true; break; }
    }
    // let the last 200s reach midreg before the port closes
    await delay(300);
    const sipp = await reg.stop();
    const delivered = last.delivered - base.delivered;
    return {
      messages: expectMessages, firstDeliveredMs, allDeliveredMs,
      rate: expectMessages > 0 && allDeliveredMs > 0 ? (delivered / allDeliveredMs) * 1000 : 0,
      delivered, retried: last.retried - base.retried,
      registered: sipp.registered, lastRegisteredMs: sipp.lastRegisteredMs, registerMs: sipp.registerMs,
      sippDeadCallMsgs: sipp.deadCallMsgs, sippRegisterRetransmissions: sipp.retransmissions, drachtioUdpDrops: udpDrops(ctx.sipPort) - dropsBefore, timeline, timedOut,
    };
  })();
  return { done, startedAt: reg.startedAt };
}

interface DeliverRecord extends DrainRecord { cpu: Cpu }

async function deliverStep(ctx: Ctx): Promise<DeliverRecord> {
  await waitForQuiet();
  const meter = cpuMeter([...ctx.sys.probes(), probeSipp]);
  const d = await (await drain(ctx, join(ctx.workDir, 'deliver'), ctx.opts.messages)).done;
  const cpu = cpuOf(meter.stop(), d.delivered);
  ctx.log(`  deliver: ${fmtInt(d.delivered)} delivered in ${fmtInt(d.allDeliveredMs)} ms from the first REGISTER (first at ${fmtInt(d.firstDeliveredMs)} ms; `
    + `${d.registered} users registered by ${fmtInt(d.lastRegisteredMs)} ms) → ${fmtInt(d.rate)}/s; ${d.retried} retried; drachtio UDP drops ${fmtInt(d.drachtioUdpDrops)}, sipp dead-call msgs ${fmtInt(d.sippDeadCallMsgs)}, REGISTER retrans ${d.sippRegisterRetransmissions}; `
    + `cpu (whole window incl. the ${d.registered} REGISTERs) ${cpuText(cpu)}${d.timedOut ? ' — NOT DRAINED within the deadline' : ''}`);
  if (d.timedOut || d.delivered < ctx.opts.messages) throw new Error(`deliver: ${d.delivered} of ${ctx.opts.messages} delivered`);
  return { ...d, cpu };
}

interface RegisterRecord {
  label: string;
  rate: number;
  calls: number;
  successful: number;
  failure: string;
  achievedRate: number;
  sippMs: Quantiles;
  probe: ProbeResult;
  cpu: Cpu;
  /** The part of the step while the recipients registered and (backlog) their messages were delivered. */
  window: { fromMs: number; toMs: number; completed: number; perSec: number; sippMs: Quantiles };
  drain: DrainRecord;
}

/**
 * REGISTER load at a fixed rate (distinct AoRs, bench/sipp/register.xml) with a µs probe; one
 * second in, the recipients register again (1,000/s), with or without their messages waiting.
 */
async function registerStep(ctx: Ctx, label: string, expectMessages: number): Promise<RegisterRecord> {
  const { opts, sys } = ctx;
  const calls = Math.round(opts.registerRate * opts.registerSec);
  const dir = join(ctx.workDir, `${label}-register`);
  await waitForQuiet();
  const meter = cpuMeter([...sys.probes(), probeSipp]);
  const started = performance.now();
  const loadP = runLoad({
    scenario: join(SIPP_DIR, 'register.xml'), target: sys.target, localPort: await freePort(), rate: opts.registerRate, calls,
    limit: Math.max(50, Math.round(opts.registerRate)), vars: { prefix: `openload${label}x`, domain: DOMAIN, expires: '300' }, dir, recvTimeoutMs: 2000,
  });
  const probeCount = Math.floor(PROBE_RATE * opts.registerSec * 0.9);
  const probeP = delay(150).then(() => runProbe({ kind: 'register', target: sys.target, rate: PROBE_RATE, count: probeCount, domain: DOMAIN, timeoutMs: 4000, prefix: `openprobe${label}x` }));
  await delay(1000);
  const { done, startedAt: drainStart } = await drain(ctx, join(ctx.workDir, `${label}-recipients`), expectMessages);
  const [load, probe] = await Promise.all([loadP, probeP]);
  const d = await done;
  const cpu = cpuOf(meter.stop(), load.successful + probe.ok + d.registered);
  // sipp's clock starts about when runLoad spawned it (`started`)
  const fromMs = drainStart - started;
  const toMs = fromMs + (expectMessages === 0 ? d.lastRegisteredMs : Number.isNaN(d.allDeliveredMs) ? DRAIN_DEADLINE_MS : Math.max(d.allDeliveredMs, d.lastRegisteredMs));
  const inWindow = readRtt(dir).filter((r) => r.atMs >= fromMs && r.atMs <= toMs);
  const windowSec = (Math.min(toMs, load.elapsedSec * 1000) - fromMs) / 1000;
  const rec: RegisterRecord = {
    label, rate: opts.registerRate, calls, successful: load.successful, failure: [loadFailure(load), probe.lost > 0 ? `probe: ${probe.lost} lost` : ''].filter(Boolean).join('; '),
    achievedRate: load.achievedRate, sippMs: load.responseMs, probe, cpu,
    window: { fromMs: Math.round(fromMs), toMs: Math.round(toMs), completed: inWindow.length, perSec: windowSec > 0 ? inWindow.length / windowSec : 0, sippMs: quantiles(inWindow.map((r) => r.rtMs)) },
    drain: d,
  };
  ctx.log(`  REGISTER ${label}: ${fmtInt(load.successful)}/${fmtInt(calls)} at ${fmtInt(opts.registerRate)}/s → ${fmtInt(load.achievedRate)}/s; probe ×${probe.ok} p50 ${usMs(probe.us.p50)} p99 ${usMs(probe.us.p99)}; `
    + `sipp p50/p99 ${Math.round(load.responseMs.p50)}/${Math.round(load.responseMs.p99)} ms; window ${fmtInt(rec.window.fromMs)}–${fmtInt(rec.window.toMs)} ms: ${fmtInt(rec.window.completed)} completed (${fmtInt(rec.window.perSec)}/s), sipp p99 ${Math.round(rec.window.sippMs.p99)} ms; `
    + `recipients: ${d.registered} registered${expectMessages > 0 ? `, ${fmtInt(d.delivered)} delivered in ${fmtInt(d.allDeliveredMs)} ms (${fmtInt(d.rate)}/s, ${d.retried} retried)` : ''}; drachtio UDP drops ${fmtInt(d.drachtioUdpDrops)}; cpu ${cpuText(cpu)}; other ${fmtPct(cpu.otherPct)}${rec.failure ? ` — ${rec.failure}` : ''}`);
  return rec;
}

// ---- main --------------------------------------------------------------------------------------


async function main(): Promise<void> {
  const run = startRun<Options>('offline', { parse: parseOptions, help: HELP, workPrefix: 'mrbo-' });
  const { opts, startedAt, stamp, workDir, lines, log, meta } = run;
  const adminPort = await freePort();
  const env = midregEnv(opts, adminPort);
  log(`midreg offline-messages bench ${stamp}: ${environmentLine(meta)}`);
  log(`options: ${fmtInt(opts.messages)} messages to ${fmtInt(opts.recipients)} users at ${fmtInt(opts.storeRate)}/s; REGISTER ${fmtInt(opts.registerRate)}/s × ${opts.registerSec} s; midreg ${Object.entries(env).map(([k, v]) => `${k}=${v}`).join(' ')}; work dir ${workDir}`);

  const sys = await startSystem('midreg', { workDir, midregLogLevel: opts.midregLogLevel, upstreamTransport: 'tcp', midregEnv: env });
  let stopping = false;
  const onSignal = (): void => {
    if (stopping) process.exit(130);
    stopping = true;
    void sys.stop().finally(() => process.exit(130));
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  const recipients = Array.from({ length: opts.recipients }, (_, i) => `${PREFIX}${i + 1}`);
  const injection = join(workDir, 'recipients.csv');
  writeFileSync(injection, `SEQUENTIAL\n${recipients.map((r) => `${r};`).join('\n')}\n`);
  const ctx: Ctx = { opts, sys, workDir, adminPort, uasPort: await freePort(), senderPort: await freePort(), injection, recipients, sipPort: Number(sys.target.split(':')[1]), log };
  const t0 = Date.now();
  const clock = (): string => `[${((Date.now() - t0) / 1000).toFixed(0)} s]`;
  let result: { store1: StoreRecord; deliver: DeliverRecord; baseline: RegisterRecord; store2: StoreRecord; backlog: RegisterRecord } | undefined;
  let error: string | undefined;
  let profile: ProfileSummary | undefined;
  try {
    log(`${clock()} ${fmtInt(opts.recipients)} users register once and de-register; the sender registers`);
    await recipientsRegister(ctx, '300', 'recipients-first');
    await recipientsRegister(ctx, '0', 'recipients-off');
    await registerSender(ctx);
    log(`${clock()} 1. store`);
    const store1 = await storeStep(ctx, '1');
    log(`${clock()} 2. deliver`);
    // restarting midreg loses nothing: the messages are in SQLite, the courier reloads who waits
    if (opts.profile && sys.restartApp) await sys.restartApp({ dir: RESULTS_DIR, name: `${stamp}-offline-deliver.cpuprofile` });
    const deliver = await deliverStep(ctx);
    if (opts.profile && sys.restartApp) {
      await sys.restartApp(); // stopping the profiled process writes the profile
      const file = join(RESULTS_DIR, `${stamp}-offline-deliver.cpuprofile`);
      if (existsSync(file)) { profile = summarizeProfile(file); for (const l of formatProfile(profile, 'midreg CPU profile, delivery')) log(l); }
    }
    log(`${clock()} 3. REGISTER ${fmtInt(opts.registerRate)}/s, the users registering again in the middle: nothing waiting, then ${fmtInt(opts.messages)} messages waiting`);
    await recipientsRegister(ctx, '0', 'recipients-off');
    const baseline = await registerStep(ctx, 'nobacklog', 0);
    await recipientsRegister(ctx, '0', 'recipients-off');
    await registerSender(ctx);
    const store2 = await storeStep(ctx, '2');
    const backlog = await registerStep(ctx, 'backlog', opts.messages);
    if (backlog.drain.timedOut) throw new Error(`the backlog did not drain within ${DRAIN_DEADLINE_MS / 1000} s`);
    result = { store1, deliver, baseline, store2, backlog };
  } catch (err) {
    error = err instanceof Error ? err.message : String(err);
    log(`ERROR ${error}`);
    for (const f of sys.logs()) log(`  log: ${f}`);
  } finally {
    await sys.stop();
  }
  const durationSec = (Date.now() - startedAt.getTime()) / 1000;

  const tables: Table[] = [];
  if (result) {
    const { store1, deliver, baseline, store2, backlog } = result;
    const storeRow = (name: string, s: StoreRecord): string[] => [
      name, `${fmtInt(s.stored)} / ${fmtInt(s.rate)}/s`, `${fmtInt(s.achievedRate)}/s`, `${usMs(s.probe.us.p50)} / ${usMs(s.probe.us.p99)} [${Math.round(s.sippMs.p50)}/${Math.round(s.sippMs.p99)}]`,
      `${fmtInt(s.cpu.usPer['node'] ?? 0)} µs (${fmtInt(s.nodeUsFirstHalf)} → ${fmtInt(s.nodeUsSecondHalf)})`, `${fmtInt(s.cpu.usPer['drachtio'] ?? 0)} µs`,
      `${fmtPct(s.cpu.cpuPct['node'] ?? 0)} [${fmtPct(s.cpu.peakThreadPct['node'] ?? 0)}]`, s.failure || 'none', fmtPct(s.cpu.otherPct),
    ];
    tables.push({
      title: `Storing ${fmtInt(opts.messages)} offline messages (MESSAGE → 202) for ${fmtInt(opts.recipients)} users`,
      head: ['run', 'stored / offered', 'achieved', 'p50 / p99 [sipp]', 'node CPU per message (1st → 2nd half)', 'drachtio per message', 'node CPU [peak thread]', 'failures', 'other'],
      rows: [storeRow('store for delivery (2)', store1), storeRow('store for the REGISTER step (3)', store2)],
      notes: [
        `one sipp sender (${SENDER}, registered, sending from the address it registered from) plus a ${PROBE_RATE}/s µs-resolution probe from a second registered sender (${PROBE_SENDER}), together ${fmtInt(opts.messages)} messages; sipp's own times in brackets tick in 4 ms steps`,
        `midreg: ${Object.entries(env).map(([k, v]) => `${k}=${v === '' ? '(empty)' : v}`).join(' ')}`,
      ],
    });
    tables.push({
      title: `Delivering them: ${fmtInt(opts.recipients)} users register again at ${fmtInt(RECIPIENT_RATE)}/s from one sipp that answers every MESSAGE with 200`,
      head: ['measure', 'value'],
      rows: [
        ['all delivered (midreg_offline_messages = 0), from the first REGISTER', `${fmt1(deliver.allDeliveredMs / 1000)} s`],
        ['delivery rate', `${fmtInt(deliver.rate)} messages/s`],
        ['first delivery after the first REGISTER', `${fmtInt(deliver.firstDeliveredMs)} ms`],
        ['users registered (REGISTER 200), last at', `${fmtInt(deliver.registered)}, ${fmtInt(deliver.lastRegisteredMs)} ms (sipp p50/p99 ${Math.round(deliver.registerMs.p50)}/${Math.round(deliver.registerMs.p99)} ms)`],
        ['delivered / attempts failed (retried later)', `${fmtInt(deliver.delivered)} / ${fmtInt(deliver.retried)}`],
        ['datagrams dropped on drachtio-server\'s SIP socket (kernel, full buffer)', fmtInt(deliver.drachtioUdpDrops)],
        ['node CPU per delivered message (incl. the users\' REGISTERs)', `${fmtInt(deliver.cpu.usPer['node'] ?? 0)} µs (${fmtPct(deliver.cpu.cpuPct['node'] ?? 0)} of a core, busiest thread ${fmtPct(deliver.cpu.peakThreadPct['node'] ?? 0)})`],
        ['drachtio CPU per delivered message', `${fmtInt(deliver.cpu.usPer['drachtio'] ?? 0)} µs (${fmtPct(deliver.cpu.cpuPct['drachtio'] ?? 0)}, busiest thread ${fmtPct(deliver.cpu.peakThreadPct['drachtio'] ?? 0)})`],
      ],
      notes: [`progress polled from the admin API's /metrics every ${POLL_MS} ms`],
    });
    const regRow = (name: string, r: RegisterRecord): string[] => [
      name, `${fmtInt(r.successful)}/${fmtInt(r.calls)}`, `${fmtInt(r.achievedRate)}/s`, `${usMs(r.probe.us.p50)} / ${usMs(r.probe.us.p99)}`,
      `${Math.round(r.sippMs.p50)}/${Math.round(r.sippMs.p99)}`,
      `${fmt1(r.window.fromMs / 1000)}–${fmt1(r.window.toMs / 1000)} s: ${fmtInt(r.window.perSec)}/s, ${Math.round(r.window.sippMs.p50)}/${Math.round(r.window.sippMs.p99)}`,
      r.drain.messages > 0 ? `${fmtInt(r.drain.delivered)} in ${fmt1(r.drain.allDeliveredMs / 1000)} s (${fmtInt(r.drain.rate)}/s)${r.drain.retried > 0 ? `, ${fmtInt(r.drain.retried)} retried` : ''}` : '—',
      fmtInt(r.drain.drachtioUdpDrops),
      `${fmtInt(r.cpu.usPer['node'] ?? 0)} µs, ${fmtPct(r.cpu.cpuPct['node'] ?? 0)} [${fmtPct(r.cpu.peakThreadPct['node'] ?? 0)}]`,
      `${fmtPct(r.cpu.cpuPct['drachtio'] ?? 0)} [${fmtPct(r.cpu.peakThreadPct['drachtio'] ?? 0)}]`,
      r.failure || 'none', fmtPct(r.cpu.otherPct),
    ];
    tables.push({
      title: `REGISTER at ${fmtInt(opts.registerRate)}/s for ${opts.registerSec} s, ${fmtInt(opts.recipients)} users registering again 1 s in (${fmtInt(RECIPIENT_RATE)}/s)`,
      head: ['run', 'completed', 'REGISTER/s', 'probe p50 / p99', 'sipp p50/p99 ms', 'while users register / backlog drains: REGISTER/s, sipp p50/p99 ms', 'delivered', 'drachtio UDP drops', 'node (µs per REGISTER)', 'drachtio', 'failures', 'other'],
      rows: [regRow('no backlog', baseline), regRow(`${fmtInt(opts.messages)} waiting`, backlog)],
      notes: [
        'probe: 50 REGISTER/s of µs resolution next to the sipp load (distinct AoRs); sipp ticks in 4 ms steps',
        'drachtio UDP drops: datagrams the kernel dropped on drachtio-server\'s SIP socket (receive buffer full: the kernel default, docs/drachtio-findings.md D4) while the users registered / their messages drained',
        'the window: from the users\' first REGISTER to their last 200 or the last delivery, whichever is later; node µs per REGISTER counts the load, the probe and the users\' REGISTERs (not the deliveries)',
      ],
    });
  }
  log('');
  for (const t of tables) { for (const l of textTable(t)) log(l); log(''); }
  log(`bench finished in ${(durationSec / 60).toFixed(1)} min${error ? ` with an error: ${error}` : ''}`);

  finishRun(run, {
    keep: opts.keep,
    error,
    json: { meta: { ...meta, bench: 'offline', midregEnv: env, durationSec, workDir: opts.keep ? workDir : undefined }, ...result, profile, error },
    markdown: [
      ...resultsHeader(run, 'midreg offline-messages benchmark', 'offline'),
      `Options: ${fmtInt(opts.messages)} messages to ${fmtInt(opts.recipients)} users, stored at ${fmtInt(opts.storeRate)}/s; REGISTER ${fmtInt(opts.registerRate)}/s × ${opts.registerSec} s; midreg log level ${opts.midregLogLevel}; registrar over TCP. Took ${(durationSec / 60).toFixed(1)} min.`,
      '',
      ...tables.flatMap(markdownTable),
      ...(profile ? ['### midreg CPU profile, from just before the users register to the last delivery', '', '```', ...formatProfile(profile, 'midreg CPU profile, delivery'), '```', ''] : []),
      ...(error ? ['### Error', '', error, ''] : []),
      '### Steps',
      '',
      '```',
      ...lines.filter((l) => /^\s+(store|deliver|REGISTER)\b/.test(l) || /^\[\d+ s\]/.test(l)),
      '```',
      '',
    ],
  });
}

runBench('offline', main);
