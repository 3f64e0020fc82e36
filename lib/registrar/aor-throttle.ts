// AoR throttling (MIDREG_MODE=aor): the registrar holds one Contact per AoR, midreg's own; midreg
// keeps the AoR's devices and forks the platform's requests to them. Pure functions: what a
// REGISTER may be answered locally, what the registrar is sent, how its answer changes the
// devices and the upstream registration, and the de-registration midreg sends when the last
// device is gone. No I/O here.
//
// The no-bypass rule is the same as contact mode (lib/registrar/throttle.ts): a REGISTER is
// answered locally only when it refreshes a device binding the registrar accepted, by the same
// phone over the same flow, while the upstream registration outlives what it asks for. OpenSIPS'
// mode 2 answered a second device 200 because the AoR was already registered upstream (OpenSIPS
// issue 3193): the second device was never authenticated. Here every new device, new Call-ID,
// other source, changed Contact, de-registration and `Contact: *` reaches the registrar, with
// the Contact rewritten to midreg's AoR Contact; digest does not cover Contact (RFC 2617 §3.2.2:
// the response hashes method and digest-uri), so the device's own credentials still verify.
import { createHash, randomBytes } from 'node:crypto';
import { KEY_PARAM, type SelfAddress } from './contact-insertion.js';
import { contactKey, grantedExpiry, parseQ, RFC_DEFAULT_EXPIRES, type Binding, type RegisterAttempt } from './registration.js';
import { longestAsked, requestedExpiry, throttleDecision, type ThrottleDecision } from './throttle.js';
import type { NameAddr } from '../sip/drachtio.js';

/** What midreg holds at the registrar for one AoR (aor_upstream in the replica). */
export interface AorUpstream {
  aor: string;
  /** midreg's AoR Contact URI as the registrar holds it. */
  contact: string;
  /** The ;ctid= key in it: a request the registrar sends there finds the AoR by it. */
  key: string;
  /** Call-ID and CSeq of the REGISTER the registrar last accepted for it. */
  callId: string;
  cseq: number;
  /** Unix ms: when the registration ends at the registrar. */
  expiresAt: number;
  /** midreg's removal was challenged or refused: kept (requests answered 480) until expiresAt. */
  lapsedAt: number | null;
  updatedAt: number;
}

/** The key of an AoR's Contact: derived from the AoR alone, so every REGISTER of every device presents the same Contact. */
export function aorContactKey(aor: string): string {
  return createHash('sha256').update(`aor\n${aor}`).digest('base64url').slice(0, 22);
}

/** midreg's Contact for an AoR: its own address, the AoR's user (as OpenSIPS mode 2 does), and the key. */
export function aorContactUri(aor: string, self: SelfAddress): string {
  const user = /^sips?:([^@]+)@/i.exec(aor)?.[1];
  const transport = self.transport === 'udp' ? '' : `;transport=${self.transport}`;
  const escaped = user === undefined ? undefined : user.replace(/[^A-Za-z0-9\-_.!~*'()&=+$,;?/]/g, (c) => encodeURIComponent(c));
  return `${self.scheme}:${escaped !== undefined ? `${escaped}@` : ''}${self.hostport};${KEY_PARAM}=${aorContactKey(aor)}${transport}`;
}

/**
 * The throttling decision for AoR mode: the contact-mode rule applied to the AoR's device
 * bindings, with the upstream registration being the AoR's single one (and its lapse).
 */
export function aorThrottleDecision(
  attempt: RegisterAttempt,
  expiresHeader: string | undefined,
  devices: readonly Binding[],
  upstream: AorUpstream | undefined,
  now: number,
  marginSec: number,
): ThrottleDecision {
  const view = devices.map((b) => ({ ...b, upstreamExpiresAt: upstream?.expiresAt ?? null, lapsedAt: upstream?.lapsedAt ?? null }));
  const decision = throttleDecision(attempt, expiresHeader, view, now, marginSec);
  if (decision.kind === 'relay') return decision;
  const binding = devices.find((b) => b.contact === decision.binding.contact) ?? decision.binding;
  return { ...decision, binding };
}

/** Live devices of the AoR once this REGISTER has been applied as it asks. */
function devicesAfter(attempt: RegisterAttempt, expiresHeader: string | undefined, devices: readonly Binding[], now: number): number {
  if (attempt.contacts === 'star') return 0;
  const live = new Set(devices.filter((b) => b.expiresAt > now).map((b) => contactKey(b.contact)));
  if (Array.isArray(attempt.contacts)) {
    for (const c of attempt.contacts) {
      const asked = requestedExpiry(c, expiresHeader) ?? RFC_DEFAULT_EXPIRES;
      if (asked === 0) live.delete(contactKey(c.uri));
      else live.add(contactKey(c.uri));
    }
  }
  return live.size;
}

/**
 * The Contact and Expires the registrar gets for a relayed REGISTER: midreg's AoR Contact only,
 * asking MIDREG_OUTGOING_EXPIRES while a device of the AoR remains, 0 when this REGISTER removes
 * the last one (a de-registration or `Contact: *` of the last device removes the AoR upstream). A
 * query (no Contact) stays a query. Device parameters (+sip.instance, reg-id, q) stay with midreg:
 * the upstream Contact stands for the AoR, not for one device.
 */
export function upstreamRegister(
  attempt: RegisterAttempt,
  expiresHeader: string | undefined,
  devices: readonly Binding[],
  aorContact: string,
  outgoingSec: number,
  now: number,
): { contact: string | undefined; expires: string | undefined; removesAor: boolean } {
  if (attempt.contacts === 'none') return { contact: undefined, expires: undefined, removesAor: false };
  const remaining = devicesAfter(attempt, expiresHeader, devices, now);
  // Never shorter than the device asked: its retry after a 423 (RFC 3261 §10.2.8) carries the
  // registrar's Min-Expires, which may be above MIDREG_OUTGOING_EXPIRES.
  const seconds = remaining > 0 ? Math.max(outgoingSec, longestAsked(attempt.contacts, expiresHeader)) : 0;
  return { contact: `<${aorContact}>;expires=${seconds}`, expires: String(seconds), removesAor: seconds === 0 };
}

export type AorPlan =
  | { kind: 'save'; devices: Binding[]; upstream: AorUpstream | null; added: string[]; removed: string[]; grantedSec: number | undefined }
  | { kind: 'ignore'; reason: 'not-2xx' | 'stale-cseq' };

/**
 * How the registrar's final answer to a relayed REGISTER changes the AoR. Only a 2xx changes
 * anything (RFC 3261 §10.3 step 8: its Contacts are the AoR's bindings at the registrar). The
 * upstream registration is midreg's Contact as the reply lists it (absent or expires=0: gone).
 * The REGISTER is then applied to the devices as RFC 3261 §10.3 steps 6–7 say a registrar would:
 * `*` removes all, expiry 0 removes that Contact, other Contacts are added or updated; a CSeq not
 * higher than one already applied for the Call-ID changes nothing ("the update MUST be aborted").
 * A device's expiry is min(what it asked, what the registrar granted the AoR); no device outlives
 * the upstream registration.
 */
export function planAorUpdate(
  attempt: RegisterAttempt,
  requestExpiresHeader: string | undefined,
  devices: readonly Binding[],
  before: AorUpstream | undefined,
  reply: { status: number; contacts: readonly NameAddr[]; expiresHeader: string | undefined },
  aorContact: string,
  now: number,
): AorPlan {
  if (reply.status < 200 || reply.status > 299) return { kind: 'ignore', reason: 'not-2xx' };
  const last = devices.filter((b) => b.callId === attempt.callId && b.cseq !== null).reduce<number | undefined>((m, b) => (m === undefined || (b.cseq ?? 0) > m ? b.cseq ?? undefined : m), undefined);
  if (last !== undefined && last > attempt.cseq) return { kind: 'ignore', reason: 'stale-cseq' };
  // A query changes no binding (RFC 3261 §10.3 step 6 applies only to Contacts given), and its
  // Call-ID is not the one the registrar keeps for midreg's Contact.
  if (attempt.contacts === 'none') return { kind: 'save', devices: devices.filter((b) => b.expiresAt > now), upstream: before ?? null, added: [], removed: [], grantedSec: undefined };

  const ours = reply.contacts.find((c) => contactKey(c.uri) === contactKey(aorContact));
  const grantedSec = ours ? grantedExpiry(ours, reply.expiresHeader) : undefined;
  const upstreamExpiresAt = grantedSec ? now + grantedSec * 1000 : undefined;
  const upstream: AorUpstream | null = upstreamExpiresAt === undefined ? null : {
    aor: attempt.aor, contact: aorContact, key: before?.key ?? keyIn(aorContact) ?? aorContactKey(attempt.aor),
    callId: attempt.callId, cseq: attempt.cseq, expiresAt: upstreamExpiresAt, lapsedAt: null, updatedAt: now,
  };

  const next = new Map(devices.filter((b) => b.expiresAt > now).map((b) => [contactKey(b.contact), b] as const));
  const existing = new Set(devices.map((b) => contactKey(b.contact)));
  if (attempt.contacts === 'star') next.clear();
  if (Array.isArray(attempt.contacts)) {
    for (const c of attempt.contacts) {
      const key = contactKey(c.uri);
      const asked = requestedExpiry(c, requestExpiresHeader) ?? RFC_DEFAULT_EXPIRES;
      if (asked === 0 || upstreamExpiresAt === undefined) { next.delete(key); continue; }
      const prior = next.get(key) ?? devices.find((b) => contactKey(b.contact) === key);
      const regId = c.params['reg-id'];
      next.set(key, {
        aor: attempt.aor, contact: c.uri, expiresAt: Math.min(now + asked * 1000, upstreamExpiresAt), upstreamExpiresAt: null, lapsedAt: null,
        q: parseQ(c.params['q']), instance: c.params['+sip.instance'] ?? null, regId: regId !== undefined && /^\d{1,9}$/.test(regId) ? Number(regId) : null,
        path: attempt.path, callId: attempt.callId, cseq: attempt.cseq, userAgent: attempt.userAgent, source: attempt.source, insertion: null,
        registeredAt: prior?.registeredAt ?? now, updatedAt: now,
      });
    }
  }
  // Without an upstream registration no device can be reached through the registrar.
  if (upstreamExpiresAt === undefined) next.clear();
  const kept = [...next.values()].map((b) => (upstreamExpiresAt !== undefined && b.expiresAt > upstreamExpiresAt ? { ...b, expiresAt: upstreamExpiresAt } : b));
  const keptKeys = new Set(kept.map((b) => contactKey(b.contact)));
  return {
    kind: 'save', devices: kept, upstream, grantedSec,
    added: kept.filter((b) => !existing.has(contactKey(b.contact))).map((b) => b.contact),
    removed: devices.filter((b) => !keptKeys.has(contactKey(b.contact))).map((b) => b.contact),
  };
}

function keyIn(uri: string): string | undefined {
  return new RegExp(`;${KEY_PARAM}=([A-Za-z0-9_-]{1,64})`, 'i').exec(uri)?.[1];
}

/**
 * The REGISTER that removes an AoR's Contact at the registrar once its last device is gone.
 * RFC 3261 §10.2.2: a binding is removed with "an expiration interval of "0""; §10.3 step 7
 * accepts it only with the binding's Call-ID and a higher CSeq, so midreg uses the Call-ID the
 * registrar last accepted and the CSeq after it.
 */
export function aorDeregistrationRequest(u: AorUpstream, upstreamUri: string): { uri: string; headers: Record<string, string> } {
  return {
    uri: upstreamUri,
    headers: {
      from: `<${u.aor}>;tag=${randomBytes(6).toString('hex')}`,
      to: `<${u.aor}>`,
      'call-id': u.callId,
      cseq: `${u.cseq + 1} REGISTER`,
      contact: `<${u.contact}>;expires=0`,
      expires: '0',
      'user-agent': 'midreg',
    },
  };
}
