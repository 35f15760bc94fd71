//! The node's validated configuration.

use std::net::SocketAddr;
use std::path::PathBuf;

use openred_core::id::Fingerprint;
use openred_core::session::{EpochConfig, Suite};
use openred_core::ApiUrl;

/// Whom the node accepts introductions from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum IntroductionPolicy {
    /// Any registered node may be introduced.
    #[default]
    Anyone,
    /// Only known peers: nodes this node connected to, whose handshake it
    /// accepted, or that its owner added; a node merely listed by the
    /// directory (`openred peers`) is not known.
    KnownPeers,
}

/// The node's configuration.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Data directory: keys, database, admin token.
    pub data_dir: PathBuf,
    /// Address of the P2P API.
    pub listen: SocketAddr,
    /// The URL other nodes and the directory use to reach the P2P API.
    pub public_url: ApiUrl,
    /// Address of the admin API (loopback by default).
    pub admin_listen: SocketAddr,
    /// The directory's origin.
    pub directory_url: ApiUrl,
    /// The pinned directory key fingerprint; `None`: trust on first use.
    pub directory_key: Option<Fingerprint>,
    /// Allow loopback, private addresses and plain http, for development,
    /// tests and the demo.
    pub danger_allow_private_addresses: bool,
    /// Whom to accept introductions from.
    pub introduction_policy: IntroductionPolicy,
    /// The suites this node offers and accepts, in preference order.
    pub suites: Vec<Suite>,
    /// Session epochs and the replay window.
    pub epoch: EpochConfig,
    /// Sessions older than this are ended, so that keys are re-established
    /// by a fresh handshake on a schedule (post-compromise recovery).
    pub session_max_age_s: u64,
    /// How long a signed record stays valid.
    pub record_lifetime_s: u64,
    /// Sessions held at once (default 4,096); a handshake beyond is refused
    /// with 429 `too_many_sessions`.
    pub max_sessions: usize,
    /// Distinct peers with a session at once (default 1,024); a handshake
    /// with one more is refused with 429 `too_many_peers`.
    pub max_peers: usize,
    /// How long a session this node answered may wait for the peer's
    /// first frame before it is dropped (default 30 s).
    pub unconfirmed_session_idle_s: u64,
    /// Largest frame accepted on the P2P API.
    pub max_frame_bytes: usize,
    /// Largest back-off between registration attempts.
    pub max_backoff_s: u64,
    /// Use the private keys in this process instead of the sandboxed crypto
    /// agent: only for platforms without the kernel features the agent
    /// needs, and for in-process tests.
    pub danger_in_process_crypto: bool,
    /// The program to start as `PROGRAM agent` (default: this program).
    pub agent_program: Option<PathBuf>,
    /// Connections open at once to one peer (or the directory) by the
    /// node's one HTTP client; more requests wait for one to free up
    /// (default 100, as the seed).
    pub max_connections_per_peer: usize,
    /// Idle connections kept open per peer by the node's one HTTP client
    /// (default 100, as the seed).
    pub pool_max_idle_per_peer: usize,
    /// Requests per second to one peer at most, bursts of twice that
    /// (default 20,000): a ceiling against runaway loops, far above what
    /// messaging needs, unlike the directory's 20/s towards nodes.
    pub requests_per_peer_per_s: u32,
    /// How long an idle connection is kept (default 300 s, as the seed).
    pub pool_idle_timeout_s: u64,
    /// The modules switched on at start; `None` (the default): every
    /// module the node has.
    pub modules: Option<std::collections::BTreeSet<String>>,
    /// Each module's settings, by module name (`[modules.NAME]` in the
    /// configuration file); a module takes the defaults without one.
    pub module_settings: std::collections::BTreeMap<String, serde_json::Value>,
}

/// A configuration that cannot work.
#[derive(Debug, thiserror::Error)]
#[error("invalid node configuration: {0}")]
pub struct ConfigError(pub String);

impl NodeConfig {
    /// Defaults for everything but the addresses.
    pub fn new(
        data_dir: PathBuf,
        listen: SocketAddr,
        public_url: ApiUrl,
        admin_listen: SocketAddr,
        directory_url: ApiUrl,
    ) -> NodeConfig {
        NodeConfig {
            data_dir,
            listen,
            public_url,
            admin_listen,
            directory_url,
            directory_key: None,
            danger_allow_private_addresses: false,
            introduction_policy: IntroductionPolicy::Anyone,
            suites: vec![Suite::ChaCha20Poly1305, Suite::Aes256Gcm],
            epoch: EpochConfig::default(),
            session_max_age_s: 24 * 3600,
            record_lifetime_s: 24 * 3600,
            max_sessions: 4096,
            max_peers: 1024,
            unconfirmed_session_idle_s: 30,
            max_frame_bytes: 256 * 1024,
            max_backoff_s: 60,
            danger_in_process_crypto: false,
            agent_program: None,
            max_connections_per_peer: 100,
            pool_max_idle_per_peer: 100,
            requests_per_peer_per_s: 20_000,
            pool_idle_timeout_s: 300,
            modules: None,
            module_settings: Default::default(),
        }
    }

    /// Checks the values make sense together.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let allow = self.danger_allow_private_addresses;
        self.public_url
            .check_policy(allow)
            .map_err(|e| ConfigError(format!("public URL {}: {e}", self.public_url)))?;
        self.directory_url
            .check_policy(allow)
            .map_err(|e| ConfigError(format!("directory URL {}: {e}", self.directory_url)))?;
        if self.suites.is_empty() || self.suites.len() > crate::handshake::MAX_OFFER {
            return Err(ConfigError("list between 1 and 8 suites".into()));
        }
        if self.session_max_age_s < self.epoch.epoch_len_s {
            return Err(ConfigError(
                "session_max_age_s must be at least one epoch".into(),
            ));
        }
        if self.requests_per_peer_per_s == 0 {
            return Err(ConfigError(
                "requests_per_peer_per_s must be at least 1".into(),
            ));
        }
        if self.max_connections_per_peer == 0 {
            return Err(ConfigError(
                "max_connections_per_peer must be at least 1".into(),
            ));
        }
        if self.pool_idle_timeout_s == 0 {
            return Err(ConfigError("pool_idle_timeout_s must be at least 1".into()));
        }
        if self.max_sessions == 0 || self.max_peers == 0 {
            return Err(ConfigError(
                "max_sessions and max_peers must be at least 1".into(),
            ));
        }
        if self.unconfirmed_session_idle_s == 0 {
            return Err(ConfigError(
                "unconfirmed_session_idle_s must be at least 1".into(),
            ));
        }
        if self.record_lifetime_s < 60 {
            return Err(ConfigError("record_lifetime_s must be at least 60".into()));
        }
        Ok(())
    }
}
