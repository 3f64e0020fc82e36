// baresip (Debian `baresip-core`, v1.0.0) as a real SIP client in end-to-end tests and the demo:
// started headless with its own config directory in a temp dir, bound to 127.0.0.1 on free
// ports, registering with digest auth; driven through its `ctrl_tcp` module (JSON netstrings),
// and read from its console output. Also the small process wrapper linphone.ts shares.
//
// What baresip 1.0.0 needs to be headless and to show what it receives, found by trying:
// - no audio device: `aufile` reading and writing /dev/null (nothing is played or captured
//   without a call anyway);
// - an incoming MESSAGE is shown by the `menu` module through `ui_output()`, which writes only to
//   a loaded UI module: without `stdio` nothing is printed. `stdio` reads stdin, so stdin stays an
//   open pipe (a closed stdin is EOF, not a quiet keyboard);
// - 1.0.0's menu has no command to send a MESSAGE to a URI; the `contact` module's `message`
//   sends to the "current contact", chosen among the contacts file with `contact_next`/`_prev`;
// - `sip_listen 127.0.0.1:P` opens UDP and TCP on P and TLS on P+1, so P+1 must be free too.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { connect, createServer, type Socket } from 'node:net';
import { join } from 'node:path';
import { trackChild } from './children.js';
import { freePort } from './processes.js';

export const BARESIP_BIN = process.env['BARESIP_BIN'] ?? 'baresip';

/** What a test needs from a real SIP client, whichever it is. */
export interface SipClient {
  /** `baresip` or `linphonec`. */
  readonly kind: string;
  readonly user: string;
  /** The address of record it registers, `sip:user@<domain as the UA writes it>`. */
  readonly aor: string;
  /** Its SIP port on 127.0.0.1 (UDP): where its Contact points. */
  readonly sipPort: number;
  output(): string;
  /** Resolves once the registrar's 200 to its REGISTER is seen; rejects after `timeoutMs`. */
  registered(timeoutMs?: number): Promise<void>;
  /** Hands a MESSAGE with `text` to the client for sending to `uri`; resolves once the client accepted the command. */
  sendMessage(uri: string, text: string): Promise<void>;
  /** Resolves with the sender as the client shows it once the client has shown `text` as a received MESSAGE. */
  shownMessage(text: string, timeoutMs?: number): Promise<{ from: string }>;
  /** Stops the client (politely, then SIGKILL); idempotent. */
  stop(): Promise<void>;
}

export interface SipClientOptions {
  user: string;
  password: string;
  /** What the UA writes after '@' and as its registrar's host: `example.test`, or `127.0.0.1:5060`. */
  domain: string;
  /**
   * host:port to send everything to (an outbound proxy), for a domain name that does not resolve
   * to midreg on this machine; unset when `domain` already is midreg's address.
   */
  outboundProxy?: string;
  /** Registration expiry asked for, seconds (default 60). */
  expiresSec?: number;
  /** URIs this client may later send a MESSAGE to (baresip needs them in its contacts file). */
  contacts?: string[];
  /** Directory for the client's files (created). */
  dir: string;
}

export function escapeRegExp(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

/** Whether `bin` can be started here (`--help`/`-h` style probe, bounded). */
export function hasBinary(bin: string, probeArg: string): boolean {
  const r = spawnSync(bin, [probeArg], { stdio: 'ignore', timeout: 5000 });
  return !r.error;
}

// ---- the child process ---------------------------------------------------------------------------

export interface ClientProc {
  readonly child: ChildProcess;
  output(): string;
  /** Bounded wait for `pattern` in stdout+stderr (searched from `from`, default 0). */
  waitFor(pattern: RegExp, timeoutMs: number, from?: number): Promise<RegExpExecArray>;
  write(text: string): void;
  /** Sends `first` (a polite stop), SIGKILL after `timeoutMs`; resolves on exit. */
  stop(first: () => void, timeoutMs?: number): Promise<void>;
}

/** A client process with stdin kept open as a pipe (both clients read commands or keys there). */
export function startClientProc(cmd: string, args: string[], opts: { name: string; cwd: string; env?: NodeJS.ProcessEnv }): ClientProc {
  const child = spawn(cmd, args, { cwd: opts.cwd, env: opts.env ?? process.env, stdio: ['pipe', 'pipe', 'pipe'] });
  trackChild(child);
  let out = '';
  let exited: string | undefined;
  const waiters = new Set<() => void>();
  const poke = (): void => { for (const w of waiters) w(); };
  const onData = (chunk: Buffer): void => { out += chunk.toString('utf8'); poke(); };
  child.stdout?.on('data', onData);
  child.stderr?.on('data', onData);
  // Writing to a client that died must not crash the test process with EPIPE.
  child.stdin?.on('error', () => undefined);
  child.once('error', (err) => { exited = `could not start: ${err.message}`; poke(); });
  const exit = new Promise<void>((resolve) => child.once('exit', (code, signal) => { exited ??= `exited (${code ?? signal})`; poke(); resolve(); }));
  return {
    child,
    output: () => out,
    waitFor(pattern, timeoutMs, from = 0) {
      const re = new RegExp(pattern.source, pattern.flags.replace('g', ''));
      return new Promise((resolve, reject) => {
        const check = (): void => {
          const m = re.exec(out.slice(from));
          if (m) { cleanup(); resolve(m); return; }
          if (exited !== undefined) { cleanup(); reject(new Error(`${opts.name} ${exited} before ${pattern}; output:\n${out.slice(-3000)}`)); }
        };
        const timer = setTimeout(() => { cleanup(); reject(new Error(`${opts.name}: no ${pattern} within ${timeoutMs} ms; output:\n${out.slice(-3000)}`)); }, timeoutMs);
        const cleanup = (): void => { clearTimeout(timer); waiters.delete(check); };
        waiters.add(check);
        check();
      });
    },
    write(text) { if (exited === undefined) child.stdin?.write(text); },
    async stop(first, timeoutMs = 3000) {
      if (exited !== undefined) return;
      first();
      const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
      await exit;
      clearTimeout(timer);
    },
  };
}

/** A port free on 127.0.0.1 for UDP and TCP whose next port is free for TCP too. */
export async function freePortWithNext(): Promise<number> {
  for (;;) {
    const port = await freePort();
    const nextFree = await new Promise<boolean>((resolve) => {
      const srv = createServer();
      srv.once('error', () => resolve(false));
      srv.listen(port + 1, '127.0.0.1', () => srv.close(() => resolve(true)));
    });
    if (nextFree) return port;
  }
}

// ---- ctrl_tcp --------------------------------------------------------------------------------------

interface CtrlResponse { response: true; ok: boolean; data: string; token: string }

/** baresip's ctrl_tcp protocol: JSON commands and replies, each framed as a netstring `len:json,`. */
class Ctrl {
  private buf = '';
  private next = 0;
  private readonly pending = new Map<string, (r: CtrlResponse) => void>();
  private constructor(private readonly sock: Socket) {
    sock.setEncoding('utf8');
    sock.on('data', (d: string) => { this.buf += d; this.drain(); });
    sock.on('error', () => undefined);
  }

  static open(port: number, timeoutMs: number): Promise<Ctrl> {
    return new Promise((resolve, reject) => {
      const sock = connect(port, '127.0.0.1');
      const timer = setTimeout(() => { sock.destroy(); reject(new Error(`baresip ctrl_tcp: no connection on ${port} within ${timeoutMs} ms`)); }, timeoutMs);
      sock.once('connect', () => { clearTimeout(timer); resolve(new Ctrl(sock)); });
      sock.once('error', (err) => { clearTimeout(timer); reject(err); });
    });
  }

  private drain(): void {
    for (;;) {
      const m = /^(\d+):/.exec(this.buf);
      if (!m?.[1]) return;
      const len = Number(m[1]);
      const start = m[0].length;
      if (this.buf.length < start + len + 1) return;
      const body = this.buf.slice(start, start + len);
      this.buf = this.buf.slice(start + len + 1);
      try {
        const msg = JSON.parse(body) as Partial<CtrlResponse>;
        // Events (`"event": true`) are not replies; the tests read state from the output instead.
        if (msg.response === true && typeof msg.token === 'string') this.pending.get(msg.token)?.(msg as CtrlResponse);
      } catch { /* not JSON: ignore */ }
    }
  }

  command(command: string, params: string, timeoutMs = 5000): Promise<CtrlResponse> {
    const token = `t${++this.next}`;
    const json = JSON.stringify({ command, params, token });
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => { this.pending.delete(token); reject(new Error(`baresip ctrl_tcp: no reply to ${command} within ${timeoutMs} ms`)); }, timeoutMs);
      this.pending.set(token, (r) => { clearTimeout(timer); this.pending.delete(token); resolve(r); });
      this.sock.write(`${Buffer.byteLength(json)}:${json},`);
    });
  }

  close(): void { this.sock.destroy(); }
}

// ---- baresip ---------------------------------------------------------------------------------------

function baresipConfig(sipPort: number, ctrlPort: number): string {
  return [
    'poll_method\t\tpoll',
    `sip_listen\t\t127.0.0.1:${sipPort}`,
    'sip_trans_def\t\tudp',
    // Nothing may be looked up outside this machine; no lookup is needed either (the domain is
    // an IP literal, or everything goes to the outbound proxy).
    'dns_server\t\t127.0.0.1:53',
    'audio_player\t\taufile,/dev/null',
    'audio_source\t\taufile,/dev/null',
    'audio_alert\t\taufile,/dev/null',
    'module_path\t\t/usr/lib/baresip/modules',
    'module\t\t\tstdio.so',
    'module\t\t\tg711.so',
    'module\t\t\taufile.so',
    'module_app\t\taccount.so',
    'module_app\t\tcontact.so',
    'module_app\t\tmenu.so',
    'module_app\t\tctrl_tcp.so',
    `ctrl_tcp_listen\t\t127.0.0.1:${ctrlPort}`,
    '',
  ].join('\n');
}

/** Starts baresip for `opts.user` and waits until it is up (not until it registered: see `registered()`). */
export async function startBaresip(opts: SipClientOptions): Promise<SipClient> {
  mkdirSync(opts.dir, { recursive: true });
  const sipPort = await freePortWithNext();
  const ctrlPort = await freePort();
  const aor = `sip:${opts.user}@${opts.domain}`;
  writeFileSync(join(opts.dir, 'config'), baresipConfig(sipPort, ctrlPort));
  const outbound = opts.outboundProxy ? `;outbound="sip:${opts.outboundProxy};transport=udp"` : '';
  writeFileSync(join(opts.dir, 'accounts'), `<${aor}>;auth_pass=${opts.password}${outbound};regint=${opts.expiresSec ?? 60}\n`);
  writeFileSync(join(opts.dir, 'contacts'), (opts.contacts ?? []).map((uri) => `<${uri}>\n`).join(''));
  const proc = startClientProc(BARESIP_BIN, ['-f', opts.dir], { name: `baresip ${opts.user}`, cwd: opts.dir });
  let ctrl: Ctrl | undefined;
  try {
    await proc.waitFor(/baresip is ready\./, 10_000);
    ctrl = await Ctrl.open(ctrlPort, 5000);
  } catch (err) {
    await proc.stop(() => proc.child.kill('SIGKILL'));
    throw err;
  }
  const c = ctrl;
  return {
    kind: 'baresip',
    user: opts.user,
    aor,
    sipPort,
    output: proc.output,
    async registered(timeoutMs = 10_000) {
      // e.g. `alice@example.test: {0/UDP/v4} 200 OK (midreg-test-kamailio) [1 binding]`; a 401
      // is answered by baresip itself and never printed like this.
      await proc.waitFor(new RegExp(`^${escapeRegExp(opts.user)}@\\S+: \\{\\d+/UDP/v4\\} 200 `, 'm'), timeoutMs);
    },
    async sendMessage(uri, text) {
      const contacts = opts.contacts ?? [];
      if (!contacts.includes(uri)) throw new Error(`baresip ${opts.user}: ${uri} is not in its contacts (${contacts.join(', ')})`);
      // Walk the contact list until the current contact is `uri` (it prints `Current contact: <uri>`).
      let current = false;
      for (const move of [...contacts.map(() => 'contact_next'), ...contacts.map(() => 'contact_prev')]) {
        const r = await c.command(move, '');
        if (r.data.includes(`<${uri}>`)) { current = true; break; }
      }
      if (!current) throw new Error(`baresip ${opts.user}: could not make ${uri} the current contact`);
      const r = await c.command('message', text);
      if (!r.ok) throw new Error(`baresip ${opts.user}: message command failed: ${r.data}`);
    },
    async shownMessage(text, timeoutMs = 10_000) {
      // menu.so shows an incoming MESSAGE as `<From URI>: "<body>"`.
      const m = await proc.waitFor(new RegExp(`(sips?:\\S+): "${escapeRegExp(text)}"`), timeoutMs);
      return { from: m[1] ?? '' };
    },
    async stop() {
      c.close();
      // SIGTERM: baresip de-registers and exits; bounded by the SIGKILL in stop().
      await proc.stop(() => proc.child.kill('SIGTERM'));
    },
  };
}
