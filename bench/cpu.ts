// CPU time per component from /proc: utime+stime of a process (all its threads), of a whole
// process group (Kamailio's workers), and of this process's reaped children (the sipp instances,
// which exit at the end of each step: their time lands in our cutime/cstime once waited for).
import { execFileSync } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';

/** Clock ticks per second of /proc/<pid>/stat times. */
export const CLK_TCK: number = (() => {
  try { return Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100; } catch { return 100; }
})();

/** Fields after "pid (comm)": index 0 is state (field 3 in proc(5)). */
function statFields(pid: number | 'self'): string[] | undefined {
  try {
    const text = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return text.slice(text.lastIndexOf(')') + 2).split(' ');
  } catch {
    return undefined;
  }
}

// proc(5): pgrp is field 5, utime 14, stime 15, cutime 16, cstime 17 → indexes 2, 11, 12, 13, 14 here
const PGRP = 2;
const UTIME = 11;
const STIME = 12;
const CUTIME = 13;
const CSTIME = 14;

/** CPU seconds used so far by a process (all threads); 0 when it is gone. */
export function processCpu(pid: number): number {
  const f = statFields(pid);
  return f ? (Number(f[UTIME]) + Number(f[STIME])) / CLK_TCK : 0;
}

/** CPU seconds used so far by the live members of a process group. */
export function groupCpu(pgid: number): number {
  let ticks = 0;
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    const f = statFields(Number(entry));
    if (f && Number(f[PGRP]) === pgid) ticks += Number(f[UTIME]) + Number(f[STIME]);
  }
  return ticks / CLK_TCK;
}

/** CPU seconds of this process's children that have exited and been waited for. */
export function reapedChildrenCpu(): number {
  const f = statFields('self');
  return f ? (Number(f[CUTIME]) + Number(f[CSTIME])) / CLK_TCK : 0;
}

export interface CpuProbe {
  name: string;
  read(): number;
  /** Set for single processes whose busiest thread is worth watching (drachtio-server, node). */
  pid?: number;
}

export function probeProcess(name: string, pid: number): CpuProbe { return { name, pid, read: () => processCpu(pid) }; }

/** CPU seconds per thread of a process (tid → seconds). */
export function threadCpu(pid: number): Map<number, number> {
  const out = new Map<number, number>();
  let tids: string[];
  try { tids = readdirSync(`/proc/${pid}/task`); } catch { return out; }
  for (const tid of tids) {
    try {
      const text = readFileSync(`/proc/${pid}/task/${tid}/stat`, 'utf8');
      const f = text.slice(text.lastIndexOf(')') + 2).split(' ');
      out.set(Number(tid), (Number(f[UTIME]) + Number(f[STIME])) / CLK_TCK);
    } catch { /* thread gone */ }
  }
  return out;
}

/** The most CPU any single thread used between two threadCpu() samples, in seconds. */
export function busiestThread(before: Map<number, number>, after: Map<number, number>): number {
  let max = 0;
  for (const [tid, sec] of after) max = Math.max(max, sec - (before.get(tid) ?? 0));
  return max;
}
export function probeGroup(name: string, pgid: number): CpuProbe { return { name, read: () => groupCpu(pgid) }; }
export const probeSipp: CpuProbe = { name: 'sipp', read: reapedChildrenCpu };

export type CpuSample = Record<string, number>;

export function sampleCpu(probes: readonly CpuProbe[]): CpuSample {
  const out: CpuSample = {};
  for (const p of probes) out[p.name] = (out[p.name] ?? 0) + p.read();
  return out;
}

/** CPU seconds per component between two samples. */
export function cpuDelta(before: CpuSample, after: CpuSample): CpuSample {
  const out: CpuSample = {};
  for (const [name, value] of Object.entries(after)) out[name] = Math.max(0, value - (before[name] ?? 0));
  return out;
}

/** Busy CPU seconds of the whole machine (all CPUs, /proc/stat), to see load from outside the bench. */
export function machineBusyCpu(): number {
  try {
    const line = readFileSync('/proc/stat', 'utf8').split('\n')[0] ?? '';
    const [, user, nice, system, , , irq, softirq, steal] = line.trim().split(/\s+/).map(Number);
    return ((user ?? 0) + (nice ?? 0) + (system ?? 0) + (irq ?? 0) + (softirq ?? 0) + (steal ?? 0)) / CLK_TCK;
  } catch {
    return 0;
  }
}

/**
 * Samples a process's threads every `intervalMs` while a step runs, to find how close its busiest
 * thread came to a full core: drachtio-server does its SIP work on one thread and node its
 * JavaScript on one, so a step-long average hides the moment one of them saturates.
 */
export class PeakThreadWatcher {
  private readonly samples: Array<{ at: number; threads: Map<number, number> }> = [];
  private readonly timer: NodeJS.Timeout;

  constructor(private readonly pid: number, intervalMs = 250) {
    this.sample();
    this.timer = setInterval(() => this.sample(), intervalMs);
  }

  private sample(): void {
    this.samples.push({ at: performance.now(), threads: threadCpu(this.pid) });
  }

  /** Stops sampling; returns the most any single thread used over any window of ≥ windowMs, in % of one core. */
  stop(windowMs = 1000): number {
    clearInterval(this.timer);
    this.sample();
    let peak = 0;
    const s = this.samples;
    for (let i = 0, j = 1; i < s.length; i++) {
      const from = s[i];
      if (!from) break;
      if (j <= i) j = i + 1;
      while (j < s.length && (s[j]?.at ?? 0) - from.at < windowMs) j++;
      const to = s[j];
      if (!to) break;
      const sec = (to.at - from.at) / 1000;
      peak = Math.max(peak, (busiestThread(from.threads, to.threads) / sec) * 100);
    }
    return peak;
  }
}

/**
 * Waits (up to 15 s) until the machine is quiet: CPU busy below 25% of one core over 400 ms while
 * the systems under test are idle. Other work on this 2-core machine would be measured as ours.
 * Returns the last busy figure.
 */
export async function waitForQuiet(maxWaitMs = 15_000): Promise<number> {
  const deadline = Date.now() + maxWaitMs;
  for (;;) {
    const before = machineBusyCpu();
    await new Promise((r) => setTimeout(r, 400));
    const busyPct = ((machineBusyCpu() - before) / 0.4) * 100;
    if (busyPct < 25 || Date.now() > deadline) return busyPct;
  }
}
