//! The authentication module, between peers: a node asks a peer to
//! re-prove its identity inside a session (`POST /p2p/auth/challenge`),
//! and other modules can require such a proof, no older than a set age,
//! before a sensitive operation (a policy per route).
//!
//! The challenger sends 32 fresh random bytes in a frame of the session;
//! the peer's crypto agent signs `auth_challenge_message(challenger,
//! prover, session ID, challenge)` under the auth-challenge context label
//! with the peer's identity key; the challenger verifies it with the
//! identity key of the peer's signed record. The Noise KK handshake
//! already authenticated the session with the peers' static X25519 keys;
//! this proves, now, that the peer still holds the Ed25519 identity key
//! its node ID names (a node whose identity key is gone, or whose agent is
//! down, can no longer prove it), and binds the proof to this session and
//! this challenger.
//!
//! The module guards the routes its policy names ([`Module::guards`]):
//! the peer layer asks it after it has opened the request's frame, so
//! only an authenticated request can make the node challenge its peer, so a stranger cannot turn the node into a
//! source of challenges. One challenge at a time runs per session; the
//! others wait for its outcome.
//!
//! The owner's login to the admin API is the core's (`crate::owner::login`), not
//! this module's: switching a module off must neither lock the owner out
//! nor leave logins valid that the owner thinks are off.
//!
//! Settings (`[modules.auth]`): see [`Settings`].

use openred_core::error_code::ErrorCode;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
use openred_core::session::SessionId;
use openred_core::wire::auth_challenge_message;
use openred_core::{IdentityPublicKey, NodeId, SignatureContext, UnixTime};
use openred_http::ApiError;
use serde::{Deserialize, Serialize};

use super::{Metric, Module};
use crate::error::NodeError;
use crate::peer::sessions::LiveSession;
use crate::peer::{framed, peer_id, PeerRequest, Peers};

/// The module's name.
pub const NAME: &str = "auth";

/// The P2P route where a peer answers a challenge.
pub const CHALLENGE_PATH: &str = openred_core::routes::node::AUTH_CHALLENGE;

/// A challenge's length: 256 random bits.
pub const CHALLENGE_LEN: usize = 32;

/// The default policy: granting a file download needs a proof of the
/// downloader's identity younger than 10 minutes.
const DEFAULT_POLICY: [(&str, u64); 1] = [(openred_core::routes::node::FILE_REQUEST, 600)];

/// `[modules.auth]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// P2P routes that need a proof of the peer's identity, with the
    /// proof's maximum age in seconds. A route is only checked if its
    /// module asks (the files module asks for `/p2p/file-request` and
    /// `/p2p/file-download`). An empty table switches the policy off.
    pub require_fresh_proof: BTreeMap<String, u64>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            require_fresh_proof: DEFAULT_POLICY
                .iter()
                .map(|(route, age)| ((*route).to_owned(), *age))
                .collect(),
        }
    }
}

/// Why a peer's proof was not had.
#[derive(Debug, thiserror::Error)]
pub enum ProofError {
    /// The challenge did not reach the peer, or its answer did not come
    /// back in a frame of the session.
    #[error("the challenge failed: {0}")]
    Exchange(#[from] NodeError),
    /// The answer is not a signature by the peer's identity key over this
    /// challenge, both node IDs and this session.
    #[error("the peer's answer does not verify: {0}")]
    Invalid(&'static str),
}

/// A proof of a peer's identity, as the admin API shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProofView {
    /// The peer.
    pub peer: String,
    /// The session the proof is bound to.
    pub session_id: String,
    /// When the answer verified (Unix seconds).
    pub proved_at: u64,
    /// The challenge's round trip, signature and check included, in
    /// milliseconds (`None` for a proof listed afterwards).
    pub took_ms: Option<f64>,
}

/// The authentication module.
pub struct Auth {
    settings: Settings,
    /// When each session's peer last proved its identity.
    proofs: Mutex<HashMap<SessionId, (NodeId, UnixTime)>>,
    /// One challenge at a time per session.
    running: Mutex<HashMap<SessionId, Arc<tokio::sync::Mutex<()>>>>,
    /// The last failed challenge of each session, when it ended and why:
    /// requests that waited for it share its outcome.
    failed: Mutex<HashMap<SessionId, (Instant, String)>>,
    challenges_sent: AtomicU64,
    proofs_verified: AtomicU64,
    proofs_failed: AtomicU64,
    challenges_answered: AtomicU64,
    policy_refusals: AtomicU64,
}

/// Checks a peer's answer: a signature by `prover_key` (which must be the
/// key `prover` names) over the challenge, both node IDs and the session
/// ID, under the auth-challenge label.
pub fn verify_answer(
    challenger: &NodeId,
    prover: &NodeId,
    prover_key: &IdentityPublicKey,
    session: &SessionId,
    challenge: &[u8; CHALLENGE_LEN],
    signature: &[u8],
) -> Result<(), ProofError> {
    if prover_key.node_id() != *prover {
        return Err(ProofError::Invalid("the key is not the peer's"));
    }
    let message = auth_challenge_message(challenger, prover, session.as_bytes(), challenge);
    prover_key
        .verify(SignatureContext::AuthChallenge, &message, signature)
        .map_err(|_| ProofError::Invalid("not the peer's signature over this challenge"))
}

impl Auth {
    /// The module with `settings` (JSON; defaults where absent).
    pub fn new(settings: Option<&serde_json::Value>) -> Result<Auth, String> {
        let settings: Settings = match settings {
            Some(value) => serde_json::from_value(value.clone()).map_err(|e| e.to_string())?,
            None => Settings::default(),
        };
        for (route, age) in &settings.require_fresh_proof {
            if !route.starts_with("/p2p/") {
                return Err(format!(
                    "require_fresh_proof: {route:?} is not a /p2p/ route"
                ));
            }
            if *age == 0 {
                return Err(format!(
                    "require_fresh_proof: the maximum age of {route} must be at least 1 s"
                ));
            }
        }
        Ok(Auth {
            settings,
            proofs: Mutex::new(HashMap::new()),
            running: Mutex::new(HashMap::new()),
            failed: Mutex::new(HashMap::new()),
            challenges_sent: AtomicU64::new(0),
            proofs_verified: AtomicU64::new(0),
            proofs_failed: AtomicU64::new(0),
            challenges_answered: AtomicU64::new(0),
            policy_refusals: AtomicU64::new(0),
        })
    }

    /// The maximum age of a proof on `route`, if the policy names it.
    pub fn max_age(&self, route: &str) -> Option<u64> {
        self.settings.require_fresh_proof.get(route).copied()
    }

    /// Challenges the peer of `live` now and records its proof.
    pub async fn challenge(
        &self,
        node: &Peers,
        live: &LiveSession,
    ) -> Result<ProofView, ProofError> {
        let mut challenge = [0u8; CHALLENGE_LEN];
        getrandom::fill(&mut challenge).map_err(|_| ProofError::Invalid("no randomness"))?;
        self.challenges_sent.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        let outcome = async {
            let answer = node.exchange(live, CHALLENGE_PATH, &challenge).await?;
            verify_answer(
                &node.node_id(),
                &live.peer,
                &live.peer_record.record().identity_key,
                &live.id(),
                &challenge,
                &answer,
            )
        }
        .await;
        if let Err(e) = outcome {
            self.proofs_failed.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(peer = %live.peer, session = %live.id(), error = %e, "a peer failed an auth challenge");
            return Err(e);
        }
        self.proofs_verified.fetch_add(1, Ordering::Relaxed);
        let now = node.clock().now();
        {
            let mut proofs = self.proofs.lock().unwrap_or_else(PoisonError::into_inner);
            // Forget the proofs of sessions that ended while the module
            // was off (it hears no session events then).
            proofs.retain(|id, _| node.holds_session(id));
            proofs.insert(live.id(), (live.peer, now));
        }
        Ok(ProofView {
            peer: live.peer.to_string(),
            session_id: live.id().to_string(),
            proved_at: now.0,
            took_ms: Some(started.elapsed().as_secs_f64() * 1000.0),
        })
    }

    fn proved_within(&self, session: &SessionId, now: UnixTime, max_age: u64) -> bool {
        let proofs = self.proofs.lock().unwrap_or_else(PoisonError::into_inner);
        proofs
            .get(session)
            .is_some_and(|(_, at)| at.0 <= now.0 && now.0 - at.0 < max_age)
    }

    /// `Ok` if `route` needs no proof, or the peer of `live` proved its
    /// identity within the route's maximum age (challenging it now if
    /// not).
    pub async fn require_fresh(
        &self,
        node: &Peers,
        live: &LiveSession,
        route: &str,
    ) -> Result<(), ApiError> {
        let Some(max_age) = self.max_age(route) else {
            return Ok(());
        };
        let session = live.id();
        if self.proved_within(&session, node.clock().now(), max_age) {
            return Ok(());
        }
        let arrived = Instant::now();
        let gate = self
            .running
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(session)
            .or_default()
            .clone();
        let outcome = {
            let _one_at_a_time = gate.lock().await;
            // A challenge that ran while this request waited may have
            // answered already.
            if self.proved_within(&session, node.clock().now(), max_age) {
                Ok(())
            } else if let Some(reason) = self.failed_since(&session, arrived) {
                // The challenge this request waited for failed: one failed
                // round answers all its waiters.
                Err(reason)
            } else {
                let outcome = self.challenge(node, live).await.map(|_| ());
                let mut failed = self.failed.lock().unwrap_or_else(PoisonError::into_inner);
                failed.retain(|id, _| node.holds_session(id));
                match &outcome {
                    Ok(()) => failed.remove(&session),
                    Err(e) => failed.insert(session, (Instant::now(), e.to_string())),
                };
                outcome.map_err(|e| e.to_string())
            }
        };
        self.running
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|id, gate| Arc::strong_count(gate) > 1 || node.holds_session(id));
        outcome.map_err(|e| {
            self.policy_refusals.fetch_add(1, Ordering::Relaxed);
            ApiError::new(
                ErrorCode::PeerAuthFailed,
                format!(
                    "{route} needs a proof of your identity younger than {max_age} s, \
                     and this node's challenge failed: {e}"
                ),
            )
        })
    }

    /// Why the last challenge of `session` failed, if it ended after
    /// `since`.
    fn failed_since(&self, session: &SessionId, since: Instant) -> Option<String> {
        let failed = self.failed.lock().unwrap_or_else(PoisonError::into_inner);
        failed
            .get(session)
            .filter(|(at, _)| *at >= since)
            .map(|(_, reason)| reason.clone())
    }

    /// The proofs held now.
    pub fn proofs(&self, node: &Peers) -> Vec<ProofView> {
        let proofs = self.proofs.lock().unwrap_or_else(PoisonError::into_inner);
        let mut views: Vec<ProofView> = proofs
            .iter()
            .filter(|(id, _)| node.holds_session(id))
            .map(|(id, (peer, at))| ProofView {
                peer: peer.to_string(),
                session_id: id.to_string(),
                proved_at: at.0,
                took_ms: None,
            })
            .collect();
        views.sort_by(|a, b| a.peer.cmp(&b.peer));
        views
    }
}

/// `POST /p2p/auth/challenge`: signs the peer's challenge with this node's
/// identity key, through the agent.
async fn answer(
    module: Arc<Auth>,
    peers: Peers,
    live: Arc<LiveSession>,
    payload: Vec<u8>,
) -> Result<Vec<u8>, ApiError> {
    let challenge: [u8; CHALLENGE_LEN] = payload
        .as_slice()
        .try_into()
        .map_err(|_| ApiError::new(ErrorCode::BadChallenge, "a challenge is 32 random bytes"))?;
    let signature = peers
        .sign_challenge(&live, &challenge)
        .await
        .map_err(|e| e.to_api())?;
    module.challenges_answered.fetch_add(1, Ordering::Relaxed);
    Ok(signature)
}

/// `POST /admin/v1/auth/challenge`: challenges a peer now.
async fn challenge_now(
    module: Arc<Auth>,
    state: Peers,
    body: Result<Json<PeerRequest>, JsonRejection>,
) -> Result<Json<ProofView>, ApiError> {
    let peer = peer_id(body)?;
    let live = state
        .current_session(&peer)
        .ok_or_else(|| NodeError::NoSession(peer.to_string()).to_api())?;
    match module.challenge(&state, &live).await {
        Ok(view) => Ok(Json(view)),
        Err(ProofError::Exchange(e)) => Err(e.to_api()),
        Err(e @ ProofError::Invalid(_)) => Err(ApiError::new(ErrorCode::BadProof, e.to_string())),
    }
}

impl Module for Auth {
    fn name(&self) -> &'static str {
        NAME
    }

    fn description(&self) -> &'static str {
        "Peers re-prove their identity on demand; routes can require a fresh proof"
    }

    fn p2p_routes(self: Arc<Self>) -> Router<Peers> {
        Router::new().route(
            CHALLENGE_PATH,
            framed(CHALLENGE_PATH, move |peers, live, payload| {
                answer(self.clone(), peers, live, payload)
            }),
        )
    }

    fn guards(&self, route: &str) -> bool {
        self.max_age(route).is_some()
    }

    fn check_request<'a>(
        &'a self,
        peers: &'a Peers,
        session: &'a Arc<LiveSession>,
        route: &'a str,
    ) -> super::BoxFuture<'a, Result<(), ApiError>> {
        Box::pin(self.require_fresh(peers, session, route))
    }

    fn admin_routes(self: Arc<Self>) -> Router<Peers> {
        let listing = self.clone();
        Router::new()
            .route(
                "/admin/v1/auth/challenge",
                post(move |State(state): State<Peers>, body| {
                    challenge_now(self.clone(), state, body)
                }),
            )
            .route(
                "/admin/v1/auth/proofs",
                get(move |State(state): State<Peers>| {
                    let module = listing.clone();
                    async move { Json(module.proofs(&state)) }
                }),
            )
    }

    fn on_session_closed(&self, _peers: &Peers, _peer: NodeId, session: SessionId) {
        self.proofs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&session);
    }

    fn metrics(&self) -> Vec<Metric> {
        let count = |c: &AtomicU64| c.load(Ordering::Relaxed);
        vec![
            Metric::counter(
                "challenges_sent",
                "Challenges this node sent to peers",
                count(&self.challenges_sent),
            ),
            Metric::counter(
                "proofs_verified",
                "Peers' answers that verified",
                count(&self.proofs_verified),
            ),
            Metric::counter(
                "proofs_failed",
                "Challenges that failed: no answer, or an answer that does not verify",
                count(&self.proofs_failed),
            ),
            Metric::counter(
                "challenges_answered",
                "Peers' challenges this node answered",
                count(&self.challenges_answered),
            ),
            Metric::counter(
                "policy_refusals",
                "Requests refused because the peer could not prove its identity",
                count(&self.policy_refusals),
            ),
        ]
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::client::Crypto;
    use crate::agent::identity::NodeKeys;
    use openred_core::IdentityKeypair;

    fn keypair() -> IdentityKeypair {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).unwrap();
        IdentityKeypair::from_secret_bytes(&seed)
    }

    struct Case {
        challenger: NodeId,
        prover: IdentityKeypair,
        session: SessionId,
        challenge: [u8; 32],
    }

    impl Case {
        fn new() -> Case {
            let mut session = [0u8; 16];
            getrandom::fill(&mut session).unwrap();
            let mut challenge = [0u8; 32];
            getrandom::fill(&mut challenge).unwrap();
            Case {
                challenger: keypair().node_id(),
                prover: keypair(),
                session: SessionId::from_bytes(session),
                challenge,
            }
        }

        fn signed_by(&self, key: &IdentityKeypair, challenger: &NodeId) -> Vec<u8> {
            let message = auth_challenge_message(
                challenger,
                &key.node_id(),
                self.session.as_bytes(),
                &self.challenge,
            );
            key.sign(SignatureContext::AuthChallenge, &message).to_vec()
        }

        fn verify(&self, signature: &[u8]) -> Result<(), ProofError> {
            verify_answer(
                &self.challenger,
                &self.prover.node_id(),
                &self.prover.public(),
                &self.session,
                &self.challenge,
                signature,
            )
        }
    }

    #[test]
    fn the_peers_signature_over_this_challenge_verifies() {
        let case = Case::new();
        let good = case.signed_by(&case.prover, &case.challenger);
        case.verify(&good).unwrap();
    }

    #[test]
    fn a_tampered_signature_is_refused() {
        let case = Case::new();
        let mut bad = case.signed_by(&case.prover, &case.challenger);
        bad[10] ^= 1;
        assert!(matches!(case.verify(&bad), Err(ProofError::Invalid(_))));
        assert!(case.verify(&bad[..63]).is_err());
        assert!(case.verify(&[]).is_err());
    }

    #[test]
    fn an_answer_to_an_earlier_challenge_is_refused() {
        let case = Case::new();
        let old = case.signed_by(&case.prover, &case.challenger);
        let mut replayed = Case::new();
        replayed.challenger = case.challenger;
        replayed.prover = IdentityKeypair::from_secret_bytes(&case.prover.secret_bytes());
        replayed.session = case.session;
        // Same peers, same session, a fresh challenge: the old answer is
        // worth nothing.
        assert!(replayed.verify(&old).is_err());
    }

    #[test]
    fn an_answer_from_another_node_or_for_another_challenger_or_session_is_refused() {
        let case = Case::new();
        // Another node signs: its key is not the prover's.
        let stranger = keypair();
        let by_stranger = case.signed_by(&stranger, &case.challenger);
        assert!(case.verify(&by_stranger).is_err());
        assert!(matches!(
            verify_answer(
                &case.challenger,
                &case.prover.node_id(),
                &stranger.public(),
                &case.session,
                &case.challenge,
                &by_stranger,
            ),
            Err(ProofError::Invalid("the key is not the peer's"))
        ));
        // The prover's answer to a third node's identical challenge.
        let third = keypair().node_id();
        let for_third = case.signed_by(&case.prover, &third);
        assert!(case.verify(&for_third).is_err());
        // The prover's answer in another session.
        let mut other_session = Case::new();
        other_session.challenger = case.challenger;
        other_session.prover = IdentityKeypair::from_secret_bytes(&case.prover.secret_bytes());
        other_session.challenge = case.challenge;
        let in_other = other_session.signed_by(&other_session.prover, &case.challenger);
        other_session.verify(&in_other).unwrap();
        assert!(case.verify(&in_other).is_err());
    }

    #[test]
    fn a_signature_made_under_another_label_is_refused() {
        let case = Case::new();
        let message = auth_challenge_message(
            &case.challenger,
            &case.prover.node_id(),
            case.session.as_bytes(),
            &case.challenge,
        );
        let audit = case.prover.sign(SignatureContext::AuditEntry, &message);
        assert!(case.verify(&audit).is_err());
    }

    #[tokio::test]
    async fn the_agent_signs_what_the_challenger_verifies_and_refuses_its_own_challenge() {
        let keys = NodeKeys::from_secrets(&random32(), random32());
        let me = keys.node_id();
        let public = keys.identity_public();
        let clock = Arc::new(openred_core::time::ManualClock::new(UnixTime(
            1_700_000_000,
        )));
        let crypto = Crypto::in_process(keys, clock).await.unwrap();
        let case = Case::new();
        let signature = crypto
            .sign_auth_challenge(&case.challenger, case.session.as_bytes(), &case.challenge)
            .await
            .unwrap();
        verify_answer(
            &case.challenger,
            &me,
            &public,
            &case.session,
            &case.challenge,
            &signature,
        )
        .unwrap();
        // A node is never asked to prove itself to itself: an answer to
        // its own challenge could be reflected back as the peer's.
        assert!(crypto
            .sign_auth_challenge(&me, case.session.as_bytes(), &case.challenge)
            .await
            .is_err());
    }

    fn random32() -> [u8; 32] {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).unwrap();
        bytes
    }

    #[test]
    fn settings_refuse_non_p2p_routes_and_zero_ages() {
        assert!(Auth::new(Some(
            &serde_json::json!({"require_fresh_proof": {"/admin/v1/x": 5}})
        ))
        .is_err());
        assert!(Auth::new(Some(
            &serde_json::json!({"require_fresh_proof": {"/p2p/x": 0}})
        ))
        .is_err());
        assert!(Auth::new(Some(&serde_json::json!({"nope": 1}))).is_err());
        let auth = Auth::new(None).unwrap();
        assert_eq!(auth.max_age(super::super::files::REQUEST_PATH), Some(600));
        assert_eq!(auth.max_age("/p2p/message"), None);
    }
}
