// Connection loss (MIDREG_CONNECTION_WATCH_MS): a binding registered over TCP, TLS or WebSocket
// is reached over that connection only (a phone behind NAT accepts no new one), so once the
// connection is gone the binding is unreachable — Asterisk and Kamailio drop such contacts the
// moment it closes. drachtio-server v0.9.10 tells its apps nothing when a connection closes
// (docs/drachtio-findings.md), so midreg looks at the kernel's own table of drachtio-server's TCP
// connections, /proc/net/tcp and /proc/net/tcp6, which it can read when it shares drachtio-server's
// host and network namespace (docker-compose.yml: both on the host network). A flow is judged
// only after it was once seen established there, so a midreg that cannot see drachtio-server's
// sockets (another host or namespace) never marks anything: it says so once and stays silent.
import { readFile } from 'node:fs/promises';
import type { Logger } from '../ops/logger.js';
import type { Binding } from '../registrar/registration.js';
import type { BindingStore } from '../store/store.js';
import { flowKey, type ReachabilityTable } from './reachability.js';

/** Transports whose bindings live on a connection drachtio-server holds. */
const CONNECTION_TRANSPORTS = new Set(['tcp', 'tls', 'ws', 'wss']);

export function isConnectionFlow(b: Pick<Binding, 'source'>): boolean {
  return b.source !== null && b.source !== undefined && CONNECTION_TRANSPORTS.has(b.source.transport.toLowerCase());
}

/** TCP states of /proc/net/tcp (include/net/tcp_states.h). */
const TCP_ESTABLISHED = 0x01;
const TCP_LISTEN = 0x0a;

/** An address as both sides write it: IPv4 dotted, IPv6 fully expanded lower-case, IPv4-mapped IPv6 as IPv4. */
export function normalizeAddress(address: string): string {
  const bare = address.replace(/^\[|\]$/g, '').toLowerCase();
  if (!bare.includes(':')) return bare;
  const mapped = /^(?:0{0,4}:){0,5}(?:0{0,4}:)?ffff:(\d{1,3}(?:\.\d{1,3}){3})$/.exec(bare) ?? /^::ffff:(\d{1,3}(?:\.\d{1,3}){3})$/.exec(bare);
  if (mapped?.[1]) return mapped[1];
  const [head = '', tail] = bare.split('::');
  const left = head === '' ? [] : head.split(':');
  const right = tail === undefined || tail === '' ? [] : tail.split(':');
  const fill = tail === undefined ? [] : Array<string>(8 - left.length - right.length).fill('0');
  return [...left, ...fill, ...right].map((group) => group.padStart(4, '0')).join(':');
}

function hexToAddress(hex: string): string {
  if (hex.length === 8) {
    // One 32-bit word in host (little-endian) order.
    const n = Number.parseInt(hex, 16);
    return [n & 0xff, (n >>> 8) & 0xff, (n >>> 16) & 0xff, (n >>> 24) & 0xff].join('.');
  }
  const groups: string[] = [];
  for (let w = 0; w < 4; w++) {
    const word = hex.slice(w * 8, w * 8 + 8);
    const bytes = [word.slice(6, 8), word.slice(4, 6), word.slice(2, 4), word.slice(0, 2)];
    groups.push(`${bytes[0]}${bytes[1]}`, `${bytes[2]}${bytes[3]}`);
  }
  return normalizeAddress(groups.join(':'));
}

/** drachtio-server's connection-oriented SIP ports from its announced addresses (`tcp/127.0.0.1:5060`, `wss/…:8089`). */
export function connectionPorts(sipAddresses: readonly string[]): Set<number> {
  const ports = new Set<number>();
  for (const entry of sipAddresses) {
    const m = /^(tcp|tls|ws|wss)\/.*:(\d+)$/i.exec(entry);
    if (m) ports.add(Number(m[2]));
  }
  return ports;
}

/** What the kernel says about drachtio-server's SIP ports: whether they are visible at all, and the peers connected to them. */
export interface ConnectionView { visible: boolean; established: Set<string> }

/**
 * The view from the text of /proc/net/tcp or /proc/net/tcp6, for the poll: with
 * 100,000 phones on TCP the table has 100,000+ lines every half second, and splitting each into
 * fields (as an earlier version did) cost about 3 µs a line on the event loop. Here a line whose local port
 * is not one of drachtio-server's is skipped after comparing four characters, and only an
 * established peer's address is decoded. The kernel writes every line as
 * "%4d: %08X:%04X %08X:%04X %02X ..." (tcp6: 32 hex digits per address); the slot number can be
 * wider than four digits, so offsets are taken from its ": ".
 */
export function scanProcNetTcp(text: string, ports: ReadonlySet<number>, into?: ConnectionView): ConnectionView {
  const view = into ?? { visible: false, established: new Set<string>() };
  const portHex = new Set([...ports].map((p) => p.toString(16).toUpperCase().padStart(4, '0')));
  let pos = text.indexOf('\n') + 1;
  while (pos > 0 && pos < text.length) {
    const end = text.indexOf('\n', pos);
    const lineEnd = end < 0 ? text.length : end;
    const colon = text.indexOf(': ', pos);
    if (colon > 0 && colon < lineEnd) {
      const local = colon + 2;
      const addrLen = text.charCodeAt(local + 8) === 58 /* ':' */ ? 8 : 32;
      const localPort = text.slice(local + addrLen + 1, local + addrLen + 5);
      if (portHex.has(localPort.toUpperCase())) {
        const remote = local + addrLen + 6;
        const stateAt = remote + addrLen + 6;
        const state = Number.parseInt(text.slice(stateAt, stateAt + 2), 16);
        if (state === TCP_LISTEN) view.visible = true;
        else if (state === TCP_ESTABLISHED) {
          const hex = text.slice(remote, remote + addrLen);
          const port = Number.parseInt(text.slice(remote + addrLen + 1, remote + addrLen + 5), 16);
          if (/^[0-9A-Fa-f]+$/.test(hex) && Number.isFinite(port)) view.established.add(`${hexToAddress(hex)}:${port}`);
        }
      }
    }
    pos = end < 0 ? -1 : end + 1;
  }
  return view;
}

/** The wait before the next look: the configured interval, or ten times what the last look took, whichever is longer. */
export function pollDelay(intervalMs: number, lastLookMs: number): number {
  return Math.max(intervalMs, Math.ceil(lastLookMs * 10));
}

export function remoteOf(b: Pick<Binding, 'source'>): string | undefined {
  return b.source ? `${normalizeAddress(b.source.address)}:${b.source.port}` : undefined;
}

export type FlowJudgement = { kind: 'open' } | { kind: 'closed' } | { kind: 'not-seen-yet' };

/** One flow against the kernel's view: judged closed only if it was seen established before. */
export function judgeFlow(remote: string, seenBefore: boolean, established: ReadonlySet<string>): FlowJudgement {
  if (established.has(remote)) return { kind: 'open' };
  return seenBefore ? { kind: 'closed' } : { kind: 'not-seen-yet' };
}

export interface ConnectionWatchDeps {
  table: ReachabilityTable;
  store: Pick<BindingStore, 'liveBindings' | 'listLiveAfter'>;
  sipAddresses(): readonly string[];
  intervalMs: number;
  logger: Logger;
  /** A binding's connection closed (already marked unreachable). */
  onClosed?(b: Binding): void;
  /** Where the kernel's tables are (tests). */
  files?: readonly string[];
  clock?: () => number;
}

/** `closed`: judged and marked; kept indexed so its reachability is forgotten with the binding. */
interface Watched { binding: Binding; remote: string; seen: boolean; closed: boolean }

/**
 * Watches the connections of connection-oriented bindings. Its index of flows is fed from the
 * replica (`track` after every write for an AoR, `seed` once at start); an index entry may be
 * stale (a binding deleted since), so every judgement is checked against the replica first.
 */
export class ConnectionWatch {
  private readonly flows = new Map<string, Watched>();
  private readonly byAor = new Map<string, Set<string>>();
  private timer: NodeJS.Timeout | undefined;
  private blindLogged = false;
  private stretchLogged = false;
  private started = false;
  private readonly clock: () => number;

  constructor(private readonly deps: ConnectionWatchDeps) {
    this.clock = deps.clock ?? Date.now;
  }

  get size(): number { return this.flows.size; }

  /** Index the connection-oriented live bindings already in the replica (paged). */
  async seed(): Promise<void> {
    const now = this.clock();
    let after: { aor: string; contact: string } | undefined;
    for (;;) {
      const page = await this.deps.store.listLiveAfter(now, { limit: 1000, ...(after ? { after } : {}) });
      for (const b of page) if (isConnectionFlow(b)) this.add(b);
      const last = page[page.length - 1];
      if (!last || page.length < 1000) return;
      after = { aor: last.aor, contact: last.contact };
      // A synchronous store answers at once: without this the whole replica (1,000,000 bindings)
      // would be read in one event-loop turn while SIP waits.
      await new Promise((resolve) => setImmediate(resolve));
    }
  }

  /**
   * The replica changed for `aor` (by a REGISTER that came over `transport`): index its
   * connection-oriented live bindings afresh. A UDP REGISTER of an AoR with no indexed flow
   * cannot have added one, so that case, almost every REGISTER of most deployments, reads nothing.
   */
  async track(aor: string, transport?: string): Promise<void> {
    if (transport !== undefined && !CONNECTION_TRANSPORTS.has(transport.toLowerCase()) && !this.byAor.has(aor)) return;
    const now = this.clock();
    const current = (await this.deps.store.liveBindings(aor, now)).filter(isConnectionFlow);
    const keep = new Set(current.map((b) => flowKey(b)));
    for (const key of this.byAor.get(aor) ?? []) {
      if (!keep.has(key)) this.drop(key, true);
    }
    for (const b of current) this.add(b);
  }

  private add(b: Binding): void {
    const remote = remoteOf(b);
    if (remote === undefined) return;
    const key = flowKey(b);
    const before = this.flows.get(key);
    this.flows.set(key, { binding: b, remote, seen: before?.seen ?? false, closed: before?.closed ?? false });
    let keys = this.byAor.get(b.aor);
    if (!keys) { keys = new Set(); this.byAor.set(b.aor, keys); }
    keys.add(key);
  }

  private drop(key: string, forget: boolean): void {
    const entry = this.flows.get(key);
    if (!entry) return;
    this.flows.delete(key);
    const keys = this.byAor.get(entry.binding.aor);
    keys?.delete(key);
    if (keys && keys.size === 0) this.byAor.delete(entry.binding.aor);
    if (forget) this.deps.table.forget(entry.binding);
  }

  /**
   * Polls every intervalMs, or less often when one look costs more CPU than a tenth of that: reading
   * the kernel's table grows with every TCP connection on the host (about 5 ms per 1,000 sockets
   * here, bench:watch), and the watch must not take more than about 10 % of a core from SIP.
   */
  start(): void {
    if (this.started) return;
    this.started = true;
    const loop = (): void => {
      // CPU, not wall time: on a busy host a look waits for a core, which is no reason to look less often.
      const began = process.cpuUsage();
      this.check().catch((err: unknown) => {
        this.deps.logger.warn('connection watch: check failed; trying again next interval', { error: err instanceof Error ? err.message : String(err) });
      }).finally(() => {
        if (!this.started) return;
        const spent = process.cpuUsage(began);
        const cost = (spent.user + spent.system) / 1000;
        const delay = pollDelay(this.deps.intervalMs, cost);
        if (delay > this.deps.intervalMs && !this.stretchLogged) {
          this.stretchLogged = true;
          this.deps.logger.warn('connection watch: one look at the kernel\'s TCP table is slow; looking less often', { lookCpuMs: Math.round(cost), intervalMs: delay, configuredMs: this.deps.intervalMs });
        }
        this.timer = setTimeout(loop, delay);
        this.timer.unref();
      });
    };
    this.timer = setTimeout(loop, this.deps.intervalMs);
    this.timer.unref();
  }

  stop(): void {
    this.started = false;
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
  }

  /** The kernel's view of drachtio-server's ports. The files are read off the event loop (libuv's pool). */
  private async readView(ports: ReadonlySet<number>): Promise<ConnectionView> {
    const view: ConnectionView = { visible: false, established: new Set() };
    for (const file of this.deps.files ?? ['/proc/net/tcp', '/proc/net/tcp6']) {
      let text: string;
      try { text = await readFile(file, 'latin1'); } catch { continue; /* no IPv6, or not Linux */ }
      scanProcNetTcp(text, ports, view);
    }
    return view;
  }

  /** One look at the kernel's table; returns the bindings found closed. */
  async check(): Promise<Binding[]> {
    if (this.flows.size === 0) return [];
    const ports = connectionPorts(this.deps.sipAddresses());
    if (ports.size === 0) return [];
    const view = await this.readView(ports);
    if (!view.visible) {
      if (!this.blindLogged) {
        this.blindLogged = true;
        this.deps.logger.warn('connection watch: drachtio-server\'s TCP/TLS/WS listeners are not visible in /proc/net/tcp (another host or network namespace); a closed connection is found by qualify only', { ports: [...ports] });
      }
      return [];
    }
    const now = this.clock();
    const closed: Binding[] = [];
    for (const [key, entry] of this.flows) {
      if (entry.binding.expiresAt <= now) { this.drop(key, true); continue; }
      if (entry.closed) continue;
      const verdict = judgeFlow(entry.remote, entry.seen, view.established);
      if (verdict.kind === 'open') { entry.seen = true; continue; }
      if (verdict.kind === 'not-seen-yet') continue;
      // Still the binding the replica holds? (It may have re-registered over a new connection.)
      const b = (await this.deps.store.liveBindings(entry.binding.aor, now)).find((x) => flowKey(x) === key);
      if (!b) { this.drop(key, true); continue; }
      entry.closed = true;
      this.deps.table.record(b, { kind: 'unreachable', why: 'closed' }, now);
      this.deps.logger.warn('binding unreachable: its connection closed', {
        event: 'connection', aor: b.aor, contact: b.contact, source: `${b.source?.transport}:${b.source?.address}:${b.source?.port}`, state: 'unreachable', why: 'closed',
      });
      closed.push(b);
      this.deps.onClosed?.(b);
    }
    return closed;
  }
}
