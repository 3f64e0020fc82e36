// REGISTER: relay to the main registrar, hand its answer back unchanged, and mirror a 2xx into
// the replica. midreg never accepts, rejects or challenges a registration on its own behalf: it
// only refuses what is not a valid REGISTER for a served domain.
import { canonicalAor, isServedDomain } from './aor.js';
import type { AorWrite, BindingStore } from '../store/store.js';
import type { Logger } from '../ops/logger.js';
import { formatContact, mapReplyContacts, rewriteContacts, type MappedContact, type SelfAddress } from './contact-insertion.js';
import { namesMidreg, ownHosts, retargetToUpstream } from '../sip/own-address.js';
import { handleAorRegister, type AorThrottleDeps } from './aor-registration.js';
import { answerRefreshLocally } from './local-answer.js';
import { raiseExpires, refusalOutcome, requestedExpiry, throttleDecision, type RelayReason } from './throttle.js';
import { contactKey, grantedExpiry, limitPlan, planReplicaUpdate, RFC_DEFAULT_EXPIRES, type Binding, type RegisterAttempt, type ReplicaLimits, type ReplicaPlan } from './registration.js';
import { parseUri, SipParseError, type NameAddr, type RequestHandler, type SipReply, type SipRequest, type SipResponder, type SipUri } from '../sip/drachtio.js';
import { flowTimerToAdd, pathUriFor, viaHops } from './outbound.js';
import { askUpstream, nextMaxForwards, replyHeaders, upstreamHeaders, type RequestSender, type UpstreamTarget } from '../sip/upstream.js';

export type ReplicaStore = Pick<BindingStore, 'bindingsOf' | 'updateAor' | 'absorbRefresh'>;

/** Counted as rows change, so nothing on a hot path (or a metrics scrape) runs a COUNT over the table. */
export interface ReplicaCounters { bindings: number; aors: number }

export interface RegisterEvents {
  /** Called once per REGISTER with what the UA was answered (for metrics). */
  onRegisterAnswered?(status: number, upstreamMs: number | undefined): void;
  onReplicaWriteFailed?(err: unknown): void;
  /** Contact mode: a refresh answered 200 by midreg itself, never sent to the registrar. */
  onRegisterAbsorbed?(): void;
  /** A 2xx was written to the replica; `bindings` live bindings of `aor` now. */
  /** `transport`: of the REGISTER whose reply was written (the connection watch skips UDP ones). */
  onReplicaWritten?(aor: string, bindings: number, transport: string): void;
}

export interface RegistrationRelayDeps extends RegisterEvents {
  sender: RequestSender;
  store: ReplicaStore;
  upstream: UpstreamTarget;
  domains: readonly string[];
  /** drachtio-server's SIP addresses as announced (`udp/127.0.0.1:5060`); [] until connected. */
  sipAddresses(): readonly string[];
  /** Our Path URI, or undefined when Path is off or drachtio-server has not told us its address yet. */
  pathUri(): string | undefined;
  /**
   * Contact insertion (MIDREG_INSERTION=contact): midreg's address for the rewritten Contacts, or
   * undefined until drachtio-server has told it. Absent: Contacts are relayed as the phone sent them.
   */
  contactInsertion?: { self(): SelfAddress | undefined };
  /**
   * Contact throttling (MIDREG_MODE=contact): refreshes of accepted bindings are answered by
   * midreg (lib/registrar/throttle.ts), the rest relayed with expiries raised. Absent: mirror mode.
   */
  throttle?: { outgoingExpiresSec: number; refreshMarginSec: number };
  /**
   * AoR throttling (MIDREG_MODE=aor): the registrar gets one Contact per AoR, midreg's own
   * (lib/registrar/aor-registration.ts). Takes precedence over `throttle` and `contactInsertion`.
   */
  aorThrottle?: Pick<AorThrottleDeps, 'outgoingExpiresSec' | 'refreshMarginSec' | 'self'> & { store: AorThrottleDeps['store'] };
  /** Several nodes on one store: this node's SIP URI, recorded as the holder of each binding registered through it. */
  node?: () => string | undefined;
  /** RFC 5626 §5.4: Flow-Timer (seconds) added to 2xx carrying `Require: outbound` (lib/registrar/outbound.ts); 0 or absent = never. */
  flowTimerSec?: number;
  logger: Logger;
  limits: ReplicaLimits;
  /** Bindings and AoRs stored in the replica, kept up to date by every writer. */
  counters: ReplicaCounters;
  clock?: () => number;
}

/** Why a REGISTER is refused before it reaches the registrar. */
type Refusal = { status: number; reason: string; why: string };

type Validated = { kind: 'relay'; attempt: RegisterAttempt; maxForwards: number } | ({ kind: 'refuse' } & Refusal);

function validate(req: SipRequest, ruri: SipUri | undefined): Validated {
  if (!ruri) return { kind: 'refuse', status: 400, reason: 'Bad Request-URI', why: 'unparsable Request-URI' };
  const maxForwards = nextMaxForwards(req.header('Max-Forwards'));
  if (maxForwards.kind === 'too-many-hops') return { kind: 'refuse', status: 483, reason: 'Too Many Hops', why: 'Max-Forwards is 0' };
  if (maxForwards.kind === 'malformed') return { kind: 'refuse', status: 400, reason: 'Bad Max-Forwards', why: 'malformed Max-Forwards' };
  const callId = req.header('Call-ID')?.trim();
  if (!callId) return { kind: 'refuse', status: 400, reason: 'Missing Call-ID', why: 'no Call-ID' };
  try {
    const cseq = req.cseq();
    // RFC 3261 §8.2 / §20.16: the CSeq method must match the request method.
    if (cseq.method.toUpperCase() !== 'REGISTER') return { kind: 'refuse', status: 400, reason: 'CSeq Method Mismatch', why: `CSeq method ${cseq.method}` };
    const to = req.nameAddr('To');
    const toUri = parseUri(to.uri);
    if (!toUri || toUri.user === undefined) return { kind: 'refuse', status: 400, reason: 'Bad To', why: `To is not an address-of-record: ${to.uri}` };
    req.nameAddr('From');
    // drachtio-srf parses `*;expires=0` and `*, <sip:…>` as ordinary contacts, and relaying such a
    // header crashes drachtio-server, so `*` is checked on the raw text. RFC 3261 §10.3 step 6:
    // "*" is valid only alone; §20.10: STAR carries no parameters.
    const rawContact = req.header('Contact');
    if (rawContact !== undefined && /(^|,)\s*\*/.test(rawContact) && rawContact.trim() !== '*') {
      return { kind: 'refuse', status: 400, reason: 'Invalid Contact *', why: `Contact "*" not alone: ${rawContact.slice(0, 80)}` };
    }
    const contacts = req.contacts();
    if (Array.isArray(contacts)) {
      const bad = contacts.find((c) => parseUri(c.uri) === undefined);
      if (bad) return { kind: 'refuse', status: 400, reason: 'Bad Contact', why: `unparsable Contact URI ${bad.uri.slice(0, 80)}` };
    }
    if (contacts === 'star') {
      // RFC 3261 §10.3 step 6: "*" is allowed only with "an Expires header field ... containing
      // a value of zero"; otherwise "the request is invalid, and the server MUST return a 400".
      if (req.header('Expires')?.trim() !== '0') return { kind: 'refuse', status: 400, reason: 'Invalid Contact *', why: 'Contact: * without Expires: 0' };
    }
    return {
      kind: 'relay',
      maxForwards: maxForwards.value,
      attempt: {
        aor: canonicalAor(toUri),
        callId,
        cseq: cseq.seq,
        contacts,
        path: req.header('Path') ?? null,
        userAgent: req.header('User-Agent') ?? null,
        source: req.source,
      },
    };
  } catch (err) {
    if (err instanceof SipParseError) return { kind: 'refuse', status: 400, reason: `Bad ${err.header}`, why: err.message };
    throw err;
  }
}

function registerKind(req: SipRequest, contacts: RegisterAttempt['contacts']): string {
  if (contacts === 'none') return 'query';
  if (contacts === 'star') return 'unregister-all';
  const parsed = req.registration();
  return parsed.kind === 'parsed' ? parsed.type : 'register';
}

/** The highest CSeq of this Call-ID already applied: remembered in memory, or carried by a stored binding. */
function lastAppliedCseq(bindings: readonly { callId: string | null; cseq: number | null }[], attempt: RegisterAttempt, remembered: number | undefined): number | undefined {
  let highest = remembered;
  for (const b of bindings) {
    if (b.callId === attempt.callId && b.cseq !== null && (highest === undefined || b.cseq > highest)) highest = b.cseq;
  }
  return highest;
}

/** The reply's Contacts mapped back to the phones': by this REGISTER's keys, else by a stored binding's. */
function mapToPhone(reply: SipReply, sentByKey: ReadonlyMap<string, NameAddr> | undefined, stored: readonly Binding[]): MappedContact[] {
  return mapReplyContacts(reply.contacts(), (key) => sentByKey?.get(key)?.uri ?? stored.find((b) => b.insertion?.key === key)?.contact);
}

function insertionsOf(mapped: readonly MappedContact[]): Map<string, NonNullable<MappedContact['insertion']>> {
  const insertions = new Map<string, NonNullable<MappedContact['insertion']>>();
  for (const m of mapped) if (m.insertion) insertions.set(contactKey(m.contact.uri), m.insertion);
  return insertions;
}

/**
 * Contact mode: the reply's Contacts as the phone sees them. RFC 3261 §10.2.4: the phone learns
 * its expiry from the "expires" parameter of its Contact in the 200; here that is the
 * phone-facing expiry (min(asked, granted), or the planned binding's), never the upstream one.
 * Contacts already expired for the phone are not listed.
 */
function phoneFacingContacts(contacts: readonly NameAddr[], planned: readonly Binding[] | undefined, requested: ReadonlyMap<string, number>, expiresHeader: string | undefined, now: number): NameAddr[] {
  const byKey = new Map((planned ?? []).map((b) => [contactKey(b.contact), b] as const));
  const out: NameAddr[] = [];
  for (const c of contacts) {
    const key = contactKey(c.uri);
    const granted = grantedExpiry(c, expiresHeader);
    const binding = byKey.get(key);
    const seconds = binding ? Math.ceil((binding.expiresAt - now) / 1000) : Math.min(requested.get(key) ?? granted, granted);
    if (seconds > 0) out.push({ uri: c.uri, params: { ...c.params, expires: String(seconds) } });
  }
  return out;
}

/** What one reply's planner decided (lib/store/store.ts updateAor), for the log and the counters. */
interface Decided {
  plan: ReplicaPlan;
  mapped: MappedContact[] | undefined;
  /** Bindings of the AoR before the write. */
  before: number;
  /** Bindings of the AoR after the write; undefined when nothing was written. */
  written?: number;
  limited?: { why: string; dropped?: string[] };
  refusedRemoved?: number;
}

/** After a failed replica write, writes pause this long so a locked or full database costs one lock wait a second, not one per REGISTER. */
export const REPLICA_RETRY_MS = 1000;

export function createRegisterHandler(deps: RegistrationRelayDeps): RequestHandler {
  const clock = deps.clock ?? Date.now;
  const log = deps.logger;
  let replicaPausedUntil = 0;

  const refuse = (req: SipRequest, res: SipResponder, refusal: Refusal): void => {
    log.info('REGISTER refused', { event: 'register', decision: 'refused', status: refusal.status, why: refusal.why, source: `${req.source.transport}:${req.source.address}:${req.source.port}` });
    res.send(refusal.status, { reason: refusal.reason });
    deps.onRegisterAnswered?.(refusal.status, undefined);
  };

  return async (req, res) => {
    const ruri = parseUri(req.uri);
    const own = { sipAddresses: deps.sipAddresses(), domains: deps.domains };
    if (ruri && !isServedDomain(ruri.host, deps.domains)) {
      const hint = ownHosts(own).includes(ruri.host.toLowerCase()) || ruri.host.toLowerCase() === 'localhost'
        ? ` (it is midreg's own address: list ${ruri.host} in MIDREG_DOMAINS to serve phones provisioned by IP)` : '';
      refuse(req, res, { status: 403, reason: 'Domain Not Served', why: `domain ${ruri.host} is not served${hint}` });
      return;
    }
    const checked = validate(req, ruri);
    if (checked.kind === 'refuse') { refuse(req, res, checked); return; }
    const self = deps.node?.();
    const attempt: RegisterAttempt = self !== undefined ? { ...checked.attempt, node: self } : checked.attempt;
    // A phone provisioned by IP names midreg itself; the registrar gets its own URI instead
    // (lib/sip/own-address.ts). To, From, Call-ID, CSeq, Contact and Authorization stay as the phone
    // sent them, so the AoR is unchanged and the digest `uri` still names what the phone signed.
    const upstreamUri = ruri && namesMidreg(ruri, own) ? retargetToUpstream(ruri, deps.upstream.uri) : req.uri;

    if (deps.aorThrottle) {
      const aor = deps.aorThrottle;
      await handleAorRegister({
        sender: deps.sender, store: aor.store, upstream: deps.upstream, logger: log, limits: deps.limits, counters: deps.counters,
        outgoingExpiresSec: aor.outgoingExpiresSec, refreshMarginSec: aor.refreshMarginSec, self: aor.self, clock,
        ...(deps.onRegisterAnswered ? { onRegisterAnswered: deps.onRegisterAnswered } : {}),
        ...(deps.onRegisterAbsorbed ? { onRegisterAbsorbed: deps.onRegisterAbsorbed } : {}),
        ...(deps.onReplicaWriteFailed ? { onReplicaWriteFailed: deps.onReplicaWriteFailed } : {}),
        ...(deps.onReplicaWritten ? { onReplicaWritten: deps.onReplicaWritten } : {}),
      }, req, res, { attempt, maxForwards: checked.maxForwards, upstreamUri, kind: registerKind(req, attempt.contacts) });
      return;
    }

    const throttle = deps.throttle;
    let throttled: { reason: RelayReason | 'replica-unreadable' } | undefined;
    if (throttle) {
      const now = clock();
      try {
        const bindings = await deps.store.bindingsOf(attempt.aor);
        const decision = throttleDecision(attempt, req.header('Expires'), bindings, now, throttle.refreshMarginSec);
        if (decision.kind === 'absorb') {
          await answerRefreshLocally(deps, res, { attempt, bindings, binding: decision.binding, expires: decision.expires, upstreamExpiresAt: decision.binding.upstreamExpiresAt }, now);
          return;
        }
        throttled = { reason: decision.reason };
      } catch (err) {
        // A replica that cannot be read or written answers nothing itself: the registrar decides.
        throttled = { reason: 'replica-unreadable' };
        deps.onReplicaWriteFailed?.(err);
      }
    }

    const hops = viaHops(req.header('Via'));
    const ownPath = deps.pathUri();
    const headers = upstreamHeaders(req.headers(), {
      maxForwards: checked.maxForwards,
      pathUri: ownPath === undefined ? undefined : pathUriFor(ownPath, { contacts: attempt.contacts, viaCount: hops.count }),
    });
    // Contact mode: what each Contact asked for (the phone's expiry is never longer), and the
    // REGISTER as the registrar gets it: each non-zero expiry raised to MIDREG_OUTGOING_EXPIRES.
    const requested = new Map<string, number>();
    let contactsOut = Array.isArray(attempt.contacts) ? attempt.contacts : undefined;
    if (throttle && contactsOut) {
      for (const c of contactsOut) requested.set(contactKey(c.uri), requestedExpiry(c, req.header('Expires')) ?? RFC_DEFAULT_EXPIRES);
      const raised = raiseExpires(contactsOut, req.header('Expires'), throttle.outgoingExpiresSec);
      contactsOut = raised.contacts;
      if (raised.expiresHeader !== undefined) headers['expires'] = raised.expiresHeader;
      delete headers['m'];
      headers['contact'] = contactsOut.map(formatContact).join(', ');
    }
    // Contacts midreg rewrote for this REGISTER, by key (contact insertion only).
    let sentByKey: ReadonlyMap<string, NameAddr> | undefined;
    if (deps.contactInsertion && contactsOut) {
      const self = deps.contactInsertion.self();
      if (!self) { refuse(req, res, { status: 503, reason: 'Not Ready', why: 'contact insertion: drachtio-server has not announced its SIP address yet' }); return; }
      const rewritten = rewriteContacts(attempt.aor, contactsOut, self);
      delete headers['m'];
      headers['contact'] = rewritten.header;
      sentByKey = rewritten.byKey;
    }

    const outcome = await askUpstream(deps.sender, {
      method: 'REGISTER',
      uri: upstreamUri,
      headers,
      body: req.body,
      nextHop: deps.upstream.uri,
    }, deps.upstream.timeoutMs, clock);

    const base = {
      event: 'register', aor: attempt.aor, callId: attempt.callId, cseq: attempt.cseq, kind: registerKind(req, attempt.contacts),
      source: `${attempt.source.transport}:${attempt.source.address}:${attempt.source.port}`,
      ...(upstreamUri !== req.uri ? { ruri: req.uri, upstreamRuri: upstreamUri } : {}),
      ...(throttled ? { relayReason: throttled.reason } : {}),
    };

    if (outcome.kind === 'too-large') {
      // RFC 3261 §21.5.9: 513 "the message length exceeded its capabilities".
      log.warn('REGISTER refused: too large to relay', { ...base, decision: 'too-large', status: 513, bytes: outcome.bytes });
      res.send(513, { reason: 'Message Too Large' });
      deps.onRegisterAnswered?.(513, undefined);
      return;
    }
    if (outcome.kind !== 'reply') {
      // The UA must never hang: a silent upstream is a 408 (RFC 3261 §16.7 step 6 / §16.8: a
      // proxy "MUST behave as if the client transaction had received a 408"), an unreachable
      // one a 503 so the UA may try another server.
      const status = outcome.kind === 'timeout' ? 408 : 503;
      log.warn('REGISTER not answered upstream', { ...base, decision: outcome.kind, status, upstreamMs: outcome.elapsedMs, ...(outcome.kind === 'unreachable' ? { error: outcome.error } : {}) });
      if (!res.finalSent) res.send(status, outcome.kind === 'timeout' ? { reason: 'Upstream Timeout' } : { reason: 'Upstream Unreachable', headers: { 'Retry-After': '30' } });
      deps.onRegisterAnswered?.(status, outcome.elapsedMs);
      return;
    }

    const { reply } = outcome;
    const is2xx = reply.status >= 200 && reply.status < 300;
    let plan: ReplicaPlan | undefined;
    let replicaError: string | undefined;
    let limited: { why: string; dropped?: string[] } | undefined;
    // The reply's Contacts as the phone knows them (contact insertion and a 2xx only).
    let mapped: MappedContact[] | undefined;
    let refusedRemoved = 0;
    try {
      const now = clock();
      if (now < replicaPausedUntil && is2xx) throw new Error('replica writes paused after a database error');
      // Read, plan and write are one store operation (lib/store/store.ts): another reply for this
      // AoR cannot slip in between. The planner is pure and may run again after a conflict.
      const decided = await deps.store.updateAor(attempt.aor, attempt.callId, (stored): AorWrite<Decided> => {
        const state = { bindings: stored.bindings, lastCseq: lastAppliedCseq(stored.bindings, attempt, stored.lastCseq) };
        const phoneContacts = deps.contactInsertion && is2xx ? mapToPhone(reply, sentByKey, stored.bindings) : undefined;
        const planned = planReplicaUpdate(attempt, {
          status: reply.status,
          contacts: phoneContacts ? phoneContacts.map((m) => m.contact) : is2xx ? reply.contacts() : [],
          expiresHeader: reply.header('Expires'),
          ...(phoneContacts ? { insertions: insertionsOf(phoneContacts) } : {}),
          ...(throttle ? { throttle: { requested } } : {}),
        }, state, now);
        const before = stored.bindings.length;
        if (planned.kind === 'save') {
          const bounded = limitPlan(planned, attempt.callId, deps.counters.aors, before === 0, deps.limits);
          if (bounded.kind === 'refused') {
            return { result: { plan: planned, mapped: phoneContacts, before, limited: { why: `replica full: ${deps.limits.maxAors} AoRs (MIDREG_MAX_AORS)` } } };
          }
          const trimmed = bounded.kind === 'trimmed' ? { why: `more than ${deps.limits.maxBindingsPerAor} bindings (MIDREG_MAX_BINDINGS_PER_AOR)`, dropped: bounded.dropped } : undefined;
          return {
            bindings: bounded.plan.bindings,
            recordCseq: attempt.cseq,
            result: { plan: bounded.plan, mapped: phoneContacts, before, written: bounded.plan.bindings.length, ...(trimmed ? { limited: trimmed } : {}) },
          };
        }
        if (throttle) {
          // The registrar is obeyed: a refused refresh (account disabled: 403…) must not leave a
          // binding midreg would go on refreshing by itself (lib/registrar/throttle.ts refusalOutcome).
          const refusal = refusalOutcome(attempt, reply.status, stored.bindings, stored.lastCseq);
          if (refusal.kind === 'remove') return { bindings: refusal.kept, result: { plan: planned, mapped: phoneContacts, before, written: refusal.kept.length, refusedRemoved: refusal.removed.length } };
        }
        return { result: { plan: planned, mapped: phoneContacts, before } };
      });
      plan = decided.plan;
      mapped = decided.mapped;
      limited = decided.limited;
      refusedRemoved = decided.refusedRemoved ?? 0;
      if (decided.written !== undefined) {
        deps.counters.bindings += decided.written - decided.before;
        deps.counters.aors += (decided.written > 0 ? 1 : 0) - (decided.before > 0 ? 1 : 0);
        deps.onReplicaWritten?.(attempt.aor, decided.written, attempt.source.transport);
      }
    } catch (err) {
      // The UA keeps its service even when the replica cannot be written; the next 2xx for
      // this AoR rewrites the whole binding set, which resynchronises it.
      replicaError = err instanceof Error ? err.message : String(err);
      if (clock() >= replicaPausedUntil) replicaPausedUntil = clock() + REPLICA_RETRY_MS;
      deps.onReplicaWriteFailed?.(err);
    }

    // Written before the UA hears the 200, so a MESSAGE it sends right after already finds it.
    const answerHeaders = replyHeaders(reply);
    if (deps.contactInsertion && is2xx) {
      // RFC 3261 §10.2.4: the phone looks for its own Contact, with its expiry, in the 200.
      const toPhone = mapped ?? mapToPhone(reply, sentByKey, []);
      delete answerHeaders['m'];
      if (toPhone.length > 0) answerHeaders['contact'] = toPhone.map((m) => formatContact(m.contact)).join(', ');
      else delete answerHeaders['contact'];
    }
    if (throttle && is2xx) {
      // The phone is told its own expiry, never the upstream one MIDREG_OUTGOING_EXPIRES asked for.
      const asPhone = mapped ? mapped.map((m) => m.contact) : deps.contactInsertion ? mapToPhone(reply, sentByKey, []).map((m) => m.contact) : reply.contacts();
      const facing = phoneFacingContacts(asPhone, plan?.kind === 'save' ? plan.bindings : undefined, requested, reply.header('Expires'), clock());
      delete answerHeaders['m'];
      delete answerHeaders['expires'];
      if (facing.length > 0) answerHeaders['contact'] = facing.map(formatContact).join(', ');
      else delete answerHeaders['contact'];
    }
    const flowTimer = flowTimerToAdd({
      status: reply.status, require: reply.header('Require'), existingFlowTimer: reply.header('Flow-Timer'),
      transport: hops.transport ?? req.source.transport, firstHop: hops.count === 1, flowTimerSec: deps.flowTimerSec ?? 0,
    });
    if (flowTimer !== undefined) answerHeaders['flow-timer'] = String(flowTimer);
    res.send(reply.status, { reason: reply.reason, headers: answerHeaders, body: reply.body });
    deps.onRegisterAnswered?.(reply.status, outcome.elapsedMs);

    const detail = plan?.kind === 'save'
      ? { decision: 'saved', bindings: plan.bindings.map((b) => ({ contact: b.contact, grantedExpiry: Math.round((b.expiresAt - clock()) / 1000), ...(b.upstreamExpiresAt !== null ? { upstreamExpiry: Math.round((b.upstreamExpiresAt - clock()) / 1000) } : {}), ...(b.insertion ? { upstreamContact: b.insertion.contact } : {}) })), added: plan.added.length, removed: plan.removed.length }
      : { decision: plan ? plan.reason : 'replica-error', ...(refusedRemoved > 0 ? { refusedRemoved } : {}) };
    if (limited) log.warn('replica limit hit', { ...base, status: reply.status, why: limited.why, ...(limited.dropped ? { notKept: limited.dropped } : {}) });
    if (replicaError) log.error('REGISTER relayed but replica not written', { ...base, status: reply.status, upstreamMs: outcome.elapsedMs, error: replicaError });
    else log.info('REGISTER relayed', { ...base, status: reply.status, upstreamMs: outcome.elapsedMs, ...detail });
  };
}
