//! The URL a node publishes, and the address policy.
//!
//! A record's `api_url` is an **origin** (`scheme://host[:port]`): paths are
//! always built by our own code, so a registered URL can never point a caller
//! at an arbitrary path of someone else's server. The canonical text is the
//! one the `url` crate serialises, so each origin has one spelling and the
//! signed bytes of a record are unambiguous.
//!
//! The address policy says which hosts are *global*. Loopback, private,
//! link-local, shared, documentation, multicast and other special-purpose
//! ranges (IANA special-purpose registries) are not, and neither are names
//! such as `localhost`. It applies to IP literals here; names are resolved by
//! the outbound client, which applies the same [`is_global_ip`] to every
//! address it finds.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The longest `api_url` accepted, in bytes.
pub const MAX_URL_LEN: usize = 255;

/// Why an `api_url` was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    /// Longer than [`MAX_URL_LEN`].
    #[error("the URL is longer than {MAX_URL_LEN} bytes")]
    TooLong,
    /// Not a URL at all.
    #[error("not a valid absolute URL")]
    Syntax,
    /// A scheme other than `https` (or `http` where allowed).
    #[error("the URL must use https")]
    Scheme,
    /// Contains a path, query, fragment or user info.
    #[error("the URL must be an origin only (scheme, host and port), without path, query, fragment or user info")]
    NotAnOrigin,
    /// Not in canonical form (e.g. upper case, default port spelled out).
    #[error("the URL is not in canonical form; expected {canonical}")]
    NotCanonical {
        /// The canonical spelling.
        canonical: String,
    },
    /// The host is loopback, private, link-local or otherwise not global.
    #[error("the URL's host is not a public (global) address")]
    NonGlobalHost,
}

/// A node's API origin, syntactically valid and canonical.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct ApiUrl {
    text: String,
    host: Host,
    https: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Host {
    Ip(IpAddr),
    Name(String),
}

impl ApiUrl {
    /// Parses a user-supplied URL and reduces it to its origin. A trailing
    /// `/` is accepted; any other path, a query, fragment or user info is
    /// refused rather than silently dropped, so that the user sees what will
    /// be published.
    pub fn parse_origin(text: &str) -> Result<ApiUrl, UrlError> {
        if text.len() > MAX_URL_LEN {
            return Err(UrlError::TooLong);
        }
        let url = ::url::Url::parse(text).map_err(|_| UrlError::Syntax)?;
        let https = match url.scheme() {
            "https" => true,
            "http" => false,
            _ => return Err(UrlError::Scheme),
        };
        if url.path() != "/"
            || url.query().is_some()
            || url.fragment().is_some()
            || !url.username().is_empty()
            || url.password().is_some()
        {
            return Err(UrlError::NotAnOrigin);
        }
        let host = match url.host() {
            Some(::url::Host::Ipv4(ip)) => Host::Ip(IpAddr::V4(ip)),
            Some(::url::Host::Ipv6(ip)) => Host::Ip(IpAddr::V6(ip)),
            Some(::url::Host::Domain(name)) => Host::Name(name.to_owned()),
            None => return Err(UrlError::Syntax),
        };
        let text = url.origin().ascii_serialization();
        if text.len() > MAX_URL_LEN {
            return Err(UrlError::TooLong);
        }
        Ok(ApiUrl { text, host, https })
    }

    /// Parses a URL that must already be canonical, as inside a signed
    /// record, where the signed bytes must be the published text.
    pub fn parse_canonical(text: &str) -> Result<ApiUrl, UrlError> {
        let url = ApiUrl::parse_origin(text)?;
        if url.text != text {
            return Err(UrlError::NotCanonical {
                canonical: url.text,
            });
        }
        Ok(url)
    }

    /// The canonical text, e.g. `https://node.example:8443`.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether the scheme is `https`.
    pub fn is_https(&self) -> bool {
        self.https
    }

    /// The host's IP address, when the URL names one literally.
    pub fn ip_literal(&self) -> Option<IpAddr> {
        match self.host {
            Host::Ip(ip) => Some(ip),
            Host::Name(_) => None,
        }
    }

    /// Checks the policy for publishing this URL: https, and a host that is
    /// a global address or a name that is not reserved for local use. With
    /// `allow_private` (the `--danger-allow-private-addresses` flag), plain
    /// http and non-global hosts pass too.
    pub fn check_policy(&self, allow_private: bool) -> Result<(), UrlError> {
        if allow_private {
            return Ok(());
        }
        if !self.https {
            return Err(UrlError::Scheme);
        }
        let global = match &self.host {
            Host::Ip(ip) => is_global_ip(*ip),
            Host::Name(name) => is_public_name(name),
        };
        if global {
            Ok(())
        } else {
            Err(UrlError::NonGlobalHost)
        }
    }
}

impl fmt::Display for ApiUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Debug for ApiUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ApiUrl({})", self.text)
    }
}

/// Names that never denote a public host: `localhost` and the special-use
/// suffixes reserved for local networks (RFC 6761, 6762, 8375, 9476…).
/// A bare single-label name is refused too, since it can only resolve
/// through a local search domain.
fn is_public_name(name: &str) -> bool {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    const LOCAL_SUFFIXES: [&str; 8] = [
        "localhost",
        "local",
        "internal",
        "home.arpa",
        "lan",
        "test",
        "invalid",
        "alt",
    ];
    if !name.contains('.') {
        return false;
    }
    !LOCAL_SUFFIXES
        .iter()
        .any(|suffix| name == *suffix || name.ends_with(&format!(".{suffix}")))
}

/// Whether an address is globally routable: not loopback, private, shared,
/// link-local, documentation, benchmarking, multicast, reserved or otherwise
/// special-purpose. The IPv4-mapped form (`::ffff:a.b.c.d`) and the NAT64
/// and 6to4 forms are judged by the IPv4 address they carry, so
/// `::ffff:127.0.0.1` is loopback too. The SIIT IPv4-translated form
/// (`::ffff:0:a.b.c.d`, RFC 6145) is never global, whatever it carries: it
/// only has a meaning behind a stateless translator.
pub fn is_global_ip(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_global_v4(v4),
        IpAddr::V6(v6) => is_global_v6(v6),
    }
}

fn is_global_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    let special = a == 0 // "this network"
        || a == 10 // private
        || (a == 100 && (64..128).contains(&b)) // shared address space (CGNAT)
        || a == 127 // loopback
        || (a == 169 && b == 254) // link-local
        || (a == 172 && (16..32).contains(&b)) // private
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 192 && b == 0 && c == 2) // TEST-NET-1
        || (a == 192 && b == 88 && c == 99) // 6to4 relay anycast (deprecated)
        || (a == 192 && b == 168) // private
        || (a == 198 && (b == 18 || b == 19)) // benchmarking
        || (a == 198 && b == 51 && c == 100) // TEST-NET-2
        || (a == 203 && b == 0 && c == 113) // TEST-NET-3
        || a >= 224; // multicast, reserved, broadcast
    !special
}

fn is_global_v6(ip: Ipv6Addr) -> bool {
    let seg = ip.segments();
    if let Some(v4) = ip.to_ipv4_mapped() {
        return is_global_v4(v4);
    }
    // NAT64 well-known prefix 64:ff9b::/96 carries an IPv4 address.
    if seg[0] == 0x64 && seg[1] == 0xff9b && seg[2..6] == [0, 0, 0, 0] {
        let v4 = Ipv4Addr::new(
            (seg[6] >> 8) as u8,
            seg[6] as u8,
            (seg[7] >> 8) as u8,
            seg[7] as u8,
        );
        return is_global_v4(v4);
    }
    // 6to4 2002::/16 carries an IPv4 address in bits 16..48.
    if seg[0] == 0x2002 {
        let v4 = Ipv4Addr::new(
            (seg[1] >> 8) as u8,
            seg[1] as u8,
            (seg[2] >> 8) as u8,
            seg[2] as u8,
        );
        return is_global_v4(v4);
    }
    // Only 2000::/3 is allocated for global unicast (IANA); everything else
    // that reaches this point is not global: ::/8 (unspecified, loopback,
    // IPv4-compatible ::/96, the IPv4-translated ::ffff:0:0:0/96, local-use
    // NAT64 64:ff9b:1::/48), discard-only 100::/64, unique local fc00::/7,
    // link-local fe80::/10, site-local fec0::/10, multicast ff00::/8 and the
    // unallocated rest. Checking the allocation, rather than listing the
    // special ranges outside it, leaves no unlisted range open.
    if seg[0] & 0xe000 != 0x2000 {
        return false;
    }
    // 2001::/23: IETF protocol assignments; 2001:db8::/32 and 3fff::/20:
    // documentation.
    let special =
        (seg[0] == 0x2001 && (seg[1] < 0x200 || seg[1] == 0xdb8)) || (seg[0] & 0xfff0) == 0x3ff0;
    !special
}

/// The prefix length under which rate limits count IPv6 sources by default:
/// one subscriber is usually given a whole /64 and can pick any address in
/// it.
pub const DEFAULT_IPV6_PREFIX_LEN: u8 = 64;

/// The key a per-source limit counts `ip` under: an IPv4 address as itself
/// (an IPv4-mapped IPv6 address as the IPv4 address it carries), an IPv6
/// address as its first `ipv6_prefix_len` bits (at most 128), the rest
/// zeroed. Without this, a client rotating through the addresses of its own
/// /64 would get a fresh budget with every address.
pub fn source_key(ip: IpAddr, ipv6_prefix_len: u8) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let len = u32::from(ipv6_prefix_len.min(128));
                let mask = u128::MAX.checked_shl(128 - len).unwrap_or(0);
                IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask))
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_only_canonical_origins() {
        let url = ApiUrl::parse_origin("HTTPS://Node.Example.COM:443/").unwrap();
        assert_eq!(url.as_str(), "https://node.example.com");
        assert_eq!(
            ApiUrl::parse_canonical("https://node.example.com:443"),
            Err(UrlError::NotCanonical {
                canonical: "https://node.example.com".into()
            })
        );
        for bad in [
            "https://node.example.com/api",
            "https://node.example.com/?q=1",
            "https://node.example.com/#x",
            "https://user:pw@node.example.com",
        ] {
            assert_eq!(
                ApiUrl::parse_origin(bad),
                Err(UrlError::NotAnOrigin),
                "{bad}"
            );
        }
        assert_eq!(
            ApiUrl::parse_origin("ftp://node.example.com"),
            Err(UrlError::Scheme)
        );
        assert_eq!(ApiUrl::parse_origin("not a url"), Err(UrlError::Syntax));
        let long = format!("https://{}.example.com", "a".repeat(250));
        assert_eq!(ApiUrl::parse_origin(&long), Err(UrlError::TooLong));
    }

    #[test]
    fn policy_refuses_http_and_non_global_hosts() {
        let check = |s: &str| ApiUrl::parse_origin(s).unwrap().check_policy(false);
        assert_eq!(check("https://node.example.com"), Ok(()));
        assert_eq!(check("https://8.8.8.8"), Ok(()));
        assert_eq!(check("https://[2606:4700::1111]"), Ok(()));
        assert_eq!(check("http://node.example.com"), Err(UrlError::Scheme));
        for bad in [
            "https://127.0.0.1",
            "https://127.8.9.10:8080",
            "https://10.1.2.3",
            "https://172.16.0.1",
            "https://192.168.1.1",
            "https://169.254.169.254",
            "https://100.64.0.1",
            "https://0.0.0.0",
            "https://224.0.0.1",
            "https://255.255.255.255",
            "https://[::1]",
            "https://[::]",
            "https://[::ffff:127.0.0.1]",
            "https://[::ffff:10.0.0.1]",
            "https://[64:ff9b::a00:1]",
            "https://[2002:7f00:1::]",
            "https://[fe80::1]",
            "https://[fd00::1]",
            "https://[ff02::1]",
            "https://[2001:db8::1]",
            "https://[::ffff:0:7f00:1]",    // IPv4-translated 127.0.0.1
            "https://[::ffff:0:808:808]",   // IPv4-translated 8.8.8.8
            "https://[::8.8.8.8]",          // IPv4-compatible (deprecated)
            "https://[64:ff9b:1::808:808]", // local-use NAT64
            "https://[100::1]",             // discard-only
            "https://[4000::1]",            // not allocated (outside 2000::/3)
            "https://localhost",
            "https://api.localhost",
            "https://printer.local",
            "https://intranet",
            "https://svc.internal",
            "https://0x7f000001", // the url crate reads this as 127.0.0.1
            "https://2130706433", // likewise, decimal
        ] {
            assert_eq!(check(bad), Err(UrlError::NonGlobalHost), "{bad}");
        }
        // The danger flag allows all of them, and plain http.
        for ok in [
            "http://127.0.0.1:8080",
            "https://[::1]",
            "http://localhost:1",
        ] {
            assert_eq!(ApiUrl::parse_origin(ok).unwrap().check_policy(true), Ok(()));
        }
    }

    #[test]
    fn an_ipv4_translated_address_is_not_global_whatever_it_carries() {
        // ::ffff:0:a.b.c.d (SIIT, RFC 6145) next to the IPv4-mapped
        // ::ffff:a.b.c.d, which is judged by its IPv4 address.
        for v4 in ["8.8.8.8", "1.1.1.1", "127.0.0.1", "10.0.0.1"] {
            let v4: Ipv4Addr = v4.parse().unwrap();
            let [a, b, c, d] = v4.octets();
            let translated = Ipv6Addr::new(
                0,
                0,
                0,
                0,
                0xffff,
                0,
                u16::from_be_bytes([a, b]),
                u16::from_be_bytes([c, d]),
            );
            assert!(!is_global_ip(IpAddr::V6(translated)), "{translated}");
            assert_eq!(
                is_global_ip(IpAddr::V6(v4.to_ipv6_mapped())),
                is_global_ip(IpAddr::V4(v4))
            );
        }
        assert_eq!(
            "::ffff:0:7f00:1".parse::<Ipv6Addr>().unwrap().segments(),
            [0, 0, 0, 0, 0xffff, 0, 0x7f00, 1]
        );
    }

    proptest::proptest! {
        #[test]
        fn embedded_ipv4_forms_are_judged_as_their_ipv4_address(bits in proptest::num::u32::ANY) {
            let v4 = Ipv4Addr::from(bits);
            let global = is_global_ip(IpAddr::V4(v4));
            let [a, b, c, d] = v4.octets();
            let (hi, lo) = (u16::from_be_bytes([a, b]), u16::from_be_bytes([c, d]));
            let mapped = IpAddr::V6(v4.to_ipv6_mapped());
            let nat64 = IpAddr::V6(Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, hi, lo));
            let six_to_four = IpAddr::V6(Ipv6Addr::new(0x2002, hi, lo, 0, 0, 0, 0, 1));
            let translated = IpAddr::V6(Ipv6Addr::new(0, 0, 0, 0, 0xffff, 0, hi, lo));
            let compatible = IpAddr::V6(Ipv6Addr::new(0, 0, 0, 0, 0, 0, hi, lo));
            proptest::prop_assert_eq!(is_global_ip(mapped), global);
            proptest::prop_assert_eq!(is_global_ip(nat64), global);
            proptest::prop_assert_eq!(is_global_ip(six_to_four), global);
            proptest::prop_assert!(!is_global_ip(translated));
            proptest::prop_assert!(!is_global_ip(compatible));
        }

        #[test]
        fn nothing_outside_global_unicast_is_global(bits in proptest::num::u128::ANY) {
            let ip = Ipv6Addr::from(bits);
            let seg = ip.segments();
            let nat64 = seg[0..6] == [0x64, 0xff9b, 0, 0, 0, 0];
            let mapped = ip.to_ipv4_mapped().is_some();
            if seg[0] & 0xe000 != 0x2000 && !nat64 && !mapped {
                proptest::prop_assert!(!is_global_ip(IpAddr::V6(ip)), "{}", ip);
            }
        }

        #[test]
        fn addresses_in_one_prefix_share_one_source_key(bits in proptest::num::u128::ANY, other in proptest::num::u64::ANY) {
            let ip = Ipv6Addr::from(bits);
            if ip.to_ipv4_mapped().is_none() {
                // The same /64 with any interface identifier: one key.
                let rotated = Ipv6Addr::from((bits & !u128::from(u64::MAX)) | u128::from(other));
                proptest::prop_assert_eq!(
                    source_key(IpAddr::V6(ip), 64),
                    source_key(IpAddr::V6(rotated), 64)
                );
                // The next /64 has its own.
                let next = Ipv6Addr::from(bits ^ (1u128 << 64));
                proptest::prop_assert_ne!(
                    source_key(IpAddr::V6(ip), 64),
                    source_key(IpAddr::V6(next), 64)
                );
                proptest::prop_assert_eq!(source_key(IpAddr::V6(ip), 128), IpAddr::V6(ip));
            }
        }
    }

    #[test]
    fn source_keys_of_ipv4_and_mapped_addresses_are_the_ipv4_address() {
        let v4: IpAddr = "203.0.113.7".parse().unwrap();
        assert_eq!(source_key(v4, 64), v4);
        assert_eq!(source_key("::ffff:203.0.113.7".parse().unwrap(), 64), v4);
        assert_eq!(
            source_key("2001:db8:1:2:3:4:5:6".parse().unwrap(), 48),
            "2001:db8:1::".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            source_key("2001:db8::1".parse().unwrap(), 0),
            "::".parse::<IpAddr>().unwrap()
        );
    }
}
