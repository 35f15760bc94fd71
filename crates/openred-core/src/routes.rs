//! Every HTTP route path of the public contract, named once and used by
//! both sides: the server that routes it and the client that calls it. A
//! path typed twice can drift; a constant cannot.
//!
//! The directory's handlers also carry their path in their OpenAPI
//! attribute (a literal the macro needs); a test of the directory checks
//! that its OpenAPI document lists exactly these paths.

/// The directory's API.
pub mod directory {
    /// `POST`: register or refresh a signed node record.
    pub const REGISTER: &str = "/api/v3/nodes/register";
    /// `POST`: a signed deregistration.
    pub const DEREGISTER: &str = "/api/v3/nodes/deregister";
    /// `GET`: pages of online nodes, or one node by `node_id`.
    pub const DISCOVER: &str = "/api/v3/nodes/discover";
    /// `GET`: one node's record (`{node_id}` in the path).
    pub const NODE: &str = "/api/v3/nodes/{node_id}";
    /// `POST`: an introduction: a linked pair of one-time tokens.
    pub const REQUEST_CONNECTION: &str = "/api/v3/tokens/request-connection";
    /// `GET`: the directory's health and signing key.
    pub const HEALTH: &str = "/api/v3/health";
    /// `GET`: the OpenAPI document.
    pub const OPENAPI: &str = "/api/v3/openapi.json";
    /// `GET`: Prometheus metrics.
    pub const METRICS: &str = "/metrics";
}

/// A node's P2P API: what the directory and other nodes call.
pub mod node {
    /// `GET`: the node's health.
    pub const HEALTH: &str = "/api/v3/health";
    /// `GET`: whether the node is ready.
    pub const HEALTH_READY: &str = "/api/v3/health/ready";
    /// `POST`: the directory's reachability challenge.
    pub const REACHABILITY: &str = "/api/v3/reachability";
    /// `POST`: the directory pushes an introduction token.
    pub const TOKENS_RECEIVE: &str = "/api/v3/tokens/receive";
    /// `POST`: Noise KK message 1, answered with message 2.
    pub const HANDSHAKE: &str = "/p2p/handshake";
    /// Framed: an encrypted ping.
    pub const PING: &str = "/p2p/ping";
    /// Framed: a session renewal (a new handshake inside the old session).
    pub const RENEW: &str = "/p2p/renew";
    /// Framed: messages (the messaging module).
    pub const MESSAGE: &str = "/p2p/message";
    /// Framed: a link to a shared file (the files module).
    pub const FILE_REQUEST: &str = "/p2p/file-request";
    /// Framed request, streamed answer: a shared file's chunks.
    pub const FILE_DOWNLOAD: &str = "/p2p/file-download";
    /// Framed: a challenge to prove the node's identity (the auth module).
    pub const AUTH_CHALLENGE: &str = "/p2p/auth/challenge";
}
