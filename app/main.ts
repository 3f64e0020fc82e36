#!/usr/bin/env node
// Entry point: read the configuration, start midreg, stop it cleanly on SIGTERM/SIGINT.
import { ConfigError, loadConfig } from './config.js';
import { startMidreg } from './service.js';
import { createLogger } from '../lib/ops/logger.js';

async function main(): Promise<void> {
  let config;
  try {
    config = loadConfig();
  } catch (err) {
    if (err instanceof ConfigError) {
      process.stderr.write(`midreg: ${err.message}\n`);
      process.exit(2);
    }
    throw err;
  }
  const logger = createLogger({ level: config.logLevel, format: config.logFormat });
  let service;
  try {
    service = await startMidreg(config, logger);
  } catch (err) {
    logger.error('cannot start', { error: err instanceof Error ? err.message : String(err) });
    process.exit(1);
  }
  service.admin.catch((err: unknown) => {
    logger.error('cannot start the admin API', { error: err instanceof Error ? err.message : String(err) });
    void service.stop().finally(() => process.exit(1));
  });
  let stopping = false;
  const stop = (signal: string): void => {
    if (stopping) { logger.warn('second signal: exiting now', { signal }); process.exit(1); }
    stopping = true;
    logger.info('stopping', { signal });
    service.stop().then(({ abandoned }) => {
      logger.info('stopped', { abandonedTransactions: abandoned });
      process.exit(0);
    }, (err: unknown) => {
      logger.error('stop failed', { error: err instanceof Error ? err.message : String(err) });
      process.exit(1);
    });
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
}

await main();
