// Paging over a real replica file, and the small lookups the admin API and the CLI share.
import { strict as assert } from 'node:assert';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { defaultAdminUrl } from '../../app/cli.js';
import { aorLookupKey, aorSearchPrefix, liveBindingPages } from '../../lib/ops/binding-view.js';
import { SqliteStore } from '../../lib/store/sqlite-store.js';
import { binding } from './fixtures.js';

const dir = mkdtempSync(join(tmpdir(), 'midreg-view-'));
const sqlite = new SqliteStore(join(dir, 'paging.sqlite'));
const store = sqlite.bindings;
after(async () => {
  await sqlite.close();
  rmSync(dir, { recursive: true, force: true });
});
const NOW = Date.now();
const save = (aor: string, contacts: string[], expiresAt = NOW + 60_000): void =>
  sqlite.replica.replaceAor(aor, contacts.map((c) => binding(aor, c, expiresAt)));

save('sip:a@example.test', ['sip:a@h1']);
save('sip:al@example.test', Array.from({ length: 7 }, (_, i) => `sip:al@10.0.0.${i}`));
save('sip:alb@example.test', ['sip:alb@h1', 'sip:alb@h2']);
save('sip:am@example.test', ['sip:am@h1']);
save('sip:gone@example.test', ['sip:gone@h1'], NOW - 1);
save('sip:jö@example.test', ['sip:jo@h1']);
save('sip:jø@example.test', ['sip:jo@h2']);

/** `aor contact` of every binding paged through; a pager that never ends fails instead of hanging. */
async function keys(pages: AsyncIterable<Array<{ aor: string; contact: string }>>): Promise<string[]> {
  const seen: string[] = [];
  let count = 0;
  for await (const page of pages) {
    if (++count > 100) assert.fail('paging does not end');
    seen.push(...page.map((b) => `${b.aor} ${b.contact}`));
  }
  return seen;
}

describe('paging the replica', () => {
  it('returns every live binding once, in order, whatever the batch size', async () => {
    const all = await keys(liveBindingPages(store, NOW, { batch: 1000 }));
    assert.equal(all.length, 1 + 7 + 2 + 1 + 2);
    assert.deepEqual(all, [...all].sort());
    assert.ok(!all.some((k) => k.startsWith('sip:gone@')));
    for (const batch of [1, 2, 3, 5, 13]) {
      assert.deepEqual(await keys(liveBindingPages(store, NOW, { batch })), all, `batch ${batch}`);
    }
  });

  it('limits to AoRs starting with a prefix, also across pages and past non-ASCII text', async () => {
    const al = await keys(liveBindingPages(store, NOW, { batch: 3, aorPrefix: 'sip:al' }));
    assert.equal(al.length, 9);
    assert.deepEqual([...new Set(al.map((k) => k.split(' ')[0]))], ['sip:al@example.test', 'sip:alb@example.test']);
    assert.deepEqual(await keys(liveBindingPages(store, NOW, { batch: 3, aorPrefix: 'sip:jö' })), ['sip:jö@example.test sip:jo@h1']);
    assert.deepEqual(await keys(liveBindingPages(store, NOW, { batch: 3, aorPrefix: 'sip:zz' })), []);
  });
});

describe('AoR lookups', () => {
  it('bring what an operator types to the canonical, lower-case form', () => {
    for (const typed of ['sip:alice@example.com', 'SIP:Alice@Example.COM', ' <sip:alice@example.com> ', 'alice@example.com']) {
      assert.equal(aorLookupKey(typed), 'sip:alice@example.com', typed);
    }
    assert.equal(aorLookupKey('sips:Bob@example.com'), 'sips:bob@example.com');
    assert.equal(aorSearchPrefix('Al'), 'sip:al');
    assert.equal(aorSearchPrefix('sips:al'), 'sips:al');
    assert.equal(aorSearchPrefix('  '), '');
  });

  it('find the admin API from the service variables, through loopback for a wildcard address', () => {
    assert.equal(defaultAdminUrl({}), undefined);
    assert.equal(defaultAdminUrl({ MIDREG_ADMIN_PORT: '9100' }), 'http://127.0.0.1:9100');
    assert.equal(defaultAdminUrl({ MIDREG_ADMIN_PORT: '9100', MIDREG_ADMIN_HOST: '0.0.0.0' }), 'http://127.0.0.1:9100');
    assert.equal(defaultAdminUrl({ MIDREG_ADMIN_PORT: '9100', MIDREG_ADMIN_HOST: '::' }), 'http://[::1]:9100');
    assert.equal(defaultAdminUrl({ MIDREG_ADMIN_PORT: '9100', MIDREG_ADMIN_HOST: '10.0.0.5' }), 'http://10.0.0.5:9100');
    assert.equal(defaultAdminUrl({ MIDREG_ADMIN_PORT: '9100', MIDREG_ADMIN_URL: 'https://midreg.example/admin' }), 'https://midreg.example/admin');
  });
});
