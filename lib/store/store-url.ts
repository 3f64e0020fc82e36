// MIDREG_STORE: where midreg keeps its state. Pure parsing, so it is tested without a network.
//
//   (unset)                                   the SQLite file MIDREG_DB (one node, the default)
//   sqlite:/path/to/file.sqlite               the same, named explicitly
//   redis://[user:pass@]host:port[/db]        one Redis server (rediss:// for TLS)
//   redis+cluster://[user:pass@]h1:p1,h2:p2   a Redis Cluster, from any of its masters (seed list)
//   redis+sentinel://[user:pass@]s1:p1,s2:p2/master[/db]
//                                             a Redis master found through Sentinel, by name
//
// A `+tls` suffix on the cluster and sentinel schemes (rediss+cluster://, rediss+sentinel://)
// asks for TLS to the data nodes. Credentials in the URL are for the data nodes; they are never logged.

export interface HostPort { host: string; port: number }

export type StoreTarget =
  | { kind: 'sqlite'; file: string }
  | { kind: 'redis'; mode: 'standalone'; node: HostPort; db: number; tls: boolean; username?: string; password?: string }
  | { kind: 'redis'; mode: 'cluster'; nodes: HostPort[]; tls: boolean; username?: string; password?: string }
  | { kind: 'redis'; mode: 'sentinel'; sentinels: HostPort[]; name: string; db: number; tls: boolean; username?: string; password?: string };

export class StoreUrlError extends Error {}

const SCHEMES = /^(redis|rediss)(\+cluster|\+sentinel)?:\/\/(.*)$/i;

function hostPorts(list: string, defaultPort: number): HostPort[] {
  return list.split(',').map((item) => {
    const text = item.trim();
    const m = /^(\[[0-9a-fA-F:.]+\]|[^\s:/[\]]+)(?::(\d{1,5}))?$/.exec(text);
    if (!m?.[1]) throw new StoreUrlError(`"${text}" is not host[:port]`);
    const port = m[2] === undefined ? defaultPort : Number(m[2]);
    if (port < 1 || port > 65535) throw new StoreUrlError(`port ${port} out of range`);
    return { host: m[1].replace(/^\[|\]$/g, ''), port };
  });
}

function dbNumber(text: string | undefined): number {
  if (text === undefined || text === '') return 0;
  if (!/^\d{1,2}$/.test(text)) throw new StoreUrlError(`database "${text}" must be a number from 0 to 99`);
  return Number(text);
}

/** MIDREG_STORE (or undefined) and MIDREG_DB → what to open. */
export function parseStoreUrl(value: string | undefined, dbFile: string): StoreTarget {
  const text = value?.trim() ?? '';
  if (text === '') return { kind: 'sqlite', file: dbFile };
  if (/^sqlite:/i.test(text)) {
    const file = text.replace(/^sqlite:(\/\/)?/i, '');
    if (file === '') throw new StoreUrlError('sqlite: needs a file path, e.g. sqlite:/var/lib/midreg/midreg.sqlite');
    return { kind: 'sqlite', file };
  }
  const m = SCHEMES.exec(text);
  if (!m) throw new StoreUrlError('must be redis://host:port, rediss://…, redis+cluster://h1:p1,h2:p2, redis+sentinel://s1:p1/master or sqlite:/path');
  const tls = (m[1] ?? '').toLowerCase() === 'rediss';
  const mode = (m[2] ?? '').toLowerCase();
  let rest = m[3] ?? '';
  let username: string | undefined;
  let password: string | undefined;
  const at = rest.lastIndexOf('@');
  if (at >= 0) {
    const userinfo = rest.slice(0, at);
    rest = rest.slice(at + 1);
    const colon = userinfo.indexOf(':');
    const user = decodeURIComponent(colon >= 0 ? userinfo.slice(0, colon) : userinfo);
    const pass = colon >= 0 ? decodeURIComponent(userinfo.slice(colon + 1)) : undefined;
    // redis://:secret@host (no user) is the classic AUTH <password>.
    if (pass === undefined) password = user; else { if (user !== '') username = user; password = pass; }
  }
  const auth = { ...(username !== undefined ? { username } : {}), ...(password !== undefined ? { password } : {}) };
  const [hosts = '', ...path] = rest.replace(/\/+$/, '').split('/');
  if (hosts === '') throw new StoreUrlError('names no host');
  if (mode === '+cluster') {
    if (path.length > 0) throw new StoreUrlError('a Redis Cluster has only database 0: give no /db');
    return { kind: 'redis', mode: 'cluster', nodes: hostPorts(hosts, 6379), tls, ...auth };
  }
  if (mode === '+sentinel') {
    const [name, db] = path;
    if (!name) throw new StoreUrlError('redis+sentinel:// needs the master name: redis+sentinel://s1:26379,s2:26379/mymaster');
    return { kind: 'redis', mode: 'sentinel', sentinels: hostPorts(hosts, 26379), name: decodeURIComponent(name), db: dbNumber(db), tls, ...auth };
  }
  const nodes = hostPorts(hosts, 6379);
  if (nodes.length !== 1) throw new StoreUrlError('redis:// names one server; use redis+cluster:// for a seed list');
  if (path.length > 1) throw new StoreUrlError('only /db may follow the host');
  return { kind: 'redis', mode: 'standalone', node: nodes[0] as HostPort, db: dbNumber(path[0]), tls, ...auth };
}

/** For logs: the target without credentials. */
export function describeTarget(t: StoreTarget): string {
  if (t.kind === 'sqlite') return t.file;
  const list = (hs: HostPort[]): string => hs.map((h) => `${h.host.includes(':') ? `[${h.host}]` : h.host}:${h.port}`).join(',');
  const scheme = t.tls ? 'rediss' : 'redis';
  if (t.mode === 'standalone') return `${scheme}://${list([t.node])}/${t.db}`;
  if (t.mode === 'cluster') return `${scheme}+cluster://${list(t.nodes)}`;
  return `${scheme}+sentinel://${list(t.sentinels)}/${t.name}/${t.db}`;
}
