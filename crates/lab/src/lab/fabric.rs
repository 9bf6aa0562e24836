//! The ToR/spine topologies as data: racks, their ToR routers, the spine (a bridge or
//! spine routers), every router's BGP neighbours and the Calico resources that peer
//! the nodes with their ToR. Pure, like [`super::layout`], which calls it.
//!
//! Addresses: rack `r` (1..) is bridge `rack<r>` with 198.18.r.0/24; its nodes are
//! 198.18.r.i (`i` the node's number, `n1`.. over the racks in order, the same number
//! in each rack) and its ToR `tor<r>` is 198.18.r.254, the nodes' gateway. The L2
//! spine is bridge `spine` with 198.18.200.0/24, ToR `r` at 198.18.200.r. Spine
//! routers `spine<s>` reach ToR `r` over a point-to-point veth, 198.19.s.(2r)/31 on the
//! ToR (`sp<s>`) and 198.19.s.(2r+1)/31 on the spine (`tor<r>`). Nodes are labelled
//! `rack=r<r>`; one BGPPeer per rack (`nodeSelector: rack == 'r<r>'`) peers them with
//! their ToR, the mesh is off.
//!
//! The designs (Calico's "AS per rack", "AS per compute server" and "downward
//! default"):
//! - `as-per-rack-l2-spine`: rack `r` is AS 65000+r, its nodes (`spec.bgp.asNumber`)
//!   and its ToR alike; the ToR is the route reflector of its rack's nodes (iBGP,
//!   `next-hop-self` for routes learned over eBGP only, so rack-mates keep each
//!   other's address as next hop); the ToRs are an eBGP full mesh across the spine
//!   bridge.
//! - `as-per-rack-l3-spine`: the same racks; each ToR peers eBGP with every spine
//!   router (AS 65000, shared), no ToR-to-ToR sessions.
//! - `as-per-server`: node `n<i>` is AS 4200000000+i (RFC 6996 4-octet private), eBGP
//!   to its ToR (AS 65000+r); ToRs eBGP to the spines as above.
//! - `downward-default`: the nodes share the cluster's AS 64512, the ToRs share AS
//!   65100, the spines AS 65000. Each spine originates a default route and sends its
//!   ToRs only that; each ToR sends its nodes only the default (its next hop the
//!   ToR) and the spines everything but the default; the nodes get no static default
//!   route, theirs is the one from BGP. So a node holds its own blocks
//!   and the default, a ToR its rack's blocks and the default, a spine every block,
//!   as the planner says. No `allowas-in` or `as-override` is needed: no route ever
//!   has to cross a router of the AS it came from (the ToRs' shared AS would drop a
//!   rack's blocks coming back from a spine, but the spines send down only the
//!   default).

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use super::layout::{Bridge, Leg, Node};
use super::spec::{ASN, LabSpec, RouterKind, Topology};
use crate::plan::Role;

/// The spine routers' AS (shared: a ToR's routes re-advertised by another ToR loop).
pub const SPINE_ASN: u32 = 65000;
/// The ToRs' shared AS in `downward-default`.
pub const DOWNWARD_TOR_ASN: u32 = 65100;
/// Node `n<i>`'s AS in `as-per-server` is this plus `i`.
pub const SERVER_ASN_BASE: u32 = 4_200_000_000;
/// The third octet of the L2 spine's subnet.
pub const L2_SPINE_NET: u8 = 200;
/// Host `.254` of a rack: its ToR, the nodes' gateway.
pub const TOR_HOST: u8 = 254;

/// Rack `r`'s AS in the AS-per-rack designs (and its ToR's in `as-per-server`).
pub fn rack_asn(r: u32) -> u32 {
    65000 + r
}

fn net(addr: Ipv4Addr, len: u8) -> Ipv4Net {
    Ipv4Net::new(addr, len).expect("prefix lengths here are <= 32")
}

/// Rack `r`'s subnet.
pub fn rack_subnet(r: u32) -> Ipv4Net {
    net(Ipv4Addr::new(198, 18, r as u8, 0), 24)
}

/// Rack `r`'s bridge.
pub fn rack_bridge(r: u32) -> String {
    format!("rack{r}")
}

/// Rack `r`'s ToR address.
pub fn tor_addr(r: u32) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, r as u8, TOR_HOST)
}

/// The rack of node `i` (1-based) when `n` nodes fill `racks` racks in order.
pub fn rack_of(i: u32, n: u32, racks: u32) -> u32 {
    let per = n.div_ceil(racks).max(1);
    (i - 1) / per + 1
}

/// What a router sends a neighbour.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Export {
    /// Every route it has.
    All,
    /// Only the default route.
    DefaultOnly,
    /// Everything but the default route.
    NoDefault,
}

/// One BGP neighbour of a router.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Neighbor {
    /// The lab device it is (`n1`, `tor2`, `spine1`).
    pub name: String,
    /// Its address.
    pub address: Ipv4Addr,
    /// Its AS.
    pub asn: u32,
    /// The router's own address on the link to it.
    pub local: Ipv4Addr,
    /// Whether the router reflects routes to it (an iBGP rack node).
    pub rr_client: bool,
    /// Whether routes learned over eBGP are sent with the router as next hop (routes
    /// reflected between iBGP clients keep theirs).
    pub next_hop_self: bool,
    /// What it is sent.
    pub export: Export,
}

/// A ToR or spine router.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FabricRouter {
    /// `tor<r>` or `spine<s>`.
    pub name: String,
    /// Its namespace.
    pub ns: String,
    /// [`Role::Tor`] or [`Role::Spine`].
    pub role: Role,
    /// Its AS.
    pub asn: u32,
    /// Its router ID (its first address).
    pub router_id: Ipv4Addr,
    /// Its links to bridges (a ToR's rack, the L2 spine).
    pub legs: Vec<Leg>,
    /// Whether it originates a default route (`downward-default` spines).
    pub originate_default: bool,
    /// Its BGP neighbours.
    pub neighbors: Vec<Neighbor>,
    /// BFD on every session ([`LabSpec::bfd`]).
    pub bfd: bool,
}

/// A point-to-point veth between a ToR and a spine router.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct P2pLink {
    /// The ToR's namespace.
    pub tor_ns: String,
    /// The ToR's interface and address.
    pub tor_if: String,
    /// The ToR's address.
    pub tor_addr: Ipv4Net,
    /// The spine's namespace.
    pub spine_ns: String,
    /// The spine's interface.
    pub spine_if: String,
    /// The spine's address.
    pub spine_addr: Ipv4Net,
}

/// The ToR side of the link between ToR `r` and spine `s`.
pub fn p2p_tor(r: u32, s: u32) -> Ipv4Addr {
    Ipv4Addr::new(198, 19, s as u8, (2 * r) as u8)
}

/// The spine side of the link between ToR `r` and spine `s`.
pub fn p2p_spine(r: u32, s: u32) -> Ipv4Addr {
    Ipv4Addr::new(198, 19, s as u8, (2 * r + 1) as u8)
}

/// A fabric topology laid out.
pub struct FabricLayout {
    /// The rack bridges and, for the L2 spine, the spine bridge.
    pub bridges: Vec<Bridge>,
    /// The nodes, rack by rack.
    pub nodes: Vec<Node>,
    /// ToRs then spines.
    pub routers: Vec<FabricRouter>,
    /// ToR-to-spine links.
    pub links: Vec<P2pLink>,
}

/// The AS of node `i` and of rack `r`'s ToR under `t`.
fn asns(t: Topology, i: u32, r: u32) -> (u32, u32) {
    match t {
        Topology::AsPerRackL2Spine | Topology::AsPerRackL3Spine => (rack_asn(r), rack_asn(r)),
        Topology::AsPerServer => (SERVER_ASN_BASE + i, rack_asn(r)),
        _ => (ASN, DOWNWARD_TOR_ASN),
    }
}

/// Lays out the racks, routers and links of a fabric topology.
pub fn layout(spec: &LabSpec, ns: &dyn Fn(&str) -> String) -> FabricLayout {
    let t = spec.topology;
    let racks = 1..=spec.racks;
    let spines = if t.has_spines() { spec.spines } else { 0 };
    let mut bridges: Vec<Bridge> = racks
        .clone()
        .map(|r| Bridge {
            name: rack_bridge(r),
            subnet: rack_subnet(r),
            address: None,
        })
        .collect();
    if !t.has_spines() {
        bridges.push(Bridge {
            name: "spine".into(),
            subnet: net(Ipv4Addr::new(198, 18, L2_SPINE_NET, 0), 24),
            address: None,
        });
    }
    let mut nodes = Vec::new();
    for i in 1..=spec.nodes {
        let r = rack_of(i, spec.nodes, spec.racks);
        let name = format!("n{i}");
        let (node_asn, _) = asns(t, i, r);
        nodes.push(Node {
            ns: ns(&name),
            leg: Leg {
                ifname: "eth0".into(),
                address: net(Ipv4Addr::new(198, 18, r as u8, i as u8), 24),
                bridge: rack_bridge(r),
                port: name.clone(),
            },
            more_legs: Vec::new(),
            // Downward default: the default route is the one BGP brings from the
            // ToR (a static one, identical, would keep the agent from installing it).
            gateways: if t == Topology::DownwardDefault {
                Vec::new()
            } else {
                vec![tor_addr(r)]
            },
            route_reflector: false,
            cluster_id: None,
            rack: Some(r),
            // The cluster's AS is inherited, as Calico nodes do without one of their own.
            asn: (node_asn != ASN).then_some(node_asn),
            name,
        });
    }
    let mut routers = Vec::new();
    let mut links = Vec::new();
    let ebgp_export_down = if t == Topology::DownwardDefault {
        Export::DefaultOnly
    } else {
        Export::All
    };
    let up_export = if t == Topology::DownwardDefault {
        Export::NoDefault
    } else {
        Export::All
    };
    for r in racks.clone() {
        let name = format!("tor{r}");
        let (_, tor_asn) = asns(t, 0, r);
        let mut legs = vec![Leg {
            ifname: "eth0".into(),
            address: net(tor_addr(r), 24),
            bridge: rack_bridge(r),
            port: name.clone(),
        }];
        let mut neighbors: Vec<Neighbor> = nodes
            .iter()
            .filter(|n| n.rack == Some(r))
            .map(|n| {
                let asn = n.asn.unwrap_or(ASN);
                let ibgp = asn == tor_asn;
                Neighbor {
                    name: n.name.clone(),
                    address: n.leg.address.addr(),
                    asn,
                    local: tor_addr(r),
                    rr_client: ibgp,
                    next_hop_self: true,
                    export: ebgp_export_down,
                }
            })
            .collect();
        if t.has_spines() {
            for s in 1..=spines {
                neighbors.push(Neighbor {
                    name: format!("spine{s}"),
                    address: p2p_spine(r, s),
                    asn: SPINE_ASN,
                    local: p2p_tor(r, s),
                    rr_client: false,
                    next_hop_self: false,
                    export: up_export,
                });
                links.push(P2pLink {
                    tor_ns: ns(&name),
                    tor_if: format!("sp{s}"),
                    tor_addr: net(p2p_tor(r, s), 31),
                    spine_ns: ns(&format!("spine{s}")),
                    spine_if: name.clone(),
                    spine_addr: net(p2p_spine(r, s), 31),
                });
            }
        } else {
            let spine_addr = |k: u32| Ipv4Addr::new(198, 18, L2_SPINE_NET, k as u8);
            legs.push(Leg {
                ifname: "sp0".into(),
                address: net(spine_addr(r), 24),
                bridge: "spine".into(),
                port: format!("{name}s"),
            });
            for other in racks.clone().filter(|&o| o != r) {
                neighbors.push(Neighbor {
                    name: format!("tor{other}"),
                    address: spine_addr(other),
                    asn: asns(t, 0, other).1,
                    local: spine_addr(r),
                    rr_client: false,
                    next_hop_self: false,
                    export: Export::All,
                });
            }
        }
        routers.push(FabricRouter {
            ns: ns(&name),
            role: Role::Tor,
            asn: tor_asn,
            router_id: tor_addr(r),
            legs,
            originate_default: false,
            neighbors,
            name,
            bfd: spec.bfd,
        });
    }
    for s in 1..=spines {
        let name = format!("spine{s}");
        let neighbors = racks
            .clone()
            .map(|r| Neighbor {
                name: format!("tor{r}"),
                address: p2p_tor(r, s),
                asn: asns(t, 0, r).1,
                local: p2p_spine(r, s),
                rr_client: false,
                next_hop_self: false,
                export: ebgp_export_down,
            })
            .collect();
        routers.push(FabricRouter {
            ns: ns(&name),
            role: Role::Spine,
            asn: SPINE_ASN,
            router_id: p2p_spine(1, s),
            legs: Vec::new(),
            originate_default: t == Topology::DownwardDefault,
            neighbors,
            name,
            bfd: spec.bfd,
        });
    }
    FabricLayout {
        bridges,
        nodes,
        routers,
        links,
    }
}

/// The resources peering every rack's nodes with its ToR (the pool and the
/// BGPConfiguration, mesh off, come first from [`super::layout::resources`]).
pub fn resources(spec: &LabSpec) -> String {
    let mut y = String::new();
    for r in 1..=spec.racks {
        let (node_asn, tor_asn) = asns(spec.topology, 1, r);
        // FRR runs BFD to an iBGP peer as multihop until a BGP session shows the
        // peer is directly connected: the nodes must not wait for BFD first.
        let bfd = match (spec.bfd, spec.router) {
            (false, _) => String::new(),
            (true, RouterKind::Frr) if node_asn == tor_asn => {
                "annotations: {tabby.dev/bfd: \"on,no-wait\"}, ".to_string()
            }
            (true, _) => "annotations: {tabby.dev/bfd: \"on\"}, ".to_string(),
        };
        y.push_str(&format!(
            "---
apiVersion: projectcalico.org/v3
kind: BGPPeer
metadata: {{{bfd}name: rack-r{r}-tor}}
spec: {{nodeSelector: \"rack == 'r{r}'\", peerIP: \"{}\", asNumber: {tor_asn}}}
",
            tor_addr(r)
        ));
    }
    y
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn spec(t: Topology, nodes: u32, racks: u32, spines: u32) -> LabSpec {
        let mut s = LabSpec::new("f1", Path::new("/run/tl"));
        s.topology = t;
        s.nodes = nodes;
        s.racks = racks;
        s.spines = spines;
        s
    }

    fn ns(s: &str) -> String {
        format!("tl-f1-{s}")
    }

    #[test]
    fn racks_fill_in_order() {
        let racks: Vec<u32> = (1..=6).map(|i| rack_of(i, 6, 3)).collect();
        assert_eq!(racks, [1, 1, 2, 2, 3, 3]);
        assert_eq!(rack_of(1, 1, 1), 1);
    }

    #[test]
    fn l2_spine() {
        let f = layout(&spec(Topology::AsPerRackL2Spine, 4, 2, 1), &ns);
        assert_eq!(f.bridges.len(), 3);
        assert_eq!(f.bridges[2].name, "spine");
        assert!(f.links.is_empty());
        let n3 = &f.nodes[2];
        assert_eq!(n3.leg.address.to_string(), "198.18.2.3/24");
        assert_eq!(n3.gateways, [Ipv4Addr::new(198, 18, 2, 254)]);
        assert_eq!((n3.rack, n3.asn), (Some(2), Some(65002)));
        assert_eq!(f.routers.len(), 2);
        let tor1 = &f.routers[0];
        assert_eq!(tor1.asn, 65001);
        let names: Vec<&str> = tor1.neighbors.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["n1", "n2", "tor2"]);
        assert!(tor1.neighbors[0].rr_client && tor1.neighbors[0].next_hop_self);
        let tor2 = &tor1.neighbors[2];
        assert_eq!(
            (tor2.address, tor2.asn, tor2.local),
            (
                Ipv4Addr::new(198, 18, 200, 2),
                65002,
                Ipv4Addr::new(198, 18, 200, 1)
            )
        );
        assert!(!tor2.rr_client);
        assert_eq!(tor1.legs[1].port, "tor1s");
    }

    #[test]
    fn l3_spine_and_as_per_server() {
        let f = layout(&spec(Topology::AsPerServer, 4, 2, 2), &ns);
        assert_eq!(f.bridges.len(), 2);
        assert_eq!(f.routers.len(), 4);
        assert_eq!(f.links.len(), 4);
        assert_eq!(f.nodes[3].asn, Some(4_200_000_004));
        let tor2 = &f.routers[1];
        let n3 = &tor2.neighbors[0];
        assert!(!n3.rr_client, "eBGP to the node");
        let sp2 = &tor2.neighbors[3];
        assert_eq!(
            (sp2.name.as_str(), sp2.address, sp2.local, sp2.asn),
            (
                "spine2",
                Ipv4Addr::new(198, 19, 2, 5),
                Ipv4Addr::new(198, 19, 2, 4),
                SPINE_ASN
            )
        );
        let spine2 = &f.routers[3];
        assert_eq!(spine2.role, Role::Spine);
        assert_eq!(spine2.neighbors.len(), 2);
        assert_eq!(spine2.neighbors[1].asn, 65002);
        let l = &f.links[3];
        assert_eq!(
            (l.tor_ns.as_str(), l.tor_if.as_str(), l.spine_if.as_str()),
            ("tl-f1-tor2", "sp2", "tor2")
        );
        assert_eq!(l.spine_addr.to_string(), "198.19.2.5/31");
    }

    #[test]
    fn downward_default() {
        let s = spec(Topology::DownwardDefault, 4, 2, 1);
        let f = layout(&s, &ns);
        assert!(f.nodes.iter().all(|n| n.asn.is_none()), "the cluster's AS");
        assert!(
            f.nodes.iter().all(|n| n.gateways.is_empty()),
            "BGP's default"
        );
        let tor1 = &f.routers[0];
        assert_eq!(tor1.asn, DOWNWARD_TOR_ASN);
        assert_eq!(tor1.neighbors[0].export, Export::DefaultOnly);
        assert_eq!(tor1.neighbors[2].export, Export::NoDefault);
        let spine = &f.routers[2];
        assert!(spine.originate_default);
        assert_eq!(spine.neighbors[0].export, Export::DefaultOnly);
        let y = resources(&s);
        assert!(
            y.contains("nodeSelector: \"rack == 'r2'\", peerIP: \"198.18.2.254\", asNumber: 65100"),
            "{y}"
        );
        assert_eq!(
            tabby_api::load::parse_documents(&y, "x.yaml")
                .unwrap()
                .len(),
            2
        );
    }
}
