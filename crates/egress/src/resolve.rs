//! SSRF and DNS defences: a vendor's host is resolved here, every address
//! is checked, and the connection goes to a checked address — the
//! connector is handed the addresses, so no second lookup (and no DNS
//! rebinding) can switch them.
//!
//! Refused unless the vendor entry allows them: loopback, private (RFC
//! 1918, IPv6 unique-local), link-local (169.254.0.0/16 — cloud metadata —
//! and fe80::/10), CGNAT (100.64.0.0/10), unspecified, multicast, reserved
//! and documentation ranges, and every IPv6 form that embeds an IPv4 address
//! (mapped, compatible, NAT64, 6to4, Teredo). `allow_private_addresses`
//! allows them all; `allow_insecure_http` (loopback experiments) allows
//! loopback. A vendor's `resolve_to` addresses replace the DNS lookup and
//! are checked exactly like its answers.

use hyper_util::client::legacy::connect::dns::Name;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};

/// Which special addresses a vendor may be reached at.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AddressPolicy {
    /// Every class below is allowed.
    pub allow_private: bool,
    /// Loopback is allowed.
    pub allow_loopback: bool,
}

impl AddressPolicy {
    /// Why `ip` is refused, or `None` if it may be connected to.
    pub fn refuses(self, ip: IpAddr) -> Option<&'static str> {
        let class = special(ip)?;
        match class {
            _ if self.allow_private => None,
            "loopback" if self.allow_loopback => None,
            class => Some(class),
        }
    }
}

/// The host resolved only to refused addresses.
#[derive(Debug, thiserror::Error)]
#[error("the vendor's host resolves only to {class} addresses, which are refused")]
pub struct ForbiddenAddress {
    /// The refused class (e.g. `link-local`).
    pub class: &'static str,
}

type Boxed = Box<dyn std::error::Error + Send + Sync>;

/// A resolver that drops refused addresses (hyper-util's connector then
/// connects only to what it returns). With `pinned` addresses (a vendor's
/// `resolve_to`) it asks no DNS server, and checks those the same way.
#[derive(Debug, Clone)]
pub(crate) struct GuardedResolver {
    pub(crate) policy: AddressPolicy,
    pub(crate) pinned: std::sync::Arc<[IpAddr]>,
}

impl tower::Service<Name> for GuardedResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = Boxed;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Boxed>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Boxed>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let policy = self.policy;
        let host = name.as_str().to_owned();
        let pinned = self.pinned.clone();
        Box::pin(async move {
            let found: Vec<SocketAddr> = if pinned.is_empty() {
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect()
            } else {
                pinned.iter().map(|ip| SocketAddr::new(*ip, 0)).collect()
            };
            let mut refused = None;
            let allowed: Vec<SocketAddr> = found
                .into_iter()
                .filter(|addr| match policy.refuses(addr.ip()) {
                    None => true,
                    Some(class) => {
                        refused = Some(class);
                        false
                    }
                })
                .collect();
            match (allowed.is_empty(), refused) {
                (true, Some(class)) => Err(Box::new(ForbiddenAddress { class }) as Boxed),
                _ => Ok(allowed.into_iter()),
            }
        })
    }
}

/// A class from [`special`] as a message says it, with its article:
/// "an IPv4-embedded", "a link-local".
pub fn with_article(class: &str) -> &'static str {
    match class {
        "unspecified" => "an unspecified",
        "loopback" => "a loopback",
        "private" => "a private",
        "link-local" => "a link-local",
        "cgnat" => "a CGNAT (100.64.0.0/10)",
        "reserved" => "a reserved",
        "documentation" => "a documentation",
        "multicast" => "a multicast",
        "ipv4-embedded" => "an IPv4-embedded",
        _ => "a special-purpose",
    }
}

/// The special class `ip` is in, if any.
pub fn special(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => special_v4(v4),
        IpAddr::V6(v6) => special_v6(v6),
    }
}

fn special_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    Some(match (a, b, c) {
        (0, ..) => "unspecified",
        (127, ..) => "loopback",
        (10, ..) | (172, 16..=31, _) | (192, 168, _) => "private",
        (169, 254, _) => "link-local",
        (100, 64..=127, _) => "cgnat",
        (192, 0, 0) | (198, 18..=19, _) => "reserved",
        (192, 0, 2) | (198, 51, 100) | (203, 0, 113) => "documentation",
        (224..=239, ..) => "multicast",
        (240..=255, ..) => "reserved",
        _ => return None,
    })
}

fn special_v6(ip: Ipv6Addr) -> Option<&'static str> {
    if ip.is_loopback() {
        return Some("loopback");
    }
    if ip.is_unspecified() {
        return Some("unspecified");
    }
    let s = ip.segments();
    Some(match s {
        [0, 0, 0, 0, 0, 0xffff, ..] | [0, 0, 0, 0, 0, 0, ..] => "ipv4-embedded",
        [0x64, 0xff9b, 0, 0, 0, 0, ..] | [0x64, 0xff9b, 1, ..] => "ipv4-embedded",
        [0x2002, ..] | [0x2001, 0, ..] => "ipv4-embedded",
        [0x2001, 0x0db8, ..] => "documentation",
        [x, ..] if x & 0xffc0 == 0xfe80 => "link-local",
        [x, ..] if x & 0xfe00 == 0xfc00 || x & 0xffc0 == 0xfec0 => "private",
        [x, ..] if x & 0xff00 == 0xff00 => "multicast",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn special_addresses_are_classified() {
        for (ip, class) in [
            ("127.0.0.1", "loopback"),
            ("127.8.9.10", "loopback"),
            ("10.1.2.3", "private"),
            ("172.16.0.1", "private"),
            ("172.31.255.255", "private"),
            ("192.168.1.1", "private"),
            ("169.254.169.254", "link-local"),
            ("100.64.0.1", "cgnat"),
            ("0.0.0.0", "unspecified"),
            ("224.0.0.1", "multicast"),
            ("255.255.255.255", "reserved"),
            ("::1", "loopback"),
            ("::", "unspecified"),
            ("::ffff:127.0.0.1", "ipv4-embedded"),
            ("::ffff:169.254.169.254", "ipv4-embedded"),
            ("::127.0.0.1", "ipv4-embedded"),
            ("64:ff9b::a9fe:a9fe", "ipv4-embedded"),
            ("2002:7f00:1::", "ipv4-embedded"),
            ("fe80::1", "link-local"),
            ("fd00:ec2::254", "private"),
            ("fec0::1", "private"),
            ("ff02::1", "multicast"),
        ] {
            assert_eq!(special(ip.parse().unwrap()), Some(class), "{ip}");
        }
        for ip in [
            "8.8.8.8",
            "172.32.0.1",
            "100.128.0.1",
            "2606:4700::1111",
            "1.1.1.1",
        ] {
            assert_eq!(special(ip.parse().unwrap()), None, "{ip}");
        }
    }

    #[test]
    fn the_policy_allows_what_the_vendor_entry_names() {
        let strict = AddressPolicy::default();
        let loopback = AddressPolicy {
            allow_loopback: true,
            ..strict
        };
        let open = AddressPolicy {
            allow_private: true,
            ..strict
        };
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(strict.refuses(ip("127.0.0.1")), Some("loopback"));
        assert_eq!(loopback.refuses(ip("127.0.0.1")), None);
        assert_eq!(loopback.refuses(ip("::ffff:127.0.0.1")), Some("ipv4-embedded"));
        assert_eq!(loopback.refuses(ip("169.254.169.254")), Some("link-local"));
        assert_eq!(open.refuses(ip("169.254.169.254")), None);
        assert_eq!(strict.refuses(ip("93.184.216.34")), None);
    }
}
