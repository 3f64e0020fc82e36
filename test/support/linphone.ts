// Linphone's console client `linphonec` (Debian `linphone-cli`, liblinphone 5.1.65) as a real SIP
// client in end-to-end tests: started headless with its own linphonerc and HOME in a temp dir,
// bound to 127.0.0.1 on a free UDP port, registering with digest auth, and driven on stdin.
//
// What running it headless here took, found by trying (it does run headless on this machine):
// - no sound card: liblinphone logs "Could not find a suitable soundcard" and carries on
//   (nothing needs audio without a call); video is off unless -V/-C/-D;
// - its chat database lives under $HOME/.local/share/linphone, which must exist (else "Unable
//   to open linphone database" and messages are not stored, though still shown);
// - it only listens where [sip] says: UDP on `sip_port`, TCP and TLS off with port 0;
// - with only `reg_proxy` set, a MESSAGE to `sip:bob@example.test` is sent to the domain itself
//   (belle-sip: "DNS resolution failed for example.test"); `reg_route` makes midreg the
//   outbound proxy for everything;
// - no asynchronous "registered" line on the console (not even with -S), so registration is
//   read with the `status register` command, asked again until it says `registered,` (bounded);
// - `chat <uri> <text>` sends a MESSAGE; a received one is shown as
//   `Message received from <From URI>: <text>`.
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { escapeRegExp, startClientProc, type SipClient, type SipClientOptions } from './baresip.js';
import { freePort } from './processes.js';

export const LINPHONEC_BIN = process.env['LINPHONEC_BIN'] ?? 'linphonec';

function linphonerc(opts: SipClientOptions, sipPort: number, aor: string): string {
  const server = opts.outboundProxy ?? opts.domain;
  return [
    '[sip]',
    `sip_port=${sipPort}`,
    'sip_tcp_port=0',
    'sip_tls_port=0',
    'bind_address=127.0.0.1',
    'ipv6_enabled=0',
    'default_proxy=0',
    'register_only_when_network_is_up=0',
    '',
    '[proxy_0]',
    `reg_proxy=<sip:${server}>`,
    `reg_route=<sip:${server};lr>`,
    `reg_identity=${aor}`,
    `reg_expires=${opts.expiresSec ?? 60}`,
    'reg_sendregister=1',
    'publish=0',
    '',
    // No realm: the credentials answer whichever realm the registrar challenges with.
    '[auth_info_0]',
    `username=${opts.user}`,
    `userid=${opts.user}`,
    `passwd=${opts.password}`,
    '',
  ].join('\n');
}

/** Starts linphonec for `opts.user` and waits for its prompt (not until it registered: see `registered()`). */
export async function startLinphonec(opts: SipClientOptions): Promise<SipClient> {
  mkdirSync(join(opts.dir, '.local', 'share', 'linphone'), { recursive: true });
  const sipPort = await freePort();
  const aor = `sip:${opts.user}@${opts.domain}`;
  const rc = join(opts.dir, 'linphonerc');
  writeFileSync(rc, linphonerc(opts, sipPort, aor));
  const env: NodeJS.ProcessEnv = { PATH: process.env['PATH'] ?? '', HOME: opts.dir, XDG_DATA_HOME: join(opts.dir, '.local', 'share'), XDG_CONFIG_HOME: opts.dir, LANG: 'C' };
  const proc = startClientProc(LINPHONEC_BIN, ['-c', rc, '-d', '0'], { name: `linphonec ${opts.user}`, cwd: opts.dir, env });
  try {
    await proc.waitFor(/linphonec> /, 10_000);
  } catch (err) {
    await proc.stop(() => proc.child.kill('SIGKILL'));
    throw err;
  }
  return {
    kind: 'linphonec',
    user: opts.user,
    aor,
    sipPort,
    output: proc.output,
    async registered(timeoutMs = 10_000) {
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        const from = proc.output().length;
        proc.write('status register\n');
        const m = await proc.waitFor(/^(registered\S*|unregistered)[^\n]*\n/m, Math.max(1000, deadline - Date.now()), from);
        if (m[0].startsWith('registered,')) return;
        if (Date.now() > deadline) throw new Error(`linphonec ${opts.user}: not registered within ${timeoutMs} ms (last status: ${m[0].trim()}); output:\n${proc.output().slice(-3000)}`);
        await new Promise((r) => setTimeout(r, 200));
      }
    },
    async sendMessage(uri, text) {
      if (/[\r\n]/.test(text)) throw new Error('linphonec reads one command per line: no line breaks in the text');
      const from = proc.output().length;
      proc.write(`chat ${uri} ${text}\n`);
      // The command is echoed and the prompt comes back once linphonec has taken it.
      await proc.waitFor(/linphonec> /, 5000, from);
    },
    async shownMessage(text, timeoutMs = 10_000) {
      const m = await proc.waitFor(new RegExp(`Message received from (sips?:\\S+): ${escapeRegExp(text)}$`, 'm'), timeoutMs);
      return { from: m[1] ?? '' };
    },
    async stop() {
      await proc.stop(() => proc.write('quit\n'));
    },
  };
}
