// winston logger: JSON lines in production, one readable line per event in a terminal.
import winston from 'winston';
import Transport from 'winston-transport';

export type Logger = winston.Logger;

const MESSAGE = Symbol.for('message');

/**
 * Every line to stdout, the way winston's Console transport writes it, minus the `setImmediate`
 * it schedules per line to emit 'logged' (which nothing here listens to). At one info line per
 * SIP decision that timer cost about 7 µs per REGISTER in a micro-bench; winston's share of the
 * bench's REGISTER profile fell from 9.4 % to 4.1 % without it (bench/results).
 */
class StdoutTransport extends Transport {
  override log(info: Record<string | symbol, unknown>, done: () => void): void {
    process.stdout.write(`${String(info[MESSAGE])}\n`);
    done();
  }
}

export function createLogger(opts: { level: string; format: 'json' | 'pretty' }): Logger {
  const format = opts.format === 'json'
    ? winston.format.combine(winston.format.timestamp(), winston.format.json())
    : winston.format.combine(
      winston.format.timestamp({ format: 'HH:mm:ss.SSS' }),
      winston.format.printf(({ timestamp, level, message, ...meta }) => {
        const rest = Object.entries(meta).map(([k, v]) => `${k}=${typeof v === 'string' ? v : JSON.stringify(v)}`).join(' ');
        return `${String(timestamp)} ${level.toUpperCase().padEnd(5)} ${String(message)}${rest ? ` ${rest}` : ''}`;
      }),
    );
  return winston.createLogger({ level: opts.level, format, transports: [new StdoutTransport()] });
}
