// A phone on ONE connection-oriented socket (TCP or TLS, node:net / node:tls): it registers over
// that connection (answering a digest challenge), sends MESSAGEs on it, and answers what arrives on
// it — and only on it: it listens on no port, like a phone behind NAT that accepts no new
// connection. Everything it receives is kept with the socket it came on, so a test can assert that
// a MESSAGE reached the very connection that registered. Also sends RFC 5626 §4.4.1 CRLF pings.
import { randomUUID } from 'node:crypto';
import { connect as tcpConnect, type Socket } from 'node:net';
import { connect as tlsConnect } from 'node:tls';
import { sipMessage } from '../hostile/corpus.js';
import { digestAuthorization, headerOf, LOOPBACK, parseSipMessage, responseTo, splitStream, type SipMessage } from './raw-sip.js';

export interface StreamReceived extends SipMessage {
  at: number;
  /** Which connection of this UA it came on (1 = the first one opened). */
  connection: number;
}

export interface StreamUaOptions {
  transport: 'tcp' | 'tls';
  port: number;
  user: string;
  /** The AoR host (and the REGISTER Request-URI host): a domain name, or 127.0.0.1:port. */
  domain: string;
  /** Digest password (Kamailio in the tests: "pw-<user>"); undefined for "open…" users. */
  password?: string;
  /** PEM of the server certificate to trust (TLS). */
  ca?: string;
  /**
   * The Contact's host (default 127.0.0.1:<local port>), e.g. a `.invalid` name as WebSocket and
   * many NAT'd clients write (RFC 7118 §5), which says "reach me over my connection only".
   */
  contactHost?: string;
  /** Extra Contact parameters (e.g. `+sip.instance="<urn:uuid:…>";reg-id=1`). */
  contactParams?: string;
  /** Extra REGISTER headers (e.g. `Supported: outbound`). */
  registerHeaders?: string[];
}

export class StreamUa {
  readonly received: StreamReceived[] = [];
  /** CRLF pongs ("\r\n" alone on the wire, RFC 5626 §4.4.1) received. */
  pongs = 0;
  alive = true;
  private socket: Socket | undefined;
  private connections = 0;
  private pending: Buffer = Buffer.alloc(0);
  private cseq = 1;
  private readonly callId = `${randomUUID()}@stream-ua`;
  private readonly tag = randomUUID().slice(0, 8);
  private closed = true;

  private constructor(private readonly opts: StreamUaOptions) {}

  /**
   * How each connection answers a MESSAGE or OPTIONS (by connection number; default 200 OK): e.g.
   * 430 Flow Failed, as an RFC 5626 edge proxy in front of a phone answers for a dead flow.
   */
  readonly answers = new Map<number, { status: number; reason: string }>();

  /** Contact parameters of the next REGISTER (e.g. another reg-id for a second flow). */
  setContactParams(params: string): void { this.opts.contactParams = params; }

  /** Contact host of the next REGISTER (e.g. a `.invalid` name per flow; undefined: 127.0.0.1:<local port>). */
  setContactHost(host: string | undefined): void {
    if (host === undefined) delete this.opts.contactHost;
    else this.opts.contactHost = host;
  }

  static async open(opts: StreamUaOptions): Promise<StreamUa> {
    const ua = new StreamUa(opts);
    await ua.connect();
    return ua;
  }

  get connection(): number { return this.connections; }
  get isClosed(): boolean { return this.closed; }
  get localPort(): number { return this.socket?.localPort ?? 0; }
  get viaTransport(): string { return this.opts.transport.toUpperCase(); }
  get contact(): string {
    return `sip:${this.opts.user}@${this.opts.contactHost ?? `127.0.0.1:${this.localPort}`};transport=${this.opts.transport}`;
  }

  /** Opens a (new) connection; later requests and answers use it. */
  async connect(): Promise<void> {
    const { transport, port, ca } = this.opts;
    const sock = await new Promise<Socket>((resolve, reject) => {
      const s = transport === 'tls'
        ? tlsConnect({ host: LOOPBACK, port, ...(ca ? { ca } : {}) }, () => resolve(s))
        : tcpConnect({ host: LOOPBACK, port }, () => resolve(s));
      s.once('error', reject);
      setTimeout(() => reject(new Error(`${transport} connect to ${port} timed out`)), 5000).unref();
    });
    this.connections += 1;
    const id = this.connections;
    this.socket = sock;
    this.closed = false;
    this.pending = Buffer.alloc(0);
    sock.on('error', () => undefined);
    sock.on('close', () => { if (this.socket === sock) this.closed = true; });
    sock.on('data', (chunk: Buffer) => this.onData(sock, id, chunk));
  }

  private onData(sock: Socket, id: number, chunk: Buffer): void {
    let buf = Buffer.concat([this.pending, chunk]);
    // A pong is CRLF outside any message (RFC 5626 §4.4.1); count and drop them.
    while (buf.length >= 2 && buf[0] === 0x0d && buf[1] === 0x0a) { this.pongs += 1; buf = buf.subarray(2); }
    const { messages, rest } = splitStream(buf);
    this.pending = Buffer.from(rest);
    for (const raw of messages) {
      const msg: StreamReceived = { ...parseSipMessage(Buffer.from(raw)), at: Date.now(), connection: id };
      this.received.push(msg);
      if (msg.method && msg.method !== 'ACK' && this.alive && (msg.method === 'MESSAGE' || msg.method === 'OPTIONS')) {
        const answer = this.answers.get(id) ?? { status: 200, reason: 'OK' };
        sock.write(responseTo(msg, answer.status, answer.reason));
      }
    }
  }

  private write(bytes: Buffer | string): void {
    if (!this.socket || this.closed) throw new Error('connection closed');
    this.socket.write(bytes);
  }

  /** Sends one request; resolves with its final response (or undefined after `waitMs`). */
  private async transact(build: (branch: string, cseq: number, auth: string | undefined) => Buffer, waitMs: number): Promise<StreamReceived | undefined> {
    let auth: string | undefined;
    for (let attempt = 0; attempt < 2; attempt++) {
      const branch = `z9hG4bK-${randomUUID()}`;
      const from = this.received.length;
      this.write(build(branch, this.cseq++, auth));
      const final = await this.waitFor((r) => r.slice(from).find((m) => (m.status ?? 0) >= 200 && headerOf(m, 'Via')?.includes(branch)), waitMs);
      if (!final || (final.status !== 401 && final.status !== 407) || !this.opts.password || attempt > 0) return final;
      const challenge = headerOf(final, final.status === 401 ? 'WWW-Authenticate' : 'Proxy-Authenticate') ?? '';
      const cseqHeader = headerOf(final, 'CSeq') ?? '';
      const method = cseqHeader.split(/\s+/)[1] ?? 'REGISTER';
      const uri = /^(\S+)/.exec(build('x', 0, undefined).toString('latin1').split(' ')[1] ?? '')?.[1] ?? '';
      auth = `${final.status === 401 ? 'Authorization' : 'Proxy-Authorization'}: ${digestAuthorization(challenge, { method, uri, username: this.opts.user, password: this.opts.password })}`;
    }
    return undefined;
  }

  private headers(branch: string, cseq: number, method: string, to: string): string[] {
    return [
      `Via: SIP/2.0/${this.viaTransport} 127.0.0.1:${this.localPort};branch=${branch};rport`, 'Max-Forwards: 70',
      `From: <sip:${this.opts.user}@${this.opts.domain}>;tag=${this.tag}`, `To: <${to}>`,
      `Call-ID: ${this.callId}`, `CSeq: ${cseq} ${method}`,
    ];
  }

  /** REGISTER over the current connection; the final status. */
  async register(expires = 300): Promise<number | undefined> {
    const aor = `sip:${this.opts.user}@${this.opts.domain}`;
    const final = await this.transact((branch, cseq, auth) => sipMessage(`REGISTER sip:${this.opts.domain} SIP/2.0`, [
      ...this.headers(branch, cseq, 'REGISTER', aor),
      `Contact: <${this.contact}>${this.opts.contactParams ?? ''}`, `Expires: ${expires}`,
      ...(this.opts.registerHeaders ?? []), ...(auth ? [auth] : []),
    ]), 5000);
    return final?.status;
  }

  /** The last final response to a REGISTER (for tests that read its headers). */
  lastRegisterReply(): StreamReceived | undefined {
    return this.received.filter((m) => m.status !== undefined && /REGISTER/.test(headerOf(m, 'CSeq') ?? '')).at(-1);
  }

  /** MESSAGE to `user` of the domain over the current connection; the final status. */
  async message(user: string, body: string): Promise<number | undefined> {
    const to = `sip:${user}@${this.opts.domain}`;
    const final = await this.transact((branch, cseq) => sipMessage(`MESSAGE ${to} SIP/2.0`, [
      ...this.headers(branch, cseq, 'MESSAGE', to), 'Content-Type: text/plain',
    ], body), 5000);
    return final?.status;
  }

  /** RFC 5626 §4.4.1: a CRLF "ping" (a double CRLF); resolves with whether a pong came back. */
  async ping(waitMs = 2000): Promise<boolean> {
    const before = this.pongs;
    this.write('\r\n\r\n');
    const deadline = Date.now() + waitMs;
    while (this.pongs === before) {
      if (Date.now() > deadline) return false;
      await new Promise((r) => setTimeout(r, 10));
    }
    return true;
  }

  messages(): StreamReceived[] { return this.received.filter((m) => m.method === 'MESSAGE'); }

  async waitFor<T>(pick: (r: StreamReceived[]) => T | undefined, timeoutMs: number): Promise<T | undefined> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const got = pick(this.received);
      if (got !== undefined) return got;
      if (Date.now() >= deadline) return undefined;
      await new Promise((r) => setTimeout(r, 10));
    }
  }

  /** Closes the connection (FIN; `abort` resets it instead). */
  async close(abort = false): Promise<void> {
    const sock = this.socket;
    if (!sock || this.closed) return;
    await new Promise<void>((resolve) => {
      sock.once('close', () => resolve());
      if (abort) sock.destroy(); else sock.end();
      setTimeout(() => { sock.destroy(); resolve(); }, 1000).unref();
    });
    this.closed = true;
  }
}
