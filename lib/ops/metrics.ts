// What midreg counts, for Prometheus (/metrics) and for `midreg stats`. A Registry of its own, not
// prom-client's global one, so two instances (tests, or an embedding app) never share counters.
import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from 'prom-client';
import { DEREGISTRATION_RESULTS, type DeregistrationResult } from '../registrar/upstream-deregistration.js';

export const MESSAGE_OUTCOMES = ['delivered', 'not_found', 'forbidden', 'too_large', 'failed', 'relayed', 'stored', 'offline_refused', 'unreachable'] as const;
/** What became of stored offline messages. */
export const OFFLINE_OUTCOMES = ['delivered', 'retry', 'expired', 'purged'] as const;
export type OfflineOutcome = (typeof OFFLINE_OUTCOMES)[number];
export type MessageOutcome = (typeof MESSAGE_OUTCOMES)[number];
/** How a qualify ping ended: any answer from the phone, silence until the timeout, or a transport failure. */
export const QUALIFY_RESULTS = ['answered', 'timeout', 'failed'] as const;
export type QualifyResult = (typeof QUALIFY_RESULTS)[number];
/** Reachability states as lib/reachability/reachability.ts names them. */
const REACHABILITY = ['unknown', 'reachable', 'unreachable'] as const;

/** Final status classes a UA can be answered with. */
export const STATUS_CLASSES = ['2xx', '3xx', '4xx', '5xx', '6xx'] as const;

export interface MetricsSnapshot {
  /** Unix ms. */
  startedAt: number;
  /** REGISTERs answered, by status class of the answer the UA got. */
  register: Record<string, number>;
  message: Record<MessageOutcome, number>;
  replicaWriteFailures: number;
  /** Contact mode: REGISTERs midreg answered itself (never sent to the registrar). */
  registerAbsorbed: number;
  drachtioConnected: boolean;
}

export interface MetricsOptions {
  /** Bindings and AoRs in the replica (the writers' counters); called once per scrape. */
  registrations: () => { bindings: number; aors: number };
  /** Offline messages waiting and their body bytes; called once per scrape. */
  offline?: () => Promise<{ messages: number; bytes: number }>;
  /** Contact mode: bindings waiting for midreg to de-register them upstream; called once per scrape. */
  pendingDeregistrations?: () => Promise<number>;
  /** Bindings qualify knows reachable and unreachable (the other live ones are unknown); called once per scrape. */
  reachability?: () => { reachable: number; unreachable: number };
  now?: () => number;
}

function statusClass(status: number): string {
  return status >= 100 && status <= 699 ? `${Math.floor(status / 100)}xx` : 'other';
}

/** Set gauges from a read that may fail: NaN says "unknown" where a stale number would mislead. */
function setGauges(read: () => number[], gauges: Gauge[]): void {
  let values: number[];
  try {
    values = read();
  } catch {
    values = [];
  }
  gauges.forEach((gauge, i) => gauge.set(values[i] ?? Number.NaN));
}

/** setGauges for a store that answers asynchronously (a failing one sets NaN, never fails the scrape). */
async function setGaugesFrom(read: () => Promise<number[]>, gauges: Gauge[]): Promise<void> {
  let values: number[];
  try {
    values = await read();
  } catch {
    values = [];
  }
  gauges.forEach((gauge, i) => gauge.set(values[i] ?? Number.NaN));
}

export class Metrics {
  readonly registry = new Registry();
  private readonly startedAt: number;
  private readonly registerTotal: Counter<'class'>;
  private readonly upstreamSeconds: Histogram;
  private readonly messageTotal: Counter<'outcome'>;
  private readonly replicaFailures: Counter;
  private readonly bindingsGauge: Gauge;
  private readonly aorsGauge: Gauge;
  private readonly drachtioGauge: Gauge;
  private readonly offlineGauge: Gauge;
  private readonly offlineBytesGauge: Gauge;
  private readonly offlineTotal: Counter<'outcome'>;
  private readonly absorbedTotal: Counter;
  private readonly deregistrationTotal: Counter<'result'>;
  private readonly pendingDeregistrationsGauge: Gauge;
  private readonly reachabilityGauge: Gauge<'state'>;
  private readonly qualifySent: Counter;
  private readonly connectionsClosed: Counter;
  private readonly qualifyTotal: Counter<'result'>;
  // Plain tallies beside the prom-client ones: prom-client's reads are async and shaped for
  // exposition, `stats` wants numbers.
  private readonly tally: { register: Record<string, number>; message: Record<MessageOutcome, number>; replicaWriteFailures: number; absorbed: number; drachtio: boolean };

  constructor(private readonly opts: MetricsOptions) {
    this.startedAt = (opts.now ?? Date.now)();
    const registers = [this.registry];
    this.registerTotal = new Counter({
      name: 'midreg_register_relayed_total',
      help: 'REGISTERs answered, by status class of the answer the UA got (the registrar\'s, or midreg\'s own 400/403/408/483/503/513)',
      labelNames: ['class'] as const,
      registers,
    });
    this.upstreamSeconds = new Histogram({
      name: 'midreg_upstream_reply_seconds',
      help: 'Time from relaying a REGISTER to the registrar\'s final answer (or to giving up on it)',
      // Up to the longest configurable upstream timeout (32 s).
      buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32],
      registers,
    });
    this.messageTotal = new Counter({ name: 'midreg_message_total', help: 'MESSAGE requests handled, by outcome', labelNames: ['outcome'] as const, registers });
    this.replicaFailures = new Counter({ name: 'midreg_replica_write_failures_total', help: 'Registrar 2xx replies that could not be written to the replica', registers });
    this.bindingsGauge = new Gauge({ name: 'midreg_bindings', help: 'Bindings in the replica (an expired one counts until the next expiry sweep)', registers });
    this.aorsGauge = new Gauge({ name: 'midreg_aors', help: 'AoRs with at least one binding in the replica (likewise)', registers });
    this.drachtioGauge = new Gauge({ name: 'midreg_drachtio_connected', help: '1 while connected to drachtio-server, else 0', registers });
    this.offlineGauge = new Gauge({ name: 'midreg_offline_messages', help: 'Offline messages waiting for their recipient to register', registers });
    this.offlineBytesGauge = new Gauge({ name: 'midreg_offline_bytes', help: 'Body bytes of the offline messages waiting', registers });
    this.offlineTotal = new Counter({ name: 'midreg_offline_total', help: 'Offline messages delivered, retried after a failed attempt, expired unsent, or purged by an operator', labelNames: ['outcome'] as const, registers });
    this.absorbedTotal = new Counter({ name: 'midreg_register_absorbed_total', help: 'REGISTER refreshes answered 200 by midreg itself in contact mode, never sent to the registrar (not counted in midreg_register_relayed_total)', registers });
    this.deregistrationTotal = new Counter({ name: 'midreg_upstream_deregistrations_total', help: 'Contact mode: de-registrations midreg sent the registrar for phones that stopped refreshing, by result', labelNames: ['result'] as const, registers });
    this.pendingDeregistrationsGauge = new Gauge({ name: 'midreg_upstream_deregistrations_pending', help: 'Contact mode: bindings expired for their phone, still registered upstream, not yet de-registered there', registers });
    this.reachabilityGauge = new Gauge({ name: 'midreg_bindings_reachability', help: 'Bindings by what qualify knows of them: unknown (not pinged yet, or qualify off), reachable, unreachable', labelNames: ['state'] as const, registers });
    this.qualifySent = new Counter({ name: 'midreg_qualify_sent_total', help: 'Qualify OPTIONS pings sent', registers });
    this.qualifyTotal = new Counter({ name: 'midreg_qualify_pings_total', help: 'Qualify OPTIONS pings ended: answered (any final response), timeout, failed (transport)', labelNames: ['result'] as const, registers });
    this.connectionsClosed = new Counter({ name: 'midreg_connections_closed_total', help: 'Bindings marked unreachable because the TCP/TLS/WebSocket connection they registered over closed (MIDREG_CONNECTION_WATCH_MS)', registers });
    collectDefaultMetrics({ register: this.registry });

    // Zero series exist from the start, so rate() and absent-series alerts work before the first event.
    for (const c of STATUS_CLASSES) this.registerTotal.inc({ class: c }, 0);
    for (const o of MESSAGE_OUTCOMES) this.messageTotal.inc({ outcome: o }, 0);
    for (const o of OFFLINE_OUTCOMES) this.offlineTotal.inc({ outcome: o }, 0);
    for (const r of QUALIFY_RESULTS) this.qualifyTotal.inc({ result: r }, 0);
    this.qualifySent.inc(0);
    this.connectionsClosed.inc(0);
    this.replicaFailures.inc(0);
    this.absorbedTotal.inc(0);
    for (const r of DEREGISTRATION_RESULTS) this.deregistrationTotal.inc({ result: r }, 0);
    this.drachtioGauge.set(0);
    this.tally = {
      register: Object.fromEntries(STATUS_CLASSES.map((c) => [c, 0])),
      message: Object.fromEntries(MESSAGE_OUTCOMES.map((o) => [o, 0])) as Record<MessageOutcome, number>,
      replicaWriteFailures: 0,
      absorbed: 0,
      drachtio: false,
    };
  }

  registerAnswered(status: number, upstreamMs: number | undefined): void {
    const cls = statusClass(status);
    this.registerTotal.inc({ class: cls });
    this.tally.register[cls] = (this.tally.register[cls] ?? 0) + 1;
    if (upstreamMs !== undefined) this.upstreamSeconds.observe(upstreamMs / 1000);
  }

  registerAbsorbed(): void {
    this.absorbedTotal.inc();
    this.tally.absorbed += 1;
  }

  upstreamDeregistration(result: DeregistrationResult): void {
    this.deregistrationTotal.inc({ result });
  }

  messageOutcome(outcome: MessageOutcome): void {
    this.messageTotal.inc({ outcome });
    this.tally.message[outcome] += 1;
  }

  offlineOutcome(outcome: OfflineOutcome, count = 1): void {
    this.offlineTotal.inc({ outcome }, count);
  }

  qualifySentOne(): void {
    this.qualifySent.inc();
  }

  qualifyEnded(result: QualifyResult): void {
    this.qualifyTotal.inc({ result });
  }

  connectionClosed(): void {
    this.connectionsClosed.inc();
  }

  replicaWriteFailed(): void {
    this.replicaFailures.inc();
    this.tally.replicaWriteFailures += 1;
  }

  drachtioConnected(up: boolean): void {
    this.drachtioGauge.set(up ? 1 : 0);
    this.tally.drachtio = up;
  }

  get contentType(): string {
    return this.registry.contentType;
  }

  /** The Prometheus exposition text; the replica is counted now, once for both gauges. */
  async render(): Promise<string> {
    // A locked or broken database must not take the process metrics down with it.
    let stored = Number.NaN;
    setGauges(() => { const { bindings, aors } = this.opts.registrations(); stored = bindings; return [bindings, aors]; }, [this.bindingsGauge, this.aorsGauge]);
    const reach = this.opts.reachability?.() ?? { reachable: 0, unreachable: 0 };
    const known = { reachable: reach.reachable, unreachable: reach.unreachable, unknown: Math.max(0, stored - reach.reachable - reach.unreachable) };
    for (const state of REACHABILITY) this.reachabilityGauge.set({ state }, known[state]);
    const offline = this.opts.offline;
    const pending = this.opts.pendingDeregistrations;
    if (pending) await setGaugesFrom(async () => [await pending()], [this.pendingDeregistrationsGauge]);
    if (offline) await setGaugesFrom(async () => { const { messages, bytes } = await offline(); return [messages, bytes]; }, [this.offlineGauge, this.offlineBytesGauge]);
    return this.registry.metrics();
  }

  snapshot(): MetricsSnapshot {
    return {
      startedAt: this.startedAt,
      register: { ...this.tally.register },
      message: { ...this.tally.message },
      replicaWriteFailures: this.tally.replicaWriteFailures,
      registerAbsorbed: this.tally.absorbed,
      drachtioConnected: this.tally.drachtio,
    };
  }
}
