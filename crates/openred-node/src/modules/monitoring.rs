//! The monitoring module: the Prometheus exposition of the node and its
//! modules (`GET /metrics` on the admin listener, behind the owner's
//! token: it tells who this node talks to and how much), and a periodic
//! encrypted ping of every peer with a live session, whose round trip
//! `status` shows with the session's age, epochs and last contact.
//!
//! The node's liveness and readiness (`GET /api/v3/health`) are the core's:
//! a node answers them whatever its modules.
//!
//! Settings (`[modules.monitoring]`): see [`Settings`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::{Metric, Module, ModuleContext};
use crate::peer::Peers;

/// The module's name.
pub const NAME: &str = "monitoring";

/// The Prometheus route, on the admin listener.
pub const METRICS_PATH: &str = "/metrics";

/// `[modules.monitoring]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Seconds between two pings of each peer with a live session (0: no
    /// pings). A ping is traffic: it keeps the session in use, so the
    /// lifecycle renews it until the peer's record expires.
    pub ping_interval_s: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            ping_interval_s: 30,
        }
    }
}

/// The monitoring module.
pub struct Monitoring {
    settings: Settings,
    pings_ok: AtomicU64,
    pings_failed: AtomicU64,
}

impl Monitoring {
    /// The module with `settings` (JSON; defaults where absent).
    pub fn new(settings: Option<&serde_json::Value>) -> Result<Monitoring, String> {
        let settings: Settings = match settings {
            Some(value) => serde_json::from_value(value.clone()).map_err(|e| e.to_string())?,
            None => Settings::default(),
        };
        Ok(Monitoring {
            settings,
            pings_ok: AtomicU64::new(0),
            pings_failed: AtomicU64::new(0),
        })
    }

    /// Pings every peer with a live session once, at once; returns how
    /// many answered.
    pub async fn ping_peers(&self, node: &Peers) -> usize {
        let peers = node.connected_peers();
        let pings = peers.iter().map(|peer| node.ping(peer));
        let outcomes = futures_util::future::join_all(pings).await;
        let mut answered = 0;
        for (peer, outcome) in peers.iter().zip(outcomes) {
            match outcome {
                Ok(_) => {
                    answered += 1;
                    self.pings_ok.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    self.pings_failed.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(%peer, error = %e, "a monitoring ping failed");
                }
            }
        }
        answered
    }

    async fn ping_loop(self: Arc<Self>, context: ModuleContext, mut stop: watch::Receiver<bool>) {
        if self.settings.ping_interval_s == 0 {
            return;
        }
        let mut tick = tokio::time::interval(Duration::from_secs(self.settings.ping_interval_s));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            let Some(node) = context.peers() else { return };
            if context.is_enabled() {
                self.ping_peers(&node).await;
            }
        }
    }
}

async fn metrics(State(state): State<Peers>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.render_metrics(),
    )
}

impl Module for Monitoring {
    fn name(&self) -> &'static str {
        NAME
    }

    fn description(&self) -> &'static str {
        "Prometheus metrics, and periodic round trips to every peer"
    }

    fn admin_routes(self: Arc<Self>) -> axum::Router<Peers> {
        axum::Router::new().route(METRICS_PATH, get(metrics))
    }

    fn start(self: Arc<Self>, context: ModuleContext, stop: watch::Receiver<bool>) {
        tokio::spawn(self.ping_loop(context, stop));
    }

    fn metrics(&self) -> Vec<Metric> {
        vec![
            Metric::counter(
                "pings_total",
                "periodic peer pings answered",
                self.pings_ok.load(Ordering::Relaxed),
            ),
            Metric::counter(
                "pings_failed_total",
                "periodic peer pings that failed",
                self.pings_failed.load(Ordering::Relaxed),
            ),
        ]
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}
