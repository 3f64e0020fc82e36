// Redis for the tests: Debian's redis-server on 127.0.0.1 and free ports, one server (appendonly
// on, fsync on every write) or a three-master Cluster made with redis-cli --cluster create.
import { spawnSync } from 'node:child_process';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { freePort, spawnProc, type Proc } from './processes.js';

export const REDIS_SERVER = process.env['REDIS_SERVER_BIN'] ?? '/usr/bin/redis-server';
export const REDIS_CLI = process.env['REDIS_CLI_BIN'] ?? '/usr/bin/redis-cli';

/** Why Redis tests cannot run here (undefined when they can); an error under MIDREG_E2E=required. */
export function redisSkipReason(): string | undefined {
  const version = spawnSync(REDIS_SERVER, ['--version'], { encoding: 'utf8', timeout: 10_000 });
  const reason = version.status === 0 ? undefined : `${REDIS_SERVER} does not run (Debian package redis-server)`;
  if (reason !== undefined && process.env['MIDREG_E2E'] === 'required') throw new Error(`MIDREG_E2E=required but Redis tests cannot run: ${reason}`);
  return reason;
}

export interface RedisServer {
  port: number;
  dir: string;
  proc: Proc;
  url: string;
  /** Stop (SIGKILL: a crash, not a clean shutdown) and start again on the same port and files. */
  restart(signal?: NodeJS.Signals): Promise<void>;
  stop(): Promise<void>;
}

async function launch(port: number, dir: string, extra: string[]): Promise<Proc> {
  mkdirSync(dir, { recursive: true });
  const proc = spawnProc(REDIS_SERVER, [
    '--port', String(port), '--bind', '127.0.0.1', '--dir', dir, '--save', '', '--appendonly', 'yes', '--appendfsync', 'always',
    '--protected-mode', 'yes', '--loglevel', 'notice', ...extra,
  ], { name: `redis-server:${port}` });
  await proc.waitFor(/Ready to accept connections/, 10_000);
  return proc;
}

export async function startRedis(workDir: string): Promise<RedisServer> {
  const port = await freePort();
  const dir = join(workDir, `redis-${port}`);
  const server: RedisServer = {
    port,
    dir,
    proc: await launch(port, dir, []),
    url: `redis://127.0.0.1:${port}`,
    async restart(signal = 'SIGKILL') {
      await server.proc.stop(signal);
      server.proc = await launch(port, dir, []);
    },
    async stop() { await server.proc.stop('SIGTERM'); },
  };
  return server;
}

export interface RedisCluster {
  ports: number[];
  procs: Proc[];
  url: string;
  /** Kill -9 every master and start them again on their files (appendonly, nodes.conf): the cluster comes back whole. */
  restart(): Promise<void>;
  stop(): Promise<void>;
}

async function untilClusterOk(port: number): Promise<void> {
  // The nodes learn of each other over the bus; the cluster answers once every slot is served.
  const deadline = Date.now() + 20_000;
  for (;;) {
    const info = spawnSync(REDIS_CLI, ['-p', String(port), 'cluster', 'info'], { encoding: 'utf8' });
    if (/cluster_state:ok/.test(info.stdout)) return;
    if (Date.now() > deadline) throw new Error(`Redis Cluster not ok after 20 s: ${info.stdout}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

/** Three masters, no replicas, slots spread by redis-cli --cluster create. */
export async function startRedisCluster(workDir: string): Promise<RedisCluster> {
  const ports = [await freePort(), await freePort(), await freePort()];
  // The cluster bus listens on port + 10000: all three must be free too.
  const procs: Proc[] = [];
  const args = (port: number): string[] => ['--cluster-enabled', 'yes', '--cluster-config-file', join(workDir, `cluster-${port}`, 'nodes.conf'), '--cluster-node-timeout', '2000'];
  for (const port of ports) procs.push(await launch(port, join(workDir, `cluster-${port}`), args(port)));
  const create = spawnSync(REDIS_CLI, ['--cluster', 'create', ...ports.map((p) => `127.0.0.1:${p}`), '--cluster-replicas', '0', '--cluster-yes'], { encoding: 'utf8', timeout: 30_000 });
  if (create.status !== 0) throw new Error(`redis-cli --cluster create failed: ${create.stdout}${create.stderr}`);
  await untilClusterOk(ports[0] as number);
  return {
    ports,
    procs,
    url: `redis+cluster://${ports.map((p) => `127.0.0.1:${p}`).join(',')}`,
    async restart() {
      for (const p of procs) await p.stop('SIGKILL');
      for (const [i, port] of ports.entries()) procs[i] = await launch(port, join(workDir, `cluster-${port}`), args(port));
      await untilClusterOk(ports[0] as number);
    },
    async stop() { for (const p of procs) await p.stop('SIGTERM'); },
  };
}
