// Shared by the ops suites: a replica file filled through LocationStore the way the relay fills it,
// and a logger whose every line the test can read.
import { Writable } from 'node:stream';
import winston from 'winston';
import type { LocationStore } from '../../lib/store/location-store.js';
import type { SqliteStore } from '../../lib/store/sqlite-store.js';
import type { AdminDeps } from '../../lib/ops/admin.js';
import type { Logger } from '../../lib/ops/logger.js';
import type { Binding } from '../../lib/registrar/registration.js';

export function binding(aor: string, contact: string, expiresAt: number, over: Partial<Binding> = {}): Binding {
  return {
    aor, contact, expiresAt, q: null, instance: null, regId: null, path: null, callId: `${aor}-call`, cseq: 1,
    userAgent: null, source: null, insertion: null, upstreamExpiresAt: null, lapsedAt: null, registeredAt: expiresAt - 3_600_000, updatedAt: expiresAt - 3_600_000, ...over,
  };
}

/** The replica the ops tests look at: 14 live bindings of 12 AoRs, and one expired AoR. */
export const ALICE_PHONE: Partial<Binding> = {
  q: 0.8,
  instance: '"<urn:uuid:00000000-0000-1000-8000-000a95a0e128>"',
  regId: 1,
  path: '<sip:edge.example.test;lr>',
  cseq: 7,
  userAgent: 'Yealink SIP-T46S 66.86.0.15',
  source: { address: '198.51.100.7', port: 5062, transport: 'udp' },
};

export function fillReplica(store: LocationStore, now: number): void {
  const save = (aor: string, bindings: Binding[]): void => store.replaceAor(aor, bindings);
  save('sip:alice@example.test', [
    binding('sip:alice@example.test', 'sip:alice@198.51.100.7:5062', now + 3_600_000, ALICE_PHONE),
    binding('sip:alice@example.test', 'sip:alice@203.0.113.9:40000;transport=tcp', now + 600_000, {
      q: 0.5, userAgent: 'Linphone/5.2', source: { address: '203.0.113.9', port: 40000, transport: 'tcp' },
    }),
    binding('sip:alice@example.test', 'sip:alice@10.1.1.1', now + 120_000),
  ]);
  save('sip:bob@example.test', [binding('sip:bob@example.test', 'sip:bob@192.0.2.20', now - 1)]);
  save('sip:carol@example.test', [binding('sip:carol@example.test', 'sip:carol@192.0.2.30:5060', now + 300_000, { userAgent: 'Zoiper' })]);
  for (let i = 0; i < 10; i++) {
    const aor = `sip:u${String(i).padStart(2, '0')}@example.test`;
    save(aor, [binding(aor, `sip:u${i}@192.0.2.${100 + i}:5060`, now + 1_800_000, { source: { address: `192.0.2.${100 + i}`, port: 5060, transport: 'udp' } })]);
  }
}

/** What the admin API reads, from a SQLite store through the store interface. */
export function adminStore(s: SqliteStore): AdminDeps['store'] {
  return {
    listLiveAfter: (now, opts) => s.bindings.listLiveAfter(now, opts),
    liveBindings: (aor, now) => s.bindings.liveBindings(aor, now),
    counts: (now) => s.bindings.counts(now),
    checkWritable: () => s.checkWritable(),
  };
}

export const LIVE_BINDINGS = 14;
export const LIVE_AORS = 12;

export function captureLogger(): { logger: Logger; lines: string[] } {
  const lines: string[] = [];
  const stream = new Writable({
    write(chunk: Buffer, _encoding, done) { lines.push(chunk.toString('utf8')); done(); },
  });
  const logger = winston.createLogger({ level: 'debug', format: winston.format.json(), transports: [new winston.transports.Stream({ stream })] });
  return { logger, lines };
}
