//! OpenAPI schemas for the text forms of binary values, so that a document
//! says exactly which strings a server accepts: a node ID is 58 lowercase
//! base32 characters, a signature is the base64url of 64 bytes, and so on.
//!
//! Each type here is a marker used as `#[schema(value_type = …)]` on a wire
//! field (or as a parameter's type); it carries no data. A pattern states
//! the form; what no pattern can state (a node ID's checksum, a
//! signature's validity) is in the description, and servers answer it with
//! a 4xx JSON error.

use std::borrow::Cow;

use utoipa::openapi::schema::{Object, ObjectBuilder, Schema, SchemaFormat, Type};
use utoipa::openapi::RefOr;
use utoipa::{PartialSchema, ToSchema};

use crate::id::TEXT_LEN;
use crate::keys::SIGNATURE_LEN;
use crate::record::{MAX_RECORD_LEN, MIN_RECORD_LEN};

/// The base64url alphabet, as a regex class.
const B64: &str = "[A-Za-z0-9_-]";

/// The length of the unpadded base64url text of `bytes` bytes.
pub const fn b64_len(bytes: usize) -> usize {
    (bytes * 4).div_ceil(3)
}

/// The regex (anchored) of the unpadded base64url text of exactly `bytes`
/// bytes, as the decoder accepts it: the bits left over in the last
/// character must be zero (the `base64` crate refuses them otherwise), so
/// the last character of a text whose length is not a multiple of four
/// comes from a smaller set.
pub fn b64_pattern(bytes: usize) -> String {
    let full = bytes / 3 * 4;
    match bytes % 3 {
        0 => format!("^{B64}{{{full}}}$"),
        // 8 bits in two characters: the second keeps 2 bits, 4 are zero.
        1 => format!("^{B64}{{{}}}[AQgw]$", full + 1),
        // 16 bits in three characters: the third keeps 4 bits, 2 are zero.
        _ => format!("^{B64}{{{}}}[AEIMQUYcgkosw048]$", full + 2),
    }
}

/// The regex (anchored) of any unpadded base64url text the decoder
/// accepts: whole groups of four, then a group of two or three whose last
/// character has its unused bits zero.
pub fn b64_any_pattern() -> String {
    format!("^(?:{B64}{{4}})*(?:{B64}[AQgw]|{B64}{{2}}[AEIMQUYcgkosw048])?$")
}

/// The regex of a node ID or fingerprint as servers write it.
pub const NODE_ID_PATTERN: &str = "^[a-z2-7]{58}$";

/// The regex of a discovery cursor: base64url of the version byte 1 and a
/// node ID (33 bytes), so it starts with `A` and one of `Q`..`f`.
pub const CURSOR_PATTERN: &str = "^A[Q-Za-f][A-Za-z0-9_-]{42}$";

fn string(description: &str) -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .description(Some(description))
}

fn b64_exact(bytes: usize, description: &str) -> Object {
    string(description)
        .pattern(Some(b64_pattern(bytes)))
        .min_length(Some(b64_len(bytes)))
        .max_length(Some(b64_len(bytes)))
        .build()
}

macro_rules! text_schema {
    ($(#[$doc:meta])* $name:ident, $schema_name:literal, $build:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy)]
        pub struct $name;

        impl PartialSchema for $name {
            fn schema() -> RefOr<Schema> {
                let object: Object = $build;
                RefOr::T(Schema::Object(object))
            }
        }

        impl ToSchema for $name {
            fn name() -> Cow<'static, str> {
                Cow::Borrowed($schema_name)
            }
        }
    };
}

text_schema!(
    /// A node ID: the base32 (RFC 4648, lowercase, unpadded) of the 32-byte
    /// ID and a 4-byte checksum.
    NodeIdText,
    "NodeId",
    string(
        "A node ID: 58 lowercase base32 characters (the 32-byte ID and a 4-byte \
         checksum). Input is case-insensitive and may be surrounded by white space; \
         a wrong checksum is refused with 400 bad_node_id.",
    )
    .pattern(Some(NODE_ID_PATTERN))
    .min_length(Some(TEXT_LEN))
    .max_length(Some(TEXT_LEN))
    .build()
);

text_schema!(
    /// A directory key fingerprint: same form as a node ID.
    FingerprintText,
    "Fingerprint",
    string("A directory key fingerprint: same alphabet, length and checksum as a node ID.")
        .pattern(Some(NODE_ID_PATTERN))
        .min_length(Some(TEXT_LEN))
        .max_length(Some(TEXT_LEN))
        .build()
);

text_schema!(
    /// 16 bytes in base64url: nonces and connection IDs.
    Bytes16,
    "Base64Url16",
    b64_exact(16, "16 bytes, unpadded base64url (22 characters).")
);

text_schema!(
    /// 32 bytes in base64url: challenges and public keys.
    Bytes32,
    "Base64Url32",
    b64_exact(32, "32 bytes, unpadded base64url (43 characters).")
);

text_schema!(
    /// An Ed25519 signature in base64url.
    SignatureText,
    "Signature",
    b64_exact(
        SIGNATURE_LEN,
        "An Ed25519 signature: 64 bytes, unpadded base64url (86 characters). One that \
         does not verify is refused with 400 bad_signature.",
    )
);

text_schema!(
    /// A signed record in base64url.
    SignedRecordText,
    "SignedRecordBytes",
    string(
        "A signed node record, unpadded base64url of its canonical encoding \
         (docs/PROTOCOL.md). One that does not decode, verify or pass the \
         directory's policy is refused with a 400 naming the reason.",
    )
    .pattern(Some(b64_any_pattern()))
    .min_length(Some(b64_len(MIN_RECORD_LEN)))
    .max_length(Some(b64_len(MAX_RECORD_LEN)))
    .build()
);

text_schema!(
    /// Opaque bytes in base64url (token envelopes).
    Base64Text,
    "Base64Url",
    string("Bytes, unpadded base64url.")
        .pattern(Some(b64_any_pattern()))
        .build()
);

text_schema!(
    /// A discovery cursor.
    CursorText,
    "Cursor",
    string("The next_cursor of a previous page, as the directory wrote it.")
        .pattern(Some(CURSOR_PATTERN))
        .min_length(Some(b64_len(33)))
        .max_length(Some(b64_len(33)))
        .build()
);

text_schema!(
    /// A `seq`: servers store it as a signed 64-bit integer.
    SeqNumber,
    "Seq",
    ObjectBuilder::new()
        .schema_type(Type::Integer)
        .format(Some(SchemaFormat::KnownFormat(
            utoipa::openapi::KnownFormat::Int64
        )))
        .description(Some("A sequence number, 0 to 2^63 - 1."))
        .minimum(Some(0))
        .maximum(Some(i64::MAX as isize))
        .build()
);

text_schema!(
    /// A time in Unix seconds, any unsigned 64-bit value.
    UnixSeconds,
    "UnixSeconds",
    ObjectBuilder::new()
        .schema_type(Type::Integer)
        // No `format`: OpenAPI's int64 is signed, and its uint64 is not
        // one every tool knows; the bounds say it.
        .description(Some("Unix seconds, 0 to 2^64 - 1."))
        .minimum(Some(0))
        .maximum(Some(u64::MAX as usize))
        .build()
);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::b64_encode;

    #[test]
    fn exact_lengths_are_those_of_the_encoder() {
        for n in [0, 1, 2, 3, 16, 32, 33, 64, MIN_RECORD_LEN, MAX_RECORD_LEN] {
            assert_eq!(b64_encode(&vec![0xff; n]).len(), b64_len(n), "{n}");
        }
    }
}

text_schema!(
    /// An error code: one of [`crate::error_code::ErrorCode::ALL`].
    ErrorCodeText,
    "ErrorCode",
    string("A stable, machine-readable error code; a client acts on it.")
        .enum_values(Some(
            crate::error_code::ErrorCode::ALL.iter().map(|c| c.as_str()),
        ))
        .build()
);
