//! The node's error type, and how each error is answered on the APIs.

use openred_core::error_code::ErrorCode;
use openred_core::handshake::HandshakeError;
use openred_core::session::FrameError;
use openred_core::token::TokenError;
use openred_http::{ApiError, OutboundError};

use crate::agent::CryptoError;
use crate::store::StoreError;

/// Something a node operation ran into.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The directory answered with an error.
    #[error("the directory refused: {code}: {message}")]
    Directory {
        /// HTTP status from the directory.
        status: u16,
        /// The directory's error code.
        code: ErrorCode,
        /// The directory's message.
        message: String,
    },
    /// The directory's key does not match the pinned fingerprint.
    #[error("the directory's key {found} does not match the pinned fingerprint {pinned}")]
    DirectoryKeyMismatch {
        /// The pinned fingerprint.
        pinned: String,
        /// The fingerprint found.
        found: String,
    },
    /// No directory key is pinned yet.
    #[error("no directory key is pinned yet")]
    NoDirectoryKey,
    /// A peer answered with an error.
    #[error("the peer refused: {code}: {message}")]
    Peer {
        /// HTTP status from the peer.
        status: u16,
        /// The peer's error code.
        code: ErrorCode,
        /// The peer's message.
        message: String,
    },
    /// An answer could not be understood.
    #[error("malformed answer from {0}")]
    Malformed(&'static str),
    /// Outbound call failed.
    #[error(transparent)]
    Outbound(#[from] OutboundError),
    /// A token was refused.
    #[error("token refused: {0}")]
    Token(#[from] TokenError),
    /// The handshake failed.
    #[error("handshake failed: {0}")]
    Handshake(#[from] HandshakeError),
    /// A frame was refused.
    #[error("frame refused: {0}")]
    Frame(#[from] FrameError),
    /// The peer's record from the introduction has expired: only a new
    /// introduction can make a session now.
    #[error("the record of {0} has expired; a new introduction is needed")]
    PeerRecordExpired(String),
    /// The operation is already running.
    #[error("busy: {0}")]
    Busy(&'static str),
    /// No session with that peer.
    #[error("no session with {0}; connect first")]
    NoSession(String),
    /// A record older than one already seen was served.
    #[error("the directory served an older record for {0} than this node has seen")]
    RolledBackRecord(String),
    /// The session table is full (`max_sessions`, `max_peers`).
    #[error(transparent)]
    Capacity(#[from] crate::peer::sessions::Capacity),
    /// Local storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The crypto agent failed or is unavailable.
    #[error("crypto: {0}")]
    Crypto(#[from] CryptoError),
}

impl NodeError {
    /// Whether the peer answered that it does not know the session (it
    /// restarted, or someone on the path says so: the answer is not
    /// authenticated).
    pub fn is_lost_session(&self) -> bool {
        self.peer_code() == Some(ErrorCode::UnknownSession)
    }

    /// The code a peer refused with, if it is one the node acts on.
    pub fn peer_code(&self) -> Option<ErrorCode> {
        match self {
            NodeError::Peer { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// The code the directory refused with, if it is one the node acts on.
    pub fn directory_code(&self) -> Option<ErrorCode> {
        match self {
            NodeError::Directory { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// The answer on the admin API.
    pub fn to_api(&self) -> ApiError {
        match self {
            NodeError::Directory { code, message, .. } => {
                ApiError::new(ErrorCode::DirectoryRefused, format!("{code}: {message}"))
            }
            NodeError::Peer { code, message, .. } => {
                ApiError::new(ErrorCode::PeerRefused, format!("{code}: {message}"))
            }
            NodeError::Outbound(e) => ApiError::new(ErrorCode::Unreachable, e.to_string()),
            NodeError::NoSession(_) => ApiError::new(ErrorCode::NoSession, self.to_string()),
            NodeError::Busy(_) => ApiError::new(ErrorCode::Busy, self.to_string()),
            NodeError::Capacity(c) => ApiError::new(c.code(), c.to_string()),
            NodeError::Store(e) => ApiError::internal("node storage", e),
            NodeError::Crypto(CryptoError::Unavailable) => ApiError::new(
                ErrorCode::AgentUnavailable,
                "the crypto agent is unavailable; try again in a few seconds",
            ),
            _ => ApiError::new(ErrorCode::Refused, self.to_string()),
        }
    }
}
