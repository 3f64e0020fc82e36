// Shared pieces of the drachtio wire protocol used by the recorder and the replayer.
//
// On the TCP connection between a drachtio-srf app and drachtio-server every frame is
// `<payload byte length>#<payload>`, where payload is `<msgId>|<type>|<token>...` optionally
// followed by `\r\n<SIP message>`. The length counts UTF-8 bytes, not string characters.

export type WireDir = 'toServer' | 'toApp';

export interface WireFrame {
  dir: WireDir;
  /** the frame payload, i.e. everything after `<length>#` */
  payload: string;
  /** milliseconds since the recorder (or replayer) started */
  t: number;
}

const CRLF = '\r\n';
/** longest length prefix we accept before the `#` (drachtio never sends anything near 1e12 bytes) */
const MAX_PREFIX_DIGITS = 12;

/** Encodes one payload as a wire frame. */
/** Listen on an ephemeral 127.0.0.1 port and return it. */
export async function listenOnLoopback(server: import('node:net').Server, owner: string): Promise<number> {
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      server.off('error', reject);
      resolve();
    });
  });
  const address = server.address();
  if (address === null || typeof address === 'string') throw new Error(`${owner}: no TCP address`);
  return address.port;
}

export function encodeFrame(payload: string): Buffer {
  return Buffer.from(`${Buffer.byteLength(payload, 'utf8')}#${payload}`, 'utf8');
}

/**
 * Incremental frame splitter: feed it chunks as they come off a socket, it returns the payloads
 * of the frames completed so far (several per chunk, or one spread over many chunks).
 * Throws on a malformed length prefix; the stream cannot be resynchronised after that.
 */
export class FrameParser {
  private buf: Buffer = Buffer.alloc(0);

  push(chunk: Buffer): string[] {
    this.buf = this.buf.length === 0 ? chunk : Buffer.concat([this.buf, chunk]);
    const out: string[] = [];
    for (;;) {
      const hash = this.buf.indexOf(0x23 /* # */);
      if (hash === -1) {
        if (this.buf.length > MAX_PREFIX_DIGITS || !/^\d*$/.test(this.buf.toString('latin1'))) {
          throw new Error(`malformed drachtio frame: no length prefix in ${JSON.stringify(this.preview())}`);
        }
        break;
      }
      const prefix = this.buf.toString('latin1', 0, hash);
      if (!/^\d{1,12}$/.test(prefix) || Number(prefix) <= 0) {
        throw new Error(`malformed drachtio frame: bad length prefix in ${JSON.stringify(this.preview())}`);
      }
      const end = hash + 1 + Number(prefix);
      if (this.buf.length < end) break;
      out.push(this.buf.toString('utf8', hash + 1, end));
      this.buf = this.buf.subarray(end);
    }
    return out;
  }

  /** bytes received that do not form a complete frame yet */
  get pending(): number {
    return this.buf.length;
  }

  private preview(): string {
    return this.buf.toString('utf8', 0, Math.min(this.buf.length, 80));
  }
}

type FrameLike = WireFrame | string;
const payloadOf = (f: FrameLike): string => (typeof f === 'string' ? f : f.payload);

/** The `|`-separated tokens of the frame's first line (before any SIP message). */
export function tokensOf(frame: FrameLike): string[] {
  const p = payloadOf(frame);
  const cr = p.indexOf('\r');
  return (cr === -1 ? p : p.slice(0, cr)).split('|');
}

/** The msgId the sender gave the frame (token 0). */
export function msgIdOf(frame: FrameLike): string {
  return tokensOf(frame)[0] ?? '';
}

/** The frame type: `authenticate`, `route`, `sip`, `proxy`, `ping`, `response`, `cdr:start`, ... */
export function typeOf(frame: FrameLike): string {
  return tokensOf(frame)[1] ?? '';
}

/** For a `response` frame, the msgId of the frame it answers. */
export function rIdOf(frame: FrameLike): string | undefined {
  const tok = tokensOf(frame);
  return tok[1] === 'response' ? tok[2] : undefined;
}

/** The SIP message carried by the frame (the text after the first CRLF), if any. */
export function sipOf(frame: FrameLike): string | undefined {
  const p = payloadOf(frame);
  const i = p.indexOf(CRLF);
  if (i === -1) return undefined;
  const sip = p.slice(i + CRLF.length);
  return sip.length > 0 ? sip : undefined;
}

const SIP_START = /^(?:[A-Za-z]+ \S+ SIP\/2\.0|SIP\/2\.0 \d{3})/;
/** Accepts a frame, a frame payload, or a bare SIP message; returns the SIP message. */
const sipText = (x: FrameLike): string | undefined =>
  typeof x === 'string' && SIP_START.test(x) ? x : sipOf(x);

/** First line of the SIP message (request line or status line). */
export function startLineOf(frameOrSip: FrameLike): string | undefined {
  const sip = sipText(frameOrSip);
  if (sip === undefined) return undefined;
  const i = sip.indexOf(CRLF);
  return i === -1 ? sip : sip.slice(0, i);
}

/** SIP method if the frame (or SIP text) carries a request. */
export function methodOf(frameOrSip: FrameLike): string | undefined {
  const m = /^([A-Za-z]+) \S+ SIP\/2\.0$/.exec(startLineOf(frameOrSip) ?? '');
  return m?.[1];
}

/** SIP status code if the frame (or SIP text) carries a response. */
export function statusOf(frameOrSip: FrameLike): number | undefined {
  const m = /^SIP\/2\.0 (\d{3})(?: |$)/.exec(startLineOf(frameOrSip) ?? '');
  return m?.[1] === undefined ? undefined : Number(m[1]);
}

const COMPACT: Record<string, string> = {
  i: 'call-id', m: 'contact', e: 'content-encoding', l: 'content-length', c: 'content-type',
  f: 'from', s: 'subject', k: 'supported', t: 'to', v: 'via', o: 'event', r: 'refer-to',
  b: 'referred-by', u: 'allow-events', x: 'session-expires', a: 'accept-contact', j: 'reject-contact',
  d: 'request-disposition', y: 'identity', n: 'identity-info',
};
const canonical = (name: string): string => {
  const lower = name.trim().toLowerCase();
  return COMPACT[lower] ?? lower;
};

/** All header lines of a SIP message as [name, value] (folded lines unfolded, in order). */
export function headerLines(sipOrFrame: FrameLike): [string, string][] {
  const sip = sipText(sipOrFrame) ?? '';
  const end = sip.indexOf(CRLF + CRLF);
  const lines = (end === -1 ? sip : sip.slice(0, end)).split(CRLF).slice(1);
  const out: [string, string][] = [];
  for (const line of lines) {
    const last = out[out.length - 1];
    if (/^[ \t]/.test(line) && last !== undefined) {
      last[1] = `${last[1]} ${line.trim()}`;
      continue;
    }
    const colon = line.indexOf(':');
    if (colon <= 0) continue;
    out.push([line.slice(0, colon).trim(), line.slice(colon + 1).trim()]);
  }
  return out;
}

/** Every value of a header (case-insensitive, compact forms understood). */
export function headers(sipOrFrame: FrameLike, name: string): string[] {
  const want = canonical(name);
  return headerLines(sipOrFrame).filter(([n]) => canonical(n) === want).map(([, v]) => v);
}

/** First value of a header (case-insensitive, compact forms understood), or undefined. */
export function header(sipOrFrame: FrameLike, name: string): string | undefined {
  return headers(sipOrFrame, name)[0];
}

/** Body of a SIP message ('' when there is none). */
export function bodyOf(sipOrFrame: FrameLike): string {
  const sip = sipText(sipOrFrame) ?? '';
  const end = sip.indexOf(CRLF + CRLF);
  return end === -1 ? '' : sip.slice(end + 4);
}

export interface FrameQuery {
  dir?: WireDir;
  /** frame type (token 1), e.g. 'sip', 'response', 'route' */
  type?: string;
  /** SIP request method carried by the frame */
  method?: string;
  /** SIP response status carried by the frame */
  status?: number;
  /** for server `sip` frames: 'network' or 'application' (token 2); for `response`: OK/NO is token 3 */
  source?: string;
  /** value of the Call-ID header */
  callId?: string;
}

/** Does the frame match every field given in the query? */
export function frameMatches(frame: WireFrame, q: FrameQuery): boolean {
  if (q.dir !== undefined && frame.dir !== q.dir) return false;
  if (q.type !== undefined && typeOf(frame) !== q.type) return false;
  if (q.method !== undefined && methodOf(frame) !== q.method.toUpperCase()) return false;
  if (q.status !== undefined && statusOf(frame) !== q.status) return false;
  if (q.source !== undefined && tokensOf(frame)[2] !== q.source) return false;
  if (q.callId !== undefined && header(frame, 'call-id') !== q.callId) return false;
  return true;
}

/** All frames matching the query, in order. */
export function findFrames(frames: readonly WireFrame[], q: FrameQuery): WireFrame[] {
  return frames.filter((f) => frameMatches(f, q));
}

/** First frame matching the query, or undefined. */
export function findFrame(frames: readonly WireFrame[], q: FrameQuery): WireFrame | undefined {
  return frames.find((f) => frameMatches(f, q));
}

/**
 * A short human description of what a frame is, e.g. `sip request REGISTER`,
 * `sip response 200 (txn 4a3f...)`, `route|REGISTER`, `response OK to <rId>`.
 */
export function describeFrame(frame: FrameLike): string {
  const tok = tokensOf(frame);
  const type = tok[1] ?? '?';
  switch (type) {
    case 'sip': {
      const method = methodOf(frame);
      if (method !== undefined) return `sip request ${method}`;
      const status = statusOf(frame);
      return status !== undefined ? `sip response ${status}` : 'sip (no SIP message)';
    }
    case 'route':
    case 'remove_route':
      return `${type}|${tok[2] ?? ''}`;
    case 'response': {
      const sl = startLineOf(frame);
      return `response ${tok[3] ?? '?'} to ${tok[2] ?? '?'}${sl !== undefined ? ` [${sl}]` : ''}`;
    }
    default:
      return type;
  }
}
