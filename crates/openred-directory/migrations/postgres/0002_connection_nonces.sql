-- Nonces of introduction requests, kept until their freshness window ends,
-- so that a replayed request is refused by every replica. No token material
-- is ever stored.
CREATE TABLE connection_nonces (
    node_id    BYTEA   NOT NULL,
    nonce      BYTEA   NOT NULL,
    expires_at BIGINT  NOT NULL,
    PRIMARY KEY (node_id, nonce)
);
CREATE INDEX connection_nonces_expiry ON connection_nonces (expires_at);
