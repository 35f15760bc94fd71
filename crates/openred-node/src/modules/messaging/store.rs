//! The messaging tables (inbox, outbox) in the node's database, and the
//! group commits that make durability cheap: concurrent inserts wait for
//! one transaction together, so a burst of messages costs one fsync per
//! batch, not per message. Every insert is acknowledged only after its
//! batch has committed. The batching itself is [`GroupCommit`]'s; this
//! module owns what a batch writes (`InboxWriter`, `OutboxWriter`).
//!
//! The inbox has quotas ([`Quota`]): messages and bytes per peer, and
//! bytes in all. What it holds is counted in memory ([`InboxUsage`]),
//! read from the database once (at the first message) and kept up to
//! date by every insert and deletion, so a message costs a lock and a
//! few additions, never a `COUNT(*)`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use openred_core::{NodeId, UnixTime};
use openred_http::group_commit::{Commit, GroupCommit, Limits};
use serde::{Deserialize, Serialize};
use sqlx::{QueryBuilder, Row, Sqlite};

use crate::store::{to_i64, NodeStore, StoreError};

/// The most rows one group commit of the inbox takes (one transaction, in
/// statements of [`CHUNKS`] rows); a job that would pass it waits for the
/// next.
const MAX_BATCH: usize = 1024;
/// The same for the outbox, whose transactions also carry
/// acknowledgements (up to [`MAX_BATCH`] rows of updates).
const MAX_OUTBOX_BATCH: usize = 2 * MAX_BATCH;
/// Jobs waiting for a commit, at most; more wait to be queued.
const QUEUE: usize = 4096;
/// The inbox writer's sizes.
const INBOX: Limits = Limits {
    name: "messaging inbox",
    queue: QUEUE,
    max_rows: MAX_BATCH,
};
/// The outbox writer's sizes.
const OUTBOX: Limits = Limits {
    name: "messaging outbox",
    queue: QUEUE,
    max_rows: MAX_OUTBOX_BATCH,
};
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
        getrandom::fill(&mut bytes[6..]).map_err(StoreError::Randomness)?;
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

/// An outbox row, as [`MessageStore::pending`] hands it out: what the
/// acknowledgement updates find by primary key, without a search of the
/// message ID index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowId(i64);

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

/// An outbox message waiting for delivery, as the delivery reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    /// Its outbox row.
    pub row: RowId,
    /// Its ID.
    pub message_id: MessageId,
    /// Its sequence number for the peer.
    pub seq: u64,
    /// When it was written.
    pub created_at: u64,
    /// Its media type.
    pub content_type: String,
    /// Its text.
    pub body: String,
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

/// What sealing adds to a body at rest (a 24-byte nonce and a 16-byte
/// tag): the inbox's byte counts are of plaintext, and the database holds
/// sealed bodies.
const SEAL_OVERHEAD: i64 = 24 + 16;

/// The inbox quotas (`[modules.messaging]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    /// Messages one peer may have in the inbox.
    pub messages_per_peer: u64,
    /// Bytes (bodies and media types) one peer may have in the inbox.
    pub bytes_per_peer: u64,
    /// Bytes the whole inbox may hold, all peers together.
    pub bytes_total: u64,
}

/// Why a message was not stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The peer's share of the inbox is full.
    PeerFull,
    /// The node's inbox is full.
    NodeFull,
}

/// What became of one received message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    /// Stored now.
    New,
    /// Stored before (a retry after a lost receipt).
    Duplicate,
    /// Not stored: over a quota.
    Refused(Refusal),
}

/// Messages and bytes of one peer in the inbox.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PeerUsage {
    /// Messages.
    pub messages: u64,
    /// Bytes of bodies and media types (plaintext).
    pub bytes: u64,
}

/// What the inbox holds, per peer and in all, in memory.
#[derive(Debug, Default)]
pub struct InboxUsage {
    per_peer: HashMap<NodeId, PeerUsage>,
    bytes_total: u64,
}

impl InboxUsage {
    /// Reserves room for a message of `bytes` from `peer`, or says which
    /// quota it would pass.
    fn reserve(&mut self, peer: &NodeId, bytes: u64, quota: &Quota) -> Result<(), Refusal> {
        let used = self.per_peer.get(peer).copied().unwrap_or_default();
        if used.messages >= quota.messages_per_peer
            || used.bytes.saturating_add(bytes) > quota.bytes_per_peer
        {
            return Err(Refusal::PeerFull);
        }
        if self.bytes_total.saturating_add(bytes) > quota.bytes_total {
            return Err(Refusal::NodeFull);
        }
        let used = self.per_peer.entry(*peer).or_default();
        used.messages += 1;
        used.bytes += bytes;
        self.bytes_total += bytes;
        Ok(())
    }

    /// Gives back what a message of `bytes` from `peer` held (a
    /// reservation not used, or a message deleted).
    fn release(&mut self, peer: &NodeId, messages: u64, bytes: u64) {
        if let Some(used) = self.per_peer.get_mut(peer) {
            used.messages = used.messages.saturating_sub(messages);
            used.bytes = used.bytes.saturating_sub(bytes);
            if used.messages == 0 {
                self.per_peer.remove(peer);
            }
        }
        self.bytes_total = self.bytes_total.saturating_sub(bytes);
    }

    /// What `peer` holds.
    pub fn peer(&self, peer: &NodeId) -> PeerUsage {
        self.per_peer.get(peer).copied().unwrap_or_default()
    }

    /// Bytes of the whole inbox.
    pub fn bytes_total(&self) -> u64 {
        self.bytes_total
    }
}

/// The bytes a message counts for in the quotas.
fn quota_bytes(message: &Received) -> u64 {
    (message.body.len() + message.content_type.len()) as u64
}

/// The messaging tables.
#[derive(Clone)]
pub struct MessageStore {
    store: NodeStore,
    inbox: GroupCommit<InboxWriter>,
    outbox: GroupCommit<OutboxWriter>,
    usage: Arc<tokio::sync::OnceCell<Mutex<InboxUsage>>>,
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

/// What the outbox writer does: add a message (answered with its seq), or
/// record acknowledgements. Both kinds share transactions: an
/// acknowledgement then costs no commit (no fsync) of its own, and does
/// not hold the one writer connection while sends wait.
enum OutboxJob {
    Insert(NewMessage),
    Delivered { rows: Vec<RowId>, at: i64 },
}

/// The inbox's group commits: the messages of concurrent frames in one
/// transaction. A job is the messages of one frame: one answer (a flag
/// per message), whatever their number.
struct InboxWriter(NodeStore);

impl Commit for InboxWriter {
    type Job = Vec<Arc<Received>>;
    type Outcome = Vec<bool>;
    type Error = StoreError;

    fn rows(job: &Vec<Arc<Received>>) -> usize {
        job.len()
    }

    async fn commit(&self, batch: &[Vec<Arc<Received>>]) -> Result<Vec<Vec<bool>>, StoreError> {
        insert_received(&self.0, batch).await
    }
}

/// The outbox's group commits: new messages and acknowledgements.
struct OutboxWriter(NodeStore);

impl Commit for OutboxWriter {
    type Job = OutboxJob;
    type Outcome = Option<u64>;
    type Error = StoreError;

    fn rows(job: &OutboxJob) -> usize {
        match job {
            OutboxJob::Insert(_) => 1,
            OutboxJob::Delivered { rows, .. } => rows.len(),
        }
    }

    async fn commit(&self, batch: &[OutboxJob]) -> Result<Vec<Option<u64>>, StoreError> {
        write_outbox(&self.0, batch).await
    }
}

impl MessageStore {
    /// The messaging tables of `store`, with their group-commit writers.
    pub fn new(store: NodeStore) -> MessageStore {
        MessageStore {
            inbox: GroupCommit::spawn(InboxWriter(store.clone()), INBOX),
            outbox: GroupCommit::spawn(OutboxWriter(store.clone()), OUTBOX),
            store,
            usage: Arc::new(tokio::sync::OnceCell::new()),
        }
    }

    /// The inbox's usage, read from the database the first time.
    async fn usage(&self) -> Result<&Mutex<InboxUsage>, StoreError> {
        self.usage
            .get_or_try_init(|| async {
                let rows = sqlx::query(
                    "SELECT peer, COUNT(*) AS n, \
                     SUM(MAX(LENGTH(body) - ?, 0) + LENGTH(content_type)) AS bytes \
                     FROM inbox GROUP BY peer",
                )
                .bind(SEAL_OVERHEAD)
                .fetch_all(self.store.reader())
                .await?;
                let mut usage = InboxUsage::default();
                for row in rows {
                    let peer = node_id(row.try_get("peer")?)?;
                    let used = PeerUsage {
                        messages: u64_of(row.try_get("n")?),
                        bytes: u64_of(row.try_get("bytes")?),
                    };
                    usage.bytes_total += used.bytes;
                    usage.per_peer.insert(peer, used);
                }
                Ok::<_, StoreError>(Mutex::new(usage))
            })
            .await
    }

    /// What the inbox holds from `peer`, and in all (bytes).
    pub async fn inbox_usage(&self, peer: &NodeId) -> Result<(PeerUsage, u64), StoreError> {
        let usage = self.usage().await?;
        let usage = usage.lock().unwrap_or_else(PoisonError::into_inner);
        Ok((usage.peer(peer), usage.bytes_total()))
    }

    /// Stores received messages (those of one frame) within `quota`;
    /// answers once they are committed, one outcome per message. Room is
    /// reserved in memory before the commit and given back for what was
    /// not stored, so concurrent frames cannot pass a quota together. A
    /// message over a quota that is in the inbox already (a retry after a
    /// lost receipt) is a duplicate, not a refusal.
    pub async fn receive_within(
        &self,
        messages: Vec<Arc<Received>>,
        quota: &Quota,
    ) -> Result<Vec<Stored>, StoreError> {
        let usage = self.usage().await?;
        let mut outcomes = Vec::with_capacity(messages.len());
        let mut accepted = Vec::with_capacity(messages.len());
        {
            let mut usage = usage.lock().unwrap_or_else(PoisonError::into_inner);
            for message in &messages {
                match usage.reserve(&message.peer, quota_bytes(message), quota) {
                    Ok(()) => {
                        outcomes.push(Stored::New);
                        accepted.push(message.clone());
                    }
                    Err(refusal) => outcomes.push(Stored::Refused(refusal)),
                }
            }
        }
        // Refusals are rare: only they cost a read.
        for (message, outcome) in messages.iter().zip(outcomes.iter_mut()) {
            if matches!(outcome, Stored::Refused(_)) && self.in_inbox(message).await? {
                *outcome = Stored::Duplicate;
            }
        }
        let release = |which: &mut dyn Iterator<Item = &Arc<Received>>| {
            let mut usage = usage.lock().unwrap_or_else(PoisonError::into_inner);
            for message in which {
                usage.release(&message.peer, 1, quota_bytes(message));
            }
        };
        let fresh = match self.receive(accepted.clone()).await {
            Ok(fresh) => fresh,
            Err(e) => {
                release(&mut accepted.iter());
                return Err(e);
            }
        };
        release(
            &mut accepted
                .iter()
                .zip(&fresh)
                .filter(|(_, fresh)| !**fresh)
                .map(|(m, _)| m),
        );
        let mut fresh = fresh.into_iter();
        for outcome in &mut outcomes {
            if *outcome == Stored::New && fresh.next() == Some(false) {
                *outcome = Stored::Duplicate;
            }
        }
        Ok(outcomes)
    }

    async fn in_inbox(&self, message: &Received) -> Result<bool, StoreError> {
        Ok(
            sqlx::query("SELECT 1 FROM inbox WHERE peer = ? AND message_id = ?")
                .bind(&message.peer.as_bytes()[..])
                .bind(&message.message_id.0[..])
                .fetch_optional(self.store.reader())
                .await?
                .is_some(),
        )
    }

    /// Deletes messages from the inbox: `peer`'s messages `ids`, or all of
    /// `peer`'s if `ids` is `None`; their room in the quotas is free at
    /// once. Returns how many were deleted.
    pub async fn delete_inbox(
        &self,
        peer: &NodeId,
        ids: Option<&[MessageId]>,
    ) -> Result<u64, StoreError> {
        // Run to its end in a task of its own: an admin client that hangs
        // up must not cut the transaction (a transaction cut at an await
        // leaves the node's one writer connection inside it).
        let (this, peer, ids) = (self.clone(), *peer, ids.map(<[MessageId]>::to_vec));
        tokio::spawn(async move { this.delete_inbox_to_the_end(&peer, ids.as_deref()).await })
            .await
            .map_err(|e| StoreError::Corrupt(format!("the deletion task failed: {e}")))?
    }

    async fn delete_inbox_to_the_end(
        &self,
        peer: &NodeId,
        ids: Option<&[MessageId]>,
    ) -> Result<u64, StoreError> {
        let usage = self.usage().await?;
        let mut tx = self.store.writer().begin_with("BEGIN IMMEDIATE").await?;
        let (mut messages, mut bytes) = (0u64, 0u64);
        let mut count = |rows: Vec<sqlx::sqlite::SqliteRow>| -> Result<(), StoreError> {
            for row in rows {
                messages += 1;
                bytes += u64_of(row.try_get("bytes")?);
            }
            Ok(())
        };
        let returning = format!(
            " RETURNING MAX(LENGTH(body) - {SEAL_OVERHEAD}, 0) + LENGTH(content_type) AS bytes"
        );
        match ids {
            None => count(
                sqlx::query(&format!("DELETE FROM inbox WHERE peer = ?{returning}"))
                    .bind(&peer.as_bytes()[..])
                    .fetch_all(&mut *tx)
                    .await?,
            )?,
            Some(ids) => {
                for id in ids {
                    count(
                        sqlx::query(&format!(
                            "DELETE FROM inbox WHERE peer = ? AND message_id = ?{returning}"
                        ))
                        .bind(&peer.as_bytes()[..])
                        .bind(&id.0[..])
                        .fetch_all(&mut *tx)
                        .await?,
                    )?;
                }
            }
        }
        tx.commit().await?;
        usage
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .release(peer, messages, bytes);
        Ok(messages)
    }

    /// Stores received messages (those of one frame); answers once they
    /// are committed, one flag per message. `false`: this peer sent a
    /// message with this ID before (a duplicate, dropped).
    pub async fn receive(&self, messages: Vec<Arc<Received>>) -> Result<Vec<bool>, StoreError> {
        if messages.is_empty() {
            return Ok(Vec::new());
        }
        Ok(self.inbox.write(messages).await?)
    }

    /// Adds a message to the outbox; answers its seq once committed.
    pub async fn enqueue(&self, message: NewMessage) -> Result<u64, StoreError> {
        self.outbox
            .write(OutboxJob::Insert(message))
            .await?
            .ok_or_else(|| StoreError::Corrupt("the outbox writer gave no seq".into()))
    }

    /// Up to `limit` undelivered messages to `peer` with a seq above
    /// `after`, in seq order: what the delivery needs of them only.
    pub async fn pending(
        &self,
        peer: &NodeId,
        after: u64,
        limit: usize,
    ) -> Result<Vec<Pending>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, message_id, seq, created_at, content_type, body FROM outbox \
             WHERE peer = ? AND state IN ('queued', 'sent') AND seq > ? ORDER BY seq LIMIT ?",
        )
        .bind(&peer.as_bytes()[..])
        .bind(to_i64(after)?)
        .bind(to_i64(limit as u64)?)
        .fetch_all(self.store.reader())
        .await?;
        rows.iter()
            .map(|r| {
                let id = message_id(r.try_get("message_id")?)?;
                let body = self
                    .store
                    .sealer()
                    .open(&outbox_aad(peer, &id), r.try_get("body")?)?;
                Ok(Pending {
                    row: RowId(r.try_get("id")?),
                    message_id: id,
                    seq: u64_of(r.try_get("seq")?),
                    created_at: u64_of(r.try_get("created_at")?),
                    content_type: r.try_get("content_type")?,
                    body: text(&body)?,
                })
            })
            .collect()
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
    pub async fn mark_sent(&self, rows: &[RowId]) -> Result<(), StoreError> {
        if rows.is_empty() {
            return Ok(());
        }
        let mut tx = self.store.writer().begin().await?;
        update_rows(&mut tx, MARK_SENT, None, rows).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Records acknowledgements: the messages are `delivered`, their
    /// successful attempt counted. An acknowledgement wins over an expiry
    /// that raced it: the message is in the peer's inbox.
    pub async fn mark_delivered(&self, rows: &[RowId], now: UnixTime) -> Result<(), StoreError> {
        // Chunks of MAX_BATCH rows: a job never outgrows a group commit.
        for chunk in rows.chunks(MAX_BATCH) {
            let job = OutboxJob::Delivered {
                rows: chunk.to_vec(),
                at: to_i64(now.0)?,
            };
            self.outbox.write(job).await?;
        }
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
                .bind(crate::modules::printable(reason, 200))
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

async fn insert_received(
    store: &NodeStore,
    jobs: &[Vec<Arc<Received>>],
) -> Result<Vec<Vec<bool>>, StoreError> {
    // Everything that can fail for one message is done before the shared
    // statement (the receiver also refuses such values up front).
    let messages: Vec<&Arc<Received>> = jobs.iter().flatten().collect();
    let bodies = store.sealer().seal_each(
        messages
            .iter()
            .map(|m| (inbox_aad(&m.peer, &m.message_id), m.body.as_bytes())),
    )?;
    let mut rows = Vec::with_capacity(bodies.len());
    for (m, body) in messages.into_iter().zip(bodies) {
        let numbers = (to_i64(m.seq)?, to_i64(m.sent_at)?, to_i64(m.received_at)?);
        rows.push((m, numbers, body));
    }
    // One transaction, one fsync for the whole batch, in statements of
    // fixed sizes. Values are bound borrowed: nothing is copied for the
    // statement. The inserts return nothing: usually every message is new,
    // and only a statement that added fewer rows than it offered has its
    // added rows read back. Those are the row IDs up to the last it added,
    // one after the other: the table's only writer is this connection, and
    // SQLite gives each new row the highest ID plus one.
    let mut tx = store.writer().begin_with("BEGIN IMMEDIATE").await?;
    let mut new: Option<std::collections::HashSet<([u8; 32], [u8; 16])>> = None;
    let mut offered = 0;
    for chunk in fixed_chunks(&rows) {
        let earlier = &rows[..offered];
        offered += chunk.len();
        let mut query: QueryBuilder<Sqlite> = QueryBuilder::new(
            "INSERT INTO inbox (peer, message_id, seq, sent_at, received_at, content_type, body) ",
        );
        query.push_values(chunk, |mut row, (m, (seq, sent_at, received_at), body)| {
            row.push_bind(&m.peer.as_bytes()[..])
                .push_bind(&m.message_id.0[..])
                .push_bind(*seq)
                .push_bind(*sent_at)
                .push_bind(*received_at)
                .push_bind(m.content_type.as_str())
                .push_bind(&body[..]);
        });
        query.push(" ON CONFLICT (peer, message_id) DO NOTHING");
        let done = query.build().execute(&mut *tx).await?;
        let added = i64::try_from(done.rows_affected())
            .map_err(|_| StoreError::Corrupt("an inbox insert's row count".into()))?;
        if added == chunk.len() as i64 && new.is_none() {
            continue;
        }
        // Some message here was not new: name the new ones, of this
        // statement and of those before it (all of theirs were).
        let new = new.get_or_insert_with(|| {
            earlier
                .iter()
                .map(|(m, _, _)| (*m.peer.as_bytes(), m.message_id.0))
                .collect()
        });
        let last = done.last_insert_rowid();
        for r in sqlx::query("SELECT peer, message_id FROM inbox WHERE id > ? AND id <= ?")
            .bind(last - added)
            .bind(last)
            .fetch_all(&mut *tx)
            .await?
        {
            let (peer, id): (&[u8], &[u8]) = (r.try_get("peer")?, r.try_get("message_id")?);
            let key: Option<([u8; 32], [u8; 16])> = peer.try_into().ok().zip(id.try_into().ok());
            new.insert(key.ok_or_else(|| StoreError::Corrupt("an inbox key's length".into()))?);
        }
    }
    tx.commit().await?;
    // A message twice in one batch is new once (then not all were added).
    Ok(jobs
        .iter()
        .map(|job| {
            job.iter()
                .map(|m| match &mut new {
                    None => true,
                    Some(new) => new.remove(&(*m.peer.as_bytes(), m.message_id.0)),
                })
                .collect()
        })
        .collect())
}

/// Records an attempt that got no acknowledgement.
const MARK_SENT: &str = "UPDATE outbox SET state = 'sent', attempts = attempts + 1 \
     WHERE state IN ('queued', 'sent') AND id IN (";
/// Records acknowledgements; an acknowledgement wins over an expiry that
/// raced it: the message is in the peer's inbox. The time is bound, not
/// written into the text: the same statement serves every call.
const MARK_DELIVERED: &str =
    "UPDATE outbox SET state = 'delivered', attempts = attempts + 1, last_error = NULL, \
     delivered_at = ? WHERE state != 'delivered' AND id IN (";

/// Runs `head` (after binding `first`, if any) with `rows` as its list, in
/// statements of [`SHORT_LIST`] or [`LONG_LIST`] rows, inside `tx`.
async fn update_rows(
    tx: &mut sqlx::SqliteConnection,
    head: &str,
    first: Option<i64>,
    rows: &[RowId],
) -> Result<(), StoreError> {
    for chunk in rows.chunks(LONG_LIST) {
        let size = if chunk.len() <= SHORT_LIST {
            SHORT_LIST
        } else {
            LONG_LIST
        };
        let sql = format!("{head}{})", vec!["?"; size].join(", "));
        let mut query = sqlx::query(&sql);
        if let Some(first) = first {
            query = query.bind(first);
        }
        let last = chunk[chunk.len() - 1];
        for row in chunk
            .iter()
            .chain(std::iter::repeat_n(&last, size - chunk.len()))
        {
            query = query.bind(row.0);
        }
        query.execute(&mut *tx).await?;
    }
    Ok(())
}

/// One outbox transaction: the new messages, then the acknowledgements.
async fn write_outbox(
    store: &NodeStore,
    jobs: &[OutboxJob],
) -> Result<Vec<Option<u64>>, StoreError> {
    let batch: Vec<&NewMessage> = jobs
        .iter()
        .filter_map(|job| match job {
            OutboxJob::Insert(m) => Some(m),
            OutboxJob::Delivered { .. } => None,
        })
        .collect();
    let sealed = store.sealer().seal_each(
        batch
            .iter()
            .map(|m| (outbox_aad(&m.peer, &m.message_id), m.body.as_bytes())),
    )?;
    let created: Vec<i64> = batch
        .iter()
        .map(|m| to_i64(m.created_at))
        .collect::<Result<_, _>>()?;
    let mut tx = store.writer().begin_with("BEGIN IMMEDIATE").await?;
    // The next seq of each peer in the batch, then the seqs in batch order.
    let mut next: std::collections::HashMap<NodeId, i64> = std::collections::HashMap::new();
    for m in &batch {
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
    for m in &batch {
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
            row.push_bind(&m.message_id.0[..])
                .push_bind(&m.peer.as_bytes()[..])
                .push_bind(**seq)
                .push_bind(**created)
                .push_bind(m.content_type.as_str())
                .push_bind(&body[..])
                .push_bind("queued");
        });
        query.build().execute(&mut *tx).await?;
    }
    if !next.is_empty() {
        let mut counters: QueryBuilder<Sqlite> =
            QueryBuilder::new("INSERT INTO outbox_seq (peer, next) ");
        counters.push_values(&next, |mut row, (peer, next)| {
            row.push_bind(peer.as_bytes().to_vec()).push_bind(*next);
        });
        counters.push(" ON CONFLICT (peer) DO UPDATE SET next = excluded.next");
        counters.build().execute(&mut *tx).await?;
    }
    for job in jobs {
        if let OutboxJob::Delivered { rows, at } = job {
            update_rows(&mut tx, MARK_DELIVERED, Some(*at), rows).await?;
        }
    }
    tx.commit().await?;
    let mut seqs = seqs.into_iter().map(u64_of);
    Ok(jobs
        .iter()
        .map(|job| match job {
            OutboxJob::Insert(_) => seqs.next(),
            OutboxJob::Delivered { .. } => None,
        })
        .collect())
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

    fn received(peer: u8, id: MessageId, seq: u64) -> Arc<Received> {
        Arc::new(Received {
            peer: NodeId::from_bytes([peer; 32]),
            message_id: id,
            seq,
            sent_at: 1,
            received_at: 2,
            content_type: "text/plain".into(),
            body: format!("message {seq}"),
        })
    }

    #[tokio::test]
    async fn a_message_is_new_once_across_batches_and_within_one() {
        let dir = tempfile::tempdir().unwrap();
        let store = NodeStore::open(&dir.path().join("node.db"), &[7; 32])
            .await
            .unwrap();
        let messages = MessageStore::new(store);
        let ids: Vec<MessageId> = (0..4).map(|_| MessageId::random().unwrap()).collect();
        // All new: the path that reads nothing back.
        let first = vec![received(1, ids[0], 1), received(1, ids[1], 2)];
        assert_eq!(messages.receive(first).await.unwrap(), [true, true]);
        // A repeat from an earlier batch, one twice in this batch, the
        // same ID from another peer (new: IDs are per sender), a new one.
        let second = vec![
            received(1, ids[1], 2),
            received(1, ids[2], 3),
            received(1, ids[2], 3),
            received(2, ids[1], 1),
            received(1, ids[3], 4),
        ];
        assert_eq!(
            messages.receive(second).await.unwrap(),
            [false, true, false, true, true]
        );
        // A batch whose first statement adds all it offers (four rows)
        // and whose second finds a repeat of that first statement's row.
        let ids: Vec<MessageId> = (0..4).map(|_| MessageId::random().unwrap()).collect();
        let mut third: Vec<Arc<Received>> =
            (0..4).map(|i| received(3, ids[i], i as u64 + 1)).collect();
        third.push(received(3, ids[0], 1));
        assert_eq!(
            messages.receive(third).await.unwrap(),
            [true, true, true, true, false]
        );
        let texts: Vec<String> = messages
            .inbox(Some(&NodeId::from_bytes([1; 32])), 100, 0)
            .await
            .unwrap()
            .into_iter()
            .map(|m| m.body)
            .collect();
        assert_eq!(texts, ["message 1", "message 2", "message 3", "message 4"]);
        assert_eq!(messages.inbox_len().await.unwrap(), 9);
    }

    #[tokio::test]
    async fn the_inbox_usage_read_from_the_database_is_the_one_counted_in_memory() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.db");
        let quota = Quota {
            messages_per_peer: 3,
            bytes_per_peer: 1 << 20,
            bytes_total: 1 << 20,
        };
        let ids: Vec<MessageId> = (0..5).map(|_| MessageId::random().unwrap()).collect();
        let counted = {
            let store = NodeStore::open(&path, &[7; 32]).await.unwrap();
            let messages = MessageStore::new(store);
            let batch = (0..4).map(|i| received(1, ids[i], i as u64 + 1)).collect();
            let outcomes = messages.receive_within(batch, &quota).await.unwrap();
            assert_eq!(
                outcomes,
                [
                    Stored::New,
                    Stored::New,
                    Stored::New,
                    Stored::Refused(Refusal::PeerFull)
                ]
            );
            messages
                .inbox_usage(&NodeId::from_bytes([1; 32]))
                .await
                .unwrap()
        };
        assert_eq!(counted.0.messages, 3);
        // "message N" and "text/plain": the plaintext, not the sealed size.
        assert_eq!(counted.0.bytes, 3 * (9 + 10));
        assert_eq!(counted.1, counted.0.bytes);
        // Opened again: the same figures, from the sealed rows.
        let store = NodeStore::open(&path, &[7; 32]).await.unwrap();
        let messages = MessageStore::new(store);
        let peer = NodeId::from_bytes([1; 32]);
        assert_eq!(messages.inbox_usage(&peer).await.unwrap(), counted);
        // Deleting gives the room back, to the byte.
        assert_eq!(
            messages.delete_inbox(&peer, Some(&ids[..1])).await.unwrap(),
            1
        );
        let after = messages.inbox_usage(&peer).await.unwrap();
        assert_eq!((after.0.messages, after.0.bytes, after.1), (2, 38, 38));
        let outcomes = messages
            .receive_within(vec![received(1, ids[4], 5)], &quota)
            .await
            .unwrap();
        assert_eq!(outcomes, [Stored::New]);
        assert_eq!(messages.delete_inbox(&peer, None).await.unwrap(), 3);
        assert_eq!(
            messages.inbox_usage(&peer).await.unwrap(),
            (PeerUsage::default(), 0)
        );
    }

    #[tokio::test]
    async fn the_lean_outbox_keeps_every_row_and_waiting_seqs_unique() {
        use sqlx::Connection as _;
        let mut db = sqlx::SqliteConnection::connect("sqlite::memory:")
            .await
            .unwrap();
        for sql in [
            include_str!("../../../migrations/0004_messaging.sql"),
            include_str!("../../../migrations/0005_outbox_waiting.sql"),
        ] {
            sqlx::raw_sql(sql).execute(&mut db).await.unwrap();
        }
        let insert = "INSERT INTO outbox (message_id, peer, seq, created_at, content_type, \
                      body, state, attempts, last_error, delivered_at) \
                      VALUES (?, x'01', ?, 5, 'text/plain', x'beef', ?, 2, ?, ?)";
        for (id, seq, state, error, delivered) in [
            (1u8, 1i64, "delivered", None, Some(9i64)),
            (2, 2, "failed", Some("too old"), None),
            (3, 3, "sent", Some("refused"), None),
            (4, 4, "queued", None, None),
        ] {
            sqlx::query(insert)
                .bind(vec![id; 16])
                .bind(seq)
                .bind(state)
                .bind(error)
                .bind(delivered)
                .execute(&mut db)
                .await
                .unwrap();
        }
        let all = "SELECT id, message_id, peer, seq, created_at, content_type, body, state, \
                   attempts, last_error, delivered_at FROM outbox ORDER BY id";
        let dump = |rows: Vec<sqlx::sqlite::SqliteRow>| -> Vec<String> {
            rows.iter()
                .map(|r| {
                    (0..r.len())
                        .map(|i| {
                            let v: Option<Vec<u8>> = r.try_get(i).ok().flatten();
                            let n: Option<i64> = r.try_get(i).ok().flatten();
                            let t: Option<String> = r.try_get(i).ok().flatten();
                            format!("{v:?}/{n:?}/{t:?}")
                        })
                        .collect::<Vec<_>>()
                        .join(" ")
                })
                .collect()
        };
        let before = dump(sqlx::query(all).fetch_all(&mut db).await.unwrap());
        sqlx::raw_sql(include_str!("../../../migrations/0007_outbox_lean.sql"))
            .execute(&mut db)
            .await
            .unwrap();
        let after = dump(sqlx::query(all).fetch_all(&mut db).await.unwrap());
        assert_eq!(before.len(), 4);
        assert_eq!(before, after);
        // A seq that waits already cannot be given again; a seq whose
        // message is delivered or failed is out of the way.
        let again = |id: u8, seq: i64| {
            sqlx::query(insert)
                .bind(vec![id; 16])
                .bind(seq)
                .bind("queued")
                .bind(None::<String>)
                .bind(None::<i64>)
        };
        assert!(again(5, 4).execute(&mut db).await.is_err());
        assert!(again(6, 3).execute(&mut db).await.is_err());
        again(7, 1).execute(&mut db).await.unwrap();
        // Message IDs stay unique.
        assert!(again(4, 8).execute(&mut db).await.is_err());
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
