//! The node's database (SQLite, WAL, `synchronous = FULL`): received
//! tokens, tombstones, known peers and settings.
//!
//! Every write goes through one connection (a pool of one), reads through
//! a pool of four: concurrent writers then queue in the async pool instead
//! of meeting SQLite's busy handler, which waits by sleeping 1 to 100 ms
//! (the tail measured in docs/BENCHMARKS.md). Sessions are not stored:
//! after a restart they are re-established by new handshakes, never by
//! reusing persisted send keys, so no nonce can repeat.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use std::sync::Arc;

use chacha20poly1305::aead::{Aead, AeadInPlace, KeyInit, Payload};
use chacha20poly1305::XChaCha20Poly1305;
use openred_core::token::TOKEN_CLOCK_SKEW_S;
use openred_core::{NodeId, SignedRecord, UnixTime};
use openred_http::group_commit::CommitError;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqlitePool};
use zeroize::Zeroizing;

static MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// A storage failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database failed.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// Migrations failed.
    #[error("migration error: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    /// A row holds something this code never writes.
    #[error("corrupt row: {0}")]
    Corrupt(String),
    /// A write was not acknowledged: its group commit failed (none of that
    /// batch was stored), or the writer task has stopped (the node is
    /// shutting down).
    #[error(transparent)]
    Writer(#[from] CommitError),
    /// The operating system gave no randomness (for a nonce or an ID).
    #[error("randomness: {0}")]
    Randomness(getrandom::Error),
    /// A task that held a write to its end did not finish (it panicked,
    /// or the runtime is shutting down).
    #[error("a storage task did not finish: {0}")]
    Task(String),
}

/// Why a token could not be stored or taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenState {
    /// Stored now / found and taken.
    Ok,
    /// The connection ID is tombstoned: used already.
    Used,
    /// A token with this connection ID is already waiting.
    Duplicate,
    /// No such token.
    Unknown,
    /// The token carries a record of its initiator older than one this
    /// node has seen: a directory replaying stale data.
    StalePeerRecord,
}

/// A received token, as opened: what the handshake needs of it.
#[derive(Debug, Clone)]
pub struct StoredToken {
    /// The node that will start the handshake.
    pub initiator: NodeId,
    /// When the token expires.
    pub expires_at: UnixTime,
    /// The initiator's signed record, carried by the token.
    pub initiator_record: SignedRecord,
    /// The public half of the link key: verifies the initiator's proof.
    pub link_public: [u8; 32],
}

/// The node database.
#[derive(Clone)]
pub struct NodeStore {
    /// Reads.
    pool: SqlitePool,
    /// Writes: one connection.
    writer: SqlitePool,
    /// Seals the secrets stored (see [`Sealer`]).
    sealer: Arc<Sealer>,
}

impl std::fmt::Debug for NodeStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeStore").finish_non_exhaustive()
    }
}

/// Seals values stored at rest: XChaCha20-Poly1305 under the storage key
/// the agent derives from its master key, a random 24-byte nonce per value
/// (`nonce || ciphertext || tag`), and associated data naming the table
/// and binding the row's clear columns, so a sealed value cannot be moved
/// to another row or have its clear columns changed unnoticed.
///
/// The nonce is drawn from the operating system for every value, not made
/// of a per-process prefix and a counter (tried: it spared a `getrandom`
/// call per stored message, about 2 % of a messaging run's CPU): a virtual
/// machine restored twice from one snapshot would repeat a counter's
/// nonces, while the kernel reseeds its generator on such a restore.
pub struct Sealer(XChaCha20Poly1305);

impl Sealer {
    /// A sealer for `key`.
    pub fn new(key: &[u8; 32]) -> Sealer {
        Sealer(XChaCha20Poly1305::new(key.into()))
    }

    /// Seals `plaintext` bound to `aad`: `nonce || ciphertext || tag`.
    pub fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, StoreError> {
        let mut nonce = [0u8; 24];
        fill_random(&mut nonce)?;
        self.seal_with(&nonce, aad, plaintext)
    }

    /// Seals each `(aad, plaintext)`, as [`Sealer::seal`] does, with the
    /// nonces of all of them drawn from the operating system by one call:
    /// a group commit's values cost one system call, not one each (about
    /// 0.5 µs saved per value). Every nonce is still fresh from the
    /// kernel's generator, drawn just before its use.
    pub fn seal_each<A, P>(
        &self,
        values: impl ExactSizeIterator<Item = (A, P)>,
    ) -> Result<Vec<Vec<u8>>, StoreError>
    where
        A: AsRef<[u8]>,
        P: AsRef<[u8]>,
    {
        let count = values.len();
        let mut nonces = vec![0u8; 24 * count];
        fill_random(&mut nonces)?;
        let mut nonces = nonces.chunks_exact(24);
        let mut sealed = Vec::with_capacity(count);
        for (aad, plaintext) in values {
            // A length that the iterator got wrong is an error, never a
            // value left out or a nonce used twice.
            let nonce: &[u8; 24] = nonces
                .next()
                .and_then(|n| n.try_into().ok())
                .ok_or_else(|| StoreError::Corrupt("more values than nonces".into()))?;
            sealed.push(self.seal_with(nonce, aad.as_ref(), plaintext.as_ref())?);
        }
        if sealed.len() != count {
            return Err(StoreError::Corrupt("fewer values than announced".into()));
        }
        Ok(sealed)
    }

    fn seal_with(
        &self,
        nonce: &[u8; 24],
        aad: &[u8],
        plaintext: &[u8],
    ) -> Result<Vec<u8>, StoreError> {
        // One buffer: nonce, then the text sealed in place, then the tag.
        let mut out = Vec::with_capacity(24 + plaintext.len() + 16);
        out.extend_from_slice(nonce);
        out.extend_from_slice(plaintext);
        let tag = self
            .0
            .encrypt_in_place_detached(nonce.into(), aad, &mut out[24..])
            .map_err(|_| StoreError::Corrupt("sealing failed".into()))?;
        out.extend_from_slice(&tag);
        Ok(out)
    }

    /// Opens what [`Sealer::seal`] made with the same `aad`; an error for
    /// anything else.
    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, StoreError> {
        let corrupt =
            || StoreError::Corrupt("a sealed value does not open under this node's key".into());
        let (nonce, body) = sealed.split_at_checked(24).ok_or_else(corrupt)?;
        let nonce: [u8; 24] = nonce.try_into().map_err(|_| corrupt())?;
        self.0
            .decrypt((&nonce).into(), Payload { msg: body, aad })
            .map(Zeroizing::new)
            .map_err(|_| corrupt())
    }
}

fn fill_random(bytes: &mut [u8]) -> Result<(), StoreError> {
    getrandom::fill(bytes).map_err(StoreError::Randomness)
}

const TOKEN_AAD: &[u8] = b"openred/v1/sealed-token";

fn token_aad(connection_id: &[u8; 16], expires_at: UnixTime) -> Vec<u8> {
    let mut aad = TOKEN_AAD.to_vec();
    aad.extend_from_slice(connection_id);
    aad.extend_from_slice(&expires_at.0.to_be_bytes());
    aad
}

impl NodeStore {
    /// Opens (creating) `path` and migrates it; secrets are sealed with
    /// `storage_key`.
    pub async fn open(path: &Path, storage_key: &[u8; 32]) -> Result<NodeStore, StoreError> {
        let options = SqliteConnectOptions::from_str(&format!("sqlite://{}", path.display()))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10))
            // A multi-row insert keeps a statement journal (to undo itself
            // alone on a constraint error); in memory it is not spilled to
            // a temporary file past 64 KiB.
            .pragma("temp_store", "memory")
            // Checkpoints every 16 MiB of WAL instead of 4 MiB: the pages a
            // burst of messages rewrites again and again (the ends of the
            // tables and indexes) are copied back once per checkpoint.
            // Together about 5 % more messages/s (docs/BENCHMARKS.md).
            .pragma("wal_autocheckpoint", "4000");
        // No ping before each acquire: a round trip to the connection's
        // worker thread, for a local file that cannot drop a connection.
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .test_before_acquire(false)
            .connect_with(options.clone())
            .await?;
        MIGRATIONS.run(&writer).await?;
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .test_before_acquire(false)
            .connect_with(options)
            .await?;
        Ok(NodeStore {
            pool,
            writer,
            sealer: Arc::new(Sealer::new(storage_key)),
        })
    }

    /// Stores a received token and remembers its initiator's record, in
    /// one transaction: `Used` if the connection ID is tombstoned,
    /// `Duplicate` if a token with it waits already, `StalePeerRecord` if
    /// the record is older than one seen (nothing is written then).
    pub async fn accept_token(
        &self,
        connection_id: &[u8; 16],
        token: &StoredToken,
        now: UnixTime,
    ) -> Result<TokenState, StoreError> {
        // IMMEDIATE takes the write lock first: a deferred transaction that
        // reads then writes fails at once with SQLITE_BUSY under concurrency.
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
        let dead = sqlx::query("SELECT 1 FROM tombstones WHERE connection_id = ?")
            .bind(&connection_id[..])
            .fetch_optional(&mut *tx)
            .await?;
        if dead.is_some() {
            return Ok(TokenState::Used);
        }
        if !upsert_peer(&mut tx, &token.initiator_record, now).await? {
            return Ok(TokenState::StalePeerRecord);
        }
        let mut plaintext = Zeroizing::new(Vec::with_capacity(64 + 512));
        plaintext.extend_from_slice(token.initiator.as_bytes());
        plaintext.extend_from_slice(&token.link_public);
        plaintext.extend_from_slice(token.initiator_record.as_bytes());
        let sealed = self
            .sealer
            .seal(&token_aad(connection_id, token.expires_at), &plaintext)?;
        let inserted = sqlx::query(
            "INSERT INTO tokens (connection_id, expires_at, sealed) VALUES (?, ?, ?) \
             ON CONFLICT (connection_id) DO NOTHING",
        )
        .bind(&connection_id[..])
        .bind(to_i64(token.expires_at.0)?)
        .bind(&sealed)
        .execute(&mut *tx)
        .await?;
        if inserted.rows_affected() != 1 {
            return Ok(TokenState::Duplicate);
        }
        tx.commit().await?;
        Ok(TokenState::Ok)
    }

    /// Looks a token up without taking it: done before any public-key
    /// work on a handshake.
    pub async fn token(
        &self,
        connection_id: &[u8; 16],
    ) -> Result<(TokenState, Option<StoredToken>), StoreError> {
        // The token first, the tombstone only if it is gone: a burn deletes
        // the one and writes the other in one transaction, so in this order a
        // concurrent burn can never make a used ID look unknown.
        let row = sqlx::query("SELECT expires_at, sealed FROM tokens WHERE connection_id = ?")
            .bind(&connection_id[..])
            .fetch_optional(&self.pool)
            .await?;
        if let Some(row) = row {
            return Ok((
                TokenState::Ok,
                Some(self.decode_token(connection_id, &row)?),
            ));
        }
        let dead = sqlx::query("SELECT 1 FROM tombstones WHERE connection_id = ?")
            .bind(&connection_id[..])
            .fetch_optional(&self.pool)
            .await?;
        Ok((
            if dead.is_some() {
                TokenState::Used
            } else {
                TokenState::Unknown
            },
            None,
        ))
    }

    /// Burns a token: deletes it and writes its tombstone in one committed
    /// transaction. Exactly one caller gets `Ok` for a connection ID; every
    /// later one gets `Used` or `Unknown`. The winner's `initiator` (whose
    /// handshake this node accepted) becomes a known peer in the same
    /// transaction.
    pub async fn burn_token(
        &self,
        connection_id: &[u8; 16],
        initiator: &NodeId,
        now: UnixTime,
    ) -> Result<TokenState, StoreError> {
        let mut tx = self.writer.begin().await?;
        let row = sqlx::query("DELETE FROM tokens WHERE connection_id = ? RETURNING expires_at")
            .bind(&connection_id[..])
            .fetch_optional(&mut *tx)
            .await?;
        let Some(row) = row else {
            return Ok(TokenState::Unknown);
        };
        let expires_at: i64 = row.try_get("expires_at")?;
        let inserted = sqlx::query(
            "INSERT INTO tombstones (connection_id, expires_at) VALUES (?, ?) ON CONFLICT DO NOTHING",
        )
        .bind(&connection_id[..])
        .bind(expires_at)
        .execute(&mut *tx)
        .await?;
        if inserted.rows_affected() == 1 {
            mark_known(&mut tx, initiator, now).await?;
        }
        tx.commit().await?;
        Ok(if inserted.rows_affected() == 1 {
            TokenState::Ok
        } else {
            TokenState::Used
        })
    }

    /// The initiator's side of a used introduction, in one transaction: a
    /// tombstone for its connection ID until `expires_at`, and the peer's
    /// record if it is at least as new as the one known; the peer becomes
    /// a known peer (this node connected to it). Returns whether the record
    /// was stored (`false`: a newer one arrived meanwhile).
    pub async fn record_introduction(
        &self,
        connection_id: &[u8; 16],
        expires_at: UnixTime,
        peer_record: &SignedRecord,
        now: UnixTime,
    ) -> Result<bool, StoreError> {
        let mut tx = self.writer.begin().await?;
        sqlx::query("INSERT INTO tombstones (connection_id, expires_at) VALUES (?, ?) ON CONFLICT DO NOTHING")
            .bind(&connection_id[..])
            .bind(to_i64(expires_at.0)?)
            .execute(&mut *tx)
            .await?;
        let stored = upsert_peer(&mut tx, peer_record, now).await?;
        mark_known(&mut tx, &peer_record.record().node_id, now).await?;
        tx.commit().await?;
        Ok(stored)
    }

    /// Whether `record` is at least as new as the highest record known for
    /// its node (a read: nothing is written).
    pub async fn is_current_peer_record(&self, record: &SignedRecord) -> Result<bool, StoreError> {
        let r = record.record();
        let row = sqlx::query("SELECT seq FROM peers WHERE node_id = ?")
            .bind(&r.node_id.as_bytes()[..])
            .fetch_optional(&self.pool)
            .await?;
        Ok(match row {
            Some(row) => to_i64(r.seq)? >= row.try_get::<i64, _>("seq")?,
            None => true,
        })
    }

    /// Deletes expired tokens, and tombstones whose token expired more than
    /// [`TOKEN_CLOCK_SKEW_S`] ago. Returns how many of each.
    ///
    /// A tombstone may go once its token can no longer be accepted: a
    /// replayed push or handshake is then refused as expired. The margin
    /// keeps that true if this node's clock steps back by up to the skew,
    /// and since every token accepted expires within
    /// `MAX_TOKEN_LIFETIME_S + TOKEN_CLOCK_SKEW_S` of its receipt
    /// (`Introduction::check_lifetime`), no tombstone is needed longer.
    pub async fn purge_expired(&self, now: UnixTime) -> Result<(u64, u64), StoreError> {
        let tombstone_cutoff = to_i64(now.minus(TOKEN_CLOCK_SKEW_S).0)?;
        let now = to_i64(now.0)?;
        let tokens = sqlx::query("DELETE FROM tokens WHERE expires_at <= ?")
            .bind(now)
            .execute(&self.writer)
            .await?
            .rows_affected();
        let tombstones = sqlx::query("DELETE FROM tombstones WHERE expires_at <= ?")
            .bind(tombstone_cutoff)
            .execute(&self.writer)
            .await?
            .rows_affected();
        Ok((tokens, tombstones))
    }

    /// Remembers a peer's record if its seq is at least the highest seen.
    /// Returns `false` (and keeps the stored one) for an older record: a
    /// directory serving stale records is caught here. Seeing a record
    /// (discovery, a lookup) does not make its node a known peer.
    pub async fn remember_peer(
        &self,
        record: &SignedRecord,
        now: UnixTime,
    ) -> Result<bool, StoreError> {
        let mut conn = self.writer.acquire().await?;
        upsert_peer(&mut conn, record, now).await
    }

    /// Adds a known peer for the `known-peers` introduction policy (the
    /// owner named it), remembering its record as [`remember_peer`] does.
    /// Returns `false` for a record older than one seen (the peer is
    /// still marked known: the newer record stays).
    ///
    /// [`remember_peer`]: NodeStore::remember_peer
    pub async fn add_known_peer(
        &self,
        record: &SignedRecord,
        now: UnixTime,
    ) -> Result<bool, StoreError> {
        let mut tx = self.writer.begin().await?;
        let stored = upsert_peer(&mut tx, record, now).await?;
        mark_known(&mut tx, &record.record().node_id, now).await?;
        tx.commit().await?;
        Ok(stored)
    }

    /// Whether `node_id` counts as known for the `known-peers` policy:
    /// this node connected to it, accepted its handshake, or its owner
    /// added it. A record merely seen (listed by discovery) does not count.
    pub async fn is_known_peer(&self, node_id: &NodeId) -> Result<bool, StoreError> {
        let row = sqlx::query("SELECT 1 FROM peers WHERE node_id = ? AND known_since IS NOT NULL")
            .bind(&node_id.as_bytes()[..])
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.is_some())
    }

    /// The highest record seen for a peer.
    pub async fn peer(&self, node_id: &NodeId) -> Result<Option<SignedRecord>, StoreError> {
        let row = sqlx::query("SELECT record FROM peers WHERE node_id = ?")
            .bind(&node_id.as_bytes()[..])
            .fetch_optional(&self.pool)
            .await?;
        row.map(|row| {
            let bytes: Vec<u8> = row.try_get("record")?;
            SignedRecord::decode(&bytes)
                .map_err(|e| StoreError::Corrupt(format!("peer record: {e}")))
        })
        .transpose()
    }

    /// The highest record seen of every peer (known or not).
    pub async fn peers(&self) -> Result<Vec<SignedRecord>, StoreError> {
        let rows = sqlx::query("SELECT record FROM peers ORDER BY node_id")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|row| {
                let bytes: Vec<u8> = row.try_get("record")?;
                SignedRecord::decode(&bytes)
                    .map_err(|e| StoreError::Corrupt(format!("peer record: {e}")))
            })
            .collect()
    }

    /// A setting.
    pub async fn setting(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let row = sqlx::query("SELECT value FROM settings WHERE key = ?")
            .bind(key)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.try_get("value")).transpose()?)
    }

    /// Sets a setting.
    pub async fn set_setting(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO settings (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value")
            .bind(key)
            .bind(value)
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    /// Reserves the next record seq: persisted before use, so a restart
    /// never signs two records with one seq.
    pub async fn next_record_seq(&self, now: UnixTime) -> Result<u64, StoreError> {
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
        let row = sqlx::query("SELECT value FROM settings WHERE key = 'record_seq'")
            .fetch_optional(&mut *tx)
            .await?;
        let last = match row {
            Some(row) => {
                let bytes: Vec<u8> = row.try_get("value")?;
                let bytes: [u8; 8] = bytes
                    .try_into()
                    .map_err(|_| StoreError::Corrupt("record_seq".into()))?;
                u64::from_be_bytes(bytes)
            }
            None => 0,
        };
        // Never below the clock in milliseconds: a node whose database was
        // lost still outruns the seq the directory remembers.
        let next = (last + 1).max(now.0.saturating_mul(1000));
        sqlx::query("INSERT INTO settings (key, value) VALUES ('record_seq', ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value")
            .bind(&next.to_be_bytes()[..])
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(next)
    }

    /// The read pool, for modules that keep tables in this database.
    pub(crate) fn reader(&self) -> &SqlitePool {
        &self.pool
    }

    /// The one writer connection's pool.
    pub(crate) fn writer(&self) -> &SqlitePool {
        &self.writer
    }

    /// Seals and opens values at rest under the node's storage key.
    pub(crate) fn sealer(&self) -> &Sealer {
        &self.sealer
    }

    /// Closes the pools.
    pub async fn close(&self) {
        self.pool.close().await;
        self.writer.close().await;
    }
}

/// Stores a peer's record if its seq is at least the highest seen; `false`
/// (nothing written) for an older one.
async fn upsert_peer(
    conn: &mut sqlx::SqliteConnection,
    record: &SignedRecord,
    now: UnixTime,
) -> Result<bool, StoreError> {
    let r = record.record();
    let result = sqlx::query(
        "INSERT INTO peers (node_id, seq, record, updated_at) VALUES (?, ?, ?, ?) \
         ON CONFLICT (node_id) DO UPDATE SET seq = excluded.seq, record = excluded.record, \
         updated_at = excluded.updated_at WHERE peers.seq <= excluded.seq",
    )
    .bind(&r.node_id.as_bytes()[..])
    .bind(to_i64(r.seq)?)
    .bind(record.as_bytes())
    .bind(to_i64(now.0)?)
    .execute(conn)
    .await?;
    Ok(result.rows_affected() == 1)
}

/// Marks a peer whose record is stored as known (the first time counts).
async fn mark_known(
    conn: &mut sqlx::SqliteConnection,
    node_id: &NodeId,
    now: UnixTime,
) -> Result<(), StoreError> {
    sqlx::query("UPDATE peers SET known_since = COALESCE(known_since, ?) WHERE node_id = ?")
        .bind(to_i64(now.0)?)
        .bind(&node_id.as_bytes()[..])
        .execute(conn)
        .await?;
    Ok(())
}

impl NodeStore {
    fn decode_token(
        &self,
        connection_id: &[u8; 16],
        row: &sqlx::sqlite::SqliteRow,
    ) -> Result<StoredToken, StoreError> {
        let expires_at: i64 = row.try_get("expires_at")?;
        let expires_at =
            UnixTime(u64::try_from(expires_at).map_err(|_| StoreError::Corrupt("expiry".into()))?);
        let sealed: Vec<u8> = row.try_get("sealed")?;
        let plain = self
            .sealer
            .open(&token_aad(connection_id, expires_at), &sealed)?;
        let corrupt = || StoreError::Corrupt("sealed token".into());
        let initiator: [u8; 32] = plain
            .get(..32)
            .ok_or_else(corrupt)?
            .try_into()
            .map_err(|_| corrupt())?;
        let link_public: [u8; 32] = plain
            .get(32..64)
            .ok_or_else(corrupt)?
            .try_into()
            .map_err(|_| corrupt())?;
        let record = SignedRecord::decode(plain.get(64..).ok_or_else(corrupt)?)
            .map_err(|e| StoreError::Corrupt(format!("token initiator record: {e}")))?;
        if record.record().node_id != NodeId::from_bytes(initiator) {
            return Err(corrupt());
        }
        Ok(StoredToken {
            initiator: NodeId::from_bytes(initiator),
            expires_at,
            initiator_record: record,
            link_public,
        })
    }
}

pub(crate) fn to_i64(value: u64) -> Result<i64, StoreError> {
    i64::try_from(value).map_err(|_| StoreError::Corrupt(format!("{value} exceeds i64")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_never_share_a_nonce_and_open_only_as_sealed() {
        let sealer = Sealer::new(&[9u8; 32]);
        let mut nonces = std::collections::HashSet::new();
        for _ in 0..2000 {
            let sealed = sealer.seal(b"aad", b"the same text").unwrap();
            assert!(nonces.insert(sealed[..24].to_vec()), "a nonce came twice");
            assert_eq!(&sealer.open(b"aad", &sealed).unwrap()[..], b"the same text");
            assert!(sealer.open(b"other aad", &sealed).is_err());
        }
        let sealed = sealer.seal(b"", b"").unwrap();
        let mut flipped = sealed.clone();
        flipped[30] ^= 1;
        assert!(sealer.open(b"", &flipped).is_err());
        assert!(Sealer::new(&[8u8; 32]).open(b"", &sealed).is_err());
    }

    #[tokio::test]
    async fn a_token_burns_once_and_its_tombstone_refuses_a_replayed_push() {
        let (_dir, store) = temp_store().await;
        let id = [7u8; 16];
        let token = token(record(5));
        let now = UnixTime(10);
        assert_eq!(
            store.accept_token(&id, &token, now).await.unwrap(),
            TokenState::Ok
        );
        assert_eq!(
            store.accept_token(&id, &token, now).await.unwrap(),
            TokenState::Duplicate
        );
        let (state, stored) = store.token(&id).await.unwrap();
        assert_eq!(state, TokenState::Ok);
        let stored = stored.unwrap();
        assert_eq!(
            stored.initiator_record.as_bytes(),
            token.initiator_record.as_bytes()
        );
        assert_eq!(stored.link_public, token.link_public);
        let initiator = token.initiator;
        assert!(!store.is_known_peer(&initiator).await.unwrap());
        assert_eq!(
            store.burn_token(&id, &initiator, now).await.unwrap(),
            TokenState::Ok
        );
        assert!(store.is_known_peer(&initiator).await.unwrap());
        assert_eq!(
            store.burn_token(&id, &initiator, now).await.unwrap(),
            TokenState::Unknown
        );
        assert_eq!(store.token(&id).await.unwrap().0, TokenState::Used);
        assert_eq!(
            store.accept_token(&id, &token, now).await.unwrap(),
            TokenState::Used
        );
        // The tombstone outlives the token's expiry by the clock skew, so a
        // clock stepped back cannot reopen the replay; then it goes.
        assert_eq!(store.purge_expired(UnixTime(100)).await.unwrap(), (0, 0));
        let kept_until = UnixTime(100 + TOKEN_CLOCK_SKEW_S);
        assert_eq!(
            store.purge_expired(kept_until.minus(1)).await.unwrap(),
            (0, 0)
        );
        assert_eq!(store.token(&id).await.unwrap().0, TokenState::Used);
        assert_eq!(store.purge_expired(kept_until).await.unwrap(), (0, 1));
    }

    /// A store in a new temporary folder (kept alive by the first value).
    async fn temp_store() -> (tempfile::TempDir, NodeStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = NodeStore::open(&dir.path().join("node.db"), &[7; 32])
            .await
            .unwrap();
        (dir, store)
    }

    fn record(seq: u64) -> SignedRecord {
        openred_core::NodeRecord::sign(
            &openred_core::IdentityKeypair::from_secret_bytes(&[1; 32]),
            openred_core::AgreementSecret::from_secret_bytes([2; 32]).public(),
            openred_core::ApiUrl::parse_origin("http://127.0.0.1:9").unwrap(),
            seq,
            UnixTime(1),
            UnixTime(1000),
        )
    }

    fn token(record: SignedRecord) -> StoredToken {
        StoredToken {
            initiator: record.record().node_id,
            expires_at: UnixTime(100),
            initiator_record: record,
            link_public: [3; 32],
        }
    }

    #[tokio::test]
    async fn a_token_with_a_rolled_back_record_is_refused_and_leaves_nothing() {
        let (_dir, store) = temp_store().await;
        let now = UnixTime(10);
        assert_eq!(
            store
                .accept_token(&[1; 16], &token(record(7)), now)
                .await
                .unwrap(),
            TokenState::Ok
        );
        assert_eq!(
            store
                .accept_token(&[2; 16], &token(record(6)), now)
                .await
                .unwrap(),
            TokenState::StalePeerRecord
        );
        assert_eq!(store.token(&[2; 16]).await.unwrap().0, TokenState::Unknown);
        let known = store
            .peer(&record(7).record().node_id)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(known.record().seq, 7);
        assert!(!store.is_current_peer_record(&record(6)).await.unwrap());
        assert!(store.is_current_peer_record(&record(7)).await.unwrap());
    }

    #[tokio::test]
    async fn the_initiator_records_its_tombstone_and_the_peer_together() {
        let (_dir, store) = temp_store().await;
        let id = [9u8; 16];
        assert!(store
            .record_introduction(&id, UnixTime(100), &record(4), UnixTime(10))
            .await
            .unwrap());
        assert_eq!(store.token(&id).await.unwrap().0, TokenState::Used);
        assert_eq!(store.peers().await.unwrap().len(), 1);
        // A newer record known meanwhile stays; the tombstone is written.
        store.remember_peer(&record(8), UnixTime(11)).await.unwrap();
        assert!(!store
            .record_introduction(&[10; 16], UnixTime(100), &record(5), UnixTime(12))
            .await
            .unwrap());
        assert_eq!(store.token(&[10; 16]).await.unwrap().0, TokenState::Used);
        assert_eq!(store.peers().await.unwrap()[0].record().seq, 8);
    }

    #[tokio::test]
    async fn a_sealed_token_opens_only_under_its_key_and_with_its_clear_columns() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.db");
        let store = NodeStore::open(&path, &[7; 32]).await.unwrap();
        let id = [4u8; 16];
        let t = token(record(5));
        store.accept_token(&id, &t, UnixTime(10)).await.unwrap();
        assert!(store.token(&id).await.is_ok());

        // Another node's key (or a lost master key) opens nothing.
        store.close().await;
        let other = NodeStore::open(&path, &[8; 32]).await.unwrap();
        assert!(matches!(
            other.token(&id).await,
            Err(StoreError::Corrupt(_))
        ));
        other.close().await;

        // Moving the expiry in the clear column breaks the seal.
        let store = NodeStore::open(&path, &[7; 32]).await.unwrap();
        sqlx::query("UPDATE tokens SET expires_at = expires_at + 100")
            .execute(&store.writer)
            .await
            .unwrap();
        assert!(matches!(
            store.token(&id).await,
            Err(StoreError::Corrupt(_))
        ));
        // So does moving a sealed value to another connection ID.
        sqlx::query("UPDATE tokens SET expires_at = expires_at - 100, connection_id = ?")
            .bind(&[5u8; 16][..])
            .execute(&store.writer)
            .await
            .unwrap();
        assert!(matches!(
            store.token(&[5; 16]).await,
            Err(StoreError::Corrupt(_))
        ));
    }

    #[tokio::test]
    async fn record_seq_grows_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.db");
        let store = NodeStore::open(&path, &[7; 32]).await.unwrap();
        let a = store.next_record_seq(UnixTime(5)).await.unwrap();
        let b = store.next_record_seq(UnixTime(5)).await.unwrap();
        assert!(b > a);
        store.close().await;
        let store = NodeStore::open(&path, &[7; 32]).await.unwrap();
        assert!(store.next_record_seq(UnixTime(5)).await.unwrap() > b);
    }
}
