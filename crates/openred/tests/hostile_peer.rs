//! A hostile peer against one node: piling up sessions, walking away
//! from answered handshakes, forging plain answers on the path, replaying
//! answers, and the restart of a peer that must not look like one of those.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod in_process;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::Router;
use in_process::*;
use openred_node::modules::files::transfers::TransferState;
use openred_node::modules::files::{Files, ShareRequest};
use openred_node::NodeState;
use serde_json::json;
use tokio::net::TcpListener;

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
                openred_node::peer::sessions::Capacity::Peers
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

/// A party on the path in front of a node: forwards every request to it
/// and its answer back, except that it can forge, for the next requests,
/// a plain JSON `unknown_session` answer (404) without forwarding them.
#[derive(Clone)]
struct ForgingRelay {
    target: Arc<std::sync::OnceLock<String>>,
    forge: Arc<AtomicUsize>,
    forged: Arc<AtomicUsize>,
}

impl ForgingRelay {
    /// Serves on a new loopback port; returns the relay and its URL.
    async fn start() -> (ForgingRelay, String) {
        let relay = ForgingRelay {
            target: Arc::new(std::sync::OnceLock::new()),
            forge: Arc::new(AtomicUsize::new(0)),
            forged: Arc::new(AtomicUsize::new(0)),
        };
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let app = Router::new()
            .fallback(any(forward))
            .with_state(relay.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (relay, url)
    }
}

async fn forward(
    State(relay): State<ForgingRelay>,
    uri: axum::http::Uri,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if relay
        .forge
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
    {
        relay.forged.fetch_add(1, Ordering::SeqCst);
        let forged =
            json!({"error": "unknown_session", "message": "no such session; handshake again"});
        return (StatusCode::NOT_FOUND, axum::Json(forged)).into_response();
    }
    let target = relay.target.get().expect("the relay has a target");
    let answer = http_client()
        .post(format!("{target}{}", uri.path()))
        .header(
            header::CONTENT_TYPE,
            headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("application/octet-stream"),
        )
        .body(body)
        .send()
        .await
        .unwrap();
    let status = StatusCode::from_u16(answer.status().as_u16()).unwrap();
    let content_type = answer
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/octet-stream")
        .to_owned();
    let bytes = answer.bytes().await.unwrap();
    (status, [(header::CONTENT_TYPE, content_type)], bytes).into_response()
}

fn files(node: &NodeState) -> &Files {
    node.modules().get::<Files>().expect("the files module")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_unknown_session_answer_does_not_drop_a_live_session() {
    let net = Network::start().await;
    let (relay, relay_url) = ForgingRelay::start().await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    relay
        .target
        .set(format!("http://{}", listener.local_addr().unwrap()))
        .unwrap();
    let a = net
        .node_published_at("a", |_| {}, listener, &relay_url)
        .await;
    let b = net.node("b").await;
    b.connect(a.id()).await.unwrap();
    let live = b.sessions().with_peer(&a.id()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data = vec![7u8; 20_000];
    let path = dir.path().join("shared.bin");
    std::fs::write(&path, &data).unwrap();
    let (shared, _) = files(&a)
        .share(
            &a.peers(),
            ShareRequest {
                path,
                peers: vec![b.id()],
                expires_in_s: None,
                max_downloads: None,
            },
        )
        .await
        .unwrap();
    let file_id = shared.file_id;

    // No new introduction can be made, and the relay forges the answer to
    // B's next request.
    net.stop_directory().await;
    relay.forge.store(1, Ordering::SeqCst);
    let out = dir.path().join("fetched.bin");
    let refused = files(&b)
        .fetch(&b.state.peers(), a.id(), file_id, out.clone())
        .await;
    assert!(refused.is_err(), "{:?}", refused.map(|t| t.view()));
    assert_eq!(relay.forged.load(Ordering::SeqCst), 1);

    // The session survives: still the one used, and it works.
    assert_eq!(b.sessions().with_peer(&a.id()).unwrap().id(), live.id());
    b.ping(&a.id()).await.unwrap();
    let transfer = files(&b)
        .fetch(&b.state.peers(), a.id(), file_id, out.clone())
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while transfer.state() != TransferState::Done {
        assert_ne!(
            transfer.state(),
            TransferState::Failed,
            "{:?}",
            transfer.view()
        );
        assert!(Instant::now() < deadline, "{:?}", transfer.view());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(std::fs::read(&out).unwrap(), data);
    assert_eq!(b.sessions().with_peer(&a.id()).unwrap().id(), live.id());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_answers_swapped_on_the_path_are_both_refused() {
    let net = Network::start().await;
    let a = net.node("a").await;
    let b = net.node("b").await;
    a.connect(b.id()).await.unwrap();
    let live = a.sessions().with_peer(&b.id()).unwrap();
    let seq_of = |frame: &[u8]| {
        openred_core::session::FrameHeader::parse(frame)
            .unwrap()
            .0
            .seq
    };
    // Two requests on one route, answered in order.
    let (one, two) = (
        live.session.seal(&ping_payload(), net.now()).unwrap(),
        live.session.seal(&ping_payload(), net.now()).unwrap(),
    );
    let answer_one = post_bytes(&net.http, &b.p2p("/p2p/ping"), one.clone()).await;
    let answer_two = post_bytes(&net.http, &b.p2p("/p2p/ping"), two.clone()).await;
    assert_ok(&answer_one);
    assert_ok(&answer_two);

    // Swapped: each fails to authenticate as the other's answer.
    let open = |request: &[u8], answer: &Answer| {
        openred_node::peer::frames::open_answer(
            &live.session,
            "/p2p/ping",
            seq_of(request),
            &answer.body,
            net.now(),
        )
    };
    for (request, answer) in [(&one, &answer_two), (&two, &answer_one)] {
        assert!(
            matches!(
                open(request, answer),
                Err(openred_node::error::NodeError::Frame(
                    openred_core::session::FrameError::Authentication
                ))
            ),
            "an answer to another request is refused"
        );
    }
    // Each with its own request: accepted (the failures marked nothing).
    for (request, answer) in [(&one, &answer_one), (&two, &answer_two)] {
        assert_eq!(&open(request, answer).unwrap()[..4], b"pong");
    }
}
