// A fake drachtio-server that replays a recording (see wire-recorder.ts) to a real drachtio-srf
// app. It walks the recorded frames in order: `toApp` frames are sent to the app, `toServer`
// frames are expectations the app's next frame must meet. Pings are answered at any time.

import { randomUUID } from 'node:crypto';
import net from 'node:net';
import { performance } from 'node:perf_hooks';

import {
  describeFrame,
  encodeFrame,
  FrameParser,
  listenOnLoopback,
  methodOf,
  startLineOf,
  statusOf,
  tokensOf,
  type WireFrame,
} from './wire-frame.js';

export type { WireDir, WireFrame, FrameQuery } from './wire-frame.js';
export {
  bodyOf,
  describeFrame,
  findFrame,
  findFrames,
  frameMatches,
  header,
  headerLines,
  headers,
  methodOf,
  msgIdOf,
  rIdOf,
  sipOf,
  startLineOf,
  statusOf,
  tokensOf,
  typeOf,
} from './wire-frame.js';

export interface WireReplayOptions {
  /** the recording to play back (WireRecording.frames) */
  frames: readonly WireFrame[];
  /** how long to wait for each expected app frame; default 3000 */
  stepTimeoutMs?: number;
  /**
   * 'asap' (default): a toApp frame goes out as soon as the frames before it are done.
   * 'recorded': it goes out no earlier than its recorded gap after the previous frame, so
   * timing-dependent flows (e.g. a transaction timeout answered after 32 s) keep their pace.
   */
  pace?: 'asap' | 'recorded';
  /**
   * true (default): consecutive toApp frames (in 'recorded' pace: those with the same t) are
   * written with one socket write, so the app parses them in a single 'data' event, as it does
   * when the real server's frames coalesce in one TCP segment. That is the worst case for
   * handlers that attach listeners a microtask late (e.g. `await srf.request(...)` then
   * `req.on('response')` loses a response arriving right behind the request's echo), and it
   * makes such races show up deterministically instead of now and then.
   */
  coalesce?: boolean;
}

export interface WireReplay {
  /** port on 127.0.0.1 the app connects to (any secret is accepted) */
  port: number;
  /** the live frames the app sent (pings left out), in arrival order; t is ms since start */
  received: WireFrame[];
  /** resolves after the last recorded frame; rejects on a mismatch, a step timeout or a disconnect */
  done: Promise<void>;
  /** closes the listener and the app connection; a replay still running fails with 'stopped' */
  stop(): Promise<void>;
}

export class WireReplayError extends Error {
  override name = 'WireReplayError';
}

/** What must agree between a recorded app frame and the live one. */
function kindOf(frame: WireFrame | string): string {
  const tok = tokensOf(frame);
  const type = tok[1] ?? '';
  switch (type) {
    case 'sip': {
      const method = methodOf(frame);
      if (method !== undefined) return `sip request ${method}`;
      const status = statusOf(frame);
      // a response goes to the transaction named by the stackTxnId the server sent in the request
      // frame; those ids are replayed verbatim, so they must match too
      if (status !== undefined) return `sip response ${status} (txn ${tok[2] ?? ''})`;
      return 'sip (no SIP message)';
    }
    case 'route':
    case 'remove_route':
      return `${type}|${tok[2] ?? ''}`;
    default:
      return type;
  }
}

const shorten = (s: string, max = 160): string => (s.length > max ? `${s.slice(0, max)}...` : s);
const firstLine = (f: WireFrame | string): string => {
  const payload = typeof f === 'string' ? f : f.payload;
  const sl = startLineOf(payload);
  const cr = payload.indexOf('\r');
  const lead = cr === -1 ? payload : payload.slice(0, cr);
  return shorten(sl !== undefined ? `${lead} / ${sl}` : lead);
};

export async function startWireReplay(opts: WireReplayOptions): Promise<WireReplay> {
  const frames = opts.frames;
  const stepTimeoutMs = opts.stepTimeoutMs ?? 3000;
  const pace = opts.pace ?? 'asap';
  const coalesce = opts.coalesce ?? true;
  const t0 = performance.now();
  const now = (): number => Math.round(performance.now() - t0);

  const received: WireFrame[] = [];
  const idMap = new Map<string, string>(); // recorded app msgId -> live app msgId
  const sockets = new Set<net.Socket>();
  let app: net.Socket | undefined; // the connection the replay is driving
  let step = 0;
  let finished = false;
  let pending: string[] = []; // live non-ping app payloads not yet matched
  let wake: (() => void) | undefined;

  let resolveDone!: () => void;
  let rejectDone!: (err: Error) => void;
  const done = new Promise<void>((resolve, reject) => {
    resolveDone = resolve;
    rejectDone = reject;
  });
  // a failed replay is reported through `done`; never let it crash the process unobserved
  done.catch(() => undefined);

  const where = (): string => `wire replay step ${step + 1}/${frames.length}`;
  const fail = (msg: string): void => {
    if (finished) return;
    finished = true;
    rejectDone(new WireReplayError(`${where()}: ${msg}`));
    wake?.();
  };

  /** sleeps up to ms; woken early by an app frame arriving or the replay ending */
  const nap = (ms: number): Promise<void> =>
    new Promise<void>((resolve) => {
      const timer = setTimeout(resolve, ms);
      wake = () => {
        clearTimeout(timer);
        resolve();
      };
    }).finally(() => {
      wake = undefined;
    });

  const sleepUntil = async (deadline: number): Promise<void> => {
    for (let left = deadline - performance.now(); left > 0 && !finished; left = deadline - performance.now()) {
      await nap(left);
    }
  };

  const nextAppFrame = async (): Promise<string | undefined> => {
    const deadline = performance.now() + stepTimeoutMs;
    for (let left = stepTimeoutMs; pending.length === 0 && !finished && left > 0; left = deadline - performance.now()) {
      await nap(left);
    }
    return pending.shift();
  };

  /** `response|<recorded rId>` becomes `response|<live rId>`; undefined if the rId is unknown */
  const rewriteForApp = (payload: string): string | undefined => {
    const tok = tokensOf(payload);
    if (tok[1] !== 'response') return payload;
    const liveRid = idMap.get(tok[2] ?? '');
    if (liveRid === undefined) return undefined;
    const prefix = `${tok[0] ?? ''}|response|${tok[2] ?? ''}`;
    return `${tok[0] ?? ''}|response|${liveRid}${payload.slice(prefix.length)}`;
  };

  const walk = async (sock: net.Socket): Promise<void> => {
    let lastStepAt = performance.now();
    for (; step < frames.length && !finished; step++) {
      const rec = frames[step];
      if (rec === undefined) break;
      if (rec.dir === 'toApp') {
        if (pace === 'recorded') {
          const prev = frames[step - 1];
          await sleepUntil(lastStepAt + (prev === undefined ? 0 : rec.t - prev.t));
          if (finished) return;
        }
        if (sock.destroyed) {
          fail(`app connection closed before ${describeFrame(rec)} could be sent`);
          return;
        }
        // this frame plus the toApp frames right after it that go out at the same moment
        const batch: Buffer[] = [];
        for (;;) {
          const cur = frames[step];
          if (cur === undefined) break;
          const out = rewriteForApp(cur.payload);
          if (out === undefined) {
            fail(`recorded ${describeFrame(cur)} answers msgId ${tokensOf(cur)[2] ?? ''},` +
              ' which no earlier toServer frame of the recording carries');
            return;
          }
          batch.push(encodeFrame(out));
          const next = frames[step + 1];
          if (!coalesce || next?.dir !== 'toApp' || (pace === 'recorded' && next.t !== cur.t)) break;
          step++;
        }
        sock.write(Buffer.concat(batch));
        lastStepAt = performance.now();
        continue;
      }

      const live = await nextAppFrame();
      if (finished) return;
      if (live === undefined) {
        fail(`expected the app to send ${kindOf(rec)} within ${stepTimeoutMs} ms, nothing arrived` +
          ` (recorded: ${firstLine(rec)})`);
        return;
      }
      const want = kindOf(rec);
      const got = kindOf(live);
      if (want !== got) {
        fail(`expected the app to send ${want}, got ${got}\n  recorded: ${firstLine(rec)}\n  live:     ${firstLine(live)}`);
        return;
      }
      idMap.set(tokensOf(rec)[0] ?? '', tokensOf(live)[0] ?? '');
      lastStepAt = performance.now();
    }
    if (!finished) {
      finished = true;
      resolveDone();
    }
  };

  const server = net.createServer((sock) => {
    sockets.add(sock);
    sock.setNoDelay(true);
    sock.on('close', () => sockets.delete(sock));
    sock.on('error', () => undefined);

    if (app !== undefined) {
      // one app connection drives the replay; later ones only get pings answered
      process.emitWarning('wire-replay: extra app connection ignored (replay is driven by the first one)');
    } else {
      app = sock;
      sock.on('close', () => {
        if (!finished) fail(`the app closed the connection (${received.length} frames received)`);
      });
    }
    const driving = app === sock;
    const parser = new FrameParser();
    sock.on('data', (chunk: Buffer) => {
      let payloads: string[];
      try {
        payloads = parser.push(chunk);
      } catch (err) {
        if (driving) fail(`app sent an unparseable frame: ${String(err)}`);
        sock.destroy();
        return;
      }
      for (const payload of payloads) {
        const tok = tokensOf(payload);
        if (tok[1] === 'ping') {
          // what drachtio-server answers (BaseClient::createResponseMsg(id, msg, true, "pong"))
          sock.write(encodeFrame(`${randomUUID()}|response|${tok[0] ?? ''}|OK|pong`));
          continue;
        }
        if (!driving) continue;
        received.push({ dir: 'toServer', payload, t: now() });
        if (!finished) {
          pending.push(payload);
          wake?.();
        }
      }
    });
    if (driving) void walk(sock);
  });

  const port = await listenOnLoopback(server, 'wire-replay');

  return {
    port,
    received,
    done,
    stop: () =>
      new Promise<void>((resolve) => {
        fail('replay stopped before the recording was finished');
        pending = [];
        for (const s of sockets) s.destroy();
        sockets.clear();
        server.close(() => resolve());
      }),
  };
}

/** The same kind test the replay applies to app frames, for callers comparing frames themselves. */
export function sameKind(a: WireFrame | string, b: WireFrame | string): boolean {
  return kindOf(a) === kindOf(b);
}
