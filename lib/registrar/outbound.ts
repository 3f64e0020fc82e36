// RFC 5626 (SIP outbound) decisions midreg takes as the edge proxy in front of the registrar.
// Pure functions; the relay applies them.
import type { NameAddr } from '../sip/drachtio.js';

/** Transports whose keep-alive drachtio-server answers (docs/drachtio-findings.md): STUN on UDP, CRLF on TCP. */
const KEEPALIVE_ANSWERED = new Set(['udp', 'tcp']);

/**
 * The REGISTER's Via header as drachtio-srf hands it (repeated fields comma-joined): how many hops
 * it passed (one: it came straight from the UA) and the transport of the top one (the hop into
 * midreg, as the UA or the proxy before midreg wrote it: `ws`/`wss` for a WebSocket client, which
 * drachtio-server reports to its apps as `tcp`).
 */
export function viaHops(via: string | undefined): { count: number; transport: string | undefined } {
  const protocols = [...(via ?? '').matchAll(/SIP\s*\/\s*2\.0\s*\/\s*([A-Za-z0-9-]+)/gi)];
  return { count: protocols.length, transport: protocols[0]?.[1]?.toLowerCase() };
}

/** Whether a REGISTER's Contacts ask for outbound: RFC 5626 §4.2 has the UA add `+sip.instance` and `reg-id`. */
export function asksOutbound(contacts: readonly NameAddr[] | 'star' | 'none'): boolean {
  return Array.isArray(contacts) && contacts.some((c) => c.params['reg-id'] !== undefined && c.params['+sip.instance'] !== undefined);
}

/**
 * midreg's Path URI for one REGISTER. RFC 5626 §5.1 (Processing Register Requests): when an edge
 * proxy receives a REGISTER with a "reg-id" Contact parameter and "is the first hop, as determined
 * by the Via header field, it MUST insert its URI in a Path header field value"; "the first node
 * MUST include an 'ob' URI parameter in its Path header field value. If the edge proxy is not the
 * first SIP node after the UAC it MUST NOT place an 'ob' URI parameter in a Path header field
 * value." The registrar's side, §6: a registrar that is not the first hop applies outbound only
 * when the first Path URI has "ob" (Kamailio's registrar otherwise answers 439 First Hop Lacks
 * Outbound Support, docs/drachtio-findings.md). midreg puts no flow token in the URI (§5.2): a
 * request for the phone comes back with the registered Contact as Request-URI, and the replica
 * holds that binding's flow (its REGISTER's source), which is what a token would carry.
 */
export function pathUriFor(pathUri: string, register: { contacts: readonly NameAddr[] | 'star' | 'none'; viaCount: number }): string {
  if (register.viaCount !== 1 || !asksOutbound(register.contacts) || /;ob(?=[;?]|$)/i.test(pathUri)) return pathUri;
  return `${pathUri};ob`;
}

/**
 * Whether to add `Flow-Timer` to a REGISTER response, and with what value. RFC 5626 §5.4 (Edge
 * Proxy Keep-Alive Handling): "The last proxy to forward a successful registration response to a
 * UA MAY include a Flow-Timer header field if the response contains the outbound option-tag in a
 * Require header field in the response." midreg is that last proxy only when the REGISTER came
 * straight from the UA (one Via), so it may then, even in mirror mode where the rest of the
 * response is the registrar's, unchanged. It does so only when asked (MIDREG_FLOW_TIMER_SEC), only
 * where the registrar accepted outbound (`Require: outbound` in a 2xx), never over a Flow-Timer
 * the registrar set itself, and only over transports whose keep-alive drachtio-server answers: the
 * UA "considers the flow failed" when its keep-alive goes unanswered (§4.4.1), so a Flow-Timer
 * over TLS (no CRLF pong from drachtio-server v0.9.10) or WebSocket (RFC 7118 clients keep the
 * connection with WebSocket pings) would make it re-register for nothing. `transport` is the top
 * Via's (viaHops): drachtio-server reports a WebSocket flow as `tcp`.
 */
export function flowTimerToAdd(input: {
  status: number;
  require: string | undefined;
  existingFlowTimer: string | undefined;
  transport: string;
  /** The REGISTER reached midreg straight from the UA (one Via). */
  firstHop: boolean;
  flowTimerSec: number;
}): number | undefined {
  if (input.flowTimerSec <= 0 || input.status < 200 || input.status >= 300) return undefined;
  if (!input.firstHop || input.existingFlowTimer !== undefined) return undefined;
  const tags = (input.require ?? '').split(',').map((t) => t.trim().toLowerCase());
  if (!tags.includes('outbound')) return undefined;
  if (!KEEPALIVE_ANSWERED.has(input.transport.toLowerCase())) return undefined;
  return input.flowTimerSec;
}
