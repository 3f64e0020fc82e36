import type { SipUri } from '../sip/drachtio.js';

/**
 * RFC 3261 §10.3 step 5: "the URI MUST be converted to a canonical form. To do that, all URI
 * parameters MUST be removed (including the user-param), and any escaped characters MUST be
 * converted to their unescaped form. The result serves as an index into the list of bindings."
 *
 * midreg also drops the port and lower-cases the user part, because the replica has to key
 * bindings the way the main registrar does, and registrars key by user@domain and, by default,
 * case-insensitively (Kamailio usrloc `case_sensitive=0`, OpenSIPS likewise).
 */
export function canonicalAor(uri: SipUri): string {
  const scheme = uri.scheme.toLowerCase();
  const host = uri.host.toLowerCase();
  if (uri.user === undefined) return `${scheme}:${host}`;
  return `${scheme}:${unescapeUser(uri.user).toLowerCase()}@${host}`;
}

function unescapeUser(user: string): string {
  try {
    return decodeURIComponent(user);
  } catch {
    // A stray '%' is not a valid escape; RFC 3261 gives no rule for it, so the text stays as is.
    return user;
  }
}

/** Whether `host` is one of the served SIP domains (domains compare case-insensitively). */
export function isServedDomain(host: string, servedDomains: readonly string[]): boolean {
  const wanted = host.toLowerCase();
  return servedDomains.some((domain) => domain.toLowerCase() === wanted);
}
