// Every request other than REGISTER and MESSAGE: users' requests go to the platform, the
// platform's requests go to users from the replica, so voice works exactly as without midreg.
import { isServedDomain } from '../registrar/aor.js';
import type { BindingStore } from '../store/store.js';
import type { Logger } from '../ops/logger.js';
import { namesMidreg, ownHosts, retargetToUpstream, type OwnAddresses } from '../sip/own-address.js';
import { ALL_UNREACHABLE, chooseReachable, type Reachability } from '../reachability/reachability.js';
import type { Binding } from '../registrar/registration.js';
import { branchFor, flowChains, flowUri, isTrustedPeer, locate, understoodScheme } from './routing.js';
import { parseUri, type RequestHandler, type SipUri } from '../sip/drachtio.js';
import { nextMaxForwards } from '../sip/upstream.js';

/** Methods proxied this way (drachtio-server handles ACK, CANCEL and in-dialog requests it record-routed). */
export const PROXIED_METHODS = ['INVITE', 'OPTIONS', 'SUBSCRIBE', 'NOTIFY', 'INFO', 'REFER', 'PUBLISH', 'UPDATE', 'BYE'] as const;
export const ALLOW = ['INVITE', 'ACK', 'CANCEL', 'BYE', 'OPTIONS', 'REGISTER', 'MESSAGE', 'SUBSCRIBE', 'NOTIFY', 'INFO', 'REFER', 'PUBLISH', 'UPDATE'].join(', ');

export interface RequestProxyDeps {
  store: Pick<BindingStore, 'liveBindings' | 'liveBindingsByContact' | 'bindingsByInsertionKey'> & Partial<Pick<BindingStore, 'lapsedBindingsByContact' | 'aorUpstreamByKey'>>;
  upstreamUri: string;
  domains: readonly string[];
  trustedPeers: readonly string[];
  noBindingStatus: 404 | 480;
  /** drachtio-server's SIP addresses as announced (`udp/127.0.0.1:5060`); [] until connected. */
  sipAddresses(): readonly string[];
  logger: Logger;
  /** What qualify knows of each binding (absent: the best binding is used, as without qualify). */
  reachability?: (binding: Binding) => Reachability;
  clock?: () => number;
}

/** An OPTIONS ping to midreg itself: no user part, and a served domain or one of midreg's own hosts. */
function pingsMidreg(ruri: SipUri | undefined, own: OwnAddresses): boolean {
  if (!ruri || ruri.user !== undefined) return false;
  return isServedDomain(ruri.host, own.domains) || ownHosts(own).includes(ruri.host.toLowerCase());
}

export function createProxyHandler(deps: RequestProxyDeps): RequestHandler {
  const clock = deps.clock ?? Date.now;
  const log = deps.logger;
  return async (req, res) => {
    const source = `${req.source.transport}:${req.source.address}:${req.source.port}`;
    const base = { event: 'proxy', method: req.method, ruri: req.uri, callId: req.header('Call-ID'), source };
    const ruri = parseUri(req.uri);
    const own = { sipAddresses: deps.sipAddresses(), domains: deps.domains };

    if (req.method === 'OPTIONS' && pingsMidreg(ruri, own)) {
      res.send(200, { headers: { Allow: ALLOW, Accept: 'application/sdp, text/plain' } });
      log.info('OPTIONS answered', { ...base, status: 200 });
      return;
    }

    if (!understoodScheme(req.uri)) {
      res.send(416, { reason: 'Unsupported URI Scheme' });
      log.info('request refused', { ...base, status: 416, why: 'Request-URI scheme not sip, sips or tel (RFC 3261 §16.3 item 2)' });
      return;
    }

    const hops = nextMaxForwards(req.header('Max-Forwards'));
    if (hops.kind !== 'forward') {
      // RFC 3261 §16.3 step 2 (OPTIONS to midreg itself was answered above, as §16.3 allows).
      const status = hops.kind === 'too-many-hops' ? 483 : 400;
      res.send(status);
      log.info('request refused', { ...base, status, why: hops.kind });
      return;
    }

    let destination: string | string[];
    let direction: 'to-platform' | 'to-user';
    if (isTrustedPeer(req.source, deps.trustedPeers)) {
      // From the platform: a request for a registered user (usually via the Path midreg added).
      let target: Awaited<ReturnType<typeof locate>>;
      try {
        target = await locate(req.uri, deps.store, own, clock());
      } catch (err) {
        // RFC 3261 §21.5.4: 503 with Retry-After when the location store cannot be read (Redis down).
        res.send(503, { reason: 'Location Store Unavailable', headers: { 'Retry-After': '5' } });
        log.warn('request refused: store unavailable', { ...base, status: 503, error: err instanceof Error ? err.message : String(err) });
        return;
      }
      if (target.kind === 'no-binding') {
        res.send(deps.noBindingStatus);
        log.info('request refused: no live binding', { ...base, status: deps.noBindingStatus, aor: target.aor });
        return;
      }
      if (target.kind === 'unknown-key' || target.kind === 'expired-key') {
        const status = target.kind === 'unknown-key' ? 404 : 480;
        res.send(status);
        log.info('request refused: no live binding for this key', { ...base, status, key: target.key, why: target.kind === 'unknown-key' ? 'no stored binding has this key' : 'its binding expired' });
        return;
      }
      if (target.kind === 'lapsed') {
        res.send(480, { reason: 'Temporarily Unavailable' });
        log.info('request refused: its phone stopped refreshing', { ...base, status: 480, aor: target.aor, contact: target.contact });
        return;
      }
      if (target.kind === 'upstream') {
        res.send(404, { reason: 'Not A Registered Contact' });
        log.info('request refused: not for a registered user', { ...base, status: 404 });
        return;
      }
      // Bindings qualify found silent are passed over while another one may answer; with none
      // left the platform gets 480 at once (lib/reachability/reachability.ts).
      const choice = deps.reachability ? chooseReachable(target.bindings, deps.reachability) : { kind: 'send' as const, bindings: target.bindings, skipped: [] };
      if (choice.kind === 'all-unreachable') {
        res.send(ALL_UNREACHABLE.status, { reason: ALL_UNREACHABLE.reason });
        log.info('request refused: no reachable binding', { ...base, status: ALL_UNREACHABLE.status, aor: target.aor, unreachable: choice.skipped.map((b) => b.contact) });
        return;
      }
      // The platform already forked per contact; an AoR-addressed request goes to the best one.
      // AoR mode: the platform knows one Contact for the AoR (midreg's), so midreg forks to every
      // live device itself (RFC 3261 §16.6: one branch per target), in parallel. A device is one
      // target whatever its number of flows (RFC 5626 §7, routing.ts `flowChains`): its newest
      // flow. No failover to its next flow here: drachtio-server's proxy owns the transaction, and
      // its serial forking would go on after any failure, where §7 allows it after 430 and 408 only.
      const devices = flowChains(choice.bindings).flatMap((chain) => chain.flows.slice(0, 1));
      const targets = target.via === 'aor-contact' ? devices : devices.slice(0, 1);
      // A Request-URI at midreg's own address (a Contact midreg gave the registrar, or an AoR at
      // midreg's IP) is replaced by the destination: that must name the phone's user.
      const destinations = targets.map((b) => {
        const branch = branchFor(b, 0);
        return branch.kind !== 'send' ? branch.binding.contact
          : ruri && namesMidreg(ruri, own) ? flowUri(branch) : branch.nextHop ?? branch.requestUri;
      });
      destination = destinations.length === 1 ? destinations[0] ?? '' : destinations;
      direction = 'to-user';
    } else {
      // drachtio-server's proxy replaces a Request-URI that names itself by the destination, so
      // for a phone provisioned by IP (`INVITE sip:1001@<midreg>`) the destination carries the
      // user part: the platform gets `sip:1001@<registrar>` instead of a bare address (→ 404).
      destination = ruri && namesMidreg(ruri, own) ? retargetToUpstream(ruri, deps.upstreamUri) : deps.upstreamUri;
      direction = 'to-platform';
    }

    const started = clock();
    const outcome = await req.proxyTo(destination, { recordRoute: req.method === 'INVITE' || req.method === 'SUBSCRIBE' || req.method === 'REFER' });
    log.info('request proxied', { ...base, direction, destination, status: outcome.finalStatus, ms: clock() - started });
  };
}
