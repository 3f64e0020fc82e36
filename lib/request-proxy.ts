// Every request other than REGISTER and MESSAGE: users' requests go to the platform, the
// platform's requests go to users from the replica, so voice works exactly as without midreg.
import { isServedDomain } from './aor.js';
import type { LocationStore } from './location-store.js';
import type { Logger } from './logger.js';
import { branchFor, isTrustedPeer, locate } from './routing.js';
import { parseUri, type RequestHandler, type SipRequest } from './sip/drachtio.js';
import { nextMaxForwards } from './upstream.js';

/** Methods proxied this way (drachtio-server handles ACK, CANCEL and in-dialog requests it record-routed). */
export const PROXIED_METHODS = ['INVITE', 'OPTIONS', 'SUBSCRIBE', 'NOTIFY', 'INFO', 'REFER', 'PUBLISH', 'UPDATE', 'BYE'] as const;
export const ALLOW = ['INVITE', 'ACK', 'CANCEL', 'BYE', 'OPTIONS', 'REGISTER', 'MESSAGE', 'SUBSCRIBE', 'NOTIFY', 'INFO', 'REFER', 'PUBLISH', 'UPDATE'].join(', ');

export interface RequestProxyDeps {
  store: Pick<LocationStore, 'liveBindings' | 'liveBindingsByContact'>;
  upstreamUri: string;
  domains: readonly string[];
  trustedPeers: readonly string[];
  noBindingStatus: 404 | 480;
  /** SIP hosts of midreg itself (drachtio-server's addresses), for OPTIONS pings to it. */
  ownHosts(): string[];
  logger: Logger;
  clock?: () => number;
}

function addressedToMidreg(req: SipRequest, deps: RequestProxyDeps): boolean {
  const ruri = parseUri(req.uri);
  if (!ruri || ruri.user !== undefined) return false;
  return isServedDomain(ruri.host, deps.domains) || deps.ownHosts().includes(ruri.host.toLowerCase());
}

export function createProxyHandler(deps: RequestProxyDeps): RequestHandler {
  const clock = deps.clock ?? Date.now;
  const log = deps.logger;
  return async (req, res) => {
    const source = `${req.source.transport}:${req.source.address}:${req.source.port}`;
    const base = { event: 'proxy', method: req.method, ruri: req.uri, callId: req.header('Call-ID'), source };

    if (req.method === 'OPTIONS' && addressedToMidreg(req, deps)) {
      res.send(200, { headers: { Allow: ALLOW, Accept: 'application/sdp, text/plain' } });
      log.info('OPTIONS answered', { ...base, status: 200 });
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

    let destination: string;
    let direction: 'to-platform' | 'to-user';
    if (isTrustedPeer(req.source, deps.trustedPeers)) {
      // From the platform: a request for a registered user (usually via the Path midreg added).
      const target = locate(req.uri, deps.store, deps.domains, clock());
      if (target.kind === 'no-binding') {
        res.send(deps.noBindingStatus);
        log.info('request refused: no live binding', { ...base, status: deps.noBindingStatus, aor: target.aor });
        return;
      }
      if (target.kind === 'upstream') {
        res.send(404, { reason: 'Not A Registered Contact' });
        log.info('request refused: not for a registered user', { ...base, status: 404 });
        return;
      }
      // The platform already forked per contact; an AoR-addressed request goes to the best one.
      const branch = branchFor(target.bindings[0] as NonNullable<(typeof target.bindings)[0]>, 0);
      destination = branch.kind === 'send' ? branch.nextHop ?? branch.requestUri : branch.binding.contact;
      direction = 'to-user';
    } else {
      destination = deps.upstreamUri;
      direction = 'to-platform';
    }

    const started = clock();
    const outcome = await req.proxyTo(destination, { recordRoute: req.method === 'INVITE' || req.method === 'SUBSCRIBE' || req.method === 'REFER' });
    log.info('request proxied', { ...base, direction, destination, status: outcome.finalStatus, ms: clock() - started });
  };
}
