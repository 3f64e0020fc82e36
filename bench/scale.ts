#!/usr/bin/env node
// Scale of the replica without SIP: fill a SQLite replica with N bindings through
// lib/store/location-store.ts (LocationStore.replaceAor, one AoR per call, the way midreg writes a 2xx),
// then measure, each in a fresh Node process so nothing of the fill is still cached in it:
//   - start:   open + migrations + countStored() (what app/service.ts does before it serves)
//   - lookups: liveBindings(aor, now) for random AoRs (p50/p99/max), and the process RSS
//   - sweep:   midreg's sweep (lib/store/expiry-sweep.ts: sized steps, SWEEP_PAUSE_MS apart) until done
//              with a share of bindings expired (each step's time: SIP waits that long)
//   - start with that share expired (not waited for: the start-up sweep runs in the background)
//
// Time is simulated so that nothing is expired "now" and the expiring share is expired at
// S = T0 + 2 h. The store checkpoints as in midreg (its thread, and the writer's own pass when the
// WAL reaches 64 MiB): a step's time includes that pass when it falls there, as it would in midreg.
//
//   node dist/bench/scale.js [--bindings 1000000] [--lookups 100000] [--expired 0.1]
import { execFile } from 'node:child_process';
import { copyFileSync, existsSync, mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import { ExpirySweeper, FIRST_BATCH, sweepExpired } from '../lib/store/expiry-sweep.js';
import { LocationStore } from '../lib/store/location-store.js';
import type { BindingStore } from '../lib/store/store.js';
import type { Binding } from '../lib/registrar/registration.js';

const HOUR = 3_600_000;

export interface ScaleOptions {
  bindings: number;
  lookups: number;
  expiredFraction: number;
  /** Keep the SQLite files (printed) instead of deleting them. */
  keep?: boolean;
  log?: (line: string) => void;
}

export interface Quantiles { p50: number; p99: number; max: number; mean: number; count: number }

export interface StartMeasure {
  totalMs: number;
  openMs: number;
  purgeMs: number;
  countsMs: number;
  purged: number;
  bindings: number;
  aors: number;
  migrationsApplied: number;
  rssMb: number;
}

export interface LookupMeasure { us: Quantiles; found: number; rssMb: number; heapMb: number }

export interface SweepMeasure {
  /** Steps of midreg's ExpirySweeper until nothing expired was left (each one transaction). */
  calls: number;
  removed: number;
  totalMs: number;
  /** Time of each step, the last (short) one included. */
  callMs: Quantiles;
  /** The first step, on a cold cache: the one a fixed batch size got wrong. */
  firstCall: { batch: number; removed: number; ms: number };
  /** Smallest and largest batch the sweeper chose. */
  batchRange: { min: number; max: number };
  /**
   * The slowest step, split (Linux) into the thread's time on a CPU and its time runnable but
   * waiting for one; the rest of `ms` it was asleep in the kernel. SIP waits for all of it, only
   * the time on a CPU is the sweep's own work.
   */
  worstStep: { ms: number; batch: number; cpuMs?: number; waitMs?: number };
  remainingBindings: number;
}

export interface ScaleResult {
  bindings: number;
  expiredFraction: number;
  fillSec: number;
  fillPerSec: number;
  fileBytes: number;
  start: StartMeasure;
  lookups: LookupMeasure;
  sweep: SweepMeasure;
  startWithExpired: StartMeasure;
  dir?: string;
}

// ---- deterministic data ------------------------------------------------------------------------

/** A small seeded PRNG (mulberry32), so every run writes the same data. */
function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export function aorOf(i: number): string {
  return `sip:user${String(i).padStart(7, '0')}@example.test`;
}

const AGENTS = ['Yealink SIP-T46S 66.86.0.15', 'Linphone/5.2.0 (belle-sip/5.2.0)', 'PolycomVVX-VVX_411-UA/6.4.3.5018', 'Zoiper rv2.10.19.5'];

function makeBinding(i: number, t0: number, expiring: boolean, rand: () => number): Binding {
  const sweepAt = t0 + 2 * HOUR;
  const expiresAt = expiring
    ? t0 + HOUR + Math.floor(rand() * HOUR) // expired by S, live now
    : sweepAt + 60_000 + Math.floor(rand() * HOUR); // live at S
  const at = expiring ? expiresAt - HOUR : sweepAt - Math.floor(rand() * HOUR / 2);
  const user = `user${String(i).padStart(7, '0')}`;
  const a = 1 + (i % 250);
  const b = 1 + ((i >> 8) % 250);
  const port = 1024 + (i % 60000);
  const withInstance = i % 3 === 0;
  return {
    aor: aorOf(i),
    contact: `sip:${user}@198.51.${a}.${b}:${port};transport=udp${withInstance ? ';ob' : ''}`,
    expiresAt,
    q: i % 5 === 0 ? 0.5 : null,
    instance: withInstance ? `"<urn:uuid:${(i * 2654435761 >>> 0).toString(16).padStart(8, '0')}-7dcc-4b30-9b8a-1d3c6f2a${String(i % 10000).padStart(4, '0')}>"` : null,
    regId: withInstance ? 1 : null,
    path: i % 2 === 0 ? '<sip:edge1.example.net;lr>' : null,
    callId: `${(i * 40503 >>> 0).toString(36)}-${i.toString(36)}@198.51.${a}.${b}`,
    cseq: 1 + (i % 97),
    userAgent: AGENTS[i % AGENTS.length] ?? null,
    source: { address: `203.0.${a}.${b}`, port, transport: 'udp' },
    insertion: null, upstreamExpiresAt: null, lapsedAt: null,
    registeredAt: at,
    updatedAt: at,
  };
}

// ---- phases (each runs in its own process) -----------------------------------------------------

function quantiles(values: number[]): Quantiles {
  if (values.length === 0) return { p50: 0, p99: 0, max: 0, mean: 0, count: 0 };
  const sorted = Float64Array.from(values).sort();
  const at = (q: number): number => sorted[Math.min(sorted.length - 1, Math.ceil(q * sorted.length) - 1)] ?? 0;
  let sum = 0;
  for (const v of sorted) sum += v;
  return { p50: at(0.5), p99: at(0.99), max: sorted[sorted.length - 1] ?? 0, mean: sum / sorted.length, count: sorted.length };
}

const ms = (from: bigint): number => Number(process.hrtime.bigint() - from) / 1e6;
const mb = (bytes: number): number => Math.round(bytes / 1048576 * 10) / 10;

function phaseFill(db: string, n: number, expiredFraction: number, t0: number): { fillSec: number } {
  const store = new LocationStore(db);
  const rand = rng(42);
  const every = expiredFraction > 0 ? Math.round(1 / expiredFraction) : 0;
  const started = process.hrtime.bigint();
  for (let i = 0; i < n; i++) {
    const binding = makeBinding(i, t0, every > 0 && i % every === 0, rand);
    store.replaceAor(binding.aor, [binding]);
  }
  const fillSec = ms(started) / 1000;
  store.close();
  return { fillSec };
}

/**
 * What app/service.ts does before it serves: open (+ migrations) and count what is stored.
 * Expired bindings are not served and are swept afterwards in the background (`purged` and
 * `purgeMs` report that background sweep, done here after start is measured).
 */
async function measureStart(db: string, now: number): Promise<StartMeasure> {
  const t = process.hrtime.bigint();
  const store = new LocationStore(db);
  const openMs = ms(t);
  const tc = process.hrtime.bigint();
  const counts = store.countStored();
  const countsMs = ms(tc);
  const totalMs = ms(t);
  const tp = process.hrtime.bigint();
  const purged = await sweepExpired(new ExpirySweeper({ purgeExpiredBatch: (at, limit) => Promise.resolve(store.purgeExpiredBatch(at, limit)) }), { now: () => now });
  const purgeMs = ms(tp);
  store.close();
  return { totalMs, openMs, purgeMs, countsMs, purged, bindings: counts.bindings, aors: counts.aors, migrationsApplied: store.migrationsApplied.length, rssMb: mb(process.memoryUsage().rss) };
}

async function phaseStartAndLookups(db: string, n: number, lookups: number): Promise<{ start: StartMeasure; lookups: LookupMeasure }> {
  const start = await measureStart(db, Date.now());
  const store = new LocationStore(db);
  const rand = rng(7);
  const now = Date.now();
  const times: number[] = new Array<number>(lookups);
  let found = 0;
  for (let k = 0; k < lookups; k++) {
    const aor = aorOf(Math.floor(rand() * n));
    const t = process.hrtime.bigint();
    const live = store.liveBindings(aor, now);
    times[k] = Number(process.hrtime.bigint() - t) / 1000;
    if (live.length > 0) found++;
  }
  const mem = process.memoryUsage();
  store.close();
  return { start, lookups: { us: quantiles(times), found, rssMb: mb(mem.rss), heapMb: mb(mem.heapUsed) } };
}

/** This thread's time on a CPU and time runnable but not running so far, in ms (undefined off Linux). */
function threadSchedMs(): { cpuMs: number; waitMs: number } | undefined {
  try {
    const [cpuNs, waitNs] = readFileSync('/proc/thread-self/schedstat', 'utf8').split(' ').map(Number);
    return cpuNs === undefined || waitNs === undefined ? undefined : { cpuMs: cpuNs / 1e6, waitMs: waitNs / 1e6 };
  } catch {
    return undefined;
  }
}

async function phaseSweep(db: string, now: number): Promise<SweepMeasure> {
  const store = new LocationStore(db);
  const times: number[] = [];
  let firstCall: SweepMeasure['firstCall'] | undefined;
  const batchRange = { min: FIRST_BATCH, max: FIRST_BATCH };
  let worstStep: SweepMeasure['worstStep'] = { ms: 0, batch: 0 };
  // The split is read just around the transaction, inside the time the sweeper measures.
  let lastSplit: { cpuMs: number; waitMs: number } | undefined;
  const splitStore: Pick<BindingStore, 'purgeExpiredBatch'> = {
    purgeExpiredBatch: (at, limit) => {
      const before = threadSchedMs();
      const result = store.purgeExpiredBatch(at, limit);
      const after = threadSchedMs();
      lastSplit = before && after ? { cpuMs: after.cpuMs - before.cpuMs, waitMs: after.waitMs - before.waitMs } : undefined;
      return Promise.resolve(result);
    },
  };
  const started = process.hrtime.bigint();
  // As app/service.ts runs it: steps paced SWEEP_PAUSE_MS apart, each timed.
  const removed = await sweepExpired(new ExpirySweeper(splitStore), {
    now: () => now,
    onStep: (step) => {
      times.push(step.ms);
      firstCall ??= { batch: step.batch, removed: step.removed, ms: step.ms };
      batchRange.min = Math.min(batchRange.min, step.batch);
      batchRange.max = Math.max(batchRange.max, step.batch);
      if (step.ms > worstStep.ms) worstStep = { ms: step.ms, batch: step.batch, ...lastSplit };
    },
  });
  const totalMs = ms(started);
  const remaining = store.counts(0).bindings;
  store.close();
  return { calls: times.length, removed, totalMs, callMs: quantiles(times), firstCall: firstCall ?? { batch: 0, removed: 0, ms: 0 }, batchRange, worstStep, remainingBindings: remaining };
}

// ---- orchestration -----------------------------------------------------------------------------

/**
 * " (worst: 2.0 ms on a CPU, 3.6 ms waiting for one, 6.4 ms neither)" for the worst step, when the
 * split was read; "neither" is the thread asleep in the kernel (I/O, writeback throttling, a lock).
 */
export function worstSplit(worst: SweepMeasure['worstStep']): string {
  if (worst.cpuMs === undefined || worst.waitMs === undefined) return '';
  const asleep = Math.max(0, worst.ms - worst.cpuMs - worst.waitMs);
  return ` (worst: ${worst.cpuMs.toFixed(1)} ms on a CPU, ${worst.waitMs.toFixed(1)} ms waiting for one, ${asleep.toFixed(1)} ms neither)`;
}

const SELF = fileURLToPath(import.meta.url);

function child<T>(args: string[]): Promise<T> {
  return new Promise((resolve, reject) => {
    execFile(process.execPath, [SELF, ...args], { maxBuffer: 16 * 1024 * 1024, timeout: 600_000 }, (err, stdout, stderr) => {
      if (err) { reject(new Error(`scale ${args.join(' ')} failed: ${err.message}\n${stderr}`)); return; }
      const last = stdout.trim().split('\n').pop() ?? '';
      try { resolve(JSON.parse(last) as T); } catch { reject(new Error(`scale ${args.join(' ')}: no result in output:\n${stdout}\n${stderr}`)); }
    });
  });
}

function fileBytes(db: string): number {
  return [db, `${db}-wal`, `${db}-shm`].reduce((sum, f) => sum + (existsSync(f) ? statSync(f).size : 0), 0);
}

export async function runScale(opts: ScaleOptions): Promise<ScaleResult> {
  const log = opts.log ?? ((line: string) => process.stdout.write(`${line}\n`));
  const dir = mkdtempSync(join(tmpdir(), 'midreg-scale-'));
  const db = join(dir, 'replica.sqlite');
  const copy = join(dir, 'replica-copy.sqlite');
  const t0 = Date.now();
  const sweepAt = t0 + 2 * HOUR;
  try {
    log(`scale: filling ${opts.bindings.toLocaleString('en-US')} bindings through LocationStore.replaceAor (one transaction per AoR) …`);
    const fill = await child<{ fillSec: number }>(['--phase', 'fill', '--db', db, '--bindings', String(opts.bindings), '--expired', String(opts.expiredFraction), '--t0', String(t0)]);
    const bytes = fileBytes(db);
    log(`scale: filled in ${fill.fillSec.toFixed(1)} s (${Math.round(opts.bindings / fill.fillSec).toLocaleString('en-US')}/s), file ${(bytes / 1048576).toFixed(1)} MB`);
    copyFileSync(db, copy);
    const sl = await child<{ start: StartMeasure; lookups: LookupMeasure }>(['--phase', 'lookups', '--db', db, '--bindings', String(opts.bindings), '--lookups', String(opts.lookups)]);
    log(`scale: start ${sl.start.totalMs.toFixed(0)} ms; ${opts.lookups.toLocaleString('en-US')} lookups p50 ${sl.lookups.us.p50.toFixed(1)} µs p99 ${sl.lookups.us.p99.toFixed(1)} µs max ${sl.lookups.us.max.toFixed(0)} µs; RSS ${sl.lookups.rssMb} MB`);
    const sweep = await child<SweepMeasure>(['--phase', 'sweep', '--db', db, '--now', String(sweepAt)]);
    log(`scale: sweep of ${sweep.removed.toLocaleString('en-US')} expired in ${sweep.calls} steps (${(sweep.totalMs / 1000).toFixed(1)} s): step p50 ${sweep.callMs.p50.toFixed(1)} ms, p99 ${sweep.callMs.p99.toFixed(1)} ms, max ${sweep.callMs.max.toFixed(1)} ms${worstSplit(sweep.worstStep)}; first step ${sweep.firstCall.removed} rows in ${sweep.firstCall.ms.toFixed(1)} ms; batches ${sweep.batchRange.min}–${sweep.batchRange.max}`);
    const startWithExpired = await child<StartMeasure>(['--phase', 'start', '--db', copy, '--now', String(sweepAt)]);
    log(`scale: start with ${(opts.expiredFraction * 100).toFixed(0)}% expired ${startWithExpired.totalMs.toFixed(0)} ms (then a background sweep of ${startWithExpired.purged.toLocaleString('en-US')} in ${startWithExpired.purgeMs.toFixed(0)} ms)`);
    return {
      bindings: opts.bindings,
      expiredFraction: opts.expiredFraction,
      fillSec: fill.fillSec,
      fillPerSec: opts.bindings / fill.fillSec,
      fileBytes: bytes,
      start: sl.start,
      lookups: sl.lookups,
      sweep,
      startWithExpired,
      ...(opts.keep ? { dir } : {}),
    };
  } finally {
    if (!opts.keep) rmSync(dir, { recursive: true, force: true });
  }
}

// ---- command line ------------------------------------------------------------------------------

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      phase: { type: 'string' },
      db: { type: 'string' },
      bindings: { type: 'string', default: '1000000' },
      lookups: { type: 'string', default: '100000' },
      expired: { type: 'string', default: '0.1' },
      t0: { type: 'string' },
      now: { type: 'string' },
      keep: { type: 'boolean', default: false },
    },
  });
  const num = (v: string | undefined, name: string): number => {
    const n = Number(v);
    if (v === undefined || !Number.isFinite(n)) throw new Error(`--${name} must be a number`);
    return n;
  };
  const out = (value: unknown): void => { process.stdout.write(`${JSON.stringify(value)}\n`); };
  const db = values.db ?? '';
  switch (values.phase) {
    case 'fill': out(phaseFill(db, num(values.bindings, 'bindings'), num(values.expired, 'expired'), num(values.t0, 't0'))); return;
    case 'lookups': out(await phaseStartAndLookups(db, num(values.bindings, 'bindings'), num(values.lookups, 'lookups'))); return;
    case 'sweep': out(await phaseSweep(db, num(values.now, 'now'))); return;
    case 'start': out(await measureStart(db, num(values.now, 'now'))); return;
    case undefined: {
      const result = await runScale({
        bindings: num(values.bindings, 'bindings'),
        lookups: num(values.lookups, 'lookups'),
        expiredFraction: num(values.expired, 'expired'),
        keep: values.keep,
      });
      out(result);
      return;
    }
    default: throw new Error(`unknown --phase ${values.phase}`);
  }
}

if (process.argv[1] && pathToFileURL(process.argv[1]).href === import.meta.url) {
  main().catch((err: unknown) => {
    process.stderr.write(`${err instanceof Error ? err.stack ?? err.message : String(err)}\n`);
    process.exit(1);
  });
}
