// Wires midreg together: store, SIP engine, handlers, housekeeping. No SIP or SQL logic here.
import type { Config } from './config.js';
import { FloodGuard } from '../lib/flood-guard.js';
import { LocationStore } from '../lib/location-store.js';
import type { Logger } from '../lib/logger.js';
import { createMessageHandler } from '../lib/message-router.js';
import { createRegisterHandler } from '../lib/registration-relay.js';
import { createProxyHandler, PROXIED_METHODS } from '../lib/request-proxy.js';
import { isTrustedPeer } from '../lib/routing.js';
import { SipEngine, type RequestHandler } from '../lib/sip/drachtio.js';

export interface Midreg {
  readonly engine: SipEngine;
  readonly store: LocationStore;
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

export function startMidreg(config: Config, logger: Logger): Midreg {
  const store = new LocationStore(config.dbFile);
  for (const name of store.migrationsApplied) logger.info('database migration applied', { migration: name, db: config.dbFile });
  const startPurge = store.purgeExpired(Date.now(), Number.MAX_SAFE_INTEGER);
  const counts = store.counts(Date.now());
  const aorCount = { value: counts.aors };
  logger.info('replica opened', { db: config.dbFile, schema: store.schemaVersion, bindings: counts.bindings, aors: counts.aors, expiredRemoved: startPurge });

  const engine = new SipEngine((err, req) => {
    logger.error('SIP handler failed; answered 500', { method: req.method, error: err instanceof Error ? err.stack ?? err.message : String(err) });
  });

  const guard = new FloodGuard({
    perSourceRate: config.rateLimitPerSec,
    perSourceBurst: config.rateLimitBurst,
    maxInFlight: config.maxInFlight,
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
  engine.handle('REGISTER', admitted(createRegisterHandler({
    sender: engine,
    store,
    upstream,
    domains: config.domains,
    pathUri: () => (config.addPath ? config.pathUri ?? pathUriFrom(engine.sipAddresses) : undefined),
    logger,
    limits: { maxBindingsPerAor: config.maxBindingsPerAor, maxAors: config.maxAors },
    aorCount,
  })));
  engine.handle('MESSAGE', admitted(createMessageHandler({
    sender: engine,
    store,
    upstream,
    domains: config.domains,
    trustedPeers: config.trustedPeers,
    noBindingStatus: config.noBindingStatus,
    maxBodyBytes: config.maxMessageBytes,
    logger,
  })));
  const proxy = createProxyHandler({
    store,
    upstreamUri: config.upstream,
    domains: config.domains,
    trustedPeers: config.trustedPeers,
    noBindingStatus: config.noBindingStatus,
    ownHosts: () => engine.sipAddresses.map((a) => a.replace(/^\w+\//, '').replace(/:\d+$/, '').toLowerCase()),
    logger,
  });
  for (const method of PROXIED_METHODS) engine.handle(method, proxy);

  let markConnected: () => void = () => undefined;
  const connected = new Promise<void>((resolve) => { markConnected = resolve; });
  engine.on('connect', (hostport) => {
    logger.info('connected to drachtio-server', { drachtio: `${config.drachtio.host}:${config.drachtio.port}`, sip: hostport });
    markConnected();
  });
  engine.on('disconnect', (reason) => {
    logger.warn('lost drachtio-server; reconnecting', { drachtio: `${config.drachtio.host}:${config.drachtio.port}`, reason });
  });
  logger.info('waiting for drachtio-server', { drachtio: `${config.drachtio.host}:${config.drachtio.port}`, upstream: config.upstream, domains: config.domains });
  engine.connect(config.drachtio);

  // Expired bindings are never used (lookups filter on expiry); this only reclaims the rows, in
  // small batches so one sweep never holds the event loop for long.
  let purging = false;
  const purge = (): void => {
    if (purging) return;
    purging = true;
    const step = (): void => {
      try {
        if (store.purgeExpired(Date.now()) > 0) { setImmediate(step); return; }
        aorCount.value = store.counts(Date.now()).aors;
      } catch (err) {
        logger.error('expiry sweep failed', { error: err instanceof Error ? err.message : String(err) });
      }
      purging = false;
    };
    step();
  };
  const purgeTimer = setInterval(purge, config.purgeIntervalSec * 1000);
  purgeTimer.unref();

  return {
    engine,
    store,
    connected,
    async stop() {
      draining = true;
      clearInterval(purgeTimer);
      const deadline = Date.now() + config.stopTimeoutMs;
      while (guard.active > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
      const abandoned = guard.active;
      engine.disconnect();
      store.close();
      return { abandoned };
    },
  };
}
