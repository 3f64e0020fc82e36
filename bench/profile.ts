// Summary of a V8 .cpuprofile (node --cpu-prof): self time per function and per origin
// (midreg's own code, each npm package, Node internals, GC, idle).
import { readFileSync } from 'node:fs';

interface CallFrame { functionName: string; url: string; lineNumber: number; columnNumber: number }
interface ProfileNode { id: number; callFrame: CallFrame; hitCount?: number; children?: number[] }
interface CpuProfile { nodes: ProfileNode[]; startTime: number; endTime: number; samples?: number[]; timeDeltas?: number[] }

export interface FunctionCost { name: string; where: string; origin: string; selfMs: number; pctBusy: number }
export interface OriginCost { origin: string; selfMs: number; pctBusy: number }

export interface ProfileSummary {
  file: string;
  durationMs: number;
  busyMs: number;
  idleMs: number;
  top: FunctionCost[];
  /** Self time per origin of the frame itself. */
  origins: OriginCost[];
  /**
   * Self time per responsible caller: time in native code and Node internals is charged to the
   * nearest calling frame from midreg or an npm package (socket writes done for drachtio-srf
   * count as drachtio-srf, SQLite's C code as better-sqlite3…).
   */
  owners: OriginCost[];
}

function isProfile(value: unknown): value is CpuProfile {
  return typeof value === 'object' && value !== null && Array.isArray((value as { nodes?: unknown }).nodes);
}

/** npm packages reported under the package that pulls them in. */
const FAMILY: Record<string, string> = {
  ...Object.fromEntries(['winston', 'winston-transport', 'logform', 'safe-stable-stringify', 'triple-beam', 'readable-stream', 'fecha',
    '@colors/colors', '@dabh/diagnostics', 'one-time', 'stack-trace', 'async', 'is-stream'].map((p) => [p, 'winston (logging)'])),
  ...Object.fromEntries(['drachtio-srf', 'delegates', 'node-noop', 'only', 'sdp-transform', 'short-uuid', 'sip-methods', 'utils-merge',
    'uuid-random', 'drachtio-mw-registration-parser'].map((p) => [p, 'drachtio-srf'])),
};

/** Where a function comes from: "midreg lib", "drachtio-srf", "node:internal", "(garbage collector)"… */
export function originOf(frame: CallFrame): string {
  const { url, functionName } = frame;
  if (!url) return functionName.startsWith('(') ? functionName : '(native)';
  const pkg = /node_modules\/((?:@[^/]+\/)?[^/]+)\//.exec(url);
  if (pkg) return FAMILY[pkg[1] ?? ''] ?? pkg[1] ?? 'npm';
  if (url.startsWith('node:')) return 'node:internal';
  const own = /\/dist\/(app|lib|bench)\//.exec(url);
  if (own) return own[1] === 'bench' ? 'bench' : `midreg ${own[1]}`;
  return url.replace(/^file:\/\//, '');
}

function shortWhere(frame: CallFrame): string {
  if (!frame.url) return '';
  const path = frame.url.replace(/^file:\/\//, '').replace(/^.*node_modules\//, '').replace(/^.*\/dist\//, '');
  return `${path}:${frame.lineNumber + 1}`;
}

export function summarizeProfile(file: string, topN = 12): ProfileSummary {
  const raw: unknown = JSON.parse(readFileSync(file, 'utf8'));
  if (!isProfile(raw)) throw new Error(`${file} is not a V8 CPU profile`);
  const byId = new Map<number, ProfileNode>(raw.nodes.map((n) => [n.id, n]));
  const selfUs = new Map<number, number>();
  const samples = raw.samples ?? [];
  const deltas = raw.timeDeltas ?? [];
  if (samples.length > 0) {
    // timeDeltas[i] is the time since the previous sample: charge it to sample i-1's node
    for (let i = 0; i < samples.length; i++) {
      const id = samples[i];
      const dt = deltas[i + 1] ?? 0;
      if (id !== undefined) selfUs.set(id, (selfUs.get(id) ?? 0) + Math.max(0, dt));
    }
  } else {
    const interval = (raw.endTime - raw.startTime) / Math.max(1, raw.nodes.reduce((s, n) => s + (n.hitCount ?? 0), 0));
    for (const n of raw.nodes) selfUs.set(n.id, (n.hitCount ?? 0) * interval);
  }
  const parent = new Map<number, number>();
  for (const n of raw.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
  const ownerCache = new Map<number, string>();
  const ownerOf = (id: number): string => {
    const cached = ownerCache.get(id);
    if (cached !== undefined) return cached;
    const node = byId.get(id);
    let owner = node ? originOf(node.callFrame) : '(unknown)';
    if (owner === '(native)' || owner === 'node:internal') {
      const up = parent.get(id);
      const above = up !== undefined ? ownerOf(up) : owner;
      owner = above === '(root)' ? owner : above;
    }
    ownerCache.set(id, owner);
    return owner;
  };
  const owners = new Map<string, number>();
  const functions = new Map<string, FunctionCost>();
  const origins = new Map<string, number>();
  let idleUs = 0;
  let totalUs = 0;
  for (const [id, us] of selfUs) {
    const node = byId.get(id);
    if (!node) continue;
    totalUs += us;
    const frame = node.callFrame;
    if (frame.functionName === '(idle)') { idleUs += us; continue; }
    const origin = originOf(frame);
    origins.set(origin, (origins.get(origin) ?? 0) + us);
    const owner = ownerOf(id);
    owners.set(owner, (owners.get(owner) ?? 0) + us);
    const name = frame.functionName || '(anonymous)';
    const where = shortWhere(frame);
    const key = `${name}|${where}`;
    const entry = functions.get(key) ?? { name, where, origin, selfMs: 0, pctBusy: 0 };
    entry.selfMs += us / 1000;
    functions.set(key, entry);
  }
  const busyUs = totalUs - idleUs;
  const pct = (us: number): number => (busyUs > 0 ? (us / busyUs) * 100 : 0);
  const top = [...functions.values()]
    .map((f) => ({ ...f, pctBusy: pct(f.selfMs * 1000) }))
    .sort((a, b) => b.selfMs - a.selfMs)
    .slice(0, topN);
  return {
    file,
    durationMs: (raw.endTime - raw.startTime) / 1000,
    busyMs: busyUs / 1000,
    idleMs: idleUs / 1000,
    top,
    origins: [...origins.entries()].map(([origin, us]) => ({ origin, selfMs: us / 1000, pctBusy: pct(us) })).sort((a, b) => b.selfMs - a.selfMs),
    owners: [...owners.entries()].map(([origin, us]) => ({ origin, selfMs: us / 1000, pctBusy: pct(us) })).sort((a, b) => b.selfMs - a.selfMs),
  };
}

export function formatProfile(s: ProfileSummary, heading: string): string[] {
  const lines = [
    `${heading}: ${s.file}`,
    `  ${(s.durationMs / 1000).toFixed(1)} s profiled, JS thread busy ${(s.busyMs / 1000).toFixed(1)} s (${((s.busyMs / Math.max(1, s.durationMs)) * 100).toFixed(0)}%)`,
    `  by responsible code: ${s.owners.slice(0, 9).map((o) => `${o.origin} ${o.pctBusy.toFixed(1)}%`).join(' · ')}`,
    '    (native and node-internal time charged to the nearest midreg/npm caller)',
    '  top self time:',
  ];
  for (const f of s.top) {
    lines.push(`    ${f.pctBusy.toFixed(1).padStart(5)}%  ${f.selfMs.toFixed(0).padStart(6)} ms  ${f.name}  ${f.where}`);
  }
  return lines;
}
