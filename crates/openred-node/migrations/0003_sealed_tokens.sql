-- A waiting token is stored sealed (XChaCha20-Poly1305 under a key derived
-- from the agent's master key): who introduced whom, and the link key's
-- public half, are not readable at rest. Only the connection ID (the
-- lookup key) and the expiry (for purging) stay in clear, and both are
-- bound to the sealed content as associated data. Tokens waiting at the
-- upgrade are dropped; they live two minutes.
DELETE FROM tokens;
ALTER TABLE tokens DROP COLUMN initiator;
ALTER TABLE tokens DROP COLUMN initiator_record;
ALTER TABLE tokens DROP COLUMN link_public;
ALTER TABLE tokens ADD COLUMN sealed BLOB NOT NULL DEFAULT x'';
