// The whole system for end-to-end suites and for recording wire exchanges: real Kamailio as the
// main registrar, real drachtio-server, and midreg, all on 127.0.0.1 and free ports.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { sipMessage } from '../hostile/corpus.js';
import { startKamailio, type Kamailio } from './kamailio.js';
import { exchange, headerOf } from './raw-sip.js';
import { freePort, startDrachtio, startMidregProcess, type Drachtio, type ExtraListeners, type MidregProc } from './processes.js';
import { startRedis, type RedisServer } from './redis.js';

/**
 * MIDREG_TEST_STORE=redis runs every stack against its own redis-server (Debian's, on a free port)
 * instead of the SQLite file: the single-node suites then prove the Redis store too.
 */
export const TEST_STORE: 'sqlite' | 'redis' = process.env['MIDREG_TEST_STORE'] === 'redis' ? 'redis' : 'sqlite';

/**
 * How the phones in a test are provisioned: with a domain name (`example.test`), or with midreg's
 * own IP address as their "SIP server" and domain (what most desk phones are given), so they
 * send `REGISTER sip:127.0.0.1:<port>` and `MESSAGE sip:bob@127.0.0.1:<port>`.
 */
export type DomainMode = 'name' | 'ip';
/** Every end-to-end suite runs once per mode. */
export const DOMAIN_MODES: readonly DomainMode[] = ['name', 'ip'];

export interface SipDomain {
  mode: DomainMode;
  /** The AoR host: what MIDREG_DOMAINS lists and what the replica and the registrar key by. */
  host: string;
  /** What a UA writes after the '@' and in the REGISTER Request-URI: the name, or midreg's IP and SIP port. */
  uriHost: string;
  /** `sip:user@host`, the replica's canonical AoR. */
  aor(user: string): string;
}

export function sipDomain(mode: DomainMode, sipPort: number): SipDomain {
  const host = mode === 'name' ? 'example.test' : '127.0.0.1';
  return { mode, host, uriHost: mode === 'name' ? host : `${host}:${sipPort}`, aor: (user) => `sip:${user}@${host}` };
}

export interface Stack {
  workDir: string;
  domain: SipDomain;
  kamailio: Kamailio | undefined;
  drachtio: Drachtio;
  midreg: MidregProc;
  /** host:port where UAs send SIP (drachtio-server). */
  sipTarget: string;
  dbFile: string;
  /** The stack's own redis-server when MIDREG_TEST_STORE=redis. */
  redis: RedisServer | undefined;
  midregEnv: Record<string, string>;
  restartMidreg(extraEnv?: Record<string, string>): Promise<MidregProc>;
  stop(): Promise<void>;
}

export interface StackOptions {
  /** How UAs address midreg (default 'name'); MIDREG_DOMAINS follows it unless env overrides it. */
  domain?: DomainMode;
  /** Start Kamailio as the upstream (default), or point midreg at this URI instead. */
  upstream?: 'kamailio' | string;
  kamailioDefines?: string[];
  env?: Record<string, string>;
  /** TLS / WebSocket / secure WebSocket listeners of drachtio.conf.xml to open (none by default). */
  listeners?: ExtraListeners;
  /** Admin port midreg connects to, when something (a wire recorder) sits in between. */
  drachtioAdminPortForMidreg?: (drachtio: Drachtio) => Promise<number>;
}

/**
 * drachtio-srf reports the connection before drachtio-server has processed the app's routes, so a
 * request in that window is answered 503 by drachtio-server itself ("no app"). The stack is ready
 * when midreg answers an OPTIONS to its own address (its reply carries `Accept: …text/plain`);
 * the routes are registered in order, so REGISTER and MESSAGE are routed by then too.
 */
export async function untilServing(sipPort: number): Promise<void> {
  const deadline = Date.now() + 10_000;
  for (let attempt = 0; ; attempt++) {
    const ex = await exchange(sipPort, (via) => sipMessage(`OPTIONS sip:127.0.0.1:${sipPort} SIP/2.0`, [
      `Via: SIP/2.0/UDP 127.0.0.1:${via};branch=z9hG4bK-ready-${process.pid}-${attempt}`, 'Max-Forwards: 70',
      `From: <sip:ready@127.0.0.1>;tag=r${attempt}`, `To: <sip:127.0.0.1:${sipPort}>`, `Call-ID: ready-${process.pid}-${Date.now()}-${attempt}`, 'CSeq: 1 OPTIONS',
    ]), { transport: 'udp', waitMs: 500, graceMs: 0 });
    if (ex.received.some((m) => (m.status ?? 0) === 200 && /text\/plain/.test(headerOf(m, 'Accept') ?? ''))) return;
    if (Date.now() > deadline) throw new Error(`midreg did not answer SIP on port ${sipPort} within 10 s (got ${ex.statuses.join(',') || 'nothing'})`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

export async function startStack(opts: StackOptions = {}): Promise<Stack> {
  const workDir = mkdtempSync(join(tmpdir(), 'mr-'));
  let kamailio: Kamailio | undefined;
  let upstream = opts.upstream ?? 'kamailio';
  if (upstream === 'kamailio') {
    const port = await freePort();
    kamailio = await startKamailio({ port, workDir: join(workDir, 'k'), defines: opts.kamailioDefines ?? [] });
    upstream = `sip:127.0.0.1:${port}`;
  }
  const drachtio = await startDrachtio(workDir, undefined, opts.listeners ?? {});
  const adminPort = opts.drachtioAdminPortForMidreg ? await opts.drachtioAdminPortForMidreg(drachtio) : drachtio.adminPort;
  const dbFile = join(workDir, 'midreg.sqlite');
  const redis = TEST_STORE === 'redis' && opts.env?.['MIDREG_STORE'] === undefined ? await startRedis(workDir) : undefined;
  const domain = sipDomain(opts.domain ?? 'name', drachtio.sipPort);
  const midregEnv: Record<string, string> = {
    DRACHTIO_HOST: '127.0.0.1',
    DRACHTIO_PORT: String(adminPort),
    DRACHTIO_SECRET: drachtio.secret,
    MIDREG_UPSTREAM: upstream,
    MIDREG_DOMAINS: domain.host,
    MIDREG_DB: dbFile,
    MIDREG_UPSTREAM_TIMEOUT_MS: '2000',
    // UAs run on 127.0.0.1 too, so the platform is told apart by its port.
    MIDREG_TRUSTED_PEERS: upstream.replace(/^sips?:/, '').replace(/;.*$/, ''),
    ...(redis ? { MIDREG_STORE: redis.url } : {}),
    ...opts.env,
  };
  const launch = async (env: Record<string, string>): Promise<MidregProc> => {
    const proc = startMidregProcess(env);
    await proc.waitFor(/connected to drachtio-server/, 15_000);
    await untilServing(drachtio.sipPort);
    return proc;
  };
  const stack: Stack = {
    workDir,
    domain,
    kamailio,
    drachtio,
    midreg: await launch(midregEnv),
    sipTarget: `127.0.0.1:${drachtio.sipPort}`,
    dbFile,
    redis,
    midregEnv,
    async restartMidreg(extraEnv = {}) {
      await stack.midreg.stop('SIGTERM');
      stack.midreg = await launch({ ...midregEnv, ...extraEnv });
      return stack.midreg;
    },
    async stop() {
      // Tests may have replaced drachtio-server or Kamailio with restarted ones: stop what is current.
      await stack.midreg.stop('SIGTERM');
      await stack.drachtio.stop('SIGTERM');
      await stack.kamailio?.stop();
      await stack.redis?.stop();
      if (!process.env['MIDREG_KEEP_E2E']) rmSync(workDir, { recursive: true, force: true });
    },
  };
  return stack;
}
