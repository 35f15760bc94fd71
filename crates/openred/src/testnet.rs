//! A local network: a directory and nodes on 127.0.0.1, in this process,
//! with their data in a temporary folder the network owns. `openred demo`,
//! the benchmark examples, the echo example and the integration tests all
//! build their network here, so that none of them wires a directory to
//! nodes by hand (and the node crate never needs the directory, not even
//! in its tests).
//!
//! What the callers choose ([`LocalNetworkBuilder`]): the clock shared by
//! the directory and the nodes, where each node's keys live (crypto agent
//! processes, from a given program or this executable, or in process),
//! the directory's configuration (rate limits, the database: SQLite in its
//! data folder or a PostgreSQL URL) and the transport it reaches nodes
//! through (a test may wrap it to watch token pushes), the nodes'
//! configuration (module settings, limits, the pinned directory key), extra
//! modules, and where the temporary folder goes. Nodes can be added later
//! ([`LocalNetwork::add_node`]), published at another URL than their
//! listener's (a relay in front), and started again on their data folder
//! ([`LocalNetwork::relaunch`]).
//!
//! Everything here allows private addresses (`danger_allow_private_addresses`)
//! and binds loopback only: it is never a deployment.

use std::net::SocketAddr;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openred_core::id::Fingerprint;
use openred_core::url::UrlError;
use openred_core::{ApiUrl, Clock, IdentityPublicKey, NodeId};
use openred_directory::transport::{NodeTransport, OutboundTransport};
use openred_directory::{Config as DirectoryConfig, Database, Directory};
use openred_http::{OutboundClient, OutboundConfig};
use openred_node::agent::identity::IdentityError;
use openred_node::error::NodeError;
use openred_node::modules::Module;
use openred_node::{Connected, Node, NodeConfig, NodeKeys, NodeState};
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use crate::SystemClock;

/// Why a local network, or one of its nodes, did not start or stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum LocalNetworkError {
    /// The temporary folder could not be created.
    #[error("creating a temporary folder: {0}")]
    TempDir(std::io::Error),
    /// A loopback port could not be bound.
    #[error("binding a loopback port: {0}")]
    Bind(std::io::Error),
    /// A listener's address makes no API URL.
    #[error("{0}")]
    Url(#[from] UrlError),
    /// The directory's outbound client could not be built.
    #[error("the directory's outbound client: {0}")]
    Outbound(String),
    /// The directory did not start.
    #[error("the directory: {0}")]
    Directory(#[from] openred_directory::StartError),
    /// A node's keys could not be created.
    #[error("node {name}: {source}")]
    Keys {
        /// The node's name in this network.
        name: String,
        /// What failed.
        source: IdentityError,
    },
    /// A node did not start.
    #[error("node {name}: {source}")]
    Node {
        /// The node's name in this network.
        name: String,
        /// What failed.
        source: openred_node::node::StartError,
    },
    /// Some nodes had not registered with the directory in time.
    #[error("the nodes did not register within {} s", .0.as_secs())]
    NotRegistered(Duration),
    /// A service stopped with an I/O error.
    #[error("serving: {0}")]
    Serve(#[from] std::io::Error),
    /// A service's task panicked or was cancelled.
    #[error("a service task: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// Where the nodes' private keys live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Agents {
    /// In each node's own crypto agent process, started from `program`,
    /// else from this process's executable (which must then be `openred`).
    Processes {
        /// The `openred` binary to start agents from.
        program: Option<PathBuf>,
    },
    /// In this process (`danger_in_process_crypto`): for tests and
    /// benchmarks that run without the binary.
    InProcess,
}

type DirectoryTweak = Box<dyn FnOnce(&mut DirectoryConfig) + Send>;
type TransportWrap = Box<dyn FnOnce(OutboundTransport) -> Arc<dyn NodeTransport> + Send>;
type NodeTweak = Arc<dyn Fn(&mut NodeConfig) + Send + Sync>;
type ModuleFactory = Box<dyn Fn() -> Vec<Arc<dyn Module>> + Send>;

/// How to start a [`LocalNetwork`]; from [`LocalNetwork::builder`].
pub struct LocalNetworkBuilder {
    names: Vec<String>,
    clock: Arc<dyn Clock>,
    agents: Agents,
    temp_prefix: String,
    temp_parent: Option<PathBuf>,
    directory_config: Option<DirectoryTweak>,
    transport: Option<TransportWrap>,
    node_config: Option<NodeTweak>,
    modules: Option<ModuleFactory>,
    registration_timeout: Duration,
}

impl LocalNetworkBuilder {
    /// `count` nodes, named `node0`, `node1`, …
    pub fn nodes(self, count: usize) -> Self {
        self.named((0..count).map(|i| format!("node{i}")))
    }

    /// One node per name (its data folder's name too), in this order.
    pub fn named<S: Into<String>>(mut self, names: impl IntoIterator<Item = S>) -> Self {
        self.names = names.into_iter().map(Into::into).collect();
        self
    }

    /// The clock of the directory and every node (default: the wall clock).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Where the nodes' keys live (default: agent processes started from
    /// this executable).
    pub fn agents(mut self, agents: Agents) -> Self {
        self.agents = agents;
        self
    }

    /// The temporary folder's name starts with `prefix` (default
    /// `openred-net-`).
    pub fn temp_prefix(mut self, prefix: &str) -> Self {
        prefix.clone_into(&mut self.temp_prefix);
        self
    }

    /// Creates the temporary folder in `parent` (default: the system's
    /// temporary directory): where the databases, and their fsyncs, go.
    pub fn temp_dir_in(mut self, parent: Option<PathBuf>) -> Self {
        self.temp_parent = parent;
        self
    }

    /// Adjusts the directory's configuration, after the network's defaults
    /// (private addresses allowed; SQLite in the directory's data folder).
    pub fn directory_config(
        mut self,
        tweak: impl FnOnce(&mut DirectoryConfig) + Send + 'static,
    ) -> Self {
        self.directory_config = Some(Box::new(tweak));
        self
    }

    /// The directory reaches nodes through `wrap` of its usual transport
    /// (e.g. to keep a copy of every token it pushes).
    pub fn directory_transport(
        mut self,
        wrap: impl FnOnce(OutboundTransport) -> Arc<dyn NodeTransport> + Send + 'static,
    ) -> Self {
        self.transport = Some(Box::new(wrap));
        self
    }

    /// Adjusts every node's configuration (nodes added later too), after
    /// the network's defaults: private addresses allowed, the directory's
    /// key pinned, [`Agents`] as chosen.
    pub fn node_config(mut self, tweak: impl Fn(&mut NodeConfig) + Send + Sync + 'static) -> Self {
        self.node_config = Some(Arc::new(tweak));
        self
    }

    /// Modules each node of the builder runs beside the built-in ones
    /// (`make` is called once per node: a module instance is per node).
    pub fn modules(mut self, make: impl Fn() -> Vec<Arc<dyn Module>> + Send + 'static) -> Self {
        self.modules = Some(Box::new(make));
        self
    }

    /// How long [`LocalNetworkBuilder::start`] waits for every node to
    /// register (default 20 s).
    pub fn registration_timeout(mut self, timeout: Duration) -> Self {
        self.registration_timeout = timeout;
        self
    }

    /// Starts the directory, then the nodes, and waits until every node
    /// has registered (its reachability proof included).
    pub async fn start(self) -> Result<LocalNetwork, LocalNetworkError> {
        let mut temp = tempfile::Builder::new();
        temp.prefix(&self.temp_prefix);
        let root = match &self.temp_parent {
            Some(parent) => temp.tempdir_in(parent),
            None => temp.tempdir(),
        }
        .map_err(LocalNetworkError::TempDir)?;

        let listener = bind_loopback().await?;
        let address = listener.local_addr().map_err(LocalNetworkError::Bind)?;
        let mut config = DirectoryConfig::new(address, root.path().join("directory"));
        config.danger_allow_private_addresses = true;
        if let Some(tweak) = self.directory_config {
            tweak(&mut config);
        }
        let outbound = OutboundTransport(
            OutboundClient::new(OutboundConfig {
                allow_private: config.danger_allow_private_addresses,
                ..OutboundConfig::default()
            })
            .map_err(|e| LocalNetworkError::Outbound(e.to_string()))?,
        );
        let transport = match self.transport {
            Some(wrap) => wrap(outbound),
            None => Arc::new(outbound),
        };
        let data_dir = config.data_dir.clone();
        let database = config.database.clone();
        let directory =
            Directory::open_with_transport(config, self.clock.clone(), transport).await?;
        let base = format!("http://{address}");
        let info = LocalDirectory {
            url: ApiUrl::parse_origin(&base)?,
            base,
            fingerprint: directory.fingerprint(),
            public_key: directory.public_key(),
            data_dir,
            database,
        };
        let (stop_directory, mut stop) = watch::channel(false);
        let directory_task = tokio::spawn(directory.serve(listener, async move {
            let _ = stop.wait_for(|s| *s).await;
        }));

        let mut network = LocalNetwork {
            directory: info,
            nodes: Vec::new(),
            clock: self.clock,
            agents: self.agents,
            node_config: self.node_config,
            stop_directory,
            directory_task: Mutex::new(Some(directory_task)),
            root,
        };
        for name in self.names {
            let modules = self.modules.as_ref().map(|make| make()).unwrap_or_default();
            let launch = Launch {
                modules,
                ..Launch::default()
            };
            let node = network.add_node(&name, |_| {}, launch).await?;
            network.nodes.push(node);
        }
        network.wait_registered(self.registration_timeout).await?;
        Ok(network)
    }
}

/// The directory of a [`LocalNetwork`].
#[derive(Debug, Clone)]
pub struct LocalDirectory {
    /// Its API's origin.
    pub url: ApiUrl,
    /// The same, `http://127.0.0.1:PORT`, to append paths to.
    pub base: String,
    /// The fingerprint of its key, which the nodes pin.
    pub fingerprint: Fingerprint,
    /// Its key.
    pub public_key: IdentityPublicKey,
    /// Its data folder (key file, SQLite database).
    pub data_dir: PathBuf,
    /// Where it stores its records.
    pub database: Database,
}

/// How [`LocalNetwork::add_node`] and [`LocalNetwork::relaunch`] start a
/// node, beyond its configuration.
#[derive(Default)]
pub struct Launch {
    /// The P2P listener (default: a free loopback port).
    pub p2p: Option<TcpListener>,
    /// The URL the node's record publishes (default: its P2P listener's),
    /// e.g. a relay in front of it.
    pub public_url: Option<ApiUrl>,
    /// Modules beside the built-in ones.
    pub modules: Vec<Arc<dyn Module>>,
}

/// A directory and nodes on loopback, in this process. Dropping it stops
/// the directory; dropping a [`LocalNode`] stops that node.
pub struct LocalNetwork {
    /// The directory.
    pub directory: LocalDirectory,
    /// The nodes the builder started, in the order of their names.
    pub nodes: Vec<LocalNode>,
    clock: Arc<dyn Clock>,
    agents: Agents,
    node_config: Option<NodeTweak>,
    stop_directory: watch::Sender<bool>,
    directory_task: Mutex<Option<JoinHandle<std::io::Result<()>>>>,
    // Last: the data folders outlive every service above.
    root: tempfile::TempDir,
}

impl LocalNetwork {
    /// A network of no node, on the wall clock, with crypto agent
    /// processes; see the builder's options.
    pub fn builder() -> LocalNetworkBuilder {
        LocalNetworkBuilder {
            names: Vec::new(),
            clock: Arc::new(SystemClock),
            agents: Agents::Processes { program: None },
            temp_prefix: "openred-net-".to_owned(),
            temp_parent: None,
            directory_config: None,
            transport: None,
            node_config: None,
            modules: None,
            registration_timeout: Duration::from_secs(20),
        }
    }

    /// The temporary folder holding every data folder (the directory's in
    /// `directory/`, each node's under its name).
    pub fn root(&self) -> &Path {
        self.root.path()
    }

    /// The clock of the directory and the nodes.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// The builder's node called `name`.
    pub fn node(&self, name: &str) -> Option<&LocalNode> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// Creates a node called `name` (keys in a new data folder under
    /// [`LocalNetwork::root`]), with the network's configuration adjusted
    /// by `tweak`, and starts it; does not wait for its registration.
    pub async fn add_node(
        &self,
        name: &str,
        tweak: impl FnOnce(&mut NodeConfig),
        launch: Launch,
    ) -> Result<LocalNode, LocalNetworkError> {
        let data_dir = self.root.path().join(name);
        NodeKeys::create(&data_dir).map_err(|source| LocalNetworkError::Keys {
            name: name.to_owned(),
            source,
        })?;
        let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
        let mut config = NodeConfig::new(
            data_dir,
            loopback,
            // Replaced by the listener's URL at launch.
            self.directory.url.clone(),
            loopback,
            self.directory.url.clone(),
        );
        config.danger_allow_private_addresses = true;
        config.directory_key = Some(self.directory.fingerprint);
        match &self.agents {
            Agents::Processes { program } => config.agent_program.clone_from(program),
            Agents::InProcess => config.danger_in_process_crypto = true,
        }
        if let Some(network_tweak) = &self.node_config {
            network_tweak(&mut config);
        }
        tweak(&mut config);
        self.relaunch(name, config, launch).await
    }

    /// Starts a node on `config` as it is (a data folder with keys, e.g.
    /// the configuration of a node that stopped), on the listeners of
    /// `launch` or fresh ones; does not wait for its registration.
    pub async fn relaunch(
        &self,
        name: &str,
        mut config: NodeConfig,
        launch: Launch,
    ) -> Result<LocalNode, LocalNetworkError> {
        let p2p = match launch.p2p {
            Some(listener) => listener,
            None => bind_loopback().await?,
        };
        let admin = bind_loopback().await?;
        config.listen = p2p.local_addr().map_err(LocalNetworkError::Bind)?;
        config.admin_listen = admin.local_addr().map_err(LocalNetworkError::Bind)?;
        let url = format!("http://{}", config.listen);
        config.public_url = match launch.public_url {
            Some(public) => public,
            None => ApiUrl::parse_origin(&url)?,
        };
        let admin_url = format!("http://{}", config.admin_listen);
        let data_dir = config.data_dir.clone();
        let failed = |source| LocalNetworkError::Node {
            name: name.to_owned(),
            source,
        };
        let mut modules = openred_node::modules::builtin(&config.module_settings)
            .map_err(|e| failed(e.into()))?;
        modules.extend(launch.modules);
        let node = Node::open_with_modules(config, self.clock.clone(), None, modules)
            .await
            .map_err(failed)?;
        let state = node.state();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(node.serve(p2p, admin, async move {
            let _ = stopped.await;
        }));
        Ok(LocalNode {
            name: name.to_owned(),
            state,
            data_dir,
            url,
            admin_url,
            stop: Some(stop),
            task: Some(task),
        })
    }

    /// Waits until every node of [`LocalNetwork::nodes`] has registered.
    pub async fn wait_registered(&self, timeout: Duration) -> Result<(), LocalNetworkError> {
        let deadline = Instant::now() + timeout;
        while !self.nodes.iter().all(|n| n.is_registered()) {
            if Instant::now() > deadline {
                return Err(LocalNetworkError::NotRegistered(timeout));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    /// `a` asks the directory to meet `b`, and opens a session with it
    /// (handshake, then a first frame that confirms it).
    pub async fn introduce(&self, a: &LocalNode, b: &LocalNode) -> Result<Connected, NodeError> {
        a.connect(b.id()).await
    }

    /// Tells the directory to stop; its port then soon refuses connections.
    pub fn stop_directory(&self) {
        let _ = self.stop_directory.send(true);
    }

    /// Stops the builder's nodes (each deregisters from the live directory
    /// first), then the directory; the first error any of them stopped on.
    pub async fn shutdown(mut self) -> Result<(), LocalNetworkError> {
        let mut nodes = std::mem::take(&mut self.nodes);
        for node in &mut nodes {
            node.signal_stop();
        }
        for node in &mut nodes {
            node.stop().await?;
        }
        self.stop_directory();
        let task = self
            .directory_task
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(task) = task {
            task.await??;
        }
        Ok(())
    }
}

impl Drop for LocalNetwork {
    fn drop(&mut self) {
        self.stop_directory();
    }
}

/// A node of a [`LocalNetwork`], serving on loopback. It dereferences to
/// its [`NodeState`]; dropping it stops it.
pub struct LocalNode {
    /// Its name in the network (and its data folder's).
    pub name: String,
    /// The running node.
    pub state: Arc<NodeState>,
    /// Its data folder.
    pub data_dir: PathBuf,
    /// Its P2P API's origin, `http://127.0.0.1:PORT`.
    pub url: String,
    /// Its admin API's origin.
    pub admin_url: String,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

impl Deref for LocalNode {
    type Target = NodeState;

    fn deref(&self) -> &NodeState {
        &self.state
    }
}

impl LocalNode {
    /// Its node ID.
    pub fn id(&self) -> NodeId {
        self.state.node_id()
    }

    /// A P2P endpoint of this node.
    pub fn p2p(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }

    /// The admin API's bearer token, from the data folder.
    pub fn admin_token(&self) -> std::io::Result<String> {
        let text = std::fs::read_to_string(openred_node::owner::admin::token_path(&self.data_dir))?;
        Ok(text.trim().to_owned())
    }

    /// Waits until the node has registered with the directory.
    pub async fn wait_registered(&self, timeout: Duration) -> Result<(), LocalNetworkError> {
        let deadline = Instant::now() + timeout;
        while !self.is_registered() {
            if Instant::now() > deadline {
                return Err(LocalNetworkError::NotRegistered(timeout));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    fn signal_stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Stops serving (deregistering first) and waits until it has stopped.
    pub async fn stop(&mut self) -> Result<(), LocalNetworkError> {
        self.signal_stop();
        if let Some(task) = self.task.take() {
            task.await??;
        }
        Ok(())
    }
}

/// A listener on a free loopback port.
async fn bind_loopback() -> Result<TcpListener, LocalNetworkError> {
    TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .map_err(LocalNetworkError::Bind)
}
