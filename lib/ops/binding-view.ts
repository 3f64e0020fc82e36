// Bindings as operators see them: one stable snake_case JSON shape shared by the admin API, the
// CLI and exports (so scripts written against one work with the others), keyset paging over the
// replica, and the CLI's table. No I/O of its own.
import type { BindingStore } from '../store/store.js';
import type { Binding } from '../registrar/registration.js';
import type { Reachability } from '../reachability/reachability.js';

/** What qualify knows of a binding (the running service's memory; see the README's Reachability section). */
export interface ReachabilityView {
  state: 'unknown' | 'reachable' | 'unreachable';
  /** Round trip of the last answered ping, reachable only. */
  rtt_ms: number | null;
  /** Unreachable since (ISO time), unreachable only. */
  since: string | null;
  /** Last ping's end (ISO time); null while unknown. */
  checked_at: string | null;
}

export function reachabilityView(r: Reachability): ReachabilityView {
  switch (r.state) {
    case 'reachable': return { state: 'reachable', rtt_ms: r.rttMs, since: null, checked_at: new Date(r.checkedAt).toISOString() };
    case 'unreachable': return { state: 'unreachable', rtt_ms: null, since: new Date(r.since).toISOString(), checked_at: new Date(r.checkedAt).toISOString() };
    default: return { state: 'unknown', rtt_ms: null, since: null, checked_at: null };
  }
}

export interface BindingView {
  aor: string;
  contact: string;
  /** Seconds left, rounded up: a live binding never shows 0. */
  expires_in: number;
  expires_at: string;
  /**
   * Contact mode: seconds left of the registration midreg holds for this binding at the registrar
   * (MIDREG_OUTGOING_EXPIRES, as granted); null in mirror mode. May outlast expires_in: the phone's own.
   */
  upstream_expires_in: number | null;
  /** Contact mode: set when the phone stopped refreshing and the registrar did not accept midreg's de-registration (requests get 480). */
  lapsed_at: string | null;
  source: { address: string; port: number; transport: string } | null;
  user_agent: string | null;
  q: number | null;
  instance: string | null;
  reg_id: number | null;
  path: string | null;
  /** The Contact midreg gave the registrar for this binding (MIDREG_INSERTION=contact), else null. */
  upstream_contact: string | null;
  call_id: string | null;
  cseq: number | null;
  registered_at: string;
  updated_at: string;
  /** From the running service (admin API); null where it cannot be known (the CLI reading the file). */
  reachability: ReachabilityView | null;
}

export function bindingView(b: Binding, now: number, reachability?: Reachability): BindingView {
  return {
    aor: b.aor,
    contact: b.contact,
    expires_in: Math.max(0, Math.ceil((b.expiresAt - now) / 1000)),
    expires_at: new Date(b.expiresAt).toISOString(),
    upstream_expires_in: b.upstreamExpiresAt === null ? null : Math.max(0, Math.ceil((b.upstreamExpiresAt - now) / 1000)),
    lapsed_at: b.lapsedAt === null ? null : new Date(b.lapsedAt).toISOString(),
    source: b.source ? { address: b.source.address, port: b.source.port, transport: b.source.transport } : null,
    user_agent: b.userAgent,
    q: b.q,
    instance: b.instance,
    reg_id: b.regId,
    path: b.path,
    upstream_contact: b.insertion?.contact ?? null,
    call_id: b.callId,
    cseq: b.cseq,
    registered_at: new Date(b.registeredAt).toISOString(),
    updated_at: new Date(b.updatedAt).toISOString(),
    reachability: reachability ? reachabilityView(reachability) : null,
  };
}

/**
 * The replica keys AoRs in canonical form, which is all lower case (lib/registrar/aor.ts); operators type
 * `sip:Alice@Example.com` or just `alice@example.com`, so both are brought to that form. Port and
 * parameters are not stripped: give the AoR without them.
 */
export function aorLookupKey(input: string): string {
  let text = input.trim();
  if (text.startsWith('<') && text.endsWith('>')) text = text.slice(1, -1);
  return withScheme(text.toLowerCase());
}

/** What an `aor` search matches: AoRs starting with it, `sip:` assumed when no scheme is given. */
export function aorSearchPrefix(input: string): string {
  const text = input.trim().toLowerCase();
  return text === '' ? '' : withScheme(text);
}

/** An operator's AoR (lower-cased already) with `sip:` added unless it names its scheme. */
function withScheme(text: string): string {
  return /^(sips?|tel):/.test(text) ? text : `sip:${text}`;
}

export interface PageCursor { aor: string; contact: string }

/** Opaque to clients: base64url of the last (AoR, contact) of a page. */
export function encodeCursor(cursor: PageCursor): string {
  return Buffer.from(JSON.stringify([cursor.aor, cursor.contact]), 'utf8').toString('base64url');
}

export function decodeCursor(text: string): PageCursor | undefined {
  try {
    const parsed: unknown = JSON.parse(Buffer.from(text, 'base64url').toString('utf8'));
    if (Array.isArray(parsed) && parsed.length === 2 && typeof parsed[0] === 'string' && typeof parsed[1] === 'string') {
      return { aor: parsed[0], contact: parsed[1] };
    }
  } catch {
    // not ours: reported as undefined below
  }
  return undefined;
}

export type PagingStore = Pick<BindingStore, 'listLiveAfter'>;

/**
 * Every live binding, a page at a time. Each page is its own short read, so a long export never
 * holds a read transaction open against the running service.
 */
export async function* liveBindingPages(store: PagingStore, now: number, opts: { batch: number; aorPrefix?: string }): AsyncGenerator<Binding[]> {
  let after: PageCursor | undefined;
  for (;;) {
    const page = await store.listLiveAfter(now, { limit: opts.batch, ...(after ? { after } : {}), ...(opts.aorPrefix ? { aorPrefix: opts.aorPrefix } : {}) });
    if (page.length === 0) return;
    yield page;
    if (page.length < opts.batch) return;
    const last = page[page.length - 1];
    if (last === undefined) return;
    after = { aor: last.aor, contact: last.contact };
  }
}

export const TABLE_HEADER = ['AOR', 'CONTACT', 'SOURCE', 'EXPIRES', 'UPSTREAM', 'Q', 'USER-AGENT'] as const;

export function tableRow(b: Binding, now: number): string[] {
  const v = bindingView(b, now);
  return [
    v.aor,
    v.contact,
    v.source ? `${v.source.transport}:${v.source.address}:${v.source.port}` : '-',
    `${v.expires_in}s`,
    v.upstream_expires_in === null ? '-' : `${v.upstream_expires_in}s`,
    v.q === null ? '-' : String(v.q),
    v.user_agent ?? '-',
  ];
}

/** Column widths fitting `rows` and the header; the last column is never padded. */
export function columnWidths(rows: string[][]): number[] {
  const widths: number[] = TABLE_HEADER.map((h) => h.length);
  for (const row of rows) row.forEach((cell, i) => { widths[i] = Math.max(widths[i] ?? 0, cell.length); });
  return widths;
}

export function formatRow(cells: readonly string[], widths: readonly number[]): string {
  return cells.map((cell, i) => (i === cells.length - 1 ? cell : cell.padEnd(widths[i] ?? 0))).join('  ').trimEnd();
}
