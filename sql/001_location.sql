-- The replica of the main registrar's location table: one row per binding the registrar granted.
CREATE TABLE binding (
  aor            TEXT    NOT NULL,              -- canonical AoR (RFC 3261 §10.3 step 5)
  contact        TEXT    NOT NULL,              -- contact URI as the registrar echoed it
  expires_at     INTEGER NOT NULL,              -- Unix ms: the expiry the registrar granted
  q              REAL,
  instance       TEXT,                          -- +sip.instance (RFC 5626), quotes kept
  reg_id         INTEGER,                       -- reg-id (RFC 5626)
  path           TEXT,                          -- Path of the REGISTER as received (RFC 3327)
  call_id        TEXT,
  cseq           INTEGER,
  user_agent     TEXT,
  source_address TEXT,                          -- where the REGISTER came from (NAT traversal)
  source_port    INTEGER,
  transport      TEXT,
  registered_at  INTEGER NOT NULL,
  updated_at     INTEGER NOT NULL,
  PRIMARY KEY (aor, contact)
) WITHOUT ROWID;

CREATE INDEX binding_expires_at ON binding (expires_at);

-- Highest CSeq applied per AoR and Call-ID, so that a late reply to an older REGISTER cannot
-- overwrite newer state (RFC 3261 §10.3 step 7), even after its binding was removed.
CREATE TABLE register_sequence (
  aor     TEXT    NOT NULL,
  call_id TEXT    NOT NULL,
  cseq    INTEGER NOT NULL,
  seen_at INTEGER NOT NULL,
  PRIMARY KEY (aor, call_id)
) WITHOUT ROWID;

CREATE INDEX register_sequence_seen_at ON register_sequence (seen_at);
