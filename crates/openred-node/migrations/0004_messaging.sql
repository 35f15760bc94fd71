-- The messaging module. Bodies are sealed (XChaCha20-Poly1305 under the
-- node's storage key, bound to the row's message ID and peer); the rest
-- stays in clear for ordering, deduplication and delivery.

-- Received messages: one row per (peer, message ID), whatever the number
-- of deliveries; listed per peer in the sender's order (seq).
CREATE TABLE inbox (
    id INTEGER PRIMARY KEY,
    peer BLOB NOT NULL,
    message_id BLOB NOT NULL,
    seq INTEGER NOT NULL,
    sent_at INTEGER NOT NULL,
    received_at INTEGER NOT NULL,
    content_type TEXT NOT NULL,
    body BLOB NOT NULL,
    UNIQUE (peer, message_id)
);
CREATE INDEX inbox_order ON inbox (peer, seq);

-- Messages to send, persisted before the first attempt; state is queued,
-- sent (an attempt went out, no acknowledgement yet), delivered or failed.
CREATE TABLE outbox (
    id INTEGER PRIMARY KEY,
    message_id BLOB NOT NULL UNIQUE,
    peer BLOB NOT NULL,
    seq INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    content_type TEXT NOT NULL,
    body BLOB NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    delivered_at INTEGER,
    UNIQUE (peer, seq)
);
CREATE INDEX outbox_pending ON outbox (peer, state, seq);
CREATE INDEX outbox_age ON outbox (state, created_at);

-- Why the last attempt to reach a peer failed: one row per peer, not a
-- copy per waiting message (a peer's error text is bounded, but a long
-- outbox times it would not be).
CREATE TABLE outbox_peer_error (
    peer BLOB PRIMARY KEY,
    error TEXT NOT NULL
);

-- The next sequence number per peer.
CREATE TABLE outbox_seq (
    peer BLOB PRIMARY KEY,
    next INTEGER NOT NULL
);
