//! The messaging tables (inbox, outbox) in the node's database, and the
//! group commits that make durability cheap: concurrent inserts wait for
//! one transaction together, so a burst of messages costs one fsync per
//! batch, not per message. Every insert is acknowledged only after its
//! batch has committed.

use openred_core::{NodeId, UnixTime};
use serde::{Deserialize, Serialize};
use sqlx::{QueryBuilder, Row, Sqlite};
use tokio::sync::{mpsc, oneshot};

use crate::store::{to_i64, NodeStore, StoreError};

/// The most inserts one group commit takes (one transaction, in
/// statements of [`CHUNKS`] rows).
const MAX_BATCH: usize = 1024;
/// Inserts waiting for a commit, at most; more wait to be queued.
const QUEUE: usize = 4096;
/// The row counts of the statements a group commit is cut into, largest
/// first. SQLite prepares a statement per SQL text, and sqlx caches the
/// prepared statements by text: a statement for exactly the batch's size
/// was prepared anew nearly every time (about 2.5% of the CPU, and the
/// cache filled with statements of 7,000 parameters). A few fixed sizes
/// are prepared once per connection.
const CHUNKS: [usize; 5] = [256, 64, 16, 4, 1];
/// The IDs of one `UPDATE ... IN (...)` statement: a short list is padded
/// to [`SHORT_LIST`], a longer one to [`LONG_LIST`] (by repeating its
/// last ID, which changes nothing: `IN` tests membership), so that two
/// prepared statements serve every size.
const SHORT_LIST: usize = 16;
const LONG_LIST: usize = 256;

/// Cuts `rows` into runs of the sizes in [`CHUNKS`], largest first.
fn fixed_chunks<T>(mut rows: &[T]) -> impl Iterator<Item = &[T]> {
    std::iter::from_fn(move || {
        let size = CHUNKS.iter().copied().find(|&size| size <= rows.len())?;
        let (chunk, rest) = rows.split_at(size);
        rows = rest;
        Some(chunk)
    })
}

const INBOX_AAD: &[u8] = b"openred/v1/inbox";
const OUTBOX_AAD: &[u8] = b"openred/v1/outbox";

/// A message ID: 16 random bytes, written as 32 lowercase hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageId(pub [u8; 16]);

impl MessageId {
    /// A fresh ID: the time in milliseconds (48 bits, big-endian), then 80
    /// random bits. Unique without coordination like a random ID, but
    /// IDs made close in time sort close together, so the unique indexes
    /// on message IDs (the outbox's, and each receiver's inbox) grow at
    /// their end: a group commit of 512 messages then dirties a few index
    /// pages instead of one page per message, which is most of what a
    /// commit costs. The time is no secret: `sent_at` travels beside it.
    pub fn random() -> Result<MessageId, StoreError> {
        let millis = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let mut bytes = [0u8; 16];
        bytes[..6].copy_from_slice(&millis.to_be_bytes()[2..]);
        getrandom::fill(&mut bytes[6..])
            .map_err(|e| StoreError::Corrupt(format!("randomness: {e}")))?;
        Ok(MessageId(bytes))
    }

    /// Parses the hex form.
    pub fn parse(text: &str) -> Option<MessageId> {
        let bytes = data_encoding::HEXLOWER_PERMISSIVE
            .decode(text.as_bytes())
            .ok()?;
        Some(MessageId(bytes.try_into().ok()?))
    }
}

impl std::fmt::Display for MessageId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&data_encoding::HEXLOWER.encode(&self.0))
    }
}

/// Where a sent message stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryState {
    /// Persisted, not attempted yet.
    Queued,
    /// At least one attempt went out; no acknowledgement yet.
    Sent,
    /// The peer acknowledged it: it is in the peer's inbox.
    Delivered,
    /// Given up, with the reason.
    Failed,
}

impl DeliveryState {
    fn parse(text: &str) -> Result<DeliveryState, StoreError> {
        Ok(match text {
            "queued" => DeliveryState::Queued,
            "sent" => DeliveryState::Sent,
            "delivered" => DeliveryState::Delivered,
            "failed" => DeliveryState::Failed,
            other => return Err(StoreError::Corrupt(format!("delivery state {other:?}"))),
        })
    }
}

/// A message received from a peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// Who sent it.
    pub peer: NodeId,
    /// The sender's ID for it.
    pub message_id: MessageId,
    /// The sender's sequence number for this peer.
    pub seq: u64,
    /// The sender's clock when it was written.
    pub sent_at: u64,
    /// This node's clock when it was stored.
    pub received_at: u64,
    /// Its media type.
    pub content_type: String,
    /// Its text.
    pub body: String,
}

/// A message in the outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    /// Its ID.
    pub message_id: MessageId,
    /// To whom.
    pub peer: NodeId,
    /// Its sequence number for this peer (from 1).
    pub seq: u64,
    /// When it was written.
    pub created_at: u64,
    /// Its media type.
    pub content_type: String,
    /// Its text.
    pub body: String,
    /// Where it stands.
    pub state: DeliveryState,
    /// Attempts so far.
    pub attempts: u64,
    /// The last failure, if any.
    pub last_error: Option<String>,
    /// When the peer acknowledged it.
    pub delivered_at: Option<u64>,
}

/// A message to add to the outbox.
pub struct NewMessage {
    /// Its ID.
    pub message_id: MessageId,
    /// To whom.
    pub peer: NodeId,
    /// When it was written.
    pub created_at: u64,
    /// Its media type.
    pub content_type: String,
    /// Its text.
    pub body: String,
}

type Reply<R> = oneshot::Sender<Result<R, StoreError>>;

/// The messaging tables.
#[derive(Clone)]
pub struct MessageStore {
    store: NodeStore,
    inbox: mpsc::Sender<(Received, Reply<bool>)>,
    outbox: mpsc::Sender<(NewMessage, Reply<u64>)>,
}

fn inbox_aad(peer: &NodeId, id: &MessageId) -> Vec<u8> {
    [INBOX_AAD, peer.as_bytes(), &id.0].concat()
}

fn outbox_aad(peer: &NodeId, id: &MessageId) -> Vec<u8> {
    [OUTBOX_AAD, peer.as_bytes(), &id.0].concat()
}

fn node_id(bytes: Vec<u8>) -> Result<NodeId, StoreError> {
    let bytes: [u8; 32] = bytes
        .try_into()
        .map_err(|_| StoreError::Corrupt("a node ID is not 32 bytes".into()))?;
    Ok(NodeId::from_bytes(bytes))
}

fn message_id(bytes: Vec<u8>) -> Result<MessageId, StoreError> {
    Ok(MessageId(bytes.try_into().map_err(|_| {
        StoreError::Corrupt("a message ID is not 16 bytes".into())
    })?))
}

fn text(bytes: &[u8]) -> Result<String, StoreError> {
    String::from_utf8(bytes.to_vec()).map_err(|_| StoreError::Corrupt("a body is not UTF-8".into()))
}

fn u64_of(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

/// Runs group commits: takes the first waiting job, then every job already
/// queued (up to [`MAX_BATCH`]), commits them in one transaction with
/// `commit`, and answers each.
fn spawn_group_commit<T, R, F>(store: NodeStore, commit: F) -> mpsc::Sender<(T, Reply<R>)>
where
    T: Send + 'static,
    R: Send + 'static,
    F: for<'a> Fn(
            &'a NodeStore,
            &'a [T],
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = Result<Vec<R>, StoreError>> + Send + 'a>,
        > + Send
        + Sync
        + 'static,
{
    let (tx, mut rx) = mpsc::channel::<(T, Reply<R>)>(QUEUE);
    tokio::spawn(async move {
        let mut jobs = Vec::with_capacity(MAX_BATCH);
        let mut replies = Vec::with_capacity(MAX_BATCH);
        while let Some((job, reply)) = rx.recv().await {
            jobs.push(job);
            replies.push(reply);
            // Take what is queued; then, as long as more keeps arriving,
            // let the callers that are still on their way queue too. The
            // callers answered by the last commit come back within
            // microseconds of each other: without this, the first of them
            // starts a small commit and the rest wait out its fsync, so
            // batches alternated between small and large (half the
            // callers a batch with 512 senders). One yield costs
            // microseconds when nothing else comes.
            loop {
                while jobs.len() < MAX_BATCH {
                    match rx.try_recv() {
                        Ok((job, reply)) => {
                            jobs.push(job);
                            replies.push(reply);
                        }
                        Err(_) => break,
                    }
                }
                if jobs.len() >= MAX_BATCH {
                    break;
                }
                tokio::task::yield_now().await;
                if rx.is_empty() {
                    break;
                }
            }
            match commit(&store, &jobs).await {
                Ok(results) => {
                    for (reply, result) in replies.drain(..).zip(results) {
                        let _ = reply.send(Ok(result));
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "a messaging group commit failed");
                    for reply in replies.drain(..) {
                        let _ = reply.send(Err(StoreError::Corrupt(e.to_string())));
                    }
                }
            }
            jobs.clear();
        }
    });
    tx
}

async fn wait<T, R>(queue: &mpsc::Sender<(T, Reply<R>)>, job: T) -> Result<R, StoreError> {
    let (reply, answer) = oneshot::channel();
    queue
        .send((job, reply))
        .await
        .map_err(|_| StoreError::Corrupt("the messaging writer has stopped".into()))?;
    answer
        .await
        .map_err(|_| StoreError::Corrupt("the messaging writer has stopped".into()))?
}

impl MessageStore {
    /// The messaging tables of `store`, with their group-commit writers.
    pub fn new(store: NodeStore) -> MessageStore {
        let inbox = spawn_group_commit(store.clone(), |store, batch: &[Received]| {
            Box::pin(insert_received(store, batch))
        });
        let outbox = spawn_group_commit(store.clone(), |store, batch: &[NewMessage]| {
            Box::pin(insert_outgoing(store, batch))
        });
        MessageStore {
            store,
            inbox,
            outbox,
        }
    }

    /// Stores a received message; answers once it is committed. `false`:
    /// this peer sent a message with this ID before (a duplicate, dropped).
    pub async fn receive(&self, message: Received) -> Result<bool, StoreError> {
        wait(&self.inbox, message).await
    }

    /// Adds a message to the outbox; answers its seq once committed.
    pub async fn enqueue(&self, message: NewMessage) -> Result<u64, StoreError> {
        wait(&self.outbox, message).await
    }

    /// Up to `limit` undelivered messages to `peer` with a seq above
    /// `after`, in seq order.
    pub async fn pending(
        &self,
        peer: &NodeId,
        after: u64,
        limit: usize,
    ) -> Result<Vec<Outgoing>, StoreError> {
        let rows = sqlx::query(
            "SELECT outbox.*, NULL AS peer_error FROM outbox \
             WHERE peer = ? AND state IN ('queued', 'sent') AND seq > ? ORDER BY seq LIMIT ?",
        )
        .bind(&peer.as_bytes()[..])
        .bind(to_i64(after)?)
        .bind(to_i64(limit as u64)?)
        .fetch_all(self.store.reader())
        .await?;
        rows.iter().map(|r| self.outgoing(r)).collect()
    }

    /// The peers with undelivered messages.
    pub async fn peers_with_pending(&self) -> Result<Vec<NodeId>, StoreError> {
        let rows =
            sqlx::query("SELECT DISTINCT peer FROM outbox WHERE state IN ('queued', 'sent')")
                .fetch_all(self.store.reader())
                .await?;
        rows.into_iter()
            .map(|r| node_id(r.try_get("peer")?))
            .collect()
    }

    /// Records an attempt that got no acknowledgement for each message:
    /// they are `sent` from now on. (An acknowledged attempt is counted
    /// by [`MessageStore::mark_delivered`]; the happy path writes each
    /// message once, queued to delivered.)
    pub async fn mark_sent(&self, ids: &[MessageId]) -> Result<(), StoreError> {
        self.update_many(
            "UPDATE outbox SET state = 'sent', attempts = attempts + 1 \
             WHERE state IN ('queued', 'sent') AND message_id IN (",
            None,
            ids,
        )
        .await
    }

    /// Records acknowledgements: the messages are `delivered`, their
    /// successful attempt counted. An acknowledgement wins over an expiry
    /// that raced it: the message is in the peer's inbox.
    pub async fn mark_delivered(&self, ids: &[MessageId], now: UnixTime) -> Result<(), StoreError> {
        // The time is bound, not written into the text: the same
        // statement serves every call.
        self.update_many(
            "UPDATE outbox SET state = 'delivered', attempts = attempts + 1, last_error = NULL, \
             delivered_at = ? WHERE state != 'delivered' AND message_id IN (",
            Some(to_i64(now.0)?),
            ids,
        )
        .await
    }

    /// Runs `head` (after binding `first`, if any) with the IDs as its
    /// list, in statements of [`SHORT_LIST`] or [`LONG_LIST`] IDs and one
    /// transaction (one fsync) for all.
    async fn update_many(
        &self,
        head: &str,
        first: Option<i64>,
        ids: &[MessageId],
    ) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        let sql = |size: usize| format!("{head}{})", vec!["?"; size].join(", "));
        let (short, long) = (sql(SHORT_LIST), sql(LONG_LIST));
        let mut tx = self.store.writer().begin().await?;
        for chunk in ids.chunks(LONG_LIST) {
            let (sql, size) = if chunk.len() <= SHORT_LIST {
                (&short, SHORT_LIST)
            } else {
                (&long, LONG_LIST)
            };
            let mut query = sqlx::query(sql);
            if let Some(first) = first {
                query = query.bind(first);
            }
            let last = chunk[chunk.len() - 1];
            for id in chunk
                .iter()
                .chain(std::iter::repeat_n(&last, size - chunk.len()))
            {
                query = query.bind(id.0.to_vec());
            }
            query.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Gives up on a message, with the reason.
    pub async fn mark_failed(&self, id: &MessageId, reason: &str) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE outbox SET state = 'failed', last_error = ? \
             WHERE message_id = ? AND state IN ('queued', 'sent')",
        )
        .bind(reason)
        .bind(&id.0[..])
        .execute(self.store.writer())
        .await?;
        Ok(())
    }

    /// Notes why the last attempt to reach `peer` failed (shown on its
    /// waiting messages), or clears it. The text comes partly from the
    /// peer: it is cut to 200 characters without control characters.
    pub async fn note_error(&self, peer: &NodeId, reason: Option<&str>) -> Result<(), StoreError> {
        match reason {
            Some(reason) => {
                sqlx::query(
                    "INSERT INTO outbox_peer_error (peer, error) VALUES (?, ?) \
                     ON CONFLICT (peer) DO UPDATE SET error = excluded.error",
                )
                .bind(&peer.as_bytes()[..])
                .bind(printable(reason, 200))
                .execute(self.store.writer())
                .await?;
            }
            None => {
                sqlx::query("DELETE FROM outbox_peer_error WHERE peer = ?")
                    .bind(&peer.as_bytes()[..])
                    .execute(self.store.writer())
                    .await?;
            }
        }
        Ok(())
    }

    /// Fails every message not delivered since `cutoff`.
    pub async fn expire(&self, cutoff: UnixTime, reason: &str) -> Result<u64, StoreError> {
        Ok(sqlx::query(
            "UPDATE outbox SET state = 'failed', last_error = ? \
             WHERE state IN ('queued', 'sent') AND created_at < ?",
        )
        .bind(reason)
        .bind(to_i64(cutoff.0)?)
        .execute(self.store.writer())
        .await?
        .rows_affected())
    }

    /// The outbox, newest first, at most `limit` after skipping `offset`.
    pub async fn outbox(&self, limit: usize, offset: usize) -> Result<Vec<Outgoing>, StoreError> {
        let rows = sqlx::query(
            "SELECT outbox.*, e.error AS peer_error FROM outbox \
             LEFT JOIN outbox_peer_error e ON e.peer = outbox.peer \
             ORDER BY outbox.id DESC LIMIT ? OFFSET ?",
        )
        .bind(to_i64(limit as u64)?)
        .bind(to_i64(offset as u64)?)
        .fetch_all(self.store.reader())
        .await?;
        rows.iter().map(|r| self.outgoing(r)).collect()
    }

    /// One outbox message.
    pub async fn outgoing_by_id(&self, id: &MessageId) -> Result<Option<Outgoing>, StoreError> {
        let row = sqlx::query(
            "SELECT outbox.*, e.error AS peer_error FROM outbox \
             LEFT JOIN outbox_peer_error e ON e.peer = outbox.peer WHERE message_id = ?",
        )
        .bind(&id.0[..])
        .fetch_optional(self.store.reader())
        .await?;
        row.map(|r| self.outgoing(&r)).transpose()
    }

    /// The inbox in each peer's order (seq), from `peer` only if given, at
    /// most `limit` after skipping `offset`.
    pub async fn inbox(
        &self,
        peer: Option<&NodeId>,
        limit: usize,
        offset: usize,
    ) -> Result<Vec<Received>, StoreError> {
        let (limit, offset) = (to_i64(limit as u64)?, to_i64(offset as u64)?);
        let rows = match peer {
            Some(peer) => {
                sqlx::query("SELECT * FROM inbox WHERE peer = ? ORDER BY seq, id LIMIT ? OFFSET ?")
                    .bind(&peer.as_bytes()[..])
                    .bind(limit)
                    .bind(offset)
                    .fetch_all(self.store.reader())
                    .await?
            }
            None => {
                sqlx::query("SELECT * FROM inbox ORDER BY peer, seq, id LIMIT ? OFFSET ?")
                    .bind(limit)
                    .bind(offset)
                    .fetch_all(self.store.reader())
                    .await?
            }
        };
        rows.iter().map(|r| self.received(r)).collect()
    }

    /// How many messages the inbox holds.
    pub async fn inbox_len(&self) -> Result<u64, StoreError> {
        let row = sqlx::query("SELECT COUNT(*) AS n FROM inbox")
            .fetch_one(self.store.reader())
            .await?;
        Ok(u64_of(row.try_get("n")?))
    }

    fn outgoing(&self, row: &sqlx::sqlite::SqliteRow) -> Result<Outgoing, StoreError> {
        let peer = node_id(row.try_get("peer")?)?;
        let id = message_id(row.try_get("message_id")?)?;
        let sealed: Vec<u8> = row.try_get("body")?;
        let body = self.store.sealer().open(&outbox_aad(&peer, &id), &sealed)?;
        let state = DeliveryState::parse(row.try_get("state")?)?;
        Ok(Outgoing {
            message_id: id,
            peer,
            seq: u64_of(row.try_get("seq")?),
            created_at: u64_of(row.try_get("created_at")?),
            content_type: row.try_get("content_type")?,
            body: text(&body)?,
            state,
            attempts: u64_of(row.try_get("attempts")?),
            // A failure of this message, else the peer's last error while
            // it waits.
            last_error: match row.try_get::<Option<String>, _>("last_error")? {
                Some(own) => Some(own),
                None if !matches!(state, DeliveryState::Delivered) => row.try_get("peer_error")?,
                None => None,
            },
            delivered_at: row.try_get::<Option<i64>, _>("delivered_at")?.map(u64_of),
        })
    }

    fn received(&self, row: &sqlx::sqlite::SqliteRow) -> Result<Received, StoreError> {
        let peer = node_id(row.try_get("peer")?)?;
        let id = message_id(row.try_get("message_id")?)?;
        let sealed: Vec<u8> = row.try_get("body")?;
        let body = self.store.sealer().open(&inbox_aad(&peer, &id), &sealed)?;
        Ok(Received {
            peer,
            message_id: id,
            seq: u64_of(row.try_get("seq")?),
            sent_at: u64_of(row.try_get("sent_at")?),
            received_at: u64_of(row.try_get("received_at")?),
            content_type: row.try_get("content_type")?,
            body: text(&body)?,
        })
    }
}

async fn insert_received(store: &NodeStore, batch: &[Received]) -> Result<Vec<bool>, StoreError> {
    // Everything that can fail for one message is done before the shared
    // statement (the receiver also refuses such values up front).
    let mut rows = Vec::with_capacity(batch.len());
    for m in batch {
        let numbers = (to_i64(m.seq)?, to_i64(m.sent_at)?, to_i64(m.received_at)?);
        let body = store
            .sealer()
            .seal(&inbox_aad(&m.peer, &m.message_id), m.body.as_bytes())?;
        rows.push((m, numbers, body));
    }
    // One transaction, one fsync for the whole batch, in statements of
    // fixed sizes; the rows they return are the messages not seen before.
    let mut new: std::collections::HashSet<(Vec<u8>, Vec<u8>)> = Default::default();
    let mut tx = store.writer().begin().await?;
    for chunk in fixed_chunks(&rows) {
        let mut query: QueryBuilder<Sqlite> = QueryBuilder::new(
            "INSERT INTO inbox (peer, message_id, seq, sent_at, received_at, content_type, body) ",
        );
        query.push_values(chunk, |mut row, (m, (seq, sent_at, received_at), body)| {
            row.push_bind(m.peer.as_bytes().to_vec())
                .push_bind(m.message_id.0.to_vec())
                .push_bind(*seq)
                .push_bind(*sent_at)
                .push_bind(*received_at)
                .push_bind(m.content_type.clone())
                .push_bind(body.clone());
        });
        query.push(" ON CONFLICT (peer, message_id) DO NOTHING RETURNING peer, message_id");
        for r in query.build().fetch_all(&mut *tx).await? {
            new.insert((r.try_get("peer")?, r.try_get("message_id")?));
        }
    }
    tx.commit().await?;
    // A message twice in one batch is new once.
    Ok(batch
        .iter()
        .map(|m| new.remove(&(m.peer.as_bytes().to_vec(), m.message_id.0.to_vec())))
        .collect())
}

async fn insert_outgoing(store: &NodeStore, batch: &[NewMessage]) -> Result<Vec<u64>, StoreError> {
    let mut sealed = Vec::with_capacity(batch.len());
    for m in batch {
        sealed.push(
            store
                .sealer()
                .seal(&outbox_aad(&m.peer, &m.message_id), m.body.as_bytes())?,
        );
    }
    let created: Vec<i64> = batch
        .iter()
        .map(|m| to_i64(m.created_at))
        .collect::<Result<_, _>>()?;
    let mut tx = store.writer().begin_with("BEGIN IMMEDIATE").await?;
    // The next seq of each peer in the batch, then the seqs in batch order.
    let mut next: std::collections::HashMap<NodeId, i64> = std::collections::HashMap::new();
    for m in batch {
        if next.contains_key(&m.peer) {
            continue;
        }
        let row = sqlx::query("SELECT next FROM outbox_seq WHERE peer = ?")
            .bind(&m.peer.as_bytes()[..])
            .fetch_optional(&mut *tx)
            .await?;
        let first = match row {
            Some(row) => row.try_get("next")?,
            None => 1,
        };
        next.insert(m.peer, first);
    }
    let mut seqs = Vec::with_capacity(batch.len());
    for m in batch {
        let slot = next.entry(m.peer).or_insert(1);
        seqs.push(*slot);
        *slot += 1;
    }
    let rows: Vec<_> = batch.iter().zip(&sealed).zip(&seqs).zip(&created).collect();
    for chunk in fixed_chunks(&rows) {
        let mut query: QueryBuilder<Sqlite> = QueryBuilder::new(
            "INSERT INTO outbox (message_id, peer, seq, created_at, content_type, body, state) ",
        );
        query.push_values(chunk, |mut row, (((m, body), seq), created)| {
            row.push_bind(m.message_id.0.to_vec())
                .push_bind(m.peer.as_bytes().to_vec())
                .push_bind(**seq)
                .push_bind(**created)
                .push_bind(m.content_type.clone())
                .push_bind((*body).clone())
                .push_bind("queued");
        });
        query.build().execute(&mut *tx).await?;
    }
    let mut counters: QueryBuilder<Sqlite> =
        QueryBuilder::new("INSERT INTO outbox_seq (peer, next) ");
    counters.push_values(&next, |mut row, (peer, next)| {
        row.push_bind(peer.as_bytes().to_vec()).push_bind(*next);
    });
    counters.push(" ON CONFLICT (peer) DO UPDATE SET next = excluded.next");
    counters.build().execute(&mut *tx).await?;
    tx.commit().await?;
    Ok(seqs.into_iter().map(u64_of).collect())
}

/// `text` cut to `max` characters, control characters shown as `\u{..}`:
/// safe to show in a terminal.
pub fn printable(text: &str, max: usize) -> String {
    text.chars()
        .take(max)
        .flat_map(|c| {
            if c.is_control() {
                c.escape_unicode().collect::<Vec<_>>()
            } else {
                vec![c]
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_are_cut_into_the_fixed_sizes_in_order() {
        let rows: Vec<usize> = (0..597).collect();
        let chunks: Vec<&[usize]> = fixed_chunks(&rows).collect();
        let sizes: Vec<usize> = chunks.iter().map(|c| c.len()).collect();
        assert_eq!(sizes, [256, 256, 64, 16, 4, 1]);
        assert_eq!(chunks.concat(), rows);
        assert_eq!(fixed_chunks(&rows[..0]).count(), 0);
    }

    #[test]
    fn message_ids_are_unique_and_sort_by_the_time_they_were_made() {
        let first: Vec<MessageId> = (0..1000).map(|_| MessageId::random().unwrap()).collect();
        std::thread::sleep(std::time::Duration::from_millis(3));
        let later = MessageId::random().unwrap();
        let distinct: std::collections::HashSet<_> = first.iter().collect();
        assert_eq!(distinct.len(), first.len());
        assert!(first.iter().all(|id| *id < later));
        // The random part varies within one millisecond.
        assert!(first.windows(2).any(|w| w[0].0[6..] != w[1].0[6..]));
        assert_eq!(MessageId::parse(&later.to_string()), Some(later));
    }
}
