//! The RIBs: the Loc-RIB (paths per destination with the RFC 4271 9.1.2
//! decision process and an ECMP set) and, per peer, an Adj-RIB-Out that
//! records what was last sent, producing updates grouped by shared
//! attributes. Pure data structures.
//!
//! Memory layout, chosen for route reflectors with many clients: every
//! destination lives in a dense slot (chunked arena, found through one
//! B-tree index from prefix to slot: ordered, and cache friendly for the
//! mostly ascending prefixes of a table dump), its paths inline when there is
//! one. A peer's Adj-RIB-Out is a chunked array indexed by slot holding a 1-
//! (or, past 255 attribute sets, 2-, past 65535, 4-) byte id of an interned
//! (attributes, next hop) pair, 0 = nothing sent. Exports are memoised per
//! (route attributes, source, next hop) within one sync, so the policy runs
//! once per attribute set and peer rather than once per prefix and peer.
//! The Adj-RIB-In index is derived from the Loc-RIB when a peer goes away.

use crate::packet::attribute::{NextHop, PathAttributes};
use crate::packet::capability::Family;
use crate::packet::{message, prefix_wire_len};
use crate::policy::{self, DEFAULT_LOCAL_PREF, LocalInfo, PeerInfo, RouteSource};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr};
use std::ops::Bound;
use std::sync::Arc;

/// What a path is: where it came from, its attributes and its next hop.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Path {
    /// Where it came from.
    pub source: RouteSource,
    /// Attributes.
    pub attrs: PathAttributes,
    /// Next hop.
    pub next_hop: NextHop,
}

/// One path to a destination: a shared [`Path`], so every prefix of one
/// UPDATE (or one origination) costs the RIB a pointer, not a copy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route(Arc<Path>);

impl std::ops::Deref for Route {
    type Target = Path;

    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Route {
    /// A path to share between prefixes (clone the `Route`).
    pub fn new(source: RouteSource, attrs: PathAttributes, next_hop: NextHop) -> Route {
        Route(Arc::new(Path {
            source,
            attrs,
            next_hop,
        }))
    }

    /// The same source and next hop with other attributes.
    pub fn with_attrs(&self, attrs: PathAttributes) -> Route {
        Route::new(self.source.clone(), attrs, self.next_hop)
    }

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

/// The paths of one destination: inline when there is a single one (the
/// common case), a vector otherwise. The order is irrelevant: the decision
/// process is a total order (the peer address breaks the last tie).
#[derive(Clone, Debug, Default)]
enum Paths {
    #[default]
    None,
    One(Route),
    // Boxed so a destination stays two words: almost all have one path.
    #[allow(clippy::box_collection)]
    Many(Box<Vec<Route>>),
}

/// All paths to one prefix, and the selection.
#[derive(Clone, Debug, Default)]
pub struct Destination {
    paths: Paths,
}

impl Destination {
    /// Every path, in no particular order.
    pub fn paths(&self) -> &[Route] {
        match &self.paths {
            Paths::None => &[],
            Paths::One(r) => std::slice::from_ref(r),
            Paths::Many(v) => v,
        }
    }

    /// The path from `source` (`None` = local).
    pub fn path(&self, source: Option<IpAddr>) -> Option<&Route> {
        self.paths().iter().find(|r| r.key() == source)
    }

    fn is_empty(&self) -> bool {
        self.paths().is_empty()
    }

    /// Inserts or replaces the path with the same source; true when the
    /// source had no path here before.
    fn insert(&mut self, route: Route) -> bool {
        match &mut self.paths {
            Paths::None => self.paths = Paths::One(route),
            Paths::One(r) if r.key() == route.key() => {
                *r = route;
                return false;
            }
            Paths::One(_) => {
                let Paths::One(old) = std::mem::take(&mut self.paths) else {
                    return false;
                };
                self.paths = Paths::Many(Box::new(vec![old, route]));
            }
            Paths::Many(v) => match v.iter_mut().find(|r| r.key() == route.key()) {
                Some(r) => {
                    *r = route;
                    return false;
                }
                None => v.push(route),
            },
        }
        true
    }

    /// Removes the path from `source`; false if there was none.
    fn remove(&mut self, source: Option<IpAddr>) -> bool {
        match &mut self.paths {
            Paths::None => false,
            Paths::One(r) => {
                if r.key() != source {
                    return false;
                }
                self.paths = Paths::None;
                true
            }
            Paths::Many(v) => {
                let Some(i) = v.iter().position(|r| r.key() == source) else {
                    return false;
                };
                v.swap_remove(i);
                if v.len() == 1 {
                    if let Some(r) = v.pop() {
                        self.paths = Paths::One(r);
                    }
                } else if v.is_empty() {
                    self.paths = Paths::None;
                }
                true
            }
        }
    }

    /// The best path.
    pub fn best(&self) -> Option<&Route> {
        match &self.paths {
            Paths::One(r) => Some(r),
            _ => self.paths().iter().min_by(|a, b| compare(a, b)),
        }
    }

    /// The best path and every path equal to it for ECMP.
    pub fn multipath(&self) -> Vec<&Route> {
        let Some(best) = self.best() else {
            return Vec::new();
        };
        let mut v: Vec<&Route> = self
            .paths()
            .iter()
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
    /// Prefixes whose best route was not sent because its attributes, as
    /// exported to this peer, leave no room for the prefix in one message
    /// (a previously sent version is in `withdraw`). For a warning.
    pub too_large: Vec<IpNet>,
}

impl OutUpdate {
    /// Nothing to send.
    pub fn is_empty(&self) -> bool {
        self.announce.is_empty() && self.withdraw.is_empty()
    }
}

/// Where a walk over the RIB ([`Rib::sync_peer_chunk`]) stands: the next
/// prefix to look at is after `after` (from the start when `None`), and
/// the walk ends before `end` (at the end of the table when `None`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Walk {
    /// Last prefix handled.
    pub after: Option<IpNet>,
    /// First prefix not to handle.
    pub end: Option<IpNet>,
}

impl Walk {
    /// A walk over the prefixes of `family`, or over all of them.
    pub fn over(family: Option<Family>) -> Walk {
        let v6_start = IpNet::V6(ipnet::Ipv6Net::default());
        match family {
            None => Walk {
                after: None,
                end: None,
            },
            Some(Family::Ipv4Unicast) => Walk {
                after: None,
                end: Some(v6_start),
            },
            Some(Family::Ipv6Unicast) => Walk {
                // Nothing sorts before ::/0 among IPv6 prefixes, and no
                // IPv4 prefix after the last IPv4 one: start just after it.
                after: Some(IpNet::V4(
                    ipnet::Ipv4Net::new(std::net::Ipv4Addr::BROADCAST, 32).unwrap_or_default(),
                )),
                end: None,
            },
        }
    }
}

/// FNV-1a: a fast hash for the RIB's own keys (pointers, ids, peer
/// addresses), none of which a peer chooses. Maps keyed by what peers send
/// (attribute sets) keep the standard, keyed hasher.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl std::hash::Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
}

/// A map with [`Fnv`] hashing.
pub(crate) type FastMap<K, V> = HashMap<K, V, std::hash::BuildHasherDefault<Fnv>>;

/// Slots per arena chunk: arrays grow by whole chunks, never by copying.
const CHUNK: usize = 4096;

fn split(slot: u32) -> (usize, usize) {
    let s = slot as usize;
    (s / CHUNK, s % CHUNK)
}

/// One destination and how many Adj-RIB-Outs still refer to its slot (a
/// slot is only reused once nothing was sent for it and it has no path).
/// Its prefix is the index's key.
#[derive(Debug)]
struct Slot {
    dest: Destination,
    sent: u32,
}

/// One chunk of an Adj-RIB-Out: 1-byte ids until an id needs more, then 2,
/// then 4 (a peer is sent few distinct attribute sets).
#[derive(Debug, Default)]
enum IdChunk {
    #[default]
    Empty,
    Tiny(Box<[u8]>),
    Narrow(Box<[u16]>),
    Wide(Box<[u32]>),
}

impl IdChunk {
    fn get(&self, i: usize) -> u32 {
        match self {
            IdChunk::Empty => 0,
            IdChunk::Tiny(v) => u32::from(v[i]),
            IdChunk::Narrow(v) => u32::from(v[i]),
            IdChunk::Wide(v) => v[i],
        }
    }

    fn width(&self) -> u8 {
        match self {
            IdChunk::Empty => 0,
            IdChunk::Tiny(_) => 1,
            IdChunk::Narrow(_) => 2,
            IdChunk::Wide(_) => 4,
        }
    }

    /// Sets entry `i`, returning the previous id.
    fn set(&mut self, i: usize, id: u32) -> u32 {
        let need = match id {
            0 => 0,
            1..=0xff => 1,
            0x100..=0xffff => 2,
            _ => 4,
        };
        if need > self.width() {
            let old = std::mem::take(self);
            let all = (0..CHUNK).map(|j| old.get(j));
            *self = match need {
                1 => IdChunk::Tiny(all.map(|x| x as u8).collect()),
                2 => IdChunk::Narrow(all.map(|x| x as u16).collect()),
                _ => IdChunk::Wide(all.collect()),
            };
        }
        match self {
            IdChunk::Empty => 0,
            IdChunk::Tiny(v) => u32::from(std::mem::replace(&mut v[i], id as u8)),
            IdChunk::Narrow(v) => u32::from(std::mem::replace(&mut v[i], id as u16)),
            IdChunk::Wide(v) => std::mem::replace(&mut v[i], id),
        }
    }
}

/// What one peer was last sent: an interned attribute id per slot.
#[derive(Debug, Default)]
struct AdjOut {
    chunks: Vec<IdChunk>,
}

impl AdjOut {
    fn get(&self, slot: u32) -> u32 {
        let (c, i) = split(slot);
        self.chunks.get(c).map_or(0, |v| v.get(i))
    }

    fn set(&mut self, slot: u32, id: u32) {
        let (c, i) = split(slot);
        if self.chunks.len() <= c {
            self.chunks.resize_with(c + 1, IdChunk::default);
        }
        self.chunks[c].set(i, id);
    }
}

/// Interned (attributes, next hop) pairs sent to peers, reference counted
/// by Adj-RIB-Out entries. Ids start at 1.
#[derive(Debug, Default)]
struct OutAttrs {
    entries: Vec<Option<(Arc<PathAttributes>, NextHop, u32)>>,
    ids: HashMap<(Arc<PathAttributes>, NextHop), u32>,
    free: Vec<u32>,
    /// Ids whose count dropped to 0 (or never rose) during this sync;
    /// freed by `collect` so that memoised ids stay valid until then.
    unused: Vec<u32>,
}

impl OutAttrs {
    fn intern(&mut self, attrs: PathAttributes, next_hop: NextHop) -> u32 {
        let key = (Arc::new(attrs), next_hop);
        if let Some(id) = self.ids.get(&key) {
            return *id;
        }
        let entry = Some((key.0.clone(), next_hop, 0));
        let id = match self.free.pop() {
            Some(id) => {
                self.entries[id as usize - 1] = entry;
                id
            }
            None => {
                self.entries.push(entry);
                self.entries.len() as u32
            }
        };
        self.ids.insert(key, id);
        self.unused.push(id);
        id
    }

    fn get(&self, id: u32) -> (&Arc<PathAttributes>, NextHop) {
        match &self.entries[id as usize - 1] {
            Some((a, nh, _)) => (a, *nh),
            None => unreachable!("attribute id {id} referenced after release"),
        }
    }

    fn acquire(&mut self, id: u32) {
        if let Some((_, _, n)) = &mut self.entries[id as usize - 1] {
            *n += 1;
        }
    }

    fn release(&mut self, id: u32) {
        if let Some((_, _, n)) = &mut self.entries[id as usize - 1] {
            *n -= 1;
            if *n == 0 {
                self.unused.push(id);
            }
        }
    }

    /// Frees the ids nothing refers to any more.
    fn collect(&mut self) {
        for id in std::mem::take(&mut self.unused) {
            let e = &mut self.entries[id as usize - 1];
            if let Some((a, nh, 0)) = e {
                self.ids.remove(&(a.clone(), *nh));
                *e = None;
                self.free.push(id);
            }
        }
    }
}

/// What an export result depends on when the peer has no per-prefix
/// filters: the route's attribute set, source and next hop, and the family.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct ExportKey {
    path: *const Path,
    v4: bool,
}

/// The Loc-RIB's index from prefix to slot: one B-tree per family, IPv4
/// prefixes as one `u64` (address, then length: the order of [`Ipv4Net`]),
/// so that a node holds its 11 entries in 144 bytes instead of 256. Walks
/// see IPv4 before IPv6, as [`IpNet`] orders them.
#[derive(Debug, Default)]
struct PrefixIndex {
    v4: BTreeMap<u64, u32>,
    v6: BTreeMap<Ipv6Net, u32>,
}

fn key4(p: &Ipv4Net) -> u64 {
    (u64::from(u32::from(p.addr())) << 8) | u64::from(p.prefix_len())
}

fn net4(k: u64) -> IpNet {
    let addr = Ipv4Addr::from((k >> 8) as u32);
    IpNet::V4(Ipv4Net::new(addr, (k & 0xff) as u8).unwrap_or_default())
}

/// `(lo, hi)` unless the range is empty (`BTreeMap::range` panics on some
/// empty ranges).
fn bounds<K: Ord>(lo: Bound<K>, hi: Bound<K>) -> Option<(Bound<K>, Bound<K>)> {
    let empty = match (&lo, &hi) {
        (Bound::Excluded(a) | Bound::Included(a), Bound::Excluded(b)) => a >= b,
        (Bound::Excluded(a), Bound::Included(b)) => a >= b,
        (Bound::Included(a), Bound::Included(b)) => a > b,
        _ => false,
    };
    (!empty).then_some((lo, hi))
}

impl PrefixIndex {
    fn get(&self, p: &IpNet) -> Option<u32> {
        match p {
            IpNet::V4(p) => self.v4.get(&key4(p)).copied(),
            IpNet::V6(p) => self.v6.get(p).copied(),
        }
    }

    /// The slot of `p`, or a new one from `alloc` recorded for it.
    fn get_or_insert_with(&mut self, p: IpNet, alloc: impl FnOnce() -> u32) -> u32 {
        match p {
            IpNet::V4(p) => *self.v4.entry(key4(&p)).or_insert_with(alloc),
            IpNet::V6(p) => *self.v6.entry(p).or_insert_with(alloc),
        }
    }

    fn remove(&mut self, p: &IpNet) {
        match p {
            IpNet::V4(p) => self.v4.remove(&key4(p)),
            IpNet::V6(p) => self.v6.remove(p),
        };
    }

    fn iter(&self) -> impl Iterator<Item = (IpNet, u32)> + '_ {
        let v4 = self.v4.iter().map(|(k, s)| (net4(*k), *s));
        v4.chain(self.v6.iter().map(|(p, s)| (IpNet::V6(*p), *s)))
    }

    /// Prefixes after `after` (all when `None`) and before `end` (to the
    /// end when `None`), in order.
    fn range(
        &self,
        after: Option<IpNet>,
        end: Option<IpNet>,
    ) -> impl Iterator<Item = (IpNet, u32)> + '_ {
        // IPv4 part: nothing when the walk starts in IPv6.
        let v4 = match after {
            Some(IpNet::V6(_)) => None,
            Some(IpNet::V4(p)) => Some(Bound::Excluded(key4(&p))),
            None => Some(Bound::Unbounded),
        }
        .and_then(|lo| {
            let hi = match end {
                Some(IpNet::V4(p)) => Bound::Excluded(key4(&p)),
                _ => Bound::Unbounded,
            };
            bounds(lo, hi)
        });
        // IPv6 part: nothing when the walk ends in IPv4.
        let v6 = match end {
            Some(IpNet::V4(_)) => None,
            Some(IpNet::V6(p)) => Some(Bound::Excluded(p)),
            None => Some(Bound::Unbounded),
        }
        .and_then(|hi| {
            let lo = match after {
                Some(IpNet::V6(p)) => Bound::Excluded(p),
                _ => Bound::Unbounded,
            };
            bounds(lo, hi)
        });
        let v4 = v4
            .into_iter()
            .flat_map(|r| self.v4.range(r))
            .map(|(k, s)| (net4(*k), *s));
        let v6 = v6
            .into_iter()
            .flat_map(|r| self.v6.range(r))
            .map(|(p, s)| (IpNet::V6(*p), *s));
        v4.chain(v6)
    }
}

/// Loc-RIB plus per-peer Adj-RIB-Out.
#[derive(Debug, Default)]
pub struct Rib {
    index: PrefixIndex,
    slots: Vec<Vec<Slot>>,
    free: Vec<u32>,
    /// Slots emptied since the last sync: reused only after it, so that
    /// slots handed out by [`Rib::insert_at`] stay valid until then.
    freed: Vec<u32>,
    /// What each peer was last sent.
    adj_out: BTreeMap<IpAddr, AdjOut>,
    out_attrs: OutAttrs,
    /// Routes kept for a restarting peer (RFC 4724) and not yet refreshed.
    stale: BTreeMap<IpAddr, BTreeSet<IpNet>>,
    /// Paths held per peer and family (IPv4, IPv6): its Adj-RIB-In size.
    adj_in_count: FastMap<IpAddr, [usize; 2]>,
    /// Skip computing best-path changes (nobody listens to them).
    untracked: bool,
}

/// The family of a prefix.
pub fn family_of(prefix: &IpNet) -> Family {
    match prefix {
        IpNet::V4(_) => Family::Ipv4Unicast,
        IpNet::V6(_) => Family::Ipv6Unicast,
    }
}

fn family_index(prefix: &IpNet) -> usize {
    match prefix {
        IpNet::V4(_) => 0,
        IpNet::V6(_) => 1,
    }
}

fn ecmp_next_hops(d: &Destination) -> Vec<IpAddr> {
    // The common single-path case without the sorting and allocations of
    // the general one.
    match &d.paths {
        Paths::None => return Vec::new(),
        Paths::One(r) => {
            return match (&r.source, r.next_hop) {
                (RouteSource::Local, _) => Vec::new(),
                (_, NextHop::Ipv4(a)) => vec![IpAddr::V4(a)],
                (_, NextHop::Ipv6 { global, .. }) => vec![IpAddr::V6(global)],
            };
        }
        Paths::Many(_) => {}
    }
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

fn slot_ref(slots: &[Vec<Slot>], slot: u32) -> &Slot {
    let (c, i) = split(slot);
    &slots[c][i]
}

fn slot_mut(slots: &mut [Vec<Slot>], slot: u32) -> &mut Slot {
    let (c, i) = split(slot);
    &mut slots[c][i]
}

/// Gives the slot back when it holds nothing any more (reusable after the
/// next sync).
fn release_slot(
    slots: &mut [Vec<Slot>],
    index: &mut PrefixIndex,
    freed: &mut Vec<u32>,
    slot: u32,
    prefix: &IpNet,
) {
    let s = slot_mut(slots, slot);
    if s.sent == 0 && s.dest.is_empty() {
        index.remove(prefix);
        freed.push(slot);
    }
}

impl Rib {
    /// An empty RIB.
    pub fn new() -> Self {
        Rib::default()
    }

    fn slot(&self, slot: u32) -> &Slot {
        slot_ref(&self.slots, slot)
    }

    /// Slots in use (with paths or still in an Adj-RIB-Out), by prefix.
    fn live_slots(&self) -> impl Iterator<Item = (IpNet, u32, &Slot)> {
        self.index.iter().map(|(p, s)| (p, s, self.slot(s)))
    }

    fn alloc_slot(&mut self, prefix: IpNet) -> u32 {
        let Rib {
            index, slots, free, ..
        } = self;
        index.get_or_insert_with(prefix, || match free.pop() {
            Some(id) => {
                slot_mut(slots, id).sent = 0;
                id
            }
            None => {
                if slots.last().is_none_or(|c| c.len() == CHUNK) {
                    slots.push(Vec::with_capacity(CHUNK));
                }
                let base = ((slots.len() - 1) * CHUNK) as u32;
                let last = slots.len() - 1;
                let chunk = &mut slots[last];
                let id = base + chunk.len() as u32;
                chunk.push(Slot {
                    dest: Destination::default(),
                    sent: 0,
                });
                id
            }
        })
    }

    /// Whether `insert` and `remove` report best-path changes (the
    /// default); without, they always return `None` and save the ECMP
    /// computation.
    pub fn track_changes(&mut self, on: bool) {
        self.untracked = !on;
    }

    /// The destination for a prefix.
    pub fn get(&self, prefix: &IpNet) -> Option<&Destination> {
        let s = self.slot(self.index.get(prefix)?);
        (!s.dest.is_empty()).then_some(&s.dest)
    }

    /// All prefixes with at least one path, in order.
    pub fn prefixes(&self) -> impl Iterator<Item = IpNet> + '_ {
        self.live_slots()
            .filter(|(_, _, s)| !s.dest.is_empty())
            .map(|(p, _, _)| p)
    }

    /// How many prefixes of `family` are held from `peer` (its Adj-RIB-In
    /// after import, stale routes included): what a prefix limit counts.
    pub fn adj_in_count(&self, peer: &IpAddr, family: Family) -> usize {
        let i = match family {
            Family::Ipv4Unicast => 0,
            Family::Ipv6Unicast => 1,
        };
        self.adj_in_count.get(peer).map_or(0, |c| c[i])
    }

    /// Prefixes currently held from `peer` (its Adj-RIB-In after import),
    /// in order. Walks the Loc-RIB: only needed when a peer goes away.
    pub fn adj_in(&self, peer: &IpAddr) -> Vec<IpNet> {
        self.live_slots()
            .filter(|(_, _, s)| s.dest.path(Some(*peer)).is_some())
            .map(|(p, _, _)| p)
            .collect()
    }

    /// What `peer` was last sent (a snapshot, for inspection).
    pub fn adj_out(
        &self,
        peer: &IpAddr,
    ) -> Option<BTreeMap<IpNet, (Arc<PathAttributes>, NextHop)>> {
        let out = self.adj_out.get(peer)?;
        Some(
            self.index
                .iter()
                .filter_map(|(p, slot)| {
                    let id = out.get(slot);
                    (id != 0).then(|| {
                        let (a, nh) = self.out_attrs.get(id);
                        (p, (a.clone(), nh))
                    })
                })
                .collect(),
        )
    }

    /// Inserts or replaces a path; returns the best-path change if the ECMP
    /// next-hop set changed.
    pub fn insert(&mut self, prefix: IpNet, route: Route) -> Option<BestPathChange> {
        self.insert_at(prefix, route).1
    }

    /// [`Rib::insert`], also returning the prefix's slot: valid for
    /// [`Rib::sync_peers_at`] until the next sync, which saves looking the
    /// prefix up again.
    pub fn insert_at(&mut self, prefix: IpNet, route: Route) -> (u32, Option<BestPathChange>) {
        let id = self.alloc_slot(prefix);
        (id, self.insert_in(id, prefix, route))
    }

    fn insert_in(&mut self, id: u32, prefix: IpNet, route: Route) -> Option<BestPathChange> {
        if let Some(addr) = route.key() {
            // Re-announced by a restarted peer: no longer stale.
            if let Some(s) = self.stale.get_mut(&addr) {
                s.remove(&prefix);
            }
        }
        let peer = route.key();
        let d = &mut slot_mut(&mut self.slots, id).dest;
        let count = |added: bool, counts: &mut FastMap<IpAddr, [usize; 2]>| {
            if let Some(peer) = peer.filter(|_| added) {
                counts.entry(peer).or_default()[family_index(&prefix)] += 1;
            }
        };
        if self.untracked {
            let added = d.insert(route);
            count(added, &mut self.adj_in_count);
            return None;
        }
        let before = ecmp_next_hops(d);
        let added = d.insert(route);
        count(added, &mut self.adj_in_count);
        let after = ecmp_next_hops(d);
        (before != after).then_some(BestPathChange {
            prefix,
            next_hops: after,
        })
    }

    /// Every prefix with a learned best path and its ECMP next hops (what the kernel
    /// should hold); locally originated prefixes are left out.
    pub fn best_paths(&self) -> Vec<BestPathChange> {
        let mut out = Vec::new();
        for (prefix, id) in self.index.iter() {
            let next_hops = ecmp_next_hops(&slot_ref(&self.slots, id).dest);
            if !next_hops.is_empty() {
                out.push(BestPathChange { prefix, next_hops });
            }
        }
        out
    }

    /// Removes the path from `source` (`None` = local).
    pub fn remove(&mut self, prefix: IpNet, source: Option<IpAddr>) -> Option<BestPathChange> {
        let id = self.index.get(&prefix)?;
        let d = &mut slot_mut(&mut self.slots, id).dest;
        let track = !self.untracked;
        let before = if track { ecmp_next_hops(d) } else { Vec::new() };
        if !d.remove(source) {
            return None;
        }
        let after = if track { ecmp_next_hops(d) } else { Vec::new() };
        if let Some(peer) = source
            && let Some(c) = self.adj_in_count.get_mut(&peer)
        {
            c[family_index(&prefix)] -= 1;
        }
        if let Some(addr) = source
            && let Some(s) = self.stale.get_mut(&addr)
        {
            s.remove(&prefix);
        }
        release_slot(
            &mut self.slots,
            &mut self.index,
            &mut self.freed,
            id,
            &prefix,
        );
        (track && before != after).then_some(BestPathChange {
            prefix,
            next_hops: after,
        })
    }

    /// Forgets the Adj-RIB-Out of `peer`.
    fn drop_adj_out(&mut self, peer: &IpAddr) {
        let Some(out) = self.adj_out.remove(peer) else {
            return;
        };
        let sent: Vec<(IpNet, u32, u32)> = self
            .index
            .iter()
            .filter_map(|(p, slot)| {
                let id = out.get(slot);
                (id != 0).then_some((p, slot, id))
            })
            .collect();
        for (prefix, slot, id) in sent {
            self.out_attrs.release(id);
            slot_mut(&mut self.slots, slot).sent -= 1;
            release_slot(
                &mut self.slots,
                &mut self.index,
                &mut self.freed,
                slot,
                &prefix,
            );
        }
        self.out_attrs.collect();
    }

    /// Drops everything learned from `peer` and what it was sent (session
    /// down). Returns the affected prefixes and best-path changes.
    pub fn remove_peer(&mut self, peer: IpAddr) -> (Vec<IpNet>, Vec<BestPathChange>) {
        self.drop_adj_out(&peer);
        self.stale.remove(&peer);
        let prefixes = self.adj_in(&peer);
        let changes = prefixes
            .iter()
            .filter_map(|p| self.remove(*p, Some(peer)))
            .collect();
        self.adj_in_count.remove(&peer);
        (prefixes, changes)
    }

    /// [`Rib::sync_peer`] for at most `limit` prefixes of `walk`, in prefix
    /// order: a full sync done in pieces, so that what is queued for a
    /// peer stays bounded. Returns the walk's next position, `None` once it
    /// reached its end.
    pub fn sync_peer_chunk(
        &mut self,
        local: &LocalInfo,
        to: &PeerInfo,
        walk: Walk,
        limit: usize,
    ) -> (OutUpdate, Option<Walk>) {
        self.settle();
        let list: Vec<(IpNet, Option<u32>)> = self
            .index
            .range(walk.after, walk.end)
            .take(limit)
            .map(|(p, s)| (p, Some(s)))
            .collect();
        let next = (list.len() == limit).then(|| Walk {
            after: list.last().map(|(p, _)| *p),
            end: walk.end,
        });
        (self.sync_resolved(local, to, &list), next)
    }

    /// Forgets what `peer` was sent of `family` (before that family is sent
    /// again in full, as a ROUTE-REFRESH asks).
    pub fn reset_adj_out_family(&mut self, peer: &IpAddr, family: Family) {
        let Some(out) = self.adj_out.get_mut(peer) else {
            return;
        };
        let sent: Vec<(IpNet, u32, u32)> = self
            .index
            .iter()
            .filter(|(p, _)| family_of(p) == family)
            .filter_map(|(p, slot)| {
                let id = out.get(slot);
                (id != 0).then_some((p, slot, id))
            })
            .collect();
        for (prefix, slot, id) in sent {
            out.set(slot, 0);
            self.out_attrs.release(id);
            slot_mut(&mut self.slots, slot).sent -= 1;
            release_slot(
                &mut self.slots,
                &mut self.index,
                &mut self.freed,
                slot,
                &prefix,
            );
        }
        self.out_attrs.collect();
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
        self.settle();
        let list: Vec<(IpNet, Option<u32>)> = match prefixes {
            Some(p) => self.resolve(p),
            None => {
                // Every live slot: destinations with paths and prefixes
                // still in some Adj-RIB-Out.
                self.live_slots().map(|(p, i, _)| (p, Some(i))).collect()
            }
        };
        self.sync_resolved(local, to, &list)
    }

    /// [`Rib::sync_peer`] for several peers and the same prefixes, in order.
    pub fn sync_peers(
        &mut self,
        local: &LocalInfo,
        peers: &[PeerInfo],
        prefixes: &[IpNet],
    ) -> Vec<OutUpdate> {
        let list: Vec<(IpNet, Option<u32>)> = prefixes.iter().map(|p| (*p, None)).collect();
        self.sync_peers_at(local, peers, &list)
    }

    /// [`Rib::sync_peers`] for prefixes with the slots [`Rib::insert_at`]
    /// returned since the last sync (`None`: look the prefix up).
    pub fn sync_peers_at(
        &mut self,
        local: &LocalInfo,
        peers: &[PeerInfo],
        prefixes: &[(IpNet, Option<u32>)],
    ) -> Vec<OutUpdate> {
        let list: Vec<(IpNet, Option<u32>)> = prefixes
            .iter()
            .map(|(p, s)| (*p, s.or_else(|| self.index.get(p))))
            .collect();
        self.settle();
        peers
            .iter()
            .map(|to| self.sync_resolved(local, to, &list))
            .collect()
    }

    fn resolve(&self, prefixes: &[IpNet]) -> Vec<(IpNet, Option<u32>)> {
        prefixes.iter().map(|p| (*p, self.index.get(p))).collect()
    }

    /// Slots emptied since the last sync become reusable.
    fn settle(&mut self) {
        if self.free.is_empty() {
            std::mem::swap(&mut self.free, &mut self.freed);
        } else {
            self.free.append(&mut self.freed);
        }
    }

    fn sync_resolved(
        &mut self,
        local: &LocalInfo,
        to: &PeerInfo,
        list: &[(IpNet, Option<u32>)],
    ) -> OutUpdate {
        let Rib {
            index,
            slots,
            freed,
            adj_out,
            out_attrs,
            ..
        } = self;
        let out = adj_out.entry(to.addr).or_default();
        // Without filters, the export of a route does not depend on the
        // prefix beyond its family: compute it once per attribute set.
        let memoise = to.filters.is_empty();
        let mut memo: FastMap<ExportKey, Option<(u32, usize)>> = FastMap::default();
        let mut last: Option<(ExportKey, Option<(u32, usize)>)> = None;
        let mut groups: Vec<Announcement> = Vec::new();
        let mut group_of: FastMap<u32, usize> = FastMap::default();
        let mut last_group: Option<(u32, usize)> = None;
        let mut withdraw = Vec::new();
        let mut too_large = Vec::new();
        // The export and the room it leaves for NLRI in one message.
        let export = |prefix: &IpNet, r: &Route, out_attrs: &mut OutAttrs| {
            policy::export(local, to, prefix, &r.source, &r.attrs, r.next_hop).map(|(a, nh)| {
                let room = message::nlri_room(&a, nh, &to.encode).unwrap_or(0);
                (out_attrs.intern(a, nh), room)
            })
        };
        for (prefix, slot) in list {
            // A slot freed earlier in this loop (a prefix listed twice) is
            // empty and nobody's: nothing happens below. Slots are only
            // reused by `insert`, never during a sync.
            let Some(slot) = *slot else {
                continue;
            };
            let s = slot_ref(slots, slot);
            let had = out.get(slot);
            let exported = match s.dest.best() {
                None => None,
                Some(r) if memoise => {
                    let key = ExportKey {
                        path: Arc::as_ptr(&r.0),
                        v4: matches!(prefix, IpNet::V4(_)),
                    };
                    match &last {
                        Some((k, v)) if *k == key => *v,
                        _ => {
                            let v = match memo.get(&key) {
                                Some(v) => *v,
                                None => {
                                    let v = export(prefix, r, out_attrs);
                                    memo.insert(key.clone(), v);
                                    v
                                }
                            };
                            last = Some((key, v));
                            v
                        }
                    }
                }
                Some(r) => export(prefix, r, out_attrs),
            };
            let want = match exported {
                Some((_, room)) if prefix_wire_len(prefix.prefix_len()) > room => {
                    too_large.push(*prefix);
                    None
                }
                e => e.map(|(id, _)| id),
            };
            match want {
                Some(id) if id == had => {}
                Some(id) => {
                    out.set(slot, id);
                    out_attrs.acquire(id);
                    if had != 0 {
                        out_attrs.release(had);
                    } else {
                        slot_mut(slots, slot).sent += 1;
                    }
                    let g = match last_group {
                        Some((gid, g)) if gid == id => g,
                        _ => {
                            let g = *group_of.entry(id).or_insert_with(|| {
                                let (attrs, next_hop) = out_attrs.get(id);
                                groups.push(Announcement {
                                    attrs: attrs.clone(),
                                    next_hop,
                                    prefixes: Vec::new(),
                                });
                                groups.len() - 1
                            });
                            last_group = Some((id, g));
                            g
                        }
                    };
                    groups[g].prefixes.push(*prefix);
                }
                None if had != 0 => {
                    out.set(slot, 0);
                    out_attrs.release(had);
                    slot_mut(slots, slot).sent -= 1;
                    release_slot(slots, index, freed, slot, prefix);
                    withdraw.push(*prefix);
                }
                None => {}
            }
        }
        out_attrs.collect();
        OutUpdate {
            announce: groups,
            withdraw,
            too_large,
        }
    }

    /// Forgets what `peer` was sent (before a fresh full sync).
    pub fn reset_adj_out(&mut self, peer: &IpAddr) {
        self.drop_adj_out(peer);
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
        self.drop_adj_out(&peer);
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

    /// Whether routes from `peer` are still marked stale.
    pub fn has_stale(&self, peer: &IpAddr) -> bool {
        self.stale.get(peer).is_some_and(|s| !s.is_empty())
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
        Route::new(
            peer_src(last, ebgp),
            a,
            NextHop::Ipv4(Ipv4Addr::new(198, 18, 0, last)),
        )
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
    fn best_paths_lists_learned_prefixes_only() {
        let mut rib = Rib::new();
        let learned: IpNet = "100.64.0.0/26".parse().unwrap();
        let own: IpNet = "100.64.1.0/26".parse().unwrap();
        rib.insert(learned, route(2, false, |_| {}));
        rib.insert(learned, route(3, false, |_| {}));
        rib.insert(
            own,
            Route::new(
                RouteSource::Local,
                PathAttributes::default(),
                NextHop::Ipv4(Ipv4Addr::UNSPECIFIED),
            ),
        );
        let all = rib.best_paths();
        assert_eq!(all.len(), 1, "{all:?}");
        assert_eq!(all[0].prefix, learned);
        assert_eq!(all[0].next_hops.len(), 2);
        rib.remove(learned, Some("198.18.0.2".parse().unwrap()));
        rib.remove(learned, Some("198.18.0.3".parse().unwrap()));
        assert!(rib.best_paths().is_empty());
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
        let r4 = route(2, false, |_| {});
        let r6 = Route::new(
            r4.source.clone(),
            r4.attrs.clone(),
            NextHop::Ipv6 {
                global: "2001:db8::2".parse().unwrap(),
                link_local: None,
            },
        );
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
            encode: crate::packet::EncodeCxt {
                four_octet_as: true,
                extended_message: false,
            },
            transit: false,
            enforce_first_as: true,
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
            rib.insert(*p, Route::new(RouteSource::Local, (*shared).clone(), nh));
        }
        rib.insert(
            ps[2],
            Route::new(RouteSource::Local, PathAttributes::default(), nh),
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
        let r = route(2, true, |_| {});
        let r = r.with_attrs(PathAttributes {
            local_pref: Some(1000),
            ..r.attrs.clone()
        });
        rib.insert(ps[1], r);
        let u = rib.sync_peer(&local(), &peer, Some(&ps[1..2]));
        assert_eq!(u.withdraw, vec![ps[1]]);
    }

    fn local_info() -> LocalInfo {
        local()
    }

    #[test]
    fn a_destination_costs_a_few_words() {
        // What the RIB's memory per prefix rests on (issue 16: at most
        // BIRD's RSS): one pointer per path, the slot with its counter.
        assert_eq!(std::mem::size_of::<Route>(), 8);
        assert!(
            std::mem::size_of::<Slot>() <= 24,
            "{}",
            std::mem::size_of::<Slot>()
        );
    }

    #[test]
    fn prefix_index_orders_and_walks_as_ipnet_does() {
        let mut all: Vec<IpNet> = [
            "0.0.0.0/0",
            "100.64.0.0/10",
            "100.64.0.0/24",
            "100.64.0.0/32",
            "100.64.0.1/32",
            "198.18.0.0/15",
            "255.255.255.255/32",
            "::/0",
            "2001:db8::/32",
            "2001:db8::/64",
            "2001:db8:1::/48",
        ]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
        let mut idx = PrefixIndex::default();
        for (i, p) in all.iter().enumerate().rev() {
            assert_eq!(idx.get_or_insert_with(*p, || i as u32), i as u32);
        }
        all.sort();
        let order: Vec<IpNet> = idx.iter().map(|(p, _)| p).collect();
        assert_eq!(order, all);
        for (i, p) in all.iter().enumerate() {
            assert_eq!(idx.get(p), Some(i as u32));
        }
        // Every walk (after, end) sees exactly the prefixes between.
        let points: Vec<Option<IpNet>> = std::iter::once(None)
            .chain(all.iter().copied().map(Some))
            .collect();
        for after in &points {
            for end in &points {
                let want: Vec<IpNet> = all
                    .iter()
                    .copied()
                    .filter(|p| after.is_none_or(|a| *p > a) && end.is_none_or(|e| *p < e))
                    .collect();
                let got: Vec<IpNet> = idx.range(*after, *end).map(|(p, _)| p).collect();
                assert_eq!(got, want, "after {after:?} end {end:?}");
            }
        }
        for fam in [Family::Ipv4Unicast, Family::Ipv6Unicast] {
            let w = Walk::over(Some(fam));
            let got: Vec<IpNet> = idx.range(w.after, w.end).map(|(p, _)| p).collect();
            let want: Vec<IpNet> = all
                .iter()
                .copied()
                .filter(|p| family_of(p) == fam)
                .collect();
            assert_eq!(got, want);
        }
        idx.remove(&all[3]);
        assert_eq!(idx.get(&all[3]), None);
        assert_eq!(idx.iter().count(), all.len() - 1);
    }

    #[test]
    fn adj_rib_in_is_counted_per_peer_and_family() {
        let mut rib = Rib::new();
        let peer: IpAddr = "198.18.0.2".parse().unwrap();
        let p: Vec<IpNet> = ["100.64.0.0/26", "100.64.0.64/26"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        for x in &p {
            rib.insert(*x, route(2, false, |_| {}));
        }
        // A replacement is not a new prefix; another peer's path does not count.
        rib.insert(p[0], route(2, false, |a| a.med = Some(1)));
        rib.insert(p[0], route(3, false, |_| {}));
        assert_eq!(rib.adj_in_count(&peer, Family::Ipv4Unicast), 2);
        assert_eq!(rib.adj_in_count(&peer, Family::Ipv6Unicast), 0);
        rib.remove(p[1], Some(peer));
        rib.remove(p[1], Some(peer));
        assert_eq!(rib.adj_in_count(&peer, Family::Ipv4Unicast), 1);
        rib.remove_peer(peer);
        assert_eq!(rib.adj_in_count(&peer, Family::Ipv4Unicast), 0);
        let other: IpAddr = "198.18.0.3".parse().unwrap();
        assert_eq!(rib.adj_in_count(&other, Family::Ipv4Unicast), 1);
    }

    #[test]
    fn sync_in_chunks_covers_the_table_once_and_refresh_resends_a_family() {
        let mut rib = Rib::new();
        let mut peer = to_peer(2, 65001);
        peer.families = vec![Family::Ipv4Unicast, Family::Ipv6Unicast];
        peer.local_v6 = Some("2001:db8::1".parse().unwrap());
        let local_route = |v4: bool| {
            Route::new(
                RouteSource::Local,
                PathAttributes::default(),
                if v4 {
                    NextHop::Ipv4(Ipv4Addr::UNSPECIFIED)
                } else {
                    NextHop::Ipv6 {
                        global: std::net::Ipv6Addr::UNSPECIFIED,
                        link_local: None,
                    }
                },
            )
        };
        let v4: Vec<IpNet> = (0..10u32)
            .map(|i| {
                IpNet::V4(ipnet::Ipv4Net::new(Ipv4Addr::from(0x6440_0000 + (i << 8)), 24).unwrap())
            })
            .collect();
        let v6: Vec<IpNet> = (0..5u16)
            .map(|i| format!("2001:db8:{i:x}::/48").parse().unwrap())
            .collect();
        for p in &v4 {
            rib.insert(*p, local_route(true));
        }
        for p in &v6 {
            rib.insert(*p, local_route(false));
        }
        // Walk everything 4 at a time: every prefix announced exactly once.
        let mut seen = Vec::new();
        let mut walk = Some(Walk::over(None));
        let mut steps = 0;
        while let Some(w) = walk {
            let (out, next) = rib.sync_peer_chunk(&local(), &peer, w, 4);
            seen.extend(out.announce.iter().flat_map(|a| a.prefixes.clone()));
            walk = next;
            steps += 1;
        }
        assert_eq!(steps, 4, "15 prefixes in steps of 4");
        let mut all = v4.clone();
        all.extend(&v6);
        assert_eq!(seen, all);
        // Walking again sends nothing; one family walked after a reset
        // sends that family only.
        let (out, _) = rib.sync_peer_chunk(&local(), &peer, Walk::over(None), 100);
        assert!(out.is_empty());
        rib.reset_adj_out_family(&peer.addr, Family::Ipv6Unicast);
        assert_eq!(rib.adj_out(&peer.addr).unwrap().len(), 10);
        let (out, next) =
            rib.sync_peer_chunk(&local(), &peer, Walk::over(Some(Family::Ipv6Unicast)), 100);
        assert_eq!(next, None);
        let again: Vec<IpNet> = out
            .announce
            .iter()
            .flat_map(|a| a.prefixes.clone())
            .collect();
        assert_eq!(again, v6);
        let (out, _) =
            rib.sync_peer_chunk(&local(), &peer, Walk::over(Some(Family::Ipv4Unicast)), 100);
        assert!(out.is_empty(), "IPv4 was not reset: {out:?}");
    }

    #[test]
    fn adj_rib_out_ids_widen_from_one_byte_to_four() {
        let mut c = IdChunk::default();
        assert_eq!(c.set(3, 0), 0);
        assert!(matches!(c, IdChunk::Empty), "clearing allocates nothing");
        assert_eq!(c.set(3, 7), 0);
        assert!(matches!(c, IdChunk::Tiny(_)));
        assert_eq!(c.set(4, 300), 0);
        assert!(matches!(c, IdChunk::Narrow(_)));
        assert_eq!(c.set(5, 70_000), 0);
        assert!(matches!(c, IdChunk::Wide(_)));
        assert_eq!(
            (c.get(3), c.get(4), c.get(5), c.get(6)),
            (7, 300, 70_000, 0)
        );
        assert_eq!(c.set(5, 1), 70_000);
        assert!(matches!(c, IdChunk::Wide(_)), "never narrows");
    }

    #[test]
    fn slots_are_reused_only_once_nothing_refers_to_them() {
        let mut rib = Rib::new();
        let peer = to_peer(2, 65001);
        let a: IpNet = "100.64.0.0/32".parse().unwrap();
        let b: IpNet = "100.64.0.1/32".parse().unwrap();
        let local = |rib: &mut Rib, p| {
            rib.insert(
                p,
                Route::new(
                    RouteSource::Local,
                    PathAttributes::default(),
                    NextHop::Ipv4(Ipv4Addr::UNSPECIFIED),
                ),
            )
        };
        local(&mut rib, a);
        assert_eq!(rib.sync_peer(&local_info(), &peer, None).announce.len(), 1);
        // Gone from the Loc-RIB but still in the peer's Adj-RIB-Out: a new
        // prefix must not take over its slot.
        rib.remove(a, None);
        local(&mut rib, b);
        let u = rib.sync_peer(&local_info(), &peer, None);
        assert_eq!(u.withdraw, vec![a]);
        assert_eq!(u.announce[0].prefixes, vec![b]);
        assert_eq!(
            rib.adj_out(&peer.addr).unwrap().keys().collect::<Vec<_>>(),
            vec![&b]
        );
        // Withdrawn everywhere: the slot is free, reused once another sync
        // has passed (until then slots from `insert_at` stay valid).
        assert!(rib.sync_peer(&local_info(), &peer, Some(&[])).is_empty());
        let (slot_a, _) = rib.insert_at(
            a,
            Route::new(
                RouteSource::Local,
                PathAttributes::default(),
                NextHop::Ipv4(Ipv4Addr::UNSPECIFIED),
            ),
        );
        assert_eq!(rib.slots.iter().map(Vec::len).sum::<usize>(), 2);
        rib.remove(a, None);
        local(&mut rib, "100.64.0.2/32".parse().unwrap());
        assert_ne!(
            rib.index.get(&"100.64.0.2/32".parse().unwrap()),
            Some(slot_a),
            "a slot freed in this batch is not reused before the sync"
        );
        rib.remove("100.64.0.2/32".parse().unwrap(), None);
        local(&mut rib, a);
        assert_eq!(
            rib.sync_peer(&local_info(), &peer, None).announce[0].prefixes,
            vec![a]
        );
        assert!(rib.sync_peer(&local_info(), &peer, None).is_empty());
        assert_eq!(
            rib.out_attrs.entries.iter().flatten().count(),
            1,
            "one set in use"
        );
        rib.reset_adj_out(&peer.addr);
        assert!(
            rib.out_attrs.entries.iter().all(Option::is_none),
            "released"
        );
        assert_eq!(rib.prefixes().collect::<Vec<_>>(), vec![a, b]);
    }
}
