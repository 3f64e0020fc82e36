// Qualify (MIDREG_QUALIFY_INTERVAL_SEC): an OPTIONS ping to every live binding once per interval,
// sent the way a MESSAGE reaches the phone (branchFor: the address its REGISTER came from, or its
// Path), paced by lib/reachability/qualify-pacing.ts. Each answer goes into the ReachabilityTable;
// the replica is never touched.
import { randomUUID } from 'node:crypto';
import type { Logger } from '../ops/logger.js';
import type { Binding } from '../registrar/registration.js';
import { branchFor } from '../messaging/routing.js';
import { askUpstream, type RequestSender } from '../sip/upstream.js';
import type { BindingStore } from '../store/store.js';
import { MAX_QUALIFY_IN_FLIGHT, nextRoundDelay, pingsThisTick, planRound, type RoundPlan } from './qualify-pacing.js';
import { pingVerdict, type ReachabilityTable } from './reachability.js';

export type PingResult = 'answered' | 'timeout' | 'failed';

export interface QualifierDeps {
  sender: RequestSender;
  store: Pick<BindingStore, 'listLiveAfter' | 'counts'>;
  table: ReachabilityTable;
  intervalMs: number;
  timeoutMs: number;
  /** Host (and port) for the From of the pings: midreg's own SIP address; undefined until known. */
  selfHost(): string | undefined;
  /** Only ping while drachtio-server is connected. */
  ready(): boolean;
  logger: Logger;
  /** Several nodes on one store: ping only the bindings this node holds (or whose node is gone). */
  handles?: (binding: Binding) => boolean;
  onSent?(): void;
  onPing?(result: PingResult): void;
  maxInFlight?: number;
  clock?: () => number;
}

export class Qualifier {
  private timer: NodeJS.Timeout | undefined;
  private stopped = true;
  private inFlight = 0;
  private cursor: { aor: string; contact: string } | undefined;
  private plan: RoundPlan = { tickMs: 1000, perTick: 1 };
  private roundStartedAt = 0;
  private readonly clock: () => number;

  constructor(private readonly deps: QualifierDeps) {
    this.clock = deps.clock ?? Date.now;
  }

  get active(): number {
    return this.inFlight;
  }

  start(): void {
    if (!this.stopped) return;
    this.stopped = false;
    void this.startRound();
  }

  stop(): void {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
  }

  private schedule(ms: number, step: () => Promise<void>): void {
    if (this.stopped) return;
    this.timer = setTimeout(() => { void step(); }, ms);
    this.timer.unref();
  }

  private async startRound(): Promise<void> {
    const now = this.clock();
    this.roundStartedAt = now;
    this.cursor = undefined;
    let live: number;
    try {
      live = (await this.deps.store.counts(now)).bindings;
    } catch (err) {
      this.deps.logger.warn('qualify: cannot count bindings; retrying next interval', { error: err instanceof Error ? err.message : String(err) });
      this.schedule(this.deps.intervalMs, () => this.startRound());
      return;
    }
    this.plan = planRound(live, this.deps.intervalMs);
    await this.tick();
  }

  /** One batch of pings; the round ends when the walk over the live bindings runs out. */
  private async tick(): Promise<void> {
    if (this.stopped) return;
    const now = this.clock();
    let page: Binding[] = [];
    let want = 0;
    if (this.deps.ready()) {
      want = pingsThisTick(this.plan, this.inFlight, this.deps.maxInFlight ?? MAX_QUALIFY_IN_FLIGHT);
      if (want > 0) {
        try {
          page = await this.deps.store.listLiveAfter(now, { limit: want, ...(this.cursor ? { after: this.cursor } : {}) });
        } catch (err) {
          this.deps.logger.warn('qualify: cannot read bindings; retrying next tick', { error: err instanceof Error ? err.message : String(err) });
          this.schedule(this.plan.tickMs, () => this.tick());
          return;
        }
      }
    }
    if (this.stopped) return;
    for (const b of page) if (this.deps.handles?.(b) ?? true) this.ping(b);
    const last = page[page.length - 1];
    if (last) this.cursor = { aor: last.aor, contact: last.contact };
    if (want > 0 && page.length < want) {
      // Every live binding had its ping this round: forget flows that are gone, wait for the next.
      this.deps.table.sweep();
      this.schedule(nextRoundDelay(this.roundStartedAt, this.clock(), this.deps.intervalMs), () => this.startRound());
      return;
    }
    this.schedule(this.plan.tickMs, () => this.tick());
  }

  private ping(b: Binding): void {
    const branch = branchFor(b, 0);
    if (branch.kind !== 'send') return;
    this.deps.table.touch(b);
    const host = this.deps.selfHost() ?? 'midreg.invalid';
    const headers: Record<string, string> = {
      from: `<sip:midreg@${host}>;tag=${randomUUID().slice(0, 8)}`,
      to: `<${b.contact}>`,
      'call-id': `${randomUUID()}@midreg-qualify`,
      cseq: '1 OPTIONS',
      'max-forwards': '70',
      accept: 'application/sdp, text/plain',
      ...(branch.route ? { route: branch.route } : {}),
    };
    this.inFlight += 1;
    this.deps.onSent?.();
    void askUpstream(this.deps.sender, {
      method: 'OPTIONS', uri: branch.requestUri, headers, ...(branch.nextHop ? { nextHop: branch.nextHop } : {}),
    }, this.deps.timeoutMs, this.clock).then((outcome) => {
      this.inFlight -= 1;
      const verdict = pingVerdict(outcome);
      const before = this.deps.table.of(b).state;
      const after = this.deps.table.record(b, verdict, this.clock());
      this.deps.onPing?.(verdict.kind === 'reachable' ? 'answered' : verdict.why === 'timeout' ? 'timeout' : 'failed');
      this.deps.logger.debug('qualify ping', {
        event: 'qualify', aor: b.aor, contact: b.contact, outcome: outcome.kind, state: after.state, ms: outcome.elapsedMs,
        ...(outcome.kind === 'reply' ? { status: outcome.reply.status, ...(outcome.reply.local ? { local: true } : {}) } : {}),
      });
      if (before !== after.state) {
        const detail = {
          event: 'qualify', aor: b.aor, contact: b.contact, to: branch.nextHop ?? branch.route ?? branch.requestUri, from: before, state: after.state,
          ...(after.state === 'reachable' ? { rttMs: after.rttMs } : {}),
          ...(outcome.kind === 'reply' ? { status: outcome.reply.status } : {}),
          ...(verdict.kind === 'unreachable' ? { why: verdict.why } : {}),
        };
        if (after.state === 'unreachable') this.deps.logger.warn('binding unreachable', detail);
        else this.deps.logger.info('binding reachable', detail);
      }
    });
  }
}
