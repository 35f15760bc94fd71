//! The file sharing module: a node shares files with the peers its owner
//! names, through temporary encrypted links.
//!
//! - **Sharing** ([`Files::share`]): the owner names a file and peers; the
//!   node records the file's canonical path and identity (device, inode,
//!   size, modification time), hashes it (BLAKE3), stores the share with
//!   its expiry and download limit, and tells each peer with a messaging
//!   offer (content type [`OFFER_CONTENT_TYPE`]).
//! - **Asking for a link** (`POST /p2p/file-request`, a session frame):
//!   the owner checks that the peer is permitted, the share is neither
//!   revoked nor expired and its limit not reached, and answers a
//!   [`FileGrant`] inside the answer frame: `file_url`, an opaque random
//!   capability (only its hash is stored) bound to that peer and expiring
//!   (10 minutes by default), and the link secret the chunk keys derive
//!   from. The address to use is never in the answer: the peer is reached
//!   at the origin of its signed record, as for every session frame.
//! - **Downloading** (`POST /p2p/file-download`, a session frame of the
//!   bound peer carrying the capability, the first chunk wanted and a
//!   fresh nonce): the owner opens the file again (no symbolic link at the
//!   last component, and the recorded identity checked on the opened
//!   descriptor) and streams it as encrypted chunks
//!   ([`openred_core::file_transfer`]) with a bounded buffer, whatever the
//!   file's size. A link counts as one completed download when its final
//!   chunk is released, once, and only if the limit still allows it.
//! - **Receiving** ([`Files::fetch`]): the peer's node verifies each chunk
//!   as it arrives, appends it to `OUT.openred-part`, and at the end
//!   checks the whole file's BLAKE3, flushes it and renames it into place
//!   (never replacing a file). An interrupted download (either side
//!   restarted, the connection cut) resumes at its last verified chunk,
//!   with a fresh link when the old one has expired.
//!
//! Settings (`[modules.files]`): see [`Settings`]. Protocol details:
//! `docs/PROTOCOL.md`, "File sharing".

pub mod api;
pub mod disk;
mod download;
pub mod store;
pub mod transfers;
mod upload;

use openred_core::error_code::ErrorCode;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use openred_core::session::Suite;
use openred_core::{NodeId, UnixTime};
use serde::{Deserialize, Serialize};
use tokio::sync::{watch, Semaphore};

use self::disk::DiskError;
use self::store::{FileId, FileStore, Share};
use self::transfers::{Transfer, TransferView, Transfers};
use super::{Metric, Module, ModuleContext};
use crate::error::NodeError;
use crate::peer::Peers;
use crate::store::StoreError;

/// The module's name.
pub const NAME: &str = "files";
/// The P2P route that hands out links.
pub const REQUEST_PATH: &str = openred_core::routes::node::FILE_REQUEST;
/// The P2P route that streams a file.
pub const DOWNLOAD_PATH: &str = openred_core::routes::node::FILE_DOWNLOAD;
/// The messaging content type of an offer.
pub const OFFER_CONTENT_TYPE: &str = "application/vnd.openred.file-offer+json";
/// The start of every download stream, then the 16-byte transfer ID.
pub const STREAM_MAGIC: &[u8; 4] = b"ORF1";
/// The length of a download stream's header.
pub const STREAM_HEADER_LEN: usize = 4 + 16;
/// How a `file_url` starts; 43 base64url characters (32 bytes) follow.
pub const FILE_URL_PREFIX: &str = "openred-file:v1:";

/// The module's settings.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// How long a link lives (default 600 s).
    pub link_ttl_s: u64,
    /// Plaintext bytes per chunk for new shares (default 1 MiB; 16 KiB to
    /// 4 MiB).
    pub chunk_size: u32,
    /// A share's lifetime when none is given (default 24 h).
    pub default_expiry_s: u64,
    /// The longest lifetime accepted (default 365 days).
    pub max_expiry_s: u64,
    /// Files served at once, at most (default 8): memory per upload is a
    /// few chunks, so this bounds the node's.
    pub max_uploads: usize,
    /// Files served at once to one peer, at most (default 2): a peer that
    /// opens downloads and never reads them holds only these, never all
    /// of `max_uploads`.
    pub max_uploads_per_peer: usize,
    /// An upload whose reader takes nothing for this long is ended and
    /// its slots given back (default 60 s): a reader that stops reading
    /// holds no slot for good.
    pub upload_stall_timeout_s: u64,
    /// Upload rate per transfer in bytes per second; 0 for no limit.
    pub upload_bytes_per_s: u64,
    /// A read that brings nothing for this long ends an attempt (default
    /// 30 s).
    pub idle_timeout_s: u64,
    /// First retry of an interrupted download after about this (default
    /// 250 ms), doubling up to `retry_max_ms`.
    pub retry_base_ms: u64,
    /// The longest wait between retries (default 5 s).
    pub retry_max_ms: u64,
    /// A download that makes no progress for this long fails (default
    /// 600 s).
    pub give_up_after_s: u64,
    /// The AEAD of the chunks this node serves: `auto` (the default:
    /// AES-256-GCM where this CPU has AES instructions, else
    /// ChaCha20-Poly1305), `session` (the session's suite), or a suite's
    /// name. Always from the core's allowlist; the grant announces it.
    pub chunk_suite: String,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            link_ttl_s: 600,
            chunk_size: 1024 * 1024,
            default_expiry_s: 24 * 3600,
            max_expiry_s: 365 * 24 * 3600,
            max_uploads: 8,
            max_uploads_per_peer: 2,
            upload_stall_timeout_s: 60,
            upload_bytes_per_s: 0,
            idle_timeout_s: 30,
            retry_base_ms: 250,
            retry_max_ms: 5_000,
            give_up_after_s: 600,
            chunk_suite: "auto".into(),
        }
    }
}

/// A peer asks for a link (`POST /p2p/file-request`, in a session frame).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRequest {
    /// The share, 32 hex digits.
    pub file_id: String,
}

/// The owner's answer to a [`FileRequest`], inside the answer frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileGrant {
    /// The capability: `openred-file:v1:` and 32 random bytes (base64url).
    /// Not an address: the download goes to the same peer, at its signed
    /// record's origin, inside the session.
    pub file_url: String,
    /// The link secret the chunk keys derive from (32 bytes, base64url).
    pub link_secret: String,
    /// When the link stops working (Unix seconds).
    pub expires_at: u64,
    /// The share.
    pub file_id: String,
    /// The owner's name for the file: to display, never a path.
    pub name: String,
    /// Its size in bytes.
    pub size: u64,
    /// BLAKE3 of the contents, 64 hex digits.
    pub blake3: String,
    /// Plaintext bytes per chunk.
    pub chunk_size: u32,
    /// The chunks' AEAD.
    pub suite: String,
}

/// A peer asks for the file (`POST /p2p/file-download`, in a session
/// frame); the answer is the chunk stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DownloadRequest {
    /// The capability from the grant.
    pub file_url: String,
    /// The first chunk wanted (0, or where a resumed download goes on).
    pub from_chunk: u64,
    /// 16 fresh random bytes, 32 hex digits: in the stream's key.
    pub client_nonce: String,
}

/// The offer a sharer sends through messaging.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileOffer {
    /// The share, 32 hex digits.
    pub file_id: String,
    /// The owner's name for the file: to display, never a path.
    pub name: String,
    /// Its size in bytes.
    pub size: u64,
    /// BLAKE3 of the contents, 64 hex digits.
    pub blake3: String,
    /// When the share ends (Unix seconds).
    pub expires_at: u64,
    /// Completed downloads allowed, if limited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_downloads: Option<u64>,
}

/// What to share.
#[derive(Debug, Clone)]
pub struct ShareRequest {
    /// An absolute path.
    pub path: PathBuf,
    /// The peers allowed to fetch it (1 to 64).
    pub peers: Vec<NodeId>,
    /// Its lifetime in seconds (the default if `None`).
    pub expires_in_s: Option<u64>,
    /// Completed downloads allowed, if limited (at least 1).
    pub max_downloads: Option<u64>,
}

/// Why a file sharing operation was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    /// A request that cannot be right.
    #[error("{1}")]
    Invalid(ErrorCode, String),
    /// The file to share or serve.
    #[error(transparent)]
    Disk(#[from] DiskError),
    /// No such share or download.
    #[error("{0}")]
    NotFound(&'static str),
    /// Exists already, or a download of it runs to another place.
    #[error("{1}")]
    Conflict(ErrorCode, String),
    /// The module is not running yet.
    #[error("the files module has not started")]
    NotStarted,
    /// The peer or the session.
    #[error(transparent)]
    Node(#[from] NodeError),
    /// The database.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Writing the download.
    #[error("writing {path}: {source}")]
    Write {
        /// Where.
        path: String,
        /// Why.
        source: std::io::Error,
    },
}

#[derive(Default)]
struct Counters {
    shares: AtomicU64,
    links: AtomicU64,
    uploads_completed: AtomicU64,
    bytes_served: AtomicU64,
    downloads_completed: AtomicU64,
    downloads_failed: AtomicU64,
    chunks_refused: AtomicU64,
}

struct Running {
    me: std::sync::Weak<Files>,
    context: ModuleContext,
    store: FileStore,
    stop: watch::Receiver<bool>,
}

/// The file sharing module.
pub struct Files {
    settings: Settings,
    running: OnceLock<Running>,
    transfers: Transfers,
    uploads: Arc<Semaphore>,
    /// Uploads running per peer (see `max_uploads_per_peer`).
    uploads_per_peer: Arc<std::sync::Mutex<std::collections::HashMap<NodeId, usize>>>,
    counters: Counters,
}

impl Files {
    /// The module with `settings` (JSON; defaults where absent).
    pub fn new(settings: Option<&serde_json::Value>) -> Result<Files, String> {
        let settings: Settings = match settings {
            Some(value) => serde_json::from_value(value.clone()).map_err(|e| e.to_string())?,
            None => Settings::default(),
        };
        use openred_core::file_transfer::{MAX_CHUNK_SIZE, MIN_CHUNK_SIZE};
        if !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&settings.chunk_size) {
            return Err(format!(
                "chunk_size must be between {MIN_CHUNK_SIZE} and {MAX_CHUNK_SIZE}"
            ));
        }
        if settings.link_ttl_s == 0
            || settings.default_expiry_s == 0
            || settings.max_expiry_s < settings.default_expiry_s
            || settings.max_uploads == 0
            || settings.max_uploads_per_peer == 0
            || settings.upload_stall_timeout_s == 0
            || settings.idle_timeout_s == 0
            || settings.retry_base_ms == 0
            || settings.retry_max_ms < settings.retry_base_ms
            || settings.give_up_after_s == 0
        {
            return Err("link_ttl_s, default_expiry_s, max_uploads, max_uploads_per_peer, upload_stall_timeout_s, idle_timeout_s, retry_base_ms and give_up_after_s must be at least 1, max_expiry_s at least default_expiry_s, retry_max_ms at least retry_base_ms".into());
        }
        if !matches!(settings.chunk_suite.as_str(), "auto" | "session")
            && Suite::from_name(&settings.chunk_suite).is_none()
        {
            return Err(format!(
                "chunk_suite must be auto, session, or one of: {}",
                Suite::ALL.map(|s| s.name()).join(", ")
            ));
        }
        Ok(Files {
            uploads: Arc::new(Semaphore::new(settings.max_uploads)),
            uploads_per_peer: Arc::default(),
            settings,
            running: OnceLock::new(),
            transfers: Transfers::default(),
            counters: Counters::default(),
        })
    }

    /// The settings in force.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    fn running(&self) -> Result<&Running, FilesError> {
        self.running.get().ok_or(FilesError::NotStarted)
    }

    /// The module's tables (once the node serves).
    pub fn store(&self) -> Option<&FileStore> {
        self.running.get().map(|r| &r.store)
    }

    /// Shares a file with peers: examines and hashes it (off the async
    /// runtime), stores the share (committed), then queues an offer to
    /// each peer through the messaging module. Returns the share and, per
    /// peer, whether its offer was queued.
    pub async fn share(
        &self,
        node: &Peers,
        request: ShareRequest,
    ) -> Result<(Share, Vec<(NodeId, bool)>), FilesError> {
        let store = &self.running()?.store;
        if request.peers.is_empty() || request.peers.len() > 64 {
            return Err(FilesError::Invalid(
                ErrorCode::BadPeers,
                "name 1 to 64 peers to share with".into(),
            ));
        }
        if request.peers.contains(&node.node_id()) {
            return Err(FilesError::Invalid(
                ErrorCode::BadPeers,
                "a node does not share with itself".into(),
            ));
        }
        let lifetime = request
            .expires_in_s
            .unwrap_or(self.settings.default_expiry_s);
        if lifetime == 0 || lifetime > self.settings.max_expiry_s {
            return Err(FilesError::Invalid(
                ErrorCode::BadExpiry,
                format!(
                    "the lifetime must be between 1 and {} seconds",
                    self.settings.max_expiry_s
                ),
            ));
        }
        if request.max_downloads == Some(0)
            || request.max_downloads.is_some_and(|n| n > i64::MAX as u64)
        {
            return Err(FilesError::Invalid(
                ErrorCode::BadMaxDownloads,
                "max_downloads must be at least 1".into(),
            ));
        }
        let path = request.path.clone();
        let data_dir = node.data_dir().to_path_buf();
        let examined = tokio::task::spawn_blocking(move || disk::examine(&path, &data_dir))
            .await
            .map_err(|_| FilesError::NotStarted)??;
        if examined.identity.size > openred_core::file_transfer::MAX_FILE_SIZE {
            return Err(FilesError::Invalid(
                ErrorCode::TooLarge,
                "the file is too large".into(),
            ));
        }
        let mut peers = request.peers.clone();
        peers.sort();
        peers.dedup();
        let now = node.clock().now();
        let share = Share {
            file_id: FileId::random()?,
            name: examined.name,
            path: examined.path,
            identity: examined.identity,
            blake3: examined.blake3,
            chunk_size: self.settings.chunk_size,
            peers,
            created_at: now,
            expires_at: now.plus(lifetime),
            max_downloads: request.max_downloads,
            downloads: 0,
            revoked_at: None,
        };
        // Persisted before anyone is told.
        store.insert_share(&share).await?;
        self.counters.shares.fetch_add(1, Ordering::Relaxed);
        tracing::info!(file_id = %share.file_id, size = share.size(), peers = share.peers.len(), "file shared");
        // The owner's action is on record before it is acknowledged. The
        // share is committed already: an audit log that cannot write is
        // the node's problem to report, not a reason to leave a share the
        // owner was told failed.
        for peer in &share.peers {
            if let Err(e) = node
                .audit()
                .file_shared(*peer, &share.file_id.to_string())
                .await
            {
                tracing::error!(error = %e, "the audit log did not record a share");
            }
        }
        let mut offered = Vec::with_capacity(share.peers.len());
        for peer in &share.peers {
            offered.push((*peer, self.offer(node, &share, *peer).await));
        }
        Ok((share, offered))
    }

    /// Queues an offer of `share` to `peer` in the messaging outbox;
    /// whether it was queued.
    async fn offer(&self, node: &Peers, share: &Share, peer: NodeId) -> bool {
        let Some(mailbox) = node.mailbox() else {
            tracing::warn!("no module offers a mailbox: the offer is not sent");
            return false;
        };
        let offer = FileOffer {
            file_id: share.file_id.to_string(),
            name: share.name.clone(),
            size: share.size(),
            blake3: data_encoding::HEXLOWER.encode(&share.blake3),
            expires_at: share.expires_at.0,
            max_downloads: share.max_downloads,
        };
        let Ok(text) = serde_json::to_string(&offer) else {
            return false;
        };
        match mailbox.send(node, peer, OFFER_CONTENT_TYPE, &text).await {
            Ok(_) => true,
            Err(e) => {
                tracing::warn!(%peer, error = %e, "the file offer could not be queued");
                false
            }
        }
    }

    /// Revokes a share: no new link, existing links refused, and a
    /// download under way never gets its final chunk.
    pub async fn revoke(&self, node: &Peers, file_id: &FileId) -> Result<Share, FilesError> {
        let store = &self.running()?.store;
        if !store.revoke(file_id, node.clock().now()).await? {
            return Err(FilesError::NotFound("no such share"));
        }
        tracing::info!(%file_id, "share revoked");
        let share = store
            .share(file_id)
            .await?
            .ok_or(FilesError::NotFound("no such share"))?;
        for peer in &share.peers {
            if let Err(e) = node.audit().file_revoked(*peer, &file_id.to_string()).await {
                tracing::error!(error = %e, "the audit log did not record a revocation");
            }
        }
        Ok(share)
    }

    /// Transfers on this node, both ways.
    pub fn transfers(&self) -> Vec<TransferView> {
        self.transfers.views()
    }

    /// One transfer.
    pub fn transfer(&self, id: &FileId) -> Option<Arc<Transfer>> {
        self.transfers.get(id)
    }

    /// Deletes expired links every minute.
    async fn purge_loop(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            let Ok(running) = self.running() else { return };
            let Some(node) = running.context.peers() else {
                return;
            };
            if let Err(e) = running.store.purge_links(node.clock().now()).await {
                tracing::warn!(error = %e, "purging expired file links failed");
            }
        }
    }
}

/// The AEAD of the chunks of a link handed out on a session of `session`
/// suite.
fn chunk_suite(settings: &Settings, session: Suite) -> Suite {
    match settings.chunk_suite.as_str() {
        "session" => session,
        "auto" if hardware_aes() => Suite::Aes256Gcm,
        "auto" => Suite::ChaCha20Poly1305,
        name => Suite::from_name(name).unwrap_or(session),
    }
}

/// Whether this CPU has AES and carry-less multiplication instructions
/// (where AES-256-GCM is about twice as fast as ChaCha20-Poly1305;
/// docs/BENCHMARKS.md).
fn hardware_aes() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("aes")
            && std::arch::is_x86_feature_detected!("pclmulqdq")
    }
    #[cfg(target_arch = "aarch64")]
    {
        std::arch::is_aarch64_feature_detected!("aes")
            && std::arch::is_aarch64_feature_detected!("pmull")
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        false
    }
}

/// A 32-byte value in base64url without padding.
fn b64(bytes: &[u8]) -> String {
    data_encoding::BASE64URL_NOPAD.encode(bytes)
}

/// The 32 bytes of a base64url value, if it is one.
fn unb64_32(text: &str) -> Option<[u8; 32]> {
    data_encoding::BASE64URL_NOPAD
        .decode(text.as_bytes())
        .ok()?
        .try_into()
        .ok()
}

/// The capability inside a `file_url`.
pub fn parse_file_url(url: &str) -> Option<[u8; 32]> {
    unb64_32(url.strip_prefix(FILE_URL_PREFIX)?)
}

/// The hash under which a capability is stored: a stolen database holds no
/// usable link.
pub fn link_hash(capability: &[u8; 32]) -> [u8; 32] {
    *blake3::keyed_hash(
        &blake3::derive_key("openred v1 file link hash", b""),
        capability,
    )
    .as_bytes()
}

/// The time at which a link handed out `now` expires: the link lifetime,
/// but never after the share.
fn link_expiry(settings: &Settings, share: &Share, now: UnixTime) -> UnixTime {
    UnixTime(now.plus(settings.link_ttl_s).0.min(share.expires_at.0))
}

/// Whether `path` is where downloads may be written by this API: absolute.
/// Checks a download's output path: absolute, and not inside the node's
/// data folder (a download must not plant a file among the node's own,
/// e.g. credentials in `DATA/owner/` before the owner set any), with the
/// symbolic links of its existing part resolved. Blocking (a few stats).
fn check_out(out: &Path, data_dir: &Path) -> Result<(), FilesError> {
    if !out.is_absolute() {
        return Err(FilesError::Invalid(
            ErrorCode::BadOut,
            "the output path must be absolute".into(),
        ));
    }
    // The deepest part of the path that exists, resolved; what follows it
    // does not exist yet, so it holds no link.
    let mut existing = out;
    let resolved = loop {
        if let Ok(canonical) = std::fs::canonicalize(existing) {
            break canonical;
        }
        match existing.parent() {
            Some(parent) => existing = parent,
            None => break out.to_path_buf(),
        }
    };
    if disk::in_data_folder(&resolved, data_dir) || disk::in_data_folder(out, data_dir) {
        return Err(FilesError::Disk(DiskError::InsideDataFolder(
            out.display().to_string(),
        )));
    }
    Ok(())
}

impl Module for Files {
    fn name(&self) -> &'static str {
        NAME
    }

    fn description(&self) -> &'static str {
        "file sharing through temporary encrypted links, resumable, verified with BLAKE3"
    }

    fn p2p_routes(self: Arc<Self>) -> axum::Router<Peers> {
        api::p2p_routes(self)
    }

    fn admin_routes(self: Arc<Self>) -> axum::Router<Peers> {
        api::admin_routes(self)
    }

    fn start(self: Arc<Self>, context: ModuleContext, stop: watch::Receiver<bool>) {
        let Some(node) = context.peers() else { return };
        let store = FileStore::new(node.store().clone());
        let _ = self.running.set(Running {
            me: Arc::downgrade(&self),
            context,
            store: store.clone(),
            stop: stop.clone(),
        });
        tokio::spawn(self.clone().purge_loop(stop));
        // Downloads the last run left unfinished go on.
        let this = self.clone();
        tokio::spawn(async move {
            match store.active_downloads().await {
                Ok(downloads) => {
                    for download in downloads {
                        this.resume(download);
                    }
                }
                Err(e) => tracing::error!(error = %e, "reading unfinished downloads failed"),
            }
        });
    }

    fn metrics(&self) -> Vec<Metric> {
        let c = &self.counters;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        vec![
            Metric::counter("shares_total", "files shared", load(&c.shares)),
            Metric::counter("links_total", "links handed to peers", load(&c.links)),
            Metric::counter(
                "uploads_completed_total",
                "streams whose final chunk was sent",
                load(&c.uploads_completed),
            ),
            Metric::counter(
                "bytes_served_total",
                "plaintext bytes served",
                load(&c.bytes_served),
            ),
            Metric::counter(
                "downloads_completed_total",
                "downloads verified and in place",
                load(&c.downloads_completed),
            ),
            Metric::counter(
                "downloads_failed_total",
                "downloads given up",
                load(&c.downloads_failed),
            ),
            Metric::counter(
                "chunks_refused_total",
                "chunks that did not authenticate",
                load(&c.chunks_refused),
            ),
            Metric::gauge(
                "transfers_active",
                "transfers running or retrying",
                self.transfers.active() as f64,
            ),
        ]
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    #[test]
    fn settings_are_checked_and_the_chunk_suite_chosen() {
        for bad in [
            json!({"chunk_suite": "rot13"}),
            json!({"chunk_size": 1}),
            json!({"link_ttl_s": 0}),
            json!({"retry_base_ms": 10, "retry_max_ms": 5}),
            json!({"unknown": 1}),
        ] {
            assert!(Files::new(Some(&bad)).is_err(), "{bad}");
        }
        let pick = |setting: &str, session| {
            let files = Files::new(Some(&json!({ "chunk_suite": setting }))).unwrap();
            chunk_suite(&files.settings, session)
        };
        assert_eq!(pick("session", Suite::Aes256Gcm), Suite::Aes256Gcm);
        assert_eq!(
            pick("session", Suite::ChaCha20Poly1305),
            Suite::ChaCha20Poly1305
        );
        assert_eq!(
            pick("chacha20-poly1305", Suite::Aes256Gcm),
            Suite::ChaCha20Poly1305
        );
        let auto = pick("auto", Suite::ChaCha20Poly1305);
        assert_eq!(auto == Suite::Aes256Gcm, hardware_aes());
    }

    #[test]
    fn file_urls_are_parsed_strictly() {
        let capability = [7u8; 32];
        let url = format!("{FILE_URL_PREFIX}{}", b64(&capability));
        assert_eq!(parse_file_url(&url), Some(capability));
        for bad in [
            "https://node.example/f".to_owned(),
            url.replace("v1", "v2"),
            format!("{url}A"),
            url[..url.len() - 1].to_owned(),
            FILE_URL_PREFIX.to_owned(),
        ] {
            assert_eq!(parse_file_url(&bad), None, "{bad}");
        }
        assert_ne!(link_hash(&capability), capability);
    }
}
