//! What the crypto agent does with a request: the same code serves the
//! agent process and the in-process mode (`danger_in_process_crypto`).
//!
//! It is no signing oracle: every signature request names what is signed
//! (a record, a deregistration, a connection request, a reachability
//! proof, an audit entry, an audit head) and the agent builds the signed bytes itself, with this node's ID
//! and keys, under that kind's context label. Nothing asks it to sign
//! arbitrary bytes. Nor is it one for the future: times must fall in a
//! window around its clock, and record and audit sequence numbers only move
//! forward, kept across restarts ([`super::state`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use openred_core::handshake::{
    self, Authority, HandshakeContext, HandshakeResult, InitiatorHandshake,
};
use openred_core::id::Fingerprint;
use openred_core::session::Suite;
use openred_core::token::{LinkKey, LinkSigningKey, LinkVerifyingKey, TokenEnvelope};
use openred_core::wire::{
    audit_entry_message, audit_head_message, auth_challenge_message, connection_request_message,
    deregistration_message, reachability_message,
};
use openred_core::{ApiUrl, NodeId, NodeRecord, UnixTime};

use super::proto::{ErrorKind, Request, Response, SessionKeys, WireContext, WireError};
use crate::agent::identity::{NodeKeys, NodeSignature};

/// How long the initiator's link key and a half-done handshake are kept.
/// A token lives at most 5 minutes; a handshake needs one round trip.
const PENDING_TTL: Duration = Duration::from_secs(300);
/// At most this many of each are kept; the oldest go first.
const MAX_PENDING: usize = 4096;

/// The agent's state: the keys and what is pending between requests.
pub struct AgentCore {
    keys: NodeKeys,
    protections: String,
    state: super::state::SigningState,
    links: Mutex<HashMap<[u8; 16], (LinkSigningKey, Instant)>>,
    handshakes: Mutex<HashMap<u64, (InitiatorHandshake, Instant)>>,
    next_handle: AtomicU64,
}

fn refused(message: impl Into<String>) -> Response {
    Response::Error(WireError {
        kind: ErrorKind::Refused,
        message: message.into(),
    })
}

fn refused_by(refusal: super::state::Refusal) -> Response {
    match refusal {
        super::state::Refusal::Save(e) => Response::Error(WireError {
            kind: ErrorKind::Internal,
            message: format!("the agent could not save its state: {e}"),
        }),
        other => refused(other.to_string()),
    }
}

fn handshake_failed(e: handshake::HandshakeError) -> Response {
    Response::Error(WireError {
        kind: ErrorKind::Handshake,
        message: e.to_string(),
    })
}

/// The seed of one handshake's ephemeral key, from the operating system:
/// the core's handshake has no randomness of its own.
fn ephemeral_seed() -> Result<[u8; 32], Response> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| {
        Response::Error(WireError {
            kind: ErrorKind::Internal,
            message: format!("no randomness for the handshake: {e}"),
        })
    })?;
    Ok(seed)
}

/// Inserts into a bounded map of pending items, dropping expired ones and,
/// if still full, the oldest.
fn insert_pending<K: std::hash::Hash + Eq + Copy, V>(
    map: &Mutex<HashMap<K, (V, Instant)>>,
    key: K,
    value: V,
) {
    let mut map = map.lock().unwrap_or_else(PoisonError::into_inner);
    let now = Instant::now();
    map.retain(|_, (_, at)| now.duration_since(*at) < PENDING_TTL);
    if map.len() >= MAX_PENDING {
        if let Some(oldest) = map.iter().min_by_key(|(_, (_, at))| *at).map(|(k, _)| *k) {
            map.remove(&oldest);
        }
    }
    map.insert(key, (value, now));
}

fn take_pending<K: std::hash::Hash + Eq, V>(
    map: &Mutex<HashMap<K, (V, Instant)>>,
    key: &K,
) -> Option<V> {
    let mut map = map.lock().unwrap_or_else(PoisonError::into_inner);
    let (value, at) = map.remove(key)?;
    (at.elapsed() < PENDING_TTL).then_some(value)
}

fn context(wire: &WireContext) -> Result<HandshakeContext, Response> {
    Ok(HandshakeContext {
        connection_id: wire.connection_id,
        initiator: NodeId::from_bytes(wire.initiator),
        target: NodeId::from_bytes(wire.target),
        authority: wire.authority,
        offer: handshake::parse_offer(&wire.offer).map_err(handshake_failed)?,
    })
}

fn session_keys(result: HandshakeResult) -> SessionKeys {
    SessionKeys {
        suite: result.suite.id(),
        handshake_hash: result.handshake_hash,
        i2r: *result.i2r,
        r2i: *result.r2i,
    }
}

impl AgentCore {
    /// The agent for `keys`, reporting `protections` (JSON) in its status,
    /// signing under the rules and counters of `state`.
    pub fn new(
        keys: NodeKeys,
        protections: String,
        state: super::state::SigningState,
    ) -> AgentCore {
        AgentCore {
            keys,
            protections,
            state,
            links: Mutex::new(HashMap::new()),
            handshakes: Mutex::new(HashMap::new()),
            next_handle: AtomicU64::new(1),
        }
    }

    /// Answers one request. Never panics on any request.
    pub fn handle(&self, request: Request) -> Response {
        match request {
            Request::Status => Response::Status {
                protections: self.protections.clone(),
                identity: self.keys.identity_public().to_bytes(),
                agreement: self.keys.agreement_public().0,
            },
            Request::SignRecord {
                api_url,
                seq,
                issued_at,
                expires_at,
            } => {
                let Ok(url) = ApiUrl::parse_canonical(&api_url) else {
                    return refused("the record URL is not a canonical origin");
                };
                if expires_at <= issued_at {
                    return refused("a record must expire after it is issued");
                }
                if let Err(r) = self.state.admit_record(seq, issued_at, expires_at) {
                    return refused_by(r);
                }
                let record = NodeRecord::sign(
                    self.keys.identity(),
                    self.keys.agreement_public(),
                    url,
                    seq,
                    UnixTime(issued_at),
                    UnixTime(expires_at),
                );
                Response::Record(record.as_bytes().to_vec())
            }
            Request::SignDeregistration { seq, issued_at } => {
                if let Err(r) = self
                    .state
                    .check_issued(issued_at)
                    .and_then(|()| self.state.admit_record_seq(seq))
                {
                    return refused_by(r);
                }
                let message =
                    deregistration_message(&self.keys.node_id(), seq, UnixTime(issued_at));
                self.signature(NodeSignature::Deregistration, &message)
            }
            Request::SignConnectionRequest {
                target,
                nonce,
                issued_at,
            } => {
                let me = self.keys.node_id();
                let target = NodeId::from_bytes(target);
                if target == me {
                    return refused("a node cannot ask to meet itself");
                }
                if let Err(r) = self.state.check_issued(issued_at) {
                    return refused_by(r);
                }
                let message = connection_request_message(&me, &target, &nonce, UnixTime(issued_at));
                self.signature(NodeSignature::ConnectionRequest, &message)
            }
            Request::SignReachability {
                challenge,
                directory,
                api_url,
            } => {
                if Fingerprint::parse(&directory).is_err() {
                    return refused("not a directory fingerprint");
                }
                if ApiUrl::parse_canonical(&api_url).is_err() {
                    return refused("the URL is not a canonical origin");
                }
                let message =
                    reachability_message(&challenge, &self.keys.node_id(), &directory, &api_url);
                self.signature(NodeSignature::ReachabilityProof, &message)
            }
            Request::OpenToken { envelope } => self.open_token(&envelope),
            Request::Initiate {
                context: wire,
                peer_static,
            } => self.initiate(&wire, &peer_static),
            Request::Finish { handle, message } => {
                let Some(pending) = take_pending(&self.handshakes, &handle) else {
                    return refused("no handshake waits under this handle");
                };
                match pending.finish(&message) {
                    Ok(result) => Response::Finished(session_keys(result)),
                    Err(e) => handshake_failed(e),
                }
            }
            Request::Respond {
                context: wire,
                initiator_static,
                message,
                accepted,
            } => self.respond(&wire, &initiator_static, &message, &accepted),
            Request::StorageKey(purpose) => {
                Response::StorageKey(super::proto::StorageKey(*self.keys.storage_key(purpose)))
            }
            Request::SignAuditEntry { seq, entry_hash } => {
                if let Err(r) = self.state.admit_audit_entry(seq) {
                    return refused_by(r);
                }
                let message = audit_entry_message(&self.keys.node_id(), seq, &entry_hash);
                self.signature(NodeSignature::AuditEntry, &message)
            }
            Request::SignAuditHead {
                entries,
                last_line_hash,
            } => {
                if let Err(r) = self.state.admit_audit_head(entries) {
                    return refused_by(r);
                }
                let message = audit_head_message(&self.keys.node_id(), entries, &last_line_hash);
                self.signature(NodeSignature::AuditHead, &message)
            }
            Request::SignAuthChallenge {
                challenger,
                session_id,
                challenge,
            } => {
                let me = self.keys.node_id();
                let challenger = NodeId::from_bytes(challenger);
                if challenger == me {
                    return refused("a node does not answer its own challenge");
                }
                let message = auth_challenge_message(&challenger, &me, &session_id, &challenge);
                self.signature(NodeSignature::AuthChallenge, &message)
            }
            #[cfg(feature = "agent-probes")]
            Request::Probe(probe) => probe_response(probe),
        }
    }

    fn signature(&self, kind: NodeSignature, message: &[u8]) -> Response {
        Response::Signature(self.keys.sign(kind, message).to_vec())
    }

    fn open_token(&self, bytes: &[u8]) -> Response {
        let envelope = match TokenEnvelope::decode(bytes) {
            Ok(e) => e,
            Err(e) => return refused(format!("token: {e}")),
        };
        let opened = match envelope.open(&self.keys.node_id(), &self.keys.agreement_secret()) {
            Ok(o) => o,
            Err(e) => return refused(format!("token: {e}")),
        };
        let link_public = opened.link.verifying_bytes();
        if let LinkKey::Signing(key) = opened.link {
            insert_pending(&self.links, opened.introduction.connection_id, key);
        }
        Response::Opened {
            peer_record: opened.peer_record.as_bytes().to_vec(),
            link_public,
        }
    }

    fn initiate(&self, wire: &WireContext, peer_static: &[u8; 32]) -> Response {
        let context = match context(wire) {
            Ok(c) => c,
            Err(r) => return r,
        };
        if context.initiator != self.keys.node_id() {
            return refused("this node is not the initiator of the handshake");
        }
        let link = match context.authority {
            Authority::Introduction { link_public } => {
                // One use: the link key is gone once a message 1 is made
                // with it.
                let Some(link) = take_pending(&self.links, &context.connection_id) else {
                    return refused("no opened token for this connection ID");
                };
                if link.verifying_bytes() != link_public {
                    return refused("the link key does not match the context");
                }
                Some(link)
            }
            Authority::Renewal { .. } => None,
        };
        let seed = match ephemeral_seed() {
            Ok(seed) => seed,
            Err(r) => return r,
        };
        let result = handshake::initiate(
            &self.keys.agreement_secret(),
            &self.keys.agreement_public().0,
            peer_static,
            &context,
            seed,
            |hash| link.map_or([0; 64], |link| link.sign_handshake_proof(hash)),
        );
        match result {
            Ok((pending, message)) => {
                let handle = self.next_handle.fetch_add(1, Ordering::Relaxed);
                insert_pending(&self.handshakes, handle, pending);
                Response::Initiated { handle, message }
            }
            Err(e) => handshake_failed(e),
        }
    }

    fn respond(
        &self,
        wire: &WireContext,
        initiator_static: &[u8; 32],
        message: &[u8],
        accepted: &[u8],
    ) -> Response {
        let context = match context(wire) {
            Ok(c) => c,
            Err(r) => return r,
        };
        if context.target != self.keys.node_id() {
            return refused("this node is not the target of the handshake");
        }
        let link = match context.authority {
            Authority::Introduction { link_public } => {
                match LinkVerifyingKey::from_bytes(&link_public) {
                    Ok(link) => Some(link),
                    Err(_) => return refused("the link key is not a valid public key"),
                }
            }
            Authority::Renewal { .. } => None,
        };
        let accepted: Vec<Suite> = accepted
            .iter()
            .filter_map(|id| Suite::from_id(*id))
            .collect();
        let seed = match ephemeral_seed() {
            Ok(seed) => seed,
            Err(r) => return r,
        };
        let result = handshake::respond(
            &self.keys.agreement_secret(),
            &self.keys.agreement_public().0,
            initiator_static,
            &context,
            message,
            &accepted,
            seed,
            |hash, proof| link.is_some_and(|link| link.verify_handshake_proof(hash, proof).is_ok()),
        );
        match result {
            Ok((result, message)) => Response::Responded {
                keys: session_keys(result),
                message,
            },
            Err(e) => handshake_failed(e),
        }
    }
}

#[cfg(feature = "agent-probes")]
fn probe_response(probe: super::proto::Probe) -> Response {
    use super::proto::Probe;
    let outcome = match probe {
        Probe::TcpConnect(address) => std::net::TcpStream::connect(address.as_str())
            .map(|_| ())
            .map_err(|e| e.to_string()),
        Probe::ReadFile(path) => std::fs::read(&path).map(|_| ()).map_err(|e| e.to_string()),
        Probe::Exit => std::process::exit(70),
    };
    Response::Probed {
        succeeded: outcome.is_ok(),
        detail: outcome.err().unwrap_or_default(),
    }
}
