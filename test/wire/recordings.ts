import { join } from 'node:path';
import { REPO_ROOT } from '../support/sipp.js';

/** Wire exchanges recorded from the real drachtio-server by test/wire/record.ts. */
export const RECORDINGS_DIR = join(REPO_ROOT, 'test', 'wire', 'recordings');
