//! Parsed values in wire types: a handler receives a [`NodeId`] or 16
//! bytes, never a string to parse again. Each type travels as the text the
//! contract names (a node ID's base32, unpadded base64url for bytes).
//!
//! A value that does not parse fails deserialization with a message that
//! starts with its error code (`bad_node_id: …`), which the HTTP layer
//! answers as that code (see [`ErrorCode::of_field_error`]) instead of a
//! generic `bad_json`: the codes stay what the contract documents.

use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

use super::{b64_decode, b64_encode};
use crate::error_code::ErrorCode;
use crate::id::NodeId;

/// Reads one string, borrowed or not, and hands it to `parse`.
struct Text<F>(&'static str, F);

impl<T, F: FnOnce(&str) -> Result<T, String>> Visitor<'_> for Text<F> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        (self.1)(v).map_err(E::custom)
    }
}

impl Serialize for NodeId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for NodeId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<NodeId, D::Error> {
        deserializer.deserialize_str(Text("a node ID", |text: &str| {
            NodeId::parse(text).map_err(|e| format!("{}: {e}", ErrorCode::BadNodeId))
        }))
    }
}

/// Declares a newtype over bytes that travels as unpadded base64url and
/// whose text, when it does not decode to the right length, is refused
/// with `$code`.
macro_rules! b64_value {
    ($(#[$doc:meta])* $name:ident, $inner:ty, $code:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq)]
        pub struct $name(pub $inner);

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), b64_encode(&self.0))
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(&b64_encode(&self.0))
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<$name, D::Error> {
                deserializer.deserialize_str(Text($what, |text: &str| {
                    b64_decode(text)
                        .ok()
                        .and_then(|bytes| <$inner>::try_from(bytes).ok())
                        .map($name)
                        .ok_or_else(|| format!("{}: expected {}", ErrorCode::$code, $what))
                }))
            }
        }
    };
}

b64_value!(
    /// An introduction's connection ID: 16 bytes.
    ConnectionIdBytes, [u8; 16], BadConnectionId, "16 bytes, base64url"
);
b64_value!(
    /// A request nonce: 16 random bytes.
    NonceBytes, [u8; 16], BadNonce, "16 bytes, base64url"
);
b64_value!(
    /// A challenge: 32 random bytes.
    ChallengeBytes, [u8; 32], BadChallenge, "32 bytes, base64url"
);
b64_value!(
    /// An Ed25519 signature: 64 bytes.
    SignatureBytes, [u8; 64], BadSignature, "64 bytes, base64url"
);
b64_value!(
    /// An Ed25519 public key: 32 bytes.
    PublicKeyBytes, [u8; 32], BadRequest, "32 bytes, base64url"
);
b64_value!(
    /// A sealed token envelope.
    TokenBytes, Vec<u8>, BadToken, "base64url"
);
b64_value!(
    /// A signed node record in its canonical encoding.
    RecordBytes, Vec<u8>, BadRecord, "base64url"
);
b64_value!(
    /// A Noise handshake message.
    NoiseMessage, Vec<u8>, BadMessage, "base64url"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize, Serialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Body {
        node: NodeId,
        nonce: NonceBytes,
        token: TokenBytes,
    }

    fn code_of(json: &str) -> Option<ErrorCode> {
        let e = serde_json::from_str::<Body>(json).err()?;
        ErrorCode::of_field_error(&e.to_string())
    }

    #[test]
    fn values_travel_as_their_text_and_come_back_parsed() {
        let node = NodeId::from_bytes([7; 32]);
        let body = Body {
            node,
            nonce: NonceBytes([1; 16]),
            token: TokenBytes(vec![1, 2, 3]),
        };
        let json = serde_json::to_string(&body).unwrap_or_default();
        assert_eq!(
            json,
            format!(r#"{{"node":"{node}","nonce":"AQEBAQEBAQEBAQEBAQEBAQ","token":"AQID"}}"#)
        );
        assert_eq!(serde_json::from_str::<Body>(&json).ok(), Some(body));
    }

    #[test]
    fn a_value_that_does_not_parse_names_its_code() {
        let node = NodeId::from_bytes([7; 32]).to_string();
        let mut wrong_checksum = node.clone();
        wrong_checksum.replace_range(57.., if node.ends_with('a') { "b" } else { "a" });
        let body = |n: &str, nonce: &str, token: &str| {
            format!(r#"{{"node":"{n}","nonce":"{nonce}","token":"{token}"}}"#)
        };
        let nonce = "AQEBAQEBAQEBAQEBAQEBAQ";
        assert_eq!(
            code_of(&body(&wrong_checksum, nonce, "AQID")),
            Some(ErrorCode::BadNodeId)
        );
        assert_eq!(
            code_of(&body(&node, "AQEB", "AQID")),
            Some(ErrorCode::BadNonce)
        );
        assert_eq!(
            code_of(&body(&node, "not base64!", "AQID")),
            Some(ErrorCode::BadNonce)
        );
        assert_eq!(code_of(&body(&node, nonce, "A")), Some(ErrorCode::BadToken));
        assert!(code_of(&body(&node, nonce, "AQID")).is_none(), "it parses");
        // serde's own errors name no code: the HTTP layer answers bad_json.
        assert_eq!(code_of(r#"{"node": 7}"#), None);
        // Nor does a field name, which the client chooses.
        assert_eq!(code_of(r#"{"bad_node_id: x": 1}"#), None);
    }
}
