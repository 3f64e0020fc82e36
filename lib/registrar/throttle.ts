// Contact throttling (MIDREG_MODE=contact): which REGISTERs midreg may answer itself, and how a
// relayed one is changed for the registrar. Pure functions: no I/O, tested case by case.
//
// The rule (no authentication bypass): midreg answers a REGISTER itself only when it is a refresh
// of a binding the registrar accepted, by the same phone, over the same flow: same AoR, Call-ID
// and Contact (and +sip.instance / reg-id where present), a higher CSeq, the same source address,
// port and transport, a non-zero expiry, and an upstream registration that outlives what the phone
// asks for plus the margin. Everything else goes to the registrar, which challenges and decides.
import { contactKey, parseDeltaSeconds, type Binding, type RegisterAttempt } from './registration.js';
import type { NameAddr } from '../sip/drachtio.js';

export type ThrottleMode = 'mirror' | 'contact';

export type RelayReason =
  | 'query' | 'star' | 'several-contacts' | 'no-expiry' | 'deregister' | 'new-contact' | 'other-call-id'
  | 'cseq-not-higher' | 'other-source' | 'changed-contact' | 'not-registered-upstream' | 'phone-expired'
  | 'lapsed' | 'upstream-ending';

export type ThrottleDecision =
  | { kind: 'absorb'; binding: Binding; expires: number }
  | { kind: 'relay'; reason: RelayReason };

/**
 * The expiry one Contact of a REGISTER asks for, in seconds. RFC 3261 §10.2.1.1: the "expires"
 * Contact parameter, else the Expires header; neither gives undefined (the registrar's default).
 */
export function requestedExpiry(contact: NameAddr, expiresHeader: string | undefined): number | undefined {
  return parseDeltaSeconds(contact.params['expires']) ?? parseDeltaSeconds(expiresHeader);
}

/** Whether the REGISTER's source is the one the binding was registered from (same flow). */
function sameSource(a: RegisterAttempt['source'], b: Binding['source']): boolean {
  return b !== null && a.address === b.address && a.port === b.port && a.transport.toLowerCase() === b.transport.toLowerCase();
}

function regIdOf(contact: NameAddr): number | null {
  const value = contact.params['reg-id'];
  return value !== undefined && /^\d{1,9}$/.test(value) ? Number(value) : null;
}

/**
 * Whether midreg may answer this REGISTER itself (contact mode), or must relay it. `bindings` are
 * the AoR's stored bindings; `marginSec` is MIDREG_REFRESH_MARGIN_SEC.
 */
export function throttleDecision(
  attempt: RegisterAttempt,
  expiresHeader: string | undefined,
  bindings: readonly Binding[],
  now: number,
  marginSec: number,
): ThrottleDecision {
  const relay = (reason: RelayReason): ThrottleDecision => ({ kind: 'relay', reason });
  if (attempt.contacts === 'none') return relay('query');
  if (attempt.contacts === 'star') return relay('star');
  const [contact, ...more] = attempt.contacts;
  if (contact === undefined || more.length > 0) return relay('several-contacts');
  const asked = requestedExpiry(contact, expiresHeader);
  if (asked === undefined) return relay('no-expiry');
  if (asked === 0) return relay('deregister');
  const key = contactKey(contact.uri);
  const binding = bindings.find((b) => contactKey(b.contact) === key);
  if (!binding) return relay('new-contact');
  // RFC 3261 §10.3 step 7: a binding is updated only by the same Call-ID with a higher CSeq.
  if (binding.callId !== attempt.callId) return relay('other-call-id');
  if (binding.cseq === null || attempt.cseq <= binding.cseq) return relay('cseq-not-higher');
  if (!sameSource(attempt.source, binding.source)) return relay('other-source');
  if ((contact.params['+sip.instance'] ?? null) !== binding.instance || regIdOf(contact) !== binding.regId) return relay('changed-contact');
  if (binding.upstreamExpiresAt === null) return relay('not-registered-upstream');
  if (binding.lapsedAt !== null) return relay('lapsed');
  if (binding.expiresAt <= now) return relay('phone-expired');
  if (binding.upstreamExpiresAt - now < (asked + marginSec) * 1000) return relay('upstream-ending');
  return { kind: 'absorb', binding, expires: asked };
}

/**
 * Contact mode: the REGISTER's Contacts and Expires as the registrar gets them, each non-zero
 * expiry raised to MIDREG_OUTGOING_EXPIRES (a de-registration, expiry 0, stays one). A REGISTER
 * with no expiry at all gets an Expires header, so the registrar's default does not apply.
 */
export function raiseExpires(contacts: readonly NameAddr[], expiresHeader: string | undefined, outgoing: number): { contacts: NameAddr[]; expiresHeader: string | undefined } {
  const header = parseDeltaSeconds(expiresHeader);
  const raised = contacts.map((c) => {
    const own = parseDeltaSeconds(c.params['expires']);
    return own === undefined || own === 0 ? c : { uri: c.uri, params: { ...c.params, expires: String(outgoing) } };
  });
  const anyContactParam = contacts.some((c) => parseDeltaSeconds(c.params['expires']) !== undefined);
  if (header === 0) return { contacts: raised, expiresHeader };
  if (header !== undefined || !anyContactParam) return { contacts: raised, expiresHeader: String(outgoing) };
  return { contacts: raised, expiresHeader };
}

/**
 * RFC 3261 §10.3 step 8: the 200 "MUST contain Contact header field values enumerating all
 * current bindings", each with an "expires" parameter giving its remaining time, plus a Date
 * header. `bindings` are the AoR's bindings after the refresh, as the phone sees them.
 */
export function localAnswerContacts(bindings: readonly Binding[], now: number): string | undefined {
  const live = bindings.filter((b) => b.expiresAt > now);
  if (live.length === 0) return undefined;
  return live.map((b) => {
    const params: string[] = [`expires=${Math.max(1, Math.ceil((b.expiresAt - now) / 1000))}`];
    if (b.q !== null) params.push(`q=${b.q}`);
    if (b.instance !== null) params.push(`+sip.instance=${b.instance}`);
    if (b.regId !== null) params.push(`reg-id=${b.regId}`);
    return `<${b.contact}>;${params.join(';')}`;
  }).join(', ');
}

/**
 * RFC 3261 §21.4: a final refusal of a relayed refresh removes the binding locally: 403, 404,
 * other 4xx except 401/407 (a challenge: the phone retries with credentials) and 423 (Interval
 * Too Brief: the phone retries with a longer expiry), and 6xx. 5xx and 3xx leave it alone.
 */
export function isFinalRefusal(status: number): boolean {
  if (status >= 600 && status < 700) return true;
  return status >= 400 && status < 500 && status !== 401 && status !== 407 && status !== 423;
}
