// RFC 5626 (SIP outbound) decisions midreg takes as the edge proxy in front of the registrar.
// Pure functions; the relay applies them.

/** Transports whose keep-alive drachtio-server answers (docs/drachtio-findings.md): STUN on UDP, CRLF on TCP. */
const KEEPALIVE_ANSWERED = new Set(['udp', 'tcp']);

/**
 * Whether to add `Flow-Timer` to a REGISTER response, and with what value. RFC 5626 §5.4 (Edge
 * Proxy Keep-Alive Handling): "The last proxy to forward a successful registration response to a
 * UA MAY include a Flow-Timer header field if the response contains the outbound option-tag in a
 * Require header field in the response." midreg is that last proxy, so it may, even in mirror mode
 * where the rest of the response is the registrar's, unchanged. It does so only when asked
 * (MIDREG_FLOW_TIMER_SEC), only where the registrar accepted outbound (`Require: outbound` in a
 * 2xx), never over a Flow-Timer the registrar set itself, and only over transports whose
 * keep-alive drachtio-server answers: the UA "considers the flow failed" when its keep-alive goes
 * unanswered (§4.4.1), so a Flow-Timer over TLS (no CRLF pong from drachtio-server v0.9.10) or
 * WebSocket would make it re-register for nothing.
 */
export function flowTimerToAdd(input: {
  status: number;
  require: string | undefined;
  existingFlowTimer: string | undefined;
  transport: string;
  flowTimerSec: number;
}): number | undefined {
  if (input.flowTimerSec <= 0 || input.status < 200 || input.status >= 300) return undefined;
  if (input.existingFlowTimer !== undefined) return undefined;
  const tags = (input.require ?? '').split(',').map((t) => t.trim().toLowerCase());
  if (!tags.includes('outbound')) return undefined;
  if (!KEEPALIVE_ANSWERED.has(input.transport.toLowerCase())) return undefined;
  return input.flowTimerSec;
}
