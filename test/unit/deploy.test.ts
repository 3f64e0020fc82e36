// The deployment files are part of the product: the compose file must be valid for Docker
// Compose, and the drachtio-server config must match what midreg connects with.
import { strict as assert } from 'node:assert';
import { execFileSync, spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { REPO_ROOT } from '../support/processes.js';

const hasCompose = spawnSync('docker-compose', ['version'], { stdio: 'ignore' }).status === 0;

describe('deployment files', () => {
  it('docker-compose.yml validates and refuses to start without the required settings', { skip: hasCompose ? false : 'docker-compose not installed (Debian package docker-compose)' }, () => {
    const file = join(REPO_ROOT, 'docker-compose.yml');
    const env = { ...process.env, MIDREG_UPSTREAM: 'sip:10.0.0.5:5060', MIDREG_DOMAINS: 'example.test' };
    const resolved = execFileSync('docker-compose', ['-f', file, 'config'], { env, encoding: 'utf8' });
    assert.match(resolved, /MIDREG_UPSTREAM: sip:10\.0\.0\.5:5060/);
    assert.match(resolved, /drachtio\.conf\.xml:\/etc\/drachtio\.conf\.xml/);
    const missing = spawnSync('docker-compose', ['-f', file, 'config', '-q'], { env: { PATH: process.env['PATH'] ?? '' }, encoding: 'utf8' });
    assert.notEqual(missing.status, 0);
    assert.match(missing.stderr, /MIDREG_UPSTREAM/);
  });

  it('drachtio.conf.xml listens for SIP on UDP and TCP 5060 and has the admin secret compose uses', () => {
    const xml = readFileSync(join(REPO_ROOT, 'drachtio.conf.xml'), 'utf8');
    const admin = /<admin port="(\d+)" secret="([^"]+)">([^<]+)<\/admin>/.exec(xml);
    assert.ok(admin, 'admin element');
    assert.equal(admin[1], '9022');
    const compose = readFileSync(join(REPO_ROOT, 'docker-compose.yml'), 'utf8');
    assert.ok(compose.includes(`DRACHTIO_SECRET:-${admin[2]}`), 'compose default secret matches drachtio.conf.xml');
    assert.match(xml, /<contact>sip:\*:5060;transport=udp,tcp<\/contact>/);
  });

  it('drachtio.conf.xml as shipped opens no listener that needs a certificate (drachtio-server exits without one), and has TLS and WSS ready to switch on', () => {
    const xml = readFileSync(join(REPO_ROOT, 'drachtio.conf.xml'), 'utf8');
    const active = xml.replace(/<!--[\s\S]*?-->/g, '');
    assert.doesNotMatch(active, /<contact>sips:/, 'no sips: listener outside a comment');
    assert.doesNotMatch(active, /<tls>/, 'no <tls> block outside a comment');
    assert.match(active, /<contact>sip:\*:8088;transport=ws<\/contact>/, 'WebSocket needs no certificate and is on');
    const enabled = xml.replace(/<!-- enable-tls:\n([\s\S]*?)\n\s*:enable-tls -->/g, '$1').replace(/<!--[\s\S]*?-->/g, '');
    assert.match(enabled, /<contact>sips:\*:5061;transport=tls<\/contact>/);
    assert.match(enabled, /<contact>sips:\*:8089;transport=wss<\/contact>/);
    assert.match(enabled, /<tls>\s*<key-file>[^<]+<\/key-file>\s*<cert-file>[^<]+<\/cert-file>\s*<chain-file>[^<]+<\/chain-file>\s*<\/tls>/);
  });
});
