// midreg's own hostile-input corpus: one entry per case, each with the answer it must get through
// the real stack (drachtio-server from drachtio.conf.xml → midreg → Kamailio). Every message is
// written for 127.0.0.1 only: the Via carries the sender's port, every other URI the test's sink.
// Users whose name starts with "open" are accepted by the test Kamailio without digest auth, so a
// REGISTER that wrongly reaches it would get a 200 and show up in the replica.

/** What a case needs to build its bytes. */
export interface CaseContext {
  /** Port in the Via sent-by (the sender's own port). */
  via: number;
  /** Port for every other URI (a sink of the test: nothing else listens there). */
  sink: number;
  /** Unique per case (Call-ID, branch, tag are derived from it). */
  id: string;
}

/** The final status a case must get, whether it reaches the registrar, and midreg's log line for it (when midreg decides). */
export interface Expectation { answer: number; relayed: boolean; decision?: RegExp; note: string }

export interface HostileCase {
  name: string;
  transport: 'udp' | 'tcp';
  build(ctx: CaseContext): Buffer;
  expect: Expectation;
  /** When a 2xx is expected: the AoR (canonical) whose replica entry it creates. */
  stores?: string;
}

const CRLF = '\r\n';

/** Assembles a message: start line, header lines, then Content-Length (unless given) and body. */
export function sipMessage(startLine: string, headers: string[], body = ''): Buffer {
  const hasLength = headers.some((h) => /^(content-length|l)\s*:/i.test(h));
  const all = hasLength ? headers : [...headers, `Content-Length: ${Buffer.byteLength(body, 'latin1')}`];
  return Buffer.from([startLine, ...all, '', body].join(CRLF), 'latin1');
}

/** The header lines of an ordinary REGISTER for `user`, each replaceable or removable by name. */
export function registerHeaders(ctx: CaseContext, user: string, over: Record<string, string | null> = {}, transport: 'UDP' | 'TCP' = 'UDP'): string[] {
  const base: Record<string, string> = {
    Via: `SIP/2.0/${transport} 127.0.0.1:${ctx.via};branch=z9hG4bK-${ctx.id}`,
    'Max-Forwards': '70',
    From: `<sip:${user}@127.0.0.1>;tag=t-${ctx.id}`,
    To: `<sip:${user}@127.0.0.1>`,
    'Call-ID': `${ctx.id}@hostile`,
    CSeq: '1 REGISTER',
    Contact: `<sip:${user}@127.0.0.1:${ctx.sink}>`,
    Expires: '60',
    'User-Agent': 'midreg-hostile',
  };
  const merged: Record<string, string | null> = { ...base, ...over };
  return Object.entries(merged).flatMap(([name, value]) => (value === null ? [] : [`${name}: ${value}`]));
}

/** An ordinary REGISTER for `user` (see registerHeaders), plus `extra` header lines. */
export function register(ctx: CaseContext, user: string, over: Record<string, string | null> = {}, transport: 'UDP' | 'TCP' = 'UDP', extra: string[] = []): Buffer {
  return sipMessage(`REGISTER sip:127.0.0.1:${ctx.sink} SIP/2.0`, [...registerHeaders(ctx, user, over, transport), ...extra]);
}

const SQL = "'; DROP TABLE binding; --";
const SQL_ESCAPED = encodeURIComponent(SQL).replace(/'/g, '%27');
/** ~100 KB of extension headers. */
const PADDING = Array.from({ length: 1000 }, (_, i) => `X-Pad-${String(i).padStart(4, '0')}: ${'p'.repeat(90)}`);

const refused = (status: number, note: string, decision?: RegExp): Expectation => ({ answer: status, relayed: false, note, ...(decision ? { decision } : {}) });
const relayed = (status: number, note: string): Expectation => ({ answer: status, relayed: true, decision: /^REGISTER relayed$/, note });

/** REGISTER cases, each sent once from a fresh port (the flood and scanner cases live in the test). */
export const REGISTER_CASES: HostileCase[] = [
  { name: 'REGISTER without To', transport: 'udp', build: (c) => register(c, 'openno-to', { To: null }), expect: refused(400, 'drachtio-server (sofia-sip) refuses it: To is mandatory (RFC 3261 §8.1.1)') },
  { name: 'REGISTER without From', transport: 'udp', build: (c) => register(c, 'openno-from', { From: null }), expect: refused(400, 'drachtio-server refuses it: From is mandatory') },
  { name: 'REGISTER without Call-ID', transport: 'udp', build: (c) => register(c, 'openno-callid', { 'Call-ID': null }), expect: refused(400, 'drachtio-server refuses it: Call-ID is mandatory') },
  { name: 'REGISTER without CSeq', transport: 'udp', build: (c) => register(c, 'openno-cseq', { CSeq: null }), expect: refused(400, 'drachtio-server refuses it: CSeq is mandatory') },
  { name: 'REGISTER with an unterminated Contact <', transport: 'udp', build: (c) => register(c, 'openbad-contact', { Contact: `<sip:openbad-contact@127.0.0.1:${c.sink}` }), expect: refused(400, 'unparsable Contact') },
  { name: 'REGISTER with a Contact that is not a URI', transport: 'udp', build: (c) => register(c, 'openbad-contact2', { Contact: '@@@ not a uri @@@' }), expect: refused(400, 'unparsable Contact') },
  { name: 'REGISTER with an unparsable To URI', transport: 'udp', build: (c) => register(c, 'openbad-to', { To: '<sip:@@@:::>' }), expect: refused(400, 'unparsable To') },
  { name: 'REGISTER with a To that is not a SIP URI', transport: 'udp', build: (c) => register(c, 'openbad-to2', { To: '<tel:+15551234>' }), expect: refused(400, 'midreg: To is not an address-of-record (RFC 3261 §10.3 step 5 needs a SIP/SIPS AoR)', /^REGISTER refused$/) },
  { name: 'Contact: <uri>, * (star after another contact)', transport: 'udp', build: (c) => register(c, 'openstar-mixed', { Contact: `<sip:openstar-mixed@127.0.0.1:${c.sink}>, *`, Expires: '0' }), expect: refused(400, 'RFC 3261 §10.3 step 6: * only alone', /^REGISTER refused$/) },
  { name: 'Contact: * with Expires: 3600', transport: 'udp', build: (c) => register(c, 'openstar-3600', { Contact: '*', Expires: '3600' }), expect: refused(400, 'RFC 3261 §10.3 step 6: * needs Expires: 0 (drachtio-server already refuses it)') },
  { name: 'Contact: * without Expires', transport: 'udp', build: (c) => register(c, 'openstar-noexp', { Contact: '*', Expires: null }), expect: refused(400, 'RFC 3261 §10.3 step 6: * needs Expires: 0', /^REGISTER refused$/) },
  { name: 'Expires: -1', transport: 'udp', build: (c) => register(c, 'openexp-neg', { Expires: '-1' }), expect: refused(400, 'not delta-seconds: drachtio-server refuses it (400 Bad Expires Header)') },
  { name: 'Expires: 99999999999', transport: 'udp', build: (c) => register(c, 'openexp-huge', { Expires: '99999999999' }), expect: relayed(400, "relayed: the registrar's call (Kamailio's sanity check refuses an Expires over 2^32-1)") },
  { name: 'Expires: soon', transport: 'udp', build: (c) => register(c, 'openexp-word', { Expires: 'soon' }), expect: refused(400, 'not delta-seconds: drachtio-server refuses it (400 Bad Expires Header)') },
  { name: 'Contact ;expires=99999999999', transport: 'udp', build: (c) => register(c, 'openexp-param', { Contact: `<sip:openexp-param@127.0.0.1:${c.sink}>;expires=99999999999`, Expires: null }), expect: relayed(200, 'relayed; the registrar grants its max_expires (300) and the replica keeps what it granted'), stores: 'sip:openexp-param@127.0.0.1' },
  { name: 'CSeq method mismatch (CSeq: 1 INVITE)', transport: 'udp', build: (c) => register(c, 'opencseq-mm', { CSeq: '1 INVITE' }), expect: refused(400, 'drachtio-server refuses it (RFC 3261 §8.2: CSeq method must match)') },
  { name: 'CSeq 4294967296 (over 2^32-1)', transport: 'udp', build: (c) => register(c, 'opencseq-big', { CSeq: '4294967296 REGISTER' }), expect: refused(400, 'RFC 3261 §8.1.1.5: CSeq sequence number < 2^31') },
  { name: 'Max-Forwards: 0', transport: 'udp', build: (c) => register(c, 'openmf0', { 'Max-Forwards': '0' }), expect: refused(483, 'RFC 3261 §16.3 step 2', /^REGISTER refused$/) },
  { name: 'Max-Forwards: 99999', transport: 'udp', build: (c) => register(c, 'openmf-huge', { 'Max-Forwards': '99999' }), expect: refused(400, 'Max-Forwards is 0-255: midreg refuses it', /^REGISTER refused$/) },
  { name: 'REGISTER for a domain midreg does not serve', transport: 'udp', build: (c) => sipMessage(`REGISTER sip:other.invalid SIP/2.0`, registerHeaders(c, 'openother', { To: '<sip:openother@other.invalid>', From: `<sip:openother@other.invalid>;tag=t-${c.id}` })), expect: refused(403, 'midreg: domain not served', /^REGISTER refused$/) },
  {
    name: 'non-UTF-8 bytes in headers', transport: 'udp',
    build: (c) => register(c, 'openbytes', { From: `"Jos\xe9 \xff\xfe" <sip:openbytes@127.0.0.1>;tag=t-${c.id}`, 'User-Agent': 'UA-\xc3\x28-\xa0\xa1-\xff', 'X-Bytes': '\x80\x81\xfe\xff' }),
    expect: relayed(200, 'relayed unchanged; the registrar accepts it'),
    stores: 'sip:openbytes@127.0.0.1',
  },
  {
    name: "SQL-looking strings ('; DROP TABLE binding; --) in every field", transport: 'udp',
    build: (c) => register(c, `open${SQL_ESCAPED}`, {
      From: `"${SQL}" <sip:open${SQL_ESCAPED}@127.0.0.1>;tag=${encodeURIComponent(SQL).replace(/[%']/g, '')}`,
      To: `"${SQL}" <sip:open${SQL_ESCAPED}@127.0.0.1>`,
      'Call-ID': `${c.id}-'--DROP-TABLE-binding--`,
      Contact: `"${SQL}" <sip:open${SQL_ESCAPED}@127.0.0.1:${c.sink};x=${SQL_ESCAPED.replace(/%/g, '')}>;+sip.instance="<urn:uuid:${SQL}>"`,
      'User-Agent': SQL,
      Path: `<sip:127.0.0.1:${c.sink};lr;q=${SQL_ESCAPED.replace(/%/g, '')}>`,
    }, 'UDP', [`X-Sql: ${SQL}`]),
    expect: relayed(200, 'relayed; stored verbatim as data (prepared statements), every table intact'),
    stores: `sip:open${SQL}@127.0.0.1`.toLowerCase(),
  },
];

/** A MESSAGE from `from` to `to` (users of 127.0.0.1 unless `to` is a full URI), body as given. */
export function messageRequest(ctx: CaseContext, opts: { from: string; to: string; body: string; over?: Record<string, string | null>; transport?: 'UDP' | 'TCP' }): Buffer {
  const target = opts.to.includes('@') ? `sip:${opts.to}` : `sip:${opts.to}@127.0.0.1`;
  const base: Record<string, string | null> = {
    Via: `SIP/2.0/${opts.transport ?? 'UDP'} 127.0.0.1:${ctx.via};branch=z9hG4bK-${ctx.id}`,
    'Max-Forwards': '70',
    From: `<sip:${opts.from}@127.0.0.1>;tag=t-${ctx.id}`,
    To: `<${target}>`,
    'Call-ID': `${ctx.id}@hostile`,
    CSeq: '1 MESSAGE',
    'Content-Type': 'text/plain',
    ...opts.over,
  };
  return sipMessage(`MESSAGE ${target} SIP/2.0`, Object.entries(base).flatMap(([n, v]) => (v === null ? [] : [`${n}: ${v}`])), opts.body);
}

/** Who sends a MESSAGE case: the registered alice (from her registered port), or a stranger. */
export interface MessageCase {
  name: string;
  sender: 'alice' | 'stranger';
  build(ctx: CaseContext): Buffer;
  answer: number;
  /** Whether bob (the recipient's registered device) receives it. */
  delivered: boolean;
  /** Whether it is relayed to the platform (Kamailio). */
  relayed: boolean;
  note: string;
}

/** MESSAGE cases; the suite registers openalice and openbob first and runs with MIDREG_MAX_MESSAGE_BYTES=1000. */
export const MESSAGE_CASES: MessageCase[] = [
  { name: 'MESSAGE with Content-Length: 99999999999', sender: 'alice', build: (c) => messageRequest(c, { from: 'openalice', to: 'openbob', body: 'hi', over: { 'Content-Length': '99999999999' } }), answer: 400, delivered: false, relayed: false, note: 'drachtio-server refuses it (body shorter than declared, UDP)' },
  { name: 'MESSAGE with an empty body', sender: 'alice', build: (c) => messageRequest(c, { from: 'openalice', to: 'openbob', body: '', over: { 'Content-Type': null } }), answer: 200, delivered: true, relayed: false, note: 'delivered: an empty MESSAGE is for the recipient to judge' },
  { name: 'MESSAGE over MIDREG_MAX_MESSAGE_BYTES (1,500-byte body, limit 1,000)', sender: 'alice', build: (c) => messageRequest(c, { from: 'openalice', to: 'openbob', body: 'x'.repeat(1500) }), answer: 413, delivered: false, relayed: false, note: 'midreg: 413' },
  { name: 'MESSAGE whose Request-URI is in another domain', sender: 'alice', build: (c) => messageRequest(c, { from: 'openalice', to: 'someone@other.invalid', body: 'hi' }), answer: 404, delivered: false, relayed: true, note: "relayed to the platform (the next hop is MIDREG_UPSTREAM, never the foreign domain): the platform's call, Kamailio answers 404" },
  { name: 'MESSAGE with a spoofed From (alice\'s registered source, From: openbob)', sender: 'alice', build: (c) => messageRequest(c, { from: 'openbob', to: 'openalice', body: 'hi' }), answer: 403, delivered: false, relayed: false, note: 'midreg: the From AoR has no live binding registered from this source' },
  { name: 'MESSAGE from an unregistered source claiming to be alice', sender: 'stranger', build: (c) => messageRequest(c, { from: 'openalice', to: 'openbob', body: 'hi' }), answer: 403, delivered: false, relayed: false, note: 'midreg: sender not registered from this address and port' },
];

/** A proxied request (OPTIONS) from a UA that is not the platform. */
export function optionsRequest(ctx: CaseContext, over: Record<string, string | null> = {}, extra: string[] = []): Buffer {
  const base: Record<string, string | null> = {
    Via: `SIP/2.0/UDP 127.0.0.1:${ctx.via};branch=z9hG4bK-${ctx.id}`,
    'Max-Forwards': '70',
    From: `<sip:openalice@127.0.0.1>;tag=t-${ctx.id}`,
    To: '<sip:someone@127.0.0.1>',
    'Call-ID': `${ctx.id}@hostile`,
    CSeq: '1 OPTIONS',
    ...over,
  };
  return sipMessage(`OPTIONS sip:someone@127.0.0.1:${ctx.sink} SIP/2.0`, [...Object.entries(base).flatMap(([n, v]) => (v === null ? [] : [`${n}: ${v}`])), ...extra]);
}

/**
 * Inputs that take the stack down today (midreg bugs, see docs/hostile-input.md). Each runs on a
 * stack of its own; the expectation is what must happen: a final answer, drachtio-server and
 * midreg still serving (an ordinary REGISTER right after gets its 200).
 */
export interface StackKiller {
  name: string;
  transport: 'udp' | 'tcp';
  build(ctx: CaseContext): Buffer;
  /** Acceptable final statuses. */
  answers: number[];
  note: string;
}

export const STACK_KILLERS: StackKiller[] = [
  {
    name: 'Contact: *, <uri> with Expires: 0', transport: 'udp',
    build: (c) => register(c, 'openstar-first', { Contact: `*, <sip:openstar-first@127.0.0.1:${c.sink}>`, Expires: '0' }),
    answers: [400], note: 'must be refused 400 (RFC 3261 §10.3 step 6); today drachtio-server dies (SIGSEGV)',
  },
  {
    name: 'Contact: *;expires=0 with Expires: 0', transport: 'udp',
    build: (c) => register(c, 'openstar-param', { Contact: '*;expires=0', Expires: '0' }),
    answers: [400], note: 'STAR takes no parameters (RFC 3261 §20.10): must be refused 400; today drachtio-server dies (SIGSEGV)',
  },
  {
    name: '1,000 Contacts in one REGISTER (TCP, ~46 KB)', transport: 'tcp',
    build: (c) => register(c, 'openmany', { Contact: null }, 'TCP', Array.from({ length: 1000 }, (_, i) => `Contact: <sip:openmany@127.0.0.1:${c.sink};line=${i}>`)),
    answers: [413, 503, 513], note: "relayed it would be the registrar's call (Kamailio max_contacts 3 → 503); refused, 413/513. Today: no answer and midreg never answers anything again",
  },
  {
    name: '~100 KB of headers (TCP)', transport: 'tcp',
    build: (c) => register(c, 'openbig', {}, 'TCP', PADDING),
    answers: [200, 413, 513], note: 'relayed (200) or refused 413/513. Today: no answer and midreg never answers anything again',
  },
];

/**
 * A REGISTER whose Contact user part carries a %-escape drachtio-server re-serializes on the way
 * out (sofia-sip unescapes characters that need no escaping: %2B → +), so the registrar stores and
 * echoes another spelling of the same URI (RFC 3261 §19.1.4: they are equal URIs).
 */
export function escapedContactRegister(ctx: CaseContext): Buffer {
  return register(ctx, 'openesc', { Contact: `<sip:%2B15551234@127.0.0.1:${ctx.sink}>` });
}
