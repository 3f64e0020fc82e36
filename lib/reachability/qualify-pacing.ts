// How qualify pings are spread over the interval, so 100,000 bindings are never pinged at once:
// one round per interval walks the live bindings in (AoR, contact) order, a few per tick, ticks
// spaced so the round takes about the whole interval, with a bound on pings in flight. Pure.

/** Shortest and longest pause between two batches of pings. */
export const MIN_TICK_MS = 20;
export const MAX_TICK_MS = 1000;
/** Pings waiting for an answer at once, at most (a silent phone holds its slot for the timeout). */
export const MAX_QUALIFY_IN_FLIGHT = 1000;

export interface RoundPlan {
  /** Pause between batches. */
  tickMs: number;
  /** Pings per batch. */
  perTick: number;
}

/**
 * The pace of one round over `liveCount` bindings: as many ticks as fit the interval (one per
 * binding when there are few), and the batch that makes `liveCount` in `intervalMs`. Each binding
 * is then pinged once per interval, evenly: 2 bindings at 1 s are pinged 500 ms apart, 100,000 at
 * 60 s about 34 every 20 ms.
 */
export function planRound(liveCount: number, intervalMs: number): RoundPlan {
  const count = Math.max(1, liveCount);
  const tickMs = Math.min(MAX_TICK_MS, Math.max(MIN_TICK_MS, Math.floor(intervalMs / count)));
  const perTick = Math.max(1, Math.ceil((count * tickMs) / intervalMs));
  return { tickMs, perTick };
}

/** How many pings this tick may send: the round's batch, less what the in-flight bound leaves no room for. */
export function pingsThisTick(plan: RoundPlan, inFlight: number, maxInFlight = MAX_QUALIFY_IN_FLIGHT): number {
  return Math.max(0, Math.min(plan.perTick, maxInFlight - inFlight));
}

/**
 * When the next round starts: one interval after this one started, or at once (after one tick)
 * when this round took longer than the interval (more bindings than planned, or the in-flight
 * bound held it back).
 */
export function nextRoundDelay(roundStartedAt: number, now: number, intervalMs: number): number {
  return Math.max(MIN_TICK_MS, roundStartedAt + intervalMs - now);
}
