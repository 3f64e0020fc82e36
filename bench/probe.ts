// A low-rate latency probe that runs next to a sipp load step. sipp times responses with
// CLOCK_MONOTONIC_COARSE (4 ms ticks on this kernel), so its p50/p99 come in steps of 4 ms; the
// probe sends its own REGISTERs or MESSAGEs over UDP from 127.0.0.1 and times each final answer
// with process.hrtime (µs). Each probe is one request, never retransmitted: no answer within
// the timeout counts as lost.
import { createSocket } from 'node:dgram';
import { randomBytes } from 'node:crypto';
import { quantiles, type Quantiles } from './load.js';

export interface ProbeOptions {
  kind: 'register' | 'message';
  /** 127.0.0.1:port of the system under test. */
  target: string;
  rate: number;
  count: number;
  domain: string;
  /** REGISTER: AoR user prefix (distinct AoR per probe). MESSAGE: the receivers (cycled) and the sender. */
  prefix?: string;
  receivers?: string[];
  from?: string;
  timeoutMs: number;
}

export interface ProbeResult {
  sent: number;
  answered: number;
  ok: number;
  lost: number;
  statuses: Record<string, number>;
  us: Quantiles;
}

export async function runProbe(opts: ProbeOptions): Promise<ProbeResult> {
  const [host, portText] = opts.target.split(':');
  const port = Number(portText);
  if (host !== '127.0.0.1' || !Number.isFinite(port)) throw new Error(`probe target must be 127.0.0.1:<port>, got ${opts.target}`);
  const sock = createSocket('udp4');
  await new Promise<void>((resolve) => sock.bind(0, '127.0.0.1', () => resolve()));
  const local = sock.address().port;
  const tag = randomBytes(4).toString('hex');
  const pending = new Map<string, bigint>();
  const times: number[] = [];
  const statuses: Record<string, number> = {};
  let answered = 0;
  let ok = 0;
  sock.on('message', (buf) => {
    const text = buf.toString('utf8');
    const status = /^SIP\/2\.0 (\d{3})/.exec(text);
    const callId = /^(?:Call-ID|i)\s*:\s*(\S+)/im.exec(text);
    if (!status || !callId) return;
    const code = Number(status[1]);
    if (code < 200) return;
    const sentAt = pending.get(callId[1] ?? '');
    if (sentAt === undefined) return;
    pending.delete(callId[1] ?? '');
    answered++;
    statuses[String(code)] = (statuses[String(code)] ?? 0) + 1;
    if (code >= 200 && code < 300) {
      ok++;
      times.push(Number(process.hrtime.bigint() - sentAt) / 1000);
    }
  });
  const build = (n: number, callId: string): string => {
    const branch = `z9hG4bK-${tag}-${n}`;
    if (opts.kind === 'register') {
      const aor = `sip:${opts.prefix ?? 'openprobe'}${n}@${opts.domain}`;
      return [
        `REGISTER sip:${opts.domain} SIP/2.0`,
        `Via: SIP/2.0/UDP 127.0.0.1:${local};branch=${branch};rport`,
        'Max-Forwards: 70',
        `From: <${aor}>;tag=${tag}${n}`,
        `To: <${aor}>`,
        `Call-ID: ${callId}`,
        'CSeq: 1 REGISTER',
        `Contact: <sip:${opts.prefix ?? 'openprobe'}${n}@127.0.0.1:${local}>`,
        'Expires: 300',
        'User-Agent: midreg-bench-probe',
        'Content-Length: 0',
        '', '',
      ].join('\r\n');
    }
    const receivers = opts.receivers ?? [];
    const to = `sip:${receivers[n % Math.max(1, receivers.length)] ?? 'openrcv1'}@${opts.domain}`;
    const body = `probe ${n}`;
    return [
      `MESSAGE ${to} SIP/2.0`,
      `Via: SIP/2.0/UDP 127.0.0.1:${local};branch=${branch};rport`,
      'Max-Forwards: 70',
      `From: <sip:${opts.from ?? 'opensender1'}@${opts.domain}>;tag=${tag}${n}`,
      `To: <${to}>`,
      `Call-ID: ${callId}`,
      'CSeq: 1 MESSAGE',
      'User-Agent: midreg-bench-probe',
      'Content-Type: text/plain',
      `Content-Length: ${Buffer.byteLength(body)}`,
      '',
      body,
    ].join('\r\n');
  };
  const interval = 1000 / opts.rate;
  const started = Date.now();
  for (let n = 0; n < opts.count; n++) {
    const due = started + n * interval;
    const wait = due - Date.now();
    if (wait > 0) await new Promise((r) => setTimeout(r, wait));
    const callId = `probe-${tag}-${n}@127.0.0.1`;
    const msg = Buffer.from(build(n, callId));
    pending.set(callId, process.hrtime.bigint());
    sock.send(msg, port, '127.0.0.1');
  }
  const deadline = Date.now() + opts.timeoutMs;
  while (pending.size > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
  const lost = pending.size;
  sock.close();
  return { sent: opts.count, answered, ok, lost, statuses, us: quantiles(times) };
}
