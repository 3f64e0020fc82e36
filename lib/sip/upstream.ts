// Talking to the main registrar/platform: which headers cross in each direction, and a bounded
// wait for its answer (drachtio-server's own timer F can leave a transaction unsettled).
import { headerAndBodyBytes, MAX_APP_MESSAGE_BYTES, type OutboundRequest, type SipReply } from './drachtio.js';

export interface UpstreamTarget {
  /** Next hop for everything relayed upstream, as a SIP URI. */
  uri: string;
  timeoutMs: number;
}

/** The size of the request drachtio-server would be handed, in bytes (200 for the start line, Via and Max-Forwards it adds). */
export function outboundBytes(out: OutboundRequest): number {
  return out.method.length + out.uri.length + 200 + (out.nextHop?.length ?? 0) + headerAndBodyBytes(out.headers, out.body);
}

export type UpstreamOutcome =
  | { kind: 'reply'; reply: SipReply; elapsedMs: number }
  | { kind: 'timeout'; elapsedMs: number }
  | { kind: 'unreachable'; error: string; elapsedMs: number }
  | { kind: 'too-large'; bytes: number; elapsedMs: number };

export interface RequestSender {
  request(out: OutboundRequest): Promise<SipReply>;
}

/** Headers that belong to one hop or one transaction; drachtio-server writes its own. */
const HOP_HEADERS = new Set(['via', 'max-forwards', 'content-length', 'record-route', 'route']);
/** Headers of the upstream's reply that describe its transaction, not the answer. */
const REPLY_TRANSACTION_HEADERS = new Set(['via', 'from', 'to', 'call-id', 'cseq', 'content-length', 'record-route', 'max-forwards']);

/** RFC 3261 §16.3 step 2: a request whose Max-Forwards is 0 gets 483 (Too Many Hops). */
export function nextMaxForwards(header: string | undefined): { kind: 'forward'; value: number } | { kind: 'too-many-hops' } | { kind: 'malformed' } {
  if (header === undefined) return { kind: 'forward', value: 70 };
  if (!/^\s*\d{1,3}\s*$/.test(header)) return { kind: 'malformed' };
  const hops = Number(header);
  return hops === 0 ? { kind: 'too-many-hops' } : { kind: 'forward', value: Math.min(hops, 255) - 1 };
}

/**
 * The header set for the relayed request: the UA's end-to-end headers unchanged (From/To with
 * tag, Call-ID and CSeq so the registrar applies its own Call-ID/CSeq rules, Authorization so
 * its digest still verifies), hop headers left to drachtio-server, Max-Forwards decremented, and
 * our Path first when asked (RFC 3327 §5.2: a proxy "MAY add its own URI" at the top of Path).
 */
export function upstreamHeaders(
  incoming: Array<[string, string]>,
  opts: { maxForwards: number; pathUri?: string | undefined },
): Record<string, string> {
  const headers: Record<string, string> = {};
  for (const [name, value] of incoming) {
    if (!HOP_HEADERS.has(name)) headers[name] = value;
  }
  headers['max-forwards'] = String(opts.maxForwards);
  if (headers['contact']?.trim() === '*') {
    // drachtio-server (sofia-sip nta.c outgoing_update_contact) dereferences the Contact URI's
    // host, which is NULL for "*", and crashes on any outgoing request carrying `Contact: *`.
    // Under its compact name (RFC 3261 §7.3.3: "m") drachtio-server passes the header through
    // as an opaque one, so the registrar still receives a valid `Contact: *` and drachtio lives.
    delete headers['contact'];
    headers['m'] = '*';
  }
  if (opts.pathUri) {
    const ours = `<${opts.pathUri}>`;
    headers['path'] = headers['path'] ? `${ours}, ${headers['path']}` : ours;
  }
  return headers;
}

/** The upstream's answer as the UA gets it: every header but the transaction ones, body intact. */
export function replyHeaders(reply: SipReply): Record<string, string> {
  const headers: Record<string, string> = {};
  for (const [name, value] of reply.headers()) {
    if (!REPLY_TRANSACTION_HEADERS.has(name)) headers[name] = value;
  }
  return headers;
}

/** Send upstream and wait at most `timeoutMs` for the final answer. Never rejects. */
export async function askUpstream(sender: RequestSender, out: OutboundRequest, timeoutMs: number, clock: () => number = Date.now): Promise<UpstreamOutcome> {
  const started = clock();
  const bytes = outboundBytes(out);
  if (bytes > MAX_APP_MESSAGE_BYTES) return { kind: 'too-large', bytes, elapsedMs: 0 };
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<UpstreamOutcome>((resolve) => {
    timer = setTimeout(() => resolve({ kind: 'timeout', elapsedMs: clock() - started }), timeoutMs);
  });
  const answer = sender.request(out).then(
    (reply): UpstreamOutcome => ({ kind: 'reply', reply, elapsedMs: clock() - started }),
    (err: unknown): UpstreamOutcome => ({ kind: 'unreachable', error: err instanceof Error ? err.message : String(err), elapsedMs: clock() - started }),
  );
  try {
    return await Promise.race([answer, timeout]);
  } finally {
    clearTimeout(timer);
  }
}
