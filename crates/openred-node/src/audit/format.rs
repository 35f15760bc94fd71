//! The audit log's format and its verification: pure code over bytes, used
//! by the node's writer (to check the tail it continues) and by
//! `openred audit verify` (offline, with the node's public key only).
//!
//! One entry per line, canonical JSON with this exact field order and no
//! spaces (what `serde_json` writes for [`Entry`]):
//!
//! ```text
//! {"seq":N,"time":UNIX_S,"event":KIND,"outcome":"ok"|"failed","peer":HASH|null,
//!  "reason":CODE|null,"sealed":B64|null,"prev":HEX64,"sig":B64}
//! ```
//!
//! - `entry_hash = BLAKE3-derive_key("openred/v1/audit-entry", the line's
//!   canonical JSON without its "sig" field)`;
//! - `sig` = the node's Ed25519 signature, through its agent, over
//!   `audit_entry_message(node_id, seq, entry_hash)` under the label
//!   `openred/v1/audit-entry`;
//! - `prev` = BLAKE3 of the previous line's bytes (without its newline);
//!   for seq 0, `BLAKE3-derive_key("openred/v1/audit-genesis", node_id)`;
//! - a line must be byte for byte the canonical form of what it parses
//!   to, so every byte of the file is covered by a hash.
//!
//! The head file (`audit.head`) holds `{"entries":N,"line_hash":HEX64,
//! "sig":B64}`: the number of entries and the hash of the last line (the
//! genesis value for none), signed under `openred/v1/audit-head`.

use openred_core::keys::SignatureContext;
use openred_core::wire::{audit_entry_message, audit_head_message, b64_decode};
use openred_core::{IdentityPublicKey, NodeId};
use serde::{Deserialize, Serialize};

/// The folder of the audit log inside the data directory.
pub const AUDIT_DIR: &str = "audit";
/// The log.
pub const LOG_FILE: &str = "audit.log";
/// The signed head, kept apart from the log.
pub const HEAD_FILE: &str = "audit.head";
/// The longest line the writer produces or the verifier reads.
pub const MAX_LINE: usize = 16 * 1024;
const ENTRY_CONTEXT: &str = "openred/v1/audit-entry";
const GENESIS_CONTEXT: &str = "openred/v1/audit-genesis";

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A new log begins (its first entry).
    LogStarted,
    /// The writer repaired the log at start (a torn last line, cut).
    LogRepaired,
    /// Events were lost: the queue was full, or they could not be signed.
    Gap,
    /// Counts of failures by unauthenticated callers (token pushes,
    /// handshakes, admin requests without a credential) since the last
    /// such entry: one entry per interval at most, never one per request.
    UnauthenticatedFailures,
    /// Registration with the directory (first success, then changes).
    Registration,
    /// This node asked the directory for an introduction.
    IntroductionRequested,
    /// The directory pushed an introduction token, and it was accepted.
    IntroductionReceived,
    /// A token (pushed or presented in a handshake) was refused.
    TokenRejected,
    /// A handshake for an introduction (either role).
    Handshake,
    /// A session renewal (either role).
    SessionRenewed,
    /// A session ended.
    SessionClosed,
    /// The owner's authentication on the admin API.
    AdminLogin,
    /// A module switched on.
    ModuleEnabled,
    /// A module switched off.
    ModuleDisabled,
    /// A file shared with a peer.
    FileShared,
    /// A shared file downloaded by a peer.
    FileDownloaded,
    /// A share revoked.
    FileRevoked,
}

impl EventKind {
    /// The name written in the log.
    pub fn name(self) -> &'static str {
        match self {
            EventKind::LogStarted => "log_started",
            EventKind::LogRepaired => "log_repaired",
            EventKind::Gap => "gap",
            EventKind::UnauthenticatedFailures => "unauthenticated_failures",
            EventKind::Registration => "registration",
            EventKind::IntroductionRequested => "introduction_requested",
            EventKind::IntroductionReceived => "introduction_received",
            EventKind::TokenRejected => "token_rejected",
            EventKind::Handshake => "handshake",
            EventKind::SessionRenewed => "session_renewed",
            EventKind::SessionClosed => "session_closed",
            EventKind::AdminLogin => "admin_login",
            EventKind::ModuleEnabled => "module_enabled",
            EventKind::ModuleDisabled => "module_disabled",
            EventKind::FileShared => "file_shared",
            EventKind::FileDownloaded => "file_downloaded",
            EventKind::FileRevoked => "file_revoked",
        }
    }
}

/// Whether it succeeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// It did.
    Ok,
    /// It did not.
    Failed,
}

/// One line of the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// 0, 1, 2, … without holes.
    pub seq: u64,
    /// Unix seconds, from the node's clock.
    pub time: u64,
    /// What happened.
    pub event: EventKind,
    /// Whether it succeeded.
    pub outcome: Outcome,
    /// The peer, as a keyed hash (32 hex characters), if there is one.
    pub peer: Option<String>,
    /// A short code in clear (why it failed, which module, …).
    pub reason: Option<String>,
    /// The sensitive details, sealed (base64url), if any.
    pub sealed: Option<String>,
    /// BLAKE3 of the previous line, hex.
    pub prev: String,
    /// The node's signature, base64url.
    pub sig: String,
}

/// The fields an entry's hash covers: all but `sig`, in the same order.
#[derive(Serialize)]
struct Unsigned<'a> {
    seq: u64,
    time: u64,
    event: EventKind,
    outcome: Outcome,
    peer: &'a Option<String>,
    reason: &'a Option<String>,
    sealed: &'a Option<String>,
    prev: &'a str,
}

impl Entry {
    /// The hash the signature covers.
    pub fn entry_hash(&self) -> [u8; 32] {
        let unsigned = Unsigned {
            seq: self.seq,
            time: self.time,
            event: self.event,
            outcome: self.outcome,
            peer: &self.peer,
            reason: &self.reason,
            sealed: &self.sealed,
            prev: &self.prev,
        };
        // Serialising plain strings and numbers cannot fail.
        let json = serde_json::to_vec(&unsigned).unwrap_or_default();
        *blake3::Hasher::new_derive_key(ENTRY_CONTEXT)
            .update(&json)
            .finalize()
            .as_bytes()
    }

    /// The line's bytes (canonical JSON, without the newline).
    pub fn to_line(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// The signed head.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Head {
    /// How many entries the log holds.
    pub entries: u64,
    /// BLAKE3 of the last line, hex (the genesis value for none).
    pub line_hash: String,
    /// The node's signature, base64url.
    pub sig: String,
}

/// BLAKE3 of one line, without its newline.
pub fn line_hash(line: &[u8]) -> [u8; 32] {
    *blake3::hash(line).as_bytes()
}

/// The `prev` of entry 0, bound to the node.
pub fn genesis(node_id: &NodeId) -> [u8; 32] {
    *blake3::Hasher::new_derive_key(GENESIS_CONTEXT)
        .update(node_id.as_bytes())
        .finalize()
        .as_bytes()
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    data_encoding::HEXLOWER.encode(bytes)
}

/// What is wrong, and where: the first bad entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.describe())]
pub struct Problem {
    /// The line (from 1), when the problem is in the log.
    pub line: Option<u64>,
    /// The seq expected at that place.
    pub seq: Option<u64>,
    /// What is wrong.
    pub reason: String,
}

impl Problem {
    fn at(line: Option<u64>, seq: u64, reason: impl Into<String>) -> Problem {
        Problem {
            line,
            seq: Some(seq),
            reason: reason.into(),
        }
    }

    fn head(reason: impl Into<String>) -> Problem {
        Problem {
            line: None,
            seq: None,
            reason: format!("{HEAD_FILE}: {}", reason.into()),
        }
    }

    fn describe(&self) -> String {
        match (self.line, self.seq) {
            (Some(line), Some(seq)) => format!("line {line} (seq {seq}): {}", self.reason),
            (None, Some(seq)) => format!("seq {seq}: {}", self.reason),
            _ => self.reason.clone(),
        }
    }
}

/// What a successful check found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Entries in the log (checked).
    pub entries: u64,
    /// Entries after the head: written, but the head was not rewritten
    /// after them (the node stopped in between). They are signed; the node
    /// signs a new head when it starts.
    pub head_lag: u64,
    /// Bytes of an incomplete last line (a torn write), when allowed.
    pub torn_bytes: u64,
    /// The last entry's hash and seq, to continue the chain from.
    pub last: Option<(u64, [u8; 32])>,
}

/// Checks entries and heads against one node's key.
pub struct Verifier {
    key: IdentityPublicKey,
    node_id: NodeId,
}

impl Verifier {
    /// A verifier for the node whose identity key is `key`.
    pub fn new(key: IdentityPublicKey) -> Verifier {
        Verifier {
            node_id: key.node_id(),
            key,
        }
    }

    /// Parses one line and checks its form and signature (not its place).
    pub fn entry(&self, line: &[u8]) -> Result<Entry, String> {
        if line.len() > MAX_LINE {
            return Err(format!("the line is longer than {MAX_LINE} bytes"));
        }
        let entry: Entry =
            serde_json::from_slice(line).map_err(|e| format!("not an audit entry: {e}"))?;
        if entry.to_line() != line {
            return Err("the line is not in its canonical form (edited)".into());
        }
        let sig = b64_decode(&entry.sig).map_err(|_| "the signature is not base64url")?;
        let message = audit_entry_message(&self.node_id, entry.seq, &entry.entry_hash());
        self.key
            .verify(SignatureContext::AuditEntry, &message, &sig)
            .map_err(|_| "the signature does not verify with the node's key (edited or forged)")?;
        Ok(entry)
    }

    /// Parses the head file and checks its signature.
    pub fn head(&self, bytes: &[u8]) -> Result<(u64, [u8; 32]), Problem> {
        let text = bytes.strip_suffix(b"\n").unwrap_or(bytes);
        let head: Head =
            serde_json::from_slice(text).map_err(|e| Problem::head(format!("not a head: {e}")))?;
        let hash = parse_hash(&head.line_hash).ok_or_else(|| Problem::head("bad line_hash"))?;
        let sig = b64_decode(&head.sig).map_err(|_| Problem::head("bad signature encoding"))?;
        let message = audit_head_message(&self.node_id, head.entries, &hash);
        self.key
            .verify(SignatureContext::AuditHead, &message, &sig)
            .map_err(|_| {
                Problem::head("the signature does not verify with the node's key (tampered)")
            })?;
        Ok((head.entries, hash))
    }

    /// The genesis value of this node's log.
    pub fn genesis(&self) -> [u8; 32] {
        genesis(&self.node_id)
    }

    /// Checks a log and its head.
    ///
    /// `log` is the whole file, or (with `from_tail`) its last part starting
    /// at a line boundary: then the first line's own seq and prev are taken
    /// as the starting point (earlier lines were checked when written), and
    /// line numbers are not known. `allow_torn` accepts an incomplete last
    /// line (reported in [`Report::torn_bytes`]) instead of failing.
    pub fn check(
        &self,
        log: &[u8],
        head: Option<&[u8]>,
        from_tail: bool,
        allow_torn: bool,
    ) -> Result<Report, Problem> {
        // The head's own problems are reported after the log's: the first
        // bad entry comes first.
        let parsed_head = head.map(|h| self.head(h)).transpose();
        let head = parsed_head.as_ref().ok().copied().flatten();
        let mut report = Report::default();
        let (complete, torn) = match log.iter().rposition(|b| *b == b'\n') {
            Some(end) => (&log[..=end], &log[end + 1..]),
            None => (&log[..0], log),
        };
        let mut expected: Option<(u64, [u8; 32])> = (!from_tail).then(|| (0, self.genesis()));
        let mut head_hash_at: Option<[u8; 32]> = None;
        let mut first_seq = None;
        let lines = complete
            .split(|b| *b == b'\n')
            .take(complete.iter().filter(|b| **b == b'\n').count());
        for (i, line) in lines.enumerate() {
            let line_no = (!from_tail).then_some(i as u64 + 1);
            let want_seq = expected.map_or(0, |(s, _)| s);
            let entry = self
                .entry(line)
                .map_err(|why| Problem::at(line_no, want_seq, why))?;
            if let Some((seq, prev)) = expected {
                if entry.seq != seq {
                    return Err(Problem::at(
                        line_no,
                        seq,
                        format!(
                            "found seq {} here: entries were removed, inserted or reordered",
                            entry.seq
                        ),
                    ));
                }
                if parse_hash(&entry.prev) != Some(prev) {
                    return Err(Problem::at(
                        line_no,
                        seq,
                        "prev is not the hash of the line before: an entry before it was edited, removed, inserted or moved",
                    ));
                }
            } else if entry.seq == 0 && parse_hash(&entry.prev) != Some(self.genesis()) {
                return Err(Problem::at(
                    line_no,
                    0,
                    "prev is not this node's genesis value",
                ));
            }
            first_seq.get_or_insert(entry.seq);
            let hash = line_hash(line);
            if head.is_some_and(|(n, _)| n == entry.seq + 1) {
                head_hash_at = Some(hash);
            }
            expected = Some((entry.seq + 1, hash));
            report.last = Some((entry.seq, hash));
        }
        if !torn.is_empty() {
            if !allow_torn {
                let line = (!from_tail)
                    .then(|| complete.iter().filter(|b| **b == b'\n').count() as u64 + 1);
                return Err(Problem::at(
                    line,
                    expected.map_or(0, |(s, _)| s),
                    format!(
                        "an incomplete line of {} bytes ends the log (a torn write, or bytes appended)",
                        torn.len()
                    ),
                ));
            }
            report.torn_bytes = torn.len() as u64;
        }
        let count = expected.map_or(0, |(s, _)| s);
        report.entries = count;
        parsed_head?;
        let Some((head_entries, head_hash)) = head else {
            if count > 0 || !from_tail && !log.is_empty() {
                return Err(Problem::head(
                    "missing, but the log has entries: the head was removed",
                ));
            }
            return Ok(report);
        };
        if head_entries > count {
            return Err(Problem::at(
                (!from_tail).then_some(count + 1),
                count,
                format!(
                    "missing: the signed head records {head_entries} entries but the log ends before (truncated)"
                ),
            ));
        }
        let matches = if head_entries == 0 {
            head_hash == self.genesis() && (count == 0 || first_seq == Some(0))
        } else {
            head_hash_at == Some(head_hash)
        };
        if !matches {
            return Err(Problem::head(format!(
                "it records {head_entries} entries, but its hash does not match entry {} of the log",
                head_entries.saturating_sub(1)
            )));
        }
        report.head_lag = count - head_entries;
        Ok(report)
    }
}

/// A 64-hex-character hash.
pub fn parse_hash(text: &str) -> Option<[u8; 32]> {
    if text.len() != 64 {
        return None;
    }
    data_encoding::HEXLOWER
        .decode(text.as_bytes())
        .ok()?
        .try_into()
        .ok()
}
