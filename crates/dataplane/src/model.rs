//! Plain data the [`crate::Netlink`] trait speaks in: links, addresses, routes,
//! neighbours, FDB entries, VXLAN devices and monitor events, free of netlink
//! message types so callers and fakes need no rtnetlink.

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

/// What the kernel does with packets to a route's destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RouteKind {
    /// Forward them (`RTN_UNICAST`).
    Unicast,
    /// Drop them silently (`RTN_BLACKHOLE`, `ip route add blackhole ...`).
    Blackhole,
}

/// One next hop of an ECMP route (`nexthop via <gateway> [dev <oif>] [onlink]`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct NextHop {
    /// The gateway; an unspecified address (`0.0.0.0`, `::`) means a device-only hop.
    pub gateway: IpAddr,
    /// Output interface; `None` lets the kernel find it from the gateway.
    pub oif: Option<u32>,
    /// The gateway is on the link even without a matching subnet (`RTNH_F_ONLINK`).
    pub onlink: bool,
}

impl fmt::Display for NextHop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "nexthop")?;
        if !self.gateway.is_unspecified() {
            write!(f, " via {}", self.gateway)?;
        }
        if let Some(oif) = self.oif {
            write!(f, " dev #{oif}")?;
        }
        if self.onlink {
            f.write_str(" onlink")?;
        }
        Ok(())
    }
}

/// A unicast or blackhole route.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Route {
    /// Destination prefix.
    pub dst: IpNet,
    /// Next hop (`None` for device, blackhole and ECMP routes).
    pub gateway: Option<IpAddr>,
    /// Output interface index (`None` for blackhole and ECMP routes).
    pub oif: Option<u32>,
    /// Scope.
    pub scope: RouteScope,
    /// Protocol (`proto 80`); 0 lets the kernel pick (boot).
    pub protocol: u8,
    /// Table; [`MAIN_TABLE`] by default.
    pub table: u32,
    /// Unicast or blackhole.
    pub kind: RouteKind,
    /// The gateway is on the link even without a matching subnet (`onlink`).
    pub onlink: bool,
    /// ECMP next hops (`RTA_MULTIPATH`); when non-empty, `gateway` and `oif` are `None`.
    pub multipath: Vec<NextHop>,
    /// Priority (`metric`, `RTA_PRIORITY`); 0 leaves the kernel's default (0 for
    /// IPv4, 1024 for IPv6; see [`Route::effective_metric`]).
    pub metric: u32,
}

impl Route {
    /// The metric the kernel gives the route: as set, or its default when 0
    /// (1024 for IPv6, 0 for IPv4).
    pub fn effective_metric(&self) -> u32 {
        match (self.metric, self.dst.addr().is_ipv6()) {
            (0, true) => 1024,
            (m, _) => m,
        }
    }

    /// `dst dev <oif> scope link proto 80` in the main table.
    pub fn device(dst: IpNet, oif: u32) -> Route {
        Route {
            dst,
            gateway: None,
            oif: Some(oif),
            scope: RouteScope::Link,
            protocol: TABBY_ROUTE_PROTOCOL,
            table: MAIN_TABLE,
            kind: RouteKind::Unicast,
            onlink: false,
            multipath: Vec::new(),
            metric: 0,
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
            kind: RouteKind::Unicast,
            onlink: false,
            multipath: Vec::new(),
            metric: 0,
        }
    }

    /// `blackhole dst proto 80` in the main table (Calico's route for a block
    /// this node owns, so unallocated addresses in it are not routed elsewhere).
    pub fn blackhole(dst: IpNet) -> Route {
        Route {
            dst,
            gateway: None,
            oif: None,
            scope: RouteScope::Universe,
            protocol: TABBY_ROUTE_PROTOCOL,
            table: MAIN_TABLE,
            kind: RouteKind::Blackhole,
            onlink: false,
            multipath: Vec::new(),
            metric: 0,
        }
    }

    /// `dst via <gw> dev <oif> onlink proto 80` in the main table (the VXLAN and
    /// IPIP routes to other nodes' blocks: the gateway is not in a local subnet).
    pub fn via_onlink(dst: IpNet, gateway: IpAddr, oif: u32) -> Route {
        Route {
            onlink: true,
            protocol: TABBY_ROUTE_PROTOCOL,
            ..Route::via(dst, gateway, oif)
        }
    }

    /// An ECMP route `dst proto 80 nexthop ... nexthop ...` in the main table.
    /// With a single hop it is the plain route `dst via <gw> [dev <oif>] [onlink]`,
    /// which is what the kernel makes of it anyway.
    pub fn ecmp(dst: IpNet, hops: Vec<NextHop>) -> Route {
        let mut r = Route {
            dst,
            gateway: None,
            oif: None,
            scope: RouteScope::Universe,
            protocol: TABBY_ROUTE_PROTOCOL,
            table: MAIN_TABLE,
            kind: RouteKind::Unicast,
            onlink: false,
            multipath: hops,
            metric: 0,
        };
        if r.multipath.len() == 1 {
            let h = r.multipath.remove(0);
            r.gateway = (!h.gateway.is_unspecified()).then_some(h.gateway);
            r.oif = h.oif;
            r.onlink = h.onlink;
        }
        r
    }

    /// The family of the destination.
    pub fn family(&self) -> Family {
        Family::of(&self.dst.addr())
    }

    /// Same destination, kind, gateway, interface, next hops (in any order) and
    /// table (protocol, scope and the onlink flag ignored): what the kernel treats
    /// as the same route when deleting.
    pub fn same_path(&self, other: &Route) -> bool {
        self.dst == other.dst
            && self.kind == other.kind
            && self.gateway == other.gateway
            && self.oif == other.oif
            && self.table == other.table
            && same_hops(&self.multipath, &other.multipath)
    }
}

/// Equal as sets (the kernel keeps next hops in the order given, but the order
/// carries no meaning for forwarding).
fn same_hops(a: &[NextHop], b: &[NextHop]) -> bool {
    a.len() == b.len() && a.iter().all(|h| b.contains(h)) && b.iter().all(|h| a.contains(h))
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.kind == RouteKind::Blackhole {
            f.write_str("blackhole ")?;
        }
        write!(f, "{}", self.dst)?;
        if let Some(gw) = self.gateway {
            write!(f, " via {gw}")?;
        }
        if let Some(oif) = self.oif {
            write!(f, " dev #{oif}")?;
        }
        if self.onlink {
            f.write_str(" onlink")?;
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
        if self.metric != 0 {
            write!(f, " metric {}", self.metric)?;
        }
        for h in &self.multipath {
            write!(f, " {h}")?;
        }
        Ok(())
    }
}

/// A neighbour (ARP / NDP) entry: `ip neigh replace <ip> lladdr <mac> dev <index>`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Neighbour {
    /// The link's index.
    pub index: u32,
    /// The neighbour's address.
    pub ip: IpAddr,
    /// Its hardware address.
    pub mac: [u8; 6],
    /// `nud permanent` (never expires); otherwise `nud reachable`.
    pub permanent: bool,
}

/// A forwarding database entry of a VXLAN device pointing a MAC at a remote
/// tunnel endpoint: `bridge fdb replace <mac> dev <index> dst <dst>`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct FdbEntry {
    /// The VXLAN link's index.
    pub index: u32,
    /// The remote device's MAC.
    pub mac: [u8; 6],
    /// The remote tunnel endpoint.
    pub dst: IpAddr,
}

/// A VXLAN device: `ip link add <name> type vxlan id <vni> dstport <port>
/// [local <local>] [dev <parent>] [no]learning [address <mac>] [mtu <mtu>]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VxlanSpec {
    /// Interface name, e.g. `vxlan.calico`.
    pub name: String,
    /// VXLAN network identifier (Calico: 4096).
    pub vni: u32,
    /// UDP destination port (Calico: 4789).
    pub port: u16,
    /// Source address of the tunnel packets.
    pub local: Option<IpAddr>,
    /// The underlay link (`dev`) by index.
    pub parent: Option<u32>,
    /// Hardware address; the kernel picks a random one when `None`. Read back
    /// from the kernel it is always set.
    pub mac: Option<[u8; 6]>,
    /// MTU; the kernel derives it from the parent when `None`. Read back from
    /// the kernel it is always set.
    pub mtu: Option<u32>,
    /// Learn remote MACs from received packets (Calico turns this off and
    /// programs the FDB itself).
    pub learning: bool,
}

impl VxlanSpec {
    /// `name` with `vni`, the IANA port 4789, no learning and everything else unset.
    pub fn new(name: &str, vni: u32) -> VxlanSpec {
        VxlanSpec {
            name: name.to_owned(),
            vni,
            port: 4789,
            local: None,
            parent: None,
            mac: None,
            mtu: None,
            learning: false,
        }
    }
}

/// A change the kernel announced on a monitor connection ([`crate::events::monitor`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NetlinkEvent {
    /// A unicast or blackhole route was added, changed or deleted.
    Route {
        /// `RTM_DELROUTE` rather than `RTM_NEWROUTE`.
        deleted: bool,
        /// The route.
        route: Route,
    },
    /// A link appeared, changed (state, MTU, ...) or went away.
    Link {
        /// `RTM_DELLINK` rather than `RTM_NEWLINK`.
        deleted: bool,
        /// Its index.
        index: u32,
        /// Its name.
        name: String,
    },
    /// A neighbour or FDB entry of link `index` changed.
    Neighbour {
        /// `RTM_DELNEIGH` rather than `RTM_NEWNEIGH`.
        deleted: bool,
        /// The link's index.
        index: u32,
    },
    /// Anything else: routes of other kinds (local, broadcast, multicast), address
    /// changes, other message types.
    Other,
    /// Notifications were lost (the socket's buffer overflowed, or the kernel
    /// reported an error on it): the receiver should re-read the kernel.
    Lost,
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

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn hop(gw: &str, oif: Option<u32>) -> NextHop {
        NextHop {
            gateway: gw.parse().unwrap(),
            oif,
            onlink: true,
        }
    }

    #[test]
    fn route_display() {
        let r = Route::device(net("100.64.0.5/32"), 7);
        assert_eq!(r.to_string(), "100.64.0.5/32 dev #7 scope link proto 80");
        let r = Route::blackhole(net("100.64.0.0/26"));
        assert_eq!(r.to_string(), "blackhole 100.64.0.0/26 proto 80");
        let r = Route::via_onlink(net("100.64.1.0/26"), "198.18.0.2".parse().unwrap(), 3);
        assert_eq!(
            r.to_string(),
            "100.64.1.0/26 via 198.18.0.2 dev #3 onlink proto 80"
        );
        let r = Route::ecmp(
            net("100.64.2.0/26"),
            vec![hop("198.18.0.2", Some(3)), hop("198.18.0.3", None)],
        );
        assert_eq!(
            r.to_string(),
            "100.64.2.0/26 proto 80 nexthop via 198.18.0.2 dev #3 onlink nexthop via 198.18.0.3 onlink"
        );
    }

    #[test]
    fn constructors() {
        let b = Route::blackhole(net("2001:db8:1::/122"));
        assert_eq!(
            (b.kind, b.gateway, b.oif, b.scope, b.protocol, b.table),
            (
                RouteKind::Blackhole,
                None,
                None,
                RouteScope::Universe,
                80,
                MAIN_TABLE
            )
        );
        assert_eq!(b.family(), Family::V6);
        let o = Route::via_onlink(net("100.64.1.0/26"), "198.18.0.2".parse().unwrap(), 3);
        assert!(o.onlink && o.multipath.is_empty());
        assert_eq!(
            (o.kind, o.scope, o.protocol),
            (RouteKind::Unicast, RouteScope::Universe, 80)
        );
        for r in [
            Route::device(o.dst, 3),
            Route::via(o.dst, "198.18.0.2".parse().unwrap(), 3),
        ] {
            assert_eq!(r.kind, RouteKind::Unicast);
            assert!(!r.onlink && r.multipath.is_empty());
        }
        let e = Route::ecmp(
            o.dst,
            vec![hop("198.18.0.2", Some(3)), hop("198.18.0.3", Some(4))],
        );
        assert_eq!((e.gateway, e.oif, e.multipath.len()), (None, None, 2));
        // One hop: a plain onlink route.
        let one = Route::ecmp(o.dst, vec![hop("198.18.0.2", Some(3))]);
        assert_eq!(one, o);
    }

    #[test]
    fn same_path_compares_kind_and_hops_as_a_set() {
        let dst = net("100.64.2.0/26");
        let (a, b) = (hop("198.18.0.2", Some(3)), hop("198.18.0.3", Some(4)));
        let ab = Route::ecmp(dst, vec![a.clone(), b.clone()]);
        let ba = Route::ecmp(dst, vec![b.clone(), a.clone()]);
        assert!(ab.same_path(&ba));
        let a_only = Route::ecmp(dst, vec![a.clone(), a.clone()]);
        assert!(!ab.same_path(&a_only));
        let c = Route::ecmp(dst, vec![a, hop("198.18.0.4", Some(4))]);
        assert!(!ab.same_path(&c));
        // Blackhole and unicast to the same prefix differ.
        let bh = Route::blackhole(dst);
        let mut uni = bh.clone();
        uni.kind = RouteKind::Unicast;
        assert!(!bh.same_path(&uni));
        // Protocol, scope and onlink do not matter.
        let mut o = Route::via_onlink(dst, "198.18.0.2".parse().unwrap(), 3);
        let plain = Route::via(dst, "198.18.0.2".parse().unwrap(), 3);
        assert!(o.same_path(&plain));
        o.scope = RouteScope::Link;
        assert!(o.same_path(&plain));
    }

    #[test]
    fn vxlan_spec_defaults() {
        let v = VxlanSpec::new("vxlan.calico", 4096);
        assert_eq!(
            (v.port, v.learning, v.local, v.mac),
            (4789, false, None, None)
        );
    }
}
