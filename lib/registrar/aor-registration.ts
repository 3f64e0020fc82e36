// AoR throttling (MIDREG_MODE=aor), the I/O side: answer a device's refresh locally, or relay the
// REGISTER with midreg's AoR Contact and apply the registrar's answer to the devices and to the
// upstream registration (lib/registrar/aor-throttle.ts decides; lib/store keeps).
import type { AorWrite, BindingStore } from '../store/store.js';
import type { Logger } from '../ops/logger.js';
import type { SelfAddress } from './contact-insertion.js';
import { aorContactUri, aorThrottleDecision, planAorUpdate, upstreamRegister } from './aor-throttle.js';
import { isFinalRefusal, localAnswerContacts, refusalOutcome } from './throttle.js';
import { answerRefreshLocally } from './local-answer.js';
import { type Binding, type RegisterAttempt, type ReplicaLimits } from './registration.js';
import type { SipRequest, SipResponder } from '../sip/drachtio.js';
import { askUpstream, replyHeaders, upstreamHeaders, type RequestSender, type UpstreamTarget } from '../sip/upstream.js';

export type AorStore = Pick<BindingStore, 'bindingsOf' | 'absorbRefresh' | 'aorUpstream' | 'updateAor'>;

export interface AorThrottleDeps {
  sender: RequestSender;
  store: AorStore;
  upstream: UpstreamTarget;
  logger: Logger;
  limits: ReplicaLimits;
  counters: { bindings: number; aors: number };
  outgoingExpiresSec: number;
  refreshMarginSec: number;
  /** midreg's own address for the AoR Contact; undefined until drachtio-server announced it. */
  self(): SelfAddress | undefined;
  clock: () => number;
  onRegisterAnswered?(status: number, upstreamMs: number | undefined): void;
  onRegisterAbsorbed?(): void;
  onReplicaWriteFailed?(err: unknown): void;
  onReplicaWritten?(aor: string, bindings: number, transport: string): void;
}

const sourceOf = (a: RegisterAttempt): string => `${a.source.transport}:${a.source.address}:${a.source.port}`;

export async function handleAorRegister(
  deps: AorThrottleDeps,
  req: SipRequest,
  res: SipResponder,
  checked: { attempt: RegisterAttempt; maxForwards: number; upstreamUri: string; kind: string },
): Promise<void> {
  const { attempt } = checked;
  const log = deps.logger;
  const expiresHeader = req.header('Expires');
  let now = deps.clock();
  let relayReason: string;
  try {
    const [devices, upstream] = await Promise.all([deps.store.bindingsOf(attempt.aor), deps.store.aorUpstream(attempt.aor)]);
    const decision = aorThrottleDecision(attempt, expiresHeader, devices, upstream, now, deps.refreshMarginSec);
    if (decision.kind === 'absorb') {
      await answerRefreshLocally(deps, res, { attempt, bindings: devices, binding: decision.binding, expires: decision.expires, upstreamExpiresAt: upstream?.expiresAt, mode: 'aor' }, now);
      return;
    }
    relayReason = decision.reason;
  } catch (err) {
    // A replica that cannot be read answers nothing itself: the registrar decides.
    relayReason = 'replica-unreadable';
    deps.onReplicaWriteFailed?.(err);
  }

  const self = deps.self();
  if (!self) {
    res.send(503, { reason: 'Not Ready', headers: { 'Retry-After': '5' } });
    log.info('REGISTER refused', { event: 'register', decision: 'refused', status: 503, why: 'AoR mode: drachtio-server has not announced its SIP address yet', source: sourceOf(attempt) });
    deps.onRegisterAnswered?.(503, undefined);
    return;
  }
  const aorContact = aorContactUri(attempt.aor, self);
  let devicesBefore: Binding[] = [];
  try { devicesBefore = await deps.store.bindingsOf(attempt.aor); } catch { /* relayed as if the AoR had no device */ }
  const out = upstreamRegister(attempt, expiresHeader, devicesBefore, aorContact, deps.outgoingExpiresSec, now);
  // No Path: midreg's AoR Contact already brings the registrar's requests back to midreg.
  const headers = upstreamHeaders(req.headers(), { maxForwards: checked.maxForwards });
  delete headers['m'];
  delete headers['contact'];
  delete headers['expires'];
  if (out.contact !== undefined) headers['contact'] = out.contact;
  if (out.expires !== undefined) headers['expires'] = out.expires;

  const outcome = await askUpstream(deps.sender, { method: 'REGISTER', uri: checked.upstreamUri, headers, body: req.body, nextHop: deps.upstream.uri }, deps.upstream.timeoutMs, deps.clock);
  const base = {
    event: 'register', mode: 'aor', aor: attempt.aor, callId: attempt.callId, cseq: attempt.cseq, kind: checked.kind,
    source: sourceOf(attempt), relayReason, upstreamContact: aorContact, upstreamExpires: out.expires,
  };
  if (outcome.kind !== 'reply') {
    const status = outcome.kind === 'timeout' ? 408 : outcome.kind === 'too-large' ? 513 : 503;
    log.warn('REGISTER not answered upstream', { ...base, decision: outcome.kind, status, upstreamMs: outcome.elapsedMs });
    if (!res.finalSent) res.send(status, outcome.kind === 'unreachable' ? { reason: 'Upstream Unreachable', headers: { 'Retry-After': '30' } } : {});
    deps.onRegisterAnswered?.(status, outcome.elapsedMs);
    return;
  }
  const { reply } = outcome;
  const is2xx = reply.status >= 200 && reply.status < 300;
  let detail: Record<string, unknown>;
  let facing: string | undefined;
  now = deps.clock();
  type Decided = { detail: Record<string, unknown>; facing: string | undefined; delta: { bindings: number; aors: number }; written: number | undefined };
  try {
    // Read, plan and write in one store operation (lib/store/store.ts): another REGISTER of the AoR
    // answered while this one was upstream is seen, and cannot be undone by this write.
    const decided = await deps.store.updateAor(attempt.aor, attempt.callId, (stored): AorWrite<Decided> => {
      const devices = stored.bindings;
      const before = stored.upstream;
      const plan = planAorUpdate(attempt, expiresHeader, devices, before, { status: reply.status, contacts: is2xx ? reply.contacts() : [], expiresHeader: reply.header('Expires') }, aorContact, now);
      const hadDevices = devices.length > 0;
      // RFC 3261 §10.3 step 7: a reply to an older CSeq of this Call-ID than one already applied
      // (kept in memory, lib/registrar/register-sequence.ts, even after its binding went) is stale.
      if (is2xx && stored.lastCseq !== undefined && stored.lastCseq > attempt.cseq) {
        return { result: { detail: { decision: 'stale-cseq' }, facing: undefined, delta: { bindings: 0, aors: 0 }, written: undefined } };
      }
      if (plan.kind === 'save') {
        let kept = plan.devices;
        const limits: string[] = [];
        if (kept.length > deps.limits.maxBindingsPerAor) {
          // The device that just registered first, then the longest-lived.
          kept = [...kept].sort((a, b) => Number(b.callId === attempt.callId) - Number(a.callId === attempt.callId) || b.expiresAt - a.expiresAt).slice(0, deps.limits.maxBindingsPerAor);
          limits.push(`more than ${deps.limits.maxBindingsPerAor} bindings (MIDREG_MAX_BINDINGS_PER_AOR)`);
        }
        if (!hadDevices && kept.length > 0 && deps.counters.aors >= deps.limits.maxAors) {
          limits.push(`replica full: ${deps.limits.maxAors} AoRs (MIDREG_MAX_AORS)`);
          kept = [];
        }
        return {
          bindings: kept, upstream: plan.upstream, recordCseq: attempt.cseq,
          result: {
            detail: {
              decision: 'saved', devices: kept.map((b) => ({ contact: b.contact, expires: Math.round((b.expiresAt - now) / 1000) })),
              added: plan.added.length, removed: plan.removed.length, upstreamGranted: plan.grantedSec ?? 0, ...(limits.length > 0 ? { limits } : {}),
            },
            facing: localAnswerContacts(kept, now),
            delta: { bindings: kept.length - devices.length, aors: (kept.length > 0 ? 1 : 0) - (hadDevices ? 1 : 0) },
            written: kept.length,
          },
        };
      }
      // The registrar is obeyed: a refused refresh removes that device's own binding, and only it
      // (lib/registrar/throttle.ts refusalOutcome). The AoR's other devices stay, and with them
      // midreg's Contact upstream; once none is left the purge run removes that Contact.
      const refusal = refusalOutcome(attempt, reply.status, devices, stored.lastCseq);
      if (refusal.kind === 'remove') {
        const removed = refusal.removed.length;
        return {
          bindings: refusal.kept,
          result: {
            detail: { decision: plan.reason, refusedRemoved: removed, ...(refusal.kept.length === 0 ? { lastDeviceRefused: true } : {}) }, facing: undefined,
            delta: { bindings: -removed, aors: refusal.kept.length === 0 ? -1 : 0 }, written: refusal.kept.length,
          },
        };
      }
      return { result: { detail: { decision: plan.reason, ...(isFinalRefusal(reply.status) ? { refusedRemoved: 0, why: refusal.why } : {}) }, facing: undefined, delta: { bindings: 0, aors: 0 }, written: undefined } };
    });
    detail = decided.detail;
    facing = decided.facing;
    deps.counters.bindings += decided.delta.bindings;
    deps.counters.aors += decided.delta.aors;
    if (decided.written !== undefined) deps.onReplicaWritten?.(attempt.aor, decided.written, attempt.source.transport);
    if (Array.isArray(detail['limits'])) log.warn('replica limit hit', { ...base, status: reply.status, why: (detail['limits'] as string[]).join('; ') });
  } catch (err) {
    detail = { decision: 'replica-error', error: err instanceof Error ? err.message : String(err) };
    deps.onReplicaWriteFailed?.(err);
  }

  const answerHeaders = replyHeaders(reply);
  if (is2xx) {
    // RFC 3261 §10.3 step 8 as the device sees the AoR: its devices with their own remaining
    // time (never longer than the registrar granted), never midreg's upstream Contact.
    delete answerHeaders['m'];
    delete answerHeaders['contact'];
    delete answerHeaders['expires'];
    if (facing) answerHeaders['contact'] = facing;
    if (!Object.keys(answerHeaders).some((h) => h.toLowerCase() === 'date')) answerHeaders['date'] = new Date(now).toUTCString();
  }
  res.send(reply.status, { reason: reply.reason, headers: answerHeaders, body: reply.body });
  deps.onRegisterAnswered?.(reply.status, outcome.elapsedMs);
  const line = { ...base, status: reply.status, upstreamMs: outcome.elapsedMs, ...detail };
  if (detail['decision'] === 'replica-error') log.error('REGISTER relayed but replica not written', line);
  else log.info('REGISTER relayed', line);
}
