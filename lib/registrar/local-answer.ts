// A refresh midreg answers itself (contact and AoR throttling): the one place that writes the
// absorbed refresh and builds the 200 the phone gets, so both modes answer alike.
import type { Logger } from '../ops/logger.js';
import type { SipResponder } from '../sip/drachtio.js';
import type { BindingStore } from '../store/store.js';
import type { Binding, RegisterAttempt } from './registration.js';
import { localAnswerContacts } from './throttle.js';

export interface LocalAnswerDeps {
  store: Pick<BindingStore, 'absorbRefresh'>;
  logger: Logger;
  onRegisterAbsorbed?(): void;
}

/**
 * Records the refresh of `binding` (its new expiry and CSeq) and answers 200. `bindings` are the
 * AoR's bindings as the phone knows them; `upstreamExpiresAt` is when the registration at the
 * registrar ends (for the log); `mode` is logged when it is not contact mode.
 */
export async function answerRefreshLocally(
  deps: LocalAnswerDeps,
  res: SipResponder,
  refresh: { attempt: RegisterAttempt; bindings: readonly Binding[]; binding: Binding; expires: number; upstreamExpiresAt: number | null | undefined; mode?: 'aor' },
  now: number,
): Promise<void> {
  const { attempt, binding, expires } = refresh;
  const expiresAt = now + expires * 1000;
  // The refresh's CSeq is recorded, so the next refresh must be higher (RFC 3261 §10.3 step 7).
  // Not one updateAor: absorbRefresh only rewrites a binding that still exists, so a reply that
  // removed it meanwhile wins, and a refresh costs one row, not the AoR's.
  await deps.store.absorbRefresh(attempt.aor, binding.contact, expiresAt, attempt.cseq, now);
  const after = refresh.bindings.map((b) => (b === binding ? { ...b, expiresAt, cseq: attempt.cseq, updatedAt: now } : b));
  // RFC 3261 §10.3 step 8: the 200 "MUST contain Contact header field values enumerating all
  // current bindings" and "SHOULD include a Date header field". In AoR mode those are the
  // devices, never midreg's upstream Contact.
  const contact = localAnswerContacts(after, now);
  res.send(200, { reason: 'OK', headers: { ...(contact ? { contact } : {}), date: new Date(now).toUTCString() } });
  deps.onRegisterAbsorbed?.();
  deps.logger.info('REGISTER answered locally', {
    event: 'register', decision: 'absorbed', ...(refresh.mode ? { mode: refresh.mode } : {}), status: 200,
    aor: attempt.aor, callId: attempt.callId, cseq: attempt.cseq, contact: binding.contact, expires,
    upstreamExpiresIn: Math.round(((refresh.upstreamExpiresAt ?? now) - now) / 1000),
    source: `${attempt.source.transport}:${attempt.source.address}:${attempt.source.port}`,
  });
}
