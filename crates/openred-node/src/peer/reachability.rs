//! Rate limits on the reachability route, which signs a fresh challenge for
//! anyone who asks: per source (an IPv4 address or an IPv6 prefix, since
//! one subscriber holds a whole /64 and can rotate through it) and for all
//! sources together, so that neither one client nor a crowd keeps the
//! crypto agent signing.
//!
//! Limiters use governor's monotonic clock: they measure intervals, never
//! wall-clock time.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::http::Extensions;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, NotUntil, Quota};
use openred_http::ApiError;

use crate::config::{RateQuota, ReachabilityLimits};

/// The limiters of one node.
pub(crate) struct ReachabilityLimiter {
    per_source: DefaultKeyedRateLimiter<IpAddr>,
    global: DefaultDirectRateLimiter,
    ipv6_prefix_len: u8,
    checks: AtomicU64,
}

/// Forget sources back to a full budget every this many checks, so that the
/// map stays bounded by the sources seen recently.
const PRUNE_EVERY: u64 = 1024;

impl ReachabilityLimiter {
    /// Limiters for `limits` (validated: quotas of at least 1).
    pub(crate) fn new(limits: &ReachabilityLimits) -> ReachabilityLimiter {
        ReachabilityLimiter {
            per_source: governor::RateLimiter::keyed(quota(limits.per_source)),
            global: governor::RateLimiter::direct(quota(limits.global)),
            ipv6_prefix_len: limits.ipv6_prefix_len,
            checks: AtomicU64::new(0),
        }
    }

    /// Admits one request from `source` (`None`: the server did not say, and
    /// all such requests count as one source), or refuses it with 429.
    pub(crate) fn check(&self, source: Option<IpAddr>) -> Result<(), ApiError> {
        if self.checks.fetch_add(1, Ordering::Relaxed) % PRUNE_EVERY == PRUNE_EVERY - 1 {
            self.per_source.retain_recent();
        }
        let key = source
            .map(|ip| openred_core::url::source_key(ip, self.ipv6_prefix_len))
            .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        // Per source first, so that a client over its own budget spends
        // nothing of everyone's.
        self.per_source.check_key(&key).map_err(refused)?;
        self.global.check().map_err(refused)?;
        Ok(())
    }
}

/// The TCP peer's address, as the server put it in the request.
pub(crate) fn source(extensions: &Extensions) -> Option<IpAddr> {
    extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|info| info.0.ip())
}

fn quota(q: RateQuota) -> Quota {
    let per_minute = NonZeroU32::new(q.per_minute).unwrap_or(NonZeroU32::MIN);
    let burst = NonZeroU32::new(q.burst).unwrap_or(NonZeroU32::MIN);
    Quota::with_period(Duration::from_secs(60) / per_minute.get())
        .unwrap_or(Quota::per_minute(per_minute))
        .allow_burst(burst)
}

fn refused(not_until: NotUntil<<DefaultClock as Clock>::Instant>) -> ApiError {
    let wait = not_until.wait_time_from(DefaultClock::default().now());
    ApiError::rate_limited(wait.as_secs() + u64::from(wait.subsec_nanos() > 0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use openred_core::error_code::ErrorCode;

    fn slow(burst: u32) -> RateQuota {
        // One request an hour after the burst: nothing refills during a test.
        RateQuota {
            per_minute: 1,
            burst,
        }
    }

    #[test]
    fn rotating_ipv6_addresses_in_one_prefix_share_one_reachability_budget() {
        let limiter = ReachabilityLimiter::new(&ReachabilityLimits {
            per_source: slow(2),
            global: slow(100),
            ipv6_prefix_len: 64,
        });
        let ip = |s: &str| Some(s.parse::<IpAddr>().unwrap());
        assert!(limiter.check(ip("2001:db8:5:5::1")).is_ok());
        assert!(limiter.check(ip("2001:db8:5:5::2")).is_ok());
        let err = limiter.check(ip("2001:db8:5:5:abcd::3")).unwrap_err();
        assert_eq!(err.code(), ErrorCode::RateLimited);
        // Another /64, and an IPv4 source, have their own budgets.
        assert!(limiter.check(ip("2001:db8:5:6::1")).is_ok());
        assert!(limiter.check(ip("192.0.2.1")).is_ok());
        // Requests whose source is unknown share one budget.
        assert!(limiter.check(None).is_ok());
        assert!(limiter.check(None).is_ok());
        assert!(limiter.check(None).is_err());
    }

    #[test]
    fn a_crowd_of_sources_runs_into_the_global_budget() {
        let limiter = ReachabilityLimiter::new(&ReachabilityLimits {
            per_source: slow(5),
            global: slow(10),
            ipv6_prefix_len: 64,
        });
        for i in 0..10u8 {
            let source = IpAddr::V4(Ipv4Addr::new(192, 0, 2, i));
            assert!(limiter.check(Some(source)).is_ok());
        }
        let err = limiter
            .check(Some(IpAddr::V4(Ipv4Addr::new(198, 51, 100, 1))))
            .unwrap_err();
        assert_eq!(err.code(), ErrorCode::RateLimited);
    }
}
