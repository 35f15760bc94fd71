//! The signed audit log: every way of altering it that can be detected is
//! detected and named (the first bad entry); what cannot be detected
//! locally is shown too; the writer continues the chain across restarts and
//! refuses a broken one; node IDs are keyed hashes; details are sealed;
//! and a real flow leaves its events in order.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod in_process;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use in_process::*;
use openred_core::keys::SignatureContext;
use openred_core::wire::{audit_entry_message, audit_head_message, b64_encode};
use openred_core::{Clock, IdentityPublicKey, ManualClock, NodeId, UnixTime};
use openred_node::agent::Crypto;
use openred_node::audit::format::{genesis, hex, line_hash, HEAD_FILE, LOG_FILE};
use openred_node::audit::{
    self, Audit, AuditError, Entry, Event, EventKind, Outcome, Problem, VerifyError,
};
use openred_node::NodeKeys;
use serde_json::json;

/// A node's crypto in process, and its data directory.
struct Owner {
    dir: tempfile::TempDir,
    crypto: Arc<Crypto>,
    clock: Arc<ManualClock>,
    secrets: ([u8; 32], [u8; 32]),
}

impl Owner {
    async fn new() -> Owner {
        let secrets = (random32(), random32());
        let keys = NodeKeys::from_secrets(&secrets.0, secrets.1);
        let clock = Arc::new(ManualClock::new(UnixTime(1_700_000_000)));
        Owner {
            dir: tempfile::tempdir().unwrap(),
            crypto: Arc::new(Crypto::in_process(keys, clock.clone()).await.unwrap()),
            clock,
            secrets,
        }
    }

    /// Another agent with the same keys and no signing history: what
    /// signed before this owner's agent refuses to sign again.
    async fn fresh_agent(&self) -> Crypto {
        let keys = NodeKeys::from_secrets(&self.secrets.0, self.secrets.1);
        Crypto::in_process(keys, self.clock.clone()).await.unwrap()
    }

    fn data(&self) -> &Path {
        self.dir.path()
    }

    fn key(&self) -> IdentityPublicKey {
        self.crypto.public().identity
    }

    async fn open(&self) -> Result<Audit, AuditError> {
        Audit::open(
            self.data(),
            self.crypto.clone(),
            self.clock.clone() as Arc<dyn Clock>,
        )
        .await
    }

    /// A log of `LogStarted` and `n` module switches, closed.
    async fn log_of(n: usize) -> Owner {
        let owner = Owner::new().await;
        let audit = owner.open().await.unwrap();
        for i in 0..n {
            owner.clock.advance(1);
            audit
                .record_awaited(
                    Event::ok(EventKind::ModuleDisabled)
                        .reason("messaging")
                        .detail("i", i),
                )
                .await
                .unwrap();
        }
        audit.close().await;
        owner
    }

    fn path(&self, name: &str) -> PathBuf {
        self.data().join("audit").join(name)
    }

    fn lines(&self) -> Vec<String> {
        std::fs::read_to_string(self.path(LOG_FILE))
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    fn write_lines(&self, lines: &[String]) {
        let mut text = lines.join("\n");
        text.push('\n');
        std::fs::write(self.path(LOG_FILE), text).unwrap();
    }

    fn verify(&self) -> Result<audit::Report, VerifyError> {
        audit::verify_dir(self.data(), self.key())
    }

    /// The first bad entry `verify` names.
    #[track_caller]
    fn problem(&self) -> Problem {
        match self.verify() {
            Err(VerifyError::Bad(problem)) => problem,
            other => panic!("expected a bad entry, got {other:?}"),
        }
    }
}

/// A log of `entries` module switches, its lines altered: the first bad
/// entry `verify` names.
async fn tampered(entries: usize, alter: impl FnOnce(&mut Vec<String>)) -> Problem {
    let owner = Owner::log_of(entries).await;
    let mut lines = owner.lines();
    alter(&mut lines);
    owner.write_lines(&lines);
    owner.problem()
}

#[track_caller]
fn assert_named(problem: &Problem, line: Option<u64>, seq: Option<u64>, says: &str) {
    assert_eq!(
        (problem.line, problem.seq),
        (line, seq),
        "wrong place: {problem}"
    );
    assert!(
        problem.reason.contains(says),
        "`{problem}` does not say `{says}`"
    );
}

/// Another node's entry, made and signed by its own crypto.
async fn forged_entry(signer: &Crypto, seq: u64, prev: [u8; 32], time: u64) -> String {
    let mut entry = Entry {
        seq,
        time,
        event: EventKind::ModuleEnabled,
        outcome: Outcome::Ok,
        peer: None,
        reason: Some("messaging".into()),
        sealed: None,
        prev: hex(&prev),
        sig: String::new(),
    };
    let sig = signer
        .sign_audit_entry(seq, &entry.entry_hash())
        .await
        .unwrap();
    entry.sig = b64_encode(&sig);
    String::from_utf8(entry.to_line()).unwrap()
}

#[tokio::test]
async fn a_clean_log_verifies() {
    let owner = Owner::log_of(5).await;
    let report = owner.verify().unwrap();
    assert_eq!((report.entries, report.head_lag), (6, 0));
    let lines = owner.lines();
    assert!(lines[0].contains("\"event\":\"log_started\""));
    let first: Entry = serde_json::from_str(&lines[0]).unwrap();
    assert_eq!(first.prev, hex(&genesis(&owner.crypto.node_id())));
}

#[tokio::test]
async fn an_edited_field_is_named() {
    let problem = tampered(5, |lines| {
        lines[2] = lines[2].replace("\"outcome\":\"ok\"", "\"outcome\":\"failed\"");
    })
    .await;
    assert_named(&problem, Some(3), Some(2), "signature does not verify");

    // The same entry, reformatted without changing a value.
    let problem = tampered(5, |lines| {
        lines[2] = lines[2].replacen(",", ", ", 1);
    })
    .await;
    assert_named(&problem, Some(3), Some(2), "canonical");

    // The time moved, as someone covering their tracks would.
    let problem = tampered(5, |lines| {
        lines[4] = lines[4].replace("\"time\":17", "\"time\":16");
    })
    .await;
    assert_named(&problem, Some(5), Some(4), "signature does not verify");
}

#[tokio::test]
async fn a_deleted_entry_is_named() {
    let problem = tampered(5, |lines| {
        lines.remove(2);
    })
    .await;
    assert_named(&problem, Some(3), Some(2), "found seq 3");
}

#[tokio::test]
async fn an_inserted_forged_entry_is_named() {
    let owner = Owner::log_of(5).await;
    let stranger = Owner::new().await;
    let mut lines = owner.lines();
    // Well placed: the right seq and prev, but not the node's signature.
    let forged = forged_entry(&stranger.crypto, 3, line_hash(lines[2].as_bytes()), 1).await;
    lines.insert(3, forged);
    owner.write_lines(&lines);
    assert_named(
        &owner.problem(),
        Some(4),
        Some(3),
        "signature does not verify",
    );

    // Appended after the last entry, with the right seq and prev.
    let owner = Owner::log_of(3).await;
    let mut lines = owner.lines();
    let last = line_hash(lines.last().unwrap().as_bytes());
    lines.push(forged_entry(&stranger.crypto, 4, last, 1).await);
    owner.write_lines(&lines);
    assert_named(
        &owner.problem(),
        Some(5),
        Some(4),
        "signature does not verify",
    );

    // A genuine entry of the node, replayed a second time.
    let problem = tampered(3, |lines| {
        let copy = lines[1].clone();
        lines.insert(2, copy);
    })
    .await;
    assert_named(&problem, Some(3), Some(2), "found seq 1");
}

#[tokio::test]
async fn swapped_entries_are_named() {
    let problem = tampered(5, |lines| {
        lines.swap(2, 3);
    })
    .await;
    assert_named(&problem, Some(3), Some(2), "found seq 3");

    // Renumbering does not help: the signature covers the seq.
    let problem = tampered(5, |lines| {
        lines.swap(2, 3);
        lines[2] = lines[2].replace("\"seq\":3", "\"seq\":2");
    })
    .await;
    assert_named(&problem, Some(3), Some(2), "signature does not verify");
}

#[tokio::test]
async fn a_truncated_tail_is_detected_through_the_head() {
    let owner = Owner::log_of(5).await;
    let mut lines = owner.lines();
    lines.truncate(4);
    owner.write_lines(&lines);
    // The first missing entry: line 5, seq 4.
    assert_named(&owner.problem(), Some(5), Some(4), "truncated");

    // Emptied entirely.
    std::fs::write(owner.path(LOG_FILE), b"").unwrap();
    assert_named(&owner.problem(), Some(1), Some(0), "truncated");
    // Removed entirely.
    std::fs::remove_file(owner.path(LOG_FILE)).unwrap();
    assert_named(&owner.problem(), Some(1), Some(0), "truncated");
}

#[tokio::test]
async fn a_truncation_with_an_older_head_restored_is_not_detected_locally() {
    // The documented limit: an attacker who kept an older head file can
    // roll back the log's end together with it. Only a head kept out of
    // the attacker's reach (e.g. published to peers) would show it.
    let owner = Owner::new().await;
    let audit = owner.open().await.unwrap();
    audit
        .record_awaited(Event::ok(EventKind::ModuleEnabled))
        .await
        .unwrap();
    let old_head = std::fs::read(owner.path(HEAD_FILE)).unwrap();
    audit
        .record_awaited(Event::ok(EventKind::ModuleDisabled))
        .await
        .unwrap();
    audit.close().await;
    let mut lines = owner.lines();
    lines.truncate(2);
    owner.write_lines(&lines);
    assert!(owner.verify().is_err());
    std::fs::write(owner.path(HEAD_FILE), old_head).unwrap();
    assert_eq!(owner.verify().unwrap().entries, 2);
}

#[tokio::test]
async fn a_log_signed_by_another_key_is_named() {
    let owner = Owner::log_of(3).await;
    let stranger = Owner::new().await;
    // The stranger's own, valid log, under the owner's name.
    let other = Owner {
        dir: tempfile::tempdir().unwrap(),
        crypto: stranger.crypto.clone(),
        clock: stranger.clock.clone(),
        secrets: stranger.secrets,
    };
    let audit = other.open().await.unwrap();
    audit
        .record_awaited(Event::ok(EventKind::ModuleEnabled))
        .await
        .unwrap();
    audit.close().await;
    assert!(other.verify().is_ok());
    for file in [LOG_FILE, HEAD_FILE] {
        std::fs::copy(other.path(file), owner.path(file)).unwrap();
    }
    // Its genesis is bound to the other node, and its signatures are not
    // the owner's: the first line fails.
    assert_named(
        &owner.problem(),
        Some(1),
        Some(0),
        "signature does not verify",
    );
}

#[tokio::test]
async fn a_tampered_or_removed_head_is_detected() {
    let owner = Owner::log_of(3).await;
    let head = std::fs::read_to_string(owner.path(HEAD_FILE)).unwrap();
    std::fs::write(
        owner.path(HEAD_FILE),
        head.replace("\"entries\":4", "\"entries\":3"),
    )
    .unwrap();
    let problem = owner.problem();
    assert!(problem
        .reason
        .starts_with("audit.head: the signature does not verify"));

    // A head signed by the node, but for another log (another node's
    // genesis cannot be used; a head of this log at another place is the
    // rollback case above).
    std::fs::write(owner.path(HEAD_FILE), "{\"entries\":4}\n").unwrap();
    assert!(owner.problem().reason.starts_with("audit.head: not a head"));

    std::fs::remove_file(owner.path(HEAD_FILE)).unwrap();
    assert!(owner.problem().reason.contains("head was removed"));
}

#[tokio::test]
async fn the_agent_signs_audit_entries_and_heads_under_their_own_labels_only() {
    let owner = Owner::new().await;
    let node = owner.crypto.node_id();
    let key = owner.key();
    let hash = random32();
    let entry_sig = owner.crypto.sign_audit_entry(7, &hash).await.unwrap();
    let head_sig = owner.crypto.sign_audit_head(7, &hash).await.unwrap();
    let entry_message = audit_entry_message(&node, 7, &hash);
    let head_message = audit_head_message(&node, 7, &hash);
    // The two messages have the same shape: only the labels keep an entry
    // signature from passing for a head, and the reverse.
    assert_eq!(entry_message, head_message);
    assert!(key
        .verify(SignatureContext::AuditEntry, &entry_message, &entry_sig)
        .is_ok());
    assert!(key
        .verify(SignatureContext::AuditHead, &head_message, &head_sig)
        .is_ok());
    assert!(key
        .verify(SignatureContext::AuditHead, &entry_message, &entry_sig)
        .is_err());
    assert!(key
        .verify(SignatureContext::AuditEntry, &head_message, &head_sig)
        .is_err());
    let others = SignatureContext::ALL.into_iter().filter(|c| {
        !matches!(
            c,
            SignatureContext::AuditEntry | SignatureContext::AuditHead
        )
    });
    for context in others {
        assert!(key.verify(context, &entry_message, &entry_sig).is_err());
        assert!(key.verify(context, &head_message, &head_sig).is_err());
    }
    // And the reverse: a signature the node gives for another kind (a
    // deregistration, over bytes of the same length) is no audit entry.
    let dereg = owner
        .crypto
        .deregistration(7, owner.clock.now())
        .await
        .unwrap();
    let sig = dereg.signature.0;
    assert!(key
        .verify(SignatureContext::AuditEntry, &entry_message, &sig)
        .is_err());
    // In a log: an entry carrying the head's signature is refused.
    let audit_owner = Owner::log_of(1).await;
    let mut lines = audit_owner.lines();
    let mut entry: Entry = serde_json::from_str(&lines[1]).unwrap();
    // (The owner's own agent refuses a head below one it signed: another
    // agent on the same keys stands for one that never signed a head.)
    let head_sig = audit_owner
        .fresh_agent()
        .await
        .sign_audit_head(entry.seq, &entry.entry_hash())
        .await
        .unwrap();
    entry.sig = b64_encode(&head_sig);
    lines[1] = String::from_utf8(entry.to_line()).unwrap();
    audit_owner.write_lines(&lines);
    assert_named(
        &audit_owner.problem(),
        Some(2),
        Some(1),
        "signature does not verify",
    );
}

#[tokio::test]
async fn node_ids_are_keyed_hashes_and_details_are_sealed() {
    let peer = NodeId::from_bytes(random32());
    let mut hashes = Vec::new();
    for _ in 0..2 {
        let owner = Owner::new().await;
        let audit = owner.open().await.unwrap();
        for _ in 0..2 {
            audit
                .record_awaited(
                    Event::ok(EventKind::FileShared)
                        .peer(peer)
                        .detail("file", "secret-plan.txt"),
                )
                .await
                .unwrap();
        }
        audit.file_downloaded(peer, "secret-plan.txt", true);
        audit.flush().await.unwrap();
        let text = std::fs::read_to_string(owner.path(LOG_FILE)).unwrap();
        for clear in [
            peer.to_string(),
            hex(peer.as_bytes()),
            b64_encode(peer.as_bytes()),
            "secret-plan".to_owned(),
        ] {
            assert!(!text.contains(&clear), "{clear} is in clear in the log");
        }
        let entries: Vec<Entry> = owner
            .lines()
            .iter()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let hash = entries[1].peer.clone().unwrap();
        assert_eq!(hash.len(), 32);
        // One peer, one hash within a log: entries can be correlated.
        assert_eq!(entries[2].peer.as_deref(), Some(hash.as_str()));
        hashes.push(hash);
        // The owner reads them back.
        let view = audit.read(0, 100).await.unwrap();
        assert_eq!(view.entries.len(), 4);
        let shared = &view.entries[1];
        assert_eq!(shared.event, "file_shared");
        assert_eq!(
            shared.details,
            Some(json!({ "file": "secret-plan.txt", "peer_id": peer.to_string() }))
        );
        assert_eq!(view.entries[3].event, "file_downloaded");
        // Sealed details cannot be moved to another entry: the seq is in
        // their associated data.
        let mut lines = owner.lines();
        let mut second: Entry = serde_json::from_str(&lines[2]).unwrap();
        second.sealed = serde_json::from_str::<Entry>(&lines[1]).unwrap().sealed;
        lines[2] = String::from_utf8(second.to_line()).unwrap();
        audit.close().await;
        owner.write_lines(&lines);
        let audit = owner.open().await;
        assert!(audit.is_err(), "the moved details break the log");
    }
    // Another node (another master key): another hash for the same peer.
    assert_ne!(hashes[0], hashes[1]);
}

#[tokio::test]
async fn the_chain_continues_across_restarts_and_since_filters() {
    let owner = Owner::log_of(2).await;
    owner.clock.advance(100);
    let audit = owner.open().await.unwrap();
    let seq = audit
        .record_awaited(Event::ok(EventKind::ModuleEnabled).reason("messaging"))
        .await
        .unwrap();
    assert_eq!(seq, 3);
    assert_eq!(audit.entries(), 4);
    let later = audit.read(1_700_000_050, 100).await.unwrap();
    assert_eq!(later.entries.len(), 1);
    assert_eq!(later.entries[0].seq, 3);
    let last_two = audit.read(0, 2).await.unwrap();
    assert!(last_two.truncated);
    assert_eq!(
        last_two.entries.iter().map(|e| e.seq).collect::<Vec<_>>(),
        [2, 3]
    );
    audit.close().await;
    let report = owner.verify().unwrap();
    assert_eq!((report.entries, report.head_lag), (4, 0));
    // Only one log_started: the restart did not begin a new chain.
    let started = owner
        .lines()
        .iter()
        .filter(|l| l.contains("log_started"))
        .count();
    assert_eq!(started, 1);
}

#[tokio::test]
async fn a_broken_log_stops_the_writer_at_start() {
    // Edited last line.
    let owner = Owner::log_of(3).await;
    let mut lines = owner.lines();
    let last = lines.len() - 1;
    lines[last] = lines[last].replace("\"outcome\":\"ok\"", "\"outcome\":\"failed\"");
    owner.write_lines(&lines);
    let error = owner.open().await.unwrap_err();
    assert!(
        matches!(&error, AuditError::Corrupt { problem, .. } if problem.seq == Some(3)),
        "{error}"
    );
    // Truncated.
    let owner = Owner::log_of(3).await;
    let mut lines = owner.lines();
    lines.pop();
    owner.write_lines(&lines);
    assert!(matches!(
        owner.open().await,
        Err(AuditError::Corrupt { .. })
    ));
    // Head removed.
    let owner = Owner::log_of(3).await;
    std::fs::remove_file(owner.path(HEAD_FILE)).unwrap();
    assert!(matches!(
        owner.open().await,
        Err(AuditError::Corrupt { .. })
    ));
}

#[tokio::test]
async fn a_torn_last_line_is_cut_and_recorded() {
    let owner = Owner::log_of(2).await;
    let mut bytes = std::fs::read(owner.path(LOG_FILE)).unwrap();
    bytes.extend_from_slice(b"{\"seq\":3,\"ti");
    std::fs::write(owner.path(LOG_FILE), &bytes).unwrap();
    assert_named(
        &owner.problem(),
        Some(4),
        Some(3),
        "incomplete line of 12 bytes",
    );
    let audit = owner.open().await.unwrap();
    audit.close().await;
    owner.verify().unwrap();
    let lines = owner.lines();
    assert!(lines[3].contains("\"event\":\"log_repaired\""));
    assert!(lines[3].contains("torn_line"));
}

#[tokio::test]
async fn a_head_that_lags_is_signed_again_at_start() {
    // The node stopped after writing entries, before rewriting the head.
    let owner = Owner::log_of(1).await;
    let old_head = std::fs::read(owner.path(HEAD_FILE)).unwrap();
    let audit = owner.open().await.unwrap();
    audit
        .record_awaited(Event::ok(EventKind::ModuleEnabled))
        .await
        .unwrap();
    audit.close().await;
    std::fs::write(owner.path(HEAD_FILE), old_head).unwrap();
    assert_eq!(owner.verify().unwrap().head_lag, 1);
    owner.open().await.unwrap().close().await;
    assert_eq!(owner.verify().unwrap().head_lag, 0);
}

#[tokio::test]
async fn a_full_queue_leaves_a_gap_entry_and_never_blocks() {
    let owner = Owner::new().await;
    let audit = owner.open().await.unwrap();
    // On this single-threaded runtime the writer cannot run while we loop.
    let total = audit::QUEUE as u64 + 500;
    for _ in 0..total {
        audit.record(Event::ok(EventKind::Registration));
    }
    assert_eq!(audit.dropped(), 500);
    audit.flush().await.unwrap();
    // The gap is written with the next batch.
    audit
        .record_awaited(Event::ok(EventKind::ModuleEnabled))
        .await
        .unwrap();
    audit.close().await;
    let lines = owner.lines();
    let gaps: Vec<&String> = lines.iter().filter(|l| l.contains("\"gap\"")).collect();
    assert_eq!(gaps.len(), 1);
    assert!(gaps[0].contains("events_lost"));
    owner.verify().unwrap();
    let audit = owner.open().await.unwrap();
    let view = audit.read(0, 10_000).await.unwrap();
    let gap = view.entries.iter().find(|e| e.event == "gap").unwrap();
    assert_eq!(gap.details, Some(json!({ "dropped": 500 })));
}

#[tokio::test]
async fn a_second_writer_is_refused() {
    let owner = Owner::new().await;
    let _first = owner.open().await.unwrap();
    assert!(matches!(owner.open().await, Err(AuditError::Locked(_))));
}

/// The events of a node's log, as `event:outcome` (skipping session
/// closures, which the clock decides).
async fn events(node: &TestNode) -> Vec<String> {
    node.audit_entries()
        .await
        .into_iter()
        .map(|e| format!("{}:{}", e.event, e.outcome))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_flow_leaves_its_events_in_order() {
    let net = Network::start().await;
    let a = net.node("a").await;
    let b = net.node("b").await;
    a.connect(b.id()).await.unwrap();
    let live = a.sessions().with_peer(&b.id()).unwrap();
    a.state.renew(&live).await.unwrap();
    let token = a.admin_token();
    for action in ["disable", "enable"] {
        let answer = a
            .admin_post(
                &net.http,
                &format!("/admin/v1/modules/messaging/{action}"),
                Some(&token),
                &json!({}),
            )
            .await;
        assert_eq!(answer.status, 200, "{:?}", answer.json);
    }
    // A failed admin authentication.
    let refused = a
        .admin_post(
            &net.http,
            "/admin/v1/modules/messaging/disable",
            Some("wrong"),
            &json!({}),
        )
        .await;
    assert_refused(&refused, 401, "unauthorized");
    // A replayed handshake: its token is refused at B.
    let intro = introduce(&a.state, b.id(), net.now()).await;
    let (_, request) = genuine_message_1(&a.state, &intro);
    let first = post_json(&net.http, &b.p2p("/p2p/handshake"), &request).await;
    assert_eq!(first.status, 200);
    let replay = post_json(&net.http, &b.p2p("/p2p/handshake"), &request).await;
    assert_refused(&replay, 409, "token_used");

    let at_a = events(&a).await;
    assert_eq!(
        at_a,
        [
            "log_started:ok",
            "registration:ok",
            "introduction_requested:ok",
            "handshake:ok",
            "session_renewed:ok",
            "module_disabled:ok",
            "module_enabled:ok",
            // The failed admin authentication, counted (written at the
            // flush `events` asks for).
            "unauthenticated_failures:failed",
        ]
    );
    let at_b = events(&b).await;
    assert_eq!(
        at_b,
        [
            "log_started:ok",
            "registration:ok",
            "introduction_received:ok",
            "handshake:ok",
            "session_renewed:ok",
            "introduction_received:ok",
            "handshake:ok",
            "unauthenticated_failures:failed",
        ]
    );
    // The details name the peer for the owner; the log does not.
    let view = a.audit().read(0, 100).await.unwrap();
    let handshake = view
        .entries
        .iter()
        .find(|e| e.event == "handshake")
        .unwrap();
    assert_eq!(
        handshake.details.as_ref().unwrap()["peer_id"],
        json!(b.id().to_string())
    );
    assert_eq!(
        handshake.details.as_ref().unwrap()["role"],
        json!("initiator")
    );
    let rejected = events_view(&b).await;
    let rejected = rejected
        .iter()
        .find(|e| e.event == "unauthenticated_failures")
        .unwrap();
    assert_eq!(
        rejected.details.as_ref().unwrap()["counts"],
        json!({ "token_rejected:token_used": 1 })
    );
    let refused = view
        .entries
        .iter()
        .find(|e| e.event == "unauthenticated_failures")
        .unwrap();
    assert_eq!(
        refused.details.as_ref().unwrap()["counts"],
        json!({ "admin_login:bad_token": 1 })
    );
    let switch = view
        .entries
        .iter()
        .find(|e| e.event == "module_disabled")
        .unwrap();
    assert_eq!(switch.reason.as_deref(), Some("messaging"));

    // The owner's view over the admin API, and its refusals.
    let answer = get(&net.http, &a.admin("/admin/v1/audit?since=0"), Some(&token)).await;
    assert_eq!(answer.status, 200);
    assert_eq!(
        answer.json["entries"].as_array().unwrap().len(),
        view.entries.len()
    );
    for bad in ["?since=yesterday", "?limit=0", "?limit=99999", "?color=red"] {
        let answer = get(
            &net.http,
            &a.admin(&format!("/admin/v1/audit{bad}")),
            Some(&token),
        )
        .await;
        assert_eq!(answer.status, 400, "{bad}: {:?}", answer.json);
        assert!(answer.code().is_some());
    }

    // Offline verification of both logs, while they run.
    for node in [&a, &b] {
        let key = openred_node::agent::identity::public_key(&node.data_dir).unwrap();
        assert_eq!(key.node_id(), node.id());
        audit::verify_dir(&node.data_dir, key).unwrap();
    }
}

async fn events_view(node: &TestNode) -> Vec<audit::AuditEntryView> {
    node.audit_entries().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_restarts_on_its_log_and_closes_sessions_in_it() {
    let net = Network::start().await;
    let a = net.node("a").await;
    let b = net.node("b").await;
    a.connect(b.id()).await.unwrap();
    let before = a.audit().entries();
    let a = net.restart(a).await;
    a.audit().flush().await.unwrap();
    assert!(a.audit().entries() > before);
    let key = openred_node::agent::identity::public_key(&a.data_dir).unwrap();
    audit::verify_dir(&a.data_dir, key).unwrap();
    assert_eq!(
        events(&a)
            .await
            .iter()
            .filter(|e| *e == "log_started:ok")
            .count(),
        1
    );
    // Sessions at their maximum age end, and the log says why.
    net.clock.advance(b.config().session_max_age_s + 1);
    b.state.run_lifecycle().await;
    let closed = events_view(&b).await;
    let closed = closed.iter().find(|e| e.event == "session_closed").unwrap();
    assert_eq!(closed.reason.as_deref(), Some("max_age"));
}

/// The counts of an `unauthenticated_failures` entry's details.
fn failure_counts(entry: &audit::AuditEntryView) -> serde_json::Map<String, serde_json::Value> {
    entry.details.as_ref().unwrap()["counts"]
        .as_object()
        .unwrap()
        .clone()
}

#[tokio::test]
async fn a_flood_of_unauthenticated_failures_is_counted_and_never_crowds_out_authenticated_events()
{
    let owner = Owner::new().await;
    let audit = owner.open().await.unwrap();
    let peer = NodeId::from_bytes(random32());
    // On this single-threaded runtime the writer cannot run while we loop:
    // the old code put each failure in the queue, filled it, and counted
    // what came after (the introduction among them) in a `gap`.
    for i in 0..20_000u32 {
        let reason = if i % 2 == 0 {
            "bad_token"
        } else {
            "unknown_connection"
        };
        audit.count_unauthenticated(EventKind::TokenRejected, reason);
        if i == 10_000 {
            audit.record(Event::ok(EventKind::IntroductionReceived).peer(peer));
        }
    }
    assert_eq!(audit.unauthenticated_pending(), 20_000);
    assert_eq!(audit.dropped(), 0);
    audit.close().await;
    owner.verify().unwrap();
    // log_started, the introduction, one summary.
    assert_eq!(owner.lines().len(), 3, "{:#?}", owner.lines());
    let audit = owner.open().await.unwrap();
    let view = audit.read(0, 100).await.unwrap();
    let events: Vec<&str> = view.entries.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(
        events,
        [
            "log_started",
            "introduction_received",
            "unauthenticated_failures"
        ]
    );
    assert_eq!(
        view.entries[1].details.as_ref().unwrap()["peer_id"],
        json!(peer.to_string())
    );
    let summary = &view.entries[2];
    assert_eq!(summary.reason.as_deref(), Some("unauthenticated"));
    assert_eq!(summary.details.as_ref().unwrap()["total"], json!(20_000));
    assert_eq!(
        failure_counts(summary),
        *json!({
            "token_rejected:bad_token": 10_000,
            "token_rejected:unknown_connection": 10_000
        })
        .as_object()
        .unwrap()
    );
}

/// Waits (a liveness deadline, not a timing) until `audit` holds
/// `entries` entries.
async fn wait_for_entries(audit: &Audit, entries: u64) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while audit.entries() < entries {
        assert!(
            std::time::Instant::now() < deadline,
            "the audit log never reached {entries} entries (it has {})",
            audit.entries()
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn unauthenticated_failures_become_one_entry_per_interval_without_a_flush() {
    let owner = Owner::new().await;
    let interval = std::time::Duration::from_millis(50);
    let audit = Audit::open_with(
        owner.data(),
        owner.crypto.clone(),
        owner.clock.clone() as Arc<dyn Clock>,
        interval,
    )
    .await
    .unwrap();
    audit.flush().await.unwrap();
    let start = audit.entries();
    for _ in 0..1001 {
        audit.count_unauthenticated(EventKind::Handshake, "bad_message");
    }
    // Written by the writer's own timer: nobody flushes.
    wait_for_entries(&audit, start + 1).await;
    assert_eq!(audit.unauthenticated_pending(), 0);
    // Intervals without failures write nothing.
    tokio::time::sleep(interval * 4).await;
    assert_eq!(audit.entries(), start + 1);
    audit.count_unauthenticated(EventKind::AdminLogin, "no_token");
    wait_for_entries(&audit, start + 2).await;
    audit.close().await;
    assert_eq!(owner.lines().len() as u64, start + 2);
    let view = owner.open().await.unwrap().read(0, 100).await.unwrap();
    let summaries: Vec<_> = view
        .entries
        .iter()
        .filter(|e| e.event == "unauthenticated_failures")
        .map(failure_counts)
        .collect();
    assert_eq!(
        summaries,
        [
            json!({ "handshake:bad_message": 1001 }),
            json!({ "admin_login:no_token": 1 })
        ]
        .map(|v| v.as_object().unwrap().clone())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_thousand_bogus_token_pushes_and_handshakes_add_a_few_lines_and_an_introduction_stays_by_name(
) {
    const BOGUS: usize = 20_000;
    const IN_FLIGHT: usize = 16;
    let net = Network::start().await;
    let a = net.node("a").await;
    let b = net.node("b").await;
    b.audit().flush().await.unwrap();
    let before = b.audit().entries();

    // Half bogus token pushes, half handshakes for connections that do not
    // exist (well-formed, so each reaches the connection lookup).
    let intro = introduce(&a.state, b.id(), net.now()).await;
    let (_, genuine) = genuine_message_1(&a.state, &intro);
    let push_url = b.p2p("/api/v3/tokens/receive");
    let handshake_url = b.p2p("/p2p/handshake");
    // A well-formed sender with a token that is not one: refused as
    // `bad_token` (a malformed `from` would be `bad_node_id`).
    let stranger = openred_core::NodeId::from_bytes([9; 32]).to_string();
    let flood = {
        let http = net.http.clone();
        tokio::spawn(async move {
            let sent = Arc::new(std::sync::atomic::AtomicUsize::new(0));
            let workers = (0..IN_FLIGHT).map(|_| {
                let (http, sent) = (http.clone(), sent.clone());
                let (push_url, handshake_url) = (push_url.clone(), handshake_url.clone());
                let stranger = stranger.clone();
                let mut handshake = genuine.clone();
                tokio::spawn(async move {
                    loop {
                        let i = sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        if i >= BOGUS {
                            return;
                        }
                        let answer = if i % 2 == 0 {
                            post_json(
                                &http,
                                &push_url,
                                &json!({ "from": stranger, "token": "AAAA" }),
                            )
                            .await
                        } else {
                            handshake.connection_id =
                                openred_core::wire::ConnectionIdBytes(random16());
                            post_json(&http, &handshake_url, &handshake).await
                        };
                        assert!(
                            matches!(answer.status, 400 | 404),
                            "{}: {:?}",
                            answer.status,
                            answer.json
                        );
                    }
                })
            });
            for worker in workers.collect::<Vec<_>>() {
                worker.await.unwrap();
            }
        })
    };
    // An introduction in the middle of the flood.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while b.audit().unauthenticated_pending() < (BOGUS / 4) as u64 {
        assert!(
            std::time::Instant::now() < deadline,
            "the flood did not start"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    a.connect(b.id()).await.unwrap();
    flood.await.unwrap();

    let entries = b.audit_entries().await;
    let added = &entries[before as usize..];
    assert!(
        added.len() <= 24,
        "{} entries added by the flood: {:?}",
        added.len(),
        added.iter().map(|e| &e.event).collect::<Vec<_>>()
    );
    assert!(added.iter().all(|e| e.event != "gap"));
    // The introduction and its handshake, by name.
    for event in ["introduction_received", "handshake"] {
        let entry = added
            .iter()
            .find(|e| e.event == event && e.outcome == "ok")
            .unwrap_or_else(|| panic!("no {event} in {added:?}"));
        assert_eq!(
            entry.details.as_ref().unwrap()["peer_id"],
            json!(a.id().to_string())
        );
    }
    // Every bogus request is counted, by reason.
    let mut counts = std::collections::BTreeMap::<String, u64>::new();
    for summary in added
        .iter()
        .filter(|e| e.event == "unauthenticated_failures")
    {
        for (key, n) in failure_counts(summary) {
            *counts.entry(key).or_default() += n.as_u64().unwrap();
        }
    }
    assert_eq!(
        counts,
        [
            ("token_rejected:bad_token".to_owned(), (BOGUS / 2) as u64),
            (
                "token_rejected:unknown_connection".to_owned(),
                (BOGUS / 2) as u64
            ),
        ]
        .into()
    );
    let key = openred_node::agent::identity::public_key(&b.data_dir).unwrap();
    audit::verify_dir(&b.data_dir, key).unwrap();
}
