//! `openred directory …`.
//!
//! Settings come from, in order of precedence: command-line flags, then
//! `OPENRED_*` environment variables, then the TOML file given by
//! `--config` (or `OPENRED_CONFIG`), then built-in defaults.
//! `--danger-allow-private-addresses` is a flag only: no file or variable can
//! turn it on.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Args, Subcommand};
use ipnet::IpNet;
use openred_directory::{Config, Database, Directory, RateLimits};
use serde::Deserialize;

use crate::config::{read_toml, shutdown_signal, SystemClock};

/// `openred directory` subcommands.
#[derive(Subcommand)]
pub enum DirectoryCommand {
    /// Run the directory service.
    Serve(ServeArgs),
}

/// Flags of `openred directory serve`.
#[derive(Args)]
pub struct ServeArgs {
    /// Address to listen on [default: 127.0.0.1:7700].
    #[arg(long, env = "OPENRED_LISTEN")]
    listen: Option<SocketAddr>,
    /// Use PostgreSQL (`postgres://…`) instead of the embedded SQLite.
    #[arg(long, env = "OPENRED_DATABASE_URL")]
    database_url: Option<String>,
    /// TOML configuration file (section [directory]).
    #[arg(long, env = "OPENRED_CONFIG")]
    config: Option<PathBuf>,
    /// Allow loopback, private and link-local addresses and plain http in
    /// registered URLs. For development, tests and the demo only.
    #[arg(long)]
    danger_allow_private_addresses: bool,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    #[serde(default)]
    directory: DirectorySection,
}

/// The `[directory]` section. Every key is optional.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct DirectorySection {
    listen: Option<SocketAddr>,
    data: Option<PathBuf>,
    database_url: Option<String>,
    clock_skew_s: Option<u64>,
    max_record_lifetime_s: Option<u64>,
    heartbeat_interval_s: Option<u64>,
    heartbeat_jitter: Option<f64>,
    active_window_s: Option<u64>,
    retention_s: Option<u64>,
    prune_interval_s: Option<u64>,
    allow_listing: Option<bool>,
    max_page_size: Option<u32>,
    max_page_bytes: Option<usize>,
    max_body_bytes: Option<usize>,
    cache_ttl_s: Option<u64>,
    trusted_proxies: Option<Vec<IpNet>>,
    rate_limits: Option<RateLimits>,
    max_connections: Option<usize>,
    max_connections_per_address: Option<usize>,
    connections_ipv6_prefix_len: Option<u8>,
    header_read_timeout_s: Option<u64>,
    idle_timeout_s: Option<u64>,
}

const DEFAULT_LISTEN: &str = "127.0.0.1:7700";

/// Runs a directory subcommand.
pub async fn run(command: DirectoryCommand, data: Option<PathBuf>) -> anyhow::Result<()> {
    match command {
        DirectoryCommand::Serve(args) => serve(args, data).await,
    }
}

fn build_config(args: ServeArgs, data: Option<PathBuf>) -> anyhow::Result<Config> {
    let file: FileConfig = read_toml(args.config.as_deref())?;
    let f = file.directory;
    let listen = match args.listen.or(f.listen) {
        Some(listen) => listen,
        None => DEFAULT_LISTEN.parse().context("default listen address")?,
    };
    let data = data
        .or(f.data)
        .context("--data DIR is required (or OPENRED_DATA, or data in the config file)")?;
    let mut config = Config::new(listen, data);
    if let Some(url) = args.database_url.or(f.database_url) {
        config.database = Database::Postgres(url);
    }
    config.danger_allow_private_addresses = args.danger_allow_private_addresses;
    macro_rules! take {
        ($($field:ident),*) => { $( if let Some(v) = f.$field { config.$field = v; } )* };
    }
    take!(
        clock_skew_s,
        max_record_lifetime_s,
        heartbeat_interval_s,
        heartbeat_jitter,
        active_window_s,
        retention_s,
        prune_interval_s,
        allow_listing,
        max_page_size,
        max_page_bytes,
        max_body_bytes,
        trusted_proxies,
        rate_limits,
        max_connections,
        max_connections_per_address,
        connections_ipv6_prefix_len,
        header_read_timeout_s,
        idle_timeout_s
    );
    if f.cache_ttl_s.is_some() {
        config.cache_ttl_s = f.cache_ttl_s;
    }
    config.validate()?;
    Ok(config)
}

async fn serve(args: ServeArgs, data: Option<PathBuf>) -> anyhow::Result<()> {
    let config = build_config(args, data)?;
    if config.danger_allow_private_addresses {
        tracing::warn!("--danger-allow-private-addresses: accepting loopback, private and plain-http URLs; never use this in production");
    }
    let listen = config.listen;
    let directory = Directory::open(config, Arc::new(SystemClock))
        .await
        .context("opening the directory")?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    let local = listener.local_addr()?;
    // Printed on stdout, one fact a line, for people and scripts: nodes pin
    // this fingerprint with --directory-key.
    println!("directory key fingerprint: {}", directory.fingerprint());
    println!("listening on http://{local}");
    tracing::info!(%local, fingerprint = %directory.fingerprint(), "directory serving");
    directory
        .serve(listener, shutdown_signal())
        .await
        .context("serving")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        args: ServeArgs,
    }

    #[test]
    fn flags_override_the_file_and_the_danger_flag_is_flag_only() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(
            &file,
            "[directory]\nlisten = \"127.0.0.1:9000\"\ndata = \"/tmp/x\"\nheartbeat_interval_s = 60\nactive_window_s = 180\n",
        )
        .unwrap();
        let t = T::parse_from([
            "t",
            "--config",
            file.to_str().unwrap(),
            "--listen",
            "127.0.0.1:9001",
        ]);
        let config = build_config(t.args, None).unwrap();
        assert_eq!(config.listen, "127.0.0.1:9001".parse().unwrap());
        assert_eq!(config.data_dir, PathBuf::from("/tmp/x"));
        assert_eq!(config.heartbeat_interval_s, 60);
        assert!(!config.danger_allow_private_addresses);

        std::fs::write(
            &file,
            "[directory]\ndata = \"/tmp/x\"\ndanger_allow_private_addresses = true\n",
        )
        .unwrap();
        let t = T::parse_from(["t", "--config", file.to_str().unwrap()]);
        assert!(
            build_config(t.args, None).is_err(),
            "the danger flag must not come from a file"
        );
    }

    #[test]
    fn the_file_sets_the_record_lifetime_page_bytes_and_ipv6_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        let parse = |text: &str| {
            std::fs::write(&file, text).unwrap();
            build_config(
                T::parse_from(["t", "--config", file.to_str().unwrap()]).args,
                None,
            )
        };
        let config = parse(
            "[directory]\ndata = \"/tmp/x\"\nmax_record_lifetime_s = 3600\nmax_page_bytes = 8192\n\
             [directory.rate_limits]\nipv6_prefix_len = 48\n",
        )
        .unwrap();
        assert_eq!(config.max_record_lifetime_s, 3600);
        assert_eq!(config.max_page_bytes, 8192);
        assert_eq!(config.rate_limits.ipv6_prefix_len, 48);
        let defaults = parse("[directory]\ndata = \"/tmp/x\"\n").unwrap();
        assert_eq!(defaults.max_record_lifetime_s, 604_800);
        assert_eq!(defaults.rate_limits.ipv6_prefix_len, 64);
        for bad in [
            "max_page_bytes = 100",
            "max_record_lifetime_s = 0",
            "[directory.rate_limits]\nipv6_prefix_len = 129",
        ] {
            assert!(parse(&format!("[directory]\ndata = \"/tmp/x\"\n{bad}\n")).is_err());
        }
    }

    #[test]
    fn the_config_file_sets_the_listener_limits_and_refuses_impossible_ones() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(
            &file,
            "[directory]\ndata = \"/tmp/x\"\nmax_connections = 100\n\
             max_connections_per_address = 10\nconnections_ipv6_prefix_len = 56\n\
             header_read_timeout_s = 5\nidle_timeout_s = 20\n",
        )
        .unwrap();
        let t = T::parse_from(["t", "--config", file.to_str().unwrap()]);
        let limits = build_config(t.args, None).unwrap().serve_limits();
        assert_eq!(limits.max_connections, 100);
        assert_eq!(limits.max_connections_per_address, 10);
        assert_eq!(limits.ipv6_prefix_len, 56);
        assert_eq!(limits.header_read_timeout.as_secs(), 5);
        assert_eq!(limits.idle_timeout.as_secs(), 20);

        std::fs::write(
            &file,
            "[directory]\ndata = \"/tmp/x\"\nmax_connections = 10\nmax_connections_per_address = 11\n",
        )
        .unwrap();
        let t = T::parse_from(["t", "--config", file.to_str().unwrap()]);
        assert!(build_config(t.args, None).is_err());
    }
}
