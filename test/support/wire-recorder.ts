// TCP man-in-the-middle between a drachtio-srf app and a real drachtio-server: the app connects
// to the recorder instead of the server, bytes are forwarded both ways untouched, and every
// complete frame is logged. Used to capture recordings that wire-replay.ts plays back in CI.

import { mkdir, readFile, writeFile } from 'node:fs/promises';
import net from 'node:net';
import { dirname } from 'node:path';
import { performance } from 'node:perf_hooks';

import { FrameParser, listenOnLoopback, rIdOf, tokensOf, type WireDir, type WireFrame } from './wire-frame.js';

export type { WireDir, WireFrame } from './wire-frame.js';

export interface WireRecorderOptions {
  /** the real drachtio-server admin (app) port */
  target: { host: string; port: number };
}

export interface WireRecorder {
  /** port on 127.0.0.1 the app should connect to instead of the server */
  port: number;
  /** frames logged so far (pings and their pongs left out), oldest first; a copy */
  frames(): WireFrame[];
  /** closes the listener and every proxied connection */
  stop(): Promise<void>;
}

export interface WireRecording {
  name: string;
  /** e.g. the drachtio-server version the frames were captured against */
  recordedWith: string;
  frames: WireFrame[];
}

export async function startWireRecorder(opts: WireRecorderOptions): Promise<WireRecorder> {
  const t0 = performance.now();
  const frames: WireFrame[] = [];
  const sockets = new Set<net.Socket>();

  const server = net.createServer((app) => {
    const upstream = net.connect({ host: opts.target.host, port: opts.target.port });
    sockets.add(app);
    sockets.add(upstream);
    app.setNoDelay(true);
    upstream.setNoDelay(true);

    // msgIds of the app's pings on this connection: the pings and the server's pongs are not logged
    const pings = new Set<string>();
    const log = (dir: WireDir, payload: string): void => {
      const tok = tokensOf(payload);
      if (dir === 'toServer' && tok[1] === 'ping') {
        pings.add(tok[0] ?? '');
        return;
      }
      if (dir === 'toApp') {
        const rId = rIdOf(payload);
        if (rId !== undefined && pings.delete(rId)) return;
      }
      frames.push({ dir, payload, t: Math.round(performance.now() - t0) });
    };

    const tap = (from: net.Socket, to: net.Socket, dir: WireDir): void => {
      const parser = new FrameParser();
      let broken = false;
      from.on('data', (chunk: Buffer) => {
        to.write(chunk);
        if (broken) return;
        try {
          for (const payload of parser.push(chunk)) log(dir, payload);
        } catch (err) {
          // keep forwarding so the session under test is unaffected, but stop logging this direction
          broken = true;
          process.emitWarning(`wire-recorder: ${dir} stream unparseable, no longer logged: ${String(err)}`);
        }
      });
      from.on('end', () => to.end());
      from.on('close', () => {
        sockets.delete(from);
        to.destroy();
      });
      from.on('error', () => to.destroy());
    };
    tap(app, upstream, 'toServer');
    tap(upstream, app, 'toApp');
  });

  const port = await listenOnLoopback(server, 'wire-recorder');

  return {
    port,
    frames: () => frames.map((f) => ({ ...f })),
    stop: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        sockets.clear();
        server.close(() => resolve());
      }),
  };
}

const isFrame = (x: unknown): x is WireFrame => {
  if (typeof x !== 'object' || x === null) return false;
  const o = x as Record<string, unknown>;
  return (o.dir === 'toServer' || o.dir === 'toApp') && typeof o.payload === 'string' && typeof o.t === 'number';
};

/** Writes a recording as pretty-printed JSON with a fixed key order (diff-friendly). */
export async function saveRecording(file: string, recording: WireRecording): Promise<void> {
  const stable: WireRecording = {
    name: recording.name,
    recordedWith: recording.recordedWith,
    frames: recording.frames.map((f) => ({ dir: f.dir, t: f.t, payload: f.payload })),
  };
  await mkdir(dirname(file), { recursive: true });
  await writeFile(file, `${JSON.stringify(stable, null, 2)}\n`, 'utf8');
}

/** Reads a recording written by saveRecording; throws if the file does not have that shape. */
export async function loadRecording(file: string): Promise<WireRecording> {
  const data: unknown = JSON.parse(await readFile(file, 'utf8'));
  if (typeof data !== 'object' || data === null) throw new Error(`${file}: not a wire recording`);
  const o = data as Record<string, unknown>;
  if (typeof o.name !== 'string' || typeof o.recordedWith !== 'string' || !Array.isArray(o.frames)) {
    throw new Error(`${file}: not a wire recording (needs name, recordedWith, frames)`);
  }
  const frames: WireFrame[] = [];
  o.frames.forEach((f: unknown, i: number) => {
    if (!isFrame(f)) throw new Error(`${file}: frames[${i}] is not {dir, t, payload}`);
    frames.push({ dir: f.dir, payload: f.payload, t: f.t });
  });
  return { name: o.name, recordedWith: o.recordedWith, frames };
}
