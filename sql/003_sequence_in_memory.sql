-- The highest CSeq per AoR and Call-ID only matters while a reply to an older REGISTER can still
-- arrive, that is during the upstream timeout: midreg now keeps it in memory
-- (lib/register-sequence.ts) and each REGISTER writes one table instead of two.
DROP INDEX IF EXISTS register_sequence_seen_at;
DROP TABLE IF EXISTS register_sequence;

-- Every lookup by source address also names the AoR, which the primary key already narrows to
-- a handful of rows; the index only cost each REGISTER one more page written (bench/results).
DROP INDEX IF EXISTS binding_source;
