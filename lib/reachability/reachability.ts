// Registered is not reachable: what midreg learnt by qualifying a binding (an OPTIONS ping over
// the flow a MESSAGE would take), and which bindings a request is forked to given that. Pure
// decisions and an in-memory table; no I/O. The state is separate from the replica: it never
// deletes a binding (the replica changes only on a registrar's 2xx) and is not persisted; after a
// restart every binding is `unknown` until the next qualify round.
import type { Binding } from '../registrar/registration.js';
import type { UpstreamOutcome } from '../sip/upstream.js';

export const REACHABILITY_STATES = ['unknown', 'reachable', 'unreachable'] as const;
export type ReachabilityName = (typeof REACHABILITY_STATES)[number];

export type Reachability =
  | { state: 'unknown' }
  /** Answered the last ping; `rttMs` its round trip, `checkedAt` when (Unix ms). */
  | { state: 'reachable'; rttMs: number; checkedAt: number }
  /**
   * Silent (or its flow failed) since `since`, still so at `checkedAt`. `closed`: the TCP, TLS or
   * WebSocket connection it registered over is gone (lib/reachability/connection-watch.ts).
   */
  | { state: 'unreachable'; since: number; checkedAt: number; why: UnreachableWhy };

export type UnreachableWhy = 'timeout' | 'transport' | 'closed';

const UNKNOWN: Reachability = { state: 'unknown' };

/**
 * One binding's flow: the AoR, its contact, and where its REGISTER came from. A binding that
 * registers again from another address is a new flow, `unknown` until it is pinged there.
 */
export function flowKey(b: Pick<Binding, 'aor' | 'contact' | 'source'>): string {
  const s = b.source;
  return `${b.aor}\n${b.contact}\n${s ? `${s.transport}:${s.address}:${s.port}` : '-'}`;
}

/** What one ping's outcome says about the binding. */
export type PingVerdict = { kind: 'reachable'; rttMs: number } | { kind: 'unreachable'; why: UnreachableWhy };

/**
 * Any final response from the phone proves it is there: RFC 3261 §11.2 has a UA answer OPTIONS
 * "as if the OPTIONS were an INVITE", and a 404, 405 or 481 is still an answer from its SIP stack.
 * Silence is not (the ping timed out), nor is a transport failure. drachtio-server (sofia-sip)
 * reports a failure of its own flow as a response it makes itself (503 for ICMP port unreachable
 * or a refused connection, 408 for its timer F), To tag included, so such a response is told apart
 * by where it came from (`local`: not received from the network), not by its content. The one
 * answer that is not the phone's is 430 (Flow Failed): an edge proxy in front of the phone saying
 * that this flow is gone (RFC 5626 §5.3.1, §11), so the binding is not reachable over it.
 */
export function pingVerdict(outcome: UpstreamOutcome): PingVerdict {
  switch (outcome.kind) {
    case 'reply':
      if (outcome.reply.local === true) return { kind: 'unreachable', why: outcome.reply.status === 408 ? 'timeout' : 'transport' };
      if (outcome.reply.status === 430) return { kind: 'unreachable', why: 'transport' };
      return { kind: 'reachable', rttMs: outcome.elapsedMs };
    case 'timeout':
      return { kind: 'unreachable', why: 'timeout' };
    default:
      return { kind: 'unreachable', why: 'transport' };
  }
}

/**
 * Reachability of every qualified flow, in memory. Entries of flows no longer live are dropped
 * at the end of each qualify round (`sweep`), so the table never outgrows the replica.
 */
export class ReachabilityTable {
  private readonly entries = new Map<string, { value: Reachability; round: number }>();
  private round = 0;

  of(b: Pick<Binding, 'aor' | 'contact' | 'source'>): Reachability {
    return this.entries.get(flowKey(b))?.value ?? UNKNOWN;
  }

  record(b: Pick<Binding, 'aor' | 'contact' | 'source'>, verdict: PingVerdict, now: number): Reachability {
    const key = flowKey(b);
    const before = this.entries.get(key)?.value;
    const next: Reachability = verdict.kind === 'reachable'
      ? { state: 'reachable', rttMs: verdict.rttMs, checkedAt: now }
      // Unreachable since the first failed ping after it was last heard from.
      : { state: 'unreachable', since: before?.state === 'unreachable' ? before.since : now, checkedAt: now, why: verdict.why };
    this.entries.set(key, { value: next, round: this.round });
    return next;
  }

  /** A flow that no longer exists (its binding went away): nothing to remember about it. */
  forget(b: Pick<Binding, 'aor' | 'contact' | 'source'>): void {
    this.entries.delete(flowKey(b));
  }

  /** A binding seen live in the current round (kept by the next sweep even if its ping is still out). */
  touch(b: Pick<Binding, 'aor' | 'contact' | 'source'>): void {
    const found = this.entries.get(flowKey(b));
    if (found) found.round = this.round;
  }

  /** End of a round: forget flows not seen in it (de-registered, expired, moved), start the next. */
  sweep(): number {
    let dropped = 0;
    for (const [key, entry] of this.entries) {
      if (entry.round !== this.round) { this.entries.delete(key); dropped += 1; }
    }
    this.round += 1;
    return dropped;
  }

  /** Flows known reachable and unreachable (every other live binding is `unknown`). */
  counts(): { reachable: number; unreachable: number } {
    let reachable = 0;
    let unreachable = 0;
    for (const entry of this.entries.values()) {
      if (entry.value.state === 'reachable') reachable += 1;
      else if (entry.value.state === 'unreachable') unreachable += 1;
    }
    return { reachable, unreachable };
  }

  get size(): number {
    return this.entries.size;
  }
}

export type ReachableChoice =
  | { kind: 'send'; bindings: Binding[]; skipped: Binding[] }
  | { kind: 'all-unreachable'; skipped: Binding[] };

/**
 * Which of a target's bindings a request goes to. Bindings known unreachable are skipped while
 * another one is reachable or not yet known (a ping may simply not have reached it yet); when
 * every binding is known unreachable there is nowhere to send it. Order is kept, so the caller's
 * preference (q, newest) still holds among the rest.
 */
export function chooseReachable(bindings: readonly Binding[], stateOf: (b: Binding) => Reachability): ReachableChoice {
  const send: Binding[] = [];
  const skipped: Binding[] = [];
  for (const b of bindings) (stateOf(b).state === 'unreachable' ? skipped : send).push(b);
  if (send.length === 0 && skipped.length > 0) return { kind: 'all-unreachable', skipped };
  return { kind: 'send', bindings: send, skipped };
}

/**
 * The answer when every binding is known unreachable. RFC 3261 §21.4.18, 480 Temporarily
 * Unavailable: "may also be returned by a redirect or proxy server that recognizes the user
 * identified by the Request-URI, but does not currently have a valid forwarding location for
 * that user"; "The reason phrase SHOULD indicate a more precise cause".
 */
export const ALL_UNREACHABLE = { status: 480, reason: 'Temporarily Unavailable (no reachable device)' } as const;
