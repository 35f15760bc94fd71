//! The peer layer's state: what talking to other nodes needs (the keys'
//! agent, the database, the outbound client, the directory, the sessions,
//! the audit log, the counters), and nothing of the owner's. The node's
//! state ([`crate::state::NodeState`]) holds one and adds the modules and
//! the owner's credentials; the modules reach the node through a handle on
//! it ([`super::Peers`]).
//!
//! The layer names no module: what it needs of them (the suites they
//! switch on, their session hooks and request guards, a mailbox, their
//! metrics) it asks through [`PeerHooks`], which the module registry
//! implements.

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, OnceLock, Weak};

use openred_core::session::{SessionId, Suite};
use openred_core::{Clock, NodeId};
use openred_http::{ApiError, OutboundClient};

use super::sessions::{LiveSession, SessionTable};
use super::{BoxFuture, Mailbox, Peers};
use crate::agent::Crypto;
use crate::audit::{Audit, Event, EventKind};
use crate::config::NodeConfig;
use crate::directory_client::DirectoryClient;
use crate::metrics::ModuleView;
use crate::store::NodeStore;

/// What the peer layer asks of the modules, without naming one.
pub trait PeerHooks: Send + Sync {
    /// `configured`, then the suites the enabled modules switch on.
    fn suites(&self, configured: &[Suite]) -> Vec<Suite>;
    /// A session was established.
    fn session_established(&self, peer: NodeId, id: SessionId);
    /// Sessions ended.
    fn sessions_closed(&self, ended: &[(NodeId, SessionId)]);
    /// The checks of the enabled modules that guard `route`.
    fn check_request<'a>(
        &'a self,
        peers: &'a Peers,
        session: &'a Arc<LiveSession>,
        route: &'a str,
    ) -> BoxFuture<'a, Result<(), ApiError>>;
    /// Whether the module `name` is on.
    fn is_enabled(&self, name: &str) -> bool;
    /// The first registered module's mailbox.
    fn mailbox(&self) -> Option<Arc<dyn Mailbox>>;
    /// Every module, for the metrics.
    fn module_views(&self) -> Vec<ModuleView>;
}

/// See the module's documentation.
pub struct PeerLayer {
    pub(crate) config: NodeConfig,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) crypto: Arc<Crypto>,
    pub(crate) store: NodeStore,
    pub(crate) outbound: OutboundClient,
    pub(crate) directory: DirectoryClient,
    pub(crate) sessions: SessionTable,
    /// Whether the last registration with the directory succeeded.
    pub(crate) registered: AtomicBool,
    /// What the core counts.
    pub(crate) metrics: crate::metrics::NodeMetrics,
    /// The last readiness checks.
    pub(crate) readiness: crate::health::ReadinessCache,
    /// The signed audit log.
    pub(crate) audit: Audit,
    /// Rate limits on the reachability route.
    pub(crate) reachability: super::reachability::ReachabilityLimiter,
    /// Held while a session the peer says it lost is replaced
    /// ([`PeerLayer::handshake_again`]).
    pub(crate) reconnecting: tokio::sync::Mutex<()>,
    /// The module registry, set once when the node is built.
    pub(crate) hooks: OnceLock<Weak<dyn PeerHooks>>,
}

impl PeerLayer {
    /// This node's ID.
    pub fn node_id(&self) -> NodeId {
        self.crypto.node_id()
    }

    /// The node's private-key operations (the crypto agent).
    pub fn crypto(&self) -> &Crypto {
        &self.crypto
    }

    /// The node's database.
    pub fn store(&self) -> &NodeStore {
        &self.store
    }

    /// Live sessions.
    pub fn sessions(&self) -> &SessionTable {
        &self.sessions
    }

    /// The directory client (pinned key, registration, introductions).
    pub fn directory(&self) -> &DirectoryClient {
        &self.directory
    }

    /// The outbound client.
    pub fn outbound(&self) -> &OutboundClient {
        &self.outbound
    }

    /// The configuration.
    pub fn config(&self) -> &NodeConfig {
        &self.config
    }

    /// Whether the last registration with the directory succeeded.
    pub fn is_registered(&self) -> bool {
        self.registered.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The data directory.
    pub fn data_dir(&self) -> &std::path::Path {
        &self.config.data_dir
    }

    /// What the core counts.
    pub fn metrics(&self) -> &crate::metrics::NodeMetrics {
        &self.metrics
    }

    /// The last readiness checks (`None` before the first).
    pub fn readiness(&self) -> Option<crate::health::Readiness> {
        self.readiness.get(self.clock.now().0)
    }

    /// The Prometheus exposition of the node and its modules.
    pub fn render_metrics(&self) -> String {
        let sessions = self.sessions.all();
        let peers: std::collections::HashSet<_> = sessions.iter().map(|s| s.peer).collect();
        let gauges = crate::metrics::Gauges {
            sessions: sessions.len(),
            peers: peers.len(),
            registered: self.is_registered(),
            ready: self.readiness().is_some_and(|r| r.ready),
        };
        self.metrics.render(
            &gauges,
            self.crypto.latency(),
            &self.hooks().map(|h| h.module_views()).unwrap_or_default(),
        )
    }

    /// The modules' side, while the node runs.
    pub(crate) fn hooks(&self) -> Option<Arc<dyn PeerHooks>> {
        self.hooks.get().and_then(Weak::upgrade)
    }

    /// The signed audit log: `node.audit().record(Event::ok(..))`.
    pub fn audit(&self) -> &Audit {
        &self.audit
    }

    /// Tells the modules and the audit log that sessions ended, and why.
    pub(crate) fn sessions_closed(
        &self,
        ended: &[(NodeId, openred_core::session::SessionId)],
        why: &str,
    ) {
        if let Some(hooks) = self.hooks() {
            hooks.sessions_closed(ended);
        }
        self.metrics
            .sessions_closed
            .fetch_add(ended.len() as u64, std::sync::atomic::Ordering::Relaxed);
        for (peer, id) in ended {
            self.audit.record(
                Event::ok(EventKind::SessionClosed)
                    .peer(*peer)
                    .reason(why)
                    .detail("session_id", id.to_string()),
            );
        }
    }

    /// The clock.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// The suites offered and accepted in a new handshake: the configured
    /// ones, then those the enabled modules switch on.
    pub fn suites(&self) -> Vec<openred_core::session::Suite> {
        match self.hooks() {
            Some(hooks) => hooks.suites(&self.config.suites),
            None => self.config.suites.clone(),
        }
    }
}
