// Re-records the wire exchanges the CI suite replays: every frame between midreg's drachtio-srf
// client and a REAL drachtio-server while sipp UAs register through it to a REAL Kamailio.
// Run with `DRACHTIO_BIN=/path/to/drachtio npm run record` (needs kamailio and sipp too).
import { execFileSync } from 'node:child_process';
import { join } from 'node:path';
import { e2eSkipReason, freePort } from '../support/processes.js';
import { runSipp, startSippUas, type SippResult, type SippUas } from '../support/sipp.js';
import { startStack, type Stack } from '../support/stack.js';
import { saveRecording, startWireRecorder, type WireRecorder } from '../support/wire-recorder.js';

import { RECORDINGS_DIR } from './recordings.js';

type Sipp = (scenario: string, vars: Record<string, string>, localPort?: number) => Promise<SippResult & { localPort: number }>;
type Uas = (scenario: string, localPort: number, calls: number) => Promise<SippUas>;

/** Each scenario: what the UAs do. The stack (Kamailio, drachtio-server, midreg) is new for each. */
export const SCENARIOS: Record<string, { upstream?: 'silent'; env?: Record<string, string>; steps(sipp: Sipp, uas: Uas): Promise<void> }> = {
  'register-auth': { async steps(sipp) { await sipp('register-auth', { user: 'alice', expires: '3600' }); } },
  'register-rejected': {
    async steps(sipp) {
      await sipp('register-auth', { user: 'bob', expires: '120' });
      await sipp('register-challenge-only', { user: 'bob' });
      await sipp('register-badpw', { user: 'carol' });
    },
  },
  'evicted-upstream': {
    async steps(sipp) {
      await sipp('register-auth', { user: 'singledave', expires: '120' });
      await sipp('register-auth', { user: 'singledave', expires: '120' });
    },
  },
  'deregister-star': {
    async steps(sipp) {
      await sipp('register-auth', { user: 'frank', expires: '120' });
      await sipp('register-auth', { user: 'frank', expires: '120' });
      await sipp('deregister-star', { user: 'frank' });
    },
  },
  'query': {
    async steps(sipp) {
      await sipp('register-auth', { user: 'gina', expires: '60' });
      await sipp('query', { user: 'gina' });
    },
  },
  'message': {
    env: { MIDREG_MAX_MESSAGE_BYTES: '1000' },
    async steps(sipp, uas) {
      const alice = await sipp('register-auth', { user: 'alice', expires: '300' });
      const bob = await sipp('register-auth', { user: 'bob', expires: '300' });
      const bobUas = await uas('uas-message', bob.localPort, 1);
      await sipp('uac-message', { to: 'bob', from: 'alice', expect: '200' }, alice.localPort);
      await bobUas.done;
      await sipp('uac-message', { to: 'nobody', from: 'alice', expect: '404' }, alice.localPort);
      await sipp('uac-message', { to: 'bob', from: 'mallory', expect: '403' });
      await sipp('uac-message', { to: 'bob', from: 'alice', expect: '413', body: 'x'.repeat(1200) }, alice.localPort);
    },
  },
  'call': {
    async steps(sipp, uas) {
      const alice = await sipp('register-auth', { user: 'alice', expires: '300' });
      const bob = await sipp('register-auth', { user: 'bob', expires: '300' });
      const bobUas = await uas('uas-invite', bob.localPort, 1);
      await sipp('uac-invite', { to: 'bob', from: 'alice', hold: '300' }, alice.localPort);
      await bobUas.stop();
    },
  },
  'upstream-silent': { upstream: 'silent', async steps(sipp) { await sipp('register-any-final', { user: 'ivan' }); } },
};

async function record(name: string): Promise<void> {
  const scenario = SCENARIOS[name];
  if (!scenario) throw new Error(`no scenario ${name}`);
  let recorder: WireRecorder | undefined;
  let silent: import('node:dgram').Socket | undefined;
  let upstream: string | undefined;
  if (scenario.upstream === 'silent') {
    const { createSocket } = await import('node:dgram');
    silent = createSocket('udp4');
    const socket = silent;
    await new Promise<void>((resolve) => socket.bind(0, '127.0.0.1', () => resolve()));
    upstream = `sip:127.0.0.1:${socket.address().port}`;
  }
  const stack: Stack = await startStack({
    ...(upstream ? { upstream } : {}),
    ...(scenario.env ? { env: scenario.env } : {}),
    drachtioAdminPortForMidreg: async (drachtio) => {
      recorder = await startWireRecorder({ target: { host: '127.0.0.1', port: drachtio.adminPort } });
      return recorder.port;
    },
  });
  try {
    await scenario.steps(async (file, vars, localPort) => {
      const port = localPort ?? await freePort();
      const result = await runSipp({ scenario: file, target: stack.sipTarget, localPort: port, vars, timeoutSec: 15 });
      return Object.assign(result, { localPort: port });
    }, async (file, localPort, calls) => {
      const server = startSippUas({ scenario: file, localPort, calls, timeoutSec: 15 });
      await server.ready;
      return server;
    });
    await new Promise((r) => setTimeout(r, 200));
    await stack.midreg.stop('SIGTERM');
    if (!recorder) throw new Error('recorder not started');
    const version = execFileSync(process.env['DRACHTIO_BIN'] ?? 'drachtio', ['--version'], { encoding: 'utf8' }).trim();
    const frames = recorder.frames();
    await saveRecording(join(RECORDINGS_DIR, `${name}.json`), { name, recordedWith: `drachtio-server ${version}, Kamailio (Debian), sipp`, frames });
    console.log(`recorded ${name}: ${frames.length} frames`);
  } finally {
    await recorder?.stop();
    await stack.stop();
    silent?.close();
  }
}

const skip = e2eSkipReason();
if (skip) {
  console.error(`cannot record: ${skip}`);
  process.exit(2);
}
const wanted = process.argv.slice(2);
for (const name of wanted.length > 0 ? wanted : Object.keys(SCENARIOS)) await record(name);
