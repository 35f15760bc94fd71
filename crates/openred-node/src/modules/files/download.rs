//! The receiving side: asking for a link, reading the chunk stream,
//! verifying each chunk, writing the partial file, and resuming after any
//! interruption.
//!
//! An attempt reads the stream on the async runtime and hands whole
//! chunks to a blocking writer through a channel of [`PIPELINE_DEPTH`]
//! chunks; the writer opens each (AEAD) and appends it to the partial
//! file, a second thread feeds the BLAKE3 hasher with what was written and
//! hands the buffer back to the reader ([`BUFFERS`] in all per stream), and
//! after the final chunk the writer checks the hash, flushes and renames.
//! Nothing but verified plaintext is ever written or hashed.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use openred_core::error_code::ErrorCode;
use openred_core::file_transfer::{ChunkCipher, ChunkError, TransferShape};
use openred_core::session::Suite;
use openred_core::{NodeId, UnixTime};
use tokio::sync::mpsc;
use zeroize::Zeroizing;

use super::disk::{self, PartFile, PartWriter};
use super::store::{random_bytes, Download, DownloadState, FileId};
use super::transfers::{Direction, Transfer, TransferState};
use super::{
    check_out, parse_file_url, unb64_32, DownloadRequest, FileGrant, FileRequest, Files,
    FilesError, DOWNLOAD_PATH, REQUEST_PATH, STREAM_HEADER_LEN, STREAM_MAGIC,
};
use crate::directory_client::expect_ok;
use crate::error::NodeError;
use crate::peer::frames::labelled;
use crate::peer::sessions::LiveSession;
use crate::peer::Peers;

/// Chunks received ahead of the writer, per download.
const PIPELINE_DEPTH: usize = 4;
/// Chunk buffers per stream, in all: the reader waits for one to come back
/// rather than making more, so this (not the queues' lengths) bounds the
/// memory of a download.
const BUFFERS: usize = PIPELINE_DEPTH + 2;

/// A link as the receiver holds it: the grant, checked.
struct Ticket {
    file_url: String,
    secret: Zeroizing<[u8; 32]>,
    shape: TransferShape,
    name: String,
    blake3: [u8; 32],
}

impl Ticket {
    fn from_grant(grant: FileGrant, file_id: &FileId) -> Result<Ticket, NodeError> {
        let bad = NodeError::Malformed("the peer's file grant");
        if FileId::parse(&grant.file_id) != Some(*file_id)
            || parse_file_url(&grant.file_url).is_none()
        {
            return Err(bad);
        }
        let secret = Zeroizing::new(
            unb64_32(&grant.link_secret).ok_or(NodeError::Malformed("the peer's file grant"))?,
        );
        let blake3: [u8; 32] = data_encoding::HEXLOWER_PERMISSIVE
            .decode(grant.blake3.as_bytes())
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or(NodeError::Malformed("the peer's file grant"))?;
        let suite =
            Suite::from_name(&grant.suite).ok_or(NodeError::Malformed("the peer's file grant"))?;
        let shape = TransferShape::new(file_id.0, grant.size, grant.chunk_size, suite)
            .map_err(|_| NodeError::Malformed("the peer's file grant"))?;
        Ok(Ticket {
            file_url: grant.file_url,
            secret,
            shape,
            name: grant.name,
            blake3,
        })
    }
}

/// Why an attempt ended without the file.
enum Attempt {
    /// Try again after a pause.
    Retry(String),
    /// The link is no good any more: ask for a new one, then try again.
    NewLink(String),
    /// Give up.
    Fatal(String),
}

/// A failure to open the partial file: for good (a folder that went away,
/// no permission, a full disk), unless the process or the system ran out
/// of descriptors or memory for a moment, which passes: then the attempt
/// is retried like a network failure, not the download given up.
fn local_failure(what: String, e: &std::io::Error) -> Attempt {
    let text = format!("{what}: {e}");
    match e.raw_os_error() {
        Some(
            libc::EMFILE | libc::ENFILE | libc::ENOMEM | libc::ENOBUFS | libc::EAGAIN | libc::EINTR,
        ) => Attempt::Retry(text),
        _ => Attempt::Fatal(text),
    }
}

/// Sorts a failure to talk to the peer; the peer layer heals the session
/// first (a new handshake if the peer says it lost it, a look at the
/// directory if it was unreachable).
async fn classify(node: &Peers, live: Option<&LiveSession>, e: NodeError) -> Attempt {
    if let Some(live) = live {
        node.recover(live, &e).await;
    }
    let text = e.to_string();
    // Not `file_unavailable`: the owner's node could not open the file,
    // which may pass (it ran out of descriptors for a moment, a disk was
    // being mounted), so it is retried with back-off until
    // `give_up_after_s` without progress. See `ErrorCode::ends_a_download`.
    match e.peer_code() {
        Some(ErrorCode::LinkExpired | ErrorCode::UnknownLink) => Attempt::NewLink(text),
        Some(code) if code.ends_a_download() => Attempt::Fatal(text),
        _ => Attempt::Retry(text),
    }
}

/// Asks `live`'s peer for a link to `file_id`.
async fn request_grant(
    node: &Peers,
    live: &LiveSession,
    file_id: &FileId,
) -> Result<Ticket, NodeError> {
    let payload = serde_json::to_vec(&FileRequest {
        file_id: file_id.to_string(),
    })
    .map_err(|_| NodeError::Malformed("encoding"))?;
    let answer = Zeroizing::new(node.exchange(live, REQUEST_PATH, &payload).await?);
    let grant: FileGrant = serde_json::from_slice(&answer)
        .map_err(|_| NodeError::Malformed("the peer's file grant"))?;
    Ticket::from_grant(grant, file_id)
}

/// What the writer made of a stream.
enum Written {
    /// Verified and in place.
    Complete,
    /// The stream ended before the final chunk.
    Partial,
}

/// Why the writer stopped.
enum WriteFailure {
    Forged(ChunkError),
    HashMismatch,
    Io(std::io::Error),
}

impl Files {
    /// Fetches `file_id` from `peer` into `out` (a file path, or an
    /// existing folder where the owner's name, made safe, is used): asks
    /// for a first link (so that a refusal is reported at once), records
    /// the download (committed) and runs it in the background. A download
    /// of the same file from the same peer that is under way is returned
    /// instead of starting another; one interrupted earlier to the same
    /// place resumes from its partial file.
    pub async fn fetch(
        &self,
        node: &Peers,
        peer: NodeId,
        file_id: FileId,
        out: PathBuf,
    ) -> Result<Arc<Transfer>, FilesError> {
        check_out(&out, node.data_dir())?;
        check_download_folder(node.download_dirs(), &out)?;
        if peer == node.node_id() {
            return Err(FilesError::Invalid(
                ErrorCode::BadNodeId,
                "a node does not fetch from itself".into(),
            ));
        }
        let store = self.running()?.store.clone();
        let me = self.running()?.me.upgrade().ok_or(FilesError::NotStarted)?;
        if let Some(running) = self.transfers.active_download(&peer, &file_id) {
            let same = running
                .out
                .as_deref()
                .is_some_and(|o| o == out || o.parent() == Some(&out));
            return if same {
                Ok(running)
            } else {
                Err(FilesError::Conflict(
                    ErrorCode::InProgress,
                    "this file is being downloaded to another place".into(),
                ))
            };
        }
        let live = node.session_for(&peer).await?;
        let ticket = match request_grant(node, &live, &file_id).await {
            Err(e) if e.is_lost_session() => {
                // The peer restarted since (or someone on the path says
                // so): one new handshake, authenticated, once.
                let live = node.handshake_again(&live).await?;
                request_grant(node, &live, &file_id).await?
            }
            other => other?,
        };
        let dest = disk::destination(&out, &ticket.name);
        if !dest.parent().is_some_and(Path::is_dir) {
            return Err(FilesError::Invalid(
                ErrorCode::BadOut,
                format!("the folder of {} does not exist", dest.display()),
            ));
        }
        if dest.symlink_metadata().is_ok() {
            return Err(FilesError::Conflict(
                ErrorCode::OutExists,
                format!("{} exists; it is never replaced", dest.display()),
            ));
        }
        let part = disk::part_path(&dest);
        let previous = store.download(&peer, &file_id).await?;
        let resumable = previous.as_ref().filter(|d| {
            d.out_path == dest
                && d.blake3 == ticket.blake3
                && d.size == ticket.shape.size
                && d.chunk_size == ticket.shape.chunk_size
                && d.state != DownloadState::Done
        });
        if resumable.is_none() && part.symlink_metadata().is_ok() {
            return Err(FilesError::Conflict(
                ErrorCode::PartExists,
                format!(
                    "{} exists and belongs to no download of this file; remove it or choose another output",
                    part.display()
                ),
            ));
        }
        let transfer_id = match resumable {
            Some(d) => d.transfer_id,
            None => FileId(random_bytes()?),
        };
        let download = Download {
            peer,
            file_id,
            transfer_id,
            name: ticket.name.clone(),
            out_path: dest.clone(),
            size: ticket.shape.size,
            blake3: ticket.blake3,
            chunk_size: ticket.shape.chunk_size,
            state: DownloadState::Active,
            error: None,
        };
        store.upsert_download(&download, node.clock().now()).await?;
        let transfer = Arc::new(Transfer::new(
            transfer_id,
            Direction::Download,
            peer,
            file_id,
            &ticket.name,
            ticket.shape.size,
            Some(dest),
        ));
        self.transfers.insert(transfer.clone());
        tokio::spawn(me.run_download(download, transfer.clone(), Some(ticket)));
        Ok(transfer)
    }

    /// Resumes a download the last run left unfinished.
    pub(super) fn resume(self: &Arc<Self>, download: Download) {
        let transfer = Arc::new(Transfer::new(
            download.transfer_id,
            Direction::Download,
            download.peer,
            download.file_id,
            &download.name,
            download.size,
            Some(download.out_path.clone()),
        ));
        self.transfers.insert(transfer.clone());
        tracing::info!(file_id = %download.file_id, peer = %download.peer, "resuming a download");
        tokio::spawn(self.clone().run_download(download, transfer, None));
    }

    /// Runs attempts until the file is in place, the download fails for
    /// good, or the node stops (the download then stays to resume).
    async fn run_download(
        self: Arc<Self>,
        download: Download,
        transfer: Arc<Transfer>,
        mut ticket: Option<Ticket>,
    ) {
        let Ok(running) = self.running() else { return };
        let (context, store, mut stop) = (
            running.context.clone(),
            running.store.clone(),
            running.stop.clone(),
        );
        let part = disk::part_path(&download.out_path);
        let give_up = Duration::from_secs(self.settings.give_up_after_s);
        let mut failures = 0u32;
        let mut last_progress = Instant::now();
        let outcome = loop {
            if *stop.borrow() {
                return;
            }
            let Some(node) = context.peers() else { return };
            if !context.is_enabled() {
                transfer.retrying("the files module is switched off");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    _ = stop.wait_for(|s| *s) => return,
                }
            }
            let before = transfer.done_bytes();
            let attempt = tokio::select! {
                a = self.attempt(&node, &download, &transfer, &mut ticket, &part) => a,
                _ = stop.wait_for(|s| *s) => return,
            };
            drop(node);
            let (reason, pause) = match attempt {
                Ok(()) => break Ok(()),
                Err(Attempt::Fatal(reason)) => break Err(reason),
                Err(Attempt::NewLink(reason)) => {
                    ticket = None;
                    (reason, failures > 0)
                }
                Err(Attempt::Retry(reason)) => (reason, true),
            };
            if transfer.done_bytes() > before {
                failures = 0;
                last_progress = Instant::now();
            }
            failures = failures.saturating_add(1);
            if last_progress.elapsed() > give_up {
                break Err(format!("no progress for {} s: {reason}", give_up.as_secs()));
            }
            tracing::debug!(file_id = %download.file_id, error = %reason, "download interrupted; resuming");
            transfer.retrying(&reason);
            if pause {
                tokio::select! {
                    _ = tokio::time::sleep(self.backoff(failures)) => {}
                    _ = stop.wait_for(|s| *s) => return,
                }
            }
        };
        let now = context.peers().map(|n| n.now()).unwrap_or(UnixTime(0));
        let (state, error) = match &outcome {
            Ok(()) => {
                self.counters
                    .downloads_completed
                    .fetch_add(1, Ordering::Relaxed);
                tracing::info!(file_id = %download.file_id, out = %download.out_path.display(), "download verified and in place");
                (DownloadState::Done, None)
            }
            Err(reason) => {
                // A partial file with nothing verified in it is no use.
                if std::fs::symlink_metadata(&part).is_ok_and(|m| m.is_file() && m.len() == 0) {
                    let _ = std::fs::remove_file(&part);
                }
                self.counters
                    .downloads_failed
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(file_id = %download.file_id, error = %reason, "download failed");
                (DownloadState::Failed, Some(reason.as_str()))
            }
        };
        if let Err(e) = store
            .finish_download(&download.peer, &download.file_id, state, error, now)
            .await
        {
            tracing::error!(error = %e, "recording the end of a download failed");
        }
        transfer.finish(
            if outcome.is_ok() {
                TransferState::Done
            } else {
                TransferState::Failed
            },
            error,
        );
    }

    /// The wait after `failures` failures in a row: exponential, capped,
    /// with jitter in its upper half.
    fn backoff(&self, failures: u32) -> Duration {
        let base = self.settings.retry_base_ms;
        let ceiling = base
            .saturating_mul(1u64 << failures.saturating_sub(1).min(32))
            .min(self.settings.retry_max_ms);
        let jitter = random_bytes::<8>().map(u64::from_le_bytes).unwrap_or(0) % (ceiling / 2 + 1);
        Duration::from_millis(ceiling / 2 + jitter)
    }

    /// One attempt: a link if there is none, then one stream from the
    /// first chunk not yet verified.
    async fn attempt(
        &self,
        node: &Peers,
        download: &Download,
        transfer: &Arc<Transfer>,
        ticket: &mut Option<Ticket>,
        part: &Path,
    ) -> Result<(), Attempt> {
        let live = match node.session_for(&download.peer).await {
            Ok(live) => live,
            Err(e) => return Err(classify(node, None, e).await),
        };
        let t = match ticket.take() {
            Some(t) => t,
            None => {
                let t = match request_grant(node, &live, &download.file_id).await {
                    Ok(t) => t,
                    Err(e) => return Err(classify(node, Some(&live), e).await),
                };
                if t.blake3 != download.blake3
                    || t.shape.size != download.size
                    || t.shape.chunk_size != download.chunk_size
                {
                    return Err(Attempt::Fatal(
                        "the owner now describes the file differently".into(),
                    ));
                }
                t
            }
        };
        let result = self.stream(node, &live, download, transfer, &t, part).await;
        *ticket = Some(t);
        result
    }

    /// Reads one stream into the partial file.
    async fn stream(
        &self,
        node: &Peers,
        live: &Arc<LiveSession>,
        download: &Download,
        transfer: &Arc<Transfer>,
        ticket: &Ticket,
        part: &Path,
    ) -> Result<(), Attempt> {
        let shape = ticket.shape;
        let part_path = part.to_path_buf();
        let partfile =
            tokio::task::spawn_blocking(move || PartFile::open(&part_path, &shape, true))
                .await
                .map_err(|e| Attempt::Retry(e.to_string()))?
                .map_err(|e| local_failure(format!("cannot write {}", part.display()), &e))?;
        let verified = partfile.verified();
        let from_chunk = if verified == 0 {
            0
        } else {
            shape.chunk_at(verified)
        };
        transfer.attempt(verified);
        let client_nonce: [u8; 16] = random_bytes().map_err(|e| Attempt::Retry(e.to_string()))?;
        let request = serde_json::to_vec(&DownloadRequest {
            file_url: ticket.file_url.clone(),
            from_chunk,
            client_nonce: data_encoding::HEXLOWER.encode(&client_nonce),
        })
        .map_err(|e| Attempt::Retry(e.to_string()))?;
        let frame = live
            .session
            .seal(
                &labelled(DOWNLOAD_PATH, false, &request),
                node.clock().now(),
            )
            .map_err(|e| Attempt::Retry(e.to_string()))?;
        let idle = Duration::from_secs(self.settings.idle_timeout_s);
        let mut response = match node
            .outbound()
            .post_bytes_streaming(
                &live.peer_record.record().api_url,
                DOWNLOAD_PATH,
                frame,
                "application/octet-stream",
                idle,
            )
            .await
        {
            Ok(response) => response,
            Err(e) => return Err(classify(node, Some(live), e.into()).await),
        };
        if !response.is_success() {
            let error = match response.into_response().await {
                Ok(answer) => expect_ok::<serde_json::Value>(answer, false)
                    .err()
                    .unwrap_or(NodeError::Malformed("the peer")),
                Err(e) => e.into(),
            };
            return Err(classify(node, Some(live), error).await);
        }
        live.touch(node.clock().now());

        let mut pending = axum::body::Bytes::new();
        let mut header = Vec::with_capacity(STREAM_HEADER_LEN);
        while header.len() < STREAM_HEADER_LEN {
            if pending.is_empty() {
                pending = match response.chunk().await {
                    Ok(Some(piece)) => piece,
                    Ok(None) => {
                        return Err(Attempt::Retry("the stream ended in its header".into()))
                    }
                    Err(e) => return Err(Attempt::Retry(e.to_string())),
                };
            }
            let take = (STREAM_HEADER_LEN - header.len()).min(pending.len());
            header.extend_from_slice(&pending.split_to(take));
        }
        if &header[..4] != STREAM_MAGIC {
            return Err(Attempt::Retry("not a file stream".into()));
        }
        let transfer_id: [u8; 16] = header[4..]
            .try_into()
            .map_err(|_| Attempt::Retry("not a file stream".into()))?;
        let cipher = ChunkCipher::new(&ticket.secret, &shape, &transfer_id, &client_nonce);

        let (tx, rx) = mpsc::channel::<Vec<u8>>(PIPELINE_DEPTH);
        // Buffers come back from the hasher once their chunk is written
        // and hashed: a stream reuses at most BUFFERS of them instead of
        // allocating (and faulting in) a fresh one per chunk.
        let (free_tx, mut free_rx) = mpsc::channel::<Vec<u8>>(BUFFERS);
        let writer = {
            let (transfer, part, out, expected) = (
                transfer.clone(),
                part.to_path_buf(),
                download.out_path.clone(),
                download.blake3,
            );
            tokio::task::spawn_blocking(move || {
                write_chunks(
                    partfile, &cipher, from_chunk, rx, free_tx, &transfer, &expected, &part, &out,
                )
            })
        };
        // Whole chunks to the writer; the reading stops early if the
        // writer does (a chunk refused).
        let mut read_error = None;
        let mut made = 0;
        let largest = shape.record_len(0).unwrap_or(0);
        'chunks: for index in from_chunk..shape.chunks() {
            let len = shape.record_len(index).unwrap_or(0);
            let mut record = match free_rx.try_recv() {
                Ok(buffer) => buffer,
                Err(_) if made < BUFFERS => {
                    made += 1;
                    Vec::with_capacity(largest)
                }
                Err(_) => match free_rx.recv().await {
                    Some(buffer) => buffer,
                    // The writer stopped.
                    None => break,
                },
            };
            record.clear();
            while record.len() < len {
                if pending.is_empty() {
                    pending = match response.chunk().await {
                        Ok(Some(piece)) => piece,
                        Ok(None) => break 'chunks,
                        Err(e) => {
                            read_error = Some(e.to_string());
                            break 'chunks;
                        }
                    };
                }
                let take = (len - record.len()).min(pending.len());
                record.extend_from_slice(&pending.split_to(take));
            }
            if tx.send(record).await.is_err() {
                break;
            }
        }
        drop(tx);
        drop(response);
        let written = writer
            .await
            .map_err(|e| Attempt::Retry(format!("the writer failed: {e}")))?;
        match written {
            Ok(Written::Complete) => Ok(()),
            Ok(Written::Partial) => Err(Attempt::Retry(read_error.unwrap_or_else(|| {
                "the stream ended before its final chunk (truncated)".into()
            }))),
            Err(WriteFailure::Forged(e)) => {
                self.counters.chunks_refused.fetch_add(1, Ordering::Relaxed);
                Err(Attempt::Retry(format!("{e}: tampered, reordered or spliced")))
            }
            Err(WriteFailure::HashMismatch) => Err(Attempt::Fatal(
                "hash_mismatch: the file received does not match its BLAKE3 hash; the partial file was removed".into(),
            )),
            // Final, even for EMFILE: the failure may come after the
            // rename that put the file in place (the folder's fsync), and a
            // new attempt would then start a second copy.
            Err(WriteFailure::Io(e)) => Err(Attempt::Fatal(format!(
                "writing {}: {e}",
                download.out_path.display()
            ))),
        }
    }
}

/// The blocking writer of one stream: opens each chunk and appends it,
/// while a second thread feeds the BLAKE3 hasher with what was written (the
/// hash and the decryption with the write are the two largest costs per
/// byte; on two threads they overlap). After the final chunk it checks the
/// hash and puts the file in place. Every buffer goes back to `free`.
#[allow(clippy::too_many_arguments)]
fn write_chunks(
    part: PartFile,
    cipher: &ChunkCipher,
    from_chunk: u64,
    rx: mpsc::Receiver<Vec<u8>>,
    free: mpsc::Sender<Vec<u8>>,
    transfer: &Transfer,
    expected: &[u8; 32],
    part_path: &Path,
    out: &Path,
) -> Result<Written, WriteFailure> {
    let (mut part, hasher) = part.into_parts();
    part.rewind().map_err(WriteFailure::Io)?;
    let (to_hash, hash_rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(2);
    std::thread::scope(|scope| {
        let hashing = scope.spawn(move || hash_chunks(hasher, hash_rx, free));
        let written = open_and_write(&mut part, cipher, from_chunk, rx, &to_hash, transfer);
        // The hasher ends once it has seen every chunk written.
        drop(to_hash);
        let hasher = hashing
            .join()
            .map_err(|_| WriteFailure::Io(std::io::Error::other("the hasher panicked")))?;
        if !matches!(written?, Written::Complete) {
            return Ok(Written::Partial);
        }
        if *hasher.finalize().as_bytes() != *expected {
            drop(part);
            let _ = std::fs::remove_file(part_path);
            return Err(WriteFailure::HashMismatch);
        }
        part.commit(part_path, out).map_err(WriteFailure::Io)?;
        Ok(Written::Complete)
    })
}

/// Opens each chunk (AEAD) and appends its plaintext to the partial file,
/// then passes it to the hasher: nothing unauthenticated is written or
/// hashed. `Complete` once the final chunk is written.
fn open_and_write(
    part: &mut PartWriter,
    cipher: &ChunkCipher,
    from_chunk: u64,
    mut rx: mpsc::Receiver<Vec<u8>>,
    to_hash: &std::sync::mpsc::SyncSender<Vec<u8>>,
    transfer: &Transfer,
) -> Result<Written, WriteFailure> {
    let mut index = from_chunk;
    while let Some(mut record) = rx.blocking_recv() {
        let plain = cipher
            .open(index, &mut record)
            .map_err(WriteFailure::Forged)?
            .len();
        record.truncate(plain);
        part.append(&record).map_err(WriteFailure::Io)?;
        transfer.progress(part.verified());
        if to_hash.send(record).is_err() {
            return Err(WriteFailure::Io(std::io::Error::other(
                "the hasher stopped",
            )));
        }
        if cipher.shape().is_final(index) {
            return Ok(Written::Complete);
        }
        index += 1;
    }
    Ok(Written::Partial)
}

/// Feeds the hasher, in order, with the chunks written, and hands their
/// buffers back to the reader.
fn hash_chunks(
    mut hasher: blake3::Hasher,
    chunks: std::sync::mpsc::Receiver<Vec<u8>>,
    free: mpsc::Sender<Vec<u8>>,
) -> blake3::Hasher {
    for chunk in chunks {
        hasher.update(&chunk);
        // Never full (it holds as many as there are buffers); closed when
        // the reader is gone, and then the buffer is simply dropped.
        let _ = free.try_send(chunk);
    }
    hasher
}

/// Refuses a destination outside the folders the node may write downloads
/// to (`download_dirs`; empty: no such limit). A confined node could not
/// write there anyway: this says so before anything is asked of the peer.
fn check_download_folder(allowed: &[PathBuf], out: &Path) -> Result<(), FilesError> {
    if allowed.is_empty() {
        return Ok(());
    }
    let folder = if out.is_dir() {
        Some(out)
    } else {
        out.parent()
    };
    let canonical = folder.and_then(|f| std::fs::canonicalize(f).ok());
    let inside = canonical.is_some_and(|folder| {
        allowed
            .iter()
            .any(|dir| std::fs::canonicalize(dir).is_ok_and(|dir| folder.starts_with(dir)))
    });
    if inside {
        Ok(())
    } else {
        let list: Vec<String> = allowed.iter().map(|d| d.display().to_string()).collect();
        Err(FilesError::Invalid(
            ErrorCode::OutsideDownloadDirs,
            format!(
                "{} is not inside a download folder of this node ({}); see --download-dir",
                out.display(),
                list.join(", ")
            ),
        ))
    }
}
