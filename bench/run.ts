#!/usr/bin/env node
// `npm run bench`: midreg against the drachtio reference (relay and proxy), a Kamailio peer and
// OpenSIPS' mid_registrar (when ../shared/peers/opensips is there), each in front of its own Kamailio registrar, under bounded sipp rate sweeps (REGISTER with
// distinct AoRs; MESSAGE to registered sipp UAS users), plus the replica at 1M bindings
// (bench/scale.ts). Starts everything it needs on 127.0.0.1, stops it all, prints the tables and
// the targets' pass/fail, and saves bench/results/<timestamp>.json and .md.
//
//   npm run bench                      full run (~15 min)
//   npm run bench -- --quick           fewer, shorter steps and a smaller replica
//   npm run bench -- --only register   (or message, scale; repeatable)
//   npm run bench -- --help
import { spawn, spawnSync } from 'node:child_process';
import { accessSync, constants, existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { cpus, tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { cpuDelta, machineBusyCpu, PeakThreadWatcher, probeSipp, sampleCpu, waitForQuiet } from './cpu.js';
import { describeFailure, runLoad, startUas, type LoadResult, type Quantiles } from './load.js';
import {
  BENCH_DIR, delay, DRACHTIO_BIN_DEFAULT, environmentLine, freePort, OPENSIPS_BIN, REPO_ROOT, RESULTS_DIR, runEnvironment, runLog, runStamp, version,
} from './procs.js';
import { runProbe, type ProbeResult } from './probe.js';
import { formatProfile, summarizeProfile, type ProfileSummary } from './profile.js';
import { fmt1, fmtInt, fmtPct, markdownTable, textTable, type Table } from './report.js';
import { runScale, worstSplit, type ScaleResult } from './scale.js';
import {
  startSystem, sweepLabel, SYSTEM_IDS, SYSTEM_LABELS, SYSTEM_NOTES, systemUnavailable, type RunningSystem, type SystemId,
} from './systems.js';

type Kind = 'register' | 'message';
const KINDS: readonly Kind[] = ['register', 'message'];
const KIND_LABEL: Record<Kind, string> = { register: 'REGISTER', message: 'MESSAGE' };
/** Order of the run: midreg last, so its targets (relative to the others) are known before profiling it. */
const RUN_ORDER: readonly SystemId[] = ['kamailio', 'opensips', 'proxy', 'reference', 'midreg'];
const SIPP_DIR = join(BENCH_DIR, 'sipp');
const DOMAIN = 'example.test';
const RECEIVERS = 1000;
/** The registrar grants at most 300 s: re-register the MESSAGE receivers well before that. */
const RECEIVER_REFRESH_MS = 200_000;
/** A step during which the rest of the machine used more than this (% of one core) is noisy. */
const NOISY_PCT = 25;

// ---- options -----------------------------------------------------------------------------------

const HELP = `usage: npm run bench -- [options]
  --quick                 fewer and shorter steps, 100k-binding replica (a few minutes)
  --only <what>           register | message | scale (repeatable; default: all)
  --systems <list>        comma-separated subset of ${SYSTEM_IDS.join(',')} (default: all; opensips is
                          skipped when ../shared/peers/opensips/start.sh is absent)
  --rates <list>          rates per second to sweep (default 500,1000,1500,2000,2500,3000,4000,5000,6500,8000,10000;
                          quick 500,1000,2000,3000,4500,6500)
  --step-seconds <n>      seconds of load per step (default 3, quick 2.5; the half-max latency step runs 1.5×)
  --scale-bindings <n>    replica size for the scale part (default 1000000, quick 100000)
  --drachtio-loglevel <l> override drachtio.conf.xml's <loglevel> (as shipped: info, which logs every SIP message)
  --midreg-log-level <l>  MIDREG_LOG_LEVEL for midreg (default info, as shipped)
  --upstream-transport <t> tcp (default) | udp: how midreg and the drachtio references reach their
                          registrar (the Kamailio and OpenSIPS peers stay on UDP); over UDP drachtio-server's
                          socket drops the registrar's replies in bursts (docs/drachtio-findings.md, D4)
  --midreg-env <K=V>      extra environment for midreg, e.g. MIDREG_OVERLOAD_QUEUE_MS=0 (repeatable)
  --store <kind>          sqlite (default) | redis: midreg's store; redis starts Debian's redis-server on a
                          free port (appendonly yes, appendfsync everysec) and sets MIDREG_STORE
  --profile               always capture midreg CPU profiles (default: only when a target is missed)
  --keep                  keep the work dir (logs, sipp statistics)
  --help`;

interface Options {
  quick: boolean;
  only: Set<'register' | 'message' | 'scale'>;
  systems: SystemId[];
  rates: number[];
  stepSec: number;
  scaleBindings: number;
  drachtioLoglevel: string | undefined;
  midregLogLevel: string;
  upstreamTransport: 'udp' | 'tcp';
  midregEnv: Record<string, string>;
  store: 'sqlite' | 'redis';
  profile: boolean;
  keep: boolean;
}

function parseOptions(argv: string[]): Options {
  const { values } = parseArgs({
    args: argv,
    options: {
      quick: { type: 'boolean', default: false },
      only: { type: 'string', multiple: true },
      systems: { type: 'string' },
      rates: { type: 'string' },
      'step-seconds': { type: 'string' },
      'scale-bindings': { type: 'string' },
      'drachtio-loglevel': { type: 'string' },
      'midreg-log-level': { type: 'string', default: 'info' },
      'upstream-transport': { type: 'string', default: 'tcp' },
      'midreg-env': { type: 'string', multiple: true },
      store: { type: 'string', default: 'sqlite' },
      profile: { type: 'boolean', default: false },
      keep: { type: 'boolean', default: false },
      help: { type: 'boolean', default: false },
    },
    strict: true,
  });
  if (values.help) { process.stdout.write(`${HELP}\n`); process.exit(0); }
  const quick = values.quick;
  const only = new Set<'register' | 'message' | 'scale'>();
  for (const o of (values.only ?? []).flatMap((v) => v.split(','))) {
    if (o !== 'register' && o !== 'message' && o !== 'scale') throw new Error(`--only: unknown "${o}" (register, message, scale)`);
    only.add(o);
  }
  if (only.size === 0) { only.add('register'); only.add('message'); only.add('scale'); }
  const systems = values.systems ? values.systems.split(',').map((s) => s.trim()) : [...SYSTEM_IDS];
  for (const s of systems) if (!(SYSTEM_IDS as readonly string[]).includes(s)) throw new Error(`--systems: unknown "${s}" (${SYSTEM_IDS.join(', ')})`);
  const numbers = (v: string, name: string): number[] => v.split(',').map((x) => {
    const n = Number(x);
    if (!Number.isFinite(n) || n <= 0) throw new Error(`${name}: "${x}" is not a positive number`);
    return n;
  });
  const rates = values.rates
    ? numbers(values.rates, '--rates').sort((a, b) => a - b)
    : quick ? [500, 1000, 2000, 3000, 4500, 6500] : [500, 1000, 1500, 2000, 2500, 3000, 4000, 5000, 6500, 8000, 10000];
  const upstreamTransport = values['upstream-transport'];
  if (upstreamTransport !== 'udp' && upstreamTransport !== 'tcp') throw new Error(`--upstream-transport: "${upstreamTransport}" is neither udp nor tcp`);
  const midregEnv: Record<string, string> = {};
  for (const pair of values['midreg-env'] ?? []) {
    const m = /^([A-Z][A-Z0-9_]*)=(.*)$/.exec(pair);
    if (!m?.[1] || m[2] === undefined) throw new Error(`--midreg-env: "${pair}" is not NAME=value`);
    midregEnv[m[1]] = m[2];
  }
  const store = values.store;
  if (store !== 'sqlite' && store !== 'redis') throw new Error(`--store: "${store}" is neither sqlite nor redis`);
  const [stepSec] = numbers(values['step-seconds'] ?? (quick ? '2.5' : '3'), '--step-seconds');
  const [scaleBindings] = numbers(values['scale-bindings'] ?? (quick ? '100000' : '1000000'), '--scale-bindings');
  return {
    quick,
    only,
    systems: RUN_ORDER.filter((s) => systems.includes(s)),
    rates,
    stepSec: stepSec ?? 3,
    scaleBindings: Math.round(scaleBindings ?? 1_000_000),
    drachtioLoglevel: values['drachtio-loglevel'],
    midregLogLevel: values['midreg-log-level'],
    upstreamTransport,
    midregEnv,
    store,
    profile: values.profile,
    keep: values.keep,
  };
}

function envText(env: Record<string, string>): string {
  const pairs = Object.entries(env).map(([k, v]) => `${k}=${v}`);
  return pairs.length > 0 ? `; midreg with ${pairs.join(' ')}` : '';
}

// ---- records -----------------------------------------------------------------------------------

type StepLabel = 'sweep' | 'retry' | 'refine' | 'half' | 'overload' | 'profile';

interface StepRecord {
  kind: Kind;
  label: StepLabel;
  rate: number;
  calls: number;
  pass: boolean;
  why: string[];
  achievedRate: number;
  /** Completions per second up to the last successful answer (the overload measure). */
  goodputRate: number;
  successful: number;
  failed: number;
  retransmissions: number;
  timeouts: number;
  unexpectedStatuses: number[];
  responseMs: Quantiles;
  /** µs-resolution latency of a low-rate probe sent next to the load (half-max steps only). */
  probe?: ProbeResult;
  /** REGISTER half-max steps: the same probe sent straight to the Kamailio registrar, at the same time. */
  registrarProbe?: ProbeResult;
  /** Machine CPU busy (% of one core) just before the step, from outside the bench. */
  quietBeforePct: number;
  wallSec: number;
  /** CPU seconds per component during the step. */
  cpuSec: Record<string, number>;
  /** % of one core per component (the machine has `cores` of them). */
  cpuPct: Record<string, number>;
  /** CPU µs per successful transaction, per component. */
  cpuUsPerTx: Record<string, number>;
  /** Highest 1-s CPU of the busiest thread of drachtio-server / node, % of one core (the thread that saturates first). */
  peakThreadPct: Record<string, number>;
  /** CPU used on the machine by processes that are not part of the bench (% of one core). */
  otherPct: number;
  command?: string;
  errorSample?: string;
}

interface SweepRecord {
  system: SystemId;
  kind: Kind;
  skipped?: string;
  steps: StepRecord[];
  /** Highest sustained rate (0: none). */
  max: number;
  /** Every rate of the sweep was sustained: the maximum is at least `max`. */
  capped: boolean;
  /** The rate that first failed (twice), if any. */
  firstFail?: number;
  atMax?: StepRecord;
  half?: StepRecord;
  overload?: StepRecord;
}

interface TargetRecord { name: string; target: string; measured: string; pass: boolean | null; note: string }

interface RunContext {
  opts: Options;
  workDir: string;
  stamp: string;
  cores: number;
  stepNo: number;
  log(line: string): void;
}

// ---- one step ----------------------------------------------------------------------------------

interface MessageSetup {
  uasPort: number;
  senderPort: number;
  injection: string;
  registeredAt: number;
}


async function runStep(ctx: RunContext, sys: RunningSystem, kind: Kind, rate: number, label: StepLabel, msg?: MessageSetup): Promise<StepRecord> {
  ctx.stepNo++;
  // the latency step runs longer so its probe collects several hundred samples
  const stepSec = label === 'profile' ? Math.max(ctx.opts.stepSec, 4) : label === 'half' ? ctx.opts.stepSec * 1.5 : ctx.opts.stepSec;
  const calls = Math.max(1, Math.round(rate * stepSec));
  const dir = join(ctx.workDir, sys.id, `step-${String(ctx.stepNo).padStart(3, '0')}-${kind}-${rate}`);
  // answers later than that are a failure anyway (sipp has retransmitted at 0.5 and 1.5 s)
  const recvTimeoutMs = 2000;
  // a passing step never has more than ~0.5 s of calls open (no retransmission); under overload
  // sipp must keep offering the load instead of throttling on its own limit
  const limit = Math.max(50, Math.round(rate * (label === 'overload' ? 6 : 1)));
  if (kind === 'message' && msg && Date.now() - msg.registeredAt > RECEIVER_REFRESH_MS) await registerMessageUsers(ctx, sys, msg);
  const quietBeforePct = await waitForQuiet();
  // half-max steps carry a µs-resolution latency probe (≤10% extra load) next to sipp
  const probeRate = label === 'half' ? Math.min(200, Math.max(50, Math.round(rate * 0.1))) : 0;
  const probeCount = Math.floor(probeRate * stepSec * 0.9);
  const probe = (): Promise<ProbeResult | undefined> => (probeCount > 0
    ? runProbe({
      kind, target: sys.target, rate: probeRate, count: probeCount, domain: DOMAIN, timeoutMs: 4000,
      prefix: `openprobe${ctx.stepNo}x`, receivers: Array.from({ length: RECEIVERS }, (_, i) => `openrcv${i + 1}`), from: 'opensender1',
    })
    : Promise.resolve(undefined));
  const probes = [...sys.probes(), probeSipp];
  const watchers = probes.flatMap((p) => (p.pid !== undefined ? [{ name: p.name, watcher: new PeakThreadWatcher(p.pid) }] : []));
  const before = sampleCpu(probes);
  const machineBefore = machineBusyCpu();
  const started = process.hrtime.bigint();
  let load: LoadResult;
  let probed: ProbeResult | undefined;
  let registrarProbed: ProbeResult | undefined;
  let loadSec: number;
  if (kind === 'register') {
    const loadP = runLoad({
      scenario: join(SIPP_DIR, 'register.xml'), target: sys.target, localPort: await freePort(), rate, calls, limit,
      vars: { prefix: `open${sys.id.slice(0, 3)}${ctx.stepNo}x`, domain: DOMAIN, expires: '300' }, dir, recvTimeoutMs,
    });
    // the registrar's own latency under the same load, to tell its share of the end-to-end time
    const registrarProbe = (): Promise<ProbeResult | undefined> => (probeCount > 0
      ? runProbe({ kind, target: `127.0.0.1:${sys.registrar.port}`, rate: 50, count: Math.floor(50 * stepSec * 0.9), domain: DOMAIN, timeoutMs: 4000, prefix: `openregprobe${ctx.stepNo}x` })
      : Promise.resolve(undefined));
    [load, probed, registrarProbed] = await Promise.all([loadP, delay(150).then(probe), delay(170).then(registrarProbe)]);
    loadSec = Number(process.hrtime.bigint() - started) / 1e9;
  } else {
    if (!msg) throw new Error('MESSAGE step without receivers');
    const uas = startUas({ scenario: join(SIPP_DIR, 'uas-message.xml'), localPort: msg.uasPort, timeoutSec: Math.ceil(stepSec + 20), dir: join(dir, 'uas') });
    await uas.ready;
    const loadP = runLoad({
      scenario: join(SIPP_DIR, 'message.xml'), target: sys.target, localPort: msg.senderPort, rate, calls, limit,
      vars: { from: 'opensender1', domain: DOMAIN }, injection: msg.injection, dir, recvTimeoutMs,
    });
    [load, probed] = await Promise.all([loadP, delay(150).then(probe)]);
    loadSec = Number(process.hrtime.bigint() - started) / 1e9;
    await uas.finish(200);
  }
  // CPU is sampled once the UAS is gone too (sipp's time is only known once it is reaped), but
  // spread over the load itself: from the first call to the load generator's exit
  const wallSec = loadSec;
  const cpuSec = cpuDelta(before, sampleCpu(probes));
  const peakThreadPct: Record<string, number> = {};
  for (const { name, watcher } of watchers) peakThreadPct[name] = watcher.stop();
  const machineSec = machineBusyCpu() - machineBefore;
  const ours = Object.values(cpuSec).reduce((a, b) => a + b, 0);
  const cpuPct: Record<string, number> = {};
  const cpuUsPerTx: Record<string, number> = {};
  for (const [name, sec] of Object.entries(cpuSec)) {
    cpuPct[name] = (sec / wallSec) * 100;
    const tx = load.successful + (probed?.ok ?? 0);
    cpuUsPerTx[name] = tx > 0 ? (sec * 1e6) / tx : 0;
  }
  const why = describeFailure(load);
  const record: StepRecord = {
    kind, label, rate, calls,
    pass: why.length === 0,
    why,
    achievedRate: load.achievedRate,
    goodputRate: load.goodputRate,
    successful: load.successful,
    failed: load.failed,
    retransmissions: load.retransmissions,
    timeouts: load.timeouts,
    unexpectedStatuses: load.unexpectedStatuses,
    responseMs: load.responseMs,
    ...(probed ? { probe: probed } : {}),
    ...(registrarProbed ? { registrarProbe: registrarProbed } : {}),
    quietBeforePct,
    wallSec,
    cpuSec,
    cpuPct,
    cpuUsPerTx,
    peakThreadPct,
    // the bench's own orchestration is counted here too; it is idle during a step
    otherPct: Math.max(0, ((machineSec - ours) / wallSec) * 100),
    ...(why.length > 0 ? { command: load.command, errorSample: load.errorSample.slice(0, 1200) } : {}),
  };
  const cpu = Object.entries(cpuPct).map(([n, p]) => `${n} ${fmtPct(p)}${peakThreadPct[n] !== undefined ? ` [thread peak ${fmtPct(peakThreadPct[n] ?? 0)}]` : ''}`).join(' ');
  ctx.log(`  ${sys.id.padEnd(9)} ${KIND_LABEL[kind].padEnd(8)} ${label.padEnd(8)} ${String(rate).padStart(5)}/s × ${String(calls).padStart(6)}: `
    + `${record.pass ? 'ok  ' : 'FAIL'} ${fmtInt(label === 'overload' ? load.goodputRate : load.achievedRate).padStart(5)}/s  p50 ${Math.round(load.responseMs.p50)} ms p99 ${Math.round(load.responseMs.p99)} ms`
    + `${probed ? ` (probe ×${probed.ok}: p50 ${fmtMs(probed.us.p50)} p99 ${fmtMs(probed.us.p99)}${probed.lost > 0 ? `, ${probed.lost} lost` : ''})` : ''}`
    + `${registrarProbed ? ` (registrar alone: p50 ${fmtMs(registrarProbed.us.p50)} p99 ${fmtMs(registrarProbed.us.p99)})` : ''}`
    + `  cpu ${cpu} other ${fmtPct(record.otherPct)}${why.length > 0 ? `  — ${why.join('; ')}` : ''}`);
  await delay(400); // let late answers and retransmissions drain before the next step
  return record;
}

/** µs → "0.84 ms". */
const fmtMs = (us: number): string => `${(us / 1000).toFixed(2)} ms`;


// ---- sweeps ------------------------------------------------------------------------------------

async function registerMessageUsers(ctx: RunContext, sys: RunningSystem, msg: MessageSetup): Promise<string | undefined> {
  // This runs right after the REGISTER overload step, whose retransmissions and upstream
  // timeouts take seconds to die out: registering into that measured the last step, not this
  // one. So wait for the machine to be quiet, and register again once if some still failed,
  // as a real UA would after its Retry-After (REGISTER is idempotent).
  let failure: string | undefined;
  for (let attempt = 1; attempt <= 2; attempt++) {
    await waitForQuiet();
    const receivers = await runLoad({
      scenario: join(SIPP_DIR, 'register.xml'), target: sys.target, localPort: msg.uasPort, rate: 500, calls: RECEIVERS, limit: 500,
      vars: { prefix: 'openrcv', domain: DOMAIN, expires: '300' }, dir: join(ctx.workDir, sys.id, `receivers-${Date.now()}`), recvTimeoutMs: 4000,
    });
    const sender = await runLoad({
      scenario: join(SIPP_DIR, 'register.xml'), target: sys.target, localPort: msg.senderPort, rate: 10, calls: 1, limit: 1,
      vars: { prefix: 'opensender', domain: DOMAIN, expires: '300' }, dir: join(ctx.workDir, sys.id, `sender-${Date.now()}`), recvTimeoutMs: 4000,
    });
    msg.registeredAt = Date.now();
    if (receivers.successful === RECEIVERS && sender.successful === 1) return undefined;
    failure = `registering the MESSAGE users failed${attempt > 1 ? ' twice' : ''}: ${receivers.successful}/${RECEIVERS} receivers, ${sender.successful}/1 sender (${[...describeFailure(receivers), ...describeFailure(sender)].join('; ')})`;
    ctx.log(`  ${failure}${attempt === 1 ? ' — registering them again' : ''}`);
  }
  return failure;
}

async function prepareMessage(ctx: RunContext, sys: RunningSystem): Promise<{ setup: MessageSetup } | { skip: string }> {
  const injection = join(ctx.workDir, 'receivers.csv');
  writeFileSync(injection, `SEQUENTIAL\n${Array.from({ length: RECEIVERS }, (_, i) => `openrcv${i + 1};`).join('\n')}\n`);
  const setup: MessageSetup = { uasPort: await freePort(), senderPort: await freePort(), injection, registeredAt: 0 };
  const failed = await registerMessageUsers(ctx, sys, setup);
  if (failed) return { skip: failed };
  // one MESSAGE to a registered receiver must come back 200 before any load is sent
  const uas = startUas({ scenario: join(SIPP_DIR, 'uas-message.xml'), localPort: setup.uasPort, timeoutSec: 15, dir: join(ctx.workDir, sys.id, 'message-check-uas') });
  await uas.ready;
  const probe = await runLoad({
    scenario: join(SIPP_DIR, 'message.xml'), target: sys.target, localPort: setup.senderPort, rate: 1, calls: 1, limit: 1,
    vars: { from: 'opensender1', domain: DOMAIN }, injection, dir: join(ctx.workDir, sys.id, 'message-check'), recvTimeoutMs: 4000,
  });
  await uas.finish(100);
  if (probe.successful === 1) return { setup };
  const answered = probe.unexpectedStatuses.length > 0 ? `answered ${probe.unexpectedStatuses.join('/')}` : 'no answer';
  const what = sys.id === 'midreg' ? 'midreg MESSAGE routing not available' : `${sweepLabel(sys.id, 'message')}: MESSAGE to a registered user failed`;
  return { skip: `${what} (${answered} to a MESSAGE for a registered user)` };
}

async function sweep(ctx: RunContext, sys: RunningSystem, kind: Kind): Promise<SweepRecord> {
  const record: SweepRecord = { system: sys.id, kind, steps: [], max: 0, capped: false };
  let msg: MessageSetup | undefined;
  if (kind === 'message') {
    const prepared = await prepareMessage(ctx, sys);
    if ('skip' in prepared) {
      ctx.log(`  ${prepared.skip} — skipping the ${sweepLabel(sys.id, 'message')} MESSAGE row`);
      record.skipped = prepared.skip;
      return record;
    }
    msg = prepared.setup;
  }
  const step = async (rate: number, label: StepLabel): Promise<StepRecord> => {
    const s = await runStep(ctx, sys, kind, rate, label, msg);
    record.steps.push(s);
    return s;
  };
  for (const rate of ctx.opts.rates) {
    let s = await step(rate, 'sweep');
    // one blip (a single retransmission) must not end the sweep: a rate fails when it fails twice;
    // a failure while something outside the bench used the CPU gets one more try
    if (!s.pass && (!ctx.opts.quick || s.otherPct > NOISY_PCT)) s = await step(rate, 'retry');
    if (!s.pass && s.otherPct > NOISY_PCT) s = await step(rate, 'retry');
    if (!s.pass) { record.firstFail = rate; break; }
    record.max = rate;
    record.atMax = s;
  }
  record.capped = record.firstFail === undefined;
  if (!ctx.opts.quick && record.firstFail !== undefined && record.firstFail - record.max >= 500) {
    const mid = Math.round((record.max + record.firstFail) / 2 / 50) * 50;
    const s = await step(mid, 'refine');
    if (s.pass) { record.max = mid; record.atMax = s; }
  }
  if (record.max > 0) {
    // measured once more when something outside the bench took CPU during the step
    const measure = async (rate: number, label: StepLabel): Promise<StepRecord> => {
      const s = await step(rate, label);
      return s.otherPct > NOISY_PCT ? step(rate, label) : s;
    };
    record.half = await measure(Math.max(10, Math.round(record.max / 2 / 10) * 10), 'half');
    record.overload = await measure(Math.round(record.max * 1.5 / 10) * 10, 'overload');
  }
  return record;
}

/** Re-run midreg's heaviest step under node --cpu-prof and summarize the profile. */
async function profileMidreg(ctx: RunContext, sys: RunningSystem, rec: SweepRecord): Promise<ProfileSummary | undefined> {
  if (!sys.restartApp) return undefined;
  const rate = rec.firstFail ?? rec.max;
  if (rate <= 0) return undefined;
  const name = `${ctx.stamp}-midreg-${rec.kind}.cpuprofile`;
  ctx.log(`  profiling midreg (node --cpu-prof) during a ${KIND_LABEL[rec.kind]} step at ${rate}/s …`);
  await sys.restartApp({ dir: RESULTS_DIR, name });
  let msg: MessageSetup | undefined;
  if (rec.kind === 'message') {
    const prepared = await prepareMessage(ctx, sys);
    if ('skip' in prepared) { ctx.log(`  cannot profile MESSAGE: ${prepared.skip}`); await sys.restartApp(); return undefined; }
    msg = prepared.setup;
  }
  await runStep(ctx, sys, rec.kind, rate, 'profile', msg);
  await sys.restartApp(); // stopping the profiled process writes the profile
  const file = join(RESULTS_DIR, name);
  if (!existsSync(file)) { ctx.log(`  no profile written at ${file}`); return undefined; }
  return summarizeProfile(file);
}

// ---- targets -----------------------------------------------------------------------------------

function sweepOf(results: SweepRecord[], system: SystemId, kind: Kind): SweepRecord | undefined {
  return results.find((r) => r.system === system && r.kind === kind);
}

const usable = (r: SweepRecord | undefined): r is SweepRecord => r !== undefined && r.skipped === undefined;
const maxText = (r: SweepRecord): string => `${r.capped ? '≥' : ''}${fmtInt(r.max)}/s`;

function missedBy(measured: number, target: number, lowerIsBetter: boolean): string {
  if (target === 0) return '';
  const pct = lowerIsBetter ? ((measured - target) / target) * 100 : ((target - measured) / target) * 100;
  return `missed by ${pct.toFixed(0)}%`;
}

function evaluateSipTargets(results: SweepRecord[]): TargetRecord[] {
  const out: TargetRecord[] = [];
  for (const kind of KINDS) {
    const mid = sweepOf(results, 'midreg', kind);
    const ref = sweepOf(results, 'reference', kind);
    const name = KIND_LABEL[kind];
    if (!mid) continue;
    if (mid.skipped !== undefined) {
      out.push({ name: `midreg ${name} ≥ 0.9× reference`, target: '≥ 0.9×', measured: 'skipped', pass: null, note: mid.skipped });
      continue;
    }
    if (usable(ref) && ref.max > 0) {
      const ratio = mid.max / ref.max;
      const pass = ratio >= 0.9 || (mid.capped && ref.capped);
      const note = mid.capped || ref.capped ? 'a sweep reached the highest rate tried: ratio is a bound' : pass ? '' : missedBy(ratio, 0.9, false);
      out.push({ name: `midreg ${name} ≥ 0.9× reference`, target: '≥ 0.90×', measured: `${ratio.toFixed(2)}× (${maxText(mid)} vs ${maxText(ref)})`, pass, note });
    } else {
      out.push({ name: `midreg ${name} ≥ 0.9× reference`, target: '≥ 0.90×', measured: 'n/a', pass: null, note: 'reference not measured' });
    }
    if (mid.half) {
      const h = mid.half;
      const probe = h.probe && h.probe.ok > 0 ? h.probe : undefined;
      const p99 = probe ? probe.us.p99 / 1000 : h.responseMs.p99;
      const measured = probe
        ? `${fmtMs(probe.us.p99)} (p50 ${fmtMs(probe.us.p50)}; probe ×${probe.ok}${probe.lost > 0 ? `, ${probe.lost} lost` : ''})`
          + `${h.registrarProbe ? ` · registrar alone p99 ${fmtMs(h.registrarProbe.us.p99)}` : ''} · sipp p50/p99 ${Math.round(h.responseMs.p50)}/${Math.round(h.responseMs.p99)} ms`
        : `${Math.round(p99)} ms (sipp, 4 ms ticks; p50 ${Math.round(h.responseMs.p50)} ms)`;
      const pass = p99 <= 5 && (probe?.lost ?? 0) === 0;
      out.push({ name: `midreg ${name} p99 at ½ max (${fmtInt(h.rate)}/s)`, target: '≤ 5 ms', measured, pass, note: pass ? '' : p99 > 5 ? missedBy(p99, 5, true) : 'probe requests lost' });
    }
    if (mid.overload) {
      const good = mid.overload.goodputRate;
      const pass = good >= mid.max;
      out.push({
        name: `midreg ${name} overload 1.5× (${fmtInt(mid.overload.rate)}/s offered)`, target: `≥ ${fmtInt(mid.max)}/s completed`,
        measured: `${fmtInt(good)}/s completed, ${fmtInt(mid.overload.failed)} failed, ${fmtInt(mid.overload.retransmissions)} retrans`,
        pass, note: pass ? '' : missedBy(good, mid.max, false),
      });
    }
  }
  return out;
}

function evaluateScaleTargets(s: ScaleResult): TargetRecord[] {
  const n = fmtInt(s.bindings);
  const rss = Math.max(s.lookups.rssMb, s.start.rssMb);
  const sweepMax = s.sweep.callMs.max;
  const t = (name: string, target: string, measured: string, pass: boolean, note: string): TargetRecord => ({ name, target, measured, pass, note: pass ? '' : note });
  return [
    t(`${n} bindings: lookup p99`, '< 1 ms', `${fmt1(s.lookups.us.p99)} µs (p50 ${fmt1(s.lookups.us.p50)} µs, max ${fmtInt(s.lookups.us.max)} µs)`, s.lookups.us.p99 < 1000, missedBy(s.lookups.us.p99, 1000, true)),
    t(`${n} bindings: node RSS`, '< 300 MB', `${fmt1(rss)} MB`, rss < 300, missedBy(rss, 300, true)),
    t(`${n} bindings: start (none expired)`, '< 3 s', `${fmtInt(s.start.totalMs)} ms`, s.start.totalMs < 3000, missedBy(s.start.totalMs, 3000, true)),
    t(`${n} bindings: start (${(s.expiredFraction * 100).toFixed(0)}% expired)`, '< 3 s', `${fmtInt(s.startWithExpired.totalMs)} ms (then a background sweep of ${fmtInt(s.startWithExpired.purgeMs)} ms)`, s.startWithExpired.totalMs < 3000, missedBy(s.startWithExpired.totalMs, 3000, true)),
    t(`${n} bindings: expiry sweep, worst step`, '≤ 10 ms', `${fmt1(sweepMax)} ms (p50 ${fmt1(s.sweep.callMs.p50)} ms, p99 ${fmt1(s.sweep.callMs.p99)} ms over ${fmtInt(s.sweep.calls)} steps; first, cold: ${fmt1(s.sweep.firstCall.ms)} ms)${worstSplit(s.sweep.worstStep)}`, sweepMax <= 10,
      missedBy(sweepMax, 10, true)),
  ];
}

// ---- report ------------------------------------------------------------------------------------

function throughputTable(results: SweepRecord[], systems: SystemId[]): Table {
  const rows = systems.map((id) => {
    const cells = [SYSTEM_LABELS[id]];
    for (const kind of KINDS) {
      const r = sweepOf(results, id, kind);
      if (!r) { cells.push('—', '—', '—'); continue; }
      if (r.skipped) { cells.push('skipped', '', ''); continue; }
      cells.push(r.max > 0 ? maxText(r) : 'none',
        r.half ? latencyCell(r.half) : '',
        r.overload ? `${fmtInt(r.overload.goodputRate)}/s${r.overload.failed > 0 ? ` (${fmtInt(r.overload.failed)} failed)` : ''}` : '');
    }
    return cells;
  });
  const mid = (kind: Kind): SweepRecord | undefined => sweepOf(results, 'midreg', kind);
  const notes: string[] = [
    'sustained = 0 failed calls, 0 retransmissions, ≥95% of the offered rate (sipp statistics); each rate is tried again once when it fails',
    'p50/p99 at half the maximum: µs-resolution probe requests sent next to the sipp load (sipp\'s own -trace_rtt, in brackets, ticks in 4 ms steps: it reads CLOCK_MONOTONIC_COARSE)',
    'overload: successful completions per second with 1.5× the maximum offered',
  ];
  for (const kind of KINDS) {
    const m = mid(kind);
    if (!usable(m) || m.max === 0) continue;
    const peers = (['reference', 'proxy', 'kamailio', 'opensips'] as const).filter((other) => {
      const o = sweepOf(results, other, kind);
      return usable(o) && o.max > 0;
    });
    const ratios = peers.map((other) => {
      const o = sweepOf(results, other, kind);
      return o ? `midreg/${other} ${(m.max / o.max).toFixed(2)}× (${maxText(m)} vs ${maxText(o)})` : '';
    });
    if (ratios.length > 0) {
      const cpu = ['midreg' as const, ...peers].flatMap((id) => {
        const text = ownCpuText(sweepOf(results, id, kind)?.atMax);
        return text ? [`${id} ${text}`] : [];
      });
      notes.push(`${KIND_LABEL[kind]}, same run: ${ratios.join(', ')}${cpu.length > 0 ? `; CPU µs per ${KIND_LABEL[kind]} at each max: ${cpu.join(', ')}` : ''}`);
    }
  }
  const regAlone = results.filter((r) => r.kind === 'register' && r.half?.registrarProbe)
    .map((r) => `${sweepLabel(r.system, r.kind)} ${fmtMs(r.half?.registrarProbe?.us.p50 ?? 0)} / ${fmtMs(r.half?.registrarProbe?.us.p99 ?? 0)}`);
  if (regAlone.length > 0) notes.push(`the Kamailio registrar alone during those REGISTER half-max steps (p50/p99, probed directly): ${regAlone.join('; ')}`);
  for (const r of results.filter((x) => x.skipped)) notes.push(`${sweepLabel(r.system, r.kind)} ${KIND_LABEL[r.kind]}: ${r.skipped}`);
  for (const id of systems) {
    const note = SYSTEM_NOTES[id];
    if (note && results.some((r) => r.system === id && !r.skipped)) notes.push(note);
  }
  return {
    title: 'Max sustained rate (2 CPU cores shared by everything, all on 127.0.0.1)',
    head: ['system', 'REGISTER max', 'p50/p99 @½', 'overload 1.5×', 'MESSAGE max', 'p50/p99 @½', 'overload 1.5×'],
    rows,
    notes,
  };
}

/** The system's own CPU per request at a step (node + drachtio, or the peer's process group), excluding registrar and sipp. */
function ownCpuText(s: StepRecord | undefined): string {
  if (!s) return '';
  const us = (name: string): number | undefined => (s.cpuSec[name] === undefined ? undefined : s.cpuUsPerTx[name] ?? 0);
  const node = us('node');
  const drachtio = us('drachtio');
  if (node !== undefined) return `node ${fmtInt(node)}${drachtio !== undefined ? ` + drachtio ${fmtInt(drachtio)}` : ''}`;
  for (const name of ['opensips', 'kamailio-peer']) {
    const v = us(name);
    if (v !== undefined) return `${fmtInt(v)} (process group)`;
  }
  return '';
}

function latencyCell(s: StepRecord): string {
  const sipp = `${Math.round(s.responseMs.p50)}/${Math.round(s.responseMs.p99)}`;
  if (!s.probe || s.probe.ok === 0) return `${sipp} ms (sipp)`;
  return `${fmtMs(s.probe.us.p50).replace(' ms', '')} / ${fmtMs(s.probe.us.p99)} [${sipp}]`;
}

const CPU_COLUMNS = ['drachtio', 'node', 'kamailio-peer', 'opensips', 'kamailio-registrar', 'sipp'] as const;

function cpuTable(results: SweepRecord[], which: 'atMax' | 'half'): Table {
  const rows: string[][] = [];
  for (const r of results) {
    const s = r[which];
    if (!s) continue;
    const cell = (name: string): string => {
      if (s.cpuSec[name] === undefined) return '—';
      const thread = s.peakThreadPct[name];
      return `${fmtPct(s.cpuPct[name] ?? 0)}${thread !== undefined ? ` [${fmtPct(thread)}]` : ''} · ${fmtInt(s.cpuUsPerTx[name] ?? 0)} µs`;
    };
    const total = Object.values(s.cpuPct).reduce((a, b) => a + b, 0);
    rows.push([`${sweepLabel(r.system, r.kind)} ${KIND_LABEL[r.kind]} @${fmtInt(s.rate)}/s`, ...CPU_COLUMNS.map(cell), fmtPct(total), fmtPct(s.otherPct)]);
  }
  return {
    title: which === 'atMax' ? 'CPU at the max sustained step (% of one core · CPU µs per transaction)' : 'CPU at half the maximum (% of one core · CPU µs per transaction)',
    head: ['system / step', ...CPU_COLUMNS, 'total', 'other'],
    rows,
    notes: ['from /proc/<pid>/stat utime+stime before/after each step, averaged over the whole step (Kamailio, OpenSIPS: the whole process group; sipp: UAC+UAS, reaped); [n%] = the busiest thread of drachtio-server / node over its busiest second (100% = that thread is saturated); "other" = the rest of the machine (not the bench)'],
  };
}

function scaleTable(s: ScaleResult): Table {
  const rows: string[][] = [
    ['bindings (AoRs, one contact each)', fmtInt(s.bindings)],
    ['fill through LocationStore.replaceAor (1 tx per AoR)', `${fmt1(s.fillSec)} s (${fmtInt(s.fillPerSec)}/s)`],
    ['SQLite file size', `${fmt1(s.fileBytes / 1048576)} MB (${fmtInt(s.fileBytes / s.bindings)} B per binding)`],
    ['node RSS after open + lookups', `${fmt1(Math.max(s.lookups.rssMb, s.start.rssMb))} MB (V8 heap ${fmt1(s.lookups.heapMb)} MB)`],
    [`liveBindings() × ${fmtInt(s.lookups.us.count)} random AoRs`, `p50 ${fmt1(s.lookups.us.p50)} µs, p99 ${fmt1(s.lookups.us.p99)} µs, max ${fmtInt(s.lookups.us.max)} µs`],
    ['start: open + migrations + countStored()', `${fmtInt(s.start.totalMs)} ms (open ${fmtInt(s.start.openMs)}, counts ${fmtInt(s.start.countsMs)})`],
    [`start with ${(s.expiredFraction * 100).toFixed(0)}% expired`, `${fmtInt(s.startWithExpired.totalMs)} ms (the ${fmtInt(s.startWithExpired.purged)} expired then swept in the background in ${fmtInt(s.startWithExpired.purgeMs)} ms)`],
    ['expiry sweep (ExpirySweeper), time per step', `p50 ${fmt1(s.sweep.callMs.p50)} ms, p99 ${fmt1(s.sweep.callMs.p99)} ms, max ${fmt1(s.sweep.callMs.max)} ms${worstSplit(s.sweep.worstStep)}`],
    ['expiry sweep, first step (cold cache)', `${fmt1(s.sweep.firstCall.ms)} ms (${fmtInt(s.sweep.firstCall.removed)} bindings)`],
    ['expiry sweep total', `${fmtInt(s.sweep.removed)} expired in ${fmtInt(s.sweep.calls)} steps of ${fmtInt(s.sweep.batchRange.min)}–${fmtInt(s.sweep.batchRange.max)} rows, ${fmt1(s.sweep.totalMs / 1000)} s`],
  ];
  return { title: `Replica at ${fmtInt(s.bindings)} bindings (no SIP)`, head: ['measure', 'value'], rows };
}

function targetsTable(targets: TargetRecord[]): Table {
  return {
    title: 'Targets',
    head: ['target', 'wanted', 'measured', 'result', 'note'],
    rows: targets.map((t) => [t.name, t.target, t.measured, t.pass === null ? 'n/a' : t.pass ? 'PASS' : 'FAIL', t.note]),
  };
}

// ---- main --------------------------------------------------------------------------------------


function prerequisites(): string[] {
  const missing: string[] = [];
  const drachtio = process.env['DRACHTIO_BIN'] || DRACHTIO_BIN_DEFAULT;
  try { accessSync(drachtio, constants.X_OK); } catch { missing.push(`drachtio-server (DRACHTIO_BIN=${drachtio})`); }
  if (version('kamailio', ['-v']) === 'unavailable') missing.push('kamailio');
  if (version('sipp', ['-v']) === 'unavailable') missing.push('sipp (Debian sip-tester)');
  if (!existsSync(join(REPO_ROOT, 'dist', 'app', 'main.js'))) missing.push('dist/app/main.js (npm run build)');
  return missing;
}

/** A redis-server for --store redis, on a free port of 127.0.0.1. */
async function startBenchRedis(workDir: string): Promise<{ url: string; usage(): string; stop(): Promise<void> }> {
  const port = await freePort();
  const dir = join(workDir, 'redis');
  mkdirSync(dir, { recursive: true });
  const child = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--dir', dir, '--save', '', '--appendonly', 'yes', '--appendfsync', 'everysec'], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  child.stdout.on('data', (d: Buffer) => { out += d.toString(); });
  const deadline = Date.now() + 10_000;
  while (!/Ready to accept connections/.test(out)) {
    if (Date.now() > deadline || child.exitCode !== null) throw new Error(`redis-server did not start: ${out.slice(-500)}`);
    await delay(50);
  }
  return {
    url: `redis://127.0.0.1:${port}`,
    /** redis-server's own CPU and the AoR writes (EVALSHA) it ran, for the capacity plan. */
    usage() {
      const info = spawnSync('redis-cli', ['-p', String(port), 'info', 'all'], { encoding: 'utf8' }).stdout;
      const num = (name: string): number => Number(new RegExp(`^${name}:([\\d.]+)`, 'm').exec(info)?.[1] ?? Number.NaN);
      const calls = (cmd: string): number => Number(new RegExp(`^cmdstat_${cmd}:calls=(\\d+)`, 'm').exec(info)?.[1] ?? 0);
      const cpuSec = num('used_cpu_user') + num('used_cpu_sys');
      const writes = calls('evalsha') + calls('eval');
      return `redis-server CPU ${cpuSec.toFixed(2)} s for ${writes} AoR writes (EVALSHA) and ${num('total_commands_processed')} commands in all: ${writes > 0 ? ((cpuSec * 1e6) / writes).toFixed(0) : '?'} µs of Redis CPU per AoR write, MESSAGE reads included`;
    },
    stop: () => new Promise<void>((resolve) => { child.once('exit', () => resolve()); child.kill('SIGTERM'); }),
  };
}

async function main(): Promise<void> {
  let opts: Options;
  try {
    opts = parseOptions(process.argv.slice(2));
  } catch (err) {
    process.stderr.write(`bench: ${err instanceof Error ? err.message : String(err)}\n${HELP}\n`);
    process.exit(2);
  }
  const startedAt = new Date();
  const stamp = runStamp(startedAt);
  mkdirSync(RESULTS_DIR, { recursive: true });
  const workDir = mkdtempSync(join(tmpdir(), 'mrb-'));
  const { lines, log } = runLog();
  const clock = (): string => {
    const sec = Math.round((Date.now() - startedAt.getTime()) / 1000);
    return `${String(Math.floor(sec / 60)).padStart(2, '0')}:${String(sec % 60).padStart(2, '0')}`;
  };
  const ctx: RunContext = { opts, workDir, stamp, cores: cpus().length, stepNo: 0, log };
  const running = new Set<RunningSystem>();
  let interrupted = false;
  const onSignal = (sig: NodeJS.Signals): void => {
    if (interrupted) process.exit(130);
    interrupted = true;
    process.stderr.write(`\n${sig}: stopping everything the bench started …\n`);
    void Promise.all([...running].map((s) => s.stop())).finally(() => process.exit(130));
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);

  const meta = {
    startedAt: startedAt.toISOString(),
    options: { ...opts, only: [...opts.only] },
    ...runEnvironment(),
    opensips: opts.systems.includes('opensips') && !systemUnavailable('opensips') ? version(OPENSIPS_BIN, ['-V']) : undefined,
  };
  log(`midreg bench ${stamp}: ${environmentLine(meta, meta.opensips ? `, ${meta.opensips.replace(/^version: /, '')}` : '')}`);
  log(`options: ${opts.quick ? 'quick, ' : ''}${[...opts.only].join('+')}, systems ${opts.systems.join(',')}, rates ${opts.rates.join(',')}/s, ${opts.stepSec} s per step, drachtio loglevel ${opts.drachtioLoglevel ?? 'as shipped'}, midreg log level ${opts.midregLogLevel}, upstream over ${opts.upstreamTransport}${envText(opts.midregEnv)}; work dir ${workDir}`);

  // --store redis: one redis-server for the run, as an operator would run it (AOF, fsync each second).
  let redis: { usage(): string; stop(): Promise<void> } | undefined;
  if (opts.store === 'redis') {
    const server = await startBenchRedis(workDir);
    redis = server;
    opts.midregEnv['MIDREG_STORE'] = server.url;
    log(`store: redis-server ${version('redis-server', ['--version']).replace(/^Redis server /, '')} at ${server.url}, appendonly yes, appendfsync everysec`);
  }
  const sweeps: SweepRecord[] = [];
  const profiles: ProfileSummary[] = [];
  const errors: string[] = [];
  const sipKinds = KINDS.filter((k) => opts.only.has(k));
  if (sipKinds.length > 0) {
    const missing = prerequisites();
    if (missing.length > 0) {
      const text = `SIP benchmark skipped: missing ${missing.join(', ')}`;
      log(text);
      errors.push(text);
    } else {
      for (const id of opts.systems) {
        if (interrupted) break;
        log(`\n== ${SYSTEM_LABELS[id]}  [${clock()}]`);
        const unavailable = systemUnavailable(id);
        if (unavailable) {
          log(`  ${SYSTEM_LABELS[id]} ${unavailable}`);
          for (const kind of sipKinds) sweeps.push({ system: id, kind, skipped: unavailable, steps: [], max: 0, capped: false });
          continue;
        }
        let sys: RunningSystem | undefined;
        try {
          sys = await startSystem(id, { workDir, midregLogLevel: opts.midregLogLevel, upstreamTransport: opts.upstreamTransport, midregEnv: opts.midregEnv, ...(opts.drachtioLoglevel ? { drachtioLoglevel: opts.drachtioLoglevel } : {}) });
          running.add(sys);
          for (const kind of sipKinds) {
            if (sys.beforeSweep) {
              await sys.beforeSweep(kind);
              if (id === 'opensips') log(`  ${sweepLabel(id, kind)} for the ${KIND_LABEL[kind]} sweep`);
            }
            const rec = await sweep(ctx, sys, kind);
            sweeps.push(rec);
            if (!rec.skipped) log(`  => ${sweepLabel(id, kind)} ${KIND_LABEL[kind]}: max sustained ${maxText(rec)}${rec.firstFail ? ` (${fmtInt(rec.firstFail)}/s failed)` : ''}`);
          }
          if (id === 'midreg') {
            const missed = evaluateSipTargets(sweeps).filter((t) => t.pass === false);
            for (const kind of sipKinds) {
              const rec = sweepOf(sweeps, 'midreg', kind);
              if (!usable(rec)) continue;
              if (opts.profile || missed.some((t) => t.name.startsWith(`midreg ${KIND_LABEL[kind]}`))) {
                const summary = await profileMidreg(ctx, sys, rec);
                if (summary) { profiles.push(summary); for (const l of formatProfile(summary, `midreg ${KIND_LABEL[kind]} profile`)) log(l); }
              }
            }
          }
        } catch (err) {
          const text = `${SYSTEM_LABELS[id]}: ${err instanceof Error ? err.message : String(err)}`;
          log(`  ERROR ${text}`);
          errors.push(text);
        } finally {
          if (sys) { await sys.stop(); running.delete(sys); }
        }
      }
    }
  }

  let scale: ScaleResult | undefined;
  if (opts.only.has('scale') && !interrupted) {
    log(`\n== replica scale (${fmtInt(opts.scaleBindings)} bindings, no SIP)  [${clock()}]`);
    try {
      scale = await runScale({ bindings: opts.scaleBindings, lookups: opts.quick ? 20_000 : 100_000, expiredFraction: 0.1, log: (l) => log(`  ${l}`) });
    } catch (err) {
      const text = `scale: ${err instanceof Error ? err.message : String(err)}`;
      log(`  ERROR ${text}`);
      errors.push(text);
    }
  }

  const targets = [...evaluateSipTargets(sweeps), ...(scale ? evaluateScaleTargets(scale) : [])];
  const tables: Table[] = [];
  if (sweeps.length > 0) {
    tables.push(throughputTable(sweeps, opts.systems), cpuTable(sweeps, 'atMax'), cpuTable(sweeps, 'half'));
  }
  if (scale) tables.push(scaleTable(scale));
  if (targets.length > 0) tables.push(targetsTable(targets));
  // In the log and so in the results file: redis-server's CPU is not one of the bench's columns.
  if (redis) log(redis.usage());
  const durationSec = (Date.now() - startedAt.getTime()) / 1000;

  log('');
  for (const t of tables) { for (const l of textTable(t)) log(l); log(''); }
  for (const p of profiles) for (const l of formatProfile(p, 'midreg CPU profile')) log(l);
  for (const e of errors) log(`ERROR ${e}`);
  log(`bench finished in ${(durationSec / 60).toFixed(1)} min`);

  const base = join(RESULTS_DIR, stamp);
  const json = { meta: { ...meta, durationSec, workDir: opts.keep ? workDir : undefined }, sweeps, scale, targets, profiles, errors };
  writeFileSync(`${base}.json`, `${JSON.stringify(json, null, 2)}\n`);
  const md = [
    `# midreg benchmark ${stamp}`,
    '',
    `${meta.host.cpus} × ${meta.host.model} · node ${meta.node} · drachtio ${meta.drachtio} · ${meta.kamailio.replace(/^version: /, '')} · ${meta.sipp}${meta.opensips ? ` · ${meta.opensips.replace(/^version: /, '')}` : ''} · git ${meta.git}`,
    '',
    `Options: ${opts.quick ? '--quick, ' : ''}${[...opts.only].join('+')}; rates ${opts.rates.join(', ')}/s, ${opts.stepSec} s per step; drachtio loglevel ${opts.drachtioLoglevel ?? 'as shipped (drachtio.conf.xml)'}; midreg log level ${opts.midregLogLevel}; registrar reached over ${opts.upstreamTransport.toUpperCase()} by the drachtio systems${envText(opts.midregEnv)}. Took ${(durationSec / 60).toFixed(1)} min.`,
    '',
    ...tables.flatMap(markdownTable),
    ...(profiles.length > 0 ? ['### midreg CPU profiles', '', '```', ...profiles.flatMap((p) => formatProfile(p, 'midreg CPU profile')), '```', ''] : []),
    ...(errors.length > 0 ? ['### Errors', '', ...errors.map((e) => `- ${e}`), ''] : []),
    '### Steps',
    '',
    '```',
    ...lines.filter((l) => /^\s+\S+\s+(REGISTER|MESSAGE)\s/.test(l)),
    '```',
    '',
  ];
  writeFileSync(`${base}.md`, md.join('\n'));
  log(`results: ${base}.json, ${base}.md`);
  await redis?.stop();
  if (!opts.keep) rmSync(workDir, { recursive: true, force: true });
  process.exit(errors.length > 0 ? 1 : 0);
}

main().catch((err: unknown) => {
  process.stderr.write(`bench: ${err instanceof Error ? err.stack ?? err.message : String(err)}\n`);
  process.exit(1);
});
