-- MESSAGE routing looks bindings up by contact URI (requests the platform routed to a registered
-- contact via Path) and checks senders by the source address their REGISTER came from.
CREATE INDEX binding_contact ON binding (contact);
CREATE INDEX binding_source ON binding (source_address, source_port);
