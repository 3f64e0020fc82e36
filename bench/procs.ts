// The processes the benchmark starts: drachtio-server, Kamailio (registrar or peer), OpenSIPS, midreg and the
// drachtio reference app. Each writes its output to a file in the run's work dir (never into this
// process's memory: at load drachtio-server alone logs megabytes per second), listens on
// 127.0.0.1 only, and is stopped by the bench (process groups are SIGKILLed on exit as a backstop).
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { chmodSync, closeSync, existsSync, mkdirSync, mkdtempSync, openSync, readFileSync, readSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { connect } from 'node:net';
import { cpus, loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { kamcmd, KAMAILIO_CFG } from '../test/support/kamailio.js';
import { freePort, REPO_ROOT, SHARED_ENGINE } from '../test/support/processes.js';

export { freePort, REPO_ROOT, KAMAILIO_CFG };

/** Without DRACHTIO_BIN, the drachtio-server built for this machine kind beside the repository. */
export const DRACHTIO_BIN_DEFAULT = SHARED_ENGINE;
export const BENCH_DIR = join(REPO_ROOT, 'bench');

const live = new Set<ChildProcess>();
let hookInstalled = false;
function track(child: ChildProcess, group: boolean): void {
  live.add(child);
  child.once('exit', () => live.delete(child));
  if (hookInstalled) return;
  hookInstalled = true;
  process.once('exit', () => {
    for (const c of live) {
      if (c.pid === undefined) continue;
      try { process.kill(group ? -c.pid : c.pid, 'SIGKILL'); } catch { c.kill('SIGKILL'); }
    }
  });
}

export const delay = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

export interface Service {
  readonly name: string;
  readonly pid: number;
  /** The process is the leader of its own process group (Kamailio and its workers). */
  readonly group: boolean;
  readonly logFile: string;
  readonly child: ChildProcess;
  exited(): boolean;
  /** The last `bytes` of the log file. */
  tail(bytes?: number): string;
  /** Resolves once the log file matches; rejects on exit or timeout. */
  waitForLog(pattern: RegExp, timeoutMs: number): Promise<void>;
  /** SIGTERM (the group for Kamailio), SIGKILL after `timeoutMs`. Idempotent. */
  stop(timeoutMs?: number): Promise<void>;
}

export function spawnService(name: string, cmd: string, args: string[], opts: { env?: NodeJS.ProcessEnv; cwd?: string; logFile: string; group?: boolean }): Service {
  const fd = openSync(opts.logFile, 'a');
  const group = opts.group === true;
  const child = spawn(cmd, args, { env: opts.env ?? process.env, cwd: opts.cwd ?? REPO_ROOT, stdio: ['ignore', fd, fd], detached: group });
  closeSync(fd);
  track(child, group);
  let exited = false;
  const exit = new Promise<void>((resolve) => {
    child.once('exit', () => { exited = true; resolve(); });
    child.once('error', () => { exited = true; resolve(); });
  });
  const tail = (bytes = 3000): string => {
    if (!existsSync(opts.logFile)) return '';
    const size = statSync(opts.logFile).size;
    const len = Math.min(size, bytes);
    const buf = Buffer.alloc(len);
    const f = openSync(opts.logFile, 'r');
    try { readSync(f, buf, 0, len, size - len); } finally { closeSync(f); }
    return buf.toString('utf8');
  };
  let stopping: Promise<void> | undefined;
  const signal = (sig: NodeJS.Signals): void => {
    if (child.pid === undefined) return;
    try { process.kill(group ? -child.pid : child.pid, sig); } catch { /* gone */ }
  };
  return {
    name,
    pid: child.pid ?? -1,
    group,
    logFile: opts.logFile,
    child,
    exited: () => exited,
    tail,
    async waitForLog(pattern, timeoutMs) {
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        const text = existsSync(opts.logFile) ? readFileSync(opts.logFile, 'utf8') : '';
        if (pattern.test(text)) return;
        if (exited) throw new Error(`${name} exited before ${pattern}:\n${text.slice(-3000)}`);
        if (Date.now() > deadline) throw new Error(`${name}: no ${pattern} within ${timeoutMs} ms:\n${text.slice(-3000)}`);
        await delay(50);
      }
    },
    stop(timeoutMs = 5000) {
      stopping ??= (async () => {
        if (!exited) {
          signal('SIGTERM');
          const timer = setTimeout(() => signal('SIGKILL'), timeoutMs);
          await exit;
          clearTimeout(timer);
        }
        // Kamailio workers may outlive the main process for a moment
        if (group) signal('SIGKILL');
      })();
      return stopping;
    },
  };
}

export async function waitForTcp(port: number, timeoutMs: number, svc: Service): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const ok = await new Promise<boolean>((resolve) => {
      const sock = connect(port, '127.0.0.1');
      sock.once('connect', () => { sock.destroy(); resolve(true); });
      sock.once('error', () => resolve(false));
    });
    if (ok) return;
    if (svc.exited()) throw new Error(`${svc.name} exited:\n${svc.tail()}`);
    if (Date.now() > deadline) throw new Error(`${svc.name}: nothing listening on ${port} after ${timeoutMs} ms:\n${svc.tail()}`);
    await delay(50);
  }
}

// ---- drachtio-server ---------------------------------------------------------------------------

export interface DrachtioService extends Service { sipPort: number; adminPort: number; secret: string }

/**
 * drachtio-server from the repo's own drachtio.conf.xml (what midreg ships), on loopback and free
 * ports; `loglevel` overrides its <loglevel> (drachtio logs every SIP message in full at "info").
 */
export async function startDrachtio(workDir: string, opts: { loglevel?: string; sofiaLoglevel?: number } = {}): Promise<DrachtioService> {
  const bin = process.env['DRACHTIO_BIN'] || DRACHTIO_BIN_DEFAULT;
  const sipPort = await freePort();
  const adminPort = await freePort();
  const secret = 'bench-secret';
  const template = readFileSync(join(REPO_ROOT, 'drachtio.conf.xml'), 'utf8');
  let xml = template
    .replace(/<admin port="\d+" secret="[^"]*">[^<]*<\/admin>/, `<admin port="${adminPort}" secret="${secret}">127.0.0.1</admin>`)
    .replace(/<contact>[^<]*<\/contact>/, `<contact>sip:127.0.0.1:${sipPort};transport=udp,tcp</contact>`);
  if (!xml.includes(`port="${adminPort}"`) || !xml.includes(`127.0.0.1:${sipPort}`)) {
    throw new Error('drachtio.conf.xml no longer has the <admin> and <contact> elements the bench rewrites');
  }
  // The bench measures UDP: the TLS/WS/WSS listeners (and the certificate they need) stay out.
  xml = xml.replace(/<contact>sips?:\*:\d+;transport=(?:tls|ws|wss)<\/contact>/g, '').replace(/<tls>[\s\S]*?<\/tls>/, '');
  if (opts.loglevel) xml = xml.replace(/<loglevel>[^<]*<\/loglevel>/, `<loglevel>${opts.loglevel}</loglevel>`);
  if (opts.sofiaLoglevel !== undefined) xml = xml.replace(/<sofia-loglevel>[^<]*<\/sofia-loglevel>/, `<sofia-loglevel>${opts.sofiaLoglevel}</sofia-loglevel>`);
  const conf = join(workDir, 'drachtio.conf.xml');
  writeFileSync(conf, xml);
  const svc = spawnService('drachtio-server', bin, ['-f', conf], { logFile: join(workDir, 'drachtio.log'), cwd: workDir });
  await waitForTcp(adminPort, 10_000, svc);
  return Object.assign(svc, { sipPort, adminPort, secret });
}

// ---- Kamailio ----------------------------------------------------------------------------------

export interface KamailioService extends Service { port: number; ctlSocket: string }

/** Kamailio in the foreground (own process group), UDP on 127.0.0.1:port, output to a file. */
export async function startKamailio(workDir: string, opts: { cfg: string; name: string; defines?: string[]; children?: number; shmMb?: number; tcp?: boolean }): Promise<KamailioService> {
  const port = await freePort();
  const ctlSocket = join(workDir, 'ctl.sock');
  if (ctlSocket.length > 107) throw new Error(`work dir too long for a unix socket: ${ctlSocket}`);
  const args = [
    '-f', opts.cfg, '-DD', '-E',
    '-n', String(opts.children ?? 2),
    // shared memory holds the location table and every transaction until its wait timer ends:
    // at 6,000 REGISTER/s with new AoRs, 512 MB runs out within a minute (tm: "out of mem")
    '-m', String(opts.shmMb ?? 2048), '-M', '16',
    '-l', `udp:127.0.0.1:${port}`,
    ...(opts.tcp ? ['-l', `tcp:127.0.0.1:${port}`] : []),
    '-Y', workDir, '-P', join(workDir, 'kamailio.pid'), '-w', workDir,
    '-A', `CTL_SOCK="unix:${ctlSocket}"`,
    ...(opts.defines ?? []).flatMap((d) => ['-A', d]),
  ];
  const svc = spawnService(opts.name, process.env['KAMAILIO_BIN'] ?? 'kamailio', args, { logFile: join(workDir, 'kamailio.log'), cwd: workDir, group: true });
  const deadline = Date.now() + 10_000;
  for (;;) {
    if (svc.exited()) throw new Error(`${opts.name} exited during start-up:\n${svc.tail()}`);
    const ok = await kamcmd(ctlSocket, ['core.version'], 2000).then((v) => v.includes('kamailio'), () => false);
    if (ok) break;
    if (Date.now() > deadline) { await svc.stop(); throw new Error(`${opts.name} did not answer kamcmd:\n${svc.tail()}`); }
    await delay(100);
  }
  return Object.assign(svc, { port, ctlSocket });
}

// ---- Node apps ---------------------------------------------------------------------------------

export interface NodeAppOptions {
  workDir: string;
  env: Record<string, string>;
  /** Write a V8 CPU profile (node --cpu-prof) into this dir under this name when the app exits. */
  cpuProfile?: { dir: string; name: string };
}

function nodeArgs(script: string, opts: NodeAppOptions): string[] {
  return [
    ...(opts.cpuProfile ? ['--cpu-prof', '--cpu-prof-dir', opts.cpuProfile.dir, '--cpu-prof-name', opts.cpuProfile.name] : []),
    script,
  ];
}

/** midreg as operators run it (`node dist/app/main.js`), configured by environment only. */
export async function startMidreg(opts: NodeAppOptions & { logName?: string }): Promise<Service> {
  const svc = spawnService('midreg', process.execPath, nodeArgs(join(REPO_ROOT, 'dist', 'app', 'main.js'), opts), {
    env: { PATH: process.env['PATH'] ?? '', ...opts.env },
    logFile: join(opts.workDir, opts.logName ?? 'midreg.log'),
  });
  // The line is logged at info; at warn or error the caller's REGISTER probe is the only sign.
  if (!['warn', 'error'].includes(opts.env['MIDREG_LOG_LEVEL'] ?? 'info')) await svc.waitForLog(/connected to drachtio-server/, 15_000);
  return svc;
}

/** bench/reference-app.ts (compiled), relay or proxy mode. */
export async function startReference(opts: NodeAppOptions & { mode: 'relay' | 'proxy' }): Promise<Service> {
  const svc = spawnService(`reference-${opts.mode}`, process.execPath, nodeArgs(join(REPO_ROOT, 'dist', 'bench', 'reference-app.js'), opts), {
    env: { PATH: process.env['PATH'] ?? '', REF_MODE: opts.mode, ...opts.env },
    logFile: join(opts.workDir, `reference-${opts.mode}.log`),
  });
  await svc.waitForLog(/reference connected/, 15_000);
  return svc;
}

// ---- OpenSIPS mid_registrar (the peer built for midreg's job) ---------------------------------

/** The shared OpenSIPS 3.5.9 build beside the repository (`start.sh MODE LISTEN REGISTRAR [WORKDIR]`). */
export const OPENSIPS_DIR = join(REPO_ROOT, '..', 'shared', 'peers', 'opensips');
export const OPENSIPS_START = join(OPENSIPS_DIR, 'start.sh');
export const OPENSIPS_BIN = join(OPENSIPS_DIR, 'opensips');
/**
 * OpenSIPS' shared and private memory (-m, -M), as the bench gives the Kamailio processes: with
 * start.sh's defaults (32 MB shm) tm runs out of memory within a second at 1,000 REGISTER/s
 * ("tm:new_t: out of mem", answered 500), since every transaction lives on for its wait timer and
 * each new AoR stays in usrloc.
 */
export const OPENSIPS_SHM_MB = 2048;
export const OPENSIPS_PKG_MB = 16;

/**
 * start.sh runs `$(dirname $0)/opensips` and takes no memory options, so it is run from a
 * directory of links to the shared folder whose `opensips` is a wrapper adding -m/-M and exec'ing
 * the shared binary (same PID: still the process-group leader start.sh prints).
 */
function opensipsShim(workDir: string): string {
  const shim = join(workDir, 'opensips-peer');
  mkdirSync(shim, { recursive: true });
  for (const name of ['start.sh', 'midreg.cfg.in', 'modules']) {
    if (!existsSync(join(shim, name))) symlinkSync(join(OPENSIPS_DIR, name), join(shim, name));
  }
  const wrapper = join(shim, 'opensips');
  writeFileSync(wrapper, `#!/bin/sh\nexec '${OPENSIPS_BIN}' -m ${OPENSIPS_SHM_MB} -M ${OPENSIPS_PKG_MB} "$@"\n`);
  chmodSync(wrapper, 0o755);
  return join(shim, 'start.sh');
}

export interface OpensipsService {
  readonly name: string;
  /** Leader of OpenSIPS' own session and process group (its workers are in it). */
  readonly pid: number;
  readonly port: number;
  readonly mode: 0 | 1 | 2;
  readonly logFile: string;
  /** SIGTERM to the group, SIGKILL after `timeoutMs`; resolves once no member is left. Idempotent. */
  stop(timeoutMs?: number): Promise<void>;
}

const liveGroups = new Set<number>();
let groupHookInstalled = false;

function groupAlive(pgid: number): boolean {
  try { process.kill(-pgid, 0); return true; } catch { return false; }
}

/**
 * OpenSIPS mid_registrar started by the shared start.sh (with -m/-M, see opensipsShim) on 127.0.0.1:`port` (UDP and TCP) in
 * `mode` (0 contact mirroring, 1 contact throttling, 2 AoR throttling), relaying to `registrar`.
 * start.sh detaches it (setsid) and returns once its UDP socket listens; it is not our child, so it
 * is stopped by process group, and SIGKILLed when the bench exits as a backstop.
 */
export async function startOpensips(workDir: string, opts: { mode: 0 | 1 | 2; registrar: string; port?: number; workers?: number }): Promise<OpensipsService> {
  const port = opts.port ?? await freePort();
  const r = spawnSync(opensipsShim(workDir), [String(opts.mode), `127.0.0.1:${port}`, opts.registrar, workDir], {
    encoding: 'utf8', timeout: 20_000, env: { ...process.env, OPENSIPS_WORKERS: String(opts.workers ?? 2) },
  });
  const pid = Number(r.stdout.trim());
  if (r.status !== 0 || !Number.isInteger(pid) || pid <= 0) {
    throw new Error(`OpenSIPS (mode ${opts.mode}) did not start (exit ${String(r.status)}${r.error ? `, ${r.error.message}` : ''}): ${r.stdout}${r.stderr}`.trim());
  }
  liveGroups.add(pid);
  if (!groupHookInstalled) {
    groupHookInstalled = true;
    process.once('exit', () => { for (const g of liveGroups) { try { process.kill(-g, 'SIGKILL'); } catch { /* gone */ } } });
  }
  let stopping: Promise<void> | undefined;
  return {
    name: `opensips-mode${opts.mode}`,
    pid,
    port,
    mode: opts.mode,
    logFile: join(workDir, 'opensips.log'),
    stop(timeoutMs = 5000) {
      stopping ??= (async () => {
        try { process.kill(-pid, 'SIGTERM'); } catch { /* gone */ }
        const deadline = Date.now() + timeoutMs;
        while (groupAlive(pid) && Date.now() < deadline) await delay(50);
        if (groupAlive(pid)) {
          try { process.kill(-pid, 'SIGKILL'); } catch { /* gone */ }
          for (let i = 0; i < 100 && groupAlive(pid); i++) await delay(20);
        }
        liveGroups.delete(pid);
      })();
      return stopping;
    },
  };
}

/** First non-empty output line of `cmd args` (sipp -v exits non-zero), or "unavailable". */
export function version(cmd: string, args: string[]): string {
  const r = spawnSync(cmd, args, { encoding: 'utf8', timeout: 5000 });
  if (r.error) return 'unavailable';
  return `${r.stdout}${r.stderr}`.split('\n').find((l) => l.trim() !== '')?.trim() ?? '';
}

/** What a results file records about the machine and the tools, once per bench run. */
export interface RunEnvironment {
  host: { cpus: number; model: string; loadavg: number[] };
  node: string;
  drachtio: string;
  kamailio: string;
  sipp: string;
  git: string;
}

function drachtioDescription(bin: string): string {
  const v = version(bin, ['--version']);
  return bin === DRACHTIO_BIN_DEFAULT ? v : `${v} (${bin})`;
}

export function runEnvironment(): RunEnvironment {
  return {
    host: { cpus: cpus().length, model: cpus()[0]?.model ?? '', loadavg: loadavg() },
    node: process.version,
    // A build other than ../shared/engine's prints the same version: its path says which it was.
    drachtio: drachtioDescription(process.env['DRACHTIO_BIN'] || DRACHTIO_BIN_DEFAULT),
    kamailio: version('kamailio', ['-v']),
    // The binary the load generators run (bench/load.ts).
    sipp: version(process.env['SIPP_BIN'] ?? 'sipp', ['-v']),
    git: version('git', ['-C', REPO_ROOT, 'describe', '--always', '--dirty']),
  };
}

/** The run's first log line after its title: machine, load and tool versions. */
export function environmentLine(env: RunEnvironment, more = ''): string {
  return `${env.host.cpus} × ${env.host.model}, load average ${env.host.loadavg.map((l) => l.toFixed(2)).join(' ')}; node ${env.node}, drachtio ${env.drachtio}, ${env.kamailio.replace(/^version: /, '')}, ${env.sipp}${more}`;
}

/** A results file name stamp: the run's start, UTC, to the second, without colons. */
export function runStamp(at: Date): string {
  return at.toISOString().replace(/[:]/g, '-').replace(/\.\d+Z$/, 'Z');
}

/** The run's log: each line printed as it happens and kept for the results file. */
export function runLog(): { lines: string[]; log(line: string): void } {
  const lines: string[] = [];
  return { lines, log: (line) => { lines.push(line); process.stdout.write(`${line}\n`); } };
}

/** One bench run's frame: its options, stamp, work dir, log and the environment it ran in. */
export interface BenchRun<O> {
  opts: O;
  startedAt: Date;
  stamp: string;
  workDir: string;
  lines: string[];
  log(line: string): void;
  meta: { startedAt: string; options: O } & RunEnvironment;
}

/**
 * The start every bench shares: options parsed (a bad one prints the help and exits 2), the
 * build checked, a stamp and a work dir made, and the log opened.
 */
export function startRun<O>(bench: string, how: { parse(argv: string[]): O; help: string; workPrefix: string; stampSuffix?: string }): BenchRun<O> {
  let opts: O;
  try {
    opts = how.parse(process.argv.slice(2));
  } catch (err) {
    process.stderr.write(`bench ${bench}: ${err instanceof Error ? err.message : String(err)}\n${how.help}\n`);
    process.exit(2);
  }
  if (!existsSync(join(REPO_ROOT, 'dist', 'app', 'main.js'))) throw new Error('dist/app/main.js missing: npm run build');
  const startedAt = new Date();
  const { lines, log } = runLog();
  return {
    opts, startedAt, stamp: `${runStamp(startedAt)}${how.stampSuffix ?? ''}`, workDir: mkdtempSync(join(tmpdir(), how.workPrefix)),
    lines, log, meta: { startedAt: startedAt.toISOString(), options: opts, ...runEnvironment() },
  };
}

export const RESULTS_DIR = join(BENCH_DIR, 'results');

/** The Markdown results file's first lines: its title and the environment. */
export function resultsHeader(run: BenchRun<unknown>, title: string, script: string): string[] {
  const m = run.meta;
  return [`# ${title} ${run.stamp}`, '', `\`node dist/bench/${script}.js\` (bench/${script}.ts). ${m.host.cpus} × ${m.host.model} · node ${m.node} · drachtio ${m.drachtio} · ${m.kamailio.replace(/^version: /, '')} · ${m.sipp} · git ${m.git}`, ''];
}

/** The end every bench shares: results written beside the others, the work dir removed unless kept, exit 1 on error. */
export function finishRun(run: BenchRun<unknown>, out: { json: unknown; markdown: string[]; keep: boolean; error?: string | undefined }): never {
  mkdirSync(RESULTS_DIR, { recursive: true });
  const base = join(RESULTS_DIR, run.stamp);
  writeFileSync(`${base}.json`, `${JSON.stringify(out.json, null, 2)}\n`);
  writeFileSync(`${base}.md`, out.markdown.join('\n'));
  run.log(`results: ${base}.json, ${base}.md`);
  if (!out.keep) rmSync(run.workDir, { recursive: true, force: true });
  process.exit(out.error ? 1 : 0);
}

/** Runs a bench's main; an unexpected error is printed with its stack and exits 1. */
export function runBench(bench: string, main: () => Promise<void>): void {
  main().catch((err: unknown) => {
    process.stderr.write(`bench ${bench}: ${err instanceof Error ? err.stack ?? err.message : String(err)}\n`);
    process.exit(1);
  });
}
