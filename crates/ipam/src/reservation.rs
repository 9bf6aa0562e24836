//! Reserved address ranges (Calico's `IPReservation` `reservedCIDRs`): addresses IPAM
//! must never hand out automatically, merged into disjoint intervals per family.

use std::net::IpAddr;

use ipnet::IpNet;

use crate::ipmath::{self, IpFamily};

/// A set of reserved CIDRs, normalised to sorted, disjoint, inclusive intervals.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reservations {
    ranges: Vec<(IpFamily, u128, u128)>,
}

impl Reservations {
    /// Builds the set from any CIDRs (overlaps and host bits are fine).
    pub fn new(cidrs: impl IntoIterator<Item = IpNet>) -> Reservations {
        let mut v: Vec<(IpFamily, u128, u128)> = cidrs
            .into_iter()
            .map(|n| {
                (
                    IpFamily::of_net(&n),
                    ipmath::net_start(&n),
                    ipmath::net_end(&n),
                )
            })
            .collect();
        v.sort();
        let mut ranges: Vec<(IpFamily, u128, u128)> = Vec::with_capacity(v.len());
        for (f, s, e) in v {
            match ranges.last_mut() {
                Some((lf, _, le)) if *lf == f && s <= le.saturating_add(1) => *le = (*le).max(e),
                _ => ranges.push((f, s, e)),
            }
        }
        Reservations { ranges }
    }

    /// Whether nothing is reserved.
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// Whether `ip` is reserved.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let f = IpFamily::of_addr(&ip);
        let v = ipmath::to_u128(ip);
        self.ranges
            .iter()
            .any(|&(rf, s, e)| rf == f && s <= v && v <= e)
    }

    /// Whether every address of `cidr` is reserved (such a block is never claimed).
    pub fn covers(&self, cidr: &IpNet) -> bool {
        let f = IpFamily::of_net(cidr);
        let (s, e) = (ipmath::net_start(cidr), ipmath::net_end(cidr));
        // Intervals are merged, so one of them must hold the whole range.
        self.ranges
            .iter()
            .any(|&(rf, rs, re)| rf == f && rs <= s && e <= re)
    }

    /// How many addresses of `cidr` are reserved.
    pub fn count_within(&self, cidr: &IpNet) -> u128 {
        let f = IpFamily::of_net(cidr);
        let (s, e) = (ipmath::net_start(cidr), ipmath::net_end(cidr));
        self.ranges
            .iter()
            .filter(|&&(rf, rs, re)| rf == f && rs <= e && s <= re)
            .map(|&(_, rs, re)| (re.min(e) - rs.max(s)).saturating_add(1))
            .fold(0u128, u128::saturating_add)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(v: &[&str]) -> Reservations {
        Reservations::new(v.iter().map(|s| s.parse::<IpNet>().unwrap()))
    }

    #[test]
    fn merges_and_counts() {
        let res = r(&["10.0.0.0/25", "10.0.0.5/32", "10.0.0.64/26"]);
        let pool: IpNet = "10.0.0.0/24".parse().unwrap();
        assert_eq!(res.count_within(&pool), 128);
        assert!(res.covers(&"10.0.0.0/26".parse().unwrap()));
        assert!(!res.covers(&"10.0.0.128/26".parse().unwrap()));
        assert!(res.contains("10.0.0.100".parse().unwrap()));
        assert!(!res.contains("10.0.0.200".parse().unwrap()));
        let adjacent = r(&["10.0.0.0/26", "10.0.0.64/26"]);
        assert!(adjacent.covers(&"10.0.0.0/25".parse().unwrap()));
        let v6 = r(&["fd00::/120"]);
        assert!(!v6.contains("10.0.0.1".parse().unwrap()));
        assert_eq!(v6.count_within(&"fd00::/112".parse().unwrap()), 256);
    }
}
