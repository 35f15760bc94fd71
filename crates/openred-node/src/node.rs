//! The node daemon: state, the initiator's side of introductions, the
//! registration loop, and serving the P2P and admin APIs.

use std::future::Future;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use openred_core::session::SessionId;
use openred_core::{Clock, NodeId};
use openred_http::{OutboundClient, OutboundConfig};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::agent::identity::{IdentityError, NodeKeys};
use crate::agent::{Crypto, CryptoError};
use crate::audit::{Audit, Event, EventKind};
use crate::config::{ConfigError, NodeConfig};
use crate::directory_client::DirectoryClient;
use crate::error::NodeError;
use crate::modules::{Module, Modules};
use crate::owner::admin;
use crate::peer::routes::{self};
use crate::peer::sessions::SessionTable;
use crate::peer::{PeerHooks, PeerLayer};
use crate::state::NodeState;
use crate::store::{NodeStore, StoreError};

/// Why the node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Bad configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Keys missing or unreadable.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// Database.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Outbound client.
    #[error("outbound client: {0}")]
    Outbound(String),
    /// Admin token file.
    #[error("admin token: {0}")]
    AdminToken(std::io::Error),
    /// The crypto agent could not be started.
    #[error("crypto agent: {0}")]
    Agent(String),
    /// The modules or their settings.
    #[error("modules: {0}")]
    Modules(#[from] crate::modules::ModuleError),
    /// The audit log could not be opened, or does not verify.
    #[error(transparent)]
    Audit(#[from] crate::audit::AuditError),
}

impl From<CryptoError> for StartError {
    fn from(e: CryptoError) -> StartError {
        StartError::Agent(e.to_string())
    }
}

/// A node, opened and ready to serve.
pub struct Node {
    state: Arc<NodeState>,
}

/// The outcome of a successful introduction and handshake.
#[derive(Debug, Clone)]
pub struct Connected {
    /// The new session.
    pub session_id: SessionId,
    /// The peer.
    pub peer: NodeId,
    /// From asking the directory to the session being established: B has
    /// answered message 2, and A has checked it and installed the session.
    pub established: Duration,
    /// From asking the directory to the session being confirmed by the
    /// first authenticated frame (the ping).
    pub elapsed: Duration,
}

impl Node {
    /// Loads keys, opens the database, writes the admin token file.
    pub async fn open(config: NodeConfig, clock: Arc<dyn Clock>) -> Result<Node, StartError> {
        Node::open_with(config, clock, None).await
    }

    /// As [`Node::open`], with an agent launcher started earlier (before the
    /// process confined itself; see [`prepare_confinement`]).
    pub async fn open_with(
        config: NodeConfig,
        clock: Arc<dyn Clock>,
        launcher: Option<crate::agent::process::Launcher>,
    ) -> Result<Node, StartError> {
        let modules = crate::modules::builtin(&config.module_settings)?;
        Node::open_with_modules(config, clock, launcher, modules).await
    }

    /// As [`Node::open_with`], with these modules instead of the built-in
    /// ones (for tests and for programs that embed the node).
    pub async fn open_with_modules(
        config: NodeConfig,
        clock: Arc<dyn Clock>,
        launcher: Option<crate::agent::process::Launcher>,
        modules: Vec<Arc<dyn Module>>,
    ) -> Result<Node, StartError> {
        config.validate()?;
        let modules = Modules::new(modules, config.modules.as_ref())?;
        let crypto = if let Some(launcher) = launcher {
            Crypto::with_launcher(launcher).await?
        } else if config.danger_in_process_crypto {
            tracing::warn!(
                "danger: the node's private keys are used in process, without the agent's sandbox"
            );
            Crypto::in_process(NodeKeys::load(&config.data_dir)?, clock.clone()).await?
        } else {
            // The keys must be there before an agent tries to load them; only
            // the agent reads them (and unwraps the master key).
            crate::agent::identity::check_present(&config.data_dir)?;
            let launcher = start_launcher(&config)?;
            Crypto::with_launcher(launcher).await?
        };
        let crypto = Arc::new(crypto);
        let storage_key = crypto
            .storage_key(crate::agent::master_key::Purpose::NodeDatabase)
            .await?;
        let store = NodeStore::open(&prepare_state_dir(&config.data_dir)?, &storage_key.0).await?;
        let audit = Audit::open(&config.data_dir, crypto.clone(), clock.clone()).await?;
        // One client for the whole node: every peer, the directory.
        let outbound = OutboundClient::new(OutboundConfig {
            allow_private: config.danger_allow_private_addresses,
            max_connections_per_host: config.max_connections_per_peer,
            per_host: openred_http::HostQuota {
                per_second: std::num::NonZeroU32::new(config.requests_per_peer_per_s)
                    .unwrap_or(std::num::NonZeroU32::MIN),
                burst: std::num::NonZeroU32::new(config.requests_per_peer_per_s.saturating_mul(2))
                    .unwrap_or(std::num::NonZeroU32::MIN),
            },
            pool_max_idle_per_host: config.pool_max_idle_per_peer,
            pool_idle_timeout: std::time::Duration::from_secs(config.pool_idle_timeout_s),
            ..OutboundConfig::default()
        })
        .map_err(|e| StartError::Outbound(e.to_string()))?;
        let admin_token =
            admin::load_or_create_token(&config.data_dir).map_err(StartError::AdminToken)?;
        crate::owner::login::prepare_dir(&config.data_dir).map_err(StartError::AdminToken)?;
        let directory = DirectoryClient::new(config.directory_url.clone(), config.directory_key);
        let owner_login = crate::owner::login::OwnerLogin::new(&crypto.node_id());
        let reachability =
            crate::peer::reachability::ReachabilityLimiter::new(&config.reachability_limits);
        let modules = Arc::new(modules);
        let peer = Arc::new(PeerLayer {
            config,
            clock,
            crypto,
            store,
            outbound,
            directory,
            sessions: SessionTable::default(),
            registered: AtomicBool::new(false),
            metrics: crate::metrics::NodeMetrics::default(),
            readiness: crate::health::ReadinessCache::default(),
            audit,
            reachability,
            reconnecting: tokio::sync::Mutex::new(()),
            hooks: std::sync::OnceLock::new(),
        });
        let hooks: Arc<dyn PeerHooks> = modules.clone();
        let _ = peer.hooks.set(Arc::downgrade(&hooks));
        modules.attach(&peer);
        let state = Arc::new(NodeState {
            peer,
            admin_token,
            confinement: std::sync::OnceLock::new(),
            modules,
            owner_login,
        });
        Ok(Node { state })
    }

    /// Records what the process applied to itself, for `status`.
    pub fn set_confinement(&self, protections: crate::agent::sandbox::Protections) {
        let _ = self.state.confinement.set(protections);
    }

    /// The node's ID.
    pub fn node_id(&self) -> NodeId {
        self.state.crypto.node_id()
    }

    /// Shared state, for in-process tests.
    pub fn state(&self) -> Arc<NodeState> {
        self.state.clone()
    }

    /// Serves the P2P API on `p2p` and the admin API on `admin`, registers
    /// with the directory and keeps the registration fresh, until
    /// `shutdown`; then deregisters and stops.
    pub async fn serve(
        self,
        p2p: TcpListener,
        admin: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let (stop_tx, stop_rx) = watch::channel(false);
        let state = self.state.clone();
        admin::write_address(&state.config.data_dir, admin.local_addr()?)?;
        // Before the first request can reach a module.
        state.modules.start(&state.peer, &stop_rx);
        let p2p_app = openred_http::harden(
            state
                .modules
                .p2p_router(&state.peer, routes::routes().with_state(state.peer.clone()))
                .layer(axum::middleware::from_fn_with_state(
                    state.peer.clone(),
                    routes::count_traffic,
                )),
            state.config.max_frame_bytes + 4096,
        );
        // Large enough for a module's biggest request (a message at its size
        // limit, JSON-escaped), as the P2P API's frames.
        let admin_app = openred_http::harden(
            admin::routes(state.clone()),
            state.config.max_frame_bytes + 4096,
        );
        // Each listener its own accept loop, caps and counters, so that a
        // flood of the P2P port leaves the admin API its connections.
        let p2p_server = tokio::spawn(openred_http::serve(
            p2p,
            p2p_app,
            state.config.p2p_limits(),
            state.metrics.p2p_connections.clone(),
            stopped(stop_rx.clone()),
        ));
        let admin_server = tokio::spawn(openred_http::serve(
            admin,
            admin_app,
            state.config.admin_limits(),
            state.metrics.admin_connections.clone(),
            stopped(stop_rx.clone()),
        ));
        let registration = tokio::spawn(registration_loop(state.peer.clone(), stop_rx.clone()));
        let housekeeping = tokio::spawn(crate::peer::lifecycle::lifecycle_loop(
            state.peer.clone(),
            stop_rx.clone(),
        ));
        let readiness = tokio::spawn(crate::health::readiness_loop(
            state.peer.clone(),
            stop_rx.clone(),
        ));
        shutdown.await;
        let _ = stop_tx.send(true);
        let _ = registration.await;
        housekeeping.abort();
        readiness.abort();
        if state.registered.load(std::sync::atomic::Ordering::SeqCst) {
            let now = state.clock.now();
            match state
                .directory
                .deregister(&state.outbound, &state.store, &state.crypto, now)
                .await
            {
                Ok(()) => tracing::info!("deregistered from the directory"),
                Err(e) => tracing::warn!(error = %e, "could not deregister"),
            }
        }
        let _ = p2p_server.await;
        let _ = admin_server.await;
        state.store.close().await;
        // Everything queued is written, and the log is released for the
        // next writer.
        state.audit.close().await;
        Ok(())
    }
}

/// Completes when `stop` turns true (or its sender is gone).
async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Registers, then refreshes at the pace the directory sets; retries with
/// exponential back-off while the directory is unreachable. The P2P API keeps
/// serving peers meanwhile.
async fn registration_loop(state: Arc<PeerLayer>, mut stop: watch::Receiver<bool>) {
    let mut backoff = 1u64;
    // Audited: the first outcome, then each change (not every heartbeat).
    let mut last_ok = None;
    loop {
        let outcome = register_once(&state).await;
        if last_ok != Some(outcome.is_ok()) {
            last_ok = Some(outcome.is_ok());
            let event = Event::outcome(EventKind::Registration, outcome.is_ok());
            state.audit.record(match &outcome {
                Ok(_) => event,
                Err(e) => event.reason(e.to_api().code().as_str()),
            });
        }
        let wait = match outcome {
            Ok(next) => {
                backoff = 1;
                Duration::from_secs(next.max(1))
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in_s = backoff, "registration failed; retrying");
                let wait = Duration::from_secs(backoff);
                backoff = (backoff * 2).min(state.config.max_backoff_s.max(1));
                wait
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

async fn register_once(state: &PeerLayer) -> Result<u64, NodeError> {
    state.directory.pin(&state.outbound, &state.store).await?;
    let now = state.clock.now();
    let answer = state
        .directory
        .register(
            &state.outbound,
            &state.store,
            &state.crypto,
            &state.config.public_url,
            now,
            state.config.record_lifetime_s,
        )
        .await?;
    if !state
        .registered
        .swap(true, std::sync::atomic::Ordering::SeqCst)
    {
        tracing::info!(node_id = %state.crypto.node_id(), seq = answer.seq, "registered with the directory");
    }
    Ok(answer.next_heartbeat_s)
}

/// The download folder inside the data folder, used when none is given.
pub const DOWNLOAD_DIR: &str = "downloads";

/// The folder of the node's database, `DATA/state`. A folder of its own,
/// because once the node has confined itself it can create and delete
/// files only inside folders that existed beside the key folder (see
/// `sandbox::confine_node`). A database left directly in `DATA` by an
/// earlier version is moved in. Returns the database's path.
pub fn prepare_state_dir(data_dir: &std::path::Path) -> Result<std::path::PathBuf, StartError> {
    let state = data_dir.join("state");
    std::fs::create_dir_all(&state).map_err(StartError::AdminToken)?;
    let database = state.join("node.db");
    if !database.exists() && data_dir.join("node.db").exists() {
        for suffix in ["", "-wal", "-shm"] {
            let old = data_dir.join(format!("node.db{suffix}"));
            if old.exists() {
                std::fs::rename(&old, state.join(format!("node.db{suffix}")))
                    .map_err(StartError::AdminToken)?;
            }
        }
    }
    Ok(database)
}

/// What `openred node run` does before it confines itself, with no thread
/// but the main one: creates every file and folder the node writes in the
/// data directory (after confinement it cannot create any directly there),
/// and starts the agent launcher (which must not inherit the
/// confinement). Then the caller applies `sandbox::confine_node`.
pub fn prepare_confinement(
    config: &NodeConfig,
) -> Result<crate::agent::process::Launcher, StartError> {
    prepare_state_dir(&config.data_dir)?;
    crate::audit::prepare_dir(&config.data_dir).map_err(StartError::AdminToken)?;
    crate::owner::login::prepare_dir(&config.data_dir).map_err(StartError::AdminToken)?;
    admin::load_or_create_token(&config.data_dir).map_err(StartError::AdminToken)?;
    admin::touch_address_file(&config.data_dir).map_err(StartError::AdminToken)?;
    crate::agent::identity::check_present(&config.data_dir)?;
    let default_downloads = config.data_dir.join(DOWNLOAD_DIR);
    for folder in &config.download_dirs {
        if *folder == default_downloads {
            std::fs::create_dir_all(folder).map_err(StartError::AdminToken)?;
        } else if !folder.is_dir() {
            return Err(StartError::Agent(format!(
                "the download folder {} does not exist; create it first",
                folder.display()
            )));
        }
    }
    start_launcher(config)
}

/// Opens the agent's program (`agent_program`, else this process's own
/// image) and starts the launcher from that descriptor, with the key
/// folder handed to `agent_user` first when one is set.
fn start_launcher(config: &NodeConfig) -> Result<crate::agent::process::Launcher, StartError> {
    use crate::agent::process::{Executable, Launcher};
    let program = match &config.agent_program {
        Some(path) => Executable::open(path),
        None => Executable::current(),
    }
    .map_err(|e| StartError::Agent(format!("cannot open the program to start the agent: {e}")))?;
    let key_dir = crate::agent::identity::key_dir(&config.data_dir);
    if let Some(user) = config.agent_user {
        crate::agent::identity::hand_keys_to(&key_dir, user)
            .map_err(|e| StartError::Agent(format!("agent user: {e}")))?;
    }
    Launcher::start(&program, &key_dir, config.agent_user)
        .map_err(|e| StartError::Agent(format!("starting the agent launcher: {e}")))
}
