//! The initiator's side of the peer layer: finding or making the session
//! to reach a peer (introduction by the directory, handshake, first ping),
//! installing a session a handshake exported, and healing one the peer
//! says it lost.

use std::sync::Arc;
use std::time::{Duration, Instant};

use openred_core::handshake::{Authority, HandshakeContext};
use openred_core::session::{Role, Session};
use openred_core::wire::{ConnectionIdBytes, HandshakeRequest, HandshakeResponse, NoiseMessage};
use openred_core::NodeId;

use crate::audit::{Event, EventKind};
use crate::directory_client::expect_ok;
use crate::error::NodeError;
use crate::node::Connected;
use crate::peer::routes::{PING, PING_PATH, PONG};
use crate::peer::sessions::LiveSession;
use crate::peer::PeerLayer;

impl PeerLayer {
    /// The session to reach `peer`: the current one, or a new one through
    /// an introduction by the directory when there is none.
    pub async fn session_for(&self, peer: &NodeId) -> Result<Arc<LiveSession>, NodeError> {
        if let Some(live) = self.sessions.with_peer(peer) {
            return Ok(live);
        }
        self.connect(*peer).await?;
        self.sessions
            .with_peer(peer)
            .ok_or_else(|| NodeError::NoSession(peer.to_string()))
    }

    /// The peer answered `unknown_session` to a frame of `lost`, as it
    /// does after a restart. That answer is plain JSON that anyone on the
    /// path can forge, so `lost` is not dropped on its word: a new
    /// introduction and handshake, authenticated end to end, makes a
    /// session that replaces it as the one used to reach the peer (and
    /// every other session held with the peer, which a restart killed
    /// too). `lost` stays in the table, no longer used, until it is idle.
    /// A forged answer thus costs one introduction and ends nothing; if
    /// the new handshake fails (directory unreachable), `lost` stays the
    /// session in use. One re-handshake at a time: a caller that finds a
    /// session newer than `lost` already in use takes it.
    pub async fn handshake_again(&self, lost: &LiveSession) -> Result<Arc<LiveSession>, NodeError> {
        let _one_at_a_time = self.reconnecting.lock().await;
        if let Some(current) = self.sessions.with_peer(&lost.peer) {
            if current.id() != lost.id() && current.established_at >= lost.established_at {
                return Ok(current);
            }
        }
        self.connect(lost.peer).await?;
        self.sessions
            .with_peer(&lost.peer)
            .ok_or_else(|| NodeError::NoSession(lost.peer.to_string()))
    }

    /// Forgets a session the peer no longer knows (it restarted): the next
    /// use makes a new one.
    pub fn forget_session(&self, live: &LiveSession) {
        let ended = self.sessions.remove(&live.id());
        self.sessions_closed(&ended, "forgotten");
    }

    /// Asks the directory whether the peer of `live` registered another
    /// address since (it restarted elsewhere, so it lost the session too);
    /// if so, forgets the session. Returns whether it did.
    pub async fn forget_if_moved(&self, live: &LiveSession) -> bool {
        let now = self.clock.now();
        match self
            .directory
            .lookup(&self.outbound, &self.store, &live.peer, now)
            .await
        {
            Ok(record) if record.record().api_url != live.peer_record.record().api_url => {
                tracing::info!(peer = %live.peer, "the peer moved; its session is forgotten");
                self.forget_session(live);
                true
            }
            _ => false,
        }
    }

    /// The suite of the current session with `peer`.
    pub fn session_suite(&self, peer: &NodeId) -> Option<openred_core::session::Suite> {
        self.sessions.with_peer(peer).map(|s| s.session.suite())
    }

    /// Asks the directory for an introduction to `peer`, runs the
    /// handshake with it and confirms the session with a first ping.
    pub async fn connect(&self, peer: NodeId) -> Result<Connected, NodeError> {
        let outcome = self.introduce_and_handshake(peer).await;
        match &outcome {
            Ok(_) => {
                self.metrics
                    .handshakes_initiated
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            Err(e) => self
                .metrics
                .handshakes_failed
                .add(e.to_api().code().as_str()),
        }
        outcome
    }

    async fn introduce_and_handshake(&self, peer: NodeId) -> Result<Connected, NodeError> {
        let started = Instant::now();
        // No introduction for a session this node could not hold.
        self.sessions.room_for(&peer, self.session_limits())?;
        let now = self.clock.now();
        let envelope = self
            .directory
            .request_connection(&self.outbound, &self.store, &self.crypto, &peer, now)
            .await;
        let event = Event::outcome(EventKind::IntroductionRequested, envelope.is_ok()).peer(peer);
        self.audit.record(match &envelope {
            Ok(_) => event,
            Err(e) => event.reason(e.to_api().code().as_str()),
        });
        let connected = self.handshake_as_initiator(peer, envelope?, started).await;
        let event = Event::outcome(EventKind::Handshake, connected.is_ok())
            .peer(peer)
            .detail("role", "initiator");
        self.audit.record(match &connected {
            Ok(c) => event.detail("session_id", c.session_id.to_string()),
            Err(e) => event.reason(e.to_api().code().as_str()),
        });
        connected
    }

    /// The initiator's side once the directory has answered: open the
    /// token, handshake, install and confirm the session.
    async fn handshake_as_initiator(
        &self,
        peer: NodeId,
        envelope: openred_core::token::TokenEnvelope,
        started: Instant,
    ) -> Result<Connected, NodeError> {
        // Accepted by the core's rules when the directory client took it
        // (`DirectoryClient::request_connection`).
        let now = self.clock.now();
        let me = self.crypto.node_id();
        let intro = *envelope.introduction();
        let opened = self.crypto.open_token(&envelope).await?;
        let peer_record = opened.peer_record;
        if peer_record.record().node_id != peer {
            return Err(NodeError::Malformed(
                "a token carrying another node's record",
            ));
        }
        peer_record
            .check_unexpired(now)
            .map_err(|_| NodeError::Malformed("a token carrying an expired peer record"))?;
        // Checked now, written with the tombstone while message 1 travels:
        // one commit for both, off the critical path.
        if !self.store.is_current_peer_record(&peer_record).await? {
            return Err(NodeError::RolledBackRecord(peer.to_string()));
        }
        let context = HandshakeContext {
            connection_id: intro.connection_id,
            initiator: me,
            target: peer,
            authority: Authority::Introduction {
                link_public: opened.link_public,
            },
            offer: self.suites(),
        };
        let (pending, message) = self
            .crypto
            .initiate(&context, &peer_record.record().agreement_key.0)
            .await?;
        let request = HandshakeRequest {
            connection_id: ConnectionIdBytes(intro.connection_id),
            suites: context.offer.iter().map(|s| s.id()).collect(),
            message: NoiseMessage(message),
        };
        // Our own half is spent the moment message 1 leaves: its tombstone
        // and the peer's record are committed while the request travels,
        // and both must succeed before `connect` reports anything.
        let (answer, stored) = tokio::join!(
            self.outbound.post_json(
                &peer_record.record().api_url,
                openred_core::routes::node::HANDSHAKE,
                &request
            ),
            self.store.record_introduction(
                &intro.connection_id,
                intro.expires_at,
                &peer_record,
                now
            )
        );
        stored?;
        let answer: HandshakeResponse = expect_ok(answer?, false)?;
        let keys = self.crypto.finish(pending, &answer.message.0).await?;
        let live = self.install_session(
            Role::Initiator,
            &keys,
            peer_record,
            Some(&answer.session_id),
        )?;
        let established = started.elapsed();
        self.ping(&peer).await?;
        Ok(Connected {
            session_id: live.id(),
            peer,
            established,
            elapsed: started.elapsed(),
        })
    }

    /// Sends an encrypted ping over the session with `peer` and checks the
    /// encrypted pong; returns the round-trip time.
    pub async fn ping(&self, peer: &NodeId) -> Result<Duration, NodeError> {
        let live = self
            .sessions
            .with_peer(peer)
            .ok_or_else(|| NodeError::NoSession(peer.to_string()))?;
        let mut nonce = [0u8; 8];
        getrandom::fill(&mut nonce).map_err(|_| NodeError::Malformed("randomness"))?;
        let mut payload = PING.to_vec();
        payload.extend_from_slice(&nonce);
        let started = Instant::now();
        let reply = self.exchange(&live, PING_PATH, &payload).await?;
        if reply.len() != 12 || &reply[..4] != PONG || reply[4..] != nonce {
            return Err(NodeError::Malformed("a pong that does not match the ping"));
        }
        let took = started.elapsed();
        live.rtt_us.store(
            u64::try_from(took.as_micros()).unwrap_or(u64::MAX).max(1),
            std::sync::atomic::Ordering::Relaxed,
        );
        self.metrics.peer_rtt.observe(took);
        Ok(took)
    }

    /// The bounds of the session table, from the configuration.
    pub fn session_limits(&self) -> crate::peer::sessions::SessionLimits {
        crate::peer::sessions::SessionLimits {
            max_sessions: self.config.max_sessions,
            max_peers: self.config.max_peers,
        }
    }

    /// Installs the session a finished handshake exported, with the peer
    /// whose record the handshake used. The initiator passes the session ID
    /// the responder announced, which must be the one the keys derive.
    pub(crate) fn install_session(
        &self,
        role: Role,
        keys: &crate::agent::proto::SessionKeys,
        peer_record: openred_core::SignedRecord,
        announced: Option<&str>,
    ) -> Result<Arc<LiveSession>, NodeError> {
        let suite = openred_core::session::Suite::from_id(keys.suite)
            .ok_or(NodeError::Malformed("the agent: an unknown suite"))?;
        let now = self.clock.now();
        let session = Session::new(
            role,
            suite,
            &keys.handshake_hash,
            &keys.i2r,
            &keys.r2i,
            now,
            self.config.epoch,
        )
        .with_max_plaintext(self.config.max_frame_bytes);
        if announced.is_some_and(|id| id != session.session_id().to_string()) {
            return Err(NodeError::Malformed(
                "a session ID not derived from the handshake",
            ));
        }
        let live = self.sessions.try_insert(
            LiveSession::new(peer_record, session, keys.handshake_hash, now),
            self.session_limits(),
        )?;
        tracing::info!(peer = %live.peer, session = %live.id(), suite = %suite, ?role, "session established");
        if let Some(hooks) = self.hooks() {
            hooks.session_established(live.peer, live.id());
        }
        Ok(live)
    }
}
