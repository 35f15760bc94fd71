//! Peer authentication: a node asks its peer to re-prove its identity
//! inside a session, and a route under the auth module's policy needs a
//! proof younger than its maximum age. Forged, replayed and misbound
//! answers are attacked in the module's unit tests (`modules::auth`);
//! here two real nodes and their agents run the whole exchange.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod in_process;

use openred_core::error_code::ErrorCode;
use std::any::Any;
use std::sync::Arc;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::IntoResponse;
use axum::Router;
use in_process::*;
use openred_http::ApiError;
use openred_node::modules::auth::{ProofView, CHALLENGE_PATH};
use openred_node::modules::{Middleware, Module};
use openred_node::peer::{framed, Peers};
use openred_node::{NodeConfig, NodeState};
use serde_json::json;

const GUARDED: &str = "/p2p/test-guarded";
/// Served the same way, but the policy does not name it.
const UNGUARDED: &str = "/p2p/test-unguarded";
const MAX_AGE: u64 = 60;

/// A module with one route that needs a fresh proof of the peer's
/// identity, as the files module's download routes do. While `stall` is
/// set, its middleware holds every challenge this node receives for half
/// a second, then refuses it.
#[derive(Default)]
struct Guarded {
    stall: Arc<AtomicBool>,
}

/// Echoes the payload. Whether a proof is asked for first is the auth
/// module's call, from its policy: the peer layer runs its guard before
/// this handler.
async fn guarded(payload: Vec<u8>) -> Result<Vec<u8>, ApiError> {
    Ok(payload)
}

impl Module for Guarded {
    fn name(&self) -> &'static str {
        "guarded"
    }

    fn p2p_routes(self: Arc<Self>) -> Router<Peers> {
        Router::new()
            .route(GUARDED, framed(GUARDED, |_, _, payload| guarded(payload)))
            .route(
                UNGUARDED,
                framed(UNGUARDED, |_, _, payload| guarded(payload)),
            )
    }

    fn p2p_middleware(&self) -> Option<Middleware> {
        let stall = self.stall.clone();
        Some(Arc::new(move |_state, request: Request, next: Next| {
            let stall = stall.clone();
            Box::pin(async move {
                if stall.load(Ordering::SeqCst) && request.uri().path() == CHALLENGE_PATH {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    return ApiError::new(ErrorCode::Unavailable, "not answering").into_response();
                }
                next.run(request).await
            })
        }))
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

fn policy(config: &mut NodeConfig) {
    config.module_settings.insert(
        "auth".to_owned(),
        json!({ "require_fresh_proof": { GUARDED: MAX_AGE } }),
    );
}

fn metric(node: &NodeState, name: &str) -> f64 {
    module_metric(node, "auth", name)
}

async fn pair(net: &Network) -> (TestNode, TestNode) {
    let a = net
        .node_with_modules("a", policy, vec![Arc::new(Guarded::default())])
        .await;
    let b = net
        .node_with_modules("b", policy, vec![Arc::new(Guarded::default())])
        .await;
    a.connect(b.id()).await.unwrap();
    (a, b)
}

fn stall(node: &NodeState, on: bool) {
    node.modules()
        .get::<Guarded>()
        .unwrap()
        .stall
        .store(on, Ordering::SeqCst);
}

async fn challenge(net: &Network, from: &TestNode, to: &TestNode) -> Answer {
    from.admin_post(
        &net.http,
        "/admin/v1/auth/challenge",
        Some(&from.admin_token()),
        &json!({ "node_id": to.id().to_string() }),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_proves_its_identity_on_demand_bound_to_the_session() {
    let net = Network::start().await;
    let (a, b) = pair(&net).await;
    let answer = challenge(&net, &a, &b).await;
    assert_eq!(answer.status, 200, "{}", answer.json);
    let proof: ProofView = serde_json::from_value(answer.json).unwrap();
    assert_eq!(proof.peer, b.id().to_string());
    let session = a.sessions().with_peer(&b.id()).unwrap().id();
    assert_eq!(proof.session_id, session.to_string());
    assert_eq!(proof.proved_at, net.now().0);
    assert_eq!(metric(&a, "challenges_sent"), 1.0);
    assert_eq!(metric(&a, "proofs_verified"), 1.0);
    assert_eq!(metric(&b, "challenges_answered"), 1.0);
    let listed = get(
        &net.http,
        &a.admin("/admin/v1/auth/proofs"),
        Some(&a.admin_token()),
    )
    .await;
    let listed: Vec<ProofView> = serde_json::from_value(listed.json).unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].session_id, session.to_string());

    // The other way round too: b challenges a.
    let answer = challenge(&net, &b, &a).await;
    assert_eq!(answer.status, 200, "{}", answer.json);

    // No session, no proof.
    let c = net.node("c").await;
    let answer = challenge(&net, &a, &c).await;
    assert_refused(&answer, 404, "no_session");
    // A malformed peer ID is a 400.
    let answer = a
        .admin_post(
            &net.http,
            "/admin/v1/auth/challenge",
            Some(&a.admin_token()),
            &json!({ "node_id": "nope" }),
        )
        .await;
    assert_refused(&answer, 400, "bad_node_id");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_route_needs_a_fresh_proof_and_refuses_a_peer_that_cannot_give_one() {
    let net = Network::start().await;
    let (a, b) = pair(&net).await;
    let live = b.sessions().with_peer(&a.id()).unwrap();

    // b calls a's guarded route: a challenges b first, once.
    let echoed = b.exchange(&live, GUARDED, b"one").await.unwrap();
    assert_eq!(echoed, b"one");
    assert_eq!(metric(&a, "challenges_sent"), 1.0);
    assert_eq!(metric(&b, "challenges_answered"), 1.0);
    // A second call within the maximum age needs no new challenge.
    b.exchange(&live, GUARDED, b"two").await.unwrap();
    assert_eq!(metric(&a, "challenges_sent"), 1.0);

    // Once the proof is older than the maximum age, a challenges again.
    net.clock.advance(MAX_AGE);
    b.exchange(&live, GUARDED, b"three").await.unwrap();
    assert_eq!(metric(&a, "challenges_sent"), 2.0);
    assert_eq!(metric(&b, "challenges_answered"), 2.0);

    // A route the policy does not name is never challenged, even with a
    // stale proof.
    net.clock.advance(MAX_AGE);
    b.exchange(&live, UNGUARDED, b"free").await.unwrap();
    assert_eq!(metric(&a, "challenges_sent"), 2.0);

    // b can no longer answer (its auth module is off: the challenge route
    // answers 404): a refuses the guarded route once the proof is stale.
    let off = b.switch_module(&net.http, "auth", false).await;
    assert_eq!(off.status, 200);
    let refused = b.exchange(&live, GUARDED, b"four").await;
    assert_peer_refused(refused, 403, "peer_auth_failed");
    assert_eq!(metric(&a, "proofs_failed"), 1.0);
    assert_eq!(metric(&a, "policy_refusals"), 1.0);

    // Concurrent requests that wait for a failing challenge share its
    // failure: one challenge (held for half a second by b, then refused)
    // answers all eight requests that arrived while it ran.
    let on = b.switch_module(&net.http, "auth", true).await;
    assert_eq!(on.status, 200);
    stall(&b, true);
    let before = metric(&a, "challenges_sent");
    let calls = (0..8).map(|i| {
        let (b, live) = (&b, live.clone());
        async move { b.exchange(&live, GUARDED, &[i]).await }
    });
    for outcome in futures_util::future::join_all(calls).await {
        assert_peer_refused(outcome, 403, "peer_auth_failed");
    }
    assert_eq!(metric(&a, "challenges_sent"), before + 1.0);
    assert_eq!(metric(&a, "policy_refusals"), 9.0);
    stall(&b, false);

    // Concurrent requests on a stale proof share one challenge.
    let before = metric(&a, "challenges_sent");
    let calls = (0..8).map(|i| {
        let (b, live) = (&b, live.clone());
        async move { b.exchange(&live, GUARDED, &[i]).await }
    });
    for outcome in futures_util::future::join_all(calls).await {
        outcome.unwrap();
    }
    assert_eq!(metric(&a, "challenges_sent"), before + 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_auth_module_off_the_policy_is_off() {
    let net = Network::start().await;
    let (a, b) = pair(&net).await;
    let off = a.switch_module(&net.http, "auth", false).await;
    assert_eq!(off.status, 200);
    let live = b.sessions().with_peer(&a.id()).unwrap();
    b.exchange(&live, GUARDED, b"x").await.unwrap();
    assert_eq!(metric(&a, "challenges_sent"), 0.0);
}
