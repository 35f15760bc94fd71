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
    pub error: String,
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
    pub record: String,
}

/// The answer to a registration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(deny_unknown_fields)]
pub struct RegisterResponse {
    /// The registered node.
    pub node_id: String,
    /// Its status (always `active` right after a registration).
    pub status: NodeStatus,
    /// The `seq` now stored.
    pub seq: u64,
    /// When the directory saw it, Unix seconds.
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
    pub node_id: String,
    /// The node's API origin, copied from the record.
    pub api_url: String,
    /// When the directory last heard from it, Unix seconds.
    pub last_seen: u64,
    /// Active or inactive.
    pub status: NodeStatus,
    /// The node's signed record exactly as the node signed it (base64url):
    /// clients verify it themselves.
    pub record: String,
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
    pub next_cursor: Option<String>,
}

/// `POST /api/v3/nodes/deregister`: the node asks to be forgotten.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(deny_unknown_fields)]
pub struct DeregisterRequest {
    /// The node leaving.
    pub node_id: String,
    /// Greater than the stored record's `seq`, so the request cannot be
    /// replayed and no older record can be re-registered afterwards.
    pub seq: u64,
    /// When the node signed the request, Unix seconds.
    pub issued_at: u64,
    /// Signature by the node's identity key over
    /// [`deregistration_message`], base64url.
    pub signature: String,
}

/// The answer to a deregistration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(deny_unknown_fields)]
pub struct DeregisterResponse {
    /// The node forgotten.
    pub node_id: String,
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
    pub directory_key: String,
    /// Registered nodes by status.
    pub nodes: NodeCounts,
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

impl DeregisterRequest {
    /// Builds and signs a deregistration with the node's key.
    pub fn sign(key: &IdentityKeypair, seq: u64, issued_at: UnixTime) -> DeregisterRequest {
        let node_id = key.node_id();
        let signature = key.sign(
            SignatureContext::Deregistration,
            &deregistration_message(&node_id, seq, issued_at),
        );
        DeregisterRequest {
            node_id: node_id.to_string(),
            seq,
            issued_at: issued_at.0,
            signature: b64_encode(&signature),
        }
    }

    /// Verifies the signature against the node's stored identity key.
    pub fn verify(&self, node_id: &NodeId, key: &IdentityPublicKey) -> Result<(), SignatureError> {
        let signature = b64_decode(&self.signature).map_err(|_| SignatureError::Length)?;
        key.verify(
            SignatureContext::Deregistration,
            &deregistration_message(node_id, self.seq, UnixTime(self.issued_at)),
            &signature,
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
        let id = key.node_id();
        assert_eq!(req.verify(&id, &key.public()), Ok(()));
        let mut other = req.clone();
        other.seq = 8;
        assert!(other.verify(&id, &key.public()).is_err());
        let mut other = req.clone();
        other.issued_at = 101;
        assert!(other.verify(&id, &key.public()).is_err());
        let other_key = IdentityKeypair::from_secret_bytes(&[9; 32]);
        assert!(req.verify(&other_key.node_id(), &key.public()).is_err());
    }
}
