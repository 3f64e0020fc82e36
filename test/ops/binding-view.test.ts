// Paging over a real replica file, and the small lookups the admin API and the CLI share.
import { strict as assert } from 'node:assert';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { defaultAdminUrl } from '../../app/cli.js';
import { aorLookupKey, aorSearchPrefix, liveBindingPages } from '../../lib/ops/binding-view.js';
import { LocationStore } from '../../lib/store/location-store.js';
import { binding } from './fixtures.js';

const dir = mkdtempSync(join(tmpdir(), 'midreg-view-'));
const store = new LocationStore(join(dir, 'paging.sqlite'));
after(() => {
  store.close();
  rmSync(dir, { recursive: true, force: true });
});
const NOW = Date.now();
const save = (aor: string, contacts: string[], expiresAt = NOW + 60_000): void =>
  store.replaceAor(aor, contacts.map((c) => binding(aor, c, expiresAt)));

save('sip:a@example.test', ['sip:a@h1']);
save('sip:al@example.test', Array.from({ length: 7 }, (_, i) => `sip:al@10.0.0.${i}`));
save('sip:alb@example.test', ['sip:alb@h1', 'sip:alb@h2']);
save('sip:am@example.test', ['sip:am@h1']);
save('sip:gone@example.test', ['sip:gone@h1'], NOW - 1);
save('sip:jö@example.test', ['sip:jo@h1']);
save('sip:jø@example.test', ['sip:jo@h2']);

/** `aor contact` of every binding paged through; a pager that never ends fails instead of hanging. */
function keys(pages: Iterable<Array<{ aor: string; contact: string }>>): string[] {
  const seen: string[] = [];
  let count = 0;
  for (const page of pages) {
    if (++count > 100) assert.fail('paging does not end');
    seen.push(...page.map((b) => `${b.aor} ${b.contact}`));
  }
  return seen;
}

describe('paging the replica', () => {
  it('returns every live binding once, in order, whatever the batch size', () => {
    const all = keys(liveBindingPages(store, NOW, { batch: 1000 }));
    assert.equal(all.length, 1 + 7 + 2 + 1 + 2);
    assert.deepEqual(all, [...all].sort());
    assert.ok(!all.some((k) => k.startsWith('sip:gone@')));
    for (const batch of [1, 2, 3, 5, 13]) {
      assert.deepEqual(keys(liveBindingPages(store, NOW, { batch })), all, `batch ${batch}`);
    }
  });

  it('limits to AoRs starting with a prefix, also across pages and past non-ASCII text', () => {
    const al = keys(liveBindingPages(store, NOW, { batch: 3, aorPrefix: 'sip:al' }));
    assert.equal(al.length, 9);
    assert.deepEqual([...new Set(al.map((k) => k.split(' ')[0]))], ['sip:al@example.test', 'sip:alb@example.test']);
    assert.deepEqual(keys(liveBindingPages(store, NOW, { batch: 3, aorPrefix: 'sip:jö' })), ['sip:jö@example.test sip:jo@h1']);
    assert.deepEqual(keys(liveBindingPages(store, NOW, { batch: 3, aorPrefix: 'sip:zz' })), []);
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
