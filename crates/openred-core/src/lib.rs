//! The OpenRed core: identities, signed node records, wire types and address
//! policy.
//!
//! # Layout
//!
//! - [`id`]: node IDs (derived from identity keys, so they are self-certifying)
//!   and their textual form; directory key fingerprints.
//! - [`keys`]: Ed25519 identity keys, X25519 agreement keys, and signing under
//!   context labels ([`keys::SignatureContext`]) so that no signature can be
//!   replayed as another kind.
//! - [`record`]: the signed node record and its canonical, versioned encoding.
//! - [`url`]: the `api_url` a node publishes (an origin, never a path) and the
//!   address policy that tells global from non-global hosts.
//! - [`token`]: connection tokens: the linked pair the directory mints for an
//!   introduction, sealed with HPKE to each node and signed by the directory.
//! - [`file_transfer`]: the chunk codec of file transfers: per-transfer keys,
//!   chunks bound to their index, their transfer and the end of the file.
//! - [`handshake`]: the Noise KK handshake that opens a session: the
//!   prologue, the initiator's token proof, the suite negotiation; its
//!   ephemeral keys come from a seed the caller passes.
//! - [`session`]: the frame layer of an established session: cipher suites,
//!   per-direction keys, epoch ratchet, replay window.
//! - [`random`]: a random stream from a caller-supplied seed.
//! - [`wire`]: the JSON bodies of the directory API, in one place.
//! - [`time`]: Unix timestamps. The core never reads the clock.
//!
//! # What this crate must never do
//!
//! No sockets, no file I/O, no clock reads, no randomness of its own: time
//! and random bytes come in as arguments, so everything here is
//! deterministic, fuzzable and testable with simulated time.

// `deny`, not `forbid`: `frame_cipher` alone allows it, to erase ring's
// key schedules (docs/decisions/0015-frame-ciphers-from-ring.md).
#![deny(unsafe_code)]

pub mod error_code;
pub mod file_transfer;
mod frame_cipher;
pub mod handshake;
pub mod id;
pub mod keys;
pub mod random;
pub mod record;
pub mod routes;
pub mod session;
pub mod time;
pub mod token;
pub mod url;
pub mod wire;

pub use id::{IdError, NodeId};
pub use keys::{
    AgreementPublicKey, AgreementSecret, IdentityKeypair, IdentityPublicKey, SignatureContext,
    SignatureError,
};
pub use record::{NodeRecord, RecordError, SignedRecord};
pub use time::{Clock, ManualClock, UnixTime};
pub use url::{ApiUrl, UrlError};
