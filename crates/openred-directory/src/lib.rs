//! The OpenRed directory ("central API"): a phone book of signed node
//! records, and (with the node issue) an introducer.
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
//! - [`error`]: the one JSON error type.
//! - `metrics`: Prometheus.
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
pub mod error;
mod key;
mod limits;
mod metrics;
pub mod server;
pub mod store;

pub use config::{Config, Database, Quota, RateLimits};
pub use server::{routes, Directory, StartError};
