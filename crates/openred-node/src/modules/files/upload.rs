//! The owner's side: handing out links (`POST /p2p/file-request`) and
//! serving chunk streams (`POST /p2p/file-download`).
//!
//! A stream is read and sealed by a blocking task, a chunk at a time, into
//! a channel of [`PIPELINE_DEPTH`] chunks that the HTTP body drains: memory
//! per upload is a few chunks whatever the file's size, and a peer that
//! reads slowly only makes the reader wait. Chunk buffers are recycled
//! once sent (at most [`POOL_SIZE`] kept per upload).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::http::{header, StatusCode};
use axum::response::Response;
use openred_core::error_code::ErrorCode;
use openred_core::file_transfer::{ChunkCipher, TransferShape, CHUNK_OVERHEAD};
use openred_core::NodeId;
use openred_http::ApiError;
use tokio::sync::{mpsc, watch};

use super::disk::{self, DiskError};
use super::store::{random_bytes, Completion, FileId, Link};
use super::transfers::{Direction, Transfer, TransferState};
use super::{
    b64, chunk_suite, link_expiry, link_hash, parse_file_url, DownloadRequest, FileGrant,
    FileRequest, Files, DOWNLOAD_PATH, FILE_URL_PREFIX, STREAM_MAGIC,
};
use crate::peer::sessions::LiveSession;
use crate::peer::Peers;

/// Chunks read ahead of what the peer has taken, per upload.
const PIPELINE_DEPTH: usize = 4;
/// Chunk buffers an upload keeps for reuse: the channel's, the one being
/// sealed, and the one the HTTP layer is sending.
const POOL_SIZE: usize = PIPELINE_DEPTH + 2;

fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError::internal("file sharing storage", e)
}

fn not_started() -> ApiError {
    ApiError::new(
        ErrorCode::NotStarted,
        "the files module has not started yet",
    )
}

fn bad_request(message: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::BadRequest, message)
}

/// `POST /p2p/file-request` (a framed route; the auth module's policy,
/// if on, asked for a fresh proof of the peer's identity before this
/// runs): checks the peer's permission and the share, stores a new link
/// (persist, then answer) and answers the grant.
pub(super) async fn grant(
    module: Arc<Files>,
    state: Peers,
    live: Arc<LiveSession>,
    payload: Vec<u8>,
) -> Result<Vec<u8>, ApiError> {
    let request: FileRequest =
        serde_json::from_slice(&payload).map_err(|e| bad_request(e.to_string()))?;
    let file_id = FileId::parse(&request.file_id)
        .ok_or_else(|| bad_request("file_id must be 32 hex digits"))?;
    let store = module.store().ok_or_else(not_started)?;
    let share = store
        .share(&file_id)
        .await
        .map_err(internal)?
        .ok_or_else(|| ApiError::new(ErrorCode::UnknownFile, "no such shared file"))?;
    if !share.peers.contains(&live.peer) {
        return Err(ApiError::new(
            ErrorCode::NotPermitted,
            "this file is not shared with your node",
        ));
    }
    if share.revoked_at.is_some() {
        return Err(ApiError::new(
            ErrorCode::Revoked,
            "the owner revoked this share",
        ));
    }
    let now = state.clock().now();
    if now >= share.expires_at {
        return Err(ApiError::new(
            ErrorCode::ShareExpired,
            "this share has expired",
        ));
    }
    if share.limit_reached() {
        return Err(ApiError::new(
            ErrorCode::DownloadLimitReached,
            "this share's download limit is reached",
        ));
    }
    let capability: [u8; 32] = random_bytes().map_err(internal)?;
    let link = Link {
        file_id,
        peer: live.peer,
        suite: chunk_suite(&module.settings, live.session.suite()),
        expires_at: link_expiry(&module.settings, &share, now),
        secret: zeroize::Zeroizing::new(random_bytes().map_err(internal)?),
        completed_at: None,
    };
    store
        .insert_link(&link_hash(&capability), &link, now)
        .await
        .map_err(internal)?;
    module.counters.links.fetch_add(1, Ordering::Relaxed);
    let grant = FileGrant {
        file_url: format!("{FILE_URL_PREFIX}{}", b64(&capability)),
        link_secret: b64(&link.secret[..]),
        expires_at: link.expires_at.0,
        file_id: file_id.to_string(),
        name: share.name.clone(),
        size: share.size(),
        blake3: data_encoding::HEXLOWER.encode(&share.blake3),
        chunk_size: share.chunk_size,
        suite: link.suite.name().to_owned(),
    };
    serde_json::to_vec(&grant).map_err(internal)
}

/// `POST /p2p/file-download`: checks the link (bound to this peer,
/// unexpired, share not revoked, limit), opens the file again (identity
/// checked) and streams its chunks from the one asked for.
pub(super) async fn serve(
    module: Arc<Files>,
    state: Peers,
    body: Bytes,
) -> Result<Response, ApiError> {
    // Opened by the peer layer, which also runs the modules' guards; the
    // answer is a stream of chunks, not a frame.
    let (live, payload) = state.open_frame(DOWNLOAD_PATH, &body).await?;
    let request: DownloadRequest =
        serde_json::from_slice(&payload).map_err(|e| bad_request(e.to_string()))?;
    let capability = parse_file_url(&request.file_url)
        .ok_or_else(|| ApiError::new(ErrorCode::BadFileUrl, "not a file_url of this protocol"))?;
    let client_nonce: [u8; 16] = data_encoding::HEXLOWER_PERMISSIVE
        .decode(request.client_nonce.as_bytes())
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| bad_request("client_nonce must be 32 hex digits"))?;
    let store = module.store().ok_or_else(not_started)?;
    let hash = link_hash(&capability);
    let link =
        store.link(&hash).await.map_err(internal)?.ok_or_else(|| {
            ApiError::new(ErrorCode::UnknownLink, "no such link; ask for a new one")
        })?;
    // A capability is good only for the peer it was handed to: another
    // peer holding a copy gets nothing.
    if link.peer != live.peer {
        return Err(ApiError::new(
            ErrorCode::WrongPeer,
            "this link was handed to another node",
        ));
    }
    let now = state.clock().now();
    if now >= link.expires_at {
        return Err(ApiError::new(
            ErrorCode::LinkExpired,
            "this link has expired; ask for a new one",
        ));
    }
    let share = store
        .share(&link.file_id)
        .await
        .map_err(internal)?
        .ok_or_else(|| ApiError::new(ErrorCode::UnknownLink, "no such link; ask for a new one"))?;
    if share.revoked_at.is_some() {
        return Err(ApiError::new(
            ErrorCode::Revoked,
            "the owner revoked this share",
        ));
    }
    if link.completed_at.is_none() && share.limit_reached() {
        return Err(ApiError::new(
            ErrorCode::DownloadLimitReached,
            "this share's download limit is reached",
        ));
    }
    let shape = TransferShape::new(share.file_id.0, share.size(), share.chunk_size, link.suite)
        .map_err(internal)?;
    if request.from_chunk >= shape.chunks() {
        return Err(ApiError::new(
            ErrorCode::BadRange,
            format!("the file has {} chunks", shape.chunks()),
        ));
    }
    // The peer's own slots first: one peer never holds them all.
    let peer_slot = PeerSlot::take(&module, live.peer).ok_or_else(|| {
        ApiError::new(
            ErrorCode::Busy,
            "this node serves as many files to your node as it may; retry later",
        )
    })?;
    let permit = module.uploads.clone().try_acquire_owned().map_err(|_| {
        ApiError::new(
            ErrorCode::Busy,
            "this node serves as many files as it may; retry later",
        )
    })?;
    let (path, identity) = (share.path.clone(), share.identity);
    let file = tokio::task::spawn_blocking(move || disk::open_shared(&path, &identity))
        .await
        .map_err(internal)?
        .map_err(|e| match e {
            DiskError::Changed => ApiError::new(
                ErrorCode::FileChanged,
                "the shared file was replaced or changed since it was shared; nothing is served",
            ),
            other => {
                tracing::warn!(file_id = %share.file_id, error = %other, "a shared file cannot be opened");
                ApiError::new(ErrorCode::FileUnavailable, "the shared file cannot be read any more")
            }
        })?;
    let transfer_id: [u8; 16] = random_bytes().map_err(internal)?;
    let cipher = ChunkCipher::new(&link.secret, &shape, &transfer_id, &client_nonce);
    let transfer = Arc::new(Transfer::new(
        FileId(transfer_id),
        Direction::Upload,
        live.peer,
        share.file_id,
        &share.name,
        share.size(),
        None,
    ));
    transfer.attempt(shape.offset(request.from_chunk));
    module.transfers.insert(transfer.clone());
    tracing::debug!(file_id = %share.file_id, peer = %live.peer, from_chunk = request.from_chunk, "serving a file");

    let (tx, rx) = mpsc::channel(PIPELINE_DEPTH);
    let rate = module.settings.upload_bytes_per_s;
    let from = request.from_chunk;
    let slots = Arc::new(Slots {
        held: Mutex::new(Some((permit, peer_slot))),
        polled: Mutex::new(tokio::time::Instant::now()),
        stop: watch::channel(false).0,
    });
    let mut stopped = slots.stop.subscribe();
    tokio::task::spawn_blocking(move || {
        read_and_seal(&file, &cipher, from, rate, &tx, &mut stopped)
    });
    tokio::spawn(watch_stall(
        slots.clone(),
        transfer.clone(),
        Duration::from_secs(module.settings.upload_stall_timeout_s),
    ));
    let mut header = STREAM_MAGIC.to_vec();
    header.extend_from_slice(&transfer_id);
    let stream = Upload {
        module,
        state,
        link_hash: hash,
        file_id: share.file_id,
        shape,
        rx,
        header: Some(Bytes::from(header)),
        transfer,
        finished: false,
        slots,
    };
    let body = futures_util::stream::unfold(stream, |mut s| async move {
        let item = s.next().await?;
        Some((item, s))
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .body(Body::from_stream(body))
        .map_err(internal)
}

/// A chunk read and sealed, with its index.
type Sealed = std::io::Result<(u64, Bytes)>;

/// The chunk buffers of one upload. A fresh 1 MiB buffer per chunk cost a
/// page fault per 4 KiB (the allocator hands large blocks back to the
/// kernel) and zeroing before the read; a buffer that comes back here once
/// the HTTP layer has sent it costs neither. At most [`POOL_SIZE`] are kept;
/// more are only made while the ones in flight are still out.
struct BufferPool {
    free: Mutex<Vec<Vec<u8>>>,
    capacity: usize,
}

impl BufferPool {
    fn new(capacity: usize) -> Arc<BufferPool> {
        Arc::new(BufferPool {
            free: Mutex::new(Vec::with_capacity(POOL_SIZE)),
            capacity,
        })
    }

    /// A buffer of `len` initialised bytes, with room for the tag after
    /// them. A recycled buffer is only truncated: its bytes are overwritten
    /// by the read, so zeroing them again would be wasted work.
    fn take(&self, len: usize) -> Vec<u8> {
        let recycled = self
            .free
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        let mut buffer = recycled.unwrap_or_else(|| Vec::with_capacity(self.capacity));
        buffer.resize(len, 0);
        buffer
    }

    fn put(&self, buffer: Vec<u8>) {
        let mut free = self.free.lock().unwrap_or_else(PoisonError::into_inner);
        if free.len() < POOL_SIZE && buffer.capacity() >= self.capacity {
            free.push(buffer);
        }
    }
}

/// A sealed chunk on its way to the peer; its buffer returns to the pool
/// when the HTTP layer drops it.
struct PooledChunk {
    buffer: Vec<u8>,
    pool: Arc<BufferPool>,
}

impl AsRef<[u8]> for PooledChunk {
    fn as_ref(&self) -> &[u8] {
        &self.buffer
    }
}

impl Drop for PooledChunk {
    fn drop(&mut self) {
        self.pool.put(std::mem::take(&mut self.buffer));
    }
}

/// Reads and seals chunks `from..` into `tx`, pacing itself to `rate`
/// bytes per second if not 0; stops when the body is dropped.
fn read_and_seal(
    file: &File,
    cipher: &ChunkCipher,
    from: u64,
    rate: u64,
    tx: &mpsc::Sender<Sealed>,
    stopped: &mut watch::Receiver<bool>,
) {
    let runtime = tokio::runtime::Handle::current();
    let shape = *cipher.shape();
    let pool = BufferPool::new(shape.chunk_size as usize + CHUNK_OVERHEAD);
    let started = Instant::now();
    let mut sent = 0u64;
    for index in from..shape.chunks() {
        let result = (|| {
            let len = shape
                .plain_len(index)
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            let mut record = pool.take(len);
            file.read_exact_at(&mut record, shape.offset(index))?;
            cipher
                .seal(index, &mut record)
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            let chunk = PooledChunk {
                buffer: record,
                pool: pool.clone(),
            };
            Ok((index, Bytes::from_owner(chunk)))
        })();
        let failed = result.is_err();
        // A reader that stopped reading leaves the channel full: the
        // stall watchdog's stop is what frees this thread then.
        let delivered = runtime.block_on(async {
            tokio::select! {
                sent = tx.send(result) => sent.is_ok(),
                _ = stopped.wait_for(|s| *s) => false,
            }
        });
        if !delivered || failed {
            return;
        }
        if rate > 0 {
            sent += shape.plain_len(index).unwrap_or(0) as u64;
            let due = Duration::from_secs_f64(sent as f64 / rate as f64);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                std::thread::sleep(wait);
            }
        }
    }
}

/// The body of one upload: the header, then the chunks; the final chunk
/// is released only once the download is counted.
struct Upload {
    module: Arc<Files>,
    state: Peers,
    link_hash: [u8; 32],
    file_id: FileId,
    shape: TransferShape,
    rx: mpsc::Receiver<Sealed>,
    header: Option<Bytes>,
    transfer: Arc<Transfer>,
    finished: bool,
    slots: Arc<Slots>,
}

/// An upload's slots (`max_uploads`, `max_uploads_per_peer`), when the
/// HTTP layer last asked for more of it, and the stop of its reader:
/// shared with the stall watchdog, which gives the slots back when the
/// peer stops reading, even though the HTTP layer keeps the body.
struct Slots {
    held: Mutex<Option<(tokio::sync::OwnedSemaphorePermit, PeerSlot)>>,
    polled: Mutex<tokio::time::Instant>,
    stop: watch::Sender<bool>,
}

impl Slots {
    /// Gives the slots back and stops the reader.
    fn release(&self) {
        self.held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        self.stop.send_replace(true);
    }

    fn stalled(&self) -> bool {
        *self.stop.borrow()
    }
}

/// Ends an upload whose reader took nothing for `timeout`: a peer that
/// opens a download and stops reading (the socket's buffers full, so the
/// HTTP layer stops asking for chunks) holds its slots no longer.
async fn watch_stall(slots: Arc<Slots>, transfer: Arc<Transfer>, timeout: Duration) {
    let tick = (timeout / 4).max(Duration::from_millis(100));
    loop {
        tokio::time::sleep(tick).await;
        if slots.stalled() || Arc::strong_count(&slots) == 1 {
            return;
        }
        let polled = *slots.polled.lock().unwrap_or_else(PoisonError::into_inner);
        if polled.elapsed() >= timeout {
            transfer.finish(TransferState::Failed, Some("the peer stopped reading"));
            slots.release();
            return;
        }
    }
}

/// One of a peer's upload slots (`max_uploads_per_peer`), given back when
/// the upload ends.
struct PeerSlot {
    peer: NodeId,
    slots: Arc<std::sync::Mutex<std::collections::HashMap<NodeId, usize>>>,
}

impl PeerSlot {
    /// A slot for `peer`, or `None` if it holds all of its own.
    fn take(module: &Files, peer: NodeId) -> Option<PeerSlot> {
        let mut slots = module
            .uploads_per_peer
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let held = slots.entry(peer).or_insert(0);
        if *held >= module.settings.max_uploads_per_peer {
            return None;
        }
        *held += 1;
        Some(PeerSlot {
            peer,
            slots: module.uploads_per_peer.clone(),
        })
    }
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(held) = slots.get_mut(&self.peer) {
            *held = held.saturating_sub(1);
            if *held == 0 {
                slots.remove(&self.peer);
            }
        }
    }
}

impl Upload {
    async fn next(&mut self) -> Option<std::io::Result<Bytes>> {
        *self
            .slots
            .polled
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = tokio::time::Instant::now();
        if self.slots.stalled() && !self.finished {
            return Some(Err(self.fail("the peer stopped reading".into())));
        }
        if let Some(header) = self.header.take() {
            return Some(Ok(header));
        }
        if self.finished {
            return None;
        }
        let (index, chunk) = match self.rx.recv().await? {
            Ok(item) => item,
            Err(e) => return Some(Err(self.fail(e.to_string()))),
        };
        let plain = (chunk.len() - CHUNK_OVERHEAD) as u64;
        if self.shape.is_final(index) {
            // Counted before the final chunk leaves, in one transaction
            // with the limit check: a revoked share or a limit reached
            // meanwhile never completes a download.
            let now = self.state.clock().now();
            let module = self.module.clone();
            let counted = match module.store() {
                Some(store) => store
                    .complete(&self.link_hash, &self.file_id, now)
                    .await
                    .map_err(|e| e.to_string()),
                None => Err("the module stopped".into()),
            };
            match counted {
                Ok(Completion::Counted) => self.state.audit().file_downloaded(
                    self.transfer.peer,
                    &self.file_id.to_string(),
                    true,
                ),
                Ok(Completion::AlreadyCounted) => {}
                Ok(Completion::Revoked) => {
                    return Some(Err(self.fail("the share was revoked".into())))
                }
                Ok(Completion::LimitReached) => {
                    return Some(Err(self.fail("the download limit was reached".into())))
                }
                Err(e) => return Some(Err(self.fail(e))),
            }
            self.finished = true;
            self.transfer.progress(self.transfer.size);
            self.transfer.finish(TransferState::Done, None);
            self.module
                .counters
                .uploads_completed
                .fetch_add(1, Ordering::Relaxed);
        } else {
            self.transfer.progress(self.transfer.done_bytes() + plain);
        }
        self.module
            .counters
            .bytes_served
            .fetch_add(plain, Ordering::Relaxed);
        Some(Ok(chunk))
    }

    fn fail(&mut self, reason: String) -> std::io::Error {
        self.finished = true;
        self.transfer.finish(TransferState::Failed, Some(&reason));
        std::io::Error::other(reason)
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        self.slots.release();
        if !self.finished {
            self.transfer
                .finish(TransferState::Failed, Some("the peer went away"));
        }
    }
}
