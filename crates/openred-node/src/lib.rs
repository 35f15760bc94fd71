//! The OpenRed node daemon, as a library.
//!
//! # Layout
//!
//! - [`config`]: the validated [`NodeConfig`].
//! - [`identity`]: the node's long-term keys on disk, and what it may sign.
//! - [`store`]: tokens, tombstones, known peers, settings (SQLite).
//! - [`directory_client`]: pinning the directory's key, registration,
//!   introductions, discovery.
//! - [`handshake`]: the Noise KK handshake with the token proof and suite
//!   negotiation.
//! - [`sessions`]: established sessions, in memory only.
//! - [`lifecycle`]: purging what expired, renewing sessions in use.
//! - `p2p`: the API peers and the directory call.
//! - `reachability`: rate limits on the route that signs a challenge for
//!   anyone.
//! - [`admin`]: the owner's API.
//! - [`owner`]: the owner's password + TOTP login and session cookies.
//! - [`node`]: [`Node`]: serving, the registration loop, connecting.
//! - [`audit`]: the signed, hash-chained audit log and its verification.
//!
//! # What this crate must never do
//!
//! Persist session keys (a restart means new handshakes); accept a token not
//! signed by the pinned directory key; use a connection ID twice; follow a
//! URL from an answer rather than from a verified record; read the wall
//! clock other than through the injected clock.

#![forbid(unsafe_code)]

pub mod admin;
pub mod admin_openapi;
pub mod agent;
pub mod audit;
pub mod config;
pub mod directory_client;
pub mod error;
pub mod frames;
pub mod handshake;
pub mod health;
pub mod identity;
pub mod lifecycle;
pub mod master_key;
pub mod metrics;
pub mod modules;
pub mod node;
pub mod owner;
mod p2p;
mod reachability;
pub mod sandbox;
pub mod sessions;
pub mod store;

pub use config::{IntroductionPolicy, NodeConfig};
pub use identity::NodeKeys;
pub use node::{Connected, Node, NodeState};
