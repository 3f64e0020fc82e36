#!/usr/bin/env node
// The drachtio reference for the benchmark: the least code a drachtio-srf app needs to do what
// midreg does with REGISTER and MESSAGE, with no validation, no SQLite and no logging, so the
// bench shows what midreg's own work costs on top of drachtio-srf itself.
//
//   REF_MODE=relay  REGISTER: a new UAC request (`srf.request(uri, {method, headers, proxy})`)
//                   carrying the UA's headers (Max-Forwards decremented, our Path on top), the UA
//                   answered with the upstream's final response, 2xx Contacts saved in a Map.
//                   MESSAGE: looked up in that Map and relayed the same way to the contact.
//   REF_MODE=proxy  REGISTER: `srf.proxyRequest(req, upstream)` (2xx Contacts still saved from the
//                   proxied final response); MESSAGE: `srf.proxyRequest(req, contact)`.
//
// Environment: DRACHTIO_PORT, DRACHTIO_SECRET (drachtio-server on 127.0.0.1), REF_UPSTREAM
// (sip:host:port), REF_MODE. Prints "reference connected <hostport>" once drachtio accepts it.
import Srf from 'drachtio-srf';

// ---- the runtime shapes of the drachtio-srf objects this app touches (its typings are loose) ----
interface RawNameAddr { uri: string; params?: Record<string, string | null | undefined> }
interface RawMessage {
  headers: Record<string, string>;
  body?: string;
  get(name: string): string | undefined;
  has(name: string): boolean;
  getParsedHeader(name: string): unknown;
}
interface RawRequest extends RawMessage {
  method: string;
  uri: string;
  msg: { headers: Record<string, string>; body?: string };
  on(event: 'response', listener: (res: RawResponse) => void): void;
}
interface RawResponse extends RawMessage {
  status: number;
  reason: string;
  msg: { headers: Record<string, string>; body?: string };
}
interface RawServerResponse {
  finalResponseSent: boolean;
  send(status: number, reason?: string, opts?: { headers?: Record<string, string>; body?: string }): void;
}
interface ProxyResult { finalStatus?: number; finalResponse?: { status: number; msg: RawMessage } }
interface RawSrf {
  connect(opts: { host: string; port: number; secret: string }): void;
  disconnect(): void;
  on(event: 'connect', listener: (err: Error | null, hostport: string) => void): void;
  on(event: 'error', listener: (err: Error) => void): void;
  use(method: string, handler: (req: RawRequest, res: RawServerResponse, next: () => void) => void): void;
  request(uri: string, opts: { method: string; headers: Record<string, string>; body?: string; proxy?: string },
    callback: (err: Error | null, req: RawRequest) => void): void;
  proxyRequest(req: RawRequest, destination: string | string[], opts: Record<string, unknown>,
    callback: (err: Error | null, result: ProxyResult) => void): void;
}
interface SrfStatic { new (): RawSrf }
const SrfClass = Srf as unknown as SrfStatic;

const HOP_HEADERS = new Set(['via', 'max-forwards', 'content-length', 'record-route', 'route']);
const REPLY_TRANSACTION_HEADERS = new Set(['via', 'from', 'to', 'call-id', 'cseq', 'content-length', 'record-route', 'max-forwards']);

interface Contact { uri: string; expiresAt: number }

function env(name: string): string {
  const value = process.env[name];
  if (!value) {
    process.stderr.write(`reference-app: ${name} is required\n`);
    process.exit(2);
  }
  return value;
}

/** `sip:Alice@Example.test:5060;transport=udp` or `<sip:alice@example.test>;tag=x` → `sip:alice@example.test`. */
function aorKey(uri: string): string {
  const m = /^<?(sips?):([^@;>]+)@([^;:>]+)/i.exec(uri.trim());
  return m ? `${(m[1] ?? '').toLowerCase()}:${(m[2] ?? '').toLowerCase()}@${(m[3] ?? '').toLowerCase()}` : uri.toLowerCase();
}

function copyRequestHeaders(req: RawRequest, pathUri: string | undefined): Record<string, string> {
  const headers: Record<string, string> = {};
  for (const [name, value] of Object.entries(req.msg.headers)) {
    const lower = name.toLowerCase();
    if (!HOP_HEADERS.has(lower)) headers[lower] = String(value);
  }
  const mf = Number(req.get('Max-Forwards') ?? '70');
  headers['max-forwards'] = String(Number.isFinite(mf) && mf > 0 ? mf - 1 : 69);
  if (pathUri) headers['path'] = headers['path'] ? `<${pathUri}>, ${headers['path']}` : `<${pathUri}>`;
  return headers;
}

function replyHeaders(res: RawResponse): Record<string, string> {
  const headers: Record<string, string> = {};
  for (const [name, value] of Object.entries(res.msg.headers)) {
    if (!REPLY_TRANSACTION_HEADERS.has(name.toLowerCase())) headers[name.toLowerCase()] = String(value);
  }
  return headers;
}

const mode = process.env['REF_MODE'] === 'proxy' ? 'proxy' : 'relay';
const upstream = env('REF_UPSTREAM');
const secret = env('DRACHTIO_SECRET');
const port = Number(env('DRACHTIO_PORT'));
const locations = new Map<string, Contact[]>();
let pathUri: string | undefined;

/** Save the Contacts of a 2xx to REGISTER (the registrar lists all current bindings). */
function save(aor: string, reply: RawMessage): void {
  const now = Date.now();
  const expiresHeader = Number(reply.get('Expires') ?? '3600');
  let parsed: unknown;
  try { parsed = reply.has('Contact') ? reply.getParsedHeader('Contact') : []; } catch { parsed = []; }
  const contacts = (Array.isArray(parsed) ? parsed as RawNameAddr[] : []).map((c): Contact => {
    const expires = Number(c.params?.['expires'] ?? expiresHeader);
    return { uri: c.uri, expiresAt: now + (Number.isFinite(expires) ? expires : 3600) * 1000 };
  }).filter((c) => c.expiresAt > now);
  if (contacts.length > 0) locations.set(aor, contacts); else locations.delete(aor);
}

function liveContact(aor: string): string | undefined {
  const now = Date.now();
  return locations.get(aor)?.find((c) => c.expiresAt > now)?.uri;
}

/** A new request to `uri` (through `proxy` when given); the UA gets its final response. */
function relay(req: RawRequest, res: RawServerResponse, uri: string, proxy: string | undefined,
  onFinal?: (reply: RawResponse) => void): void {
  const opts: { method: string; headers: Record<string, string>; body?: string; proxy?: string } = {
    method: req.method,
    headers: copyRequestHeaders(req, req.method === 'REGISTER' ? pathUri : undefined),
  };
  if (req.body) opts.body = req.body;
  if (proxy) opts.proxy = proxy;
  srf.request(uri, opts, (err, sent) => {
    if (err) { if (!res.finalResponseSent) res.send(503); return; }
    sent.on('response', (reply) => {
      if (reply.status < 200) return;
      onFinal?.(reply);
      const payload: { headers: Record<string, string>; body?: string } = { headers: replyHeaders(reply) };
      const body = reply.body ?? reply.msg.body;
      if (body) payload.body = body;
      res.send(reply.status, reply.reason, payload);
    });
  });
}

const srf = new SrfClass();
srf.on('connect', (err, hostport) => {
  if (err) { process.stderr.write(`reference-app: drachtio refused us: ${err.message}\n`); return; }
  const first = hostport.split(',').find((a) => a.startsWith('udp/')) ?? hostport.split(',')[0] ?? '';
  const m = /^\w+\/(.+)$/.exec(first);
  pathUri = m ? `sip:${m[1]};lr` : undefined;
  process.stdout.write(`reference connected ${hostport} mode=${mode}\n`);
});
srf.on('error', () => undefined);

srf.use('register', (req, res) => {
  const aor = aorKey(req.get('To') ?? '');
  if (mode === 'relay') {
    relay(req, res, req.uri, upstream, (reply) => { if (reply.status < 300) save(aor, reply); });
    return;
  }
  srf.proxyRequest(req, upstream, {}, (err, result) => {
    const final = result?.finalResponse;
    if (!err && final && final.status >= 200 && final.status < 300) save(aor, final.msg);
  });
});

srf.use('message', (req, res) => {
  const contact = liveContact(aorKey(req.uri));
  if (!contact) { res.send(404); return; }
  if (mode === 'relay') relay(req, res, contact, undefined);
  else srf.proxyRequest(req, contact, {}, () => undefined);
});

srf.connect({ host: '127.0.0.1', port, secret });
const stop = (): void => { srf.disconnect(); process.exit(0); };
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
