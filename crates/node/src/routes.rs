//! The desired routes, BGP exports and VXLAN peer entries, kept up to date per
//! prefix and per node. Each store, kernel or BGP change marks only the prefixes
//! (and nodes) it can affect; [`RouteState::update`] recomputes just those from the
//! view's indexes and returns what changed, so a pod added on another node costs a
//! few lookups, not a pass over the cluster. The result is exactly what
//! [`crate::desired::compute`] gives for the whole view (tested below); a change
//! that can affect everything (a pool, this node, the VXLAN device) marks
//! everything. Pure: the agent applies the returned changes.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;
use tabby_dataplane::Route;

use crate::desired::{
    Advertisement, Globals, KernelView, PENDING_VXLAN, RouteCtx, Settings, VXLAN_DEVICE, globals,
    vxlan_peer, with_communities,
};
use crate::view::{Change, View};

/// A remote node's VXLAN entries: tunnel address, VTEP MAC, node address.
pub type VxlanPeer = (IpAddr, [u8; 6], IpAddr);

/// What one [`RouteState::update`] changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RouteChanges {
    /// Per prefix: the route before and after (`None`: no route).
    pub routes: Vec<(IpNet, Option<Route>, Option<Route>)>,
    /// Per prefix: the export after (`None`: withdrawn).
    pub exports: Vec<(IpNet, Option<Advertisement>)>,
    /// Per remote node: its VXLAN entries before and after.
    pub vxlan_peers: Vec<(String, Option<VxlanPeer>, Option<VxlanPeer>)>,
    /// The globals (MTU, VXLAN device, NAT inputs, problems) changed.
    pub globals: bool,
}

impl RouteChanges {
    /// Nothing changed.
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
            && self.exports.is_empty()
            && self.vxlan_peers.is_empty()
            && !self.globals
    }
}

/// The desired routing state and what is dirty in it.
#[derive(Debug, Default)]
pub struct RouteState {
    routes: BTreeMap<IpNet, Route>,
    exports: BTreeMap<IpNet, Advertisement>,
    problems: BTreeMap<IpNet, String>,
    vxlan_peers: BTreeMap<String, VxlanPeer>,
    globals: Option<Globals>,
    dirty: BTreeSet<IpNet>,
    dirty_nodes: BTreeSet<String>,
    all: bool,
}

impl RouteState {
    /// Empty, everything dirty.
    pub fn new() -> RouteState {
        RouteState {
            all: true,
            ..RouteState::default()
        }
    }

    /// Recompute `prefix` on the next update.
    pub fn mark(&mut self, prefix: IpNet) {
        if !self.all {
            self.dirty.insert(prefix);
        }
    }

    /// Recompute a remote node's VXLAN entries on the next update.
    pub fn mark_node(&mut self, name: &str) {
        if !self.all {
            self.dirty_nodes.insert(name.to_string());
        }
    }

    /// Recompute everything on the next update.
    pub fn mark_all(&mut self) {
        self.all = true;
        self.dirty.clear();
        self.dirty_nodes.clear();
    }

    /// Marks what a view change can affect: a remote node's blocks, borrowed
    /// addresses and VXLAN entries; a block and the addresses inside it; a
    /// workload's addresses; everything for this node, a pool or the BGP
    /// configuration (service CIDRs and communities reach every export).
    pub fn on_change(&mut self, c: &Change, view: &View, me: &str) {
        match c {
            Change::Node { name, routing } => {
                if !routing {
                    return;
                }
                if name == me {
                    self.mark_all();
                    return;
                }
                let blocks: Vec<IpNet> = view.blocks_of(name).copied().collect();
                for b in blocks {
                    self.mark(b);
                }
                for ip in view.workload_ips_of(name) {
                    self.mark(ip);
                }
                self.mark_node(name);
            }
            Change::Pool | Change::BgpConfig => self.mark_all(),
            Change::Block { cidr, .. } => {
                self.mark(*cidr);
                for ip in view.workload_ips_in(cidr) {
                    self.mark(ip);
                }
            }
            Change::Workload { ips, .. } => {
                for ip in ips {
                    self.mark(*ip);
                }
            }
            Change::BgpPeers | Change::PolicyPut(_) | Change::PolicyDelete { .. } => {}
        }
    }

    /// Whether an update would recompute anything.
    pub fn is_dirty(&self) -> bool {
        self.all || !self.dirty.is_empty() || !self.dirty_nodes.is_empty()
    }

    /// The desired routes.
    pub fn routes(&self) -> &BTreeMap<IpNet, Route> {
        &self.routes
    }

    /// The desired BGP exports.
    pub fn exports(&self) -> &BTreeMap<IpNet, Advertisement> {
        &self.exports
    }

    /// The globals, once computed (`None` while this node's Node is missing).
    pub fn globals(&self) -> Option<&Globals> {
        self.globals.as_ref()
    }

    /// The VXLAN device with every peer entry, when wanted.
    pub fn vxlan(&self) -> Option<crate::desired::VxlanDesired> {
        let mut v = self.globals.as_ref()?.vxlan.clone()?;
        for (t, mac, ip) in self.vxlan_peers.values() {
            v.neighbours.insert(*t, *mac);
            v.fdb.insert(*mac, *ip);
        }
        Some(v)
    }

    /// Problems an operator must see: node-wide ones, then per prefix.
    pub fn problems(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .globals
            .iter()
            .flat_map(|g| g.problems.iter().cloned())
            .collect();
        v.extend(self.problems.values().cloned());
        v
    }

    /// Recomputes what is dirty. Returns nothing (and keeps the marks) while this
    /// node's own Node is missing: programming from a view without it would remove
    /// every route.
    pub fn update(
        &mut self,
        view: &View,
        settings: &Settings,
        kernel: &KernelView,
        learned: &BTreeMap<IpNet, Vec<IpAddr>>,
    ) -> RouteChanges {
        let mut out = RouteChanges::default();
        let Some(me) = view.node_info(&settings.node) else {
            return out;
        };
        let pools = view.pool_infos();
        let (service_cidrs, communities) = view.advertisement_settings();
        if self.all {
            let g = globals(&pools, me, settings, kernel);
            out.globals = self.globals.as_ref() != Some(&g);
            self.globals = Some(g);
            let mut every: BTreeSet<IpNet> = self.routes.keys().copied().collect();
            every.extend(self.exports.keys().copied());
            every.extend(self.problems.keys().copied());
            every.extend(view.blocks().map(|(c, _)| *c));
            every.extend(view.workload_ips().copied());
            every.extend(learned.keys().copied());
            every.extend(service_cidrs.iter().copied());
            self.dirty = every;
            let mut nodes: BTreeSet<String> = self.vxlan_peers.keys().cloned().collect();
            nodes.extend(view.node_infos().map(|n| n.name.clone()));
            self.dirty_nodes = nodes;
            self.all = false;
        }
        let vxlan = self.globals.as_ref().is_some_and(|g| g.vxlan.is_some());
        let is_node_address = |a: IpAddr| view.is_node_address(a);
        let ctx = RouteCtx {
            pools: &pools,
            me,
            is_node_address: &is_node_address,
            vxlan,
            vxlan_oif: kernel
                .links
                .get(VXLAN_DEVICE)
                .copied()
                .unwrap_or(PENDING_VXLAN),
            kernel,
        };
        for p in std::mem::take(&mut self.dirty) {
            let (route, export, problem) = prefix_state(
                p,
                view,
                &ctx,
                kernel,
                learned,
                &service_cidrs,
                &communities,
                settings.bgp_enabled,
            );
            let before = match &route {
                Some(r) => self.routes.insert(p, r.clone()),
                None => self.routes.remove(&p),
            };
            if before != route {
                out.routes.push((p, before, route));
            }
            let before = match &export {
                Some(a) => self.exports.insert(p, a.clone()),
                None => self.exports.remove(&p),
            };
            if before != export {
                out.exports.push((p, export));
            }
            match problem {
                Some(t) => self.problems.insert(p, t),
                None => self.problems.remove(&p),
            };
        }
        for n in std::mem::take(&mut self.dirty_nodes) {
            let want = (n != settings.node)
                .then(|| view.node_info(&n).and_then(vxlan_peer))
                .flatten();
            let before = match want {
                Some(p) => self.vxlan_peers.insert(n.clone(), p),
                None => self.vxlan_peers.remove(&n),
            };
            if before != want {
                out.vxlan_peers.push((n, before, want));
            }
        }
        out
    }
}

/// The route, export and problem of one prefix, from its sources: a block with that
/// CIDR, workload endpoints holding that address, a service CIDR, a learned route.
/// The same precedence as [`crate::desired::compute`]: blocks, then workloads in
/// key order, then BGP where nothing local routes the prefix.
#[allow(clippy::too_many_arguments)]
fn prefix_state(
    p: IpNet,
    view: &View,
    ctx: &RouteCtx<'_>,
    kernel: &KernelView,
    learned: &BTreeMap<IpNet, Vec<IpAddr>>,
    service_cidrs: &[IpNet],
    communities: &[(IpNet, Advertisement)],
    bgp_enabled: bool,
) -> (Option<Route>, Option<Advertisement>, Option<String>) {
    let me = ctx.me.name.as_str();
    let mut route = None;
    let mut export = None;
    let mut problem = None;
    let block = view.block(&p);
    let own_block = block == Some(Some(me));
    match block {
        Some(Some(h)) if h == me => {
            // A /32 block holds one address whose pod route says it all.
            if p.prefix_len() != p.max_prefix_len() {
                route = Some(Route::blackhole(p));
            }
            if ctx.exportable(&p) {
                export = Some(Advertisement::default());
            }
        }
        Some(Some(h)) => {
            if let Some(remote) = view.node_info(h) {
                match ctx.remote_route(p, remote) {
                    Ok(r) => route = r,
                    Err(e) => problem = Some(e),
                }
            }
        }
        _ => {}
    }
    if p.prefix_len() == p.max_prefix_len() {
        for (key, node) in view.workloads_at(&p) {
            if node == me {
                let iface = view.local_interface(key).unwrap_or_default();
                match kernel.links.get(iface) {
                    Some(&idx) => {
                        route = Some(Route::device(p, idx));
                        if !view.affine_to(&p, me) && ctx.exportable(&p) {
                            export = Some(Advertisement::default());
                        }
                    }
                    None => {
                        problem = Some(format!(
                            "WorkloadEndpoint {key}: interface {iface} does not exist on this node"
                        ))
                    }
                }
            } else if let Some(remote) = view.node_info(node) {
                if view.affine_to(&p, node) {
                    continue;
                }
                match ctx.remote_route(p, remote) {
                    Ok(Some(r)) => route = Some(r),
                    Ok(None) => {}
                    Err(e) => problem = Some(e),
                }
            }
        }
    }
    if service_cidrs.contains(&p) && export.is_none() {
        export = Some(Advertisement::default());
    }
    let export = export.map(|a| with_communities(&p, a, communities));
    if route.is_none()
        && !own_block
        && bgp_enabled
        && let Some(hops) = learned.get(&p)
    {
        match ctx.learned_route(p, hops) {
            Ok(r) => route = r,
            Err(e) => problem = Some(e),
        }
    }
    (route, export, problem)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use tabby_api::Kind;
    use tabby_store::{KeyValue, WatchEvent, keys};

    fn kv(key: String, value: serde_json::Value, rev: i64) -> WatchEvent {
        WatchEvent::Put(KeyValue {
            key,
            value: serde_json::to_vec(&value).unwrap(),
            create_revision: rev,
            mod_revision: rev,
        })
    }

    fn del(key: String, rev: i64) -> WatchEvent {
        WatchEvent::Delete {
            key,
            revision: rev,
            prev: None,
        }
    }

    /// One random store or BGP change over a tiny cluster, so events collide.
    #[derive(Clone, Debug)]
    enum Op {
        Node { n: u8, tunnel: bool, subnet: u8 },
        DelNode(u8),
        Pool { vxlan: u8, export: bool },
        Block { b: u8, host: Option<u8> },
        DelBlock(u8),
        Wep { w: u8, node: u8, ip: u8 },
        DelWep(u8),
        Learned { prefix: u8, hops: Vec<u8> },
        Link { w: u8, up: bool },
        BgpConfig { service: bool },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0..4u8, any::<bool>(), 0..2u8).prop_map(|(n, tunnel, subnet)| Op::Node {
                n,
                tunnel,
                subnet
            }),
            (1..4u8).prop_map(Op::DelNode),
            (0..3u8, any::<bool>()).prop_map(|(vxlan, export)| Op::Pool { vxlan, export }),
            (0..6u8, proptest::option::of(0..4u8)).prop_map(|(b, host)| Op::Block { b, host }),
            (0..6u8).prop_map(Op::DelBlock),
            (0..8u8, 0..4u8, 0..20u8).prop_map(|(w, node, ip)| Op::Wep { w, node, ip }),
            (0..8u8).prop_map(Op::DelWep),
            (0..8u8, proptest::collection::vec(0..4u8, 0..3))
                .prop_map(|(prefix, hops)| Op::Learned { prefix, hops }),
            (0..8u8, any::<bool>()).prop_map(|(w, up)| Op::Link { w, up }),
            any::<bool>().prop_map(|service| Op::BgpConfig { service }),
        ]
    }

    fn block_net(b: u8) -> IpNet {
        // Four /30 blocks and two /32 blocks, all in 100.64.0.0/16.
        if b < 4 {
            format!("100.64.0.{}/30", b * 4).parse().unwrap()
        } else {
            format!("100.64.0.{}/32", 8 + b).parse().unwrap()
        }
    }

    struct World {
        view: View,
        learned: BTreeMap<IpNet, Vec<IpAddr>>,
        kernel: KernelView,
        rev: i64,
    }

    impl World {
        fn apply(&mut self, op: &Op, state: &mut RouteState) {
            self.rev += 1;
            let rev = self.rev;
            let node = |n: u8| format!("n{n}");
            let ev = match op.clone() {
                Op::Node { n, tunnel, subnet } => {
                    let mut spec = serde_json::json!({"bgp": {"ipv4Address": format!("198.18.{subnet}.{}/24", n + 1)}});
                    if tunnel {
                        spec["ipv4VXLANTunnelAddr"] = format!("100.65.0.{}", n + 1).into();
                    }
                    Some(kv(
                        tabby_client::key_of(Kind::Node, None, &node(n)),
                        serde_json::json!({"apiVersion": "projectcalico.org/v3", "kind": "Node",
                            "metadata": {"name": node(n)}, "spec": spec}),
                        rev,
                    ))
                }
                Op::DelNode(n) => Some(del(tabby_client::key_of(Kind::Node, None, &node(n)), rev)),
                Op::Pool { vxlan, export } => {
                    let mode = ["Never", "Always", "CrossSubnet"][vxlan as usize];
                    Some(kv(
                        tabby_client::key_of(Kind::IPPool, None, "p"),
                        serde_json::json!({"apiVersion": "projectcalico.org/v3", "kind": "IPPool",
                            "metadata": {"name": "p"},
                            "spec": {"cidr": "100.64.0.0/16", "vxlanMode": mode, "disableBGPExport": !export}}),
                        rev,
                    ))
                }
                Op::Block { b, host } => {
                    let mut blk = tabby_ipam::AllocationBlock::new(block_net(b), 0).unwrap();
                    blk.affinity = host.map(|h| format!("host:{}", node(h)));
                    Some(kv(
                        keys::ipam_block_key(&block_net(b).to_string(), false),
                        serde_json::to_value(&blk).unwrap(),
                        rev,
                    ))
                }
                Op::DelBlock(b) => Some(del(
                    keys::ipam_block_key(&block_net(b).to_string(), false),
                    rev,
                )),
                Op::Wep { w, node: n, ip } => Some(kv(
                    tabby_client::key_of(Kind::WorkloadEndpoint, Some("ns"), &format!("w{w}")),
                    serde_json::json!({"apiVersion": "projectcalico.org/v3", "kind": "WorkloadEndpoint",
                        "metadata": {"name": format!("w{w}"), "namespace": "ns"},
                        "spec": {"node": node(n), "interfaceName": format!("cali{w}"),
                                 "ipNetworks": [format!("100.64.0.{ip}/32")]}}),
                    rev,
                )),
                Op::DelWep(w) => Some(del(
                    tabby_client::key_of(Kind::WorkloadEndpoint, Some("ns"), &format!("w{w}")),
                    rev,
                )),
                Op::Learned { prefix, hops } => {
                    let p: IpNet = if prefix < 6 {
                        block_net(prefix)
                    } else {
                        format!("198.19.{prefix}.0/24").parse().unwrap()
                    };
                    if hops.is_empty() {
                        self.learned.remove(&p);
                    } else {
                        self.learned.insert(
                            p,
                            hops.iter()
                                .map(|h| format!("198.18.0.{}", h + 1).parse().unwrap())
                                .collect(),
                        );
                    }
                    state.mark(p);
                    None
                }
                Op::Link { w, up } => {
                    let name = format!("cali{w}");
                    if up {
                        self.kernel.links.insert(name.clone(), 100 + u32::from(w));
                    } else {
                        self.kernel.links.remove(&name);
                    }
                    if let Some(r) = self.view.local_workload_on(&name) {
                        for ip in &r.spec.as_workload_endpoint().unwrap().ip_networks {
                            state.mark(crate::view::host_net(ip));
                        }
                    }
                    None
                }
                Op::BgpConfig { service } => {
                    let spec = if service {
                        serde_json::json!({"serviceClusterIPs": [{"cidr": "198.19.7.0/24"}],
                            "communities": [{"name": "c", "value": "65000:1"}],
                            "prefixAdvertisements": [{"cidr": "100.64.0.0/29", "communities": ["c"]}]})
                    } else {
                        serde_json::json!({})
                    };
                    Some(kv(
                        tabby_client::key_of(Kind::BGPConfiguration, None, "default"),
                        serde_json::json!({"apiVersion": "projectcalico.org/v3", "kind": "BGPConfiguration",
                            "metadata": {"name": "default"}, "spec": spec}),
                        rev,
                    ))
                }
            };
            if let Some(ev) = ev {
                for c in self.view.apply(&ev) {
                    state.on_change(&c, &self.view, "n0");
                }
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]
        /// After any sequence of changes, the incrementally kept routes and exports
        /// equal a full computation over the same view, and the reported changes
        /// replay to the same maps.
        #[test]
        fn incremental_equals_full(ops in proptest::collection::vec(op(), 1..60)) {
            let mut w = World {
                view: View::new("n0"),
                learned: BTreeMap::new(),
                kernel: KernelView { links: BTreeMap::from([("eth0".to_string(), 2), (VXLAN_DEVICE.to_string(), 9)]), uplink: Some(2), subnets: vec!["198.18.0.0/24".parse().unwrap()] },
                rev: 0,
            };
            let settings = Settings {
                node: "n0".into(),
                ipip_supported: false,
                host_mtu: 1500,
                mtu_override: None,
                bgp_enabled: true,
            };
            let mut state = RouteState::new();
            let mut replayed: BTreeMap<IpNet, Route> = BTreeMap::new();
            let mut replayed_exports: BTreeMap<IpNet, Advertisement> = BTreeMap::new();
            // n0 exists from the start (an agent registers first).
            w.apply(&Op::Node { n: 0, tunnel: true, subnet: 0 }, &mut state);
            for op in &ops {
                w.apply(op, &mut state);
                if w.view.node_info("n0").is_none() { continue; }
                let ch = state.update(&w.view, &settings, &w.kernel, &w.learned);
                for (p, before, after) in ch.routes {
                    prop_assert_eq!(replayed.get(&p).cloned(), before);
                    match after { Some(r) => { replayed.insert(p, r); } None => { replayed.remove(&p); } }
                }
                for (p, a) in ch.exports {
                    match a { Some(a) => { replayed_exports.insert(p, a); } None => { replayed_exports.remove(&p); } }
                }
                let full = crate::desired::compute(&w.view.snapshot(), &settings, &w.kernel, &w.learned);
                prop_assert_eq!(state.routes(), &full.routes, "after {:?}", op);
                prop_assert_eq!(state.exports(), &full.exports, "after {:?}", op);
                prop_assert_eq!(&replayed, &full.routes);
                prop_assert_eq!(&replayed_exports, &full.exports);
                prop_assert_eq!(state.vxlan(), full.vxlan);
                prop_assert_eq!(state.globals().map(|g| (g.mtu, g.nat.clone())), Some((full.mtu, full.nat.clone())));
            }
        }
    }

    #[test]
    fn a_remote_pod_touches_only_its_own_prefix() {
        let mut w = World {
            view: View::new("n0"),
            learned: BTreeMap::new(),
            kernel: KernelView::default(),
            rev: 0,
        };
        let settings = Settings {
            node: "n0".into(),
            ipip_supported: false,
            host_mtu: 1500,
            mtu_override: None,
            bgp_enabled: false,
        };
        let mut state = RouteState::new();
        for n in 0..4 {
            w.apply(
                &Op::Node {
                    n,
                    tunnel: true,
                    subnet: 0,
                },
                &mut state,
            );
        }
        w.apply(
            &Op::Pool {
                vxlan: 1,
                export: true,
            },
            &mut state,
        );
        for b in 0..4 {
            w.apply(&Op::Block { b, host: Some(b) }, &mut state);
        }
        state.update(&w.view, &settings, &w.kernel, &w.learned);
        assert!(!state.is_dirty());
        // A pod in its node's block: one prefix marked, no route change.
        w.apply(
            &Op::Wep {
                w: 1,
                node: 2,
                ip: 9,
            },
            &mut state,
        );
        assert_eq!(state.dirty.len(), 1);
        let ch = state.update(&w.view, &settings, &w.kernel, &w.learned);
        assert!(ch.is_empty(), "{ch:?}");
        // A borrowed address (n3's pod in n2's block) gets its own route.
        w.apply(
            &Op::Wep {
                w: 2,
                node: 3,
                ip: 10,
            },
            &mut state,
        );
        let ch = state.update(&w.view, &settings, &w.kernel, &w.learned);
        assert_eq!(ch.routes.len(), 1);
        assert_eq!(ch.routes[0].0, "100.64.0.10/32".parse::<IpNet>().unwrap());
    }
}
