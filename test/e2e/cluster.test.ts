// End to end: two midreg nodes (each its own drachtio-server) sharing one replica in Redis, with
// Kamailio as the registrar. A phone registered through node B gets a MESSAGE sent through node A
// on B's flow (it arrives from B's SIP port); with node B killed the same MESSAGE fails at once
// (480, not a transaction timeout) and a registration through A brings delivery back; a Redis
// crash (kill -9, appendonly on) loses no acknowledged binding; with Redis down REGISTER is still
// relayed and answered, MESSAGE gets 503 and /health says why. Once against one redis-server,
// once against a three-master Redis Cluster, all on 127.0.0.1 and free ports.
import { strict as assert } from 'node:assert';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { RedisStore } from '../../lib/store/redis-store.js';
import { describeTarget, parseStoreUrl } from '../../lib/store/store-url.js';
import { startKamailio, type Kamailio } from '../support/kamailio.js';
import { e2eSkipReason, freePort, startDrachtio, startMidregProcess, type Drachtio, type MidregProc } from '../support/processes.js';
import { SipPeer, type Received } from '../support/raw-sip.js';
import { rawRequest } from '../support/raw-ua.js';
import { redisSkipReason, startRedis, startRedisCluster, type RedisCluster, type RedisServer } from '../support/redis.js';
import { sipDomain, untilServing } from '../support/stack.js';
import { NODE_TTL_MS, HEARTBEAT_MS } from '../../lib/cluster/node-directory.js';
import { REPLICA_RETRY_MS } from '../../lib/registrar/registration-relay.js';

const skip = e2eSkipReason() ?? redisSkipReason();
if (skip) console.log(`# e2e cluster suite SKIPPED: ${skip}`);

const answers200 = (req: { method?: string }): { status: number; reason: string } | undefined => (req.method === 'MESSAGE' ? { status: 200, reason: 'OK' } : undefined);
const messagesAt = (peer: SipPeer): Received[] => peer.received.filter((m) => m.method === 'MESSAGE');

interface Node { drachtio: Drachtio; midreg: MidregProc; adminPort: number; uri: string }

async function until(what: string, test: () => boolean | Promise<boolean>, timeoutMs = 15_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await test())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

async function health(node: Node): Promise<{ status: number; body: Record<string, unknown> }> {
  const res = await fetch(`http://127.0.0.1:${node.adminPort}/health`);
  return { status: res.status, body: (await res.json()) as Record<string, unknown> };
}

for (const kind of ['redis', 'cluster'] as const) {
  describe(`two nodes on one ${kind === 'redis' ? 'redis-server' : 'three-master Redis Cluster'} (Kamailio registrar)`, { skip: skip ?? false, timeout: 240_000 }, () => {
    const workDir = mkdtempSync(join(tmpdir(), 'mr-cl-'));
    let kamailio: Kamailio;
    let redis: RedisServer | undefined;
    let cluster: RedisCluster | undefined;
    let storeUrl = '';
    let upstream = '';
    const nodes: Node[] = [];
    const peers: SipPeer[] = [];
    const domain = sipDomain('name', 0);

    const startNode = async (): Promise<Node> => {
      const drachtio = await startDrachtio(workDir);
      const adminPort = await freePort();
      const midreg = startMidregProcess({
        DRACHTIO_HOST: '127.0.0.1', DRACHTIO_PORT: String(drachtio.adminPort), DRACHTIO_SECRET: drachtio.secret,
        MIDREG_UPSTREAM: upstream, MIDREG_DOMAINS: domain.host, MIDREG_DB: join(workDir, `unused-${drachtio.sipPort}.sqlite`),
        MIDREG_STORE: storeUrl, MIDREG_UPSTREAM_TIMEOUT_MS: '2000', MIDREG_TRUSTED_PEERS: upstream.replace(/^sip:/, ''),
        MIDREG_ADMIN_PORT: String(adminPort),
      });
      await midreg.waitFor(/node on shared store/, 15_000);
      const node = { drachtio, midreg, adminPort, uri: `sip:127.0.0.1:${drachtio.sipPort};lr` };
      await untilServing(drachtio.sipPort);
      await until('the node to report healthy', async () => (await health(node)).status === 200);
      return node;
    };
    const send = async (node: Node, peer: SipPeer, method: 'REGISTER' | 'MESSAGE', user: string, opts: { to?: string; body?: string } = {}): Promise<number[]> =>
      (await rawRequest({ domain, drachtio: { sipPort: node.drachtio.sipPort } }, peer, method, user, opts)).statuses;
    const openStore = async (): Promise<RedisStore> => {
      const target = parseStoreUrl(storeUrl, '');
      assert.ok(target.kind === 'redis');
      const store = new RedisStore(target, describeTarget(target));
      assert.ok(await store.connect(10_000));
      return store;
    };

    before(async () => {
      const kport = await freePort();
      kamailio = await startKamailio({ port: kport, workDir: join(workDir, 'k'), defines: [] });
      upstream = `sip:127.0.0.1:${kport}`;
      if (kind === 'redis') { redis = await startRedis(workDir); storeUrl = redis.url; } else { cluster = await startRedisCluster(workDir); storeUrl = cluster.url; }
      nodes.push(await startNode(), await startNode());
    });
    after(async () => {
      for (const p of peers) await p.close();
      for (const n of nodes) { await n.midreg.stop('SIGTERM'); await n.drachtio.stop('SIGTERM'); }
      await kamailio?.stop();
      await redis?.stop();
      await cluster?.stop();
      if (!process.env['MIDREG_KEEP_E2E']) rmSync(workDir, { recursive: true, force: true });
    });

    it('a phone registered through node B gets a MESSAGE sent through node A, on B\'s flow', async () => {
      const [a, b] = nodes as [Node, Node];
      const alice = await SipPeer.open();
      const bob = await SipPeer.open({ answer: answers200 });
      peers.push(alice, bob);
      assert.deepEqual(await send(a, alice, 'REGISTER', 'openalice'), [200]);
      assert.deepEqual(await send(b, bob, 'REGISTER', 'openbob'), [200]);

      const store = await openStore();
      try {
        const [held] = await store.bindings.liveBindings(domain.aor('openbob'), Date.now());
        assert.equal(held?.node, b.uri, 'the binding names the node holding bob\'s flow');
      } finally {
        await store.close();
      }

      assert.deepEqual(await send(a, alice, 'MESSAGE', 'openalice', { to: 'openbob', body: 'via A' }), [200]);
      const got = messagesAt(bob).at(-1);
      assert.equal(got?.body.toString('utf8'), 'via A');
      assert.equal(got?.fromPort, b.drachtio.sipPort, 'delivered from node B\'s SIP port, where bob\'s NAT pinhole is');
    });

    it('a MESSAGE from an address that is not a live node is not relayed as if a node sent it', async () => {
      const [, b] = nodes as [Node, Node];
      // A stranger sending straight to node B, naming bob's contact: not a peer node, not registered.
      const stranger = await SipPeer.open();
      peers.push(stranger);
      assert.deepEqual(await send(b, stranger, 'MESSAGE', 'mallory', { to: 'openbob', body: 'spoof' }), [403]);
    });

    it('node B killed: the MESSAGE fails at once (480); bob registering again through A restores delivery', async () => {
      const [a, b] = nodes as [Node, Node];
      const [alice, bob] = peers as [SipPeer, SipPeer];
      await b.midreg.stop('SIGKILL');
      await b.drachtio.stop('SIGKILL');
      // The heartbeat runs out; A re-reads the nodes once a second.
      await new Promise((r) => setTimeout(r, NODE_TTL_MS + 2 * HEARTBEAT_MS));
      const before = messagesAt(bob).length;
      assert.deepEqual(await send(a, alice, 'MESSAGE', 'openalice', { to: 'openbob', body: 'B is gone' }), [480],
        '480 from A itself: no transaction timeout (408) waiting on the dead node');
      assert.equal(messagesAt(bob).length, before);

      assert.deepEqual(await send(a, bob, 'REGISTER', 'openbob'), [200]);
      assert.deepEqual(await send(a, alice, 'MESSAGE', 'openalice', { to: 'openbob', body: 'via A again' }), [200]);
      const got = messagesAt(bob).at(-1);
      assert.equal(got?.body.toString('utf8'), 'via A again');
      assert.equal(got?.fromPort, a.drachtio.sipPort);
    });

    it('a Redis crash (kill -9, appendonly) loses no acknowledged binding; meanwhile REGISTER is relayed, MESSAGE gets 503, /health says so', async () => {
      const [a] = nodes as [Node, Node];
      const [alice, bob] = peers as [SipPeer, SipPeer];
      const carol = await SipPeer.open();
      peers.push(carol);
      if (redis) {
        await redis.proc.stop('SIGKILL');
        await until('node A to notice Redis is gone', async () => (await health(a)).status === 503);
        const down = await health(a);
        assert.equal(down.body['database'], 'not_writable');
        assert.match(String((down.body['reasons'] as string[])[0]), /redis/i);
        assert.deepEqual(await send(a, carol, 'REGISTER', 'opencarol'), [200], 'REGISTER still relayed and answered by the registrar');
        assert.deepEqual(await send(a, alice, 'MESSAGE', 'openalice', { to: 'openbob', body: 'redis down' }), [503]);
        await redis.restart('SIGKILL');
      } else {
        await cluster?.restart();
      }
      await until('node A to use Redis again', async () => (await health(a)).status === 200, 30_000);
      const store = await openStore();
      try {
        for (const user of ['openalice', 'openbob']) {
          assert.equal((await store.bindings.liveBindings(domain.aor(user), Date.now())).length, 1, `${user}'s acknowledged binding survived`);
        }
      } finally {
        await store.close();
      }
      assert.deepEqual(await send(a, alice, 'MESSAGE', 'openalice', { to: 'openbob', body: 'after the crash' }), [200]);
      assert.equal(messagesAt(bob).at(-1)?.body.toString('utf8'), 'after the crash');
      if (redis) {
        // carol's 200 came while Redis was down: her next 2xx puts her into the replica (after the
        // REPLICA_RETRY_MS pause a failed write starts, so a dead store costs one failure a second).
        await new Promise((r) => setTimeout(r, REPLICA_RETRY_MS));
        assert.deepEqual(await send(a, carol, 'REGISTER', 'opencarol'), [200]);
        const again = await openStore();
        try { assert.equal((await again.bindings.liveBindings(domain.aor('opencarol'), Date.now())).length, 1, 'resynchronised from the next 2xx'); } finally { await again.close(); }
      }
    });
  });
}
