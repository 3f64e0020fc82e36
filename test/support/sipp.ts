// sipp runner for the test suites: bounded UAC runs (runSipp) and background UAS instances
// (startSippUas). Scenarios live in test/sipp/*.xml; their `<Global variables="...">` list is
// read so every declared variable gets a value (explicit, or one of DEFAULT_VARS) and a typo in a
// variable name fails loudly instead of sipp aborting with "variable does not exist".
// sipp only ever binds and talks to 127.0.0.1.
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { mkdtemp, readFile, readdir, rm } from 'node:fs/promises';
import { constants as osConstants, tmpdir } from 'node:os';
import { dirname, isAbsolute, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { trackChild } from './children.js';

function findRepoRoot(): string {
  const here = fileURLToPath(import.meta.url);
  let dir = dirname(here);
  for (;;) {
    if (existsSync(join(dir, 'package.json')) && existsSync(join(dir, 'test', 'sipp'))) return dir;
    const parent = dirname(dir);
    if (parent === dir) throw new Error(`cannot find the repository root above ${here}`);
    dir = parent;
  }
}

/** Repository root (works from test/support/*.ts and from dist/test/support/*.js). */
export const REPO_ROOT: string = findRepoRoot();
/** Directory holding the sipp scenarios. */
export const SIPP_DIR: string = join(REPO_ROOT, 'test', 'sipp');
/** The only address sipp binds to and sends to. */
export const SIPP_HOST = '127.0.0.1';

const SIPP_BIN = process.env.SIPP_BIN ?? 'sipp';
const DEFAULT_TIMEOUT_SEC = 15;
/** Extra grace after sipp's own -timeout before the process is killed. */
const KILL_GRACE_MS = 5000;

/**
 * Values used for scenario variables the caller does not set. `pw` defaults to "pw-<user>", the
 * password test/kamailio/kamailio.cfg expects for <user>.
 */
export const DEFAULT_VARS: Readonly<Record<string, string>> = {
  domain: 'example.test',
  expires: '3600',
  from: 'sipp',
  body: 'hello from sipp',
  expect: '200',
  hold: '1000',
};

export type SippTransport = 'u1' | 't1';

export interface SippOptions {
  /** File name in test/sipp (".xml" optional), or an absolute path. */
  scenario: string;
  /** host:port of the peer; the host must be 127.0.0.1. */
  target: string;
  /** Local SIP port (-p); it is also the port in the scenarios' Contact. */
  localPort: number;
  /** u1 = UDP (default), t1 = TCP, one socket. */
  transport?: SippTransport;
  /** Scenario variables (-set name value), e.g. { user: 'alice', expires: '3600' }. */
  vars?: Record<string, string>;
  /** -s (R-URI user for the [service] keyword); defaults to vars.user, vars.to or "sipp". */
  service?: string;
  /** Number of calls (-m); default 1. */
  calls?: number;
  /** sipp global timeout (-timeout, with -timeout_error); default 15 s. */
  timeoutSec?: number;
  /** Extra sipp arguments (e.g. ['-r', '50', '-l', '20']). */
  extraArgs?: string[];
}

export interface SippResult {
  /** Exit code: 0 all calls succeeded, 1 some failed, 97/99 no call done, 255 fatal or timeout; 128+n when killed by signal n. */
  code: number;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  /** Content of the -trace_msg log: every SIP message sent and received. */
  messages: string;
  /** Content of the -trace_err log (unexpected messages and the like). */
  errors: string;
  /** The command line, for failure messages. */
  command: string;
  durationMs: number;
  /** Where messages.log / errors.log were kept (only with SIPP_KEEP_TRACES=1; otherwise removed). */
  traceDir?: string;
}

export interface SippUasOptions extends Omit<SippOptions, 'target'> {
  /** Not needed for a pure UAS; only given when the scenario itself sends first. */
  target?: string;
}

export interface SippUas {
  pid: number | undefined;
  /** Resolves once sipp has bound its SIP port (or after a short delay when that cannot be seen). */
  ready: Promise<void>;
  /** Resolves when sipp exits by itself (after -m calls or -timeout). Never rejects. */
  done: Promise<SippResult>;
  /** Ends sipp (SIGTERM, then SIGKILL after 3 s) and resolves with its result. */
  stop(): Promise<SippResult>;
}


export function scenarioPath(scenario: string): string {
  if (isAbsolute(scenario)) return scenario;
  return join(SIPP_DIR, scenario.endsWith('.xml') ? scenario : `${scenario}.xml`);
}

/** Variables declared by `<Global variables="a,b,c" />` in a scenario file. */
export function declaredVariables(file: string): string[] {
  const xml = readFileSync(file, 'utf8').replace(/<!--[\s\S]*?-->/g, '');
  const names: string[] = [];
  for (const m of xml.matchAll(/<Global\s+variables\s*=\s*"([^"]*)"/g)) {
    for (const name of (m[1] ?? '').split(',')) {
      const n = name.trim();
      if (n) names.push(n);
    }
  }
  return names;
}

function resolveVars(file: string, given: Record<string, string>): Array<[string, string]> {
  const declared = declaredVariables(file);
  const unknown = Object.keys(given).filter((k) => !declared.includes(k));
  if (unknown.length > 0) {
    throw new Error(`${file}: unknown variable(s) ${unknown.join(', ')} (declared: ${declared.join(', ') || 'none'})`);
  }
  const user = given.user;
  const defaults: Record<string, string> = { ...DEFAULT_VARS, ...(user !== undefined ? { pw: `pw-${user}` } : {}) };
  return declared.map((name): [string, string] => {
    const value = given[name] ?? defaults[name];
    if (value === undefined) throw new Error(`${file}: variable "${name}" must be given in vars`);
    return [name, value];
  });
}

function checkTarget(target: string): void {
  const m = /^(.+):(\d+)$/.exec(target);
  if (!m || m[1] !== SIPP_HOST) throw new Error(`sipp target must be ${SIPP_HOST}:<port>, got "${target}"`);
}

interface Launched {
  child: ChildProcess;
  result: Promise<SippResult>;
}

async function launch(opts: SippUasOptions, tracePrefix: string): Promise<Launched> {
  const file = scenarioPath(opts.scenario);
  if (!existsSync(file)) throw new Error(`sipp scenario not found: ${file}`);
  if (opts.target !== undefined) checkTarget(opts.target);
  const vars = opts.vars ?? {};
  const sets = resolveVars(file, vars).flatMap(([k, v]) => ['-set', k, v]);
  const timeoutSec = opts.timeoutSec ?? DEFAULT_TIMEOUT_SEC;
  const traceDir = await mkdtemp(join(tmpdir(), tracePrefix));
  const messageFile = join(traceDir, 'messages.log');
  const errorFile = join(traceDir, 'errors.log');
  const args = [
    ...(opts.target !== undefined ? [opts.target] : []),
    '-sf', file,
    '-i', SIPP_HOST,
    '-mi', SIPP_HOST,
    '-ci', SIPP_HOST,
    '-bind_local',
    '-p', String(opts.localPort),
    '-t', opts.transport ?? 'u1',
    '-s', opts.service ?? vars.user ?? vars.to ?? 'sipp',
    '-m', String(opts.calls ?? 1),
    '-timeout', `${timeoutSec}s`,
    '-timeout_error',
    '-nostdin',
    '-trace_msg', '-message_file', messageFile,
    '-trace_err', '-error_file', errorFile,
    ...sets,
    ...(opts.extraArgs ?? []),
  ];
  const command = [SIPP_BIN, ...args].map((a) => (/^[\w@%+=:,./-]+$/.test(a) ? a : `'${a.replace(/'/g, `'\\''`)}'`)).join(' ');
  const started = Date.now();
  const child = spawn(SIPP_BIN, args, { cwd: traceDir, stdio: ['ignore', 'pipe', 'pipe'] });
  trackChild(child);
  let stdout = '';
  let stderr = '';
  child.stdout?.setEncoding('utf8').on('data', (d: string) => { stdout += d; });
  child.stderr?.setEncoding('utf8').on('data', (d: string) => { stderr += d; });
  const watchdog = setTimeout(() => child.kill('SIGKILL'), timeoutSec * 1000 + KILL_GRACE_MS);
  const result = new Promise<SippResult>((resolve) => {
    let finished = false;
    const finish = (code: number | null, signal: NodeJS.Signals | null, spawnError?: Error): void => {
      if (finished) return;
      finished = true;
      clearTimeout(watchdog);
      void (async () => {
        const messages = await readFile(messageFile, 'utf8').catch(() => '');
        const errors = await readFile(errorFile, 'utf8').catch(() => '');
        const keep = process.env.SIPP_KEEP_TRACES === '1';
        if (!keep) await rm(traceDir, { recursive: true, force: true });
        const signo = signal ? osConstants.signals[signal] : undefined;
        resolve({
          code: code ?? (signo !== undefined ? 128 + signo : -1),
          signal,
          stdout,
          stderr: spawnError ? `${stderr}${String(spawnError)}\n` : stderr,
          messages,
          errors,
          command,
          durationMs: Date.now() - started,
          ...(keep ? { traceDir } : {}),
        });
      })();
    };
    // a failed spawn (e.g. sipp not installed) emits 'error' and maybe no 'close'
    child.once('error', (err) => {
      if (child.pid === undefined) finish(null, null, err);
    });
    child.once('close', (code, signal) => finish(code, signal));
  });
  return { child, result };
}

/** Runs one bounded sipp instance (UAC scenario) to completion. Never rejects on sipp failure: check `code`. */
export async function runSipp(opts: SippOptions): Promise<SippResult> {
  const { result } = await launch(opts, 'sipp-');
  return result;
}

/** Whether something on 127.0.0.1 has bound `port` (Linux /proc/net); undefined when unknown. */
async function portBound(port: number, transport: SippTransport): Promise<boolean | undefined> {
  const table = transport === 't1' ? '/proc/net/tcp' : '/proc/net/udp';
  const text = await readFile(table, 'utf8').catch(() => undefined);
  if (text === undefined) return undefined;
  const hexPort = port.toString(16).toUpperCase().padStart(4, '0');
  return text.split('\n').some((line) => {
    const local = line.trim().split(/\s+/)[1];
    return local === `0100007F:${hexPort}` || local === `00000000:${hexPort}`;
  });
}

/**
 * Starts a UAS scenario in the background (e.g. uas-message.xml with calls = number of MESSAGEs
 * to answer). Await `ready` before sending it traffic, then `done` (or `stop()`).
 */
export function startSippUas(opts: SippUasOptions): SippUas {
  let child: ChildProcess | undefined;
  const launched = launch(opts, 'sipp-uas-');
  const failed = (err: unknown): SippResult => ({
    code: -1, signal: null, stdout: '', stderr: String(err), messages: '', errors: '', command: '', durationMs: 0,
  });
  const done = launched.then((l) => {
    child = l.child;
    return l.result;
  }, failed);
  const ready = launched.then(async (l) => {
    const transport = opts.transport ?? 'u1';
    const deadline = Date.now() + 5000;
    let exited = false;
    void l.result.then(() => { exited = true; });
    for (;;) {
      if (exited) {
        const r = await l.result;
        throw new Error(`sipp UAS exited before binding port ${opts.localPort} (code ${r.code}): ${r.stderr}`);
      }
      const bound = await portBound(opts.localPort, transport);
      if (bound === undefined) {
        await delay(300);
        return;
      }
      if (bound) return;
      if (Date.now() > deadline) throw new Error(`sipp UAS did not bind port ${opts.localPort} within 5 s`);
      await delay(20);
    }
  });
  // a failed start is reported through `ready`; keep `done` from raising an unhandled rejection
  ready.catch(() => undefined);
  return {
    get pid() {
      return child?.pid;
    },
    ready,
    done,
    async stop() {
      const l = await launched.catch(() => undefined);
      if (!l) return done;
      if (l.child.exitCode === null && l.child.signalCode === null) {
        l.child.kill('SIGTERM');
        const t = setTimeout(() => l.child.kill('SIGKILL'), 3000);
        const r = await l.result;
        clearTimeout(t);
        return r;
      }
      return l.result;
    },
  };
}

function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Lists the scenario files in test/sipp. */
export async function listScenarios(): Promise<string[]> {
  return (await readdir(SIPP_DIR)).filter((f) => f.endsWith('.xml')).sort();
}

/** Splits a -trace_msg log into the individual SIP messages (start line first). */
export function splitMessages(log: string): Array<{ direction: 'sent' | 'received'; text: string }> {
  const out: Array<{ direction: 'sent' | 'received'; text: string }> = [];
  const blocks = log.split(/^-{20,}.*$/m);
  for (const block of blocks) {
    const m = /^\s*(?:UDP|TCP|TLS|SCTP)?\s*message (sent|received)[^\n]*\n+([\s\S]*)$/m.exec(block);
    if (!m) continue;
    out.push({ direction: m[1] === 'sent' ? 'sent' : 'received', text: (m[2] ?? '').replace(/\s+$/, '') });
  }
  return out;
}

/** The received responses of a -trace_msg log, as { status, reason, text }. */
export function receivedResponses(log: string): Array<{ status: number; reason: string; text: string }> {
  return splitMessages(log)
    .filter((m) => m.direction === 'received')
    .flatMap((m) => {
      const r = /^SIP\/2\.0 (\d{3}) ?(.*)$/m.exec(m.text);
      return r ? [{ status: Number(r[1]), reason: (r[2] ?? '').trim(), text: m.text }] : [];
    });
}
