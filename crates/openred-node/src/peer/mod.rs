//! The peer layer: everything between this node and other nodes. It owns
//! the sessions ([`sessions`]), opens every request frame and seals every
//! answer once ([`frames`]), runs the handshake (its rules are
//! [`openred_core::handshake`], its keys the agent's) and the routes peers
//! and the directory call (`routes`), renews and purges
//! sessions ([`lifecycle`]), and limits the reachability route
//! (`reachability`).

pub mod connect;
pub mod frames;
pub mod layer;
pub mod lifecycle;
pub(crate) mod reachability;
pub(crate) mod routes;
pub mod sessions;

use std::future::Future;
use std::path::Path;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::response::Response;
use axum::routing::{post, MethodRouter};
use openred_core::session::SessionId;
use openred_core::{Clock, NodeId, UnixTime};
use openred_http::{ApiError, OutboundClient};

use crate::audit::Audit;
use crate::error::NodeError;

use crate::store::NodeStore;
use frames::Incoming;
pub use layer::{PeerHooks, PeerLayer};
use sessions::LiveSession;

/// A boxed future (hooks, guards, middleware).
pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A short note received through a [`Mailbox`].
#[derive(Debug, Clone)]
pub struct Note {
    /// Who sent it.
    pub peer: NodeId,
    /// Its content type.
    pub content_type: String,
    /// Its text.
    pub body: String,
    /// When it arrived (Unix seconds).
    pub received_at: u64,
}

/// Short notes to and from peers, offered by a module that has an inbox
/// and an outbox (messaging), used by others (files sends its offers
/// through it) without naming that module.
pub trait Mailbox: Send + Sync {
    /// Queues `body` for `peer`; persisted before this returns.
    fn send<'a>(
        &'a self,
        peers: &'a Peers,
        peer: NodeId,
        content_type: &'a str,
        body: &'a str,
    ) -> BoxFuture<'a, Result<(), String>>;

    /// The notes of `content_type` among the first `limit` received, in
    /// the order they arrived.
    fn received<'a>(
        &'a self,
        content_type: &'a str,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<Note>, String>>;
}

/// What a module gets of the node: the sessions with other nodes and the
/// frames in them, the clock, the outbound client, the audit log, and the
/// node's database for its own tables. Nothing else of the node (its
/// keys' agent, the owner's credentials, the registration) is reachable
/// through it. Cheap to clone; the state of every module route.
#[derive(Clone)]
pub struct Peers {
    node: Arc<PeerLayer>,
}

impl Peers {
    pub(crate) fn new(node: Arc<PeerLayer>) -> Peers {
        Peers { node }
    }

    /// This node's ID.
    pub fn node_id(&self) -> NodeId {
        self.node.node_id()
    }

    /// The node's clock.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        self.node.clock()
    }

    /// Now, by the node's clock.
    pub fn now(&self) -> UnixTime {
        self.node.clock().now()
    }

    /// The session to reach `peer`: the current one, or a new one through
    /// an introduction by the directory.
    pub async fn session_for(&self, peer: &NodeId) -> Result<Arc<LiveSession>, NodeError> {
        self.node.session_for(peer).await
    }

    /// The current session with `peer`, if there is one (no introduction).
    pub fn current_session(&self, peer: &NodeId) -> Option<Arc<LiveSession>> {
        self.node.sessions.with_peer(peer)
    }

    /// Whether the session `id` is still held.
    pub fn holds_session(&self, id: &SessionId) -> bool {
        self.node.sessions.get(id).is_some()
    }

    /// The peers of the sessions in use now.
    pub fn connected_peers(&self) -> Vec<NodeId> {
        self.node
            .sessions
            .current()
            .iter()
            .map(|s| s.peer)
            .collect()
    }

    /// An encrypted ping to `peer` over its current session; the round
    /// trip.
    pub async fn ping(&self, peer: &NodeId) -> Result<std::time::Duration, NodeError> {
        self.node.ping(peer).await
    }

    /// Sends `payload` to `path` on the peer of `live` in a frame of that
    /// session; the peer's answer, opened.
    pub async fn exchange(
        &self,
        live: &LiveSession,
        path: &'static str,
        payload: &[u8],
    ) -> Result<Vec<u8>, NodeError> {
        self.node.exchange(live, path, payload).await
    }

    /// A new session with the peer of `lost`, which the peer answered
    /// `unknown_session` for (see [`PeerLayer::handshake_again`]).
    pub async fn handshake_again(&self, lost: &LiveSession) -> Result<Arc<LiveSession>, NodeError> {
        self.node.handshake_again(lost).await
    }

    /// After an exchange on `live` failed with `error`: a new handshake if
    /// the peer said it lost the session (not taken on its word: the new
    /// handshake is authenticated and ends nothing if it fails), and a
    /// look at the directory if the peer was unreachable (it may have
    /// restarted at another address, losing the session). The one place
    /// that decides how a session heals.
    pub async fn recover(&self, live: &LiveSession, error: &NodeError) {
        if error.is_lost_session() {
            if let Err(e) = self.node.handshake_again(live).await {
                tracing::debug!(error = %e, "handshaking again failed; retrying later");
            }
        } else if matches!(error, NodeError::Outbound(_)) {
            self.node.forget_if_moved(live).await;
        }
    }

    /// Opens a request frame sent to `path` (see
    /// [`PeerLayer::open_frame`]), then lets the enabled modules that
    /// guard `path` check the peer (the auth module's proofs).
    pub async fn open_frame(
        &self,
        path: &str,
        body: &[u8],
    ) -> Result<(Incoming, Vec<u8>), ApiError> {
        let (incoming, payload) = self.node.open_frame(path, body)?;
        if let Some(hooks) = self.node.hooks() {
            hooks.check_request(self, incoming.session(), path).await?;
        }
        Ok((incoming, payload))
    }

    /// The answer to `request` on `path`, sealed and bound to it.
    pub fn answer_frame(
        &self,
        request: &Incoming,
        path: &str,
        payload: &[u8],
    ) -> Result<Response, ApiError> {
        self.node.answer_frame(request, path, payload)
    }

    /// Signs a peer's authentication challenge with this node's identity
    /// key, bound to the session it came in (through the agent).
    pub async fn sign_challenge(
        &self,
        live: &LiveSession,
        challenge: &[u8; 32],
    ) -> Result<Vec<u8>, NodeError> {
        self.node
            .crypto()
            .sign_auth_challenge(&live.peer, live.id().as_bytes(), challenge)
            .await
            .map(|signature| signature.to_vec())
            .map_err(NodeError::Crypto)
    }

    /// The outbound client (the node's SSRF policy).
    pub fn outbound(&self) -> &OutboundClient {
        self.node.outbound()
    }

    /// The signed audit log.
    pub fn audit(&self) -> &Audit {
        self.node.audit()
    }

    /// The node's database, where a module keeps its own tables.
    pub fn store(&self) -> &NodeStore {
        self.node.store()
    }

    /// The node's data folder.
    pub fn data_dir(&self) -> &Path {
        self.node.data_dir()
    }

    /// The folders downloads may be written to.
    pub fn download_dirs(&self) -> &[std::path::PathBuf] {
        &self.node.config().download_dirs
    }

    /// The largest frame a session carries.
    pub fn max_frame_bytes(&self) -> usize {
        self.node.config().max_frame_bytes
    }

    /// Whether the module `name` is switched on.
    pub fn is_enabled(&self, name: &str) -> bool {
        self.node.hooks().is_some_and(|h| h.is_enabled(name))
    }

    /// The mailbox a module offers (the messaging module), to send short
    /// notes to peers and read those received, without naming the module.
    pub fn mailbox(&self) -> Option<Arc<dyn Mailbox>> {
        self.node.hooks().and_then(|h| h.mailbox())
    }

    /// The node's metrics in the Prometheus text format.
    pub fn render_metrics(&self) -> String {
        self.node.render_metrics()
    }
}

/// The admin API's body naming a peer (`connect`, `ping`, a module's
/// action on one peer).
#[derive(Debug, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PeerRequest {
    /// The peer.
    #[schema(value_type = openred_core::wire::NodeIdText)]
    pub node_id: NodeId,
}

/// The peer a [`PeerRequest`] names (a node ID that does not parse is a
/// 400 `bad_node_id` from the extractor).
pub fn peer_id(
    body: Result<axum::Json<PeerRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<NodeId, ApiError> {
    let axum::Json(body) = body?;
    Ok(body.node_id)
}

/// A P2P route that takes a request frame and answers with a frame: the
/// peer layer opens the request (and runs the modules' guards), calls
/// `handler` with the session it came in and its payload, and seals the
/// answer bound to the request. The one place a module's frame is opened
/// and answered.
pub fn framed<H, F>(path: &'static str, handler: H) -> MethodRouter<Peers>
where
    H: Fn(Peers, Arc<LiveSession>, Vec<u8>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Result<Vec<u8>, ApiError>> + Send + 'static,
{
    post(move |State(peers): State<Peers>, body: Bytes| async move {
        let (incoming, payload) = peers.open_frame(path, &body).await?;
        // Answers may carry secrets (a file link's): wiped once sealed.
        let answer = zeroize::Zeroizing::new(
            handler(peers.clone(), incoming.session().clone(), payload).await?,
        );
        peers.answer_frame(&incoming, path, &answer)
    })
}
