//! The directory's configuration: a documented serde struct with defaults
//! for development, validated once before the service starts.

use std::net::SocketAddr;
use std::path::PathBuf;

use ipnet::IpNet;
use serde::Deserialize;

/// Where the directory keeps its records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Database {
    /// Embedded SQLite (WAL) in this file. The default, under `--data DIR`.
    Sqlite(PathBuf),
    /// A PostgreSQL URL (`postgres://…`), for several replicas behind a load
    /// balancer sharing one database.
    Postgres(String),
}

/// Rate limits. A quota is `per_second` with a burst of `burst`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimits {
    /// Off switch, for benchmarks driven from one address.
    pub enabled: bool,
    /// Writes (register, deregister, request-connection) per source address.
    pub writes_per_address: Quota,
    /// Writes per node ID (counted after the signature is verified, so that
    /// nobody can spend another node's budget).
    pub writes_per_node: Quota,
    /// Lookups that miss (unknown or malformed node IDs) per source address.
    pub lookup_misses_per_address: Quota,
    /// All lookups and listings per source address; `None` leaves successful
    /// lookups unthrottled (they are served from memory).
    pub lookups_per_address: Option<Quota>,
    /// Introductions asked for by one node.
    pub introductions_per_requester: Quota,
    /// Introductions to one target node.
    pub introductions_per_target: Quota,
    /// Per-address limits count an IPv6 client under its first this many
    /// bits (default 64: one subscriber's network), so that rotating
    /// through the addresses of one prefix does not buy a fresh budget.
    /// IPv4 clients count per address.
    pub ipv6_prefix_len: u8,
}

impl Default for RateLimits {
    fn default() -> Self {
        RateLimits {
            enabled: true,
            writes_per_address: Quota::new(10, 50),
            writes_per_node: Quota::new(1, 10),
            lookup_misses_per_address: Quota::new(10, 50),
            lookups_per_address: None,
            introductions_per_requester: Quota::new(2, 20),
            introductions_per_target: Quota::new(5, 50),
            ipv6_prefix_len: openred_core::url::DEFAULT_IPV6_PREFIX_LEN,
        }
    }
}

/// A rate: `per_second` sustained, `burst` at once.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Quota {
    /// Sustained requests per second (at least 1).
    pub per_second: u32,
    /// Requests allowed at once (at least 1).
    pub burst: u32,
}

impl Quota {
    /// A quota of `per_second` with `burst`.
    pub const fn new(per_second: u32, burst: u32) -> Quota {
        Quota { per_second, burst }
    }
}

/// The directory's configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Data directory: the directory's key, and the SQLite database unless
    /// PostgreSQL is configured.
    pub data_dir: PathBuf,
    /// The database.
    pub database: Database,
    /// Allow loopback, private and link-local hosts and plain `http://` in
    /// registered URLs. For development, tests and `openred demo` only.
    pub danger_allow_private_addresses: bool,
    /// How far a record's `issued_at` may be from the directory's clock.
    pub clock_skew_s: u64,
    /// The longest lifetime (`expires_at - issued_at`) of a record the
    /// directory accepts (default 7 days): a record signed to live for a
    /// century would otherwise be served for a century.
    pub max_record_lifetime_s: u64,
    /// The heartbeat interval the directory asks nodes to keep.
    pub heartbeat_interval_s: u64,
    /// Jitter applied to each heartbeat interval, as a fraction (0.0..0.5).
    pub heartbeat_jitter: f64,
    /// A node is `active` while seen within this many seconds.
    pub active_window_s: u64,
    /// Records not seen for this long are pruned.
    pub retention_s: u64,
    /// How often the pruning task runs.
    pub prune_interval_s: u64,
    /// Whether `discover` may list nodes (lookups by ID always work).
    pub allow_listing: bool,
    /// Largest page of `discover`.
    pub max_page_size: u32,
    /// A `discover` page ends (with a `next_cursor`) before its JSON passes
    /// this many bytes, whatever `limit` asked for. Default 60 KiB, under a
    /// node's 64 KiB answer cap.
    pub max_page_bytes: usize,
    /// Request bodies larger than this are refused (413).
    pub max_body_bytes: usize,
    /// How long a cached record may be served before it is re-read from the
    /// database. `None`: the cache is authoritative (single instance, the
    /// SQLite default). With PostgreSQL and several replicas, a few seconds.
    pub cache_ttl_s: Option<u64>,
    /// Reverse proxies whose `X-Forwarded-For` header is believed.
    pub trusted_proxies: Vec<IpNet>,
    /// How long an introduction's tokens live (at most
    /// [`openred_core::token::MAX_TOKEN_LIFETIME_S`], 300 s).
    pub introduction_ttl_s: u64,
    /// Rate limits.
    pub rate_limits: RateLimits,
    /// Connections open at once (default 4096); more are answered 503 and
    /// closed at once.
    pub max_connections: usize,
    /// Connections open at once from one source address (IPv6: one prefix
    /// of `connections_ipv6_prefix_len` bits); default 128. Trusted proxies
    /// are held only to `max_connections`.
    pub max_connections_per_address: usize,
    /// The IPv6 prefix counted as one source by the connection cap
    /// (default 64).
    pub connections_ipv6_prefix_len: u8,
    /// How long a request's head may take to arrive, counted from when the
    /// server waits for it (after the accept or the previous answer, so
    /// also the keep-alive idle limit); default 10 s.
    pub header_read_timeout_s: u64,
    /// A connection on which nothing moves for this long while no handler
    /// works is closed; default 60 s.
    pub idle_timeout_s: u64,
}

/// A configuration that cannot work.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(String);

impl Config {
    /// A development configuration for `data_dir`, listening on `listen`,
    /// with the embedded SQLite database.
    pub fn new(listen: SocketAddr, data_dir: PathBuf) -> Config {
        let database = Database::Sqlite(data_dir.join("directory.db"));
        Config {
            listen,
            data_dir,
            database,
            danger_allow_private_addresses: false,
            clock_skew_s: 300,
            max_record_lifetime_s: 7 * 24 * 3600,
            heartbeat_interval_s: 300,
            heartbeat_jitter: 0.1,
            active_window_s: 900,
            retention_s: 30 * 24 * 3600,
            prune_interval_s: 3600,
            allow_listing: true,
            max_page_size: 500,
            max_page_bytes: 60 * 1024,
            max_body_bytes: 16 * 1024,
            cache_ttl_s: None,
            trusted_proxies: Vec::new(),
            introduction_ttl_s: 120,
            rate_limits: RateLimits::default(),
            max_connections: 4096,
            max_connections_per_address: 128,
            connections_ipv6_prefix_len: 64,
            header_read_timeout_s: 10,
            idle_timeout_s: 60,
        }
    }

    /// The listener's limits.
    pub fn serve_limits(&self) -> openred_http::ServeLimits {
        openred_http::ServeLimits {
            max_connections: self.max_connections,
            max_connections_per_address: self.max_connections_per_address,
            ipv6_prefix_len: self.connections_ipv6_prefix_len,
            header_read_timeout: std::time::Duration::from_secs(self.header_read_timeout_s),
            idle_timeout: std::time::Duration::from_secs(self.idle_timeout_s),
            uncapped_sources: self.trusted_proxies.clone(),
        }
    }

    /// Checks that the values make sense together.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let fail = |m: &str| Err(ConfigError(m.to_owned()));
        if self.heartbeat_interval_s == 0 {
            return fail("heartbeat_interval_s must be at least 1");
        }
        if !(0.0..0.5).contains(&self.heartbeat_jitter) {
            return fail("heartbeat_jitter must be in [0, 0.5)");
        }
        if self.active_window_s < self.heartbeat_interval_s {
            return fail("active_window_s must be at least heartbeat_interval_s");
        }
        if self.retention_s < self.active_window_s {
            return fail("retention_s must be at least active_window_s");
        }
        if self.max_record_lifetime_s < 60 {
            return fail("max_record_lifetime_s must be at least 60");
        }
        if self.prune_interval_s == 0 {
            return fail("prune_interval_s must be at least 1");
        }
        if self.max_page_size == 0 || self.max_page_size > 10_000 {
            return fail("max_page_size must be in 1..=10000");
        }
        if self.max_page_bytes < 4096 {
            // The largest entry (a 255-byte URL, escaped, and its record) is
            // about 1.3 KB: every page must hold one.
            return fail("max_page_bytes must be at least 4096");
        }
        // Nodes refuse tokens living longer than the protocol's cap.
        let cap = openred_core::token::MAX_TOKEN_LIFETIME_S;
        if !(10..=cap).contains(&self.introduction_ttl_s) {
            return Err(ConfigError(format!(
                "introduction_ttl_s must be in 10..={cap}"
            )));
        }
        if self.max_body_bytes < 1024 {
            return fail("max_body_bytes must be at least 1024");
        }
        if let Err(e) = self.serve_limits().validate() {
            return Err(ConfigError(e.to_string()));
        }
        let limits = &self.rate_limits;
        if !(1..=128).contains(&limits.ipv6_prefix_len) {
            return fail("rate_limits.ipv6_prefix_len must be in 1..=128");
        }
        for quota in [
            Some(limits.writes_per_address),
            Some(limits.writes_per_node),
            Some(limits.lookup_misses_per_address),
            limits.lookups_per_address,
            Some(limits.introductions_per_requester),
            Some(limits.introductions_per_target),
        ]
        .into_iter()
        .flatten()
        {
            if quota.per_second == 0 || quota.burst == 0 {
                return fail("rate limit quotas need per_second and burst of at least 1");
            }
        }
        if let Database::Postgres(url) = &self.database {
            if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
                return fail("database URL must start with postgres://");
            }
        }
        Ok(())
    }
}
