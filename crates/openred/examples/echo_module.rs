//! A small example module, built and tested with the `openred` crate,
//! which can run nodes beside a directory (see `docs/MODULES.md` and
//! `tests/modules.rs`). It shows every part of the
//! [`Module`] trait:
//!
//! - a P2P route, `POST /p2p/echo`: a session frame whose payload comes
//!   back, prefixed with `echo: `, in the answer frame;
//! - an admin route, `POST /admin/v1/echo {node_id, text}`: asks a peer to
//!   echo `text` (over the current session, or a new one);
//! - a cipher suite switched on from the core's allowlist (AES-256-GCM);
//! - middleware that counts every P2P request while the module is on;
//! - a session hook, and metrics.
//!
//! Run it: `cargo run -p openred --example echo_module` starts a
//! directory and two nodes on loopback with the module, and echoes once.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::http::HeaderValue;
use axum::routing::post;
use axum::{Json, Router};
use openred_core::session::{SessionId, Suite};
use openred_core::NodeId;
use openred_http::ApiError;
use openred_node::modules::{Metric, Middleware, Module};
use openred_node::peer::{framed, Peers};
use serde::{Deserialize, Serialize};

/// The module's P2P route.
pub const ECHO_PATH: &str = "/p2p/echo";

/// The echo module.
#[derive(Default)]
pub struct Echo {
    echoes: AtomicU64,
    p2p_requests: Arc<AtomicU64>,
    sessions: AtomicU64,
}

/// `POST /admin/v1/echo`.
#[derive(Debug, Serialize, Deserialize)]
pub struct EchoRequest {
    /// The peer (a node ID that does not parse is refused with 400
    /// `bad_node_id` before the handler runs).
    pub node_id: NodeId,
    /// What to echo.
    pub text: String,
}

/// The peer's answer.
#[derive(Debug, Serialize, Deserialize)]
pub struct EchoAnswer {
    /// `echo: ` and the text.
    pub answer: String,
}

impl Module for Echo {
    fn name(&self) -> &'static str {
        "echo"
    }

    fn description(&self) -> &'static str {
        "an example: echoes text over a session"
    }

    fn p2p_routes(self: Arc<Self>) -> Router<Peers> {
        Router::new().route(
            ECHO_PATH,
            // The peer layer does the work: session, AEAD, replay window,
            // route label, the answer bound to the request.
            framed(ECHO_PATH, move |_peers, _session, payload| {
                let me = self.clone();
                async move {
                    me.echoes.fetch_add(1, Ordering::Relaxed);
                    let mut answer = b"echo: ".to_vec();
                    answer.extend_from_slice(&payload);
                    Ok(answer)
                }
            }),
        )
    }

    fn admin_routes(self: Arc<Self>) -> Router<Peers> {
        Router::new().route(
            "/admin/v1/echo",
            post(
                |State(node): State<Peers>, body: Result<Json<EchoRequest>, JsonRejection>| async move {
                    // Taken as a Result so that a bad body is answered as
                    // JSON with its code, like every OpenRed error.
                    let Json(request) = body?;
                    let live = node
                        .session_for(&request.node_id)
                        .await
                        .map_err(|e| e.to_api())?;
                    let answer = node
                        .exchange(&live, ECHO_PATH, request.text.as_bytes())
                        .await
                        .map_err(|e| e.to_api())?;
                    Ok::<_, ApiError>(Json(EchoAnswer {
                        answer: String::from_utf8_lossy(&answer).into_owned(),
                    }))
                },
            ),
        )
    }

    fn suites(&self) -> Vec<Suite> {
        vec![Suite::Aes256Gcm]
    }

    fn p2p_middleware(&self) -> Option<Middleware> {
        let counter = self.p2p_requests.clone();
        Some(Arc::new(move |_node, request, next| {
            let counter = counter.clone();
            Box::pin(async move {
                counter.fetch_add(1, Ordering::Relaxed);
                let mut response = next.run(request).await;
                response
                    .headers_mut()
                    .insert("x-openred-echo", HeaderValue::from_static("seen"));
                response
            })
        }))
    }

    fn on_session_established(&self, _peers: &Peers, _peer: NodeId, _id: SessionId) {
        self.sessions.fetch_add(1, Ordering::Relaxed);
    }

    fn metrics(&self) -> Vec<Metric> {
        vec![
            Metric::counter(
                "echoes_total",
                "frames echoed",
                self.echoes.load(Ordering::Relaxed),
            ),
            Metric::counter(
                "p2p_requests_total",
                "P2P requests seen by the middleware",
                self.p2p_requests.load(Ordering::Relaxed),
            ),
            Metric::counter(
                "sessions_total",
                "sessions established",
                self.sessions.load(Ordering::Relaxed),
            ),
        ]
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// Two nodes with the module, a directory between them, one echo.
#[allow(dead_code)]
#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    use openred::testnet::{Agents, LocalNetwork};
    use openred_core::{ManualClock, UnixTime};

    // Libraries take a clock; a short run can use a fixed one.
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?;
    let network = LocalNetwork::builder()
        .clock(Arc::new(ManualClock::new(UnixTime(now.as_secs()))))
        .agents(Agents::InProcess)
        .modules(|| vec![Arc::new(Echo::default()) as Arc<dyn Module>])
        .named(["a", "b"])
        .start()
        .await?;
    let nodes = &network.nodes;
    let (a, b) = (&nodes[0], &nodes[1]);
    let live = a.session_for(&b.node_id()).await?;
    let answer = a.exchange(&live, ECHO_PATH, b"hello").await?;
    println!(
        "{} (over a {} session)",
        String::from_utf8_lossy(&answer),
        live.session.suite()
    );
    for view in b.modules().views() {
        println!(
            "b: module {} {}: {:?}",
            view.name,
            if view.enabled { "on" } else { "off" },
            view.metrics
                .iter()
                .map(|m| format!("{} {}", m.name, m.value))
                .collect::<Vec<_>>()
        );
    }
    Ok(())
}
