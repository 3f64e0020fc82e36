// Admission control before any work is done for a request: a per-source token bucket (a SIP
// scanner or a looping UA cannot monopolise midreg or reach the platform at full speed), and
// overload shedding: past it midreg answers 503 + Retry-After instead of letting retransmissions
// pile up (RFC 3261 §21.5.4 lets a server that is "temporarily unable to process the request due
// to a temporary overloading" answer 503 with Retry-After).
//
// Overload is a standing queue, not a busy moment. A fixed cap on transactions in flight cannot
// tell them apart: 256 in flight is a 130 ms hiccup at 2,000 REGISTER/s, which a healthy system
// rides out. So, as CoDel does for packets (RFC 8289 §3), the guard watches the *shortest* time a
// transaction took over each interval: one slow UA or registrar branch cannot raise it, a queue
// in front of every transaction does. That shortest time is compared with the shortest seen over
// the last few seconds (the baseline), not with zero: a registrar 150 ms away is a round trip,
// not a queue, and reading its distance as one made the guard shed steadily at any load. While
// the queue (shortest minus baseline) stays above the target, midreg admits only as many
// transactions as the recent throughput drains in baseline plus target (Little's law) and sheds
// the rest. A queue that stands longer than the baseline window becomes the baseline, so
// shedding cannot outlast it either. The absolute cap stays, as a bound on memory.
//
// Off by default (MIDREG_OVERLOAD_QUEUE_MS=0): on the bench the queue forms in drachtio-server,
// whose thread a 503 from node relieves only half as much as it costs, and shedding completed
// fewer requests than not shedding (bench/results/HISTORY.md, queue shedding).

export interface FloodGuardOptions {
  /** Sustained requests per second allowed from one source IP (0 disables the per-source limit). */
  perSourceRate: number;
  /** Requests a source may send at once above its rate. */
  perSourceBurst: number;
  /** Transactions waiting on the upstream or a UA at once (0 disables the cap). */
  maxInFlight: number;
  /** Shed when even the fastest transaction of an interval took this much longer than the baseline (0 disables). */
  queueTargetMs?: number;
  /** The interval over which the fastest transaction is taken (default 100 ms). */
  queueIntervalMs?: number;
  /** The baseline is the shortest of the fastest transactions of the last this-many-ms worth of busy intervals (default 10 s). */
  baselineWindowMs?: number;
  /** Sources never limited (the platform). */
  exempt: (address: string, port: number) => boolean;
  /** How many source buckets are kept at most; the least recently seen go first. */
  maxTrackedSources?: number;
}

export type Admission =
  | { kind: 'admit'; release: () => void }
  | { kind: 'reject'; status: 503; retryAfterSec: number; why: 'source-rate' | 'overload' | 'queue' };

interface Bucket { tokens: number; at: number }

/** Completions an interval needs before its fastest one says anything about a queue. */
const MIN_EVIDENCE = 10;

export class FloodGuard {
  private readonly buckets = new Map<string, Bucket>();
  private inFlight = 0;
  private readonly maxTracked: number;
  private readonly intervalMs: number;
  /** The interval being measured: when it started, its fastest transaction, how many completed. */
  private window = { start: 0, fastestMs: Infinity, completed: 0 };
  /** While a standing queue is seen: how many may be in flight; undefined when there is none. */
  private queueLimit: number | undefined;
  /** The fastest transaction of each of the last intervals (Infinity: none completed), oldest overwritten first. */
  private readonly recentFastest: Float64Array;
  private recentIndex = 0;

  constructor(private readonly opts: FloodGuardOptions, private readonly clock: () => number = Date.now) {
    this.maxTracked = opts.maxTrackedSources ?? 100_000;
    this.intervalMs = opts.queueIntervalMs ?? 100;
    this.recentFastest = new Float64Array(Math.max(1, Math.ceil((opts.baselineWindowMs ?? 10_000) / this.intervalMs))).fill(Infinity);
    this.window.start = clock();
  }

  get active(): number { return this.inFlight; }

  /** Whether midreg currently sheds because of a standing queue. */
  get queued(): boolean {
    this.roll(this.clock());
    return this.queueLimit !== undefined;
  }

  admit(address: string, port: number): Admission {
    const exempt = this.opts.exempt(address, port);
    if (!exempt && this.opts.perSourceRate > 0 && !this.take(address)) {
      return { kind: 'reject', status: 503, retryAfterSec: Math.max(1, Math.ceil(1 / this.opts.perSourceRate)), why: 'source-rate' };
    }
    if (this.opts.maxInFlight > 0 && this.inFlight >= this.opts.maxInFlight) {
      return { kind: 'reject', status: 503, retryAfterSec: 5, why: 'overload' };
    }
    const admittedAt = this.clock();
    this.roll(admittedAt);
    if (this.queueLimit !== undefined && this.inFlight >= this.queueLimit) {
      return { kind: 'reject', status: 503, retryAfterSec: 5, why: 'queue' };
    }
    this.inFlight++;
    let released = false;
    return {
      kind: 'admit',
      release: () => {
        if (released) return;
        released = true;
        this.inFlight--;
        const now = this.clock();
        this.roll(now);
        this.window.fastestMs = Math.min(this.window.fastestMs, now - admittedAt);
        this.window.completed++;
      },
    };
  }

  /** Close the measured interval once it is over and decide whether a queue stands. */
  private roll(now: number): void {
    const target = this.opts.queueTargetMs ?? 0;
    if (target <= 0 || now - this.window.start < this.intervalMs) return;
    const { fastestMs, completed } = this.window;
    const elapsed = now - this.window.start;
    // The current interval counts towards its own baseline, so a first interval, or a registrar
    // that was always this far away, never reads as a queue.
    if (completed >= MIN_EVIDENCE) {
      this.recentFastest[this.recentIndex] = fastestMs;
      this.recentIndex = (this.recentIndex + 1) % this.recentFastest.length;
    }
    let baselineMs = Infinity;
    for (const ms of this.recentFastest) if (ms < baselineMs) baselineMs = ms;
    // Each interval decides afresh. Too few completions say nothing about a queue (an idle
    // interval, one slow UA, or everything shed): then nothing is shed, so shedding can never
    // outlive the evidence for it.
    this.queueLimit = completed >= MIN_EVIDENCE && fastestMs - baselineMs > target
      ? Math.max(MIN_EVIDENCE, Math.floor((completed / elapsed) * (baselineMs + target)))
      : undefined;
    this.window = { start: now, fastestMs: Infinity, completed: 0 };
  }

  private take(address: string): boolean {
    const now = this.clock();
    const capacity = this.opts.perSourceBurst;
    const bucket = this.buckets.get(address) ?? { tokens: capacity, at: now };
    // Map order is insertion order: re-inserting keeps the least recently seen source first.
    this.buckets.delete(address);
    bucket.tokens = Math.min(capacity, bucket.tokens + ((now - bucket.at) / 1000) * this.opts.perSourceRate);
    bucket.at = now;
    const allowed = bucket.tokens >= 1;
    if (allowed) bucket.tokens -= 1;
    this.buckets.set(address, bucket);
    if (this.buckets.size > this.maxTracked) {
      const oldest = this.buckets.keys().next().value;
      if (oldest !== undefined) this.buckets.delete(oldest);
    }
    return allowed;
  }
}
