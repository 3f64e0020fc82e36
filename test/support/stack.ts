// The whole system for end-to-end suites and for recording wire exchanges: real Kamailio as the
// main registrar, real drachtio-server, and midreg, all on 127.0.0.1 and free ports.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startKamailio, type Kamailio } from './kamailio.js';
import { freePort, startDrachtio, startMidregProcess, type Drachtio, type MidregProc } from './processes.js';

export interface Stack {
  workDir: string;
  kamailio: Kamailio | undefined;
  drachtio: Drachtio;
  midreg: MidregProc;
  /** host:port where UAs send SIP (drachtio-server). */
  sipTarget: string;
  dbFile: string;
  midregEnv: Record<string, string>;
  restartMidreg(extraEnv?: Record<string, string>): Promise<MidregProc>;
  stop(): Promise<void>;
}

export interface StackOptions {
  /** Start Kamailio as the upstream (default), or point midreg at this URI instead. */
  upstream?: 'kamailio' | string;
  kamailioDefines?: string[];
  env?: Record<string, string>;
  /** Admin port midreg connects to, when something (a wire recorder) sits in between. */
  drachtioAdminPortForMidreg?: (drachtio: Drachtio) => Promise<number>;
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
  const drachtio = await startDrachtio(workDir);
  const adminPort = opts.drachtioAdminPortForMidreg ? await opts.drachtioAdminPortForMidreg(drachtio) : drachtio.adminPort;
  const dbFile = join(workDir, 'midreg.sqlite');
  const midregEnv: Record<string, string> = {
    DRACHTIO_HOST: '127.0.0.1',
    DRACHTIO_PORT: String(adminPort),
    DRACHTIO_SECRET: drachtio.secret,
    MIDREG_UPSTREAM: upstream,
    MIDREG_DOMAINS: 'example.test',
    MIDREG_DB: dbFile,
    MIDREG_UPSTREAM_TIMEOUT_MS: '2000',
    // UAs run on 127.0.0.1 too, so the platform is told apart by its port.
    MIDREG_TRUSTED_PEERS: upstream.replace(/^sips?:/, '').replace(/;.*$/, ''),
    ...opts.env,
  };
  const launch = async (env: Record<string, string>): Promise<MidregProc> => {
    const proc = startMidregProcess(env);
    await proc.waitFor(/connected to drachtio-server/, 15_000);
    return proc;
  };
  const stack: Stack = {
    workDir,
    kamailio,
    drachtio,
    midreg: await launch(midregEnv),
    sipTarget: `127.0.0.1:${drachtio.sipPort}`,
    dbFile,
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
      if (!process.env['MIDREG_KEEP_E2E']) rmSync(workDir, { recursive: true, force: true });
    },
  };
  return stack;
}
