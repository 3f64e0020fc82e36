// Child processes a test run started: killed when the test process exits, however it exits, so
// no Kamailio, sipp, drachtio-server or midreg outlives the suite that started it.
import type { ChildProcess } from 'node:child_process';

const live = new Map<ChildProcess, (child: ChildProcess) => void>();
let exitHookInstalled = false;

/** Track `child` until it exits; `kill` (default: SIGKILL the child) runs if the test process exits first. */
export function trackChild(child: ChildProcess, kill: (child: ChildProcess) => void = (c) => c.kill('SIGKILL')): void {
  live.set(child, kill);
  child.once('exit', () => live.delete(child));
  if (!exitHookInstalled) {
    exitHookInstalled = true;
    process.once('exit', () => {
      for (const [c, killIt] of live) killIt(c);
    });
  }
}
