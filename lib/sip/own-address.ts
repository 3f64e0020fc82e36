// Which Request-URIs name midreg itself, and where such a request goes instead. Phones provisioned
// by IP address (most desk phones) are given midreg's address as their SIP server and domain, so
// they send `REGISTER sip:203.0.113.5` and `INVITE sip:1001@203.0.113.5:5060`. drachtio-server
// refuses to send a request to one of its own addresses ("can not send request to myself") and its
// proxy replaces such a Request-URI by the bare destination, so these must be retargeted here.
import { isIP } from 'node:net';
import { KEY_PARAM } from '../registrar/contact-insertion.js';
import type { SipUri } from './drachtio.js';

export interface OwnAddresses {
  /** drachtio-server's SIP listen addresses as it announces them, e.g. `udp/127.0.0.1:5060`. */
  sipAddresses: readonly string[];
  /** Served domains (MIDREG_DOMAINS); an IP literal among them is midreg's address as phones know it. */
  domains: readonly string[];
}

/** `udp/127.0.0.1:5060` or `tcp/[::1]:5080` → host (lower case, IPv6 in brackets) and port. */
function listenHostPort(announced: string): { host: string; port: number } | undefined {
  const match = /^\w+\/(\[[^\]]+\]|[^:]+)(?::(\d+))?$/.exec(announced.trim());
  if (!match) return undefined;
  return { host: (match[1] ?? '').toLowerCase(), port: match[2] === undefined ? 5060 : Number(match[2]) };
}

/** Whether `host` (as in a URI: IPv6 in brackets) is an IP literal. */
export function isIpLiteral(host: string): boolean {
  return isIP(host.replace(/^\[(.*)\]$/, '$1')) !== 0;
}

/** drachtio-server's own addresses, as hosts a Request-URI may name. */
export function ownHosts(own: OwnAddresses): string[] {
  const hosts = new Set<string>();
  for (const announced of own.sipAddresses) {
    const listen = listenHostPort(announced);
    if (listen) hosts.add(listen.host);
  }
  return [...hosts];
}

/**
 * Whether `uri` addresses midreg itself rather than a domain or host behind it:
 * - its host is an IP literal listed in MIDREG_DOMAINS (that is midreg's address as the phones were
 *   provisioned with it, whatever port they write), or
 * - host and port are one of drachtio-server's listen addresses, the rule drachtio-server itself
 *   applies (`isLocalSipUri()`: no port means 5060, `localhost` stands for 127.0.0.1).
 */
export function namesMidreg(uri: SipUri, own: OwnAddresses): boolean {
  const host = uri.host.toLowerCase();
  if (isIpLiteral(host) && own.domains.some((d) => d.toLowerCase() === host)) return true;
  const port = uri.port ?? 5060;
  const asListened = host === 'localhost' ? '127.0.0.1' : host;
  return own.sipAddresses.some((announced) => {
    const listen = listenHostPort(announced);
    return listen !== undefined && listen.host === asListened && listen.port === port;
  });
}

/**
 * URI parameters that describe the hop to midreg, not the target (RFC 3261 §19.1.1), and the
 * binding key of a Contact midreg wrote (lib/registrar/contact-insertion.ts), which means nothing upstream.
 */
const HOP_PARAMS = new Set(['transport', 'maddr', 'lr', 'ttl', KEY_PARAM]);

/**
 * The Request-URI a request addressed to midreg itself carries to the registrar: the registrar's
 * own URI (MIDREG_UPSTREAM: scheme, host, port, transport), with the user part and the
 * user-related parameters (`user=phone`…) of the original kept, so `INVITE sip:1001@<midreg>`
 * becomes `INVITE sip:1001@<registrar>` and `REGISTER sip:<midreg>` becomes `REGISTER
 * sip:<registrar>`. RFC 3261 §10.2: the REGISTER Request-URI "names the domain of the location
 * service for which the registration is meant"; for a phone given midreg's address, that service
 * is the registrar behind midreg.
 */
export function retargetToUpstream(uri: SipUri, upstreamUri: string): string {
  const match = /^(sips?):([^;?]+)((?:;[^?]*)?)/i.exec(upstreamUri.trim());
  if (!match) return upstreamUri;
  const [, scheme = 'sip', hostport = '', upstreamParams = ''] = match;
  const kept = Object.entries(uri.params)
    .filter(([name]) => !HOP_PARAMS.has(name.toLowerCase()))
    .map(([name, value]) => (value === null || value === '' ? `;${name}` : `;${name}=${value}`))
    .join('');
  const upstreamKept = upstreamParams.split(';').filter((p) => p !== '' && p.toLowerCase() !== 'lr').map((p) => `;${p}`).join('');
  return `${scheme.toLowerCase()}:${uri.user !== undefined ? `${uri.user}@` : ''}${hostport}${kept}${upstreamKept}`;
}
