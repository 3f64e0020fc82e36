#!/usr/bin/env node
// `npm run bench:throttle`: contact throttling (MIDREG_MODE=contact, README "Throttling") against
// mirroring and against OpenSIPS' mid_registrar throttling modes (issue 18, "Bench"). Everything on
// 127.0.0.1, each system in front of its own fresh Kamailio registrar (test/kamailio/kamailio.cfg
// with MAX_EXPIRES=3600, so the registrar grants the 3600 s a throttling mid-registrar asks for),
// every load bounded and stopping by itself:
//
//   1. population: for midreg mirror, midreg contact, OpenSIPS mode 1 (contact throttling) and
//      OpenSIPS mode 2 (AoR throttling): P phones (bench/sipp/register-refresh.xml, users `openthr…`)
//      each register once and refresh 9 times 1 s apart in the same call (same Call-ID, Contact and
//      port, rising CSeq), P new phones per second for 1 s: P REGISTER/s for 10 s. Counted: the
//      REGISTERs the phones sent, the REGISTERs that reached the registrar (its own statistics,
//      kamcmd stats core:rcv_requests_register), the CPU per REGISTER and p50/p99.
//   2. CPU per REGISTER in the window when only refreshes are sent (from 1.5 s to 9 s): in contact
//      mode those are absorbed, in mirror mode relayed — the cost of an answered vs a relayed one.
//   3. sustained refresh rate of a registered population, midreg mirror vs contact (vs aor): at each
//      rate R, R phones (bench/sipp/register-population.xml) first register at a fixed rate every
//      system sustains (--register-rate, every first REGISTER relayed), then, once all are
//      registered, refresh once a second each, in their own slots: R REGISTER/s of refreshes (same
//      Call-ID, Contact and port, CSeq + 1: absorbed in contact and aor modes) for --steady seconds
//      plus a ramp second either side. Phones refresh far more often than they boot; a step in
//      which R new phones all registered in the same second (the design until 2026-12-05) measured
//      the relay rate of a boot storm, i.e. mirror mode's work, in every mode. The rate criterion
//      is the refresh rate answered inside the steady window; the registration phase is reported
//      beside it. A step passes with 0 failed calls, 0 retransmissions, every REGISTER answered
//      200, every phone registered before the refresh phase and ≥ 95 % of R in the window.
//
// Saves bench/results/<timestamp>.json and .md.
//
//   node dist/bench/throttle.js [--phones 1000] [--rates 2000,2500,3000,3500,4000,5000,6000,7000,8000]
//     [--register-rate 1000] [--steady 8] [--no-sweep] [--keep]
//     [--systems midreg-mirror,midreg-contact,midreg-aor,opensips-1,opensips-2] [--profile]
import { existsSync, mkdirSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { kamcmd } from '../test/support/kamailio.js';
import { cpuDelta, PeakThreadWatcher, probeGroup, probeProcess, reapedChildrenCpu, sampleCpu, waitForQuiet, type CpuProbe, type CpuSample } from './cpu.js';
import { quantiles, runLoad, type LoadResult, type Quantiles } from './load.js';
import {
  BENCH_DIR, delay, finishRun, freePort, KAMAILIO_CFG, type KamailioService, environmentLine, OPENSIPS_START, resultsHeader, runBench, type Service, startDrachtio, startKamailio, startMidreg, startOpensips, startRun,
} from './procs.js';
import { runProbe } from './probe.js';
import { formatProfile, summarizeProfile, type ProfileSummary } from './profile.js';
import { fmt1, fmtInt, markdownTable, textTable, type Table } from './report.js';

const SCENARIO = join(BENCH_DIR, 'sipp', 'register-refresh.xml');
const SWEEP_SCENARIO = join(BENCH_DIR, 'sipp', 'register-population.xml');
const DOMAIN = 'example.test';
/** REGISTERs per phone in the scenario: 1 + 9 refreshes, 1 s apart. */
const PER_PHONE = 10;
/** What the phones ask for (Expires), and what a throttling mid-registrar asks the registrar for. */
const PHONE_EXPIRES = 120;
const OUTGOING_EXPIRES = 3600;
/** midreg's default MIDREG_REFRESH_MARGIN_SEC (app/config.ts). */
const REFRESH_MARGIN = 60;
/** The issue's population: phones refreshing every 60 s. */
const REFRESH_PERIOD = 60;
/**
 * sipp's socket buffers: 4 MiB (net.core.rmem_max here). With the OS default its socket dropped
 * hundreds of 200 OKs per step at 2,500/s (/proc/net/udp), and each showed up as a retransmission.
 */
const SIPP_BUFFER_BYTES = 4 * 1024 * 1024;
/** Refresh-only window of the population step (ms since sipp started): after every first REGISTER, before the last refresh. */
const WINDOW = { fromMs: 1500, toMs: 9000 };
/**
 * Sweep step: from the last phone's scheduled first REGISTER to the first refresh. Late answers
 * to first REGISTERs (and midreg's batched replica writes) land here, not in the refresh phase.
 */
const REGISTRATION_MARGIN_MS = 2000;
/** Sweep step: the registration phase is measured up to this long before the first refresh is due. */
const REGISTRATION_END_MS = 200;
/** Sweep step: the refresh phase's first and last second are ramps (sipp's timers, the last answers), left out of the steady window. */
const RAMP_SEC = 1;

const DEFAULT_RATES = '2000,2500,3000,3500,4000,5000,6000,7000,8000';

const HELP = `usage: node dist/bench/throttle.js [options]   (npm run bench:throttle -- [options])
  --phones <n>   phones in the population step, = REGISTER/s for 10 s (default 1000)
  --rates <list> refresh REGISTER/s tried in the sweep (R phones refreshing once a second each), ascending;
                 a mode stops at its first rate not sustained twice (default ${DEFAULT_RATES})
  --register-rate <n>  sweep: first REGISTERs/s while the step's phones register, before they refresh (default 1000)
  --steady <s>   sweep: seconds of the steady refresh window each step measures (default 8)
  --no-sweep     population step only
  --keep         keep the work dir (logs, sipp statistics)
  --systems <l>  systems to run (default: midreg-mirror,midreg-contact,midreg-aor,opensips-1,opensips-2)
  --profile      run midreg under node --cpu-prof and summarize each system's profile
  --help`;

interface Options { phones: number; rates: number[]; registerRate: number; steady: number; sweep: boolean; keep: boolean; systems: SystemName[]; profile: boolean }

function parseOptions(argv: string[]): Options {
  const { values } = parseArgs({
    args: argv,
    options: {
      phones: { type: 'string', default: '1000' },
      rates: { type: 'string', default: DEFAULT_RATES },
      'register-rate': { type: 'string', default: '1000' },
      steady: { type: 'string', default: '8' },
      'no-sweep': { type: 'boolean', default: false },
      keep: { type: 'boolean', default: false },
      systems: { type: 'string', default: ALL_SYSTEMS.join(',') },
      profile: { type: 'boolean', default: false },
      help: { type: 'boolean', default: false },
    },
    strict: true,
  });
  if (values.help) { process.stdout.write(`${HELP}\n`); process.exit(0); }
  const phones = Number(values.phones);
  if (!Number.isInteger(phones) || phones <= 0) throw new Error(`--phones: "${values.phones}" is not a positive integer`);
  const rates = values.rates.split(',').map(Number);
  if (rates.some((r) => !Number.isInteger(r) || r <= 0)) throw new Error(`--rates: "${values.rates}" is not a list of positive integers`);
  const registerRate = Number(values['register-rate']);
  if (!Number.isInteger(registerRate) || registerRate <= 0) throw new Error(`--register-rate: "${values['register-rate']}" is not a positive integer`);
  const steady = Number(values.steady);
  if (!Number.isInteger(steady) || steady < 2) throw new Error(`--steady: "${values.steady}" is not an integer ≥ 2`);
  const systems = values.systems.split(',').map((x) => x.trim());
  const unknown = systems.filter((x) => !(ALL_SYSTEMS as readonly string[]).includes(x));
  if (unknown.length > 0) throw new Error(`--systems: unknown ${unknown.join(', ')}`);
  return { phones, rates: rates.sort((a, b) => a - b), registerRate, steady, sweep: !values['no-sweep'], keep: values.keep, systems: systems as SystemName[], profile: values.profile };
}

// ---- the systems -------------------------------------------------------------------------------

const ALL_SYSTEMS = ['midreg-mirror', 'midreg-contact', 'midreg-aor', 'opensips-1', 'opensips-2'] as const;
type SystemName = (typeof ALL_SYSTEMS)[number];
const LABELS: Record<SystemName, string> = {
  'midreg-mirror': 'midreg mirror',
  'midreg-contact': 'midreg contact',
  'midreg-aor': 'midreg aor',
  'opensips-1': 'OpenSIPS mode 1 (contact throttling)',
  'opensips-2': 'OpenSIPS mode 2 (AoR throttling)',
};

interface Sys {
  name: SystemName;
  target: string;
  registrar: KamailioService;
  /** The mid-registrar's own CPU: node (+ drachtio) for midreg, the process group for OpenSIPS. */
  probes: CpuProbe[];
  logs: string[];
  /** midreg under --profile: the .cpuprofile written when it stops. */
  profileFile?: string;
  stop(): Promise<void>;
}

async function ready(target: string, what: string): Promise<void> {
  const deadline = Date.now() + 10_000;
  for (let n = 0; ; n++) {
    const r = await runProbe({ kind: 'register', target, rate: 1, count: 1, domain: DOMAIN, prefix: `openready${Date.now()}x${n}`, timeoutMs: 1000 });
    if (r.ok === 1) return;
    if (Date.now() > deadline) throw new Error(`${what} does not answer REGISTER with 200 (${JSON.stringify(r.statuses)})`);
    await delay(100);
  }
}

async function startSys(name: SystemName, workDir: string, profile = false): Promise<Sys> {
  const dir = join(workDir, name);
  mkdirSync(join(dir, 'reg'), { recursive: true });
  const registrar = await startKamailio(join(dir, 'reg'), { cfg: KAMAILIO_CFG, name: 'kamailio-registrar', tcp: true, defines: [`MAX_EXPIRES=${OUTGOING_EXPIRES}`] });
  const started: Array<{ stop(): Promise<void> }> = [registrar];
  try {
    if (name === 'opensips-1' || name === 'opensips-2') {
      const peer = await startOpensips(join(dir, 'opensips'), { mode: name === 'opensips-1' ? 1 : 2, registrar: `sip:127.0.0.1:${registrar.port}` });
      started.push(peer);
      const target = `127.0.0.1:${peer.port}`;
      await ready(target, LABELS[name]);
      return {
        name, target, registrar, probes: [probeGroup('opensips', peer.pid)], logs: [peer.logFile, registrar.logFile],
        stop: async () => { await peer.stop(); await registrar.stop(); },
      };
    }
    const drachtio = await startDrachtio(dir);
    started.push(drachtio);
    const profileName = `${name}.cpuprofile`;
    const app: Service = await startMidreg({
      workDir: dir,
      ...(profile ? { cpuProfile: { dir, name: profileName } } : {}),
      env: {
        DRACHTIO_HOST: '127.0.0.1',
        DRACHTIO_PORT: String(drachtio.adminPort),
        DRACHTIO_SECRET: drachtio.secret,
        MIDREG_UPSTREAM: `sip:127.0.0.1:${registrar.port};transport=tcp`,
        MIDREG_DOMAINS: DOMAIN,
        MIDREG_DB: join(dir, 'midreg.sqlite'),
        MIDREG_UPSTREAM_TIMEOUT_MS: '4000',
        MIDREG_LOG_FORMAT: 'json',
        MIDREG_LOG_LEVEL: 'info',
        // as bench/systems.ts: the load generator is trusted, the per-source guard does not shed it
        MIDREG_TRUSTED_PEERS: '127.0.0.1',
        MIDREG_MODE: name === 'midreg-contact' ? 'contact' : name === 'midreg-aor' ? 'aor' : 'mirror',
        MIDREG_OUTGOING_EXPIRES: String(OUTGOING_EXPIRES),
      },
    });
    started.push(app);
    const target = `127.0.0.1:${drachtio.sipPort}`;
    await ready(target, LABELS[name]);
    return {
      name, target, registrar, probes: [probeProcess('node', app.pid), probeProcess('drachtio', drachtio.pid)], logs: [app.logFile, drachtio.logFile, registrar.logFile],
      ...(profile ? { profileFile: join(dir, profileName) } : {}),
      stop: async () => { await app.stop(10_000); await drachtio.stop(); await registrar.stop(); },
    };
  } catch (err) {
    for (const s of started.reverse()) await s.stop();
    throw err;
  }
}

/** REGISTERs the registrar received so far (its own statistics). */
async function registrarCount(reg: KamailioService): Promise<number> {
  const out = await kamcmd(reg.ctlSocket, ['stats.get_statistics', 'core:'], 5000);
  const m = /^core:rcv_requests_register\s*=\s*(\d+)/m.exec(out);
  if (!m) throw new Error(`kamcmd stats: no rcv_requests_register in "${out.slice(0, 200)}"`);
  return Number(m[1]);
}

// ---- counters, and the population step ---------------------------------------------------------

/**
 * Datagrams the kernel dropped on the UDP sockets bound to `port` on 127.0.0.1 because their
 * receive buffer was full (/proc/net/udp, last column): drachtio-server's SIP socket, or sipp's.
 */
function udpSocketDrops(port: number): number {
  try {
    const hexPort = `:${port.toString(16).toUpperCase().padStart(4, '0')}`;
    let drops = 0;
    for (const line of readFileSync('/proc/net/udp', 'utf8').split('\n').slice(1)) {
      const cols = line.trim().split(/\s+/);
      if (cols[1]?.endsWith(hexPort)) drops += Number(cols[cols.length - 1] ?? 0) || 0;
    }
    return drops;
  } catch {
    return Number.NaN;
  }
}

/**
 * The kernel's UDP counters for the whole host (/proc/net/snmp): RcvbufErrors counts datagrams
 * dropped because a socket's receive buffer was full (drachtio-server's stays at the OS default,
 * field facts), InErrors all receive errors. Every process on the machine adds to them, so a step's
 * delta is an upper bound for what the bench's sockets dropped.
 */
function udpCounters(): { rcvbufErrors: number; inErrors: number } {
  try {
    const lines = readFileSync('/proc/net/snmp', 'utf8').split('\n').filter((l) => l.startsWith('Udp:'));
    const names = (lines[0] ?? '').split(/\s+/).slice(1);
    const values = (lines[1] ?? '').split(/\s+/).slice(1).map(Number);
    const at = (n: string): number => values[names.indexOf(n)] ?? Number.NaN;
    return { rcvbufErrors: at('RcvbufErrors'), inErrors: at('InErrors') };
  } catch {
    return { rcvbufErrors: Number.NaN, inErrors: Number.NaN };
  }
}


/** Each response time sipp wrote (-trace_rtt): ms since sipp started, response time, rtd (1 first REGISTER, 2 refresh). */
function readRtt(dir: string): Array<{ atMs: number; rtMs: number; rtd: number }> {
  const out: Array<{ atMs: number; rtMs: number; rtd: number }> = [];
  for (const name of readdirSync(dir).filter((f) => f.endsWith('_rtt.csv'))) {
    for (const line of readFileSync(join(dir, name), 'utf8').split('\n')) {
      const [at, rt, rtd] = line.split(';');
      if (at === undefined || rt === undefined || !/^[\d.]+$/.test(at)) continue;
      out.push({ atMs: Number(at), rtMs: Number(rt), rtd: Number(rtd ?? 0) });
    }
  }
  return out;
}

interface Step {
  system: SystemName;
  rate: number;
  phones: number;
  sent: number;
  answered: number;
  reachedRegistrar: number;
  share: number;
  /** REGISTERs answered 200 per second over sipp's run. */
  perSec: number;
  failed: number;
  retransmissions: number;
  pass: boolean;
  failure: string;
  ms: Quantiles;
  refreshMs: Quantiles;
  /** CPU µs per REGISTER over the whole step (per component), and % of a core. */
  usPer: Record<string, number>;
  cpuPct: Record<string, number>;
  /** sipp's CPU over the step (% of a core; it is single-threaded). */
  sippPct: number;
  /** The busiest thread of node / drachtio-server over its busiest second (100 % = saturated). */
  peakThreadPct: Record<string, number>;
  /** The refresh-only window: REGISTERs answered, those that reached the registrar, CPU µs per REGISTER. */
  window: { answered: number; reachedRegistrar: number; usPer: Record<string, number> };
  /** Host-wide UDP datagrams dropped for a full receive buffer during the step (/proc/net/snmp). */
  udpRcvbufErrors: number;
  /** Datagrams dropped on the system's SIP socket (drachtio-server or OpenSIPS) and on sipp's, during the step. */
  socketDrops: { server: number; sipp: number };
}

function loadFailure(r: LoadResult, sent: number, answered: number): string {
  const parts: string[] = [];
  if (r.failed > 0) parts.push(`${fmtInt(r.failed)} failed calls${r.unexpectedStatuses.length > 0 ? ` (answered ${r.unexpectedStatuses.join('/')})` : ''}`);
  if (r.retransmissions > 0) parts.push(`${fmtInt(r.retransmissions)} retransmissions`);
  if (answered < sent && r.failed === 0) parts.push(`${fmtInt(sent - answered)} REGISTERs not answered 200`);
  return parts.join(', ');
}

let stepNo = 0;

async function populationStep(sys: Sys, rate: number, workDir: string, log: (l: string) => void): Promise<Step> {
  await waitForQuiet();
  const n = ++stepNo;
  const dir = join(workDir, `step${n}-${sys.name}-${rate}`);
  const probes = sys.probes;
  const regBefore = await registrarCount(sys.registrar);
  const udpBefore = udpCounters();
  const serverPort = Number(sys.target.split(':')[1]);
  const sippPort = await freePort();
  const serverDropsBefore = udpSocketDrops(serverPort);
  const cpuBefore = sampleCpu(probes);
  const sippBefore = reapedChildrenCpu();
  const watchers = probes.flatMap((p) => (p.pid !== undefined ? [{ name: p.name, w: new PeakThreadWatcher(p.pid) }] : []));
  const t0 = performance.now();
  const loadP = runLoad({
    scenario: SCENARIO, target: sys.target, localPort: sippPort, rate, calls: rate, limit: rate + 10,
    vars: { prefix: `openthr${n}x`, domain: DOMAIN, expires: String(PHONE_EXPIRES) }, dir, recvTimeoutMs: 4000, buffSize: SIPP_BUFFER_BYTES,
  });
  // the refresh-only window (sipp's clock starts about when it was spawned)
  await delay(WINDOW.fromMs);
  const wRegBefore = await registrarCount(sys.registrar);
  const wCpuBefore = sampleCpu(probes);
  await delay(WINDOW.toMs - WINDOW.fromMs);
  const wCpu = cpuDelta(wCpuBefore, sampleCpu(probes));
  const wReg = (await registrarCount(sys.registrar)) - wRegBefore;
  // sipp's socket is gone once it exits: its drops are read while it still runs, and again near its end.
  let sippDrops = udpSocketDrops(sippPort);
  const sippWatch = setInterval(() => { const d = udpSocketDrops(sippPort); if (d > sippDrops) sippDrops = d; }, 200);
  const load = await loadP;
  clearInterval(sippWatch);
  const wallSec = (performance.now() - t0) / 1000;
  const cpu = cpuDelta(cpuBefore, sampleCpu(probes));
  const sippPct = ((reapedChildrenCpu() - sippBefore) / wallSec) * 100;
  const peakThreadPct: Record<string, number> = {};
  for (const { name, w } of watchers) peakThreadPct[name] = w.stop();
  await delay(300);
  const reached = (await registrarCount(sys.registrar)) - regBefore;
  const udpRcvbufErrors = udpCounters().rcvbufErrors - udpBefore.rcvbufErrors;
  const socketDrops = { server: udpSocketDrops(serverPort) - serverDropsBefore, sipp: sippDrops };
  const rtt = readRtt(dir);
  const answered = rtt.length;
  const sent = rate * PER_PHONE;
  const inWindow = rtt.filter((r) => r.atMs >= WINDOW.fromMs && r.atMs <= WINDOW.toMs).length;
  const lastAt = Math.max(0, ...rtt.map((r) => r.atMs));
  const perSec = lastAt > 0 ? answered / (lastAt / 1000) : 0;
  const failure = loadFailure(load, sent, answered);
  const pass = load.failed === 0 && load.retransmissions === 0 && answered === sent && perSec >= 0.95 * rate;
  const per = (c: Record<string, number>, count: number): Record<string, number> => Object.fromEntries(Object.entries(c).map(([k, s]) => [k, count > 0 ? (s * 1e6) / count : 0]));
  const s: Step = {
    system: sys.name, rate, phones: rate, sent, answered, reachedRegistrar: reached, share: sent > 0 ? reached / sent : 0, perSec,
    failed: load.failed, retransmissions: load.retransmissions, pass, failure, sippPct, peakThreadPct,
    ms: quantiles(rtt.map((r) => r.rtMs)), refreshMs: quantiles(rtt.filter((r) => r.rtd === 2).map((r) => r.rtMs)),
    usPer: per(cpu, answered), cpuPct: Object.fromEntries(Object.entries(cpu).map(([k, v]) => [k, (v / wallSec) * 100])),
    window: { answered: inWindow, reachedRegistrar: wReg, usPer: per(wCpu, inWindow) },
    udpRcvbufErrors, socketDrops,
  };
  log(`  ${LABELS[sys.name]} @ ${fmtInt(rate)}/s: ${fmtInt(answered)}/${fmtInt(sent)} answered (${fmtInt(perSec)}/s), ${fmtInt(reached)} reached the registrar (${(s.share * 100).toFixed(2)} %); `
    + `p50/p99 ${s.ms.p50}/${s.ms.p99} ms; sipp ${sippPct.toFixed(0)}%, busiest thread ${Object.entries(peakThreadPct).map(([k, v]) => `${k} ${v.toFixed(0)}%`).join(' ') || '—'}; CPU µs/REGISTER ${Object.entries(s.usPer).map(([k, v]) => `${k} ${fmtInt(v)}`).join(', ')}; `
    + `window: ${fmtInt(inWindow)} answered, ${fmtInt(wReg)} reached, ${Object.entries(s.window.usPer).map(([k, v]) => `${k} ${fmtInt(v)}`).join(', ')} µs; UDP receive-buffer drops: server socket ${fmtInt(socketDrops.server)}, sipp socket ${fmtInt(socketDrops.sipp)}, host ${fmtInt(udpRcvbufErrors)}${pass ? '' : ` — NOT SUSTAINED: ${failure || `${fmtInt(perSec)}/s < 95 %`}`}`);
  return s;
}

// ---- one sweep step: a registered population refreshing --------------------------------------

/** One phase of a sweep step. */
interface Phase {
  /** Wall-clock span the CPU, registrar count and drops are taken over (epoch ms). */
  fromMs: number;
  toMs: number;
  /** REGISTERs answered 200 in the phase: every first REGISTER (registration), the refreshes answered inside the steady window (refresh). */
  answered: number;
  /** Answered per second: first REGISTERs from the first answer to the last; refreshes over the steady window. */
  perSec: number;
  ms: Quantiles;
  /** REGISTERs the registrar received during the span (its own count, retransmissions included). */
  reachedRegistrar: number;
  /** CPU µs per REGISTER answered in the phase (node, drachtio, sipp) and % of a core over the span. */
  usPer: Record<string, number>;
  cpuPct: Record<string, number>;
  /** The busiest thread of node / drachtio-server / sipp over its busiest second in the span. */
  peakThreadPct: Record<string, number>;
  /** Datagrams dropped on the system's SIP socket and on sipp's, and host-wide RcvbufErrors, during the span. */
  socketDrops: { server: number; sipp: number };
  udpRcvbufErrors: number;
  /** sipp's retransmissions in the phase, by its statistics rows (one a second; the registration phase runs up to the first refresh). */
  retransmissions: number;
}

interface SweepStep {
  system: SystemName;
  /** Refresh REGISTER/s offered = phones (each refreshes once a second). */
  rate: number;
  phones: number;
  registerRate: number;
  refreshesPerPhone: number;
  steadySec: number;
  sent: number;
  answered: number;
  /** REGISTERs that reached the registrar over the whole step. */
  reachedRegistrar: number;
  failed: number;
  retransmissions: number;
  /** First REGISTERs answered after the refresh phase began (the registration did not fit its phase). */
  lateRegistrations: number;
  pass: boolean;
  failure: string;
  registration: Phase;
  refresh: Phase;
}

/** What a step's probes and counters read at one instant. */
interface Mark { at: number; cpu: CpuSample; reg: number; serverDrops: number; sippDrops: number; rcvbuf: number }

/** Every row of a sipp -trace_stat file (one per -fd period), by column name. */
function statRows(file: string): Array<Record<string, string>> {
  if (!existsSync(file)) return [];
  const lines = readFileSync(file, 'utf8').split('\n').filter((l) => l.trim() !== '');
  const header = (lines[0] ?? '').split(';');
  return lines.slice(1).map((l) => {
    const cells = l.split(';');
    return Object.fromEntries(header.map((h, i) => [h, cells[i] ?? '']));
  });
}

/** "2026-11-23\t19:22:15.219310\t1795461735.219310" → epoch ms */
const statEpochMs = (v: string | undefined): number => Number(v?.split('\t').pop() ?? Number.NaN) * 1000;

async function delayUntil(epochMs: number): Promise<void> {
  const ms = epochMs - Date.now();
  if (ms > 0) await delay(ms);
}

async function sweepStep(sys: Sys, rate: number, opts: Options, workDir: string, log: (l: string) => void): Promise<SweepStep> {
  await waitForQuiet();
  const n = ++stepNo;
  const dir = join(workDir, `step${n}-${sys.name}-${rate}-population`);
  const phones = rate;
  const refreshesPerPhone = opts.steady + 2 * RAMP_SEC;
  const serverPort = Number(sys.target.split(':')[1]);
  const sippPort = await freePort();
  const regBefore = await registrarCount(sys.registrar);
  const spawnAt = Date.now();
  // phone n (1-based) refreshes at startAt + (n − 1)·slot + k·1000 ms: R evenly spread REGISTER/s from startAt on
  const startAt = spawnAt + Math.ceil((phones / opts.registerRate) * 1000) + REGISTRATION_MARGIN_MS;
  const windowFrom = startAt + RAMP_SEC * 1000;
  const windowTo = startAt + (refreshesPerPhone - RAMP_SEC) * 1000;
  const sipp: { pid?: number } = {};
  const loadP = runLoad({
    scenario: SWEEP_SCENARIO, target: sys.target, localPort: sippPort, rate: opts.registerRate, calls: phones, limit: phones + 10,
    vars: { prefix: `openthr${n}x`, domain: DOMAIN, expires: String(PHONE_EXPIRES), start: String(startAt), slot: String(1000 / phones), refreshes: String(refreshesPerPhone) },
    dir, recvTimeoutMs: 4000, buffSize: SIPP_BUFFER_BYTES, holdSec: (startAt - spawnAt) / 1000 + refreshesPerPhone,
    onSpawn: (pid) => { sipp.pid = pid; },
  });
  const probes = [...sys.probes, ...(sipp.pid !== undefined ? [probeProcess('sipp', sipp.pid)] : [])];
  const watch = (): Array<{ name: string; w: PeakThreadWatcher }> => probes.flatMap((p) => (p.pid !== undefined ? [{ name: p.name, w: new PeakThreadWatcher(p.pid) }] : []));
  const stopWatch = (ws: Array<{ name: string; w: PeakThreadWatcher }>): Record<string, number> => Object.fromEntries(ws.map(({ name, w }) => [name, w.stop()]));
  // CPU and drops are read at the instant; the registrar's count right after (one kamcmd, a few ms)
  const mark = async (): Promise<Mark> => {
    const at = Date.now();
    const m = { at, cpu: sampleCpu(probes), serverDrops: udpSocketDrops(serverPort), sippDrops: udpSocketDrops(sippPort), rcvbuf: udpCounters().rcvbufErrors };
    return { ...m, reg: await registrarCount(sys.registrar) };
  };
  const m0 = await mark();
  let ws = watch();
  // the registration phase's figures are read just before the first refresh is due, so that the
  // registrar's count (read a few ms after the mark) cannot include refreshes relayed in mirror mode
  await delayUntil(startAt - REGISTRATION_END_MS);
  const m1 = await mark();
  const regThreads = stopWatch(ws);
  await delayUntil(windowFrom);
  const m2 = await mark();
  ws = watch();
  await delayUntil(windowTo);
  const m3 = await mark();
  const refreshThreads = stopWatch(ws);
  const load = await loadP;
  await delay(300);
  const reached = (await registrarCount(sys.registrar)) - regBefore;

  // sipp's -trace_rtt dates are ms since it started (its statistics' StartTime, to a few ms)
  const base = Number.isFinite(load.startedAtMs) ? load.startedAtMs : spawnAt;
  const rtt = readRtt(dir).map((r) => ({ ...r, at: base + r.atMs }));
  const first = rtt.filter((r) => r.rtd === 1);
  const steady = rtt.filter((r) => r.rtd === 2 && r.at >= windowFrom && r.at < windowTo);
  const firstSpan = first.length > 1 ? (Math.max(...first.map((r) => r.at)) - Math.min(...first.map((r) => r.at))) / 1000 + 1 / opts.registerRate : 0;
  const lateRegistrations = first.filter((r) => r.at >= startAt).length;
  const rows = statRows(join(dir, 'stat.csv'));
  const retransAt = (t: number): number => Math.max(0, ...rows.filter((r) => statEpochMs(r['CurrentTime']) <= t).map((r) => Number(r['Retransmissions(C)'] ?? 0) || 0));
  const regRetrans = retransAt(startAt);

  const phase = (a: Mark, b: Mark, answered: number, perSec: number, ms: Quantiles, threads: Record<string, number>, retransmissions: number): Phase => {
    const cpu = cpuDelta(a.cpu, b.cpu);
    const sec = (b.at - a.at) / 1000;
    return {
      fromMs: a.at, toMs: b.at, answered, perSec, ms, reachedRegistrar: b.reg - a.reg,
      usPer: Object.fromEntries(Object.entries(cpu).map(([k, v]) => [k, answered > 0 ? (v * 1e6) / answered : 0])),
      cpuPct: Object.fromEntries(Object.entries(cpu).map(([k, v]) => [k, sec > 0 ? (v / sec) * 100 : 0])),
      peakThreadPct: threads,
      socketDrops: { server: b.serverDrops - a.serverDrops, sipp: Math.max(0, b.sippDrops - a.sippDrops) },
      udpRcvbufErrors: b.rcvbuf - a.rcvbuf,
      retransmissions,
    };
  };
  const registration = phase(m0, m1, first.length, firstSpan > 0 ? first.length / firstSpan : 0, quantiles(first.map((r) => r.rtMs)), regThreads, regRetrans);
  const refresh = phase(m2, m3, steady.length, steady.length / ((windowTo - windowFrom) / 1000), quantiles(steady.map((r) => r.rtMs)), refreshThreads, Math.max(0, load.retransmissions - regRetrans));

  const sent = phones * (1 + refreshesPerPhone);
  const answered = rtt.length;
  const reasons = [loadFailure(load, sent, answered)].filter((x) => x !== '');
  if (lateRegistrations > 0) reasons.push(`${fmtInt(lateRegistrations)} first REGISTERs answered after the refresh phase began`);
  if (refresh.perSec < 0.95 * rate) reasons.push(`${fmtInt(refresh.perSec)} refreshes/s in the steady window < 95 %`);
  const failure = reasons.join(', ');
  const s: SweepStep = {
    system: sys.name, rate, phones, registerRate: opts.registerRate, refreshesPerPhone, steadySec: (windowTo - windowFrom) / 1000,
    sent, answered, reachedRegistrar: reached, failed: load.failed, retransmissions: load.retransmissions, lateRegistrations,
    pass: failure === '', failure, registration, refresh,
  };
  const cpuText = (p: Phase): string => `node ${fmtInt(p.usPer['node'] ?? 0)} + drachtio ${fmtInt(p.usPer['drachtio'] ?? 0)} µs/REGISTER, sipp ${(p.cpuPct['sipp'] ?? 0).toFixed(0)}%, busiest thread ${Object.entries(p.peakThreadPct).map(([k, v]) => `${k} ${v.toFixed(0)}%`).join(' ') || '—'}`;
  const dropText = (p: Phase): string => `UDP drops ${fmtInt(p.socketDrops.server)}/${fmtInt(p.socketDrops.sipp)}/${fmtInt(p.udpRcvbufErrors)}`;
  log(`  ${LABELS[sys.name]} @ ${fmtInt(rate)}/s (${fmtInt(phones)} phones): ${fmtInt(answered)}/${fmtInt(sent)} answered, ${fmtInt(reached)} reached the registrar, ${fmtInt(load.retransmissions)} retransmissions; `
    + `registration ${fmtInt(registration.answered)} at ${fmtInt(registration.perSec)}/s, p50/p99 ${registration.ms.p50}/${registration.ms.p99} ms, ${fmtInt(registration.reachedRegistrar)} reached, ${cpuText(registration)}, ${dropText(registration)}; `
    + `refresh window ${fmtInt(refresh.answered)} in ${s.steadySec} s = ${fmtInt(refresh.perSec)}/s, p50/p99 ${refresh.ms.p50}/${refresh.ms.p99} ms, ${fmtInt(refresh.reachedRegistrar)} reached, ${cpuText(refresh)}, ${dropText(refresh)}`
    + `${s.pass ? '' : ` — NOT SUSTAINED: ${failure}`}`);
  return s;
}

// ---- the computed steady state ---------------------------------------------------------------

/**
 * Share of REGISTERs reaching the registrar for a phone refreshing every `period` s, asking
 * `asked` s, behind a mid-registrar asking `outgoing` s with `margin` (midreg's rule, throttle.ts:
 * a refresh is relayed when the upstream registration has less than asked + margin left).
 */
function computedShare(period: number, asked: number, outgoing: number, margin: number): { cycle: number; share: number } {
  // refresh k after a relayed one (k·period s later) is relayed when outgoing − k·period < asked + margin
  const cycle = Math.floor((outgoing - asked - margin) / period) + 1;
  return { cycle, share: 1 / cycle };
}

// ---- main --------------------------------------------------------------------------------------


const pct = (x: number): string => `${(x * 100).toFixed(2)} %`;
const us = (s: Step, k: string): string => fmtInt(s.usPer[k] ?? 0);

async function main(): Promise<void> {
  const run = startRun<Options>('throttle', { parse: parseOptions, help: HELP, workPrefix: 'mrbt-' });
  const { opts, startedAt, stamp, workDir, lines, log, meta } = run;
  log(`midreg throttling bench ${stamp}: ${environmentLine(meta)}`);
  log(`options: ${fmtInt(opts.phones)} phones × ${PER_PHONE} REGISTERs (1 + 9 refreshes 1 s apart, Expires ${PHONE_EXPIRES}); outgoing expires ${OUTGOING_EXPIRES}; `
    + `sweep ${opts.sweep ? `${opts.rates.join(', ')} refreshes/s (registering at ${opts.registerRate}/s, steady window ${opts.steady} s)` : 'off'}; work dir ${workDir}`);

  const systems: SystemName[] = opts.systems.filter((n) => !n.startsWith('opensips') || existsSync(OPENSIPS_START));
  const profiles: ProfileSummary[] = [];
  if (!existsSync(OPENSIPS_START)) log(`OpenSIPS skipped: no peer at ${OPENSIPS_START}`);
  const population: Step[] = [];
  const sweep: Record<string, SweepStep[]> = {};
  let current: Sys | undefined;
  let error: string | undefined;
  const onSignal = (): void => { void (current?.stop() ?? Promise.resolve()).finally(() => process.exit(130)); };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  const t0 = Date.now();
  const clock = (): string => `[${((Date.now() - t0) / 1000).toFixed(0)} s]`;
  try {
    for (const name of systems) {
      log(`${clock()} ${LABELS[name]}`);
      current = await startSys(name, workDir, opts.profile && name.startsWith('midreg'));
      try {
        population.push(await populationStep(current, opts.phones, workDir, log));
        if (opts.sweep && name.startsWith('midreg')) {
          const steps: SweepStep[] = [];
          for (const rate of opts.rates) {
            let s = await sweepStep(current, rate, opts, workDir, log);
            steps.push(s);
            // as the main bench: a rate that fails is tried once more
            if (!s.pass) { s = await sweepStep(current, rate, opts, workDir, log); steps.push(s); }
            if (!s.pass) break;
          }
          sweep[name] = steps;
        }
      } finally {
        const profileFile = current.profileFile;
        await current.stop();
        current = undefined;
        // Stopping the profiled process writes its profile.
        if (profileFile && existsSync(profileFile)) {
          const summary = summarizeProfile(profileFile);
          profiles.push(summary);
          for (const l of formatProfile(summary, `${LABELS[name]} CPU profile`)) log(l);
        }
      }
    }
  } catch (err) {
    error = err instanceof Error ? err.message : String(err);
    log(`ERROR ${error}`);
  }
  const durationSec = (Date.now() - startedAt.getTime()) / 1000;

  const computed = computedShare(REFRESH_PERIOD, PHONE_EXPIRES, OUTGOING_EXPIRES, REFRESH_MARGIN);
  const find = (n: SystemName): Step | undefined => population.find((s) => s.system === n);
  const mirror = find('midreg-mirror');
  const contact = find('midreg-contact');
  const aor = find('midreg-aor');
  const maxOf = (n: SystemName): { max: number; capped: boolean } => {
    const steps = sweep[n] ?? [];
    const passed = steps.filter((s) => s.pass).map((s) => s.rate);
    return { max: passed.length > 0 ? Math.max(...passed) : 0, capped: steps.length > 0 && steps.every((s) => s.pass) };
  };
  const mMax = maxOf('midreg-mirror');
  const cMax = maxOf('midreg-contact');
  const aMax = maxOf('midreg-aor');
  const nodeAbsorbed = contact?.window.usPer['node'] ?? 0;
  const nodeRelayed = mirror?.window.usPer['node'] ?? 0;
  const refreshShare = (s: Step): number => {
    const refreshes = s.sent - s.phones;
    return refreshes > 0 ? Math.max(0, s.reachedRegistrar - s.phones) / refreshes : 0;
  };

  const tables: Table[] = [];
  if (population.length > 0) {
    tables.push({
      title: `${fmtInt(opts.phones)} phones, each registering once then refreshing 9 times 1 s apart in the same call: ${fmtInt(opts.phones)} REGISTER/s for 10 s`,
      head: ['system', 'REGISTERs sent', 'answered 200', 'reached the registrar', 'share', 'refreshes that reached it', 'p50 / p99 ms (refreshes)', 'CPU µs per REGISTER', 'CPU % of a core', 'sipp %', 'failures'],
      rows: population.map((s) => [
        LABELS[s.system], fmtInt(s.sent), fmtInt(s.answered), fmtInt(s.reachedRegistrar), pct(s.share), pct(refreshShare(s)),
        `${s.ms.p50} / ${s.ms.p99} (${s.refreshMs.p50} / ${s.refreshMs.p99})`,
        s.system.startsWith('midreg') ? `node ${us(s, 'node')} + drachtio ${us(s, 'drachtio')}` : `${us(s, 'opensips')} (process group)`,
        Object.entries(s.cpuPct).map(([k, v]) => `${k} ${v.toFixed(0)}%`).join(', '),
        `${s.sippPct.toFixed(0)}%`,
        s.failure || 'none',
      ]),
      notes: [
        'reached the registrar: the Kamailio registrar\'s own count (kamcmd stats core:rcv_requests_register) over the step, retransmissions included; refreshes that reached it: (reached − phones) / (sent − phones), i.e. assuming every first REGISTER is relayed',
        `the phones ask Expires ${PHONE_EXPIRES}; midreg (MIDREG_OUTGOING_EXPIRES) and OpenSIPS (outgoing_expires) ask the registrar for ${OUTGOING_EXPIRES}, which it grants (max_expires ${OUTGOING_EXPIRES}); midreg's MIDREG_REFRESH_MARGIN_SEC ${REFRESH_MARGIN} (default)`,
        'sipp response times tick in 4 ms steps; CPU: node and drachtio-server for midreg, OpenSIPS\' whole process group (main + 2 UDP + 2 TCP workers)',
      ],
    });
    tables.push({
      title: 'What the 10 s bench means for phones refreshing every 60 s',
      head: ['measure', 'value'],
      rows: [
        ['measured, midreg contact: share of all REGISTERs that reached the registrar', contact ? `${pct(contact.share)} (${fmtInt(contact.reachedRegistrar)} of ${fmtInt(contact.sent)}: the ${fmtInt(contact.phones)} first REGISTERs, 1 in ${PER_PHONE} here by construction)` : '—'],
        ['measured, midreg contact: share of refreshes that reached it', contact ? pct(refreshShare(contact)) : '—'],
        [`computed (not measured), midreg contact, refresh every ${REFRESH_PERIOD} s asking ${PHONE_EXPIRES} s, outgoing ${OUTGOING_EXPIRES} s, margin ${REFRESH_MARGIN} s`,
          `1 refresh in ${computed.cycle} relayed = ${pct(computed.share)} of REGISTERs (a refresh is relayed once the upstream registration has < ${PHONE_EXPIRES} + ${REFRESH_MARGIN} s left: after ${computed.cycle - 1} absorbed ones, ${(computed.cycle * REFRESH_PERIOD / 60).toFixed(0)} min); the phone's first REGISTER once per boot on top`],
        ['computed, mirror mode', '100 % (every REGISTER relayed)'],
      ],
      notes: [
        'in the bench each phone sends 10 REGISTERs within 10 s: its first one is relayed (a new binding), its 9 refreshes are within the upstream registration and absorbed; so the measured share is 1/10 by construction, and what carries over to the 60 s population is the share of refreshes relayed (measured) and the relay cycle (computed from the rule in lib/registrar/throttle.ts)',
      ],
    });
    if (mirror && contact) {
      tables.push({
        title: 'CPU per REGISTER in the refresh-only window (1.5–9 s of the population step)',
        head: ['system', 'REGISTERs answered in the window', 'reached the registrar in the window', 'node µs per REGISTER', 'drachtio µs per REGISTER'],
        rows: [mirror, contact, ...(aor ? [aor] : [])].map((s) => [LABELS[s.system], fmtInt(s.window.answered), fmtInt(s.window.reachedRegistrar), fmtInt(s.window.usPer['node'] ?? 0), fmtInt(s.window.usPer['drachtio'] ?? 0)]),
        notes: ['mirror: every refresh relayed; contact and aor: every refresh absorbed (answered by midreg) unless the window\'s registrar count says otherwise'],
      });
    }
  }
  const sweepRows = Object.values(sweep).flat();
  if (sweepRows.length > 0) {
    const threads = (p: Phase): string => ['node', 'drachtio', 'sipp'].map((k) => `${(p.peakThreadPct[k] ?? 0).toFixed(0)}%`).join(' / ');
    const phaseCells = (p: Phase): string[] => [
      fmtInt(p.answered), fmtInt(p.perSec), fmtInt(p.reachedRegistrar), `${p.ms.p50} / ${p.ms.p99}`,
      `${fmtInt(p.usPer['node'] ?? 0)} + ${fmtInt(p.usPer['drachtio'] ?? 0)}`,
      ['node', 'drachtio', 'sipp'].map((k) => `${(p.cpuPct[k] ?? 0).toFixed(0)}%`).join(' / '), threads(p),
      `${fmtInt(p.socketDrops.server)} / ${fmtInt(p.socketDrops.sipp)} / ${fmtInt(p.udpRcvbufErrors)}`, fmtInt(p.retransmissions),
    ];
    tables.push({
      title: `Sustained refresh REGISTER/s of a registered population: R phones register at ${fmtInt(opts.registerRate)}/s, then refresh once a second each (R REGISTER/s), at rising R`,
      head: ['system', 'R /s', 'phase', 'REGISTERs answered', 'answered /s', 'reached the registrar', 'p50 / p99 ms', 'node + drachtio µs per REGISTER', 'node / drachtio / sipp % of a core', 'busiest thread node / drachtio / sipp', 'UDP drops drachtio / sipp / host', 'retransmissions', 'verdict'],
      rows: sweepRows.flatMap((s) => [
        [LABELS[s.system], fmtInt(s.rate), `registration (${fmtInt(s.phones)} first REGISTERs)`, ...phaseCells(s.registration), ''],
        [LABELS[s.system], fmtInt(s.rate), `refresh (steady ${s.steadySec} s)`, ...phaseCells(s.refresh), s.pass ? 'sustained' : `not sustained: ${s.failure}`],
      ]),
      notes: [
        `registration: the step's phones send their first REGISTER at ${fmtInt(opts.registerRate)}/s (every one relayed, in every mode); the phase runs from sipp's start to just before the first refresh (due ${REGISTRATION_MARGIN_MS / 1000} s after the last first REGISTER), idle tail included; answered /s from the first answer to the last; CPU per first REGISTER`,
        `refresh: each phone refreshes once a second in its own slot (same Call-ID, Contact and port, CSeq + 1), ${opts.steady + 2 * RAMP_SEC} times; measured over the steady window, which leaves out the refresh phase's first and last second: refreshes answered inside it per second, their p50/p99, CPU per refresh answered (absorbed in contact and aor modes, relayed in mirror mode)`,
        'sustained = 0 failed calls, 0 retransmissions, every REGISTER answered 200, every first REGISTER answered before the refresh phase, and ≥ 95 % of R answered in the steady window; a rate not sustained is tried once more, a mode stops at its first rate not sustained twice',
        'retransmissions by phase from sipp\'s statistics rows (one a second); one sipp (single-threaded) plays every phone, its CPU and thread are its own; busiest thread: over its busiest second in the phase (100 % = that thread saturated); the machine has 2 cores shared by sipp, drachtio-server, node and the Kamailio registrar',
      ],
    });
  }
  const ratio = mMax.max > 0 ? cMax.max / mMax.max : Number.NaN;
  const targets: string[][] = [];
  if (contact) {
    targets.push(['≤ 2 % of REGISTERs reach the registrar (midreg contact)',
      `computed for 60 s refreshes: ${pct(computed.share)} → ${computed.share <= 0.02 ? 'met' : 'missed'}; measured: ${pct(refreshShare(contact))} of refreshes (${pct(contact.share)} of all REGISTERs in a 10 s run whose every phone is new)`]);
  }
  if (mirror && contact) {
    const r = nodeRelayed > 0 ? nodeAbsorbed / nodeRelayed : Number.NaN;
    // the same comparison at the sweep's rates (per-REGISTER CPU falls with the rate: fixed costs spread)
    const atRates = (sweep['midreg-contact'] ?? []).flatMap((c) => {
      const m = (sweep['midreg-mirror'] ?? []).find((x) => x.rate === c.rate);
      const cn = c.refresh.usPer['node'] ?? 0;
      const mn = m?.refresh.usPer['node'] ?? 0;
      return m && mn > 0 && c.refresh.reachedRegistrar === 0 ? [`${fmtInt(c.rate)}/s: ${fmtInt(cn)} vs ${fmtInt(mn)} µs = ${(cn / mn).toFixed(2)}×`] : [];
    });
    targets.push(['locally answered REGISTER costs node ≤ ½ a relayed one', `${fmtInt(opts.phones)}/s (population step): ${fmtInt(nodeAbsorbed)} vs ${fmtInt(nodeRelayed)} µs = ${r.toFixed(2)}× → ${r <= 0.5 ? 'met' : 'missed'}${atRates.length > 0 ? `; sweep steps (steady refresh window): ${[...new Set(atRates)].join('; ')}` : ''}`]);
  }
  if (sweepRows.length > 0) {
    // a mode that passed every rate tried has its maximum above the grid: its ratio is a bound, not a result
    const verdict = mMax.capped ? 'not decided (mirror mode passed every rate tried)'
      : mMax.max === 0 ? 'not decided (mirror mode sustained no rate tried)'
        : ratio >= 1.5 ? 'met' : cMax.capped ? 'not decided (contact mode passed every rate tried)' : 'missed';
    targets.push(['sustained refresh REGISTER/s of a registered population, contact mode ≥ 1.5× mirror', `${fmtInt(cMax.max)}${cMax.capped ? '+ (highest rate tried)' : ''} vs ${fmtInt(mMax.max)}${mMax.capped ? '+' : ''}/s = ${Number.isNaN(ratio) ? '—' : `${ratio.toFixed(2)}×`} → ${verdict}`]);
    if (sweep['midreg-aor']) {
      const aRatio = mMax.max > 0 ? aMax.max / mMax.max : Number.NaN;
      targets.push(['sustained refresh REGISTER/s in aor mode, against mirror', `${fmtInt(aMax.max)}${aMax.capped ? '+' : ''} vs ${fmtInt(mMax.max)}${mMax.capped ? '+' : ''}/s = ${Number.isNaN(aRatio) ? '—' : `${aRatio.toFixed(2)}×`}`]);
    }
  }
  if (mirror && aor) {
    const an = aor.window.usPer['node'] ?? 0;
    const r = nodeRelayed > 0 ? an / nodeRelayed : Number.NaN;
    targets.push(['aor mode: locally answered REGISTER against a relayed one (node)', `${fmtInt(opts.phones)}/s: ${fmtInt(an)} vs ${fmtInt(nodeRelayed)} µs = ${r.toFixed(2)}×; ${pct(refreshShare(aor))} of refreshes reached the registrar`]);
  }
  const os1 = find('opensips-1');
  const os2 = find('opensips-2');
  for (const o of [os1, os2]) {
    if (o) targets.push([`${LABELS[o.system]}, for comparison`, `${pct(o.share)} of REGISTERs reached the registrar (${pct(refreshShare(o))} of refreshes); ${us(o, 'opensips')} µs per REGISTER (process group)${contact ? ` vs midreg contact node ${us(contact, 'node')} + drachtio ${us(contact, 'drachtio')}` : ''}`]);
  }
  if (targets.length > 0) tables.push({ title: 'Issue 18 targets', head: ['target', 'result'], rows: targets });

  log('');
  for (const t of tables) { for (const l of textTable(t)) log(l); log(''); }
  log(`bench finished in ${(durationSec / 60).toFixed(1)} min${error ? ` with an error: ${error}` : ''}`);

  finishRun(run, {
    keep: opts.keep,
    error,
    json: {
    meta: { ...meta, bench: 'throttle', durationSec, workDir: opts.keep ? workDir : undefined },
    settings: {
      perPhone: PER_PHONE, phoneExpires: PHONE_EXPIRES, outgoingExpires: OUTGOING_EXPIRES, refreshMargin: REFRESH_MARGIN, window: WINDOW,
      sweep: { registerRate: opts.registerRate, steadySec: opts.steady, rampSec: RAMP_SEC, registrationMarginMs: REGISTRATION_MARGIN_MS },
    },
    population, sweep, computed: { refreshPeriod: REFRESH_PERIOD, ...computed },
    maxima: { mirror: mMax, contact: cMax, aor: aMax }, profiles, error,
  },
    markdown: [
      ...resultsHeader(run, 'midreg throttling benchmark', 'throttle'),
      `Options: ${fmtInt(opts.phones)} phones; sweep ${opts.sweep ? `${opts.rates.map(fmtInt).join(', ')} refresh REGISTER/s (registering at ${fmtInt(opts.registerRate)}/s, steady window ${opts.steady} s)` : 'off'}; registrar over TCP (midreg) / UDP (OpenSIPS). Took ${fmt1(durationSec / 60)} min.`,
      '',
      ...tables.flatMap(markdownTable),
      ...(error ? ['### Error', '', error, ''] : []),
      ...(profiles.length > 0 ? ['### midreg CPU profiles (node --cpu-prof)', '', '```', ...profiles.flatMap((p) => formatProfile(p, 'profile')), '```', ''] : []),
      '### Steps',
      '',
      '```',
      ...lines.filter((l) => /^\s{2}\S/.test(l) && l.includes('@') || /^\[\d+ s\]/.test(l)),
      '```',
      '',
    ],
  });
}

runBench('throttle', main);
