import { strict as assert } from 'node:assert';
import { describe, it } from 'node:test';
import { ExpirySweeper, FIRST_BATCH, MAX_BATCH, nextBatchSize, SWEEP_BUDGET_MS } from '../../lib/store/expiry-sweep.js';

/** A replica with `expired` rows to reclaim, where each row costs `msPerRow()` of simulated time. */
function fakeStore(expired: number, msPerRow: () => number) {
  let now = 0;
  let left = expired;
  const store = {
    purgeExpiredBatch(_at: number, limit: number) {
      const removed = Math.min(limit, left);
      left -= removed;
      for (let row = 0; row < removed; row++) now += msPerRow();
      now += 0.05;
      return Promise.resolve({ removed, emptiedAors: removed });
    },
  };
  return { store, clock: () => now, left: () => left };
}

describe('expiry sweep (batches sized by time, not by row count)', () => {
  it('grows at most twofold per step while rows are cheap, up to its ceiling', () => {
    assert.equal(nextBatchSize(16, 0.1), 32);
    assert.equal(nextBatchSize(MAX_BATCH, 0.1), MAX_BATCH);
  });

  it('shrinks after a slow step so the next one fits well inside the budget', () => {
    // 16 rows in 40 ms (a cold cache): 2.5 ms per row, so one row more would already break 10 ms.
    assert.equal(nextBatchSize(16, 40), 1);
    const next = nextBatchSize(100, 20);
    // A step's time on the clock also holds waits for a CPU that do not shrink with the batch
    // (2 to 5.5 ms in the worst steps on the bench), so the work itself aims at a fifth of the budget.
    assert.ok(next * (20 / 100) <= SWEEP_BUDGET_MS / 5, `next batch ${next} leaves room under the budget at the last cost per row`);
  });

  it('keeps every step under the budget when the first rows are cold and the rest warm', async () => {
    let rows = 0;
    // The first 40 rows cost 0.5 ms each (pages read from disk), then 0.02 ms.
    const { store, clock, left } = fakeStore(5000, () => (rows++ < 40 ? 0.5 : 0.02));
    const sweeper = new ExpirySweeper(store, clock);
    assert.equal(sweeper.batchSize, FIRST_BATCH);
    const steps = [];
    for (let done = false; !done;) {
      const step = await sweeper.step(0);
      steps.push(step);
      done = step.done;
    }
    assert.equal(left(), 0, 'every expired row was reclaimed');
    const worst = Math.max(...steps.map((s) => s.ms));
    assert.ok(worst <= SWEEP_BUDGET_MS, `worst step ${worst.toFixed(1)} ms`);
    // At 0.02 ms a row the batch settles near 100 rows (2 ms): 5000 rows take a few dozen steps, not 300 of 16.
    assert.ok(steps.length < 80, `${steps.length} steps: batches grew once rows were cheap`);
    assert.ok(Math.max(...steps.map((s) => s.batch)) >= 90);
    assert.ok(steps.at(-1)!.removed < steps.at(-1)!.batch, 'the last step is the one that found fewer rows than asked');
  });

  it('stops on the first step when nothing has expired', async () => {
    const { store, clock } = fakeStore(0, () => 0.01);
    const step = await new ExpirySweeper(store, clock).step(0);
    assert.deepEqual({ removed: step.removed, done: step.done }, { removed: 0, done: true });
  });
});
