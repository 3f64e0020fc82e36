// Runs midreg in-process (real drachtio-srf client, real SQLite file) against a fake
// drachtio-server replaying one recording, and hands the tests what midreg sent.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after } from 'node:test';
import { loadConfig } from '../../app/config.js';
import { startMidreg } from '../../app/service.js';
import { LocationStore } from '../../lib/store/location-store.js';
import { createLogger } from '../../lib/ops/logger.js';
import type { Binding } from '../../lib/registrar/registration.js';
import { findFrames, sipOf, tokensOf, type WireFrame } from '../support/wire-frame.js';
import { loadRecording } from '../support/wire-recorder.js';
import { startWireReplay } from '../support/wire-replay.js';
import { RECORDINGS_DIR } from './recordings.js';

const workDir = mkdtempSync(join(tmpdir(), 'midreg-wire-'));
after(() => rmSync(workDir, { recursive: true, force: true }));

export interface Replayed {
  /** Frames midreg sent to the (fake) drachtio-server. */
  sent: WireFrame[];
  /** The recorded frames drachtio-server sent to midreg. */
  recorded: WireFrame[];
  replica(user: string): Binding[];
}

export async function replay(name: string, env: Record<string, string> = {}): Promise<Replayed> {
  const recording = await loadRecording(join(RECORDINGS_DIR, `${name}.json`));
  const upstream = recordedUpstream(recording.frames);
  const server = await startWireReplay({ frames: recording.frames });
  const dbFile = join(workDir, `${name}.sqlite`);
  const config = loadConfig({
    DRACHTIO_PORT: String(server.port), DRACHTIO_SECRET: 'replayed', MIDREG_UPSTREAM: `sip:${upstream}`, MIDREG_TRUSTED_PEERS: upstream,
    MIDREG_DOMAINS: 'example.test', MIDREG_DB: dbFile, MIDREG_LOG_LEVEL: 'error', ...env,
  });
  const midreg = await startMidreg(config, createLogger({ level: 'error', format: 'json' }));
  try {
    await server.done;
  } finally {
    await midreg.stop();
    await server.stop();
  }
  return {
    sent: server.received,
    recorded: recording.frames.filter((f) => f.dir === 'toApp'),
    replica(user) {
      const store = new LocationStore(dbFile, { readonly: true });
      try { return store.liveBindings(`sip:${user}@example.test`, Date.now()); } finally { store.close(); }
    },
  };
}

/** Responses midreg sent back to UAs, in order. */
export const uaResponses = (r: Replayed): string[] => findFrames(r.sent, { type: 'sip' }).map((f) => sipOf(f) ?? '').filter((s) => s.startsWith('SIP/2.0'));
/** REGISTERs midreg sent to the registrar. */
export const upstreamRegisters = (r: Replayed): string[] => findFrames(r.sent, { type: 'sip', method: 'REGISTER' }).map((f) => sipOf(f) ?? '');
/** The registrar's replies as drachtio-server delivered them. */
export const registrarReplies = (r: Replayed): string[] => findFrames(r.recorded, { type: 'sip', source: 'network' }).map((f) => sipOf(f) ?? '').filter((s) => s.startsWith('SIP/2.0'));
/** The REGISTERs UAs sent, as drachtio-server delivered them, with the source drachtio saw. */
export const uaRegisters = (r: Replayed): Array<{ sip: string; address: string; port: number }> =>
  findFrames(r.recorded, { type: 'sip', method: 'REGISTER' }).map((f) => ({ sip: sipOf(f) ?? '', address: tokensOf(f)[5] ?? '', port: Number(tokensOf(f)[6]) }));

/** The registrar midreg relayed to when the recording was made (the proxy token of its first relayed request). */
function recordedUpstream(frames: readonly WireFrame[]): string {
  for (const frame of findFrames(frames, { dir: 'toServer', type: 'sip' })) {
    const proxy = tokensOf(frame)[4];
    if (proxy?.startsWith('sip:')) return proxy.slice(4).split('\r')[0] ?? '';
  }
  return '127.0.0.1:5070';
}

/** Requests of `method` midreg sent out (relayed upstream or delivered to UAs). */
export const sentRequests = (r: Replayed, method: string): string[] => findFrames(r.sent, { type: 'sip', method }).map((f) => sipOf(f) ?? '');
/** Frames asking drachtio-server to proxy a request, with the destination midreg chose. */
export const proxyCommands = (r: Replayed): Array<{ destination: string; sip: string }> =>
  findFrames(r.sent, { type: 'proxy' }).map((f) => ({ destination: (f.payload.split('\r\n')[0] ?? '').split('|').slice(9).join('|'), sip: sipOf(f) ?? '' }));
