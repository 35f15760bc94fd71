//! The name resolver of the outbound client.
//!
//! Every name the client connects to is resolved here, and every address
//! that is not global ([`is_global_ip`]) is dropped before a connection is
//! attempted, unless private addresses are allowed. A name left with no
//! address is refused. Each new connection resolves again, so a name that
//! later changes to a private address (DNS rebinding) is refused too.
//!
//! IP literals never reach a resolver: the client checks them with
//! [`openred_core::ApiUrl::check_policy`] before sending anything.

use std::net::SocketAddr;
use std::time::Duration;

use openred_core::url::is_global_ip;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// Why a name was not resolved. The texts never contain the name or the
/// addresses found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    /// The name resolved, but to no global address.
    #[error("the name does not resolve to any public address")]
    NoGlobalAddress,
    /// The lookup failed or found nothing.
    #[error("the name could not be resolved")]
    Lookup,
    /// The lookup took longer than the connect timeout.
    #[error("the name lookup timed out")]
    Timeout,
}

/// Keeps the addresses the policy allows: all of them with `allow_private`,
/// otherwise only global ones. Fails if none is left.
pub fn filter_addresses(
    addrs: Vec<SocketAddr>,
    allow_private: bool,
) -> Result<Vec<SocketAddr>, ResolveError> {
    if addrs.is_empty() {
        return Err(ResolveError::Lookup);
    }
    let kept: Vec<SocketAddr> = if allow_private {
        addrs
    } else {
        addrs
            .into_iter()
            .filter(|addr| is_global_ip(addr.ip()))
            .collect()
    };
    if kept.is_empty() {
        Err(ResolveError::NoGlobalAddress)
    } else {
        Ok(kept)
    }
}

/// Where addresses come from: the system resolver, or (in unit tests) a
/// fixed answer, so that the filtering can be exercised end to end without
/// any DNS traffic.
#[derive(Debug, Clone)]
enum Lookup {
    System,
    #[cfg(test)]
    Fixed(Vec<std::net::IpAddr>),
}

/// A [`reqwest::dns::Resolve`] over tokio's `lookup_host` that applies
/// [`filter_addresses`].
#[derive(Debug, Clone)]
pub struct GlobalResolver {
    allow_private: bool,
    timeout: Duration,
    lookup: Lookup,
}

impl GlobalResolver {
    /// A resolver that keeps only global addresses unless `allow_private`,
    /// and gives up on a lookup after `timeout`.
    pub fn new(allow_private: bool, timeout: Duration) -> GlobalResolver {
        GlobalResolver {
            allow_private,
            timeout,
            lookup: Lookup::System,
        }
    }

    /// A resolver that answers every name with `ips`, for tests.
    #[cfg(test)]
    pub(crate) fn fixed(allow_private: bool, ips: Vec<std::net::IpAddr>) -> GlobalResolver {
        GlobalResolver {
            allow_private,
            timeout: Duration::from_secs(1),
            lookup: Lookup::Fixed(ips),
        }
    }

    /// Resolves `host` (port 0: the connector sets the URL's port) and
    /// filters the answer.
    pub async fn lookup(&self, host: &str) -> Result<Vec<SocketAddr>, ResolveError> {
        let found: Vec<SocketAddr> = match &self.lookup {
            Lookup::System => {
                match tokio::time::timeout(self.timeout, tokio::net::lookup_host((host, 0))).await {
                    Err(_) => {
                        tracing::debug!(host, "outbound name lookup timed out");
                        return Err(ResolveError::Timeout);
                    }
                    Ok(Err(error)) => {
                        tracing::debug!(host, %error, "outbound name lookup failed");
                        return Err(ResolveError::Lookup);
                    }
                    Ok(Ok(addrs)) => addrs.collect(),
                }
            }
            #[cfg(test)]
            Lookup::Fixed(ips) => ips.iter().map(|ip| SocketAddr::new(*ip, 0)).collect(),
        };
        let result = filter_addresses(found.clone(), self.allow_private);
        if let Err(error) = &result {
            tracing::debug!(host, ?found, %error, "outbound name refused");
        }
        result
    }
}

impl Resolve for GlobalResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let this = self.clone();
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addrs = this.lookup(&host).await?;
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    fn sa(ip: &str) -> SocketAddr {
        SocketAddr::new(ip.parse::<IpAddr>().unwrap(), 443)
    }

    #[test]
    fn keeps_only_global_addresses() {
        let mixed = vec![
            sa("127.0.0.1"),
            sa("8.8.8.8"),
            sa("10.0.0.1"),
            sa("2606:4700::1111"),
            sa("::1"),
            sa("169.254.169.254"),
        ];
        assert_eq!(
            filter_addresses(mixed.clone(), false),
            Ok(vec![sa("8.8.8.8"), sa("2606:4700::1111")])
        );
        // With the danger flag every address is kept, in order.
        assert_eq!(filter_addresses(mixed.clone(), true), Ok(mixed));
    }

    #[test]
    fn refuses_names_with_only_non_global_addresses() {
        for only_private in [
            vec![sa("127.0.0.1")],
            vec![sa("::1"), sa("127.0.0.1")],
            vec![sa("10.1.2.3"), sa("192.168.0.1"), sa("172.16.0.1")],
            vec![sa("169.254.169.254")],
            vec![sa("100.64.0.1")],
            vec![sa("::ffff:127.0.0.1")],
            vec![sa("fd00::1"), sa("fe80::1")],
            vec![sa("0.0.0.0"), sa("::")],
        ] {
            assert_eq!(
                filter_addresses(only_private.clone(), false),
                Err(ResolveError::NoGlobalAddress),
                "{only_private:?}"
            );
            assert_eq!(
                filter_addresses(only_private.clone(), true),
                Ok(only_private)
            );
        }
        assert_eq!(filter_addresses(vec![], true), Err(ResolveError::Lookup));
        assert_eq!(filter_addresses(vec![], false), Err(ResolveError::Lookup));
    }

    #[tokio::test]
    async fn localhost_is_refused_unless_private_allowed() {
        let strict = GlobalResolver::new(false, Duration::from_secs(3));
        assert_eq!(
            strict.lookup("localhost").await,
            Err(ResolveError::NoGlobalAddress)
        );
        // Through the reqwest trait as well.
        let err = match Resolve::resolve(&strict, "localhost".parse().unwrap()).await {
            Ok(_) => panic!("localhost must be refused"),
            Err(err) => err,
        };
        assert_eq!(
            err.downcast_ref::<ResolveError>(),
            Some(&ResolveError::NoGlobalAddress)
        );
        // The error text names neither the host nor any address.
        let text = err.to_string();
        assert!(
            !text.contains("127.0.0.1") && !text.contains("::1"),
            "{text}"
        );

        let lax = GlobalResolver::new(true, Duration::from_secs(3));
        let addrs = lax.lookup("localhost").await.unwrap();
        assert!(addrs.iter().all(|a| a.ip().is_loopback()), "{addrs:?}");
        assert!(!addrs.is_empty());
    }

    #[tokio::test]
    async fn fixed_answers_are_filtered() {
        let resolver = GlobalResolver::fixed(
            false,
            vec![
                IpAddr::V4(Ipv4Addr::LOCALHOST),
                IpAddr::V6(Ipv6Addr::LOCALHOST),
            ],
        );
        assert_eq!(
            resolver.lookup("node.example.com").await,
            Err(ResolveError::NoGlobalAddress)
        );
        let resolver = GlobalResolver::fixed(
            false,
            vec![IpAddr::V4(Ipv4Addr::LOCALHOST), "1.1.1.1".parse().unwrap()],
        );
        assert_eq!(
            resolver.lookup("node.example.com").await,
            Ok(vec![SocketAddr::new("1.1.1.1".parse().unwrap(), 0)])
        );
    }
}
