-- Offline messages (MIDREG_OFFLINE_MESSAGES=on): a MESSAGE for a user with no live binding, kept
-- until the user registers again (RFC 3428 §7: "202 Accepted" for later delivery). Written before
-- the 202 goes out; removed only after the recipient's 2xx, or when its time to live ends.
CREATE TABLE offline_message (
  id              INTEGER PRIMARY KEY AUTOINCREMENT, -- arrival order, never reused
  recipient       TEXT    NOT NULL,                  -- canonical AoR
  sender          TEXT    NOT NULL,                  -- canonical AoR of From
  from_header     TEXT    NOT NULL,                  -- From as received (display name, tag)
  to_header       TEXT    NOT NULL,
  content_type    TEXT    NOT NULL,
  body            TEXT    NOT NULL,
  date            TEXT    NOT NULL,                  -- Date as received, or when midreg took it
  received_at     INTEGER NOT NULL,                  -- Unix ms
  expires_at      INTEGER NOT NULL,                  -- Unix ms: received_at + MIDREG_OFFLINE_TTL_SEC
  attempts        INTEGER NOT NULL DEFAULT 0,
  next_attempt_at INTEGER NOT NULL                   -- Unix ms: no delivery attempt before this
);
CREATE INDEX offline_message_recipient ON offline_message (recipient, id);
CREATE INDEX offline_message_expires_at ON offline_message (expires_at);

-- AoRs the registrar has accepted at least once: only those may have messages stored for them,
-- never an arbitrary user. Filled when an AoR first appears in the replica.
CREATE TABLE known_aor (
  aor           TEXT    PRIMARY KEY,
  first_seen_at INTEGER NOT NULL
) WITHOUT ROWID;
INSERT OR IGNORE INTO known_aor (aor, first_seen_at) SELECT aor, min(registered_at) FROM binding GROUP BY aor;
