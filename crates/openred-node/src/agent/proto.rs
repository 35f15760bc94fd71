//! The crypto agent's IPC protocol: frames and their bodies. Pure code, no
//! I/O, so that the decoder can be fuzzed (`fuzz/fuzz_targets/agent_frame.rs`).
//!
//! ```text
//! frame  = length u32 BE || body            (length = len(body) <= MAX_FRAME)
//! body   = version u8 (= 1) || request_id u64 BE || payload
//! payload = postcard(Request) from the node, postcard(Response) from the agent
//! ```
//!
//! Every frame is parsed completely (header, then the whole payload into an
//! owned value with fixed-size fields checked) before anything acts on it;
//! a frame that does not parse is answered with an error carrying its
//! request ID when the header was readable, and the agent goes on.
//! Responses may come back in any order: the request ID pairs them.

use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, ZeroizeOnDrop};

/// The protocol version this code speaks.
pub const VERSION: u8 = 1;
/// The largest body either side sends or accepts.
pub const MAX_FRAME: usize = 64 * 1024;
/// Bytes before the payload in a body.
pub const BODY_HEADER: usize = 9;

/// What the node asks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// The agent's protections and public keys.
    Status,
    /// Sign the node's record for these values (the agent adds its own
    /// keys): answered with the record's bytes.
    SignRecord {
        /// The record's origin, canonical.
        api_url: String,
        /// Its sequence number.
        seq: u64,
        /// Unix seconds.
        issued_at: u64,
        /// Unix seconds.
        expires_at: u64,
    },
    /// Sign a deregistration of this node.
    SignDeregistration {
        /// The seq it consumes.
        seq: u64,
        /// Unix seconds.
        issued_at: u64,
    },
    /// Sign a request to be introduced to `target`.
    SignConnectionRequest {
        /// The node to meet.
        target: [u8; 32],
        /// The request's nonce.
        nonce: [u8; 16],
        /// Unix seconds.
        issued_at: u64,
    },
    /// Answer the directory's reachability challenge.
    SignReachability {
        /// The challenge bytes, as sent.
        challenge: [u8; 32],
        /// The pinned directory's fingerprint, in text.
        directory: String,
        /// The URL being proven.
        api_url: String,
    },
    /// Open a directory-signed token envelope addressed to this node. For
    /// the initiator's token, the agent keeps the link key's signing half
    /// until the handshake uses it.
    OpenToken {
        /// The envelope's bytes (already checked against the pinned key).
        envelope: Vec<u8>,
    },
    /// Start a handshake as the initiator: for an introduction, with the
    /// link key kept from [`Request::OpenToken`]; for a renewal, with none
    /// (the node checked the live session that asks for it). Answered with
    /// message 1 and a handle.
    Initiate {
        /// The handshake's context.
        context: WireContext,
        /// The target's static key, from its signed record.
        peer_static: [u8; 32],
    },
    /// Finish the initiator's handshake with message 2.
    Finish {
        /// From [`Response::Initiated`].
        handle: u64,
        /// Message 2.
        message: Vec<u8>,
    },
    /// Answer message 1 as the target.
    Respond {
        /// The handshake's context.
        context: WireContext,
        /// The initiator's static key, from its signed record.
        initiator_static: [u8; 32],
        /// Message 1.
        message: Vec<u8>,
        /// The suites this node accepts, in preference order.
        accepted: Vec<u8>,
    },
    /// A storage key derived from the master key, for this purpose only.
    StorageKey(crate::agent::master_key::Purpose),
    /// Sign an audit log entry: the agent signs
    /// `audit_entry_message(own node ID, seq, entry_hash)` under the
    /// audit-entry label, and nothing else.
    SignAuditEntry {
        /// The entry's sequence number.
        seq: u64,
        /// BLAKE3 of the entry's canonical form without its signature.
        entry_hash: [u8; 32],
    },
    /// Sign the audit log's head: `audit_head_message(own node ID, entries,
    /// last_line_hash)` under the audit-head label.
    SignAuditHead {
        /// How many entries the log holds.
        entries: u64,
        /// BLAKE3 of the last line (the genesis value for an empty log).
        last_line_hash: [u8; 32],
    },
    /// Answer a peer's auth challenge: the agent signs
    /// `auth_challenge_message(challenger, own node ID, session_id,
    /// challenge)` under the auth-challenge label, and nothing else.
    SignAuthChallenge {
        /// The peer that sent the challenge.
        challenger: [u8; 32],
        /// The session the challenge came in.
        session_id: [u8; 16],
        /// The peer's random challenge.
        challenge: [u8; 32],
    },
    /// Test builds only: try something the sandbox must forbid.
    #[cfg(feature = "agent-probes")]
    Probe(Probe),
}

/// Things a test asks the sandboxed agent to try.
#[cfg(feature = "agent-probes")]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Probe {
    /// Open a TCP socket and connect it to this address.
    TcpConnect(String),
    /// Read this file.
    ReadFile(String),
    /// Exit at once, as a crash would.
    Exit,
}

/// [`openred_core::handshake::HandshakeContext`] on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireContext {
    /// The introduction's connection ID.
    pub connection_id: [u8; 16],
    /// Node A.
    pub initiator: [u8; 32],
    /// Node B.
    pub target: [u8; 32],
    /// What authorises the handshake.
    pub authority: openred_core::handshake::Authority,
    /// Offered suite IDs, in order.
    pub offer: Vec<u8>,
}

/// What the agent answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// The request failed.
    Error(WireError),
    /// See [`Request::Status`].
    Status {
        /// The agent's protections, as JSON (see `sandbox::Protections`).
        protections: String,
        /// Ed25519 identity public key.
        identity: [u8; 32],
        /// X25519 agreement public key.
        agreement: [u8; 32],
    },
    /// A signed record's bytes.
    Record(Vec<u8>),
    /// An Ed25519 signature (64 bytes).
    Signature(Vec<u8>),
    /// An opened token: the other node's signed record and the link key's
    /// public half.
    Opened {
        /// The peer's signed record bytes.
        peer_record: Vec<u8>,
        /// The link key's verifying half.
        link_public: [u8; 32],
    },
    /// Message 1 and the handle to finish with.
    Initiated {
        /// Pass to [`Request::Finish`].
        handle: u64,
        /// Message 1.
        message: Vec<u8>,
    },
    /// The initiator's keys.
    Finished(SessionKeys),
    /// The responder's keys and message 2.
    Responded {
        /// The keys.
        keys: SessionKeys,
        /// Message 2.
        message: Vec<u8>,
    },
    /// A derived storage key.
    StorageKey(StorageKey),
    /// What a probe did.
    #[cfg(feature = "agent-probes")]
    Probed {
        /// Whether the forbidden thing worked.
        succeeded: bool,
        /// The error, if any.
        detail: String,
    },
}

/// What a finished handshake exports: the only secrets that leave the agent.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
pub struct SessionKeys {
    /// The negotiated suite's ID.
    pub suite: u8,
    /// The final handshake hash.
    pub handshake_hash: [u8; 32],
    /// Initiator to responder.
    pub i2r: [u8; 32],
    /// Responder to initiator.
    pub r2i: [u8; 32],
}

impl std::fmt::Debug for SessionKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionKeys")
            .field("suite", &self.suite)
            .finish_non_exhaustive()
    }
}

/// A derived storage key, erased when dropped.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
pub struct StorageKey(pub [u8; 32]);

impl std::fmt::Debug for StorageKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StorageKey(..)")
    }
}

/// An error answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireError {
    /// What kind of failure.
    pub kind: ErrorKind,
    /// For logs; never secret.
    pub message: String,
}

/// Kinds of agent errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorKind {
    /// The frame or its payload did not parse.
    Malformed,
    /// The request names something the agent refuses (a token not for this
    /// node, an unknown handle, an invalid value).
    Refused,
    /// The handshake failed (bad message, proof, downgrade...).
    Handshake,
    /// The agent could not do it (randomness, internal).
    Internal,
}

/// Why a frame did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The body is shorter than its header.
    #[error("frame body of {0} bytes is shorter than its header")]
    Short(usize),
    /// Longer than [`MAX_FRAME`].
    #[error("frame of {0} bytes is over the limit")]
    TooLarge(usize),
    /// Another protocol version.
    #[error("protocol version {0} is not supported")]
    Version(u8),
    /// The payload did not parse (the request ID is known).
    #[error("request {id}: malformed payload")]
    Payload {
        /// The request ID from the header.
        id: u64,
    },
}

/// Encodes `value` as a whole frame (length prefix included).
pub fn encode<T: Serialize>(id: u64, value: &T) -> Result<Vec<u8>, FrameError> {
    let mut out = vec![0u8; 4];
    out.push(VERSION);
    out.extend_from_slice(&id.to_be_bytes());
    let out = postcard::to_extend(value, out).map_err(|_| FrameError::Payload { id })?;
    let len = out.len() - 4;
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge(len));
    }
    let mut out = out;
    out[..4].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(out)
}

/// Reads a length prefix; the body that follows must be read in full.
pub fn body_len(prefix: [u8; 4]) -> Result<usize, FrameError> {
    let len = u32::from_be_bytes(prefix) as usize;
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge(len));
    }
    if len < BODY_HEADER {
        return Err(FrameError::Short(len));
    }
    Ok(len)
}

/// The request ID of a body, if its header is readable.
pub fn body_id(body: &[u8]) -> Option<u64> {
    let id: [u8; 8] = body.get(1..BODY_HEADER)?.try_into().ok()?;
    Some(u64::from_be_bytes(id))
}

/// Parses a body (without its length prefix) into its ID and value. The
/// whole payload must be consumed.
pub fn decode<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<(u64, T), FrameError> {
    if body.len() > MAX_FRAME {
        return Err(FrameError::TooLarge(body.len()));
    }
    let (&version, _) = body.split_first().ok_or(FrameError::Short(0))?;
    if version != VERSION {
        return Err(FrameError::Version(version));
    }
    let id = body_id(body).ok_or(FrameError::Short(body.len()))?;
    let payload = &body[BODY_HEADER..];
    match postcard::take_from_bytes::<T>(payload) {
        Ok((value, [])) => Ok((id, value)),
        _ => Err(FrameError::Payload { id }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(frame: &[u8]) -> &[u8] {
        let len = body_len(frame[..4].try_into().unwrap()).unwrap();
        assert_eq!(len, frame.len() - 4);
        &frame[4..]
    }

    #[test]
    fn requests_and_responses_round_trip() {
        let requests = [
            Request::Status,
            Request::SignConnectionRequest {
                target: [7; 32],
                nonce: [1; 16],
                issued_at: 99,
            },
            Request::Respond {
                context: WireContext {
                    connection_id: [2; 16],
                    initiator: [3; 32],
                    target: [4; 32],
                    authority: openred_core::handshake::Authority::Introduction {
                        link_public: [5; 32],
                    },
                    offer: vec![1, 2],
                },
                initiator_static: [6; 32],
                message: vec![9; 80],
                accepted: vec![1],
            },
        ];
        for (i, request) in requests.iter().enumerate() {
            let frame = encode(i as u64, request).unwrap();
            let (id, back): (u64, Request) = decode(body(&frame)).unwrap();
            assert_eq!((id, &back), (i as u64, request));
        }
        let keys = Response::Finished(SessionKeys {
            suite: 1,
            handshake_hash: [1; 32],
            i2r: [2; 32],
            r2i: [3; 32],
        });
        let frame = encode(u64::MAX, &keys).unwrap();
        assert_eq!(decode::<Response>(body(&frame)).unwrap(), (u64::MAX, keys));
    }

    #[test]
    fn malformed_bodies_are_refused_with_their_id_when_known() {
        let frame = encode(42, &Request::Status).unwrap();
        let good = body(&frame).to_vec();

        let mut version = good.clone();
        version[0] = 2;
        assert_eq!(decode::<Request>(&version), Err(FrameError::Version(2)));

        let mut trailing = good.clone();
        trailing.push(0);
        assert_eq!(
            decode::<Request>(&trailing),
            Err(FrameError::Payload { id: 42 })
        );

        let mut unknown_variant = good[..BODY_HEADER].to_vec();
        unknown_variant.push(200);
        assert_eq!(
            decode::<Request>(&unknown_variant),
            Err(FrameError::Payload { id: 42 })
        );

        // A truncated fixed-size field.
        let sign = encode(
            5,
            &Request::SignConnectionRequest {
                target: [7; 32],
                nonce: [1; 16],
                issued_at: 1,
            },
        )
        .unwrap();
        let cut = &body(&sign)[..BODY_HEADER + 20];
        assert_eq!(decode::<Request>(cut), Err(FrameError::Payload { id: 5 }));

        assert_eq!(decode::<Request>(&good[..3]), Err(FrameError::Short(3)));
        assert_eq!(
            body_len((MAX_FRAME as u32 + 1).to_be_bytes()),
            Err(FrameError::TooLarge(MAX_FRAME + 1))
        );
        assert_eq!(body_len(3u32.to_be_bytes()), Err(FrameError::Short(3)));
    }

    #[test]
    fn a_huge_claimed_vector_length_does_not_allocate_or_panic() {
        // postcard varint for a length of 2^40, then nothing.
        let mut body = vec![VERSION];
        body.extend_from_slice(&1u64.to_be_bytes());
        body.push(5); // Request::OpenToken
        body.extend_from_slice(&[0x80, 0x80, 0x80, 0x80, 0x80, 0x20]);
        assert_eq!(decode::<Request>(&body), Err(FrameError::Payload { id: 1 }));
    }
}
