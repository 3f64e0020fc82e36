// A phone made of one raw SIP socket that keeps its registration the way real phones do: one
// Call-ID, a CSeq that only grows, the last credentials sent again with every refresh, and a new
// digest answer when challenged (Kamailio's test password for user U is "pw-U"). Used where a
// test must control Call-ID, CSeq and source port exactly (throttling).
import { sipMessage } from '../hostile/corpus.js';
import { digestAuthorization, headerOf, sendAndCollect, SipPeer, type Answerer, type Received, type RequestHandler } from './raw-sip.js';
import type { Stack } from './stack.js';

let counter = 0;

export interface RegisterResult {
  /** Final statuses, in order (a 401 then the 200 when challenged). */
  finals: number[];
  /** The last final response. */
  last: Received | undefined;
}

export class RawDevice {
  readonly callId: string;
  cseq = 0;
  private authorization: string | undefined;

  private constructor(readonly stack: Stack, readonly user: string, readonly peer: SipPeer) {
    this.callId = `dev-${process.pid}-${Date.now()}-${counter++}@127.0.0.1`;
  }

  /** `answer` answers each request at once; `{ handle }` plays a UA's part over time (test/support/raw-call.ts). */
  static async open(stack: Stack, user: string, answer?: Answerer | { handle: RequestHandler }): Promise<RawDevice> {
    const opts = answer === undefined ? {} : typeof answer === 'function' ? { answer } : { handle: answer.handle };
    return new RawDevice(stack, user, await SipPeer.open(opts));
  }

  get contact(): string { return `sip:${this.user}@127.0.0.1:${this.peer.port}`; }

  /** REGISTER (or a de-registration with expires 0, or `Contact: *`), answering one challenge. */
  async register(expires: number, opts: { star?: boolean } = {}): Promise<RegisterResult> {
    const finals: number[] = [];
    let last: Received | undefined;
    for (let attempt = 0; attempt < 2; attempt++) {
      last = await this.send(expires, opts.star === true);
      finals.push(last?.status ?? 0);
      if (last?.status !== 401) break;
      const challenge = headerOf(last, 'WWW-Authenticate') ?? '';
      this.authorization = digestAuthorization(challenge, { method: 'REGISTER', uri: this.registerUri, username: this.user, password: `pw-${this.user}` });
    }
    return { finals, last };
  }

  private get registerUri(): string { return `sip:${this.stack.domain.uriHost}`; }

  private async send(expires: number, star: boolean): Promise<Received | undefined> {
    this.cseq += 1;
    const domain = this.stack.domain.uriHost;
    const id = `${this.callId.split('@')[0]}-${this.cseq}`;
    const headers = [
      `Via: SIP/2.0/UDP 127.0.0.1:${this.peer.port};branch=z9hG4bK-${id}`, 'Max-Forwards: 70',
      `From: <sip:${this.user}@${domain}>;tag=${id}`, `To: <sip:${this.user}@${domain}>`,
      `Call-ID: ${this.callId}`, `CSeq: ${this.cseq} REGISTER`,
      star ? 'Contact: *' : `Contact: <${this.contact}>`, `Expires: ${star ? 0 : expires}`,
      ...(this.authorization ? [`Authorization: ${this.authorization}`] : []),
    ];
    const ex = await sendAndCollect(this.peer, this.stack.drachtio.sipPort, sipMessage(`REGISTER ${this.registerUri} SIP/2.0`, headers), { transport: 'udp', waitMs: 5000, graceMs: 0 });
    return ex.received.find((m) => (m.status ?? 0) >= 200);
  }

  /** Requests of `method` this device has received. */
  received(method: string): Received[] { return this.peer.received.filter((m) => m.method === method); }

  close(): Promise<void> { return this.peer.close(); }
}
