//! Address and name checks: tests may only use 198.18.0.0/15 (nodes, fabric),
//! 100.64.0.0/10 (pods), 2001:db8::/32 and loopback/link-local, and interface
//! names must fit the kernel's 15-byte limit.

use std::net::IpAddr;

use ipnet::IpNet;

use crate::error::{Error, Result};

/// Longest interface name the kernel accepts (IFNAMSIZ - 1).
pub const MAX_IFNAME: usize = 15;

/// The ranges test traffic may use.
pub fn allowed_ranges() -> [IpNet; 3] {
    [
        "198.18.0.0/15".parse().expect("static net"),
        "100.64.0.0/10".parse().expect("static net"),
        "2001:db8::/32".parse().expect("static net"),
    ]
}

/// True if `addr` lies in a test range, or is loopback / IPv6 link-local.
pub fn is_allowed(addr: IpAddr) -> bool {
    if addr.is_loopback() {
        return true;
    }
    if let IpAddr::V6(v6) = addr
        && (v6.segments()[0] & 0xffc0) == 0xfe80
    {
        return true;
    }
    allowed_ranges().iter().any(|n| n.contains(&addr))
}

/// Parses `s` as an address with prefix length in a test range; `what` names
/// the argument in the error.
pub fn parse_net(what: &str, s: &str) -> Result<IpNet> {
    let net: IpNet = s
        .parse()
        .map_err(|e| Error::invalid(what, format!("{s:?} is not an address/prefix: {e}")))?;
    check_net(what, net)?;
    Ok(net)
}

/// Rejects networks outside the test ranges (the whole network must be inside).
pub fn check_net(what: &str, net: IpNet) -> Result<()> {
    // A default route is an instruction, not a destination: announcing one sends
    // nothing anywhere (tests still only send to the test ranges).
    let default = net.prefix_len() == 0;
    let inside = default || (is_allowed(net.network()) && is_allowed(net.broadcast()));
    if inside {
        Ok(())
    } else {
        Err(Error::invalid(
            what,
            format!("{net} is outside 198.18.0.0/15, 100.64.0.0/10 and 2001:db8::/32"),
        ))
    }
}

/// Parses a bare address in a test range.
pub fn parse_addr(what: &str, s: &str) -> Result<IpAddr> {
    let a: IpAddr = s
        .parse()
        .map_err(|e| Error::invalid(what, format!("{s:?} is not an address: {e}")))?;
    check_addr(what, a)?;
    Ok(a)
}

/// Rejects an address outside the test ranges.
pub fn check_addr(what: &str, a: IpAddr) -> Result<()> {
    if is_allowed(a) {
        Ok(())
    } else {
        Err(Error::invalid(
            what,
            format!("{a} is outside the test ranges"),
        ))
    }
}

/// Checks an interface name: 1..=15 bytes, no '/', whitespace or ':'.
pub fn check_ifname(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > MAX_IFNAME {
        return Err(Error::invalid(
            "interface name",
            format!("{name:?} must be 1..={MAX_IFNAME} bytes, is {}", name.len()),
        ));
    }
    if name
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace())
    {
        return Err(Error::invalid(
            "interface name",
            format!("{name:?} contains '/', ':' or space"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert!(parse_net("a", "198.18.3.1/24").is_ok());
        assert!(parse_net("a", "198.19.255.1/32").is_ok());
        assert!(parse_net("a", "100.64.0.0/10").is_ok());
        assert!(parse_net("a", "2001:db8:1::1/64").is_ok());
        assert!(parse_addr("a", "fe80::1").is_ok());
        assert!(parse_addr("a", "127.0.0.1").is_ok());
        let e = parse_net("veth a", "10.0.0.1/24").unwrap_err().to_string();
        assert!(e.contains("veth a") && e.contains("10.0.0.1/24"), "{e}");
        assert!(
            parse_net("a", "198.16.0.0/13").is_err(),
            "network larger than the range"
        );
        assert!(parse_addr("a", "8.8.8.8").is_err());
        assert!(parse_net("a", "2001:db9::/64").is_err());
        assert!(parse_net("a", "nonsense").is_err());
    }

    #[test]
    fn ifnames() {
        assert!(check_ifname("eth0").is_ok());
        assert!(check_ifname("abcdefghijklmno").is_ok());
        assert!(check_ifname("abcdefghijklmnop").is_err());
        assert!(check_ifname("").is_err());
        assert!(check_ifname("a/b").is_err());
    }
}
