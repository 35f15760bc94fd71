//! Introductions (`POST /api/v3/tokens/request-connection`) and the
//! reachability proof at registration, on SQLite and on PostgreSQL: the
//! linked token pair, every rejection, nonces shared by replicas, and a
//! database that never holds token material.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;

use axum::http::StatusCode;
use common::{Answer, Backend, Harness, TestNode, T0};
use openred_core::keys::SignatureContext;
use openred_core::token::{LinkKey, Role, TokenEnvelope, TokenError};
use openred_core::wire::{
    b64_decode, b64_encode, connection_request_message, ConnectionRequest, DeregisterRequest,
    NonceBytes, SignatureBytes,
};
use openred_core::{IdentityKeypair, NodeId, SignedRecord, UnixTime};
use openred_directory::{Database, Quota};
use serde_json::{json, Value};
use sqlx::Row;

on_both_backends!(
    introduction_mints_a_linked_pair_and_pushes_token_b,
    the_database_never_holds_token_material,
    rejects_bad_signatures_replays_and_stale_requests,
    rejects_self_unknown_deregistered_and_inactive_nodes,
    rejects_malformed_fields,
    unreachable_target_answers_502,
    introduction_rate_limits_answer_429_with_retry_after,
    nonces_are_shared_by_replicas_and_pruned_after_the_window,
    registration_requires_a_reachability_proof,
    reachability_is_proved_again_only_when_the_url_changes,
    garbage_to_request_connection_never_gets_a_5xx,
    expired_records_are_never_put_in_tokens,
    a_nonce_is_usable_again_once_its_window_ended_even_before_pruning,
);

const PATH: &str = "/api/v3/tokens/request-connection";

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// 16 fresh random bytes.
fn fresh_nonce() -> [u8; 16] {
    let mut nonce = [0u8; 16];
    getrandom::fill(&mut nonce).unwrap();
    nonce
}

/// A connection request from `from` to `target`, signed by `key` under
/// `context` (the honest request uses `from`'s key and the
/// connection-request label).
fn signed_request(
    key: &IdentityKeypair,
    context: SignatureContext,
    from: &NodeId,
    target: &NodeId,
    nonce: [u8; 16],
    issued_at: u64,
) -> Value {
    let message = connection_request_message(from, target, &nonce, UnixTime(issued_at));
    let request = ConnectionRequest {
        from: *from,
        target: *target,
        nonce: NonceBytes(nonce),
        issued_at,
        signature: SignatureBytes(key.sign(context, &message)),
    };
    serde_json::to_value(request).unwrap()
}

/// The honest request of `from` to meet `target`.
fn request(from: &TestNode, target: &TestNode, nonce: [u8; 16], issued_at: u64) -> Value {
    signed_request(
        &from.key,
        SignatureContext::ConnectionRequest,
        &from.key.node_id(),
        &target.key.node_id(),
        nonce,
        issued_at,
    )
}

async fn introduce(h: &Harness, body: &Value) -> Answer {
    h.call("POST", PATH, Some(body.clone())).await
}

async fn introduce_from(h: &Harness, body: &Value, peer: SocketAddr) -> Answer {
    h.raw(
        "POST",
        PATH,
        Some(&body.to_string()),
        "application/json",
        peer,
    )
    .await
}

/// Registers `node` with `seq` at the harness's current time.
async fn register(h: &Harness, node: &TestNode, seq: u64) -> SignedRecord {
    let record = node.record(seq, h.now());
    let a = h.register(&record).await;
    assert_eq!(a.status, StatusCode::OK, "registering: {}", a.text);
    record
}

fn pushes(h: &Harness) -> usize {
    h.nodes.pushes.lock().unwrap().len()
}

fn challenges(h: &Harness) -> usize {
    h.nodes.challenges.lock().unwrap().len()
}

#[track_caller]
fn assert_error(a: &Answer, status: StatusCode, code: &str) {
    assert_eq!((a.status, a.code()), (status, code), "{}", a.text);
    assert!(a.json["message"].is_string(), "{}", a.text);
}

async fn nonce_rows(directory: &openred_directory::Directory) -> i64 {
    sqlx::query("SELECT COUNT(*) AS n FROM connection_nonces")
        .fetch_one(directory.store().pool())
        .await
        .unwrap()
        .try_get::<i64, _>("n")
        .unwrap()
}

// ---------------------------------------------------------------------------
// 1. The happy path
// ---------------------------------------------------------------------------

async fn introduction_mints_a_linked_pair_and_pushes_token_b(backend: Backend) {
    let h = Harness::new(backend).await;
    let a = TestNode::new(1);
    let b = TestNode::new(2);
    let record_a = register(&h, &a, 1).await;
    let record_b = register(&h, &b, 1).await;
    let (a_id, b_id) = (a.key.node_id(), b.key.node_id());

    let answer = introduce(&h, &request(&a, &b, fresh_nonce(), h.now())).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text);
    let keys: HashSet<&str> = answer
        .json
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        HashSet::from(["connection_id", "expires_at", "token"]),
        "{}",
        answer.text
    );
    assert_eq!(answer.json["expires_at"], T0 + 120);
    let connection_id: [u8; 16] = b64_decode(answer.json["connection_id"].as_str().unwrap())
        .unwrap()
        .try_into()
        .unwrap();

    // Exactly one push, to B's URL, from A.
    let recorded = h.nodes.pushes.lock().unwrap().clone();
    assert_eq!(recorded.len(), 1);
    let (url, push) = &recorded[0];
    assert_eq!(url, &b.url);
    assert_eq!(push.from.to_string(), a.id());

    let token_a =
        TokenEnvelope::decode(&b64_decode(answer.json["token"].as_str().unwrap()).unwrap())
            .unwrap();
    let token_b = TokenEnvelope::decode(&push.token.0).unwrap();
    assert_ne!(token_a.as_bytes(), token_b.as_bytes());

    // Both are signed by this directory, and by no other key.
    let directory_key = h.directory.public_key();
    token_a.verify(&directory_key).unwrap();
    token_b.verify(&directory_key).unwrap();
    let other_key = a.key.public();
    assert_eq!(token_a.verify(&other_key), Err(TokenError::Signature));
    assert_eq!(token_b.verify(&other_key), Err(TokenError::Signature));

    // Same introduction, clear-text claims as expected.
    for (token, role) in [(&token_a, Role::Initiator), (&token_b, Role::Target)] {
        assert_eq!(token.role(), role);
        assert_eq!(token.connection_id(), connection_id);
        let intro = token.introduction();
        assert_eq!(intro.initiator, a_id);
        assert_eq!(intro.target, b_id);
        assert_eq!(intro.issued_at, UnixTime(T0));
        assert_eq!(intro.expires_at, UnixTime(T0 + 120));
    }

    // token_a opens only for A: as Initiator, naming B, carrying B's record.
    let opened_a = token_a.open(&a_id, &a.agreement_secret()).unwrap();
    assert_eq!(opened_a.role, Role::Initiator);
    assert_eq!(opened_a.introduction.target, b_id);
    assert_eq!(opened_a.introduction.connection_id, connection_id);
    assert_eq!(opened_a.peer_record.as_bytes(), record_b.as_bytes());
    assert_eq!(
        token_a.open(&b_id, &b.agreement_secret()).unwrap_err(),
        TokenError::WrongNode
    );
    assert_eq!(
        token_a.open(&a_id, &b.agreement_secret()).unwrap_err(),
        TokenError::Decrypt,
        "only A's agreement secret opens token_a"
    );

    // token_b opens only for B: as Target, carrying A's record.
    let opened_b = token_b.open(&b_id, &b.agreement_secret()).unwrap();
    assert_eq!(opened_b.role, Role::Target);
    assert_eq!(opened_b.introduction.initiator, a_id);
    assert_eq!(opened_b.introduction.connection_id, connection_id);
    assert_eq!(opened_b.peer_record.as_bytes(), record_a.as_bytes());
    assert_eq!(
        token_b.open(&a_id, &a.agreement_secret()).unwrap_err(),
        TokenError::WrongNode
    );
    assert_eq!(
        token_b.open(&b_id, &a.agreement_secret()).unwrap_err(),
        TokenError::Decrypt
    );

    // The halves are linked: A's signing half makes a proof that B's
    // verifying half accepts, over that hash only.
    let LinkKey::Signing(signing) = &opened_a.link else {
        panic!("token_a must carry the signing half");
    };
    let LinkKey::Verifying(verifying) = &opened_b.link else {
        panic!("token_b must carry the verifying half");
    };
    assert_eq!(
        opened_a.link.verifying_bytes(),
        opened_b.link.verifying_bytes()
    );
    let hash = blake3::hash(b"some handshake hash");
    let proof = signing.sign_handshake_proof(hash.as_bytes());
    verifying
        .verify_handshake_proof(hash.as_bytes(), &proof)
        .unwrap();
    assert_eq!(
        verifying.verify_handshake_proof(b"another hash", &proof),
        Err(TokenError::Proof)
    );

    // A second introduction of the same pair is a new one: new connection
    // ID, new link key.
    let again = introduce(&h, &request(&a, &b, fresh_nonce(), h.now())).await;
    assert_eq!(again.status, StatusCode::OK, "{}", again.text);
    assert_ne!(again.json["connection_id"], answer.json["connection_id"]);
    let token_a2 =
        TokenEnvelope::decode(&b64_decode(again.json["token"].as_str().unwrap()).unwrap()).unwrap();
    let opened_a2 = token_a2.open(&a_id, &a.agreement_secret()).unwrap();
    assert_ne!(
        opened_a2.link.verifying_bytes(),
        opened_a.link.verifying_bytes()
    );
    assert_eq!(pushes(&h), 2);
}

// ---------------------------------------------------------------------------
// 2. No token material in the database
// ---------------------------------------------------------------------------

/// Every value of every table, plus every file under the data directory.
struct Dump {
    /// (where, bytes): `table.column` or a file path.
    cells: Vec<(String, Vec<u8>)>,
    tables: Vec<String>,
}

impl Dump {
    fn windows<const N: usize>(&self) -> HashSet<[u8; N]> {
        self.cells
            .iter()
            .flat_map(|(_, bytes)| bytes.windows(N))
            .map(|w| w.try_into().unwrap())
            .collect()
    }

    fn contains(&self, needle: &[u8]) -> bool {
        self.cells
            .iter()
            .any(|(_, bytes)| bytes.windows(needle.len()).any(|w| w == needle))
    }

    /// Every way `secrets` show up in the dump, described; empty if none.
    fn leaks(&self, secrets: &Secrets) -> Vec<String> {
        let raw16 = self.windows::<16>();
        let b64_22 = self.windows::<22>();
        let hex32 = self.windows::<32>();
        let mut found = Vec::new();
        for (name, envelope) in &secrets.envelopes {
            let text = b64_encode(envelope);
            if self.contains(envelope) || self.contains(text.as_bytes()) {
                found.push(format!("{name}: the whole envelope"));
            }
            // The ciphertext: bytes [132, len - 64).
            let ciphertext = &envelope[132..envelope.len() - 64];
            for (i, window) in ciphertext.windows(16).enumerate() {
                let window: [u8; 16] = window.try_into().unwrap();
                if raw16.contains(&window) {
                    found.push(format!("{name}: ciphertext bytes at {i}"));
                }
                let hex: [u8; 32] = data_encoding::HEXLOWER
                    .encode(&window)
                    .into_bytes()
                    .try_into()
                    .unwrap();
                let hex_upper: [u8; 32] = data_encoding::HEXUPPER
                    .encode(&window)
                    .into_bytes()
                    .try_into()
                    .unwrap();
                if hex32.contains(&hex) || hex32.contains(&hex_upper) {
                    found.push(format!("{name}: ciphertext bytes at {i}, in hex"));
                }
            }
            // The ciphertext as it appears inside the base64url envelope.
            let (from, to) = (132 * 4 / 3 + 1, (envelope.len() - 64) * 4 / 3);
            for (i, window) in text.as_bytes()[from..to].windows(22).enumerate() {
                if b64_22.contains(<&[u8; 22]>::try_from(window).unwrap()) {
                    found.push(format!("{name}: base64url ciphertext at char {}", from + i));
                }
            }
        }
        for (name, id) in &secrets.sixteen {
            let hex: [u8; 32] = data_encoding::HEXLOWER
                .encode(id)
                .into_bytes()
                .try_into()
                .unwrap();
            let b64: [u8; 22] = b64_encode(id).into_bytes().try_into().unwrap();
            if raw16.contains(id) || hex32.contains(&hex) || b64_22.contains(&b64) {
                found.push(name.clone());
            }
        }
        found
    }
}

/// What must never be stored.
#[derive(Default)]
struct Secrets {
    envelopes: Vec<(String, Vec<u8>)>,
    /// Connection IDs and link key halves, 16 bytes at a time.
    sixteen: Vec<(String, [u8; 16])>,
}

async fn dump(h: &Harness) -> Dump {
    let pool = h.directory.store().pool();
    let postgres = matches!(h.config.database, Database::Postgres(_));
    let tables: Vec<String> = if postgres {
        sqlx::query(
            "SELECT CAST(table_name AS TEXT) AS name FROM information_schema.tables \
             WHERE table_schema = 'public' ORDER BY 1",
        )
    } else {
        sqlx::query("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY 1")
    }
    .fetch_all(pool)
    .await
    .unwrap()
    .iter()
    .map(|row| row.try_get::<String, _>("name").unwrap())
    .collect();
    let mut cells = Vec::new();
    for table in &tables {
        // Columns with their types, so that each is read in a form the
        // `Any` driver decodes: bytes as bytes, everything else as text.
        let columns: Vec<(String, bool)> = if postgres {
            sqlx::query(
                "SELECT CAST(column_name AS TEXT) AS name, CAST(data_type AS TEXT) AS ty \
                 FROM information_schema.columns \
                 WHERE table_schema = 'public' AND table_name = $1 ORDER BY ordinal_position",
            )
            .bind(table.clone())
            .fetch_all(pool)
            .await
            .unwrap()
            .iter()
            .map(|row| {
                let ty: String = row.try_get("ty").unwrap();
                (row.try_get("name").unwrap(), ty == "bytea")
            })
            .collect()
        } else {
            sqlx::query("SELECT name FROM pragma_table_info($1) ORDER BY cid")
                .bind(table.clone())
                .fetch_all(pool)
                .await
                .unwrap()
                .iter()
                .map(|row| (row.try_get("name").unwrap(), false))
                .collect()
        };
        assert!(!columns.is_empty(), "table {table} has no columns?");
        let select: Vec<String> = columns
            .iter()
            .map(|(name, bytes)| match (postgres, bytes) {
                (true, true) => format!("\"{name}\""),
                (true, false) => format!("CAST(\"{name}\" AS TEXT)"),
                (false, _) => format!("CAST(\"{name}\" AS BLOB)"),
            })
            .collect();
        let sql = format!("SELECT {} FROM \"{table}\"", select.join(", "));
        for row in sqlx::query(&sql).fetch_all(pool).await.unwrap() {
            for (i, (name, _)) in columns.iter().enumerate() {
                let value = row
                    .try_get::<Option<Vec<u8>>, _>(i)
                    .or_else(|_| {
                        row.try_get::<Option<String>, _>(i)
                            .map(|s| s.map(String::into_bytes))
                    })
                    .unwrap_or_else(|e| panic!("{table}.{name} unreadable: {e}"));
                cells.push((format!("{table}.{name}"), value.unwrap_or_default()));
            }
        }
    }
    // And every file the directory keeps on disk (its key, and the SQLite
    // database with its write-ahead log).
    collect_files(h.tmp.path(), &mut cells);
    Dump { cells, tables }
}

fn collect_files(dir: &Path, out: &mut Vec<(String, Vec<u8>)>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            collect_files(&path, out);
        } else if let Ok(bytes) = std::fs::read(&path) {
            out.push((path.display().to_string(), bytes));
        }
    }
}

async fn the_database_never_holds_token_material(backend: Backend) {
    let h = Harness::new(backend).await;
    let a = TestNode::new(1);
    let b = TestNode::new(2);
    let c = TestNode::new(3);
    let record_a = register(&h, &a, 1).await;
    register(&h, &b, 1).await;
    register(&h, &c, 1).await;

    let mut secrets = Secrets::default();
    let mut nonces = Vec::new();
    for (i, (from, to)) in [(&a, &b), (&b, &a), (&c, &a), (&a, &c), (&b, &c)]
        .into_iter()
        .enumerate()
    {
        let nonce = fresh_nonce();
        nonces.push(nonce);
        let answer = introduce(&h, &request(from, to, nonce, h.now())).await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.text);
        let token_a = b64_decode(answer.json["token"].as_str().unwrap()).unwrap();
        let push = h.nodes.pushes.lock().unwrap()[i].1.clone();
        let token_b = push.token.0.clone();
        let connection_id: [u8; 16] = b64_decode(answer.json["connection_id"].as_str().unwrap())
            .unwrap()
            .try_into()
            .unwrap();
        let opened = TokenEnvelope::decode(&token_b)
            .unwrap()
            .open(&to.key.node_id(), &to.agreement_secret())
            .unwrap();
        let link = opened.link.verifying_bytes();
        secrets.envelopes.push((format!("token_a #{i}"), token_a));
        secrets.envelopes.push((format!("token_b #{i}"), token_b));
        secrets
            .sixteen
            .push((format!("connection ID #{i}"), connection_id));
        for (half, bytes) in link.chunks(16).enumerate() {
            secrets.sixteen.push((
                format!("link public key #{i}, half {half}"),
                bytes.try_into().unwrap(),
            ));
        }
    }

    let dump = dump(&h).await;
    for table in ["nodes", "connection_nonces"] {
        assert!(
            dump.tables.iter().any(|t| t == table),
            "{table} not among {:?}",
            dump.tables
        );
    }
    let leaks = dump.leaks(&secrets);
    assert!(leaks.is_empty(), "token material stored: {leaks:?}");

    // Positive controls: what the directory does store is found by the same
    // search, in the tables and on disk.
    assert!(dump.contains(record_a.as_bytes()), "A's record is stored");
    assert!(dump.contains(a.url.as_bytes()), "A's URL is stored");
    if matches!(h.config.database, Database::Sqlite(_)) {
        // The file scan reads the SQLite database (and its log) too.
        let files = Dump {
            cells: dump
                .cells
                .iter()
                .filter(|(place, _)| place.starts_with('/'))
                .cloned()
                .collect(),
            tables: vec![],
        };
        assert!(files.contains(record_a.as_bytes()), "A's record is on disk");
    }
    let raw16 = dump.windows::<16>();
    for nonce in &nonces {
        assert!(raw16.contains(nonce), "request nonces are stored");
    }
    let in_nonces_table = dump
        .cells
        .iter()
        .filter(|(place, _)| place == "connection_nonces.nonce")
        .count();
    assert_eq!(in_nonces_table, nonces.len());
    // And the search would find token material in any of the forms it
    // looks for, had it been stored.
    let (_, envelope) = &secrets.envelopes[1];
    let planted = |bytes: Vec<u8>| {
        let mut cells = dump.cells.clone();
        cells.push(("planted".into(), bytes));
        Dump {
            cells,
            tables: vec![],
        }
        .leaks(&secrets)
    };
    assert!(!planted(envelope.clone()).is_empty());
    assert!(!planted(b64_encode(envelope).into_bytes()).is_empty());
    assert!(!planted(envelope[140..156].to_vec()).is_empty());
    assert!(!planted(
        data_encoding::HEXLOWER
            .encode(&envelope[150..166])
            .into_bytes()
    )
    .is_empty());
    let (_, id) = &secrets.sixteen[0];
    assert!(!planted(id.to_vec()).is_empty());
    assert!(!planted(b64_encode(id).into_bytes()).is_empty());
    assert!(!planted(data_encoding::HEXLOWER.encode(id).into_bytes()).is_empty());
}

// ---------------------------------------------------------------------------
// 3. Rejections
// ---------------------------------------------------------------------------

async fn rejects_bad_signatures_replays_and_stale_requests(backend: Backend) {
    let h = Harness::new(backend).await;
    let a = TestNode::new(1);
    let b = TestNode::new(2);
    let c = TestNode::new(3);
    register(&h, &a, 1).await;
    register(&h, &b, 1).await;
    register(&h, &c, 1).await;
    let (a_id, b_id) = (a.key.node_id(), b.key.node_id());
    let now = h.now();

    // Signed by another (registered) node's key.
    let forged = signed_request(
        &c.key,
        SignatureContext::ConnectionRequest,
        &a_id,
        &b_id,
        fresh_nonce(),
        now,
    );
    assert_error(
        &introduce(&h, &forged).await,
        StatusCode::BAD_REQUEST,
        "bad_signature",
    );

    // A's key, the right message, but under every other label.
    for context in SignatureContext::ALL
        .into_iter()
        .filter(|c| *c != SignatureContext::ConnectionRequest)
    {
        let body = signed_request(&a.key, context, &a_id, &b_id, fresh_nonce(), now);
        let answer = introduce(&h, &body).await;
        assert_error(&answer, StatusCode::BAD_REQUEST, "bad_signature");
    }

    // A genuine signature moved onto another request: another target,
    // another nonce, another time.
    let genuine = request(&a, &c, fresh_nonce(), now);
    for (field, value) in [
        ("target", json!(b.id())),
        ("nonce", json!(b64_encode(&fresh_nonce()))),
        ("issued_at", json!(now + 1)),
    ] {
        let mut body = genuine.clone();
        body[field] = value;
        assert_error(
            &introduce(&h, &body).await,
            StatusCode::BAD_REQUEST,
            "bad_signature",
        );
    }
    // Signature bytes that are not base64url, or not a signature.
    for signature in ["***", "", "AAAA"] {
        let mut body = request(&a, &b, fresh_nonce(), now);
        body["signature"] = json!(signature);
        assert_error(
            &introduce(&h, &body).await,
            StatusCode::BAD_REQUEST,
            "bad_signature",
        );
    }

    // Stale: more than the skew (300 s) away, either side.
    for issued_at in [now - 301, now + 301, 0, u64::MAX] {
        let body = request(&a, &b, fresh_nonce(), issued_at);
        assert_error(
            &introduce(&h, &body).await,
            StatusCode::BAD_REQUEST,
            "stale_request",
        );
    }
    assert_eq!(pushes(&h), 0, "no rejected request reached the target");

    // At the edge of the skew, both sides pass.
    for issued_at in [now - 300, now + 300] {
        let answer = introduce(&h, &request(&a, &b, fresh_nonce(), issued_at)).await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.text);
    }
    assert_eq!(pushes(&h), 2);

    // The same body twice: the second is a replay.
    let body = request(&a, &b, fresh_nonce(), now);
    assert_eq!(introduce(&h, &body).await.status, StatusCode::OK);
    assert_eq!(pushes(&h), 3);
    assert_error(
        &introduce(&h, &body).await,
        StatusCode::CONFLICT,
        "nonce_replay",
    );
    // The same nonce re-signed at another time, or to another target, is
    // still a replay: nonces are per requester.
    let nonce = fresh_nonce();
    assert_eq!(
        introduce(&h, &request(&a, &b, nonce, now)).await.status,
        StatusCode::OK
    );
    assert_error(
        &introduce(&h, &request(&a, &b, nonce, now + 5)).await,
        StatusCode::CONFLICT,
        "nonce_replay",
    );
    assert_error(
        &introduce(&h, &request(&a, &c, nonce, now)).await,
        StatusCode::CONFLICT,
        "nonce_replay",
    );
    // Another requester may happen to use the same nonce.
    assert_eq!(
        introduce(&h, &request(&c, &b, nonce, now)).await.status,
        StatusCode::OK
    );
    assert_eq!(pushes(&h), 5);
}

async fn rejects_self_unknown_deregistered_and_inactive_nodes(backend: Backend) {
    let h = Harness::new(backend).await;
    let a = TestNode::new(1);
    let b = TestNode::new(2);
    let c = TestNode::new(3);
    let stranger = TestNode::new(9);
    register(&h, &a, 1).await;
    register(&h, &b, 1).await;
    register(&h, &c, 1).await;
    let now = h.now();

    assert_error(
        &introduce(&h, &request(&a, &a, fresh_nonce(), now)).await,
        StatusCode::BAD_REQUEST,
        "same_node",
    );
    assert_error(
        &introduce(&h, &request(&stranger, &b, fresh_nonce(), now)).await,
        StatusCode::NOT_FOUND,
        "unknown_node",
    );
    assert_error(
        &introduce(&h, &request(&a, &stranger, fresh_nonce(), now)).await,
        StatusCode::NOT_FOUND,
        "unknown_node",
    );

    // A deregistered node can neither ask nor be asked for.
    let dereg = serde_json::to_value(DeregisterRequest::sign(&c.key, 2, UnixTime(now))).unwrap();
    let answer = h
        .call("POST", "/api/v3/nodes/deregister", Some(dereg))
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text);
    assert_error(
        &introduce(&h, &request(&a, &c, fresh_nonce(), now)).await,
        StatusCode::NOT_FOUND,
        "unknown_node",
    );
    assert_error(
        &introduce(&h, &request(&c, &a, fresh_nonce(), now)).await,
        StatusCode::NOT_FOUND,
        "unknown_node",
    );

    // B falls silent past the activity window (900 s); A heartbeats.
    h.clock.advance(901);
    register(&h, &a, 2).await;
    assert_error(
        &introduce(&h, &request(&a, &b, fresh_nonce(), h.now())).await,
        StatusCode::CONFLICT,
        "target_inactive",
    );
    // Once B heartbeats again, it can be introduced.
    register(&h, &b, 2).await;
    let answer = introduce(&h, &request(&a, &b, fresh_nonce(), h.now())).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text);
    assert_eq!(pushes(&h), 1, "only the last request reached its target");
}

async fn rejects_malformed_fields(backend: Backend) {
    let h = Harness::new(backend).await;
    let a = TestNode::new(1);
    let b = TestNode::new(2);
    register(&h, &a, 1).await;
    register(&h, &b, 1).await;
    let now = h.now();

    for nonce in [
        b64_encode(&[7u8; 15]),
        b64_encode(&[7u8; 17]),
        b64_encode(&[]),
        "***".to_owned(),
        // Padded base64 is not unpadded base64url.
        format!("{}==", b64_encode(&[7u8; 16])),
    ] {
        let mut body = request(&a, &b, fresh_nonce(), now);
        body["nonce"] = json!(nonce);
        assert_error(
            &introduce(&h, &body).await,
            StatusCode::BAD_REQUEST,
            "bad_nonce",
        );
    }
    for field in ["from", "target"] {
        for id in ["", "short", &"z".repeat(64)] {
            let mut body = request(&a, &b, fresh_nonce(), now);
            body[field] = json!(id);
            assert_error(
                &introduce(&h, &body).await,
                StatusCode::BAD_REQUEST,
                "bad_node_id",
            );
        }
    }
    // Missing, mistyped and unknown fields.
    let good = request(&a, &b, fresh_nonce(), now);
    for field in ["from", "target", "nonce", "issued_at", "signature"] {
        let mut body = good.clone();
        body.as_object_mut().unwrap().remove(field);
        let answer = introduce(&h, &body).await;
        assert!(answer.status.is_client_error(), "{field}: {}", answer.text);
        assert_eq!(answer.code(), "bad_json", "{field}");
    }
    for (field, value) in [
        ("issued_at", json!(-1)),
        ("issued_at", json!("now")),
        ("issued_at", json!(1e30)),
        ("nonce", json!(7)),
        ("from", json!(null)),
    ] {
        let mut body = good.clone();
        body[field] = value;
        let answer = introduce(&h, &body).await;
        assert!(answer.status.is_client_error(), "{field}: {}", answer.text);
        assert_eq!(answer.code(), "bad_json", "{field}");
    }
    let mut body = good.clone();
    body["admin"] = json!(true);
    let answer = introduce(&h, &body).await;
    assert!(answer.status.is_client_error());
    assert_eq!(answer.code(), "bad_json");
    assert_eq!(pushes(&h), 0);

    // None of it spent the nonce of the good request.
    assert_eq!(introduce(&h, &good).await.status, StatusCode::OK);
    assert_eq!(pushes(&h), 1);
}

async fn unreachable_target_answers_502(backend: Backend) {
    let h = Harness::new(backend).await;
    let a = TestNode::new(1);
    let b = TestNode::new(2);
    register(&h, &a, 1).await;
    register(&h, &b, 1).await;
    h.nodes.dead.lock().unwrap().insert(b.url.clone());
    let body = request(&a, &b, fresh_nonce(), h.now());
    let answer = introduce(&h, &body).await;
    assert_error(&answer, StatusCode::BAD_GATEWAY, "target_unreachable");
    assert!(answer.json.get("token").is_none());
    assert_eq!(pushes(&h), 0);
    // The nonce was spent: the same request is not retried into a second
    // token pair. A new request works once B is back.
    h.nodes.dead.lock().unwrap().clear();
    assert_error(
        &introduce(&h, &body).await,
        StatusCode::CONFLICT,
        "nonce_replay",
    );
    let answer = introduce(&h, &request(&a, &b, fresh_nonce(), h.now())).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text);
    assert_eq!(pushes(&h), 1);
}

async fn introduction_rate_limits_answer_429_with_retry_after(backend: Backend) {
    let h = Harness::with(backend, |c| {
        c.rate_limits.enabled = true;
        c.rate_limits.writes_per_address = Quota::new(1000, 1000);
        c.rate_limits.writes_per_node = Quota::new(1000, 1000);
        c.rate_limits.introductions_per_requester = Quota::new(1, 2);
        c.rate_limits.introductions_per_target = Quota::new(1, 3);
    })
    .await;
    let [a, b, c, d] = [1, 2, 3, 4].map(TestNode::new);
    for node in [&a, &b, &c, &d] {
        register(&h, node, 1).await;
    }
    let now = h.now();
    let peer: SocketAddr = "198.51.100.20:1".parse().unwrap();
    let ok = |a: Answer| assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    let limited = |a: Answer| {
        assert_error(&a, StatusCode::TOO_MANY_REQUESTS, "rate_limited");
        let retry = a.headers["retry-after"].to_str().unwrap();
        assert!(retry.parse::<u64>().unwrap() >= 1, "Retry-After: {retry}");
    };

    // Per requester: A's third introduction is refused, whatever the target.
    ok(introduce_from(&h, &request(&a, &b, fresh_nonce(), now), peer).await);
    ok(introduce_from(&h, &request(&a, &b, fresh_nonce(), now), peer).await);
    limited(introduce_from(&h, &request(&a, &b, fresh_nonce(), now), peer).await);
    limited(introduce_from(&h, &request(&a, &c, fresh_nonce(), now), peer).await);
    // Per target: B has had two; a third requester gets the third, the
    // fourth is refused though D has its own budget left.
    ok(introduce_from(&h, &request(&c, &b, fresh_nonce(), now), peer).await);
    limited(introduce_from(&h, &request(&d, &b, fresh_nonce(), now), peer).await);
    // Budgets are per node: D can still meet A.
    ok(introduce_from(&h, &request(&d, &a, fresh_nonce(), now), peer).await);
    assert_eq!(pushes(&h), 4, "no refused request reached its target");
}

// ---------------------------------------------------------------------------
// 4. Nonces shared by replicas
// ---------------------------------------------------------------------------

async fn nonces_are_shared_by_replicas_and_pruned_after_the_window(backend: Backend) {
    let h = Harness::new(backend).await;
    let a = TestNode::new(1);
    let b = TestNode::new(2);
    register(&h, &a, 1).await;
    register(&h, &b, 1).await;
    let second = h.reopen().await;
    let peer: SocketAddr = "198.51.100.30:1".parse().unwrap();
    let via_second = |body: &Value| {
        let body = body.to_string();
        let second = &second;
        async move { common::send(second, "POST", PATH, Some(&body), "application/json", peer).await }
    };

    // Used on the first replica, refused on the second…
    let first_body = request(&a, &b, fresh_nonce(), T0);
    assert_eq!(introduce(&h, &first_body).await.status, StatusCode::OK);
    assert_error(
        &via_second(&first_body).await,
        StatusCode::CONFLICT,
        "nonce_replay",
    );
    // …and the other way round.
    let second_body = request(&a, &b, fresh_nonce(), T0);
    let answer = via_second(&second_body).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text);
    assert_error(
        &introduce(&h, &second_body).await,
        StatusCode::CONFLICT,
        "nonce_replay",
    );
    assert_eq!(nonce_rows(&h.directory).await, 2);
    assert_eq!(pushes(&h), 2);

    // Within the freshness window, pruning keeps the nonces and a replay is
    // still refused as one.
    h.clock.set(UnixTime(T0 + 300));
    h.directory.prune_once().await.unwrap();
    second.prune_once().await.unwrap();
    assert_eq!(nonce_rows(&h.directory).await, 2);
    assert_error(
        &introduce(&h, &first_body).await,
        StatusCode::CONFLICT,
        "nonce_replay",
    );

    // Past it, any replica's pruning deletes them, and the request is
    // refused as stale instead.
    h.clock.set(UnixTime(T0 + 302));
    second.prune_once().await.unwrap();
    assert_eq!(nonce_rows(&h.directory).await, 0);
    assert_eq!(nonce_rows(&second).await, 0);
    assert_error(
        &introduce(&h, &first_body).await,
        StatusCode::BAD_REQUEST,
        "stale_request",
    );
    assert_error(
        &via_second(&second_body).await,
        StatusCode::BAD_REQUEST,
        "stale_request",
    );
    assert_eq!(pushes(&h), 2);
}

// ---------------------------------------------------------------------------
// 5. The reachability proof
// ---------------------------------------------------------------------------

async fn assert_not_stored(h: &Harness, node: &TestNode) {
    assert!(h
        .directory
        .store()
        .node(&node.key.node_id())
        .await
        .unwrap()
        .is_none());
    assert_eq!(h.lookup(&node.id()).await.status, StatusCode::NOT_FOUND);
}

async fn registration_requires_a_reachability_proof(backend: Backend) {
    let h = Harness::new(backend).await;

    // Nobody answers at the URL.
    let a = TestNode::new(1);
    h.nodes.dead.lock().unwrap().insert(a.url.clone());
    let answer = h.register(&a.record(1, T0)).await;
    assert_error(&answer, StatusCode::BAD_REQUEST, "url_unreachable");
    assert_eq!(
        h.nodes.challenges.lock().unwrap().as_slice(),
        std::slice::from_ref(&a.url)
    );
    assert_not_stored(&h, &a).await;

    // Someone else's server (node 7's) answers at the URL.
    let b = TestNode::new(2);
    let victim = "https://victim.example.com";
    h.nodes.owners.lock().unwrap().insert(victim.to_owned(), 7);
    let answer = h.register(&b.record_at(1, T0, T0 + 999, victim)).await;
    assert_error(&answer, StatusCode::BAD_REQUEST, "url_unreachable");
    assert_not_stored(&h, &b).await;

    // The node answers with a proof made for another directory.
    let c = TestNode::new(3);
    let elsewhere = IdentityKeypair::from_secret_bytes(&[0xd1; 32])
        .public()
        .directory_fingerprint()
        .to_string();
    assert_ne!(elsewhere, h.directory.fingerprint().to_string());
    *h.nodes.proof_fingerprint.lock().unwrap() = Some(elsewhere);
    let answer = h.register(&c.record(1, T0)).await;
    assert_error(&answer, StatusCode::BAD_REQUEST, "url_unreachable");
    assert_not_stored(&h, &c).await;
    *h.nodes.proof_fingerprint.lock().unwrap() = None;

    let health = h.call("GET", "/api/v3/health", None).await;
    assert_eq!(health.json["nodes"], json!({"active": 0, "inactive": 0}));
    assert_eq!(challenges(&h), 3);

    // The same nodes, proving themselves properly, are accepted.
    h.nodes.dead.lock().unwrap().clear();
    register(&h, &a, 1).await;
    register(&h, &c, 1).await;
    assert_eq!(challenges(&h), 5);
}

async fn reachability_is_proved_again_only_when_the_url_changes(backend: Backend) {
    let h = Harness::new(backend).await;
    let a = TestNode::new(1);
    register(&h, &a, 1).await;
    assert_eq!(challenges(&h), 1);

    // Heartbeats with the same URL: no new challenge.
    h.clock.advance(300);
    register(&h, &a, 2).await;
    h.clock.advance(300);
    register(&h, &a, 3).await;
    assert_eq!(challenges(&h), 1);

    // A replayed or rolled-back seq is refused before any outbound call.
    let replay = a.record_at(3, h.now(), h.now() + 999, "https://moved.example.com");
    let answer = h.register(&replay).await;
    assert_error(&answer, StatusCode::CONFLICT, "seq_replay");
    assert_eq!(challenges(&h), 1);

    // A move to a URL the node does not answer at is refused, and the old
    // URL stays.
    let dead = "https://dead.example.com";
    h.nodes.dead.lock().unwrap().insert(dead.to_owned());
    let answer = h
        .register(&a.record_at(4, h.now(), h.now() + 999, dead))
        .await;
    assert_error(&answer, StatusCode::BAD_REQUEST, "url_unreachable");
    assert_eq!(challenges(&h), 2);
    let owned = "https://owned.example.com";
    h.nodes.owners.lock().unwrap().insert(owned.to_owned(), 9);
    let answer = h
        .register(&a.record_at(4, h.now(), h.now() + 999, owned))
        .await;
    assert_error(&answer, StatusCode::BAD_REQUEST, "url_unreachable");
    assert_eq!(challenges(&h), 3);
    let looked_up = h.lookup(&a.id()).await;
    assert_eq!(looked_up.json["api_url"], a.url);
    let stored = h
        .directory
        .store()
        .node(&a.key.node_id())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.seq, 3);

    // A move to a URL it does answer at is challenged there, and accepted.
    let moved = "https://moved.example.com";
    let answer = h
        .register(&a.record_at(4, h.now(), h.now() + 999, moved))
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text);
    assert_eq!(challenges(&h), 4);
    assert_eq!(h.nodes.challenges.lock().unwrap().last().unwrap(), moved);
    assert_eq!(h.lookup(&a.id()).await.json["api_url"], moved);
    // The next heartbeat at the new URL is not challenged again.
    let answer = h
        .register(&a.record_at(5, h.now(), h.now() + 999, moved))
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text);
    assert_eq!(challenges(&h), 4);

    // After a deregistration, coming back (even at the same URL) is proved
    // again.
    let dereg =
        serde_json::to_value(DeregisterRequest::sign(&a.key, 6, UnixTime(h.now()))).unwrap();
    let answer = h
        .call("POST", "/api/v3/nodes/deregister", Some(dereg))
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text);
    let answer = h
        .register(&a.record_at(7, h.now(), h.now() + 999, moved))
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text);
    assert_eq!(challenges(&h), 5);
}

// ---------------------------------------------------------------------------
// 6. Garbage
// ---------------------------------------------------------------------------

/// splitmix64: a small deterministic generator, so failures reproduce.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn bytes(&mut self, max: u64) -> Vec<u8> {
        let len = self.below(max + 1);
        (0..len).map(|_| self.next() as u8).collect()
    }
}

async fn garbage_to_request_connection_never_gets_a_5xx(backend: Backend) {
    let h = Harness::new(backend).await;
    let a = TestNode::new(1);
    let b = TestNode::new(2);
    register(&h, &a, 1).await;
    register(&h, &b, 1).await;
    let now = h.now();
    let peer: SocketAddr = "198.51.100.9:9".parse().unwrap();
    let mut rng = Rng(0x0123_4567_89ab_cdef);
    let ids = [a.id(), b.id(), TestNode::new(5).id()];
    let times = [0, now, now - 301, now + 300, u64::MAX, i64::MAX as u64 + 1];
    let mut accepted = 0;
    for i in 0..300 {
        let body = match i % 4 {
            // Random bytes.
            0 => String::from_utf8_lossy(&rng.bytes(400)).into_owned(),
            // Random JSON values of the right shape.
            1 => {
                let pick = |rng: &mut Rng| match rng.below(3) {
                    0 => json!(ids[rng.below(3) as usize]),
                    1 => json!(b64_encode(&rng.bytes(40))),
                    _ => json!(String::from_utf8_lossy(&rng.bytes(70))),
                };
                json!({
                    "from": pick(&mut rng),
                    "target": pick(&mut rng),
                    "nonce": b64_encode(&rng.bytes(20)),
                    "issued_at": if rng.below(2) == 0 { rng.next() } else { times[rng.below(6) as usize] },
                    "signature": b64_encode(&rng.bytes(80)),
                })
                .to_string()
            }
            // Genuinely signed requests with random targets and times.
            2 => {
                let target = if rng.below(2) == 0 { &b } else { &a };
                let issued_at = times[rng.below(6) as usize];
                let mut nonce = [0u8; 16];
                nonce.iter_mut().for_each(|n| *n = rng.next() as u8);
                request(&a, target, nonce, issued_at).to_string()
            }
            // A genuine request with bytes flipped in its text.
            _ => {
                let mut text = request(&a, &b, fresh_nonce(), now).to_string().into_bytes();
                for _ in 0..=rng.below(3) {
                    let at = rng.below(text.len() as u64) as usize;
                    text[at] = rng.next() as u8;
                }
                String::from_utf8_lossy(&text).into_owned()
            }
        };
        let answer = h
            .raw("POST", PATH, Some(&body), "application/json", peer)
            .await;
        if answer.status == StatusCode::OK {
            accepted += 1;
            assert!(answer.json["token"].is_string(), "{}", answer.text);
            continue;
        }
        assert!(
            answer.status.is_client_error(),
            "{body}: {} {}",
            answer.status,
            answer.text
        );
        assert!(
            answer.json["error"].is_string() && answer.json["message"].is_string(),
            "{}",
            answer.text
        );
    }
    assert_eq!(
        pushes(&h),
        accepted,
        "every push belongs to an accepted request"
    );
}

async fn expired_records_are_never_put_in_tokens(backend: Backend) {
    let h = Harness::new(backend).await;
    let a = TestNode::new(1);
    let b = TestNode::new(2);
    register(&h, &a, 1).await;
    // B's record is valid for one minute only.
    let short = b.record_at(1, T0, T0 + 60, &b.url.clone());
    assert_eq!(h.register(&short).await.status, StatusCode::OK);
    h.clock.advance(120);
    register(&h, &a, 2).await;
    let answer = introduce(&h, &request(&a, &b, fresh_nonce(), T0 + 120)).await;
    assert_error(&answer, StatusCode::CONFLICT, "record_expired");
    assert_eq!(pushes(&h), 0);
    // Once B refreshes its record, the introduction goes through.
    register(&h, &b, 2).await;
    let answer = introduce(&h, &request(&a, &b, fresh_nonce(), T0 + 120)).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text);
}

async fn a_nonce_is_usable_again_once_its_window_ended_even_before_pruning(backend: Backend) {
    let h = Harness::new(backend).await;
    let a = TestNode::new(1);
    let b = TestNode::new(2);
    register(&h, &a, 1).await;
    register(&h, &b, 1).await;
    let nonce = fresh_nonce();
    assert_eq!(
        introduce(&h, &request(&a, &b, nonce, T0)).await.status,
        StatusCode::OK
    );
    // Within the window (skew 300 s) the nonce is refused, re-signed or not.
    h.clock.advance(200);
    register(&h, &a, 2).await;
    register(&h, &b, 2).await;
    let answer = introduce(&h, &request(&a, &b, nonce, T0 + 200)).await;
    assert_error(&answer, StatusCode::CONFLICT, "nonce_replay");
    // After the first request's window, without a prune, it may be used.
    h.clock.advance(200);
    register(&h, &a, 3).await;
    register(&h, &b, 3).await;
    assert_eq!(nonce_rows(&h.directory).await, 1, "not pruned yet");
    let answer = introduce(&h, &request(&a, &b, nonce, T0 + 400)).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text);
    // And the renewed row protects the new window.
    let answer = introduce(&h, &request(&a, &b, nonce, T0 + 400)).await;
    assert_error(&answer, StatusCode::CONFLICT, "nonce_replay");
}
