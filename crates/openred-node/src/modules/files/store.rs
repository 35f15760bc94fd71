//! The file sharing tables in the node's database: shares and their
//! permitted peers, the links handed out (capability hashes, sealed link
//! secrets), the count of completed downloads, and the receiving side's
//! downloads.

use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use openred_core::session::Suite;
use openred_core::{NodeId, UnixTime};
use sqlx::{QueryBuilder, Row, Sqlite};
use zeroize::Zeroizing;

use super::disk::FileIdentity;
use crate::store::{to_i64, NodeStore, StoreError};

const LINK_AAD: &[u8] = b"openred/v1/file-link";

/// A share's or a transfer's 16-byte ID, written as 32 hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileId(pub [u8; 16]);

impl FileId {
    /// A fresh random ID.
    pub fn random() -> Result<FileId, StoreError> {
        Ok(FileId(random_bytes()?))
    }

    /// Parses the hex form.
    pub fn parse(text: &str) -> Option<FileId> {
        if text.len() != 32 {
            return None;
        }
        let bytes = data_encoding::HEXLOWER_PERMISSIVE
            .decode(text.as_bytes())
            .ok()?;
        Some(FileId(bytes.try_into().ok()?))
    }
}

impl std::fmt::Display for FileId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&data_encoding::HEXLOWER.encode(&self.0))
    }
}

/// `N` random bytes.
pub fn random_bytes<const N: usize>() -> Result<[u8; N], StoreError> {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes).map_err(StoreError::Randomness)?;
    Ok(bytes)
}

/// A file this node shares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Share {
    /// Its ID.
    pub file_id: FileId,
    /// The name shown to peers (the last component, made safe).
    pub name: String,
    /// The canonical path recorded when it was shared.
    pub path: PathBuf,
    /// The file's identity when it was shared (its size included).
    pub identity: FileIdentity,
    /// BLAKE3 of the contents.
    pub blake3: [u8; 32],
    /// Plaintext bytes per chunk.
    pub chunk_size: u32,
    /// The peers allowed to fetch it.
    pub peers: Vec<NodeId>,
    /// When it was shared.
    pub created_at: UnixTime,
    /// After this, no new link.
    pub expires_at: UnixTime,
    /// Completed downloads allowed, if limited.
    pub max_downloads: Option<u64>,
    /// Completed downloads so far.
    pub downloads: u64,
    /// When it was revoked, if it was.
    pub revoked_at: Option<UnixTime>,
}

impl Share {
    /// The share's size in bytes.
    pub fn size(&self) -> u64 {
        self.identity.size
    }

    /// Whether the download limit is reached.
    pub fn limit_reached(&self) -> bool {
        self.max_downloads.is_some_and(|max| self.downloads >= max)
    }
}

/// A link handed to a peer, as stored (without the capability itself).
#[derive(Clone)]
pub struct Link {
    /// The share.
    pub file_id: FileId,
    /// The peer it is bound to.
    pub peer: NodeId,
    /// The AEAD of its chunks.
    pub suite: Suite,
    /// After this, refused.
    pub expires_at: UnixTime,
    /// The secret its chunk keys derive from.
    pub secret: Zeroizing<[u8; 32]>,
    /// When its download was counted as completed, if it was.
    pub completed_at: Option<UnixTime>,
}

/// The outcome of counting a completed download.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Completion {
    /// Counted now.
    Counted,
    /// This link was counted before (a resumed download): not again.
    AlreadyCounted,
    /// The share was revoked meanwhile.
    Revoked,
    /// Another download took the last allowed one.
    LimitReached,
}

/// Where a download stands on the receiving side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DownloadState {
    /// Running, or interrupted and to resume.
    Active,
    /// Verified and in place.
    Done,
    /// Given up, with the reason.
    Failed,
}

impl DownloadState {
    fn as_str(self) -> &'static str {
        match self {
            DownloadState::Active => "active",
            DownloadState::Done => "done",
            DownloadState::Failed => "failed",
        }
    }

    fn parse(text: &str) -> Result<DownloadState, StoreError> {
        Ok(match text {
            "active" => DownloadState::Active,
            "done" => DownloadState::Done,
            "failed" => DownloadState::Failed,
            other => return Err(StoreError::Corrupt(format!("download state {other:?}"))),
        })
    }
}

/// A download on the receiving side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Download {
    /// The owner.
    pub peer: NodeId,
    /// The share.
    pub file_id: FileId,
    /// This node's ID for the transfer (stable across resumes).
    pub transfer_id: FileId,
    /// The owner's name for it (for display only).
    pub name: String,
    /// Where it goes.
    pub out_path: PathBuf,
    /// Its size.
    pub size: u64,
    /// What it must hash to.
    pub blake3: [u8; 32],
    /// The owner's chunk size.
    pub chunk_size: u32,
    /// Where it stands.
    pub state: DownloadState,
    /// Why it failed.
    pub error: Option<String>,
}

/// The file sharing tables.
#[derive(Clone)]
pub struct FileStore {
    store: NodeStore,
}

fn node_id(bytes: Vec<u8>) -> Result<NodeId, StoreError> {
    let bytes: [u8; 32] = bytes
        .try_into()
        .map_err(|_| StoreError::Corrupt("a node ID is not 32 bytes".into()))?;
    Ok(NodeId::from_bytes(bytes))
}

fn array<const N: usize>(bytes: Vec<u8>, what: &str) -> Result<[u8; N], StoreError> {
    bytes
        .try_into()
        .map_err(|_| StoreError::Corrupt(format!("{what} is not {N} bytes")))
}

fn u64_of(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

fn time(value: i64) -> UnixTime {
    UnixTime(u64_of(value))
}

fn link_aad(link_hash: &[u8; 32], link: &Link) -> Vec<u8> {
    [
        LINK_AAD,
        link_hash,
        &link.file_id.0,
        link.peer.as_bytes(),
        &link.expires_at.0.to_be_bytes(),
    ]
    .concat()
}

impl FileStore {
    /// The file sharing tables of `store`.
    pub fn new(store: NodeStore) -> FileStore {
        FileStore { store }
    }

    /// Stores a new share with its peers, in one transaction.
    pub async fn insert_share(&self, share: &Share) -> Result<(), StoreError> {
        let mut tx = self.store.writer().begin().await?;
        sqlx::query(
            "INSERT INTO file_shares (file_id, name, path, size, blake3, chunk_size, device, \
             inode, mtime_ns, created_at, expires_at, max_downloads) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&share.file_id.0[..])
        .bind(&share.name)
        .bind(share.path.as_os_str().as_bytes())
        .bind(to_i64(share.size())?)
        .bind(&share.blake3[..])
        .bind(i64::from(share.chunk_size))
        // Device and inode numbers are 64-bit patterns: stored as they are.
        .bind(share.identity.device as i64)
        .bind(share.identity.inode as i64)
        .bind(share.identity.mtime_ns)
        .bind(to_i64(share.created_at.0)?)
        .bind(to_i64(share.expires_at.0)?)
        .bind(share.max_downloads.map(to_i64).transpose()?)
        .execute(&mut *tx)
        .await?;
        let mut peers: QueryBuilder<Sqlite> =
            QueryBuilder::new("INSERT INTO file_share_peers (file_id, peer) ");
        peers.push_values(&share.peers, |mut row, peer| {
            row.push_bind(share.file_id.0.to_vec())
                .push_bind(peer.as_bytes().to_vec());
        });
        peers.build().execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(())
    }

    /// One share.
    pub async fn share(&self, file_id: &FileId) -> Result<Option<Share>, StoreError> {
        let row = sqlx::query("SELECT * FROM file_shares WHERE file_id = ?")
            .bind(&file_id.0[..])
            .fetch_optional(self.store.reader())
            .await?;
        match row {
            Some(row) => Ok(Some(self.with_peers(&row).await?)),
            None => Ok(None),
        }
    }

    /// The shares, newest first.
    pub async fn shares(&self, limit: usize) -> Result<Vec<Share>, StoreError> {
        let rows =
            sqlx::query("SELECT * FROM file_shares ORDER BY created_at DESC, rowid DESC LIMIT ?")
                .bind(to_i64(limit as u64)?)
                .fetch_all(self.store.reader())
                .await?;
        let mut shares = Vec::with_capacity(rows.len());
        for row in &rows {
            shares.push(self.with_peers(row).await?);
        }
        Ok(shares)
    }

    async fn with_peers(&self, row: &sqlx::sqlite::SqliteRow) -> Result<Share, StoreError> {
        let file_id = FileId(array(row.try_get("file_id")?, "a file ID")?);
        let peers =
            sqlx::query("SELECT peer FROM file_share_peers WHERE file_id = ? ORDER BY peer")
                .bind(&file_id.0[..])
                .fetch_all(self.store.reader())
                .await?
                .into_iter()
                .map(|r| node_id(r.try_get("peer")?))
                .collect::<Result<_, _>>()?;
        let path: Vec<u8> = row.try_get("path")?;
        let chunk_size: i64 = row.try_get("chunk_size")?;
        Ok(Share {
            file_id,
            name: row.try_get("name")?,
            path: PathBuf::from(<std::ffi::OsStr as OsStrExt>::from_bytes(&path)),
            identity: FileIdentity {
                device: row.try_get::<i64, _>("device")? as u64,
                inode: row.try_get::<i64, _>("inode")? as u64,
                size: u64_of(row.try_get("size")?),
                mtime_ns: row.try_get("mtime_ns")?,
            },
            blake3: array(row.try_get("blake3")?, "a hash")?,
            chunk_size: u32::try_from(chunk_size)
                .map_err(|_| StoreError::Corrupt("chunk size".into()))?,
            peers,
            created_at: time(row.try_get("created_at")?),
            expires_at: time(row.try_get("expires_at")?),
            max_downloads: row.try_get::<Option<i64>, _>("max_downloads")?.map(u64_of),
            downloads: u64_of(row.try_get("downloads")?),
            revoked_at: row.try_get::<Option<i64>, _>("revoked_at")?.map(time),
        })
    }

    /// Revokes a share: its links stay until they expire, to be refused
    /// as `revoked`. Returns whether it existed.
    pub async fn revoke(&self, file_id: &FileId, now: UnixTime) -> Result<bool, StoreError> {
        Ok(sqlx::query(
            "UPDATE file_shares SET revoked_at = COALESCE(revoked_at, ?) WHERE file_id = ?",
        )
        .bind(to_i64(now.0)?)
        .bind(&file_id.0[..])
        .execute(self.store.writer())
        .await?
        .rows_affected()
            == 1)
    }

    /// Stores a link under the hash of its capability.
    pub async fn insert_link(
        &self,
        link_hash: &[u8; 32],
        link: &Link,
        now: UnixTime,
    ) -> Result<(), StoreError> {
        let sealed = self
            .store
            .sealer()
            .seal(&link_aad(link_hash, link), &link.secret[..])?;
        sqlx::query(
            "INSERT INTO file_links (link_hash, file_id, peer, suite, created_at, expires_at, secret) \
             VALUES (?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&link_hash[..])
        .bind(&link.file_id.0[..])
        .bind(&link.peer.as_bytes()[..])
        .bind(i64::from(link.suite.id()))
        .bind(to_i64(now.0)?)
        .bind(to_i64(link.expires_at.0)?)
        .bind(sealed)
        .execute(self.store.writer())
        .await?;
        Ok(())
    }

    /// The link whose capability hashes to `link_hash`.
    pub async fn link(&self, link_hash: &[u8; 32]) -> Result<Option<Link>, StoreError> {
        let Some(row) = sqlx::query("SELECT * FROM file_links WHERE link_hash = ?")
            .bind(&link_hash[..])
            .fetch_optional(self.store.reader())
            .await?
        else {
            return Ok(None);
        };
        let suite: i64 = row.try_get("suite")?;
        let mut link = Link {
            file_id: FileId(array(row.try_get("file_id")?, "a file ID")?),
            peer: node_id(row.try_get("peer")?)?,
            suite: u8::try_from(suite)
                .ok()
                .and_then(Suite::from_id)
                .ok_or_else(|| StoreError::Corrupt("a link's suite".into()))?,
            expires_at: time(row.try_get("expires_at")?),
            secret: Zeroizing::new([0; 32]),
            completed_at: row.try_get::<Option<i64>, _>("completed_at")?.map(time),
        };
        let sealed: Vec<u8> = row.try_get("secret")?;
        let secret = self
            .store
            .sealer()
            .open(&link_aad(link_hash, &link), &sealed)?;
        link.secret.copy_from_slice(
            secret
                .get(..32)
                .ok_or_else(|| StoreError::Corrupt("a link secret".into()))?,
        );
        Ok(Some(link))
    }

    /// Counts the download of `link_hash` as completed, once per link, if
    /// the share is not revoked and its limit allows one more; all in one
    /// transaction, so that two downloads racing for the last allowed one
    /// cannot both have it.
    pub async fn complete(
        &self,
        link_hash: &[u8; 32],
        file_id: &FileId,
        now: UnixTime,
    ) -> Result<Completion, StoreError> {
        // In a task of its own, run to its end: the caller is an answer's
        // body, dropped at any await when the peer hangs up. A transaction
        // cut there under load left the node's one writer connection
        // inside it, and every later write of the node failed ("begin_with
        // at non-zero transaction depth"): a download could then never get
        // its final chunk (seen with the descriptors running out).
        let (this, link_hash, file_id) = (self.clone(), *link_hash, *file_id);
        tokio::spawn(async move { this.complete_to_the_end(&link_hash, &file_id, now).await })
            .await
            .map_err(|e| StoreError::Task(e.to_string()))?
    }

    async fn complete_to_the_end(
        &self,
        link_hash: &[u8; 32],
        file_id: &FileId,
        now: UnixTime,
    ) -> Result<Completion, StoreError> {
        let mut tx = self.store.writer().begin_with("BEGIN IMMEDIATE").await?;
        let row = sqlx::query("SELECT completed_at FROM file_links WHERE link_hash = ?")
            .bind(&link_hash[..])
            .fetch_optional(&mut *tx)
            .await?;
        match row {
            None => return Ok(Completion::Revoked),
            Some(row) if row.try_get::<Option<i64>, _>("completed_at")?.is_some() => {
                return Ok(Completion::AlreadyCounted)
            }
            Some(_) => {}
        }
        let counted = sqlx::query(
            "UPDATE file_shares SET downloads = downloads + 1 WHERE file_id = ? \
             AND revoked_at IS NULL AND (max_downloads IS NULL OR downloads < max_downloads)",
        )
        .bind(&file_id.0[..])
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        if !counted {
            let revoked = sqlx::query("SELECT revoked_at FROM file_shares WHERE file_id = ?")
                .bind(&file_id.0[..])
                .fetch_optional(&mut *tx)
                .await?
                .map(|r| r.try_get::<Option<i64>, _>("revoked_at"))
                .transpose()?
                .is_none_or(|at| at.is_some());
            return Ok(if revoked {
                Completion::Revoked
            } else {
                Completion::LimitReached
            });
        }
        sqlx::query("UPDATE file_links SET completed_at = ? WHERE link_hash = ?")
            .bind(to_i64(now.0)?)
            .bind(&link_hash[..])
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Completion::Counted)
    }

    /// Deletes links expired before `now`; returns how many.
    pub async fn purge_links(&self, now: UnixTime) -> Result<u64, StoreError> {
        Ok(sqlx::query("DELETE FROM file_links WHERE expires_at <= ?")
            .bind(to_i64(now.0)?)
            .execute(self.store.writer())
            .await?
            .rows_affected())
    }

    /// Records (or replaces) a download, as `Active`.
    pub async fn upsert_download(&self, d: &Download, now: UnixTime) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO file_downloads (peer, file_id, transfer_id, name, out_path, size, blake3, \
             chunk_size, state, error, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, ?, ?) \
             ON CONFLICT (peer, file_id) DO UPDATE SET transfer_id = excluded.transfer_id, \
             name = excluded.name, out_path = excluded.out_path, size = excluded.size, \
             blake3 = excluded.blake3, chunk_size = excluded.chunk_size, state = excluded.state, \
             error = NULL, updated_at = excluded.updated_at",
        )
        .bind(d.peer.as_bytes().to_vec())
        .bind(&d.file_id.0[..])
        .bind(&d.transfer_id.0[..])
        .bind(&d.name)
        .bind(d.out_path.as_os_str().as_bytes())
        .bind(to_i64(d.size)?)
        .bind(&d.blake3[..])
        .bind(i64::from(d.chunk_size))
        .bind(d.state.as_str())
        .bind(to_i64(now.0)?)
        .bind(to_i64(now.0)?)
        .execute(self.store.writer())
        .await?;
        Ok(())
    }

    /// Marks a download done or failed.
    pub async fn finish_download(
        &self,
        peer: &NodeId,
        file_id: &FileId,
        state: DownloadState,
        error: Option<&str>,
        now: UnixTime,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE file_downloads SET state = ?, error = ?, updated_at = ? WHERE peer = ? AND file_id = ?",
        )
        .bind(state.as_str())
        .bind(error)
        .bind(to_i64(now.0)?)
        .bind(&peer.as_bytes()[..])
        .bind(&file_id.0[..])
        .execute(self.store.writer())
        .await?;
        Ok(())
    }

    /// The download of `file_id` from `peer`, if any.
    pub async fn download(
        &self,
        peer: &NodeId,
        file_id: &FileId,
    ) -> Result<Option<Download>, StoreError> {
        let row = sqlx::query("SELECT * FROM file_downloads WHERE peer = ? AND file_id = ?")
            .bind(&peer.as_bytes()[..])
            .bind(&file_id.0[..])
            .fetch_optional(self.store.reader())
            .await?;
        row.map(|r| download(&r)).transpose()
    }

    /// The downloads still to finish (to resume at start).
    pub async fn active_downloads(&self) -> Result<Vec<Download>, StoreError> {
        let rows = sqlx::query("SELECT * FROM file_downloads WHERE state = 'active'")
            .fetch_all(self.store.reader())
            .await?;
        rows.iter().map(download).collect()
    }
}

fn download(row: &sqlx::sqlite::SqliteRow) -> Result<Download, StoreError> {
    let out: Vec<u8> = row.try_get("out_path")?;
    let chunk_size: i64 = row.try_get("chunk_size")?;
    Ok(Download {
        peer: node_id(row.try_get("peer")?)?,
        file_id: FileId(array(row.try_get("file_id")?, "a file ID")?),
        transfer_id: FileId(array(row.try_get("transfer_id")?, "a transfer ID")?),
        name: row.try_get("name")?,
        out_path: PathBuf::from(<std::ffi::OsStr as OsStrExt>::from_bytes(&out)),
        size: u64_of(row.try_get("size")?),
        blake3: array(row.try_get("blake3")?, "a hash")?,
        chunk_size: u32::try_from(chunk_size)
            .map_err(|_| StoreError::Corrupt("chunk size".into()))?,
        state: DownloadState::parse(row.try_get("state")?)?,
        error: row.try_get("error")?,
    })
}
