// A user agent made of one raw SIP socket (test/support/raw-sip.ts SipPeer): REGISTER and MESSAGE
// to midreg as a phone of the stack's domain sends them, from the socket that also answers what
// midreg delivers to it. "open…" users register without credentials (test/kamailio/kamailio.cfg).
import { sipMessage } from '../hostile/corpus.js';
import { sendAndCollect, type SipMessage, type SipPeer } from './raw-sip.js';
import type { Stack } from './stack.js';

let seq = 0;

export interface RawRequestOptions {
  /** MESSAGE: the recipient's user part. */
  to?: string;
  /** REGISTER: Expires (default 120). */
  expires?: number;
  body?: string;
  /** A Date header to send (MESSAGE). */
  date?: string;
  /** REGISTER: parameters after the Contact (e.g. `;+sip.instance="<urn:uuid:…>";reg-id=1`). */
  contactParams?: string;
  /** Extra header lines (e.g. `Supported: outbound, path`). */
  headers?: string[];
}

/** One REGISTER or MESSAGE from `peer` to midreg; the final statuses it got and how long the first took. */
export async function rawRequest(stack: Pick<Stack, 'domain'> & { drachtio: Pick<Stack['drachtio'], 'sipPort'> }, peer: SipPeer, method: 'REGISTER' | 'MESSAGE', user: string, opts: RawRequestOptions = {}): Promise<{ statuses: number[]; ms: number; final: SipMessage | undefined }> {
  const id = `raw-${process.pid}-${seq++}`;
  const domain = stack.domain.uriHost;
  const target = method === 'REGISTER' ? `sip:${domain}` : `sip:${opts.to}@${domain}`;
  const headers = [
    `Via: SIP/2.0/UDP 127.0.0.1:${peer.port};branch=z9hG4bK-${id}`, 'Max-Forwards: 70',
    `From: "${user}" <sip:${user}@${domain}>;tag=${id}`, `To: <sip:${method === 'REGISTER' ? user : opts.to}@${domain}>`,
    `Call-ID: ${id}`, `CSeq: 1 ${method}`,
    ...(method === 'REGISTER' ? [`Contact: <sip:${user}@127.0.0.1:${peer.port}>${opts.contactParams ?? ''}`, `Expires: ${opts.expires ?? 120}`] : ['Content-Type: text/plain']),
    ...(opts.date ? [`Date: ${opts.date}`] : []),
    ...(opts.headers ?? []),
  ];
  const started = Date.now();
  const ex = await sendAndCollect(peer, stack.drachtio.sipPort, sipMessage(`${method} ${target} SIP/2.0`, headers, opts.body ?? ''), { transport: 'udp', waitMs: 5000, graceMs: 0 });
  const final = ex.received.find((m) => (m.status ?? 0) >= 200);
  return { statuses: ex.statuses.filter((s) => s >= 200), ms: (final?.at ?? Date.now()) - started, final };
}
