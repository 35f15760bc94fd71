-- Which peers count as known for the `known-peers` introduction policy:
-- those this node connected to, whose introduction it accepted with a
-- handshake, or that its owner added. Every record seen (discovery
-- included) stays in `peers` for its highest seq (rollback protection),
-- but seeing a record no longer makes a peer known. Rows from before this
-- migration cannot tell discovery from a connection, so none is known:
-- a node under `known-peers` accepts them again once it has connected to
-- them.
ALTER TABLE peers ADD COLUMN known_since INTEGER;
