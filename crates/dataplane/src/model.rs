//! Plain data the [`crate::Netlink`] trait speaks in: links, addresses and routes,
//! free of netlink message types so callers and fakes need no rtnetlink.

use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;

/// Route protocol number Tabby tags its routes with (Calico's 80), so the node
/// agent can tell them from others when it reconciles.
pub const TABBY_ROUTE_PROTOCOL: u8 = 80;

/// The main routing table.
pub const MAIN_TABLE: u32 = 254;

/// IPv4 or IPv6.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Family {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

impl Family {
    /// The family of `ip`.
    pub fn of(ip: &IpAddr) -> Family {
        if ip.is_ipv4() { Family::V4 } else { Family::V6 }
    }
}

/// A network interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    /// Interface index.
    pub index: u32,
    /// Name, e.g. `cali82111e10a96`.
    pub name: String,
    /// Link kind (`veth`, `bridge`, ...) when the kernel reports one.
    pub kind: Option<String>,
    /// Hardware address.
    pub mac: Option<[u8; 6]>,
    /// MTU.
    pub mtu: Option<u32>,
    /// Administratively up.
    pub up: bool,
}

/// Settings for [`crate::Netlink::set_link`]; `None` leaves a field alone.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LinkAttrs {
    /// New hardware address.
    pub mac: Option<[u8; 6]>,
    /// New MTU.
    pub mtu: Option<u32>,
    /// Bring up (`Some(true)`) or down.
    pub up: Option<bool>,
}

/// An address on a link.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Address {
    /// The link's index.
    pub index: u32,
    /// Address and prefix length.
    pub net: IpNet,
}

/// Route scope (the ones Tabby uses).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RouteScope {
    /// Global (`scope global`), the default for gatewayed routes.
    Universe,
    /// On-link (`scope link`).
    Link,
    /// Local to the host.
    Host,
    /// Anything else, by number.
    Other(u8),
}

/// A unicast route.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    /// Destination prefix.
    pub dst: IpNet,
    /// Next hop.
    pub gateway: Option<IpAddr>,
    /// Output interface index.
    pub oif: Option<u32>,
    /// Scope.
    pub scope: RouteScope,
    /// Protocol (`proto 80`); 0 lets the kernel pick (boot).
    pub protocol: u8,
    /// Table; [`MAIN_TABLE`] by default.
    pub table: u32,
}

impl Route {
    /// `dst dev <oif> scope link proto 80` in the main table.
    pub fn device(dst: IpNet, oif: u32) -> Route {
        Route {
            dst,
            gateway: None,
            oif: Some(oif),
            scope: RouteScope::Link,
            protocol: TABBY_ROUTE_PROTOCOL,
            table: MAIN_TABLE,
        }
    }

    /// `dst via <gw> dev <oif>` in the main table, protocol boot.
    pub fn via(dst: IpNet, gateway: IpAddr, oif: u32) -> Route {
        Route {
            dst,
            gateway: Some(gateway),
            oif: Some(oif),
            scope: RouteScope::Universe,
            protocol: 0,
            table: MAIN_TABLE,
        }
    }

    /// The family of the destination.
    pub fn family(&self) -> Family {
        Family::of(&self.dst.addr())
    }

    /// Same destination, gateway, interface and table (protocol and scope ignored):
    /// what the kernel treats as the same route when deleting.
    pub fn same_path(&self, other: &Route) -> bool {
        self.dst == other.dst
            && self.gateway == other.gateway
            && self.oif == other.oif
            && self.table == other.table
    }
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.dst)?;
        if let Some(gw) = self.gateway {
            write!(f, " via {gw}")?;
        }
        if let Some(oif) = self.oif {
            write!(f, " dev #{oif}")?;
        }
        if self.scope == RouteScope::Link {
            f.write_str(" scope link")?;
        }
        if self.protocol != 0 {
            write!(f, " proto {}", self.protocol)?;
        }
        if self.table != MAIN_TABLE {
            write!(f, " table {}", self.table)?;
        }
        Ok(())
    }
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 6 {
        return None;
    }
    let mut mac = [0u8; 6];
    for (m, p) in mac.iter_mut().zip(parts) {
        *m = u8::from_str_radix(p, 16).ok()?;
    }
    Some(mac)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_round_trip() {
        let m = [0xee; 6];
        assert_eq!(format_mac(&m), "ee:ee:ee:ee:ee:ee");
        assert_eq!(parse_mac("ee:ee:ee:ee:ee:ee"), Some(m));
        assert_eq!(parse_mac("ee:ee"), None);
        assert_eq!(parse_mac("zz:ee:ee:ee:ee:ee"), None);
    }

    #[test]
    fn route_display() {
        let r = Route::device("100.64.0.5/32".parse().unwrap(), 7);
        assert_eq!(r.to_string(), "100.64.0.5/32 dev #7 scope link proto 80");
    }
}
