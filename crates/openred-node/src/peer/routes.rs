//! The P2P API other nodes and the directory call: health, the
//! reachability proof, token pushes, the handshake, and the encrypted ping.

use openred_core::error_code::ErrorCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Json, Router};
use openred_core::handshake::{self, Authority, HandshakeContext};
use openred_core::routes::node;
use openred_core::session::Role;
use openred_core::token::{Expected, Role as TokenRole, TokenEnvelope, TokenError};
use openred_core::wire::{
    ConnectionIdBytes, HandshakeRequest, HandshakeResponse, NoiseMessage, ReachabilityChallenge,
    ReachabilityProof, SignatureBytes, TokenAccepted, TokenPush,
};
use openred_http::ApiError;
use serde::Serialize;

use crate::agent::CryptoError;
use crate::audit::{Event, EventKind};
use crate::config::IntroductionPolicy;
use crate::error::NodeError;
use crate::peer::sessions::RenewalRefusal;
use crate::peer::PeerLayer;
use crate::store::{StoredToken, TokenState};

type Shared = State<Arc<PeerLayer>>;

/// The P2P routes.
pub fn routes() -> Router<Arc<PeerLayer>> {
    Router::new()
        .route(node::HEALTH, get(health))
        .route(node::HEALTH_READY, get(ready))
        .route(node::REACHABILITY, post(reachability))
        .route(
            node::TOKENS_RECEIVE,
            post(|state: Shared, body| async move {
                let outcome = receive_token(state.clone(), body).await;
                let metrics = &state.0.metrics;
                match &outcome {
                    Ok(_) => {
                        metrics.tokens_received.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => metrics.tokens_rejected.add(e.code().as_str()),
                }
                outcome
            }),
        )
        .route(
            node::HANDSHAKE,
            post(|state: Shared, body| async move {
                let outcome = handshake_route(state.clone(), body).await;
                count_handshake(&state.0, outcome.as_ref().err(), false);
                outcome
            }),
        )
        .route(PING_PATH, post(ping))
        .route(
            RENEW_PATH,
            post(|state: Shared, body| async move {
                let outcome = renew(state.clone(), body).await;
                count_handshake(&state.0, outcome.as_ref().err(), true);
                outcome
            }),
        )
}

/// Counts a handshake this node answered (a renewal's too).
fn count_handshake(state: &PeerLayer, refused: Option<&ApiError>, renewal: bool) {
    let metrics = &state.metrics;
    match refused {
        None => {
            metrics.handshakes_answered.fetch_add(1, Ordering::Relaxed);
            if renewal {
                metrics.sessions_renewed.fetch_add(1, Ordering::Relaxed);
            }
        }
        Some(e) => metrics.handshakes_failed.add(e.code().as_str()),
    }
}

/// Counts every P2P request and its bytes: the body as announced, the
/// answer when its length is known (a module's streamed answer counts its
/// own bytes).
pub(crate) async fn count_traffic(
    State(state): Shared,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let metrics = &state.metrics;
    metrics.p2p_requests.fetch_add(1, Ordering::Relaxed);
    let announced = request
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    metrics.p2p_bytes_in.fetch_add(announced, Ordering::Relaxed);
    let response = next.run(request).await;
    if let Some(length) = axum::body::HttpBody::size_hint(response.body()).exact() {
        metrics.p2p_bytes_out.fetch_add(length, Ordering::Relaxed);
    }
    response
}

/// The public health answer: live (it answers: `status` "ok"), and the
/// last readiness checks, without their error texts (the owner sees those
/// in `status`).
#[derive(Serialize)]
struct Health {
    status: &'static str,
    node_id: String,
    version: &'static str,
    live: bool,
    ready: bool,
    /// Unix seconds of the last checks (absent before the first).
    checked_at: Option<u64>,
    checks: HealthChecks,
}

#[derive(Serialize)]
struct HealthChecks {
    agent: bool,
    database: bool,
    directory: bool,
}

fn health_view(state: &PeerLayer) -> Health {
    let readiness = state.readiness();
    let check = |pick: fn(&crate::health::Readiness) -> bool| readiness.as_ref().is_some_and(pick);
    let ready = check(|r| r.ready);
    Health {
        // "ok" says the node answers (liveness), as it always has; `ready`
        // says whether it can do its work.
        status: "ok",
        node_id: state.crypto.node_id().to_string(),
        version: env!("CARGO_PKG_VERSION"),
        live: true,
        ready,
        checked_at: readiness.as_ref().map(|r| r.checked_at),
        checks: HealthChecks {
            agent: check(|r| r.agent.ok),
            database: check(|r| r.database.ok),
            directory: check(|r| r.directory.ok),
        },
    }
}

async fn health(State(state): Shared) -> Json<Health> {
    Json(health_view(&state))
}

/// For readiness probes: 200 when ready, else 503 with the same body.
async fn ready(State(state): Shared) -> Response {
    let view = health_view(&state);
    let status = if view.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    axum::response::IntoResponse::into_response((status, Json(view)))
}

/// Signs a fresh challenge for anyone who asks, so it is rate limited per
/// source and for all sources together, before anything else is looked at.
async fn reachability(
    State(state): Shared,
    extensions: axum::http::Extensions,
    body: Result<Json<ReachabilityChallenge>, JsonRejection>,
) -> Result<Json<ReachabilityProof>, ApiError> {
    state
        .reachability
        .check(crate::peer::reachability::source(&extensions))?;
    let Json(body) = body?;
    let me = state.crypto.node_id();
    if body.node_id != me {
        return Err(ApiError::new(
            ErrorCode::WrongNode,
            "this is not the node you are looking for",
        ));
    }
    let challenge = body.challenge.0;
    // The proof names the directory this node trusts: it cannot be shown to
    // another directory.
    let directory = pinned_directory(&state)?;
    let signature = state
        .crypto
        .sign_reachability(
            &challenge,
            &directory.directory_fingerprint(),
            &state.config.public_url,
        )
        .await
        .map_err(|e| NodeError::from(e).to_api())?;
    Ok(Json(ReachabilityProof {
        node_id: me,
        signature: SignatureBytes(signature),
    }))
}

/// A token push, audited: accepted (introduction received) or rejected
/// with the reason code.
async fn receive_token(
    State(state): Shared,
    body: Result<Json<TokenPush>, JsonRejection>,
) -> Result<Json<TokenAccepted>, ApiError> {
    let outcome = accept_token(&state, body).await;
    // A refused push proved nothing about its sender: counted, not an
    // entry of its own, so a flood cannot grow the log or crowd it.
    match &outcome {
        Ok((_, initiator)) => state
            .audit
            .record(Event::ok(EventKind::IntroductionReceived).peer(*initiator)),
        Err(e) => state
            .audit
            .count_unauthenticated(EventKind::TokenRejected, e.code().as_str()),
    }
    outcome.map(|(answer, _)| answer)
}

async fn accept_token(
    state: &PeerLayer,
    body: Result<Json<TokenPush>, JsonRejection>,
) -> Result<(Json<TokenAccepted>, openred_core::NodeId), ApiError> {
    let Json(body) = body?;
    let bad = |code, message: String| ApiError::new(code, message);
    let envelope = TokenEnvelope::decode(&body.token.0)
        .map_err(|e| bad(ErrorCode::BadToken, e.to_string()))?;
    let directory = pinned_directory(state)?;
    let me = state.crypto.node_id();
    let expected = Expected {
        role: TokenRole::Target,
        me,
        peer: None,
    };
    // Before any public-key work but the signature: the core's rules
    // (signed by the pinned key, this half, this node, a lifetime within
    // the cap, unexpired). A token living beyond the cap would outlive the
    // tombstone kept against its replay.
    let intro = *envelope
        .accept(&directory, &expected, state.clock.now())
        .map_err(refused_token)?;
    let opened = state
        .crypto
        .open_token(&envelope)
        .await
        .map_err(|e| match e {
            CryptoError::Failed { message, .. } => {
                ApiError::new(ErrorCode::NotForThisNode, message)
            }
            other => NodeError::from(other).to_api(),
        })?;
    if body.from != intro.initiator {
        return Err(bad(
            ErrorCode::FromMismatch,
            "`from` is not the token's initiator".into(),
        ));
    }
    let now = state.clock.now();
    opened
        .peer_record
        .check_unexpired(now)
        .map_err(|e| bad(ErrorCode::PeerRecordExpired, e.to_string()))?;
    // Known: connected to, accepted or added, never merely listed by the
    // directory (which would make the policy worth nothing).
    if state.config.introduction_policy == IntroductionPolicy::KnownPeers
        && !state
            .store
            .is_known_peer(&intro.initiator)
            .await
            .map_err(internal)?
    {
        return Err(ApiError::new(
            ErrorCode::IntroductionRefused,
            "this node accepts introductions from known peers only",
        ));
    }
    let connection_id = envelope.connection_id();
    let stored = StoredToken {
        initiator: intro.initiator,
        expires_at: intro.expires_at,
        link_public: opened.link_public,
        initiator_record: opened.peer_record,
    };
    match state
        .store
        .accept_token(&connection_id, &stored, now)
        .await
        .map_err(internal)?
    {
        TokenState::Ok => {}
        TokenState::Used => {
            return Err(ApiError::new(
                ErrorCode::TokenUsed,
                "this connection ID was used already",
            ))
        }
        // A record older than one already seen means a directory replaying
        // stale data: refuse the introduction.
        TokenState::StalePeerRecord => {
            return Err(ApiError::new(
                ErrorCode::StalePeerRecord,
                "the initiator's record is older than one this node has seen",
            ))
        }
        TokenState::Duplicate | TokenState::Unknown => {
            return Err(ApiError::new(
                ErrorCode::DuplicateToken,
                "this token was received already",
            ))
        }
    }
    Ok((
        Json(TokenAccepted {
            accepted: true,
            connection_id: ConnectionIdBytes(connection_id),
        }),
        intro.initiator,
    ))
}

/// Refusals of a handshake that are about its token, not the handshake.
const TOKEN_REFUSALS: [ErrorCode; 3] = [
    ErrorCode::TokenUsed,
    ErrorCode::UnknownConnection,
    ErrorCode::TokenExpired,
];

/// A handshake as the target, audited: ok, failed, or its token rejected.
async fn handshake_route(
    State(state): Shared,
    body: Result<Json<HandshakeRequest>, JsonRejection>,
) -> Result<Json<HandshakeResponse>, ApiError> {
    let outcome = answer_handshake(&state, body).await;
    // A refused handshake proved nothing about its sender: counted only.
    match &outcome {
        Ok((answer, initiator)) => state.audit.record(
            Event::ok(EventKind::Handshake)
                .peer(*initiator)
                .detail("role", "responder")
                .detail("session_id", answer.session_id.clone()),
        ),
        Err(e) if TOKEN_REFUSALS.contains(&e.code()) => state
            .audit
            .count_unauthenticated(EventKind::TokenRejected, e.code().as_str()),
        Err(e) => state
            .audit
            .count_unauthenticated(EventKind::Handshake, e.code().as_str()),
    }
    outcome.map(|(answer, _)| answer)
}

async fn answer_handshake(
    state: &PeerLayer,
    body: Result<Json<HandshakeRequest>, JsonRejection>,
) -> Result<(Json<HandshakeResponse>, openred_core::NodeId), ApiError> {
    let Json(body) = body?;
    let connection_id = body.connection_id.0;
    // The connection ID first: unknown or used IDs cost one indexed read
    // and no public-key work.
    let (token_state, token) = state.store.token(&connection_id).await.map_err(internal)?;
    let token = match (token_state, token) {
        (TokenState::Ok, Some(token)) => token,
        (TokenState::Used, _) => {
            return Err(ApiError::new(
                ErrorCode::TokenUsed,
                "this connection ID was used already",
            ))
        }
        _ => {
            return Err(ApiError::new(
                ErrorCode::UnknownConnection,
                "no token waits for this connection ID",
            ))
        }
    };
    let now = state.clock.now();
    if token.expires_at <= now {
        return Err(ApiError::new(
            ErrorCode::TokenExpired,
            "the introduction has expired",
        ));
    }
    // Before any public-key work: a full table refuses at once (the token
    // stays, for a try once there is room). Installing checks again.
    state
        .sessions
        .room_for(&token.initiator, state.session_limits())
        .map_err(|e| NodeError::from(e).to_api())?;
    let message = body.message.0;
    let offer = handshake::parse_offer(&body.suites).map_err(handshake_error)?;
    let initiator_record = token.initiator_record;
    let context = HandshakeContext {
        connection_id,
        initiator: token.initiator,
        target: state.crypto.node_id(),
        authority: Authority::Introduction {
            link_public: token.link_public,
        },
        offer,
    };
    let (keys, reply) = state
        .crypto
        .respond(
            &context,
            &initiator_record.record().agreement_key.0,
            &message,
            &state.suites(),
        )
        .await
        .map_err(handshake_refused)?;
    // Burn before answering: exactly one handshake wins a connection ID,
    // and its tombstone outlives the token.
    if state
        .store
        .burn_token(&connection_id, &token.initiator, now)
        .await
        .map_err(internal)?
        != TokenState::Ok
    {
        return Err(ApiError::new(
            ErrorCode::TokenUsed,
            "this connection ID was used already",
        ));
    }
    let live = state
        .install_session(Role::Responder, &keys, initiator_record, None)
        .map_err(|e| e.to_api())?;
    Ok((
        Json(HandshakeResponse {
            session_established: true,
            session_id: live.id().to_string(),
            message: NoiseMessage(reply),
        }),
        live.peer,
    ))
}

/// The pinned directory key; before the node has pinned one it can neither
/// prove reachability nor trust a token.
/// The answer to a token the core's rules refuse.
fn refused_token(e: TokenError) -> ApiError {
    let forbidden = |code| ApiError::new(code, e.to_string());
    match e {
        TokenError::Signature => ApiError::new(
            ErrorCode::NotFromDirectory,
            "the token is not signed by this node's directory",
        ),
        TokenError::WrongNode => forbidden(ErrorCode::NotForThisNode),
        TokenError::WrongRole(_) => {
            ApiError::new(ErrorCode::WrongRole, "only the target's token is pushed")
        }
        TokenError::TooLongLived { .. } => ApiError::new(ErrorCode::TokenLifetime, e.to_string()),
        TokenError::Expired(_) => ApiError::new(ErrorCode::TokenExpired, e.to_string()),
        _ => ApiError::new(ErrorCode::BadToken, e.to_string()),
    }
}

fn pinned_directory(state: &PeerLayer) -> Result<openred_core::IdentityPublicKey, ApiError> {
    state.directory.pinned().ok_or_else(|| {
        ApiError::new(
            ErrorCode::NoDirectoryKey,
            "this node has not pinned a directory key yet",
        )
    })
}

/// The agent refused a handshake message (it does not authenticate, or
/// its payload is wrong), or could not answer.
fn handshake_refused(e: CryptoError) -> ApiError {
    match e {
        CryptoError::Failed { message, .. } => ApiError::new(ErrorCode::HandshakeFailed, message),
        other => NodeError::from(other).to_api(),
    }
}

fn handshake_error(e: handshake::HandshakeError) -> ApiError {
    ApiError::new(ErrorCode::HandshakeFailed, e.to_string())
}

/// The encrypted ping's route.
pub const PING_PATH: &str = openred_core::routes::node::PING;
/// The renewal's route.
pub const RENEW_PATH: &str = openred_core::routes::node::RENEW;

/// The ping payloads: `b"ping" || 8 bytes`, answered `b"pong" || same`.
pub const PING: &[u8; 4] = b"ping";
/// See [`PING`].
pub const PONG: &[u8; 4] = b"pong";

async fn ping(State(state): Shared, body: Bytes) -> Result<Response, ApiError> {
    let (live, plaintext) = state.open_frame(PING_PATH, &body)?;
    if plaintext.len() != 12 || &plaintext[..4] != PING {
        return Err(ApiError::new(ErrorCode::BadPing, "not a ping"));
    }
    let mut reply = PONG.to_vec();
    reply.extend_from_slice(&plaintext[4..]);
    state.answer_frame(&live, PING_PATH, &reply)
}

/// How many renewals one session may authorise: one, and retries of it
/// when an answer is lost. Failed attempts do not count.
pub const MAX_RENEWALS_PER_SESSION: usize = 3;

/// A renewal: a new handshake asked for inside a frame of the live session
/// it replaces, answered inside a frame of the same session. The frame
/// proves the request comes from the holder of the session, once (the
/// replay window); the Noise static keys prove both nodes again, so a
/// thief of session keys alone cannot renew; the new keys owe nothing to
/// the old ones. No directory and no token take part, so a renewal never
/// outlives what the directory vouched for: the peer's record from the
/// introduction must still be valid, and its key the one last seen.
async fn renew(State(state): Shared, body: Bytes) -> Result<Response, ApiError> {
    let (live, plaintext) = state.open_frame(RENEW_PATH, &body)?;
    let answered = renew_in(&state, &live, &plaintext).await;
    let event = Event::outcome(EventKind::SessionRenewed, answered.is_ok())
        .peer(live.peer)
        .detail("role", "responder")
        .detail("previous_session_id", live.id().to_string());
    state.audit.record(match &answered {
        Ok(_) => event,
        Err(e) => event.reason(e.code().as_str()),
    });
    answered
}

async fn renew_in(
    state: &PeerLayer,
    live: &crate::peer::frames::Incoming,
    plaintext: &[u8],
) -> Result<Response, ApiError> {
    let now = state.clock.now();
    let conflict = |code, message| Err(ApiError::new(code, message));
    if live.age(now) >= state.config.session_max_age_s {
        return conflict(
            ErrorCode::SessionExpired,
            "this session is past its maximum age; ask the directory for an introduction",
        );
    }
    if live.peer_record.check_unexpired(now).is_err() {
        return conflict(
            ErrorCode::PeerRecordExpired,
            "the record the introduction carried has expired; ask the directory for an introduction",
        );
    }
    if !state.sessions.is_live(live) {
        return conflict(
            ErrorCode::NotCurrent,
            "this session has been replaced; renew the current one",
        );
    }
    // Both sides renewing the same session: the lower node ID's renewal
    // goes on, the other is refused, so the two end up on one session.
    if live.renewing.load(Ordering::Acquire) && state.crypto.node_id() < live.peer {
        return conflict(
            ErrorCode::RenewalCrossed,
            "this node is renewing the session itself",
        );
    }
    if let Some(known) = state.store.peer(&live.peer).await.map_err(internal)? {
        if known.record().agreement_key != live.peer_record.record().agreement_key {
            return conflict(
                ErrorCode::PeerKeyChanged,
                "the peer has registered another key since; ask the directory for an introduction",
            );
        }
    }
    let request: HandshakeRequest = serde_json::from_slice(plaintext)
        .map_err(|e| ApiError::new(ErrorCode::BadRenewal, e.to_string()))?;
    let (connection_id, message) = (request.connection_id.0, request.message.0);
    let offer = handshake::parse_offer(&request.suites).map_err(handshake_error)?;
    let wins_crossing = state.crypto.node_id() < live.peer;
    live.reserve_renewal(connection_id, MAX_RENEWALS_PER_SESSION, wins_crossing)
        .map_err(|refusal| match refusal {
            RenewalRefusal::Crossed => ApiError::new(
                ErrorCode::RenewalCrossed,
                "this node is renewing the session itself",
            ),
            RenewalRefusal::Replayed => ApiError::new(
                ErrorCode::RenewalReplayed,
                "this renewal was answered already",
            ),
            RenewalRefusal::Limit => ApiError::new(
                ErrorCode::RenewalLimit,
                "this session has authorised all the renewals it may",
            ),
        })?;
    let answered = answer_renewal(state, live, connection_id, offer, &message).await;
    if answered.is_err() {
        live.release_renewal(&connection_id);
    }
    answered
}

async fn answer_renewal(
    state: &PeerLayer,
    live: &crate::peer::frames::Incoming,
    connection_id: [u8; 16],
    offer: Vec<openred_core::session::Suite>,
    message: &[u8],
) -> Result<Response, ApiError> {
    let context = HandshakeContext {
        connection_id,
        initiator: live.peer,
        target: state.crypto.node_id(),
        authority: Authority::Renewal {
            previous: live.handshake_hash,
        },
        offer,
    };
    let (keys, reply) = state
        .crypto
        .respond(
            &context,
            &live.peer_record.record().agreement_key.0,
            message,
            &state.suites(),
        )
        .await
        .map_err(handshake_refused)?;
    let renewed = state
        .install_session(Role::Responder, &keys, live.peer_record.clone(), None)
        .map_err(|e| e.to_api())?;
    let answer = HandshakeResponse {
        session_established: true,
        session_id: renewed.id().to_string(),
        message: NoiseMessage(reply),
    };
    let plaintext = serde_json::to_vec(&answer)
        .map_err(|e| ApiError::internal("encoding the renewal answer", e))?;
    state.answer_frame(live, RENEW_PATH, &plaintext)
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError::internal("node storage", e)
}
