-- AoR throttling (MIDREG_MODE=aor): the registrar holds one Contact per AoR, midreg's own; the
-- AoR's devices stay in `binding` (upstream_expires_at NULL) and only midreg knows them.
-- One row per AoR registered upstream: what the registrar holds, until when, and the Call-ID and
-- CSeq of the REGISTER it last accepted, so midreg can remove it (same Call-ID, next CSeq) once the
-- AoR's last device is gone. lapsed_at: that removal was challenged or refused; the row stays
-- (requests for it answered 480) until expires_at.
CREATE TABLE aor_upstream (
  aor        TEXT    NOT NULL PRIMARY KEY,
  contact    TEXT    NOT NULL,   -- midreg's AoR Contact URI as sent to the registrar
  key        TEXT    NOT NULL,   -- the ;ctid= key in it, by which requests find the AoR
  call_id    TEXT    NOT NULL,
  cseq       INTEGER NOT NULL,
  expires_at INTEGER NOT NULL,   -- Unix ms: end of the registration at the registrar
  lapsed_at  INTEGER,
  updated_at INTEGER NOT NULL
) WITHOUT ROWID;
CREATE UNIQUE INDEX aor_upstream_key ON aor_upstream (key);
CREATE INDEX aor_upstream_expires_at ON aor_upstream (expires_at);
