// Pure routing decisions for requests other than REGISTER: who may send, where a request goes,
// how each branch reaches a UA behind NAT, and which branch response the sender gets.
import type { Holder } from '../cluster/node-directory.js';
import { canonicalAor, isServedDomain } from '../registrar/aor.js';
import { keyOf } from '../registrar/contact-insertion.js';
import { namesMidreg, type OwnAddresses } from '../sip/own-address.js';
import type { Binding } from '../registrar/registration.js';
import { parseUri } from '../sip/drachtio.js';
import type { UpstreamOutcome } from '../sip/upstream.js';

/** Request-URI schemes midreg routes: SIP, SIPS, and telephone numbers for the platform (RFC 3966). */
const ROUTED_SCHEMES = new Set(['sip', 'sips', 'tel']);

/**
 * RFC 3261 §16.3 item 2: "If the Request-URI has a URI whose scheme is not understood by the
 * proxy, the proxy SHOULD reject the request with a 416 (Unsupported URI Scheme) response."
 */
export function understoodScheme(requestUri: string): boolean {
  const scheme = /^([a-z][a-z0-9+.-]*):/i.exec(requestUri)?.[1]?.toLowerCase();
  return scheme !== undefined && ROUTED_SCHEMES.has(scheme);
}

/** RFC 3428 §8 / RFC 3261 §18.1.1: past 1300 bytes a request must use a congestion-controlled transport. */
export const UDP_SAFE_BYTES = 1300;

export type Sender = { kind: 'trusted-peer' } | { kind: 'registered' } | { kind: 'unknown' };

export type Target =
  | { kind: 'bindings'; bindings: Binding[]; via: 'contact' | 'aor' | 'insertion' | 'aor-contact'; aor: string | undefined }
  | { kind: 'no-binding'; aor: string }
  /** A Contact midreg wrote (contact insertion) whose key names no stored binding: 404. */
  | { kind: 'unknown-key'; key: string }
  /** …whose binding expired (RFC 3261 §21.4.18, 480: known, "currently unavailable"). */
  | { kind: 'expired-key'; key: string; aor: string }
  /**
   * Contact mode: a contact whose phone stopped refreshing but which the registrar still holds
   * (midreg's de-registration is pending or was challenged). RFC 3261 §21.4.18: 480, the callee's
   * "end system was contacted successfully but the callee is currently unavailable" — not a
   * forward to a dead phone.
   */
  | { kind: 'lapsed'; contact: string; aor: string }
  | { kind: 'upstream' };

/**
 * Where a request addressed to `requestUri` goes: to bindings whose contact it is (the platform
 * routed it via our Path), to the live bindings of an AoR of a served domain, or upstream.
 */
export function resolveTarget(input: {
  byContact: Binding[];
  servedAor: string | undefined;
  byAor: Binding[];
}): Target {
  if (input.byContact.length > 0) return { kind: 'bindings', bindings: input.byContact, via: 'contact', aor: input.servedAor };
  if (input.servedAor === undefined) return { kind: 'upstream' };
  if (input.byAor.length > 0) return { kind: 'bindings', bindings: input.byAor, via: 'aor', aor: input.servedAor };
  return { kind: 'no-binding', aor: input.servedAor };
}

export interface BindingLookup {
  liveBindingsByContact(contact: string, now: number): Promise<Binding[]>;
  liveBindings(aor: string, now: number): Promise<Binding[]>;
  bindingsByInsertionKey(key: string): Promise<Binding[]>;
  /** Contact mode: bindings of this contact expired for the phone but still registered upstream. */
  lapsedBindingsByContact?(contact: string, now: number): Promise<Binding[]>;
  /** AoR mode: the AoR whose upstream Contact (midreg's) carries this key. */
  aorUpstreamByKey?(key: string): Promise<{ aor: string; contact: string; expiresAt: number; lapsedAt: number | null } | undefined>;
}

/**
 * Where a request for `requestUri` goes, looked up in the replica. A Request-URI at midreg's own
 * address carrying a binding key is a Contact midreg gave the registrar (contact insertion): it
 * reaches that stored binding and nothing else, so a forged or stale key never becomes a relay.
 */
export async function locate(requestUri: string, lookup: BindingLookup, own: OwnAddresses, now: number): Promise<Target> {
  const domains = own.domains;
  const ruri = parseUri(requestUri);
  const key = ruri && namesMidreg(ruri, own) ? keyOf(requestUri) : undefined;
  if (key !== undefined) {
    const stored = await lookup.bindingsByInsertionKey(key);
    const live = stored.filter((b) => b.expiresAt > now);
    if (live.length > 0) return { kind: 'bindings', bindings: live, via: 'insertion', aor: live[0]?.aor };
    // AoR mode: midreg's Contact for a whole AoR reaches every live device of it. With none left
    // (or midreg's removal upstream not accepted) the AoR is known but unavailable: 480.
    const aorContact = stored.length === 0 ? await lookup.aorUpstreamByKey?.(key) : undefined;
    if (aorContact) {
      const devices = aorContact.lapsedAt === null && aorContact.expiresAt > now ? await lookup.liveBindings(aorContact.aor, now) : [];
      if (devices.length > 0) return { kind: 'bindings', bindings: devices, via: 'aor-contact', aor: aorContact.aor };
      return { kind: 'lapsed', contact: aorContact.contact, aor: aorContact.aor };
    }
    return stored[0] ? { kind: 'expired-key', key, aor: stored[0].aor } : { kind: 'unknown-key', key };
  }
  const servedAor = ruri && ruri.user !== undefined && isServedDomain(ruri.host, domains) ? canonicalAor(ruri) : undefined;
  const byContact = await lookup.liveBindingsByContact(requestUri, now);
  if (byContact.length === 0 && lookup.lapsedBindingsByContact) {
    const [lapsed] = await lookup.lapsedBindingsByContact(requestUri, now);
    if (lapsed) return { kind: 'lapsed', contact: lapsed.contact, aor: lapsed.aor };
  }
  return resolveTarget({
    byContact,
    servedAor,
    byAor: servedAor ? await lookup.liveBindings(servedAor, now) : [],
  });
}

/** `+sip.instance` as compared: quotes and angle brackets off, lower-case (RFC 5626 §4.1: a URN). */
export function instanceKey(instance: string | null | undefined): string | undefined {
  const bare = instance?.trim().replace(/^"|"$/g, '').replace(/^<|>$/g, '').trim().toLowerCase();
  return bare ? bare : undefined;
}

/**
 * A device's flows in the order they are tried: RFC 5626 §7 (Authoritative Proxy Procedures:
 * Forwarding Requests): "The proxy MUST NOT populate the target set with more than one contact
 * with the same AOR and instance-id at a time." A device (`+sip.instance`) with several flows (one
 * per `reg-id`, or a flow the registrar still lists after the device moved) is one target: its
 * most recently established flow first (a device that registered again over a new connection is
 * reached over that one), the others kept to fail over to (`nextFlow`). Bindings without
 * `+sip.instance` are each a target of their own. Targets keep the order of their first binding.
 */
export interface FlowChain { instance: string | undefined; flows: Binding[] }

export function flowChains(bindings: readonly Binding[]): FlowChain[] {
  const chains: FlowChain[] = [];
  const byInstance = new Map<string, FlowChain>();
  for (const b of bindings) {
    const key = instanceKey(b.instance);
    if (key === undefined) { chains.push({ instance: undefined, flows: [b] }); continue; }
    const chain = byInstance.get(key);
    if (chain) { chain.flows.push(b); continue; }
    const fresh: FlowChain = { instance: key, flows: [b] };
    byInstance.set(key, fresh);
    chains.push(fresh);
  }
  // Newest flow first: the one whose binding appeared last (`registeredAt`; `updatedAt` is rewritten
  // for every binding a 2xx lists, so it tells flows apart only by who refreshed last). A stable
  // sort keeps the caller's order between flows registered at the same moment.
  for (const chain of byInstance.values()) chain.flows.sort((a, b) => b.registeredAt - a.registeredAt || b.updatedAt - a.updatedAt);
  return chains;
}

/** What one flow's answer was, as far as trying the device's next flow goes. */
export type FlowAnswer =
  | { kind: 'reply'; status: number; local: boolean }
  | { kind: 'timeout' }
  | { kind: 'unreachable' }
  | { kind: 'too-large' };

export function flowAnswer(outcome: UpstreamOutcome): FlowAnswer {
  return outcome.kind === 'reply' ? { kind: 'reply', status: outcome.reply.status, local: outcome.reply.local === true } : { kind: outcome.kind };
}

export type FlowFailure = 'flow-failed' | 'transport' | 'timeout';

/**
 * Whether a flow failed in the sense of RFC 5626 §7, which lets the request go on to the same
 * device's next flow: "If a request for a particular AOR and instance-id fails with a 430 (Flow
 * Failed) response, the proxy SHOULD replace the failed branch with another target (if one is
 * available) with the same AOR and instance-id, but a different reg-id." and "If the proxy
 * receives a final response from a branch other than a 408 (Request Timeout) or a 430 (Flow
 * Failed) response, the proxy MUST NOT forward the same request to another target representing
 * the same AOR and instance-id. The targeting proxy MAY forward the request to another target
 * representing the same AOR and instance-id if the request fails with a 408 (Request Timeout)
 * response." A transport error is a 503 made by the client transaction itself (RFC 3261 §8.1.3.1:
 * "treated as if a 503 (Service Unavailable) status code had been received"): the request never
 * reached the device, so its flow failed. drachtio-server reports such failures as responses it
 * makes itself (`local`: its 503, the 410 of a cached connection that closed, its 408), and midreg's
 * own bound on the wait is a 408. A request too large to hand to drachtio-server fails on every
 * flow alike: not a flow failure.
 */
export function flowFailure(answer: FlowAnswer): FlowFailure | undefined {
  switch (answer.kind) {
    case 'reply':
      if (answer.local) return answer.status === 408 ? 'timeout' : 'transport';
      if (answer.status === 430) return 'flow-failed';
      return answer.status === 408 ? 'timeout' : undefined;
    case 'timeout':
      return 'timeout';
    case 'unreachable':
      return 'transport';
    case 'too-large':
      return undefined;
  }
}

export type NextFlow = { kind: 'next'; index: number; failure: FlowFailure } | { kind: 'final' };

/** After flow `tried` of a chain of `count` answered `answer`: the next flow to try, or that this answer is the device's. */
export function nextFlow(answer: FlowAnswer, tried: number, count: number): NextFlow {
  const failure = flowFailure(answer);
  if (failure === undefined || tried + 1 >= count) return { kind: 'final' };
  return { kind: 'next', index: tried + 1, failure };
}

/**
 * RFC 5626 §11 defines 430 (Flow Failed) for an edge proxy to tell the registrar or authoritative
 * proxy that one flow of a device failed while others may work; it is not meant for endpoints (one
 * that gets it treats it as 400 Bad Request, RFC 3261 §8.1.3.2). When a device's last flow failed
 * with 430 the sender is told what a proxy without a working flow says, RFC 3261 §21.4.18 480
 * Temporarily Unavailable.
 */
export function senderStatus(status: number): { status: number; reason?: string } {
  return status === 430 ? { status: 480, reason: 'Temporarily Unavailable (flow failed)' } : { status };
}

export type Branch =
  | { kind: 'send'; binding: Binding; requestUri: string; nextHop: string | undefined; route: string | undefined }
  | { kind: 'skip'; binding: Binding; status: number; reason: string };

/**
 * How to reach one binding. The Request-URI stays the registered contact; the next hop is the
 * address the REGISTER came from (the NAT binding), or the first Path entry when the UA
 * registered through another proxy (RFC 3327 §5.3: requests follow the Path as a route set).
 */
export function branchFor(binding: Binding, requestBytes: number): Branch {
  const transport = binding.source?.transport ?? 'udp';
  const path = binding.path?.trim() || undefined;
  if (!path && transport === 'udp' && requestBytes > UDP_SAFE_BYTES && !/;transport=(tcp|tls|ws|wss)/i.test(binding.contact)) {
    return { kind: 'skip', binding, status: 513, reason: 'Message Too Large For UDP' };
  }
  if (path) return { kind: 'send', binding, requestUri: binding.contact, nextHop: undefined, route: path };
  if (!binding.source) return { kind: 'send', binding, requestUri: binding.contact, nextHop: undefined, route: undefined };
  const { address, port } = binding.source;
  const host = address.includes(':') && !address.startsWith('[') ? `[${address}]` : address;
  const scheme = transport === 'tls' || transport === 'wss' ? 'sips' : 'sip';
  return { kind: 'send', binding, requestUri: binding.contact, nextHop: `${scheme}:${host}:${port};transport=${transport}`, route: undefined };
}

/**
 * How to reach one binding when several nodes share the store (lib/cluster/node-directory.ts):
 * through the node that holds the phone's flow, since only its address is in the phone's NAT
 * pinhole or TCP connection. The Request-URI stays the registered contact, which that node looks
 * up again. A request that came from a peer node is never passed on to a third (no loops between
 * nodes), and a binding whose node is gone gets RFC 3261 §21.4.18 480 Temporarily Unavailable:
 * "the callee's end system was contacted successfully but the callee is currently unavailable",
 * until the phone registers again through a live node.
 */
export function branchThrough(binding: Binding, holder: Holder, fromPeerNode: boolean, requestBytes: number): Branch {
  if (holder.kind === 'local') return branchFor(binding, requestBytes);
  if (holder.kind === 'dead-peer') return { kind: 'skip', binding, status: 480, reason: 'Holding Node Down' };
  if (fromPeerNode) return { kind: 'skip', binding, status: 480, reason: 'Not Held Here' };
  return { kind: 'send', binding, requestUri: binding.contact, nextHop: holder.node, route: undefined };
}

/**
 * Where drachtio-server sends a proxied request addressed to midreg itself: its proxy replaces
 * such a Request-URI by the destination, so the destination is the phone's own user at the
 * address its REGISTER came from (a phone matches an incoming request to its account by user).
 */
export function flowUri(branch: Extract<Branch, { kind: 'send' }>): string {
  const target = branch.nextHop ?? branch.requestUri;
  const user = /^[a-z][a-z0-9+.-]*:([^@;?]+)@/i.exec(branch.requestUri)?.[1];
  return user === undefined || /^[a-z][a-z0-9+.-]*:[^@;?]+@/i.test(target) ? target : target.replace(/^([a-z][a-z0-9+.-]*:)/i, `$1${user}@`);
}

/**
 * RFC 3261 §16.7 step 6 for a forked non-INVITE: the first 2xx wins; otherwise "the proxy MUST
 * choose from the 6xx class responses if any exist", else "SHOULD choose from the lowest
 * response class", and 408 when no branch answered. Returns the index of the chosen status.
 */
export function chooseFinal(statuses: readonly number[]): number {
  if (statuses.length === 0) return -1;
  const first2xx = statuses.findIndex((s) => s >= 200 && s < 300);
  if (first2xx >= 0) return first2xx;
  const sixxx = statuses.findIndex((s) => s >= 600);
  if (sixxx >= 0) return sixxx;
  let best = 0;
  for (let i = 1; i < statuses.length; i++) {
    if (Math.floor((statuses[i] ?? 999) / 100) < Math.floor((statuses[best] ?? 999) / 100)) best = i;
  }
  return best;
}

/** Whether `source` is one of the trusted peers (`address` or `address:port`). */
export function isTrustedPeer(source: { address: string; port: number }, peers: readonly string[]): boolean {
  return peers.some((peer) => peer === source.address || peer === `${source.address}:${source.port}`);
}

/**
 * Who is sending. midreg must not become an open relay or a spoofing tool: a MESSAGE is taken
 * only from the platform itself, or from the very address and port a live binding of the From
 * AoR registered from (so a registered user cannot send as another one).
 */
export function classifySender(source: { address: string; port: number }, peers: readonly string[], isLiveSource: () => boolean): Sender {
  if (isTrustedPeer(source, peers)) return { kind: 'trusted-peer' };
  return isLiveSource() ? { kind: 'registered' } : { kind: 'unknown' };
}
