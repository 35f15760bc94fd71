//! The module system. A module brings its own P2P and admin routes, may
//! switch on cipher suites from the core's allowlist, may wrap every P2P
//! request in middleware, hears when sessions start and end, runs its own
//! tasks, and reports metrics. The node core names no module: it asks the
//! [`Modules`] registry.
//!
//! Modules are enabled in the configuration and can be switched on and off
//! while the node runs (`POST /admin/v1/modules/{name}/enable|disable`,
//! `openred module enable|disable NAME`). A switch lasts until the node
//! stops; the configuration decides at start. While a module is off, its
//! routes answer 404 `module_disabled`, its middleware lets requests
//! through untouched, its suites are no longer offered or accepted in new
//! handshakes, and it hears no session events; its tasks keep running and
//! are expected to idle (see [`ModuleContext::is_enabled`]).
//!
//! How to write one: `docs/MODULES.md`, and the example module
//! `crates/openred/examples/echo_module.rs`.

pub mod auth;
pub mod files;
pub mod messaging;
pub mod monitoring;

use openred_core::error_code::ErrorCode;
use std::any::Any;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, Weak};

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use openred_core::session::{SessionId, Suite};
use openred_core::NodeId;
use openred_http::ApiError;
use tokio::sync::watch;

use crate::peer::sessions::LiveSession;
use crate::peer::{PeerHooks, PeerLayer, Peers};

pub use crate::metrics::{Metric, MetricKind, ModuleView};
pub use crate::peer::{BoxFuture, Mailbox, Note};

/// Middleware over every P2P request: call `next.run(request)` to go on,
/// or answer yourself.
pub type Middleware =
    Arc<dyn Fn(Peers, Request, Next) -> BoxFuture<'static, Response> + Send + Sync>;

/// What a module's tasks get to reach the node: the peer layer's handle
/// while the node runs, and whether the module is on now.
#[derive(Clone)]
pub struct ModuleContext {
    node: Weak<PeerLayer>,
    name: &'static str,
}

impl ModuleContext {
    /// The peer layer's handle, while the node runs.
    pub fn peers(&self) -> Option<Peers> {
        self.node.upgrade().map(Peers::new)
    }

    /// Whether this module is switched on now.
    pub fn is_enabled(&self) -> bool {
        self.peers()
            .is_some_and(|peers| peers.is_enabled(self.name))
    }
}

/// A node module. Every method but [`Module::name`] has a default that
/// contributes nothing.
pub trait Module: Send + Sync + 'static {
    /// The module's name: lowercase ASCII letters, digits and `-`, unique.
    fn name(&self) -> &'static str;

    /// One line for `status`.
    fn description(&self) -> &'static str {
        ""
    }

    /// Routes on the P2P API. Paths start with `/p2p/`; a peer's request
    /// is normally a session frame: route it with [`crate::peer::framed`].
    fn p2p_routes(self: Arc<Self>) -> Router<Peers> {
        Router::new()
    }

    /// Routes on the admin API, behind the owner's bearer token. Paths
    /// start with `/admin/v1/` (the monitoring module's `/metrics` keeps
    /// the path Prometheus expects).
    fn admin_routes(self: Arc<Self>) -> Router<Peers> {
        Router::new()
    }

    /// Cipher suites this module switches on while enabled, on top of the
    /// node's configured ones. Only the core's allowlist ([`Suite`]) can be
    /// named: a module never brings a cipher of its own.
    fn suites(&self) -> Vec<Suite> {
        Vec::new()
    }

    /// Middleware over every P2P request, while enabled.
    fn p2p_middleware(&self) -> Option<Middleware> {
        None
    }

    /// Whether this module checks requests to `route` before they are
    /// handled ([`Module::check_request`]).
    fn guards(&self, route: &str) -> bool {
        let _ = route;
        false
    }

    /// Checks a request to a route this module [guards](Module::guards),
    /// after its frame was opened: `Err` answers the peer instead of the
    /// route's handler.
    fn check_request<'a>(
        &'a self,
        peers: &'a Peers,
        session: &'a Arc<LiveSession>,
        route: &'a str,
    ) -> BoxFuture<'a, Result<(), ApiError>> {
        let _ = (peers, session, route);
        Box::pin(async { Ok(()) })
    }

    /// The [`Mailbox`] this module offers, if any.
    fn mailbox(self: Arc<Self>) -> Option<Arc<dyn Mailbox>> {
        None
    }

    /// Called once when the node starts serving: start the module's tasks
    /// here; they should end when `stop` turns true.
    fn start(self: Arc<Self>, context: ModuleContext, stop: watch::Receiver<bool>) {
        let _ = (context, stop);
    }

    /// A session with `peer` was established (introduction or renewal).
    fn on_session_established(&self, peers: &Peers, peer: NodeId, session: SessionId) {
        let _ = (peers, peer, session);
    }

    /// A session ended (maximum age reached, or replaced and idle).
    fn on_session_closed(&self, peers: &Peers, peer: NodeId, session: SessionId) {
        let _ = (peers, peer, session);
    }

    /// The module was switched on at run time.
    fn on_enabled(&self, peers: &Peers) {
        let _ = peers;
    }

    /// The module's metrics now.
    fn metrics(&self) -> Vec<Metric> {
        Vec::new()
    }

    /// For [`Modules::get`]: `self`.
    fn as_any(&self) -> &dyn Any;
}

/// `text` cut to `max` characters, control characters shown as `\u{..}`:
/// safe to show in a terminal.
pub fn printable(text: &str, max: usize) -> String {
    text.chars()
        .take(max)
        .flat_map(|c| {
            if c.is_control() {
                c.escape_unicode().collect::<Vec<_>>()
            } else {
                vec![c]
            }
        })
        .collect()
}

/// The modules built into `openred`, each with its settings from
/// `settings` (by module name; defaults where absent).
pub fn builtin(
    settings: &BTreeMap<String, serde_json::Value>,
) -> Result<Vec<Arc<dyn Module>>, ModuleError> {
    let known = [messaging::NAME, files::NAME, monitoring::NAME, auth::NAME];
    if let Some(unknown) = settings.keys().find(|k| !known.contains(&k.as_str())) {
        return Err(ModuleError::Unknown(unknown.clone()));
    }
    let messaging = messaging::Messaging::new(settings.get(messaging::NAME))
        .map_err(|e| ModuleError::Settings(messaging::NAME, e))?;
    let files = files::Files::new(settings.get(files::NAME))
        .map_err(|e| ModuleError::Settings(files::NAME, e))?;
    let monitoring = monitoring::Monitoring::new(settings.get(monitoring::NAME))
        .map_err(|e| ModuleError::Settings(monitoring::NAME, e))?;
    let auth = auth::Auth::new(settings.get(auth::NAME))
        .map_err(|e| ModuleError::Settings(auth::NAME, e))?;
    Ok(vec![
        Arc::new(messaging),
        Arc::new(files),
        Arc::new(monitoring),
        Arc::new(auth),
    ])
}

/// Why a set of modules or a switch is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModuleError {
    /// No module has this name.
    #[error("no module is named {0:?}")]
    Unknown(String),
    /// Two modules share a name, or a name is not well formed.
    #[error("bad module name {0:?}")]
    BadName(String),
    /// A module's settings are invalid.
    #[error("settings of the {0} module: {1}")]
    Settings(&'static str, String),
}

struct Entry {
    module: Arc<dyn Module>,
    enabled: AtomicBool,
}

/// The node's modules and their switches.
pub struct Modules {
    entries: Vec<Entry>,
    node: OnceLock<Weak<PeerLayer>>,
}

fn well_formed(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 32
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

impl Modules {
    /// The registry of `modules`, with those named in `enabled` on (all of
    /// them if `None`).
    pub fn new(
        modules: Vec<Arc<dyn Module>>,
        enabled: Option<&BTreeSet<String>>,
    ) -> Result<Modules, ModuleError> {
        let mut names = BTreeSet::new();
        for module in &modules {
            if !well_formed(module.name()) || !names.insert(module.name()) {
                return Err(ModuleError::BadName(module.name().to_owned()));
            }
        }
        if let Some(unknown) = enabled
            .into_iter()
            .flatten()
            .find(|n| !names.contains(n.as_str()))
        {
            return Err(ModuleError::Unknown(unknown.clone()));
        }
        Ok(Modules {
            entries: modules
                .into_iter()
                .map(|module| Entry {
                    enabled: AtomicBool::new(enabled.is_none_or(|on| on.contains(module.name()))),
                    module,
                })
                .collect(),
            node: OnceLock::new(),
        })
    }

    /// Ties the registry to its node (once, when the node is built).
    pub(crate) fn attach(&self, node: &Arc<PeerLayer>) {
        let _ = self.node.set(Arc::downgrade(node));
    }

    fn entry(&self, name: &str) -> Option<&Entry> {
        self.entries.iter().find(|e| e.module.name() == name)
    }

    /// Whether the module `name` is on (false for an unknown name).
    pub fn is_enabled(&self, name: &str) -> bool {
        self.entry(name)
            .is_some_and(|e| e.enabled.load(Ordering::Acquire))
    }

    /// Switches a module on or off; returns whether it was on before.
    pub fn set_enabled(&self, name: &str, on: bool) -> Result<bool, ModuleError> {
        let entry = self
            .entry(name)
            .ok_or_else(|| ModuleError::Unknown(name.to_owned()))?;
        let before = entry.enabled.swap(on, Ordering::AcqRel);
        if on && !before {
            if let Some(peers) = self.peers() {
                entry.module.on_enabled(&peers);
            }
        }
        tracing::info!(module = name, enabled = on, "module switched");
        Ok(before)
    }

    /// The module of type `M`, if registered.
    pub fn get<M: Module>(&self) -> Option<&M> {
        self.entries
            .iter()
            .find_map(|e| e.module.as_any().downcast_ref::<M>())
    }

    /// The enabled modules.
    fn enabled(&self) -> impl Iterator<Item = &Arc<dyn Module>> {
        self.entries
            .iter()
            .filter(|e| e.enabled.load(Ordering::Acquire))
            .map(|e| &e.module)
    }

    /// `configured` and then the suites enabled modules switch on, without
    /// repeats: what the node offers and accepts in a new handshake.
    pub fn suites(&self, configured: &[Suite]) -> Vec<Suite> {
        let mut suites = configured.to_vec();
        for suite in self.enabled().flat_map(|m| m.suites()) {
            if !suites.contains(&suite) && suites.len() < openred_core::handshake::MAX_OFFER {
                suites.push(suite);
            }
        }
        suites
    }

    fn peers(&self) -> Option<Peers> {
        self.node.get().and_then(Weak::upgrade).map(Peers::new)
    }

    /// Starts every module's tasks.
    pub(crate) fn start(&self, node: &Arc<PeerLayer>, stop: &watch::Receiver<bool>) {
        for entry in &self.entries {
            let context = ModuleContext {
                node: Arc::downgrade(node),
                name: entry.module.name(),
            };
            entry.module.clone().start(context, stop.clone());
        }
    }

    /// Every module, for `status`.
    pub fn views(&self) -> Vec<ModuleView> {
        self.entries
            .iter()
            .map(|e| ModuleView {
                name: e.module.name().to_owned(),
                description: e.module.description().to_owned(),
                enabled: e.enabled.load(Ordering::Acquire),
                suites: e.module.suites().iter().map(|s| s.to_string()).collect(),
                metrics: e.module.metrics(),
            })
            .collect()
    }

    /// Every module's P2P routes, each behind its switch, and every
    /// module's middleware around `router`.
    pub(crate) fn p2p_router<S: Clone + Send + Sync + 'static>(
        &self,
        state: &Arc<PeerLayer>,
        mut router: Router<S>,
    ) -> Router<S> {
        let peers = Peers::new(state.clone());
        for entry in &self.entries {
            let name = entry.module.name();
            let routes = entry.module.clone().p2p_routes();
            if routes.has_routes() {
                router = router.merge(gated(&peers, name, routes));
            }
        }
        for entry in &self.entries {
            if let Some(middleware) = entry.module.p2p_middleware() {
                let name = entry.module.name();
                router = router.layer(axum::middleware::from_fn_with_state(
                    peers.clone(),
                    move |axum::extract::State(peers): axum::extract::State<Peers>,
                          request: Request,
                          next: Next| {
                        let middleware = middleware.clone();
                        async move {
                            if peers.is_enabled(name) {
                                middleware(peers, request, next).await
                            } else {
                                next.run(request).await
                            }
                        }
                    },
                ));
            }
        }
        router
    }

    /// Every module's admin routes, each behind its switch.
    pub(crate) fn admin_router<S: Clone + Send + Sync + 'static>(
        &self,
        state: &Arc<PeerLayer>,
    ) -> Router<S> {
        let peers = Peers::new(state.clone());
        let mut router = Router::new();
        for entry in &self.entries {
            let name = entry.module.name();
            let routes = entry.module.clone().admin_routes();
            if routes.has_routes() {
                router = router.merge(gated(&peers, name, routes));
            }
        }
        router
    }
}

/// `routes`, answering 404 `module_disabled` while the module is off,
/// with the peer layer's handle as their state.
fn gated<S: Clone + Send + Sync + 'static>(
    peers: &Peers,
    name: &'static str,
    routes: Router<Peers>,
) -> Router<S> {
    routes
        .route_layer(axum::middleware::from_fn_with_state(
            peers.clone(),
            move |axum::extract::State(peers): axum::extract::State<Peers>,
                  request: Request,
                  next: Next| async move {
                if peers.is_enabled(name) {
                    next.run(request).await
                } else {
                    ApiError::new(
                        ErrorCode::ModuleDisabled,
                        format!("the {name} module is switched off on this node"),
                    )
                    .into_response()
                }
            },
        ))
        .with_state(peers.clone())
}

/// The peer layer asks the registry, never a module by name.
impl PeerHooks for Modules {
    fn suites(&self, configured: &[Suite]) -> Vec<Suite> {
        Modules::suites(self, configured)
    }

    fn is_enabled(&self, name: &str) -> bool {
        Modules::is_enabled(self, name)
    }

    fn module_views(&self) -> Vec<ModuleView> {
        self.views()
    }

    /// Runs the checks of the enabled modules that guard `route`.
    fn check_request<'a>(
        &'a self,
        peers: &'a Peers,
        session: &'a Arc<LiveSession>,
        route: &'a str,
    ) -> BoxFuture<'a, Result<(), ApiError>> {
        Box::pin(async move {
            for module in self.enabled().filter(|m| m.guards(route)) {
                module.check_request(peers, session, route).await?;
            }
            Ok(())
        })
    }

    /// The first registered module's [`Mailbox`].
    fn mailbox(&self) -> Option<Arc<dyn Mailbox>> {
        self.entries.iter().find_map(|e| e.module.clone().mailbox())
    }

    /// Tells the enabled modules a session was established.
    fn session_established(&self, peer: NodeId, id: SessionId) {
        let Some(peers) = self.peers() else { return };
        for module in self.enabled() {
            module.on_session_established(&peers, peer, id);
        }
    }

    /// Tells the enabled modules sessions ended.
    fn sessions_closed(&self, ended: &[(NodeId, SessionId)]) {
        if ended.is_empty() {
            return;
        }
        let Some(peers) = self.peers() else { return };
        for module in self.enabled() {
            for (peer, id) in ended {
                module.on_session_closed(&peers, *peer, *id);
            }
        }
    }
}
