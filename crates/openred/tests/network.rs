//! The node on a real network, in process: a directory and nodes on
//! 127.0.0.1 sharing one manual clock. The happy path, then every attack of
//! the protocol's tables (`docs/PROTOCOL.md`): each must be refused with a
//! clear status and error code, and leave no session behind.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod in_process;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, post};
use axum::{Json, Router};
use in_process::*;
use openred_core::handshake::{self, Authority, HandshakeContext, HandshakeError};
use openred_core::keys::SignatureContext;
use openred_core::random::SeededRng;
use openred_core::session::{EpochConfig, FrameHeader, Role, Suite};
use openred_core::token::{mint_pair, MAX_TOKEN_LIFETIME_S};
use openred_core::wire::{
    connection_request_message, reachability_message, ConnectionIdBytes, ConnectionRequest,
    NonceBytes, ReachabilityChallenge, ReachabilityProof, RecordBytes, RegisterRequest,
    SignatureBytes, TokenBytes, TokenPush,
};
use openred_core::{AgreementSecret, ApiUrl, IdentityKeypair, NodeId, NodeRecord, UnixTime};
use openred_node::agent::identity::NodeSignature;
use openred_node::error::NodeError;
use openred_node::owner::admin::StatusView;
use openred_node::store::{NodeStore, StoredToken, TokenState};
use openred_node::{IntroductionPolicy, NodeState};
use serde_json::json;

const HANDSHAKE: &str = "/p2p/handshake";
const PING: &str = "/p2p/ping";
const RECEIVE: &str = "/api/v3/tokens/receive";
const REQUEST_CONNECTION: &str = "/api/v3/tokens/request-connection";
const REGISTER: &str = "/api/v3/nodes/register";

/// token_b as the directory pushed it to `node` (captured to replay it),
/// after checking that `node` stored it.
async fn stored_token(net: &Network, node: &NodeState, connection_id: &[u8; 16]) -> Vec<u8> {
    match node.store().token(connection_id).await.unwrap() {
        (TokenState::Ok, Some(_)) => net.pushed_token(connection_id),
        other => panic!("no token waits for this connection: {other:?}"),
    }
}

/// The state of a connection ID on a node.
async fn token_state(node: &NodeState, connection_id: &[u8; 16]) -> TokenState {
    node.store().token(connection_id).await.unwrap().0
}

fn push_body(from: &NodeId, envelope: &[u8]) -> TokenPush {
    TokenPush {
        from: *from,
        token: TokenBytes(envelope.to_vec()),
    }
}

/// A connection request signed by `node`, as its directory client makes it.
fn signed_request(node: &NodeState, target: &NodeId, issued_at: UnixTime) -> ConnectionRequest {
    let nonce = random16();
    let message = connection_request_message(&node.node_id(), target, &nonce, issued_at);
    ConnectionRequest {
        from: node.node_id(),
        target: *target,
        nonce: NonceBytes(nonce),
        issued_at: issued_at.0,
        signature: SignatureBytes(node.keys().sign(NodeSignature::ConnectionRequest, &message)),
    }
}

/// `node` asks the directory for an introduction to `target`.
async fn request_to(
    node: &NodeState,
    target: NodeId,
    now: UnixTime,
) -> Result<openred_core::token::TokenEnvelope, NodeError> {
    node.directory()
        .request_connection(node.outbound(), node.store(), node.crypto(), &target, now)
        .await
}

/// A pair for an introduction of `a` to `b` minted and signed by
/// `directory` (the real directory's key, or another), with the records
/// the directory serves: token_b's connection ID and push body.
async fn mint_push(
    directory: &IdentityKeypair,
    a: &NodeState,
    b: &NodeState,
    issued_at: UnixTime,
    expires_at: UnixTime,
) -> ([u8; 16], TokenPush) {
    let now = b.clock().now();
    let mut records = Vec::new();
    for node in [a, b] {
        let record = b
            .directory()
            .lookup(b.outbound(), b.store(), &node.node_id(), now)
            .await
            .unwrap();
        records.push(record);
    }
    let (a_record, b_record) = (&records[0], &records[1]);
    let connection_id = random16();
    let pair = mint_pair(
        directory,
        a_record,
        b_record,
        connection_id,
        random32(),
        issued_at,
        expires_at,
        &mut SeededRng::new(random32()),
    )
    .unwrap();
    (
        connection_id,
        push_body(&a.node_id(), pair.for_target.as_bytes()),
    )
}

fn session_count(node: &NodeState) -> usize {
    node.sessions().all().len()
}

// 1 ----------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_establishes_matching_sessions_pings_both_ways_and_admin_lists_them() {
    let net = Network::start().await;
    let a = net.node("a").await;
    let b = net.node("b").await;

    let connected = a.connect(b.id()).await.unwrap();
    assert_eq!(connected.peer, b.id());
    let on_a = a.sessions().with_peer(&b.id()).unwrap();
    let on_b = b.sessions().with_peer(&a.id()).unwrap();
    assert_eq!(on_a.id(), connected.session_id);
    assert_eq!(on_b.id(), on_a.id());
    assert_eq!(on_a.role(), Role::Initiator);
    assert_eq!(on_b.role(), Role::Responder);
    assert_eq!(on_a.session.suite(), on_b.session.suite());
    assert_eq!(on_a.session.suite(), Suite::ChaCha20Poly1305);
    assert_eq!(a.session_suite(&b.id()), Some(Suite::ChaCha20Poly1305));
    // connect() ends with the first ping, which confirms B's side.
    assert!(on_b.confirmed.load(Ordering::SeqCst));
    assert_eq!(on_b.session.frames_received(), 1);
    assert_eq!((session_count(&a), session_count(&b)), (1, 1));

    a.ping(&b.id()).await.unwrap();
    b.ping(&a.id()).await.unwrap();
    assert_eq!(on_b.session.frames_received(), 3);
    assert_eq!(on_a.session.frames_received(), 3);

    // The admin API, with the token and address from the data directory.
    let token = a.admin_token();
    let status_url = a.admin("/admin/v1/status");
    let answer = get(&net.http, &status_url, Some(&token)).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    let status: StatusView = serde_json::from_value(answer.json).unwrap();
    assert_eq!(status.node_id, a.id().to_string());
    assert!(status.registered);
    assert_eq!(status.directory_key, Some(net.fingerprint.to_string()));
    assert_eq!(status.sessions.len(), 1);
    let view = &status.sessions[0];
    assert_eq!(view.peer, b.id().to_string());
    assert_eq!(view.session_id, connected.session_id.to_string());
    assert_eq!(view.role, "initiator");
    assert_eq!(view.suite, "chacha20-poly1305");
    assert!(view.confirmed);

    // B's admin API shows the same session from the responder's side.
    let answer = get(
        &net.http,
        &b.admin("/admin/v1/status"),
        Some(&b.admin_token()),
    )
    .await;
    let status: StatusView = serde_json::from_value(answer.json).unwrap();
    assert_eq!(status.sessions.len(), 1);
    assert_eq!(
        status.sessions[0].session_id,
        connected.session_id.to_string()
    );
    assert_eq!(status.sessions[0].role, "responder");
    assert!(status.sessions[0].confirmed);

    // The admin ping goes through the session.
    let peer = json!({ "node_id": b.id().to_string() });
    let answer = a
        .admin_post(&net.http, "/admin/v1/ping", Some(&token), &peer)
        .await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.json["node_id"], json!(b.id().to_string()));

    // Without a token, with a wrong one, with another node's: 401.
    assert_refused(
        &get(&net.http, &status_url, None).await,
        401,
        "unauthorized",
    );
    let mut wrong = token.clone();
    let last = if wrong.ends_with('0') { "1" } else { "0" };
    wrong.replace_range(wrong.len() - 1.., last);
    assert_refused(
        &get(&net.http, &status_url, Some(&wrong)).await,
        401,
        "unauthorized",
    );
    assert_refused(
        &get(&net.http, &status_url, Some(&b.admin_token())).await,
        401,
        "unauthorized",
    );
    assert_refused(
        &a.admin_post(&net.http, "/admin/v1/ping", None, &peer).await,
        401,
        "unauthorized",
    );
    assert_refused(
        &a.admin_post(&net.http, "/admin/v1/connect", Some(&wrong), &peer)
            .await,
        401,
        "unauthorized",
    );
    assert_eq!((session_count(&a), session_count(&b)), (1, 1));
}

// 2 ----------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_handshake_message_is_refused() {
    let net = Network::start().await;
    let a = net.node("a").await;
    let b = net.node("b").await;

    let intro = introduce(&a, b.id(), net.now()).await;
    let (pending, request) = genuine_message_1(&a, &intro);
    let first = post_json(&net.http, &b.p2p(HANDSHAKE), &request).await;
    let session = finish_by_hand(pending, &first, net.now(), a.config().epoch);
    let on_b = b.sessions().with_peer(&a.id()).unwrap();
    assert_eq!(on_b.id(), session.session_id());
    // Confirmed only after the initiator's first authenticated frame.
    assert!(!on_b.confirmed.load(Ordering::SeqCst));

    let replay = post_json(&net.http, &b.p2p(HANDSHAKE), &request).await;
    assert_refused(&replay, 409, "token_used");
    assert_eq!(session_count(&b), 1);
    assert_eq!(
        token_state(&b, &intro.connection_id).await,
        TokenState::Used
    );

    let frame = session.seal(&ping_payload(), net.now()).unwrap();
    let pong = post_bytes(&net.http, &b.p2p(PING), frame.clone()).await;
    assert_eq!(pong.status, 200, "{pong:?}");
    assert_eq!(
        &answer_payload(&session, PING, &frame, &pong.body, net.now())[..4],
        b"pong"
    );
    assert!(on_b.confirmed.load(Ordering::SeqCst));
}

// 3 ----------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_token_push_then_a_replayed_handshake_are_refused() {
    let net = Network::start().await;
    let a = net.node("a").await;
    let b = net.node("b").await;

    let intro = introduce(&a, b.id(), net.now()).await;
    // Intercept token_b as the directory pushed it.
    let token_b = stored_token(&net, &b, &intro.connection_id).await;
    let push = push_body(&a.id(), &token_b);
    // While it waits, a second copy is a duplicate.
    assert_refused(
        &post_json(&net.http, &b.p2p(RECEIVE), &push).await,
        409,
        "duplicate_token",
    );

    let (pending, request) = genuine_message_1(&a, &intro);
    let first = post_json(&net.http, &b.p2p(HANDSHAKE), &request).await;
    finish_by_hand(pending, &first, net.now(), a.config().epoch);
    assert_eq!(session_count(&b), 1);

    // The tombstone refuses the token again, so the handshake cannot be
    // replayed on top of it.
    assert_refused(
        &post_json(&net.http, &b.p2p(RECEIVE), &push).await,
        409,
        "token_used",
    );
    assert_eq!(
        token_state(&b, &intro.connection_id).await,
        TokenState::Used
    );
    assert_refused(
        &post_json(&net.http, &b.p2p(HANDSHAKE), &request).await,
        409,
        "token_used",
    );
    assert_eq!(session_count(&b), 1);
}

// 4 ----------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_handshake_on_a_used_connection_id_is_refused() {
    let net = Network::start().await;
    let a = net.node("a").await;
    let b = net.node("b").await;

    let intro = introduce(&a, b.id(), net.now()).await;
    let (pending, request) = genuine_message_1(&a, &intro);
    let first = post_json(&net.http, &b.p2p(HANDSHAKE), &request).await;
    finish_by_hand(pending, &first, net.now(), a.config().epoch);

    // A fresh, valid Noise message 1 (new ephemeral key, valid proof) for
    // the same connection ID.
    let (_, again) = genuine_message_1(&a, &intro);
    assert_ne!(again.message, request.message);
    assert_refused(
        &post_json(&net.http, &b.p2p(HANDSHAKE), &again).await,
        409,
        "token_used",
    );
    assert_eq!(session_count(&b), 1);
}

// 5 ----------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handshake_by_a_node_that_is_not_the_initiator_is_refused() {
    let net = Network::start().await;
    let a = net.node("a").await;
    let b = net.node("b").await;
    let c = net.node("c").await;

    // C knows the connection ID and even holds token_a's link key, but
    // its static key is its own.
    let intro = introduce(&a, b.id(), net.now()).await;
    let context = intro.context(&a.config().suites);
    let c_secret = c.keys().agreement_secret();
    let c_public = c.keys().agreement_public().0;
    let (_, as_a) = message_1(
        &c_secret,
        &c_public,
        &intro.target_static(),
        &context,
        intro.link(),
    );
    assert_refused(
        &post_json(&net.http, &b.p2p(HANDSHAKE), &as_a).await,
        403,
        "handshake_failed",
    );
    // Naming itself as the initiator does not help either.
    let as_c = HandshakeContext {
        initiator: c.id(),
        ..context.clone()
    };
    let (_, as_c) = message_1(
        &c_secret,
        &c_public,
        &intro.target_static(),
        &as_c,
        intro.link(),
    );
    assert_refused(
        &post_json(&net.http, &b.p2p(HANDSHAKE), &as_c).await,
        403,
        "handshake_failed",
    );
    assert!(b.sessions().all().is_empty());

    // The failed attempts did not burn the token: the real A gets through.
    assert_eq!(token_state(&b, &intro.connection_id).await, TokenState::Ok);
    let (pending, request) = genuine_message_1(&a, &intro);
    let answer = post_json(&net.http, &b.p2p(HANDSHAKE), &request).await;
    let session = finish_by_hand(pending, &answer, net.now(), a.config().epoch);
    assert_eq!(
        b.sessions().with_peer(&a.id()).unwrap().id(),
        session.session_id()
    );
    assert_eq!(session_count(&b), 1);
}

// 6 ----------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_addressed_to_another_node_is_refused() {
    let net = Network::start().await;
    let a = net.node("a").await;
    let b = net.node("b").await;
    let c = net.node("c").await;

    // token_b meant for C, directory-signed and genuine, pushed to B.
    let to_c = introduce(&a, c.id(), net.now()).await;
    let token_for_c = stored_token(&net, &c, &to_c.connection_id).await;
    let answer = post_json(
        &net.http,
        &b.p2p(RECEIVE),
        &push_body(&a.id(), &token_for_c),
    )
    .await;
    assert_refused(&answer, 403, "not_for_this_node");
    assert_eq!(
        token_state(&b, &to_c.connection_id).await,
        TokenState::Unknown
    );

    // token_a (the initiator's) is never pushed.
    let answer = post_json(
        &net.http,
        &b.p2p(RECEIVE),
        &push_body(&a.id(), to_c.token_a.as_bytes()),
    )
    .await;
    assert_refused(&answer, 400, "wrong_role");

    // B's own token with a `from` that is not its initiator.
    let to_b = introduce(&a, b.id(), net.now()).await;
    let token_b = stored_token(&net, &b, &to_b.connection_id).await;
    let answer = post_json(&net.http, &b.p2p(RECEIVE), &push_body(&c.id(), &token_b)).await;
    assert_refused(&answer, 400, "from_mismatch");

    assert!(b.sessions().all().is_empty());
}

// 7 ----------------------------------------------------------------------

fn assert_agent_refused<T: std::fmt::Debug>(result: Result<T, NodeError>) {
    match result {
        Err(NodeError::Crypto(openred_node::agent::CryptoError::Failed { kind, .. })) => {
            assert_eq!(kind, openred_node::agent::proto::ErrorKind::Refused)
        }
        other => panic!("expected the crypto agent to refuse, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cannot_be_introduced_to_itself() {
    let net = Network::start().await;
    let a = net.node("a").await;
    let b = net.node("b").await;

    // The node's own agent refuses to sign such a request at all.
    assert_agent_refused(request_to(&a, a.id(), net.now()).await);

    // The same signed by hand, to see the directory's own answer.
    let body = signed_request(&a, &a.id(), net.now());
    let answer = post_json(&net.http, &net.directory(REQUEST_CONNECTION), &body).await;
    assert_refused(&answer, 400, "same_node");

    assert_agent_refused(a.connect(a.id()).await);
    // The admin API refuses before asking anyone.
    let me = json!({ "node_id": a.id().to_string() });
    let answer = a
        .admin_post(&net.http, "/admin/v1/connect", Some(&a.admin_token()), &me)
        .await;
    assert_refused(&answer, 400, "self");

    // And the handshake refuses one's own static key before any message.
    let me = a.keys().agreement_public().0;
    let context = HandshakeContext {
        connection_id: random16(),
        initiator: a.id(),
        target: b.id(),
        authority: Authority::Introduction {
            link_public: [0; 32],
        },
        offer: vec![Suite::ChaCha20Poly1305],
    };
    let result = handshake::initiate(
        &a.keys().agreement_secret(),
        &me,
        &me,
        &context,
        random32(),
        |_| [0; 64],
    );
    assert!(matches!(result, Err(HandshakeError::SelfSession)));
    let context = HandshakeContext {
        target: a.id(),
        ..context
    };
    let result = handshake::initiate(
        &a.keys().agreement_secret(),
        &me,
        &b.keys().agreement_public().0,
        &context,
        random32(),
        |_| [0; 64],
    );
    assert!(matches!(result, Err(HandshakeError::SelfSession)));

    assert!(a.sessions().all().is_empty());
    assert!(b.sessions().all().is_empty());
}

// 8 ----------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_token_is_refused_for_the_handshake_and_for_a_push() {
    let net = Network::start().await;
    let a = net.node("a").await;
    let b = net.node("b").await;

    let intro = introduce(&a, b.id(), net.now()).await;
    assert_eq!(intro.expires_at, net.now().plus(120));
    let token_b = stored_token(&net, &b, &intro.connection_id).await;

    net.clock.advance(121);
    let (_, request) = genuine_message_1(&a, &intro);
    assert_refused(
        &post_json(&net.http, &b.p2p(HANDSHAKE), &request).await,
        400,
        "token_expired",
    );
    assert_refused(
        &post_json(&net.http, &b.p2p(RECEIVE), &push_body(&a.id(), &token_b)).await,
        400,
        "token_expired",
    );
    assert!(b.sessions().all().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_living_beyond_the_protocol_cap_is_refused_on_receipt() {
    let net = Network::start().await;
    let a = net.node("a").await;
    let b = net.node("b").await;
    let now = net.now();
    // The real directory's key: a compromised or misconfigured directory
    // signing tokens that would outlive the tombstones kept against them.
    let directory = net.directory_keypair();
    let push = |issued_at, expires_at| mint_push(&directory, &a, &b, issued_at, expires_at);
    let cap = MAX_TOKEN_LIFETIME_S;
    let year = 365 * 86_400;
    for (issued_at, expires_at) in [
        (now, now.plus(cap + 1)),
        (now, now.plus(100 * year)),
        // Within the cap, but "issued" a year ahead of B's clock.
        (now.plus(year), now.plus(year + 120)),
    ] {
        let (connection_id, body) = push(issued_at, expires_at).await;
        let answer = post_json(&net.http, &b.p2p(RECEIVE), &body).await;
        assert_refused(&answer, 400, "token_lifetime");
        assert_eq!(token_state(&b, &connection_id).await, TokenState::Unknown);
    }
    // At the cap exactly, the token is taken.
    let (connection_id, body) = push(now, now.plus(cap)).await;
    let answer = post_json(&net.http, &b.p2p(RECEIVE), &body).await;
    assert_eq!(
        answer.status,
        200,
        "{}",
        String::from_utf8_lossy(&answer.body)
    );
    assert_eq!(token_state(&b, &connection_id).await, TokenState::Ok);
}

// 9 ----------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_push_not_signed_by_the_directory_is_refused() {
    let net = Network::start().await;
    let a = net.node("a").await;
    let b = net.node("b").await;

    let intro = introduce(&a, b.id(), net.now()).await;
    let token_b = stored_token(&net, &b, &intro.connection_id).await;

    // One bit of the directory's signature flipped.
    let mut bad_signature = token_b.clone();
    *bad_signature.last_mut().unwrap() ^= 0x01;
    assert_refused(
        &post_json(
            &net.http,
            &b.p2p(RECEIVE),
            &push_body(&a.id(), &bad_signature),
        )
        .await,
        403,
        "not_from_directory",
    );
    // The header rewritten (a later expiry).
    let mut longer_life = token_b.clone();
    longer_life[97] ^= 0x01;
    assert_refused(
        &post_json(
            &net.http,
            &b.p2p(RECEIVE),
            &push_body(&a.id(), &longer_life),
        )
        .await,
        403,
        "not_from_directory",
    );

    // A well-formed pair, correctly sealed to both nodes, minted and
    // signed by a key that is not the pinned directory's.
    let now = net.now();
    let (rogue_id, body) = mint_push(&stranger_identity(), &a, &b, now, now.plus(120)).await;
    let answer = post_json(&net.http, &b.p2p(RECEIVE), &body).await;
    assert_refused(&answer, 403, "not_from_directory");
    assert_eq!(token_state(&b, &rogue_id).await, TokenState::Unknown);
    assert!(b.sessions().all().is_empty());
}

// 10 ---------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_man_in_the_middle_with_its_own_static_key_is_refused() {
    let net = Network::start().await;
    let a = net.node("a").await;
    let b = net.node("b").await;

    // The attacker has A's genuine token (link key included) but not A's
    // static key.
    let intro = introduce(&a, b.id(), net.now()).await;
    let (secret, public) = stranger_static();
    let context = intro.context(&a.config().suites);
    let (_, request) = message_1(
        &secret,
        &public,
        &intro.target_static(),
        &context,
        intro.link(),
    );
    assert_refused(
        &post_json(&net.http, &b.p2p(HANDSHAKE), &request).await,
        403,
        "handshake_failed",
    );
    assert!(b.sessions().all().is_empty());

    // The static key alone is not enough either: A's key with a proof by a
    // key other than token_a's link key.
    let stranger_link = introduce(&a, b.id(), net.now()).await;
    let (_, request) = message_1(
        &a.keys().agreement_secret(),
        &a.keys().agreement_public().0,
        &intro.target_static(),
        &context,
        stranger_link.link(),
    );
    let answer = post_json(&net.http, &b.p2p(HANDSHAKE), &request).await;
    assert_refused(&answer, 403, "handshake_failed");
    assert!(answer.message().contains("proof"), "{answer:?}");
    assert!(b.sessions().all().is_empty());

    // Still unburnt: the real A gets through.
    let (pending, request) = genuine_message_1(&a, &intro);
    let answer = post_json(&net.http, &b.p2p(HANDSHAKE), &request).await;
    finish_by_hand(pending, &answer, net.now(), a.config().epoch);
    assert_eq!(session_count(&b), 1);
}

// 11 ---------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proof_made_for_another_connection_is_refused() {
    let net = Network::start().await;
    let a = net.node("a").await;
    let b = net.node("b").await;

    // Two real introductions, both pending on B.
    let x = introduce(&a, b.id(), net.now()).await;
    let y = introduce(&a, b.id(), net.now()).await;
    assert_ne!(x.connection_id, y.connection_id);
    let secret = a.keys().agreement_secret();
    let public = a.keys().agreement_public().0;

    // Message 1 built for X, sent under Y's connection ID.
    let (_, mut moved) = genuine_message_1(&a, &x);
    moved.connection_id = ConnectionIdBytes(y.connection_id);
    assert_refused(
        &post_json(&net.http, &b.p2p(HANDSHAKE), &moved).await,
        403,
        "handshake_failed",
    );
    // Message 1 built for Y, with the proof of X's link key.
    let (_, borrowed) = message_1(
        &secret,
        &public,
        &y.target_static(),
        &y.context(&a.config().suites),
        x.link(),
    );
    assert_refused(
        &post_json(&net.http, &b.p2p(HANDSHAKE), &borrowed).await,
        403,
        "handshake_failed",
    );
    assert!(b.sessions().all().is_empty());

    // Both introductions still work as made.
    for intro in [&y, &x] {
        assert_eq!(token_state(&b, &intro.connection_id).await, TokenState::Ok);
        let (pending, request) = genuine_message_1(&a, intro);
        let answer = post_json(&net.http, &b.p2p(HANDSHAKE), &request).await;
        finish_by_hand(pending, &answer, net.now(), a.config().epoch);
    }
    assert_eq!(session_count(&b), 2);
}

// 12 ---------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frames_are_refused_and_good_ones_accepted_once() {
    let net = Network::start().await;
    let a = net.node("a").await;
    let b = net.node("b").await;
    a.connect(b.id()).await.unwrap();
    let live = a.sessions().with_peer(&b.id()).unwrap();
    let on_b = b.sessions().with_peer(&a.id()).unwrap();
    let url = b.p2p(PING);
    let seal = || live.session.seal(&ping_payload(), net.now()).unwrap();
    let received = || on_b.session.frames_received();

    // Tampered: one bit of the ciphertext, or of the header.
    let good = seal();
    for at in [good.len() - 1, 40, 25] {
        let mut tampered = good.clone();
        tampered[at] ^= 0x01;
        let answer = post_bytes(&net.http, &url, tampered).await;
        assert_refused(&answer, 400, "bad_frame");
        assert!(answer.message().contains("authenticate"), "{answer:?}");
    }
    // Truncated: by one byte, and below the header.
    let answer = post_bytes(&net.http, &url, good[..good.len() - 1].to_vec()).await;
    assert_refused(&answer, 400, "bad_frame");
    let answer = post_bytes(&net.http, &url, good[..20].to_vec()).await;
    assert_refused(&answer, 400, "bad_frame");
    assert!(answer.message().contains("truncated"), "{answer:?}");
    // None of the forgeries poisoned the replay window: the genuine frame
    // with the same seq is accepted, and answered with a valid pong.
    let before = received();
    let answer = post_bytes(&net.http, &url, good.clone()).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(received(), before + 1);
    let pong = answer.body.clone();
    assert_eq!(
        &answer_payload(&live.session, PING, &good, &pong, net.now())[..4],
        b"pong"
    );
    // Replayed.
    let answer = post_bytes(&net.http, &url, good.clone()).await;
    assert_refused(&answer, 400, "bad_frame");
    assert!(answer.message().contains("replay"), "{answer:?}");
    // Reflected: B's own pong sent back to B.
    assert_refused(&post_bytes(&net.http, &url, pong).await, 400, "bad_frame");

    // An unknown session ID.
    let mut unknown = seal();
    unknown[2..18].copy_from_slice(&random16());
    assert_refused(
        &post_bytes(&net.http, &url, unknown).await,
        404,
        "unknown_session",
    );
    // Suite downgrade: the header names AES-256-GCM on a ChaCha20 session.
    let mut downgraded = seal();
    assert_eq!(downgraded[1], Suite::ChaCha20Poly1305.id());
    downgraded[1] = Suite::Aes256Gcm.id();
    let answer = post_bytes(&net.http, &url, downgraded).await;
    assert_refused(&answer, 400, "bad_frame");
    assert!(answer.message().contains("suite"), "{answer:?}");
    // A suite that is not on the allowlist.
    let mut unknown_suite = seal();
    unknown_suite[1] = 0x7f;
    assert_refused(
        &post_bytes(&net.http, &url, unknown_suite).await,
        400,
        "bad_frame",
    );

    // Reordered within the window: both accepted, once.
    let first = seal();
    let second = seal();
    for frame in [&second, &first] {
        let answer = post_bytes(&net.http, &url, frame.clone()).await;
        assert_eq!(answer.status, 200, "{answer:?}");
    }
    for frame in [&first, &second] {
        assert_refused(
            &post_bytes(&net.http, &url, frame.clone()).await,
            400,
            "bad_frame",
        );
    }

    assert_eq!(session_count(&b), 1);
    assert_eq!(b.sessions().with_peer(&a.id()).unwrap().id(), live.id());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_from_an_epoch_past_its_grace_is_refused() {
    let net = Network::start().await;
    let epoch = EpochConfig {
        epoch_len_s: 10,
        grace_s: 5,
        replay_window: 1024,
    };
    let a = net.node_with("a", |c| c.epoch = epoch).await;
    let b = net.node_with("b", |c| c.epoch = epoch).await;
    a.connect(b.id()).await.unwrap();
    let live = a.sessions().with_peer(&b.id()).unwrap();
    let on_b = b.sessions().with_peer(&a.id()).unwrap();
    let url = b.p2p(PING);
    let epoch_of = |frame: &[u8]| FrameHeader::parse(frame).unwrap().0.epoch;

    let late = live.session.seal(&ping_payload(), net.now()).unwrap();
    let too_late = live.session.seal(&ping_payload(), net.now()).unwrap();
    assert_eq!((epoch_of(&late), epoch_of(&too_late)), (0, 0));

    // A forged frame announcing epoch 1 does not move B.
    let mut forged = live.session.seal(&ping_payload(), net.now()).unwrap();
    forged[18..22].copy_from_slice(&1u32.to_be_bytes());
    assert_refused(&post_bytes(&net.http, &url, forged).await, 400, "bad_frame");
    assert_eq!(on_b.session.recv_epoch(), 0);

    // Past the epoch: A seals in epoch 1, and B follows an authentic frame.
    net.clock.advance(11);
    let next = live.session.seal(&ping_payload(), net.now()).unwrap();
    assert_eq!(epoch_of(&next), 1);
    let answer = post_bytes(&net.http, &url, next).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(on_b.session.recv_epoch(), 1);
    // Within the grace period, a late epoch-0 frame is still accepted.
    let answer = post_bytes(&net.http, &url, late.clone()).await;
    assert_eq!(answer.status, 200, "{answer:?}");

    // Past the grace period, the epoch-0 key is gone.
    net.clock.advance(6);
    let answer = post_bytes(&net.http, &url, too_late).await;
    assert_refused(&answer, 400, "bad_frame");
    assert!(answer.message().contains("epoch"), "{answer:?}");
    assert_refused(&post_bytes(&net.http, &url, late).await, 400, "bad_frame");

    // The session itself goes on in epoch 1.
    let answer = post_bytes(
        &net.http,
        &url,
        live.session.seal(&ping_payload(), net.now()).unwrap(),
    )
    .await;
    assert_eq!(answer.status, 200, "{answer:?}");
    a.ping(&b.id()).await.unwrap();
    assert_eq!(session_count(&b), 1);
}

// 13 ---------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_or_replayed_introduction_request_is_refused() {
    let net = Network::start().await;
    let a = net.node("a").await;
    let b = net.node("b").await;
    let url = net.directory(REQUEST_CONNECTION);
    let now = net.now();
    let genuine = signed_request(&a, &b.id(), now);
    let nonce = genuine.nonce.0;
    let message = connection_request_message(&a.id(), &b.id(), &nonce, now);

    // Signed by someone else.
    let forged = ConnectionRequest {
        signature: SignatureBytes(
            stranger_identity().sign(SignatureContext::ConnectionRequest, &message),
        ),
        ..genuine.clone()
    };
    assert_refused(
        &post_json(&net.http, &url, &forged).await,
        400,
        "bad_signature",
    );
    // A's signature, but under another label.
    let relabelled = ConnectionRequest {
        signature: SignatureBytes(a.keys().sign(NodeSignature::ReachabilityProof, &message)),
        ..genuine.clone()
    };
    assert_refused(
        &post_json(&net.http, &url, &relabelled).await,
        400,
        "bad_signature",
    );
    // A's signature over other fields.
    let other_nonce = ConnectionRequest {
        nonce: NonceBytes(random16()),
        ..genuine.clone()
    };
    assert_refused(
        &post_json(&net.http, &url, &other_nonce).await,
        400,
        "bad_signature",
    );
    // Correctly signed, but stale.
    let stale = signed_request(&a, &b.id(), now.minus(301));
    assert_refused(
        &post_json(&net.http, &url, &stale).await,
        400,
        "stale_request",
    );

    // The genuine request works once; the same signed body again does not.
    let answer = post_json(&net.http, &url, &genuine).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    let replay = post_json(&net.http, &url, &genuine).await;
    assert_refused(&replay, 409, "nonce_replay");
    assert!(b.sessions().all().is_empty());
}

// 14 ---------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn introductions_to_unknown_or_inactive_targets_are_refused() {
    let net = Network::start().await;
    let a = net.node("a").await;
    let b = net.node("b").await;
    assert_directory_refused(
        request_to(&a, stranger_identity().node_id(), net.now()).await,
        404,
        "unknown_node",
    );

    // B is silent past the active window (900 s); A stays fresh.
    net.clock.advance(901);
    a.directory()
        .register(
            a.outbound(),
            a.store(),
            a.crypto(),
            &a.config().public_url,
            net.now(),
            a.config().record_lifetime_s,
        )
        .await
        .unwrap();
    assert_directory_refused(
        request_to(&a, b.id(), net.now()).await,
        409,
        "target_inactive",
    );
    assert!(b.sessions().all().is_empty());

    // Once B is heard from again, the introduction works.
    b.directory()
        .register(
            b.outbound(),
            b.store(),
            b.crypto(),
            &b.config().public_url,
            net.now(),
            b.config().record_lifetime_s,
        )
        .await
        .unwrap();
    a.connect(b.id()).await.unwrap();
    assert_eq!(session_count(&b), 1);
}

// 15 ---------------------------------------------------------------------

/// How a fake node answers the reachability challenge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FakeMode {
    /// With a valid proof.
    Answer,
    /// 404.
    NotFound,
    /// A redirect to `/proof`, where a valid proof would be served.
    Redirect(StatusCode),
}

/// A server that holds a node key and answers challenges as told.
#[derive(Clone)]
struct FakeNode {
    key: Arc<IdentityKeypair>,
    fingerprint: String,
    url: Arc<OnceLock<String>>,
    mode: Arc<Mutex<FakeMode>>,
    last_challenge: Arc<Mutex<Option<ReachabilityChallenge>>>,
    challenges: Arc<AtomicUsize>,
    proofs_served: Arc<AtomicUsize>,
}

impl FakeNode {
    fn new(fingerprint: String, mode: FakeMode) -> FakeNode {
        FakeNode {
            key: Arc::new(stranger_identity()),
            fingerprint,
            url: Arc::new(OnceLock::new()),
            mode: Arc::new(Mutex::new(mode)),
            last_challenge: Arc::new(Mutex::new(None)),
            challenges: Arc::new(AtomicUsize::new(0)),
            proofs_served: Arc::new(AtomicUsize::new(0)),
        }
    }

    fn set_mode(&self, mode: FakeMode) {
        *self.mode.lock().unwrap() = mode;
    }

    /// A valid proof for the last challenge at this server's URL.
    fn proof(&self) -> ReachabilityProof {
        self.proofs_served.fetch_add(1, Ordering::SeqCst);
        let body = self.last_challenge.lock().unwrap().clone().unwrap();
        let message = reachability_message(
            &body.challenge.0,
            &self.key.node_id(),
            &self.fingerprint,
            self.url.get().unwrap(),
        );
        ReachabilityProof {
            node_id: self.key.node_id(),
            signature: SignatureBytes(self.key.sign(SignatureContext::ReachabilityProof, &message)),
        }
    }

    /// Serves on 127.0.0.1; returns its origin.
    async fn serve(&self) -> String {
        async fn challenge(
            State(fake): State<FakeNode>,
            Json(body): Json<ReachabilityChallenge>,
        ) -> Response {
            fake.challenges.fetch_add(1, Ordering::SeqCst);
            *fake.last_challenge.lock().unwrap() = Some(body);
            let mode = *fake.mode.lock().unwrap();
            match mode {
                FakeMode::Answer => Json(fake.proof()).into_response(),
                FakeMode::NotFound => StatusCode::NOT_FOUND.into_response(),
                FakeMode::Redirect(status) => {
                    (status, [(header::LOCATION, "/proof")]).into_response()
                }
            }
        }
        async fn proof(State(fake): State<FakeNode>) -> Json<ReachabilityProof> {
            Json(fake.proof())
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        self.url.set(url.clone()).unwrap();
        let app = Router::new()
            .route("/api/v3/reachability", post(challenge))
            .route("/proof", any(proof))
            .with_state(self.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        url
    }

    fn register_body(&self, url: &str, seq: u64, now: UnixTime) -> RegisterRequest {
        let record = NodeRecord::sign(
            &self.key,
            AgreementSecret::from_secret_bytes(random32()).public(),
            ApiUrl::parse_origin(url).unwrap(),
            seq,
            now,
            now.plus(3600),
        );
        RegisterRequest {
            record: RecordBytes(record.as_bytes().to_vec()),
        }
    }
}

/// A loopback port nothing listens on.
async fn dead_port() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registering_a_url_that_does_not_answer_the_challenge_is_refused() {
    let net = Network::start().await;
    let register = net.directory(REGISTER);
    let fake = FakeNode::new(net.fingerprint.to_string(), FakeMode::NotFound);
    let fake_url = fake.serve().await;
    let lookup = net.directory(&format!("/api/v3/nodes/{}", fake.key.node_id()));

    // Nothing listens there.
    let dead = format!("http://{}", dead_port().await);
    let answer = post_json(
        &net.http,
        &register,
        &fake.register_body(&dead, 1, net.now()),
    )
    .await;
    assert_refused(&answer, 400, "url_unreachable");

    // A live server that answers 404.
    let answer = post_json(
        &net.http,
        &register,
        &fake.register_body(&fake_url, 2, net.now()),
    )
    .await;
    assert_refused(&answer, 400, "url_unreachable");
    assert_eq!(fake.challenges.load(Ordering::SeqCst), 1);

    // A redirect to where a valid proof waits is not followed.
    for status in [StatusCode::FOUND, StatusCode::TEMPORARY_REDIRECT] {
        fake.set_mode(FakeMode::Redirect(status));
        let answer = post_json(
            &net.http,
            &register,
            &fake.register_body(&fake_url, 3, net.now()),
        )
        .await;
        assert_refused(&answer, 400, "url_unreachable");
    }
    assert_eq!(fake.challenges.load(Ordering::SeqCst), 3);
    assert_eq!(fake.proofs_served.load(Ordering::SeqCst), 0);
    assert_refused(&get(&net.http, &lookup, None).await, 404, "unknown_node");

    // Control: the same server answering the challenge itself registers.
    fake.set_mode(FakeMode::Answer);
    let answer = post_json(
        &net.http,
        &register,
        &fake.register_body(&fake_url, 4, net.now()),
    )
    .await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(get(&net.http, &lookup, None).await.status, 200);
}

// 16 ---------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_without_the_danger_flag_refuses_private_urls() {
    let net = Network::start_with(|c| c.danger_allow_private_addresses = false).await;
    let register = net.directory(REGISTER);
    // A server that would answer, to see that nobody calls it.
    let fake = FakeNode::new(net.fingerprint.to_string(), FakeMode::Answer);
    let fake_url = fake.serve().await;
    let port = fake_url.rsplit(':').next().unwrap().to_owned();

    let cases = [
        (fake_url.clone(), "url_not_https"),
        (format!("https://127.0.0.1:{port}"), "url_not_global"),
        (format!("https://localhost:{port}"), "url_not_global"),
        ("https://10.0.0.1".to_owned(), "url_not_global"),
        ("https://169.254.169.254".to_owned(), "url_not_global"),
        ("https://[::1]".to_owned(), "url_not_global"),
        ("https://[::ffff:127.0.0.1]".to_owned(), "url_not_global"),
    ];
    for (seq, (url, code)) in (1..).zip(cases) {
        let answer = post_json(
            &net.http,
            &register,
            &fake.register_body(&url, seq, net.now()),
        )
        .await;
        assert_refused(&answer, 400, code);
    }
    assert_eq!(fake.challenges.load(Ordering::SeqCst), 0);
    let health = get(&net.http, &net.directory("/api/v3/health"), None).await;
    assert_eq!(health.json["nodes"], json!({ "active": 0, "inactive": 0 }));
}

// 17 ---------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_pinned_to_another_directory_key_never_registers() {
    let net = Network::start().await;
    let wrong = stranger_identity().public().directory_fingerprint();
    let node = net
        .spawn_node("pinned-elsewhere", |c| c.directory_key = Some(wrong))
        .await;

    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(!node.is_registered());
    match node.directory().pin(node.outbound(), node.store()).await {
        Err(NodeError::DirectoryKeyMismatch { pinned, found }) => {
            assert_eq!(pinned, wrong.to_string());
            assert_eq!(found, net.fingerprint.to_string());
        }
        other => panic!("expected DirectoryKeyMismatch, got {other:?}"),
    }
    assert!(node.directory().pinned().is_none());
    assert!(node
        .store()
        .setting("directory_key")
        .await
        .unwrap()
        .is_none());
    let lookup = net.directory(&format!("/api/v3/nodes/{}", node.id()));
    assert_refused(&get(&net.http, &lookup, None).await, 404, "unknown_node");
    assert!(!node.is_registered());
}

// 18 ---------------------------------------------------------------------

/// A node A, and a node B that accepts introductions from known peers only.
async fn stranger_and_known_peers_node(net: &Network) -> (TestNode, TestNode) {
    let a = net.node("a").await;
    let b = net
        .node_with("b", |c| {
            c.introduction_policy = IntroductionPolicy::KnownPeers
        })
        .await;
    (a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_known_peers_node_refuses_introductions_from_strangers() {
    let net = Network::start().await;
    let (a, b) = stranger_and_known_peers_node(&net).await;

    assert_directory_refused(a.connect(b.id()).await, 502, "target_unreachable");
    assert!(a.sessions().all().is_empty());
    assert!(b.sessions().all().is_empty());
    assert!(!b.store().is_known_peer(&a.id()).await.unwrap());

    // Once B has connected to A, A is a known peer.
    b.connect(a.id()).await.unwrap();
    let connected = a.connect(b.id()).await.unwrap();
    assert_eq!(
        b.sessions().with_peer(&a.id()).unwrap().id(),
        connected.session_id
    );
    b.ping(&a.id()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_peers_does_not_make_a_stranger_a_known_peer() {
    let net = Network::start().await;
    let (a, b) = stranger_and_known_peers_node(&net).await;

    // B's owner runs `openred peers`: A is listed, its record verified and
    // its seq remembered (rollback protection for every record seen).
    let listed = get(
        &net.http,
        &b.admin("/admin/v1/peers"),
        Some(&b.admin_token()),
    )
    .await;
    assert_eq!(
        listed.status,
        200,
        "{}",
        String::from_utf8_lossy(&listed.body)
    );
    let a_id = a.id().to_string();
    let entry = listed
        .json
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["node_id"] == a_id.as_str())
        .expect("A is listed");
    assert_eq!(entry["verified"], true);
    let seen = b
        .store()
        .peer(&a.id())
        .await
        .unwrap()
        .expect("A's record is kept");
    assert_eq!(Some(seen.record().seq), entry["seq"].as_u64());

    // Listed is not known: A's introduction is still refused.
    assert!(!b.store().is_known_peer(&a.id()).await.unwrap());
    assert_directory_refused(a.connect(b.id()).await, 502, "target_unreachable");
    assert!(a.sessions().all().is_empty());
    assert!(b.sessions().all().is_empty());

    // Once B's owner adds A, A's introduction goes through.
    assert!(b.store().add_known_peer(&seen, net.now()).await.unwrap());
    a.connect(b.id()).await.unwrap();
    a.ping(&b.id()).await.unwrap();
}

// 19 ---------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_restart_old_sessions_are_gone_and_a_new_handshake_works() {
    let net = Network::start().await;
    let a = net.node("a").await;
    let b = net.node("b").await;
    let b_id = b.id();
    let first = a.connect(b_id).await.unwrap();
    let old = a.sessions().with_peer(&b_id).unwrap();

    let b = net.restart(b).await;
    assert_eq!(b.id(), b_id);
    assert!(b.sessions().all().is_empty());
    // A frame of the old session, at B's new address: no such session.
    let frame = old.session.seal(&ping_payload(), net.now()).unwrap();
    assert_refused(
        &post_bytes(&net.http, &b.p2p(PING), frame).await,
        404,
        "unknown_session",
    );
    // A still holds the old session (at B's old address): it fails.
    assert!(a.ping(&b_id).await.is_err());

    let second = a.connect(b_id).await.unwrap();
    assert_ne!(second.session_id, first.session_id);
    assert_eq!(
        b.sessions().with_peer(&a.id()).unwrap().id(),
        second.session_id
    );
    assert_eq!(session_count(&b), 1);
    a.ping(&b_id).await.unwrap();
    b.ping(&a.id()).await.unwrap();
}

// Concurrency ------------------------------------------------------------

/// Eight valid message 1s for one connection ID at once: the burn lets
/// exactly one through.
async fn race_handshakes(net: &Network, a: &TestNode, b: &TestNode) -> Vec<Answer> {
    let intro = introduce(a, b.id(), net.now()).await;
    let mut attempts = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let (_, request) = genuine_message_1(a, &intro);
        let http = net.http.clone();
        let url = b.p2p(HANDSHAKE);
        attempts.spawn(async move { post_json(&http, &url, &request).await });
    }
    let answers = attempts.join_all().await;
    let won = answers.iter().filter(|a| a.status == 200).count();
    assert_eq!(won, 1, "{answers:?}");
    answers.into_iter().filter(|a| a.status != 200).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_handshakes_on_one_connection_id_have_exactly_one_winner() {
    let net = Network::start().await;
    let a = net.node("a").await;
    let b = net.node("b").await;
    for round in 1..=3 {
        for answer in race_handshakes(&net, &a, &b).await {
            // Every loser is refused, and told the token was used.
            assert!(
                matches!((answer.status, answer.code()), (409, Some("token_used"))),
                "{answer:?}"
            );
        }
        assert_eq!(session_count(&b), round);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handshake_losing_the_race_is_told_the_token_was_used() {
    let net = Network::start().await;
    let a = net.node("a").await;
    let b = net.node("b").await;
    for _ in 0..5 {
        for answer in race_handshakes(&net, &a, &b).await {
            assert_refused(&answer, 409, "token_used");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_introductions_to_one_target_all_succeed() {
    let net = Network::start().await;
    let a = net.node("a").await;
    let b = net.node("b").await;
    let c = net.node("c").await;

    let mut requests = tokio::task::JoinSet::new();
    for i in 0..24 {
        let from = if i % 2 == 0 {
            a.state.clone()
        } else {
            c.state.clone()
        };
        let target = b.id();
        let now = net.now();
        requests.spawn(async move { request_to(&from, target, now).await });
    }
    let results = requests.join_all().await;
    let failed: Vec<_> = results.iter().filter(|r| r.is_err()).collect();
    assert!(
        failed.is_empty(),
        "{} of {} introductions failed: {failed:?}",
        failed.len(),
        results.len()
    );
    for token in results.iter().flatten() {
        assert_eq!(
            token_state(&b, &token.connection_id()).await,
            TokenState::Ok
        );
    }
}

/// The root cause of the failure above, on the node's store alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_store_accepts_concurrent_tokens_and_seq_reservations() {
    let dir = tempfile::tempdir().unwrap();
    let store = NodeStore::open(&dir.path().join("node.db"), &[7; 32])
        .await
        .unwrap();
    let mut puts = tokio::task::JoinSet::new();
    let initiator = IdentityKeypair::from_secret_bytes(&[1; 32]);
    let record = NodeRecord::sign(
        &initiator,
        AgreementSecret::from_secret_bytes([2; 32]).public(),
        ApiUrl::parse_origin("http://127.0.0.1:9").unwrap(),
        1,
        UnixTime(1),
        UnixTime(1000),
    );
    for i in 0..24u8 {
        let store = store.clone();
        let token = StoredToken {
            initiator: initiator.node_id(),
            expires_at: UnixTime(100),
            initiator_record: record.clone(),
            link_public: [i; 32],
        };
        puts.spawn(async move {
            store
                .accept_token(&[i; 16], &token, UnixTime(5))
                .await
                .map_err(|e| e.to_string())
        });
    }
    for result in puts.join_all().await {
        assert_eq!(result, Ok(TokenState::Ok));
    }
    let mut seqs = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let store = store.clone();
        seqs.spawn(async move {
            store
                .next_record_seq(UnixTime(5))
                .await
                .map_err(|e| e.to_string())
        });
    }
    let mut seqs: Vec<u64> = seqs
        .join_all()
        .await
        .into_iter()
        .map(|r| r.unwrap())
        .collect();
    seqs.sort_unstable();
    seqs.dedup();
    assert_eq!(seqs.len(), 8);
}

/// Every byte of the files of a node's database (the WAL included).
fn database_bytes(node: &NodeState) -> Vec<u8> {
    let mut all = Vec::new();
    for entry in std::fs::read_dir(node.data_dir().join("state")).unwrap() {
        let path = entry.unwrap().path();
        all.extend(std::fs::read(&path).unwrap());
    }
    all
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_never_holds_a_token_or_a_key_in_clear() {
    let net = Network::start().await;
    let a = net.node("a").await;
    let b = net.node("b").await;

    // token_b waits in B's store: what it carries must be sealed.
    let intro = introduce(&a, b.id(), net.now()).await;
    assert_eq!(token_state(&b, &intro.connection_id).await, TokenState::Ok);
    let pushed = net.pushed_token(&intro.connection_id);
    let keys = b.keys();
    let storage_key = keys.storage_key(openred_node::agent::master_key::Purpose::NodeDatabase);
    let secrets: [(&str, &[u8]); 4] = [
        (
            "the link key's public half",
            &intro.opened.link.verifying_bytes(),
        ),
        ("the token as pushed", &pushed),
        ("the storage key", &storage_key[..]),
        ("the agreement secret", &keys.agreement_secret()[..]),
    ];
    let bytes = database_bytes(&b);
    assert!(
        contains(&bytes, &intro.connection_id),
        "the scan reads the token's row"
    );
    for (what, secret) in &secrets {
        assert!(
            !contains(&bytes, secret),
            "{what} is in B's database in clear"
        );
    }

    // And after the handshake and a ping, on both sides.
    a.connect(b.id()).await.unwrap();
    for node in [&a, &b] {
        let bytes = database_bytes(node);
        let keys = node.keys();
        assert!(!contains(&bytes, &keys.agreement_secret()[..]));
        assert!(!contains(
            &bytes,
            &keys.storage_key(openred_node::agent::master_key::Purpose::NodeDatabase)[..]
        ));
    }
}
