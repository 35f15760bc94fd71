//! The OpenRed directory ("central API"): a phone book of signed node
//! records, and an introducer that mints linked one-time token pairs and
//! forgets them.
//!
//! # Layout
//!
//! - [`config`]: the validated [`Config`].
//! - [`server`]: [`Directory`]: opens state, builds the router, serves with
//!   graceful shutdown and prunes in the background.
//! - `api`: the handlers, annotated for OpenAPI; routing comes from the same
//!   annotations.
//! - [`store`]: records in SQLite or PostgreSQL (sqlx `Any`, one SQL dialect).
//! - `cache`: the in-memory lookup cache.
//! - `limits`: rate limits and the client address behind trusted proxies.
//! - `metrics`: Prometheus.
//! - [`transport`]: how the directory reaches nodes (reachability
//!   challenge, token push), through the one outbound client.
//! - `key`: the directory's own Ed25519 key.
//!
//! # What this crate must never do
//!
//! Store token material or user data; trust a record it has not verified;
//! answer bad input with a 5xx or a panic; read the wall clock other than
//! through the injected [`openred_core::Clock`]; know about the command line.

#![forbid(unsafe_code)]

mod api;
mod cache;
pub mod config;
mod key;
mod limits;
mod metrics;
pub mod server;
pub mod store;
pub mod transport;

pub use config::{Config, Database, Quota, RateLimits};
pub use server::{routes, Directory, StartError};
