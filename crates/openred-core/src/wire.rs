//! The JSON bodies of the directory API, in one place.
//!
//! These are deliberate wire types: domain types ([`crate::SignedRecord`],
//! [`crate::NodeId`]) never derive `Serialize`; handlers convert at the
//! boundary. Binary values travel as unpadded base64url. Every request type
//! rejects unknown fields, so a typo in a client is an error, not a silently
//! ignored field. The API version is in the path (`/api/v3/…`).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::{Deserialize, Serialize};

use crate::id::NodeId;
use crate::keys::{IdentityKeypair, IdentityPublicKey, SignatureContext, SignatureError};
use crate::time::UnixTime;

#[cfg(feature = "openapi")]
use utoipa::ToSchema;

pub mod integer;
pub mod typed;
pub use typed::{
    ChallengeBytes, ConnectionIdBytes, NoiseMessage, NonceBytes, PublicKeyBytes, RecordBytes,
    SignatureBytes, TokenBytes,
};
#[cfg(feature = "openapi")]
mod schema;
#[cfg(feature = "openapi")]
pub use schema::*;

/// Encodes bytes as unpadded base64url, the form of every binary JSON value.
pub fn b64_encode(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Decodes unpadded base64url.
pub fn b64_decode(text: &str) -> Result<Vec<u8>, base64::DecodeError> {
    URL_SAFE_NO_PAD.decode(text)
}

/// Every error answer: `{"error": CODE, "message": TEXT}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct ErrorBody {
    /// A stable, machine-readable code, e.g. `seq_replay`.
    #[cfg_attr(feature = "openapi", schema(value_type = ErrorCodeText))]
    pub error: crate::error_code::ErrorCode,
    /// A human-readable explanation.
    pub message: String,
}

/// Whether a node has been seen recently.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum NodeStatus {
    /// Seen within the directory's activity window.
    Active,
    /// Not seen for longer than the activity window.
    Inactive,
}

/// `POST /api/v3/nodes/register`: register or refresh a node. Also the
/// heartbeat: a node re-registers with the next `seq`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    /// The signed record, base64url of its canonical encoding.
    #[cfg_attr(feature = "openapi", schema(value_type = SignedRecordText))]
    pub record: RecordBytes,
}

/// The answer to a registration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(deny_unknown_fields)]
pub struct RegisterResponse {
    /// The registered node.
    #[cfg_attr(feature = "openapi", schema(value_type = NodeIdText))]
    pub node_id: NodeId,
    /// Its status (always `active` right after a registration).
    pub status: NodeStatus,
    /// The `seq` now stored.
    #[cfg_attr(feature = "openapi", schema(value_type = SeqNumber))]
    pub seq: u64,
    /// When the directory saw it, Unix seconds.
    #[cfg_attr(feature = "openapi", schema(value_type = UnixSeconds))]
    pub last_seen: u64,
    /// When to send the next heartbeat, in seconds from now. The directory
    /// spreads these with jitter to set the pace for a crowd of nodes.
    pub next_heartbeat_s: u64,
}

/// One node in a discovery answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(deny_unknown_fields)]
pub struct NodeEntry {
    /// The node's ID.
    #[cfg_attr(feature = "openapi", schema(value_type = NodeIdText))]
    pub node_id: NodeId,
    /// The node's API origin, copied from the record.
    pub api_url: String,
    /// When the directory last heard from it, Unix seconds.
    #[cfg_attr(feature = "openapi", schema(value_type = UnixSeconds))]
    pub last_seen: u64,
    /// Active or inactive.
    pub status: NodeStatus,
    /// The node's signed record exactly as the node signed it (base64url):
    /// clients verify it themselves.
    #[cfg_attr(feature = "openapi", schema(value_type = SignedRecordText))]
    pub record: RecordBytes,
}

/// `GET /api/v3/nodes/discover`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(deny_unknown_fields)]
pub struct DiscoverResponse {
    /// The nodes on this page, ordered by node ID.
    pub nodes: Vec<NodeEntry>,
    /// Pass as `cursor` to get the next page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<CursorText>))]
    pub next_cursor: Option<String>,
}

/// `POST /api/v3/nodes/deregister`: the node asks to be forgotten.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(deny_unknown_fields)]
pub struct DeregisterRequest {
    /// The node leaving.
    #[cfg_attr(feature = "openapi", schema(value_type = NodeIdText))]
    pub node_id: NodeId,
    /// Greater than the stored record's `seq`, so the request cannot be
    /// replayed and no older record can be re-registered afterwards.
    #[cfg_attr(feature = "openapi", schema(value_type = SeqNumber))]
    #[serde(deserialize_with = "integer::u64")]
    pub seq: u64,
    /// When the node signed the request, Unix seconds.
    #[cfg_attr(feature = "openapi", schema(value_type = UnixSeconds))]
    #[serde(deserialize_with = "integer::u64")]
    pub issued_at: u64,
    /// Signature by the node's identity key over
    /// [`deregistration_message`], base64url.
    #[cfg_attr(feature = "openapi", schema(value_type = SignatureText))]
    pub signature: SignatureBytes,
}

/// The answer to a deregistration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(deny_unknown_fields)]
pub struct DeregisterResponse {
    /// The node forgotten.
    #[cfg_attr(feature = "openapi", schema(value_type = NodeIdText))]
    pub node_id: NodeId,
    /// Always true.
    pub deregistered: bool,
}

/// Node counts in the health answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(deny_unknown_fields)]
pub struct NodeCounts {
    /// Nodes seen within the activity window.
    pub active: u64,
    /// Registered nodes not seen within it.
    pub inactive: u64,
}

/// `GET /api/v3/health`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(deny_unknown_fields)]
pub struct HealthResponse {
    /// `ok` when the service and its database answer.
    pub status: String,
    /// The software version.
    pub version: String,
    /// The fingerprint of the directory's key, which nodes pin.
    #[cfg_attr(feature = "openapi", schema(value_type = FingerprintText))]
    pub directory_key: String,
    /// The directory's Ed25519 public key (base64url), whose fingerprint is
    /// `directory_key`: nodes verify token envelopes with it.
    #[cfg_attr(feature = "openapi", schema(value_type = Bytes32))]
    pub directory_public_key: PublicKeyBytes,
    /// Registered nodes by status.
    pub nodes: NodeCounts,
}

/// `POST /api/v3/tokens/request-connection`: node `from` asks to be
/// introduced to `target`. Signed by `from` over
/// [`connection_request_message`].
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ConnectionRequest {
    /// The requester.
    #[cfg_attr(feature = "openapi", schema(value_type = NodeIdText))]
    pub from: NodeId,
    /// The node it wants to meet.
    #[cfg_attr(feature = "openapi", schema(value_type = NodeIdText))]
    pub target: NodeId,
    /// 16 random bytes (base64url), never reused within the freshness window.
    #[cfg_attr(feature = "openapi", schema(value_type = Bytes16))]
    pub nonce: NonceBytes,
    /// When the requester signed, Unix seconds.
    #[cfg_attr(feature = "openapi", schema(value_type = UnixSeconds))]
    #[serde(deserialize_with = "integer::u64")]
    pub issued_at: u64,
    /// The requester's signature, base64url.
    #[cfg_attr(feature = "openapi", schema(value_type = SignatureText))]
    pub signature: SignatureBytes,
}

/// The answer to an introduction request: token_a.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ConnectionResponse {
    /// The introduction's connection ID (base64url, 16 bytes).
    #[cfg_attr(feature = "openapi", schema(value_type = Bytes16))]
    pub connection_id: ConnectionIdBytes,
    /// When both tokens expire, Unix seconds.
    #[cfg_attr(feature = "openapi", schema(value_type = UnixSeconds))]
    pub expires_at: u64,
    /// token_a: the envelope sealed to the requester (base64url).
    #[cfg_attr(feature = "openapi", schema(value_type = Base64Text))]
    pub token: TokenBytes,
}

/// `POST /api/v3/tokens/receive` on a node: the directory pushes token_b.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(deny_unknown_fields)]
pub struct TokenPush {
    /// The initiator's node ID.
    #[cfg_attr(feature = "openapi", schema(value_type = NodeIdText))]
    pub from: NodeId,
    /// token_b: the envelope sealed to this node (base64url).
    #[cfg_attr(feature = "openapi", schema(value_type = Base64Text))]
    pub token: TokenBytes,
}

/// A node's answer to a token push.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(deny_unknown_fields)]
pub struct TokenAccepted {
    /// Always true.
    pub accepted: bool,
    /// The connection ID (base64url).
    #[cfg_attr(feature = "openapi", schema(value_type = Bytes16))]
    pub connection_id: ConnectionIdBytes,
}

/// `POST /api/v3/reachability` on a node: the directory's fresh challenge,
/// sent to the URL a node registers, before that URL is accepted.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ReachabilityChallenge {
    /// The node the directory expects to find there.
    #[cfg_attr(feature = "openapi", schema(value_type = NodeIdText))]
    pub node_id: NodeId,
    /// 32 random bytes, base64url.
    #[cfg_attr(feature = "openapi", schema(value_type = Bytes32))]
    pub challenge: ChallengeBytes,
}

/// The node's answer: a signature over [`reachability_message`].
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ReachabilityProof {
    /// The node answering.
    #[cfg_attr(feature = "openapi", schema(value_type = NodeIdText))]
    pub node_id: NodeId,
    /// Its signature, base64url.
    #[cfg_attr(feature = "openapi", schema(value_type = SignatureText))]
    pub signature: SignatureBytes,
}

/// `POST /p2p/handshake`: Noise KK message 1 for an introduction.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HandshakeRequest {
    /// The introduction's connection ID (base64url).
    pub connection_id: ConnectionIdBytes,
    /// The offered suite IDs, in preference order (also bound in the
    /// prologue and repeated inside the encrypted payload).
    pub suites: Vec<u8>,
    /// Noise message 1 (base64url).
    pub message: NoiseMessage,
}

/// The target's answer: Noise message 2.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HandshakeResponse {
    /// Always true.
    pub session_established: bool,
    /// The session ID (hex), derived from the handshake hash.
    pub session_id: String,
    /// Noise message 2 (base64url).
    pub message: NoiseMessage,
}

const CONNECTION_REQUEST_VERSION: u8 = 1;

/// The exact bytes a node signs to ask for an introduction:
/// `version(1) || from(32) || target(32) || nonce(16) || issued_at(u64 BE)`.
pub fn connection_request_message(
    from: &NodeId,
    target: &NodeId,
    nonce: &[u8; 16],
    issued_at: UnixTime,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(89);
    out.push(CONNECTION_REQUEST_VERSION);
    out.extend_from_slice(from.as_bytes());
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(nonce);
    out.extend_from_slice(&issued_at.0.to_be_bytes());
    out
}

const REACHABILITY_VERSION: u8 = 1;

/// The exact bytes a node signs to prove it answers at `api_url`:
/// `version(1) || challenge(32) || node_id(32) || directory fingerprint
/// text || 0x00 || api_url`.
pub fn reachability_message(
    challenge: &[u8; 32],
    node_id: &NodeId,
    directory: &str,
    api_url: &str,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(66 + directory.len() + api_url.len());
    out.push(REACHABILITY_VERSION);
    out.extend_from_slice(challenge);
    out.extend_from_slice(node_id.as_bytes());
    out.extend_from_slice(directory.as_bytes());
    out.push(0);
    out.extend_from_slice(api_url.as_bytes());
    out
}

const DEREGISTRATION_VERSION: u8 = 1;

/// The exact bytes a node signs to deregister:
/// `version(1) || node_id(32) || seq(u64 BE) || issued_at(u64 BE)`, under
/// the deregistration context label.
pub fn deregistration_message(node_id: &NodeId, seq: u64, issued_at: UnixTime) -> Vec<u8> {
    let mut out = Vec::with_capacity(49);
    out.push(DEREGISTRATION_VERSION);
    out.extend_from_slice(node_id.as_bytes());
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(&issued_at.0.to_be_bytes());
    out
}

const AUDIT_VERSION: u8 = 1;

/// The exact bytes a node signs for one entry of its audit log:
/// `version(1) || node_id(32) || seq(u64 BE) || entry_hash(32)`, under the
/// audit-entry context label. `entry_hash` is the BLAKE3 hash the node's
/// audit module computes over the entry's canonical form without its
/// signature (see `openred_node::audit`).
pub fn audit_entry_message(node_id: &NodeId, seq: u64, entry_hash: &[u8; 32]) -> Vec<u8> {
    audit_message(node_id, seq, entry_hash)
}

/// The exact bytes a node signs for the head of its audit log:
/// `version(1) || node_id(32) || entries(u64 BE) || last_line_hash(32)`,
/// under the audit-head context label (so that no entry signature passes
/// for a head, nor the reverse).
pub fn audit_head_message(node_id: &NodeId, entries: u64, last_line_hash: &[u8; 32]) -> Vec<u8> {
    audit_message(node_id, entries, last_line_hash)
}

fn audit_message(node_id: &NodeId, number: u64, hash: &[u8; 32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(73);
    out.push(AUDIT_VERSION);
    out.extend_from_slice(node_id.as_bytes());
    out.extend_from_slice(&number.to_be_bytes());
    out.extend_from_slice(hash);
    out
}

const AUTH_CHALLENGE_VERSION: u8 = 1;

/// The exact bytes a node signs to answer a peer's auth challenge inside a
/// session: `version(1) || challenger(32) || prover(32) || session_id(16)
/// || challenge(32)`, under the auth-challenge context label. Both node
/// IDs and the session ID are in it, so an answer proves nothing to a
/// third node, nor in another session, and the challenger's fresh random
/// challenge makes every answer single-use.
pub fn auth_challenge_message(
    challenger: &NodeId,
    prover: &NodeId,
    session_id: &[u8; 16],
    challenge: &[u8; 32],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(113);
    out.push(AUTH_CHALLENGE_VERSION);
    out.extend_from_slice(challenger.as_bytes());
    out.extend_from_slice(prover.as_bytes());
    out.extend_from_slice(session_id);
    out.extend_from_slice(challenge);
    out
}

impl DeregisterRequest {
    /// Builds and signs a deregistration with the node's key.
    pub fn sign(key: &IdentityKeypair, seq: u64, issued_at: UnixTime) -> DeregisterRequest {
        let node_id = key.node_id();
        let signature = key.sign(
            SignatureContext::Deregistration,
            &deregistration_message(&node_id, seq, issued_at),
        );
        DeregisterRequest {
            node_id,
            seq,
            issued_at: issued_at.0,
            signature: SignatureBytes(signature),
        }
    }

    /// Verifies the signature against the node's stored identity key.
    pub fn verify(&self, key: &IdentityPublicKey) -> Result<(), SignatureError> {
        key.verify(
            SignatureContext::Deregistration,
            &deregistration_message(&self.node_id, self.seq, UnixTime(self.issued_at)),
            &self.signature.0,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_reject_unknown_fields() {
        let err = serde_json::from_str::<RegisterRequest>(r#"{"record":"AA","extra":1}"#);
        assert!(err.is_err());
        assert!(serde_json::from_str::<RegisterRequest>(r#"{"record":"AA"}"#).is_ok());
    }

    #[test]
    fn deregistration_signature_binds_every_field() {
        let key = IdentityKeypair::from_secret_bytes(&[8; 32]);
        let req = DeregisterRequest::sign(&key, 7, UnixTime(100));
        assert_eq!(req.verify(&key.public()), Ok(()));
        let mut other = req.clone();
        other.seq = 8;
        assert!(other.verify(&key.public()).is_err());
        let mut other = req.clone();
        other.issued_at = 101;
        assert!(other.verify(&key.public()).is_err());
        let other_key = IdentityKeypair::from_secret_bytes(&[9; 32]);
        let mut other = req.clone();
        other.node_id = other_key.node_id();
        assert!(other.verify(&key.public()).is_err());
    }
}
