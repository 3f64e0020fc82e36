// Calls made of raw SIP, for suites that must see every message of an INVITE transaction: a
// callee that rings and answers (or rings until it is CANCELed), and a caller that sends the
// INVITE, ACKs the 2xx and hangs up along the route set, as RFC 3261 §12–§15 describe. UDP on
// 127.0.0.1 only, with the retransmissions UDP asks for (T1 = 500 ms), each bounded.
import { randomBytes } from 'node:crypto';
import { sipMessage } from '../hostile/corpus.js';
import { headerOf, SipPeer, type Received, type RequestHandler, type SipMessage } from './raw-sip.js';

const T1_MS = 500;
/** Retransmissions of one message at most (RFC 3261 §17: 64·T1 spans 7 doublings). */
const MAX_RETRANSMITS = 7;

const SDP = ['v=0', 'o=- 1 1 IN IP4 127.0.0.1', 's=-', 'c=IN IP4 127.0.0.1', 't=0 0', 'm=audio 40000 RTP/AVP 0', 'a=rtpmap:0 PCMU/8000', ''].join('\r\n');

/** The top Via's branch parameter. */
export function branchOf(msg: Pick<SipMessage, 'headers'>): string | undefined {
  return /;\s*branch=([^;,\s]+)/i.exec(headerOf(msg, 'via') ?? '')?.[1];
}

/** The tag parameter of a From or To value. */
export function tagOf(value: string | undefined): string | undefined {
  return /;\s*tag=([^;,\s]+)/i.exec(value ?? '')?.[1];
}

/** Numeric part and method of CSeq. */
export function cseqOf(msg: Pick<SipMessage, 'headers'>): { seq: number; method: string } {
  const [seq, method] = (headerOf(msg, 'cseq') ?? '').trim().split(/\s+/);
  return { seq: Number(seq), method: method ?? '' };
}

/** Every URI of the message's Record-Route fields, in order (several fields or comma-separated values). */
function recordRoutes(msg: Pick<SipMessage, 'headers'>): string[] {
  return msg.headers.filter(([n]) => n === 'record-route').flatMap(([, v]) => [...v.matchAll(/<[^>]+>/g)].map((m) => m[0]));
}

/**
 * A response to `req` as a UAS builds it (RFC 3261 §8.2.6.2: Via, From, Call-ID, CSeq copied, To
 * with the UAS's tag; §12.1.1: Record-Route copied into responses that establish a dialog).
 */
function responseTo(req: SipMessage, status: number, reason: string, opts: { toTag: string; contact?: string; sdp?: boolean }): Buffer {
  const lines: string[] = [];
  for (const [name, value] of req.headers) {
    if (name === 'via' || name === 'from' || name === 'call-id' || name === 'cseq') lines.push(`${name}: ${value}`);
    else if (name === 'record-route' && status > 100 && status < 300) lines.push(`${name}: ${value}`);
    else if (name === 'to') lines.push(`to: ${value}${tagOf(value) ? '' : `;tag=${opts.toTag}`}`);
  }
  if (opts.contact) lines.push(`Contact: <${opts.contact}>`);
  if (opts.sdp) lines.push('Content-Type: application/sdp');
  return sipMessage(`SIP/2.0 ${status} ${reason}`, lines, opts.sdp ? SDP : '');
}

/**
 * What a callee does with an INVITE: ring at once, then answer 200 once `answerWhen` resolves; or
 * only ring, at once or (`ringWhen`) silent until it resolves — a device slow to respond at all.
 */
export type CalleePlan = { kind: 'answer'; answerWhen: () => Promise<void> } | { kind: 'ring'; ringWhen?: () => Promise<void> };

interface InviteState {
  invite: Received;
  reply: (bytes: Buffer) => void;
  toTag: string;
  final: number | undefined;
  acked: boolean;
}

/**
 * A device's part in a call. Every INVITE gets 180 with the device's tag; with plan 'answer' a
 * 200 with SDP follows when `answerWhen` resolves, retransmitted until the ACK (RFC 3261
 * §13.3.1.4). A CANCEL matching a pending INVITE (same Call-ID and top Via branch, §9.2) gets 200
 * and the INVITE 487, retransmitted until its ACK (§17.2.1); a BYE gets 200. Everything is kept
 * in the device's peer (`received`) for the test to look at.
 */
export class RawCallee {
  private readonly calls = new Map<string, InviteState>();
  private readonly timers = new Set<NodeJS.Timeout>();
  /** The status of each final response this callee sent to an INVITE, in order. */
  readonly finals: number[] = [];
  /** The To tag this callee gave each INVITE, in order. */
  readonly tags: string[] = [];

  constructor(private readonly plan: CalleePlan, private readonly contact: () => string) {}

  /** The handler for RawDevice.open / SipPeer.open. */
  readonly handle: RequestHandler = (req, reply) => {
    const key = `${headerOf(req, 'call-id') ?? ''} ${branchOf(req) ?? ''}`;
    switch (req.method) {
      case 'INVITE': {
        const known = this.calls.get(key);
        if (known) return; // a retransmission: the 180 and any final are (re)sent on their own
        const state: InviteState = { invite: req, reply, toTag: randomBytes(5).toString('hex'), final: undefined, acked: false };
        this.calls.set(key, state);
        this.tags.push(state.toTag);
        const ring = (): void => { if (state.final === undefined) reply(responseTo(req, 180, 'Ringing', { toTag: state.toTag, contact: this.contact() })); };
        if (this.plan.kind === 'ring' && this.plan.ringWhen) this.plan.ringWhen().then(ring, () => undefined);
        else ring();
        if (this.plan.kind === 'answer') {
          this.plan.answerWhen().then(() => this.finish(state, 200, 'OK'), () => undefined);
        }
        return;
      }
      case 'CANCEL': {
        const state = this.calls.get(key);
        // RFC 3261 §9.2: the CANCEL is answered 200 whatever the INVITE's state; a pending INVITE then gets 487.
        reply(responseTo(req, state ? 200 : 481, state ? 'OK' : 'Call/Transaction Does Not Exist', { toTag: state?.toTag ?? 'none' }));
        if (state && state.final === undefined) this.finish(state, 487, 'Request Terminated');
        return;
      }
      case 'ACK': {
        // The ACK of a non-2xx has the INVITE's branch; the ACK of a 2xx is its own transaction (same Call-ID, our tag).
        const callId = headerOf(req, 'call-id');
        const toTag = tagOf(headerOf(req, 'to'));
        for (const state of this.calls.values()) {
          if (headerOf(state.invite, 'call-id') === callId && state.toTag === toTag) state.acked = true;
        }
        return;
      }
      case 'BYE':
        reply(responseTo(req, 200, 'OK', { toTag: tagOf(headerOf(req, 'to')) ?? 'none' }));
        return;
      default:
        reply(responseTo(req, 501, 'Not Implemented', { toTag: 'none' }));
    }
  };

  private finish(state: InviteState, status: number, reason: string): void {
    if (state.final !== undefined) return;
    state.final = status;
    this.finals.push(status);
    const bytes = responseTo(state.invite, status, reason, status === 200 ? { toTag: state.toTag, contact: this.contact(), sdp: true } : { toTag: state.toTag });
    state.reply(bytes);
    let sent = 0;
    const again = (): void => {
      if (state.acked || sent >= MAX_RETRANSMITS) return;
      sent += 1;
      state.reply(bytes);
      this.later(again, Math.min(T1_MS * 2 ** sent, 4000));
    };
    this.later(again, T1_MS);
  }

  /** Whether the final response with this status was ACKed. */
  acked(status: number): boolean {
    return [...this.calls.values()].some((s) => s.final === status && s.acked);
  }

  private later(fn: () => void, ms: number): void {
    const timer = setTimeout(() => { this.timers.delete(timer); fn(); }, ms);
    this.timers.add(timer);
  }

  stop(): void {
    for (const t of this.timers) clearTimeout(t);
    this.timers.clear();
  }
}

/** Sends `bytes` now and again after T1, 2·T1… until `done()` holds, at most MAX_RETRANSMITS times. */
async function sendUntil(peer: SipPeer, port: number, bytes: Buffer, done: () => boolean, timeoutMs: number): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  let next = Date.now() + T1_MS;
  let sent = 0;
  await peer.sendUdp(port, bytes);
  while (!done()) {
    if (Date.now() >= deadline) return false;
    if (Date.now() >= next && sent < MAX_RETRANSMITS) {
      sent += 1;
      next = Date.now() + Math.min(T1_MS * 2 ** sent, 4000);
      await peer.sendUdp(port, bytes);
    }
    await new Promise((r) => setTimeout(r, 10));
  }
  return true;
}

/**
 * A caller on its own UDP port: an INVITE to `targetPort` (the platform), responses collected; the
 * 2xx ACKed and the call hung up along the route set the 2xx gave (RFC 3261 §12.1.2: the
 * Record-Route values in reverse order; loose routing, so each request goes to the first Route).
 */
export class RawCaller {
  private readonly callId = `call-${process.pid}-${Date.now()}-${randomBytes(3).toString('hex')}@127.0.0.1`;
  private readonly fromTag = randomBytes(5).toString('hex');

  private constructor(readonly peer: SipPeer, private readonly from: string, private readonly to: string) {}

  static async open(from: string, to: string): Promise<RawCaller> {
    return new RawCaller(await SipPeer.open(), from, to);
  }

  /** Responses received to this call's INVITE (retransmissions included). */
  inviteResponses(): Received[] {
    return this.peer.received.filter((m) => m.status !== undefined && headerOf(m, 'call-id') === this.callId && cseqOf(m).method === 'INVITE');
  }

  /** Sends the INVITE to 127.0.0.1:targetPort; resolves once it has a final response (or after waitMs). */
  async invite(targetPort: number, waitMs: number): Promise<Received | undefined> {
    const bytes = sipMessage(`INVITE ${this.to} SIP/2.0`, [
      `Via: SIP/2.0/UDP 127.0.0.1:${this.peer.port};branch=z9hG4bK-${randomBytes(6).toString('hex')};rport`, 'Max-Forwards: 70',
      `From: <${this.from}>;tag=${this.fromTag}`, `To: <${this.to}>`, `Call-ID: ${this.callId}`, 'CSeq: 1 INVITE',
      `Contact: <sip:caller@127.0.0.1:${this.peer.port}>`, 'Content-Type: application/sdp',
    ], SDP);
    // Retransmitted until any response (RFC 3261 §17.1.1.2: Timer A stops once the transaction is proceeding).
    await sendUntil(this.peer, targetPort, bytes, () => this.inviteResponses().length > 0, waitMs);
    await this.peer.waitFor(() => this.inviteResponses().some((r) => (r.status ?? 0) >= 200), waitMs);
    return this.inviteResponses().find((r) => (r.status ?? 0) >= 200);
  }

  private inDialog(ok: Received, method: 'ACK' | 'BYE', seq: number): { bytes: Buffer; port: number } {
    const routes = recordRoutes(ok).reverse();
    const target = /<([^>]+)>/.exec(headerOf(ok, 'contact') ?? '')?.[1] ?? '';
    const first = routes[0] ?? `<${target}>`;
    const port = Number(/^<sips?:[^;>]*:(\d+)/i.exec(first)?.[1] ?? '5060');
    return {
      port,
      bytes: sipMessage(`${method} ${target} SIP/2.0`, [
        `Via: SIP/2.0/UDP 127.0.0.1:${this.peer.port};branch=z9hG4bK-${randomBytes(6).toString('hex')};rport`, 'Max-Forwards: 70',
        ...routes.map((r) => `Route: ${r}`),
        `From: <${this.from}>;tag=${this.fromTag}`, `To: ${headerOf(ok, 'to') ?? ''}`, `Call-ID: ${this.callId}`, `CSeq: ${seq} ${method}`,
      ]),
    };
  }

  /** ACKs the 2xx (its own transaction, RFC 3261 §13.2.2.4). */
  async ack(ok: Received): Promise<void> {
    const { bytes, port } = this.inDialog(ok, 'ACK', 1);
    await this.peer.sendUdp(port, bytes);
  }

  /** Hangs up; resolves with the BYE's final status (undefined if none within waitMs). */
  async bye(ok: Received, waitMs: number): Promise<number | undefined> {
    const { bytes, port } = this.inDialog(ok, 'BYE', 2);
    const final = (): Received | undefined => this.peer.received.find((m) => (m.status ?? 0) >= 200 && headerOf(m, 'call-id') === this.callId && cseqOf(m).method === 'BYE');
    await sendUntil(this.peer, port, bytes, () => final() !== undefined, waitMs);
    return final()?.status;
  }

  close(): Promise<void> { return this.peer.close(); }
}
