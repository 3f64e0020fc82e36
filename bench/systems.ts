// The systems under test, each in front of its own fresh Kamailio registrar
// (test/kamailio/kamailio.cfg, `open*` users need no auth):
//   midreg     drachtio-server + node dist/app/main.js
//   reference  drachtio-server + bench/reference-app.ts, REGISTER relayed as a new request
//   proxy      drachtio-server + bench/reference-app.ts, REGISTER via srf.proxyRequest
//   kamailio   Kamailio with bench/kamailio-peer.cfg (t_relay + save() from the reply, lookup())
//   opensips   OpenSIPS 3.5.9 mid_registrar (../shared/peers/opensips/start.sh): mode 0, contact
//              mirroring like midreg, for REGISTER; restarted in mode 2 (AoR throttling) for MESSAGE,
//              since in mode 0 its lookup only finds a Request-URI carrying its own ;ctid=
import { existsSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { probeGroup, probeProcess, type CpuProbe } from './cpu.js';
import { runProbe } from './probe.js';
import {
  BENCH_DIR, delay, freePort, KAMAILIO_CFG, OPENSIPS_PKG_MB, OPENSIPS_SHM_MB, OPENSIPS_START, startDrachtio, startKamailio, startMidreg, startOpensips,
  startReference, type DrachtioService, type KamailioService, type OpensipsService, type Service,
} from './procs.js';

export const SYSTEM_IDS = ['midreg', 'reference', 'proxy', 'kamailio', 'opensips'] as const;
export type SystemId = (typeof SYSTEM_IDS)[number];

export const SYSTEM_LABELS: Record<SystemId, string> = {
  midreg: 'midreg',
  reference: 'drachtio reference (relay)',
  proxy: 'drachtio reference (proxy)',
  kamailio: 'Kamailio peer',
  opensips: 'OpenSIPS mid_registrar (mode 0; MESSAGE: mode 2)',
};

export type SweepKind = 'register' | 'message';

/** OpenSIPS' mid_registrar mode per sweep: 0 (contact mirroring, midreg's default) for REGISTER; 2 for MESSAGE. */
export const OPENSIPS_MODE: Record<SweepKind, 0 | 2> = { register: 0, message: 2 };

/** A system's label for one sweep (the OpenSIPS rows name the mode they ran in). */
export function sweepLabel(id: SystemId, kind: SweepKind): string {
  return id === 'opensips' ? `OpenSIPS mid_registrar (mode ${OPENSIPS_MODE[kind]})` : SYSTEM_LABELS[id];
}

/** Why a system cannot run on this machine (undefined: it can). */
export function systemUnavailable(id: SystemId): string | undefined {
  if (id === 'opensips' && !existsSync(OPENSIPS_START)) return `skipped: no OpenSIPS peer at ${OPENSIPS_START}`;
  return undefined;
}

/** Notes for the report, per system measured. */
export const SYSTEM_NOTES: Partial<Record<SystemId, string>> = {
  opensips: `OpenSIPS 3.5.9 mid_registrar (../shared/peers/opensips, started by its start.sh with -m ${OPENSIPS_SHM_MB} -M ${OPENSIPS_PKG_MB} (MB) like the Kamailio processes, `
    + '2 UDP + 2 TCP workers, usrloc in memory) relays to its Kamailio registrar over UDP, as the Kamailio peer does (the drachtio systems use --upstream-transport, TCP by default). '
    + 'REGISTER row: mode 0, contact mirroring (midreg\'s default; every relayed Contact rewritten to OpenSIPS with ;ctid=). '
    + 'MESSAGE row: OpenSIPS restarted in mode 2 (AoR throttling), whose mid_registrar_lookup() finds the AoR; in mode 0 it only finds a Request-URI carrying the ;ctid= it wrote, and answers 404 to a MESSAGE for the plain AoR. '
    + 'Its CPU is its whole process group (main + workers)',
};

export interface SystemOptions {
  workDir: string;
  /** Overrides drachtio.conf.xml's <loglevel> (undefined: as shipped). */
  drachtioLoglevel?: string;
  midregLogLevel: string;
  /** How the drachtio systems reach their registrar (the Kamailio peer stays on UDP). */
  upstreamTransport: 'udp' | 'tcp';
  /** Extra environment for midreg (a setting under test, e.g. MIDREG_OVERLOAD_QUEUE_MS=0). */
  midregEnv: Record<string, string>;
}

export interface RunningSystem {
  id: SystemId;
  label: string;
  /** 127.0.0.1:port where UAs send SIP. */
  target: string;
  registrar: KamailioService;
  /** CPU probes of the system's processes (sipp is added by the bench). */
  probes(): CpuProbe[];
  /** Called before each sweep (OpenSIPS: restarted in the mode that sweep runs in). */
  beforeSweep?(kind: SweepKind): Promise<void>;
  /** midreg/reference only: restart the Node app, optionally under `node --cpu-prof`. */
  restartApp?(cpuProfile?: { dir: string; name: string }): Promise<void>;
  /** Paths of log files, for failure reports. */
  logs(): string[];
  stop(): Promise<void>;
}

export async function startSystem(id: SystemId, opts: SystemOptions): Promise<RunningSystem> {
  const dir = join(opts.workDir, id);
  mkdirSync(join(dir, 'reg'), { recursive: true });
  const registrar = await startKamailio(join(dir, 'reg'), { cfg: KAMAILIO_CFG, name: 'kamailio-registrar', tcp: true });
  const udpUpstream = `sip:127.0.0.1:${registrar.port}`;
  const started: Service[] = [registrar];
  // drachtio-srf reports "connected" before drachtio-server routes requests to it: for the first
  // ~150 ms drachtio answers 503 itself. Ready = a REGISTER gets its 200 (OpenSIPS: the same).
  const ready = async (target: string, what: string): Promise<void> => {
    const deadline = Date.now() + 10_000;
    for (let n = 0; ; n++) {
      const r = await runProbe({ kind: 'register', target, rate: 1, count: 1, domain: 'example.test', prefix: `openready${Date.now()}x${n}`, timeoutMs: 1000 });
      if (r.ok === 1) return;
      if (Date.now() > deadline) throw new Error(`${what} does not answer REGISTER with 200 (${JSON.stringify(r.statuses)})`);
      await delay(100);
    }
  };
  try {
    if (id === 'opensips') {
      const port = await freePort();
      let peer: OpensipsService | undefined;
      const logs: string[] = [];
      const stopPeer = async (): Promise<void> => {
        if (!peer) return;
        const p = peer;
        peer = undefined;
        logs.push(p.logFile);
        await p.stop();
      };
      const launch = async (mode: 0 | 2): Promise<void> => {
        const peerDir = join(dir, `opensips-mode${mode}-${Date.now()}`);
        mkdirSync(peerDir, { recursive: true });
        // the same port in every mode: the bench's target does not move
        peer = await startOpensips(peerDir, { mode, registrar: udpUpstream, port });
        await ready(`127.0.0.1:${port}`, `OpenSIPS mid_registrar (mode ${mode})`);
      };
      try {
        await launch(OPENSIPS_MODE.register);
      } catch (err) {
        await stopPeer();
        throw err;
      }
      return {
        id, label: SYSTEM_LABELS[id], target: `127.0.0.1:${port}`, registrar,
        probes: () => [...(peer ? [probeGroup('opensips', peer.pid)] : []), probeGroup('kamailio-registrar', registrar.pid)],
        beforeSweep: async (kind) => {
          if (peer?.mode !== OPENSIPS_MODE[kind]) { await stopPeer(); await launch(OPENSIPS_MODE[kind]); }
        },
        logs: () => [...logs, ...(peer ? [peer.logFile] : []), registrar.logFile],
        stop: async () => { await stopPeer(); await registrar.stop(); },
      };
    }

    if (id === 'kamailio') {
      mkdirSync(join(dir, 'peer'), { recursive: true });
      const peer = await startKamailio(join(dir, 'peer'), {
        cfg: join(BENCH_DIR, 'kamailio-peer.cfg'), name: 'kamailio-peer', defines: [`UPSTREAM="${udpUpstream}"`],
      });
      started.push(peer);
      return {
        id, label: SYSTEM_LABELS[id], target: `127.0.0.1:${peer.port}`, registrar,
        probes: () => [probeGroup('kamailio-peer', peer.pid), probeGroup('kamailio-registrar', registrar.pid)],
        logs: () => [peer.logFile, registrar.logFile],
        stop: async () => { await peer.stop(); await registrar.stop(); },
      };
    }

    const upstream = opts.upstreamTransport === 'tcp' ? `${udpUpstream};transport=tcp` : udpUpstream;
    const drachtio: DrachtioService = await startDrachtio(dir, opts.drachtioLoglevel ? { loglevel: opts.drachtioLoglevel } : {});
    started.push(drachtio);
    const launch = async (cpuProfile?: { dir: string; name: string }): Promise<Service> => {
      const base = { workDir: dir, ...(cpuProfile ? { cpuProfile } : {}) };
      if (id === 'midreg') {
        return startMidreg({
          ...base,
          env: {
            DRACHTIO_HOST: '127.0.0.1',
            DRACHTIO_PORT: String(drachtio.adminPort),
            DRACHTIO_SECRET: drachtio.secret,
            MIDREG_UPSTREAM: upstream,
            MIDREG_DOMAINS: 'example.test',
            MIDREG_DB: join(dir, 'midreg.sqlite'),
            MIDREG_UPSTREAM_TIMEOUT_MS: '4000',
            MIDREG_LOG_FORMAT: 'json',
            MIDREG_LOG_LEVEL: opts.midregLogLevel,
            // every bench UA is on 127.0.0.1: trusted, so MESSAGE senders need no registration
            // and the per-source flood guard does not shed the load generator
            MIDREG_TRUSTED_PEERS: '127.0.0.1',
            ...opts.midregEnv,
          },
        });
      }
      return startReference({
        ...base,
        mode: id === 'proxy' ? 'proxy' : 'relay',
        env: { DRACHTIO_PORT: String(drachtio.adminPort), DRACHTIO_SECRET: drachtio.secret, REF_UPSTREAM: upstream },
      });
    };
    const drachtioReady = (): Promise<void> => ready(`127.0.0.1:${drachtio.sipPort}`, SYSTEM_LABELS[id]);
    let app = await launch();
    await drachtioReady();
    return {
      id, label: SYSTEM_LABELS[id], target: `127.0.0.1:${drachtio.sipPort}`, registrar,
      probes: () => [probeProcess('drachtio', drachtio.pid), probeProcess('node', app.pid), probeGroup('kamailio-registrar', registrar.pid)],
      logs: () => [app.logFile, drachtio.logFile, registrar.logFile],
      async restartApp(cpuProfile) {
        await app.stop(10_000);
        app = await launch(cpuProfile);
        await drachtioReady();
      },
      async stop() {
        await app.stop(10_000);
        await drachtio.stop();
        await registrar.stop();
      },
    };
  } catch (err) {
    for (const svc of started.reverse()) await svc.stop();
    throw err;
  }
}
