// SIP MESSAGE (RFC 3428) delivered from the replica: the voice platform behind midreg gains IM.
import { canonicalAor } from '../registrar/aor.js';
import type { BindingStore, OfflineMessageStore } from '../store/store.js';
import type { Logger } from '../ops/logger.js';
import type { MessageOutcome } from '../ops/metrics.js';
import { namesMidreg, retargetToUpstream } from '../sip/own-address.js';
import { admitOffline, sipDate, type OfflineLimits, type SenderRate } from './offline-policy.js';
import { ALL_UNREACHABLE, chooseReachable, type Reachability } from '../reachability/reachability.js';
import type { Binding } from '../registrar/registration.js';
import { branchThrough, chooseFinal, classifySender, flowAnswer, flowChains, isTrustedPeer, locate, nextFlow, senderStatus, understoodScheme, type Branch, type FlowFailure } from './routing.js';
import { holderOf, type NodeView } from '../cluster/node-directory.js';
import { parseUri, type RequestHandler, type SipReply, type SipRequest } from '../sip/drachtio.js';
import { askUpstream, nextMaxForwards, outboundBytes, replyHeaders, upstreamHeaders, type RequestSender, type UpstreamOutcome, type UpstreamTarget } from '../sip/upstream.js';

export interface MessageRouterDeps {
  sender: RequestSender;
  store: Pick<BindingStore, 'liveBindings' | 'liveBindingsByContact' | 'bindingsByInsertionKey' | 'isLiveSource'> & Partial<Pick<BindingStore, 'lapsedBindingsByContact' | 'aorUpstreamByKey'>>;
  upstream: UpstreamTarget;
  domains: readonly string[];
  /** drachtio-server's SIP addresses as announced (`udp/127.0.0.1:5060`); [] until connected. */
  sipAddresses(): readonly string[];
  trustedPeers: readonly string[];
  /** 404 (default) or 480 (RFC 3261 §21.4.18: known user, no current location). */
  noBindingStatus: 404 | 480;
  maxBodyBytes: number;
  logger: Logger;
  /** Offline messages (MIDREG_OFFLINE_MESSAGES=on); absent: a user with no live binding gets noBindingStatus. */
  offline?: {
    store: Pick<OfflineMessageStore, 'add' | 'queueOf' | 'totals'>;
    /** The registrar has accepted this AoR at least once. */
    isKnown(aor: string): Promise<boolean>;
    rate: SenderRate;
    limits: OfflineLimits;
    /** Called once a message is on disk (the courier delivers it when the user registers). */
    stored(aor: string): void;
  };
  /** What qualify knows of each binding (absent: every binding is tried, as without qualify). */
  reachability?: (binding: Binding) => Reachability;
  /** Several nodes on one store: bindings held by another node are reached through it. Absent: one node. */
  nodes?: NodeView;
  onOutcome?(outcome: MessageOutcome): void;
  /** How each branch to a binding ended (a send over a dead flow is news for its reachability). */
  onBranch?(binding: Binding, outcome: UpstreamOutcome): void;
  clock?: () => number;
}

/** Headers the MESSAGE keeps on every branch: end-to-end ones, with Max-Forwards decremented. */
function branchHeaders(req: SipRequest, maxForwards: number, route: string | undefined): Record<string, string> {
  const headers = upstreamHeaders(req.headers(), { maxForwards });
  // RFC 3428 §4: MESSAGE creates no dialog, so a Contact has no meaning on it.
  delete headers['contact'];
  if (route) headers['route'] = route;
  return headers;
}

/** The sender's AoR from From, in the same canonical form the replica is keyed by. */
function senderAor(req: SipRequest): string | undefined {
  try {
    const uri = parseUri(req.nameAddr('From').uri);
    return uri && uri.user !== undefined ? canonicalAor(uri) : undefined;
  } catch {
    return undefined;
  }
}

export function createMessageHandler(deps: MessageRouterDeps): RequestHandler {
  const clock = deps.clock ?? Date.now;
  const log = deps.logger;
  return async (req, res) => {
    const from = `${req.source.transport}:${req.source.address}:${req.source.port}`;
    const base = { event: 'message', ruri: req.uri, callId: req.header('Call-ID'), source: from };
    const finish = (outcome: MessageOutcome, status: number, detail: Record<string, unknown> = {}): void => {
      log.info(`MESSAGE ${outcome}`, { ...base, outcome, status, ...detail });
      deps.onOutcome?.(outcome);
    };
    try {
      await route(req, res, finish);
    } catch (err) {
      // The store could not be read (Redis down, database unreadable): the sender may try again
      // (RFC 3261 §21.5.4 503: "temporarily unable to process the request ... the client MAY
      // retry the request after" Retry-After). No cached location is used: it may name a flow that moved.
      if (res.finalSent) throw err;
      res.send(503, { reason: 'Location Store Unavailable', headers: { 'Retry-After': '5' } });
      finish('failed', 503, { why: 'store unavailable', error: err instanceof Error ? err.message : String(err) });
    }
  };

  async function route(req: SipRequest, res: Parameters<RequestHandler>[1], finish: (outcome: MessageOutcome, status: number, detail?: Record<string, unknown>) => void): Promise<void> {
    const now = clock();
    const from = `${req.source.transport}:${req.source.address}:${req.source.port}`;

    const fromAor = senderAor(req);
    /** No live binding: keep the message for the user's next registration, or say why not. */
    const keepOffline = async (aor: string): Promise<void> => {
      const offline = deps.offline;
      if (!offline) return;
      const sender = fromAor ?? from;
      const admission = admitOffline({
        recipientKnown: await offline.isKnown(aor),
        queue: await offline.store.queueOf(aor),
        totalBytes: (await offline.store.totals()).bytes,
        messageBytes: bodyBytes,
        senderWithinRate: () => offline.rate.take(sender, now),
      }, offline.limits, deps.noBindingStatus);
      if (admission.kind === 'refuse') {
        res.send(admission.status, { reason: admission.reason, ...(admission.retryAfterSec ? { headers: { 'Retry-After': String(admission.retryAfterSec) } } : {}) });
        finish(admission.status === 486 ? 'offline_refused' : 'not_found', admission.status, { aor, why: admission.why });
        return;
      }
      // On disk before the 202 goes out: what midreg acknowledged survives a crash.
      const id = await offline.store.add({
        recipient: aor, sender, fromHeader: req.header('From') ?? '', toHeader: req.header('To') ?? `<${aor}>`,
        contentType: req.header('Content-Type') ?? 'text/plain', body: req.body, date: req.header('Date') ?? sipDate(now),
        receivedAt: now, expiresAt: now + offline.limits.ttlSec * 1000,
      });
      // RFC 3428 §7: "202 Accepted" when the request was accepted for later delivery.
      res.send(202, { reason: 'Accepted' });
      offline.stored(aor);
      finish('stored', 202, { aor, id, bodyBytes });
    };
    // A peer node passes on MESSAGEs for the phones whose flows this node holds; it is trusted
    // only while its heartbeat is in the store (lib/cluster/node-directory.ts), never by address alone.
    let fromPeerNode = deps.nodes?.isPeer(req.source) ?? false;
    // Looked up only for a sender that is not a trusted peer (classifySender stays pure).
    const liveSource = !fromPeerNode && !isTrustedPeer(req.source, deps.trustedPeers) && fromAor !== undefined
      && await deps.store.isLiveSource(fromAor, req.source.address, req.source.port, now);
    // Neither a phone nor the platform: perhaps a node that started since the last heartbeat read.
    if (!fromPeerNode && !liveSource && deps.nodes && !isTrustedPeer(req.source, deps.trustedPeers)) fromPeerNode = await deps.nodes.confirmPeer(req.source);
    const sender = fromPeerNode ? { kind: 'trusted-peer' as const } : classifySender(req.source, deps.trustedPeers, () => liveSource);
    if (!understoodScheme(req.uri)) {
      res.send(416, { reason: 'Unsupported URI Scheme' });
      finish('failed', 416, { why: 'Request-URI scheme not sip, sips or tel (RFC 3261 §16.3 item 2)' });
      return;
    }
    if (sender.kind === 'unknown') {
      res.send(403, { reason: 'Sender Not Registered' });
      finish('forbidden', 403, { from: fromAor, why: 'no live binding of the From AoR registered from this source, and not a trusted peer' });
      return;
    }
    const bodyBytes = Buffer.byteLength(req.body, 'utf8');
    if (bodyBytes > deps.maxBodyBytes) {
      res.send(413, { reason: 'Request Entity Too Large' });
      finish('too_large', 413, { bodyBytes, maxBodyBytes: deps.maxBodyBytes });
      return;
    }
    const hops = nextMaxForwards(req.header('Max-Forwards'));
    if (hops.kind !== 'forward') {
      const status = hops.kind === 'too-many-hops' ? 483 : 400;
      res.send(status);
      finish('failed', status, { why: hops.kind });
      return;
    }

    const own = { sipAddresses: deps.sipAddresses(), domains: deps.domains };
    const target = await locate(req.uri, deps.store, own, now);

    if (target.kind === 'no-binding') {
      if (deps.offline) { await keepOffline(target.aor); return; }
      res.send(deps.noBindingStatus);
      finish('not_found', deps.noBindingStatus, { aor: target.aor });
      return;
    }
    if (target.kind === 'unknown-key' || target.kind === 'expired-key') {
      const status = target.kind === 'unknown-key' ? 404 : 480;
      res.send(status);
      finish('not_found', status, { key: target.key, why: target.kind === 'unknown-key' ? 'no stored binding has this key' : 'its binding expired' });
      return;
    }
    if (target.kind === 'lapsed') {
      res.send(480, { reason: 'Temporarily Unavailable' });
      finish('not_found', 480, { aor: target.aor, contact: target.contact, why: 'its phone stopped refreshing (still registered upstream)' });
      return;
    }
    if (target.kind === 'upstream') {
      // Not a served AoR: the platform decides. A Request-URI naming midreg itself (a phone
      // provisioned by IP writing to a user of a domain midreg does not serve) gets the
      // registrar's address with the user kept (lib/sip/own-address.ts); drachtio-server would refuse it.
      const ruri = parseUri(req.uri);
      const uri = ruri && namesMidreg(ruri, own) ? retargetToUpstream(ruri, deps.upstream.uri) : req.uri;
      const outcome = await askUpstream(deps.sender, {
        method: 'MESSAGE', uri, headers: branchHeaders(req, hops.value, undefined), body: req.body, nextHop: deps.upstream.uri,
      }, deps.upstream.timeoutMs, clock);
      const answered = answerFrom([outcome]);
      sendAnswer(res, answered);
      finish('relayed', answered.status, { to: 'upstream', ...(uri !== req.uri ? { upstreamRuri: uri } : {}) });
      return;
    }

    // Bindings qualify found silent are skipped while the AoR has another one; with none left the
    // sender learns it at once instead of after a timeout (lib/reachability/reachability.ts).
    const choice = deps.reachability ? chooseReachable(target.bindings, deps.reachability) : { kind: 'send' as const, bindings: target.bindings, skipped: [] };
    if (choice.kind === 'all-unreachable') {
      res.send(ALL_UNREACHABLE.status, { reason: ALL_UNREACHABLE.reason });
      finish('unreachable', ALL_UNREACHABLE.status, { aor: target.aor, unreachable: choice.skipped.map((b) => b.contact) });
      return;
    }
    const size = outboundBytes({ method: 'MESSAGE', uri: req.uri, headers: branchHeaders(req, hops.value, undefined), body: req.body });
    // One target per device (RFC 5626 §7): its flows are tried one after another, never together.
    const chains = flowChains(choice.bindings);
    if (deps.nodes) await deps.nodes.confirm(chains.flatMap((c) => c.flows).flatMap((b) => (b.node !== undefined ? [b.node] : [])));
    const planned = chains.map((chain) => chain.flows.map((b) => branchThrough(b, holderOf(b, deps.nodes), fromPeerNode, size)));
    // A flow that cannot carry the request (UDP and too large, a node gone) is passed over for the
    // device's next one: nothing was sent on it, so §7's "MUST NOT forward" does not apply.
    const targets = planned.map((branches) => branches.filter(isSend)).filter((branches) => branches.length > 0);
    if (targets.length === 0) {
      const skipped = planned.flat()[0];
      const status = skipped?.kind === 'skip' ? skipped.status : 500;
      res.send(status, skipped?.kind === 'skip' ? { reason: skipped.reason } : {});
      if (status === 480) finish('unreachable', 480, { aor: target.aor, why: skipped?.kind === 'skip' ? skipped.reason : '', nodes: planned.flat().map((b) => b.binding.node) });
      else finish('too_large', status, { why: 'every binding is UDP-only and the request exceeds 1300 bytes (RFC 3428 §8)' });
      return;
    }

    const failedOver: FailedOver[] = [];
    const tried = new Set<Binding>();
    // Devices in parallel; the first 2xx is answered at once, the others are left to complete
    // (RFC 3261 §9.1: non-INVITE requests are never CANCELled).
    const outcome = await forkOverFlows(targets, (branch) => {
      tried.add(branch.binding);
      return askUpstream(deps.sender, {
        method: 'MESSAGE', uri: branch.requestUri, headers: branchHeaders(req, hops.value, branch.route), body: req.body,
        ...(branch.nextHop ? { nextHop: branch.nextHop } : {}),
      }, deps.upstream.timeoutMs, clock).then((branchOutcome) => {
        // Through a peer node, a failure says nothing about the phone's flow (that node's to know).
        if (holderOf(branch.binding, deps.nodes).kind === 'local') deps.onBranch?.(branch.binding, branchOutcome);
        return branchOutcome;
      });
    }, (step) => {
      failedOver.push(step);
      log.info('MESSAGE flow failed; trying the device\'s next flow', {
        event: 'message', ruri: req.uri, callId: req.header('Call-ID'), source: from, aor: target.aor, contact: step.from.binding.contact, why: step.failure, ...(step.status !== undefined ? { status: step.status } : {}), next: step.to.binding.contact,
      });
    });
    sendAnswer(res, outcome);
    const delivered = outcome.status >= 200 && outcome.status < 300;
    const olderFlows = chains.flatMap((c) => (c.flows.length > 1 ? c.flows.filter((b) => !tried.has(b)) : []));
    finish(delivered ? 'delivered' : 'failed', outcome.status, {
      aor: target.aor, branches: targets.length, skipped: planned.flat().length - targets.flat().length,
      ...(choice.skipped.length > 0 ? { unreachable: choice.skipped.map((b) => b.contact) } : {}),
      ...(olderFlows.length > 0 ? { olderFlows: olderFlows.map((b) => b.contact) } : {}),
      ...(failedOver.length > 0 ? { failedOver: failedOver.map((f) => ({ from: f.from.binding.contact, to: f.to.binding.contact, why: f.failure, ...(f.status !== undefined ? { status: f.status } : {}) })) } : {}),
      to: targets.map((branches) => branches[0]?.nextHop ?? branches[0]?.requestUri),
    });
  }
}

export type SendBranch = Extract<Branch, { kind: 'send' }>;

export function isSend(branch: Branch): branch is SendBranch {
  return branch.kind === 'send';
}

/** One failover from a device's flow to its next one. */
export interface FailedOver { from: SendBranch; to: SendBranch; failure: FlowFailure; status: number | undefined }

/**
 * The request to every target at once, each target's flows one after another: the next flow only
 * when the previous one failed as RFC 5626 §7 allows (routing.ts `nextFlow`: 430, 408, a transport
 * error), so no device gets the request on two flows. Resolves like `forkFirst2xx`.
 */
export function forkOverFlows(targets: readonly SendBranch[][], send: (branch: SendBranch) => Promise<UpstreamOutcome>, onFailover?: (step: FailedOver) => void): Promise<Answer> {
  return forkFirst2xx(targets.map(async (flows): Promise<UpstreamOutcome> => {
    for (let index = 0; ;) {
      const branch = flows[index];
      if (!branch) return { kind: 'unreachable', error: 'no flow', elapsedMs: 0 };
      const outcome = await send(branch);
      const step = nextFlow(flowAnswer(outcome), index, flows.length);
      const next = step.kind === 'next' ? flows[step.index] : undefined;
      if (step.kind === 'final' || !next) return outcome;
      onFailover?.({ from: branch, to: next, failure: step.failure, status: outcome.kind === 'reply' ? outcome.reply.status : undefined });
      index = step.index;
    }
  }));
}

export type Answer = { status: number; reply: SipReply | undefined; reason?: string };

function answerFrom(outcomes: UpstreamOutcome[]): Answer {
  const statuses = outcomes.map((o) => (o.kind === 'reply' ? o.reply.status : o.kind === 'timeout' ? 408 : o.kind === 'too-large' ? 513 : 503));
  const chosen = chooseFinal(statuses);
  const picked = outcomes[chosen];
  const status = statuses[chosen] ?? 408;
  const told = senderStatus(status);
  if (told.status !== status) return { status: told.status, reply: undefined, ...(told.reason ? { reason: told.reason } : {}) };
  return { status, reply: picked?.kind === 'reply' ? picked.reply : undefined };
}

/** Resolve with the first 2xx, or with the best final response once every branch has one. */
export function forkFirst2xx(branches: Array<Promise<UpstreamOutcome>>): Promise<Answer> {
  return new Promise((resolve) => {
    const done: UpstreamOutcome[] = [];
    let settled = false;
    for (const branch of branches) {
      void branch.then((outcome) => {
        if (settled) return;
        done.push(outcome);
        if ((outcome.kind === 'reply' && outcome.reply.status < 300) || done.length === branches.length) {
          settled = true;
          resolve(answerFrom(done));
        }
      });
    }
  });
}

function sendAnswer(res: Parameters<RequestHandler>[1], answer: Answer): void {
  if (res.finalSent) return;
  if (answer.reply) res.send(answer.status, { reason: answer.reply.reason, headers: replyHeaders(answer.reply), body: answer.reply.body });
  else res.send(answer.status, answer.reason ? { reason: answer.reason } : {});
}
