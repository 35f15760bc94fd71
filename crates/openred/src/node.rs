//! `openred node …`: create an identity, print it, run the daemon.
//!
//! Settings for `node run` come from flags, then `OPENRED_*` variables,
//! then the `[node]` section of the TOML file, then defaults.
//! `--danger-allow-private-addresses` is a flag only.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use clap::{Args, Subcommand};
use openred_core::id::Fingerprint;
use openred_core::ApiUrl;
use openred_node::{IntroductionPolicy, Node, NodeConfig, NodeKeys};
use serde::Deserialize;

use crate::config::{read_toml, shutdown_signal, SystemClock};

/// `openred node` subcommands.
#[derive(Subcommand)]
pub enum NodeCommand {
    /// Create a new node identity in the data directory and print its ID.
    Init,
    /// Print the node's ID.
    Id,
    /// Run the node daemon.
    Run(Box<RunArgs>),
}

/// Flags of `openred node run`.
#[derive(Args, Clone)]
pub struct RunArgs {
    /// Address of the P2P API [default: 127.0.0.1:7800].
    #[arg(long, env = "OPENRED_LISTEN")]
    listen: Option<SocketAddr>,
    /// The directory's URL.
    #[arg(long, env = "OPENRED_DIRECTORY")]
    directory: Option<String>,
    /// The directory key fingerprint to pin (printed by the directory at start).
    #[arg(long, env = "OPENRED_DIRECTORY_KEY")]
    directory_key: Option<String>,
    /// The URL other nodes and the directory use to reach this node
    /// [default: derived from --listen].
    #[arg(long, env = "OPENRED_PUBLIC_URL")]
    public_url: Option<String>,
    /// Address of the admin API [default: 127.0.0.1:0, a free port; the
    /// address is written to DATA/admin.addr].
    #[arg(long, env = "OPENRED_ADMIN_LISTEN")]
    admin_listen: Option<SocketAddr>,
    /// Whom to accept introductions from.
    #[arg(long, value_enum, env = "OPENRED_INTRODUCTION_POLICY")]
    introduction_policy: Option<PolicyArg>,
    /// TOML configuration file (section [node]).
    #[arg(long, env = "OPENRED_CONFIG")]
    config: Option<PathBuf>,
    /// Allow loopback, private and link-local addresses and plain http. For
    /// development, tests and the demo only.
    #[arg(long)]
    danger_allow_private_addresses: bool,
    /// Serve the admin API on a non-loopback --admin-listen address: anyone
    /// who can reach it may try the owner's credentials. Off by default.
    #[arg(long)]
    danger_admin_listen_non_loopback: bool,
    /// Run the crypto agent as this user (a name or a numeric UID) when the
    /// node runs as root: the key folder is handed to that user and the
    /// agent never runs as root.
    #[arg(long, env = "OPENRED_AGENT_USER")]
    agent_user: Option<String>,
    /// A folder the node may write downloads to (repeatable). Once
    /// confined, the node can write nowhere else but its data folder
    /// [default: DATA/downloads].
    #[arg(long = "download-dir")]
    download_dirs: Vec<PathBuf>,
}

#[derive(Clone, Copy, clap::ValueEnum, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum PolicyArg {
    Anyone,
    KnownPeers,
}

impl From<PolicyArg> for IntroductionPolicy {
    fn from(p: PolicyArg) -> Self {
        match p {
            PolicyArg::Anyone => IntroductionPolicy::Anyone,
            PolicyArg::KnownPeers => IntroductionPolicy::KnownPeers,
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    #[serde(default)]
    node: NodeSection,
    /// `[modules.NAME]`: each module's settings.
    #[serde(default)]
    modules: std::collections::BTreeMap<String, toml::Value>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct NodeSection {
    listen: Option<SocketAddr>,
    directory: Option<String>,
    directory_key: Option<String>,
    public_url: Option<String>,
    admin_listen: Option<SocketAddr>,
    introduction_policy: Option<PolicyArg>,
    epoch_len_s: Option<u64>,
    record_lifetime_s: Option<u64>,
    /// Keep the private keys in the node process, without the agent's
    /// sandbox: only for platforms without seccomp or socket pairs.
    danger_in_process_crypto: Option<bool>,
    session_max_age_s: Option<u64>,
    /// The modules switched on at start (default: all).
    modules: Option<std::collections::BTreeSet<String>>,
    max_connections_per_peer: Option<usize>,
    requests_per_peer_per_s: Option<u32>,
    pool_max_idle_per_peer: Option<usize>,
    pool_idle_timeout_s: Option<u64>,
    agent_user: Option<String>,
    download_dirs: Option<Vec<PathBuf>>,
    reachability_limits: Option<openred_node::config::ReachabilityLimits>,
    max_connections: Option<usize>,
    max_connections_per_address: Option<usize>,
    connections_ipv6_prefix_len: Option<u8>,
    admin_max_connections: Option<usize>,
    header_read_timeout_s: Option<u64>,
    idle_timeout_s: Option<u64>,
    max_sessions: Option<usize>,
    max_peers: Option<usize>,
    unconfirmed_session_idle_s: Option<u64>,
}

/// Runs a node subcommand.
pub async fn run(
    command: NodeCommand,
    data: Option<PathBuf>,
    prepared: Option<Prepared>,
) -> anyhow::Result<()> {
    let data = data.context("--data DIR is required (or OPENRED_DATA)")?;
    match command {
        NodeCommand::Init => {
            let keys = NodeKeys::create(&data)?;
            // Alone on its line on stdout, for scripts.
            println!("{}", keys.node_id());
            Ok(())
        }
        NodeCommand::Id => {
            println!("{}", NodeKeys::load(&data)?.node_id());
            Ok(())
        }
        NodeCommand::Run(_) => run_node(prepared.context("the node was not prepared")?).await,
    }
}

/// `node run` up to its confinement, done before any thread exists.
pub struct Prepared {
    config: NodeConfig,
    derive: bool,
    launcher: Option<openred_node::agent::process::Launcher>,
    protections: Option<openred_node::agent::sandbox::Protections>,
}

/// Builds the configuration, starts the agent launcher, creates the files
/// the node will write, and confines the process away from the key folder
/// (see `sandbox::confine_node`). Runs before the async runtime exists, so
/// the confinement covers every thread started afterwards.
pub fn prepare(command: &NodeCommand, data: Option<&Path>) -> anyhow::Result<Option<Prepared>> {
    let NodeCommand::Run(args) = command else {
        return Ok(None);
    };
    let data = data.context("--data DIR is required (or OPENRED_DATA)")?;
    let (config, derive) = build_config(args, data)?;
    if config.danger_in_process_crypto {
        tracing::warn!(
            "danger_in_process_crypto: the keys are used in the node process, which therefore does not confine itself"
        );
        return Ok(Some(Prepared {
            config,
            derive,
            launcher: None,
            protections: None,
        }));
    }
    let launcher =
        openred_node::node::prepare_confinement(&config).context("preparing the node")?;
    // The launcher has the passphrase for its agents; the node has no use
    // for it, and a compromised node must not find it in its memory.
    openred_node::agent::sandbox::scrub_environment(
        &openred_node::agent::sandbox::PASSPHRASE_VARIABLES,
    )
    .context("removing the passphrase from the environment")?;
    let key_dir = openred_node::agent::identity::key_dir(&config.data_dir);
    let mut writable = vec![config.data_dir.clone()];
    writable.extend(config.download_dirs.iter().cloned());
    let protections = openred_node::agent::sandbox::confine_node(&key_dir, &writable)
        .context("confining the node process")?;
    Ok(Some(Prepared {
        config,
        derive,
        launcher: Some(launcher),
        protections: Some(protections),
    }))
}

/// The configuration, and whether the public URL is to be derived from the
/// bound address (so that `--listen 127.0.0.1:0` publishes the real port).
fn build_config(args: &RunArgs, data: &Path) -> anyhow::Result<(NodeConfig, bool)> {
    let args = args.clone();
    let file: FileConfig = read_toml(args.config.as_deref())?;
    let module_settings = file
        .modules
        .into_iter()
        .map(|(name, value)| Ok((name, serde_json::to_value(value)?)))
        .collect::<anyhow::Result<_>>()?;
    let f = file.node;
    let listen = match args.listen.or(f.listen) {
        Some(l) => l,
        None => "127.0.0.1:7800".parse()?,
    };
    let allow = args.danger_allow_private_addresses;
    let directory = args
        .directory
        .or(f.directory)
        .context("--directory URL is required")?;
    let directory = ApiUrl::parse_origin(&directory).context("--directory")?;
    let explicit = args.public_url.or(f.public_url);
    let derive = explicit.is_none();
    let public_url = match explicit {
        Some(u) => ApiUrl::parse_origin(&u).context("--public-url")?,
        None => derived_url(listen, allow)?,
    };
    let admin_listen = match args.admin_listen.or(f.admin_listen) {
        Some(a) => a,
        None => "127.0.0.1:0".parse()?,
    };
    let mut config = NodeConfig::new(
        data.to_path_buf(),
        listen,
        public_url,
        admin_listen,
        directory,
    );
    config.danger_allow_private_addresses = allow;
    if let Some(fp) = args.directory_key.or(f.directory_key) {
        config.directory_key = Some(Fingerprint::parse(&fp).context("--directory-key")?);
    }
    if let Some(p) = args.introduction_policy.or(f.introduction_policy) {
        config.introduction_policy = p.into();
    }
    if let Some(e) = f.epoch_len_s {
        config.epoch.epoch_len_s = e;
    }
    if let Some(l) = f.record_lifetime_s {
        config.record_lifetime_s = l;
    }
    config.danger_in_process_crypto = f.danger_in_process_crypto.unwrap_or(false);
    config.module_settings = module_settings;
    config.modules = f.modules;
    if let Some(s) = f.session_max_age_s {
        config.session_max_age_s = s;
    }
    if let Some(n) = f.requests_per_peer_per_s {
        config.requests_per_peer_per_s = n;
    }
    if let Some(n) = f.max_connections_per_peer {
        config.max_connections_per_peer = n;
    }
    if let Some(n) = f.pool_max_idle_per_peer {
        config.pool_max_idle_per_peer = n;
    }
    if let Some(s) = f.pool_idle_timeout_s {
        config.pool_idle_timeout_s = s;
    }
    config.danger_admin_listen_non_loopback = args.danger_admin_listen_non_loopback;
    if let Some(user) = args.agent_user.or(f.agent_user) {
        config.agent_user = Some(resolve_user(&user)?);
    }
    config.download_dirs = if !args.download_dirs.is_empty() {
        args.download_dirs
    } else {
        f.download_dirs
            .unwrap_or_else(|| vec![data.join(openred_node::node::DOWNLOAD_DIR)])
    };
    if let Some(limits) = f.reachability_limits {
        config.reachability_limits = limits;
    }
    macro_rules! take {
        ($($field:ident),*) => { $( if let Some(v) = f.$field { config.$field = v; } )* };
    }
    take!(
        max_connections,
        max_connections_per_address,
        connections_ipv6_prefix_len,
        admin_max_connections,
        header_read_timeout_s,
        idle_timeout_s
    );
    if let Some(n) = f.max_sessions {
        config.max_sessions = n;
    }
    if let Some(n) = f.max_peers {
        config.max_peers = n;
    }
    if let Some(s) = f.unconfirmed_session_idle_s {
        config.unconfirmed_session_idle_s = s;
    }
    config.validate()?;
    Ok((config, derive))
}

/// `--agent-user`: a user name or a numeric UID, with the user's primary
/// group. Only root can start processes as another user.
fn resolve_user(text: &str) -> anyhow::Result<openred_node::agent::process::RunAs> {
    use nix::unistd::{Uid, User};
    if !Uid::effective().is_root() {
        anyhow::bail!("--agent-user needs the node to run as root");
    }
    let user = match text.parse::<u32>() {
        Ok(uid) => User::from_uid(Uid::from_raw(uid)),
        Err(_) => User::from_name(text),
    }
    .with_context(|| format!("looking up the user {text}"))?
    .with_context(|| format!("--agent-user: no user {text}"))?;
    if user.uid.is_root() {
        anyhow::bail!("--agent-user must not be root: the point is an agent that is not root");
    }
    Ok(openred_node::agent::process::RunAs {
        uid: user.uid.as_raw(),
        gid: user.gid.as_raw(),
    })
}

fn derived_url(listen: SocketAddr, allow_private: bool) -> anyhow::Result<ApiUrl> {
    let scheme = if allow_private { "http" } else { "https" };
    ApiUrl::parse_origin(&format!("{scheme}://{listen}")).context("deriving the public URL")
}

async fn run_node(prepared: Prepared) -> anyhow::Result<()> {
    let Prepared {
        mut config,
        derive,
        launcher,
        protections,
    } = prepared;
    if config.danger_allow_private_addresses {
        tracing::warn!("--danger-allow-private-addresses: loopback, private addresses and plain http allowed; never use this in production");
    }
    if config.danger_admin_listen_non_loopback {
        tracing::warn!(
            admin_listen = %config.admin_listen,
            "--danger-admin-listen-non-loopback: the admin API answers on the network; anyone who \
             reaches it may try the owner's credentials"
        );
    }
    let (listen, admin_listen) = (config.listen, config.admin_listen);
    let p2p = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    if derive {
        config.public_url = derived_url(p2p.local_addr()?, config.danger_allow_private_addresses)?;
    }
    let node = Node::open_with(config, Arc::new(SystemClock), launcher)
        .await
        .context("opening the node")?;
    if let Some(p) = protections {
        tracing::info!(protections = %serde_json::to_string(&p).unwrap_or_default(), "the node process is confined");
        node.set_confinement(p);
    }
    let admin = tokio::net::TcpListener::bind(admin_listen)
        .await
        .with_context(|| format!("binding {admin_listen}"))?;
    // Written before the address is printed: whoever reads the line (a
    // script, a test) and runs `openred status` next finds the file.
    openred_node::owner::admin::write_address(&node.state().config().data_dir, admin.local_addr()?)
        .context("writing the admin address file")?;
    println!("node {}", node.node_id());
    println!("listening on http://{}", p2p.local_addr()?);
    println!("admin on http://{}", admin.local_addr()?);
    node.serve(p2p, admin, shutdown_signal())
        .await
        .context("serving")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Wrapper {
        #[command(flatten)]
        args: RunArgs,
    }

    #[test]
    fn the_config_file_sets_the_pool_and_the_danger_option_and_refuses_typos() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("node.toml");
        std::fs::write(
            &file,
            "[node]\ndirectory = \"https://d.example.org\"\npublic_url = \"https://n.example.org\"\n\
             pool_max_idle_per_peer = 7\nmax_connections_per_peer = 5\n\
             session_max_age_s = 7200\nmodules = [\"messaging\"]\n\
             pool_idle_timeout_s = 9\ndanger_in_process_crypto = true\n\
             [modules.messaging]\nmax_body_bytes = 1000\n",
        )
        .unwrap();
        let args = Wrapper::parse_from(["x", "--config", file.to_str().unwrap()]).args;
        let (config, _) = build_config(&args, dir.path()).unwrap();
        assert_eq!(config.pool_max_idle_per_peer, 7);
        assert_eq!(config.max_connections_per_peer, 5);
        assert_eq!(config.session_max_age_s, 7200);
        assert_eq!(config.pool_idle_timeout_s, 9);
        assert!(config.danger_in_process_crypto);
        assert_eq!(config.modules, Some(["messaging".to_owned()].into()));
        assert_eq!(
            config.module_settings["messaging"],
            serde_json::json!({ "max_body_bytes": 1000 })
        );

        let defaults = Wrapper::parse_from([
            "x",
            "--directory",
            "https://d.example.org",
            "--public-url",
            "https://n.example.org",
        ])
        .args;
        let (config, _) = build_config(&defaults, dir.path()).unwrap();
        assert_eq!(
            (
                config.max_connections_per_peer,
                config.pool_max_idle_per_peer,
                config.pool_idle_timeout_s,
                config.session_max_age_s
            ),
            (100, 100, 5, 86400)
        );
        assert!(!config.danger_in_process_crypto);

        std::fs::write(&file, "[node]\ndanger_in_proces_crypto = true\n").unwrap();
        let args = Wrapper::parse_from(["x", "--config", file.to_str().unwrap()]).args;
        assert!(build_config(&args, dir.path()).is_err());
    }

    #[test]
    fn the_config_file_sets_the_reachability_limits() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("node.toml");
        let head = "[node]\ndirectory = \"https://d.example.org\"\npublic_url = \"https://n.example.org\"\n";
        let parse = |table: &str| {
            std::fs::write(&file, format!("{head}[node.reachability_limits]\n{table}")).unwrap();
            let args = Wrapper::parse_from(["x", "--config", file.to_str().unwrap()]).args;
            build_config(&args, dir.path()).map(|(config, _)| config)
        };
        let config = parse(
            "per_source = { per_minute = 2, burst = 1 }\nglobal = { per_minute = 30, burst = 5 }\nipv6_prefix_len = 56\n",
        )
        .unwrap();
        let limits = config.reachability_limits;
        assert_eq!(
            (limits.per_source.per_minute, limits.per_source.burst),
            (2, 1)
        );
        assert_eq!((limits.global.per_minute, limits.global.burst), (30, 5));
        assert_eq!(limits.ipv6_prefix_len, 56);
        // Keys left out keep their defaults; zero quotas and typos are refused.
        let config = parse("ipv6_prefix_len = 48\n").unwrap();
        assert_eq!(
            config.reachability_limits.per_source,
            openred_node::config::ReachabilityLimits::default().per_source
        );
        assert!(parse("global = { per_minute = 0, burst = 5 }\n").is_err());
        assert!(parse("per_sorce = { per_minute = 1, burst = 1 }\n").is_err());
    }

    #[test]
    fn the_config_file_sets_both_listeners_limits() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("node.toml");
        std::fs::write(
            &file,
            "[node]\ndirectory = \"https://d.example.org\"\npublic_url = \"https://n.example.org\"\n\
             max_connections = 500\nmax_connections_per_address = 20\n\
             connections_ipv6_prefix_len = 48\nadmin_max_connections = 8\n\
             header_read_timeout_s = 4\nidle_timeout_s = 30\n",
        )
        .unwrap();
        let args = Wrapper::parse_from(["x", "--config", file.to_str().unwrap()]).args;
        let (config, _) = build_config(&args, dir.path()).unwrap();
        let p2p = config.p2p_limits();
        assert_eq!(p2p.max_connections, 500);
        assert_eq!(p2p.max_connections_per_address, 20);
        assert_eq!(p2p.ipv6_prefix_len, 48);
        assert_eq!(p2p.header_read_timeout.as_secs(), 4);
        assert_eq!(p2p.idle_timeout.as_secs(), 30);
        let admin = config.admin_limits();
        assert_eq!(admin.max_connections, 8);
        assert_eq!(admin.header_read_timeout.as_secs(), 4);
    }
}
