//! The error codes one side answers and the other side acts on, typed:
//! a server answers `{"error": CODE, ...}` with one of these, and a client
//! that reacts to a code (hand-shakes again, asks for a new link, gives a
//! download up) matches on the enum, never on a string typed twice.
//!
//! Codes that only end up in front of a person stay strings at their one
//! place of use; a code enters this list when a program on the other side
//! decides something on it.

use serde::{Deserialize, Serialize};

/// A code of the public contract that clients act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// No session with that ID (the peer restarted): handshake again.
    UnknownSession,
    /// A file link past its expiry: ask for a new one.
    LinkExpired,
    /// No such file link: ask for a new one.
    UnknownLink,
    /// The file is not shared with the asking node.
    NotPermitted,
    /// The owner revoked the share.
    Revoked,
    /// The share has expired.
    ShareExpired,
    /// The share's download limit is reached.
    DownloadLimitReached,
    /// No such shared file.
    UnknownFile,
    /// A file link handed to another peer.
    WrongPeer,
    /// The shared file is not the one shared any more.
    FileChanged,
    /// A chunk range outside the file.
    BadRange,
    /// Not a `file_url` of this protocol.
    BadFileUrl,
    /// A request body that does not parse.
    BadRequest,
    /// A page size out of range.
    BadLimit,
}

impl ErrorCode {
    /// Every code, for tests and documents.
    pub const ALL: [ErrorCode; 14] = [
        ErrorCode::UnknownSession,
        ErrorCode::LinkExpired,
        ErrorCode::UnknownLink,
        ErrorCode::NotPermitted,
        ErrorCode::Revoked,
        ErrorCode::ShareExpired,
        ErrorCode::DownloadLimitReached,
        ErrorCode::UnknownFile,
        ErrorCode::WrongPeer,
        ErrorCode::FileChanged,
        ErrorCode::BadRange,
        ErrorCode::BadFileUrl,
        ErrorCode::BadRequest,
        ErrorCode::BadLimit,
    ];

    /// The code as it travels.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::UnknownSession => "unknown_session",
            ErrorCode::LinkExpired => "link_expired",
            ErrorCode::UnknownLink => "unknown_link",
            ErrorCode::NotPermitted => "not_permitted",
            ErrorCode::Revoked => "revoked",
            ErrorCode::ShareExpired => "share_expired",
            ErrorCode::DownloadLimitReached => "download_limit_reached",
            ErrorCode::UnknownFile => "unknown_file",
            ErrorCode::WrongPeer => "wrong_peer",
            ErrorCode::FileChanged => "file_changed",
            ErrorCode::BadRange => "bad_range",
            ErrorCode::BadFileUrl => "bad_file_url",
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::BadLimit => "bad_limit",
        }
    }

    /// The HTTP status it is answered with.
    pub fn status(self) -> u16 {
        match self {
            ErrorCode::UnknownSession | ErrorCode::UnknownLink | ErrorCode::UnknownFile => 404,
            ErrorCode::NotPermitted | ErrorCode::WrongPeer => 403,
            ErrorCode::LinkExpired
            | ErrorCode::Revoked
            | ErrorCode::ShareExpired
            | ErrorCode::DownloadLimitReached => 410,
            ErrorCode::FileChanged => 409,
            ErrorCode::BadRange
            | ErrorCode::BadFileUrl
            | ErrorCode::BadRequest
            | ErrorCode::BadLimit => 400,
        }
    }

    /// The code a received answer names, if it is one of these.
    pub fn parse(text: &str) -> Option<ErrorCode> {
        ErrorCode::ALL.into_iter().find(|c| c.as_str() == text)
    }

    /// Whether a file download given this code by the owner's node ends
    /// for good (it is retried on any other).
    pub fn ends_a_download(self) -> bool {
        matches!(
            self,
            ErrorCode::NotPermitted
                | ErrorCode::Revoked
                | ErrorCode::ShareExpired
                | ErrorCode::DownloadLimitReached
                | ErrorCode::UnknownFile
                | ErrorCode::WrongPeer
                | ErrorCode::FileChanged
                | ErrorCode::BadRange
                | ErrorCode::BadFileUrl
                | ErrorCode::BadRequest
        )
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_travels_as_its_serde_name_and_parses_back() {
        for code in ErrorCode::ALL {
            let json = serde_json::to_string(&code).unwrap_or_default();
            assert_eq!(json, format!("\"{}\"", code.as_str()));
            assert_eq!(ErrorCode::parse(code.as_str()), Some(code));
            assert!((400..500).contains(&code.status()), "{code}");
        }
        let names: std::collections::HashSet<_> =
            ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(names.len(), ErrorCode::ALL.len(), "a name used twice");
        assert_eq!(ErrorCode::parse("Unknown_Session"), None);
        assert_eq!(ErrorCode::parse("file_unavailable"), None);
    }
}
