import { strict as assert } from 'node:assert';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { ConfigError, loadConfig } from '../../app/config.js';

const minimal = { DRACHTIO_SECRET: 's3cret', MIDREG_UPSTREAM: 'sip:pbx.example.com:5060', MIDREG_DOMAINS: 'Example.test, other.test' };

describe('configuration', () => {
  it('runs with only the documented variables set, applying defaults', () => {
    const config = loadConfig(minimal);
    assert.deepEqual(config.drachtio, { host: '127.0.0.1', port: 9022, secret: 's3cret' });
    assert.deepEqual(config.domains, ['example.test', 'other.test']);
    assert.equal(config.upstreamTimeoutMs, 8000);
    assert.equal(config.addPath, true);
  });

  it('throttling: mirror by default; contact with its defaults, with either insertion; aor accepted, without Path by default', () => {
    assert.deepEqual([loadConfig(minimal).mode, loadConfig(minimal).outgoingExpiresSec, loadConfig(minimal).refreshMarginSec], ['mirror', 3600, 60]);
    const contact = loadConfig({ ...minimal, MIDREG_MODE: 'contact', MIDREG_OUTGOING_EXPIRES: '1800', MIDREG_REFRESH_MARGIN_SEC: '30' });
    assert.deepEqual([contact.mode, contact.outgoingExpiresSec, contact.refreshMarginSec, contact.insertion], ['contact', 1800, 30, 'path']);
    assert.equal(loadConfig({ ...minimal, MIDREG_MODE: 'contact', MIDREG_INSERTION: 'contact' }).insertion, 'contact');
    const aor = loadConfig({ ...minimal, MIDREG_MODE: 'aor' });
    assert.deepEqual([aor.mode, aor.addPath], ['aor', false]);
    assert.equal(loadConfig({ ...minimal, MIDREG_MODE: 'aor', MIDREG_ADD_PATH: 'true' }).addPath, true);
    assert.throws(() => loadConfig({ ...minimal, MIDREG_MODE: 'AoR' }), (err: unknown) => err instanceof ConfigError && err.problems.some((p) => p.startsWith('MIDREG_MODE')));
    assert.throws(() => loadConfig({ ...minimal, MIDREG_OUTGOING_EXPIRES: '10' }), (err: unknown) => err instanceof ConfigError && err.problems.some((p) => p.startsWith('MIDREG_OUTGOING_EXPIRES')));
  });

  it('names every bad setting on its own line and never echoes the secret', () => {
    try {
      loadConfig({ DRACHTIO_PORT: 'ninety', MIDREG_UPSTREAM: 'http://x', MIDREG_DOMAINS: ' , ', MIDREG_LOG_LEVEL: 'loud' });
      assert.fail('expected ConfigError');
    } catch (err) {
      assert.ok(err instanceof ConfigError);
      const settings = err.problems.map((p) => p.split(':')[0]);
      assert.deepEqual(settings.sort(), ['DRACHTIO_PORT', 'DRACHTIO_SECRET', 'MIDREG_DOMAINS', 'MIDREG_LOG_LEVEL', 'MIDREG_UPSTREAM']);
    }
    try {
      loadConfig({ ...minimal, DRACHTIO_SECRET: '' , MIDREG_UPSTREAM_TIMEOUT_MS: '5' });
      assert.fail('expected ConfigError');
    } catch (err) {
      assert.ok(err instanceof ConfigError);
      assert.ok(!err.message.includes('s3cret'));
      assert.ok(err.problems.some((p) => p.startsWith('MIDREG_UPSTREAM_TIMEOUT_MS')));
    }
  });

  it('reads a JSON file, lets the environment override it, and rejects unknown keys', () => {
    const dir = mkdtempSync(join(tmpdir(), 'midreg-cfg-'));
    const file = join(dir, 'midreg.json');
    writeFileSync(file, JSON.stringify({ upstream: 'sip:10.0.0.5', domains: ['a.test'], drachtioSecret: 'x', upstreamTimeoutMs: 3000 }));
    const config = loadConfig({ MIDREG_CONFIG: file, MIDREG_UPSTREAM_TIMEOUT_MS: '4000' });
    assert.equal(config.upstream, 'sip:10.0.0.5');
    assert.equal(config.upstreamTimeoutMs, 4000);
    writeFileSync(file, JSON.stringify({ upstream: 'sip:10.0.0.5', domains: ['a.test'], drachtioSecret: 'x', typo: 1 }));
    assert.throws(() => loadConfig({ MIDREG_CONFIG: file }), /unknown setting "typo"/);
    writeFileSync(file, '{not json');
    assert.throws(() => loadConfig({ MIDREG_CONFIG: file }), /MIDREG_CONFIG: cannot read/);
  });

  it('MIDREG_DOMAINS takes IP literals for phones provisioned by IP; IPv6 is bracketed; a port is refused with a clear reason', () => {
    const config = loadConfig({ ...minimal, MIDREG_DOMAINS: 'example.com, 203.0.113.5, 2001:DB8::5, [2001:db8::6]' });
    assert.deepEqual(config.domains, ['example.com', '203.0.113.5', '[2001:db8::5]', '[2001:db8::6]']);
    for (const bad of ['203.0.113.5:5060', '[2001:db8::5]:5060', 'exa mple.com']) {
      try {
        loadConfig({ ...minimal, MIDREG_DOMAINS: bad });
        assert.fail(`expected ConfigError for ${bad}`);
      } catch (err) {
        assert.ok(err instanceof ConfigError);
        assert.match(err.message, bad.includes(':5060') ? /without a port/ : /neither a host name nor an IP address/);
      }
    }
  });
});
