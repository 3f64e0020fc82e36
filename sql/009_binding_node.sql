-- Issue 21: several midreg nodes on one store. The SIP URI of the node that holds the phone's
-- flow (its REGISTER came through it); NULL on one node and for bindings midreg never saw registered.
-- Numbered 009: 007 and 008 are reserved for other work; migrations apply in number order.
ALTER TABLE binding ADD COLUMN node TEXT;
