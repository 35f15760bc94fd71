//! `openred`: the one binary. It turns flags, environment and the config
//! file into validated service configurations, sets up logging, and runs the
//! subcommand. Nothing else in the workspace knows about the command line.

#![forbid(unsafe_code)]

mod audit;
mod client;
mod config;
mod demo;
mod directory;
mod node;
mod owner;

use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

// The system allocator. mimalloc was tried as the global allocator (it
// saved about 15% of the messaging benchmark's CPU), but it kept freed
// memory per thread: a node receiving a file peaked at 64 MiB instead of
// 31 MiB (debug build, crates/openred/tests/files_e2e.rs), against the
// 64 MiB bound of the file-sharing issue. Constant, small memory wins.

#[derive(Parser)]
#[command(
    name = "openred",
    version,
    about = "OpenRed: self-hosted nodes that talk directly and securely"
)]
struct Cli {
    /// The data directory (of the node, or of the directory with `directory serve`).
    #[arg(long, global = true, env = "OPENRED_DATA")]
    data: Option<std::path::PathBuf>,
    /// Machine-readable output for the client subcommands.
    #[arg(long, global = true)]
    json: bool,
    /// Log format.
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "text",
        env = "OPENRED_LOG_FORMAT"
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// The directory service (the central API).
    Directory {
        #[command(subcommand)]
        command: directory::DirectoryCommand,
    },
    /// The node daemon: create an identity, print it, run.
    Node {
        #[command(subcommand)]
        command: node::NodeCommand,
    },
    /// A directory and three nodes on loopback, through the whole flow.
    Demo {
        /// Leave everything running and print the addresses.
        #[arg(long)]
        keep: bool,
    },
    /// List the directory's nodes, with their records verified.
    Peers,
    /// Ask for an introduction to a node and open a session with it.
    Connect {
        /// The peer's node ID.
        node_id: String,
    },
    /// Send an encrypted ping over the session with a node.
    Ping {
        /// The peer's node ID.
        node_id: String,
    },
    /// Renew the session with a node now: a fresh handshake carried by the
    /// live session, without the directory.
    Renew {
        /// The peer's node ID.
        node_id: String,
    },
    /// Identity, directory, sessions and modules of the running node.
    Status,
    /// Messages: send, and read the inbox and the outbox.
    Msg {
        #[command(subcommand)]
        command: client::MsgCommand,
    },
    /// Files: share, list, revoke, fetch (resumable, verified), transfers.
    File {
        #[command(subcommand)]
        command: client::FileCommand,
    },
    /// Switch a module on or off while the node runs.
    Module {
        #[command(subcommand)]
        command: client::ModuleCommand,
    },
    /// The signed audit log: verify it (offline), or show it.
    Audit {
        #[command(subcommand)]
        command: audit::AuditCommand,
    },
    /// The owner's login to the admin API: password, TOTP, lock-out.
    Admin {
        #[command(subcommand)]
        command: owner::AdminCommand,
    },
    /// Peer authentication: ask a peer to re-prove its identity.
    Auth {
        #[command(subcommand)]
        command: owner::AuthCommand,
    },
    /// The crypto agent, or with `--launcher` the process that starts
    /// agents. Started by the node over an inherited socket; not for use by
    /// hand.
    #[command(hide = true)]
    Agent {
        /// Start agents on request instead of serving as one.
        #[arg(long)]
        launcher: bool,
        /// The node's key folder.
        #[arg(long)]
        keys: std::path::PathBuf,
        /// With `--launcher`: start agents as this `UID:GID`.
        #[arg(long)]
        agent_user: Option<String>,
        /// The master key's passphrase comes first on the socket (from the
        /// launcher), not from the environment.
        #[arg(long)]
        passphrase_on_stdin: bool,
    },
}

/// A server holds a descriptor per connection, and its connection caps
/// (4096 on a public listener by default) are meant to bind before the
/// process runs out of descriptors, which a typical soft limit of 1024
/// would not allow: the soft limit goes up to the hard one.
fn raise_open_files_limit() {
    let show = |limit: Option<u64>| limit.map_or("unlimited".to_owned(), |n| n.to_string());
    match openred_http::raise_open_files_limit() {
        Ok((before, after)) if before != after => {
            tracing::info!(before = %show(before), after = %show(after), "raised the open files limit");
        }
        Ok((_, after)) => tracing::info!(limit = %show(after), "open files limit"),
        Err(e) => tracing::warn!(error = %e, "could not raise the open files limit"),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The demo prints its own summary; its services only log warnings
    // unless OPENRED_LOG says otherwise.
    let default_level = if matches!(cli.command, Command::Demo { .. }) {
        "warn"
    } else {
        "info"
    };
    init_logging(cli.log_format, default_level);
    // The agent and its launcher confine themselves before any thread
    // exists: no async runtime for them.
    if let Command::Agent {
        launcher,
        keys,
        agent_user,
        passphrase_on_stdin,
    } = &cli.command
    {
        let result = if *launcher {
            openred_node::agent::run_launcher(keys, agent_user.as_deref())
        } else {
            openred_node::agent::run_agent(
                keys,
                *passphrase_on_stdin,
                std::sync::Arc::new(config::SystemClock),
            )
        };
        return match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        };
    }
    if matches!(
        cli.command,
        Command::Directory { .. } | Command::Node { .. } | Command::Demo { .. }
    ) {
        raise_open_files_limit();
    }
    // `node run` confines itself before the runtime starts its threads.
    let prepared = match &cli.command {
        Command::Node { command } => match node::prepare(command, cli.data.as_deref()) {
            Ok(p) => p,
            Err(e) => {
                eprintln!("error: {e:#}");
                return ExitCode::FAILURE;
            }
        },
        _ => None,
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let data = cli.data;
        let need_data = || {
            data.clone()
                .ok_or_else(|| anyhow::anyhow!("--data DIR is required (or OPENRED_DATA)"))
        };
        match cli.command {
            Command::Directory { command } => directory::run(command, data.clone()).await,
            Command::Node { command } => node::run(command, data.clone(), prepared).await,
            Command::Demo { keep } => demo::run(keep).await,
            Command::Peers => client::peers(&need_data()?, cli.json).await,
            Command::Connect { node_id } => {
                client::connect(&need_data()?, &node_id, cli.json).await
            }
            Command::Ping { node_id } => client::ping(&need_data()?, &node_id, cli.json).await,
            Command::Renew { node_id } => client::renew(&need_data()?, &node_id, cli.json).await,
            Command::Status => client::status(&need_data()?, cli.json).await,
            Command::Msg { command } => client::msg(&need_data()?, command, cli.json).await,
            Command::Module { command } => client::module(&need_data()?, command, cli.json).await,
            Command::Audit { command } => audit::run(&need_data()?, command, cli.json).await,
            Command::File { command } => client::file(&need_data()?, command, cli.json).await,
            Command::Admin { command } => owner::admin(&need_data()?, command, cli.json).await,
            Command::Auth { command } => client::auth(&need_data()?, command, cli.json).await,
            Command::Agent { .. } => Ok(()),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(format: LogFormat, default_level: &str) {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_env("OPENRED_LOG").unwrap_or_else(|_| EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
