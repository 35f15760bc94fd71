//! How the directory reaches nodes: the reachability challenge and the
//! token push. The real transport is the one outbound client (SSRF policy,
//! no redirects, capped bodies); tests swap in their own.

use std::future::Future;
use std::pin::Pin;

use openred_core::wire::{ReachabilityChallenge, ReachabilityProof, TokenPush};
use openred_core::ApiUrl;
use openred_http::OutboundClient;

/// A boxed future, as trait objects need.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The node could not be reached, or answered something else than a proof
/// or an acceptance. Deliberately without detail: what was found at a URL a
/// node chose is not echoed back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the node is unreachable")]
pub struct Unreachable;

/// Calls the directory makes to nodes.
pub trait NodeTransport: Send + Sync + 'static {
    /// Sends the reachability challenge to `url`.
    fn challenge<'a>(
        &'a self,
        url: &'a ApiUrl,
        body: &'a ReachabilityChallenge,
    ) -> BoxFuture<'a, Result<ReachabilityProof, Unreachable>>;

    /// Pushes token_b to the target at `url`.
    fn push_token<'a>(
        &'a self,
        url: &'a ApiUrl,
        body: &'a TokenPush,
    ) -> BoxFuture<'a, Result<(), Unreachable>>;
}

/// The real transport, through the outbound client.
pub struct OutboundTransport(pub OutboundClient);

impl NodeTransport for OutboundTransport {
    fn challenge<'a>(
        &'a self,
        url: &'a ApiUrl,
        body: &'a ReachabilityChallenge,
    ) -> BoxFuture<'a, Result<ReachabilityProof, Unreachable>> {
        Box::pin(async move {
            let response = self
                .0
                .post_json(url, openred_core::routes::node::REACHABILITY, body)
                .await
                .map_err(|e| {
                    tracing::debug!(error = %e, "reachability challenge failed");
                    Unreachable
                })?;
            if !response.is_success() {
                return Err(Unreachable);
            }
            response.json().map_err(|_| Unreachable)
        })
    }

    fn push_token<'a>(
        &'a self,
        url: &'a ApiUrl,
        body: &'a TokenPush,
    ) -> BoxFuture<'a, Result<(), Unreachable>> {
        Box::pin(async move {
            let response = self
                .0
                .post_json(url, openred_core::routes::node::TOKENS_RECEIVE, body)
                .await
                .map_err(|e| {
                    tracing::debug!(error = %e, "token push failed");
                    Unreachable
                })?;
            if response.is_success() {
                Ok(())
            } else {
                tracing::debug!(status = response.status, "the target refused the token");
                Err(Unreachable)
            }
        })
    }
}
