-- The outbox indexes cover only the messages still waiting (queued or
-- sent). Delivery reads and updates those alone, so its cost no longer
-- grows with the delivered history, and a delivered message leaves the
-- indexes instead of moving inside them. The queries name the same
-- `state IN ('queued', 'sent')` term, which is what lets SQLite use a
-- partial index.
DROP INDEX outbox_pending;
DROP INDEX outbox_age;
CREATE INDEX outbox_waiting ON outbox (peer, seq) WHERE state IN ('queued', 'sent');
CREATE INDEX outbox_waiting_age ON outbox (created_at) WHERE state IN ('queued', 'sent');
