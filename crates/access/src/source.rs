//! Source binding: a key created with `allow_cidrs` authenticates only from
//! a source address inside one of them, so a key copied out of its
//! deployment is useless elsewhere.

use ipnet::IpNet;
use std::net::IpAddr;

/// A key bound to source networks was presented from outside them (or from
/// a source Valet could not determine).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("this API key may not be used from this source address")]
pub struct SourceNotAllowed;

/// Why a network given for `allow_cidrs` was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    /// Not an address or a network.
    #[error("'{0}' is not an IPv4 or IPv6 network (e.g. 10.0.0.0/8, fd00::/8) or address")]
    Syntax(String),
    /// Bits set past the prefix: probably a typo for a narrower network.
    #[error("'{given}' has host bits set past its prefix; did you mean {network}?")]
    HostBits {
        /// As given.
        given: String,
        /// The network it truncates to.
        network: IpNet,
    },
}

/// Parses a network (`10.0.0.0/8`, `fd00::/8`) or a single address (taken
/// as `/32` or `/128`). Host bits past the prefix are refused rather than
/// silently dropped: `10.1.2.3/8` may have meant `10.1.2.3/32`.
pub fn parse_cidr(text: &str) -> Result<IpNet, CidrError> {
    let text = text.trim();
    if let Ok(addr) = text.parse::<IpAddr>() {
        return Ok(IpNet::from(addr.to_canonical()));
    }
    let net: IpNet = text.parse().map_err(|_| CidrError::Syntax(text.to_owned()))?;
    if net.trunc() != net {
        return Err(CidrError::HostBits {
            given: text.to_owned(),
            network: net.trunc(),
        });
    }
    Ok(net)
}

/// Whether `source` may use a key bound to `cidrs`: any source when there
/// are none; otherwise a known source inside one of them. IPv4-mapped IPv6
/// sources (a dual-stack listener's view of an IPv4 peer) count as IPv4.
pub fn allows(cidrs: &[IpNet], source: Option<IpAddr>) -> Result<(), SourceNotAllowed> {
    if cidrs.is_empty() {
        return Ok(());
    }
    let source = source.map(|s| s.to_canonical()).ok_or(SourceNotAllowed)?;
    if cidrs.iter().any(|net| net.contains(&source)) {
        Ok(())
    } else {
        Err(SourceNotAllowed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks_and_addresses_parse_strictly() {
        assert_eq!(parse_cidr("10.0.0.0/8").unwrap().to_string(), "10.0.0.0/8");
        assert_eq!(parse_cidr(" 127.0.0.1 ").unwrap().to_string(), "127.0.0.1/32");
        assert_eq!(parse_cidr("fd00::/8").unwrap().to_string(), "fd00::/8");
        assert_eq!(parse_cidr("::1").unwrap().to_string(), "::1/128");
        assert!(matches!(
            parse_cidr("10.1.2.3/8"),
            Err(CidrError::HostBits { .. })
        ));
        assert!(matches!(parse_cidr("10.0.0.0/33"), Err(CidrError::Syntax(_))));
        assert!(matches!(parse_cidr("localhost"), Err(CidrError::Syntax(_))));
    }

    #[test]
    fn bound_keys_need_a_source_inside() {
        let ten = [parse_cidr("10.0.0.0/8").unwrap(), parse_cidr("fd00::/8").unwrap()];
        let ip = |s: &str| Some(s.parse::<IpAddr>().unwrap());
        assert_eq!(allows(&[], None), Ok(()));
        assert_eq!(allows(&ten, ip("10.2.3.4")), Ok(()));
        assert_eq!(allows(&ten, ip("::ffff:10.2.3.4")), Ok(()));
        assert_eq!(allows(&ten, ip("fd12::1")), Ok(()));
        assert_eq!(allows(&ten, ip("127.0.0.1")), Err(SourceNotAllowed));
        assert_eq!(allows(&ten, ip("::1")), Err(SourceNotAllowed));
        assert_eq!(allows(&ten, None), Err(SourceNotAllowed));
    }
}
