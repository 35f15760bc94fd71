//! Session renewal: a fresh handshake between two nodes, authorised by
//! their live session and carried in its frames, with the directory down;
//! and what an attacker can and cannot do with a renewal.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod in_process;

use in_process::*;
use openred_core::handshake::{self, Authority, HandshakeContext, InitiatorHandshake};
use openred_core::session::Session;
use openred_core::token::TOKEN_CLOCK_SKEW_S;
use openred_core::wire::{b64_decode, HandshakeRequest, TokenPush};
use openred_node::peer::lifecycle::renewal_due;
use openred_node::{NodeConfig, NodeState};

const RENEW: &str = "/p2p/renew";
const PING: &str = "/p2p/ping";

/// Epochs of 300 s, sessions of at most 1200 s: the initiator renews from
/// an age of 1050 s, the responder from 1125 s.
fn short_sessions(config: &mut NodeConfig) {
    config.epoch.epoch_len_s = 300;
    config.session_max_age_s = 1200;
}

fn current(node: &NodeState, peer: &TestNode) -> openred_core::session::SessionId {
    node.sessions()
        .with_peer(&peer.id())
        .expect("a session with the peer")
        .id()
}

async fn ping_both_ways(a: &TestNode, b: &TestNode) {
    a.ping(&b.id()).await.expect("a pings b");
    b.ping(&a.id()).await.expect("b pings a");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_renew_without_the_directory_and_frames_keep_flowing() {
    let net = Network::start().await;
    let a = net.node_with("a", short_sessions).await;
    let b = net.node_with("b", short_sessions).await;
    let c = net.node_with("c", short_sessions).await;
    a.connect(b.id()).await.unwrap();
    let first = current(&a, &b);
    let first_at_a = a.sessions().get(&first).unwrap();

    net.stop_directory().await;
    // Without the directory, a node with no session reaches nobody.
    assert!(matches!(
        a.connect(c.id()).await,
        Err(openred_node::error::NodeError::Outbound(_))
    ));

    // Up to t = 900 s nothing is due, and frames flow across three epochs.
    for _ in 0..3 {
        net.clock.advance(300);
        ping_both_ways(&a, &b).await;
        assert_eq!(a.state.run_lifecycle().await.renewed, 0);
        assert_eq!(b.state.run_lifecycle().await.renewed, 0);
    }
    // t = 1060 s: A, the handshake's initiator, renews.
    net.clock.advance(160);
    a.ping(&b.id()).await.unwrap();
    let report = a.state.run_lifecycle().await;
    assert_eq!((report.renewed, report.failed), (1, 0), "{report:?}");
    let second = current(&a, &b);
    assert_ne!(second, first);
    assert_eq!(current(&b, &a), second, "A's first frame confirmed it at B");
    assert_eq!(
        b.state.run_lifecycle().await.renewed,
        0,
        "B's session is young"
    );
    ping_both_ways(&a, &b).await;

    // t = 1260 s: the first session is past its maximum age on both sides.
    net.clock.advance(200);
    assert_eq!(a.state.run_lifecycle().await.ended, 1);
    assert_eq!(b.state.run_lifecycle().await.ended, 1);
    assert!(a.sessions().get(&first).is_none() && b.sessions().get(&first).is_none());
    ping_both_ways(&a, &b).await;
    let stale = first_at_a.session.seal(&ping_payload(), net.now()).unwrap();
    assert_refused(
        &post_bytes(&net.http, &b.p2p(PING), stale).await,
        404,
        "unknown_session",
    );

    // Now only B uses the session, and only B runs its lifecycle: the
    // responder renews too, at t = 2190 s (age 1130 s).
    for step in [300, 300, 300, 30] {
        net.clock.advance(step);
        b.ping(&a.id()).await.unwrap();
    }
    let report = b.state.run_lifecycle().await;
    assert_eq!((report.renewed, report.failed), (1, 0), "{report:?}");
    let third = current(&b, &a);
    assert_ne!(third, second);
    assert_eq!(current(&a, &b), third);
    ping_both_ways(&a, &b).await;

    // And the directory never came back.
    assert!(a.connect(c.id()).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_session_is_not_renewed_and_ends_at_its_maximum_age() {
    let net = Network::start().await;
    let a = net.node_with("a", short_sessions).await;
    let b = net.node_with("b", short_sessions).await;
    a.connect(b.id()).await.unwrap();
    let live = a.sessions().with_peer(&b.id()).unwrap();
    // Idle since the first ping: not renewed, and ended at its maximum age.
    net.clock.advance(1100);
    assert_eq!(a.state.run_lifecycle().await.renewed, 0);
    net.clock.advance(100);
    assert_eq!(a.state.run_lifecycle().await.ended, 1);
    // The rule itself: in use (a frame within the last 150 s), it is due
    // from an age of 1050 s; idle longer, or at its maximum age, it is not.
    let start = live.established_at;
    assert!(!renewal_due(&live, start.plus(1049), 1200));
    live.touch(start.plus(1000));
    assert!(renewal_due(&live, start.plus(1050), 1200));
    assert!(!renewal_due(&live, start.plus(1151), 1200));
    live.touch(start.plus(1190));
    assert!(!renewal_due(&live, start.plus(1200), 1200));
    assert!(matches!(
        a.ping(&b.id()).await,
        Err(openred_node::error::NodeError::NoSession(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_past_its_maximum_age_authorises_no_renewal() {
    let net = Network::start().await;
    let a = net.node_with("a", short_sessions).await;
    let b = net.node_with("b", short_sessions).await;
    a.connect(b.id()).await.unwrap();
    let live = a.sessions().with_peer(&b.id()).unwrap();
    // B has not run its lifecycle yet, so the session is still in its
    // table; it must refuse to renew it anyway.
    net.clock.advance(1200);
    assert_peer_refused(a.renew(&live).await.map(|s| s.id()), 409, "session_expired");
}

/// A handshake with B done by hand as A (with A's keys read from disk):
/// the test holds A's side of the session.
async fn session_by_hand(net: &Network, a: &TestNode, b: &TestNode) -> (Session, [u8; 32]) {
    let intro = introduce(a, b.id(), net.now()).await;
    let (pending, request) = genuine_message_1(a, &intro);
    let answer = post_json(&net.http, &b.p2p("/p2p/handshake"), &request).await;
    let session = finish_by_hand(pending, &answer, net.now(), a.config().epoch);
    let hash = b
        .sessions()
        .get(&session.session_id())
        .expect("B installed the session")
        .handshake_hash;
    (session, hash)
}

/// A renewal's message 1 from the static key `(secret, public)`, bound to
/// the session whose handshake hash is `previous`, as the plaintext of a
/// renewal frame.
fn renewal_request(
    a: &TestNode,
    b: &TestNode,
    (secret, public): ([u8; 32], [u8; 32]),
    previous: [u8; 32],
) -> (InitiatorHandshake, Vec<u8>) {
    let context = HandshakeContext {
        connection_id: random16(),
        initiator: a.id(),
        target: b.id(),
        authority: Authority::Renewal { previous },
        offer: a.config().suites.clone(),
    };
    let b_static = b.keys().agreement_public().0;
    let (pending, message) =
        handshake::initiate(&secret, &public, &b_static, &context, random32(), |_| {
            [0; 64]
        })
        .unwrap();
    let request = HandshakeRequest {
        connection_id: openred_core::wire::ConnectionIdBytes(context.connection_id),
        suites: context.offer.iter().map(|s| s.id()).collect(),
        message: openred_core::wire::NoiseMessage(message),
    };
    let plaintext = serde_json::to_vec(&request).unwrap();
    (
        pending,
        openred_node::peer::frames::labelled(RENEW, false, &plaintext),
    )
}

fn a_static(a: &TestNode) -> ([u8; 32], [u8; 32]) {
    let keys = a.keys();
    (*keys.agreement_secret(), keys.agreement_public().0)
}

/// Posts a renewal frame and, on success, finishes the handshake: A's side
/// of the renewed session.
async fn renew_by_hand(
    net: &Network,
    url: &str,
    session: &Session,
    pending: InitiatorHandshake,
    plaintext: &[u8],
) -> Session {
    let frame = session.seal(plaintext, net.now()).unwrap();
    let answer = post_bytes(&net.http, url, frame.clone()).await;
    assert_eq!(
        answer.status,
        200,
        "{}",
        String::from_utf8_lossy(&answer.body)
    );
    let reply = answer_payload(session, RENEW, &frame, &answer.body, net.now());
    let reply: serde_json::Value = serde_json::from_slice(&reply).unwrap();
    let message = b64_decode(reply["message"].as_str().unwrap()).unwrap();
    let result = pending.finish(&message).expect("message 2 authenticates");
    let renewed = Session::new(
        openred_core::session::Role::Initiator,
        result.suite,
        &result.handshake_hash,
        &result.i2r,
        &result.r2i,
        net.now(),
        openred_core::session::EpochConfig::default(),
    );
    assert_eq!(
        reply["session_id"].as_str(),
        Some(renewed.session_id().to_string().as_str())
    );
    renewed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewals_refuse_strangers_replays_other_sessions_and_repetition() {
    let net = Network::start().await;
    let a = net.node("a").await;
    let b = net.node("b").await;
    let (session, hash) = session_by_hand(&net, &a, &b).await;
    let url = b.p2p(RENEW);
    let before = b.sessions().all().len();

    // Not a frame at all; a frame of no session B knows.
    let (_, plain) = renewal_request(&a, &b, a_static(&a), hash);
    assert_refused(
        &post_bytes(&net.http, &url, plain.clone()).await,
        400,
        "bad_frame",
    );
    let mut unknown = session.seal(&plain, net.now()).unwrap();
    unknown[2..18].copy_from_slice(&random16());
    assert_refused(
        &post_bytes(&net.http, &url, unknown).await,
        404,
        "unknown_session",
    );

    // A thief holding the session's keys but not A's static key.
    let (_, forged) = renewal_request(&a, &b, stranger_static(), hash);
    let frame = session.seal(&forged, net.now()).unwrap();
    assert_refused(
        &post_bytes(&net.http, &url, frame).await,
        403,
        "handshake_failed",
    );
    assert_eq!(
        b.sessions().all().len(),
        before,
        "a refused renewal leaves nothing"
    );

    // The genuine renewal, answered inside the old session.
    let (pending, genuine) = renewal_request(&a, &b, a_static(&a), hash);
    let first = renew_by_hand(&net, &url, &session, pending, &genuine).await;
    assert!(b.sessions().get(&first.session_id()).is_some());
    assert_eq!(b.sessions().all().len(), before + 1);

    // The same message 1 in a fresh frame (a thief of the session keys
    // replaying A's request; the same frame again is the replay window's
    // job): B answers a renewal once.
    let replayed = session.seal(&genuine, net.now()).unwrap();
    assert_refused(
        &post_bytes(&net.http, &url, replayed).await,
        409,
        "renewal_replayed",
    );
    // Message 1 bound to another session than the one carrying it.
    let (_, elsewhere) = renewal_request(&a, &b, a_static(&a), random32());
    let frame = session.seal(&elsewhere, net.now()).unwrap();
    assert_refused(
        &post_bytes(&net.http, &url, frame).await,
        403,
        "handshake_failed",
    );
    // A good frame, sealed for another route.
    let frame = session.seal(&ping_payload(), net.now()).unwrap();
    assert_refused(
        &post_bytes(&net.http, &url, frame).await,
        400,
        "wrong_route",
    );
    // Garbage inside a good frame.
    let garbage = openred_node::peer::frames::labelled(RENEW, false, b"not a renewal");
    let frame = session.seal(&garbage, net.now()).unwrap();
    assert_refused(
        &post_bytes(&net.http, &url, frame).await,
        400,
        "bad_renewal",
    );

    // Failures counted for nothing: two more renewals (retries after lost
    // answers) are answered, then the session authorises no more.
    let mut last = first;
    for _ in 0..2 {
        let (pending, again) = renewal_request(&a, &b, a_static(&a), hash);
        last = renew_by_hand(&net, &url, &session, pending, &again).await;
    }
    let (_, more) = renewal_request(&a, &b, a_static(&a), hash);
    let frame = session.seal(&more, net.now()).unwrap();
    assert_refused(
        &post_bytes(&net.http, &url, frame).await,
        429,
        "renewal_limit",
    );
    assert!(b.sessions().all().len() <= openred_node::peer::sessions::MAX_SESSIONS_PER_PEER);

    // A's first frame on the last renewed session makes it B's current
    // one; the old session then authorises nothing.
    let ping = last.seal(&ping_payload(), net.now()).unwrap();
    assert_eq!(post_bytes(&net.http, &b.p2p(PING), ping).await.status, 200);
    assert_eq!(current(&b, &a), last.session_id());
    let b_side = b.sessions().get(&last.session_id()).unwrap();
    let (_, stale) = renewal_request(&a, &b, a_static(&a), hash);
    let frame = session.seal(&stale, net.now()).unwrap();
    assert_refused(
        &post_bytes(&net.http, &url, frame).await,
        409,
        "not_current",
    );
    // The current one does.
    let (pending, fresh) = renewal_request(&a, &b, a_static(&a), b_side.handshake_hash);
    renew_by_hand(&net, &url, &last, pending, &fresh).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_renewal_outlives_the_peers_record_from_the_introduction() {
    let net = Network::start().await;
    let records = |c: &mut NodeConfig| c.record_lifetime_s = 600;
    let a = net.node_with("a", records).await;
    let b = net.node_with("b", records).await;
    let (session, hash) = session_by_hand(&net, &a, &b).await;
    a.connect(b.id()).await.unwrap();
    let live = a.sessions().with_peer(&b.id()).unwrap();
    // Past the lifetime of the records the tokens carried.
    net.clock.advance(601);
    let (_, request) = renewal_request(&a, &b, a_static(&a), hash);
    let frame = session.seal(&request, net.now()).unwrap();
    assert_refused(
        &post_bytes(&net.http, &b.p2p(RENEW), frame).await,
        409,
        "peer_record_expired",
    );
    assert!(matches!(
        a.renew(&live).await,
        Err(openred_node::error::NodeError::PeerRecordExpired(_))
    ));
    live.touch(net.now());
    assert!(!renewal_due(
        &live,
        live.established_at.plus(86_000),
        86_400
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crossing_renewals_leave_both_nodes_on_one_session() {
    let net = Network::start().await;
    let a = net.node("a").await;
    let b = net.node("b").await;
    a.connect(b.id()).await.unwrap();
    b.ping(&a.id()).await.unwrap();
    let (at_a, at_b) = (
        a.sessions().with_peer(&b.id()).unwrap(),
        b.sessions().with_peer(&a.id()).unwrap(),
    );
    let (from_a, from_b) = tokio::join!(a.renew(&at_a), b.renew(&at_b));
    assert_eq!(
        usize::from(from_a.is_ok()) + usize::from(from_b.is_ok()),
        1,
        "exactly one renewal wins: {:?} / {:?}",
        from_a.as_ref().map(|s| s.id()),
        from_b.as_ref().map(|s| s.id())
    );
    ping_both_ways(&a, &b).await;
    assert_eq!(current(&a, &b), current(&b, &a));
    assert_ne!(current(&a, &b), at_a.id());
}

/// The crossing that is not simultaneous: B answered A's renewal, and B's
/// lifecycle, holding the old session (in the race, still B's current until
/// A's first frame on the new one arrives), wants to renew it too. B
/// refuses itself, or the two nodes could end on two different sessions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_answered_a_renewal_does_not_renew_the_same_session_itself() {
    let net = Network::start().await;
    let a = net.node("a").await;
    let b = net.node("b").await;
    a.connect(b.id()).await.unwrap();
    let (at_a, at_b) = (
        a.sessions().with_peer(&b.id()).unwrap(),
        b.sessions().with_peer(&a.id()).unwrap(),
    );
    let renewed = a.renew(&at_a).await.unwrap();
    assert!(matches!(
        b.renew(&at_b).await,
        Err(openred_node::error::NodeError::Busy(_))
    ));
    ping_both_ways(&a, &b).await;
    assert_eq!(current(&a, &b), renewed.id());
    assert_eq!(current(&b, &a), renewed.id());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lifecycle_purges_unused_tokens_and_old_tombstones() {
    let net = Network::start().await;
    let a = net.node("a").await;
    let b = net.node("b").await;
    // Two introductions used (a tombstone at A for the first, two at B),
    // one left waiting at B (its token). All minted at one time, so all
    // expire together.
    a.connect(b.id()).await.unwrap();
    let used = introduce(&a, b.id(), net.now()).await;
    let (_, request) = genuine_message_1(&a, &used);
    let answer = post_json(&net.http, &b.p2p("/p2p/handshake"), &request).await;
    assert_eq!(
        answer.status,
        200,
        "{}",
        String::from_utf8_lossy(&answer.body)
    );
    let replay = TokenPush {
        from: a.id(),
        token: openred_core::wire::TokenBytes(net.pushed_token(&used.connection_id)),
    };
    let waiting = introduce(&a, b.id(), net.now()).await;
    assert_eq!(waiting.expires_at, used.expires_at);
    let (a_report, b_report) = (a.state.run_lifecycle().await, b.state.run_lifecycle().await);
    assert_eq!((a_report.tokens, a_report.tombstones), (0, 0));
    assert_eq!((b_report.tokens, b_report.tombstones), (0, 0));

    // At the tokens' expiry the waiting token goes; the tombstones stay.
    net.clock.set(waiting.expires_at);
    let (a_report, b_report) = (a.state.run_lifecycle().await, b.state.run_lifecycle().await);
    assert_eq!((a_report.tokens, a_report.tombstones), (0, 0));
    assert_eq!((b_report.tokens, b_report.tombstones), (1, 0));

    // The clock skew later, the tombstones go too.
    let kept_until = waiting.expires_at.plus(TOKEN_CLOCK_SKEW_S);
    net.clock.set(kept_until.minus(1));
    let (a_report, b_report) = (a.state.run_lifecycle().await, b.state.run_lifecycle().await);
    assert_eq!((a_report.tombstones, b_report.tombstones), (0, 0));
    net.clock.set(kept_until);
    let (a_report, b_report) = (a.state.run_lifecycle().await, b.state.run_lifecycle().await);
    assert_eq!(
        (a_report.tokens, a_report.tombstones),
        (0, 1),
        "{a_report:?}"
    );
    assert_eq!(
        (b_report.tokens, b_report.tombstones),
        (0, 2),
        "{b_report:?}"
    );
    let again = b.state.run_lifecycle().await;
    assert_eq!((again.tokens, again.tombstones), (0, 0));

    // The purge reopens no replay: the used token's push, replayed now or
    // with B's clock stepped back by the skew, is refused as expired.
    for at in [kept_until, kept_until.minus(TOKEN_CLOCK_SKEW_S)] {
        net.clock.set(at);
        let answer = post_json(&net.http, &b.p2p("/api/v3/tokens/receive"), &replay).await;
        assert_refused(&answer, 400, "token_expired");
    }
}
