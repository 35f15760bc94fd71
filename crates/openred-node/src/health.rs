//! Liveness and readiness. The node is live when it answers; it is ready
//! when its crypto agent answers, its database takes a write and its
//! directory answers with the pinned key. The checks run in the background
//! every [`CHECK_EVERY`]; the health route shows the last result, so that a
//! public route can never make the node call its agent or its directory.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::peer::PeerLayer;

/// How often readiness is checked.
pub const CHECK_EVERY: Duration = Duration::from_secs(10);
/// How long one check may take.
const CHECK_TIMEOUT: Duration = Duration::from_secs(3);
/// A result older than this (the checker is stuck) counts as not ready.
const STALE_AFTER_S: u64 = 3 * CHECK_EVERY.as_secs();

/// The outcome of one check.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Check {
    /// Whether it passed.
    pub ok: bool,
    /// How long it took, in milliseconds.
    pub took_ms: f64,
    /// Why it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The readiness checks, as the health route shows them.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Readiness {
    /// Every check passed, recently enough.
    pub ready: bool,
    /// Unix seconds of the checks.
    pub checked_at: u64,
    /// The crypto agent answers.
    pub agent: Check,
    /// The database takes a write.
    pub database: Check,
    /// The directory answers, with the pinned key.
    pub directory: Check,
}

/// The last readiness result.
#[derive(Default)]
pub struct ReadinessCache(Mutex<Option<Readiness>>);

impl ReadinessCache {
    /// The last result, `ready` false if it is stale; `None` before the
    /// first check.
    pub fn get(&self, now: u64) -> Option<Readiness> {
        let mut last = self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()?;
        last.ready &= now.saturating_sub(last.checked_at) <= STALE_AFTER_S;
        Some(last)
    }

    fn set(&self, readiness: Readiness) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(readiness);
    }
}

async fn timed<F, E>(check: F) -> Check
where
    F: std::future::Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    let start = Instant::now();
    let outcome = tokio::time::timeout(CHECK_TIMEOUT, check).await;
    let took_ms = start.elapsed().as_secs_f64() * 1e3;
    let error = match outcome {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(e.to_string()),
        Err(_) => Some(format!("no answer within {} s", CHECK_TIMEOUT.as_secs())),
    };
    Check {
        ok: error.is_none(),
        took_ms,
        error,
    }
}

/// Runs the three checks now (at once) and keeps the result.
pub async fn check_now(state: &PeerLayer) -> Readiness {
    let now = state.clock().now().0;
    let stamp = now.to_be_bytes();
    let (agent, database, directory) = tokio::join!(
        timed(async { state.crypto().agent_status().await.map(|_| ()) }),
        timed(state.store().set_setting("health_checked_at", &stamp)),
        timed(state.directory().check(state.outbound())),
    );
    let readiness = Readiness {
        ready: agent.ok && database.ok && directory.ok,
        checked_at: now,
        agent,
        database,
        directory,
    };
    state.readiness.set(readiness.clone());
    readiness
}

/// Checks at start, then every [`CHECK_EVERY`], until `stop`.
pub async fn readiness_loop(state: Arc<PeerLayer>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(CHECK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let readiness = check_now(&state).await;
        if !readiness.ready {
            tracing::debug!(?readiness, "the node is not ready");
        }
    }
}
