//! Rate limits per source address and per node ID, and finding the source
//! address behind trusted reverse proxies.
//!
//! A "source address" is an IPv4 address, or the configured prefix (a /64
//! by default) of an IPv6 address: one subscriber holds a whole prefix and
//! could otherwise rotate through it for fresh budgets.
//!
//! Limiters use governor's monotonic clock: they measure intervals, never
//! wall-clock time, so they need no injected clock.

use std::hash::Hash;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;

use axum::http::HeaderMap;
use governor::clock::{Clock, DefaultClock};
use governor::DefaultKeyedRateLimiter;
use ipnet::IpNet;
use openred_core::NodeId;

use crate::config::{Quota, RateLimits};
use openred_http::ApiError;

struct Limiter<K: Hash + Eq + Clone>(Option<DefaultKeyedRateLimiter<K>>);

impl<K: Hash + Eq + Clone> Limiter<K> {
    fn new(enabled: bool, quota: Option<Quota>) -> Self {
        Limiter(quota.filter(|_| enabled).map(|q| {
            let per_second = NonZeroU32::new(q.per_second).unwrap_or(NonZeroU32::MIN);
            let burst = NonZeroU32::new(q.burst).unwrap_or(NonZeroU32::MIN);
            governor::RateLimiter::keyed(governor::Quota::per_second(per_second).allow_burst(burst))
        }))
    }

    fn check(&self, key: &K) -> Result<(), ApiError> {
        let Some(limiter) = &self.0 else {
            return Ok(());
        };
        limiter.check_key(key).map_err(|not_until| {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            ApiError::rate_limited(wait.as_secs() + u64::from(wait.subsec_nanos() > 0))
        })
    }

    fn forget_idle(&self) {
        if let Some(limiter) = &self.0 {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }
}

/// All the directory's limiters.
pub struct Limits {
    ipv6_prefix_len: u8,
    writes_per_address: Limiter<IpAddr>,
    writes_per_node: Limiter<NodeId>,
    lookup_misses_per_address: Limiter<IpAddr>,
    lookups_per_address: Limiter<IpAddr>,
    introductions_per_requester: Limiter<NodeId>,
    introductions_per_target: Limiter<NodeId>,
}

impl Limits {
    /// Builds the limiters from the configuration.
    pub fn new(config: &RateLimits) -> Limits {
        let on = config.enabled;
        Limits {
            ipv6_prefix_len: config.ipv6_prefix_len,
            writes_per_address: Limiter::new(on, Some(config.writes_per_address)),
            writes_per_node: Limiter::new(on, Some(config.writes_per_node)),
            lookup_misses_per_address: Limiter::new(on, Some(config.lookup_misses_per_address)),
            lookups_per_address: Limiter::new(on, config.lookups_per_address),
            introductions_per_requester: Limiter::new(on, Some(config.introductions_per_requester)),
            introductions_per_target: Limiter::new(on, Some(config.introductions_per_target)),
        }
    }

    /// A write from this address.
    pub fn write_from(&self, address: IpAddr) -> Result<(), ApiError> {
        self.writes_per_address.check(&self.source(address))
    }

    /// A write by this (verified) node.
    pub fn write_by(&self, node: &NodeId) -> Result<(), ApiError> {
        self.writes_per_node.check(node)
    }

    /// A lookup that missed (unknown or malformed ID) from this address.
    pub fn lookup_miss_from(&self, address: IpAddr) -> Result<(), ApiError> {
        self.lookup_misses_per_address.check(&self.source(address))
    }

    /// Any lookup or listing from this address (off by default).
    pub fn lookup_from(&self, address: IpAddr) -> Result<(), ApiError> {
        self.lookups_per_address.check(&self.source(address))
    }

    /// An introduction asked by this (verified) node to `target`.
    pub fn introduction(&self, requester: &NodeId, target: &NodeId) -> Result<(), ApiError> {
        self.introductions_per_requester.check(requester)?;
        self.introductions_per_target.check(target)
    }

    /// The key `address` is counted under.
    fn source(&self, address: IpAddr) -> IpAddr {
        openred_core::url::source_key(address, self.ipv6_prefix_len)
    }

    /// Drops the state of keys that are back to a full budget.
    pub fn forget_idle(&self) {
        self.writes_per_address.forget_idle();
        self.writes_per_node.forget_idle();
        self.lookup_misses_per_address.forget_idle();
        self.lookups_per_address.forget_idle();
        self.introductions_per_requester.forget_idle();
        self.introductions_per_target.forget_idle();
    }
}

/// The client's address: the peer's, unless the peer is a trusted proxy, in
/// which case `X-Forwarded-For` is read from the right, skipping trusted
/// proxies, and the first untrusted address is the client. An untrusted peer
/// cannot choose its address by sending the header.
pub fn client_address(peer: SocketAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let peer_ip = canonical(peer.ip());
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer_ip) {
        return peer_ip;
    }
    let mut client = peer_ip;
    let hops = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect::<Vec<_>>();
    for hop in hops.iter().rev() {
        match hop.parse::<IpAddr>() {
            Ok(ip) => {
                client = canonical(ip);
                if !is_trusted(&client) {
                    break;
                }
            }
            // A malformed hop: stop at the last address we could trust.
            Err(_) => break,
        }
    }
    client
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(xff: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", xff.parse().unwrap());
        h
    }

    #[test]
    fn untrusted_peers_cannot_spoof_their_address() {
        let peer: SocketAddr = "203.0.113.9:5000".parse().unwrap();
        let ip = client_address(peer, &headers("1.2.3.4"), &[]);
        assert_eq!(ip, "203.0.113.9".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn trusted_proxy_yields_first_untrusted_hop_from_the_right() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let peer: SocketAddr = "10.0.0.2:5000".parse().unwrap();
        let ip = client_address(peer, &headers("6.6.6.6, 1.2.3.4, 10.0.0.7"), &trusted);
        assert_eq!(ip, "1.2.3.4".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn limiter_refuses_past_the_burst_with_a_retry_after() {
        let limits = Limits::new(&RateLimits {
            writes_per_address: Quota::new(1, 2),
            ..RateLimits::default()
        });
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        assert!(limits.write_from(ip).is_ok());
        assert!(limits.write_from(ip).is_ok());
        let err = limits.write_from(ip).unwrap_err();
        assert_eq!(err.code().as_str(), "rate_limited");
        // Another address has its own budget.
        assert!(limits.write_from("192.0.2.2".parse().unwrap()).is_ok());
    }

    #[test]
    fn rotating_ipv6_addresses_in_one_prefix_share_one_budget() {
        let limits = Limits::new(&RateLimits {
            writes_per_address: Quota::new(1, 3),
            lookup_misses_per_address: Quota::new(1, 3),
            ..RateLimits::default()
        });
        // A fresh address of one /64 for every request: the fourth is
        // refused all the same.
        for check in [Limits::write_from, Limits::lookup_miss_from] {
            for host in 1..=3 {
                let ip = format!("2001:db8:7:7::{host}").parse().unwrap();
                assert!(check(&limits, ip).is_ok());
            }
            let err = check(&limits, "2001:db8:7:7:ffff::9".parse().unwrap()).unwrap_err();
            assert_eq!(err.code().as_str(), "rate_limited");
            // The next /64 has its own budget.
            assert!(check(&limits, "2001:db8:7:8::1".parse().unwrap()).is_ok());
        }
        // A /128 setting counts each address on its own again.
        let exact = Limits::new(&RateLimits {
            writes_per_address: Quota::new(1, 1),
            ipv6_prefix_len: 128,
            ..RateLimits::default()
        });
        assert!(exact.write_from("2001:db8::1".parse().unwrap()).is_ok());
        assert!(exact.write_from("2001:db8::2".parse().unwrap()).is_ok());
    }
}
