//! The OpenRed node daemon, as a library.
//!
//! # Layout
//!
//! Four layers, each a folder, each using only those below it:
//!
//! - [`modules`]: messaging, files, auth, monitoring. A module reaches the
//!   node only through the peer layer's handle ([`peer::Peers`]) and never
//!   names another module.
//! - [`owner`]: the owner's admin API and login.
//! - [`peer`]: sessions, frames, the handshake, the P2P routes, renewal.
//! - [`agent`]: the crypto agent process and the node's handle on it, the
//!   keys on disk, the sandbox.
//!
//! Beside them: [`node`] ([`Node`]: start, serve, register, connect),
//! [`store`] (tokens, tombstones, known peers, settings: SQLite),
//! [`directory_client`], [`audit`] (the signed, hash-chained log),
//! [`config`], [`health`], [`metrics`], [`error`].
//!
//! # What this crate must never do
//!
//! Persist session keys (a restart means new handshakes); accept a token not
//! signed by the pinned directory key; use a connection ID twice; follow a
//! URL from an answer rather than from a verified record; read the wall
//! clock other than through the injected clock.

#![forbid(unsafe_code)]

pub mod agent;
pub mod audit;
pub mod config;
pub mod directory_client;
pub mod error;
pub mod health;
pub mod metrics;
pub mod modules;
pub mod node;
pub mod owner;
pub mod peer;
pub mod state;
pub mod store;

pub use agent::identity::NodeKeys;
pub use config::{IntroductionPolicy, NodeConfig};
pub use node::{Connected, Node};
pub use state::NodeState;
