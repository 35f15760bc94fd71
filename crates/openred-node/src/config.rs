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

/// A rate: `per_minute` sustained, `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateQuota {
    /// Sustained requests per minute (at least 1).
    pub per_minute: u32,
    /// Requests allowed at once (at least 1).
    pub burst: u32,
}

/// Limits on the reachability route (`POST /api/v3/reachability`), which
/// signs a fresh challenge for anyone who asks: without them, a flood keeps
/// the crypto agent signing. The directory calls it once per new or
/// changed URL, so the defaults leave it ample room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReachabilityLimits {
    /// Per source: an IPv4 address, or an IPv6 prefix of `ipv6_prefix_len`
    /// bits. Default 6 a minute, bursts of 3.
    pub per_source: RateQuota,
    /// For all sources together. Default 60 a minute, bursts of 20.
    pub global: RateQuota,
    /// How many leading bits of an IPv6 source make one source (default
    /// 64: one subscriber's network).
    pub ipv6_prefix_len: u8,
}

impl Default for ReachabilityLimits {
    fn default() -> Self {
        ReachabilityLimits {
            per_source: RateQuota {
                per_minute: 6,
                burst: 3,
            },
            global: RateQuota {
                per_minute: 60,
                burst: 20,
            },
            ipv6_prefix_len: openred_core::url::DEFAULT_IPV6_PREFIX_LEN,
        }
    }
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
    /// The user the crypto agent runs as, when the node runs as root
    /// (`--agent-user`): the key folder is handed to that user and the
    /// agent never runs as root. `None`: the node's own user.
    pub agent_user: Option<crate::agent::process::RunAs>,
    /// Folders the node may write downloads to. A confined node can write
    /// only there and in its data folder (not its keys); a download to
    /// another folder is refused before it starts. Empty: no such check
    /// (an unconfined node, e.g. in tests).
    pub download_dirs: Vec<PathBuf>,
    /// Allow `admin_listen` on a non-loopback address.
    pub danger_admin_listen_non_loopback: bool,
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
    /// How long an idle connection is kept (default 5 s, not the seed's
    /// 300 s: peers close a kept-alive connection after their 10 s header
    /// timeout, and a client that keeps it longer may reuse it as it closes).
    pub pool_idle_timeout_s: u64,
    /// Rate limits on the reachability route.
    pub reachability_limits: ReachabilityLimits,
    /// The modules switched on at start; `None` (the default): every
    /// module the node has.
    pub modules: Option<std::collections::BTreeSet<String>>,
    /// Each module's settings, by module name (`[modules.NAME]` in the
    /// configuration file); a module takes the defaults without one.
    pub module_settings: std::collections::BTreeMap<String, serde_json::Value>,
    /// Connections open at once on the P2P listener (default 4096); more
    /// are answered 503 and closed at once.
    pub max_connections: usize,
    /// Connections open at once on the P2P listener from one source address
    /// (IPv6: one prefix of `connections_ipv6_prefix_len` bits). Default
    /// 128, above the 100 connections a peer's own client opens at most.
    pub max_connections_per_address: usize,
    /// The IPv6 prefix counted as one source by the connection cap
    /// (default 64).
    pub connections_ipv6_prefix_len: u8,
    /// Connections open at once on the admin listener (default 64), apart
    /// from the P2P listener's, so that a saturated P2P port leaves the
    /// owner a way in.
    pub admin_max_connections: usize,
    /// How long a request's head may take to arrive, counted from when the
    /// server waits for it (after the accept or the previous answer, so
    /// also the keep-alive idle limit); default 10 s. Both listeners.
    pub header_read_timeout_s: u64,
    /// A connection on which nothing moves for this long while no handler
    /// works is closed (stalled uploads, readers that stop); default 60 s.
    pub idle_timeout_s: u64,
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
            agent_user: None,
            download_dirs: Vec::new(),
            danger_admin_listen_non_loopback: false,
            max_connections_per_peer: 100,
            pool_max_idle_per_peer: 100,
            requests_per_peer_per_s: 20_000,
            pool_idle_timeout_s: 5,
            reachability_limits: ReachabilityLimits::default(),
            modules: None,
            module_settings: Default::default(),
            max_connections: 4096,
            max_connections_per_address: 128,
            connections_ipv6_prefix_len: 64,
            admin_max_connections: 64,
            header_read_timeout_s: 10,
            idle_timeout_s: 60,
        }
    }

    /// The P2P listener's limits.
    pub fn p2p_limits(&self) -> openred_http::ServeLimits {
        openred_http::ServeLimits {
            max_connections: self.max_connections,
            max_connections_per_address: self.max_connections_per_address,
            ipv6_prefix_len: self.connections_ipv6_prefix_len,
            header_read_timeout: std::time::Duration::from_secs(self.header_read_timeout_s),
            idle_timeout: std::time::Duration::from_secs(self.idle_timeout_s),
            uncapped_sources: Vec::new(),
        }
    }

    /// The admin listener's limits: its own cap, and no cap per address
    /// (its clients are the owner's, on loopback by default).
    pub fn admin_limits(&self) -> openred_http::ServeLimits {
        openred_http::ServeLimits {
            max_connections: self.admin_max_connections,
            max_connections_per_address: self.admin_max_connections,
            ..self.p2p_limits()
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
        if !self.admin_listen.ip().is_loopback() && !self.danger_admin_listen_non_loopback {
            return Err(ConfigError(format!(
                "admin_listen {} is not a loopback address: the admin API would answer on the \
                 network; pass --danger-admin-listen-non-loopback if that is really meant",
                self.admin_listen
            )));
        }
        if self.record_lifetime_s == 0
            || self.record_lifetime_s > crate::agent::state::MAX_RECORD_LIFETIME_S
        {
            return Err(ConfigError(format!(
                "record_lifetime_s must be between 1 and {} (7 days): the agent signs no longer record",
                crate::agent::state::MAX_RECORD_LIFETIME_S
            )));
        }
        if self.suites.is_empty() || self.suites.len() > openred_core::handshake::MAX_OFFER {
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
        let reach = &self.reachability_limits;
        if [reach.per_source, reach.global]
            .iter()
            .any(|q| q.per_minute == 0 || q.burst == 0)
        {
            return Err(ConfigError(
                "reachability_limits quotas need per_minute and burst of at least 1".into(),
            ));
        }
        if !(1..=128).contains(&reach.ipv6_prefix_len) {
            return Err(ConfigError(
                "reachability_limits.ipv6_prefix_len must be in 1..=128".into(),
            ));
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
        for limits in [self.p2p_limits(), self.admin_limits()] {
            limits.validate().map_err(|e| ConfigError(e.to_string()))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn config(admin: &str) -> NodeConfig {
        let url = ApiUrl::parse_origin("http://127.0.0.1:7800").unwrap();
        let mut c = NodeConfig::new(
            PathBuf::from("/tmp/n"),
            "127.0.0.1:7800".parse().unwrap(),
            url.clone(),
            admin.parse().unwrap(),
            url,
        );
        c.danger_allow_private_addresses = true;
        c
    }

    #[test]
    fn an_admin_api_on_the_network_needs_the_flag_that_says_so() {
        assert!(config("127.0.0.1:0").validate().is_ok());
        assert!(config("[::1]:0").validate().is_ok());
        let mut open = config("0.0.0.0:7801");
        let refused = open.validate().unwrap_err().to_string();
        assert!(
            refused.contains("--danger-admin-listen-non-loopback"),
            "{refused}"
        );
        open.danger_admin_listen_non_loopback = true;
        assert!(open.validate().is_ok());
    }

    #[test]
    fn a_record_lifetime_beyond_what_the_agent_signs_is_refused() {
        let mut c = config("127.0.0.1:0");
        c.record_lifetime_s = 8 * 86400;
        assert!(c.validate().is_err());
        c.record_lifetime_s = 7 * 86400;
        assert!(c.validate().is_ok());
    }
}
