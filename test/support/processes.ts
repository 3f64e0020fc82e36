// Child processes for the end-to-end suites: drachtio-server (the real binary named by
// DRACHTIO_BIN, else ../shared/engine/drachtio) and midreg itself (dist/app/main.js), each on 127.0.0.1 and free ports.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { accessSync, constants, existsSync, readFileSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { createSocket } from 'node:dgram';
import { dirname, join } from 'node:path';
import { trackChild } from './children.js';
import { REPO_ROOT } from './sipp.js';

export { REPO_ROOT };

/** drachtio-server built for this machine kind, beside the repository (../shared/engine). */
export const SHARED_ENGINE: string = join(REPO_ROOT, '..', 'shared', 'engine', 'drachtio');

/** The drachtio-server the end-to-end suites run: DRACHTIO_BIN if set, else the shared engine when present. */
export function drachtioBin(): string | undefined {
  const fromEnv = process.env['DRACHTIO_BIN'];
  if (fromEnv) return fromEnv;
  return existsSync(SHARED_ENGINE) ? SHARED_ENGINE : undefined;
}

let skipReason: { reason: string | undefined } | undefined;

/**
 * Why the end-to-end suites cannot run here, or undefined when they can: a drachtio-server that
 * starts (its Debian runtime libraries installed), Kamailio, kamcmd and sipp. With
 * MIDREG_E2E=required (what .ci/run sets) a reason is an error, so a skipped suite fails the run.
 */
export function e2eSkipReason(): string | undefined {
  skipReason ??= { reason: findSkipReason() };
  const { reason } = skipReason;
  if (reason !== undefined && process.env['MIDREG_E2E'] === 'required') {
    throw new Error(`MIDREG_E2E=required but the end-to-end suites cannot run: ${reason}`);
  }
  return reason;
}

function findSkipReason(): string | undefined {
  const bin = drachtioBin();
  if (!bin) return `no drachtio-server: DRACHTIO_BIN is not set and ${SHARED_ENGINE} does not exist (see README "Tests")`;
  try { accessSync(bin, constants.X_OK); } catch { return `${bin} is not an executable file`; }
  const version = spawnSync(bin, ['--version'], { encoding: 'utf8', timeout: 10_000 });
  if (version.status !== 0) {
    const why = (version.stderr || version.error?.message || `exit ${version.status}`).trim().split('\n')[0];
    return `${bin} does not start (${why}); its runtime packages are listed in ${join(dirname(bin), 'README.md')}`;
  }
  for (const tool of ['kamailio', 'kamcmd', 'sipp']) {
    if (spawnSync('sh', ['-c', `command -v ${tool}`]).status !== 0) return `${tool} is not installed (Debian packages kamailio and sip-tester)`;
  }
  return undefined;
}

/** A port free for both TCP and UDP on 127.0.0.1. */
export async function freePort(): Promise<number> {
  for (;;) {
    const port = await new Promise<number>((resolve, reject) => {
      const srv = createServer();
      srv.once('error', reject);
      srv.listen(0, '127.0.0.1', () => {
        const address = srv.address();
        srv.close(() => resolve(typeof address === 'object' && address ? address.port : 0));
      });
    });
    const udpFree = await new Promise<boolean>((resolve) => {
      const sock = createSocket('udp4');
      sock.once('error', () => resolve(false));
      sock.bind(port, '127.0.0.1', () => sock.close(() => resolve(true)));
    });
    if (udpFree) return port;
  }
}

export interface Proc {
  readonly child: ChildProcess;
  output(): string;
  waitFor(pattern: RegExp, timeoutMs?: number): Promise<string>;
  exited(): Promise<number | null>;
  stop(signal?: NodeJS.Signals, timeoutMs?: number): Promise<number | null>;
}

export function spawnProc(cmd: string, args: string[], opts: { env?: NodeJS.ProcessEnv; cwd?: string; name: string }): Proc {
  const child = spawn(cmd, args, { env: opts.env ?? process.env, cwd: opts.cwd ?? REPO_ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
  trackChild(child);
  let out = '';
  const waiters = new Set<() => void>();
  const onData = (chunk: Buffer): void => {
    out += chunk.toString('utf8');
    for (const w of waiters) w();
  };
  child.stdout?.on('data', onData);
  child.stderr?.on('data', onData);
  const exit = new Promise<number | null>((resolve) => child.once('exit', (code, signal) => resolve(code ?? (signal ? -1 : null))));
  let exitedCode: number | null | undefined;
  void exit.then((code) => { exitedCode = code; for (const w of waiters) w(); });
  return {
    child,
    output: () => out,
    waitFor(pattern, timeoutMs = 10_000) {
      return new Promise((resolve, reject) => {
        const check = (): void => {
          const match = pattern.exec(out);
          if (match) { cleanup(); resolve(match[0]); return; }
          if (exitedCode !== undefined) { cleanup(); reject(new Error(`${opts.name} exited (${exitedCode}) before ${pattern}; output:\n${out.slice(-3000)}`)); }
        };
        const timer = setTimeout(() => { cleanup(); reject(new Error(`${opts.name}: no ${pattern} within ${timeoutMs} ms; output:\n${out.slice(-3000)}`)); }, timeoutMs);
        const cleanup = (): void => { clearTimeout(timer); waiters.delete(check); };
        waiters.add(check);
        check();
      });
    },
    exited: () => exit,
    async stop(signal = 'SIGTERM', timeoutMs = 5000) {
      if (exitedCode !== undefined) return exitedCode;
      child.kill(signal);
      const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
      const code = await exit;
      clearTimeout(timer);
      return code;
    },
  };
}

/** Listeners beyond UDP/TCP (drachtio.conf.xml has them; a stack opens only those asked for). */
export interface ExtraListeners { tls?: boolean; ws?: boolean; wss?: boolean }

export interface Drachtio extends Proc {
  sipPort: number;
  adminPort: number;
  secret: string;
  /** Ports of the TLS / WS / WSS listeners when asked for. */
  tlsPort?: number;
  wsPort?: number;
  wssPort?: number;
  /** The self-signed certificate (PEM) TLS and WSS listeners present, when any. */
  certPem?: string;
}

/**
 * A self-signed certificate for 127.0.0.1 made with openssl, written to `dir` as key.pem,
 * cert.pem and chain.pem (this sofia-sip build needs a chain file; see drachtio.conf.xml).
 */
export function selfSignedCertificate(dir: string): { keyFile: string; certFile: string; chainFile: string; certPem: string } {
  const keyFile = join(dir, 'key.pem');
  const certFile = join(dir, 'cert.pem');
  const chainFile = join(dir, 'chain.pem');
  const made = spawnSync('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', keyFile, '-out', certFile, '-days', '2',
    '-subj', '/CN=127.0.0.1', '-addext', 'subjectAltName=IP:127.0.0.1'], { encoding: 'utf8', timeout: 30_000 });
  if (made.status !== 0) throw new Error(`openssl could not make a certificate: ${made.stderr || made.error?.message}`);
  const certPem = readFileSync(certFile, 'utf8');
  writeFileSync(chainFile, certPem);
  return { keyFile, certFile, chainFile, certPem };
}

/** drachtio-server configured like drachtio.conf.xml, on loopback and free ports. */
export async function startDrachtio(workDir: string, ports?: { sipPort: number; adminPort: number }, listeners: ExtraListeners = {}): Promise<Drachtio> {
  // A port found free can be taken by another process before drachtio-server binds it (it then
  // logs "Address already in use" and keeps running without SIP); with ports of our own
  // choosing, try fresh ones.
  for (let attempt = 1; ; attempt++) {
    try {
      return await startDrachtioOnce(workDir, ports ?? { sipPort: await freePort(), adminPort: await freePort() }, listeners);
    } catch (err) {
      if (ports || attempt >= 3 || !(err instanceof PortTakenError)) throw err;
    }
  }
}

class PortTakenError extends Error {}

const LISTENER_LINES = {
  tls: /<contact>sips:\*:5061;transport=tls<\/contact>/,
  ws: /<contact>sip:\*:8088;transport=ws<\/contact>/,
  wss: /<contact>sips:\*:8089;transport=wss<\/contact>/,
} as const;
const TLS_BLOCK = /<tls>[\s\S]*?<\/tls>/;
/** What an operator deletes in drachtio.conf.xml to switch TLS and WSS on. */
const ENABLE_TLS = /<!-- enable-tls:\n([\s\S]*?)\n\s*:enable-tls -->/g;

async function startDrachtioOnce(workDir: string, ports: { sipPort: number; adminPort: number }, listeners: ExtraListeners): Promise<Drachtio> {
  const bin = drachtioBin();
  if (!bin) throw new Error('no drachtio-server binary (DRACHTIO_BIN)');
  const { sipPort, adminPort } = ports;
  const secret = 'e2e-secret';
  const conf = join(workDir, `drachtio-${adminPort}.conf.xml`);
  // The repo's own drachtio.conf.xml, on loopback and this test's ports.
  const template = readFileSync(join(REPO_ROOT, 'drachtio.conf.xml'), 'utf8');
  let xml = template
    .replace(/<admin port="\d+" secret="[^"]*">[^<]*<\/admin>/, `<admin port="${adminPort}" secret="${secret}">127.0.0.1</admin>`)
    .replace(/<contact>sip:\*:5060;transport=udp,tcp<\/contact>/, `<contact>sip:127.0.0.1:${sipPort};transport=udp,tcp</contact>`)
    // Tests read drachtio-server's own log (start-up, what it sent where): keep it verbose.
    .replace(/<sofia-loglevel>\d+<\/sofia-loglevel>/, '<sofia-loglevel>3</sofia-loglevel>')
    .replace(/<loglevel>\w+<\/loglevel>/, '<loglevel>info</loglevel>');
  if (xml === template) throw new Error('drachtio.conf.xml no longer has the admin/contact lines the tests rewrite');
  // The TLS/WS/WSS listeners of drachtio.conf.xml, on free ports when asked for, else left out
  // (so suites that do not use them need no certificate). TLS and WSS ship switched off (wrapped
  // in "enable-tls" comments, since drachtio-server exits without a certificate): unwrap them as
  // an operator would.
  xml = xml.replace(ENABLE_TLS, '$1');
  const extra: { tlsPort?: number; wsPort?: number; wssPort?: number; certPem?: string } = {};
  for (const kind of ['tls', 'ws', 'wss'] as const) {
    const line = LISTENER_LINES[kind];
    if (!line.test(xml)) throw new Error(`drachtio.conf.xml no longer has the ${kind} contact the tests rewrite`);
    if (!listeners[kind]) { xml = xml.replace(line, ''); continue; }
    const port = await freePort();
    extra[`${kind}Port`] = port;
    xml = xml.replace(line, `<contact>${kind === 'ws' ? 'sip' : 'sips'}:127.0.0.1:${port};transport=${kind}</contact>`);
  }
  if (!TLS_BLOCK.test(xml)) throw new Error('drachtio.conf.xml no longer has the <tls> block the tests rewrite');
  if (listeners.tls || listeners.wss) {
    const cert = selfSignedCertificate(workDir);
    extra.certPem = cert.certPem;
    xml = xml.replace(TLS_BLOCK, `<tls><key-file>${cert.keyFile}</key-file><cert-file>${cert.certFile}</cert-file><chain-file>${cert.chainFile}</chain-file></tls>`);
  } else {
    xml = xml.replace(TLS_BLOCK, '');
  }
  writeFileSync(conf, xml);
  const proc = spawnProc(bin, ['-f', conf], { name: 'drachtio-server' });
  try {
    await waitForTcp(adminPort, 10_000, proc);
    await proc.waitFor(/starting sip stack/, 5000);
    await new Promise((r) => setTimeout(r, 50));
    if (/Address already in use/.test(proc.output())) throw new PortTakenError(`port taken: ${sipPort}/${adminPort}`);
  } catch (err) {
    await proc.stop('SIGKILL');
    if (/Address already in use/.test(proc.output())) throw new PortTakenError(`port taken: ${sipPort}/${adminPort}`);
    throw err;
  }
  if (/Error adding additional transport/.test(proc.output())) {
    await proc.stop('SIGKILL');
    throw new Error(`drachtio-server could not open a TLS/WS listener:\n${proc.output().slice(-3000)}`);
  }
  return Object.assign(proc, { sipPort, adminPort, secret }, extra);
}

async function waitForTcp(port: number, timeoutMs: number, proc: Proc): Promise<void> {
  const { connect } = await import('node:net');
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const ok = await new Promise<boolean>((resolve) => {
      const sock = connect(port, '127.0.0.1');
      sock.once('connect', () => { sock.destroy(); resolve(true); });
      sock.once('error', () => resolve(false));
    });
    if (ok) return;
    if (Date.now() > deadline) throw new Error(`nothing listening on ${port} after ${timeoutMs} ms:\n${proc.output().slice(-2000)}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

export interface MidregProc extends Proc { dbFile: string }

/** midreg as operators run it: `node dist/app/main.js` with environment variables only. */
export function startMidregProcess(env: Record<string, string>): MidregProc {
  const dbFile = env['MIDREG_DB'] ?? '';
  const proc = spawnProc(process.execPath, [join(REPO_ROOT, 'dist', 'app', 'main.js')], {
    name: 'midreg',
    env: { PATH: process.env['PATH'] ?? '', MIDREG_LOG_FORMAT: 'json', MIDREG_LOG_LEVEL: 'debug', ...env },
  });
  return Object.assign(proc, { dbFile });
}

/** midreg's JSON log lines whose fields match `fields`. */
export function logLines(proc: Proc, fields: Record<string, unknown>): Array<Record<string, unknown>> {
  return proc.output().split('\n').flatMap((line) => {
    if (!line.startsWith('{')) return [];
    try {
      const entry = JSON.parse(line) as Record<string, unknown>;
      return Object.entries(fields).every(([k, v]) => entry[k] === v) ? [entry] : [];
    } catch { return []; }
  });
}
