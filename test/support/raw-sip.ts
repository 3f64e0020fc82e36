// A raw SIP peer for hostile-input suites: sends exact bytes (no SIP stack in between) over UDP or
// TCP and collects every message that comes back, with bounded waits. It binds and sends to
// 127.0.0.1 only: targets are given as a port, never as a host. Also the address rewriter that
// makes third-party messages (RFC 4475's, written for example.com / 192.0.2.x) safe to send:
// every host in the header section becomes 127.0.0.1 with a port of the test's own choosing.
import { createSocket, type Socket as UdpSocket } from 'node:dgram';
import { createHash } from 'node:crypto';
import { connect, createServer, type Server, type Socket as TcpSocket } from 'node:net';

/** The only address this module binds to or sends to. */
export const LOOPBACK = '127.0.0.1';

// ---- parsing what comes back (lenient: it only has to read drachtio's and Kamailio's output) ---

const COMPACT: Readonly<Record<string, string>> = {
  i: 'call-id', m: 'contact', e: 'content-encoding', l: 'content-length', c: 'content-type',
  f: 'from', s: 'subject', k: 'supported', t: 'to', v: 'via', o: 'event', u: 'allow-events',
};

export interface SipMessage {
  raw: Buffer;
  startLine: string;
  /** Responses only. */
  status?: number;
  reason?: string;
  /** Requests only. */
  method?: string;
  /** Header fields in order, names lower-cased and compact forms expanded, folded lines joined. */
  headers: Array<[string, string]>;
  body: Buffer;
}

/** The first value of a header field (long or compact name, any case). */
export function headerOf(msg: Pick<SipMessage, 'headers'>, name: string): string | undefined {
  const wanted = name.toLowerCase();
  return msg.headers.find(([n]) => n === wanted)?.[1];
}

/** Parses one SIP message (header section up to the first empty line; body is the rest). */
export function parseSipMessage(raw: Buffer): SipMessage {
  const text = raw.toString('latin1');
  const end = text.indexOf('\r\n\r\n');
  const head = end < 0 ? text : text.slice(0, end);
  const body = end < 0 ? Buffer.alloc(0) : raw.subarray(end + 4);
  const lines = head.split('\r\n');
  const startLine = lines[0] ?? '';
  const headers: Array<[string, string]> = [];
  for (const line of lines.slice(1)) {
    const last = headers[headers.length - 1];
    if (/^[ \t]/.test(line) && last) { last[1] = `${last[1]} ${line.trim()}`; continue; }
    const colon = line.indexOf(':');
    if (colon <= 0) continue;
    const name = line.slice(0, colon).trim().toLowerCase();
    headers.push([COMPACT[name] ?? name, line.slice(colon + 1).trim()]);
  }
  const status = /^SIP\/2\.0 (\d{3})(?: (.*))?$/.exec(startLine);
  if (status) return { raw, startLine, status: Number(status[1]), reason: status[2] ?? '', headers, body };
  return { raw, startLine, method: startLine.split(' ')[0] ?? '', headers, body };
}

/**
 * Splits a TCP byte stream into SIP messages (Content-Length framing, RFC 3261 §18.3). Returns
 * the complete messages and what is left over (an incomplete message, or CRLF keep-alives).
 */
export function splitStream(buf: Buffer): { messages: Buffer[]; rest: Buffer } {
  const messages: Buffer[] = [];
  let offset = 0;
  for (;;) {
    while (offset + 1 < buf.length && buf[offset] === 0x0d && buf[offset + 1] === 0x0a) offset += 2;
    const end = buf.indexOf('\r\n\r\n', offset, 'latin1');
    if (end < 0) break;
    const head = buf.subarray(offset, end).toString('latin1');
    const cl = /^(?:content-length|l)[ \t]*:[ \t]*(\d+)/im.exec(head);
    const total = end + 4 - offset + (cl ? Number(cl[1]) : 0);
    if (offset + total > buf.length) break;
    messages.push(buf.subarray(offset, offset + total));
    offset += total;
  }
  return { messages, rest: buf.subarray(offset) };
}

// ---- the peer -------------------------------------------------------------------------------------

export interface Received extends SipMessage {
  at: number;
  transport: 'udp' | 'tcp';
  /** Remote port it came from. */
  fromPort: number;
}

export interface TcpSend {
  /** Local port of the connection (drachtio-server reports it as the source port). */
  localPort: number;
  /** Whether the peer closed the connection. */
  closed(): boolean;
}

/** How a peer answers requests it receives (e.g. a sink standing in for a UA); undefined = silence. */
export type Answerer = (req: SipMessage) => { status: number; reason: string } | undefined;

/**
 * A peer that plays a UA's part over time (ringing, answering later, CANCEL, ACK): gets every
 * request received, ACK included, and `reply` sends bytes back the way the request came (the same
 * UDP source port, or the same TCP connection), now or later.
 */
export type RequestHandler = (req: Received, reply: (bytes: Buffer) => void) => void;

/** A response to `req` (RFC 3261 §8.2.6: Via, From, To + tag, Call-ID, CSeq copied). */
export function responseTo(req: SipMessage, status: number, reason: string): Buffer {
  const lines = [`SIP/2.0 ${status} ${reason}`];
  for (const [name, value] of req.headers) {
    if (name === 'via' || name === 'from' || name === 'call-id' || name === 'cseq') lines.push(`${name}: ${value}`);
    if (name === 'to') lines.push(`to: ${value}${/;\s*tag=/i.test(value) ? '' : ';tag=rawsip'}`);
  }
  lines.push('Content-Length: 0', '', '');
  return Buffer.from(lines.join('\r\n'), 'latin1');
}

/**
 * One SIP endpoint on 127.0.0.1: a UDP socket and a TCP listener on the same port (so a response
 * sent to the Via sent-by, over either transport, comes back here), plus outgoing TCP connections.
 * Everything received on any of them is kept in `received`.
 */
export class SipPeer {
  readonly received: Received[] = [];
  private readonly conns = new Set<TcpSocket>();

  private constructor(readonly port: number, private readonly udp: UdpSocket, private readonly tcp: Server, private readonly answer: Answerer | undefined, private readonly handle: RequestHandler | undefined) {
    udp.on('message', (raw, rinfo) => {
      const msg = this.keep(raw, 'udp', rinfo.port);
      const send = (bytes: Buffer): void => { this.udp.send(bytes, rinfo.port, LOOPBACK); };
      if (this.handle && msg.method !== undefined) { this.handle(msg, send); return; }
      const reply = this.replyFor(msg);
      if (reply) send(reply);
    });
    tcp.on('connection', (sock) => this.attach(sock));
  }

  /** Binds UDP and TCP on the same free port of 127.0.0.1 (bounded retries). */
  static async open(opts: { answer?: Answerer; handle?: RequestHandler } = {}): Promise<SipPeer> {
    for (let attempt = 0; attempt < 20; attempt++) {
      const udp = createSocket('udp4');
      const port = await new Promise<number>((resolve, reject) => {
        udp.once('error', reject);
        udp.bind(0, LOOPBACK, () => resolve(udp.address().port));
      });
      const tcp = createServer();
      const ok = await new Promise<boolean>((resolve) => {
        tcp.once('error', () => resolve(false));
        tcp.listen(port, LOOPBACK, () => resolve(true));
      });
      if (ok) return new SipPeer(port, udp, tcp, opts.answer, opts.handle);
      await new Promise<void>((resolve) => udp.close(() => resolve()));
    }
    throw new Error('no port free for both UDP and TCP on 127.0.0.1 after 20 attempts');
  }

  private keep(raw: Buffer, transport: 'udp' | 'tcp', fromPort: number): Received {
    const msg: Received = { ...parseSipMessage(Buffer.from(raw)), at: Date.now(), transport, fromPort };
    this.received.push(msg);
    return msg;
  }

  private replyFor(msg: Received): Buffer | undefined {
    if (!this.answer || msg.method === undefined || msg.method === 'ACK') return undefined;
    const verdict = this.answer(msg);
    return verdict ? responseTo(msg, verdict.status, verdict.reason) : undefined;
  }

  private attach(sock: TcpSocket): void {
    this.conns.add(sock);
    let pending: Buffer = Buffer.alloc(0);
    sock.on('data', (chunk: Buffer) => {
      const { messages, rest } = splitStream(Buffer.concat([pending, chunk]));
      pending = Buffer.from(rest);
      for (const m of messages) {
        const msg = this.keep(m, 'tcp', sock.remotePort ?? 0);
        const send = (bytes: Buffer): void => { if (!sock.destroyed) sock.write(bytes); };
        if (this.handle && msg.method !== undefined) { this.handle(msg, send); continue; }
        const reply = this.replyFor(msg);
        if (reply) send(reply);
      }
    });
    sock.on('error', () => undefined);
    sock.on('close', () => this.conns.delete(sock));
  }

  /** Sends one datagram to 127.0.0.1:port. */
  sendUdp(port: number, bytes: Buffer): Promise<void> {
    return new Promise((resolve, reject) => this.udp.send(bytes, port, LOOPBACK, (err) => (err ? reject(err) : resolve())));
  }

  /** Opens a TCP connection to 127.0.0.1:port and writes `bytes`; the connection stays open until close(). */
  async sendTcp(port: number, bytes: Buffer, timeoutMs = 3000): Promise<TcpSend> {
    const sock = connect({ host: LOOPBACK, port });
    let closed = false;
    sock.on('close', () => { closed = true; });
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => { sock.destroy(); reject(new Error(`TCP connect to ${LOOPBACK}:${port} timed out`)); }, timeoutMs);
      sock.once('connect', () => { clearTimeout(timer); resolve(); });
      sock.once('error', (err) => { clearTimeout(timer); reject(err); });
    });
    this.attach(sock);
    const localPort = sock.localPort ?? 0;
    await new Promise<void>((resolve) => sock.write(bytes, () => resolve()));
    return { localPort, closed: () => closed };
  }

  /** Waits until `done(received)` holds or `timeoutMs` passes; resolves with whether it held. */
  async waitFor(done: (received: Received[]) => boolean, timeoutMs: number): Promise<boolean> {
    const deadline = Date.now() + timeoutMs;
    while (!done(this.received)) {
      if (Date.now() >= deadline) return false;
      await new Promise((r) => setTimeout(r, 10));
    }
    return true;
  }

  async close(): Promise<void> {
    for (const sock of this.conns) sock.destroy();
    await new Promise<void>((resolve) => this.udp.close(() => resolve()));
    await new Promise<void>((resolve) => this.tcp.close(() => resolve()));
  }
}

export interface Exchange {
  transport: 'udp' | 'tcp';
  /** Source port drachtio-server saw. */
  sourcePort: number;
  /** Every message received during the exchange, in order. */
  received: Received[];
  /** Status codes of the responses received, in order (retransmissions included). */
  statuses: number[];
  /** For TCP: whether drachtio-server closed the connection. */
  closedByPeer: boolean;
}

export interface SendOptions {
  transport: 'udp' | 'tcp';
  /** Longest wait for a final response. */
  waitMs: number;
  /** How long to keep listening after the first final response (default 100 ms). */
  graceMs?: number;
}

/**
 * Sends `bytes` to 127.0.0.1:targetPort from `peer` and collects what the peer receives until a
 * final response (≥ 200) arrives plus `graceMs`, or `waitMs` with none.
 */
export async function sendAndCollect(peer: SipPeer, targetPort: number, bytes: Buffer, opts: SendOptions): Promise<Exchange> {
  const from = peer.received.length;
  let sourcePort = peer.port;
  let tcp: TcpSend | undefined;
  if (opts.transport === 'udp') await peer.sendUdp(targetPort, bytes);
  else { tcp = await peer.sendTcp(targetPort, bytes); sourcePort = tcp.localPort; }
  const final = await peer.waitFor((r) => r.slice(from).some((m) => (m.status ?? 0) >= 200), opts.waitMs);
  if (final) await new Promise((r) => setTimeout(r, opts.graceMs ?? 100));
  const received = peer.received.slice(from);
  return {
    transport: opts.transport,
    sourcePort,
    received,
    statuses: received.flatMap((m) => (m.status !== undefined ? [m.status] : [])),
    closedByPeer: tcp?.closed() ?? false,
  };
}

/**
 * Like sendAndCollect from a fresh peer, closed afterwards (so late retransmissions of one
 * exchange can never be counted for the next). `build` gets the peer's port for the Via.
 */
export async function exchange(targetPort: number, build: (viaPort: number) => Buffer, opts: SendOptions): Promise<Exchange> {
  const peer = await SipPeer.open();
  try {
    return await sendAndCollect(peer, targetPort, build(peer.port), opts);
  } finally {
    await peer.close();
  }
}

/** The Authorization header answering a Digest challenge (RFC 2617; MD5, optionally qop=auth). */
export function digestAuthorization(challenge: string, creds: { method: string; uri: string; username: string; password: string }): string {
  const param = (name: string): string | undefined => new RegExp(`${name}\\s*=\\s*(?:"([^"]*)"|([^,\\s]+))`, 'i').exec(challenge)?.slice(1).find((v) => v !== undefined);
  const realm = param('realm') ?? '';
  const nonce = param('nonce') ?? '';
  const qop = param('qop')?.split(',').map((q) => q.trim()).includes('auth') ? 'auth' : undefined;
  const md5 = (text: string): string => createHash('md5').update(text, 'latin1').digest('hex');
  const ha1 = md5(`${creds.username}:${realm}:${creds.password}`);
  const ha2 = md5(`${creds.method}:${creds.uri}`);
  const cnonce = 'rawsip0cnonce';
  const response = qop ? md5(`${ha1}:${nonce}:00000001:${cnonce}:${qop}:${ha2}`) : md5(`${ha1}:${nonce}:${ha2}`);
  const opaque = param('opaque');
  return `Digest username="${creds.username}", realm="${realm}", nonce="${nonce}", uri="${creds.uri}", response="${response}", algorithm=MD5`
    + (qop ? `, qop=${qop}, nc=00000001, cnonce="${cnonce}"` : '')
    + (opaque !== undefined ? `, opaque="${opaque}"` : '');
}

// ---- making foreign messages loopback-only --------------------------------------------------------

/**
 * Hosts the RFC 4475 messages (and similar third-party material) name: IPv4 and bracketed IPv6
 * literals, and names under example.com/net/org/edu (plus the RFC's own typo "examle.com" and
 * multi01's "company.com"), each with its port if any. Other dotted words (a User-Agent's
 * "SIPimp.org/0.2.5") are not addresses and stay as they are.
 */
const HOST = /(\[[0-9A-Fa-f:.]+\]|(?<=^|[^\w.]|%40)(?:\d{1,3}\.){3}\d{1,3}(?![\w.])|(?<=^|[^\w.-]|%40)(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?\.)*(?:example\.(?:com|net|org|edu)|examle\.com|company\.com)(?![\w.-]))(:\d{1,5})?/g;
/** Any trace of a foreign name, wherever it stands (the final safety check before sending). */
const FOREIGN_NAME = /(?:example|examle)\.(?:com|net|org|edu)|company\.com/gi;
/** IPv4 literals other than 127.0.0.1 (for SDP bodies). */
const FOREIGN_IPV4 = /(?<=^|[^\w.]|%40)(?!127\.0\.0\.1(?![\w.]))(?:\d{1,3}\.){3}\d{1,3}(?![\w.])/g;

export interface RewritePorts {
  /** Port put into every Via sent-by: where responses must come back (the sender's port). */
  via: number;
  /** Port put into every other URI host (Request-URI, To, From, Contact, Route...): a port where only a sink of the test listens. */
  uri: number;
}

export interface RewriteReport {
  bytes: Buffer;
  /** Host occurrences replaced in header sections. */
  headerRewrites: number;
  /** Bodies changed (SDP addresses) and how Content-Length was adjusted. */
  bodyNotes: string[];
}

function rewriteHosts(text: string, ctx: 'via' | 'uri' | 'plain', ports: RewritePorts, count: { n: number }): string {
  return text.replace(HOST, (_match, _host: string, _port: string | undefined, offset: number) => {
    count.n++;
    const before = text.slice(Math.max(0, offset - 3), offset);
    // A parameter value (received=, maddr=) or an escaped address inside a user part ("%40") is
    // a bare host; so is a Call-ID's host part: no port there.
    if (ctx === 'plain' || before.endsWith('=') || before.toLowerCase() === '%40') return LOOPBACK;
    return `${LOOPBACK}:${ctx === 'via' ? ports.via : ports.uri}`;
  });
}

function rewriteHead(head: string, ports: RewritePorts, count: { n: number }): string {
  const lines = head.split('\r\n');
  let ctx: 'via' | 'uri' | 'plain' = 'uri';
  return lines.map((line, i) => {
    if (i === 0) return rewriteHosts(line, 'uri', ports, count); // Request-URI (a status line has no host)
    if (!/^[ \t]/.test(line)) {
      const name = line.slice(0, Math.max(0, line.indexOf(':'))).trim().toLowerCase();
      ctx = name === 'via' || name === 'v' ? 'via' : name === 'call-id' || name === 'i' ? 'plain' : 'uri';
    }
    return rewriteHosts(line, ctx, ports, count);
  }).join('\r\n');
}

function rewriteOne(text: string, ports: RewritePorts, count: { n: number }, notes: string[]): string {
  const end = text.indexOf('\r\n\r\n');
  if (end < 0) return rewriteHead(text, ports, count);
  let head = rewriteHead(text.slice(0, end), ports, count);
  const rest = text.slice(end + 4);
  const lengths = [...head.matchAll(/^(?:content-length|l)[ \t]*:[ \t]*(\S*)/gim)].map((m) => m[1] ?? '');
  const declared = lengths.length === 1 && /^\d+$/.test(lengths[0] ?? '') ? Number(lengths[0]) : undefined;
  const bodyEnd = declared !== undefined && declared <= rest.length ? declared : rest.length;
  const body = rest.slice(0, bodyEnd);
  const trailing = rest.slice(bodyEnd);
  let newBody = body;
  if (/^(?:content-type|c)[ \t]*:[ \t]*application\/sdp/im.test(head)) newBody = body.replace(FOREIGN_IPV4, LOOPBACK);
  if (newBody !== body) {
    const delta = newBody.length - body.length;
    if (declared !== undefined) {
      head = head.replace(/^((?:content-length|l)[ \t]*:[ \t]*)(\d+)/im, (_m, prefix: string) => `${prefix}${declared + delta}`);
      notes.push(`SDP addresses → 127.0.0.1; Content-Length ${delta === 0 ? `${declared} (same length)` : `${declared} → ${declared + delta}`}`);
    } else {
      notes.push(`SDP addresses → 127.0.0.1; Content-Length ${lengths.length === 0 ? 'absent' : `"${lengths.join('", "')}"`} left as it was`);
    }
  }
  // Octets after the declared body (RFC 4475 dblreq: a second request in the same datagram).
  const lead = /^(?:\r\n)*/.exec(trailing)?.[0] ?? '';
  const more = trailing.slice(lead.length);
  const newTrailing = /\S/.test(more) ? lead + rewriteOne(more, ports, count, notes) : trailing;
  return `${head}\r\n\r\n${newBody}${newTrailing}`;
}

/**
 * Rewrites every host in the header section (and IPv4 literals in SDP bodies, fixing a numeric
 * Content-Length by the same delta) so the message names only 127.0.0.1: Via sent-by gets
 * `ports.via`, other URIs `ports.uri`. Everything else stays byte-exact (latin1 round trip).
 */
export function rewriteForLoopback(raw: Buffer, ports: RewritePorts): RewriteReport {
  const count = { n: 0 };
  const notes: string[] = [];
  const text = rewriteOne(raw.toString('latin1'), ports, count, notes);
  return { bytes: Buffer.from(text, 'latin1'), headerRewrites: count.n, bodyNotes: notes };
}

/** Addresses left in a message that are not 127.0.0.1 with one of `ports` (empty = safe to send). */
export function foreignAddresses(bytes: Buffer, ports: readonly number[]): string[] {
  const text = bytes.toString('latin1');
  const found: string[] = [];
  for (const m of text.matchAll(HOST)) {
    const [all, host, port] = m;
    if (host !== LOOPBACK) found.push(all);
    else if (port !== undefined && !ports.includes(Number(port.slice(1)))) found.push(all);
  }
  for (const m of text.matchAll(FOREIGN_IPV4)) found.push(m[0]);
  for (const m of text.matchAll(FOREIGN_NAME)) found.push(m[0]);
  return [...new Set(found)];
}
