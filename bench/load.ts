// Bounded sipp load steps for the benchmark: one sipp UAC run at a fixed rate for a fixed number
// of calls (-m, -r, -l, -timeout, -recv_timeout: it always stops by itself), with its statistics
// (-trace_stat), per-call response times (-trace_rtt) and errors (-trace_err) read back; and sipp
// UAS instances answering MESSAGE. Everything binds and sends to 127.0.0.1 only. Unlike the test
// suites' runner (test/support/sipp.ts) nothing traces every message: that would be the load.
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { delay } from './procs.js';
import { fmtInt } from './report.js';

const SIPP_BIN = process.env['SIPP_BIN'] ?? 'sipp';
const HOST = '127.0.0.1';

export interface Quantiles { p50: number; p99: number; max: number; mean: number; count: number }

export function quantiles(values: readonly number[]): Quantiles {
  if (values.length === 0) return { p50: 0, p99: 0, max: 0, mean: 0, count: 0 };
  const sorted = Float64Array.from(values).sort();
  const at = (q: number): number => sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1))] ?? 0;
  let sum = 0;
  for (const v of sorted) sum += v;
  return { p50: at(0.5), p99: at(0.99), max: sorted[sorted.length - 1] ?? 0, mean: sum / sorted.length, count: sorted.length };
}

export interface LoadOptions {
  /** Absolute path of the UAC scenario. */
  scenario: string;
  /** 127.0.0.1:port of the system under test. */
  target: string;
  localPort: number;
  /** Calls (transactions) per second. */
  rate: number;
  calls: number;
  /** Most calls open at once (-l). */
  limit: number;
  vars: Record<string, string>;
  /** -inf file (CSV injection). */
  injection?: string;
  /**
   * sipp's socket buffers (-buff_size, bytes; the kernel caps it at net.core.rmem_max). Without
   * it sipp's UDP socket keeps the OS default (about 208 KiB) and drops 200 OKs in bursts, which
   * then count as the system's retransmissions.
   */
  buffSize?: number;
  /** Directory for this run's statistics files (created). */
  dir: string;
  /** A call with no answer for this long fails (-recv_timeout). */
  recvTimeoutMs: number;
  /** Seconds each call stays open after sipp started it (its pauses): added to sipp's run bound (-timeout). */
  holdSec?: number;
  /** Called with sipp's pid as soon as it is spawned (to watch its CPU while it runs). */
  onSpawn?: (pid: number) => void;
}

export interface LoadResult {
  rate: number;
  calls: number;
  created: number;
  successful: number;
  failed: number;
  retransmissions: number;
  timeouts: number;
  unexpected: number;
  /** Messages for calls already over (late answers, e.g. to retransmissions). */
  deadCallMsgs: number;
  /** Successful calls per second over sipp's whole run (its statistics: start to end). */
  achievedRate: number;
  /** Successful calls per second from sipp's start to the last successful answer (failed calls' timeouts not counted). */
  goodputRate: number;
  /** Seconds of sipp's run (statistics start to end). */
  elapsedSec: number;
  /** When sipp's statistics started (its StartTime, epoch ms; NaN if unknown): -trace_rtt dates count from about then. */
  startedAtMs: number;
  /** Response time (request → 200) of each successful call, ms (sipp uses CLOCK_MONOTONIC_COARSE: 4 ms ticks here). */
  responseMs: Quantiles;
  exitCode: number;
  /** The final statuses sipp did not expect (e.g. [404]), from its error log. */
  unexpectedStatuses: number[];
  errorSample: string;
  command: string;
}

function sippArgs(base: string[], opts: { localPort: number; vars: Record<string, string>; dir: string }): string[] {
  return [
    ...base,
    '-i', HOST, '-bind_local', '-p', String(opts.localPort),
    '-nostdin',
    '-trace_stat', '-stf', join(opts.dir, 'stat.csv'), '-fd', '1',
    '-trace_err', '-error_file', join(opts.dir, 'errors.log'),
    ...Object.entries(opts.vars).flatMap(([k, v]) => ['-set', k, v]),
  ];
}

interface Exited { code: number; stderr: string }

const running = new Set<ChildProcess>();
let exitHook = false;

function run(args: string[], cwd: string, killAfterMs: number): { child: ChildProcess; done: Promise<Exited> } {
  const child = spawn(SIPP_BIN, args, { cwd, stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr?.setEncoding('utf8').on('data', (d: string) => { if (stderr.length < 20_000) stderr += d; });
  const watchdog = setTimeout(() => child.kill('SIGKILL'), killAfterMs);
  const done = new Promise<Exited>((resolve) => {
    child.once('error', (err) => { clearTimeout(watchdog); resolve({ code: -1, stderr: `${stderr}${String(err)}` }); });
    child.once('close', (code, signal) => { clearTimeout(watchdog); resolve({ code: code ?? (signal ? 128 : -1), stderr }); });
  });
  running.add(child);
  void done.then(() => running.delete(child));
  if (!exitHook) {
    exitHook = true;
    process.once('exit', () => { for (const c of running) c.kill('SIGKILL'); });
  }
  return { child, done };
}

/** The last line of a sipp -trace_stat file, by column name. */
export function readStat(file: string): Record<string, string> | undefined {
  if (!existsSync(file)) return undefined;
  const lines = readFileSync(file, 'utf8').split('\n').filter((l) => l.trim() !== '');
  const header = lines[0]?.split(';');
  const last = lines[lines.length - 1]?.split(';');
  if (!header || !last || lines.length < 2) return undefined;
  const out: Record<string, string> = {};
  header.forEach((name, i) => { out[name] = last[i] ?? ''; });
  return out;
}

/** "2026-11-23\t19:22:15.219310\t1795461735.219310" → 1795461735.219310 */
function epochOf(value: string | undefined): number {
  const last = value?.split('\t').pop();
  return last ? Number(last) : Number.NaN;
}

const num = (stat: Record<string, string> | undefined, key: string): number => Number(stat?.[key] ?? 0) || 0;

/** Every "*_rtt.csv" in dir: [Date_ms since start, response_time_ms, rtd]. */
function readRtt(dir: string): { times: number[]; lastAtMs: number } {
  const times: number[] = [];
  let lastAtMs = 0;
  for (const name of readdirSync(dir).filter((f) => f.endsWith('_rtt.csv'))) {
    for (const line of readFileSync(join(dir, name), 'utf8').split('\n')) {
      const [at, rt] = line.split(';');
      if (at === undefined || rt === undefined || !/^[\d.]+$/.test(at)) continue;
      times.push(Number(rt));
      lastAtMs = Math.max(lastAtMs, Number(at));
    }
  }
  return { times, lastAtMs };
}

export async function runLoad(opts: LoadOptions): Promise<LoadResult> {
  mkdirSync(opts.dir, { recursive: true });
  const sendSec = opts.calls / opts.rate;
  const timeoutSec = Math.ceil(sendSec + (opts.holdSec ?? 0) + opts.recvTimeoutMs / 1000 + 10);
  const args = sippArgs([
    opts.target, '-sf', opts.scenario,
    '-m', String(opts.calls), '-r', String(opts.rate), '-rp', '1000', '-l', String(opts.limit),
    '-timeout', `${timeoutSec}s`, '-timeout_error', '-recv_timeout', String(opts.recvTimeoutMs),
    // no default behaviours: a failed call is not "aborted" with a BYE (one more request per
    // failure, answered 481, exactly when the system is overloaded)
    '-nd',
    // -rtt_freq 1: sipp drops the last partial batch of response times when it exits
    '-trace_rtt', '-rtt_freq', '1',
    ...(opts.injection ? ['-inf', opts.injection] : []),
    ...(opts.buffSize ? ['-buff_size', String(opts.buffSize)] : []),
  ], opts);
  const command = [SIPP_BIN, ...args].join(' ');
  const { child, done } = run(args, opts.dir, (timeoutSec + 10) * 1000);
  if (child.pid !== undefined) opts.onSpawn?.(child.pid);
  const exited = await done;
  const stat = readStat(join(opts.dir, 'stat.csv'));
  const rtt = readRtt(opts.dir);
  const errors = existsSync(join(opts.dir, 'errors.log')) ? readFileSync(join(opts.dir, 'errors.log'), 'utf8') : '';
  const successful = num(stat, 'SuccessfulCall(C)');
  const statElapsed = epochOf(stat?.['CurrentTime']) - epochOf(stat?.['StartTime']);
  const elapsedSec = Number.isFinite(statElapsed) && statElapsed > 0 ? statElapsed : rtt.lastAtMs / 1000;
  const goodSec = rtt.lastAtMs > 0 ? rtt.lastAtMs / 1000 : elapsedSec;
  const unexpectedStatuses = [...new Set([...errors.matchAll(/received 'SIP\/2\.0 (\d{3})/g)].map((m) => Number(m[1])))];
  return {
    rate: opts.rate,
    calls: opts.calls,
    created: num(stat, 'OutgoingCall(C)'),
    successful,
    failed: num(stat, 'FailedCall(C)'),
    retransmissions: num(stat, 'Retransmissions(C)'),
    timeouts: num(stat, 'FailedTimeoutOnRecv(C)') + num(stat, 'FailedMaxUDPRetrans(C)'),
    unexpected: num(stat, 'FailedUnexpectedMessage(C)'),
    deadCallMsgs: num(stat, 'DeadCallMsgs(C)'),
    achievedRate: elapsedSec > 0 ? successful / elapsedSec : 0,
    goodputRate: goodSec > 0 ? Math.min(rtt.times.length, successful) / goodSec : 0,
    elapsedSec: Number.isFinite(elapsedSec) ? elapsedSec : 0,
    startedAtMs: epochOf(stat?.['StartTime']) * 1000,
    responseMs: quantiles(rtt.times),
    exitCode: exited.code,
    unexpectedStatuses,
    errorSample: `${errors.slice(0, 1500)}${exited.code !== 0 && exited.stderr ? `\n${exited.stderr.slice(-1500)}` : ''}`.trim(),
    command,
  };
}

export interface Uas {
  /** Resolves once sipp has bound its port. */
  ready: Promise<void>;
  /**
   * Ends the UAS `graceMs` after the load is over (SIGKILL: sipp takes over a second to leave on
   * SIGTERM) and resolves with its last statistics (dumped every second).
   */
  finish(graceMs: number): Promise<{ code: number; received: number; failed: number }>;
}

/**
 * A sipp UAS answering MESSAGE with 200 on 127.0.0.1:port until finish() (or timeoutSec). It
 * does not stop after a number of calls: MESSAGE retransmissions from an earlier step that arrive
 * after their call ended are new calls to sipp, and would make it stop short.
 */
export function startUas(opts: { scenario: string; localPort: number; timeoutSec: number; dir: string }): Uas {
  mkdirSync(opts.dir, { recursive: true });
  const args = sippArgs(['-sf', opts.scenario, '-timeout', `${opts.timeoutSec}s`], { localPort: opts.localPort, vars: {}, dir: opts.dir });
  const { child, done } = run(args, opts.dir, (opts.timeoutSec + 10) * 1000);
  let exited = false;
  void done.then(() => { exited = true; });
  const hex = opts.localPort.toString(16).toUpperCase().padStart(4, '0');
  const ready = (async () => {
    const deadline = Date.now() + 5000;
    for (;;) {
      if (exited) throw new Error(`sipp UAS on ${opts.localPort} exited: ${(await done).stderr}`);
      const table = readFileSync('/proc/net/udp', 'utf8');
      if (table.includes(`0100007F:${hex} `)) return;
      if (Date.now() > deadline) throw new Error(`sipp UAS did not bind ${opts.localPort}`);
      await delay(10);
    }
  })();
  ready.catch(() => undefined);
  return {
    ready,
    async finish(graceMs) {
      await delay(graceMs);
      child.kill('SIGKILL');
      const r = await done;
      const stat = readStat(join(opts.dir, 'stat.csv'));
      return { code: r.code, received: num(stat, 'IncomingCall(C)'), failed: num(stat, 'FailedCall(C)') };
    },
  };
}

/** Why a load step fails the bench's pass rule (0 failures, 0 retransmissions, all completed, ≥ 95 % of offered); [] when it passes. */
export function describeFailure(load: LoadResult): string[] {
  const why: string[] = [];
  if (load.failed > 0) {
    const parts = [`${load.timeouts} timeouts`, load.unexpectedStatuses.length > 0 ? `answered ${load.unexpectedStatuses.join('/')}` : ''].filter(Boolean);
    why.push(`${fmtInt(load.failed)} failed (${parts.join(', ')})`);
  }
  if (load.retransmissions > 0) why.push(`${fmtInt(load.retransmissions)} retransmissions`);
  if (load.successful < load.calls && load.failed === 0) why.push(`${fmtInt(load.calls - load.successful)} not completed`);
  if (load.achievedRate < 0.95 * load.rate) why.push(`achieved ${fmtInt(load.achievedRate)}/s < 95% of ${fmtInt(load.rate)}/s`);
  if (why.length === 0 && load.exitCode !== 0) why.push(`sipp exited ${load.exitCode}`);
  return why;
}
