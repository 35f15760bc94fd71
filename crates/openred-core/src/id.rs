//! Node IDs and key fingerprints.
//!
//! A node ID is a BLAKE3 derivation of the node's Ed25519 identity public key,
//! so anyone holding a record can check that the record's key owns the ID
//! (self-certifying, as in Syncthing and libp2p). Its textual form is lowercase
//! base32 (RFC 4648, no padding) of the 32 ID bytes followed by a 4-byte
//! checksum, so that a mistyped or truncated copy is rejected rather than
//! silently naming another node.

use std::fmt;
use std::str::FromStr;

use data_encoding::BASE32_NOPAD;

const NODE_ID_LABEL: &str = "openred v1 node id";
const DIRECTORY_FINGERPRINT_LABEL: &str = "openred v1 directory key fingerprint";
const CHECKSUM_LABEL: &str = "openred v1 id checksum";
const CHECKSUM_LEN: usize = 4;

/// Length of the textual form of a node ID or fingerprint.
pub const TEXT_LEN: usize = 58;

/// Why a textual ID was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// The text has the wrong length.
    #[error("an ID has {expected} characters, this one has {found}")]
    Length {
        /// Expected number of characters.
        expected: usize,
        /// Number found.
        found: usize,
    },
    /// A character outside the base32 alphabet.
    #[error("character {position} ({character:?}) is not base32 (a-z, 2-7)")]
    Character {
        /// Zero-based position of the offending character.
        position: usize,
        /// The character.
        character: char,
    },
    /// The checksum does not match: a typo or a truncated copy.
    #[error("the ID's checksum does not match: it was mistyped or altered")]
    Checksum,
}

/// The ID of a node: 32 bytes derived from its identity public key.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId([u8; 32]);

impl NodeId {
    /// Derives the node ID owned by an Ed25519 identity public key.
    pub fn from_identity_key(public_key: &[u8; 32]) -> NodeId {
        NodeId(blake3::derive_key(NODE_ID_LABEL, public_key))
    }

    /// Wraps raw ID bytes, e.g. read back from storage.
    pub fn from_bytes(bytes: [u8; 32]) -> NodeId {
        NodeId(bytes)
    }

    /// The raw ID bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Parses the textual form. Case-insensitive; surrounding white space is
    /// ignored, since IDs are copied and pasted.
    pub fn parse(text: &str) -> Result<NodeId, IdError> {
        decode_text(text).map(NodeId)
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&encode_text(&self.0))
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({self})")
    }
}

impl FromStr for NodeId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        NodeId::parse(s)
    }
}

/// The fingerprint of a directory's Ed25519 key, which nodes pin.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint([u8; 32]);

impl Fingerprint {
    /// The fingerprint of a directory's public key.
    pub fn of_directory_key(public_key: &[u8; 32]) -> Fingerprint {
        Fingerprint(blake3::derive_key(DIRECTORY_FINGERPRINT_LABEL, public_key))
    }

    /// Parses the textual form (same alphabet and checksum as node IDs).
    pub fn parse(text: &str) -> Result<Fingerprint, IdError> {
        decode_text(text).map(Fingerprint)
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&encode_text(&self.0))
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

fn checksum(bytes: &[u8; 32]) -> [u8; CHECKSUM_LEN] {
    let full = blake3::derive_key(CHECKSUM_LABEL, bytes);
    let mut out = [0u8; CHECKSUM_LEN];
    out.copy_from_slice(&full[..CHECKSUM_LEN]);
    out
}

fn encode_text(bytes: &[u8; 32]) -> String {
    let mut buf = [0u8; 32 + CHECKSUM_LEN];
    buf[..32].copy_from_slice(bytes);
    buf[32..].copy_from_slice(&checksum(bytes));
    BASE32_NOPAD.encode(&buf).to_ascii_lowercase()
}

fn decode_text(text: &str) -> Result<[u8; 32], IdError> {
    let text = text.trim();
    let found = text.chars().count();
    if found != TEXT_LEN {
        return Err(IdError::Length {
            expected: TEXT_LEN,
            found,
        });
    }
    if let Some((position, character)) = text
        .chars()
        .enumerate()
        .find(|(_, c)| !matches!(c, 'a'..='z' | 'A'..='Z' | '2'..='7'))
    {
        return Err(IdError::Character {
            position,
            character,
        });
    }
    let upper = text.to_ascii_uppercase();
    // 58 base32 characters carry 290 bits; the last two must be zero in a
    // canonical encoding, which `decode` enforces, so each ID has one text.
    let raw = BASE32_NOPAD
        .decode(upper.as_bytes())
        .map_err(|_| IdError::Checksum)?;
    if raw.len() != 32 + CHECKSUM_LEN {
        return Err(IdError::Checksum);
    }
    let mut bytes = [0u8; 32];
    bytes.copy_from_slice(&raw[..32]);
    if raw[32..] != checksum(&bytes) {
        return Err(IdError::Checksum);
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn text_is_58_lowercase_chars() {
        let id = NodeId::from_bytes([7; 32]);
        let text = id.to_string();
        assert_eq!(text.len(), TEXT_LEN);
        assert!(text
            .chars()
            .all(|c| c.is_ascii_lowercase() || ('2'..='7').contains(&c)));
    }

    #[test]
    fn rejects_wrong_length() {
        let text = NodeId::from_bytes([1; 32]).to_string();
        assert_eq!(
            NodeId::parse(&text[..57]),
            Err(IdError::Length {
                expected: 58,
                found: 57
            })
        );
    }

    #[test]
    fn rejects_bad_character() {
        let mut text = NodeId::from_bytes([1; 32]).to_string();
        text.replace_range(3..4, "1");
        assert_eq!(
            NodeId::parse(&text),
            Err(IdError::Character {
                position: 3,
                character: '1'
            })
        );
    }

    #[test]
    fn node_id_and_fingerprint_differ_for_one_key() {
        let key = [9u8; 32];
        assert_ne!(
            NodeId::from_identity_key(&key).to_string(),
            Fingerprint::of_directory_key(&key).to_string()
        );
    }

    proptest! {
        #[test]
        fn round_trip(bytes in any::<[u8; 32]>()) {
            let id = NodeId::from_bytes(bytes);
            prop_assert_eq!(NodeId::parse(&id.to_string()), Ok(id));
            prop_assert_eq!(NodeId::parse(&id.to_string().to_uppercase()), Ok(id));
        }

        #[test]
        fn any_single_substitution_is_rejected(bytes in any::<[u8; 32]>(), pos in 0usize..TEXT_LEN, sym in 0usize..32) {
            let text = NodeId::from_bytes(bytes).to_string();
            let alphabet = b"abcdefghijklmnopqrstuvwxyz234567";
            let replacement = alphabet[sym] as char;
            prop_assume!(text.as_bytes()[pos] as char != replacement);
            let mut altered = text.clone().into_bytes();
            altered[pos] = replacement as u8;
            let altered = String::from_utf8(altered).unwrap();
            prop_assert!(NodeId::parse(&altered).is_err());
        }
    }
}
