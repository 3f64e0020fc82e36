// RFC 4475 ("SIP Torture Test Messages") through the real stack: each of the 49 messages, byte-exact
// except for addresses, is sent over UDP (TCP when its top Via names a stream transport) to the real
// drachtio-server configured from drachtio.conf.xml, with midreg and Kamailio behind it. Every
// message has its observed outcome pinned in TABLE: where that differs from what RFC 4475 asks,
// the entry says why, so a change of behaviour (better or worse) fails this suite.
//
// Addresses: in the header section every host (example.com/.net/.org/.edu, 192.0.2.x, …) becomes
// 127.0.0.1; a Via gets the sender's port (responses come back to it), every other URI the port of
// a sink this suite owns (anything forwarded to an address taken from a message lands there and is
// recorded). SDP bodies get 127.0.0.1 too, and a numeric Content-Length moves by the same delta.
import { strict as assert } from 'node:assert';
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import type { Binding } from '../../lib/registrar/registration.js';
import { e2eSkipReason, freePort, logLines, REPO_ROOT } from '../support/processes.js';
import {
  digestAuthorization, exchange, foreignAddresses, headerOf, parseSipMessage, rewriteForLoopback, sendAndCollect, SipPeer, type Exchange,
} from '../support/raw-sip.js';
import { runSipp } from '../support/sipp.js';
import { startStack, type Stack } from '../support/stack.js';
import { allLiveBindings, liveBindingsOf } from '../support/replica.js';

const skip = e2eSkipReason();
if (skip) console.log(`# e2e RFC 4475 torture suite SKIPPED: ${skip}`);

const CORPUS_DIR = process.env['RFC4475_DIR'] ?? join(REPO_ROOT, 'test', 'hostile', 'rfc4475');
const WAIT_MS = 1500;

/** What one message did, as observed from outside. */
interface Outcome {
  /** Distinct response statuses the sender got, in order (provisional ones included). */
  answer: number[];
  /** midreg's decision log line for it (`message` field), or null when midreg logged nothing. */
  midreg: string | null;
  /** Kamailio (the registrar/platform) received it. */
  upstream: boolean;
  /** Something forwarded it to an address taken from the message (the suite's sink). */
  sink: boolean;
}

type Kind = 'valid' | 'invalid' | 'response';

interface Entry {
  section: string;
  title: string;
  kind: Kind;
  /** What RFC 4475 says an element does with it. */
  rfc: string;
  rfcAccepts: (o: Outcome) => boolean;
  /** The outcome pinned for the real stack. */
  observed: Outcome;
  /** Why the observed outcome is what it is where it departs from the RFC (or needs explaining). */
  why?: string;
}

const finals = (o: Outcome): number[] => o.answer.filter((s) => s >= 200);
/** Refused with one of `codes` before reaching the registrar/platform. */
const refusedWith = (...codes: number[]) => (o: Outcome): boolean => !o.upstream && !o.sink && finals(o).length > 0 && finals(o).every((s) => codes.includes(s));
/** No answer at all and not forwarded anywhere. */
const dropped = (o: Outcome): boolean => o.answer.length === 0 && !o.upstream && !o.sink;
/** Handled as a valid request: relayed (to the platform or along its own route), or answered by midreg with a non-syntax final response. */
const handled = (o: Outcome): boolean => finals(o).length > 0 && (o.upstream || o.sink || (o.midreg !== null && !finals(o).some((s) => s === 400 || s === 505)));
const either = (...tests: Array<(o: Outcome) => boolean>) => (o: Outcome): boolean => tests.some((t) => t(o));

const RELAYED_404: Outcome = { answer: [404], midreg: 'request proxied', upstream: true, sink: false };
const INVITE_RELAYED_404: Outcome = { answer: [100, 404], midreg: 'request proxied', upstream: true, sink: false };
const REGISTER_401: Outcome = { answer: [401], midreg: 'REGISTER relayed', upstream: true, sink: false };
const refused = (...answer: number[]): Outcome => ({ answer, midreg: null, upstream: false, sink: false });
const NOTHING: Outcome = { answer: [], midreg: null, upstream: false, sink: false };

/**
 * RFC 4475 §3, message by message. `rfc` paraphrases the RFC's own expectation; the platform
 * behind midreg (Kamailio) answers 404 for an unregistered user and 401 to an unauthenticated
 * REGISTER, which is what "handled as a valid request" looks like here.
 */
const TABLE: Record<string, Entry> = {
  // ---- 3.1.1 valid messages: must be parsed and processed ------------------------------------
  wsinv: {
    section: '3.1.1.1', title: 'A Short Tortuous INVITE', kind: 'valid',
    rfc: 'valid: parse and process', rfcAccepts: handled,
    observed: { answer: [404], midreg: null, upstream: false, sink: true },
    why: 'parsed, and loose-routed by drachtio-server itself (stateless, midreg never sees it): it has a To tag and a Route with ;lr whose host, once rewritten, is drachtio-server\'s own address, so drachtio-server pops the Route and forwards to the Request-URI (the sink, which answered 404) — RFC 3261 §16.4 behaviour, but see the open-relay finding in docs/hostile-input.md',
  },
  intmeth: {
    section: '3.1.1.2', title: 'Wide Range of Valid Characters', kind: 'valid',
    rfc: 'valid: parse and process (an unknown method: 501/405 from a UAS, forwarded by a proxy)', rfcAccepts: handled,
    observed: NOTHING,
    why: 'drachtio-server (sofia-sip) silently drops it: no response, nothing reaches midreg (its method token and quoted-pair/8-bit header values are not accepted by sofia-sip)',
  },
  esc01: { section: '3.1.1.3', title: 'Valid Use of the % Escaping Mechanism', kind: 'valid', rfc: 'valid: parse and process', rfcAccepts: handled, observed: INVITE_RELAYED_404 },
  escnull: { section: '3.1.1.4', title: 'Escaped Nulls in URIs', kind: 'valid', rfc: 'valid REGISTER: parse and process', rfcAccepts: handled, observed: REGISTER_401 },
  esc02: {
    section: '3.1.1.5', title: 'Use of % When It Is Not an Escape', kind: 'valid',
    rfc: 'valid: method RE%47IST%45R is unknown (NOT a REGISTER): 501/405 or forwarded', rfcAccepts: handled,
    observed: NOTHING,
    why: 'drachtio-server neither answers a request with an unknown method nor hands it to midreg (midreg cannot route methods drachtio-server does not pass on); the UA gets no answer at all',
  },
  lwsdisp: { section: '3.1.1.6', title: 'Message with No LWS between Display Name and <', kind: 'valid', rfc: 'valid: parse and process', rfcAccepts: handled, observed: RELAYED_404 },
  longreq: { section: '3.1.1.7', title: 'Long Values in Header Fields', kind: 'valid', rfc: 'valid: parse and process', rfcAccepts: handled, observed: INVITE_RELAYED_404 },
  dblreq: {
    section: '3.1.1.8', title: 'Extra Trailing Octets in a UDP Datagram', kind: 'valid',
    rfc: 'valid REGISTER; the trailing INVITE in the same datagram is ignored', rfcAccepts: (o) => handled(o) && o.midreg === 'REGISTER relayed',
    observed: REGISTER_401,
  },
  semiuri: { section: '3.1.1.9', title: 'Semicolon-Separated Parameters in URI User Part', kind: 'valid', rfc: 'valid: parse and process', rfcAccepts: handled, observed: RELAYED_404 },
  transports: { section: '3.1.1.10', title: 'Varied and Unknown Transport Types', kind: 'valid', rfc: 'valid: parse and process', rfcAccepts: handled, observed: RELAYED_404 },
  mpart01: {
    section: '3.1.1.11', title: 'Multipart MIME Message', kind: 'valid',
    rfc: 'valid MESSAGE: parse and process (here: 403, its sender is not registered)', rfcAccepts: handled,
    observed: refused(400),
    why: 'drachtio-server answers 400 itself to any request whose body contains a NUL octet (the S/MIME part is binary); the same message with the NULs replaced reaches midreg and gets its 403',
  },
  unreason: { section: '3.1.1.12', title: 'Unusual Reason Phrase', kind: 'response', rfc: 'valid response, matches no transaction: dropped', rfcAccepts: dropped, observed: NOTHING },
  noreason: { section: '3.1.1.13', title: 'Empty Reason Phrase', kind: 'response', rfc: 'valid response, matches no transaction: dropped', rfcAccepts: dropped, observed: NOTHING },
  // ---- 3.1.2 invalid messages ------------------------------------------------------------------
  badinv01: {
    section: '3.1.2.1', title: 'Extraneous Header Field Separators', kind: 'invalid', rfc: '400 (or dropped)', rfcAccepts: either(refusedWith(400), dropped),
    observed: NOTHING, why: 'dropped: the Via cannot be parsed, so drachtio-server has nowhere to send a 400',
  },
  clerr: { section: '3.1.2.2', title: 'Content Length Larger Than Message', kind: 'invalid', rfc: '400 over UDP', rfcAccepts: refusedWith(400), observed: refused(400) },
  ncl: { section: '3.1.2.3', title: 'Negative Content-Length', kind: 'invalid', rfc: 'an error response (400)', rfcAccepts: refusedWith(400), observed: refused(400) },
  scalar02: { section: '3.1.2.4', title: 'Request Scalar Fields with Overlarge Values', kind: 'invalid', rfc: '400 (CSeq out of range)', rfcAccepts: refusedWith(400), observed: refused(400) },
  scalarlg: { section: '3.1.2.5', title: 'Response Scalar Fields with Overlarge Values', kind: 'response', rfc: 'response: discarded', rfcAccepts: dropped, observed: NOTHING },
  quotbal: { section: '3.1.2.6', title: 'Unterminated Quoted String in Display Name', kind: 'invalid', rfc: '400 (or infer the quote)', rfcAccepts: either(refusedWith(400), handled), observed: refused(400) },
  ltgtruri: { section: '3.1.2.7', title: '<> Enclosing Request-URI', kind: 'invalid', rfc: '400 (or ignore the brackets)', rfcAccepts: either(refusedWith(400), handled), observed: refused(400) },
  lwsruri: {
    section: '3.1.2.8', title: 'Malformed SIP Request-URI (embedded LWS)', kind: 'invalid', rfc: '400 (or ignore the LWS), or dropped', rfcAccepts: either(refusedWith(400), dropped),
    observed: NOTHING, why: 'dropped by drachtio-server (sofia-sip cannot parse the request line)',
  },
  lwsstart: {
    section: '3.1.2.9', title: 'Multiple SP Separating Request-Line Elements', kind: 'invalid', rfc: 'reject as malformed, or accept ignoring the extra SP', rfcAccepts: either(refusedWith(400), handled),
    observed: { answer: [100], midreg: null, upstream: false, sink: false },
    why: 'neither: sofia-sip accepts it and sends 100 Trying, but drachtio-srf\'s parser throws "failed to parse sip message" on the raw request line, so midreg never gets it and no final response is ever sent — the INVITE hangs',
  },
  trws: { section: '3.1.2.10', title: 'SP Characters at End of Request-Line', kind: 'invalid', rfc: 'reject as malformed, or accept ignoring the SP', rfcAccepts: either(refusedWith(400), handled), observed: RELAYED_404 },
  escruri: {
    section: '3.1.2.11', title: 'Escaped Headers in SIP Request-URI', kind: 'invalid', rfc: '400, or accept but never forward the escaped headers in the Request-URI', rfcAccepts: refusedWith(400),
    observed: INVITE_RELAYED_404,
    why: 'proxied to the platform with `?Route=%3C…%3E` still in the Request-URI (Kamailio logs it): drachtio-server forwards the Request-URI as received',
  },
  baddate: { section: '3.1.2.12', title: 'Invalid Time Zone in Date Header Field', kind: 'invalid', rfc: 'reject (acceptable), or ignore the Date', rfcAccepts: either(refusedWith(400), handled), observed: refused(400) },
  regbadct: { section: '3.1.2.13', title: 'Failure to Enclose name-addr URI in <>', kind: 'invalid', rfc: '400 (or infer the <>)', rfcAccepts: either(refusedWith(400), handled), observed: refused(400) },
  badaspec: { section: '3.1.2.14', title: 'Spaces within addr-spec', kind: 'invalid', rfc: '400, or accept ignoring the spaces', rfcAccepts: either(refusedWith(400), handled), observed: RELAYED_404 },
  baddn: { section: '3.1.2.15', title: 'Non-token Characters in Display Name', kind: 'invalid', rfc: '400 (or infer the quotes)', rfcAccepts: either(refusedWith(400), handled), observed: refused(400) },
  badvers: { section: '3.1.2.16', title: 'Unknown Protocol Version', kind: 'invalid', rfc: '505', rfcAccepts: refusedWith(505), observed: refused(505) },
  mismatch01: { section: '3.1.2.17', title: 'Start Line and CSeq Method Mismatch', kind: 'invalid', rfc: '400', rfcAccepts: refusedWith(400), observed: refused(400) },
  mismatch02: { section: '3.1.2.18', title: 'Unknown Method with CSeq Method Mismatch', kind: 'invalid', rfc: '501 (400 acceptable)', rfcAccepts: refusedWith(501, 400), observed: refused(400) },
  bigcode: { section: '3.1.2.19', title: 'Overlarge Response Code', kind: 'response', rfc: 'response: dropped', rfcAccepts: dropped, observed: NOTHING },
  // ---- 3.2 transaction layer ---------------------------------------------------------------------
  badbranch: { section: '3.2.1', title: 'Missing Transaction Identifier', kind: 'valid', rfc: '400, or fall back to RFC 2543 transaction matching', rfcAccepts: either(refusedWith(400), handled), observed: RELAYED_404 },
  // ---- 3.3 application layer ---------------------------------------------------------------------
  insuf: { section: '3.3.1', title: 'Missing Required Header Fields', kind: 'invalid', rfc: '400', rfcAccepts: refusedWith(400), observed: refused(400) },
  unkscm: {
    section: '3.3.2', title: 'Request-URI with Unknown Scheme', kind: 'invalid', rfc: '416', rfcAccepts: refusedWith(416),
    observed: { answer: [416], midreg: 'request refused', upstream: false, sink: false },
  },
  novelsc: {
    section: '3.3.3', title: 'Request-URI with Known but Atypical Scheme', kind: 'invalid', rfc: '416 (or 404)', rfcAccepts: refusedWith(416, 404),
    observed: { answer: [416], midreg: 'request refused', upstream: false, sink: false },
  },
  unksm2: {
    section: '3.3.4', title: 'Unknown URI Schemes in Header Fields', kind: 'invalid', rfc: 'a registrar answers 400 (To must be a SIP/SIPS AoR)', rfcAccepts: refusedWith(400),
    observed: { answer: [400], midreg: 'REGISTER refused', upstream: false, sink: false },
  },
  bext01: {
    section: '3.3.5', title: 'Proxy-Require and Require', kind: 'invalid', rfc: '420 with Unsupported', rfcAccepts: refusedWith(420),
    observed: NOTHING,
    why: 'its Via says TLS and the stack has no TLS listener, so it is sent over TCP and sofia-sip drops it (Via transport ≠ arrival transport); the same request with a TCP Via is proxied to the platform (404): neither drachtio-server nor midreg checks Proxy-Require (RFC 3261 §16.3 step 5)',
  },
  invut: { section: '3.3.6', title: 'Unknown Content-Type', kind: 'valid', rfc: 'a proxy forwards it (an endpoint answers 415)', rfcAccepts: handled, observed: INVITE_RELAYED_404 },
  regaut01: { section: '3.3.7', title: 'Unknown Authorization Scheme', kind: 'valid', rfc: 'a registrar that authenticates answers 401 with a challenge', rfcAccepts: (o) => handled(o) && finals(o).includes(401), observed: REGISTER_401 },
  multi01: { section: '3.3.8', title: 'Multiple Values in Single Value Required Fields', kind: 'invalid', rfc: '400', rfcAccepts: refusedWith(400), observed: refused(400) },
  mcl01: { section: '3.3.9', title: 'Multiple Content-Length Values', kind: 'invalid', rfc: 'an error response (400)', rfcAccepts: refusedWith(400), observed: refused(400) },
  bcast: {
    section: '3.3.10', title: '200 OK Response with Broadcast Via Header Field Value', kind: 'response', rfc: 'dropped (never forwarded to the broadcast address)', rfcAccepts: dropped,
    observed: { answer: [200], midreg: null, upstream: false, sink: false },
    why: 'drachtio-server forwards a response that matches no transaction statelessly to its second Via ("processMessageStatelessly - forwarding response upstream") without checking that the top Via is its own: with the original message it would send the 200 to 255.255.255.255:5060 (here rewritten to the sender, which received it)',
  },
  zeromf: {
    section: '3.3.11', title: 'Max-Forwards of Zero', kind: 'valid', rfc: 'a proxy answers 483', rfcAccepts: refusedWith(483),
    observed: { answer: [483], midreg: 'request refused', upstream: false, sink: false },
  },
  cparam01: { section: '3.3.12', title: 'REGISTER with a Contact Header Parameter', kind: 'valid', rfc: 'REGISTER succeeds; unknownparam is a contact-param, not a URI parameter', rfcAccepts: handled, observed: REGISTER_401 },
  cparam02: { section: '3.3.13', title: 'REGISTER with a url-parameter', kind: 'valid', rfc: 'REGISTER succeeds; unknownparam is kept as a URI parameter', rfcAccepts: handled, observed: REGISTER_401 },
  regescrt: { section: '3.3.14', title: 'REGISTER with a URL Escaped Header', kind: 'valid', rfc: 'REGISTER succeeds; the escaped Route stays in the contact URI', rfcAccepts: handled, observed: REGISTER_401 },
  sdp01: { section: '3.3.15', title: 'Unacceptable Accept Offering', kind: 'valid', rfc: 'the recipient UAS answers 406 or 400; a proxy forwards it', rfcAccepts: handled, observed: INVITE_RELAYED_404 },
  // ---- 3.4 backward compatibility ----------------------------------------------------------------
  inv2543: { section: '3.4.1', title: 'INVITE with RFC 2543 Syntax', kind: 'valid', rfc: 'valid (RFC 2543): accept', rfcAccepts: handled, observed: INVITE_RELAYED_404 },
};

/** How many of the 49 midreg (with drachtio-server in front) handles as RFC 4475 expects. */
const RFC_CONFORMING = 42;

/** TCP when the top Via names a stream transport (sofia-sip drops a request whose Via transport differs from the one it arrived on). */
function transportOf(raw: Buffer): 'udp' | 'tcp' {
  const via = /^(?:via|v)[ \t]*:\s*SIP\s*\/\s*2\.0\s*\/\s*(\w+)/im.exec(raw.toString('latin1'));
  return via && /^(TCP|TLS)$/i.test(via[1] ?? '') ? 'tcp' : 'udp';
}

function outcomeOf(stack: Stack, ex: Exchange, callId: string | undefined, midregFrom: number, kamailioFrom: number, sinkHits: number): Outcome {
  const answer = ex.statuses.filter((s, i, all) => all.indexOf(s) === i);
  const decisions = stack.midreg.output().slice(midregFrom).split('\n').flatMap((line) => {
    if (!line.startsWith('{')) return [];
    const entry = JSON.parse(line) as Record<string, unknown>;
    const source = typeof entry['source'] === 'string' ? entry['source'] : '';
    const ours = source.endsWith(`:${ex.sourcePort}`) || (callId !== undefined && entry['callId'] === callId) || entry['message'] === 'SIP handler failed; answered 500';
    return ours && typeof entry['message'] === 'string' ? [entry['message']] : [];
  });
  const kamailio = (stack.kamailio?.log() ?? '').slice(kamailioFrom).split('\n').filter((l) => l.includes('<script>:'));
  return {
    answer,
    midreg: decisions[0] ?? null,
    upstream: kamailio.some((l) => callId === undefined || l.includes(callId)),
    sink: sinkHits > 0,
  };
}

function replicaAll(stack: Stack): Promise<Binding[]> {
  return allLiveBindings(stack);
}

describe('RFC 4475 torture messages through drachtio-server → midreg → Kamailio', { skip: skip ?? false, timeout: 180_000 }, () => {
  let stack: Stack;
  let sink: SipPeer;
  const files = Object.keys(TABLE);
  const results = new Map<string, Outcome>();
  const rewrites = new Map<string, string[]>();

  before(async () => {
    stack = await startStack({ env: { MIDREG_DOMAINS: '127.0.0.1', MIDREG_RATE_LIMIT: '1000', MIDREG_RATE_BURST: '1000' } });
    // Stands in for every address a message names: records what reaches it and answers 404.
    sink = await SipPeer.open({ answer: () => ({ status: 404, reason: 'Sink Not Found' }) });
  });
  after(async () => {
    await sink?.close();
    await stack?.stop();
  });

  it('has the 49 messages byte-exact (SHA256SUMS) and one table entry for each', () => {
    const sums = readFileSync(join(CORPUS_DIR, 'SHA256SUMS'), 'utf8').trim().split('\n').map((l) => l.split(/\s+/));
    assert.equal(sums.length, 49);
    for (const [sum, file] of sums) {
      assert.equal(createHash('sha256').update(readFileSync(join(CORPUS_DIR, file ?? ''))).digest('hex'), sum, `${file} is not byte-exact`);
    }
    assert.deepEqual(sums.map(([, f]) => (f ?? '').replace(/\.dat$/, '')).sort(), [...files].sort());
  });

  it('rewrites every address to 127.0.0.1 and our ports, and nothing else', () => {
    for (const file of files) {
      const raw = readFileSync(join(CORPUS_DIR, `${file}.dat`));
      const { bytes, bodyNotes } = rewriteForLoopback(raw, { via: 1111, uri: 2222 });
      assert.deepEqual(foreignAddresses(bytes, [1111, 2222]), [], `${file}: foreign address left`);
      if (bodyNotes.length === 0) {
        // Bodies without addresses are untouched, octet for octet (mpart01's binary S/MIME part too).
        const body = (b: Buffer): Buffer => (b.includes('\r\n\r\n') ? b.subarray(b.indexOf('\r\n\r\n') + 4) : Buffer.alloc(0));
        assert.ok(body(bytes).equals(body(raw)), `${file}: body changed`);
      }
      rewrites.set(file, bodyNotes);
    }
  });

  it('sends each message and pins what happened', { timeout: 120_000 }, async () => {
    for (const file of files) {
      const raw = readFileSync(join(CORPUS_DIR, `${file}.dat`));
      const midregFrom = stack.midreg.output().length;
      const kamailioFrom = stack.kamailio?.log().length ?? 0;
      const sinkFrom = sink.received.length;
      let callId: string | undefined;
      const ex = await exchange(stack.drachtio.sipPort, (via) => {
        const { bytes } = rewriteForLoopback(raw, { via, uri: sink.port });
        callId = headerOf(parseSipMessage(bytes), 'call-id');
        return bytes;
      }, { transport: transportOf(raw), waitMs: WAIT_MS });
      await new Promise((r) => setTimeout(r, 50)); // let the last log lines land
      results.set(file, outcomeOf(stack, ex, callId, midregFrom, kamailioFrom, sink.received.length - sinkFrom));
      assert.equal(stack.drachtio.child.exitCode ?? stack.drachtio.child.signalCode, null, `drachtio-server died on ${file}`);
      assert.equal(stack.midreg.child.exitCode ?? stack.midreg.child.signalCode, null, `midreg died on ${file}`);
    }
    const rows = files.map((f) => {
      const e = TABLE[f] as Entry;
      const o = results.get(f) as Outcome;
      return `${e.section.padEnd(9)} ${f.padEnd(10)} ${e.kind.padEnd(8)} rfc: ${e.rfc} | observed: ${o.answer.join(',') || 'nothing'}${o.upstream ? ' (reached Kamailio)' : ''}${o.sink ? ' (forwarded to the address in the message)' : ''}${o.midreg ? ` midreg: ${o.midreg}` : ''} ${e.rfcAccepts(o) ? '✓' : '✗'}`;
    });
    console.log(rows.join('\n'));
    for (const [file, notes] of rewrites) if (notes.length > 0) console.log(`${file} body: ${notes.join('; ')}`);
    const mismatches = files.filter((f) => JSON.stringify(results.get(f)) !== JSON.stringify(TABLE[f]?.observed))
      .map((f) => `${f}: pinned ${JSON.stringify(TABLE[f]?.observed)}, now ${JSON.stringify(results.get(f))}`);
    assert.deepEqual(mismatches, [], 'behaviour changed: update TABLE (and docs/hostile-input.md) after checking the new outcome');
  });

  it(`handles ${RFC_CONFORMING} of 49 as RFC 4475 expects, and explains every other one`, () => {
    const conforming = files.filter((f) => TABLE[f]?.rfcAccepts(TABLE[f].observed));
    console.log(`midreg handles ${conforming.length} of 49 as RFC 4475 expects`);
    assert.equal(conforming.length, RFC_CONFORMING);
    for (const f of files) {
      const e = TABLE[f] as Entry;
      if (!e.rfcAccepts(e.observed)) assert.ok(e.why, `${f} departs from RFC 4475 without an explanation`);
      // Nothing the RFC calls invalid reaches the registrar as valid unless the RFC allows
      // accepting it liberally (then rfcAccepts holds) or the table says why it happens.
      if (e.kind === 'invalid' && e.observed.upstream) assert.ok(e.rfcAccepts(e.observed) || e.why, `${f} reached Kamailio`);
      if (e.kind === 'response') assert.equal(e.observed.upstream, false, `${f}: a response reached Kamailio`);
    }
  });

  it('left nothing in the registrar or the replica, and every packet drachtio-server sent went to 127.0.0.1', async () => {
    assert.deepEqual(await stack.kamailio?.aors(), [], 'no torture REGISTER was accepted by the registrar');
    assert.deepEqual(await replicaAll(stack), [], 'the replica is unchanged (no 2xx)');
    const sends = [...stack.drachtio.output().matchAll(/ send \d+ bytes to (\w+)\/\[([^\]]+)\]:(\d+)/g)].map((m) => m[2]);
    assert.ok(sends.length > 0);
    assert.deepEqual([...new Set(sends)], ['127.0.0.1']);
  });

  it('REGISTERs RFC 4475 says must succeed do once authenticated, and the replica keeps their contacts as the RFC says', async () => {
    // Resent as their UA would after the 401: same Call-ID, CSeq + 1, digest credentials for the
    // To user (the test Kamailio's password for user U is "pw-U").
    const expectations: Record<string, { user: string; aor: string; status: number; check: (contacts: string[]) => void }> = {
      cparam01: { user: 'watson', aor: 'sip:watson@127.0.0.1', status: 200, check: (c) => assert.deepEqual(c, [`sip:+19725552222@127.0.0.1:${sink.port}`], 'unknownparam is a contact-param, not part of the URI') },
      cparam02: { user: 'watson', aor: 'sip:watson@127.0.0.1', status: 200, check: (c) => assert.ok(c.includes(`sip:+19725552222@127.0.0.1:${sink.port};unknownparam`), `unknownparam kept as a URI parameter: ${c.join(' ')}`) },
      regescrt: { user: 'user', aor: 'sip:user@127.0.0.1', status: 200, check: (c) => assert.ok(c.some((u) => u.includes(`?Route=%3Csip:127.0.0.1:${sink.port}%3E`)), `escaped Route kept in the contact URI: ${c.join(' ')}`) },
      // The registrar's call: Kamailio refuses to unescape %00 in a user name ("non-ASCII escaped
      // character") and answers 400; midreg relays that answer and stores nothing.
      escnull: { user: 'null-%00-null', aor: 'sip:null-\u0000-null@127.0.0.1', status: 400, check: (c) => assert.deepEqual(c, []) },
    };
    for (const [file, want] of Object.entries(expectations)) {
      const peer = await SipPeer.open();
      try {
        const first = rewriteForLoopback(readFileSync(join(CORPUS_DIR, `${file}.dat`)), { via: peer.port, uri: sink.port }).bytes;
        const challenge = await sendAndCollect(peer, stack.drachtio.sipPort, first, { transport: 'udp', waitMs: 3000 });
        const www = challenge.received.map((m) => headerOf(m, 'www-authenticate')).find((h) => h !== undefined);
        assert.ok(www, `${file}: challenged (${challenge.statuses.join(',')})`);
        const text = first.toString('latin1');
        const uri = (/^REGISTER (\S+) SIP\/2\.0/.exec(text)?.[1]) ?? '';
        const auth = digestAuthorization(www, { method: 'REGISTER', uri, username: want.user, password: `pw-${want.user}` });
        const second = Buffer.from(text
          .replace(/^(CSeq:\s*)(\d+)/im, (_m, p: string, n: string) => `${p}${Number(n) + 1}`)
          .replace(/branch=([\w.-]+)/, 'branch=$1-auth')
          .replace('\r\n\r\n', `\r\nAuthorization: ${auth}\r\n\r\n`), 'latin1');
        const ok = await sendAndCollect(peer, stack.drachtio.sipPort, second, { transport: 'udp', waitMs: 3000 });
        assert.deepEqual(ok.statuses.filter((s) => s >= 200), [want.status], `${file}: authenticated REGISTER answered ${ok.statuses.join(',')}`);
      } finally { await peer.close(); }
      want.check((await liveBindingsOf(stack, want.aor)).map((b) => b.contact));
    }
  });

  it('afterwards drachtio-server and midreg still run and an ordinary REGISTER (sipp register-auth) still works', async () => {
    assert.equal(stack.drachtio.child.exitCode ?? stack.drachtio.child.signalCode, null);
    assert.equal(stack.midreg.child.exitCode ?? stack.midreg.child.signalCode, null);
    const localPort = await freePort();
    const result = await runSipp({ scenario: 'register-auth', target: stack.sipTarget, localPort, vars: { user: 'alice', domain: '127.0.0.1', expires: '60' }, timeoutSec: 10 });
    assert.equal(result.code, 0, `sipp register-auth failed:\n${result.messages.slice(-2000)}`);
    assert.ok(logLines(stack.midreg, { event: 'register', aor: 'sip:alice@127.0.0.1', status: 200 }).length >= 1);
  });
});
