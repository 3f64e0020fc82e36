-- Contact insertion (MIDREG_INSERTION=contact): the Contact URI midreg gave the registrar for a
-- binding, and the key in it by which a request the registrar sends there finds the binding.
-- NULL for bindings registered with Path insertion (or none).
ALTER TABLE binding ADD COLUMN upstream_contact TEXT;
ALTER TABLE binding ADD COLUMN insertion_key TEXT;
CREATE INDEX binding_insertion_key ON binding (insertion_key) WHERE insertion_key IS NOT NULL;
