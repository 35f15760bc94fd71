//! The signed node record and its canonical encoding.
//!
//! A record is what a node publishes through the directory: who it is (its
//! node ID and identity key), the X25519 key peers use to reach it, where its
//! API lives, and a sequence number that only grows. The node signs the exact
//! bytes; the directory stores and serves those bytes untouched, so a client
//! verifies the record itself and trusts the directory for nothing but
//! availability.
//!
//! Encoding, version 1 (all integers big-endian):
//!
//! ```text
//! offset  size  field
//!      0     1  version (1)
//!      1    32  node_id
//!     33    32  identity_key (Ed25519)
//!     65    32  agreement_key (X25519)
//!     97     8  seq
//!    105     8  issued_at (Unix seconds)
//!    113     8  expires_at (Unix seconds)
//!    121     2  api_url length n (1..=255)
//!    123     n  api_url, canonical origin, UTF-8
//!  123+n    64  Ed25519 signature over bytes [0, 123+n) under the
//!               "openred/v1/node-record" context label
//! ```
//!
//! Decoding accepts exactly one byte string per record: no trailing bytes,
//! a canonical URL, and a node ID that matches the key.

use crate::id::NodeId;
use crate::keys::{
    AgreementPublicKey, IdentityKeypair, IdentityPublicKey, SignatureContext, SIGNATURE_LEN,
};
use crate::time::UnixTime;
use crate::url::{ApiUrl, UrlError, MAX_URL_LEN};

/// The record encoding version this code writes and reads.
pub const RECORD_VERSION: u8 = 1;
const FIXED_LEN: usize = 123;
/// The shortest encoded record (a one-byte URL).
pub const MIN_RECORD_LEN: usize = FIXED_LEN + 1 + SIGNATURE_LEN;
/// The longest encoded record.
pub const MAX_RECORD_LEN: usize = FIXED_LEN + MAX_URL_LEN + SIGNATURE_LEN;

/// Why a record was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// Too short, too long, or a length field that does not add up.
    #[error("the record is truncated or has trailing bytes")]
    Length,
    /// An encoding version this code does not know.
    #[error("unsupported record version {0}")]
    Version(u8),
    /// The identity key is not a valid Ed25519 key.
    #[error("the record's identity key is not a valid Ed25519 key")]
    IdentityKey,
    /// The node ID is not the one derived from the identity key.
    #[error("the node ID does not belong to the record's identity key")]
    NodeIdMismatch,
    /// The URL is not a canonical origin.
    #[error("the record's api_url is invalid: {0}")]
    Url(UrlError),
    /// The record expires before (or when) it is issued.
    #[error("the record expires before it is issued")]
    Lifetime,
    /// The signature does not verify.
    #[error("the record's signature does not verify")]
    Signature,
    /// `issued_at` is further from now than the allowed clock skew.
    #[error("the record was issued at {issued_at}, too far from now ({now}); allowed skew is {skew_secs} s")]
    Stale {
        /// The record's `issued_at`.
        issued_at: UnixTime,
        /// The verifier's time.
        now: UnixTime,
        /// The allowed skew.
        skew_secs: u64,
    },
    /// `expires_at` has passed.
    #[error("the record expired at {0}")]
    Expired(UnixTime),
}

/// The content of a node record, before signing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRecord {
    /// The node's ID, derived from `identity_key`.
    pub node_id: NodeId,
    /// The node's Ed25519 identity key.
    pub identity_key: IdentityPublicKey,
    /// The node's X25519 key for HPKE and Noise.
    pub agreement_key: AgreementPublicKey,
    /// Where the node's API lives (an origin).
    pub api_url: ApiUrl,
    /// Grows with every new record of this node.
    pub seq: u64,
    /// When the node signed the record.
    pub issued_at: UnixTime,
    /// After this, the record must not be used.
    pub expires_at: UnixTime,
}

impl NodeRecord {
    fn encode_body(&self) -> Vec<u8> {
        let url = self.api_url.as_str().as_bytes();
        let mut out = Vec::with_capacity(FIXED_LEN + url.len() + SIGNATURE_LEN);
        out.push(RECORD_VERSION);
        out.extend_from_slice(self.node_id.as_bytes());
        out.extend_from_slice(&self.identity_key.to_bytes());
        out.extend_from_slice(&self.agreement_key.0);
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.extend_from_slice(&self.issued_at.0.to_be_bytes());
        out.extend_from_slice(&self.expires_at.0.to_be_bytes());
        // ApiUrl guarantees at most MAX_URL_LEN (255) bytes.
        out.extend_from_slice(&(url.len() as u16).to_be_bytes());
        out.extend_from_slice(url);
        out
    }

    /// Signs the record with the node's identity key. The record's
    /// `node_id` and `identity_key` are taken from the key, so a node cannot
    /// sign a record that names someone else.
    #[allow(clippy::too_many_arguments)]
    pub fn sign(
        key: &IdentityKeypair,
        agreement_key: AgreementPublicKey,
        api_url: ApiUrl,
        seq: u64,
        issued_at: UnixTime,
        expires_at: UnixTime,
    ) -> SignedRecord {
        let record = NodeRecord {
            node_id: key.node_id(),
            identity_key: key.public(),
            agreement_key,
            api_url,
            seq,
            issued_at,
            expires_at,
        };
        let mut bytes = record.encode_body();
        let signature = key.sign(SignatureContext::NodeRecord, &bytes);
        bytes.extend_from_slice(&signature);
        SignedRecord { record, bytes }
    }
}

/// A record whose signature and node ID have been verified. The only ways to
/// get one are signing ([`NodeRecord::sign`]) and decoding
/// ([`SignedRecord::decode`]), so holding one means it is authentic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedRecord {
    record: NodeRecord,
    bytes: Vec<u8>,
}

impl SignedRecord {
    /// Parses and verifies an encoded record.
    pub fn decode(bytes: &[u8]) -> Result<SignedRecord, RecordError> {
        if bytes.len() < FIXED_LEN + SIGNATURE_LEN || bytes.len() > MAX_RECORD_LEN {
            return Err(RecordError::Length);
        }
        if bytes[0] != RECORD_VERSION {
            return Err(RecordError::Version(bytes[0]));
        }
        let array32 = |at: usize| -> [u8; 32] {
            let mut out = [0u8; 32];
            out.copy_from_slice(&bytes[at..at + 32]);
            out
        };
        let u64_at = |at: usize| -> u64 {
            let mut out = [0u8; 8];
            out.copy_from_slice(&bytes[at..at + 8]);
            u64::from_be_bytes(out)
        };
        let url_len = u16::from_be_bytes([bytes[121], bytes[122]]) as usize;
        let body_len = FIXED_LEN + url_len;
        if url_len == 0 || body_len + SIGNATURE_LEN != bytes.len() {
            return Err(RecordError::Length);
        }
        let node_id = NodeId::from_bytes(array32(1));
        let identity_key =
            IdentityPublicKey::from_bytes(&array32(33)).map_err(|_| RecordError::IdentityKey)?;
        if identity_key.node_id() != node_id {
            return Err(RecordError::NodeIdMismatch);
        }
        let url_text = std::str::from_utf8(&bytes[FIXED_LEN..body_len])
            .map_err(|_| RecordError::Url(UrlError::Syntax))?;
        let api_url = ApiUrl::parse_canonical(url_text).map_err(RecordError::Url)?;
        let record = NodeRecord {
            node_id,
            identity_key,
            agreement_key: AgreementPublicKey(array32(65)),
            api_url,
            seq: u64_at(97),
            issued_at: UnixTime(u64_at(105)),
            expires_at: UnixTime(u64_at(113)),
        };
        if record.expires_at <= record.issued_at {
            return Err(RecordError::Lifetime);
        }
        identity_key
            .verify(
                SignatureContext::NodeRecord,
                &bytes[..body_len],
                &bytes[body_len..],
            )
            .map_err(|_| RecordError::Signature)?;
        Ok(SignedRecord {
            record,
            bytes: bytes.to_vec(),
        })
    }

    /// The verified content.
    pub fn record(&self) -> &NodeRecord {
        &self.record
    }

    /// The exact signed bytes, to store and serve untouched.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Checks that the record was issued within `skew_secs` of `now` and has
    /// not expired. Used when a record is *registered*; a client reading a
    /// record later only checks expiry ([`SignedRecord::check_unexpired`]).
    pub fn check_fresh(&self, now: UnixTime, skew_secs: u64) -> Result<(), RecordError> {
        if self.record.issued_at.distance(now) > skew_secs {
            return Err(RecordError::Stale {
                issued_at: self.record.issued_at,
                now,
                skew_secs,
            });
        }
        self.check_unexpired(now)
    }

    /// Checks that the record has not expired at `now`.
    pub fn check_unexpired(&self, now: UnixTime) -> Result<(), RecordError> {
        if self.record.expires_at <= now {
            return Err(RecordError::Expired(self.record.expires_at));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::AgreementSecret;
    use proptest::prelude::*;

    fn signed(seed: u8, seq: u64, url: &str) -> SignedRecord {
        let key = IdentityKeypair::from_secret_bytes(&[seed; 32]);
        let agreement = AgreementSecret::from_secret_bytes([seed.wrapping_add(1); 32]);
        NodeRecord::sign(
            &key,
            agreement.public(),
            ApiUrl::parse_origin(url).unwrap(),
            seq,
            UnixTime(1_000),
            UnixTime(2_000),
        )
    }

    #[test]
    fn rejects_a_signature_made_for_another_context() {
        let key = IdentityKeypair::from_secret_bytes(&[1; 32]);
        let good = signed(1, 5, "https://a.example.com");
        let body_len = good.as_bytes().len() - SIGNATURE_LEN;
        let mut forged = good.as_bytes()[..body_len].to_vec();
        let sig = key.sign(SignatureContext::Deregistration, &forged);
        forged.extend_from_slice(&sig);
        assert_eq!(SignedRecord::decode(&forged), Err(RecordError::Signature));
    }

    #[test]
    fn rejects_a_record_naming_another_node() {
        let a = signed(1, 5, "https://a.example.com");
        let b = signed(2, 5, "https://a.example.com");
        let mut bytes = a.as_bytes().to_vec();
        bytes[1..33].copy_from_slice(b.record().node_id.as_bytes());
        assert_eq!(
            SignedRecord::decode(&bytes),
            Err(RecordError::NodeIdMismatch)
        );
    }

    #[test]
    fn freshness_and_expiry() {
        let r = signed(1, 5, "https://a.example.com");
        assert_eq!(r.check_fresh(UnixTime(1_200), 300), Ok(()));
        assert!(matches!(
            r.check_fresh(UnixTime(1_301), 300),
            Err(RecordError::Stale { .. })
        ));
        assert!(matches!(
            r.check_fresh(UnixTime(699), 300),
            Err(RecordError::Stale { .. })
        ));
        assert_eq!(
            r.check_unexpired(UnixTime(2_000)),
            Err(RecordError::Expired(UnixTime(2_000)))
        );
    }

    proptest! {
        #[test]
        fn round_trip(seed in 1u8..=255, seq in any::<u64>(), port in 1u16..=65535, host in "[a-z]{1,20}\\.[a-z]{2,8}") {
            let url = format!("https://{host}:{port}");
            let r = signed(seed, seq, &url);
            let decoded = SignedRecord::decode(r.as_bytes()).unwrap();
            prop_assert_eq!(&decoded, &r);
            prop_assert_eq!(decoded.record().seq, seq);
        }

        #[test]
        fn any_changed_byte_fails(seed in 1u8..=255, index in any::<prop::sample::Index>(), flip in 1u8..=255) {
            let r = signed(seed, 42, "https://node.example.com:8443");
            let mut bytes = r.as_bytes().to_vec();
            let i = index.index(bytes.len());
            bytes[i] ^= flip;
            prop_assert!(SignedRecord::decode(&bytes).is_err());
        }

        #[test]
        fn truncation_and_extension_fail(seed in 1u8..=255, cut in 1usize..100, extra in prop::collection::vec(any::<u8>(), 1..10)) {
            let r = signed(seed, 42, "https://node.example.com");
            let bytes = r.as_bytes();
            prop_assert!(SignedRecord::decode(&bytes[..bytes.len() - cut.min(bytes.len())]).is_err());
            let mut longer = bytes.to_vec();
            longer.extend_from_slice(&extra);
            prop_assert!(SignedRecord::decode(&longer).is_err());
        }

        #[test]
        fn arbitrary_bytes_are_rejected_without_panic(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
            prop_assert!(SignedRecord::decode(&bytes).is_err());
        }
    }
}
