#!/usr/bin/env node
// `npm run bench:redis-rtt`: Redis round trips per SIP request, measured, not counted from the
// code. midreg's RedisStore talks to a local redis-server through a TCP relay that holds every
// chunk for DELAY_MS/2 each way, so each round trip costs DELAY_MS; the store calls a REGISTER or a
// MESSAGE makes (the same calls lib/registrar and lib/messaging make) are timed, and time / DELAY_MS
// is the number of round trips. Commands per request come from Redis' INFO commandstats.
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { createConnection, createServer, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Binding } from '../lib/registrar/registration.js';
import { RedisStore } from '../lib/store/redis-store.js';
import { describeTarget, parseStoreUrl } from '../lib/store/store-url.js';
import { delay, freePort } from './procs.js';

const DELAY_MS = 20;
const RUNS = 15;

function binding(aor: string, contact: string, now: number, cseq: number): Binding {
  return {
    aor, contact, expiresAt: now + 300_000, q: null, instance: null, regId: null, path: null, callId: `${aor}-call`, cseq,
    userAgent: 'bench', source: { address: '192.0.2.1', port: 5060, transport: 'udp' }, insertion: null,
    upstreamExpiresAt: null, lapsedAt: null, node: 'sip:127.0.0.1:5060;lr', registeredAt: now, updatedAt: now,
  };
}

/** A TCP relay that delays each chunk by `oneWayMs` in each direction. */
async function delayRelay(targetPort: number, oneWayMs: number): Promise<{ port: number; close(): void }> {
  const sockets = new Set<Socket>();
  const server = createServer((client) => {
    const upstream = createConnection({ host: '127.0.0.1', port: targetPort });
    sockets.add(client).add(upstream);
    const pipe = (from: Socket, to: Socket): void => {
      from.on('data', (chunk: Buffer) => { setTimeout(() => { if (!to.destroyed) to.write(chunk); }, oneWayMs); });
      from.on('close', () => to.destroy());
      from.on('error', () => to.destroy());
    };
    pipe(client, upstream);
    pipe(upstream, client);
  });
  const port = await freePort();
  await new Promise<void>((resolve) => server.listen(port, '127.0.0.1', () => resolve()));
  return { port, close: () => { for (const s of sockets) s.destroy(); server.close(); } };
}

function commands(port: number): number {
  const info = spawnSync('redis-cli', ['-p', String(port), 'info', 'commandstats'], { encoding: 'utf8' }).stdout;
  // Not counting the INFO calls themselves.
  return [...info.matchAll(/^cmdstat_(\w+):calls=(\d+)/gm)].filter((m) => m[1] !== 'info').reduce((n, m) => n + Number(m[2]), 0);
}

async function main(): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'mr-rtt-'));
  const redisPort = await freePort();
  const redis = spawn('redis-server', ['--port', String(redisPort), '--bind', '127.0.0.1', '--dir', dir, '--save', '', '--appendonly', 'no'], { stdio: 'ignore' });
  const relay = await delayRelay(redisPort, DELAY_MS / 2);
  await delay(300);
  const target = parseStoreUrl(`redis://127.0.0.1:${relay.port}`, '');
  if (target.kind !== 'redis') throw new Error('not redis');
  const store = new RedisStore(target, describeTarget(target));
  try {
    if (!await store.connect(5000)) throw new Error('redis-server did not answer');
    const measure = async (name: string, op: (i: number) => Promise<unknown>): Promise<void> => {
      const times: number[] = [];
      const before = commands(redisPort);
      for (let i = 0; i < RUNS; i++) {
        const started = performance.now();
        await op(i);
        times.push(performance.now() - started);
      }
      const perRequest = (commands(redisPort) - before) / RUNS;
      times.sort((a, b) => a - b);
      const median = times[Math.floor(times.length / 2)] ?? 0;
      process.stdout.write(`| ${name} | ${(median / DELAY_MS).toFixed(1)} | ${perRequest.toFixed(1)} |\n`);
    };
    process.stdout.write(`Redis round trips per request (each round trip delayed ${DELAY_MS} ms; median of ${RUNS}):\n\n| request | round trips | Redis commands |\n|---|---:|---:|\n`);
    const now = Date.now();
    // REGISTER, mirror mode: one updateAor (read; compare-and-set script; index updates).
    await measure('REGISTER, new AoR (mirror)', (i) => store.bindings.updateAor(`sip:new${i}@example.test`, 'c', () => ({ bindings: [binding(`sip:new${i}@example.test`, `sip:u${i}@192.0.2.1`, now, 1)], recordCseq: 1, result: undefined })));
    await measure('REGISTER, refresh (mirror)', (i) => store.bindings.updateAor(`sip:new${i}@example.test`, 'c', (s) => ({ bindings: s.bindings.map((b) => ({ ...b, expiresAt: b.expiresAt + 1000, cseq: 2, updatedAt: now + 1 })), recordCseq: 2, result: undefined })));
    // Contact mode, a refresh midreg answers itself: read for the decision, then the absorbed expiry.
    await measure('REGISTER, absorbed refresh (contact mode)', async (i) => {
      await store.bindings.bindingsOf(`sip:new${i}@example.test`);
      await store.bindings.absorbRefresh(`sip:new${i}@example.test`, `sip:u${i}@192.0.2.1`, now + 400_000, 3, now + 2);
    });
    // MESSAGE: the sender check, then locate (by contact, then by AoR), as lib/messaging does.
    await measure('MESSAGE to an AoR', async (i) => {
      await store.bindings.isLiveSource(`sip:new${(i + 1) % RUNS}@example.test`, '192.0.2.1', 5060, now);
      await store.bindings.liveBindingsByContact(`sip:new${i}@example.test`, now);
      await store.bindings.liveBindings(`sip:new${i}@example.test`, now);
    });
  } finally {
    await store.close();
    relay.close();
    redis.kill('SIGTERM');
    await delay(200);
    rmSync(dir, { recursive: true, force: true });
  }
}

await main();
