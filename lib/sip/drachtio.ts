// The one module that imports drachtio-srf. drachtio-srf's own typings are incomplete and partly
// wrong (source_port is a number at runtime, per-method helpers are untyped, `locals: any`), so
// this file describes the small part midreg uses and hands the rest of the code plain typed
// objects: nothing typed `any` leaves this file.
import Srf from 'drachtio-srf';
import registrationParser from 'drachtio-mw-registration-parser';
import { EventEmitter } from 'node:events';
import { Socket } from 'node:net';

// ---- the runtime shapes of drachtio-srf objects, as far as midreg touches them ----------------

interface RawUri {
  scheme?: string;
  user?: string;
  host?: string;
  port?: number;
  params?: Record<string, string | null>;
}
interface RawNameAddr { uri: string; name?: string; params?: Record<string, string | undefined> }
interface RawMessage {
  headers: Record<string, string>;
  body?: string;
  status?: number;
  reason?: string;
  get(name: string): string | undefined;
  has(name: string): boolean;
  getParsedHeader(name: string): unknown;
}
interface RawRequest extends RawMessage {
  method: string;
  uri: string;
  msg: { headers: Record<string, string>; body?: string };
  source_address: string;
  source_port: number;
  protocol: string;
  registration?: { type: 'register' | 'unregister'; expires: number };
  on(event: 'response', listener: (res: RawResponse) => void): void;
  proxy(opts: { destination: string[]; remainInDialog?: boolean; followRedirects?: boolean; forking?: 'simultaneous' | 'sequential' },
    callback: (err: Error | null, result?: RawProxyResult) => void): void;
}
interface RawProxyResult { connected?: boolean; finalStatus?: number }
interface RawResponse extends RawMessage {
  status: number;
  reason: string;
  /** 'network' when the response came over the wire; drachtio-server's own responses say otherwise. */
  source?: string;
  source_address?: string;
  msg: { headers: Record<string, string>; body?: string };
}
interface RawServerResponse {
  finalResponseSent: boolean;
  send(status: number, reason: string | undefined, opts: { headers?: Record<string, string>; body?: string }): void;
}
interface RawSrf {
  connect(opts: { host: string; port: number; secret: string }): void;
  disconnect(): void;
  on(event: 'connect', listener: (err: Error | null, hostport: string) => void): void;
  on(event: 'error' | 'close', listener: (err?: Error) => void): void;
  on(event: 'reconnecting', listener: (opts: { delay: number; attempt: number }) => void): void;
  use(method: string, handler: (req: RawRequest, res: RawServerResponse, next: () => void) => void): void;
  request(uri: string, opts: { method: string; headers: Record<string, string>; body?: string; proxy?: string },
    callback: (err: Error | null, req: RawRequest) => void): void;
}
interface SrfStatic {
  new (): RawSrf;
  parseUri(uri: string): RawUri | undefined;
}
const SrfClass = Srf as unknown as SrfStatic;
type RawMiddleware = (req: RawRequest, res: { send(status: number): void }, next: () => void) => void;
const parseRegistration = registrationParser as unknown as RawMiddleware;

// SIP statuses drachtio-srf's Response#send accepts (it throws on anything else).
import sipStatus from 'sip-status';
const KNOWN_STATUS = sipStatus as unknown as Record<number, string>;

/**
 * The largest SIP message midreg hands drachtio-server, request or response. drachtio-server
 * (v0.9.10, client.cpp) reads what an app sends into a 12,228-byte circular buffer: a bigger
 * frame overwrites its own start and every later frame on that connection is lost, so one large
 * message would silence midreg. The margin covers the frame prefix (ids, next hop).
 */
export const MAX_APP_MESSAGE_BYTES = 11_000;

/** Bytes the header fields and body add to a message midreg hands drachtio-server ("name: value\r\n" each). */
export function headerAndBodyBytes(headers: Record<string, string>, body: string | undefined): number {
  let bytes = Buffer.byteLength(body ?? '', 'utf8');
  for (const [name, value] of Object.entries(headers)) bytes += name.length + Buffer.byteLength(value, 'utf8') + 4;
  return bytes;
}

// ---- the typed surface the rest of midreg sees ------------------------------------------------

export interface SipUri {
  scheme: string;
  user: string | undefined;
  host: string;
  port: number | undefined;
  params: Record<string, string | null>;
}

/** A name-addr header value (To, From, Contact, Path entry) as drachtio-srf parses it. */
export interface NameAddr {
  uri: string;
  /** Header parameters; keys lower-cased, values are strings ('' for a flag), quotes kept. */
  params: Record<string, string>;
}

export interface SourceAddress { address: string; port: number; transport: string }

/** What drachtio-mw-registration-parser concluded about a REGISTER, or why it refused it. */
export type RegistrationParse =
  | { kind: 'parsed'; type: 'register' | 'unregister'; expires: number }
  | { kind: 'refused'; status: number };

export class SipParseError extends Error {
  constructor(readonly header: string, detail: string) {
    super(`cannot parse ${header}: ${detail}`);
  }
}

export interface ProxyOutcome { finalStatus: number | undefined }

export interface SipRequest {
  readonly method: string;
  readonly uri: string;
  readonly source: SourceAddress;
  readonly body: string;
  header(name: string): string | undefined;
  /** Every header as drachtio-srf holds it (lower-cased names; repeated headers comma-joined). */
  headers(): Array<[string, string]>;
  nameAddr(name: 'To' | 'From'): NameAddr;
  /** Contact header: the list, `'star'` for `Contact: *`, or `'none'` when absent. */
  contacts(): NameAddr[] | 'star' | 'none';
  cseq(): { seq: number; method: string };
  registration(): RegistrationParse;
  /**
   * Proxy statefully (drachtio-server owns the transaction, CANCEL, ACK and in-dialog routing).
   * `destination` is the next hop; the Request-URI is kept unless it names drachtio itself.
   * Resolves after drachtio has forwarded the final response.
   */
  proxyTo(destination: string | readonly string[], opts: { recordRoute: boolean }): Promise<ProxyOutcome>;
}

export interface SipReply {
  readonly status: number;
  readonly reason: string;
  readonly body: string;
  header(name: string): string | undefined;
  headers(): Array<[string, string]>;
  contacts(): NameAddr[];
  /**
   * Made by drachtio-server (sofia-sip) itself rather than received from the next hop: the 503 it
   * reports for a transport error (ICMP port unreachable, refused connection), or its 408.
   */
  readonly local?: boolean;
}

export interface SendOptions { reason?: string; headers?: Record<string, string>; body?: string }

export interface SipResponder {
  readonly finalSent: boolean;
  send(status: number, opts?: SendOptions): void;
}

export type RequestHandler = (req: SipRequest, res: SipResponder) => Promise<void>;

export interface OutboundRequest {
  method: string;
  uri: string;
  headers: Record<string, string>;
  body?: string;
  /** Next hop (outbound proxy) as a SIP URI; the Request-URI is left as given. */
  nextHop?: string;
}

export function parseUri(uri: string): SipUri | undefined {
  // RFC 3261 §19.1.4: "comparison of ... scheme ... is case-insensitive"; drachtio-srf's
  // parser only knows the lower-case spelling.
  const raw = SrfClass.parseUri(uri.replace(/^sips?:/i, (scheme) => scheme.toLowerCase()));
  if (!raw || !raw.scheme || raw.host === undefined) return undefined;
  return {
    scheme: raw.scheme,
    user: raw.user === undefined || raw.user === '' ? undefined : raw.user,
    host: raw.host,
    port: raw.port !== undefined && Number.isFinite(raw.port) ? raw.port : undefined,
    params: raw.params ?? {},
  };
}

function toNameAddr(raw: RawNameAddr): NameAddr {
  const params: Record<string, string> = {};
  for (const [key, value] of Object.entries(raw.params ?? {})) params[key.toLowerCase()] = value ?? '';
  return { uri: raw.uri, params };
}

function parsedHeader(msg: RawMessage, name: string): unknown {
  try {
    return msg.getParsedHeader(name);
  } catch (err) {
    throw new SipParseError(name, err instanceof Error ? err.message : String(err));
  }
}

function parseNameAddr(msg: RawMessage, name: string): NameAddr {
  const value = parsedHeader(msg, name) as RawNameAddr | undefined;
  if (!value || typeof value.uri !== 'string' || value.uri === '') throw new SipParseError(name, 'no URI');
  return toNameAddr(value);
}

function parseContacts(msg: RawMessage): NameAddr[] | 'star' | 'none' {
  if (!msg.has('Contact')) return 'none';
  const value = parsedHeader(msg, 'Contact') as RawNameAddr[] | undefined;
  if (!Array.isArray(value) || value.length === 0) throw new SipParseError('Contact', 'empty');
  if (value.length === 1 && value[0]?.uri === '*') return 'star';
  return value.map((entry) => {
    if (typeof entry.uri !== 'string' || entry.uri === '' || entry.uri.startsWith('*')) {
      throw new SipParseError('Contact', `bad entry ${JSON.stringify(entry.uri)}`);
    }
    return toNameAddr(entry);
  });
}

function headerList(msg: { headers: Record<string, string> }): Array<[string, string]> {
  return Object.entries(msg.headers).map(([name, value]) => [name.toLowerCase(), String(value)]);
}

function wrapRequest(req: RawRequest): SipRequest {
  let registration: RegistrationParse | undefined;
  return {
    method: req.method,
    uri: req.uri,
    source: { address: req.source_address, port: Number(req.source_port), transport: String(req.protocol).toLowerCase() },
    body: req.body ?? '',
    header: (name) => req.get(name),
    headers: () => headerList(req.msg),
    nameAddr: (name) => parseNameAddr(req, name),
    contacts: () => parseContacts(req),
    cseq: () => {
      const raw = req.get('CSeq') ?? '';
      const match = /^\s*(\d{1,10})\s+([A-Za-z]+)\s*$/.exec(raw);
      if (!match) throw new SipParseError('CSeq', JSON.stringify(raw));
      return { seq: Number(match[1]), method: String(match[2]) };
    },
    registration: () => {
      if (registration) return registration;
      // The parser answers some RFC-valid REGISTERs (a query without Contact, no expiry given)
      // with 400 itself; we only want its verdict, so it gets a response object that records.
      let refusedWith: number | undefined;
      parseRegistration(req, { send: (status) => { refusedWith = status; } }, () => undefined);
      registration = refusedWith !== undefined || !req.registration
        ? { kind: 'refused', status: refusedWith ?? 400 }
        : { kind: 'parsed', type: req.registration.type, expires: req.registration.expires };
      return registration;
    },
    proxyTo: (destination, opts) => new Promise((resolve, reject) => {
      // Several destinations are forked in parallel (AoR mode: every device of the AoR; drachtio-srf's
      // default would be sequential). drachtio-server forwards the best final response (RFC 3261
      // §16.7 step 6) and, §16.7 step 10, "If the forwarded response was a final response, the proxy
      // MUST generate a CANCEL request for all pending client transactions" — itself, after the
      // first 2xx (proven on the wire, with two flaws in its CANCELs: docs/drachtio-findings.md D9).
      const destinations = typeof destination === 'string' ? [destination] : [...destination];
      req.proxy({ destination: destinations, remainInDialog: opts.recordRoute, followRedirects: false, ...(destinations.length > 1 ? { forking: 'simultaneous' as const } : {}) }, (err, result) => {
        if (err) reject(err);
        else resolve({ finalStatus: result?.finalStatus });
      });
    }),
  };
}

function wrapReply(res: RawResponse): SipReply {
  return {
    status: res.status,
    reason: res.reason,
    body: res.body ?? res.msg.body ?? '',
    header: (name) => res.get(name),
    headers: () => headerList(res.msg),
    contacts: () => {
      const contacts = parseContacts(res);
      return Array.isArray(contacts) ? contacts : [];
    },
    local: res.source !== 'network' || !res.source_address,
  };
}

function wrapResponder(res: RawServerResponse): SipResponder {
  return {
    get finalSent() { return res.finalResponseSent; },
    send(status, opts = {}) {
      // drachtio-srf throws on a status code it has no phrase for (e.g. a vendor 4xx); keep the
      // peer's reason phrase and send the class's base code, which RFC 3261 §8.1.3.2 says a UAC
      // treats identically ("an unrecognized response ... equivalent to the x00 response code").
      const known = status in KNOWN_STATUS;
      const sendStatus = known ? status : Math.floor(status / 100) * 100;
      const payload: { headers?: Record<string, string>; body?: string } = {};
      if (opts.headers) payload.headers = opts.headers;
      if (opts.body) payload.body = opts.body;
      if (headerAndBodyBytes(opts.headers ?? {}, opts.body) > MAX_APP_MESSAGE_BYTES) {
        res.send(500, 'Response Too Large To Relay', {});
        return;
      }
      res.send(sendStatus, opts.reason, payload);
    },
  };
}

export interface EngineEvents {
  connect: [hostport: string];
  disconnect: [reason: string];
}

/** Where drachtio-srf 5.0 keeps its connections to drachtio-server (srf → app → agent → sockets). */
interface SrfInternals { _app?: { client?: { mapServer?: Map<unknown, unknown> } } }
const batchedSockets = new WeakSet<Socket>();

/**
 * drachtio-srf writes every message to drachtio-server with its own socket.write, one syscall
 * each; on loopback that syscall also delivers the segment to drachtio-server, about 25 µs apiece
 * and two per relayed REGISTER (bench/results). Corking the socket until the event loop has run
 * every callback that is ready hands the kernel all of them in one writev. Nothing waits longer
 * than the work already queued in front of it, and the byte stream is unchanged.
 */
function batchWrites(socket: Socket): void {
  if (batchedSockets.has(socket)) return;
  batchedSockets.add(socket);
  const write = socket.write.bind(socket) as (...args: unknown[]) => boolean;
  let corked = false;
  const flush = (): void => {
    corked = false;
    if (!socket.destroyed) socket.uncork();
  };
  socket.write = ((...args: unknown[]): boolean => {
    if (!corked && !socket.destroyed) {
      corked = true;
      socket.cork();
      setImmediate(flush);
    }
    return write(...args);
  }) as Socket['write'];
}

/**
 * The SIP engine: one drachtio-srf connection to drachtio-server. drachtio-srf reconnects by
 * itself when the server goes away; this class reports each state change as an event.
 */
export class SipEngine extends EventEmitter<EngineEvents> {
  private readonly srf: RawSrf = new SrfClass();
  private connectedHostport: string | undefined;

  constructor(private readonly onHandlerError: (err: unknown, req: SipRequest) => void) {
    super();
    this.srf.on('connect', (err, hostport) => {
      if (err) {
        this.emit('disconnect', `authentication failed: ${err.message}`);
        return;
      }
      this.connectedHostport = hostport;
      for (const socket of (this.srf as unknown as SrfInternals)._app?.client?.mapServer?.keys() ?? []) {
        if (socket instanceof Socket) batchWrites(socket);
      }
      this.emit('connect', hostport);
    });
    this.srf.on('close', () => {
      if (this.connectedHostport !== undefined) this.emit('disconnect', 'connection closed');
      this.connectedHostport = undefined;
    });
    // drachtio-srf emits 'error' for a refused connection; it retries on its own.
    this.srf.on('error', () => undefined);
  }

  get connected(): boolean { return this.connectedHostport !== undefined; }

  /** drachtio-server's SIP listen addresses as it announced them, e.g. `udp/127.0.0.1:5060`. */
  get sipAddresses(): string[] {
    return (this.connectedHostport ?? '').split(',').filter((entry) => entry !== '');
  }

  connect(opts: { host: string; port: number; secret: string }): void {
    this.srf.connect(opts);
  }

  disconnect(): void {
    // drachtio-srf asserts on a socket that never connected; there is nothing to close then.
    try { this.srf.disconnect(); } catch { /* never connected */ }
  }

  /**
   * Route one SIP method to a handler. Every handler runs inside the same guard: whatever it
   * throws or rejects with is logged and answered 500 unless a final response already went out
   * (drachtio-srf itself only catches synchronous throws and would leave the request hanging).
   */
  handle(method: string, handler: RequestHandler): void {
    this.srf.use(method.toLowerCase(), (rawReq, rawRes) => {
      const req = wrapRequest(rawReq);
      const res = wrapResponder(rawRes);
      const answer500 = (err: unknown): void => {
        this.onHandlerError(err, req);
        if (!res.finalSent) {
          try { res.send(500); } catch { /* connection gone: nothing left to answer on */ }
        }
      };
      try {
        handler(req, res).catch(answer500);
      } catch (err) {
        answer500(err);
      }
    });
  }

  /** Send a new request; resolves with its final response (provisional ones are skipped). */
  request(out: OutboundRequest): Promise<SipReply> {
    return new Promise((resolve, reject) => {
      const opts: { method: string; headers: Record<string, string>; body?: string; proxy?: string } = {
        method: out.method,
        headers: out.headers,
      };
      if (out.body) opts.body = out.body;
      if (out.nextHop) opts.proxy = out.nextHop;
      try {
        this.srf.request(out.uri, opts, (err, sent) => {
          if (err) { reject(err); return; }
          sent.on('response', (res) => {
            if (res.status >= 200) resolve(wrapReply(res));
          });
        });
      } catch (err) {
        reject(err);
      }
    });
  }
}
