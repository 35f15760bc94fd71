-- A received token is kept opened: the initiator's signed record and the
-- public half of the link key, both public, which is all a handshake
-- needs. The handshake then does no second HPKE open. Tokens waiting at
-- the upgrade are dropped: they live two minutes, and their initiator
-- asks for a new introduction.
DELETE FROM tokens;
ALTER TABLE tokens DROP COLUMN envelope;
ALTER TABLE tokens ADD COLUMN initiator_record BLOB NOT NULL DEFAULT x'';
ALTER TABLE tokens ADD COLUMN link_public BLOB NOT NULL DEFAULT x'';
