//! What the node's owner reaches: the admin API ([`admin`]), its OpenAPI
//! document ([`openapi`]), and the password + TOTP login with session
//! cookies ([`login`]). Nothing here is reachable by a peer.

pub mod admin;
pub mod login;
pub mod openapi;
