// Reading a whole replica in tests, through the store's own paging.
import { LocationStore } from '../../lib/store/location-store.js';
import type { Binding } from '../../lib/registrar/registration.js';

/** Every live binding in the SQLite file at `dbFile`, opened read-only. */
export function allLiveBindings(dbFile: string, now = Date.now()): Binding[] {
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
