-- Contact throttling (MIDREG_MODE=contact). expires_at stays the expiry the phone sees (every
-- lookup uses it); upstream_expires_at is when the registration midreg relayed ends at the
-- registrar (NULL in mirror mode, and for bindings midreg did not register upstream itself).
-- lapsed_at: midreg tried to de-register the binding upstream after the phone stopped refreshing,
-- and the registrar did not accept it; the row stays until upstream_expires_at (answered 480).
ALTER TABLE binding ADD COLUMN upstream_expires_at INTEGER;
ALTER TABLE binding ADD COLUMN lapsed_at INTEGER;
-- The de-registration job looks for bindings expired for the phone but still registered upstream.
CREATE INDEX binding_upstream_expires_at ON binding (upstream_expires_at) WHERE upstream_expires_at IS NOT NULL;
