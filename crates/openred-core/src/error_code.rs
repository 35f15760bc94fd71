//! Every error code of the public contract, typed: a server answers
//! `{"error": CODE, "message": TEXT}` with one of these and the HTTP status
//! written beside it here, and a client that reacts to a code (hand-shakes
//! again, asks for a new link, gives a download up) matches on the enum,
//! never on a string typed twice.
//!
//! The table below is the one list of codes: servers cannot answer a code
//! that is not in it, and a code received from a newer peer that this
//! version does not know parses as [`ErrorCode::Unrecognized`].

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Writes the enum, its wire names, statuses and the list of all codes from
/// one table, so a name and its status cannot drift apart.
macro_rules! error_codes {
    ($( $(#[doc = $doc:literal])+ $variant:ident = $name:literal, $status:literal; )+) => {
        /// A code of the public contract.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum ErrorCode {
            $( $(#[doc = $doc])+ $variant, )+
            /// A code this version does not know (a newer peer's): only
            /// ever received, never answered.
            Unrecognized,
        }

        impl ErrorCode {
            /// Every code a server may answer.
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$variant,)+];

            /// The code as it travels.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(ErrorCode::$variant => $name,)+
                    ErrorCode::Unrecognized => "unrecognized",
                }
            }

            /// The HTTP status it is answered with.
            pub fn status(self) -> u16 {
                match self {
                    $(ErrorCode::$variant => $status,)+
                    ErrorCode::Unrecognized => 502,
                }
            }

            /// The code a received answer names, if this version knows it.
            pub fn parse(text: &str) -> Option<ErrorCode> {
                match text {
                    $($name => Some(ErrorCode::$variant),)+
                    _ => None,
                }
            }
        }
    };
}

error_codes! {
    // Any body, query or path (the HTTP layer).
    /// A JSON body that does not parse or has the wrong shape (400; axum
    /// answers shape errors with 422, which is kept).
    BadJson = "bad_json", 400;
    /// A body over the route's limit.
    BodyTooLarge = "body_too_large", 413;
    /// A body that is not `application/json`.
    UnsupportedMediaType = "unsupported_media_type", 415;
    /// A query string that does not parse.
    BadQuery = "bad_query", 400;
    /// A path parameter that does not parse.
    BadPath = "bad_path", 400;
    /// No route at that path.
    NoSuchRoute = "no_such_route", 404;
    /// The route exists, not with that method.
    MethodNotAllowed = "method_not_allowed", 405;
    /// Too many requests from this client; retry after `Retry-After`.
    RateLimited = "rate_limited", 429;
    /// The listener holds as many connections as it may.
    TooManyConnections = "too_many_connections", 503;
    /// The service cannot serve this now (database, disk); retry.
    Unavailable = "unavailable", 503;
    /// A handler failed unexpectedly (it is logged).
    Internal = "internal", 500;
    /// A request body that does not parse.
    BadRequest = "bad_request", 400;
    /// A page size out of range.
    BadLimit = "bad_limit", 400;
    /// A listing cursor that does not parse.
    BadCursor = "bad_cursor", 400;
    /// A node ID with a wrong length, alphabet or checksum.
    BadNodeId = "bad_node_id", 400;
    /// A signature that does not verify.
    BadSignature = "bad_signature", 400;

    // The directory.
    /// A signed node record that does not parse.
    BadRecord = "bad_record", 400;
    /// A record's identity key is not a valid Ed25519 key.
    BadIdentityKey = "bad_identity_key", 400;
    /// A record's node ID is not the one its key derives.
    NodeIdMismatch = "node_id_mismatch", 400;
    /// A record signed too long ago.
    StaleRecord = "stale_record", 400;
    /// A record past its expiry is registered.
    ExpiredRecord = "expired_record", 400;
    /// An API URL that does not parse.
    BadUrl = "bad_url", 400;
    /// An API URL that is not `https` (and plain HTTP is not allowed).
    UrlNotHttps = "url_not_https", 400;
    /// An API URL whose host is not globally reachable.
    UrlNotGlobal = "url_not_global", 400;
    /// The directory could not reach the URL a node registers.
    UrlUnreachable = "url_unreachable", 400;
    /// A record's `seq` too far ahead of the clock.
    SeqTooFar = "seq_too_far", 400;
    /// A record's `seq` already used.
    SeqReplay = "seq_replay", 409;
    /// A record's `seq` older than the stored one.
    SeqRollback = "seq_rollback", 409;
    /// A signed request outside the freshness window.
    StaleRequest = "stale_request", 400;
    /// A request nonce that does not parse.
    BadNonce = "bad_nonce", 400;
    /// A request nonce used already.
    NonceReplay = "nonce_replay", 409;
    /// A token expiry beyond what the directory grants.
    ExpiryTooFar = "expiry_too_far", 400;
    /// A node asked to be introduced to itself.
    SameNode = "same_node", 400;
    /// No record for that node.
    UnknownNode = "unknown_node", 404;
    /// A record past its expiry is not served (404 on lookup; 409 when an
    /// introduction names it).
    RecordExpired = "record_expired", 404;
    /// The target has not been seen within the activity window.
    TargetInactive = "target_inactive", 409;
    /// The target's node did not take its token.
    TargetUnreachable = "target_unreachable", 502;
    /// Listing is turned off on this directory.
    ListingDisabled = "listing_disabled", 403;

    // A node's P2P API: tokens, handshakes, sessions.
    /// A token envelope that does not parse.
    BadToken = "bad_token", 400;
    /// A token pushed by something other than the directory.
    NotFromDirectory = "not_from_directory", 403;
    /// A token sealed to another node.
    NotForThisNode = "not_for_this_node", 403;
    /// Only the target's token is pushed.
    WrongRole = "wrong_role", 400;
    /// A token living longer than the directory may grant.
    TokenLifetime = "token_lifetime", 400;
    /// A token past its expiry.
    TokenExpired = "token_expired", 400;
    /// A token used once already.
    TokenUsed = "token_used", 409;
    /// A token with a connection ID already held.
    DuplicateToken = "duplicate_token", 409;
    /// A push whose `from` is not the token's initiator.
    FromMismatch = "from_mismatch", 400;
    /// This node has not pinned a directory key yet.
    NoDirectoryKey = "no_directory_key", 409;
    /// The node's clock is behind the token's issue time.
    ClockBehind = "clock_behind", 409;
    /// The owner's policy refuses introductions from that node.
    IntroductionRefused = "introduction_refused", 403;
    /// A connection ID that does not parse.
    BadConnectionId = "bad_connection_id", 400;
    /// No token for that connection ID.
    UnknownConnection = "unknown_connection", 404;
    /// The handshake does not authenticate or its offer is refused.
    HandshakeFailed = "handshake_failed", 403;
    /// The peer's identity key is not the one its record names.
    PeerKeyChanged = "peer_key_changed", 409;
    /// The peer's record held by this node has expired.
    PeerRecordExpired = "peer_record_expired", 409;
    /// The peer's record held by this node is older than the one it shows.
    StalePeerRecord = "stale_peer_record", 409;
    /// No session with that ID (the peer restarted): handshake again.
    UnknownSession = "unknown_session", 404;
    /// A session past its lifetime cannot be renewed.
    SessionExpired = "session_expired", 409;
    /// A renewal of a session that is not the current one.
    NotCurrent = "not_current", 409;
    /// A renewal request that does not parse.
    BadRenewal = "bad_renewal", 400;
    /// A renewal message seen before.
    RenewalReplayed = "renewal_replayed", 409;
    /// Both ends renewed at once; the lower node ID's renewal wins.
    RenewalCrossed = "renewal_crossed", 409;
    /// Too many renewals of one session.
    RenewalLimit = "renewal_limit", 429;
    /// The node holds as many sessions as it may.
    TooManySessions = "too_many_sessions", 429;
    /// The node holds sessions with as many peers as it may.
    TooManyPeers = "too_many_peers", 429;
    /// A sealed frame that does not open.
    BadFrame = "bad_frame", 400;
    /// A frame over the size limit.
    FrameTooLarge = "frame_too_large", 413;
    /// A frame sent to another route than it was sealed for.
    WrongRoute = "wrong_route", 400;
    /// A ping that does not parse.
    BadPing = "bad_ping", 400;
    /// A challenge that does not parse.
    BadChallenge = "bad_challenge", 400;
    /// No module of that name on this node.
    UnknownModule = "unknown_module", 404;
    /// The module is turned off on this node.
    ModuleDisabled = "module_disabled", 404;
    /// The module is starting or has stopped.
    NotStarted = "not_started", 503;
    /// The crypto agent does not answer; retry in a few seconds.
    AgentUnavailable = "agent_unavailable", 503;
    /// The audit log cannot be written.
    AuditUnavailable = "audit_unavailable", 503;
    /// The node has no capacity for this now; retry later.
    Busy = "busy", 429;
    /// The same operation is under way already.
    InProgress = "in_progress", 409;

    // A node's modules: authentication, messaging, files.
    /// The peer's proof of identity is required and missing or stale.
    PeerAuthFailed = "peer_auth_failed", 403;
    /// The peer's answer to a challenge does not verify.
    BadProof = "bad_proof", 502;
    /// A message that does not parse.
    BadMessage = "bad_message", 400;
    /// A message ID that does not parse.
    BadMessageId = "bad_message_id", 400;
    /// A list of message IDs that does not parse.
    BadMessageIds = "bad_message_ids", 400;
    /// A message over the size limit.
    MessageTooLarge = "message_too_large", 413;
    /// No message with that ID.
    UnknownMessage = "unknown_message", 404;
    /// The peer's share of this node's inbox is full.
    InboxFull = "inbox_full", 429;
    /// This node's message storage is full.
    NodeStorageFull = "node_storage_full", 429;
    /// A message to this node itself.
    ToSelf = "self", 400;
    /// A file ID that does not parse.
    BadFileId = "bad_file_id", 400;
    /// A transfer ID that does not parse.
    BadTransferId = "bad_transfer_id", 400;
    /// No transfer with that ID.
    UnknownTransfer = "unknown_transfer", 404;
    /// No such shared file.
    UnknownFile = "unknown_file", 404;
    /// A path that is not a regular file.
    NotAFile = "not_a_file", 400;
    /// A file the node cannot read.
    CannotRead = "cannot_read", 400;
    /// A place the node cannot write to.
    CannotWrite = "cannot_write", 400;
    /// A file too large to share.
    TooLarge = "too_large", 400;
    /// A path inside the node's own data folder.
    InsideDataFolder = "inside_data_folder", 403;
    /// A download target outside the allowed folders.
    OutsideDownloadDirs = "outside_download_dirs", 400;
    /// A download target that exists already.
    OutExists = "out_exists", 409;
    /// A partial download at that target exists already.
    PartExists = "part_exists", 409;
    /// A download target that does not parse.
    BadOut = "bad_out", 400;
    /// A list of peers that does not parse.
    BadPeers = "bad_peers", 400;
    /// A share expiry out of range.
    BadExpiry = "bad_expiry", 400;
    /// A download limit out of range.
    BadMaxDownloads = "bad_max_downloads", 400;
    /// A file link past its expiry: ask for a new one.
    LinkExpired = "link_expired", 410;
    /// No such file link: ask for a new one.
    UnknownLink = "unknown_link", 404;
    /// The file is not shared with the asking node.
    NotPermitted = "not_permitted", 403;
    /// The owner revoked the share.
    Revoked = "revoked", 410;
    /// The share has expired.
    ShareExpired = "share_expired", 410;
    /// The share's download limit is reached.
    DownloadLimitReached = "download_limit_reached", 410;
    /// A file link handed to another peer.
    WrongPeer = "wrong_peer", 403;
    /// The shared file is not the one shared any more.
    FileChanged = "file_changed", 409;
    /// The shared file cannot be read now.
    FileUnavailable = "file_unavailable", 409;
    /// A chunk range outside the file.
    BadRange = "bad_range", 400;
    /// Not a `file_url` of this protocol.
    BadFileUrl = "bad_file_url", 400;

    // A node's admin API.
    /// No or a wrong admin token.
    Unauthorized = "unauthorized", 401;
    /// A browser session must also send the bearer token for this.
    BearerTokenRequired = "bearer_token_required", 403;
    /// A cookie-authenticated request without the anti-forgery header.
    MissingRequestHeader = "missing_request_header", 403;
    /// A `Host` this node does not answer for.
    BadHost = "bad_host", 421;
    /// A login request that does not parse.
    BadLogin = "bad_login", 400;
    /// Wrong password or code.
    LoginFailed = "login_failed", 401;
    /// Too many failed logins: locked for a while.
    LoginLocked = "login_locked", 429;
    /// Failed logins are paced: wait before the next.
    LoginBackoff = "login_backoff", 429;
    /// No password is set up for logging in.
    LoginNotSetUp = "login_not_set_up", 409;
    /// No action of that name.
    UnknownAction = "unknown_action", 404;
    /// No session with that peer.
    NoSession = "no_session", 404;
    /// The node is deregistering.
    Deregistering = "deregistering", 409;
    /// The action names the wrong node.
    WrongNode = "wrong_node", 400;
    /// The directory refused the node's request (its code is in the
    /// message).
    DirectoryRefused = "directory_refused", 502;
    /// The peer refused the node's request (its code is in the message).
    PeerRefused = "peer_refused", 502;
    /// The other side could not be reached.
    Unreachable = "unreachable", 502;
    /// The other side refused, for a reason in the message.
    Refused = "refused", 502;
}

impl ErrorCode {
    /// The code a wire field's deserialization error names
    /// ([`crate::wire::typed`] starts its messages with `code: `); serde's
    /// own messages (`invalid type`, `unknown field`, …) name none.
    pub fn of_field_error(message: &str) -> Option<ErrorCode> {
        let (code, _) = message.split_once(": ")?;
        ErrorCode::parse(code)
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

impl Serialize for ErrorCode {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for ErrorCode {
    /// Never fails on a string: a code this version does not know is
    /// [`ErrorCode::Unrecognized`], so an answer from a newer peer still
    /// reads as an error with its message.
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<ErrorCode, D::Error> {
        let text = std::borrow::Cow::<str>::deserialize(deserializer)?;
        Ok(ErrorCode::parse(&text).unwrap_or(ErrorCode::Unrecognized))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_travels_as_its_name_and_parses_back() {
        for &code in ErrorCode::ALL {
            let json = serde_json::to_string(&code).unwrap_or_default();
            assert_eq!(json, format!("\"{}\"", code.as_str()));
            assert_eq!(serde_json::from_str::<ErrorCode>(&json).ok(), Some(code));
            assert_eq!(ErrorCode::parse(code.as_str()), Some(code));
            assert!((400..600).contains(&code.status()), "{code}");
        }
        let names: std::collections::HashSet<_> =
            ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(names.len(), ErrorCode::ALL.len(), "a name used twice");
        assert!(!ErrorCode::ALL.contains(&ErrorCode::Unrecognized));
    }

    #[test]
    fn unknown_codes_read_as_unrecognized() {
        assert_eq!(ErrorCode::parse("Unknown_Session"), None);
        assert_eq!(ErrorCode::parse("unrecognized"), None);
        let read: ErrorCode = serde_json::from_str("\"a_code_from_the_future\"").unwrap();
        assert_eq!(read, ErrorCode::Unrecognized);
        assert!(serde_json::from_str::<ErrorCode>("7").is_err());
    }

    #[test]
    fn bad_input_is_a_4xx_and_only_failures_elsewhere_are_5xx() {
        // The guide: bad input gets a 4xx, never a 5xx. The 5xx codes are
        // the ones where this side or a third party failed.
        let server_side: Vec<_> = ErrorCode::ALL
            .iter()
            .filter(|c| c.status() >= 500)
            .map(|c| c.as_str())
            .collect();
        assert_eq!(
            server_side,
            [
                "too_many_connections",
                "unavailable",
                "internal",
                "target_unreachable",
                "not_started",
                "agent_unavailable",
                "audit_unavailable",
                "bad_proof",
                "directory_refused",
                "peer_refused",
                "unreachable",
                "refused",
            ]
        );
    }
}
