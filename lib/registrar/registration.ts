// Pure decisions about registrations: what expiry the registrar granted, and how a registrar's
// reply changes the replica of one address-of-record. No I/O here, so it tests without a network.
import type { Insertion } from './contact-insertion.js';
import type { NameAddr, SourceAddress } from '../sip/drachtio.js';

/** RFC 3261 §10.2.1.1: a registrar's default when neither Contact `expires` nor Expires is given. */
export const RFC_DEFAULT_EXPIRES = 3600;
/** RFC 3261 §20.19: "The value of this field is an integral number of seconds (in decimal) between 0 and (2**32)-1". */
export const MAX_EXPIRES = 2 ** 32 - 1;

export interface Binding {
  aor: string;
  contact: string;
  /**
   * Absolute expiry, Unix milliseconds, as the phone sees it: what every lookup uses. In mirror mode
   * the expiry the registrar granted; in contact mode (throttling) min(what the phone asked, what
   * the registrar granted), renewed by refreshes midreg answers itself.
   */
  expiresAt: number;
  /**
   * Contact mode only: when the registration midreg relayed for this binding ends at the registrar
   * (Unix ms). Null in mirror mode and for bindings midreg did not register upstream itself.
   */
  upstreamExpiresAt: number | null;
  /**
   * When midreg tried to de-register this binding upstream after the phone stopped refreshing and
   * the registrar did not accept it (challenged: midreg holds no credentials). The binding then
   * stays known, and answered 480 for, until upstreamExpiresAt. Null otherwise.
   */
  lapsedAt: number | null;
  q: number | null;
  instance: string | null;
  regId: number | null;
  /** Path header of the REGISTER as midreg received it (proxies between the UA and midreg). */
  path: string | null;
  callId: string | null;
  cseq: number | null;
  userAgent: string | null;
  /** Where the REGISTER came from: the way back to a UA behind NAT. Null for bindings midreg never saw registered. */
  source: SourceAddress | null;
  /** With contact insertion: the Contact midreg gave the registrar for this binding, and its key. */
  insertion: Insertion | null;
  /**
   * Several nodes on one Redis store: the SIP URI of the midreg node that holds the phone's flow
   * (its REGISTER came through that node). Requests for the binding go through that node. Absent
   * on one node, and for bindings midreg did not see registered.
   */
  node?: string;
  registeredAt: number;
  updatedAt: number;
}

/** The REGISTER midreg relayed, as far as the replica cares. */
export interface RegisterAttempt {
  aor: string;
  callId: string;
  cseq: number;
  contacts: NameAddr[] | 'star' | 'none';
  path: string | null;
  userAgent: string | null;
  source: SourceAddress;
  /** The node this REGISTER came through (several nodes on one store); absent on one node. */
  node?: string;
}

/** The registrar's final answer to that REGISTER. */
export interface RegistrarAnswer {
  status: number;
  /** The reply's Contacts, as the phone knows them (rewritten ones already mapped back). */
  contacts: NameAddr[];
  expiresHeader: string | undefined;
  /** With contact insertion: what the registrar holds for each phone Contact, by contactKey(). */
  insertions?: ReadonlyMap<string, Insertion>;
  /**
   * Contact mode (throttling): the expiry each Contact of the REGISTER asked for, in seconds, by
   * contactKey(), before midreg raised it to MIDREG_OUTGOING_EXPIRES for the registrar.
   */
  throttle?: { requested: ReadonlyMap<string, number> };
}

/** What the replica currently holds for the AoR. */
export interface ReplicaState {
  bindings: Binding[];
  /** Highest CSeq already applied for this AoR and the attempt's Call-ID, if any. */
  lastCseq: number | undefined;
}

export type ReplicaPlan =
  | { kind: 'save'; aor: string; bindings: Binding[]; added: string[]; refreshed: string[]; removed: string[] }
  | { kind: 'ignore'; reason: 'not-2xx' | 'stale-cseq' };

/**
 * Parse a delta-seconds value. RFC 3261 §10.3 step 7 lets a registrar treat a malformed value
 * as 3600; a value past 2**32-1 is clamped to it (§20.19).
 */
export function parseDeltaSeconds(value: string | undefined): number | undefined {
  if (value === undefined) return undefined;
  const text = value.trim();
  if (text === '') return undefined;
  if (!/^\d+$/.test(text)) return RFC_DEFAULT_EXPIRES;
  const seconds = Number(text);
  return Number.isSafeInteger(seconds) && seconds <= MAX_EXPIRES ? seconds : MAX_EXPIRES;
}

/**
 * The expiry the registrar granted one binding, in seconds. RFC 3261 §10.2.4: the UA learns the
 * expiration "from the 'expires' parameter of the Contact header field" in the 200 OK, or else
 * "from the Expires header field"; neither present means the RFC default.
 */
export function grantedExpiry(contact: NameAddr, replyExpiresHeader: string | undefined): number {
  return parseDeltaSeconds(contact.params['expires'])
    ?? parseDeltaSeconds(replyExpiresHeader)
    ?? RFC_DEFAULT_EXPIRES;
}

/** RFC 3261 §20.10: q is a decimal from 0 to 1; anything else is treated as absent. */
export function parseQ(value: string | undefined): number | null {
  if (value === undefined || !/^\s*(0(\.\d{0,3})?|1(\.0{0,3})?)\s*$/.test(value)) return null;
  return Number(value);
}

function parseRegId(value: string | undefined): number | null {
  return value !== undefined && /^\d{1,9}$/.test(value) ? Number(value) : null;
}

/**
 * The identity of a contact URI for matching the REGISTER's Contacts against the registrar's
 * echo. RFC 3261 §19.1.4: scheme and host compare case-insensitively, and "characters other
 * than those in the 'reserved' set ... are equivalent to their '%' HEX HEX encoding". This
 * matters: drachtio-server unescapes `%2B` to `+` on the way out, so the registrar echoes a
 * different spelling than the UA sent. The stored contact stays the registrar's own string.
 */
export function contactKey(uri: string): string {
  const unescaped = uri.replace(/%([0-9A-Fa-f]{2})/g, (escape, hex: string) => {
    const char = String.fromCharCode(parseInt(hex, 16));
    return /[;/?:@&=+$,<>"#%\s]/.test(char) && char !== '+' ? escape.toUpperCase() : char;
  });
  const match = /^([a-zA-Z][a-zA-Z0-9+.-]*):(?:([^@]*)@)?([^;?]*)(.*)$/.exec(unescaped);
  if (!match) return unescaped;
  const [, scheme = '', user, hostport = '', rest = ''] = match;
  return `${scheme.toLowerCase()}:${user !== undefined ? `${user}@` : ''}${hostport.toLowerCase()}${rest}`;
}

/**
 * Contact mode: the phone-facing and upstream expiry of one binding the registrar listed with
 * `grantedSeconds`. A Contact of this REGISTER gets min(what the phone asked, what the registrar
 * granted): the phone's expiry is never longer than the upstream one. Another binding midreg
 * registered upstream keeps its phone-facing expiry (never past the new upstream one); a binding
 * midreg did not register upstream is mirrored as granted, and never de-registered by midreg.
 */
export function throttledExpiry(
  grantedSeconds: number,
  binding: { kind: 'sent'; requestedSeconds: number | undefined } | { kind: 'other'; before: Binding | undefined },
  now: number,
): { expiresAt: number; upstreamExpiresAt: number | null } {
  const upstreamExpiresAt = now + grantedSeconds * 1000;
  if (binding.kind === 'sent') return { expiresAt: now + Math.min(binding.requestedSeconds ?? grantedSeconds, grantedSeconds) * 1000, upstreamExpiresAt };
  if (binding.before?.upstreamExpiresAt == null) return { expiresAt: upstreamExpiresAt, upstreamExpiresAt: null };
  return { expiresAt: Math.min(binding.before.expiresAt, upstreamExpiresAt), upstreamExpiresAt };
}

/**
 * Turn a registrar's final reply into the new binding set of the AoR.
 *
 * - Only a 2xx changes anything: RFC 3261 §10.3 step 8, the 200 "MUST contain Contact header
 *   field values enumerating all current bindings", so its list is the whole truth for the AoR;
 *   every other status leaves the replica alone (the registrar did not change its bindings).
 * - RFC 3261 §10.3 step 7: for an existing binding with the same Call-ID, "If the value is
 *   higher than that of the existing binding, it MUST update ...; if not, the update MUST be
 *   aborted". A reply to an older CSeq than one already applied is therefore stale.
 */
export function planReplicaUpdate(
  attempt: RegisterAttempt,
  answer: RegistrarAnswer,
  current: ReplicaState,
  now: number,
): ReplicaPlan {
  if (answer.status < 200 || answer.status > 299) return { kind: 'ignore', reason: 'not-2xx' };
  if (current.lastCseq !== undefined && current.lastCseq > attempt.cseq) return { kind: 'ignore', reason: 'stale-cseq' };

  const requested = new Map<string, NameAddr>();
  if (Array.isArray(attempt.contacts)) for (const c of attempt.contacts) requested.set(contactKey(c.uri), c);
  const existing = new Map(current.bindings.map((b) => [contactKey(b.contact), b] as const));

  const next = new Map<string, Binding>();
  for (const contact of answer.contacts) {
    const key = contactKey(contact.uri);
    const seconds = grantedExpiry(contact, answer.expiresHeader);
    if (seconds === 0) { next.delete(key); continue; }
    const sent = requested.get(key);
    const before = existing.get(key);
    const { expiresAt, upstreamExpiresAt } = answer.throttle
      ? throttledExpiry(seconds, sent ? { kind: 'sent', requestedSeconds: answer.throttle.requested.get(key) } : { kind: 'other', before }, now)
      : { expiresAt: now + seconds * 1000, upstreamExpiresAt: null };
    const params = { ...sent?.params, ...contact.params };
    const common = {
      aor: attempt.aor,
      contact: contact.uri,
      expiresAt,
      upstreamExpiresAt,
      lapsedAt: sent ? null : before?.lapsedAt ?? null,
      q: parseQ(params['q']),
      instance: params['+sip.instance'] ?? before?.instance ?? null,
      regId: parseRegId(params['reg-id']) ?? before?.regId ?? null,
      insertion: answer.insertions?.get(key) ?? null,
      registeredAt: before?.registeredAt ?? now,
      updatedAt: now,
    };
    if (sent) {
      // Registered (or refreshed) by this very REGISTER: this is where the UA is now.
      next.set(key, { ...common, path: attempt.path, callId: attempt.callId, cseq: attempt.cseq, userAgent: attempt.userAgent, source: attempt.source, ...(attempt.node !== undefined ? { node: attempt.node } : {}) });
    } else if (before) {
      // Another device of the AoR, still bound upstream: keep what midreg learnt when it registered.
      next.set(key, { ...common, path: before.path, callId: before.callId, cseq: before.cseq, userAgent: before.userAgent, source: before.source, ...(before.node !== undefined ? { node: before.node } : {}) });
    } else {
      // Bound upstream without midreg seeing its REGISTER (registered before midreg, or elsewhere).
      next.set(key, { ...common, path: null, callId: null, cseq: null, userAgent: null, source: null });
    }
  }

  const kept = [...next];
  return {
    kind: 'save',
    aor: attempt.aor,
    bindings: kept.map(([, b]) => b),
    added: kept.filter(([key]) => !existing.has(key)).map(([, b]) => b.contact),
    refreshed: kept.filter(([key]) => existing.has(key)).map(([, b]) => b.contact),
    removed: [...existing].filter(([key]) => !next.has(key)).map(([, b]) => b.contact),
  };
}

export interface ReplicaLimits {
  maxBindingsPerAor: number;
  maxAors: number;
}

export type LimitedPlan =
  | { kind: 'within'; plan: Extract<ReplicaPlan, { kind: 'save' }> }
  | { kind: 'trimmed'; plan: Extract<ReplicaPlan, { kind: 'save' }>; dropped: string[] }
  | { kind: 'refused'; reason: 'max-aors' };

/**
 * Bounds on what the replica keeps, whatever the registrar granted: at most `maxBindingsPerAor`
 * per AoR (those this REGISTER bound first, so the device that just registered always is kept,
 * then the longest-lived), and no new AoR past `maxAors`. The registrar's answer still reaches
 * the UA unchanged; only the replica is bounded.
 */
export function limitPlan(plan: Extract<ReplicaPlan, { kind: 'save' }>, attemptCallId: string, currentAors: number, isNewAor: boolean, limits: ReplicaLimits): LimitedPlan {
  if (isNewAor && plan.bindings.length > 0 && currentAors >= limits.maxAors) return { kind: 'refused', reason: 'max-aors' };
  if (plan.bindings.length <= limits.maxBindingsPerAor) return { kind: 'within', plan };
  const fromThis = (b: Binding): number => (b.callId === attemptCallId ? 1 : 0);
  const ranked = [...plan.bindings].sort((a, b) => fromThis(b) - fromThis(a) || b.expiresAt - a.expiresAt);
  const kept = ranked.slice(0, limits.maxBindingsPerAor);
  const keptKeys = new Set(kept.map((b) => b.contact));
  return {
    kind: 'trimmed',
    plan: { ...plan, bindings: kept, added: plan.added.filter((c) => keptKeys.has(c)), refreshed: plan.refreshed.filter((c) => keptKeys.has(c)) },
    dropped: plan.bindings.filter((b) => !keptKeys.has(b.contact)).map((b) => b.contact),
  };
}
