// winston logger: JSON lines in production, one readable line per event in a terminal.
import winston from 'winston';

export type Logger = winston.Logger;

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
  return winston.createLogger({ level: opts.level, format, transports: [new winston.transports.Console({ stderrLevels: [] })] });
}
