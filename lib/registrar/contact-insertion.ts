// Contact insertion (MIDREG_INSERTION=contact): for registrars that ignore Path (RFC 3327 is an
// extension many legacy PBXs never implemented), each Contact of a relayed REGISTER is rewritten
// to a URI at midreg's own address carrying an opaque binding key, so the registrar sends calls
// and messages for that binding to midreg, which finds the binding by its key and forwards to the
// phone's flow. OpenSIPS' mid_registrar does the same with its `;ctid=` parameter. Pure functions:
// the relay and the routers do the I/O.
import { createHash } from 'node:crypto';
import { contactKey } from './registration.js';
import type { NameAddr } from '../sip/drachtio.js';

/** The URI parameter that carries the binding key in a rewritten Contact. */
export const KEY_PARAM = 'ctid';

/** midreg's own SIP address, as the registrar should reach it. */
export interface SelfAddress {
  scheme: 'sip' | 'sips';
  /** `host:port` (IPv6 in brackets). */
  hostport: string;
  /** `udp` adds no parameter; anything else is written as `;transport=`. */
  transport: string;
}

/** What midreg told the registrar for one binding: the Contact URI it holds, and the key in it. */
export interface Insertion {
  contact: string;
  key: string;
}

/**
 * The binding key: derived from the AoR and the phone's Contact (compared as RFC 3261 §19.1.4
 * says), so every refresh of the binding presents the registrar the same rewritten Contact and
 * the registrar refreshes its binding instead of adding one. It identifies; it does not
 * authorise: a key is only ever looked up among stored bindings, so a forged one reaches nothing.
 */
export function insertionKey(aor: string, phoneContact: string): string {
  return createHash('sha256').update(`${aor}\n${contactKey(phoneContact)}`).digest('base64url').slice(0, 22);
}

/** `sip:host:port;lr;transport=tcp` (MIDREG_PATH_URI, or the Path URI derived from drachtio-server) → midreg's address. */
export function selfAddressFrom(uri: string): SelfAddress | undefined {
  const match = /^(sips?):(?:[^@;]*@)?([^;?]+)([^?]*)/i.exec(uri.trim());
  if (!match) return undefined;
  const transport = /;transport=([a-z]+)/i.exec(match[3] ?? '')?.[1]?.toLowerCase() ?? 'udp';
  return { scheme: (match[1] ?? 'sip').toLowerCase() === 'sips' ? 'sips' : 'sip', hostport: match[2] ?? '', transport };
}

/** The user part of a SIP URI as written (escapes kept), or undefined. */
function userPart(uri: string): string | undefined {
  const match = /^[a-z][a-z0-9+.-]*:([^@;?]*)@/i.exec(uri);
  return match?.[1] === undefined || match[1] === '' ? undefined : match[1];
}

/**
 * The Contact URI the registrar gets for one of the phone's: midreg's address, the phone's user
 * part kept (registrars that match Contacts by user, and people reading their location table,
 * find it), and the key. Nothing of the phone's address crosses to the registrar.
 */
export function insertedContactUri(phoneContact: string, key: string, self: SelfAddress): string {
  const user = userPart(phoneContact);
  const transport = self.transport === 'udp' ? '' : `;transport=${self.transport}`;
  return `${self.scheme}:${user !== undefined ? `${user}@` : ''}${self.hostport};${KEY_PARAM}=${key}${transport}`;
}

/** The binding key a Request-URI or Contact carries, if it is one midreg wrote. */
export function keyOf(uri: string): string | undefined {
  const params = uri.replace(/^<|>$/g, '').split('?')[0] ?? '';
  const match = new RegExp(`;${KEY_PARAM}=([A-Za-z0-9_-]{1,64})(?:;|$)`, 'i').exec(params);
  return match?.[1];
}

/** A Contact header value: `<uri>;name=value;flag` (header parameters in their given order, quotes kept). */
export function formatContact(contact: NameAddr): string {
  const params = Object.entries(contact.params).map(([name, value]) => (value === '' ? `;${name}` : `;${name}=${value}`)).join('');
  return `<${contact.uri}>${params}`;
}

/**
 * The REGISTER's Contacts as the registrar gets them: each rewritten to midreg's address with its
 * key, every header parameter (`expires`, `q`, `+sip.instance`, `reg-id`, feature tags) kept, so
 * the registrar grants and matches exactly as it would for the phone (RFC 5626 flows included).
 */
export function rewriteContacts(aor: string, contacts: readonly NameAddr[], self: SelfAddress): { header: string; byKey: Map<string, NameAddr> } {
  const byKey = new Map<string, NameAddr>();
  const rewritten = contacts.map((contact) => {
    const key = insertionKey(aor, contact.uri);
    byKey.set(key, contact);
    return formatContact({ uri: insertedContactUri(contact.uri, key, self), params: contact.params });
  });
  return { header: rewritten.join(', '), byKey };
}

/** One Contact of the registrar's reply, seen from the phone's side. */
export interface MappedContact {
  /** The phone's own Contact URI (or the registrar's, for a binding midreg did not rewrite), with the reply's parameters (its `expires`). */
  contact: NameAddr;
  insertion: Insertion | null;
}

/**
 * RFC 3261 §10.2.4: the phone learns its binding's expiry from its own Contact in the 200, so
 * every Contact midreg wrote is mapped back to the phone's, by key: one this REGISTER rewrote, or
 * one a stored binding holds (another device of the AoR, a query). A Contact midreg did not write
 * (bound elsewhere), or whose key it no longer knows, passes through unchanged.
 */
export function mapReplyContacts(reply: readonly NameAddr[], phoneContactOf: (key: string) => string | undefined): MappedContact[] {
  return reply.map((contact) => {
    const key = keyOf(contact.uri);
    const phone = key === undefined ? undefined : phoneContactOf(key);
    if (key === undefined || phone === undefined) return { contact, insertion: null };
    return { contact: { uri: phone, params: contact.params }, insertion: { contact: contact.uri, key } };
  });
}
