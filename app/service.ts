// Wires midreg together: store, SIP engine, handlers, housekeeping. No SIP or SQL logic here.
import type { Config } from './config.js';
import { startAdminServer, type AdminServer } from '../lib/ops/admin.js';
import { FloodGuard } from '../lib/ops/flood-guard.js';
import { ExpirySweeper, sweepExpired } from '../lib/store/expiry-sweep.js';
import { SqliteStore } from '../lib/store/sqlite-store.js';
import { RedisStore } from '../lib/store/redis-store.js';
import type { Store } from '../lib/store/store.js';
import { describeTarget } from '../lib/store/store-url.js';
import { handledHere, NodeDirectory } from '../lib/cluster/node-directory.js';
import type { Logger } from '../lib/ops/logger.js';
import { selfAddressFrom } from '../lib/registrar/contact-insertion.js';
import { createMessageHandler } from '../lib/messaging/message-router.js';
import { OfflineCourier } from '../lib/messaging/offline-courier.js';
import { SenderRate } from '../lib/messaging/offline-policy.js';
import { Metrics } from '../lib/ops/metrics.js';
import { createRegisterHandler, type ReplicaCounters } from '../lib/registrar/registration-relay.js';
import { deregisterEmptyAors, deregisterLapsed, deregisterOne } from '../lib/registrar/upstream-deregistration.js';
import type { UpstreamOutcome } from '../lib/sip/upstream.js';
import { ConnectionWatch, isConnectionFlow } from '../lib/reachability/connection-watch.js';
import { createProxyHandler, PROXIED_METHODS } from '../lib/messaging/request-proxy.js';
import { isTrustedPeer } from '../lib/messaging/routing.js';
import { SipEngine, type RequestHandler } from '../lib/sip/drachtio.js';
import { pingVerdict, ReachabilityTable } from '../lib/reachability/reachability.js';
import { Qualifier } from '../lib/reachability/qualifier.js';
import type { Binding } from '../lib/registrar/registration.js';

export interface Midreg {
  readonly engine: SipEngine;
  readonly store: Store;
  readonly metrics: Metrics;
  /** The admin API once listening; undefined when MIDREG_ADMIN_PORT is unset. Rejects when it cannot start. */
  readonly admin: Promise<AdminServer | undefined>;
  /** Resolves the first time drachtio-server accepts the connection. */
  readonly connected: Promise<void>;
  /** Refuse new REGISTER/MESSAGE (503), wait for those in flight (bounded), close the database. */
  stop(): Promise<{ abandoned: number }>;
}

/** `udp/127.0.0.1:5060` (drachtio-server's announcement) → `sip:127.0.0.1:5060;lr`. */
export function pathUriFrom(sipAddresses: string[]): string | undefined {
  const preferred = sipAddresses.find((a) => a.startsWith('udp/')) ?? sipAddresses[0];
  const match = preferred ? /^(\w+)\/(.+)$/.exec(preferred) : null;
  if (!match) return undefined;
  const [, transport, hostport] = match;
  return `sip:${hostport};lr${transport === 'udp' ? '' : `;transport=${transport}`}`;
}

/** The SQLite replica (the one-node default). */
function openSqlite(config: Config, logger: Logger, onAbsorbWriteFailed: () => void): SqliteStore {
  const store = new SqliteStore(config.dbFile, {
    fallbackToReadonly: true,
    cseqRetentionMs: config.upstreamTimeoutMs + 5000,
    onCheckpointStatus: (error) => {
      if (error === undefined) logger.info('database checkpoints work again', { db: config.dbFile });
      else logger.warn('database checkpoint failed; the WAL file grows until it works', { db: config.dbFile, error });
    },
    onAbsorbWriteError: (err) => {
      logger.error('locally answered refreshes not written to the replica; retried in a second', { db: config.dbFile, error: err instanceof Error ? err.message : String(err) });
      onAbsorbWriteFailed();
    },
  });
  for (const name of store.replica.migrationsApplied) logger.info('database migration applied', { migration: name, db: config.dbFile });
  if (store.replica.readOnlyReason !== undefined) {
    logger.error('database cannot be written; running with a read-only replica (REGISTERs are still relayed)', { db: config.dbFile, error: store.replica.readOnlyReason });
  }
  logger.info('replica opened', { db: config.dbFile, schema: store.replica.schemaVersion });
  return store;
}

/** Redis (MIDREG_STORE): connected before SIP starts when it answers; otherwise midreg starts anyway and reconnects. */
async function openRedis(config: Config, logger: Logger): Promise<RedisStore> {
  if (config.store.kind !== 'redis') throw new Error('not a Redis store');
  const at = describeTarget(config.store);
  const store = new RedisStore(config.store, at, {
    cseqRetentionMs: config.upstreamTimeoutMs + 5000,
    onStatus: (reason) => {
      if (reason === undefined) logger.info('redis answering', { store: at });
      else logger.error('redis not answering: REGISTERs still relayed (replica not written), MESSAGEs answered 503', { store: at, error: reason });
    },
  });
  if (!await store.connect()) {
    logger.error('redis not answering at start: REGISTERs are relayed, MESSAGEs answered 503 until it does', { store: at, error: store.unavailableReason });
  }
  return store;
}

export async function startMidreg(config: Config, logger: Logger): Promise<Midreg> {
  // Counted once the metrics exist (the store opens first).
  let absorbWriteFailed = (): void => undefined;
  const redis = config.store.kind === 'redis' ? await openRedis(config, logger) : undefined;
  const store: Store = redis ?? openSqlite(config, logger, () => absorbWriteFailed());
  const bindings = store.bindings;
  const counters: ReplicaCounters = await bindings.countStored().catch((err: unknown) => {
    logger.error('cannot count stored bindings; counters start at 0', { store: store.describe, error: err instanceof Error ? err.message : String(err) });
    return { bindings: 0, aors: 0 };
  });
  logger.info('store ready', { store: store.kind, at: store.describe, bindings: counters.bindings, aors: counters.aors });
  const offlineStore = config.offline ? store.offline : undefined;
  // Reachability lives in memory beside the replica, never in it (lib/reachability/).
  const reachability = new ReachabilityTable();
  const qualifyOn = config.qualify.intervalSec > 0;
  const watchOn = config.connectionWatchMs > 0;
  // Routing skips unreachable bindings when something can find them: qualify, or the connection watch.
  const reachabilityOf = qualifyOn || watchOn ? (b: Binding) => reachability.of(b) : undefined;
  const pendingDeregistrations = config.mode === 'contact' ? () => bindings.countPendingDeregistrations(Date.now())
    : config.mode === 'aor' ? () => bindings.countPendingAorDeregistrations(Date.now()) : undefined;
  const metrics = new Metrics({
    registrations: () => ({ bindings: counters.bindings, aors: counters.aors }),
    reachability: () => reachability.counts(),
    ...(offlineStore ? { offline: () => offlineStore.totals() } : {}),
    mode: config.mode,
    ...(pendingDeregistrations ? { pendingDeregistrations } : {}),
  });

  absorbWriteFailed = () => metrics.replicaWriteFailed();

  const engine = new SipEngine((err, req) => {
    logger.error('SIP handler failed; answered 500', { method: req.method, error: err instanceof Error ? err.stack ?? err.message : String(err) });
  });

  const guard = new FloodGuard({
    perSourceRate: config.rateLimitPerSec,
    perSourceBurst: config.rateLimitBurst,
    maxInFlight: config.maxInFlight,
    queueTargetMs: config.overloadQueueMs,
    exempt: (address, port) => isTrustedPeer({ address, port }, config.trustedPeers),
  });
  let draining = false;
  const admitted = (handler: RequestHandler): RequestHandler => async (req, res) => {
    const admission = draining
      ? { kind: 'reject' as const, status: 503 as const, retryAfterSec: 5, why: 'stopping' }
      : guard.admit(req.source.address, req.source.port);
    if (admission.kind === 'reject') {
      res.send(503, { reason: 'Service Unavailable', headers: { 'Retry-After': String(admission.retryAfterSec) } });
      logger.info(`${req.method} shed`, { event: req.method.toLowerCase(), decision: 'shed', status: 503, why: admission.why, source: `${req.source.transport}:${req.source.address}:${req.source.port}` });
      return;
    }
    try {
      await handler(req, res);
    } finally {
      admission.release();
    }
  };

  const upstream = { uri: config.upstream, timeoutMs: config.upstreamTimeoutMs };
  const ownUri = (): string | undefined => config.pathUri ?? pathUriFrom(engine.sipAddresses);
  // Several nodes on one Redis store: each binding names the node holding its flow, and requests
  // for it go through that node (lib/cluster/node-directory.ts). SQLite: one node, nothing to route.
  const nodeUri = (): string | undefined => config.nodeUri ?? ownUri();
  const nodes = redis ? new NodeDirectory(redis, nodeUri, (error) => {
    if (error === undefined) logger.info('node heartbeats work again', { node: nodeUri() });
    else logger.warn('node heartbeat failed; peers may take this node for gone', { node: nodeUri(), error });
  }) : undefined;
  const handles = nodes ? (b: Binding) => handledHere(b, nodes) : undefined;
  const courier = offlineStore ? new OfflineCourier({
    sender: engine,
    store: offlineStore,
    bindings,
    timeoutMs: config.upstreamTimeoutMs,
    logger,
    ...(handles ? { handles } : {}),
    onOutcome: (outcome) => metrics.offlineOutcome(outcome),
  }) : undefined;
  if (offlineStore && courier) {
    await courier.load().catch((err: unknown) => logger.error('cannot read the offline queue; delivered on the next tick', { error: err instanceof Error ? err.message : String(err) }));
    logger.info('offline messages on', { waiting: (await offlineStore.totals().catch(() => ({ messages: Number.NaN }))).messages, ttlSec: config.offline?.ttlSec });
  }
  engine.handle('REGISTER', admitted(createRegisterHandler({
    sender: engine,
    store: bindings,
    upstream,
    domains: config.domains,
    sipAddresses: () => engine.sipAddresses,
    pathUri: () => (config.addPath ? ownUri() : undefined),
    ...(config.insertion === 'contact' && config.mode !== 'aor' ? { contactInsertion: { self: () => selfAddressFrom(ownUri() ?? '') } } : {}),
    ...(config.mode === 'contact' ? { throttle: { outgoingExpiresSec: config.outgoingExpiresSec, refreshMarginSec: config.refreshMarginSec } } : {}),
    ...(config.mode === 'aor' ? {
      aorThrottle: { store: bindings, outgoingExpiresSec: config.outgoingExpiresSec, refreshMarginSec: config.refreshMarginSec, self: () => selfAddressFrom(ownUri() ?? '') },
    } : {}),
    onRegisterAbsorbed: () => metrics.registerAbsorbed(),
    ...(nodes ? { node: nodeUri } : {}),
    flowTimerSec: config.flowTimerSec,
    logger,
    limits: { maxBindingsPerAor: config.maxBindingsPerAor, maxAors: config.maxAors },
    counters,
    onRegisterAnswered: (status, upstreamMs) => metrics.registerAnswered(status, upstreamMs),
    onReplicaWriteFailed: () => metrics.replicaWriteFailed(),
    ...(courier || watchOn ? {
      onReplicaWritten: (aor: string, bindings: number, transport: string) => {
        if (bindings > 0) courier?.registered(aor);
        connectionWatch?.track(aor, transport).catch((err: unknown) => {
          logger.warn('connection watch: cannot index the AoR\'s bindings', { aor, error: err instanceof Error ? err.message : String(err) });
        });
      },
    } : {}),
  })));
  engine.handle('MESSAGE', admitted(createMessageHandler({
    sender: engine,
    store: bindings,
    upstream,
    domains: config.domains,
    sipAddresses: () => engine.sipAddresses,
    trustedPeers: config.trustedPeers,
    noBindingStatus: config.noBindingStatus,
    maxBodyBytes: config.maxMessageBytes,
    logger,
    ...(offlineStore && courier && config.offline ? {
      offline: {
        store: offlineStore,
        isKnown: (aor: string) => bindings.isKnownAor(aor),
        rate: new SenderRate(config.offline.senderPerMinute),
        limits: config.offline,
        stored: (aor: string) => courier.stored(aor),
      },
    } : {}),
    ...(reachabilityOf ? { reachability: reachabilityOf } : {}),
    ...(nodes ? { nodes } : {}),
    // A MESSAGE is a ping too: a branch drachtio-server could not send (its own 503: the flow is
    // gone) marks the binding unreachable at once, any answer marks it reachable. A branch that
    // timed out says nothing for sure (midreg's own overload looks the same) and is left to
    // qualify. Only for flows whose entries something forgets again: all with qualify (its rounds
    // sweep the table), connection-oriented ones with the connection watch.
    ...(reachabilityOf ? {
      onBranch: (b: Binding, outcome: UpstreamOutcome) => {
        if (qualifyOn || (watchOn && isConnectionFlow(b))) {
          const verdict = pingVerdict(outcome);
          if (verdict.kind === 'unreachable' && verdict.why === 'timeout') return;
          const after = reachability.record(b, verdict, Date.now());
          if (verdict.kind === 'unreachable') logger.warn('binding unreachable: a MESSAGE could not reach it', { event: 'message', aor: b.aor, contact: b.contact, state: after.state, why: verdict.why });
        }
      },
    } : {}),
    onOutcome: (outcome) => metrics.messageOutcome(outcome),
  })));
  const proxy = createProxyHandler({
    store: bindings,
    upstreamUri: config.upstream,
    domains: config.domains,
    trustedPeers: config.trustedPeers,
    noBindingStatus: config.noBindingStatus,
    sipAddresses: () => engine.sipAddresses,
    logger,
    ...(reachabilityOf ? { reachability: reachabilityOf } : {}),
  });
  for (const method of PROXIED_METHODS) engine.handle(method, proxy);

  // drachtio-server says nothing when a TCP/TLS/WS connection closes: midreg watches the kernel's
  // table of its connections instead (lib/reachability/connection-watch.ts).
  const connectionWatch: ConnectionWatch | undefined = watchOn ? new ConnectionWatch({
    table: reachability,
    store: bindings,
    sipAddresses: () => engine.sipAddresses,
    intervalMs: config.connectionWatchMs,
    logger,
    onClosed: (b: Binding) => {
      metrics.connectionClosed();
      // Contact mode: the registrar keeps this contact for up to MIDREG_OUTGOING_EXPIRES; a phone
      // whose connection is gone cannot be reached through it, so it is removed there now.
      if (config.mode === 'contact' && engine.connected && b.callId !== null) {
        void deregisterOne({
          sender: engine, store: bindings, upstream, logger,
          onRemoved: (emptied) => { counters.bindings -= 1; if (emptied) counters.aors -= 1; },
          onResult: (result) => metrics.upstreamDeregistration(result),
        }, b, Date.now(), 'its connection closed');
      }
    },
  }) : undefined;
  connectionWatch?.seed().catch((err: unknown) => {
    logger.warn('connection watch: cannot read the stored bindings at start; bindings are watched from their next registration', { error: err instanceof Error ? err.message : String(err) });
  });

  const qualifier = qualifyOn ? new Qualifier({
    sender: engine,
    store: bindings,
    table: reachability,
    intervalMs: config.qualify.intervalSec * 1000,
    timeoutMs: config.qualify.timeoutMs,
    selfHost: () => /^sips?:([^;>]+)/i.exec(ownUri() ?? '')?.[1],
    ready: () => engine.connected && engine.sipAddresses.length > 0,
    logger,
    ...(handles ? { handles } : {}),
    onSent: () => metrics.qualifySentOne(),
    onPing: (result) => metrics.qualifyEnded(result),
  }) : undefined;

  let markConnected: () => void = () => undefined;
  const connected = new Promise<void>((resolve) => { markConnected = resolve; });
  engine.on('connect', (hostport) => {
    logger.info('connected to drachtio-server', { drachtio: `${config.drachtio.host}:${config.drachtio.port}`, sip: hostport });
    metrics.drachtioConnected(true);
    // The node URI is known once drachtio-server told its address: heartbeats start then.
    if (nodes) {
      nodes.start();
      logger.info('node on shared store', { node: nodeUri(), store: store.describe });
    }
    markConnected();
    connectionWatch?.start();
    if (qualifier) {
      qualifier.start();
      logger.info('qualify on', { intervalSec: config.qualify.intervalSec, timeoutMs: config.qualify.timeoutMs });
    }
    // After a restart: messages stored before it go out to whoever is registered.
    if (courier && store.unavailableReason === undefined) setImmediate(() => { void courier.tick(); });
  });
  engine.on('disconnect', (reason) => {
    logger.warn('lost drachtio-server; reconnecting', { drachtio: `${config.drachtio.host}:${config.drachtio.port}`, reason });
    metrics.drachtioConnected(false);
  });
  logger.info('waiting for drachtio-server', { drachtio: `${config.drachtio.host}:${config.drachtio.port}`, upstream: config.upstream, domains: config.domains, mode: config.mode, ...(config.mode !== 'mirror' ? { outgoingExpiresSec: config.outgoingExpiresSec, refreshMarginSec: config.refreshMarginSec } : {}) });
  engine.connect(config.drachtio);

  const admin = config.admin.port === undefined
    ? Promise.resolve(undefined)
    : startAdminServer({
      host: config.admin.host,
      port: config.admin.port,
      token: config.admin.token,
      deps: {
        store: { listLiveAfter: (...a) => bindings.listLiveAfter(...a), liveBindings: (...a) => bindings.liveBindingsView(...a), checkWritable: () => store.checkWritable(), counts: () => Promise.resolve({ ...counters }) },
        ...(pendingDeregistrations ? { pendingDeregistrations } : {}),
        metrics,
        drachtioConnected: () => engine.connected,
        offline: offlineStore,
        // Always shown: with qualify off every binding is `unknown`.
        reachability: (b) => reachability.of(b),
        reachabilityTotals: () => reachability.counts(),
        onOfflinePurged: (aor, purged) => {
          logger.info('offline messages purged', { event: 'offline', outcome: 'purged', aor, purged });
          metrics.offlineOutcome('purged', purged);
        },
      },
      logger,
    });

  // Expired bindings are never used (lookups filter on expiry); this only reclaims the rows, in
  // transactions sized to stay well under SWEEP_BUDGET_MS each, paced (lib/store/expiry-sweep.ts).
  const sweeper = new ExpirySweeper(bindings);
  let purging = false;
  let stopping = false;
  const purge = async (reason: 'start' | 'timer'): Promise<void> => {
    if (purging || stopping) return;
    purging = true;
    // Other nodes write the same store: the counters follow it, not only this node's writes.
    if (redis) {
      try { Object.assign(counters, await redis.bindings.countStored()); } catch { /* kept until Redis answers */ }
    }
    if (store.unavailableReason !== undefined) {
      if (!await store.reopenWritable()) { purging = false; return; }
      logger.info(store.kind === 'sqlite' ? 'database writable again' : 'store writable again', { store: store.describe });
    }
    // Contact mode: phones that stopped refreshing are de-registered upstream first (bounded per
    // run); what the registrar accepted is deleted, the rest waits as lapsed until its upstream expiry.
    const deregistered = config.mode === 'contact' && engine.connected
      ? deregisterLapsed({
        sender: engine,
        store: bindings,
        upstream,
        logger,
        ...(handles ? { handles } : {}),
        onRemoved: (emptied) => { counters.bindings -= 1; if (emptied) counters.aors -= 1; },
        onResult: (result) => metrics.upstreamDeregistration(result),
      }, Date.now()).catch((err: unknown) => {
        logger.error('upstream de-registration run failed', { error: err instanceof Error ? err.message : String(err) });
      })
      : config.mode === 'aor' && engine.connected
        // AoR mode: an AoR whose last device is gone has midreg's Contact removed upstream.
        ? deregisterEmptyAors({ sender: engine, store: bindings, upstream, logger, onResult: (result) => metrics.upstreamDeregistration(result) }, Date.now())
          .catch((err: unknown) => { logger.error('upstream de-registration run failed', { error: err instanceof Error ? err.message : String(err) }); })
        : Promise.resolve();
    void deregistered.then(() => sweepExpired(sweeper, {
      now: Date.now,
      stopped: () => stopping,
      onStep: ({ removed, emptiedAors }) => {
        counters.bindings -= removed;
        counters.aors -= emptiedAors;
      },
    })).then((swept) => {
      if (reason === 'start' || swept > 0) logger.info('expiry sweep done', { reason, expiredRemoved: swept, bindings: counters.bindings, aors: counters.aors });
    }, (err: unknown) => {
      logger.error('expiry sweep failed', { error: err instanceof Error ? err.message : String(err) });
    }).finally(() => { purging = false; });
  };
  const purgeTimer = setInterval(() => { void purge('timer'); }, config.purgeIntervalSec * 1000);
  purgeTimer.unref();
  // Expired offline messages go, and failed deliveries are retried, on this beat; a registration
  // delivers at once without waiting for it.
  const courierTimer = courier && config.offline ? setInterval(() => {
    if (store.unavailableReason === undefined && engine.connected) void courier.tick();
  }, config.offline.retryIntervalSec * 1000) : undefined;
  courierTimer?.unref();
  // Bindings that expired while midreg was down are never served (every lookup filters on
  // expiry); they are deleted in the background so start-up does not wait for them.
  setImmediate(() => { void purge('start'); });

  return {
    engine,
    store,
    metrics,
    admin,
    connected,
    async stop() {
      draining = true;
      // First, so health checks fail at once and load balancers stop sending while we drain.
      await admin.then((server) => server?.close(), () => undefined);
      clearInterval(purgeTimer);
      qualifier?.stop();
      connectionWatch?.stop();
      if (courierTimer) clearInterval(courierTimer);
      stopping = true;
      const deadline = Date.now() + config.stopTimeoutMs;
      while ((guard.active > 0 || (courier?.active ?? 0) > 0) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
      const abandoned = guard.active + (courier?.active ?? 0);
      engine.disconnect();
      // Peers fail requests for this node's phones at once instead of after the heartbeat TTL.
      await nodes?.stop();
      await store.close();
      return { abandoned };
    },
  };
}
