// Several midreg nodes on one Redis store: which nodes are alive, and which SIP sources are peer
// nodes. Each node writes a heartbeat key with a short TTL; every node reads the others' once a
// second into memory, so routing a request asks nothing of Redis. A node that stops cleanly
// deletes its heartbeat at once; one that dies is known dead within NODE_TTL_MS + REFRESH_MS.
import type { Binding } from '../registrar/registration.js';

/** How often a node renews its heartbeat and re-reads the others'. */
export const HEARTBEAT_MS = 1000;
/** A heartbeat not renewed for this long means the node is gone. */
export const NODE_TTL_MS = 3000;
/** confirm() reads the nodes at most this often: requests for a dead node's phones cost no Redis round trip each. */
const CONFIRM_MIN_INTERVAL_MS = 250;

/** What routing needs to know about the nodes (lib/messaging). */
export interface NodeView {
  /** This node's SIP URI; undefined until drachtio-server told it its address. */
  self(): string | undefined;
  /** Whether the node with this URI renewed its heartbeat lately. */
  isAlive(uri: string): boolean;
  /** Whether a request from this source was sent by a live peer node (not by a phone). */
  isPeer(source: { address: string; port: number }): boolean;
  /**
   * Before taking a node for gone: read the nodes again now unless that was done very lately (a
   * node that started less than a heartbeat ago is not in memory yet). Never rejects.
   */
  confirm(uris: readonly string[]): Promise<void>;
  /** isPeer, after the same re-read when the source is not known as a peer (a node started less than a heartbeat ago). */
  confirmPeer(source: { address: string; port: number }): Promise<boolean>;
}

/** Where a binding's requests go. */
export type Holder = { kind: 'local' } | { kind: 'peer'; node: string } | { kind: 'dead-peer'; node: string };

/** Pure: the node holding a binding, seen from this one. A binding with no node, or this node's, is local. */
export function holderOf(b: Binding, nodes: NodeView | undefined): Holder {
  const self = nodes?.self();
  if (!nodes || b.node === undefined || self === undefined || sameNode(b.node, self)) return { kind: 'local' };
  return nodes.isAlive(b.node) ? { kind: 'peer', node: b.node } : { kind: 'dead-peer', node: b.node };
}

/** Whether this node does a binding's background work (offline delivery, de-registration, qualify): its own, or a dead node's. */
export function handledHere(b: Binding, nodes: NodeView | undefined): boolean {
  return holderOf(b, nodes).kind !== 'peer';
}

/** `sip:127.0.0.1:5070;lr` → `127.0.0.1:5070` (host lower-cased; port 5060 when absent). */
export function nodeHostPort(uri: string): string | undefined {
  const m = /^sips?:(?:[^@;>]*@)?(\[[^\]]+\]|[^:;>]+)(?::(\d+))?/i.exec(uri.trim());
  if (!m?.[1]) return undefined;
  return `${m[1].toLowerCase()}:${m[2] ?? '5060'}`;
}

export function sameNode(a: string, b: string): boolean {
  return nodeHostPort(a) === nodeHostPort(b);
}

/** What the directory needs from the store (lib/store/redis-store.ts). */
export interface NodeRegistry {
  heartbeat(uri: string, ttlMs: number): Promise<void>;
  /** Every node that ever sent a heartbeat, with whether it is alive now. */
  nodes(): Promise<Array<{ uri: string; alive: boolean }>>;
  leave(uri: string): Promise<void>;
}

export class NodeDirectory implements NodeView {
  private alive = new Set<string>();
  private peers = new Set<string>();
  private timer: NodeJS.Timeout | undefined;
  private lastError: string | undefined;
  private lastRead = 0;
  private reading: Promise<void> | undefined;

  constructor(
    private readonly registry: NodeRegistry,
    private readonly selfUri: () => string | undefined,
    private readonly onError: (error: string | undefined) => void = () => undefined,
  ) {}

  self(): string | undefined {
    return this.selfUri();
  }

  isAlive(uri: string): boolean {
    const hp = nodeHostPort(uri);
    return hp !== undefined && this.alive.has(hp);
  }

  isPeer(source: { address: string; port: number }): boolean {
    return this.peers.has(`${source.address.toLowerCase()}:${source.port}`);
  }

  /** Live nodes (host:port), for /health and logs. */
  get liveNodes(): string[] {
    return [...this.alive].sort();
  }

  start(): void {
    if (this.timer) return;
    const beat = (): void => { void this.beat(); };
    beat();
    this.timer = setInterval(beat, HEARTBEAT_MS);
    this.timer.unref();
  }

  async confirm(uris: readonly string[]): Promise<void> {
    if (uris.every((uri) => this.isAlive(uri))) return;
    await this.reread();
  }

  async confirmPeer(source: { address: string; port: number }): Promise<boolean> {
    if (this.isPeer(source)) return true;
    await this.reread();
    return this.isPeer(source);
  }

  /** Read the nodes now, unless that was done less than CONFIRM_MIN_INTERVAL_MS ago (then what is known stands). */
  private async reread(): Promise<void> {
    if (Date.now() - this.lastRead < CONFIRM_MIN_INTERVAL_MS) return;
    this.reading ??= this.read().catch(() => undefined).finally(() => { this.reading = undefined; });
    await this.reading;
  }

  private async read(): Promise<void> {
    this.lastRead = Date.now();
    const self = this.selfUri();
    const nodes = await this.registry.nodes();
    this.alive = new Set(nodes.filter((n) => n.alive).map((n) => nodeHostPort(n.uri)).filter((hp): hp is string => hp !== undefined));
    const selfHp = self === undefined ? undefined : nodeHostPort(self);
    this.peers = new Set([...this.alive].filter((hp) => hp !== selfHp));
  }

  async beat(): Promise<void> {
    try {
      const self = this.selfUri();
      if (self !== undefined) await this.registry.heartbeat(self, NODE_TTL_MS);
      await this.read();
      if (this.lastError !== undefined) { this.lastError = undefined; this.onError(undefined); }
    } catch (err) {
      // Redis unreachable: what was known stays (peers keep being accepted, requests still go to
      // nodes last seen alive: a hung peer then costs a transaction timeout, never a hang).
      const message = err instanceof Error ? err.message : String(err);
      if (message !== this.lastError) { this.lastError = message; this.onError(message); }
    }
  }

  async stop(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
    const self = this.selfUri();
    if (self !== undefined) await this.registry.leave(self).catch(() => undefined);
  }
}
