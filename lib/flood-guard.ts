// Admission control before any work is done for a request: a per-source token bucket (a SIP
// scanner or a looping UA cannot monopolise midreg or reach the platform at full speed) and a
// cap on transactions in flight (past it midreg sheds load with 503 + Retry-After instead of
// letting retransmissions pile up: RFC 3261 §21.5.4 lets a server that is "temporarily unable
// to process the request due to a temporary overloading" answer 503 with Retry-After).

export interface FloodGuardOptions {
  /** Sustained requests per second allowed from one source IP (0 disables the per-source limit). */
  perSourceRate: number;
  /** Requests a source may send at once above its rate. */
  perSourceBurst: number;
  /** Transactions waiting on the upstream or a UA at once (0 disables the cap). */
  maxInFlight: number;
  /** Sources never limited (the platform). */
  exempt: (address: string, port: number) => boolean;
  /** How many source buckets are kept at most; the least recently seen go first. */
  maxTrackedSources?: number;
}

export type Admission =
  | { kind: 'admit'; release: () => void }
  | { kind: 'reject'; status: 503; retryAfterSec: number; why: 'source-rate' | 'overload' };

interface Bucket { tokens: number; at: number }

export class FloodGuard {
  private readonly buckets = new Map<string, Bucket>();
  private inFlight = 0;
  private readonly maxTracked: number;

  constructor(private readonly opts: FloodGuardOptions, private readonly clock: () => number = Date.now) {
    this.maxTracked = opts.maxTrackedSources ?? 100_000;
  }

  get active(): number { return this.inFlight; }

  admit(address: string, port: number): Admission {
    const exempt = this.opts.exempt(address, port);
    if (!exempt && this.opts.perSourceRate > 0 && !this.take(address)) {
      return { kind: 'reject', status: 503, retryAfterSec: Math.max(1, Math.ceil(1 / this.opts.perSourceRate)), why: 'source-rate' };
    }
    if (this.opts.maxInFlight > 0 && this.inFlight >= this.opts.maxInFlight) {
      return { kind: 'reject', status: 503, retryAfterSec: 5, why: 'overload' };
    }
    this.inFlight++;
    let released = false;
    return { kind: 'admit', release: () => { if (!released) { released = true; this.inFlight--; } } };
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
