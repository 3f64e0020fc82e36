// Reclaiming expired bindings without holding up SIP. better-sqlite3 is synchronous, so each
// delete transaction blocks the event loop for as long as it runs; what one row costs depends on
// whether its pages are cached (a cold first batch at 1M bindings took 44 ms for 100 rows, a warm
// one 2 ms). So the batch is sized by measured time, not by a fixed row count: it starts small
// and follows the cost per row it sees, aiming well under the budget.
import type { BindingStore } from './store.js';

/** The longest one sweep transaction should block SIP handling (the bench checks 10 ms). */
export const SWEEP_BUDGET_MS = 10;
/**
 * Aim this far under the budget. The next batch may meet colder pages than the last, and a step's
 * time on the clock holds more than its own work: on the bench's 2 cores the worst steps spent
 * 2 to 5.5 ms runnable but not running (/proc/thread-self/schedstat), and once 6.5 ms asleep in
 * the kernel. The checkpoint thread is one of the threads in the way: run at nice 19 by hand, it
 * cut the p99 step from about 7.2 to 5.3 ms. Those waits do not shrink with the batch, the work
 * does: at a 4 ms aim (0.4) the worst of ~450 steps took 7.5 to 8.8 ms in six runs by hand, at
 * 2 ms 4.6 to 8.3 ms in five of six (12 ms once, the sleep), and the p99 step halved from about
 * 7 to 3.5 ms. The sweep takes twice as long (22 s for 100,000 expired at 1M bindings).
 */
const TARGET_SHARE = 0.2;
export const FIRST_BATCH = 16;
export const MAX_BATCH = 1000;

/**
 * The next batch size after a full batch of `batch` rows took `elapsedMs`: enough rows for
 * TARGET_SHARE of the budget at the cost per row just seen, at most double the last batch (the
 * cost per row was measured on a smaller one), at least 1.
 */
export function nextBatchSize(batch: number, elapsedMs: number, budgetMs = SWEEP_BUDGET_MS): number {
  const perRowMs = Math.max(elapsedMs, 0.001) / Math.max(batch, 1);
  const fitting = Math.floor((budgetMs * TARGET_SHARE) / perRowMs);
  return Math.max(1, Math.min(fitting, batch * 2, MAX_BATCH));
}

export interface SweepStep { removed: number; emptiedAors: number; ms: number; batch: number; done: boolean }

export class ExpirySweeper {
  private batch = FIRST_BATCH;

  constructor(
    private readonly store: Pick<BindingStore, 'purgeExpiredBatch'>,
    private readonly clock: () => number = () => performance.now(),
    private readonly budgetMs = SWEEP_BUDGET_MS,
  ) {}

  /** Rows the next step will try to delete. */
  get batchSize(): number { return this.batch; }

  /** One transaction: deletes up to the current batch of bindings expired at `now`. */
  async step(now: number): Promise<SweepStep> {
    const batch = this.batch;
    const started = this.clock();
    const { removed, emptiedAors } = await this.store.purgeExpiredBatch(now, batch);
    const ms = this.clock() - started;
    const done = removed < batch;
    // A short batch ran out of rows, so it only ever shrinks the next one (when it was slow).
    if (!done) this.batch = nextBatchSize(batch, ms, this.budgetMs);
    else if (ms > this.budgetMs * TARGET_SHARE) this.batch = nextBatchSize(Math.max(removed, 1), ms, this.budgetMs);
    return { removed, emptiedAors, ms, batch, done };
  }
}

/** Pause between two steps of one sweep: SIP and the checkpoint thread get the time in between. */
export const SWEEP_PAUSE_MS = 20;

/**
 * Step until nothing expired is left (or `stopped()`), pausing between steps. Resolves with the
 * number of bindings removed; a failing step rejects.
 */
export async function sweepExpired(
  sweeper: ExpirySweeper,
  opts: { now: () => number; onStep?: (step: SweepStep) => void; stopped?: () => boolean; pauseMs?: number },
): Promise<number> {
  let removed = 0;
  for (;;) {
    if (opts.stopped?.()) return removed;
    const step = await sweeper.step(opts.now());
    removed += step.removed;
    opts.onStep?.(step);
    if (step.done) return removed;
    await new Promise((resolve) => setTimeout(resolve, opts.pauseMs ?? SWEEP_PAUSE_MS));
  }
}
