//! Where a call comes from: the source address that keys bound to
//! networks (`allow_cidrs`) are checked against, and that last use shows.
//!
//! The source is the TCP peer. Behind proxies listed in
//! `server.trusted_proxies`, it is read from `x-forwarded-for` instead,
//! from the right: each trusted proxy appended the address it saw, so the
//! first hop that is not a trusted proxy is the caller, and whatever lies
//! left of it is the caller's own claim and is never believed. With no
//! trusted proxies, x-forwarded-for is ignored entirely.

use ipnet::IpNet;
use std::net::IpAddr;
use tonic::Request;
use tonic::metadata::MetadataMap;

/// The TCP peer's address, if the transport knows it.
pub fn peer<T>(request: &Request<T>) -> Option<IpAddr> {
    request.remote_addr().map(|a| a.ip().to_canonical())
}

/// The call's source address: `peer`, or behind trusted proxies the first
/// untrusted `x-forwarded-for` hop from the right (see the module docs).
/// `None` when it cannot be known — a trusted proxy sent a hop that is not
/// an address — so a network-bound key is refused rather than guessed at.
pub fn resolve(peer: Option<IpAddr>, metadata: &MetadataMap, trusted: &[IpNet]) -> Option<IpAddr> {
    let peer = peer?.to_canonical();
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return Some(peer);
    }
    // Several x-forwarded-for entries are one list, in order.
    let mut hops: Vec<&str> = Vec::new();
    for value in metadata.get_all("x-forwarded-for") {
        hops.extend(value.to_str().ok()?.split(','));
    }
    let mut nearest = peer;
    for hop in hops.iter().rev() {
        let ip = hop.trim().parse::<IpAddr>().ok()?.to_canonical();
        if !is_trusted(&ip) {
            return Some(ip);
        }
        nearest = ip;
    }
    // Only trusted proxies: the farthest one is the caller.
    Some(nearest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    fn xff(values: &[&str]) -> MetadataMap {
        let mut m = MetadataMap::new();
        for v in values {
            m.append("x-forwarded-for", v.parse().unwrap());
        }
        m
    }

    #[test]
    fn without_trusted_proxies_the_peer_counts() {
        let m = xff(&["10.1.1.1"]);
        assert_eq!(resolve(ip("127.0.0.1"), &m, &[]), ip("127.0.0.1"));
        assert_eq!(resolve(ip("::ffff:127.0.0.1"), &m, &[]), ip("127.0.0.1"));
        assert_eq!(resolve(None, &m, &[]), None);
    }

    #[test]
    fn behind_trusted_proxies_the_first_untrusted_hop_from_the_right() {
        let trusted: Vec<IpNet> = vec!["127.0.0.0/8".parse().unwrap(), "fd00::/8".parse().unwrap()];
        // The caller's own claim (1.1.1.1) is left of the real hop.
        let m = xff(&["1.1.1.1, 10.2.3.4", "fd00::5"]);
        assert_eq!(resolve(ip("127.0.0.1"), &m, &trusted), ip("10.2.3.4"));
        // A peer that is not a trusted proxy: its header is ignored.
        assert_eq!(resolve(ip("192.0.2.7"), &m, &trusted), ip("192.0.2.7"));
        // No header: the proxy itself.
        assert_eq!(
            resolve(ip("127.0.0.1"), &MetadataMap::new(), &trusted),
            ip("127.0.0.1")
        );
        // Only trusted hops: the farthest.
        let m = xff(&["fd00::9, 127.0.0.2"]);
        assert_eq!(resolve(ip("127.0.0.1"), &m, &trusted), ip("fd00::9"));
        // A hop that is not an address: unknown, never guessed.
        let m = xff(&["10.2.3.4, junk"]);
        assert_eq!(resolve(ip("127.0.0.1"), &m, &trusted), None);
    }
}
