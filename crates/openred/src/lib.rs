//! The `openred` crate's library half: what the binary, its examples and
//! its tests share beyond the service crates.
//!
//! - [`testnet`]: a directory and nodes on loopback in one process, the
//!   network that `openred demo`, the benchmarks, the examples and the
//!   integration tests run on.
//! - [`SystemClock`]: the wall clock. Only this crate reads it; the service
//!   libraries take a [`Clock`].

#![forbid(unsafe_code)]

use openred_core::{Clock, UnixTime};

pub mod testnet;

/// The real clock. Only the binary (and what it runs in process) reads it;
/// libraries take a [`Clock`].
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> UnixTime {
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        UnixTime(secs)
    }
}
