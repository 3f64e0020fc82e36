// Pure decisions for several nodes on one store: MIDREG_STORE parsing, which node holds a
// binding, and how a request reaches it.
import { strict as assert } from 'node:assert';
import { describe, it } from 'node:test';
import { handledHere, holderOf, NodeDirectory, nodeHostPort, type NodeRegistry, type NodeView } from '../../lib/cluster/node-directory.js';
import { branchThrough } from '../../lib/messaging/routing.js';
import type { Binding } from '../../lib/registrar/registration.js';
import { describeTarget, parseStoreUrl, StoreUrlError } from '../../lib/store/store-url.js';

describe('MIDREG_STORE', () => {
  it('is the SQLite file MIDREG_DB when unset, or a file named with sqlite:', () => {
    assert.deepEqual(parseStoreUrl(undefined, './data/m.sqlite'), { kind: 'sqlite', file: './data/m.sqlite' });
    assert.deepEqual(parseStoreUrl('  ', 'x.sqlite'), { kind: 'sqlite', file: 'x.sqlite' });
    assert.deepEqual(parseStoreUrl('sqlite:/var/lib/midreg/m.sqlite', 'x'), { kind: 'sqlite', file: '/var/lib/midreg/m.sqlite' });
  });

  it('names one Redis server, with credentials, database and TLS', () => {
    assert.deepEqual(parseStoreUrl('redis://10.0.0.5:6380/2', ''), { kind: 'redis', mode: 'standalone', node: { host: '10.0.0.5', port: 6380 }, db: 2, tls: false });
    assert.deepEqual(parseStoreUrl('rediss://midreg:s%40cret@redis.example.com', ''), {
      kind: 'redis', mode: 'standalone', node: { host: 'redis.example.com', port: 6379 }, db: 0, tls: true, username: 'midreg', password: 's@cret',
    });
    assert.deepEqual(parseStoreUrl('redis://:pw@[::1]:7000', ''), { kind: 'redis', mode: 'standalone', node: { host: '::1', port: 7000 }, db: 0, tls: false, password: 'pw' });
  });

  it('names a Cluster by a seed list and a Sentinel master by name', () => {
    assert.deepEqual(parseStoreUrl('redis+cluster://10.0.0.1:7000,10.0.0.2:7001', ''), {
      kind: 'redis', mode: 'cluster', nodes: [{ host: '10.0.0.1', port: 7000 }, { host: '10.0.0.2', port: 7001 }], tls: false,
    });
    assert.deepEqual(parseStoreUrl('redis+sentinel://s1,s2:26380/mymaster/1', ''), {
      kind: 'redis', mode: 'sentinel', sentinels: [{ host: 's1', port: 26379 }, { host: 's2', port: 26380 }], name: 'mymaster', db: 1, tls: false,
    });
  });

  it('refuses what it cannot use, saying why, and never shows credentials', () => {
    for (const [bad, why] of [
      ['http://x', /must be redis/], ['redis://a:1,b:2', /one server/], ['redis+cluster://a:1/3', /database 0/],
      ['redis+sentinel://s1:26379', /master name/], ['redis://h:99999', /out of range/], ['redis://h/x', /database/],
    ] as const) {
      assert.throws(() => parseStoreUrl(bad, ''), (err: unknown) => err instanceof StoreUrlError && why.test(err.message), bad);
    }
    assert.equal(describeTarget(parseStoreUrl('redis://user:secret@h:1/0', '')), 'redis://h:1/0');
    assert.equal(describeTarget(parseStoreUrl('rediss+cluster://u:p@a:1,b:2', '')), 'rediss+cluster://a:1,b:2');
  });
});

function binding(node: string | undefined): Binding {
  return {
    aor: 'sip:bob@example.test', contact: 'sip:bob@198.51.100.7:5062', expiresAt: 10_000, q: null, instance: null, regId: null, path: null,
    callId: 'c', cseq: 1, userAgent: null, source: { address: '198.51.100.7', port: 5062, transport: 'udp' }, insertion: null,
    upstreamExpiresAt: null, lapsedAt: null, ...(node !== undefined ? { node } : {}), registeredAt: 1, updatedAt: 1,
  };
}

const view = (self: string, alive: string[]): NodeView => ({
  self: () => self,
  isAlive: (uri) => alive.map(nodeHostPort).includes(nodeHostPort(uri)),
  isPeer: () => false,
  confirm: () => Promise.resolve(),
  confirmPeer: () => Promise.resolve(false),
});

describe('the node holding a binding', () => {
  const A = 'sip:10.0.0.11:5060;lr';
  const B = 'sip:10.0.0.12:5060;lr';

  it('is this node for its own bindings, for bindings with no node, and on one node (no directory)', () => {
    assert.deepEqual(holderOf(binding(A), view(A, [A, B])), { kind: 'local' });
    assert.deepEqual(holderOf(binding('sip:10.0.0.11'), view(A, [A])), { kind: 'local' }, 'same host and port, written differently');
    assert.deepEqual(holderOf(binding(undefined), view(A, [A, B])), { kind: 'local' });
    assert.deepEqual(holderOf(binding(B), undefined), { kind: 'local' });
  });

  it('is a live peer, or a dead one, for another node\'s', () => {
    assert.deepEqual(holderOf(binding(B), view(A, [A, B])), { kind: 'peer', node: B });
    assert.deepEqual(holderOf(binding(B), view(A, [A])), { kind: 'dead-peer', node: B });
    assert.ok(!handledHere(binding(B), view(A, [A, B])), 'a live peer does its own background work');
    assert.ok(handledHere(binding(B), view(A, [A])), 'a dead peer\'s is done here');
  });
});

describe('reaching a binding through its node', () => {
  const B = 'sip:10.0.0.12:5060;lr';
  it('goes to the holding node with the contact as Request-URI', () => {
    const branch = branchThrough(binding(B), { kind: 'peer', node: B }, false, 500);
    assert.deepEqual(branch.kind === 'send' ? [branch.requestUri, branch.nextHop, branch.route] : branch, ['sip:bob@198.51.100.7:5062', B, undefined]);
  });
  it('goes straight to the flow when held here', () => {
    const branch = branchThrough(binding(B), { kind: 'local' }, false, 500);
    assert.ok(branch.kind === 'send' && branch.nextHop === 'sip:198.51.100.7:5062;transport=udp');
  });
  it('is 480 at once when the node is gone, and never passed on by a node that got it from a peer', () => {
    assert.deepEqual(branchThrough(binding(B), { kind: 'dead-peer', node: B }, false, 500), { kind: 'skip', binding: binding(B), status: 480, reason: 'Holding Node Down' });
    assert.deepEqual(branchThrough(binding(B), { kind: 'peer', node: B }, true, 500), { kind: 'skip', binding: binding(B), status: 480, reason: 'Not Held Here' });
  });
});

describe('the node directory', () => {
  const A = 'sip:10.0.0.11:5060;lr';
  const B = 'sip:10.0.0.12:5070;lr';
  function registry(): NodeRegistry & { alive: Map<string, boolean>; beats: string[]; fail: boolean } {
    const r = {
      alive: new Map<string, boolean>(), beats: [] as string[], fail: false,
      heartbeat(uri: string) { if (r.fail) return Promise.reject(new Error('redis down')); r.beats.push(uri); r.alive.set(uri, true); return Promise.resolve(); },
      nodes() { return r.fail ? Promise.reject(new Error('redis down')) : Promise.resolve([...r.alive].map(([uri, alive]) => ({ uri, alive }))); },
      leave(uri: string) { r.alive.set(uri, false); return Promise.resolve(); },
    };
    return r;
  }

  it('knows live peers by their SIP address, not itself, and keeps what it knew while Redis is down', async () => {
    const reg = registry();
    reg.alive.set(B, true);
    const errors: Array<string | undefined> = [];
    const dir = new NodeDirectory(reg, () => A, (e) => errors.push(e));
    await dir.beat();
    assert.deepEqual(reg.beats, [A]);
    assert.ok(dir.isPeer({ address: '10.0.0.12', port: 5070 }));
    assert.ok(!dir.isPeer({ address: '10.0.0.12', port: 5071 }), 'another port of that host is not the node');
    assert.ok(!dir.isPeer({ address: '10.0.0.11', port: 5060 }), 'itself is no peer');
    assert.ok(dir.isAlive(B) && dir.isAlive(A));
    reg.fail = true;
    await dir.beat();
    assert.ok(dir.isAlive(B), 'unchanged while the heartbeats cannot be read');
    assert.deepEqual(errors, ['redis down']);
    reg.fail = false;
    reg.alive.set(B, false);
    await dir.beat();
    assert.ok(!dir.isAlive(B) && !dir.isPeer({ address: '10.0.0.12', port: 5070 }), 'gone once its heartbeat is');
    assert.deepEqual(errors, ['redis down', undefined]);
  });

  it('reads the heartbeats again for a source or node it does not know yet, at most four times a second', async () => {
    const reg = registry();
    const dir = new NodeDirectory(reg, () => A);
    await dir.beat();
    reg.alive.set(B, true);
    // Within 250 ms of the last read: what is known stands.
    assert.equal(await dir.confirmPeer({ address: '10.0.0.12', port: 5070 }), false);
    await new Promise((r) => setTimeout(r, 260));
    assert.equal(await dir.confirmPeer({ address: '10.0.0.12', port: 5070 }), true, 'a node started since the last read');
    await dir.stop();
    assert.equal(reg.alive.get(A), false, 'a stopping node removes its heartbeat');
  });
});
