#!/usr/bin/env node
// `npm run bench:watch`: what the connection watch (lib/reachability/connection-watch.ts) costs
// as TCP phones grow. drachtio-server tells apps nothing when a connection closes, so midreg reads
// the kernel's TCP table, whose size grows with every connection on the host. Real loopback
// connections are opened (listeners and clients in child processes, so the file-descriptor limit
// of one process is not the bound), the watch indexes one binding per connection, and each look
// (read of /proc/net/tcp and tcp6, scan, judgement of every flow) is timed: node CPU over all its
// threads (the read runs in libuv's pool), and how long the event loop was held.
import { fork } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import type { Binding } from '../lib/registrar/registration.js';
import { ConnectionWatch, pollDelay } from '../lib/reachability/connection-watch.js';
import { ReachabilityTable } from '../lib/reachability/reachability.js';
import { createLogger } from '../lib/ops/logger.js';
import { RESULTS_DIR, runStamp } from './procs.js';
import { fmt1, fmtInt, markdownTable, textTable, type Table } from './report.js';

/** Connections per listener/client process pair: under the 20,000 descriptors a process may hold here. */
const PER_PAIR = 9000;
const LOOKS = 10;
const INTERVAL_MS = 500;

function usage(): never {
  process.stdout.write(`usage: node dist/bench/watch.js [--steps 2000,9000,18000,36000]
  --steps <list>  connections held open at each step (each one a phone on TCP), ascending
`);
  process.exit(0);
}

interface Pair { port: number; peers: string[]; stop(): void }

/** A child holding `count` connections: a listener and its clients, both ends in that process. */
async function openPair(count: number): Promise<Pair> {
  const child = fork(fileURLToPath(import.meta.url), ['--child', String(count)], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
  return new Promise((resolve, reject) => {
    child.once('message', (m: unknown) => {
      const msg = m as { port: number; peers: string[] };
      resolve({ port: msg.port, peers: msg.peers, stop: () => child.kill('SIGKILL') });
    });
    child.once('exit', (code) => reject(new Error(`connection holder exited ${code}`)));
  });
}

async function child(count: number): Promise<void> {
  const { createServer, connect } = await import('node:net');
  const held: unknown[] = [];
  const server = createServer((s) => { held.push(s); });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as { port: number }).port;
  const peers: string[] = [];
  for (let i = 0; i < count; i++) {
    const s = connect(port, '127.0.0.1');
    await new Promise<void>((resolve, reject) => { s.once('connect', resolve); s.once('error', reject); });
    peers.push(`127.0.0.1:${s.localPort ?? 0}`);
    held.push(s);
  }
  process.send?.({ port, peers });
  setInterval(() => {}, 60_000);
}

function binding(i: number, peer: string, now: number): Binding {
  const [address = '', port = '0'] = peer.split(':');
  return {
    aor: `sip:tcp${i}@example.test`, contact: `sip:tcp${i}@${peer};transport=tcp`, expiresAt: now + 3_600_000, q: null, instance: null, regId: null,
    path: null, callId: `c${i}`, cseq: 1, userAgent: 'bench', source: { address, port: Number(port), transport: 'tcp' }, insertion: null,
    upstreamExpiresAt: null, lapsedAt: null, registeredAt: now, updatedAt: now,
  };
}

interface Step { connections: number; tableLines: number; cpuMs: number; loopHeldMs: number; wallMs: number; delayMs: number; judgedOpen: boolean }

async function measure(pairs: Pair[]): Promise<Step> {
  const now = Date.now();
  const peers = pairs.flatMap((p) => p.peers);
  const bindings = peers.map((peer, i) => binding(i, peer, now));
  const byAor = new Map(bindings.map((b) => [b.aor, b]));
  const table = new ReachabilityTable();
  const store = {
    liveBindings: async (aor: string) => { const b = byAor.get(aor); return b ? [b] : []; },
    listLiveAfter: async (_now: number, o: { limit: number; after?: { aor: string; contact: string } }) => {
      const start = o.after ? bindings.findIndex((b) => b.aor === o.after?.aor) + 1 : 0;
      return bindings.slice(start, start + o.limit);
    },
  };
  const closed: Binding[] = [];
  const watch = new ConnectionWatch({
    table, store, intervalMs: INTERVAL_MS, logger: createLogger({ level: 'error', format: 'json' }),
    sipAddresses: () => pairs.map((p) => `tcp/127.0.0.1:${p.port}`), onClosed: (b) => closed.push(b),
  });
  await watch.seed();
  await watch.check(); // every flow seen once
  const cpu: number[] = []; const held: number[] = []; const wall: number[] = [];
  for (let i = 0; i < LOOKS; i++) {
    const h = monitorEventLoopDelay({ resolution: 1 });
    h.enable();
    const c0 = process.cpuUsage(); const t0 = performance.now();
    await watch.check();
    const t1 = performance.now(); const c1 = process.cpuUsage(c0);
    await new Promise((resolve) => setTimeout(resolve, 20));
    h.disable();
    cpu.push((c1.user + c1.system) / 1000); wall.push(t1 - t0); held.push(h.max / 1e6);
  }
  const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] ?? 0;
  const { readFileSync } = await import('node:fs');
  const tableLines = ['/proc/net/tcp', '/proc/net/tcp6'].reduce((n, f) => { try { return n + readFileSync(f, 'latin1').split('\n').length - 2; } catch { return n; } }, 0);
  return { connections: peers.length, tableLines, cpuMs: median(cpu), loopHeldMs: median(held), wallMs: median(wall), delayMs: pollDelay(INTERVAL_MS, median(cpu)), judgedOpen: closed.length === 0 && watch.size === peers.length };
}

async function main(): Promise<void> {
  const args = process.argv.slice(2);
  if (args.includes('--help')) usage();
  const i = args.indexOf('--steps');
  const steps = (i >= 0 ? args[i + 1] ?? '' : '2000,9000,18000,36000').split(',').map(Number).filter((n) => n > 0);
  const started = new Date();
  const stamp = runStamp(started);
  const pairs: Pair[] = [];
  const results: Step[] = [];
  try {
    for (const target of steps) {
      let have = pairs.reduce((n, p) => n + p.peers.length, 0);
      while (have < target) { const p = await openPair(Math.min(PER_PAIR, target - have)); pairs.push(p); have += p.peers.length; }
      const step = await measure(pairs);
      results.push(step);
      process.stdout.write(`${fmtInt(step.connections)} connections (${fmtInt(step.tableLines)} kernel table lines): look ${fmt1(step.wallMs)} ms, node CPU ${fmt1(step.cpuMs)} ms, event loop held ≤ ${fmt1(step.loopHeldMs)} ms, next look after ${fmtInt(step.delayMs)} ms${step.judgedOpen ? '' : ' — WRONG: a live connection judged closed'}\n`);
    }
  } finally {
    for (const p of pairs) p.stop();
  }
  const last = results[results.length - 1];
  const perK = last ? last.cpuMs / (last.tableLines / 1000) : 0;
  const at100k = perK * 100; // 100,000 phones: 100,000 lines of drachtio-server's ends
  const t: Table = {
    title: 'Connection watch: one look at the kernel\'s TCP table (median of 10)',
    head: ['TCP connections (phones)', 'kernel table lines', 'look ms (wall)', 'node CPU ms per look', 'event loop held ms (max)', 'next look after ms', 'CPU % of a core at that pace', 'every live flow judged open'],
    rows: results.map((s) => [fmtInt(s.connections), fmtInt(s.tableLines), fmt1(s.wallMs), fmt1(s.cpuMs), fmt1(s.loopHeldMs), fmtInt(s.delayMs), `${((s.cpuMs / s.delayMs) * 100).toFixed(1)}%`, s.judgedOpen ? 'yes' : 'NO']),
    notes: [
      `MIDREG_CONNECTION_WATCH_MS ${INTERVAL_MS}; a look costing more than a tenth of it stretches the wait to ten times the look (pollDelay), so the watch stays near 10 % of a core whatever the table size; detection of a closed connection then takes up to that wait`,
      'both ends of every test connection are on this host, so the table holds two lines per connection; with real phones only drachtio-server\'s end is',
      `extrapolated (not measured): ${fmt1(perK)} ms node CPU per 1,000 table lines → about ${fmtInt(at100k)} ms per look at 100,000 phones, so looks every ${fmtInt(pollDelay(INTERVAL_MS, at100k))} ms (node CPU of a look: this process's, all threads, during it)`,
    ],
  };
  const text = textTable(t).join('\n');
  process.stdout.write(`\n${text}\n`);
  const md = [`# midreg connection-watch benchmark ${stamp}-watch`, '', `\`node dist/bench/watch.js\` (bench/watch.ts), node ${process.version}.`, '', ...markdownTable(t)].join('\n');
  writeFileSync(join(RESULTS_DIR, `${stamp}-watch.md`), `${md}\n`);
  process.stdout.write(`\nwrote bench/results/${stamp}-watch.md\n`);
}

if (process.argv[2] === '--child') await child(Number(process.argv[3]));
else await main();
