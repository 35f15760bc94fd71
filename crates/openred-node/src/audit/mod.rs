//! The node's signed audit log (`DATA/audit/audit.log`, with its signed
//! head `DATA/audit/audit.head`): append-only JSON lines, hash-chained,
//! each signed by the node through its crypto agent. `format` defines the
//! bytes and checks them; this module owns the writer. See `docs/AUDIT.md`.
//!
//! Events reach the writer over a bounded channel. [`Audit::record`] never
//! waits: when the queue is full the event is counted, and the next batch
//! begins with a `gap` entry that says how many were lost. The P2P paths
//! use it. [`Audit::record_awaited`] waits until the entry is written and
//! fsynced (the owner's actions: module switches, file shares). The writer
//! writes a batch, fsyncs it once, then signs and atomically replaces the
//! head.
//!
//! Failures by callers who proved nothing (a bogus token push or
//! handshake, an admin request without a credential) never reach that
//! queue: [`Audit::count_unauthenticated`] adds one to an in-memory count
//! per event and reason, and the writer turns the counts into one
//! `unauthenticated_failures` entry per [`SUMMARY_INTERVAL`] at most (and
//! at a flush or close). So a stranger can neither grow the log by a line
//! per request nor crowd authenticated events out of the queue into a
//! `gap`.
//!
//! What this module must never do: write an entry it could not sign, fork
//! the chain (a log that does not verify at start stops the node), or let
//! a second writer append to the same log (an exclusive lock on the file).

pub mod format;

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use openred_core::wire::{b64_decode, b64_encode};
use openred_core::{Clock, NodeId};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio::sync::{mpsc, oneshot};

use format::{hex, line_hash, Head, AUDIT_DIR, HEAD_FILE, LOG_FILE, MAX_LINE};
pub use format::{Entry, EventKind, Outcome, Problem, Report, Verifier};

use crate::agent::master_key::Purpose;
use crate::agent::{Crypto, CryptoError};
use crate::store::Sealer;

/// Events waiting for the writer at most.
pub const QUEUE: usize = 1024;
/// How often at most the counts of unauthenticated failures become an
/// entry (a flush or the writer's close also writes them).
pub const SUMMARY_INTERVAL: Duration = Duration::from_secs(60);
/// Entries written and fsynced together at most.
const BATCH: usize = 256;
/// How much of the log's end the writer reads at start.
const TAIL_BYTES: u64 = 1 << 20;
const SEAL_AAD: &[u8] = b"openred/v1/audit-details";
/// Retries of a signature while the agent restarts (it takes ~30 ms).
const SIGN_RETRIES_MS: [u64; 5] = [0, 50, 200, 500, 1000];
/// The longest clear reason and sealed string detail.
const MAX_REASON: usize = 64;
const MAX_DETAIL: usize = 1024;

/// Why the audit log could not be opened or written.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// File system failure.
    #[error("audit log {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The log or its head does not verify: the node will not continue it.
    #[error(
        "the audit log in {dir} does not verify: {problem}; the node will not continue a broken chain \
         (see docs/AUDIT.md: keep the folder as evidence, move it aside, and start again)"
    )]
    Corrupt {
        /// The audit folder.
        dir: String,
        /// The first bad entry.
        problem: Problem,
    },
    /// Another writer holds the log.
    #[error("the audit log {0} is in use by another node process")]
    Locked(String),
    /// The writer has stopped (the node is stopping, or a write failed).
    #[error("the audit writer has stopped")]
    Closed,
    /// The agent did not sign.
    #[error("crypto: {0}")]
    Crypto(#[from] CryptoError),
    /// The entry could not be written.
    #[error("the event was not recorded: {0}")]
    NotRecorded(String),
}

/// An event to record.
#[derive(Debug, Clone)]
pub struct Event {
    kind: EventKind,
    outcome: Outcome,
    peer: Option<NodeId>,
    reason: Option<String>,
    details: Map<String, Value>,
}

impl Event {
    /// An event of `kind` with `outcome`.
    pub fn new(kind: EventKind, outcome: Outcome) -> Event {
        Event {
            kind,
            outcome,
            peer: None,
            reason: None,
            details: Map::new(),
        }
    }

    /// A success.
    pub fn ok(kind: EventKind) -> Event {
        Event::new(kind, Outcome::Ok)
    }

    /// A failure.
    pub fn failed(kind: EventKind) -> Event {
        Event::new(kind, Outcome::Failed)
    }

    /// Ok or failed, as `ok` says.
    pub fn outcome(kind: EventKind, ok: bool) -> Event {
        Event::new(kind, if ok { Outcome::Ok } else { Outcome::Failed })
    }

    /// The peer concerned: written as a keyed hash, and sealed in full.
    pub fn peer(mut self, peer: NodeId) -> Event {
        self.peer = Some(peer);
        self
    }

    /// A short code in clear (an error code, a module name): at most 64
    /// characters of `[a-z0-9_.:-]`, others replaced by `_`.
    pub fn reason(mut self, code: &str) -> Event {
        let clean = code
            .chars()
            .take(MAX_REASON)
            .map(|c| {
                if c.is_ascii_lowercase() || c.is_ascii_digit() || "_.:-".contains(c) {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        self.reason = Some(clean);
        self
    }

    /// A sensitive detail: sealed, readable only with the node's keys.
    /// Strings are cut at 1024 characters.
    pub fn detail(mut self, key: &str, value: impl Into<Value>) -> Event {
        let value = match value.into() {
            Value::String(s) if s.len() > MAX_DETAIL => {
                Value::String(s.chars().take(MAX_DETAIL).collect())
            }
            v => v,
        };
        self.details.insert(key.to_owned(), value);
        self
    }

    /// The kind.
    pub fn kind(&self) -> EventKind {
        self.kind
    }
}

type Ack = oneshot::Sender<Result<u64, String>>;

enum Job {
    Record(Box<Event>, Option<Ack>),
    Flush(oneshot::Sender<()>),
    Close(oneshot::Sender<()>),
}

/// Failures by unauthenticated callers, not yet written: a count per
/// (event, reason). Reasons are the code's own `'static` error codes, so
/// the map is bounded by the code, not by what callers send.
#[derive(Default)]
struct Failures {
    counts: HashMap<(EventKind, &'static str), u64>,
    first: u64,
    last: u64,
}

impl Failures {
    /// The summary entry of what was counted, and a fresh count.
    fn take(&mut self) -> Option<Event> {
        if self.counts.is_empty() {
            return None;
        }
        let taken = std::mem::take(self);
        let total: u64 = taken.counts.values().sum();
        // serde_json's map is ordered by key, so the details are stable.
        let counts: Map<String, Value> = taken
            .counts
            .into_iter()
            .map(|((kind, reason), n)| (format!("{}:{reason}", kind.name()), Value::from(n)))
            .collect();
        Some(
            Event::failed(EventKind::UnauthenticatedFailures)
                .reason("unauthenticated")
                .detail("total", total)
                .detail("counts", Value::Object(counts))
                .detail("first", taken.first)
                .detail("last", taken.last),
        )
    }
}

struct Shared {
    tx: mpsc::Sender<Job>,
    dropped: AtomicU64,
    failures: Mutex<Failures>,
    clock: Arc<dyn Clock>,
    written: AtomicU64,
    sealer: Sealer,
    dir: PathBuf,
}

/// The node's handle on its audit log (cheap to clone).
#[derive(Clone)]
pub struct Audit {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Audit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Audit").finish_non_exhaustive()
    }
}

/// The audit folder of a data directory.
pub fn audit_dir(data_dir: &Path) -> PathBuf {
    data_dir.join(AUDIT_DIR)
}

/// Creates the audit folder (0700) if missing: done before the node
/// confines itself, which then cannot create folders in the data directory.
pub fn prepare_dir(data_dir: &Path) -> std::io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(audit_dir(data_dir))
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> AuditError + '_ {
    move |source| AuditError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Checks the log and head of a data directory offline, with the node's
/// public key: what `openred audit verify` runs.
pub fn verify_dir(
    data_dir: &Path,
    key: openred_core::IdentityPublicKey,
) -> Result<Report, VerifyError> {
    let dir = audit_dir(data_dir);
    let read = |name: &str| -> Result<Option<Vec<u8>>, VerifyError> {
        let path = dir.join(name);
        match std::fs::read(&path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(VerifyError::Io(AuditError::Io {
                path: path.display().to_string(),
                source,
            })),
        }
    };
    let log = read(LOG_FILE)?;
    let head = read(HEAD_FILE)?;
    if log.is_none() && head.is_none() {
        return Err(VerifyError::NoLog(dir.display().to_string()));
    }
    Verifier::new(key)
        .check(&log.unwrap_or_default(), head.as_deref(), false, false)
        .map_err(VerifyError::Bad)
}

/// Why `verify_dir` failed.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The log is not there.
    #[error("no audit log in {0}")]
    NoLog(String),
    /// A file could not be read.
    #[error(transparent)]
    Io(AuditError),
    /// The first bad entry.
    #[error("{0}")]
    Bad(Problem),
}

struct Writer {
    dir: PathBuf,
    file: Arc<File>,
    crypto: Arc<Crypto>,
    clock: Arc<dyn Clock>,
    ids_key: [u8; 32],
    next_seq: u64,
    prev: [u8; 32],
    broken: bool,
}

impl Audit {
    /// Opens the log in `DATA/audit` (creating it), checks its tail and
    /// head, and starts the writer task, which continues the chain.
    pub async fn open(
        data_dir: &Path,
        crypto: Arc<Crypto>,
        clock: Arc<dyn Clock>,
    ) -> Result<Audit, AuditError> {
        Audit::open_with(data_dir, crypto, clock, SUMMARY_INTERVAL).await
    }

    /// [`Audit::open`], writing the counts of unauthenticated failures
    /// every `summary_interval` at most (tests shorten it).
    pub async fn open_with(
        data_dir: &Path,
        crypto: Arc<Crypto>,
        clock: Arc<dyn Clock>,
        summary_interval: Duration,
    ) -> Result<Audit, AuditError> {
        let dir = audit_dir(data_dir);
        prepare_dir(data_dir).map_err(io(&dir))?;
        let ids_key = crypto.storage_key(Purpose::AuditNodeIds).await?;
        let details_key = crypto.storage_key(Purpose::AuditDetails).await?;
        let log_path = dir.join(LOG_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .mode(0o600)
            .open(&log_path)
            .map_err(io(&log_path))?;
        rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive)
            .map_err(|_| AuditError::Locked(log_path.display().to_string()))?;
        let len = file.metadata().map_err(io(&log_path))?.len();
        let start = len.saturating_sub(TAIL_BYTES);
        let mut tail = Vec::new();
        file.seek(SeekFrom::Start(start))
            .and_then(|_| file.read_to_end(&mut tail))
            .map_err(io(&log_path))?;
        if start > 0 {
            // The chunk begins inside a line: start at the next one.
            let cut = tail
                .iter()
                .position(|b| *b == b'\n')
                .map_or(tail.len(), |p| p + 1);
            tail.drain(..cut);
        }
        let head_path = dir.join(HEAD_FILE);
        let head = match std::fs::read(&head_path) {
            Ok(bytes) => Some(bytes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(io(&head_path)(e)),
        };
        let verifier = Verifier::new(crypto.public().identity);
        let corrupt = |problem| AuditError::Corrupt {
            dir: dir.display().to_string(),
            problem,
        };
        let report = verifier
            .check(&tail, head.as_deref(), start > 0, true)
            .map_err(corrupt)?;
        if report.torn_bytes > 0 {
            file.set_len(len - report.torn_bytes)
                .and_then(|_| file.sync_all())
                .map_err(io(&log_path))?;
        }
        let (next_seq, prev) = match report.last {
            Some((seq, hash)) => (seq + 1, hash),
            None => (0, verifier.genesis()),
        };
        let mut writer = Writer {
            dir: dir.clone(),
            file: Arc::new(file),
            crypto,
            clock,
            ids_key: ids_key.0,
            next_seq,
            prev,
            broken: false,
        };
        let mut first = Vec::new();
        if head.is_none() {
            // A new log: its head (no entries) exists before any entry, so
            // that a missing head always means a removed one.
            writer.write_head().await?;
            first.push(Event::ok(EventKind::LogStarted));
        } else if report.head_lag > 0 {
            tracing::warn!(
                entries = report.head_lag,
                "the audit head lagged the log (the node stopped between the two); signing a new head"
            );
            writer.write_head().await?;
        }
        if report.torn_bytes > 0 {
            tracing::warn!(
                bytes = report.torn_bytes,
                "the audit log ended with an incomplete line; it was cut"
            );
            first.push(
                Event::ok(EventKind::LogRepaired)
                    .reason("torn_line")
                    .detail("bytes", report.torn_bytes),
            );
        }
        let (tx, rx) = mpsc::channel(QUEUE);
        let shared = Arc::new(Shared {
            tx,
            dropped: AtomicU64::new(0),
            failures: Mutex::new(Failures::default()),
            clock: writer.clock.clone(),
            written: AtomicU64::new(next_seq),
            sealer: Sealer::new(&details_key.0),
            dir,
        });
        if !first.is_empty() {
            let jobs = first.into_iter().map(|e| (e, None)).collect();
            writer.append(jobs, &shared).await;
        }
        tokio::spawn(run(writer, rx, shared.clone(), summary_interval));
        Ok(Audit { shared })
    }

    /// Records `event` without waiting; if the queue is full, the event is
    /// counted and a `gap` entry will say so.
    pub fn record(&self, event: Event) {
        if self
            .shared
            .tx
            .try_send(Job::Record(Box::new(event), None))
            .is_err()
        {
            self.shared.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts a failure by a caller who proved nothing (a token push or a
    /// handshake refused, an admin request without a valid credential):
    /// no entry of its own, a count in the next `unauthenticated_failures`
    /// entry. Never waits, never touches the writer's queue.
    pub fn count_unauthenticated(&self, kind: EventKind, reason: &'static str) {
        let now = self.shared.clock.now().0;
        let mut failures = self
            .shared
            .failures
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if failures.counts.is_empty() {
            failures.first = now;
        }
        failures.last = now;
        *failures.counts.entry((kind, reason)).or_default() += 1;
    }

    /// Failures counted and not yet written.
    pub fn unauthenticated_pending(&self) -> u64 {
        self.shared.pending_failures()
    }

    /// Records `event` and waits until it is written and fsynced; its seq.
    pub async fn record_awaited(&self, event: Event) -> Result<u64, AuditError> {
        let (ack, done) = oneshot::channel();
        self.shared
            .tx
            .send(Job::Record(Box::new(event), Some(ack)))
            .await
            .map_err(|_| AuditError::Closed)?;
        match done.await {
            Ok(Ok(seq)) => Ok(seq),
            Ok(Err(e)) => Err(AuditError::NotRecorded(e)),
            Err(_) => Err(AuditError::Closed),
        }
    }

    /// Waits until every event recorded before is written, the counts of
    /// unauthenticated failures included (the owner asked to see it all).
    pub async fn flush(&self) -> Result<(), AuditError> {
        let (ack, done) = oneshot::channel();
        self.shared
            .tx
            .send(Job::Flush(ack))
            .await
            .map_err(|_| AuditError::Closed)?;
        done.await.map_err(|_| AuditError::Closed)
    }

    /// Writes what is queued, then stops the writer and releases the log.
    pub async fn close(&self) {
        let (ack, done) = oneshot::channel();
        if self.shared.tx.send(Job::Close(ack)).await.is_ok() {
            let _ = done.await;
        }
    }

    /// Events lost since the last `gap` entry (queue full, or unsigned).
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// Entries in the log (the next seq).
    pub fn entries(&self) -> u64 {
        self.shared.written.load(Ordering::Relaxed)
    }

    /// The file module's hook: a file shared with `peer` (waits until
    /// recorded).
    pub async fn file_shared(&self, peer: NodeId, file: &str) -> Result<u64, AuditError> {
        self.record_awaited(
            Event::ok(EventKind::FileShared)
                .peer(peer)
                .detail("file", file),
        )
        .await
    }

    /// The file module's hook: `peer` downloaded a shared file (does not
    /// wait: it happens on the P2P path).
    pub fn file_downloaded(&self, peer: NodeId, file: &str, ok: bool) {
        self.record(
            Event::outcome(EventKind::FileDownloaded, ok)
                .peer(peer)
                .detail("file", file),
        );
    }

    /// The file module's hook: a share revoked (waits until recorded).
    pub async fn file_revoked(&self, peer: NodeId, file: &str) -> Result<u64, AuditError> {
        self.record_awaited(
            Event::ok(EventKind::FileRevoked)
                .peer(peer)
                .detail("file", file),
        )
        .await
    }

    /// The owner's view: entries from `since` (Unix seconds), the last
    /// `limit` of them, with their details opened.
    pub async fn read(&self, since: u64, limit: usize) -> Result<AuditView, AuditError> {
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || shared.read(since, limit))
            .await
            .map_err(|e| AuditError::NotRecorded(e.to_string()))?
    }
}

/// One entry, as the owner sees it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuditEntryView {
    /// Its seq.
    pub seq: u64,
    /// Unix seconds.
    pub time: u64,
    /// What happened.
    pub event: String,
    /// `ok` or `failed`.
    pub outcome: String,
    /// The peer's keyed hash.
    pub peer: Option<String>,
    /// The clear reason.
    pub reason: Option<String>,
    /// The sealed details, opened (`null` if none).
    pub details: Option<Value>,
    /// Set when the sealed details do not open.
    pub problem: Option<String>,
}

/// `GET /admin/v1/audit`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuditView {
    /// The entries, oldest first.
    pub entries: Vec<AuditEntryView>,
    /// Whether older matching entries were left out (over `limit`).
    pub truncated: bool,
    /// Lines that do not parse (run `openred audit verify`).
    pub unreadable: u64,
    /// Events lost since the last `gap` entry.
    pub dropped: u64,
}

fn seal_aad(seq: u64, kind: EventKind) -> Vec<u8> {
    let mut aad = SEAL_AAD.to_vec();
    aad.extend_from_slice(&seq.to_be_bytes());
    aad.extend_from_slice(kind.name().as_bytes());
    aad
}

impl Shared {
    fn take_failures(&self) -> Option<Event> {
        self.failures
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }

    fn pending_failures(&self) -> u64 {
        self.failures
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .counts
            .values()
            .sum()
    }

    fn read(&self, since: u64, limit: usize) -> Result<AuditView, AuditError> {
        let path = self.dir.join(LOG_FILE);
        let file = File::open(&path).map_err(io(&path))?;
        let mut view = AuditView {
            entries: Vec::new(),
            truncated: false,
            unreadable: 0,
            dropped: self.dropped.load(Ordering::Relaxed),
        };
        let mut kept = std::collections::VecDeque::new();
        for line in std::io::BufRead::split(std::io::BufReader::new(file), b'\n') {
            let line = line.map_err(io(&path))?;
            let Ok(entry) = serde_json::from_slice::<Entry>(&line) else {
                view.unreadable += 1;
                continue;
            };
            if entry.time < since {
                continue;
            }
            if kept.len() == limit {
                kept.pop_front();
                view.truncated = true;
            }
            kept.push_back(entry);
        }
        view.entries = kept.into_iter().map(|e| self.open_entry(e)).collect();
        Ok(view)
    }

    fn open_entry(&self, entry: Entry) -> AuditEntryView {
        let mut problem = None;
        let details = entry.sealed.as_ref().and_then(|sealed| {
            let opened = b64_decode(sealed)
                .ok()
                .and_then(|bytes| {
                    self.sealer
                        .open(&seal_aad(entry.seq, entry.event), &bytes)
                        .ok()
                })
                .and_then(|plain| serde_json::from_slice::<Value>(&plain).ok());
            if opened.is_none() {
                problem = Some("the sealed details do not open under this node's key".into());
            }
            opened
        });
        AuditEntryView {
            seq: entry.seq,
            time: entry.time,
            event: entry.event.name().to_owned(),
            outcome: match entry.outcome {
                Outcome::Ok => "ok",
                Outcome::Failed => "failed",
            }
            .to_owned(),
            peer: entry.peer,
            reason: entry.reason,
            details,
            problem,
        }
    }
}

/// The writer task: batches, one fsync per batch, then the head; the
/// counts of unauthenticated failures once per `interval` at most.
async fn run(
    mut writer: Writer,
    mut rx: mpsc::Receiver<Job>,
    shared: Arc<Shared>,
    interval: Duration,
) {
    let mut jobs = Vec::with_capacity(BATCH);
    let mut summaries = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    summaries.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // Both branches are cancel-safe: `recv_many` takes nothing when
        // the tick wins.
        let received = tokio::select! {
            received = rx.recv_many(&mut jobs, BATCH) => received,
            _ = summaries.tick() => {
                if let Some(summary) = shared.take_failures() {
                    writer.append(vec![(summary, None)], &shared).await;
                }
                continue;
            }
        };
        if received == 0 {
            return;
        }
        let mut events = Vec::with_capacity(jobs.len() + 1);
        let dropped = shared.dropped.swap(0, Ordering::Relaxed);
        if dropped > 0 {
            events.push((
                Event::failed(EventKind::Gap)
                    .reason("events_lost")
                    .detail("dropped", dropped),
                None,
            ));
        }
        let mut flushes = Vec::new();
        let mut close = None;
        for job in jobs.drain(..) {
            match job {
                Job::Record(event, ack) if close.is_none() => events.push((*event, ack)),
                Job::Flush(ack) => flushes.push(ack),
                Job::Close(ack) => close = Some(ack),
                Job::Record(..) => {}
            }
        }
        if !flushes.is_empty() || close.is_some() {
            if let Some(summary) = shared.take_failures() {
                events.push((summary, None));
            }
        }
        writer.append(events, &shared).await;
        for ack in flushes {
            let _ = ack.send(());
        }
        if let Some(ack) = close {
            drop(writer);
            let _ = ack.send(());
            return;
        }
    }
}

impl Writer {
    /// Signs, writes and fsyncs `events`, then the head; answers the acks.
    async fn append(&mut self, events: Vec<(Event, Option<Ack>)>, shared: &Shared) {
        if events.is_empty() {
            return;
        }
        if self.broken {
            shared
                .dropped
                .fetch_add(events.len() as u64, Ordering::Relaxed);
            for (_, ack) in events {
                if let Some(ack) = ack {
                    let _ = ack.send(Err("the audit writer failed earlier".into()));
                }
            }
            return;
        }
        let (seq0, prev0) = (self.next_seq, self.prev);
        let mut buffer = Vec::new();
        let mut done = Vec::new();
        for (event, ack) in events {
            match self.line(event, &shared.sealer).await {
                Ok((seq, line)) => {
                    buffer.extend_from_slice(&line);
                    buffer.push(b'\n');
                    done.push((seq, ack));
                }
                Err(e) => {
                    tracing::error!(error = %e, "an audit event could not be signed; it is counted as lost");
                    shared.dropped.fetch_add(1, Ordering::Relaxed);
                    if let Some(ack) = ack {
                        let _ = ack.send(Err(e.to_string()));
                    }
                }
            }
        }
        if buffer.is_empty() {
            return;
        }
        let file = self.file.clone();
        let written = tokio::task::spawn_blocking(move || {
            (&*file).write_all(&buffer)?;
            file.sync_data()
        })
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)));
        if let Err(e) = written {
            // The file may now hold part of the batch: never append after
            // it. The node goes on; the log will not verify past here, and
            // the next start refuses it until the owner looks.
            tracing::error!(error = %e, "writing the audit log failed; the audit writer stops");
            self.broken = true;
            (self.next_seq, self.prev) = (seq0, prev0);
            for (_, ack) in done {
                if let Some(ack) = ack {
                    let _ = ack.send(Err(format!("writing the audit log: {e}")));
                }
            }
            return;
        }
        shared.written.store(self.next_seq, Ordering::Relaxed);
        if let Err(e) = self.write_head().await {
            // The entries are written and signed; a lagging head is signed
            // again at the next batch or start.
            tracing::warn!(error = %e, "rewriting the audit head failed");
        }
        for (seq, ack) in done {
            if let Some(ack) = ack {
                let _ = ack.send(Ok(seq));
            }
        }
    }

    /// The next line for `event`: built, hashed, signed; the chain moves.
    async fn line(&mut self, event: Event, sealer: &Sealer) -> Result<(u64, Vec<u8>), AuditError> {
        let seq = self.next_seq;
        let mut details = event.details;
        if let Some(peer) = &event.peer {
            details.insert("peer_id".into(), Value::String(peer.to_string()));
        }
        let sealed = if details.is_empty() {
            None
        } else {
            let plain = serde_json::to_vec(&details).unwrap_or_default();
            let bytes = sealer
                .seal(&seal_aad(seq, event.kind), &plain)
                .map_err(|e| AuditError::NotRecorded(e.to_string()))?;
            Some(b64_encode(&bytes))
        };
        let mut entry = Entry {
            seq,
            time: self.clock.now().0,
            event: event.kind,
            outcome: event.outcome,
            peer: event.peer.map(|p| self.peer_hash(&p)),
            reason: event.reason,
            sealed,
            prev: hex(&self.prev),
            sig: String::new(),
        };
        let hash = entry.entry_hash();
        let mut last = None;
        for wait in SIGN_RETRIES_MS {
            tokio::time::sleep(Duration::from_millis(wait)).await;
            match self.crypto.sign_audit_entry(seq, &hash).await {
                Ok(sig) => {
                    last = None;
                    entry.sig = b64_encode(&sig);
                    break;
                }
                Err(e @ CryptoError::Unavailable) => last = Some(e),
                Err(e) => return Err(e.into()),
            }
        }
        if let Some(e) = last {
            return Err(e.into());
        }
        let line = entry.to_line();
        if line.len() > MAX_LINE {
            return Err(AuditError::NotRecorded("the entry is too long".into()));
        }
        self.prev = line_hash(&line);
        self.next_seq += 1;
        Ok((seq, line))
    }

    /// The keyed hash that stands for a node ID: 16 bytes, hex.
    fn peer_hash(&self, peer: &NodeId) -> String {
        hex(&blake3::keyed_hash(&self.ids_key, peer.as_bytes()).as_bytes()[..16])
    }

    /// Signs and atomically replaces the head: temp file, fsync, rename,
    /// fsync of the folder.
    async fn write_head(&mut self) -> Result<(), AuditError> {
        let sig = self
            .crypto
            .sign_audit_head(self.next_seq, &self.prev)
            .await?;
        let head = Head {
            entries: self.next_seq,
            line_hash: hex(&self.prev),
            sig: b64_encode(&sig),
        };
        let mut text = serde_json::to_vec(&head).unwrap_or_default();
        text.push(b'\n');
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || write_atomically(&dir, HEAD_FILE, &text))
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)))
            .map_err(io(&self.dir.join(HEAD_FILE)))
    }
}

fn write_atomically(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    let temp = dir.join(format!("{name}.tmp"));
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&temp, dir.join(name))?;
    File::open(dir)?.sync_all()
}
/// The most entries one `audit` answer holds.
pub const MAX_AUDIT_ENTRIES: usize = 10_000;
