//! The node's desired data plane, computed purely from a store snapshot, the kernel's
//! interface list and the routes BGP has learned: workload routes, blackholes for
//! affine blocks, routes to remote blocks (native or over VXLAN), the VXLAN device
//! with its neighbour and FDB entries, the prefixes to export over BGP, natOutgoing
//! sets and the pod MTU. Felix's route, VXLAN and masquerade managers in one function.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};

use ipnet::IpNet;
use tabby_api::ippool::EncapMode;
use tabby_dataplane::{NextHop, Route, VxlanSpec};

use crate::nat::NatInputs;

/// Calico's VXLAN device name (IPv4).
pub const VXLAN_DEVICE: &str = "vxlan.calico";
/// Calico's VXLAN network identifier.
pub const VXLAN_VNI: u32 = 4096;
/// The IANA VXLAN port Calico uses.
pub const VXLAN_PORT: u16 = 4789;
/// VXLAN over IPv4 costs 50 bytes of every packet.
pub const VXLAN_OVERHEAD: u32 = 50;
/// IPIP costs 20.
pub const IPIP_OVERHEAD: u32 = 20;

/// A node as the data plane sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeInfo {
    /// Node name.
    pub name: String,
    /// IPv4 address with its subnet prefix (`spec.bgp.ipv4Address`).
    pub ipv4: Option<IpNet>,
    /// IPv6 address with its prefix.
    pub ipv6: Option<IpNet>,
    /// VXLAN tunnel address (`spec.ipv4VXLANTunnelAddr`).
    pub vxlan_tunnel_ip: Option<Ipv4Addr>,
    /// VXLAN tunnel MAC (`spec.vxlanTunnelMACAddr`, else derived from the name).
    pub vxlan_mac: [u8; 6],
}

/// An IP pool's routing settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolInfo {
    /// Pool name.
    pub name: String,
    /// Its CIDR.
    pub cidr: IpNet,
    /// `ipipMode`.
    pub ipip: EncapMode,
    /// `vxlanMode`.
    pub vxlan: EncapMode,
    /// `natOutgoing`.
    pub nat_outgoing: bool,
    /// `disabled`.
    pub disabled: bool,
    /// `disableBGPExport`.
    pub disable_bgp_export: bool,
}

/// An IPAM block and the host it is affine to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockInfo {
    /// The block's CIDR.
    pub cidr: IpNet,
    /// Affine host (`host:<name>` affinity), if any.
    pub host: Option<String>,
}

/// A workload endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkloadInfo {
    /// `<namespace>/<name>` for messages.
    pub id: String,
    /// The node it runs on.
    pub node: String,
    /// Host-side interface name (`cali...`).
    pub interface: String,
    /// Its addresses (/32 or /128).
    pub ips: Vec<IpNet>,
}

/// A prefix to advertise with the communities `prefixAdvertisements` give it.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Advertisement {
    /// Standard communities (`a:b` as `a << 16 | b`).
    pub communities: Vec<u32>,
    /// Large communities.
    pub large_communities: Vec<(u32, u32, u32)>,
}

/// Everything the computation reads from the store.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Every node.
    pub nodes: Vec<NodeInfo>,
    /// Every IP pool.
    pub pools: Vec<PoolInfo>,
    /// Every IPAM block.
    pub blocks: Vec<BlockInfo>,
    /// Every workload endpoint (all nodes).
    pub workloads: Vec<WorkloadInfo>,
    /// BGPConfiguration serviceClusterIPs and serviceExternalIPs to advertise.
    pub service_cidrs: Vec<IpNet>,
    /// BGPConfiguration prefixAdvertisements, resolved to community values.
    pub prefix_communities: Vec<(IpNet, Advertisement)>,
}

/// Agent settings that shape the result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// This node's name.
    pub node: String,
    /// Whether the kernel can make IPIP links.
    pub ipip_supported: bool,
    /// MTU of the host's uplink.
    pub host_mtu: u32,
    /// Pod MTU override (FelixConfiguration `mtu`-style); `None` = computed.
    pub mtu_override: Option<u32>,
    /// Whether BGP runs (so `Never` pools are reachable at all).
    pub bgp_enabled: bool,
}

/// What the kernel knows that the computation needs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KernelView {
    /// Interface name to index.
    pub links: BTreeMap<String, u32>,
    /// Index of the interface holding the node's IPv4 address.
    pub uplink: Option<u32>,
    /// The subnets of the node's own interfaces (not workload ones): a learned
    /// route equal to or inside one is never installed.
    pub subnets: Vec<IpNet>,
}

/// The metric of routes learned over BGP: above every metric the host's own routes
/// get by default (IPv4 0; IPv6 connected 256, static and kernel 1024), so a learned
/// prefix, a default route included, goes in beside them and never replaces or
/// outranks them. BIRD gives its routes a metric of its own for the same reason.
pub const LEARNED_METRIC: u32 = 2048;

/// The desired VXLAN device and its peers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VxlanDesired {
    /// The device.
    pub spec: VxlanSpec,
    /// Its address (`tunnelIP/32`).
    pub address: IpNet,
    /// Permanent neighbour entries: remote tunnel IP to remote VTEP MAC.
    pub neighbours: BTreeMap<IpAddr, [u8; 6]>,
    /// FDB entries: remote VTEP MAC to remote node IP.
    pub fdb: BTreeMap<[u8; 6], IpAddr>,
}

/// A route whose device does not exist yet (resolved once it does).
pub const PENDING_VXLAN: u32 = u32::MAX;

/// The computed state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Desired {
    /// Routes by destination (one route per prefix, proto 80, main table). Routes over
    /// the VXLAN device carry [`PENDING_VXLAN`] as `oif` when it does not exist yet.
    pub routes: BTreeMap<IpNet, Route>,
    /// The VXLAN device, when a pool needs it.
    pub vxlan: Option<VxlanDesired>,
    /// Prefixes to originate over BGP, grouped by their communities.
    pub exports: BTreeMap<IpNet, Advertisement>,
    /// natOutgoing sets.
    pub nat: NatInputs,
    /// Pod MTU.
    pub mtu: u32,
    /// Things the operator must know: refused modes, workloads without interfaces.
    pub problems: Vec<String>,
}

/// Calico's VXLAN MAC for a node without one stored: `66` then the first five bytes
/// of SHA-1 of the node name.
pub fn vxlan_mac_for(node: &str) -> [u8; 6] {
    use sha1::{Digest, Sha1};
    let h = Sha1::digest(node.as_bytes());
    [0x66, h[0], h[1], h[2], h[3], h[4]]
}

/// The pod MTU: host MTU minus the overhead of the encapsulations in use, or the
/// override.
pub fn pod_mtu(settings: &Settings, pools: &[PoolInfo]) -> u32 {
    if let Some(m) = settings.mtu_override {
        return m;
    }
    let mut mtu = settings.host_mtu;
    for p in pools.iter().filter(|p| !p.disabled) {
        if p.vxlan != EncapMode::Never {
            mtu = mtu.min(settings.host_mtu - VXLAN_OVERHEAD);
        }
        if p.ipip != EncapMode::Never && settings.ipip_supported {
            mtu = mtu.min(settings.host_mtu - IPIP_OVERHEAD);
        }
    }
    mtu
}

fn same_subnet(a: &IpNet, b: &IpNet) -> bool {
    a.trunc() == b.trunc() || (a.contains(&b.addr()) && b.contains(&a.addr()))
}

pub(crate) fn pool_of<'a>(pools: &'a [PoolInfo], net: &IpNet) -> Option<&'a PoolInfo> {
    // The most specific pool containing the prefix.
    pools
        .iter()
        .filter(|p| p.cidr.contains(net))
        .max_by_key(|p| p.cidr.prefix_len())
}

/// How a remote prefix is reached.
enum Path {
    Vxlan,
    Ipip,
    /// Native, programmed by us (`via nodeIP dev uplink onlink`): CrossSubnet peers
    /// in the same subnet.
    Direct,
    /// Native, left to BGP.
    Bgp,
}

fn path_for(pool: &PoolInfo, me: &NodeInfo, remote: &NodeInfo) -> Path {
    let same = match (me.ipv4, remote.ipv4) {
        (Some(a), Some(b)) => same_subnet(&a, &b),
        _ => false,
    };
    match (pool.vxlan, pool.ipip) {
        (EncapMode::Always, _) => Path::Vxlan,
        (EncapMode::CrossSubnet, _) if !same => Path::Vxlan,
        (EncapMode::CrossSubnet, _) => Path::Direct,
        (_, EncapMode::Always) => Path::Ipip,
        (_, EncapMode::CrossSubnet) if !same => Path::Ipip,
        (_, EncapMode::CrossSubnet) => Path::Direct,
        _ => Path::Bgp,
    }
}

/// What does not depend on any one prefix: the pod MTU, the VXLAN device (without
/// its per-node entries), natOutgoing inputs and the node-wide problems.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Globals {
    /// Pod MTU.
    pub mtu: u32,
    /// The VXLAN device with empty neighbour and FDB tables, when a pool needs it
    /// and this node has its tunnel address.
    pub vxlan: Option<VxlanDesired>,
    /// natOutgoing sets.
    pub nat: NatInputs,
    /// Node-wide problems (refused modes, a missing tunnel address).
    pub problems: Vec<String>,
}

/// Computes the [`Globals`] for node `me`.
pub fn globals(
    pools: &[PoolInfo],
    me: &NodeInfo,
    settings: &Settings,
    kernel: &KernelView,
) -> Globals {
    let mut g = Globals {
        mtu: pod_mtu(settings, pools),
        ..Default::default()
    };
    // Refuse IPIP where the kernel cannot do it.
    if !settings.ipip_supported {
        for p in pools
            .iter()
            .filter(|p| p.ipip != EncapMode::Never && !p.disabled)
        {
            g.problems.push(format!(
                "IPPool {:?}: ipipMode {:?} needs IPIP, which this kernel does not support (no ipip link type); use vxlanMode instead. Remote blocks of this pool get no routes",
                p.name, p.ipip
            ));
        }
    }
    // The VXLAN device, if any enabled IPv4 pool uses VXLAN.
    let vxlan_needed = pools
        .iter()
        .any(|p| !p.disabled && p.cidr.addr().is_ipv4() && p.vxlan != EncapMode::Never);
    if vxlan_needed {
        match (me.vxlan_tunnel_ip, me.ipv4) {
            (Some(tun), Some(node_ip)) => {
                g.vxlan = Some(VxlanDesired {
                    spec: VxlanSpec {
                        name: VXLAN_DEVICE.into(),
                        vni: VXLAN_VNI,
                        port: VXLAN_PORT,
                        local: Some(node_ip.addr()),
                        parent: kernel.uplink,
                        mac: Some(me.vxlan_mac),
                        mtu: Some(settings.host_mtu - VXLAN_OVERHEAD),
                        learning: false,
                    },
                    address: IpNet::new(IpAddr::V4(tun), 32).expect("32 is a valid prefix"),
                    neighbours: BTreeMap::new(),
                    fdb: BTreeMap::new(),
                });
            }
            (None, _) => g.problems.push(format!(
                "Node {:?} has no ipv4VXLANTunnelAddr yet; VXLAN routes wait for it",
                me.name
            )),
            (_, None) => g.problems.push(format!(
                "Node {:?} has no IPv4 address; VXLAN needs one",
                me.name
            )),
        }
    }
    g.nat = NatInputs {
        masq_pools: pools
            .iter()
            .filter(|p| p.nat_outgoing && !p.disabled)
            .map(|p| p.cidr)
            .collect(),
        all_pools: pools.iter().map(|p| p.cidr).collect(),
    };
    g
}

/// A remote node's VXLAN entries: its tunnel address to its VTEP MAC (neighbour)
/// and the MAC to its node address (FDB), when it has both addresses.
pub fn vxlan_peer(n: &NodeInfo) -> Option<(IpAddr, [u8; 6], IpAddr)> {
    match (n.vxlan_tunnel_ip, n.ipv4) {
        (Some(t), Some(ip)) => Some((IpAddr::V4(t), n.vxlan_mac, ip.addr())),
        _ => None,
    }
}

/// What a per-prefix route computation reads besides the prefix's own sources.
pub struct RouteCtx<'a> {
    /// Every pool.
    pub pools: &'a [PoolInfo],
    /// This node.
    pub me: &'a NodeInfo,
    /// Whether the VXLAN device is wanted (routes over it exist only then).
    pub vxlan: bool,
    /// The VXLAN device's index, or [`PENDING_VXLAN`].
    pub vxlan_oif: u32,
    /// The kernel's interfaces.
    pub kernel: &'a KernelView,
    /// Whether an address is a node address of the cluster.
    pub is_node_address: &'a dyn Fn(IpAddr) -> bool,
}

impl RouteCtx<'_> {
    /// Whether a prefix may be exported (its pool does not disable it).
    pub fn exportable(&self, net: &IpNet) -> bool {
        pool_of(self.pools, net).is_some_and(|p| !p.disable_bgp_export)
    }

    /// The route to `net` (a block or a borrowed address) on `remote`, by its pool's
    /// encapsulation: over VXLAN, natively on the same subnet, or `None` when BGP
    /// (or nothing) provides it. `Err` says why a route that should exist cannot.
    pub fn remote_route(&self, net: IpNet, remote: &NodeInfo) -> Result<Option<Route>, String> {
        let Some(pool) = pool_of(self.pools, &net) else {
            return Ok(None);
        };
        match path_for(pool, self.me, remote) {
            Path::Vxlan => {
                if !self.vxlan {
                    return Ok(None);
                }
                let Some(t) = remote.vxlan_tunnel_ip else {
                    return Err(format!(
                        "Node {:?} has no VXLAN tunnel address; no route to {net} yet",
                        remote.name
                    ));
                };
                Ok(Some(Route::via_onlink(net, IpAddr::V4(t), self.vxlan_oif)))
            }
            Path::Ipip => Ok(None), // refused in globals, or a kernel we never see here
            Path::Direct => {
                let (Some(ip), Some(up)) = (remote.ipv4, self.kernel.uplink) else {
                    return Ok(None);
                };
                Ok(Some(Route::via_onlink(net, ip.addr(), up)))
            }
            Path::Bgp => Ok(None),
        }
    }

    /// The route BGP asks for: `hops` without this node's own addresses, at
    /// [`LEARNED_METRIC`]; `Ok(None)` when the prefix belongs to an encapsulated pool
    /// or no hop is left. A prefix equal to or inside one of the node's own subnets,
    /// or equal to a node address of the cluster, is refused (`Err` says why): a peer
    /// must never take over the node's connected routes or another node's address.
    pub fn learned_route(&self, prefix: IpNet, hops: &[IpAddr]) -> Result<Option<Route>, String> {
        if let Some(p) = pool_of(self.pools, &prefix)
            && (p.vxlan != EncapMode::Never || p.ipip != EncapMode::Never)
        {
            return Ok(None);
        }
        let node = (prefix.prefix_len() == prefix.max_prefix_len()
            && (self.is_node_address)(prefix.addr()))
        .then_some(prefix.addr());
        match tabby_bgp::fib::install_conflict(&prefix, &self.kernel.subnets, node.as_slice()) {
            Some(tabby_bgp::fib::InstallConflict::Connected { subnet, .. }) => {
                return Err(format!(
                    "BGP route {prefix}: not installed: it is inside this node's own subnet {subnet}"
                ));
            }
            Some(tabby_bgp::fib::InstallConflict::NodeAddress { .. }) => {
                return Err(format!(
                    "BGP route {prefix}: not installed: it is a node address of the cluster"
                ));
            }
            None => {}
        }
        let mine: Vec<IpAddr> = [self.me.ipv4, self.me.ipv6]
            .iter()
            .flatten()
            .map(|n| n.addr())
            .collect();
        let hops: Vec<NextHop> = hops
            .iter()
            .filter(|h| !mine.contains(h))
            .map(|h| hop(*h))
            .collect();
        Ok((!hops.is_empty()).then(|| Route {
            metric: LEARNED_METRIC,
            ..Route::ecmp(prefix, hops)
        }))
    }
}

/// Adds the communities of every `prefixAdvertisements` entry containing `net`.
pub fn with_communities(
    net: &IpNet,
    mut adv: Advertisement,
    prefix_communities: &[(IpNet, Advertisement)],
) -> Advertisement {
    for (p, a) in prefix_communities {
        if p.contains(net) {
            adv.communities.extend(&a.communities);
            adv.large_communities.extend(&a.large_communities);
            adv.communities.sort();
            adv.communities.dedup();
            adv.large_communities.sort();
            adv.large_communities.dedup();
        }
    }
    adv
}

/// The whole desired state from a snapshot (start-up, tests): every block, workload
/// and learned route at once. The agent keeps the same result up to date per prefix
/// ([`crate::routes`]); this is the reference it is tested against.
pub fn compute(
    snap: &Snapshot,
    settings: &Settings,
    kernel: &KernelView,
    learned: &BTreeMap<IpNet, Vec<IpAddr>>,
) -> Desired {
    let mut d = Desired {
        mtu: pod_mtu(settings, &snap.pools),
        ..Default::default()
    };
    let nodes: BTreeMap<&str, &NodeInfo> =
        snap.nodes.iter().map(|n| (n.name.as_str(), n)).collect();
    let Some(me) = nodes.get(settings.node.as_str()).copied() else {
        d.problems.push(format!(
            "Node {:?} is not in the datastore; nothing is programmed",
            settings.node
        ));
        return d;
    };
    let pools: Vec<PoolInfo> = snap.pools.clone();
    let g = globals(&pools, me, settings, kernel);
    d.problems = g.problems;
    d.nat = g.nat;
    d.vxlan = g.vxlan;
    if let Some(v) = &mut d.vxlan {
        for n in snap.nodes.iter().filter(|n| n.name != me.name) {
            if let Some((t, mac, ip)) = vxlan_peer(n) {
                v.neighbours.insert(t, mac);
                v.fdb.insert(mac, ip);
            }
        }
    }
    let node_addrs: BTreeSet<IpAddr> = snap
        .nodes
        .iter()
        .flat_map(|n| [n.ipv4, n.ipv6])
        .flatten()
        .map(|n| n.addr())
        .collect();
    let is_node_address = |a: IpAddr| node_addrs.contains(&a);
    let ctx = RouteCtx {
        pools: &pools,
        me,
        is_node_address: &is_node_address,
        vxlan: d.vxlan.is_some(),
        vxlan_oif: kernel
            .links
            .get(VXLAN_DEVICE)
            .copied()
            .unwrap_or(PENDING_VXLAN),
        kernel,
    };

    let mut own_blocks: Vec<IpNet> = Vec::new();
    let block_host: Vec<(IpNet, Option<&str>)> = snap
        .blocks
        .iter()
        .map(|b| (b.cidr, b.host.as_deref()))
        .collect();

    for (cidr, host) in &block_host {
        match host {
            Some(h) if *h == me.name => {
                own_blocks.push(*cidr);
                // A /32 block holds one address whose pod route says it all.
                let single = cidr.prefix_len() == cidr.max_prefix_len();
                if !single {
                    d.routes.insert(*cidr, Route::blackhole(*cidr));
                }
                if ctx.exportable(cidr) {
                    d.exports.insert(*cidr, Advertisement::default());
                }
            }
            Some(h) => {
                if let Some(remote) = nodes.get(h) {
                    match ctx.remote_route(*cidr, remote) {
                        Ok(Some(r)) => {
                            d.routes.insert(*cidr, r);
                        }
                        Ok(None) => {}
                        Err(p) => d.problems.push(p),
                    }
                }
            }
            None => {}
        }
    }

    // Workload routes; borrowed addresses (outside their node's affine blocks)
    // need their own /32s, locally as exports and remotely as routes.
    let affine_to = |ip: &IpNet, node: &str| {
        block_host
            .iter()
            .any(|(c, h)| *h == Some(node) && c.contains(ip))
    };
    for w in &snap.workloads {
        if w.node == me.name {
            match kernel.links.get(&w.interface) {
                Some(&idx) => {
                    for ip in &w.ips {
                        let host = IpNet::new(ip.addr(), ip.max_prefix_len())
                            .expect("max prefix is valid");
                        d.routes.insert(host, Route::device(host, idx));
                        if !affine_to(&host, &me.name) && ctx.exportable(&host) {
                            d.exports.insert(host, Advertisement::default());
                        }
                    }
                }
                None => d.problems.push(format!(
                    "WorkloadEndpoint {}: interface {} does not exist on this node",
                    w.id, w.interface
                )),
            }
        } else if let Some(remote) = nodes.get(w.node.as_str()) {
            for ip in &w.ips {
                let host = IpNet::new(ip.addr(), ip.max_prefix_len()).expect("max prefix is valid");
                if affine_to(&host, &w.node) {
                    continue;
                }
                match ctx.remote_route(host, remote) {
                    Ok(Some(r)) => {
                        d.routes.insert(host, r);
                    }
                    Ok(None) => {}
                    Err(p) => d.problems.push(p),
                }
            }
        }
    }

    // Service CIDRs are exported as they are.
    for c in &snap.service_cidrs {
        d.exports.entry(*c).or_default();
    }
    // Communities from prefixAdvertisements apply to every export they contain.
    let exports = std::mem::take(&mut d.exports);
    d.exports = exports
        .into_iter()
        .map(|(e, a)| (e, with_communities(&e, a, &snap.prefix_communities)))
        .collect();

    // Learned routes for pools without encapsulation (BGP mode). Our own blocks and
    // anything we already route locally win.
    let own: BTreeSet<IpNet> = own_blocks.iter().copied().collect();
    if settings.bgp_enabled {
        for (prefix, hops) in learned {
            if d.routes.contains_key(prefix) || own.contains(prefix) {
                continue;
            }
            match ctx.learned_route(*prefix, hops) {
                Ok(Some(route)) => {
                    d.routes.insert(*prefix, route);
                }
                Ok(None) => {}
                Err(p) => d.problems.push(p),
            }
        }
    }
    d
}

pub(crate) fn hop(gateway: IpAddr) -> NextHop {
    NextHop {
        gateway,
        oif: None,
        onlink: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tabby_dataplane::RouteKind;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn node(name: &str, ip: &str, tun: Option<&str>) -> NodeInfo {
        NodeInfo {
            name: name.into(),
            ipv4: Some(net(ip)),
            ipv6: None,
            vxlan_tunnel_ip: tun.map(|t| t.parse().unwrap()),
            vxlan_mac: vxlan_mac_for(name),
        }
    }

    fn pool(cidr: &str, vxlan: EncapMode) -> PoolInfo {
        PoolInfo {
            name: "default-ipv4-ippool".into(),
            cidr: net(cidr),
            ipip: EncapMode::Never,
            vxlan,
            nat_outgoing: true,
            disabled: false,
            disable_bgp_export: false,
        }
    }

    fn block(cidr: &str, host: &str) -> BlockInfo {
        BlockInfo {
            cidr: net(cidr),
            host: Some(host.into()),
        }
    }

    fn settings() -> Settings {
        Settings {
            node: "n1".into(),
            ipip_supported: false,
            host_mtu: 1500,
            mtu_override: None,
            bgp_enabled: true,
        }
    }

    fn kernel() -> KernelView {
        KernelView {
            links: [("eth0".to_string(), 2), ("cali1".to_string(), 7)]
                .into_iter()
                .collect(),
            uplink: Some(2),
            subnets: vec![net("198.18.0.0/24")],
        }
    }

    fn snap(mode: EncapMode) -> Snapshot {
        Snapshot {
            nodes: vec![
                node("n1", "198.18.0.1/24", Some("100.64.0.1")),
                node("n2", "198.18.0.2/24", Some("100.64.0.65")),
                node("n3", "198.18.1.3/24", Some("100.64.0.129")),
            ],
            pools: vec![pool("100.64.0.0/16", mode)],
            blocks: vec![
                block("100.64.0.0/26", "n1"),
                block("100.64.0.64/26", "n2"),
                block("100.64.0.128/26", "n3"),
            ],
            workloads: vec![
                WorkloadInfo {
                    id: "default/a".into(),
                    node: "n1".into(),
                    interface: "cali1".into(),
                    ips: vec![net("100.64.0.5/32")],
                },
                // Borrowed: n2's pod with an address from n3's block.
                WorkloadInfo {
                    id: "default/b".into(),
                    node: "n2".into(),
                    interface: "calib".into(),
                    ips: vec![net("100.64.0.140/32")],
                },
            ],
            ..Default::default()
        }
    }

    #[test]
    fn vxlan_always_routes_every_remote_block_over_the_tunnel() {
        let mut k = kernel();
        k.links.insert(VXLAN_DEVICE.into(), 9);
        let d = compute(&snap(EncapMode::Always), &settings(), &k, &BTreeMap::new());
        assert_eq!(d.routes[&net("100.64.0.0/26")].kind, RouteKind::Blackhole);
        assert_eq!(
            d.routes[&net("100.64.0.5/32")],
            Route::device(net("100.64.0.5/32"), 7)
        );
        assert_eq!(
            d.routes[&net("100.64.0.64/26")],
            Route::via_onlink(net("100.64.0.64/26"), "100.64.0.65".parse().unwrap(), 9)
        );
        assert_eq!(
            d.routes[&net("100.64.0.128/26")],
            Route::via_onlink(net("100.64.0.128/26"), "100.64.0.129".parse().unwrap(), 9)
        );
        // The borrowed address goes to the node that has it, not the block's owner.
        assert_eq!(
            d.routes[&net("100.64.0.140/32")],
            Route::via_onlink(net("100.64.0.140/32"), "100.64.0.65".parse().unwrap(), 9)
        );
        let v = d.vxlan.expect("vxlan device wanted");
        assert_eq!(v.spec.vni, 4096);
        assert_eq!(v.spec.port, 4789);
        assert_eq!(v.spec.mtu, Some(1450));
        assert_eq!(v.address, net("100.64.0.1/32"));
        assert_eq!(v.neighbours.len(), 2);
        assert_eq!(
            v.fdb[&vxlan_mac_for("n2")],
            "198.18.0.2".parse::<IpAddr>().unwrap()
        );
        assert_eq!(d.mtu, 1450);
        assert_eq!(
            d.exports.keys().copied().collect::<Vec<_>>(),
            vec![net("100.64.0.0/26")]
        );
        assert!(d.problems.is_empty(), "{:?}", d.problems);
    }

    #[test]
    fn cross_subnet_encapsulates_only_across_subnets() {
        let mut k = kernel();
        k.links.insert(VXLAN_DEVICE.into(), 9);
        let d = compute(
            &snap(EncapMode::CrossSubnet),
            &settings(),
            &k,
            &BTreeMap::new(),
        );
        // n2 shares 198.18.0.0/24: direct on the uplink.
        assert_eq!(
            d.routes[&net("100.64.0.64/26")],
            Route::via_onlink(net("100.64.0.64/26"), "198.18.0.2".parse().unwrap(), 2)
        );
        // n3 is in 198.18.1.0/24: over VXLAN.
        assert_eq!(
            d.routes[&net("100.64.0.128/26")],
            Route::via_onlink(net("100.64.0.128/26"), "100.64.0.129".parse().unwrap(), 9)
        );
    }

    #[test]
    fn never_pools_are_left_to_bgp_and_learned_routes_installed() {
        let learned: BTreeMap<IpNet, Vec<IpAddr>> = [
            (net("100.64.0.64/26"), vec!["198.18.0.2".parse().unwrap()]),
            (
                net("100.64.0.128/26"),
                vec!["198.18.0.3".parse().unwrap(), "198.18.0.4".parse().unwrap()],
            ),
            // Our own block reflected back is ignored.
            (net("100.64.0.0/26"), vec!["198.18.0.2".parse().unwrap()]),
        ]
        .into_iter()
        .collect();
        let d = compute(&snap(EncapMode::Never), &settings(), &kernel(), &learned);
        assert!(d.vxlan.is_none());
        assert_eq!(d.mtu, 1500);
        assert_eq!(d.routes[&net("100.64.0.0/26")].kind, RouteKind::Blackhole);
        let r = &d.routes[&net("100.64.0.64/26")];
        assert_eq!(r.gateway, Some("198.18.0.2".parse().unwrap()));
        let ecmp = &d.routes[&net("100.64.0.128/26")];
        assert_eq!(ecmp.multipath.len(), 2);
        // The borrowed /32 on n2 is n2's to export, not ours to route.
        assert!(!d.routes.contains_key(&net("100.64.0.140/32")));
    }

    #[test]
    fn learned_routes_never_take_the_nodes_own_places() {
        let hop = vec!["198.18.0.9".parse().unwrap()];
        let mut s = snap(EncapMode::Never);
        s.nodes.push(node("n3", "198.19.5.3/24", None));
        let learned: BTreeMap<IpNet, Vec<IpAddr>> = [
            // The default route: allowed, beside the host's own (another metric).
            (net("0.0.0.0/0"), hop.clone()),
            // The node's connected subnet, a part of it, another node's address.
            (net("198.18.0.0/24"), hop.clone()),
            (net("198.18.0.2/32"), hop.clone()),
            (net("198.19.5.3/32"), hop.clone()),
            // A remote block: fine.
            (net("100.64.0.64/26"), hop.clone()),
        ]
        .into_iter()
        .collect();
        let d = compute(&s, &settings(), &kernel(), &learned);
        let default = &d.routes[&net("0.0.0.0/0")];
        assert_eq!(default.metric, LEARNED_METRIC);
        assert_eq!(d.routes[&net("100.64.0.64/26")].metric, LEARNED_METRIC);
        for refused in ["198.18.0.0/24", "198.18.0.2/32", "198.19.5.3/32"] {
            assert!(!d.routes.contains_key(&net(refused)), "{refused}");
            assert!(
                d.problems.iter().any(|p| p.contains(refused)),
                "{refused}: {:?}",
                d.problems
            );
        }
        // Our own routes keep the kernel's default metric.
        assert_eq!(d.routes[&net("100.64.0.0/26")].metric, 0);
    }

    #[test]
    fn borrowed_local_addresses_are_exported_and_disable_bgp_export_is_honoured() {
        let mut s = snap(EncapMode::Never);
        s.workloads[0].ips = vec![net("100.64.0.70/32")]; // inside n2's block
        let d = compute(&s, &settings(), &kernel(), &BTreeMap::new());
        assert!(d.exports.contains_key(&net("100.64.0.70/32")));
        s.pools[0].disable_bgp_export = true;
        let d = compute(&s, &settings(), &kernel(), &BTreeMap::new());
        assert!(d.exports.is_empty());
        // ...but the blackhole and the workload route are still there.
        assert!(d.routes.contains_key(&net("100.64.0.0/26")));
        assert!(d.routes.contains_key(&net("100.64.0.70/32")));
    }

    #[test]
    fn ipip_is_refused_with_a_message_when_the_kernel_lacks_it() {
        let mut s = snap(EncapMode::Never);
        s.pools[0].ipip = EncapMode::Always;
        let d = compute(&s, &settings(), &kernel(), &BTreeMap::new());
        assert!(
            d.problems
                .iter()
                .any(|p| p.contains("ipipMode") && p.contains("does not support")),
            "{:?}",
            d.problems
        );
        assert!(!d.routes.contains_key(&net("100.64.0.64/26")));
    }

    #[test]
    fn slash_32_blocks_get_no_blackhole_and_missing_interfaces_are_reported() {
        let mut s = snap(EncapMode::Never);
        s.blocks.push(block("100.64.1.1/32", "n1"));
        s.workloads[0].interface = "calimissing".into();
        let d = compute(&s, &settings(), &kernel(), &BTreeMap::new());
        assert!(!d.routes.contains_key(&net("100.64.1.1/32")));
        assert!(d.problems.iter().any(|p| p.contains("calimissing")));
    }

    #[test]
    fn communities_and_service_cidrs_are_exported() {
        let mut s = snap(EncapMode::Never);
        s.service_cidrs = vec![net("198.19.0.0/24")];
        s.prefix_communities = vec![(
            net("100.64.0.0/16"),
            Advertisement {
                communities: vec![(65000 << 16) | 100],
                large_communities: vec![],
            },
        )];
        let d = compute(&s, &settings(), &kernel(), &BTreeMap::new());
        assert_eq!(
            d.exports[&net("100.64.0.0/26")].communities,
            vec![(65000 << 16) | 100]
        );
        assert!(d.exports[&net("198.19.0.0/24")].communities.is_empty());
    }

    #[test]
    fn mtu_override_and_nat_sets() {
        let mut st = settings();
        st.mtu_override = Some(1300);
        let d = compute(&snap(EncapMode::Always), &st, &kernel(), &BTreeMap::new());
        assert_eq!(d.mtu, 1300);
        assert_eq!(d.nat.masq_pools, vec![net("100.64.0.0/16")]);
        // The device is wanted before it exists; its routes wait with a pending oif.
        assert_eq!(d.routes[&net("100.64.0.64/26")].oif, Some(PENDING_VXLAN));
    }

    #[test]
    fn vxlan_mac_is_calicos() {
        let m = vxlan_mac_for("node1");
        assert_eq!(m[0], 0x66);
        assert_ne!(m, vxlan_mac_for("node2"));
    }
}
