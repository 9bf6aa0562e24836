//! The RIBs: Adj-RIB-In per peer and the Loc-RIB (paths per destination with
//! the RFC 4271 9.1.2 decision process and an ECMP set), plus Adj-RIB-Out per
//! peer producing updates grouped by shared attributes. Pure data structures.

use crate::packet::attribute::{NextHop, PathAttributes};
use crate::packet::capability::Family;
use crate::policy::{self, DEFAULT_LOCAL_PREF, LocalInfo, PeerInfo, RouteSource};
use ipnet::IpNet;
use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

/// One path to a destination.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    /// Where it came from.
    pub source: RouteSource,
    /// Attributes (shared between prefixes of one UPDATE).
    pub attrs: Arc<PathAttributes>,
    /// Next hop.
    pub next_hop: NextHop,
}

impl Route {
    fn key(&self) -> Option<IpAddr> {
        match &self.source {
            RouteSource::Local => None,
            RouteSource::Peer { addr, .. } => Some(*addr),
        }
    }

    fn local_pref(&self) -> u32 {
        self.attrs.local_pref.unwrap_or(DEFAULT_LOCAL_PREF)
    }

    fn is_ebgp(&self) -> bool {
        matches!(self.source, RouteSource::Peer { ebgp: true, .. })
    }
}

/// Compares up to the point where RFC 4271 lets ties become ECMP (before
/// the router-id tie breakers). `Less` means `a` is preferred.
pub fn compare_multipath(a: &Route, b: &Route) -> Ordering {
    let local = |r: &Route| !matches!(r.source, RouteSource::Local);
    b.local_pref()
        .cmp(&a.local_pref())
        // Our own routes win over learned ones with equal preference.
        .then_with(|| local(a).cmp(&local(b)))
        .then_with(|| a.attrs.as_path.length().cmp(&b.attrs.as_path.length()))
        .then_with(|| a.attrs.origin.cmp(&b.attrs.origin))
        .then_with(|| {
            // MED only between routes from the same neighbouring AS; a
            // missing MED counts as 0 (RFC 4271 9.1.2.2 c).
            if a.attrs.as_path.neighbor_as() == b.attrs.as_path.neighbor_as() {
                a.attrs.med.unwrap_or(0).cmp(&b.attrs.med.unwrap_or(0))
            } else {
                Ordering::Equal
            }
        })
        .then_with(|| b.is_ebgp().cmp(&a.is_ebgp()))
    // IGP cost to the next hop: ignored (no IGP).
}

/// Full decision process order. `Less` means `a` is preferred.
pub fn compare(a: &Route, b: &Route) -> Ordering {
    let rid = |r: &Route| match &r.source {
        RouteSource::Local => 0,
        RouteSource::Peer { router_id, .. } => {
            u32::from(r.attrs.originator_id.unwrap_or(*router_id))
        }
    };
    compare_multipath(a, b)
        .then_with(|| rid(a).cmp(&rid(b)))
        .then_with(|| a.attrs.cluster_list.len().cmp(&b.attrs.cluster_list.len()))
        .then_with(|| a.key().cmp(&b.key()))
}

/// All paths to one prefix, and the selection.
#[derive(Clone, Debug, Default)]
pub struct Destination {
    /// Paths keyed by peer address (`None` = local).
    pub paths: BTreeMap<Option<IpAddr>, Route>,
}

impl Destination {
    /// The best path.
    pub fn best(&self) -> Option<&Route> {
        self.paths.values().min_by(|a, b| compare(a, b))
    }

    /// The best path and every path equal to it for ECMP.
    pub fn multipath(&self) -> Vec<&Route> {
        let Some(best) = self.best() else {
            return Vec::new();
        };
        let mut v: Vec<&Route> = self
            .paths
            .values()
            .filter(|r| compare_multipath(r, best) == Ordering::Equal)
            .collect();
        v.sort_by(|a, b| compare(a, b));
        v
    }
}

/// A change of the selected paths for one prefix, for the kernel.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BestPathChange {
    /// The prefix.
    pub prefix: IpNet,
    /// Next hops of the ECMP set, best first; empty = no route any more.
    /// Locally originated routes are not reported (they are ours).
    pub next_hops: Vec<IpAddr>,
}

/// One group of prefixes sharing attributes and next hop.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Announcement {
    /// Attributes to send.
    pub attrs: Arc<PathAttributes>,
    /// Next hop to send.
    pub next_hop: NextHop,
    /// Prefixes.
    pub prefixes: Vec<IpNet>,
}

/// What to send to one peer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OutUpdate {
    /// Announcements grouped by shared attributes.
    pub announce: Vec<Announcement>,
    /// Withdrawals.
    pub withdraw: Vec<IpNet>,
}

impl OutUpdate {
    /// Nothing to send.
    pub fn is_empty(&self) -> bool {
        self.announce.is_empty() && self.withdraw.is_empty()
    }
}

/// Loc-RIB plus per-peer Adj-RIB-In index and Adj-RIB-Out.
#[derive(Debug, Default)]
pub struct Rib {
    dests: BTreeMap<IpNet, Destination>,
    /// Prefixes each peer announced (the Adj-RIB-In index).
    adj_in: BTreeMap<IpAddr, BTreeSet<IpNet>>,
    /// What each peer was last sent.
    adj_out: BTreeMap<IpAddr, BTreeMap<IpNet, (Arc<PathAttributes>, NextHop)>>,
    /// Routes kept for a restarting peer (RFC 4724) and not yet refreshed.
    stale: BTreeMap<IpAddr, BTreeSet<IpNet>>,
}

/// The family of a prefix.
pub fn family_of(prefix: &IpNet) -> Family {
    match prefix {
        IpNet::V4(_) => Family::Ipv4Unicast,
        IpNet::V6(_) => Family::Ipv6Unicast,
    }
}

fn ecmp_next_hops(d: &Destination) -> Vec<IpAddr> {
    if matches!(d.best().map(|r| &r.source), Some(RouteSource::Local) | None) {
        return Vec::new();
    }
    let mut v: Vec<IpAddr> = Vec::new();
    for r in d.multipath() {
        let nh = match r.next_hop {
            NextHop::Ipv4(a) => IpAddr::V4(a),
            NextHop::Ipv6 { global, .. } => IpAddr::V6(global),
        };
        if !v.contains(&nh) && !matches!(r.source, RouteSource::Local) {
            v.push(nh);
        }
    }
    v
}

impl Rib {
    /// An empty RIB.
    pub fn new() -> Self {
        Rib::default()
    }

    /// The destination for a prefix.
    pub fn get(&self, prefix: &IpNet) -> Option<&Destination> {
        self.dests.get(prefix)
    }

    /// All prefixes with at least one path.
    pub fn prefixes(&self) -> impl Iterator<Item = &IpNet> {
        self.dests.keys()
    }

    /// Prefixes currently held from `peer` (its Adj-RIB-In after import).
    pub fn adj_in(&self, peer: &IpAddr) -> Vec<IpNet> {
        self.adj_in
            .get(peer)
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default()
    }

    /// What `peer` was last sent.
    pub fn adj_out(
        &self,
        peer: &IpAddr,
    ) -> Option<&BTreeMap<IpNet, (Arc<PathAttributes>, NextHop)>> {
        self.adj_out.get(peer)
    }

    /// Inserts or replaces a path; returns the best-path change if the ECMP
    /// next-hop set changed.
    pub fn insert(&mut self, prefix: IpNet, route: Route) -> Option<BestPathChange> {
        let d = self.dests.entry(prefix).or_default();
        let before = ecmp_next_hops(d);
        if let Some(addr) = route.key() {
            self.adj_in.entry(addr).or_default().insert(prefix);
            // Re-announced by a restarted peer: no longer stale.
            if let Some(s) = self.stale.get_mut(&addr) {
                s.remove(&prefix);
            }
        }
        d.paths.insert(route.key(), route);
        let after = ecmp_next_hops(d);
        (before != after).then_some(BestPathChange {
            prefix,
            next_hops: after,
        })
    }

    /// Removes the path from `source` (`None` = local).
    pub fn remove(&mut self, prefix: IpNet, source: Option<IpAddr>) -> Option<BestPathChange> {
        let d = self.dests.get_mut(&prefix)?;
        let before = ecmp_next_hops(d);
        d.paths.remove(&source)?;
        if let Some(addr) = source {
            if let Some(s) = self.adj_in.get_mut(&addr) {
                s.remove(&prefix);
            }
            if let Some(s) = self.stale.get_mut(&addr) {
                s.remove(&prefix);
            }
        }
        let after = ecmp_next_hops(d);
        if d.paths.is_empty() {
            self.dests.remove(&prefix);
        }
        (before != after).then_some(BestPathChange {
            prefix,
            next_hops: after,
        })
    }

    /// Drops everything learned from `peer` and what it was sent (session
    /// down). Returns the affected prefixes and best-path changes.
    pub fn remove_peer(&mut self, peer: IpAddr) -> (Vec<IpNet>, Vec<BestPathChange>) {
        self.adj_out.remove(&peer);
        self.stale.remove(&peer);
        let prefixes: Vec<IpNet> = self
            .adj_in
            .remove(&peer)
            .map(|s| s.into_iter().collect())
            .unwrap_or_default();
        let changes = prefixes
            .iter()
            .filter_map(|p| self.remove(*p, Some(peer)))
            .collect();
        (prefixes, changes)
    }

    /// Recomputes what `to` should have for `prefixes` (all prefixes when
    /// `None`), updates its Adj-RIB-Out and returns the difference, grouped
    /// by shared attributes and next hop.
    pub fn sync_peer(
        &mut self,
        local: &LocalInfo,
        to: &PeerInfo,
        prefixes: Option<&[IpNet]>,
    ) -> OutUpdate {
        let all: Vec<IpNet>;
        let list = match prefixes {
            Some(p) => p,
            None => {
                let mut s: BTreeSet<IpNet> = self.dests.keys().copied().collect();
                if let Some(out) = self.adj_out.get(&to.addr) {
                    s.extend(out.keys().copied());
                }
                all = s.into_iter().collect();
                &all
            }
        };
        let out = self.adj_out.entry(to.addr).or_default();
        let mut groups: Vec<Announcement> = Vec::new();
        let mut interned: HashMap<PathAttributes, Arc<PathAttributes>> = HashMap::new();
        let mut group_of: HashMap<(*const PathAttributes, NextHop), usize> = HashMap::new();
        let mut withdraw = Vec::new();
        for prefix in list {
            let want =
                self.dests.get(prefix).and_then(|d| d.best()).and_then(|r| {
                    policy::export(local, to, prefix, &r.source, &r.attrs, r.next_hop)
                });
            match want {
                Some((attrs, nh)) => {
                    if out
                        .get(prefix)
                        .is_some_and(|(a, n)| **a == attrs && *n == nh)
                    {
                        continue;
                    }
                    // Hash lookups keep packing linear in the number of
                    // prefixes however many attribute sets there are.
                    let attrs = match interned.get(&attrs) {
                        Some(a) => a.clone(),
                        None => {
                            let a = Arc::new(attrs);
                            interned.insert((*a).clone(), a.clone());
                            a
                        }
                    };
                    out.insert(*prefix, (attrs.clone(), nh));
                    let key = (Arc::as_ptr(&attrs), nh);
                    match group_of.get(&key) {
                        Some(i) => groups[*i].prefixes.push(*prefix),
                        None => {
                            group_of.insert(key, groups.len());
                            groups.push(Announcement {
                                attrs,
                                next_hop: nh,
                                prefixes: vec![*prefix],
                            });
                        }
                    }
                }
                None => {
                    if out.remove(prefix).is_some() {
                        withdraw.push(*prefix);
                    }
                }
            }
        }
        OutUpdate {
            announce: groups,
            withdraw,
        }
    }

    /// Forgets what `peer` was sent (before a fresh full sync).
    pub fn reset_adj_out(&mut self, peer: &IpAddr) {
        self.adj_out.remove(peer);
    }

    /// Graceful restart helper (RFC 4724 4.2): the session with `peer` went
    /// down without a NOTIFICATION. Routes of `keep` families stay in use,
    /// marked stale; routes of other families are removed. Returns the
    /// removed prefixes and the best-path changes.
    pub fn peer_restarting(
        &mut self,
        peer: IpAddr,
        keep: &[Family],
    ) -> (Vec<IpNet>, Vec<BestPathChange>) {
        self.adj_out.remove(&peer);
        let held = self.adj_in(&peer);
        let (kept, gone): (Vec<IpNet>, Vec<IpNet>) =
            held.into_iter().partition(|p| keep.contains(&family_of(p)));
        self.stale.entry(peer).or_default().extend(kept);
        let changes = gone
            .iter()
            .filter_map(|p| self.remove(*p, Some(peer)))
            .collect();
        (gone, changes)
    }

    /// Prefixes from `peer` still marked stale.
    pub fn stale(&self, peer: &IpAddr) -> Vec<IpNet> {
        self.stale
            .get(peer)
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default()
    }

    /// Removes `peer`'s routes still stale in `family` (all families when
    /// `None`): after its End-of-RIB, or when the restart timer expires.
    pub fn sweep_stale(
        &mut self,
        peer: IpAddr,
        family: Option<Family>,
    ) -> (Vec<IpNet>, Vec<BestPathChange>) {
        let gone: Vec<IpNet> = self
            .stale(&peer)
            .into_iter()
            .filter(|p| family.is_none_or(|f| family_of(p) == f))
            .collect();
        let changes = gone
            .iter()
            .filter_map(|p| self.remove(*p, Some(peer)))
            .collect();
        if self.stale.get(&peer).is_some_and(|s| s.is_empty()) {
            self.stale.remove(&peer);
        }
        (gone, changes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::attribute::{AsPath, Origin};
    use crate::packet::capability::Family;
    use std::net::Ipv4Addr;

    fn peer_src(last: u8, ebgp: bool) -> RouteSource {
        RouteSource::Peer {
            addr: IpAddr::V4(Ipv4Addr::new(198, 18, 0, last)),
            ebgp,
            rr_client: false,
            router_id: Ipv4Addr::new(198, 18, 1, last),
        }
    }

    fn route(last: u8, ebgp: bool, f: impl FnOnce(&mut PathAttributes)) -> Route {
        let mut a = PathAttributes {
            as_path: AsPath::from_sequence(&[65001]),
            ..Default::default()
        };
        f(&mut a);
        Route {
            source: peer_src(last, ebgp),
            attrs: Arc::new(a),
            next_hop: NextHop::Ipv4(Ipv4Addr::new(198, 18, 0, last)),
        }
    }

    fn better(a: &Route, b: &Route) {
        assert_eq!(compare(a, b), Ordering::Less, "{a:?} should beat {b:?}");
        assert_eq!(compare(b, a), Ordering::Greater);
    }

    #[test]
    fn decision_process_steps_in_order() {
        // 1. Higher LOCAL_PREF beats a shorter path.
        better(
            &route(9, false, |a| {
                a.local_pref = Some(200);
                a.as_path = AsPath::from_sequence(&[1, 2, 3]);
            }),
            &route(1, false, |a| a.local_pref = Some(100)),
        );
        // Missing LOCAL_PREF counts as 100.
        better(
            &route(9, false, |a| a.local_pref = Some(101)),
            &route(1, false, |_| {}),
        );
        // 2. Shorter AS path.
        better(
            &route(9, false, |_| {}),
            &route(1, false, |a| {
                a.as_path = AsPath::from_sequence(&[65001, 65002])
            }),
        );
        // 3. Lower origin.
        better(
            &route(9, false, |a| a.origin = Origin::Egp),
            &route(1, false, |a| a.origin = Origin::Incomplete),
        );
        // 4. Lower MED from the same neighbour AS...
        better(
            &route(9, false, |a| a.med = Some(5)),
            &route(1, false, |a| a.med = Some(10)),
        );
        // ...but not across neighbour ASes (falls through to router id).
        better(
            &route(1, false, |a| {
                a.med = Some(10);
                a.as_path = AsPath::from_sequence(&[65002]);
            }),
            &route(9, false, |a| a.med = Some(5)),
        );
        // 5. eBGP over iBGP.
        better(&route(9, true, |_| {}), &route(1, false, |_| {}));
        // 6. Lower router id; ORIGINATOR_ID stands in for it.
        better(&route(1, false, |_| {}), &route(9, false, |_| {}));
        better(
            &route(9, false, |a| {
                a.originator_id = Some(Ipv4Addr::new(1, 1, 1, 1))
            }),
            &route(1, false, |_| {}),
        );
        // 7. Shorter cluster list.
        let same_id = |last, n| {
            route(last, false, move |a| {
                a.originator_id = Some(Ipv4Addr::new(5, 5, 5, 5));
                a.cluster_list = vec![Ipv4Addr::new(7, 7, 7, 7); n];
            })
        };
        better(&same_id(9, 1), &same_id(1, 2));
        // 8. Lower peer address.
        better(&same_id(1, 1), &same_id(9, 1));
    }

    #[test]
    fn multipath_set_and_best_path_changes() {
        let mut rib = Rib::new();
        let p: IpNet = "100.64.0.0/26".parse().unwrap();
        let c = rib.insert(p, route(2, false, |_| {})).unwrap();
        assert_eq!(c.next_hops, vec!["198.18.0.2".parse::<IpAddr>().unwrap()]);
        // An equal path joins the ECMP set.
        let c = rib.insert(p, route(3, false, |_| {})).unwrap();
        assert_eq!(c.next_hops.len(), 2);
        // A worse path does not change anything.
        assert!(
            rib.insert(p, route(4, false, |a| a.origin = Origin::Incomplete))
                .is_none()
        );
        assert_eq!(rib.get(&p).unwrap().multipath().len(), 2);
        // A better one takes over alone.
        let c = rib
            .insert(p, route(5, false, |a| a.local_pref = Some(500)))
            .unwrap();
        assert_eq!(c.next_hops, vec!["198.18.0.5".parse::<IpAddr>().unwrap()]);
        // Peer 5 goes down: back to the ECMP pair.
        let (prefixes, changes) = rib.remove_peer("198.18.0.5".parse().unwrap());
        assert_eq!(prefixes, vec![p]);
        assert_eq!(changes[0].next_hops.len(), 2);
        rib.remove_peer("198.18.0.2".parse().unwrap());
        rib.remove_peer("198.18.0.3".parse().unwrap());
        let c = rib.remove(p, Some("198.18.0.4".parse().unwrap())).unwrap();
        assert!(c.next_hops.is_empty());
        assert_eq!(rib.prefixes().count(), 0);
    }

    #[test]
    fn graceful_restart_keeps_stale_routes_until_refreshed_or_swept() {
        let mut rib = Rib::new();
        let peer: IpAddr = "198.18.0.2".parse().unwrap();
        let p4: Vec<IpNet> = ["100.64.0.0/26", "100.64.0.64/26"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let p6: IpNet = "2001:db8:1::/48".parse().unwrap();
        for p in &p4 {
            rib.insert(*p, route(2, false, |_| {}));
        }
        let mut r6 = route(2, false, |_| {});
        r6.next_hop = NextHop::Ipv6 {
            global: "2001:db8::2".parse().unwrap(),
            link_local: None,
        };
        rib.insert(p6, r6);
        // Only IPv4 is covered by the peer's graceful restart capability.
        let (gone, changes) = rib.peer_restarting(peer, &[Family::Ipv4Unicast]);
        assert_eq!(gone, vec![p6]);
        assert_eq!(changes.len(), 1);
        assert_eq!(rib.stale(&peer), p4);
        assert!(
            rib.get(&p4[0]).unwrap().best().is_some(),
            "still forwarding"
        );
        // After the restart the peer re-announces one prefix...
        assert!(rib.insert(p4[0], route(2, false, |_| {})).is_none());
        assert_eq!(rib.stale(&peer), vec![p4[1]]);
        // ...and its End-of-RIB sweeps the other.
        let (gone, changes) = rib.sweep_stale(peer, Some(Family::Ipv4Unicast));
        assert_eq!(gone, vec![p4[1]]);
        assert!(changes[0].next_hops.is_empty());
        assert!(rib.stale(&peer).is_empty());
        assert_eq!(rib.adj_in(&peer), vec![p4[0]]);
    }

    fn local() -> LocalInfo {
        LocalInfo {
            asn: 64512,
            router_id: Ipv4Addr::new(198, 18, 0, 1),
            cluster_id: Ipv4Addr::new(198, 18, 0, 1),
        }
    }

    fn to_peer(last: u8, asn: u32) -> PeerInfo {
        PeerInfo {
            addr: IpAddr::V4(Ipv4Addr::new(198, 18, 0, last)),
            remote_as: asn,
            local_as: 64512,
            router_id: Ipv4Addr::new(198, 18, 1, last),
            rr_client: false,
            next_hop_self: false,
            next_hop_keep: false,
            allow_local_as: 0,
            local_v4: Some(Ipv4Addr::new(198, 18, 0, 1)),
            local_v6: None,
            families: vec![Family::Ipv4Unicast],
            filters: Arc::from(Vec::new()),
        }
    }

    #[test]
    fn adj_rib_out_groups_and_diffs() {
        let mut rib = Rib::new();
        let shared = Arc::new(PathAttributes {
            communities: vec![1],
            ..Default::default()
        });
        let nh = NextHop::Ipv4(Ipv4Addr::UNSPECIFIED);
        let ps: Vec<IpNet> = ["100.64.0.0/26", "100.64.0.64/26", "100.64.1.0/26"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        for p in &ps[..2] {
            rib.insert(
                *p,
                Route {
                    source: RouteSource::Local,
                    attrs: shared.clone(),
                    next_hop: nh,
                },
            );
        }
        rib.insert(
            ps[2],
            Route {
                source: RouteSource::Local,
                attrs: Arc::new(PathAttributes::default()),
                next_hop: nh,
            },
        );
        let peer = to_peer(2, 65001);
        let u = rib.sync_peer(&local(), &peer, None);
        assert_eq!(u.announce.len(), 2, "two attribute groups");
        assert_eq!(u.announce[0].prefixes, ps[..2].to_vec());
        assert_eq!(u.announce[0].attrs.as_path, AsPath::from_sequence(&[64512]));
        assert_eq!(
            u.announce[0].next_hop,
            NextHop::Ipv4(Ipv4Addr::new(198, 18, 0, 1))
        );
        assert!(u.withdraw.is_empty());
        // Nothing changed: nothing to send.
        assert!(rib.sync_peer(&local(), &peer, None).is_empty());
        // Withdraw one.
        rib.remove(ps[0], None);
        let u = rib.sync_peer(&local(), &peer, Some(&ps[..1]));
        assert_eq!(u.withdraw, vec![ps[0]]);
        assert!(u.announce.is_empty());
        assert_eq!(rib.adj_out(&peer.addr).unwrap().len(), 2);
        // Learned from the peer itself: not sent back.
        let mut r = route(2, true, |_| {});
        r.attrs = Arc::new(PathAttributes {
            local_pref: Some(1000),
            ..(*r.attrs).clone()
        });
        rib.insert(ps[1], r);
        let u = rib.sync_peer(&local(), &peer, Some(&ps[1..2]));
        assert_eq!(u.withdraw, vec![ps[1]]);
    }
}
