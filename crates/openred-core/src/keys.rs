//! Identity and agreement keys, and signatures under context labels.
//!
//! Every signature in OpenRed is made over `label || 0x00 || message`, where
//! the label names what is signed. A signature made for one purpose (say, a
//! node record) therefore never verifies as another (say, a deregistration),
//! which keeps every signer from being used as an oracle for another kind.

use std::fmt;

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use zeroize::Zeroize;

use crate::id::{Fingerprint, NodeId};

/// Length of an Ed25519 signature.
pub const SIGNATURE_LEN: usize = 64;

/// What a signature is for. Each kind has its own label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureContext {
    /// A node's own record, published through the directory.
    NodeRecord,
    /// A node asking the directory to forget its record.
    Deregistration,
    /// A node asking the directory to introduce it to another node.
    ConnectionRequest,
    /// A node answering the directory's reachability challenge.
    ReachabilityProof,
    /// The directory signing a token envelope.
    TokenEnvelope,
    /// The initiator's proof of possession of its connection token.
    HandshakeProof,
    /// A peer re-proving its identity inside a session.
    AuthChallenge,
    /// An entry of a node's audit log.
    AuditEntry,
    /// The signed head of a node's audit log: how many entries it holds
    /// and the hash of the last one.
    AuditHead,
}

impl SignatureContext {
    /// Every context, for tests that sign in one and verify in the others.
    pub const ALL: [SignatureContext; 9] = [
        SignatureContext::NodeRecord,
        SignatureContext::Deregistration,
        SignatureContext::ConnectionRequest,
        SignatureContext::ReachabilityProof,
        SignatureContext::TokenEnvelope,
        SignatureContext::HandshakeProof,
        SignatureContext::AuthChallenge,
        SignatureContext::AuditEntry,
        SignatureContext::AuditHead,
    ];

    /// The label prepended to every message signed in this context.
    pub fn label(self) -> &'static str {
        match self {
            SignatureContext::NodeRecord => "openred/v1/node-record",
            SignatureContext::Deregistration => "openred/v1/deregistration",
            SignatureContext::ConnectionRequest => "openred/v1/connection-request",
            SignatureContext::ReachabilityProof => "openred/v1/reachability-proof",
            SignatureContext::TokenEnvelope => "openred/v1/token-envelope",
            SignatureContext::HandshakeProof => "openred/v1/handshake-proof",
            SignatureContext::AuthChallenge => "openred/v1/auth-challenge",
            SignatureContext::AuditEntry => "openred/v1/audit-entry",
            SignatureContext::AuditHead => "openred/v1/audit-head",
        }
    }

    fn framed(self, message: &[u8]) -> Vec<u8> {
        let label = self.label().as_bytes();
        let mut out = Vec::with_capacity(label.len() + 1 + message.len());
        out.extend_from_slice(label);
        out.push(0);
        out.extend_from_slice(message);
        out
    }
}

/// A signature did not verify, or was not even a signature.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// The bytes are not an Ed25519 public key.
    #[error("not a valid Ed25519 public key")]
    InvalidKey,
    /// The signature has the wrong length.
    #[error("a signature has 64 bytes")]
    Length,
    /// The signature does not verify for this key, message and context.
    #[error("the signature does not verify")]
    Mismatch,
}

/// An Ed25519 public key that identifies a node (or a directory).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct IdentityPublicKey(VerifyingKey);

impl IdentityPublicKey {
    /// Parses 32 bytes as an Ed25519 public key.
    pub fn from_bytes(bytes: &[u8; 32]) -> Result<Self, SignatureError> {
        VerifyingKey::from_bytes(bytes)
            .map(IdentityPublicKey)
            .map_err(|_| SignatureError::InvalidKey)
    }

    /// The key's 32 bytes.
    pub fn to_bytes(&self) -> [u8; 32] {
        self.0.to_bytes()
    }

    /// The node ID this key owns.
    pub fn node_id(&self) -> NodeId {
        NodeId::from_identity_key(self.0.as_bytes())
    }

    /// The fingerprint of this key when a directory uses it.
    pub fn directory_fingerprint(&self) -> Fingerprint {
        Fingerprint::of_directory_key(self.0.as_bytes())
    }

    /// Verifies `signature` over `message` in `context`. Uses strict
    /// verification, which rejects small-order keys and malleable signatures.
    pub fn verify(
        &self,
        context: SignatureContext,
        message: &[u8],
        signature: &[u8],
    ) -> Result<(), SignatureError> {
        let signature: [u8; SIGNATURE_LEN] =
            signature.try_into().map_err(|_| SignatureError::Length)?;
        let signature = ed25519_dalek::Signature::from_bytes(&signature);
        self.0
            .verify_strict(&context.framed(message), &signature)
            .map_err(|_| SignatureError::Mismatch)
    }
}

impl fmt::Debug for IdentityPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IdentityPublicKey({})", self.node_id())
    }
}

/// An Ed25519 key pair. The secret half is zeroized on drop.
pub struct IdentityKeypair(SigningKey);

impl IdentityKeypair {
    /// Builds the key pair from 32 secret bytes (from a CSPRNG or a key file).
    pub fn from_secret_bytes(secret: &[u8; 32]) -> IdentityKeypair {
        IdentityKeypair(SigningKey::from_bytes(secret))
    }

    /// The secret bytes, to be written to a key file. Zeroize the copy.
    pub fn secret_bytes(&self) -> zeroize::Zeroizing<[u8; 32]> {
        zeroize::Zeroizing::new(self.0.to_bytes())
    }

    /// The public half.
    pub fn public(&self) -> IdentityPublicKey {
        IdentityPublicKey(self.0.verifying_key())
    }

    /// The node ID that this key owns.
    pub fn node_id(&self) -> NodeId {
        self.public().node_id()
    }

    /// Signs `message` under `context`.
    pub fn sign(&self, context: SignatureContext, message: &[u8]) -> [u8; SIGNATURE_LEN] {
        self.0.sign(&context.framed(message)).to_bytes()
    }
}

impl fmt::Debug for IdentityKeypair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IdentityKeypair({}, secret hidden)", self.node_id())
    }
}

/// An X25519 public key for key agreement (HPKE, Noise), listed in the
/// node's signed record so that it is bound to the identity.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct AgreementPublicKey(pub [u8; 32]);

impl fmt::Debug for AgreementPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "AgreementPublicKey({})",
            data_encoding::HEXLOWER.encode(&self.0)
        )
    }
}

/// An X25519 secret key. Zeroized on drop.
pub struct AgreementSecret(x25519_dalek::StaticSecret);

impl AgreementSecret {
    /// Builds the secret from 32 bytes (from a CSPRNG or a key file).
    pub fn from_secret_bytes(mut secret: [u8; 32]) -> AgreementSecret {
        let key = x25519_dalek::StaticSecret::from(secret);
        secret.zeroize();
        AgreementSecret(key)
    }

    /// The secret bytes, to be written to a key file.
    pub fn secret_bytes(&self) -> zeroize::Zeroizing<[u8; 32]> {
        zeroize::Zeroizing::new(self.0.to_bytes())
    }

    /// The public half.
    pub fn public(&self) -> AgreementPublicKey {
        AgreementPublicKey(x25519_dalek::PublicKey::from(&self.0).to_bytes())
    }
}

impl fmt::Debug for AgreementSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AgreementSecret({:?}, secret hidden)", self.public())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_distinct() {
        for (i, a) in SignatureContext::ALL.iter().enumerate() {
            for b in &SignatureContext::ALL[i + 1..] {
                assert_ne!(a.label(), b.label());
            }
        }
    }

    #[test]
    fn a_signature_verifies_only_in_its_own_context() {
        let key = IdentityKeypair::from_secret_bytes(&[3; 32]);
        for signed_in in SignatureContext::ALL {
            let sig = key.sign(signed_in, b"message");
            for checked_in in SignatureContext::ALL {
                let result = key.public().verify(checked_in, b"message", &sig);
                assert_eq!(
                    result.is_ok(),
                    signed_in == checked_in,
                    "{signed_in:?} vs {checked_in:?}"
                );
            }
        }
    }

    #[test]
    fn another_key_does_not_verify() {
        let a = IdentityKeypair::from_secret_bytes(&[3; 32]);
        let b = IdentityKeypair::from_secret_bytes(&[4; 32]);
        let sig = a.sign(SignatureContext::NodeRecord, b"m");
        assert_eq!(
            b.public().verify(SignatureContext::NodeRecord, b"m", &sig),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            a.public()
                .verify(SignatureContext::NodeRecord, b"m", &sig[..63]),
            Err(SignatureError::Length)
        );
    }

    #[test]
    fn agreement_key_round_trips_through_bytes() {
        let s = AgreementSecret::from_secret_bytes([5; 32]);
        let again = AgreementSecret::from_secret_bytes(*s.secret_bytes());
        assert_eq!(s.public(), again.public());
    }
}
