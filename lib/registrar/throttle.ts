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
 * expiry raised to MIDREG_OUTGOING_EXPIRES (a de-registration, expiry 0, stays one; a longer one
 * stays as long). A REGISTER with no expiry at all gets an Expires header, so the registrar's
 * default does not apply. Never lowering matters after a 423: RFC 3261 §10.2.8, "it MAY retry the
 * registration after making the expiration interval of all contact addresses in the REGISTER
 * request equal to or greater than the expiration interval within the Min-Expires header field"
 * — the phone's retry must reach the registrar as long as it asked, or a registrar whose minimum
 * is above MIDREG_OUTGOING_EXPIRES would answer 423 for ever.
 */
export function raiseExpires(contacts: readonly NameAddr[], expiresHeader: string | undefined, outgoing: number): { contacts: NameAddr[]; expiresHeader: string | undefined } {
  const header = parseDeltaSeconds(expiresHeader);
  const raised = contacts.map((c) => {
    const own = parseDeltaSeconds(c.params['expires']);
    return own === undefined || own === 0 ? c : { uri: c.uri, params: { ...c.params, expires: String(Math.max(own, outgoing)) } };
  });
  const anyContactParam = contacts.some((c) => parseDeltaSeconds(c.params['expires']) !== undefined);
  if (header === 0) return { contacts: raised, expiresHeader };
  if (header !== undefined || !anyContactParam) return { contacts: raised, expiresHeader: String(Math.max(header ?? 0, outgoing)) };
  return { contacts: raised, expiresHeader };
}

/** The longest non-zero expiry a REGISTER asks for any of its Contacts (0 when it asks none). */
export function longestAsked(contacts: RegisterAttempt['contacts'], expiresHeader: string | undefined): number {
  if (contacts === 'star' || contacts === 'none') return 0;
  return contacts.reduce((m, c) => Math.max(m, requestedExpiry(c, expiresHeader) ?? 0), 0);
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

export type RefusalOutcome =
  | { kind: 'none'; why: 'not-a-final-refusal' | 'no-contact' | 'stale-cseq' | 'not-its-binding' }
  | { kind: 'remove'; removed: Binding[]; kept: Binding[] };

/**
 * What the registrar's answer to a relayed REGISTER removes from the replica without a 2xx (both
 * throttling modes). The registrar is obeyed: after a final refusal (isFinalRefusal: an account
 * disabled, 403…) midreg must not go on answering that phone's refreshes itself (contact mode) or
 * forking requests to it (AoR mode), so the bindings this REGISTER was refreshing go: same Call-ID
 * and one of its Contacts (RFC 3261 §10.3 step 7 identifies a binding's updates by Call-ID). A
 * stranger's refused REGISTER naming the phone's Contact under another Call-ID removes nothing, nor
 * does a refusal of an older CSeq than one already applied for the Call-ID (a late answer: §10.3
 * step 7 aborts such an update). Another device of the AoR stays: the registrar accepted it on its
 * own credentials and refused only this REGISTER; its own next relayed refresh learns its fate.
 * `remembered` is the highest CSeq applied for this Call-ID that the store keeps apart from the
 * bindings (lib/registrar/register-sequence.ts).
 */
export function refusalOutcome(attempt: RegisterAttempt, status: number, bindings: readonly Binding[], remembered: number | undefined): RefusalOutcome {
  if (!isFinalRefusal(status)) return { kind: 'none', why: 'not-a-final-refusal' };
  if (!Array.isArray(attempt.contacts) || attempt.contacts.length === 0) return { kind: 'none', why: 'no-contact' };
  const applied = bindings.reduce<number | undefined>((m, b) => (b.callId === attempt.callId && b.cseq !== null && (m === undefined || b.cseq > m) ? b.cseq : m), remembered);
  if (applied !== undefined && applied > attempt.cseq) return { kind: 'none', why: 'stale-cseq' };
  const asked = new Set(attempt.contacts.map((c) => contactKey(c.uri)));
  const mine = (b: Binding): boolean => b.callId === attempt.callId && asked.has(contactKey(b.contact));
  const removed = bindings.filter(mine);
  if (removed.length === 0) return { kind: 'none', why: 'not-its-binding' };
  return { kind: 'remove', removed, kept: bindings.filter((b) => !mine(b)) };
}
