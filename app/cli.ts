#!/usr/bin/env node
// `midreg`, the operator's command line: look at the replica (read-only, safe next to the running
// service), ask the running service for its counters, export every binding. Commander only
// parses; each command is a plain function over streams.
import { Command, InvalidArgumentError } from 'commander';
import { once } from 'node:events';
import { createWriteStream, existsSync, openSync, readFileSync, realpathSync } from 'node:fs';
import type { Writable } from 'node:stream';
import { fileURLToPath } from 'node:url';
import { z } from 'zod';
import {
  aorLookupKey, bindingView, columnWidths, formatRow, liveBindingPages, TABLE_HEADER, tableRow,
} from '../lib/ops/binding-view.js';
import { SqliteStore } from '../lib/store/sqlite-store.js';
import { RedisStore } from '../lib/store/redis-store.js';
import { describeTarget, parseStoreUrl, StoreUrlError } from '../lib/store/store-url.js';
import type { BindingStore, OfflineMessageStore, Store } from '../lib/store/store.js';
import type { Binding } from '../lib/registrar/registration.js';

/** A failure the user can act on: printed as one line, exit code 1. */
class CliError extends Error {}

const DEFAULT_DB = './data/midreg.sqlite';
const READ_BATCH = 1000;

async function write(out: Writable, text: string): Promise<void> {
  // A stream that already failed (disk full) would never drain again.
  if (out.errored) throw new CliError(`cannot write the output: ${out.errored.message}`);
  if (!out.write(text)) await once(out, 'drain');
}

/** Where to read: --store (or MIDREG_STORE) when given, else the SQLite file --db. */
interface StoreChoice { db: string; store?: string | undefined }

async function openReplica(choice: StoreChoice): Promise<Store> {
  let target;
  try {
    target = parseStoreUrl(choice.store, choice.db);
  } catch (err) {
    throw new CliError(`--store: ${err instanceof StoreUrlError ? err.message : String(err)}`);
  }
  if (target.kind === 'redis') {
    const store = new RedisStore(target, describeTarget(target));
    if (!await store.connect(5000)) {
      await store.close();
      throw new CliError(`cannot reach ${describeTarget(target)}: ${store.unavailableReason ?? 'no answer'}`);
    }
    return store;
  }
  const file = target.file;
  if (!existsSync(file)) throw new CliError(`no database at ${file} (give --db FILE or set MIDREG_DB)`);
  try {
    return new SqliteStore(file, { readonly: true });
  } catch (err) {
    throw new CliError(err instanceof Error ? err.message : String(err));
  }
}

/** The export file, opened at once so a bad path fails before any binding is read. */
function openOutput(path: string): { path: string; stream: Writable; finish(): Promise<void> } {
  let fd: number;
  try {
    fd = openSync(path, 'w');
  } catch (err) {
    throw new CliError(`cannot write ${path}: ${err instanceof Error ? err.message : String(err)}`);
  }
  const stream = createWriteStream('', { fd });
  // Recorded here and reported by write()/finish(): an unheard 'error' event would crash the CLI.
  stream.on('error', () => undefined);
  return {
    path,
    stream,
    async finish() {
      stream.end();
      await once(stream, 'close');
      if (stream.errored) throw new CliError(`cannot write ${path}: ${stream.errored.message}`);
    },
  };
}

async function withReplica<T>(choice: StoreChoice, use: (store: Store) => Promise<T>): Promise<T> {
  const store = await openReplica(choice);
  try {
    return await use(store);
  } finally {
    await store.close();
  }
}

// ---- registrations ----------------------------------------------------------------------------

async function* oneAor(bindings: Binding[]): AsyncGenerator<Binding[]> {
  yield bindings;
}

export async function showRegistrations(store: Pick<BindingStore, 'listLiveAfter' | 'liveBindingsView'>, aor: string | undefined, opts: { json: boolean }, out: Writable, now: number): Promise<void> {
  const pages = aor === undefined
    ? liveBindingPages(store, now, { batch: READ_BATCH })
    : oneAor(await store.liveBindingsView(aorLookupKey(aor), now));
  let bindings = 0;
  let aors = 0;
  let lastAor: string | undefined;
  let widths: number[] | undefined;
  if (opts.json) await write(out, '[');
  for await (const page of pages) {
    if (page.length === 0) continue;
    if (opts.json) {
      await write(out, page.map((b, i) => `${bindings + i === 0 ? '\n' : ',\n'}${JSON.stringify(bindingView(b, now))}`).join(''));
    } else {
      const rows = page.map((b) => tableRow(b, now));
      // Widths come from the first page: the table streams, so a million bindings never sit in memory.
      if (!widths) {
        widths = columnWidths(rows);
        await write(out, `${formatRow(TABLE_HEADER, widths)}\n`);
      }
      const w = widths;
      await write(out, rows.map((r) => `${formatRow(r, w)}\n`).join(''));
    }
    for (const b of page) {
      if (b.aor !== lastAor) { aors += 1; lastAor = b.aor; }
    }
    bindings += page.length;
  }
  if (opts.json) await write(out, bindings === 0 ? ']\n' : '\n]\n');
  else if (bindings > 0) await write(out, `\n${bindings} binding${bindings === 1 ? '' : 's'}, ${aors} AoR${aors === 1 ? '' : 's'}\n`);
  // An empty replica is a fact; asking for an AoR that is not registered is a failed lookup.
  if (bindings === 0 && aor !== undefined) throw new CliError(`no live registration for ${aorLookupKey(aor)}`);
  if (bindings === 0 && !opts.json) await write(out, 'no live registrations\n');
}

// ---- stats ------------------------------------------------------------------------------------

const statsSchema = z.object({
  started_at: z.string(),
  uptime_seconds: z.number(),
  drachtio: z.string(),
  bindings: z.number(),
  aors: z.number(),
  register: z.record(z.string(), z.number()),
  /** Absent from a service older than contact throttling. */
  register_absorbed: z.number().optional(),
  /** Absent from a service older than AoR throttling. */
  mode: z.string().optional(),
  upstream_deregistrations_pending: z.number().optional(),
  message: z.record(z.string(), z.number()),
  replica_write_failures: z.number(),
  reachability: z.object({ reachable: z.number(), unreachable: z.number(), unknown: z.number() }).optional(),
});
export type ServiceStats = z.infer<typeof statsSchema>;

/** Where the admin API listens, from the same variables the service reads. */
export function defaultAdminUrl(env: NodeJS.ProcessEnv): string | undefined {
  if (env['MIDREG_ADMIN_URL']) return env['MIDREG_ADMIN_URL'];
  const port = env['MIDREG_ADMIN_PORT'];
  if (!port || port === '0') return undefined;
  const host = env['MIDREG_ADMIN_HOST'] || '127.0.0.1';
  // A wildcard bind is reachable through loopback from this machine.
  const reachable = host === '0.0.0.0' ? '127.0.0.1' : host === '::' ? '::1' : host;
  return `http://${reachable.includes(':') ? `[${reachable}]` : reachable}:${port}`;
}

export async function fetchStats(baseUrl: string, token: string | undefined): Promise<ServiceStats> {
  const url = `${baseUrl.replace(/\/+$/, '')}/stats`;
  let res: Response;
  try {
    res = await fetch(url, { headers: token ? { Authorization: `Bearer ${token}` } : {}, signal: AbortSignal.timeout(5000) });
  } catch (err) {
    const cause = err instanceof Error && err.cause instanceof Error ? err.cause.message : err instanceof Error ? err.message : String(err);
    throw new CliError(`cannot reach the midreg admin API at ${baseUrl}: ${cause}`);
  }
  if (res.status === 401) {
    throw new CliError(token
      ? `the admin API at ${baseUrl} refused the token (401): check --token / MIDREG_ADMIN_TOKEN`
      : `the admin API at ${baseUrl} requires a token (401): give --token or set MIDREG_ADMIN_TOKEN`);
  }
  if (res.status !== 200) throw new CliError(`the admin API at ${baseUrl} answered ${res.status} ${res.statusText} for /stats`);
  let body: unknown;
  try {
    body = await res.json();
  } catch {
    body = undefined;
  }
  const parsed = statsSchema.safeParse(body);
  if (!parsed.success) throw new CliError(`${baseUrl} did not answer /stats like the midreg admin API`);
  return parsed.data;
}

function duration(seconds: number): string {
  const d = Math.floor(seconds / 86400);
  const h = Math.floor((seconds % 86400) / 3600);
  const m = Math.floor((seconds % 3600) / 60);
  const s = seconds % 60;
  return [d ? `${d}d` : '', d || h ? `${h}h` : '', d || h || m ? `${m}m` : '', `${s}s`].filter((p) => p !== '').join(' ');
}

function tally(counts: Record<string, number>): string {
  return Object.entries(counts).map(([k, v]) => `${k} ${v}`).join(', ');
}

export function formatStats(stats: ServiceStats, source: string): string {
  const lines: Array<[string, string]> = [
    ['service', source],
    ['started at', `${stats.started_at} (up ${duration(stats.uptime_seconds)})`],
    ['drachtio-server', stats.drachtio],
    // The service counts what the replica stores; an expired binding stays until the next sweep.
    ['bindings', `${stats.bindings} stored, ${stats.aors} AoR${stats.aors === 1 ? '' : 's'}`],
    ...(stats.mode ? [['mode', stats.mode] as [string, string]] : []),
    ['REGISTER answered', tally(stats.register)],
    ...(stats.register_absorbed || (stats.mode !== undefined && stats.mode !== 'mirror') ? [['REGISTER answered locally', String(stats.register_absorbed ?? 0)] as [string, string]] : []),
    ...(stats.upstream_deregistrations_pending !== undefined ? [['upstream de-registrations pending', String(stats.upstream_deregistrations_pending)] as [string, string]] : []),
    ['MESSAGE', tally(stats.message)],
    ['replica write failures', String(stats.replica_write_failures)],
    ...(stats.reachability ? [['reachability', `${stats.reachability.reachable} reachable, ${stats.reachability.unreachable} unreachable, ${stats.reachability.unknown} unknown`] as [string, string]] : []),
  ];
  const width = Math.max(...lines.map(([k]) => k.length));
  return lines.map(([k, v]) => `${k.padEnd(width)}  ${v}\n`).join('');
}

// ---- reachability --------------------------------------------------------------------------------

const reachabilitySchema = z.object({
  state: z.enum(['unknown', 'reachable', 'unreachable']),
  rtt_ms: z.number().nullable(),
  since: z.string().nullable(),
  checked_at: z.string().nullable(),
});
const reachableBindingSchema = z.object({
  aor: z.string(),
  contact: z.string(),
  source: z.object({ address: z.string(), port: z.number(), transport: z.string() }).nullable(),
  reachability: reachabilitySchema.nullable(),
});
export type ReachableBinding = z.infer<typeof reachableBindingSchema>;
const bindingPageSchema = z.object({ bindings: z.array(reachableBindingSchema), next: z.string().nullable().optional() });

/** One GET to the admin API, as JSON; undefined for a 404 (the caller says what was not found). */
async function adminGet(baseUrl: string, token: string | undefined, path: string): Promise<unknown> {
  let res: Response;
  try {
    res = await fetch(`${baseUrl.replace(/\/+$/, '')}${path}`, { headers: token ? { Authorization: `Bearer ${token}` } : {}, signal: AbortSignal.timeout(10_000) });
  } catch (err) {
    const cause = err instanceof Error && err.cause instanceof Error ? err.cause.message : err instanceof Error ? err.message : String(err);
    throw new CliError(`cannot reach the midreg admin API at ${baseUrl}: ${cause}`);
  }
  if (res.status === 401) throw new CliError(`the admin API at ${baseUrl} ${token ? 'refused the token' : 'requires a token'} (401): give --token or set MIDREG_ADMIN_TOKEN`);
  if (res.status === 404) return undefined;
  if (res.status !== 200) throw new CliError(`the admin API at ${baseUrl} answered ${res.status} ${res.statusText}`);
  return res.json().catch(() => undefined);
}

/**
 * Reachability lives in the running service's memory, never in the SQLite file, so it is asked
 * of the admin API: every live binding (paged), or one AoR's.
 */
export async function fetchReachability(baseUrl: string, token: string | undefined, aor: string | undefined): Promise<ReachableBinding[]> {
  const bad = (): CliError => new CliError(`${baseUrl} did not answer /registrations like the midreg admin API`);
  if (aor !== undefined) {
    const key = aorLookupKey(aor);
    const body = await adminGet(baseUrl, token, `/registrations/${encodeURIComponent(key)}`);
    if (body === undefined) throw new CliError(`no live registration for ${key}`);
    const parsed = bindingPageSchema.safeParse(body);
    if (!parsed.success) throw bad();
    return parsed.data.bindings;
  }
  const all: ReachableBinding[] = [];
  let from: string | null | undefined;
  do {
    const body = await adminGet(baseUrl, token, `/registrations?limit=1000${from ? `&from=${encodeURIComponent(from)}` : ''}`);
    const parsed = bindingPageSchema.safeParse(body);
    if (!parsed.success) throw bad();
    all.push(...parsed.data.bindings);
    from = parsed.data.next;
  } while (from);
  return all;
}

export function formatReachability(bindings: readonly ReachableBinding[]): string {
  if (bindings.length === 0) return 'no live registrations\n';
  const header = ['AOR', 'CONTACT', 'SOURCE', 'STATE', 'RTT', 'SINCE'];
  const rows = bindings.map((b) => {
    const r = b.reachability;
    return [
      b.aor, b.contact, b.source ? `${b.source.transport}:${b.source.address}:${b.source.port}` : '-',
      r?.state ?? 'unknown', r?.rtt_ms !== null && r?.rtt_ms !== undefined ? `${r.rtt_ms}ms` : '-', r?.since ?? '-',
    ];
  });
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: string[]): string => `${cells.map((c, i) => (i === cells.length - 1 ? c : c.padEnd(widths[i] ?? 0))).join('  ').trimEnd()}\n`;
  const count = (state: string): number => bindings.filter((b) => (b.reachability?.state ?? 'unknown') === state).length;
  return `${[header, ...rows].map(line).join('')}\n${bindings.length} binding${bindings.length === 1 ? '' : 's'}: ${count('reachable')} reachable, ${count('unreachable')} unreachable, ${count('unknown')} unknown\n`;
}

// ---- offline messages ---------------------------------------------------------------------------

/** The offline queue from the replica file: every recipient's count, or one recipient's messages (never their bodies). */
export async function showOffline(offline: Pick<OfflineMessageStore, 'summary' | 'listOf'>, aor: string | undefined, opts: { json: boolean }, out: Writable): Promise<void> {
  if (aor === undefined) {
    const queues = await offline.summary();
    if (opts.json) { await write(out, `${JSON.stringify(queues.map((q) => ({ aor: q.recipient, messages: q.messages, bytes: q.bytes, oldest_at: new Date(q.oldestAt).toISOString() })), null, 2)}\n`); return; }
    if (queues.length === 0) { await write(out, 'no offline messages\n'); return; }
    const rows = queues.map((q) => [q.recipient, String(q.messages), String(q.bytes), new Date(q.oldestAt).toISOString()]);
    const header = ['AOR', 'MESSAGES', 'BYTES', 'OLDEST'];
    const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
    await write(out, [header, ...rows].map((r) => `${r.map((c, i) => c.padEnd(widths[i] ?? 0)).join('  ').trimEnd()}\n`).join(''));
    return;
  }
  const key = aorLookupKey(aor);
  const messages = (await offline.listOf(key)).map((m) => ({
    id: m.id, from: m.sender, content_type: m.contentType, bytes: Buffer.byteLength(m.body, 'utf8'), date: m.date,
    received_at: new Date(m.receivedAt).toISOString(), expires_at: new Date(m.expiresAt).toISOString(), attempts: m.attempts,
  }));
  if (opts.json) { await write(out, `${JSON.stringify(messages, null, 2)}\n`); return; }
  if (messages.length === 0) { await write(out, `no offline messages for ${key}\n`); return; }
  await write(out, messages.map((m) => `${m.id}  from ${m.from}  ${m.bytes} bytes  received ${m.received_at}  expires ${m.expires_at}  attempts ${m.attempts}\n`).join(''));
}

/** Purging is the service's to do (it keeps the queue's totals): ask its admin API. */
async function purgeOffline(baseUrl: string, token: string | undefined, aor: string): Promise<number> {
  let res: Response;
  try {
    res = await fetch(`${baseUrl.replace(/\/$/, '')}/offline/${encodeURIComponent(aorLookupKey(aor))}`, {
      method: 'DELETE', headers: token ? { Authorization: `Bearer ${token}` } : {}, signal: AbortSignal.timeout(10_000),
    });
  } catch (err) {
    throw new CliError(`cannot reach the admin API at ${baseUrl}: ${err instanceof Error ? err.message : String(err)}`);
  }
  const body = await res.json().catch(() => undefined) as { purged?: unknown; error?: unknown } | undefined;
  if (res.status !== 200 || typeof body?.purged !== 'number') throw new CliError(`the admin API at ${baseUrl} answered ${res.status}${typeof body?.error === 'string' ? `: ${body.error}` : ''}`);
  return body.purged;
}

// ---- export -----------------------------------------------------------------------------------

/** Progress on stderr: rewritten in place on a terminal, one line per update otherwise. */
function progressReporter(err: Writable & { isTTY?: boolean }, total: number): { update(done: number, final?: boolean): void } {
  let lastShown = Number.NEGATIVE_INFINITY;
  return {
    update(done, final = false) {
      const nowMs = performance.now();
      if (!final && nowMs - lastShown < 200) return;
      lastShown = nowMs;
      // Bindings registered during the export can push the count past the first total.
      const line = `exported ${done}/${Math.max(total, done)}`;
      err.write(err.isTTY ? `\r${line}${final ? '\n' : ''}` : `${line}\n`);
    },
  };
}

export async function exportBindings(store: Pick<BindingStore, 'listLiveAfter' | 'counts'>, out: Writable, opts: { batch: number; progress?: Writable & { isTTY?: boolean } }, now: number): Promise<number> {
  const progress = opts.progress ? progressReporter(opts.progress, (await store.counts(now)).bindings) : undefined;
  let done = 0;
  for await (const page of liveBindingPages(store, now, { batch: opts.batch })) {
    await write(out, page.map((b) => `${JSON.stringify(bindingView(b, now))}\n`).join(''));
    done += page.length;
    progress?.update(done);
  }
  progress?.update(done, true);
  return done;
}

// ---- commander wiring -------------------------------------------------------------------------

function positiveInt(max: number) {
  return (value: string): number => {
    if (!/^\d+$/.test(value) || Number(value) < 1 || Number(value) > max) throw new InvalidArgumentError(`must be an integer from 1 to ${max}`);
    return Number(value);
  };
}

function version(): string {
  try {
    const pkg: unknown = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8'));
    return typeof pkg === 'object' && pkg !== null && 'version' in pkg && typeof pkg.version === 'string' ? pkg.version : 'unknown';
  } catch {
    return 'unknown';
  }
}

/** The `midreg` command definition (commander); parsing and running are main()'s. */
export function program(env: NodeJS.ProcessEnv): Command {
  const dbDefault = env['MIDREG_DB'] || DEFAULT_DB;
  const storeDefault = env['MIDREG_STORE'] || undefined;
  const cli = new Command('midreg')
    .description('Inspect a midreg mid-registrar: its replica of the registrar\'s location table and its counters.')
    .version(version());

  cli.command('registrations')
    .description('list live bindings (all, or of one AoR) from the SQLite replica, read-only')
    .argument('[aor]', 'one address-of-record, e.g. sip:alice@example.com')
    .option('--db <file>', 'SQLite replica (env MIDREG_DB)', dbDefault)
    .option('--store <url>', 'read this store instead of --db: redis://…, redis+cluster://…, redis+sentinel://… (env MIDREG_STORE)', storeDefault)
    .option('--json', 'print a JSON array of bindings (the admin API\'s binding fields)', false)
    .action(async (aor: string | undefined, opts: { db: string; store?: string; json: boolean }) => {
      await withReplica(opts, (store) => showRegistrations(store.bindings, aor, { json: opts.json }, process.stdout, Date.now()));
    });

  cli.command('stats')
    .description('counters of the running service (its admin API), or binding counts from the replica with --db')
    .option('--url <url>', 'admin API base URL (env MIDREG_ADMIN_URL, else http://MIDREG_ADMIN_HOST:MIDREG_ADMIN_PORT)')
    .option('--token <token>', 'admin API token (env MIDREG_ADMIN_TOKEN; the variable keeps it out of `ps`)')
    .option('--db <file>', 'offline: only the live binding and AoR counts, read from this SQLite replica')
    .option('--store <url>', 'like --db, from this store: redis://…, redis+cluster://…, redis+sentinel://…')
    .option('--json', 'print JSON', false)
    .action(async (opts: { url?: string; token?: string; db?: string; store?: string; json: boolean }) => {
      if (opts.db !== undefined || opts.store !== undefined) {
        if (opts.url !== undefined) throw new CliError('give either --url (ask the service) or --db/--store (read the replica), not both');
        const db = opts.store === undefined ? opts.db ?? dbDefault : opts.store.replace(/\/\/[^@/]*@/, '//');
        await withReplica({ db: opts.db ?? dbDefault, store: opts.store }, async (store) => {
          const counts = await store.bindings.counts(Date.now());
          await write(process.stdout, opts.json
            ? `${JSON.stringify({ database: db, bindings: counts.bindings, aors: counts.aors }, null, 2)}\n`
            : `database  ${db}\nbindings  ${counts.bindings} live, ${counts.aors} AoR${counts.aors === 1 ? '' : 's'}\n`);
        });
        return;
      }
      const url = opts.url ?? defaultAdminUrl(env);
      if (url === undefined) {
        throw new CliError('no admin API to ask: give --url http://127.0.0.1:PORT (or set MIDREG_ADMIN_PORT), or --db FILE for the binding counts alone');
      }
      const stats = await fetchStats(url, opts.token ?? (env['MIDREG_ADMIN_TOKEN'] || undefined));
      await write(process.stdout, opts.json ? `${JSON.stringify(stats, null, 2)}\n` : formatStats(stats, url));
    });

  cli.command('reachability')
    .description('what qualify knows of each live binding (reachable with round trip, unreachable since when, unknown), from the running service\'s admin API')
    .argument('[aor]', 'one address-of-record, e.g. sip:alice@example.com')
    .option('--url <url>', 'admin API base URL (env MIDREG_ADMIN_URL, else http://MIDREG_ADMIN_HOST:MIDREG_ADMIN_PORT)')
    .option('--token <token>', 'admin API token (env MIDREG_ADMIN_TOKEN)')
    .option('--json', 'print JSON', false)
    .action(async (aor: string | undefined, opts: { url?: string; token?: string; json: boolean }) => {
      const url = opts.url ?? defaultAdminUrl(env);
      // The SQLite file holds registrations only: reachability is the service's memory.
      if (url === undefined) throw new CliError('no admin API to ask: give --url http://127.0.0.1:PORT (or set MIDREG_ADMIN_PORT); reachability is known only to the running service');
      const bindings = await fetchReachability(url, opts.token ?? (env['MIDREG_ADMIN_TOKEN'] || undefined), aor);
      await write(process.stdout, opts.json ? `${JSON.stringify(bindings, null, 2)}\n` : formatReachability(bindings));
    });

  cli.command('offline')
    .description('offline messages waiting (all recipients, or one AoR\'s) from the SQLite replica, read-only; --purge drops one AoR\'s through the running service')
    .argument('[aor]', 'one address-of-record, e.g. sip:bob@example.com')
    .option('--db <file>', 'SQLite replica (env MIDREG_DB)', dbDefault)
    .option('--store <url>', 'read this store instead of --db: redis://…, redis+cluster://…, redis+sentinel://… (env MIDREG_STORE)', storeDefault)
    .option('--json', 'print JSON', false)
    .option('--purge', 'drop every message waiting for <aor> (asks the admin API)', false)
    .option('--url <url>', 'with --purge: admin API base URL (env MIDREG_ADMIN_URL, else http://MIDREG_ADMIN_HOST:MIDREG_ADMIN_PORT)')
    .option('--token <token>', 'with --purge: admin API token (env MIDREG_ADMIN_TOKEN)')
    .action(async (aor: string | undefined, opts: { db: string; store?: string; json: boolean; purge: boolean; url?: string; token?: string }) => {
      if (opts.purge) {
        if (aor === undefined) throw new CliError('--purge needs the AoR whose messages to drop');
        const url = opts.url ?? defaultAdminUrl(env);
        if (url === undefined) throw new CliError('no admin API to ask: give --url http://127.0.0.1:PORT (or set MIDREG_ADMIN_PORT)');
        const purged = await purgeOffline(url, opts.token ?? (env['MIDREG_ADMIN_TOKEN'] || undefined), aor);
        await write(process.stdout, opts.json ? `${JSON.stringify({ aor: aorLookupKey(aor), purged })}\n` : `purged ${purged} message${purged === 1 ? '' : 's'} for ${aorLookupKey(aor)}\n`);
        return;
      }
      await withReplica(opts, (store) => showOffline(store.offline, aor, { json: opts.json }, process.stdout));
    });

  cli.command('export')
    .description('write every live binding as JSON lines (the admin API\'s binding fields)')
    .option('--db <file>', 'SQLite replica (env MIDREG_DB)', dbDefault)
    .option('--store <url>', 'read this store instead of --db: redis://…, redis+cluster://…, redis+sentinel://… (env MIDREG_STORE)', storeDefault)
    .option('--out <file>', 'write to this file instead of stdout')
    .option('--progress', 'report progress on stderr even when it is not a terminal', false)
    .option('--batch <n>', 'bindings read per query', positiveInt(100_000), READ_BATCH)
    .action(async (opts: { db: string; store?: string; out?: string; progress: boolean; batch: number }) => {
      await withReplica(opts, async (store) => {
        const file = opts.out !== undefined ? openOutput(opts.out) : undefined;
        const progress = opts.progress || process.stderr.isTTY ? process.stderr : undefined;
        const count = await exportBindings(store.bindings, file?.stream ?? process.stdout, { batch: opts.batch, ...(progress ? { progress } : {}) }, Date.now());
        if (file) {
          await file.finish();
          if (!progress) process.stderr.write(`exported ${count} bindings to ${file.path}\n`);
        }
      });
    });

  return cli;
}

async function main(): Promise<void> {
  // `midreg registrations | head` closes the pipe early: that is not an error.
  process.stdout.on('error', (err: NodeJS.ErrnoException) => {
    if (err.code === 'EPIPE') process.exit(0);
    throw err;
  });
  try {
    await program(process.env).parseAsync(process.argv);
  } catch (err) {
    process.stderr.write(`midreg: ${err instanceof Error ? err.message : String(err)}\n`);
    process.exitCode = 1;
  }
}

// Run only as the program itself (also through npm's bin symlink), so tests can import the commands.
const entry = process.argv[1];
if (entry !== undefined && realpathSync(entry) === fileURLToPath(import.meta.url)) await main();
