// Which REGISTER reply is newest, per AoR and Call-ID. RFC 3261 §10.3 step 7: for the same
// Call-ID, "If the value is higher than that of the existing binding, it MUST update ...; if not,
// the update MUST be aborted". midreg is not the registrar, but two REGISTERs of one Call-ID can
// be in flight at once and their replies can cross, so a reply to an older CSeq than one already
// applied must not overwrite the replica.
//
// This only matters while a reply can still arrive: midreg's client transaction for a REGISTER
// ends after the upstream timeout, and drachtio drops any reply after that. So the highest CSeq
// applied is remembered in memory for that long after it was applied, and never written to disk
// (which cost every REGISTER a second table write; a restart leaves no transaction to reorder).
// Bindings still in the replica carry their own Call-ID and CSeq, which covers them for longer.

export class RegisterSequence {
  /** `aor\ncallId` → highest CSeq applied and until when it matters. Insertion order = expiry order. */
  private readonly applied = new Map<string, { cseq: number; until: number }>();

  /** @param retentionMs how long after a reply a crossing older reply can still arrive (the upstream timeout, plus margin). */
  constructor(private readonly retentionMs: number) {}

  /** Highest CSeq applied for this AoR and Call-ID that still matters at `now`. */
  lastApplied(aor: string, callId: string, now: number): number | undefined {
    this.forgetBefore(now);
    return this.applied.get(`${aor}\n${callId}`)?.cseq;
  }

  /** Record that the reply to `cseq` was applied at `now`. */
  record(aor: string, callId: string, cseq: number, now: number): void {
    const key = `${aor}\n${callId}`;
    const previous = this.applied.get(key);
    // Delete first so the entry moves to the end: the Map stays ordered by expiry.
    this.applied.delete(key);
    this.applied.set(key, { cseq: Math.max(cseq, previous?.cseq ?? cseq), until: now + this.retentionMs });
    this.forgetBefore(now);
  }

  get size(): number {
    return this.applied.size;
  }

  private forgetBefore(now: number): void {
    for (const [key, entry] of this.applied) {
      if (entry.until > now) return;
      this.applied.delete(key);
    }
  }
}
