// What the throttling suites (contact and AoR mode) look at from outside: which REGISTERs reached
// the registrar, midreg's metrics, and a condition that becomes true within a deadline.
import { strict as assert } from 'node:assert';
import { logLines } from './processes.js';
import type { Stack } from './stack.js';

/** CSeqs of the REGISTERs with this Call-ID that Kamailio received (its log prefix carries both). */
export function upstreamCseqs(stack: Stack, callId: string): number[] {
  const escaped = callId.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
  const re = new RegExp(`\\{\\d+ (\\d+) REGISTER ${escaped}\\}.*REGISTER sip:\\S+ from \\d+\\.\\d+\\.\\d+\\.\\d+:\\d+ \\(`, 'g');
  return [...(stack.kamailio?.log() ?? '').matchAll(re)].map((m) => Number(m[1]));
}

/** The first defined value `probe` gives within `deadlineMs`, polled every 100 ms; fails the test otherwise. */
export async function until<T>(what: string, deadlineMs: number, probe: () => Promise<T | undefined> | T | undefined): Promise<T> {
  const deadline = Date.now() + deadlineMs;
  for (;;) {
    const value = await probe();
    if (value !== undefined) return value;
    if (Date.now() > deadline) assert.fail(`${what}: not within ${deadlineMs} ms`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** One series of midreg's /metrics (NaN when absent). */
export async function metric(port: number, series: string): Promise<number> {
  const text = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
  const line = text.split('\n').find((l) => l.startsWith(`${series} `));
  return line === undefined ? Number.NaN : Number(line.slice(series.length + 1));
}

/**
 * Exactly one line of midreg's log matching `fields`, waited for: midreg logs a relayed REGISTER
 * once drachtio-server has already passed the reply on, so the UA (and Kamailio) can be ahead of
 * the log by a moment.
 */
export async function loggedOnce(midreg: Parameters<typeof logLines>[0], fields: Parameters<typeof logLines>[1]): Promise<void> {
  await until(`log line ${JSON.stringify(fields)}`, 2000, () => logLines(midreg, fields)[0]);
  assert.equal(logLines(midreg, fields).length, 1, `one log line ${JSON.stringify(fields)}`);
}
