//! Persistent storage of node records, on SQLite or PostgreSQL through
//! sqlx's `Any` driver, with one set of portable SQL statements.
//!
//! The store is the source of truth: a write is acknowledged to a client only
//! after its transaction committed (SQLite runs in WAL mode with
//! `synchronous = FULL`). Record writes go through one writer task that
//! groups the writes waiting at that moment into one transaction (group
//! commit, [`GroupCommit`]), so durability costs one fsync per batch, not
//! one per request. The ordering rule "a record replaces the stored one
//! only if its `seq` is greater" is enforced inside the single `UPSERT`
//! statement, so two replicas racing on one PostgreSQL database can never let
//! an older record win.

use std::collections::HashSet;
use std::str::FromStr;
use std::time::Duration;

use openred_core::{NodeId, SignedRecord, UnixTime};
use openred_http::group_commit::{Commit, CommitError, GroupCommit, Limits};
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyConnection, AnyPool, Executor, Row};

use crate::config::Database;

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// A storage failure. Never shown to clients.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database refused or failed.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// Migrations failed.
    #[error("migration error: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    /// A record write was not acknowledged: its group commit failed
    /// (none of that batch was stored), or the writer task has stopped
    /// (the store is closing).
    #[error(transparent)]
    Writer(#[from] CommitError),
    /// A row holds something that this code never writes.
    #[error("corrupt row: {0}")]
    Corrupt(String),
}

/// A node as stored.
#[derive(Debug, Clone)]
pub struct StoredNode {
    /// The node.
    pub node_id: NodeId,
    /// The highest `seq` seen (from a record or a deregistration).
    pub seq: u64,
    /// The current record; `None` after deregistration.
    pub record: Option<SignedRecord>,
    /// When the directory last heard from it.
    pub last_seen: UnixTime,
    /// The identity key, kept after deregistration.
    pub identity_key: [u8; 32],
}

/// The outcome of a conditional write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Write {
    /// Written.
    Applied,
    /// Refused: the stored `seq` is not smaller.
    Stale {
        /// The `seq` in the database.
        stored_seq: u64,
    },
}

/// Which status a listing wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusFilter {
    /// Everything registered.
    Any,
    /// Seen at or after the cutoff.
    ActiveSince(UnixTime),
    /// Not seen since the cutoff.
    InactiveBefore(UnixTime),
}

/// The node database.
#[derive(Debug, Clone)]
pub struct Store {
    pool: AnyPool,
    writer: GroupCommit<RecordWriter>,
}

/// A record write waiting for the next group commit.
#[derive(Debug)]
struct PendingWrite {
    record: SignedRecord,
    now: UnixTime,
}

/// The most writes committed in one transaction.
const MAX_BATCH: usize = 512;

/// The record writer's sizes: one row per write.
const WRITER: Limits = Limits {
    name: "directory records",
    queue: 4 * MAX_BATCH,
    max_rows: MAX_BATCH,
};

const COLUMNS: &str = "node_id, identity_key, seq, record, last_seen";

impl Store {
    /// Opens (creating if needed) the database and runs its migrations.
    pub async fn open(database: &Database) -> Result<Store, StoreError> {
        sqlx::any::install_default_drivers();
        let (url, migrator, sqlite) = match database {
            Database::Sqlite(path) => (
                format!("sqlite://{}?mode=rwc", path.display()),
                &SQLITE_MIGRATIONS,
                true,
            ),
            Database::Postgres(url) => (url.clone(), &POSTGRES_MIGRATIONS, false),
        };
        let options = AnyConnectOptions::from_str(&url)?;
        let pool = AnyPoolOptions::new()
            .max_connections(if sqlite { 4 } else { 16 })
            .acquire_timeout(Duration::from_secs(10))
            // A ping before every acquire is a round trip to the connection's
            // worker thread; a local SQLite file has no connection to lose.
            .test_before_acquire(!sqlite)
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if sqlite {
                        // WAL lets readers run beside the writer; FULL makes a
                        // commit durable before we acknowledge it.
                        conn.execute("PRAGMA journal_mode = WAL").await?;
                        conn.execute("PRAGMA synchronous = FULL").await?;
                        conn.execute("PRAGMA busy_timeout = 10000").await?;
                        // 64 MiB of page cache: 100,000 records stay in memory,
                        // so a write does not re-read its pages from the OS.
                        conn.execute("PRAGMA cache_size = -65536").await?;
                    }
                    Ok(())
                })
            })
            .connect_with(options)
            .await?;
        migrator.run(&pool).await?;
        let writer = GroupCommit::spawn(RecordWriter { pool: pool.clone() }, WRITER);
        Ok(Store { pool, writer })
    }

    /// Stores `record` if its `seq` is greater than the stored one (or the
    /// node is new), and marks the node seen at `now`. Returns once the
    /// write is committed.
    pub async fn upsert_record(
        &self,
        record: &SignedRecord,
        now: UnixTime,
    ) -> Result<Write, StoreError> {
        let pending = PendingWrite {
            record: record.clone(),
            now,
        };
        Ok(self.writer.write(pending).await?)
    }

    /// Marks a node deregistered if `seq` is greater than the stored one.
    /// Returns `None` if the node is unknown or already gone.
    pub async fn deregister(
        &self,
        node_id: &NodeId,
        seq: u64,
        now: UnixTime,
    ) -> Result<Option<Write>, StoreError> {
        let result = sqlx::query(
            "UPDATE nodes SET seq = $1, record = NULL, api_url = NULL, last_seen = $2, deregistered = 1 \
             WHERE node_id = $3 AND seq < $1 AND deregistered = 0",
        )
        .bind(to_i64(seq)?)
        .bind(to_i64(now.0)?)
        .bind(node_id.as_bytes().to_vec())
        .execute(&self.pool)
        .await?;
        if result.rows_affected() == 1 {
            return Ok(Some(Write::Applied));
        }
        match self.node(node_id).await? {
            Some(node) if node.record.is_some() => Ok(Some(Write::Stale {
                stored_seq: node.seq,
            })),
            _ => Ok(None),
        }
    }

    /// The stored node, including a deregistered one (with `record: None`).
    pub async fn node(&self, node_id: &NodeId) -> Result<Option<StoredNode>, StoreError> {
        let row = sqlx::query(&format!("SELECT {COLUMNS} FROM nodes WHERE node_id = $1"))
            .bind(node_id.as_bytes().to_vec())
            .fetch_optional(&self.pool)
            .await?;
        row.map(|row| decode_row(&row)).transpose()
    }

    /// A page of registered (not deregistered) nodes in node ID order,
    /// starting after `after`.
    pub async fn page(
        &self,
        after: Option<NodeId>,
        filter: StatusFilter,
        limit: u32,
    ) -> Result<Vec<StoredNode>, StoreError> {
        let after = after.map(|id| id.as_bytes().to_vec()).unwrap_or_default();
        let (condition, cutoff) = match filter {
            StatusFilter::Any => ("last_seen >= $2", 0),
            StatusFilter::ActiveSince(t) => ("last_seen >= $2", to_i64(t.0)?),
            StatusFilter::InactiveBefore(t) => ("last_seen < $2", to_i64(t.0)?),
        };
        let sql = format!(
            "SELECT {COLUMNS} FROM nodes WHERE node_id > $1 AND {condition} AND deregistered = 0 \
             ORDER BY node_id LIMIT $3"
        );
        let rows = sqlx::query(&sql)
            .bind(after)
            .bind(cutoff)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(decode_row).collect()
    }

    /// Every registered node, to warm the lookup cache at start.
    pub async fn all_registered(&self) -> Result<Vec<StoredNode>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM nodes WHERE deregistered = 0"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(decode_row).collect()
    }

    /// `(active, inactive)` counts of registered nodes.
    pub async fn counts(&self, active_since: UnixTime) -> Result<(u64, u64), StoreError> {
        let row = sqlx::query(
            "SELECT COUNT(*) AS total, \
                    COALESCE(SUM(CASE WHEN last_seen >= $1 THEN 1 ELSE 0 END), 0) AS active \
             FROM nodes WHERE deregistered = 0",
        )
        .bind(to_i64(active_since.0)?)
        .fetch_one(&self.pool)
        .await?;
        let total = from_i64(row.try_get("total")?)?;
        let active = from_i64(row.try_get("active")?)?;
        Ok((active, total.saturating_sub(active)))
    }

    /// Deletes nodes (registered or deregistered) not seen since `cutoff`,
    /// returning their IDs.
    pub async fn prune(&self, cutoff: UnixTime) -> Result<Vec<NodeId>, StoreError> {
        let rows = sqlx::query("DELETE FROM nodes WHERE last_seen < $1 RETURNING node_id")
            .bind(to_i64(cutoff.0)?)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|row| node_id_from(row.try_get("node_id")?))
            .collect()
    }

    /// Records an introduction request's nonce until `expires_at`. Returns
    /// `false` if the requester used it within its window already: a replay.
    /// A row whose window has ended (not pruned yet) is taken over, so a
    /// nonce is refused exactly as long as it must be.
    pub async fn claim_nonce(
        &self,
        node_id: &NodeId,
        nonce: &[u8; 16],
        expires_at: UnixTime,
        now: UnixTime,
    ) -> Result<bool, StoreError> {
        let result = sqlx::query(
            "INSERT INTO connection_nonces (node_id, nonce, expires_at) VALUES ($1, $2, $3) \
             ON CONFLICT (node_id, nonce) DO UPDATE SET expires_at = excluded.expires_at \
             WHERE connection_nonces.expires_at < $4",
        )
        .bind(node_id.as_bytes().to_vec())
        .bind(nonce.to_vec())
        .bind(to_i64(expires_at.0)?)
        .bind(to_i64(now.0)?)
        .execute(&self.pool)
        .await?;
        Ok(result.rows_affected() == 1)
    }

    /// Deletes nonces whose freshness window has ended.
    pub async fn prune_nonces(&self, now: UnixTime) -> Result<u64, StoreError> {
        let result = sqlx::query("DELETE FROM connection_nonces WHERE expires_at < $1")
            .bind(to_i64(now.0)?)
            .execute(&self.pool)
            .await?;
        Ok(result.rows_affected())
    }

    /// Checks that the database answers a trivial query.
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// Every table's content as text, for tests that look for secrets that
    /// must never be stored.
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Closes the pool, waiting for connections to finish.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// The record writer's transactions: the writes waiting now (up to
/// [`MAX_BATCH`]) run in arrival order in one transaction; if it fails,
/// every write in it fails and none is acknowledged ([`GroupCommit`]).
#[derive(Debug)]
struct RecordWriter {
    pool: AnyPool,
}

impl Commit for RecordWriter {
    type Job = PendingWrite;
    type Outcome = Write;
    type Error = StoreError;

    async fn commit(&self, batch: &[PendingWrite]) -> Result<Vec<Write>, StoreError> {
        commit_batch(&self.pool, batch).await
    }
}

/// Rows per multi-row statement (6 parameters each, far below both
/// databases' parameter limits).
const ROWS_PER_STATEMENT: usize = 128;

/// Writes a batch in one transaction: the rows go in as few multi-row
/// conditional upserts as possible (one database round trip per
/// [`ROWS_PER_STATEMENT`] rows rather than one per row), in arrival order. A
/// node that appears twice in a batch is written in a later statement, so
/// that one statement never touches a row twice and the later record is
/// judged against the earlier one.
async fn commit_batch(pool: &AnyPool, batch: &[PendingWrite]) -> Result<Vec<Write>, StoreError> {
    let mut tx = pool.begin().await?;
    let mut outcomes: Vec<Option<Write>> = vec![None; batch.len()];
    let mut remaining: Vec<usize> = (0..batch.len()).collect();
    while !remaining.is_empty() {
        let mut seen = HashSet::new();
        let (round, later): (Vec<usize>, Vec<usize>) = remaining
            .iter()
            .partition(|&&i| seen.insert(batch[i].record.record().node_id));
        for chunk in round.chunks(ROWS_PER_STATEMENT) {
            let applied = upsert_rows(&mut tx, batch, chunk).await?;
            for &i in chunk {
                if applied.contains(&batch[i].record.record().node_id) {
                    outcomes[i] = Some(Write::Applied);
                }
            }
        }
        remaining = later;
    }
    let mut result = Vec::with_capacity(batch.len());
    for (i, outcome) in outcomes.into_iter().enumerate() {
        result.push(match outcome {
            Some(write) => write,
            // Refused by the seq condition: rare, so read the stored seq
            // one row at a time.
            None => stale_outcome(&mut tx, &batch[i].record.record().node_id).await?,
        });
    }
    tx.commit().await?;
    Ok(result)
}

/// The conditional write: the `WHERE` of the upsert makes "only a greater
/// `seq` wins" atomic in the database itself, whatever else writes to it.
/// Returns the nodes whose row was written.
async fn upsert_rows(
    conn: &mut AnyConnection,
    batch: &[PendingWrite],
    rows: &[usize],
) -> Result<HashSet<NodeId>, StoreError> {
    let values = (0..rows.len())
        .map(|k| {
            let p = 6 * k;
            format!(
                "(${}, ${}, ${}, ${}, ${}, ${}, 0)",
                p + 1,
                p + 2,
                p + 3,
                p + 4,
                p + 5,
                p + 6
            )
        })
        .collect::<Vec<_>>()
        .join(", ");
    let sql = format!(
        "INSERT INTO nodes (node_id, identity_key, seq, record, api_url, last_seen, deregistered) \
         VALUES {values} \
         ON CONFLICT (node_id) DO UPDATE SET \
           identity_key = excluded.identity_key, seq = excluded.seq, record = excluded.record, \
           api_url = excluded.api_url, last_seen = excluded.last_seen, deregistered = 0 \
         WHERE nodes.seq < excluded.seq \
         RETURNING node_id"
    );
    let mut query = sqlx::query(&sql);
    for &i in rows {
        let pending = &batch[i];
        let r = pending.record.record();
        query = query
            .bind(r.node_id.as_bytes().to_vec())
            .bind(r.identity_key.to_bytes().to_vec())
            .bind(to_i64(r.seq)?)
            .bind(pending.record.as_bytes().to_vec())
            .bind(r.api_url.as_str().to_owned())
            .bind(to_i64(pending.now.0)?);
    }
    let written = query.fetch_all(&mut *conn).await?;
    written
        .iter()
        .map(|row| node_id_from(row.try_get("node_id")?))
        .collect()
}

async fn stale_outcome(conn: &mut AnyConnection, node_id: &NodeId) -> Result<Write, StoreError> {
    let row = sqlx::query("SELECT seq FROM nodes WHERE node_id = $1")
        .bind(node_id.as_bytes().to_vec())
        .fetch_one(&mut *conn)
        .await?;
    Ok(Write::Stale {
        stored_seq: from_i64(row.try_get("seq")?)?,
    })
}

fn decode_row(row: &sqlx::any::AnyRow) -> Result<StoredNode, StoreError> {
    let node_id = node_id_from(row.try_get("node_id")?)?;
    let identity_key: Vec<u8> = row.try_get("identity_key")?;
    let identity_key: [u8; 32] = identity_key
        .try_into()
        .map_err(|_| StoreError::Corrupt("identity_key is not 32 bytes".into()))?;
    let record: Option<Vec<u8>> = row.try_get("record")?;
    // Records were verified before they were stored; decoding verifies again,
    // so a tampered database cannot make us serve a forged record.
    let record = record
        .map(|bytes| {
            SignedRecord::decode(&bytes)
                .map_err(|e| StoreError::Corrupt(format!("stored record: {e}")))
        })
        .transpose()?;
    Ok(StoredNode {
        node_id,
        seq: from_i64(row.try_get("seq")?)?,
        record,
        last_seen: UnixTime(from_i64(row.try_get("last_seen")?)?),
        identity_key,
    })
}

fn node_id_from(bytes: Vec<u8>) -> Result<NodeId, StoreError> {
    let bytes: [u8; 32] = bytes
        .try_into()
        .map_err(|_| StoreError::Corrupt("node_id is not 32 bytes".into()))?;
    Ok(NodeId::from_bytes(bytes))
}

fn to_i64(value: u64) -> Result<i64, StoreError> {
    i64::try_from(value).map_err(|_| StoreError::Corrupt(format!("{value} exceeds i64")))
}

fn from_i64(value: i64) -> Result<u64, StoreError> {
    u64::try_from(value).map_err(|_| StoreError::Corrupt(format!("negative value {value}")))
}
