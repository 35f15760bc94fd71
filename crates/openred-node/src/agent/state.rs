//! What the agent refuses to sign again or ahead of time: its own record of
//! the highest record `seq`, audit entry `seq` and audit head it signed,
//! and the window around its clock that signed times must fall in.
//!
//! Without it the agent was a signing oracle for the future: a compromised
//! node process got one record signed with `seq` 2^63-1 and a 100-year
//! expiry, which bricked the identity at the directory, and could re-sign
//! any audit entry. The counters only move forward, and they are kept in
//! `keys/agent.state`, a file only the agent writes (the node cannot reach
//! the key folder), before any signature leaves: a node that makes its agent
//! restart (it can close the agent's socket) finds the same counters.
//!
//! Saved means written to the file before the signature leaves: the
//! kernel keeps the write when the agent process dies, which is what a
//! compromised node can cause. Against a power cut the record `seq` is
//! also flushed (`fdatasync`) before its signature leaves; audit entries
//! and heads, signed for every batch of the log, are flushed by a thread
//! within [`FLUSH_EVERY`] of the write instead: a flush per entry cost
//! the introductions about 0.5 ms each (docs/BENCHMARKS.md), and the
//! window left is a power cut followed by a compromise of the node that
//! rewrites the entries of the last second.
//!
//! The file holds two 64-byte slots written in turn, each
//! `magic (8) || generation (8) || record seq (8) || audit entry seq (8) ||
//! audit head entries (8) || BLAKE3 of the 40 bytes before, first 24`: a
//! write torn by a crash damages one slot, and the other still holds the
//! previous state. The counters are not secret; `openred audit verify`
//! reads the audit head count from it.

use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::Arc;

use openred_core::{Clock, UnixTime};

/// The file in the key folder.
pub const STATE_FILE: &str = "agent.state";
/// How far a signed `issued_at` may be from the agent's clock, in seconds
/// (the directory's default `clock_skew_s`).
pub const MAX_SKEW_S: u64 = 300;
/// The longest record lifetime the agent signs: 7 days.
pub const MAX_RECORD_LIFETIME_S: u64 = 7 * 24 * 3600;
/// How soon an audit counter written to the file is flushed to the disk.
pub const FLUSH_EVERY: std::time::Duration = std::time::Duration::from_millis(500);

const MAGIC: [u8; 8] = *b"ORAGST01";
const SLOT: usize = 64;
const BODY: usize = 40;
const CHECK: usize = 24;

/// The counters that only move forward.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// The highest record or deregistration `seq` signed.
    pub record_seq: u64,
    /// The highest audit entry `seq` signed.
    pub audit_seq: u64,
    /// The largest entry count of an audit head signed.
    pub audit_head: u64,
    generation: u64,
}

/// Why a state file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Reading or writing the file failed.
    #[error("{STATE_FILE}: {0}")]
    Io(#[from] io::Error),
    /// Neither slot holds a valid state: the file was damaged. The agent
    /// does not start without it (fail closed).
    #[error(
        "{STATE_FILE} is damaged (neither slot verifies); the agent will not sign without \
         the record of what it signed before"
    )]
    Damaged,
}

fn encode(c: &Counters) -> [u8; SLOT] {
    let mut slot = [0u8; SLOT];
    slot[..8].copy_from_slice(&MAGIC);
    slot[8..16].copy_from_slice(&c.generation.to_be_bytes());
    slot[16..24].copy_from_slice(&c.record_seq.to_be_bytes());
    slot[24..32].copy_from_slice(&c.audit_seq.to_be_bytes());
    slot[32..40].copy_from_slice(&c.audit_head.to_be_bytes());
    let check = blake3::hash(&slot[..BODY]);
    slot[BODY..BODY + CHECK].copy_from_slice(&check.as_bytes()[..CHECK]);
    slot
}

fn decode(slot: &[u8]) -> Option<Counters> {
    if slot.len() != SLOT || slot[..8] != MAGIC {
        return None;
    }
    let check = blake3::hash(&slot[..BODY]);
    if slot[BODY..BODY + CHECK] != check.as_bytes()[..CHECK] {
        return None;
    }
    let word = |at: usize| {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(&slot[at..at + 8]);
        u64::from_be_bytes(bytes)
    };
    Some(Counters {
        generation: word(8),
        record_seq: word(16),
        audit_seq: word(24),
        audit_head: word(32),
    })
}

/// Creates the state file of `key_dir` if missing (0600, owned by `owner`
/// when given), so that the launcher can allow its agents to write that
/// one file and nothing else. Called by the launcher before it confines
/// itself.
pub fn ensure_file(
    key_dir: &Path,
    owner: Option<super::process::RunAs>,
) -> Result<std::path::PathBuf, StateError> {
    let path = key_dir.join(STATE_FILE);
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)?;
    if let Some(owner) = owner {
        std::os::unix::fs::chown(&path, Some(owner.uid), Some(owner.gid))?;
    }
    Ok(path)
}

/// Reads the counters of a key folder's state file (`None` without one):
/// for `openred audit verify`, offline.
pub fn read(key_dir: &Path) -> Result<Option<Counters>, StateError> {
    let mut bytes = Vec::new();
    match File::open(key_dir.join(STATE_FILE)) {
        Ok(mut file) => file.read_to_end(&mut bytes)?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    if bytes.is_empty() {
        return Ok(None);
    }
    newest(&bytes).map(Some).ok_or(StateError::Damaged)
}

fn newest(bytes: &[u8]) -> Option<Counters> {
    bytes
        .chunks(SLOT)
        .take(2)
        .filter_map(decode)
        .max_by_key(|c| c.generation)
}

/// The agent's signing rules and counters.
pub struct SigningState {
    clock: Arc<dyn Clock>,
    counters: std::sync::Mutex<Counters>,
    file: Option<Arc<StateFile>>,
}

/// The open state file, and whether it holds writes not flushed yet.
struct StateFile {
    file: File,
    dirty: std::sync::atomic::AtomicBool,
    flusher: std::sync::Once,
}

/// When a saved counter must be on the disk.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Flush {
    /// Before the signature leaves.
    Now,
    /// Within [`FLUSH_EVERY`].
    Soon,
}

impl StateFile {
    fn save(self: &Arc<Self>, counters: &Counters, flush: Flush) -> io::Result<()> {
        let offset = (counters.generation % 2) * SLOT as u64;
        self.file.write_all_at(&encode(counters), offset)?;
        match flush {
            Flush::Now => {
                self.dirty.store(false, std::sync::atomic::Ordering::SeqCst);
                self.file.sync_data()
            }
            Flush::Soon => {
                self.dirty.store(true, std::sync::atomic::Ordering::SeqCst);
                // Started by the first deferred write, so from a worker
                // thread: after the agent confined itself, whose seccomp
                // filter and Landlock domain the new thread inherits.
                self.flusher.call_once(|| {
                    let file = Arc::downgrade(self);
                    std::thread::spawn(move || Self::flush_until_closed(&file));
                });
                Ok(())
            }
        }
    }

    fn flush_until_closed(file: &std::sync::Weak<StateFile>) {
        loop {
            std::thread::sleep(FLUSH_EVERY);
            let Some(file) = file.upgrade() else { return };
            file.flush();
        }
    }

    fn flush(&self) {
        if self.dirty.swap(false, std::sync::atomic::Ordering::SeqCst) {
            if let Err(e) = self.file.sync_data() {
                self.dirty.store(true, std::sync::atomic::Ordering::SeqCst);
                tracing::warn!(error = %e, "flushing {STATE_FILE} failed; trying again");
            }
        }
    }
}

impl Drop for StateFile {
    fn drop(&mut self) {
        self.flush();
    }
}

/// Why a signature was refused.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// A time outside the window around the agent's clock.
    #[error("{0}")]
    Time(String),
    /// A `seq` that does not move forward, or jumps too far ahead.
    #[error("{0}")]
    Seq(String),
    /// The counters could not be saved: nothing is signed.
    #[error("the agent could not save its state: {0}")]
    Save(io::Error),
}

impl SigningState {
    /// Counters kept in memory only (the in-process mode and tests: there is
    /// no separate process to restart).
    pub fn in_memory(clock: Arc<dyn Clock>) -> SigningState {
        SigningState {
            clock,
            counters: std::sync::Mutex::new(Counters::default()),
            file: None,
        }
    }

    /// Opens (creating it, 0600) the state file of `key_dir`. Called by the
    /// agent before it confines itself; the open file stays writable after.
    pub fn open(key_dir: &Path, clock: Arc<dyn Clock>) -> Result<SigningState, StateError> {
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(key_dir.join(STATE_FILE))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        let counters = if bytes.is_empty() {
            Counters::default()
        } else {
            newest(&bytes).ok_or(StateError::Damaged)?
        };
        Ok(SigningState {
            clock,
            counters: std::sync::Mutex::new(counters),
            file: Some(Arc::new(StateFile {
                file,
                dirty: std::sync::atomic::AtomicBool::new(false),
                flusher: std::sync::Once::new(),
            })),
        })
    }

    /// The counters as they stand.
    pub fn counters(&self) -> Counters {
        *self
            .counters
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn now(&self) -> UnixTime {
        self.clock.now()
    }

    /// `issued_at` within the skew of the agent's clock.
    pub fn check_issued(&self, issued_at: u64) -> Result<(), Refusal> {
        let now = self.now();
        if UnixTime(issued_at).distance(now) > MAX_SKEW_S {
            return Err(Refusal::Time(format!(
                "issued_at {issued_at} is more than {MAX_SKEW_S} s from the agent's clock ({now})"
            )));
        }
        Ok(())
    }

    /// A record: fresh, at most [`MAX_RECORD_LIFETIME_S`] long, and a
    /// `seq` above every one signed before and not far ahead of the clock.
    /// The counter is saved before this returns.
    pub fn admit_record(&self, seq: u64, issued_at: u64, expires_at: u64) -> Result<(), Refusal> {
        self.check_issued(issued_at)?;
        if expires_at.saturating_sub(issued_at) > MAX_RECORD_LIFETIME_S {
            return Err(Refusal::Time(format!(
                "a record lives at most {MAX_RECORD_LIFETIME_S} s"
            )));
        }
        self.admit_record_seq(seq)
    }

    /// A record or deregistration `seq`: above the last one signed, and at
    /// most the clock in milliseconds plus the skew (a node's seq is at
    /// least its clock in milliseconds), or exactly one above the last
    /// (a node whose clock went back keeps counting).
    pub fn admit_record_seq(&self, seq: u64) -> Result<(), Refusal> {
        let ceiling = self.now().0.saturating_add(MAX_SKEW_S).saturating_mul(1000);
        self.advance(Flush::Now, |c| {
            if seq <= c.record_seq {
                return Err(Refusal::Seq(format!(
                    "record seq {seq} is not above {} (signed before)",
                    c.record_seq
                )));
            }
            if seq > ceiling && seq != c.record_seq.saturating_add(1) {
                return Err(Refusal::Seq(format!(
                    "record seq {seq} is ahead of the agent's clock"
                )));
            }
            c.record_seq = seq;
            Ok(())
        })
    }

    /// An audit entry: its `seq` not below the last one signed. The last
    /// one may be signed again (the node may have crashed between the
    /// signature and the write), nothing before it.
    pub fn admit_audit_entry(&self, seq: u64) -> Result<(), Refusal> {
        self.advance(Flush::Soon, |c| {
            if seq < c.audit_seq {
                return Err(Refusal::Seq(format!(
                    "audit entry {seq} is below the last one signed ({})",
                    c.audit_seq
                )));
            }
            c.audit_seq = seq;
            Ok(())
        })
    }

    /// An audit head: never fewer entries than a head signed before, so a
    /// truncated log cannot get a new signed head.
    pub fn admit_audit_head(&self, entries: u64) -> Result<(), Refusal> {
        self.advance(Flush::Soon, |c| {
            if entries < c.audit_head {
                return Err(Refusal::Seq(format!(
                    "an audit head of {entries} entries is below one signed before ({})",
                    c.audit_head
                )));
            }
            c.audit_head = entries;
            Ok(())
        })
    }

    /// Applies `change` to a copy of the counters, saves it, then keeps it:
    /// a signature follows only a saved state.
    fn advance(
        &self,
        flush: Flush,
        change: impl FnOnce(&mut Counters) -> Result<(), Refusal>,
    ) -> Result<(), Refusal> {
        let mut counters = self
            .counters
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut next = *counters;
        change(&mut next)?;
        if next == *counters {
            return Ok(());
        }
        next.generation = counters.generation.wrapping_add(1);
        if let Some(file) = &self.file {
            file.save(&next, flush).map_err(Refusal::Save)?;
        }
        *counters = next;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use openred_core::time::ManualClock;

    const NOW: u64 = 1_800_000_000;

    fn state(dir: &Path) -> SigningState {
        SigningState::open(dir, Arc::new(ManualClock::new(UnixTime(NOW)))).unwrap()
    }

    #[test]
    fn a_record_far_in_the_future_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let s = state(dir.path());
        let ms = NOW * 1000;
        // The bricking record: the highest seq, a century of life.
        assert!(s
            .admit_record(i64::MAX as u64, NOW, NOW + 100 * 365 * 86400)
            .is_err());
        assert!(s.admit_record(i64::MAX as u64, NOW, NOW + 3600).is_err());
        assert!(s.admit_record(ms, NOW, NOW + 8 * 86400).is_err());
        assert!(s.admit_record(ms, NOW + 3600, NOW + 7200).is_err());
        assert!(s.admit_record(ms, NOW - 3600, NOW).is_err());
        assert_eq!(s.counters().record_seq, 0, "nothing refused moved it");
        s.admit_record(ms, NOW, NOW + 86400).unwrap();
        assert_eq!(s.counters().record_seq, ms);
    }

    #[test]
    fn a_seq_signed_before_is_never_signed_again_even_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let ms = NOW * 1000;
        {
            let s = state(dir.path());
            s.admit_record(ms, NOW, NOW + 60).unwrap();
            s.admit_audit_entry(5).unwrap();
            s.admit_audit_head(6).unwrap();
        }
        // A new agent (the node closed the old one's socket) on the file.
        let s = state(dir.path());
        assert!(s.admit_record(ms, NOW, NOW + 60).is_err());
        assert!(s.admit_record_seq(ms - 1).is_err());
        assert!(s.admit_audit_entry(4).is_err());
        assert!(s.admit_audit_head(5).is_err());
        // The last entry may be signed again (a crash before its write).
        s.admit_audit_entry(5).unwrap();
        s.admit_audit_entry(6).unwrap();
        s.admit_audit_head(7).unwrap();
        s.admit_record_seq(ms + 1).unwrap();
        assert_eq!(read(dir.path()).unwrap().unwrap().audit_head, 7);
    }

    #[test]
    fn audit_counters_written_without_a_flush_are_flushed_by_the_thread() {
        let dir = tempfile::tempdir().unwrap();
        let s = state(dir.path());
        let file = s.file.clone().unwrap();
        let dirty = || file.dirty.load(std::sync::atomic::Ordering::SeqCst);
        s.admit_record_seq(NOW * 1000).unwrap();
        assert!(!dirty(), "a record seq is flushed before it is signed");
        s.admit_audit_entry(3).unwrap();
        // Written already: a new agent (the old one killed) reads it.
        assert_eq!(read(dir.path()).unwrap().unwrap().audit_seq, 3);
        let deadline = std::time::Instant::now() + FLUSH_EVERY * 40;
        while dirty() {
            assert!(
                std::time::Instant::now() < deadline,
                "the flusher never ran"
            );
            std::thread::sleep(FLUSH_EVERY / 10);
        }
        // The thread holds no strong reference between its flushes: the
        // file is released with the state (after the flush under way, if
        // the thread is in one), and the thread then ends.
        let weak = Arc::downgrade(&file);
        drop((s, file));
        let deadline = std::time::Instant::now() + FLUSH_EVERY * 40;
        while weak.strong_count() > 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "the flusher keeps the state file alive"
            );
            std::thread::sleep(FLUSH_EVERY / 10);
        }
    }

    #[test]
    fn a_clock_set_back_still_lets_the_seq_count_by_one() {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::new(UnixTime(NOW)));
        let s = SigningState::open(dir.path(), clock.clone()).unwrap();
        s.admit_record_seq(NOW * 1000).unwrap();
        clock.set(UnixTime(NOW - 86400));
        assert!(s.admit_record_seq(NOW * 1000 + 5).is_err());
        s.admit_record_seq(NOW * 1000 + 1).unwrap();
    }

    #[test]
    fn a_torn_slot_leaves_the_previous_state_and_two_damaged_fail_closed() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = state(dir.path());
            s.admit_audit_entry(1).unwrap();
            s.admit_audit_entry(2).unwrap();
        }
        let path = dir.path().join(STATE_FILE);
        let mut bytes = std::fs::read(&path).unwrap();
        // Generation 2 is in slot 0: damage it.
        bytes[20] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(state(dir.path()).counters().audit_seq, 1);
        bytes[SLOT + 20] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        assert!(matches!(
            SigningState::open(dir.path(), Arc::new(ManualClock::new(UnixTime(NOW)))),
            Err(StateError::Damaged)
        ));
    }
}
