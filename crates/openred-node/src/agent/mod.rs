//! The crypto agent: a separate, sandboxed process that alone holds the
//! node's long-term private keys, runs whole Noise handshakes, opens token
//! envelopes and signs, each kind of signature under its own label.
//!
//! - [`proto`]: the IPC frames (pure, fuzzed).
//! - [`core`]: what the agent does with a request.
//! - [`process`]: the agent's serving loop, the launcher, socket passing.
//! - [`client`]: [`Crypto`], the node's handle on all of it.
//! - [`state`]: what the agent refuses to sign again or ahead of time.
//! - [`identity`]: the node's long-term keys on disk, and what it may sign.
//! - [`master_key`]: the master key, and the files sealed under it.
//! - [`sandbox`]: what the agent, the launcher and the node apply to
//!   themselves (seccomp, Landlock, no_new_privs).

pub mod client;
pub mod core;
pub mod identity;
pub mod master_key;
pub mod process;
pub mod proto;
pub mod sandbox;
pub mod state;

pub use client::{Crypto, CryptoError, InitiatorHandle, OpenedToken, PublicKeys};

use std::path::Path;
use std::sync::Arc;

/// Why the agent or the launcher stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The keys could not be loaded.
    #[error(transparent)]
    Keys(#[from] crate::agent::identity::IdentityError),
    /// The sandbox could not be applied (the agent refuses to run without).
    #[error("sandbox: {0}")]
    Sandbox(String),
    /// The socket failed.
    #[error("agent socket: {0}")]
    Io(#[from] std::io::Error),
    /// The signing state could not be read.
    #[error(transparent)]
    State(#[from] state::StateError),
}

/// `openred agent --keys DIR`: loads the keys and its signing state,
/// confines itself, then serves the node on its standard input until the
/// node closes it. Call before any other thread or runtime exists; `clock`
/// is the system clock, which the node cannot set (its seccomp filter).
pub fn run_agent(
    key_dir: &Path,
    passphrase_on_stdin: bool,
    clock: Arc<dyn openred_core::Clock>,
) -> Result<(), AgentError> {
    let stream = process::inherited_socket()?;
    let keys = if passphrase_on_stdin {
        let passphrase = process::read_passphrase(&stream)?;
        crate::agent::identity::NodeKeys::load_key_dir_with(key_dir, Some(&passphrase))?
    } else {
        crate::agent::identity::NodeKeys::load_key_dir(key_dir)?
    };
    let signing = state::SigningState::open(key_dir, clock)?;
    let protections = crate::agent::sandbox::confine_agent(key_dir)
        .map_err(|e| AgentError::Sandbox(e.to_string()))?;
    let protections = serde_json::to_string(&protections).unwrap_or_default();
    process::serve(
        stream,
        Arc::new(core::AgentCore::new(keys, protections, signing)),
    )?;
    Ok(())
}

/// `openred agent --launcher --keys DIR [--agent-user UID:GID]`: opens its
/// own executable, confines itself, then starts an agent from that
/// descriptor each time the node asks, as `agent_user` when given.
///
/// The executable is opened before anything else, so that every agent runs
/// the very file the launcher runs: replacing the file at the program's
/// path (which a compromised node might manage) changes nothing here.
pub fn run_launcher(key_dir: &Path, agent_user: Option<&str>) -> Result<(), AgentError> {
    let program = process::Executable::current()?;
    let control = process::inherited_socket()?;
    let run_as = match agent_user {
        Some(text) => Some(process::RunAs::parse(text).ok_or_else(|| {
            AgentError::Sandbox(format!("--agent-user {text}: expected UID:GID"))
        })?),
        None => None,
    };
    let state_file = state::ensure_file(key_dir, run_as)?;
    // Each agent needs the passphrase; the launcher keeps it for them in
    // memory only, out of every environment block, and hands it to each
    // agent over its socket.
    let passphrase = crate::agent::master_key::passphrase_from_env()?;
    crate::agent::sandbox::scrub_environment(&crate::agent::sandbox::PASSPHRASE_VARIABLES)?;
    crate::agent::sandbox::confine_launcher(&state_file)
        .map_err(|e| AgentError::Sandbox(e.to_string()))?;
    process::run_launcher(
        control,
        &program,
        key_dir,
        run_as,
        passphrase.as_ref().map(|p| p.as_slice()),
    )?;
    Ok(())
}
