// The admin HTTP API: health for load balancers and orchestrators, Prometheus metrics, a
// read-only view of the replica, and the offline message queue (listing, and purging one
// recipient's: the one write it offers). Off unless a port is configured.
import { createHash, timingSafeEqual } from 'node:crypto';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import { isIP } from 'node:net';
import { aorLookupKey, aorSearchPrefix, bindingView, decodeCursor, encodeCursor } from './binding-view.js';
import type { BindingStore, OfflineMessageStore, Store } from '../store/store.js';
import type { Logger } from './logger.js';
import type { Reachability } from '../reachability/reachability.js';
import type { Binding } from '../registrar/registration.js';
import type { Metrics } from './metrics.js';

export interface AdminDeps {
  store: Pick<BindingStore, 'listLiveAfter' | 'liveBindings' | 'counts'> & Pick<Store, 'checkWritable'>;
  drachtioConnected(): boolean;
  metrics: Metrics;
  /** What qualify knows of a binding, shown with each binding (the service's memory, not the replica). */
  reachability?: (binding: Binding) => Reachability;
  /** Bindings qualify knows reachable and unreachable, for /stats (the other live ones are unknown). */
  reachabilityTotals?: () => { reachable: number; unreachable: number };
  /** An operator purged a recipient's offline messages (for the log and metrics). */
  onOfflinePurged?(aor: string, purged: number): void;
  /** The offline message queue; undefined while MIDREG_OFFLINE_MESSAGES is off. */
  offline?: Pick<OfflineMessageStore, 'summary' | 'listOf' | 'purge' | 'totals'> | undefined;
  now?: () => number;
}

export interface AdminServerOptions {
  host: string;
  port: number;
  token?: string | undefined;
  deps: AdminDeps;
  logger: Logger;
}

export interface AdminServer {
  port: number;
  close(): Promise<void>;
}

export const DEFAULT_PAGE_SIZE = 100;
export const MAX_PAGE_SIZE = 1000;

export class AdminConfigError extends Error {}

/** Live bindings by reachability state; `unknown` is whatever qualify has no verdict on. */
function reachabilityTotals(known: { reachable: number; unreachable: number }, live: number): { reachable: number; unreachable: number; unknown: number } {
  return { reachable: known.reachable, unreachable: known.unreachable, unknown: Math.max(0, live - known.reachable - known.unreachable) };
}

/** Whether only this machine can reach `host`. */
export function isLoopback(host: string): boolean {
  const bare = host.replace(/^\[|\]$/g, '').toLowerCase();
  if (bare === 'localhost') return true;
  if (isIP(bare) === 4) return bare.startsWith('127.');
  if (isIP(bare) === 6) return bare === '::1' || /^::ffff:127\./.test(bare);
  return false;
}

// Hashing first gives both sides the same length, so the comparison time says nothing about
// how much of the token a guess got right (or about its length).
function sameToken(given: string, expected: string): boolean {
  const a = createHash('sha256').update(given).digest();
  const b = createHash('sha256').update(expected).digest();
  return timingSafeEqual(a, b);
}

function sendJson(res: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void {
  const text = `${JSON.stringify(body, null, 2)}\n`;
  res.writeHead(status, { 'Content-Type': 'application/json; charset=utf-8', 'Cache-Control': 'no-store', ...headers });
  res.end(text);
}

class HttpError extends Error {
  constructor(readonly status: number, message: string) { super(message); }
}

function pageSize(raw: string | null): number {
  if (raw === null || raw === '') return DEFAULT_PAGE_SIZE;
  if (!/^\d+$/.test(raw) || Number(raw) < 1 || Number(raw) > MAX_PAGE_SIZE) {
    throw new HttpError(400, `limit must be an integer from 1 to ${MAX_PAGE_SIZE}`);
  }
  return Number(raw);
}

type Route = (url: URL, res: ServerResponse, method: string) => Promise<void> | void;

/**
 * Every path the admin API serves; `<aor>` stands for one URL-encoded path segment. The router is
 * built from this list (and the handler table must name exactly these), so the README's route
 * table can be checked against it (test/unit/docs.test.ts).
 */
export const ADMIN_ROUTES = ['/health', '/metrics', '/stats', '/registrations', '/registrations/<aor>', '/offline', '/offline/<aor>'] as const;
type AdminRoute = (typeof ADMIN_ROUTES)[number];
/** Routes that also take DELETE; every route takes GET and HEAD. */
export const ADMIN_DELETE_ROUTES: readonly AdminRoute[] = ['/offline/<aor>'];
/** Every method and path the API answers, e.g. `GET /health`, `DELETE /offline/<aor>`. */
export const ADMIN_ENDPOINTS: readonly string[] = [...ADMIN_ROUTES.map((r) => `GET ${r}`), ...ADMIN_DELETE_ROUTES.map((r) => `DELETE ${r}`)];

/** `/registrations/<aor>` → /^\/registrations\/([^/]+)$/ */
function routePattern(route: AdminRoute): RegExp {
  const escaped = route.replace(/[.*+?^${}()|[\]\\]/g, '\\$&').replace(/<[a-z]+>/g, '([^/]+)');
  return new RegExp(`^${escaped}$`);
}

function routes(deps: AdminDeps): { match(path: string): { route: Route; deletes: boolean } | undefined } {
  const now = deps.now ?? Date.now;

  const health: Route = async (_url, res) => {
    const reasons: string[] = [];
    const drachtio = deps.drachtioConnected();
    if (!drachtio) reasons.push('drachtio-server not connected');
    const writable = await deps.store.checkWritable();
    if (!writable.ok) reasons.push(`database not writable: ${writable.reason}`);
    const state = { drachtio: drachtio ? 'connected' : 'disconnected', database: writable.ok ? 'writable' : 'not_writable' };
    if (reasons.length === 0) sendJson(res, 200, { status: 'ok', ...state });
    else sendJson(res, 503, { status: 'unavailable', ...state, reasons });
  };

  const metrics: Route = async (_url, res) => {
    const text = await deps.metrics.render();
    res.writeHead(200, { 'Content-Type': deps.metrics.contentType, 'Cache-Control': 'no-store' });
    res.end(text);
  };

  const list: Route = async (url, res) => {
    const limit = pageSize(url.searchParams.get('limit'));
    const from = url.searchParams.get('from');
    const after = from ? decodeCursor(from) : undefined;
    if (from && !after) throw new HttpError(400, 'from must be the "next" value of a previous page');
    const aorPrefix = aorSearchPrefix(url.searchParams.get('aor') ?? '');
    const at = now();
    // One row more than asked tells whether another page exists without a second query.
    const rows = await deps.store.listLiveAfter(at, { limit: limit + 1, ...(after ? { after } : {}), ...(aorPrefix ? { aorPrefix } : {}) });
    const page = rows.slice(0, limit);
    const last = page[page.length - 1];
    sendJson(res, 200, {
      bindings: page.map((b) => bindingView(b, at, deps.reachability?.(b))),
      next: rows.length > limit && last ? encodeCursor({ aor: last.aor, contact: last.contact }) : null,
    });
  };

  const decodeAor = (encoded: string): string => {
    try {
      return aorLookupKey(decodeURIComponent(encoded));
    } catch {
      throw new HttpError(400, 'the AoR is not validly URL-encoded');
    }
  };
  const one = (encoded: string): Route => async (_url, res) => {
    const aor = decodeAor(encoded);
    const at = now();
    const bindings = await deps.store.liveBindings(aor, at);
    if (bindings.length === 0) { sendJson(res, 404, { error: 'no live registration', aor }); return; }
    sendJson(res, 200, { aor, bindings: bindings.map((b) => bindingView(b, at, deps.reachability?.(b))) });
  };

  const offlineStore = (): NonNullable<AdminDeps['offline']> => {
    if (!deps.offline) throw new HttpError(404, 'offline messages are off (MIDREG_OFFLINE_MESSAGES)');
    return deps.offline;
  };

  const offlineQueue: Route = async (_url, res) => {
    const store = offlineStore();
    const totals = await store.totals();
    sendJson(res, 200, {
      messages: totals.messages,
      bytes: totals.bytes,
      recipients: (await store.summary()).map((q) => ({ aor: q.recipient, messages: q.messages, bytes: q.bytes, oldest_at: new Date(q.oldestAt).toISOString() })),
    });
  };

  // Message bodies are never shown: the queue is the users' correspondence.
  const offlineOf = (encoded: string): Route => async (_url, res, method) => {
    const store = offlineStore();
    const aor = decodeAor(encoded);
    if (method === 'DELETE') {
      const purged = await store.purge(aor);
      deps.onOfflinePurged?.(aor, purged);
      sendJson(res, 200, { aor, purged });
      return;
    }
    sendJson(res, 200, {
      aor,
      messages: (await store.listOf(aor)).map((m) => ({
        id: m.id, from: m.sender, content_type: m.contentType, bytes: Buffer.byteLength(m.body, 'utf8'), date: m.date,
        received_at: new Date(m.receivedAt).toISOString(), expires_at: new Date(m.expiresAt).toISOString(),
        attempts: m.attempts, next_attempt_at: new Date(m.nextAttemptAt).toISOString(),
      })),
    });
  };

  const stats: Route = async (_url, res) => {
    const at = now();
    const snap = deps.metrics.snapshot();
    const counts = await deps.store.counts(at);
    sendJson(res, 200, {
      started_at: new Date(snap.startedAt).toISOString(),
      uptime_seconds: Math.max(0, Math.floor((at - snap.startedAt) / 1000)),
      drachtio: deps.drachtioConnected() ? 'connected' : 'disconnected',
      bindings: counts.bindings,
      aors: counts.aors,
      register: snap.register,
      /** Contact mode: REGISTER refreshes midreg answered itself (not in `register`). */
      register_absorbed: snap.registerAbsorbed,
      message: snap.message,
      replica_write_failures: snap.replicaWriteFailures,
      ...(deps.reachabilityTotals ? { reachability: reachabilityTotals(deps.reachabilityTotals(), counts.bindings) } : {}),
    });
  };

  const handlers: Record<AdminRoute, (param: string) => Route> = {
    '/health': () => health,
    '/metrics': () => metrics,
    '/stats': () => stats,
    '/registrations': () => list,
    '/registrations/<aor>': one,
    '/offline': () => offlineQueue,
    '/offline/<aor>': offlineOf,
  };
  const table = ADMIN_ROUTES.map((route) => ({ pattern: routePattern(route), handler: handlers[route], deletes: ADMIN_DELETE_ROUTES.includes(route) }));

  return {
    match(path) {
      for (const { pattern, handler, deletes } of table) {
        const found = pattern.exec(path);
        if (found) return { route: handler(found[1] ?? ''), deletes };
      }
      return undefined;
    },
  };
}

/**
 * Start the admin server. Refuses a non-loopback address without a token: the registration list
 * holds every user's contact and public address.
 */
export function startAdminServer(opts: AdminServerOptions): Promise<AdminServer> {
  const token = opts.token === '' ? undefined : opts.token;
  if (token === undefined && !isLoopback(opts.host)) {
    return Promise.reject(new AdminConfigError(
      `refusing to serve the admin API on ${opts.host} without a token: anyone who can reach it would see every registration; set a token or bind it to 127.0.0.1`));
  }
  const table = routes(opts.deps);
  const log = opts.logger;

  const handle = async (req: IncomingMessage, res: ServerResponse): Promise<void> => {
    const started = process.hrtime.bigint();
    let url: URL;
    try {
      // Prefixed rather than resolved against a base, so a request for `//x` stays a path.
      url = new URL(`http://admin.invalid${req.url ?? '/'}`);
    } catch {
      sendJson(res, 400, { error: 'bad request target' });
      return;
    }
    const done = (): void => {
      // Path only: a query may hold a search term, never a credential (the token travels in a header).
      log.debug('admin request', { method: req.method, path: url.pathname, status: res.statusCode, ms: Number(process.hrtime.bigint() - started) / 1e6 });
    };
    res.on('finish', done);

    if (token !== undefined) {
      const header = req.headers.authorization ?? '';
      const match = /^Bearer\s+(\S+)\s*$/i.exec(header);
      if (!match?.[1] || !sameToken(match[1], token)) {
        log.warn('admin request refused: missing or wrong token', { method: req.method, path: url.pathname, remote: req.socket.remoteAddress });
        sendJson(res, 401, { error: 'unauthorized' }, { 'WWW-Authenticate': 'Bearer realm="midreg"' });
        return;
      }
    }

    const matched = table.match(url.pathname);
    if (!matched) { sendJson(res, 404, { error: 'not found' }); return; }
    const method = req.method ?? 'GET';
    if (method !== 'GET' && method !== 'HEAD' && !(method === 'DELETE' && matched.deletes)) {
      sendJson(res, 405, { error: 'method not allowed' }, { Allow: matched.deletes ? 'GET, HEAD, DELETE' : 'GET, HEAD' });
      return;
    }
    try {
      await matched.route(url, res, method);
    } catch (err) {
      if (err instanceof HttpError) { sendJson(res, err.status, { error: err.message }); return; }
      log.error('admin request failed', { path: url.pathname, error: err instanceof Error ? err.message : String(err) });
      if (!res.headersSent) sendJson(res, 500, { error: 'internal error' });
      else res.destroy();
    }
  };

  const server = createServer((req, res) => { void handle(req, res); });
  return new Promise((resolve, reject) => {
    server.once('error', (err) => {
      reject(new AdminConfigError(`cannot serve the admin API on ${opts.host}:${opts.port}: ${err.message}`));
    });
    server.listen({ host: opts.host, port: opts.port }, () => {
      const address = server.address();
      const port = typeof address === 'object' && address ? address.port : opts.port;
      log.info('admin API listening', { address: `${opts.host}:${port}`, token: token !== undefined ? 'required' : 'none' });
      resolve({
        port,
        close: () => new Promise<void>((done) => {
          server.close(() => done());
          // Keep-alive clients (Prometheus) would otherwise hold the close open.
          server.closeAllConnections();
        }),
      });
    });
  });
}
