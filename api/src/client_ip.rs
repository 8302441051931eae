//! Who is calling, for per-address limits: the TCP peer, or, when the peer is one of
//! the configured trusted proxies, the client its `X-Forwarded-For` names. Anyone
//! else's `X-Forwarded-For` is ignored (it is whatever the caller chose to write).
//!
//! IPv6 clients are limited per /64: one host usually holds a whole /64, so keying
//! on the full address would give it 2^64 buckets.

use std::net::{IpAddr, Ipv6Addr};

use ipnet::IpNet;

/// Parses `[api] trusted_proxies`: addresses or CIDR ranges.
pub fn parse_proxies(list: &[String]) -> Result<Vec<IpNet>, String> {
    list.iter()
        .map(|entry| {
            let entry = entry.trim();
            entry
                .parse::<IpNet>()
                .or_else(|_| entry.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| {
                    format!("api.trusted_proxies: {entry:?} is not an address or CIDR range")
                })
        })
        .collect()
}

fn trusted(ip: IpAddr, proxies: &[IpNet]) -> bool {
    proxies.iter().any(|p| p.contains(&ip))
}

/// The client address: the peer, unless the peer is a trusted proxy; then the
/// right-most `X-Forwarded-For` entry that is not itself a trusted proxy (entries to
/// its left were written by the client and prove nothing).
pub fn client_ip(peer: IpAddr, forwarded_for: Option<&str>, proxies: &[IpNet]) -> IpAddr {
    let peer = canonical(peer);
    if !trusted(peer, proxies) {
        return peer;
    }
    let Some(header) = forwarded_for else {
        return peer;
    };
    let mut client = peer;
    for hop in header.rsplit(',') {
        let Ok(ip) = hop.trim().parse::<IpAddr>() else {
            // Garbage where an address should be: stop at the last good hop.
            return client;
        };
        client = canonical(ip);
        if !trusted(client, proxies) {
            return client;
        }
    }
    client
}

/// The key of the per-address limiter: IPv4 as is, IPv6 cut to its /64.
pub fn rate_key(ip: IpAddr) -> IpAddr {
    match canonical(ip) {
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(Ipv6Addr::from(bits))
        }
        v4 => v4,
    }
}

/// IPv4-mapped IPv6 (`::ffff:1.2.3.4`, from dual-stack listeners) as IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn forwarded_for_counts_only_from_trusted_proxies() {
        let proxies = parse_proxies(&["10.0.0.0/8".into(), "192.168.1.1".into()]).unwrap();
        // An untrusted peer's header is ignored.
        assert_eq!(
            client_ip(ip("1.2.3.4"), Some("9.9.9.9"), &proxies),
            ip("1.2.3.4")
        );
        // A trusted one's: the right-most untrusted hop.
        assert_eq!(
            client_ip(ip("10.1.1.1"), Some("9.9.9.9"), &proxies),
            ip("9.9.9.9")
        );
        assert_eq!(
            client_ip(ip("10.1.1.1"), Some("6.6.6.6, 5.5.5.5, 10.2.2.2"), &proxies),
            ip("5.5.5.5")
        );
        assert_eq!(client_ip(ip("10.1.1.1"), None, &proxies), ip("10.1.1.1"));
        assert_eq!(
            client_ip(ip("10.1.1.1"), Some("junk"), &proxies),
            ip("10.1.1.1")
        );
        assert!(parse_proxies(&["nope".into()]).is_err());
    }

    #[test]
    fn ipv6_is_limited_per_64() {
        assert_eq!(
            rate_key(ip("2001:db8:1:2:aaaa::1")),
            rate_key(ip("2001:db8:1:2:bbbb::9"))
        );
        assert_ne!(
            rate_key(ip("2001:db8:1:2::1")),
            rate_key(ip("2001:db8:1:3::1"))
        );
        assert_eq!(rate_key(ip("::ffff:1.2.3.4")), ip("1.2.3.4"));
        assert_eq!(rate_key(ip("1.2.3.4")), ip("1.2.3.4"));
    }

    proptest! {
        /// With no trusted proxies, no header changes the key.
        #[test]
        fn untrusted_headers_never_matter(a in any::<[u8; 4]>(), header in ".{0,60}") {
            let peer = IpAddr::from(a);
            prop_assert_eq!(client_ip(peer, Some(&header), &[]), peer);
        }
    }
}
