// Contact throttling: a phone that stopped refreshing is removed at the registrar by midreg. The
// registrar holds the Contact for up to MIDREG_OUTGOING_EXPIRES, the phone only for its own
// expiry; once that passes, midreg sends the registrar the de-registration the phone never will.
import type { BindingStore } from '../store/store.js';
import type { Logger } from '../ops/logger.js';
import type { Binding } from './registration.js';
import { askUpstream, type RequestSender, type UpstreamTarget } from '../sip/upstream.js';
import { randomBytes } from 'node:crypto';
import { aorDeregistrationRequest } from './aor-throttle.js';

export const DEREGISTRATION_RESULTS = ['ok', 'challenged', 'refused', 'timeout', 'unreachable'] as const;
export type DeregistrationResult = (typeof DEREGISTRATION_RESULTS)[number];

/** At most this many de-registrations per run of the periodic job (MIDREG_PURGE_INTERVAL_SEC). */
export const DEREGISTRATIONS_PER_RUN = 100;

export interface DeregistrationDeps {
  sender: RequestSender;
  store: Pick<BindingStore, 'pendingDeregistrations' | 'markLapsed' | 'deleteIfUnchanged'>;
  upstream: UpstreamTarget;
  logger: Logger;
  /** Several nodes on one store: whether this node de-registers a binding (it holds it, or its holder is gone). */
  handles?: (binding: Binding) => boolean;
  /** A binding was deleted from the replica (de-registered upstream): `emptied` when it was the AoR's last. */
  onRemoved?(emptied: boolean): void;
  onResult?(result: DeregistrationResult): void;
}

/** What a de-registration answer means for the binding. */
export function classifyDeregistration(status: number): DeregistrationResult {
  if (status >= 200 && status < 300) return 'ok';
  if (status === 401 || status === 407) return 'challenged';
  return 'refused';
}

/**
 * The REGISTER that removes one binding at the registrar. RFC 3261 §10.2.2: a UA removes a
 * binding with "an expiration interval of "0" for that contact address"; §10.3 step 7 accepts it
 * only with the binding's Call-ID and a higher CSeq, so midreg uses the phone's Call-ID and the
 * CSeq after the last one it saw. The Contact is the one the registrar holds (midreg's own, with
 * contact insertion).
 */
export function deregistrationRequest(b: Binding, upstreamUri: string): { uri: string; headers: Record<string, string> } {
  const contact = b.insertion?.contact ?? b.contact;
  return {
    uri: upstreamUri,
    headers: {
      from: `<${b.aor}>;tag=${randomBytes(6).toString('hex')}`,
      to: `<${b.aor}>`,
      'call-id': b.callId ?? '',
      cseq: `${(b.cseq ?? 0) + 1} REGISTER`,
      contact: `<${contact}>;expires=0`,
      expires: '0',
      'user-agent': 'midreg',
    },
  };
}

/**
 * One run: de-register upstream up to `limit` bindings expired for their phone but still
 * registered there (contact mode). A 2xx removes the binding; a challenge or refusal keeps it,
 * lapsed, until its upstream expiry (requests for it are answered 480); no answer leaves it for
 * the next run. Resolves with how many were tried.
 */
export async function deregisterLapsed(deps: DeregistrationDeps, now: number, limit = DEREGISTRATIONS_PER_RUN): Promise<number> {
  const pending = (await deps.store.pendingDeregistrations(now, limit)).filter((b) => b.callId !== null && (deps.handles?.(b) ?? true));
  await Promise.all(pending.map((b) => deregisterOne(deps, b, now, 'its phone stopped refreshing')));
  return pending.length;
}

/**
 * De-register one binding upstream now (`why` says why, in the log): a 2xx removes it from the
 * replica, a challenge or refusal keeps it lapsed until its upstream expiry. Never rejects.
 */
export async function deregisterOne(deps: DeregistrationDeps, b: Binding, now: number, why: string): Promise<DeregistrationResult> {
  const request = deregistrationRequest(b, deps.upstream.uri);
  const outcome = await askUpstream(deps.sender, { method: 'REGISTER', ...request, nextHop: deps.upstream.uri }, deps.upstream.timeoutMs);
  const base = { event: 'deregister', aor: b.aor, contact: b.contact, callId: b.callId, cseq: (b.cseq ?? 0) + 1, upstreamExpiresIn: Math.round(((b.upstreamExpiresAt ?? now) - Date.now()) / 1000) };
  let result: DeregistrationResult;
  if (outcome.kind === 'reply') {
    result = classifyDeregistration(outcome.reply.status);
    if (result === 'ok') {
      // Unless the phone came back and registered again while the de-registration was on its way.
      const removed = await deps.store.deleteIfUnchanged(b.aor, b.contact, b.updatedAt);
      if (removed.deleted) deps.onRemoved?.(removed.emptied);
      deps.logger.info(`binding de-registered upstream: ${why}`, { ...base, status: outcome.reply.status });
    } else {
      await deps.store.markLapsed(b.aor, b.contact, b.updatedAt, Date.now());
      deps.logger.warn(result === 'challenged'
        ? 'upstream de-registration challenged (midreg holds no credentials): binding kept as lapsed until its upstream expiry, requests for it get 480'
        : 'upstream de-registration refused: binding kept as lapsed until its upstream expiry, requests for it get 480', { ...base, status: outcome.reply.status });
    }
  } else {
    result = outcome.kind === 'timeout' ? 'timeout' : outcome.kind === 'unreachable' ? 'unreachable' : 'refused';
    if (outcome.kind === 'too-large') await deps.store.markLapsed(b.aor, b.contact, b.updatedAt, Date.now());
    deps.logger.warn('upstream de-registration not answered: tried again on the next run', { ...base, result });
  }
  deps.onResult?.(result);
  return result;
}

export interface AorDeregistrationDeps {
  sender: RequestSender;
  store: Pick<BindingStore, 'pendingAorDeregistrations' | 'markAorLapsed' | 'deleteAorUpstreamIfUnchanged'>;
  upstream: UpstreamTarget;
  logger: Logger;
  onResult?(result: DeregistrationResult): void;
}

/**
 * AoR mode, one run: remove midreg's Contact at the registrar for up to `limit` AoRs whose last
 * device is gone (expired; a de-registration or `Contact: *` of the last device already removed it
 * on its way). Same outcomes as deregisterLapsed: a 2xx forgets the upstream registration, a
 * challenge or refusal keeps it lapsed (requests for it answered 480) until it ends upstream.
 */
export async function deregisterEmptyAors(deps: AorDeregistrationDeps, now: number, limit = DEREGISTRATIONS_PER_RUN): Promise<number> {
  const pending = await deps.store.pendingAorDeregistrations(now, limit);
  await Promise.all(pending.map(async (u) => {
    const request = aorDeregistrationRequest(u, deps.upstream.uri);
    const outcome = await askUpstream(deps.sender, { method: 'REGISTER', ...request, nextHop: deps.upstream.uri }, deps.upstream.timeoutMs);
    const base = { event: 'deregister', mode: 'aor', aor: u.aor, contact: u.contact, callId: u.callId, cseq: u.cseq + 1, upstreamExpiresIn: Math.round((u.expiresAt - Date.now()) / 1000) };
    let result: DeregistrationResult;
    if (outcome.kind === 'reply') {
      result = classifyDeregistration(outcome.reply.status);
      if (result === 'ok') {
        // Unless a device registered again while the de-registration was on its way.
        await deps.store.deleteAorUpstreamIfUnchanged(u.aor, u.updatedAt);
        deps.logger.info('AoR de-registered upstream: its last device is gone', { ...base, status: outcome.reply.status });
      } else {
        await deps.store.markAorLapsed(u.aor, u.updatedAt, Date.now());
        deps.logger.warn(result === 'challenged'
          ? 'upstream de-registration challenged (midreg holds no credentials): AoR kept as lapsed until its upstream expiry, requests for it get 480'
          : 'upstream de-registration refused: AoR kept as lapsed until its upstream expiry, requests for it get 480', { ...base, status: outcome.reply.status });
      }
    } else {
      result = outcome.kind === 'timeout' ? 'timeout' : outcome.kind === 'unreachable' ? 'unreachable' : 'refused';
      if (outcome.kind === 'too-large') await deps.store.markAorLapsed(u.aor, u.updatedAt, Date.now());
      deps.logger.warn('upstream de-registration not answered: tried again on the next run', { ...base, result });
    }
    deps.onResult?.(result);
  }));
  return pending.length;
}
