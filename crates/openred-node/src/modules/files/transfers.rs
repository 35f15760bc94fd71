//! Transfers in progress on this node, both ways, for the admin API and
//! the CLI's progress bar: bytes done, rate, attempts. In memory only: a
//! download's durable state is its row in `file_downloads` and its
//! partial file.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use openred_core::NodeId;
use serde::{Deserialize, Serialize};

use super::store::FileId;
use crate::modules::printable;

/// Finished transfers kept for listing, at most.
const KEEP_FINISHED: usize = 256;

/// Which way a transfer goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// This node fetches from a peer.
    Download,
    /// This node serves a peer.
    Upload,
}

/// Where a transfer stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TransferState {
    /// Bytes are moving, or an attempt is about to start.
    Running,
    /// Interrupted; the next attempt waits (back-off).
    Retrying,
    /// Finished: verified and in place (download), or all sent (upload).
    Done,
    /// Given up.
    Failed,
}

/// One transfer.
pub struct Transfer {
    /// This node's ID for it.
    pub id: FileId,
    /// Which way.
    pub direction: Direction,
    /// The other node.
    pub peer: NodeId,
    /// The share.
    pub file_id: FileId,
    /// The file's name (from the owner: for display only).
    pub name: String,
    /// Its size.
    pub size: u64,
    /// Where a download goes.
    pub out: Option<PathBuf>,
    done: AtomicU64,
    attempts: AtomicU64,
    resumed_from: AtomicU64,
    created: Instant,
    status: Mutex<Status>,
}

struct Status {
    state: TransferState,
    error: Option<String>,
    attempt_started: Instant,
    attempt_bytes: u64,
    finished: Option<Instant>,
}

/// A transfer as the admin API shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TransferView {
    /// This node's ID for it.
    pub transfer_id: String,
    /// `download` or `upload`.
    pub direction: Direction,
    /// The other node.
    pub node_id: String,
    /// The share.
    pub file_id: String,
    /// The file's name, control characters escaped.
    pub name: String,
    /// Its size in bytes.
    pub size: u64,
    /// Bytes verified (download) or sent (upload) so far.
    pub done_bytes: u64,
    /// `running`, `retrying`, `done` or `failed`.
    pub state: TransferState,
    /// Bytes per second over the current attempt.
    pub rate_bytes_per_s: f64,
    /// Seconds left at that rate, while running.
    pub eta_s: Option<f64>,
    /// Attempts so far (a resume is a new attempt).
    pub attempts: u64,
    /// Bytes already verified when the last attempt started.
    pub resumed_from: u64,
    /// Seconds from the start to now, or to the end once finished.
    pub elapsed_s: f64,
    /// Where a download goes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub out: Option<String>,
    /// Why the last attempt failed, or why the transfer did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl std::fmt::Debug for Transfer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.view().fmt(f)
    }
}

impl Transfer {
    /// A new transfer, running.
    pub fn new(
        id: FileId,
        direction: Direction,
        peer: NodeId,
        file_id: FileId,
        name: &str,
        size: u64,
        out: Option<PathBuf>,
    ) -> Transfer {
        Transfer {
            id,
            direction,
            peer,
            file_id,
            name: printable(name, 200),
            size,
            out,
            done: AtomicU64::new(0),
            attempts: AtomicU64::new(0),
            resumed_from: AtomicU64::new(0),
            created: Instant::now(),
            status: Mutex::new(Status {
                state: TransferState::Running,
                error: None,
                attempt_started: Instant::now(),
                attempt_bytes: 0,
                finished: None,
            }),
        }
    }

    fn status(&self) -> std::sync::MutexGuard<'_, Status> {
        self.status.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A new attempt starts with `done` bytes already there.
    pub fn attempt(&self, done: u64) {
        self.attempts.fetch_add(1, Ordering::Relaxed);
        self.resumed_from.store(done, Ordering::Relaxed);
        self.done.store(done, Ordering::Relaxed);
        let mut status = self.status();
        status.state = TransferState::Running;
        status.attempt_started = Instant::now();
        status.attempt_bytes = done;
    }

    /// `done` bytes are verified or sent now.
    pub fn progress(&self, done: u64) {
        self.done.store(done, Ordering::Relaxed);
    }

    /// Bytes done.
    pub fn done_bytes(&self) -> u64 {
        self.done.load(Ordering::Relaxed)
    }

    /// An attempt failed; another follows.
    pub fn retrying(&self, error: &str) {
        let mut status = self.status();
        status.state = TransferState::Retrying;
        status.error = Some(printable(error, 300));
    }

    /// The transfer ended.
    pub fn finish(&self, state: TransferState, error: Option<&str>) {
        let mut status = self.status();
        status.state = state;
        status.error = error.map(|e| printable(e, 300));
        status.finished = Some(Instant::now());
    }

    /// Where it stands.
    pub fn state(&self) -> TransferState {
        self.status().state
    }

    /// Why it failed, if it did.
    pub fn error(&self) -> Option<String> {
        self.status().error.clone()
    }

    /// The admin API's view.
    pub fn view(&self) -> TransferView {
        let status = self.status();
        let done = self.done_bytes();
        let elapsed = status.attempt_started.elapsed().as_secs_f64();
        let rate = if elapsed > 0.0 {
            done.saturating_sub(status.attempt_bytes) as f64 / elapsed
        } else {
            0.0
        };
        let running = matches!(status.state, TransferState::Running);
        TransferView {
            transfer_id: self.id.to_string(),
            direction: self.direction,
            node_id: self.peer.to_string(),
            file_id: self.file_id.to_string(),
            name: self.name.clone(),
            size: self.size,
            done_bytes: done,
            state: status.state,
            rate_bytes_per_s: rate,
            eta_s: (running && rate > 0.0).then(|| self.size.saturating_sub(done) as f64 / rate),
            attempts: self.attempts.load(Ordering::Relaxed),
            resumed_from: self.resumed_from.load(Ordering::Relaxed),
            elapsed_s: status
                .finished
                .unwrap_or_else(Instant::now)
                .duration_since(self.created)
                .as_secs_f64(),
            out: self.out.as_ref().map(|p| p.display().to_string()),
            error: status.error.clone(),
        }
    }
}

/// The transfers of the node.
#[derive(Default)]
pub struct Transfers {
    all: Mutex<HashMap<FileId, Arc<Transfer>>>,
}

impl Transfers {
    fn all(&self) -> std::sync::MutexGuard<'_, HashMap<FileId, Arc<Transfer>>> {
        self.all.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds a transfer; forgets the oldest finished ones beyond the bound.
    pub fn insert(&self, transfer: Arc<Transfer>) {
        let mut all = self.all();
        all.insert(transfer.id, transfer);
        let mut finished: Vec<(Instant, FileId)> = all
            .values()
            .filter_map(|t| t.status().finished.map(|at| (at, t.id)))
            .collect();
        if finished.len() > KEEP_FINISHED {
            finished.sort();
            for (_, id) in &finished[..finished.len() - KEEP_FINISHED] {
                all.remove(id);
            }
        }
    }

    /// One transfer.
    pub fn get(&self, id: &FileId) -> Option<Arc<Transfer>> {
        self.all().get(id).cloned()
    }

    /// The download of `file_id` from `peer` that is not finished, if any.
    pub fn active_download(&self, peer: &NodeId, file_id: &FileId) -> Option<Arc<Transfer>> {
        self.all()
            .values()
            .find(|t| {
                t.direction == Direction::Download
                    && t.peer == *peer
                    && t.file_id == *file_id
                    && !matches!(t.state(), TransferState::Done | TransferState::Failed)
            })
            .cloned()
    }

    /// Every transfer, unfinished first, then by ID.
    pub fn views(&self) -> Vec<TransferView> {
        let mut views: Vec<TransferView> = self.all().values().map(|t| t.view()).collect();
        views.sort_by_key(|v| {
            (
                matches!(v.state, TransferState::Done | TransferState::Failed),
                v.transfer_id.clone(),
            )
        });
        views
    }

    /// How many are running or retrying.
    pub fn active(&self) -> usize {
        self.all()
            .values()
            .filter(|t| !matches!(t.state(), TransferState::Done | TransferState::Failed))
            .count()
    }
}
