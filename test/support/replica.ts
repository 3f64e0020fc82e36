// Reading a stack's replica in tests, through the store interface, whichever store the stack runs
// (the SQLite file, opened read-only, or the Redis named by MIDREG_STORE).
import { LocationStore } from '../../lib/store/location-store.js';
import { RedisStore } from '../../lib/store/redis-store.js';
import { SqliteStore } from '../../lib/store/sqlite-store.js';
import type { Store } from '../../lib/store/store.js';
import { describeTarget, parseStoreUrl } from '../../lib/store/store-url.js';
import type { Binding } from '../../lib/registrar/registration.js';

/** What a stack's midreg was started with (test/support/stack.ts). */
export interface StoreEnv { midregEnv: Record<string, string> }

/** The store midreg of this stack uses, opened beside it (read-only for SQLite). */
export async function openStackStore(stack: StoreEnv): Promise<Store> {
  const target = parseStoreUrl(stack.midregEnv['MIDREG_STORE'], stack.midregEnv['MIDREG_DB'] ?? '');
  if (target.kind === 'sqlite') return new SqliteStore(target.file, { readonly: true });
  const store = new RedisStore(target, describeTarget(target));
  if (!await store.connect(5000)) throw new Error(`cannot reach ${describeTarget(target)}`);
  return store;
}

export async function withStackStore<T>(stack: StoreEnv, use: (store: Store) => Promise<T>): Promise<T> {
  const store = await openStackStore(stack);
  try { return await use(store); } finally { await store.close(); }
}

/** Live bindings of one AoR, highest q first, as operators see them (in AoR mode with the AoR's upstream registration). */
export function liveBindingsOf(stack: StoreEnv, aor: string, now = Date.now()): Promise<Binding[]> {
  return withStackStore(stack, (store) => store.bindings.liveBindingsView(aor, now));
}

/** Every live binding of the stack's store, through the store's own paging. */
export function allLiveBindings(stack: StoreEnv, now = Date.now()): Promise<Binding[]> {
  return withStackStore(stack, async (store) => {
    const all: Binding[] = [];
    for (;;) {
      const last = all.at(-1);
      const page = await store.bindings.listLiveAfter(now, { ...(last ? { after: { aor: last.aor, contact: last.contact } } : {}), limit: 1000 });
      all.push(...page);
      if (page.length < 1000) return all;
    }
  });
}

/** Every live binding in the SQLite file at `dbFile`, opened read-only (SQLite-only suites). */
export function allLiveBindingsInFile(dbFile: string, now = Date.now()): Binding[] {
  const store = new LocationStore(dbFile, { readonly: true });
  try {
    const all: Binding[] = [];
    for (;;) {
      const last = all.at(-1);
      const page = store.listLiveAfter(now, { ...(last ? { after: { aor: last.aor, contact: last.contact } } : {}), limit: 1000 });
      all.push(...page);
      if (page.length < 1000) return all;
    }
  } finally {
    store.close();
  }
}
