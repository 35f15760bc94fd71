-- Two b-trees fewer to write per outbox message (measured in
-- docs/BENCHMARKS.md, "Messaging"):
-- - the (peer, seq) uniqueness moves from a table-wide index to the
--   partial index over waiting messages, which delivery needs anyway: the
--   seqs still to be delivered stay unique per peer at no extra cost;
--   the single outbox writer and `outbox_seq` hand them out;
-- - `outbox_waiting_age` goes: the expiry sweep walks `outbox_waiting`
--   (the waiting messages only) instead.
-- SQLite cannot drop a table constraint, so the table is rebuilt.
CREATE TABLE outbox_lean (
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
    delivered_at INTEGER
);
INSERT INTO outbox_lean (id, message_id, peer, seq, created_at, content_type, body, state,
                         attempts, last_error, delivered_at)
    SELECT id, message_id, peer, seq, created_at, content_type, body, state,
           attempts, last_error, delivered_at
    FROM outbox;
DROP TABLE outbox;
ALTER TABLE outbox_lean RENAME TO outbox;
CREATE UNIQUE INDEX outbox_waiting ON outbox (peer, seq) WHERE state IN ('queued', 'sent');
