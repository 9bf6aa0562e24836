//! Set members kept up to date one member at a time: the aggregated CIDRs of an
//! IP set (exactly what `IpNet::aggregate` gives over all members, so the
//! rendered elements equal the full render's) and the (address, port) pairs of
//! a named-port set. Each change reports the rendered elements that came and
//! went, so an update touches only them.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv4Subnets, Ipv6Net, Ipv6Subnets};

/// Rendered elements that changed: each CIDR with `true` when it came.
pub(crate) type Delta = Vec<(IpNet, bool)>;

/// The members of one family of an IP set: members counted by CIDR (the same
/// CIDR may come from several endpoints or network sets), and the union as
/// maximal runs of addresses (ranges that touch are one run), which decompose
/// into the aggregated CIDRs.
#[derive(Clone, Debug)]
pub(crate) struct Aggregate {
    v6: bool,
    /// (network address, prefix length) -> how many members have it.
    raw: BTreeMap<(u128, u8), u32>,
    /// First address -> last address of each run.
    runs: BTreeMap<u128, u128>,
    /// Members that are not single addresses (only they can contain others).
    non_host: usize,
}

impl Aggregate {
    /// An empty set of IPv4 (`v6` false) or IPv6 members.
    pub(crate) fn new(v6: bool) -> Aggregate {
        Aggregate {
            v6,
            raw: BTreeMap::new(),
            runs: BTreeMap::new(),
            non_host: 0,
        }
    }

    fn bits(&self) -> u8 {
        if self.v6 { 128 } else { 32 }
    }

    fn last(&self, start: u128, len: u8) -> u128 {
        let host = u32::from(self.bits() - len);
        if host >= 128 {
            u128::MAX
        } else {
            start | ((1u128 << host) - 1)
        }
    }

    fn key(n: &IpNet) -> (u128, u8) {
        match n {
            IpNet::V4(x) => (u128::from(u32::from(x.network())), x.prefix_len()),
            IpNet::V6(x) => (u128::from(x.network()), x.prefix_len()),
        }
    }

    /// Whether there are no members.
    pub(crate) fn is_empty(&self) -> bool {
        self.runs.is_empty()
    }

    /// How many distinct member CIDRs there are.
    pub(crate) fn members(&self) -> usize {
        self.raw.len()
    }

    /// The aggregated CIDRs in address order.
    pub(crate) fn cidrs(&self) -> impl Iterator<Item = IpNet> + '_ {
        self.runs.iter().flat_map(|(s, e)| self.decompose(*s, *e))
    }

    /// The CIDRs of one run, as `IpNet::aggregate` writes them.
    fn decompose(&self, start: u128, end: u128) -> Vec<IpNet> {
        if self.v6 {
            Ipv6Subnets::new(Ipv6Addr::from(start), Ipv6Addr::from(end), 0)
                .map(IpNet::V6)
                .collect()
        } else {
            // Runs of an IPv4 set stay below 2^32.
            let (s, e) = (start as u32, end as u32);
            Ipv4Subnets::new(Ipv4Addr::from(s), Ipv4Addr::from(e), 0)
                .map(IpNet::V4)
                .collect()
        }
    }

    /// Fills an empty set with many members at once (sorted and merged once,
    /// rather than run by run).
    pub(crate) fn fill(&mut self, members: &[IpNet]) {
        debug_assert!(self.raw.is_empty());
        let mut keys: Vec<(u128, u8)> = members.iter().map(Self::key).collect();
        keys.sort_unstable();
        let mut raw: Vec<((u128, u8), u32)> = Vec::with_capacity(keys.len());
        for k in keys {
            match raw.last_mut() {
                Some((last, n)) if *last == k => *n += 1,
                _ => raw.push((k, 1)),
            }
        }
        let bits = self.bits();
        self.non_host = raw.iter().filter(|((_, l), _)| *l < bits).count();
        let mut runs: Vec<(u128, u128)> = Vec::new();
        for ((start, len), _) in &raw {
            let end = self.last(*start, *len);
            match runs.last_mut() {
                Some((_, last)) if *start <= last.saturating_add(1) => *last = (*last).max(end),
                _ => runs.push((*start, end)),
            }
        }
        self.raw = raw.into_iter().collect();
        self.runs = runs.into_iter().collect();
    }

    /// Adds a member (of this set's family).
    pub(crate) fn insert(&mut self, n: &IpNet, delta: &mut Delta) {
        let (start, len) = Self::key(n);
        let count = self.raw.entry((start, len)).or_insert(0);
        *count += 1;
        if *count > 1 {
            return;
        }
        if len < self.bits() {
            self.non_host += 1;
        }
        let end = self.last(start, len);
        // Runs that overlap or touch [start, end].
        let mut touching: Vec<(u128, u128)> = Vec::new();
        for (s, e) in self.runs.range(..=end.saturating_add(1)).rev() {
            if e.saturating_add(1) < start {
                break;
            }
            touching.push((*s, *e));
        }
        touching.reverse();
        if let [(s, e)] = touching.as_slice()
            && *s <= start
            && *e >= end
        {
            return;
        }
        let lo = touching.first().map_or(start, |(s, _)| (*s).min(start));
        let hi = touching.last().map_or(end, |(_, e)| (*e).max(end));
        let mut before = Vec::new();
        for (s, e) in &touching {
            before.extend(self.decompose(*s, *e));
            self.runs.remove(s);
        }
        self.runs.insert(lo, hi);
        let after = self.decompose(lo, hi);
        changes(before, after, delta);
    }

    /// Removes a member added before.
    pub(crate) fn remove(&mut self, n: &IpNet, delta: &mut Delta) {
        let (start, len) = Self::key(n);
        let Some(count) = self.raw.get_mut(&(start, len)) else {
            return;
        };
        *count -= 1;
        if *count > 0 {
            return;
        }
        self.raw.remove(&(start, len));
        if len < self.bits() {
            self.non_host -= 1;
        }
        let end = self.last(start, len);
        // CIDRs nest or are disjoint: another member that still covers part of
        // [start, end] contains it (then nothing changes) or lies inside it.
        if self.non_host > 0 {
            for l in 0..len {
                let host = u32::from(self.bits() - l);
                let mask = if host >= 128 {
                    0
                } else {
                    !((1u128 << host) - 1)
                };
                if self.raw.contains_key(&(start & mask, l)) {
                    return;
                }
            }
        }
        let Some((&lo, &hi)) = self.runs.range(..=start).next_back() else {
            return;
        };
        let mut pieces: Vec<(u128, u128)> = Vec::new();
        if lo < start {
            pieces.push((lo, start - 1));
        }
        if len < self.bits() {
            for (&(s, l), _) in self.raw.range((start, 0)..=(end, u8::MAX)) {
                pieces.push((s, self.last(s, l)));
            }
        }
        if end < hi {
            pieces.push((end + 1, hi));
        }
        pieces.sort_unstable();
        let mut merged: Vec<(u128, u128)> = Vec::new();
        for (s, e) in pieces {
            match merged.last_mut() {
                Some((_, last)) if s <= last.saturating_add(1) => *last = (*last).max(e),
                _ => merged.push((s, e)),
            }
        }
        let before = self.decompose(lo, hi);
        self.runs.remove(&lo);
        let mut after = Vec::new();
        for (s, e) in merged {
            self.runs.insert(s, e);
            after.extend(self.decompose(s, e));
        }
        changes(before, after, delta);
    }
}

/// Appends what is in `after` and not `before` (came) and the reverse (went).
fn changes(mut before: Vec<IpNet>, mut after: Vec<IpNet>, delta: &mut Delta) {
    before.sort_unstable();
    after.sort_unstable();
    let (mut i, mut j) = (0, 0);
    while i < before.len() || j < after.len() {
        match (before.get(i), after.get(j)) {
            (Some(b), Some(a)) if b == a => {
                i += 1;
                j += 1;
            }
            (Some(b), Some(a)) if b < a => {
                delta.push((*b, false));
                i += 1;
            }
            (Some(b), None) => {
                delta.push((*b, false));
                i += 1;
            }
            (_, Some(a)) => {
                delta.push((*a, true));
                j += 1;
            }
            (None, None) => break,
        }
    }
}

/// The members of a named-port set: (endpoint address, port) pairs, counted.
/// Rendered elements hold only the address, so two members that differ in
/// prefix length only are one element.
#[derive(Clone, Debug, Default)]
pub(crate) struct PortMembers {
    members: BTreeMap<(IpNet, u16), u32>,
    per_family: [usize; 2],
}

fn family_index(n: &IpNet) -> usize {
    usize::from(n.addr().is_ipv6())
}

impl PortMembers {
    /// The members in order (as [`crate::compile::PortSet::members`] holds them).
    pub(crate) fn iter(&self) -> impl Iterator<Item = (IpNet, u16)> + '_ {
        self.members.keys().copied()
    }

    /// Whether there are members of a family (0: IPv4, 1: IPv6).
    pub(crate) fn has(&self, family: usize) -> bool {
        self.per_family[family] > 0
    }

    /// How many distinct members there are.
    pub(crate) fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether another member renders as the same element as (n, port).
    fn shares_element(&self, n: &IpNet, port: u16) -> bool {
        let addr = n.addr();
        let (lo, hi) = match addr {
            IpAddr::V4(a) => (
                IpNet::V4(Ipv4Net::new_assert(a, 0)),
                IpNet::V4(Ipv4Net::new_assert(a, 32)),
            ),
            IpAddr::V6(a) => (
                IpNet::V6(Ipv6Net::new_assert(a, 0)),
                IpNet::V6(Ipv6Net::new_assert(a, 128)),
            ),
        };
        self.members
            .range((lo, 0)..=(hi, u16::MAX))
            .any(|(&(m, p), _)| p == port && m != *n)
    }

    /// Adds a member; `true` when its element is new.
    pub(crate) fn insert(&mut self, n: IpNet, port: u16) -> bool {
        let count = self.members.entry((n, port)).or_insert(0);
        *count += 1;
        if *count > 1 {
            return false;
        }
        self.per_family[family_index(&n)] += 1;
        !self.shares_element(&n, port)
    }

    /// Removes a member; `true` when its element went.
    pub(crate) fn remove(&mut self, n: IpNet, port: u16) -> bool {
        let Some(count) = self.members.get_mut(&(n, port)) else {
            return false;
        };
        *count -= 1;
        if *count > 0 {
            return false;
        }
        self.members.remove(&(n, port));
        self.per_family[family_index(&n)] -= 1;
        !self.shares_element(&n, port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn net4() -> impl Strategy<Value = IpNet> {
        (
            0u32..64,
            prop::sample::select(vec![26u8, 28, 29, 30, 31, 32, 32, 32]),
        )
            .prop_map(|(a, len)| {
                IpNet::V4(Ipv4Net::new_assert(Ipv4Addr::from(0x0a00_0000 + a), len))
            })
    }

    fn net6() -> impl Strategy<Value = IpNet> {
        (
            0u16..64,
            prop::sample::select(vec![0u8, 122, 124, 126, 127, 128, 128]),
        )
            .prop_map(|(a, len)| {
                IpNet::V6(Ipv6Net::new_assert(
                    Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, a),
                    len,
                ))
            })
    }

    fn check(v6: bool, ops: Vec<(bool, IpNet)>) -> Result<(), TestCaseError> {
        let mut agg = Aggregate::new(v6);
        let mut present: Vec<IpNet> = Vec::new();
        let mut rendered: std::collections::BTreeSet<IpNet> = Default::default();
        for (add, n) in ops {
            let mut delta = Delta::new();
            if add {
                agg.insert(&n, &mut delta);
                present.push(n);
            } else if let Some(i) = present.iter().position(|p| *p == n) {
                present.remove(i);
                agg.remove(&n, &mut delta);
            } else {
                continue;
            }
            for (c, came) in delta {
                if came {
                    prop_assert!(rendered.insert(c), "{c} came twice");
                } else {
                    prop_assert!(rendered.remove(&c), "{c} went but was not there");
                }
            }
            let want = IpNet::aggregate(&present);
            let got: Vec<IpNet> = agg.cidrs().collect();
            prop_assert_eq!(&got, &want);
            prop_assert_eq!(rendered.iter().copied().collect::<Vec<_>>(), want);
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn aggregate_follows_ipnet_aggregate_v4(ops in prop::collection::vec((any::<bool>(), net4()), 1..80)) {
            check(false, ops)?;
        }

        #[test]
        fn aggregate_follows_ipnet_aggregate_v6(ops in prop::collection::vec((any::<bool>(), net6()), 1..80)) {
            check(true, ops)?;
        }
    }

    proptest! {
        #[test]
        fn fill_equals_inserting_one_by_one(nets in prop::collection::vec(net4(), 0..80)) {
            let mut one = Aggregate::new(false);
            for n in &nets {
                one.insert(n, &mut Delta::new());
            }
            let mut bulk = Aggregate::new(false);
            bulk.fill(&nets);
            prop_assert_eq!(bulk.cidrs().collect::<Vec<_>>(), one.cidrs().collect::<Vec<_>>());
            prop_assert_eq!(&bulk.raw, &one.raw);
            prop_assert_eq!(bulk.non_host, one.non_host);
            for n in &nets {
                bulk.remove(n, &mut Delta::new());
            }
            prop_assert!(bulk.is_empty());
        }
    }

    #[test]
    fn port_members_share_elements_by_address() {
        let a: IpNet = "10.0.0.1/32".parse().expect("net");
        let b: IpNet = "10.0.0.1/24".parse().expect("net");
        let mut p = PortMembers::default();
        assert!(p.insert(a, 80));
        assert!(!p.insert(b, 80), "same address and port: same element");
        assert!(p.insert(b, 81));
        assert!(!p.remove(a, 80), "b still renders 10.0.0.1 . 80");
        assert!(p.remove(b, 80));
        assert!(p.has(0) && !p.has(1));
        assert_eq!(p.len(), 1);
    }
}
