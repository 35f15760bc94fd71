-- One row per node ever registered (until pruned). `record` holds the signed
-- bytes exactly as the node signed them; it is NULL once the node has
-- deregistered, while `seq` stays so that no older record can come back.
CREATE TABLE nodes (
    node_id      BLOB    PRIMARY KEY NOT NULL,
    identity_key BLOB    NOT NULL,
    seq          INTEGER NOT NULL,
    record       BLOB,
    api_url      TEXT,
    last_seen    INTEGER NOT NULL,
    deregistered INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX nodes_last_seen ON nodes (last_seen);
