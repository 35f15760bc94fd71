//! A hostile peer against one node: piling up sessions, walking away
//! from answered handshakes, forging plain answers on the path, replaying
//! answers, and the restart of a peer that must not look like one of those.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use openred_node::NodeState;

const HANDSHAKE: &str = "/p2p/handshake";

/// A handshake with `b` done by hand from `a`'s keys, never followed by a
/// first frame: B holds an answered, unconfirmed session.
async fn answered_handshake(net: &Network, a: &NodeState, b: &TestNode) -> Answer {
    let intro = introduce(a, b.id(), net.now()).await;
    let (_, request) = genuine_message_1(a, &intro);
    post_json(&net.http, &b.p2p(HANDSHAKE), &request).await
}

#[track_caller]
fn assert_ok(answer: &Answer) {
    assert_eq!(
        answer.status,
        200,
        "{}",
        String::from_utf8_lossy(&answer.body)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_piling_up_handshakes_is_refused_beyond_the_session_cap() {
    let net = Network::start().await;
    let a = net.node("a").await;
    let b = net.node_with("b", |c| c.max_sessions = 3).await;

    for _ in 0..3 {
        assert_ok(&answered_handshake(&net, &a, &b).await);
    }
    assert_eq!(b.sessions().all().len(), 3);
    let answer = answered_handshake(&net, &a, &b).await;
    assert_refused(&answer, 429, "too_many_sessions");
    assert_eq!(b.sessions().all().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_peer_too_many_is_refused_at_handshake_time() {
    let net = Network::start().await;
    let b = net.node_with("b", |c| c.max_peers = 2).await;
    let a1 = net.node("a1").await;
    let a2 = net.node("a2").await;
    let a3 = net.node("a3").await;
    a1.connect(b.id()).await.unwrap();
    a2.connect(b.id()).await.unwrap();

    assert_peer_refused(a3.connect(b.id()).await, 429, "too_many_peers");
    assert!(a3.sessions().all().is_empty());
    assert_eq!(b.sessions().all().len(), 2);
    // A peer that has a session still gets a new one (a reconnection).
    a1.connect(b.id()).await.unwrap();
    a1.ping(&b.id()).await.unwrap();
    // And B, full, asks the directory for nothing it could not hold.
    let c = net.node("c").await;
    let refused = b.connect(c.id()).await;
    assert!(
        matches!(
            refused,
            Err(openred_node::error::NodeError::Capacity(
                openred_node::sessions::Capacity::Peers
            ))
        ),
        "{refused:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answered_session_never_confirmed_is_purged_after_its_idle_time() {
    let net = Network::start().await;
    let a = net.node("a").await;
    let b = net
        .node_with("b", |c| {
            c.max_sessions = 2;
            c.unconfirmed_session_idle_s = 30;
        })
        .await;
    let c = net.node("c").await;
    // A confirmed session (C's), and one A answered for then walked away.
    c.connect(b.id()).await.unwrap();
    assert_ok(&answered_handshake(&net, &a, &b).await);
    assert_eq!(b.sessions().all().len(), 2);
    assert_refused(
        &answered_handshake(&net, &a, &b).await,
        429,
        "too_many_sessions",
    );

    // Within the idle time it stays.
    net.clock.advance(30);
    b.state.run_lifecycle().await;
    assert_eq!(b.sessions().all().len(), 2);
    // Past it, the unconfirmed one goes, the confirmed one stays.
    net.clock.advance(1);
    let report = b.state.run_lifecycle().await;
    assert_eq!(report.purged, 1, "{report:?}");
    assert!(b.sessions().with_peer(&a.id()).is_none());
    assert!(b.sessions().with_peer(&c.id()).is_some());
    c.ping(&b.id()).await.unwrap();
    // And there is room again.
    a.connect(b.id()).await.unwrap();
    a.ping(&b.id()).await.unwrap();
}
