// Configuration: environment variables, optionally over a JSON file (MIDREG_CONFIG), validated
// once at start. A bad value stops start-up with one line per problem naming the setting.
import { readFileSync } from 'node:fs';
import { z } from 'zod';
import { isIP } from 'node:net';
import { isLoopback } from '../lib/ops/admin.js';
import { isIpLiteral } from '../lib/sip/own-address.js';
import { parseStoreUrl, StoreUrlError, type StoreTarget } from '../lib/store/store-url.js';

export interface Config {
  drachtio: { host: string; port: number; secret: string };
  /** The main registrar / platform, as a SIP URI; a DNS name is resolved by drachtio-server (RFC 3263). */
  upstream: string;
  /** SIP domains midreg serves (REGISTER for anything else is refused with 403). */
  domains: string[];
  dbFile: string;
  /** Where bindings, the CSeq guard and offline messages live: the SQLite file (default) or Redis (MIDREG_STORE). */
  store: StoreTarget;
  /** Several nodes on one Redis store: this node's SIP URI as the others reach it; default derived from drachtio-server's address. */
  nodeUri: string | undefined;
  logLevel: 'error' | 'warn' | 'info' | 'debug';
  logFormat: 'json' | 'pretty';
  upstreamTimeoutMs: number;
  /** How midreg puts itself on the way back from the registrar: a Path header, or rewritten Contacts. */
  insertion: 'path' | 'contact';
  addPath: boolean;
  /** midreg's SIP URI as the registrar reaches it (Path entry, host of rewritten Contacts); by default derived from drachtio-server's first SIP address. */
  pathUri: string | undefined;
  purgeIntervalSec: number;
  /**
   * mirror: every REGISTER relayed; contact: refreshes of accepted bindings answered by midreg
   * (throttling); aor: likewise, and the registrar holds one Contact per AoR, midreg's own.
   */
  mode: 'mirror' | 'contact' | 'aor';
  /** Contact and AoR modes: the expiry asked of the registrar for each relayed Contact, seconds. */
  outgoingExpiresSec: number;
  /** Contact mode: a refresh is relayed once the upstream registration has less than (phone's expiry + this) left. */
  refreshMarginSec: number;
  /** Addresses (`ip` or `ip:port`) of the platform: may send MESSAGE, and their requests go to users. */
  trustedPeers: string[];
  noBindingStatus: 404 | 480;
  maxMessageBytes: number;
  /** REGISTER+MESSAGE per second per source IP (0 = unlimited), and the burst above it. */
  rateLimitPerSec: number;
  rateLimitBurst: number;
  /** REGISTER+MESSAGE transactions in flight at once before 503 (0 = unlimited). */
  maxInFlight: number;
  /** Shed load while even the fastest REGISTER/MESSAGE of each 100 ms took this much longer than the fastest of the last 10 s (0 = off). */
  overloadQueueMs: number;
  maxBindingsPerAor: number;
  maxAors: number;
  /** How long SIGTERM waits for transactions in flight. */
  stopTimeoutMs: number;
  /** OPTIONS pings per live binding, once per interval (0 = off), and how long one waits for an answer. */
  qualify: { intervalSec: number; timeoutMs: number };
  /** RFC 5626 Flow-Timer (seconds) for registrations that use outbound (0 = never added). */
  flowTimerSec: number;
  /** How often the connections of TCP/TLS/WebSocket bindings are checked (ms, 0 = off). */
  connectionWatchMs: number;
  /** Offline messages (store and forward); undefined when MIDREG_OFFLINE_MESSAGES is off. */
  offline: { ttlSec: number; maxPerRecipient: number; maxBytesPerRecipient: number; maxTotalBytes: number; senderPerMinute: number; retryIntervalSec: number } | undefined;
  /** Admin HTTP API (health, metrics, registrations); off while port is undefined. */
  admin: { port: number | undefined; host: string; token: string | undefined };
}

/** Each setting: its environment variable, its key in the JSON file, and its rule. */
export const SETTINGS = {
  drachtioHost: { env: 'DRACHTIO_HOST', schema: z.string().min(1).default('127.0.0.1') },
  drachtioPort: { env: 'DRACHTIO_PORT', schema: z.coerce.number().int().min(1).max(65535).default(9022) },
  drachtioSecret: { env: 'DRACHTIO_SECRET', schema: z.string({ error: 'is required' }).min(1, 'is required') },
  upstream: {
    env: 'MIDREG_UPSTREAM',
    schema: z.string({ error: 'is required (the main registrar, e.g. sip:pbx.example.com:5060)' })
      .regex(/^sips?:[^\s@<>]+$/i, 'must be a SIP URI without user part, e.g. sip:10.0.0.5:5060 or sip:pbx.example.com;transport=tcp'),
  },
  domains: {
    env: 'MIDREG_DOMAINS',
    schema: z.union([z.string(), z.array(z.string())], { error: 'is required (comma-separated SIP domains)' })
      .transform((v) => (Array.isArray(v) ? v : v.split(',')).map((d) => servedDomain(d.trim().toLowerCase())).filter((d) => d !== ''))
      .pipe(z.array(z.string().refine((d) => /^[a-z0-9.-]+$/.test(d) || isIpLiteral(d), {
        error: (issue) => (/^[^[\]]*:\d+$|\]:\d+$/.test(String(issue.input))
          ? `"${String(issue.input)}": give the domain without a port (a phone provisioned by IP writes midreg's address as the domain: list that address)`
          : `"${String(issue.input)}" is neither a host name nor an IP address (IPv6 may be written in brackets)`),
      })).min(1, 'must name at least one domain')),
  },
  dbFile: { env: 'MIDREG_DB', schema: z.string().min(1).default('./data/midreg.sqlite') },
  store: {
    env: 'MIDREG_STORE',
    schema: z.string().optional().superRefine((v, ctx) => {
      try { parseStoreUrl(v, 'unused'); } catch (err) { ctx.addIssue({ code: 'custom', message: err instanceof StoreUrlError ? err.message : String(err) }); }
    }),
  },
  nodeUri: { env: 'MIDREG_NODE_URI', schema: z.string().regex(/^sips?:[^\s<>@]+$/i, 'must be a SIP URI without user part, e.g. sip:10.0.0.11:5060').optional() },
  logLevel: { env: 'MIDREG_LOG_LEVEL', schema: z.enum(['error', 'warn', 'info', 'debug']).default('info') },
  logFormat: {
    env: 'MIDREG_LOG_FORMAT',
    schema: z.enum(['json', 'pretty']).default(process.env['NODE_ENV'] === 'production' ? 'json' : 'pretty'),
  },
  upstreamTimeoutMs: { env: 'MIDREG_UPSTREAM_TIMEOUT_MS', schema: z.coerce.number().int().min(200).max(32000).default(8000) },
  insertion: { env: 'MIDREG_INSERTION', schema: z.enum(['path', 'contact']).default('path') },
  // Default: on with Path insertion, off with contact insertion (the Contact already routes back).
  addPath: {
    env: 'MIDREG_ADD_PATH',
    schema: z.union([z.boolean(), z.enum(['true', 'false', '1', '0', 'yes', 'no'])])
      .transform((v) => v === true || v === 'true' || v === '1' || v === 'yes').optional(),
  },
  pathUri: { env: 'MIDREG_PATH_URI', schema: z.string().regex(/^sips?:[^\s<>]+$/i, 'must be a SIP URI').optional() },
  purgeIntervalSec: { env: 'MIDREG_PURGE_INTERVAL_SEC', schema: z.coerce.number().int().min(1).max(3600).default(30) },
  mode: { env: 'MIDREG_MODE', schema: z.enum(['mirror', 'contact', 'aor']).default('mirror') },
  outgoingExpiresSec: { env: 'MIDREG_OUTGOING_EXPIRES', schema: z.coerce.number().int().min(60).max(86_400).default(3600) },
  refreshMarginSec: { env: 'MIDREG_REFRESH_MARGIN_SEC', schema: z.coerce.number().int().min(0).max(3600).default(60) },
  trustedPeers: {
    env: 'MIDREG_TRUSTED_PEERS',
    schema: z.union([z.string(), z.array(z.string())])
      .transform((v) => (Array.isArray(v) ? v : v.split(',')).map((p) => p.trim()).filter((p) => p !== ''))
      .pipe(z.array(z.string().regex(/^(\d{1,3}(\.\d{1,3}){3}|\[[0-9a-fA-F:]+\]|[0-9a-fA-F:]+)(:\d{1,5})?$/, 'must be IP addresses, optionally with :port')))
      .optional(),
  },
  noBindingStatus: { env: 'MIDREG_NO_BINDING_STATUS', schema: z.union([z.literal(404), z.literal(480), z.enum(['404', '480'])]).transform((v) => (Number(v) === 480 ? 480 : 404)).default(404) },
  // drachtio-server cannot take a request over ~12 KB from an app (see MAX_APP_MESSAGE_BYTES in lib/sip/drachtio.ts).
  maxMessageBytes: { env: 'MIDREG_MAX_MESSAGE_BYTES', schema: z.coerce.number().int().min(1).max(10_000, 'must be at most 10000: drachtio-server v0.9.10 drops app messages over 12,228 bytes').default(8192) },
  rateLimitPerSec: { env: 'MIDREG_RATE_LIMIT', schema: z.coerce.number().min(0).max(1_000_000).default(20) },
  rateLimitBurst: { env: 'MIDREG_RATE_BURST', schema: z.coerce.number().int().min(1).max(1_000_000).default(40) },
  maxInFlight: { env: 'MIDREG_MAX_IN_FLIGHT', schema: z.coerce.number().int().min(0).max(1_000_000).default(2000) },
  overloadQueueMs: { env: 'MIDREG_OVERLOAD_QUEUE_MS', schema: z.coerce.number().int().min(0).max(10_000).default(0) },
  maxBindingsPerAor: { env: 'MIDREG_MAX_BINDINGS_PER_AOR', schema: z.coerce.number().int().min(1).max(10_000).default(32) },
  maxAors: { env: 'MIDREG_MAX_AORS', schema: z.coerce.number().int().min(1).max(100_000_000).default(5_000_000) },
  stopTimeoutMs: { env: 'MIDREG_STOP_TIMEOUT_MS', schema: z.coerce.number().int().min(0).max(60_000).default(5000) },
  offlineMessages: { env: 'MIDREG_OFFLINE_MESSAGES', schema: z.enum(['on', 'off']).default('off') },
  offlineTtlSec: { env: 'MIDREG_OFFLINE_TTL_SEC', schema: z.coerce.number().int().min(1).max(90 * 86_400).default(7 * 86_400) },
  offlineMaxPerUser: { env: 'MIDREG_OFFLINE_MAX_PER_USER', schema: z.coerce.number().int().min(1).max(100_000).default(100) },
  offlineMaxBytesPerUser: { env: 'MIDREG_OFFLINE_MAX_BYTES_PER_USER', schema: z.coerce.number().int().min(1).max(1_073_741_824).default(1_048_576) },
  offlineMaxTotalBytes: { env: 'MIDREG_OFFLINE_MAX_TOTAL_BYTES', schema: z.coerce.number().int().min(1).max(1_099_511_627_776).default(268_435_456) },
  offlineSenderRate: { env: 'MIDREG_OFFLINE_SENDER_RATE', schema: z.coerce.number().int().min(1).max(1_000_000).default(60) },
  offlineRetrySec: { env: 'MIDREG_OFFLINE_RETRY_INTERVAL_SEC', schema: z.coerce.number().int().min(1).max(3600).default(10) },
  qualifyIntervalSec: { env: 'MIDREG_QUALIFY_INTERVAL_SEC', schema: z.coerce.number().int().min(0).max(86_400).default(0) },
  qualifyTimeoutMs: { env: 'MIDREG_QUALIFY_TIMEOUT_MS', schema: z.coerce.number().int().min(100).max(32_000).default(3000) },
  flowTimerSec: { env: 'MIDREG_FLOW_TIMER_SEC', schema: z.coerce.number().int().min(0).max(3600).default(0) },
  connectionWatchMs: { env: 'MIDREG_CONNECTION_WATCH_MS', schema: z.coerce.number().int().min(0).max(60_000).default(500) },
  adminPort: { env: 'MIDREG_ADMIN_PORT', schema: z.coerce.number().int().min(1).max(65535).optional() },
  adminHost: { env: 'MIDREG_ADMIN_HOST', schema: z.string().min(1).default('127.0.0.1') },
  adminToken: { env: 'MIDREG_ADMIN_TOKEN', schema: z.string().min(16, 'must be at least 16 characters').optional() },
} as const;

type SettingKey = keyof typeof SETTINGS;

/** The variable naming the optional JSON file the settings are read from (under the environment). */
export const CONFIG_FILE_ENV = 'MIDREG_CONFIG';

export class ConfigError extends Error {
  constructor(readonly problems: string[]) {
    super(`invalid configuration:\n${problems.map((p) => `  - ${p}`).join('\n')}`);
  }
}

/** Build the config from the environment (and MIDREG_CONFIG's JSON file, which env overrides). */
export function loadConfig(env: NodeJS.ProcessEnv = process.env): Config {
  const problems: string[] = [];
  let fileValues: Record<string, unknown> = {};
  const configFile = env[CONFIG_FILE_ENV];
  if (configFile) {
    try {
      const parsed: unknown = JSON.parse(readFileSync(configFile, 'utf8'));
      if (parsed === null || typeof parsed !== 'object' || Array.isArray(parsed)) throw new Error('not a JSON object');
      fileValues = parsed as Record<string, unknown>;
      for (const key of Object.keys(fileValues)) {
        if (!(key in SETTINGS)) problems.push(`MIDREG_CONFIG (${configFile}): unknown setting "${key}"`);
      }
    } catch (err) {
      throw new ConfigError([`MIDREG_CONFIG: cannot read ${configFile}: ${err instanceof Error ? err.message : String(err)}`]);
    }
  }

  const values: Partial<Record<SettingKey, unknown>> = {};
  for (const [key, setting] of Object.entries(SETTINGS) as Array<[SettingKey, (typeof SETTINGS)[SettingKey]]>) {
    const fromEnv = env[setting.env];
    const raw = fromEnv !== undefined && fromEnv !== '' ? fromEnv : fileValues[key];
    const result = setting.schema.safeParse(raw);
    if (result.success) {
      values[key] = result.data;
    } else {
      const where = fromEnv !== undefined && fromEnv !== '' ? setting.env : configFile && key in fileValues ? `${setting.env} ("${key}" in ${configFile})` : setting.env;
      const shown = raw === undefined ? '' : ` (got ${JSON.stringify(key === 'drachtioSecret' || key === 'adminToken' || key === 'store' ? '***' : raw)})`;
      problems.push(`${where}: ${result.error.issues.map((i) => i.message).join('; ')}${shown}`);
    }
  }
  // The registration list holds every user's contact and public address.
  if (values.adminPort !== undefined && values.adminToken === undefined && typeof values.adminHost === 'string' && !isLoopback(values.adminHost)) {
    problems.push(`MIDREG_ADMIN_HOST: ${values.adminHost} is reachable from the network, so MIDREG_ADMIN_TOKEN is required (or listen on 127.0.0.1)`);
  }
  if (problems.length > 0) throw new ConfigError(problems);

  const v = values as { [K in SettingKey]: z.output<(typeof SETTINGS)[K]['schema']> };
  return {
    drachtio: { host: v.drachtioHost, port: v.drachtioPort, secret: v.drachtioSecret },
    upstream: v.upstream,
    domains: v.domains,
    dbFile: v.dbFile,
    store: parseStoreUrl(v.store, v.dbFile),
    nodeUri: v.nodeUri,
    logLevel: v.logLevel,
    logFormat: v.logFormat,
    upstreamTimeoutMs: v.upstreamTimeoutMs,
    insertion: v.insertion,
    // AoR mode: midreg's AoR Contact already routes back to midreg, so no Path unless asked for.
    addPath: v.addPath ?? (v.insertion === 'path' && v.mode !== 'aor'),
    pathUri: v.pathUri,
    purgeIntervalSec: v.purgeIntervalSec,
    mode: v.mode,
    outgoingExpiresSec: v.outgoingExpiresSec,
    refreshMarginSec: v.refreshMarginSec,
    trustedPeers: v.trustedPeers ?? defaultTrustedPeers(v.upstream),
    noBindingStatus: v.noBindingStatus,
    maxMessageBytes: v.maxMessageBytes,
    rateLimitPerSec: v.rateLimitPerSec,
    rateLimitBurst: v.rateLimitBurst,
    maxInFlight: v.maxInFlight,
    overloadQueueMs: v.overloadQueueMs,
    maxBindingsPerAor: v.maxBindingsPerAor,
    maxAors: v.maxAors,
    stopTimeoutMs: v.stopTimeoutMs,
    qualify: { intervalSec: v.qualifyIntervalSec, timeoutMs: v.qualifyTimeoutMs },
    connectionWatchMs: v.connectionWatchMs,
    flowTimerSec: v.flowTimerSec,
    offline: v.offlineMessages === 'on'
      ? {
        ttlSec: v.offlineTtlSec, maxPerRecipient: v.offlineMaxPerUser, maxBytesPerRecipient: v.offlineMaxBytesPerUser,
        maxTotalBytes: v.offlineMaxTotalBytes, senderPerMinute: v.offlineSenderRate, retryIntervalSec: v.offlineRetrySec,
      }
      : undefined,
    admin: { port: v.adminPort, host: v.adminHost, token: v.adminToken },
  };
}

/**
 * A served domain as Request-URIs write it: an IPv6 address in brackets (RFC 3261 §19.1.1,
 * `IPv6reference`), so `2001:db8::5` and `[2001:db8::5]` are the same domain.
 */
function servedDomain(entry: string): string {
  return isIP(entry) === 6 ? `[${entry}]` : entry;
}

/**
 * By default the platform is trusted at the address and port MIDREG_UPSTREAM names, when that is
 * an IP address (a platform sending from other ports, e.g. over TCP, needs MIDREG_TRUSTED_PEERS).
 */
function defaultTrustedPeers(upstream: string): string[] {
  const match = /^sips?:(\d{1,3}(?:\.\d{1,3}){3}|\[[0-9a-fA-F:]+\])(?::(\d+))?/i.exec(upstream);
  if (!match) return [];
  const scheme = upstream.slice(0, 4).toLowerCase() === 'sips' ? 'sips' : 'sip';
  return [`${match[1]}:${match[2] ?? (scheme === 'sips' ? '5061' : '5060')}`];
}
