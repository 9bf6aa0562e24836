//! Built-in route policy: what the protocol rules demand on import (AS loop
//! detection, the first-AS check on eBGP, ORIGINATOR_ID/CLUSTER_LIST loop
//! checks, LOCAL_PREF from eBGP ignored) and on export (iBGP split horizon,
//! route reflection per RFC 4456, the well-known communities NO_EXPORT,
//! NO_ADVERTISE and NO_EXPORT_SUBCONFED, no transit between eBGP peers
//! unless asked for, AS prepend and next-hop rewriting for eBGP), and Calico
//! BGPFilter rules (ordered import/export rules per family with match
//! fields, an action and operations), evaluated as pure functions.

use crate::packet::EncodeCxt;
use crate::packet::attribute::{NextHop, PathAttributes};
use crate::packet::capability::Family;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

/// Default LOCAL_PREF when none is present (RFC 4271 leaves it to the
/// implementation; 100 is what BIRD, FRR and GoBGP use).
pub const DEFAULT_LOCAL_PREF: u32 = 100;

/// Well-known community NO_EXPORT (RFC 1997): not advertised outside the AS
/// (to eBGP peers).
pub const NO_EXPORT: u32 = 0xFFFF_FF01;
/// Well-known community NO_ADVERTISE (RFC 1997): not advertised to any peer.
pub const NO_ADVERTISE: u32 = 0xFFFF_FF02;
/// Well-known community NO_EXPORT_SUBCONFED (RFC 1997): not advertised to
/// external peers, confederation members included. Without confederations
/// that is every eBGP peer, as for NO_EXPORT.
pub const NO_EXPORT_SUBCONFED: u32 = 0xFFFF_FF03;

/// This speaker's identity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LocalInfo {
    /// Our AS.
    pub asn: u32,
    /// Our BGP identifier.
    pub router_id: Ipv4Addr,
    /// Route reflection cluster id (defaults to the router id).
    pub cluster_id: Ipv4Addr,
}

/// Everything the policy needs to know about one peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerInfo {
    /// Peer address (the session's remote address).
    pub addr: IpAddr,
    /// Peer AS.
    pub remote_as: u32,
    /// Our AS towards this peer (the global AS or a per-peer override).
    pub local_as: u32,
    /// Peer BGP identifier (known once the session is up).
    pub router_id: Ipv4Addr,
    /// The peer is our route reflector client.
    pub rr_client: bool,
    /// Always rewrite the next hop to ourselves.
    pub next_hop_self: bool,
    /// Never rewrite the next hop, even on eBGP.
    pub next_hop_keep: bool,
    /// How many times our own AS may appear in a received AS path.
    pub allow_local_as: u8,
    /// Our IPv4 address on the session, used as next hop self.
    pub local_v4: Option<Ipv4Addr>,
    /// Our IPv6 address for IPv6 next hop self.
    pub local_v6: Option<Ipv6Addr>,
    /// Families negotiated on the session.
    pub families: Vec<Family>,
    /// BGPFilters applied to this peer, in order.
    pub filters: Arc<[Filter]>,
    /// How UPDATEs to this peer are encoded (AS number size, message size
    /// limit): exports whose attributes do not fit are not sent.
    pub encode: EncodeCxt,
    /// Export routes learned over eBGP to this (eBGP) peer, making this
    /// speaker transit between external peers. Off by default: like
    /// Calico's BIRD configuration, a node only exports its own and the
    /// cluster's routes to external peers.
    pub transit: bool,
    /// Treat routes from this (eBGP) peer as withdrawn unless their AS path
    /// starts with the peer's AS (RFC 4271 section 6.3).
    pub enforce_first_as: bool,
}

impl PeerInfo {
    /// External peer (different AS).
    pub fn is_ebgp(&self) -> bool {
        self.remote_as != self.local_as
    }
}

/// Why a received route was dropped on import.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImportReject {
    /// Our AS is in the AS path more often than allowed.
    AsLoop,
    /// ORIGINATOR_ID is our router id.
    OriginatorLoop,
    /// CLUSTER_LIST contains our cluster id.
    ClusterLoop,
    /// An eBGP peer sent a path that does not start with its own AS.
    FirstAs,
}

/// Applies the import rules to a route received from `peer`.
pub fn import(
    local: &LocalInfo,
    peer: &PeerInfo,
    mut attrs: PathAttributes,
) -> Result<PathAttributes, ImportReject> {
    if attrs.as_path.count(peer.local_as) > usize::from(peer.allow_local_as)
        || (peer.local_as != local.asn
            && attrs.as_path.count(local.asn) > usize::from(peer.allow_local_as))
    {
        return Err(ImportReject::AsLoop);
    }
    if peer.is_ebgp()
        && peer.enforce_first_as
        && attrs.as_path.neighbor_as() != Some(peer.remote_as)
    {
        return Err(ImportReject::FirstAs);
    }
    if peer.is_ebgp() {
        // LOCAL_PREF is not meaningful across AS boundaries (RFC 4271 5.1.5),
        // and reflection attributes from an external peer are discarded
        // (RFC 7606 7.9, 7.10).
        attrs.local_pref = None;
        attrs.originator_id = None;
        attrs.cluster_list.clear();
    } else {
        if attrs.originator_id == Some(local.router_id) {
            return Err(ImportReject::OriginatorLoop);
        }
        if attrs.cluster_list.contains(&local.cluster_id) {
            return Err(ImportReject::ClusterLoop);
        }
    }
    Ok(attrs)
}

/// Semantic NEXT_HOP check (RFC 4271 6.3, RFC 7606 7.3): a received route
/// whose next hop is unspecified, multicast, or our own session address is
/// unusable and treated as withdrawn.
pub fn next_hop_valid(next_hop: &NextHop, peer: &PeerInfo) -> bool {
    match next_hop {
        NextHop::Ipv4(a) => {
            !a.is_unspecified()
                && !a.is_multicast()
                && !a.is_broadcast()
                && peer.local_v4 != Some(*a)
        }
        NextHop::Ipv6 { global, .. } => {
            !global.is_unspecified() && !global.is_multicast() && peer.local_v6 != Some(*global)
        }
    }
}

/// Where a route in the Loc-RIB came from.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum RouteSource {
    /// Originated by this speaker.
    Local,
    /// Learned from a peer.
    Peer {
        /// Peer address.
        addr: IpAddr,
        /// Learned over eBGP.
        ebgp: bool,
        /// The peer is our route reflector client.
        rr_client: bool,
        /// Peer BGP identifier.
        router_id: Ipv4Addr,
    },
}

/// Computes what to advertise to `to` for a best route, or `None` when the
/// rules forbid advertising it.
pub fn export(
    local: &LocalInfo,
    to: &PeerInfo,
    prefix: &IpNet,
    source: &RouteSource,
    attrs: &PathAttributes,
    next_hop: NextHop,
) -> Option<(PathAttributes, NextHop)> {
    let family = match prefix {
        IpNet::V4(_) => Family::Ipv4Unicast,
        IpNet::V6(_) => Family::Ipv6Unicast,
    };
    if !to.families.contains(&family) {
        return None;
    }
    if attrs.communities.contains(&NO_ADVERTISE) {
        return None;
    }
    if to.is_ebgp() {
        if attrs
            .communities
            .iter()
            .any(|c| *c == NO_EXPORT || *c == NO_EXPORT_SUBCONFED)
        {
            return None;
        }
        if matches!(source, RouteSource::Peer { ebgp: true, .. }) && !to.transit {
            return None;
        }
    }
    let mut out = attrs.clone();
    let mut rewrite_next_hop = to.next_hop_self;
    match source {
        RouteSource::Peer { addr, .. } if *addr == to.addr => return None,
        RouteSource::Local => rewrite_next_hop = true,
        RouteSource::Peer {
            ebgp: false,
            rr_client,
            router_id,
            ..
        } if !to.is_ebgp() => {
            // iBGP split horizon unless we reflect (RFC 4456 section 6):
            // client routes go to everyone, non-client routes only to clients.
            if !rr_client && !to.rr_client {
                return None;
            }
            out.originator_id.get_or_insert(*router_id);
            out.cluster_list.insert(0, local.cluster_id);
        }
        _ => {}
    }
    if to.is_ebgp() {
        out.as_path.prepend(to.local_as);
        out.local_pref = None;
        out.originator_id = None;
        out.cluster_list.clear();
        // A MED learned from one AS is not passed to another (RFC 4271 5.1.4).
        if !matches!(source, RouteSource::Local) {
            out.med = None;
        }
        if !to.next_hop_keep {
            rewrite_next_hop = true;
        }
    } else {
        out.local_pref.get_or_insert(DEFAULT_LOCAL_PREF);
    }
    if !apply_filters(
        &to.filters,
        Direction::Export,
        prefix,
        &mut out,
        !matches!(source, RouteSource::Local),
        to.is_ebgp(),
    ) {
        return None;
    }
    let next_hop = if rewrite_next_hop {
        match next_hop {
            NextHop::Ipv4(_) => NextHop::Ipv4(to.local_v4?),
            NextHop::Ipv6 { .. } => NextHop::Ipv6 {
                global: to.local_v6?,
                link_local: None,
            },
        }
    } else {
        next_hop
    };
    Some((out, next_hop))
}

/// Which way a route is going.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Received from a peer.
    Import,
    /// About to be sent to a peer.
    Export,
}

/// BGPFilter rule action.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum FilterAction {
    /// Take the route (after applying the rule's operations).
    Accept,
    /// Drop the route.
    Reject,
}

/// How `cidr` is compared with the route's prefix.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum MatchOperator {
    /// The prefix is exactly `cidr`.
    #[default]
    Equal,
    /// The prefix is not exactly `cidr`.
    NotEqual,
    /// The prefix is `cidr` or inside it.
    In,
    /// The prefix is outside `cidr`.
    NotIn,
}

/// Peer type a rule applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum PeerType {
    /// External peers.
    #[serde(rename = "eBGP")]
    Ebgp,
    /// Internal peers.
    #[serde(rename = "iBGP")]
    Ibgp,
}

/// Route source a rule applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RuleSource {
    /// Routes learned from BGP peers (not originated here).
    RemotePeers,
}

/// Prefix length bounds (inclusive).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PrefixLength {
    /// Shortest accepted length.
    #[serde(default)]
    pub min: Option<u8>,
    /// Longest accepted length.
    #[serde(default)]
    pub max: Option<u8>,
}

/// Community values to match, as "AS:value" strings (Calico's shape).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct CommunityMatch {
    /// Any of these present matches.
    pub values: Vec<String>,
}

/// An operation of an accepting rule (Calico's `operations[]`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum FilterOperation {
    /// Adds a community "AS:value".
    AddCommunity {
        /// The community.
        value: String,
    },
    /// Prepends AS numbers to the AS path.
    #[serde(rename = "prependASPath")]
    PrependAsPath {
        /// ASNs, prepended so the path starts with them in this order.
        prefix: Vec<u32>,
    },
    /// Sets the route priority (kernel metric). Carried as LOCAL_PREF =
    /// 2147483647 - priority, as Calico's BIRD templates do.
    SetPriority {
        /// The priority.
        value: u32,
    },
}

/// One BGPFilter rule.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FilterRule {
    /// Prefix to compare with `match_operator`.
    #[serde(default)]
    pub cidr: Option<IpNet>,
    /// How to compare `cidr`.
    #[serde(default)]
    pub match_operator: MatchOperator,
    /// Prefix length bounds.
    #[serde(default)]
    pub prefix_length: Option<PrefixLength>,
    /// Route source.
    #[serde(default)]
    pub source: Option<RuleSource>,
    /// Type of the peer the route comes from (import) or goes to (export).
    #[serde(default)]
    pub peer_type: Option<PeerType>,
    /// Communities the route must carry (any of them).
    #[serde(default)]
    pub communities: Option<CommunityMatch>,
    /// The AS path must start with these ASNs.
    #[serde(default, rename = "asPathPrefix")]
    pub as_path_prefix: Vec<u32>,
    /// What to do with a matching route.
    pub action: FilterAction,
    /// Changes applied to accepted routes.
    #[serde(default)]
    pub operations: Vec<FilterOperation>,
}

/// A BGPFilter: ordered rules per direction and family.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Filter {
    /// Name, for logs.
    #[serde(default)]
    pub name: String,
    /// IPv4 export rules.
    #[serde(default, rename = "exportV4")]
    pub export_v4: Vec<FilterRule>,
    /// IPv4 import rules.
    #[serde(default, rename = "importV4")]
    pub import_v4: Vec<FilterRule>,
    /// IPv6 export rules.
    #[serde(default, rename = "exportV6")]
    pub export_v6: Vec<FilterRule>,
    /// IPv6 import rules.
    #[serde(default, rename = "importV6")]
    pub import_v6: Vec<FilterRule>,
}

/// Parses "AS:value" into a 32-bit community.
pub fn parse_community(s: &str) -> Option<u32> {
    let (a, b) = s.split_once(':')?;
    Some(
        (u32::from(a.trim().parse::<u16>().ok()?) << 16) | u32::from(b.trim().parse::<u16>().ok()?),
    )
}

impl FilterRule {
    /// Checks values that cannot be evaluated, naming the field.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(c) = &self.communities {
            for v in &c.values {
                parse_community(v)
                    .ok_or_else(|| format!("communities.values: {v:?} is not AS:value"))?;
            }
        }
        for op in &self.operations {
            if let FilterOperation::AddCommunity { value } = op {
                parse_community(value).ok_or_else(|| {
                    format!("operations.addCommunity.value: {value:?} is not AS:value")
                })?;
            }
        }
        if self.action == FilterAction::Reject && !self.operations.is_empty() {
            return Err("operations: only allowed with action Accept".into());
        }
        Ok(())
    }

    fn matches(&self, prefix: &IpNet, attrs: &PathAttributes, from_peer: bool, ebgp: bool) -> bool {
        if let Some(cidr) = &self.cidr {
            let cidr = cidr.trunc();
            let hit = match self.match_operator {
                MatchOperator::Equal => *prefix == cidr,
                MatchOperator::NotEqual => *prefix != cidr,
                MatchOperator::In => cidr.contains(prefix),
                MatchOperator::NotIn => !cidr.contains(prefix),
            };
            if !hit {
                return false;
            }
        }
        if let Some(pl) = &self.prefix_length {
            let l = prefix.prefix_len();
            if pl.min.is_some_and(|m| l < m) || pl.max.is_some_and(|m| l > m) {
                return false;
            }
        }
        if self.source == Some(RuleSource::RemotePeers) && !from_peer {
            return false;
        }
        match self.peer_type {
            Some(PeerType::Ebgp) if !ebgp => return false,
            Some(PeerType::Ibgp) if ebgp => return false,
            _ => {}
        }
        if let Some(c) = &self.communities
            && !c
                .values
                .iter()
                .filter_map(|v| parse_community(v))
                .any(|v| attrs.communities.contains(&v))
        {
            return false;
        }
        if !self.as_path_prefix.is_empty() {
            let flat: Vec<u32> = attrs
                .as_path
                .segments
                .iter()
                .flat_map(|s| s.asns.iter().copied())
                .collect();
            if !flat.starts_with(&self.as_path_prefix) {
                return false;
            }
        }
        true
    }

    fn apply(&self, attrs: &mut PathAttributes) {
        for op in &self.operations {
            match op {
                FilterOperation::AddCommunity { value } => {
                    if let Some(c) = parse_community(value)
                        && !attrs.communities.contains(&c)
                    {
                        attrs.communities.push(c);
                    }
                }
                FilterOperation::PrependAsPath { prefix } => {
                    for asn in prefix.iter().rev() {
                        attrs.as_path.prepend(*asn);
                    }
                }
                FilterOperation::SetPriority { value } => {
                    attrs.local_pref = Some(i32::MAX as u32 - (*value).min(i32::MAX as u32));
                }
            }
        }
    }
}

/// Runs `filters` in order on a route: the first matching rule decides
/// (operations applied on Accept); when no rule of a filter matches, the
/// next filter is tried; when none decides, the route is accepted as the
/// built-in rules left it. Returns whether the route is accepted.
pub fn apply_filters(
    filters: &[Filter],
    dir: Direction,
    prefix: &IpNet,
    attrs: &mut PathAttributes,
    from_peer: bool,
    ebgp: bool,
) -> bool {
    for f in filters {
        let rules = match (dir, prefix) {
            (Direction::Import, IpNet::V4(_)) => &f.import_v4,
            (Direction::Import, IpNet::V6(_)) => &f.import_v6,
            (Direction::Export, IpNet::V4(_)) => &f.export_v4,
            (Direction::Export, IpNet::V6(_)) => &f.export_v6,
        };
        if let Some(rule) = rules
            .iter()
            .find(|r| r.matches(prefix, attrs, from_peer, ebgp))
        {
            return match rule.action {
                FilterAction::Accept => {
                    rule.apply(attrs);
                    true
                }
                FilterAction::Reject => false,
            };
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::attribute::AsPath;

    fn local() -> LocalInfo {
        LocalInfo {
            asn: 64512,
            router_id: Ipv4Addr::new(198, 18, 0, 1),
            cluster_id: Ipv4Addr::new(198, 18, 0, 100),
        }
    }

    fn peer(last: u8, asn: u32, client: bool) -> PeerInfo {
        PeerInfo {
            addr: IpAddr::V4(Ipv4Addr::new(198, 18, 0, last)),
            remote_as: asn,
            local_as: 64512,
            router_id: Ipv4Addr::new(198, 18, 0, last),
            rr_client: client,
            next_hop_self: false,
            next_hop_keep: false,
            allow_local_as: 0,
            local_v4: Some(Ipv4Addr::new(198, 18, 0, 1)),
            local_v6: Some("2001:db8::1".parse().unwrap()),
            families: vec![Family::Ipv4Unicast, Family::Ipv6Unicast],
            filters: Arc::from(Vec::new()),
            encode: EncodeCxt::default(),
            transit: false,
            enforce_first_as: true,
        }
    }

    fn src(p: &PeerInfo) -> RouteSource {
        RouteSource::Peer {
            addr: p.addr,
            ebgp: p.is_ebgp(),
            rr_client: p.rr_client,
            router_id: p.router_id,
        }
    }

    const NH: NextHop = NextHop::Ipv4(Ipv4Addr::new(198, 18, 0, 9));

    fn pfx() -> IpNet {
        "100.64.0.0/26".parse().unwrap()
    }

    #[test]
    fn import_as_loop_with_allow_local_as() {
        let mut p = peer(2, 65001, false);
        let attrs = PathAttributes {
            as_path: AsPath::from_sequence(&[65001, 64512]),
            local_pref: Some(300),
            ..Default::default()
        };
        assert_eq!(
            import(&local(), &p, attrs.clone()),
            Err(ImportReject::AsLoop)
        );
        p.allow_local_as = 1;
        let mut attrs = attrs;
        attrs.originator_id = Some(Ipv4Addr::new(9, 9, 9, 9));
        attrs.cluster_list = vec![Ipv4Addr::new(8, 8, 8, 8)];
        let got = import(&local(), &p, attrs).unwrap();
        assert_eq!(got.local_pref, None, "eBGP LOCAL_PREF ignored");
        assert_eq!(got.originator_id, None);
        assert!(got.cluster_list.is_empty());
        // With a per-peer local AS, the global AS still counts as a loop.
        let mut p = peer(2, 65001, false);
        p.local_as = 65100;
        let attrs = PathAttributes {
            as_path: AsPath::from_sequence(&[65001, 64512]),
            ..Default::default()
        };
        assert_eq!(import(&local(), &p, attrs), Err(ImportReject::AsLoop));
    }

    #[test]
    fn import_first_as_check_on_ebgp() {
        let mut p = peer(2, 65001, false);
        let path = |asns: &[u32]| PathAttributes {
            as_path: AsPath::from_sequence(asns),
            ..Default::default()
        };
        assert!(import(&local(), &p, path(&[65001, 65002])).is_ok());
        for bad in [&[65002, 65001][..], &[]] {
            assert_eq!(
                import(&local(), &p, path(bad)),
                Err(ImportReject::FirstAs),
                "{bad:?}"
            );
        }
        // Off for this peer (a route server that does not prepend itself).
        p.enforce_first_as = false;
        assert!(import(&local(), &p, path(&[65002])).is_ok());
        // Never on iBGP, where the path is usually empty.
        let ib = peer(3, 64512, false);
        assert!(import(&local(), &ib, path(&[])).is_ok());
    }

    #[test]
    fn well_known_communities_limit_export() {
        let (ib, eb) = (peer(2, 64512, false), peer(3, 65001, false));
        let client = peer(4, 64512, true);
        let with = |c: u32| PathAttributes {
            communities: vec![(65000 << 16) | 1, c],
            ..Default::default()
        };
        let e = |to: &PeerInfo, src: &RouteSource, a: &PathAttributes| {
            export(&local(), to, &pfx(), src, a, NH).is_some()
        };
        let from_ib = src(&ib);
        for to in [&ib, &eb, &client] {
            assert!(!e(to, &RouteSource::Local, &with(NO_ADVERTISE)), "{to:?}");
        }
        assert!(!e(&client, &from_ib, &with(NO_ADVERTISE)));
        for c in [NO_EXPORT, NO_EXPORT_SUBCONFED] {
            assert!(!e(&eb, &RouteSource::Local, &with(c)));
            assert!(!e(&eb, &from_ib, &with(c)));
            // Inside the AS they still travel, reflected included.
            assert!(e(&ib, &RouteSource::Local, &with(c)));
            assert!(e(&client, &from_ib, &with(c)));
        }
        assert!(e(&eb, &RouteSource::Local, &with(1)));
    }

    #[test]
    fn never_transit_between_ebgp_peers_unless_asked() {
        let (e1, mut e2) = (peer(2, 65001, false), peer(3, 65002, false));
        let ib = peer(4, 64512, false);
        let a = PathAttributes {
            as_path: AsPath::from_sequence(&[65001]),
            ..Default::default()
        };
        let from_e1 = src(&e1);
        assert!(export(&local(), &e2, &pfx(), &from_e1, &a, NH).is_none());
        // The cluster still learns it, and local and iBGP routes go out.
        assert!(export(&local(), &ib, &pfx(), &from_e1, &a, NH).is_some());
        assert!(export(&local(), &e2, &pfx(), &src(&ib), &a, NH).is_some());
        assert!(export(&local(), &e2, &pfx(), &RouteSource::Local, &a, NH).is_some());
        e2.transit = true;
        let (out, _) = export(&local(), &e2, &pfx(), &from_e1, &a, NH).unwrap();
        assert_eq!(out.as_path, AsPath::from_sequence(&[64512, 65001]));
    }

    #[test]
    fn import_reflection_loops() {
        let p = peer(2, 64512, false);
        let attrs = PathAttributes {
            originator_id: Some(local().router_id),
            local_pref: Some(300),
            ..Default::default()
        };
        assert_eq!(
            import(&local(), &p, attrs),
            Err(ImportReject::OriginatorLoop)
        );
        let attrs = PathAttributes {
            cluster_list: vec![Ipv4Addr::new(1, 1, 1, 1), local().cluster_id],
            ..Default::default()
        };
        assert_eq!(import(&local(), &p, attrs), Err(ImportReject::ClusterLoop));
        let attrs = PathAttributes {
            local_pref: Some(300),
            ..Default::default()
        };
        assert_eq!(import(&local(), &p, attrs).unwrap().local_pref, Some(300));
    }

    #[test]
    fn unusable_next_hops() {
        let p = peer(2, 65001, false);
        assert!(next_hop_valid(&NH, &p));
        for bad in [
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::new(224, 0, 0, 5),
            Ipv4Addr::BROADCAST,
            Ipv4Addr::new(198, 18, 0, 1),
        ] {
            assert!(!next_hop_valid(&NextHop::Ipv4(bad), &p), "{bad}");
        }
        let v6 = |s: &str| NextHop::Ipv6 {
            global: s.parse().unwrap(),
            link_local: None,
        };
        assert!(next_hop_valid(&v6("2001:db8::9"), &p));
        assert!(!next_hop_valid(&v6("::"), &p));
        assert!(!next_hop_valid(&v6("ff02::1"), &p));
        assert!(!next_hop_valid(&v6("2001:db8::1"), &p));
    }

    #[test]
    fn ibgp_split_horizon_and_reflection() {
        let (nc1, nc2) = (peer(2, 64512, false), peer(3, 64512, false));
        let (c1, c2) = (peer(4, 64512, true), peer(5, 64512, true));
        let a = PathAttributes::default();
        let e = |from: &PeerInfo, to: &PeerInfo| export(&local(), to, &pfx(), &src(from), &a, NH);
        assert!(e(&nc1, &nc2).is_none(), "non-client to non-client");
        assert!(e(&c1, &c1).is_none(), "never back to the sender");
        for (from, to) in [(&nc1, &c1), (&c1, &nc1), (&c1, &c2)] {
            let (attrs, nh) = e(from, to).expect("reflected");
            assert_eq!(attrs.originator_id, Some(from.router_id));
            assert_eq!(attrs.cluster_list, vec![local().cluster_id]);
            assert_eq!(attrs.local_pref, Some(DEFAULT_LOCAL_PREF));
            assert_eq!(nh, NH, "next hop unchanged on reflection");
        }
        // An existing ORIGINATOR_ID is kept; our cluster id is prepended.
        let a2 = PathAttributes {
            originator_id: Some(Ipv4Addr::new(9, 9, 9, 9)),
            cluster_list: vec![Ipv4Addr::new(8, 8, 8, 8)],
            ..Default::default()
        };
        let (attrs, _) = export(&local(), &nc1, &pfx(), &src(&c1), &a2, NH).unwrap();
        assert_eq!(attrs.originator_id, Some(Ipv4Addr::new(9, 9, 9, 9)));
        assert_eq!(
            attrs.cluster_list,
            vec![local().cluster_id, Ipv4Addr::new(8, 8, 8, 8)]
        );
    }

    #[test]
    fn ebgp_export_prepends_and_rewrites_next_hop() {
        let ib = peer(2, 64512, false);
        let eb = peer(3, 65001, false);
        let a = PathAttributes {
            as_path: AsPath::from_sequence(&[65002]),
            local_pref: Some(200),
            med: Some(5),
            originator_id: Some(Ipv4Addr::new(9, 9, 9, 9)),
            cluster_list: vec![Ipv4Addr::new(8, 8, 8, 8)],
            ..Default::default()
        };
        let (out, nh) = export(&local(), &eb, &pfx(), &src(&ib), &a, NH).unwrap();
        assert_eq!(out.as_path, AsPath::from_sequence(&[64512, 65002]));
        assert_eq!(
            (out.local_pref, out.med, out.originator_id),
            (None, None, None)
        );
        assert!(out.cluster_list.is_empty());
        assert_eq!(nh, NextHop::Ipv4(Ipv4Addr::new(198, 18, 0, 1)));
        // Local AS override and next hop keep.
        let mut eb2 = eb.clone();
        eb2.local_as = 65100;
        eb2.next_hop_keep = true;
        let (out, nh) = export(&local(), &eb2, &pfx(), &src(&ib), &a, NH).unwrap();
        assert_eq!(out.as_path.neighbor_as(), Some(65100));
        assert_eq!(nh, NH);
        // eBGP-learned route to iBGP: next hop kept unless next-hop-self.
        let (out, nh) = export(&local(), &ib, &pfx(), &src(&eb), &a, NH).unwrap();
        assert_eq!(nh, NH);
        assert_eq!(out.as_path, a.as_path);
        let mut ib2 = ib.clone();
        ib2.next_hop_self = true;
        let (_, nh) = export(&local(), &ib2, &pfx(), &src(&eb), &a, NH).unwrap();
        assert_eq!(nh, NextHop::Ipv4(Ipv4Addr::new(198, 18, 0, 1)));
    }

    #[test]
    fn local_routes_use_our_address_and_respect_families() {
        let mut ib = peer(2, 64512, false);
        let v6: IpNet = "2001:db8:1::/64".parse().unwrap();
        let nh6 = NextHop::Ipv6 {
            global: "::".parse().unwrap(),
            link_local: None,
        };
        let a = PathAttributes::default();
        let (_, nh) = export(&local(), &ib, &v6, &RouteSource::Local, &a, nh6).unwrap();
        assert_eq!(
            nh,
            NextHop::Ipv6 {
                global: "2001:db8::1".parse().unwrap(),
                link_local: None
            }
        );
        ib.families = vec![Family::Ipv4Unicast];
        assert!(export(&local(), &ib, &v6, &RouteSource::Local, &a, nh6).is_none());
    }

    fn rule(json: &str) -> FilterRule {
        let r: FilterRule = serde_json::from_str(json).unwrap();
        r.validate().unwrap();
        r
    }

    #[test]
    fn filter_rules_match_and_operate_in_order() {
        let f = Filter {
            name: "f".into(),
            export_v4: vec![
                rule(
                    r#"{"cidr":"100.64.0.0/16","matchOperator":"In","prefixLength":{"max":24},"action":"Reject"}"#,
                ),
                rule(
                    r#"{"cidr":"100.64.0.0/16","matchOperator":"In","action":"Accept",
                       "operations":[{"addCommunity":{"value":"65000:7"}},{"prependASPath":{"prefix":[65000,65000]}},
                                     {"setPriority":{"value":512}}]}"#,
                ),
            ],
            import_v4: vec![rule(
                r#"{"source":"RemotePeers","peerType":"eBGP","communities":{"values":["65001:1"]},"action":"Reject"}"#,
            )],
            ..Default::default()
        };
        let fs = [f];
        let p24: IpNet = "100.64.1.0/24".parse().unwrap();
        let p26: IpNet = "100.64.1.0/26".parse().unwrap();
        let other: IpNet = "198.18.0.0/24".parse().unwrap();
        let mut a = PathAttributes::default();
        assert!(!apply_filters(
            &fs,
            Direction::Export,
            &p24,
            &mut a,
            false,
            true
        ));
        assert!(apply_filters(
            &fs,
            Direction::Export,
            &p26,
            &mut a,
            false,
            true
        ));
        assert_eq!(a.communities, vec![(65000 << 16) | 7]);
        assert_eq!(a.as_path, AsPath::from_sequence(&[65000, 65000]));
        assert_eq!(a.local_pref, Some(2147483647 - 512));
        // No rule matches: accepted unchanged.
        let mut b = PathAttributes::default();
        assert!(apply_filters(
            &fs,
            Direction::Export,
            &other,
            &mut b,
            false,
            true
        ));
        assert_eq!(b, PathAttributes::default());
        // Import: only eBGP-learned routes carrying 65001:1 are rejected.
        let mut c = PathAttributes {
            communities: vec![(65001 << 16) | 1],
            ..Default::default()
        };
        assert!(!apply_filters(
            &fs,
            Direction::Import,
            &other,
            &mut c,
            true,
            true
        ));
        assert!(apply_filters(
            &fs,
            Direction::Import,
            &other,
            &mut c,
            true,
            false
        ));
        assert!(apply_filters(
            &fs,
            Direction::Import,
            &other,
            &mut c,
            false,
            true
        ));
        // IPv6 rules are separate.
        let v6: IpNet = "2001:db8::/48".parse().unwrap();
        assert!(apply_filters(
            &fs,
            Direction::Import,
            &v6,
            &mut c,
            true,
            true
        ));
    }

    #[test]
    fn filter_operators_and_as_path_prefix() {
        let p: IpNet = "100.64.1.0/26".parse().unwrap();
        let a = PathAttributes {
            as_path: AsPath::from_sequence(&[65001, 65002]),
            ..Default::default()
        };
        let m = |json: &str| rule(json).matches(&p, &a, true, true);
        assert!(m(r#"{"cidr":"100.64.1.0/26","action":"Accept"}"#));
        assert!(!m(
            r#"{"cidr":"100.64.1.0/26","matchOperator":"NotEqual","action":"Accept"}"#
        ));
        assert!(m(
            r#"{"cidr":"100.64.0.0/16","matchOperator":"In","action":"Accept"}"#
        ));
        assert!(m(
            r#"{"cidr":"10.0.0.0/8","matchOperator":"NotIn","action":"Accept"}"#
        ));
        assert!(!m(r#"{"prefixLength":{"min":27},"action":"Accept"}"#));
        assert!(m(r#"{"asPathPrefix":[65001],"action":"Accept"}"#));
        assert!(!m(r#"{"asPathPrefix":[65002],"action":"Accept"}"#));
        let bad: FilterRule = serde_json::from_str(
            r#"{"action":"Reject","operations":[{"setPriority":{"value":1}}]}"#,
        )
        .unwrap();
        assert!(bad.validate().unwrap_err().starts_with("operations"));
    }

    #[test]
    fn export_applies_peer_filters() {
        let mut eb = peer(3, 65001, false);
        eb.filters = Arc::from(vec![Filter {
            export_v4: vec![rule(r#"{"cidr":"100.64.0.0/26","action":"Reject"}"#)],
            ..Default::default()
        }]);
        let a = PathAttributes::default();
        assert!(export(&local(), &eb, &pfx(), &RouteSource::Local, &a, NH).is_none());
        let other: IpNet = "100.64.0.64/26".parse().unwrap();
        assert!(export(&local(), &eb, &other, &RouteSource::Local, &a, NH).is_some());
    }
}
