//! Making the kernel match the desired state: a pure diff of desired against actual
//! routes ([`plan_routes`]), and the adapter that applies it, the VXLAN device, its
//! neighbours and FDB, in batches through the [`Netlink`] trait. Only what we own is
//! touched: routes of protocol 80 in the main table and the `vxlan.calico` device.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use tabby_dataplane::model::MAIN_TABLE;
use tabby_dataplane::{
    Error as DpError, Family, FdbEntry, LinkAttrs, Neighbour, Netlink, Route, RouteKind,
    TABBY_ROUTE_PROTOCOL,
};

use crate::desired::{Desired, PENDING_VXLAN, VxlanDesired};

/// What to change in the routing table.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RoutePlan {
    /// New routes.
    pub add: Vec<Route>,
    /// Routes whose destination exists with another path.
    pub replace: Vec<Route>,
    /// Our routes nobody wants any more.
    pub delete: Vec<Route>,
    /// Our other copies at a destination, removed once the wanted one is in (a
    /// route whose metric changed, e.g. learned over BGP where a block was).
    pub stale: Vec<Route>,
    /// Wanted routes not installed because a route Tabby does not own holds their
    /// destination and metric: we never replace it.
    pub conflicts: Vec<(Route, Route)>,
}

impl RoutePlan {
    /// Nothing to do.
    pub fn is_empty(&self) -> bool {
        self.add.is_empty()
            && self.replace.is_empty()
            && self.delete.is_empty()
            && self.stale.is_empty()
    }
}

/// True when `actual` is what `want` asks for (fields the kernel fills in on its own,
/// such as the scope of a gatewayed route, are compared only when we set them).
pub fn route_matches(want: &Route, actual: &Route) -> bool {
    if want.dst != actual.dst || want.kind != actual.kind || want.table != actual.table {
        return false;
    }
    if want.effective_metric() != actual.effective_metric() {
        return false;
    }
    if want.kind == RouteKind::Blackhole {
        return true;
    }
    let hops = |r: &Route| {
        let mut v: Vec<(IpAddr, Option<u32>)> =
            r.multipath.iter().map(|h| (h.gateway, h.oif)).collect();
        v.sort();
        v
    };
    // A single-hop ECMP route is a plain gatewayed route in the kernel.
    type Hops = Vec<(IpAddr, Option<u32>)>;
    let norm = |r: &Route| -> (Option<IpAddr>, Option<u32>, Hops) {
        if r.multipath.len() == 1 {
            (Some(r.multipath[0].gateway), r.multipath[0].oif, Vec::new())
        } else {
            (r.gateway, r.oif, hops(r))
        }
    };
    let (wg, wo, wh) = norm(want);
    let (ag, ao, ah) = norm(actual);
    if wg != ag || wh != ah {
        return false;
    }
    // Our own desired routes always name their device, learned ones may not.
    if wo.is_some() && wo != ao {
        return false;
    }
    if want.onlink && !actual.onlink {
        return false;
    }
    if want.scope == tabby_dataplane::RouteScope::Link && actual.scope != want.scope {
        return false;
    }
    true
}

/// Diffs `desired` against the kernel's routes (all of them; only ours, protocol 80 in
/// the main table, are ever deleted). `keep` spares routes we own but must not delete
/// (a CNI-made workload route whose endpoint is not stored yet; old learned routes
/// during a graceful restart).
pub fn plan_routes(
    desired: &BTreeMap<IpNet, Route>,
    actual: &[Route],
    keep: impl Fn(&Route) -> bool,
) -> RoutePlan {
    let mut plan = RoutePlan::default();
    let mut by_dst: BTreeMap<IpNet, Vec<&Route>> = BTreeMap::new();
    for r in actual.iter().filter(|r| r.table == MAIN_TABLE) {
        by_dst.entry(r.dst).or_default().push(r);
    }
    for (dst, want) in desired {
        if want.oif == Some(PENDING_VXLAN) {
            continue;
        }
        match by_dst.get(dst) {
            None => plan.add.push(want.clone()),
            Some(have) => {
                let foreign = have.iter().find(|a| {
                    a.protocol != TABBY_ROUTE_PROTOCOL
                        && a.effective_metric() == want.effective_metric()
                });
                if let Some(f) = foreign {
                    plan.conflicts.push((want.clone(), (*f).clone()));
                    continue;
                }
                if !have.iter().any(|a| route_matches(want, a)) {
                    plan.replace.push(want.clone());
                }
                // Our other routes there go: copies beyond the first, and those at
                // another metric or with another path (once the wanted one is in).
                let mut matched = false;
                for a in have.iter().filter(|a| a.protocol == TABBY_ROUTE_PROTOCOL) {
                    if route_matches(want, a) && !matched {
                        matched = true;
                    } else if a.effective_metric() != want.effective_metric()
                        || route_matches(want, a)
                    {
                        plan.stale.push((*a).clone());
                    }
                }
            }
        }
    }
    for r in actual {
        if r.protocol == TABBY_ROUTE_PROTOCOL
            && r.table == MAIN_TABLE
            && !desired.contains_key(&r.dst)
            && !keep(r)
        {
            plan.delete.push(r.clone());
        }
    }
    plan
}

/// What one reconcile pass did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// Routes added or replaced.
    pub routes_changed: usize,
    /// Routes deleted.
    pub routes_deleted: usize,
    /// Our routes in the kernel after the pass (desired ones present).
    pub routes_installed: usize,
    /// Neighbour, FDB, device and address changes.
    pub vxlan_changes: usize,
    /// Failures (each names the object); the pass carries on past them.
    pub errors: Vec<String>,
    /// Wanted routes left out because a route Tabby does not own holds the place.
    pub conflicts: Vec<String>,
    /// Destinations and metrics of the main table's routes Tabby does not own, as
    /// the last full pass read them.
    pub foreign: Vec<(IpNet, u32)>,
}

/// Applies desired state through a [`Netlink`].
pub struct Reconciler {
    nl: Arc<dyn Netlink>,
    /// Workload interface prefix.
    pub interface_prefix: String,
}

impl Reconciler {
    /// A reconciler over `nl`.
    pub fn new(nl: Arc<dyn Netlink>, interface_prefix: &str) -> Reconciler {
        Reconciler {
            nl,
            interface_prefix: interface_prefix.to_string(),
        }
    }

    /// The netlink handle.
    pub fn netlink(&self) -> &Arc<dyn Netlink> {
        &self.nl
    }

    /// Interface names to indexes.
    pub async fn links(&self) -> tabby_dataplane::Result<BTreeMap<String, u32>> {
        Ok(self
            .nl
            .links()
            .await?
            .into_iter()
            .map(|l| (l.name, l.index))
            .collect())
    }

    /// Makes the VXLAN device match (created, updated or removed). Returns the
    /// number of changes; errors are collected.
    pub async fn apply_vxlan(&self, want: Option<&VxlanDesired>, out: &mut Applied) {
        let name = crate::desired::VXLAN_DEVICE;
        let existing = match self.nl.link_by_name(name).await {
            Ok(l) => l,
            Err(e) => {
                out.errors.push(format!("look up {name}: {e}"));
                return;
            }
        };
        let Some(want) = want else {
            if let Some(l) = existing {
                match self.nl.delete_link(l.index).await {
                    Ok(()) => out.vxlan_changes += 1,
                    Err(e) => out.errors.push(format!("delete {name}: {e}")),
                }
            }
            return;
        };
        // Recreate when the tunnel parameters differ (the kernel cannot change them).
        let mut link = existing;
        if let Some(l) = &link {
            let same = match self.nl.vxlan(name).await {
                Ok(Some(have)) => {
                    have.vni == want.spec.vni
                        && have.port == want.spec.port
                        && have.local == want.spec.local
                        && (want.spec.parent.is_none() || have.parent == want.spec.parent)
                }
                _ => false,
            };
            if !same {
                if let Err(e) = self.nl.delete_link(l.index).await {
                    out.errors.push(format!("delete stale {name}: {e}"));
                    return;
                }
                out.vxlan_changes += 1;
                link = None;
            }
        }
        let link = match link {
            Some(l) => l,
            None => {
                if let Err(e) = self.nl.create_vxlan(&want.spec).await {
                    out.errors.push(format!("create {name}: {e}"));
                    return;
                }
                out.vxlan_changes += 1;
                match self.nl.link_by_name(name).await {
                    Ok(Some(l)) => l,
                    Ok(None) => {
                        out.errors.push(format!("{name} vanished after creation"));
                        return;
                    }
                    Err(e) => {
                        out.errors.push(format!("look up {name}: {e}"));
                        return;
                    }
                }
            }
        };
        let attrs = LinkAttrs {
            mac: want.spec.mac.filter(|m| link.mac != Some(*m)),
            mtu: want.spec.mtu.filter(|m| link.mtu != Some(*m)),
            up: (!link.up).then_some(true),
        };
        if attrs != LinkAttrs::default() {
            match self.nl.set_link(link.index, &attrs).await {
                Ok(()) => out.vxlan_changes += 1,
                Err(e) => out.errors.push(format!("set {name} {attrs:?}: {e}")),
            }
        }
        // Address: exactly the tunnel /32.
        match self.nl.addresses(Some(link.index)).await {
            Ok(addrs) => {
                let fam = |n: &IpNet| n.addr().is_ipv4();
                for a in addrs
                    .iter()
                    .filter(|a| fam(&a.net) && a.net != want.address)
                {
                    if let Err(e) = self.nl.del_address(link.index, a.net).await {
                        out.errors
                            .push(format!("remove {} from {name}: {e}", a.net));
                    }
                    out.vxlan_changes += 1;
                }
                if !addrs.iter().any(|a| a.net == want.address) {
                    match self.nl.add_address(link.index, want.address).await {
                        Ok(()) | Err(DpError::Exists { .. }) => out.vxlan_changes += 1,
                        Err(e) => out
                            .errors
                            .push(format!("add {} to {name}: {e}", want.address)),
                    }
                }
            }
            Err(e) => out.errors.push(format!("addresses of {name}: {e}")),
        }
        // Neighbours: permanent entries for every remote VTEP, nothing else permanent.
        match self.nl.neighbours(Some(link.index)).await {
            Ok(have) => {
                let have: BTreeMap<IpAddr, ([u8; 6], bool)> =
                    have.iter().map(|n| (n.ip, (n.mac, n.permanent))).collect();
                for (ip, mac) in &want.neighbours {
                    if have.get(ip) != Some(&(*mac, true)) {
                        let n = Neighbour {
                            index: link.index,
                            ip: *ip,
                            mac: *mac,
                            permanent: true,
                        };
                        match self.nl.set_neighbour(&n).await {
                            Ok(()) => out.vxlan_changes += 1,
                            Err(e) => out.errors.push(format!("neighbour {ip} on {name}: {e}")),
                        }
                    }
                }
                for (ip, (_, permanent)) in &have {
                    if *permanent && !want.neighbours.contains_key(ip) {
                        match self.nl.del_neighbour(link.index, *ip).await {
                            Ok(()) | Err(DpError::NotFound { .. }) => out.vxlan_changes += 1,
                            Err(e) => out
                                .errors
                                .push(format!("remove neighbour {ip} on {name}: {e}")),
                        }
                    }
                }
            }
            Err(e) => out.errors.push(format!("neighbours of {name}: {e}")),
        }
        match self.nl.fdb(link.index).await {
            Ok(have) => {
                let have_set: HashSet<([u8; 6], IpAddr)> =
                    have.iter().map(|e| (e.mac, e.dst)).collect();
                for (mac, dst) in &want.fdb {
                    if !have_set.contains(&(*mac, *dst)) {
                        let e = FdbEntry {
                            index: link.index,
                            mac: *mac,
                            dst: *dst,
                        };
                        match self.nl.set_fdb(&e).await {
                            Ok(()) => out.vxlan_changes += 1,
                            Err(err) => out.errors.push(format!("fdb {dst} on {name}: {err}")),
                        }
                    }
                }
                for e in &have {
                    if want.fdb.get(&e.mac) != Some(&e.dst) {
                        match self.nl.del_fdb(e).await {
                            Ok(()) | Err(DpError::NotFound { .. }) => out.vxlan_changes += 1,
                            Err(err) => out
                                .errors
                                .push(format!("remove fdb {} on {name}: {err}", e.dst)),
                        }
                    }
                }
            }
            Err(e) => out.errors.push(format!("fdb of {name}: {e}")),
        }
    }

    /// Applies routes: the diff against the kernel, batched. `keep_learned` spares
    /// our gatewayed routes that are not desired (graceful restart: peers have not
    /// re-sent them yet).
    pub async fn apply_routes(
        &self,
        desired: &BTreeMap<IpNet, Route>,
        links: &BTreeMap<String, u32>,
        workload_ifaces: &BTreeSet<u32>,
        keep_learned: bool,
        out: &mut Applied,
    ) {
        let mut actual = Vec::new();
        for fam in [Family::V4, Family::V6] {
            match self.nl.routes(fam).await {
                Ok(r) => actual.extend(r),
                Err(e) => {
                    out.errors.push(format!("list {fam:?} routes: {e}"));
                    return;
                }
            }
        }
        let prefix = self.interface_prefix.clone();
        let workload_dev: BTreeSet<u32> = links
            .iter()
            .filter(|(n, _)| n.starts_with(&prefix))
            .map(|(_, i)| *i)
            .collect();
        let plan = plan_routes(desired, &actual, |r| {
            // A route on a workload interface whose endpoint we do not know yet
            // belongs to the CNI plugin until the endpoint is stored.
            if let Some(oif) = r.oif
                && r.gateway.is_none()
                && r.multipath.is_empty()
                && r.kind == RouteKind::Unicast
                && workload_dev.contains(&oif)
                && !workload_ifaces.contains(&oif)
            {
                return true;
            }
            keep_learned
                && r.kind == RouteKind::Unicast
                && (r.gateway.is_some() || !r.multipath.is_empty())
        });
        if !plan.delete.is_empty() {
            let res = self.nl.del_routes(&plan.delete).await;
            for (r, e) in plan.delete.iter().zip(res) {
                match e {
                    Ok(()) | Err(DpError::NotFound { .. }) => out.routes_deleted += 1,
                    Err(e) => out.errors.push(format!("delete route {r}: {e}")),
                }
            }
        }
        let mut retry = Vec::new();
        if !plan.add.is_empty() {
            let res = self.nl.add_routes(&plan.add).await;
            for (r, e) in plan.add.iter().zip(res) {
                match e {
                    Ok(()) => out.routes_changed += 1,
                    Err(DpError::Exists { .. }) => retry.push(r.clone()),
                    Err(e) => out.errors.push(format!("add route {r}: {e}")),
                }
            }
        }
        for r in plan.replace.iter().chain(&retry) {
            match self.nl.replace_route(r).await {
                Ok(()) => out.routes_changed += 1,
                Err(e) => out.errors.push(format!("replace route {r}: {e}")),
            }
        }
        if !plan.stale.is_empty() {
            let res = self.nl.del_routes(&plan.stale).await;
            for (r, e) in plan.stale.iter().zip(res) {
                match e {
                    Ok(()) | Err(DpError::NotFound { .. }) => out.routes_deleted += 1,
                    Err(e) => out.errors.push(format!("delete route {r}: {e}")),
                }
            }
        }
        for (want, f) in &plan.conflicts {
            out.conflicts.push(format!(
                "route {}: not installed: a route Tabby does not own is there ({f})",
                want.dst
            ));
        }
        out.foreign = actual
            .iter()
            .filter(|r| r.table == MAIN_TABLE && r.protocol != TABBY_ROUTE_PROTOCOL)
            .map(|r| (r.dst, r.effective_metric()))
            .collect();
        let failed = out.errors.len() + out.conflicts.len();
        out.routes_installed = desired
            .values()
            .filter(|r| r.oif != Some(PENDING_VXLAN))
            .count()
            .saturating_sub(failed);
    }

    /// One full pass: the VXLAN device first (routes over it need its index), then
    /// the routes. `links` are the interfaces by name, as listed for this pass.
    pub async fn apply(
        &self,
        desired: &Desired,
        links: &BTreeMap<String, u32>,
        workload_ifaces: &BTreeSet<u32>,
        keep_learned: bool,
    ) -> Applied {
        let mut out = Applied::default();
        self.apply_vxlan(desired.vxlan.as_ref(), &mut out).await;
        self.apply_routes(
            &desired.routes,
            links,
            workload_ifaces,
            keep_learned,
            &mut out,
        )
        .await;
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tabby_dataplane::NextHop;
    use tabby_dataplane::fake::FakeWorld;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn plan_adds_replaces_and_deletes_only_ours() {
        let mut desired = BTreeMap::new();
        let bh = Route::blackhole(net("100.64.0.0/26"));
        let good = Route::via_onlink(net("100.64.0.64/26"), "198.18.0.2".parse().unwrap(), 2);
        let moved = Route::via_onlink(net("100.64.0.128/26"), "198.18.0.3".parse().unwrap(), 2);
        desired.insert(bh.dst, bh.clone());
        desired.insert(good.dst, good.clone());
        desired.insert(moved.dst, moved.clone());
        let stale = Route::via_onlink(net("100.64.1.0/26"), "198.18.0.9".parse().unwrap(), 2);
        let mut foreign = Route::via(net("198.19.0.0/24"), "198.18.0.1".parse().unwrap(), 2);
        foreign.protocol = 0;
        let old_moved = Route::via_onlink(moved.dst, "198.18.0.4".parse().unwrap(), 2);
        let actual = vec![good.clone(), stale.clone(), foreign.clone(), old_moved];
        let plan = plan_routes(&desired, &actual, |_| false);
        assert_eq!(plan.add, vec![bh]);
        assert_eq!(plan.replace, vec![moved]);
        assert_eq!(plan.delete, vec![stale.clone()]);
        // Spared routes stay.
        let plan = plan_routes(&desired, &actual, |r| r.dst == stale.dst);
        assert!(plan.delete.is_empty());
        // Nothing to do when everything matches.
        let in_sync: Vec<Route> = desired.values().cloned().collect();
        assert!(plan_routes(&desired, &in_sync, |_| false).is_empty());
    }

    #[test]
    fn single_hop_ecmp_matches_a_plain_route() {
        let want = Route::ecmp(
            net("100.64.0.64/26"),
            vec![NextHop {
                gateway: "198.18.0.2".parse().unwrap(),
                oif: None,
                onlink: false,
            }],
        );
        let mut kernel = Route::via(net("100.64.0.64/26"), "198.18.0.2".parse().unwrap(), 2);
        kernel.protocol = TABBY_ROUTE_PROTOCOL;
        assert!(route_matches(&want, &kernel));
        let mut other = kernel.clone();
        other.gateway = Some("198.18.0.3".parse().unwrap());
        assert!(!route_matches(&want, &other));
    }

    #[tokio::test]
    async fn reconciler_converges_the_fake_and_repairs_drift() {
        let world = FakeWorld::new();
        let eth = world.add_link("n", "eth0", Some("veth"), 1500);
        let nl: Arc<dyn Netlink> = Arc::new(world.netlink("n"));
        let rec = Reconciler::new(nl.clone(), "cali");
        let mut desired = Desired::default();
        for i in 0..50u32 {
            let dst = IpNet::new(
                IpAddr::V4(std::net::Ipv4Addr::from(0x6440_0000 + i * 64)),
                26,
            )
            .unwrap();
            desired.routes.insert(
                dst,
                Route::via_onlink(dst, "198.18.0.2".parse().unwrap(), eth),
            );
        }
        let out = rec
            .apply(
                &desired,
                &rec.links().await.unwrap(),
                &BTreeSet::new(),
                false,
            )
            .await;
        assert!(out.errors.is_empty(), "{:?}", out.errors);
        assert_eq!(out.routes_changed, 50);
        assert_eq!(world.routes("n").len(), 50);
        // A second pass changes nothing.
        let out = rec
            .apply(
                &desired,
                &rec.links().await.unwrap(),
                &BTreeSet::new(),
                false,
            )
            .await;
        assert_eq!((out.routes_changed, out.routes_deleted), (0, 0));
        // Drift: a route deleted by hand comes back, a stray one of ours goes.
        let victim = desired.routes.values().next().unwrap().clone();
        nl.del_route(&victim).await.unwrap();
        nl.add_route(&Route::blackhole(net("100.65.0.0/26")))
            .await
            .unwrap();
        let out = rec
            .apply(
                &desired,
                &rec.links().await.unwrap(),
                &BTreeSet::new(),
                false,
            )
            .await;
        assert_eq!((out.routes_changed, out.routes_deleted), (1, 1));
        assert_eq!(world.routes("n").len(), 50);
    }
}
