// Delivers stored offline messages once their recipient is registered again: in arrival order,
// one at a time per recipient, each removed only after the recipient's 2xx. A failed attempt is
// retried with backoff (offline-policy.ts) until the message's time to live ends; expired
// messages are dropped and logged, never delivered.
import { randomUUID } from 'node:crypto';
import type { Logger } from '../ops/logger.js';
import type { OfflineOutcome } from '../ops/metrics.js';
import type { Binding } from '../registrar/registration.js';
import type { OfflineMessage, OfflineMessageStore } from '../store/store.js';
import { askUpstream, outboundBytes, type RequestSender } from '../sip/upstream.js';
import { forkOverFlows, isSend } from './message-router.js';
import { retryDelayMs } from './offline-policy.js';
import { branchFor, flowChains } from './routing.js';

export interface OfflineCourierDeps {
  sender: RequestSender;
  store: Pick<OfflineMessageStore, 'nextOf' | 'delivered' | 'postpone' | 'recipientsDue' | 'takeExpired' | 'recipients'>;
  bindings: { liveBindings(aor: string, now: number): Promise<Binding[]> };
  timeoutMs: number;
  logger: Logger;
  /**
   * Several nodes on one store: whether this node delivers to a binding (it holds its flow, or
   * the holder is gone). A recipient whose best binding another live node holds is left to that node.
   */
  handles?: (binding: Binding) => boolean;
  onOutcome?(outcome: OfflineOutcome): void;
  clock?: () => number;
}

/** How many expired messages one tick drops, so a large backlog never blocks the event loop. */
const EXPIRE_BATCH = 500;
/**
 * Recipients delivered to at once. Without a bound, 1,000 users coming back at once meant 1,000
 * delivery chains at once: drachtio-server's SIP socket overflowed and REGISTERs paid for it
 * (bench/results/2026-12-05T01-31-26Z.md). The others wait their turn, in arrival order.
 */
export const MAX_CONCURRENT_RECIPIENTS = 16;

export class OfflineCourier {
  /** Recipients with messages waiting: lets a REGISTER of everyone else skip the store. */
  private readonly waiting = new Set<string>();
  /** Recipients being delivered to right now (one delivery at a time each). */
  private readonly busy = new Set<string>();
  /** Recipients waiting for a delivery slot, with whether they just registered. */
  private readonly queued = new Map<string, boolean>();
  private readonly clock: () => number;

  constructor(private readonly deps: OfflineCourierDeps) {
    this.clock = deps.clock ?? Date.now;
  }

  /** Learn who has messages waiting (after a restart); before the first tick. */
  async load(): Promise<void> {
    for (const recipient of await this.deps.store.recipients()) this.waiting.add(recipient);
  }

  /** A message was stored for `aor`. */
  stored(aor: string): void {
    this.waiting.add(aor);
  }

  /** A registrar's 2xx put live bindings for `aor` into the replica: deliver what waits, now. */
  registered(aor: string): void {
    // After this turn, so the phone has its 200 to the REGISTER before the first message.
    if (this.waiting.has(aor)) setImmediate(() => { void this.deliver(aor, true); });
  }

  /** Drop expired messages, then retry recipients whose next attempt is due. */
  async tick(): Promise<void> {
    try {
      await this.tickOnce();
    } catch (err) {
      this.deps.logger.error('offline tick failed; tried again on the next one', { event: 'offline', error: err instanceof Error ? err.message : String(err) });
    }
  }

  private async tickOnce(): Promise<void> {
    const now = this.clock();
    for (const message of await this.deps.store.takeExpired(now, EXPIRE_BATCH)) {
      this.deps.logger.info('offline message expired undelivered', {
        event: 'offline', outcome: 'expired', id: message.id, to: message.recipient, from: message.sender, attempts: message.attempts, storedAt: new Date(message.receivedAt).toISOString(),
      });
      this.deps.onOutcome?.('expired');
    }
    for (const recipient of await this.deps.store.recipientsDue(now)) {
      this.waiting.add(recipient);
      void this.deliver(recipient, false);
    }
  }

  /** Deliveries in flight (for a clean stop); queued recipients are picked up after a restart. */
  get active(): number {
    return this.busy.size;
  }

  private async deliver(aor: string, registeredNow: boolean): Promise<void> {
    if (this.busy.has(aor)) return;
    if (this.busy.size >= MAX_CONCURRENT_RECIPIENTS) {
      this.queued.set(aor, (this.queued.get(aor) ?? false) || registeredNow);
      return;
    }
    this.busy.add(aor);
    try {
      for (;;) {
        const now = this.clock();
        const message = await this.deps.store.nextOf(aor, now);
        if (!message) { this.waiting.delete(aor); return; }
        // A fresh registration is the moment to try again; otherwise respect the backoff.
        if (!registeredNow && message.nextAttemptAt > now) return;
        const live = await this.deps.bindings.liveBindings(aor, now);
        const handles = this.deps.handles;
        if (live[0] && handles && !handles(live[0])) return;
        const bindings = handles ? live.filter(handles) : live;
        if (bindings.length === 0) return;
        const status = await this.send(message, bindings);
        if (status >= 200 && status < 300) {
          await this.deps.store.delivered(message);
          this.deps.logger.info('offline message delivered', { event: 'offline', outcome: 'delivered', id: message.id, to: aor, from: message.sender, status, attempts: message.attempts + 1 });
          this.deps.onOutcome?.('delivered');
          continue;
        }
        const retryAt = this.clock() + retryDelayMs(message.attempts);
        await this.deps.store.postpone(message, retryAt);
        this.deps.logger.info('offline message not delivered; will retry', { event: 'offline', outcome: 'retry', id: message.id, to: aor, status, retryAt: new Date(retryAt).toISOString() });
        this.deps.onOutcome?.('retry');
        return;
      }
    } catch (err) {
      this.deps.logger.error('offline delivery failed', { event: 'offline', to: aor, error: err instanceof Error ? err.message : String(err) });
    } finally {
      this.busy.delete(aor);
      const next = this.queued.entries().next();
      if (!next.done) {
        const [waiting, registered] = next.value;
        this.queued.delete(waiting);
        void this.deliver(waiting, registered);
      }
    }
  }

  /**
   * The stored MESSAGE, to every live device in parallel, each device's flows one after another
   * (RFC 5626 §7, as a live MESSAGE: message-router.ts `forkOverFlows`); the first 2xx wins.
   */
  private async send(message: OfflineMessage, bindings: Binding[]): Promise<number> {
    // A new transaction of midreg's, carrying the original From, To, Date and body.
    const headers: Record<string, string> = {
      from: message.fromHeader,
      to: message.toHeader,
      'call-id': `${randomUUID()}@midreg-offline`,
      cseq: '1 MESSAGE',
      date: message.date,
      'max-forwards': '70',
      'content-type': message.contentType,
    };
    const size = outboundBytes({ method: 'MESSAGE', uri: bindings[0]?.contact ?? '', headers, body: message.body });
    const targets = flowChains(bindings)
      .map((chain) => chain.flows.map((b) => branchFor(b, size)).filter(isSend))
      .filter((flows) => flows.length > 0);
    if (targets.length === 0) return 513;
    const answer = await forkOverFlows(targets, (branch) => askUpstream(this.deps.sender, {
      method: 'MESSAGE', uri: branch.requestUri, headers: branch.route ? { ...headers, route: branch.route } : headers, body: message.body,
      ...(branch.nextHop ? { nextHop: branch.nextHop } : {}),
    }, this.deps.timeoutMs, this.clock));
    return answer.status;
  }
}
