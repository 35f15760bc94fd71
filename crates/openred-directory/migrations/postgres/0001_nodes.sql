-- One row per node ever registered (until pruned). `record` holds the signed
-- bytes exactly as the node signed them; it is NULL once the node has
-- deregistered, while `seq` stays so that no older record can come back.
CREATE TABLE nodes (
    node_id      BYTEA   PRIMARY KEY NOT NULL,
    identity_key BYTEA   NOT NULL,
    seq          BIGINT  NOT NULL,
    record       BYTEA,
    api_url      TEXT,
    last_seen    BIGINT  NOT NULL,
    deregistered BIGINT  NOT NULL DEFAULT 0
);
CREATE INDEX nodes_last_seen ON nodes (last_seen);
