//! What the engine knows of the whole cluster, kept compact: every endpoint of
//! every node (what selectors and named-port sets read of it), network sets and
//! profiles. Endpoints that look the same to a selector (namespace, own labels,
//! profiles, service account, named ports) share one [`Ident`], so replicas
//! cost an id and their addresses; strings and label sets are interned.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use ipnet::IpNet;
use tabby_selector::Labels;

use crate::compile::Namespaces;
use crate::model::{NAMESPACE_LABEL, NAMESPACE_LABEL_PREFIX, NamedPort, Profile};

/// An interned string.
pub(crate) type Sym = Arc<str>;
/// An interned label (key, value): label sets hold pointers to shared pairs.
pub(crate) type Pair = Arc<(Sym, Sym)>;
/// Interned labels, sorted by key.
pub(crate) type LabelSet = Arc<[Pair]>;

/// Shares equal strings, label sets, profile lists and named-port lists.
#[derive(Debug, Default)]
pub(crate) struct Interner {
    strings: HashSet<Sym>,
    pairs: HashSet<Pair>,
    labels: HashSet<LabelSet>,
    lists: HashSet<Arc<[Sym]>>,
    ports: HashSet<Arc<[NamedPort]>>,
    /// Entries after the last sweep: the next sweep runs when they doubled.
    swept: usize,
}

impl Interner {
    fn entries(&self) -> usize {
        self.strings.len()
            + self.pairs.len()
            + self.labels.len()
            + self.lists.len()
            + self.ports.len()
    }

    /// The shared copy of `s`.
    pub(crate) fn sym(&mut self, s: &str) -> Sym {
        if let Some(x) = self.strings.get(s) {
            return x.clone();
        }
        let x: Sym = Arc::from(s);
        self.strings.insert(x.clone());
        x
    }

    /// The shared copy of a label.
    pub(crate) fn pair(&mut self, key: &str, value: &str) -> Pair {
        let pair: Pair = Arc::new((self.sym(key), self.sym(value)));
        if let Some(x) = self.pairs.get(&pair) {
            return x.clone();
        }
        self.pairs.insert(pair.clone());
        pair
    }

    /// The shared copy of a label set (pairs sorted by key).
    pub(crate) fn label_set(&mut self, pairs: Vec<Pair>) -> LabelSet {
        let set: LabelSet = Arc::from(pairs);
        if let Some(x) = self.labels.get(&set) {
            return x.clone();
        }
        self.labels.insert(set.clone());
        set
    }

    /// The shared copy of a label map.
    pub(crate) fn labels(&mut self, m: &BTreeMap<String, String>) -> LabelSet {
        let pairs = m.iter().map(|(k, v)| self.pair(k, v)).collect();
        self.label_set(pairs)
    }

    /// The shared copy of a list of names.
    pub(crate) fn list(&mut self, v: &[String]) -> Arc<[Sym]> {
        let list: Arc<[Sym]> = v.iter().map(|s| self.sym(s)).collect();
        if let Some(x) = self.lists.get(&list) {
            return x.clone();
        }
        self.lists.insert(list.clone());
        list
    }

    /// The shared copy of a list of named ports.
    pub(crate) fn ports(&mut self, v: &[NamedPort]) -> Arc<[NamedPort]> {
        let list: Arc<[NamedPort]> = Arc::from(v);
        if let Some(x) = self.ports.get(&list) {
            return x.clone();
        }
        self.ports.insert(list.clone());
        list
    }

    /// Forgets what nothing else holds any more, once the tables doubled since
    /// the last time (amortised constant work per change).
    pub(crate) fn maybe_sweep(&mut self) {
        if self.entries() < 2 * self.swept + 1024 {
            return;
        }
        self.labels.retain(|x| Arc::strong_count(x) > 1);
        self.lists.retain(|x| Arc::strong_count(x) > 1);
        self.ports.retain(|x| Arc::strong_count(x) > 1);
        self.pairs.retain(|x| Arc::strong_count(x) > 1);
        self.strings.retain(|x| Arc::strong_count(x) > 1);
        self.swept = self.entries();
    }
}

/// Looks a label up in pairs sorted by key.
pub(crate) fn lookup<'a>(pairs: &'a [Pair], key: &str) -> Option<&'a str> {
    pairs
        .binary_search_by(|p| p.0.as_ref().cmp(key))
        .ok()
        .map(|i| pairs[i].1.as_ref())
}

/// Labels in one sorted list.
pub(crate) struct Pairs<'a>(pub &'a [Pair]);

impl Labels for Pairs<'_> {
    fn get_label(&self, key: &str) -> Option<&str> {
        lookup(self.0, key)
    }
}

/// An endpoint's labels: its own over its profiles' (`layer`).
pub(crate) struct Merged<'a> {
    /// Own labels (with the namespace label).
    pub own: &'a [Pair],
    /// The profiles' `labelsToApply`, merged in the endpoint's order.
    pub layer: &'a [Pair],
}

impl Labels for Merged<'_> {
    fn get_label(&self, key: &str) -> Option<&str> {
        lookup(self.own, key).or_else(|| lookup(self.layer, key))
    }
}

impl Merged<'_> {
    /// Every label (own first, then the profiles' that own labels do not hide).
    pub(crate) fn pairs(&self) -> impl Iterator<Item = &Pair> {
        self.own.iter().chain(
            self.layer
                .iter()
                .filter(|p| lookup(self.own, &p.0).is_none()),
        )
    }

    /// The merged labels as one sorted list.
    pub(crate) fn to_pairs(&self) -> Vec<Pair> {
        let mut v: Vec<Pair> = self.pairs().cloned().collect();
        v.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        v
    }
}

/// The labels a namespaceSelector sees for namespace `ns`: the namespace label,
/// `pcns.projectcalico.org/name`, and the `pcns.` labels of the explicit
/// `kns.<ns>` profile (a synthesized one applies just the name).
pub(crate) struct NamespaceLabels<'a> {
    /// The namespace (`None`: not namespaced, no labels).
    pub ns: Option<&'a str>,
    /// The explicit `kns.<ns>` profile.
    pub profile: Option<&'a Profile>,
}

const NAMESPACE_NAME_LABEL: &str = "pcns.projectcalico.org/name";

impl Labels for NamespaceLabels<'_> {
    fn get_label(&self, key: &str) -> Option<&str> {
        let ns = self.ns?;
        if key.starts_with(NAMESPACE_LABEL_PREFIX)
            && let Some(v) = self.profile.and_then(|p| p.labels_to_apply.get(key))
        {
            return Some(v);
        }
        (key == NAMESPACE_LABEL || key == NAMESPACE_NAME_LABEL).then_some(ns)
    }
}

/// What makes endpoints alike for selectors and named-port sets.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct IdentKey {
    /// Namespace (workload endpoints).
    pub ns: Option<Sym>,
    /// Own labels, with the namespace label.
    pub own: LabelSet,
    /// Profiles in order.
    pub profiles: Arc<[Sym]>,
    /// Service account.
    pub sa: Option<Sym>,
    /// Named ports.
    pub named_ports: Arc<[NamedPort]>,
    /// A host endpoint.
    pub host: bool,
}

/// Endpoints with one [`IdentKey`], and the labels their profiles give them.
#[derive(Debug)]
pub(crate) struct Ident {
    /// The shared key.
    pub key: Arc<IdentKey>,
    /// The profiles' `labelsToApply` merged (under the own labels).
    pub layer: LabelSet,
    /// The endpoints.
    pub eps: Vec<u32>,
}

impl Ident {
    /// The merged labels.
    pub(crate) fn labels(&self) -> Merged<'_> {
        Merged {
            own: &self.key.own,
            layer: &self.layer,
        }
    }
}

/// An endpoint's addresses: mostly one, kept inline; several (or none) in
/// [`World::multi`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Ips {
    /// One address.
    One(IpNet),
    /// None or several: an index in [`World::multi`].
    Many(u32),
}

/// An endpoint: its identity, addresses and name (28 bytes).
#[derive(Clone, Debug)]
pub(crate) struct Ep {
    /// Its [`Ident`] (`u32::MAX` for a free slot).
    pub ident: u32,
    /// Addresses.
    pub ips: Ips,
    /// Where its key is in [`Names`].
    name: u32,
}

/// Endpoint keys (`W<ns>/<name>`, `H/<name>`) one after the other, each after
/// its length (two bytes), and endpoint ids by a hash of the key: no
/// allocation per endpoint. Keys of removed endpoints are garbage until the
/// arena is compacted (when it is half garbage).
#[derive(Debug, Default)]
pub(crate) struct Names {
    arena: Vec<u8>,
    garbage: usize,
    hasher: std::collections::hash_map::RandomState,
    /// Endpoint by 32-bit key hash; keys with a hash taken are in `clashes`.
    ids: HashMap<u32, u32>,
    clashes: HashMap<u32, Vec<u32>>,
    count: usize,
    /// Tests: every key hashes the same (all but one clash).
    #[cfg(test)]
    collide: bool,
}

impl Names {
    fn hash(&self, key: &str) -> u32 {
        use std::hash::BuildHasher;
        #[cfg(test)]
        if self.collide {
            return 7;
        }
        self.hasher.hash_one(key) as u32
    }

    fn at(&self, offset: u32) -> &[u8] {
        let o = offset as usize;
        let len = usize::from(u16::from_le_bytes([self.arena[o], self.arena[o + 1]]));
        &self.arena[o + 2..o + 2 + len]
    }

    fn find(&self, eps: &[Ep], key: &str) -> Option<u32> {
        let h = self.hash(key);
        let is = |id: &u32| self.at(eps[*id as usize].name) == key.as_bytes();
        match self.ids.get(&h) {
            Some(id) if is(id) => Some(*id),
            Some(_) => self.clashes.get(&h)?.iter().copied().find(|id| is(id)),
            None => None,
        }
    }

    /// Stores a key for endpoint `id`; returns where it is.
    fn add(&mut self, key: &str, id: u32) -> u32 {
        let offset = self.arena.len() as u32;
        let len = u16::try_from(key.len()).expect("endpoint keys are shorter than 64 KiB");
        self.arena.extend_from_slice(&len.to_le_bytes());
        self.arena.extend_from_slice(key.as_bytes());
        let h = self.hash(key);
        match self.ids.entry(h) {
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(id);
            }
            std::collections::hash_map::Entry::Occupied(_) => {
                self.clashes.entry(h).or_default().push(id);
            }
        }
        self.count += 1;
        offset
    }

    /// Forgets endpoint `id`'s key.
    fn remove(&mut self, key: &str, id: u32) {
        let h = self.hash(key);
        if self.ids.get(&h) == Some(&id) {
            match self.clashes.get_mut(&h).and_then(|c| c.pop()) {
                Some(other) => {
                    self.ids.insert(h, other);
                }
                None => {
                    self.ids.remove(&h);
                }
            }
        } else if let Some(c) = self.clashes.get_mut(&h) {
            c.retain(|x| *x != id);
        }
        if self.clashes.get(&h).is_some_and(Vec::is_empty) {
            self.clashes.remove(&h);
        }
        self.garbage += 2 + key.len();
        self.count -= 1;
    }
}

/// A (Global)NetworkSet.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct NetSet {
    /// Namespace of a NetworkSet.
    pub ns: Option<Sym>,
    /// Labels with the namespace label.
    pub labels: LabelSet,
    /// CIDRs.
    pub nets: Vec<IpNet>,
}

/// The cluster as selectors see it.
#[derive(Debug, Default)]
pub(crate) struct World {
    pub intern: Interner,
    pub idents: Vec<Option<Ident>>,
    free_idents: Vec<u32>,
    ident_ids: HashMap<Arc<IdentKey>, u32>,
    /// Namespaced idents by namespace.
    pub by_ns: HashMap<Sym, Vec<u32>>,
    /// Idents without a namespace (host endpoints).
    pub no_ns: Vec<u32>,
    /// Idents by merged label.
    pub by_label: HashMap<Sym, HashMap<Sym, Vec<u32>>>,
    /// Idents by profile named.
    pub by_profile: HashMap<Sym, Vec<u32>>,
    pub eps: Vec<Ep>,
    free_eps: Vec<u32>,
    /// Address lists of endpoints with other than one address.
    multi: Vec<Box<[IpNet]>>,
    free_multi: Vec<u32>,
    /// Endpoint keys and ids.
    names: Names,
    /// Network sets by `G/<name>` or `N<ns>/<name>`.
    pub netsets: HashMap<String, NetSet>,
    /// Profiles given as resources.
    pub profiles: HashMap<String, Arc<Profile>>,
    /// Per namespace: how many of its workload endpoints name `kns.<ns>`, and
    /// the profile Calico's Kubernetes backend would make for it.
    pub synthesized: HashMap<String, (u32, Arc<Profile>)>,
}

fn remove_id(v: &mut Vec<u32>, id: u32) {
    if let Some(i) = v.iter().position(|x| *x == id) {
        v.swap_remove(i);
    }
}

impl World {
    /// The profile in effect under a name: given, or synthesized for a
    /// namespace whose endpoints name it.
    pub(crate) fn profile(&self, name: &str) -> Option<&Arc<Profile>> {
        self.profiles.get(name).or_else(|| {
            let ns = name.strip_prefix("kns.")?;
            self.synthesized
                .get(ns)
                .filter(|(n, _)| *n > 0)
                .map(|(_, p)| p)
        })
    }

    /// The namespace labels of `ns`.
    pub(crate) fn namespace_labels<'a>(&'a self, ns: Option<&'a str>) -> NamespaceLabels<'a> {
        NamespaceLabels {
            ns,
            profile: ns.and_then(|ns| self.profiles.get(&format!("kns.{ns}")).map(|p| &**p)),
        }
    }

    /// The merged `labelsToApply` of the profiles in effect, in order.
    pub(crate) fn layer(&mut self, profiles: &[Sym]) -> LabelSet {
        let mut m: BTreeMap<&str, &str> = BTreeMap::new();
        for p in profiles {
            if let Some(p) = self.profile(p) {
                m.extend(
                    p.labels_to_apply
                        .iter()
                        .map(|(k, v)| (k.as_str(), v.as_str())),
                );
            }
        }
        let m: Vec<(String, String)> = m
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let pairs = m.iter().map(|(k, v)| self.intern.pair(k, v)).collect();
        self.intern.label_set(pairs)
    }

    pub(crate) fn ident(&self, id: u32) -> &Ident {
        self.idents[id as usize].as_ref().expect("live ident")
    }

    fn index_labels(&mut self, id: u32, add: bool) {
        let ident = self.idents[id as usize].as_ref().expect("live ident");
        let pairs: Vec<(Sym, Sym)> = ident
            .labels()
            .pairs()
            .map(|p| (p.0.clone(), p.1.clone()))
            .collect();
        for (k, v) in pairs {
            if add {
                self.by_label
                    .entry(k)
                    .or_default()
                    .entry(v)
                    .or_default()
                    .push(id);
            } else if let Some(values) = self.by_label.get_mut(&k) {
                if let Some(ids) = values.get_mut(&v) {
                    remove_id(ids, id);
                    if ids.is_empty() {
                        values.remove(&v);
                    }
                }
                if values.is_empty() {
                    self.by_label.remove(&k);
                }
            }
        }
    }

    /// The ident with this key, made (and indexed) if new.
    pub(crate) fn ident_for(&mut self, key: IdentKey) -> u32 {
        if let Some(id) = self.ident_ids.get(&key) {
            return *id;
        }
        let key = Arc::new(key);
        let layer = self.layer(&key.profiles);
        let ident = Ident {
            key: key.clone(),
            layer,
            eps: Vec::new(),
        };
        let id = match self.free_idents.pop() {
            Some(id) => {
                self.idents[id as usize] = Some(ident);
                id
            }
            None => {
                self.idents.push(Some(ident));
                (self.idents.len() - 1) as u32
            }
        };
        self.ident_ids.insert(key.clone(), id);
        match &key.ns {
            Some(ns) => self.by_ns.entry(ns.clone()).or_default().push(id),
            None => self.no_ns.push(id),
        }
        for p in key.profiles.iter() {
            let list = self.by_profile.entry(p.clone()).or_default();
            if !list.contains(&id) {
                list.push(id);
            }
        }
        self.index_labels(id, true);
        id
    }

    /// Forgets an ident without endpoints.
    pub(crate) fn free_ident(&mut self, id: u32) {
        let Some(ident) = self.idents[id as usize].as_ref() else {
            return;
        };
        if !ident.eps.is_empty() {
            return;
        }
        let key = ident.key.clone();
        self.index_labels(id, false);
        self.ident_ids.remove(&key);
        match &key.ns {
            Some(ns) => {
                if let Some(v) = self.by_ns.get_mut(ns) {
                    remove_id(v, id);
                    if v.is_empty() {
                        self.by_ns.remove(ns);
                    }
                }
            }
            None => remove_id(&mut self.no_ns, id),
        }
        for p in key.profiles.iter() {
            if let Some(v) = self.by_profile.get_mut(p) {
                remove_id(v, id);
                if v.is_empty() {
                    self.by_profile.remove(p);
                }
            }
        }
        self.idents[id as usize] = None;
        self.free_idents.push(id);
    }

    /// Recomputes an ident's profile labels; returns the old ones if they changed.
    pub(crate) fn relabel(&mut self, id: u32) -> Option<LabelSet> {
        let profiles = self.ident(id).key.profiles.clone();
        let layer = self.layer(&profiles);
        if layer == self.ident(id).layer {
            return None;
        }
        self.index_labels(id, false);
        let ident = self.idents[id as usize].as_mut().expect("live ident");
        let old = std::mem::replace(&mut ident.layer, layer);
        self.index_labels(id, true);
        Some(old)
    }

    /// An endpoint's addresses.
    pub(crate) fn ips(&self, ep: u32) -> &[IpNet] {
        match &self.eps[ep as usize].ips {
            Ips::One(n) => std::slice::from_ref(n),
            Ips::Many(i) => &self.multi[*i as usize],
        }
    }

    /// The endpoint with this key.
    pub(crate) fn ep_id(&self, key: &str) -> Option<u32> {
        self.names.find(&self.eps, key)
    }

    /// Stores a new endpoint; returns its id.
    pub(crate) fn add_ep(&mut self, key: &str, ident: u32, ips: &[IpNet]) -> u32 {
        let ips = match ips {
            [one] => Ips::One(*one),
            _ => {
                let list: Box<[IpNet]> = ips.into();
                Ips::Many(match self.free_multi.pop() {
                    Some(i) => {
                        self.multi[i as usize] = list;
                        i
                    }
                    None => {
                        self.multi.push(list);
                        (self.multi.len() - 1) as u32
                    }
                })
            }
        };
        let id = match self.free_eps.pop() {
            Some(id) => id,
            None => {
                self.eps.push(Ep {
                    ident: u32::MAX,
                    ips: Ips::Many(u32::MAX),
                    name: 0,
                });
                (self.eps.len() - 1) as u32
            }
        };
        let name = self.names.add(key, id);
        self.eps[id as usize] = Ep { ident, ips, name };
        let eps = &mut self.idents[ident as usize]
            .as_mut()
            .expect("live ident")
            .eps;
        // Replicas are few per ident: exact growth keeps the lists tight.
        eps.reserve_exact(1);
        eps.push(id);
        self.maybe_compact();
        id
    }

    /// Forgets an endpoint; returns its id and ident (which may now be empty).
    pub(crate) fn remove_ep(&mut self, key: &str) -> Option<(u32, u32)> {
        let id = self.ep_id(key)?;
        self.names.remove(key, id);
        let ep = std::mem::replace(
            &mut self.eps[id as usize],
            Ep {
                ident: u32::MAX,
                ips: Ips::Many(u32::MAX),
                name: 0,
            },
        );
        if let Ips::Many(i) = ep.ips {
            self.multi[i as usize] = Box::new([]);
            self.free_multi.push(i);
        }
        if let Some(ident) = self.idents[ep.ident as usize].as_mut() {
            remove_id(&mut ident.eps, id);
        }
        self.free_eps.push(id);
        Some((id, ep.ident))
    }

    /// Rewrites the key arena without garbage once it is half garbage.
    fn maybe_compact(&mut self) {
        let n = &mut self.names;
        if n.garbage < 4096 || n.garbage * 2 < n.arena.len() {
            return;
        }
        let mut arena = Vec::with_capacity(n.arena.len() - n.garbage);
        for ep in self.eps.iter_mut().filter(|e| e.ident != u32::MAX) {
            let o = ep.name as usize;
            let len = usize::from(u16::from_le_bytes([n.arena[o], n.arena[o + 1]]));
            ep.name = arena.len() as u32;
            arena.extend_from_slice(&n.arena[o..o + 2 + len]);
        }
        n.arena = arena;
        n.garbage = 0;
    }

    /// How many endpoints there are.
    pub(crate) fn endpoint_count(&self) -> usize {
        self.names.count
    }

    /// How many idents there are.
    pub(crate) fn ident_count(&self) -> usize {
        self.ident_ids.len()
    }
}

impl Namespaces for World {
    fn namespace_matches(&self, s: &tabby_selector::Selector, ns: Option<&str>) -> bool {
        s.matches_labels(&self.namespace_labels(ns))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn world(collide: bool) -> World {
        let mut w = World::default();
        w.names.collide = collide;
        let key = IdentKey {
            ns: None,
            own: w.intern.label_set(Vec::new()),
            profiles: w.intern.list(&[]),
            sa: None,
            named_ports: w.intern.ports(&[]),
            host: false,
        };
        w.ident_for(key);
        w
    }

    #[test]
    fn endpoint_keys_survive_clashes_removals_and_compaction() {
        for collide in [false, true] {
            let mut w = world(collide);
            let ip: IpNet = "10.0.0.1/32".parse().expect("ip");
            let mut live = BTreeMap::new();
            for round in 0..3000u32 {
                let key = format!("Wns/pod-{}", round % 700);
                if let Some((id, _)) = w.remove_ep(&key) {
                    assert_eq!(live.remove(&key), Some(id));
                } else {
                    let ips = if round % 3 == 0 {
                        vec![ip, ip]
                    } else {
                        vec![ip]
                    };
                    let id = w.add_ep(&key, 0, &ips);
                    live.insert(key, id);
                }
                if round % 97 == 0 {
                    for (k, id) in &live {
                        assert_eq!(w.ep_id(k), Some(*id), "{k}");
                    }
                    assert_eq!(w.ep_id("Wns/absent"), None);
                }
            }
            assert_eq!(w.endpoint_count(), live.len());
            assert_eq!(w.ident(0).eps.len(), live.len());
            assert!(w.names.garbage * 2 <= w.names.arena.len() + 4096);
        }
    }
}
