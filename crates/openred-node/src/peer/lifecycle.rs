//! The token and session lifecycle: on a schedule, purge what has expired
//! (tokens, tombstones, epoch keys, sessions past their maximum age or
//! replaced and idle), and renew sessions in use before they reach their
//! maximum age, by a fresh handshake with the peer that the live session
//! authorises (`p2p::renew`): no directory is needed, so sessions survive
//! a directory outage. Only a node without a session asks the directory
//! for an introduction.
//!
//! Which side renews: both may. The handshake's initiator starts when a
//! session has an eighth of its maximum age left, the responder when a
//! sixteenth is left, so in the common case one renewal runs, and the
//! session survives a peer that never renews. Renewals crossing are
//! harmless: each node keeps both sessions, and each frame names its own.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use openred_core::handshake::{Authority, HandshakeContext};
use openred_core::session::Role;
use openred_core::wire::{ConnectionIdBytes, HandshakeRequest, HandshakeResponse, NoiseMessage};
use openred_core::UnixTime;
use tokio::sync::watch;

use crate::audit::{Event, EventKind};
use crate::error::NodeError;
use crate::peer::sessions::LiveSession;
use crate::peer::PeerLayer;

/// How often the lifecycle runs when the node serves.
pub const LIFECYCLE_PERIOD: Duration = Duration::from_secs(30);

/// What one pass of the lifecycle did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LifecycleReport {
    /// Expired tokens deleted (introductions never used).
    pub tokens: u64,
    /// Expired tombstones deleted (their tokens can no longer be replayed).
    pub tombstones: u64,
    /// Sessions ended at their maximum age.
    pub ended: usize,
    /// Replaced or idle sessions dropped, and answered ones never
    /// confirmed by the peer within `unconfirmed_session_idle_s`.
    pub purged: usize,
    /// Sessions renewed.
    pub renewed: usize,
    /// Renewals that failed (the session stays until its maximum age; the
    /// next pass tries again).
    pub failed: usize,
}

/// Whether this node should renew `live` at `now`: it is in use (a frame
/// within the renewal margin), close to its maximum age, not being renewed
/// already, and the peer's record from the introduction is still valid (a
/// renewal never outlives what the directory vouched for).
pub fn renewal_due(live: &LiveSession, now: UnixTime, max_age_s: u64) -> bool {
    let margin = (max_age_s / 8).max(1);
    let left = match live.role() {
        Role::Initiator => margin,
        Role::Responder => (margin / 2).max(1),
    };
    live.age(now) + left >= max_age_s
        && live.age(now) < max_age_s
        && live.last_activity.load(Ordering::Relaxed) + margin >= now.0
        && !live.renewing.load(Ordering::Acquire)
        && live.peer_record.record().expires_at > now
}

impl PeerLayer {
    /// One pass of the lifecycle at the clock's current time.
    pub async fn run_lifecycle(self: &Arc<Self>) -> LifecycleReport {
        let now = self.clock.now();
        let (tokens, tombstones) = self.store.purge_expired(now).await.unwrap_or_else(|e| {
            tracing::warn!(error = %e, "purging expired tokens failed");
            (0, 0)
        });
        for live in self.sessions.all() {
            live.session.erase_expired(now);
        }
        let max_age = self.config.session_max_age_s;
        // A session ends when it reaches its maximum age.
        let ended = self.sessions.end_older_than(now.minus(max_age).plus(1));
        let purged = self
            .sessions
            .purge_idle(now.minus(2 * self.config.epoch.epoch_len_s));
        // Answered, and the peer never sent its first frame: it holds
        // room in the table (`max_sessions`) for nothing.
        let unconfirmed = self
            .sessions
            .purge_unconfirmed(now.minus(self.config.unconfirmed_session_idle_s));
        self.sessions_closed(&ended, "max_age");
        self.sessions_closed(&purged, "replaced_or_idle");
        self.sessions_closed(&unconfirmed, "unconfirmed");
        self.metrics
            .tokens_expired
            .fetch_add(tokens, Ordering::Relaxed);
        let mut report = LifecycleReport {
            tokens,
            tombstones,
            ended: ended.len(),
            purged: purged.len() + unconfirmed.len(),
            ..LifecycleReport::default()
        };
        let mut renewals = tokio::task::JoinSet::new();
        for live in self.sessions.current() {
            if renewal_due(&live, now, max_age) {
                let state = self.clone();
                renewals.spawn(async move { state.renew(&live).await });
            }
        }
        while let Some(outcome) = renewals.join_next().await {
            match outcome {
                Ok(Ok(_)) => report.renewed += 1,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "renewing a session failed; retrying later");
                    report.failed += 1;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "a renewal task failed");
                    report.failed += 1;
                }
            }
        }
        report
    }

    /// Renews `live` by a fresh handshake with its peer, carried in the
    /// session's own frames; the new session replaces it for sending once
    /// the peer has answered. The old one stays until it is idle or at its
    /// maximum age, for frames already on their way.
    pub async fn renew(&self, live: &Arc<LiveSession>) -> Result<Arc<LiveSession>, NodeError> {
        let outcome = self.renew_reserved(live).await;
        match &outcome {
            Ok(_) => {
                self.metrics
                    .sessions_renewed
                    .fetch_add(1, Ordering::Relaxed);
                self.metrics
                    .handshakes_initiated
                    .fetch_add(1, Ordering::Relaxed);
            }
            Err(NodeError::Busy(_)) => {}
            Err(e) => self
                .metrics
                .handshakes_failed
                .add(e.to_api().code().as_str()),
        }
        outcome
    }

    async fn renew_reserved(&self, live: &Arc<LiveSession>) -> Result<Arc<LiveSession>, NodeError> {
        live.start_own_renewal().map_err(NodeError::Busy)?;
        let outcome = self.renew_once(live).await;
        if outcome.is_err() {
            live.renewing.store(false, Ordering::Release);
        }
        let event = Event::outcome(EventKind::SessionRenewed, outcome.is_ok())
            .peer(live.peer)
            .detail("role", "initiator")
            .detail("previous_session_id", live.id().to_string());
        self.audit.record(match &outcome {
            Ok(renewed) => event.detail("session_id", renewed.id().to_string()),
            Err(e) => event.reason(e.to_api().code().as_str()),
        });
        outcome
    }

    async fn renew_once(&self, live: &Arc<LiveSession>) -> Result<Arc<LiveSession>, NodeError> {
        if live.peer_record.check_unexpired(self.clock.now()).is_err() {
            return Err(NodeError::PeerRecordExpired(live.peer.to_string()));
        }
        let mut connection_id = [0u8; 16];
        getrandom::fill(&mut connection_id).map_err(|_| NodeError::Malformed("randomness"))?;
        let context = HandshakeContext {
            connection_id,
            initiator: self.crypto.node_id(),
            target: live.peer,
            authority: Authority::Renewal {
                previous: live.handshake_hash,
            },
            offer: self.suites(),
        };
        let peer_static = live.peer_record.record().agreement_key.0;
        let (pending, message) = self.crypto.initiate(&context, &peer_static).await?;
        let request = HandshakeRequest {
            connection_id: ConnectionIdBytes(connection_id),
            suites: context.offer.iter().map(|s| s.id()).collect(),
            message: NoiseMessage(message),
        };
        let plaintext =
            serde_json::to_vec(&request).map_err(|_| NodeError::Malformed("encoding"))?;
        let reply = self
            .exchange(live, crate::peer::routes::RENEW_PATH, &plaintext)
            .await?;
        let answer: HandshakeResponse =
            serde_json::from_slice(&reply).map_err(|_| NodeError::Malformed("the peer"))?;
        let keys = self.crypto.finish(pending, &answer.message.0).await?;
        let renewed = self.install_session(
            Role::Initiator,
            &keys,
            live.peer_record.clone(),
            Some(&answer.session_id),
        )?;
        // The first frame on the new session is what lets the peer send
        // over it too. If it is lost, the next frame does the same.
        if let Err(e) = self.ping(&live.peer).await {
            tracing::warn!(peer = %live.peer, error = %e, "the first ping on a renewed session failed");
        }
        Ok(renewed)
    }
}

/// Runs the lifecycle every [`LIFECYCLE_PERIOD`] until `stop`.
pub(crate) async fn lifecycle_loop(state: Arc<PeerLayer>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(LIFECYCLE_PERIOD);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let report = state.run_lifecycle().await;
        if report != LifecycleReport::default() {
            tracing::info!(?report, "lifecycle");
        }
    }
}
