// Starts the test main registrar (Kamailio 5.6 with test/kamailio/kamailio.cfg) on 127.0.0.1,
// unprivileged and in the foreground, and talks to it through kamcmd (binrpc over a unix socket
// in workDir). Several instances can run at once on different ports / work dirs.
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { createWriteStream } from 'node:fs';
import { mkdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { REPO_ROOT } from './sipp.js';
import { trackChild } from './children.js';

export const KAMAILIO_CFG: string = join(REPO_ROOT, 'test', 'kamailio', 'kamailio.cfg');
export const KAMAILIO_HOST = '127.0.0.1';

const KAMAILIO_BIN = process.env.KAMAILIO_BIN ?? 'kamailio';
const KAMCMD_BIN = process.env.KAMCMD_BIN ?? 'kamcmd';
/** sun_path is 108 bytes on Linux. */
const MAX_UNIX_PATH = 107;
const MAX_LOG_CHARS = 4_000_000;

export interface KamailioOptions {
  /** SIP port, opened for UDP and TCP on 127.0.0.1. */
  port: number;
  /** Runtime dir: pid file, ctl socket and kamailio.log go here (created if missing). Keep it short (unix socket path limit). */
  workDir: string;
  /**
   * Extra config defines (-A), e.g. ['WITH_423', 'FR_TIMER=2000', 'WITH_DEBUG'].
   * See the header of test/kamailio/kamailio.cfg.
   */
  defines?: string[];
  /** UDP/TCP worker processes (-n); default 2. */
  children?: number;
  /** How long to wait for kamcmd to answer; default 10 s. */
  readyTimeoutMs?: number;
}

/** One binding as reported by `kamcmd ul.lookup`. */
export interface KamailioBinding {
  /** Contact URI as stored (no angle brackets, no header params). */
  contact: string;
  /** Seconds left; 0 for a permanent contact. */
  expires: number;
  /** Stored Path header value(s), e.g. "<sip:127.0.0.1:5080;lr>"; absent when none. */
  path?: string;
  received?: string;
  callId?: string;
  cseq?: number;
  userAgent?: string;
  q?: number;
  socket?: string;
  ruid?: string;
}

export interface Kamailio {
  port: number;
  pid: number;
  workDir: string;
  ctlSocket: string;
  /** The full command line used to start it. */
  command: string;
  /** SIGTERM, then SIGKILL of the whole process group after 5 s. Idempotent. */
  stop(): Promise<void>;
  /** Active bindings of an AoR ("alice@example.test" or "sip:alice@example.test"); [] when none. */
  lookup(aor: string): Promise<KamailioBinding[]>;
  /** Raw `kamcmd ul.dump` output. */
  dump(): Promise<string>;
  /** AoRs currently in the location table (`ul.dump brief`). */
  aors(): Promise<string[]>;
  /** Raw kamcmd call; arguments that look like numbers are sent as ints unless prefixed with "s:". */
  rpc(...args: string[]): Promise<string>;
  /** stdout+stderr of kamailio so far (also written to workDir/kamailio.log). */
  log(): string;
}


function killGroup(child: ChildProcess, signal: NodeJS.Signals): void {
  if (child.pid === undefined) return;
  try {
    process.kill(-child.pid, signal);
  } catch {
    child.kill(signal);
  }
}

function unrefStream(stream: unknown): void {
  if (typeof stream === 'object' && stream !== null && 'unref' in stream && typeof stream.unref === 'function') {
    stream.unref();
  }
}

/** Runs kamcmd against a ctl socket; resolves with stdout, rejects on transport errors and RPC faults. */
export function kamcmd(ctlSocket: string, args: string[], timeoutMs = 5000): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(KAMCMD_BIN, ['-s', ctlSocket, ...args], { timeout: timeoutMs, encoding: 'utf8' }, (err, stdout, stderr) => {
      if (err) {
        reject(new Error(`kamcmd ${args.join(' ')} failed: ${err.message} ${stderr}`.trim()));
        return;
      }
      // kamcmd exits 0 on RPC faults and prints "error: <code> - <reason>"
      const fault = /^error: (\d+) - (.*)$/m.exec(stdout);
      if (fault) {
        reject(new KamcmdFault(Number(fault[1]), (fault[2] ?? '').trim(), args));
        return;
      }
      resolve(stdout);
    });
  });
}

export class KamcmdFault extends Error {
  constructor(
    readonly code: number,
    readonly reason: string,
    readonly args: string[],
  ) {
    super(`kamcmd ${args.join(' ')}: ${code} ${reason}`);
    this.name = 'KamcmdFault';
  }
}

/** Parses `kamcmd ul.lookup location s:<aor>` output. Expired/deleted contacts are skipped. */
export function parseUlLookup(text: string): KamailioBinding[] {
  const out: KamailioBinding[] = [];
  let cur: KamailioBinding | undefined;
  let skip = false;
  const flush = (): void => {
    if (cur && !skip) out.push(cur);
    cur = undefined;
    skip = false;
  };
  for (const raw of text.split('\n')) {
    const m = /^\s*([A-Za-z-]+): (.*)$/.exec(raw);
    if (!m) continue;
    const key = m[1] ?? '';
    const value = (m[2] ?? '').trim();
    if (key === 'Address') {
      flush();
      cur = { contact: value, expires: 0 };
      continue;
    }
    if (!cur) continue;
    const set = value === '[not set]' ? undefined : value;
    switch (key) {
      case 'Expires':
        if (value === 'permanent') cur.expires = 0;
        else if (/^-?\d+$/.test(value)) cur.expires = Number(value);
        else skip = true; // "expired" or "deleted"
        break;
      case 'Path':
        if (set !== undefined) cur.path = set;
        break;
      case 'Received':
        if (set !== undefined) cur.received = set;
        break;
      case 'Call-ID':
        cur.callId = value;
        break;
      case 'CSeq':
        cur.cseq = Number(value);
        break;
      case 'User-Agent':
        if (set !== undefined) cur.userAgent = set;
        break;
      case 'Q':
        cur.q = Number(value);
        break;
      case 'Socket':
        if (set !== undefined) cur.socket = set;
        break;
      case 'Ruid':
        if (set !== undefined) cur.ruid = set;
        break;
      default:
        break;
    }
  }
  flush();
  return out;
}

function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

export async function startKamailio(opts: KamailioOptions): Promise<Kamailio> {
  const { port, workDir } = opts;
  const ctlSocket = join(workDir, 'kamailio_ctl');
  if (Buffer.byteLength(ctlSocket) > MAX_UNIX_PATH) {
    throw new Error(`workDir too long for a unix socket path (${ctlSocket}); use a shorter one, e.g. under os.tmpdir()`);
  }
  await mkdir(workDir, { recursive: true });
  await rm(ctlSocket, { force: true });
  const pidFile = join(workDir, 'kamailio.pid');
  const args = [
    '-f', KAMAILIO_CFG,
    '-DD', '-E',
    '-n', String(opts.children ?? 2),
    '-m', '64', '-M', '8',
    '-l', `udp:${KAMAILIO_HOST}:${port}`,
    '-l', `tcp:${KAMAILIO_HOST}:${port}`,
    '-Y', workDir,
    '-P', pidFile,
    '-w', workDir,
    '-A', `CTL_SOCK="unix:${ctlSocket}"`,
    ...(opts.defines ?? []).flatMap((d) => ['-A', d]),
  ];
  const command = [KAMAILIO_BIN, ...args].map((a) => (/^[\w@%+=:,./-]+$/.test(a) ? a : `'${a}'`)).join(' ');

  const child = spawn(KAMAILIO_BIN, args, { cwd: workDir, stdio: ['ignore', 'pipe', 'pipe'], detached: true });
  trackChild(child, (c) => killGroup(c, 'SIGKILL'));
  // a forgotten stop() must not keep the test process alive; the exit hook still kills it
  child.unref();
  const logFile = createWriteStream(join(workDir, 'kamailio.log'), { flags: 'a' });
  let log = '';
  const onData = (d: string): void => {
    if (log.length < MAX_LOG_CHARS) log += d;
    logFile.write(d);
  };
  child.stdout?.setEncoding('utf8').on('data', onData);
  child.stderr?.setEncoding('utf8').on('data', onData);
  unrefStream(child.stdout);
  unrefStream(child.stderr);

  let exited = false;
  let spawnError: Error | undefined;
  // 'exit': the main process is gone; 'close': so are all workers (they share its stdio pipes)
  const exitedP = new Promise<void>((resolve) => {
    child.once('error', (err) => {
      spawnError = err;
      exited = true;
      resolve();
    });
    child.once('exit', () => {
      exited = true;
      resolve();
    });
  });
  const closedP = new Promise<void>((resolve) => {
    child.once('close', () => resolve());
    child.once('error', () => resolve());
  });
  void closedP.then(() => logFile.end());

  const rpc = (...a: string[]): Promise<string> => kamcmd(ctlSocket, a);

  let stopping: Promise<void> | undefined;
  const stop = (): Promise<void> => {
    stopping ??= (async () => {
      if (!exited) {
        child.kill('SIGTERM');
        const t = setTimeout(() => killGroup(child, 'SIGKILL'), 5000);
        await exitedP;
        clearTimeout(t);
      }
      // reap workers that could outlive the main process, and wait until they are gone so the
      // SIP port can be bound again right away
      killGroup(child, 'SIGKILL');
      await Promise.race([closedP, delay(2000)]);
    })();
    return stopping;
  };

  // wait until the binrpc socket answers (SIP sockets are bound before the workers fork)
  const deadline = Date.now() + (opts.readyTimeoutMs ?? 10_000);
  for (;;) {
    if (exited) {
      throw new Error(`kamailio exited during startup${spawnError ? ` (${spawnError.message})` : ''}:\n${command}\n${log.slice(-4000)}`);
    }
    const ok = await rpc('core.version').then(
      (v) => v.includes('kamailio'),
      () => false,
    );
    if (ok) break;
    if (Date.now() > deadline) {
      await stop();
      throw new Error(`kamailio did not become ready on ${ctlSocket}:\n${command}\n${log.slice(-4000)}`);
    }
    await delay(100);
  }

  return {
    port,
    pid: child.pid ?? -1,
    workDir,
    ctlSocket,
    command,
    stop,
    rpc,
    log: () => log,
    dump: () => rpc('ul.dump'),
    async aors() {
      const text = await rpc('ul.dump', 'brief');
      return [...text.matchAll(/^\s*AoR: (.+)$/gm)].map((m) => (m[1] ?? '').trim());
    },
    async lookup(aor: string) {
      const key = aor.replace(/^sips?:/i, '');
      try {
        return parseUlLookup(await rpc('ul.lookup', 'location', `s:${key}`));
      } catch (err) {
        if (err instanceof KamcmdFault && /not found|no contacts/i.test(err.reason)) return [];
        throw err;
      }
    },
  };
}
