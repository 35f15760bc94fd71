//! The OpenRed node daemon, as a library.
//!
//! A skeleton for now: the node's identity, token store, P2P API, admin API
//! and modules arrive with the node issue (see `ARCHITECTURE.md`).

#![forbid(unsafe_code)]
