//! Address arithmetic shared by blocks, pools and reservations: addresses as `u128`
//! offsets, block CIDRs for an address, and the IP family of a network.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

/// IPv4 or IPv6. Keys, pools and assignments are always per family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum IpFamily {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

impl IpFamily {
    /// The family of an address.
    pub fn of_addr(ip: &IpAddr) -> IpFamily {
        match ip {
            IpAddr::V4(_) => IpFamily::V4,
            IpAddr::V6(_) => IpFamily::V6,
        }
    }

    /// The family of a network.
    pub fn of_net(net: &IpNet) -> IpFamily {
        match net {
            IpNet::V4(_) => IpFamily::V4,
            IpNet::V6(_) => IpFamily::V6,
        }
    }

    /// 4 or 6, as Calico's `IPVersion`.
    pub fn version(self) -> u8 {
        match self {
            IpFamily::V4 => 4,
            IpFamily::V6 => 6,
        }
    }

    /// Address length in bits (32 or 128).
    pub fn bits(self) -> u8 {
        match self {
            IpFamily::V4 => 32,
            IpFamily::V6 => 128,
        }
    }

    /// The lower-case name used in datastore keys (`ipv4` / `ipv6`).
    pub fn key_part(self) -> &'static str {
        match self {
            IpFamily::V4 => "ipv4",
            IpFamily::V6 => "ipv6",
        }
    }

    /// Both families, IPv4 first.
    pub fn both() -> [IpFamily; 2] {
        [IpFamily::V4, IpFamily::V6]
    }
}

impl fmt::Display for IpFamily {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IpFamily::V4 => "IPv4",
            IpFamily::V6 => "IPv6",
        })
    }
}

/// The address as an unsigned integer (IPv4 in the low 32 bits).
pub(crate) fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

/// The reverse of [`to_u128`]. IPv4 values are truncated to 32 bits.
pub(crate) fn from_u128(v: u128, family: IpFamily) -> IpAddr {
    match family {
        IpFamily::V4 => IpAddr::V4(Ipv4Addr::from(v as u32)),
        IpFamily::V6 => IpAddr::V6(Ipv6Addr::from(v)),
    }
}

/// Number of host bits of a network (`32 - prefix` or `128 - prefix`).
pub(crate) fn host_bits(net: &IpNet) -> u32 {
    u32::from(net.max_prefix_len() - net.prefix_len())
}

/// First address of the network, as an integer.
pub(crate) fn net_start(net: &IpNet) -> u128 {
    to_u128(net.network())
}

/// Last address of the network, as an integer.
pub(crate) fn net_end(net: &IpNet) -> u128 {
    to_u128(net.broadcast())
}

/// Number of addresses in the network (saturating at `u128::MAX` for `::/0`).
pub(crate) fn net_size(net: &IpNet) -> u128 {
    let bits = host_bits(net);
    if bits >= 128 {
        u128::MAX
    } else {
        1u128 << bits
    }
}

/// Builds a network from its first address and prefix length.
pub(crate) fn make_net(start: u128, prefix: u8, family: IpFamily) -> IpNet {
    match from_u128(start, family) {
        IpAddr::V4(a) => IpNet::V4(Ipv4Net::new(a, prefix).expect("prefix checked by caller")),
        IpAddr::V6(a) => IpNet::V6(Ipv6Net::new(a, prefix).expect("prefix checked by caller")),
    }
    .trunc()
}

/// The block of `block_size` prefix length that holds `ip`, e.g. `10.0.0.64/26` for
/// `10.0.0.70`. `block_size` must not exceed the family's address length.
pub fn block_cidr_for(ip: IpAddr, block_size: u8) -> IpNet {
    let family = IpFamily::of_addr(&ip);
    let prefix = block_size.min(family.bits());
    make_net(to_u128(ip), prefix, family)
}

/// Whether `inner` lies entirely inside `outer` (same family).
pub(crate) fn net_within(inner: &IpNet, outer: &IpNet) -> bool {
    IpFamily::of_net(inner) == IpFamily::of_net(outer)
        && inner.prefix_len() >= outer.prefix_len()
        && outer.trunc().contains(&inner.network())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_for_address() {
        let ip: IpAddr = "10.0.0.70".parse().unwrap();
        assert_eq!(block_cidr_for(ip, 26).to_string(), "10.0.0.64/26");
        let ip: IpAddr = "fd80::1:5".parse().unwrap();
        assert_eq!(block_cidr_for(ip, 122).to_string(), "fd80::1:0/122");
        assert_eq!(block_cidr_for(ip, 128).to_string(), "fd80::1:5/128");
    }

    #[test]
    fn sizes() {
        let n: IpNet = "10.0.0.0/24".parse().unwrap();
        assert_eq!(net_size(&n), 256);
        assert_eq!(net_end(&n) - net_start(&n), 255);
        let n: IpNet = "::/0".parse().unwrap();
        assert_eq!(net_size(&n), u128::MAX);
        let inner: IpNet = "10.0.0.64/26".parse().unwrap();
        let outer: IpNet = "10.0.0.1/24".parse().unwrap();
        assert!(net_within(&inner, &outer));
        assert!(!net_within(&outer, &inner));
    }
}
