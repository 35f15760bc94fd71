-- Tokens received from the directory (the target's half of an
-- introduction), waiting for the initiator's handshake. The envelope is
-- kept as the directory signed it; issue 4 seals it under the master key.
CREATE TABLE tokens (
    connection_id BLOB    PRIMARY KEY NOT NULL,
    initiator     BLOB    NOT NULL,
    expires_at    INTEGER NOT NULL,
    envelope      BLOB    NOT NULL
);

-- Connection IDs that were used (or refused for good): kept until the
-- token's expiry so that neither a replayed handshake nor a replayed token
-- push can revive them.
CREATE TABLE tombstones (
    connection_id BLOB    PRIMARY KEY NOT NULL,
    expires_at    INTEGER NOT NULL
);

-- Peers seen through the directory: the highest record seq per node, so a
-- directory serving an older record is caught.
CREATE TABLE peers (
    node_id    BLOB    PRIMARY KEY NOT NULL,
    seq        INTEGER NOT NULL,
    record     BLOB    NOT NULL,
    updated_at INTEGER NOT NULL
);

-- Small settings: the pinned directory key, the node's last record seq.
CREATE TABLE settings (
    key   TEXT PRIMARY KEY NOT NULL,
    value BLOB NOT NULL
);
