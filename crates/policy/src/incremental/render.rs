//! The rendered tables of one family, kept up to date object by object, and a
//! journal of what changed since the last mark, so that the update is computed
//! from the changed objects only (with the same command builder as
//! [`crate::nft::diff`], hence the same commands).
//!
//! A unit is one direction of a local group's program. Units are ordered as
//! the full renderer meets them (workloads before host endpoints, then by the
//! group's first interface-owning endpoint, egress before ingress); units that
//! render the same share the chains of the first (the owner), named after its
//! interface; profile chains are shared by content. Changing one unit touches
//! its key's owner and the map elements of its interfaces, nothing else.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use serde_json::{Value, json};

use super::sets::{Registry, SlotKind};
use crate::compile::{Direction, Program};
use crate::model::{EndpointToHost, Failsafe, WorkloadPrefixes};
use crate::nft::{
    ALL_INTERFACES, Chain, ChainChange, FROM_ENDPOINT_MAP, FROM_HOST_ENDPOINT_MAP, Family,
    NamedSet, SetChange, TO_ENDPOINT_MAP, TO_HOST_ENDPOINT_MAP, Table, WORKLOAD_INTERFACES,
    add_set, base_chains, chain_change, delta_commands, elem_key, interfaces_decl, ip_elem,
    ip_set_decl, map_decl, port_elem, port_set_decl, program_chains, render_program, rules_chain,
    vmap_elem,
};

/// A local endpoint's place in the endpoint order: its key, and whether it is a
/// host endpoint.
pub(crate) type LocalKey = (String, bool);

/// Egress is rendered before ingress.
pub(crate) const DIRECTIONS: [Direction; 2] = [Direction::Egress, Direction::Ingress];

/// A unit: (group, index in [`DIRECTIONS`]).
pub(crate) type UnitId = (u32, u8);

/// Where a unit comes in the full renderer's order.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct UnitPos {
    /// Host endpoints come after workloads.
    pub host: bool,
    /// The group's first endpoint that owns an interface.
    pub rank: LocalKey,
    /// Index in [`DIRECTIONS`].
    pub d: u8,
    /// The group.
    pub group: u32,
}

/// What a unit is rendered from.
pub(crate) struct UnitSpec<'a> {
    /// Its position.
    pub pos: UnitPos,
    /// The interface of its group's first endpoint (names the chains it owns).
    pub iface: &'a str,
    /// The program of this direction.
    pub prog: &'a Program,
}

#[derive(Debug)]
struct Unit {
    key: Arc<str>,
    pos: UnitPos,
    iface: String,
    target: String,
}

/// The chains the first unit with a key owns.
#[derive(Debug)]
struct Owner {
    unit: UnitId,
    iface: String,
    main: String,
    chains: Vec<String>,
    profiles: Vec<String>,
}

/// A set's state at the last mark and its elements' changes since.
#[derive(Debug)]
struct SetRec {
    /// (map, declaration) at the mark, `None` if it was not there.
    at_mark: Option<(bool, Value)>,
    /// Element key -> (at the mark, now), for sets that were there.
    elems: BTreeMap<String, (Option<Value>, Option<Value>)>,
    /// Removed since the mark, and its elements not journaled: the registry
    /// keeps the slot until the next mark (an element without an entry was
    /// in the set at the mark if the buried slot has it).
    buried: bool,
}

/// What changed since the last mark.
#[derive(Debug, Default)]
struct Journal {
    sets: BTreeMap<String, SetRec>,
    /// Chain -> as it was at the mark.
    chains: BTreeMap<String, Option<Chain>>,
}

impl Journal {
    /// A set came; `buried`: the elements of the same set when it was buried.
    fn set_added(
        &mut self,
        name: &str,
        map: bool,
        elems: impl FnOnce() -> Vec<Value>,
        buried: impl FnOnce() -> Vec<Value>,
    ) {
        let rec = self.sets.entry(name.to_string()).or_insert(SetRec {
            at_mark: None,
            elems: BTreeMap::new(),
            buried: false,
        });
        if rec.buried {
            // What the buried set had and the journal does not say otherwise
            // was there at the mark; nothing is there now.
            for v in buried() {
                let key = elem_key(map, &v);
                rec.elems.entry(key).or_insert((Some(v), None));
            }
            for e in rec.elems.values_mut() {
                e.1 = None;
            }
            rec.buried = false;
        }
        if rec.at_mark.is_some() {
            for v in elems() {
                let key = elem_key(map, &v);
                rec.elems.entry(key).or_insert((None, None)).1 = Some(v);
            }
        }
    }

    /// A set went; its elements stay with the caller until the next mark
    /// (see [`SetRec::buried`]).
    fn set_buried(&mut self, name: &str, map: bool, decl: impl FnOnce() -> Value) {
        let rec = self.sets.entry(name.to_string()).or_insert_with(|| SetRec {
            at_mark: Some((map, decl())),
            elems: BTreeMap::new(),
            buried: false,
        });
        if rec.at_mark.is_some() {
            rec.buried = true;
        }
    }

    fn elem(
        &mut self,
        name: &str,
        map: bool,
        decl: impl FnOnce() -> Value,
        old: Option<Value>,
        new: Option<Value>,
    ) {
        let rec = self.sets.entry(name.to_string()).or_insert_with(|| SetRec {
            at_mark: Some((map, decl())),
            elems: BTreeMap::new(),
            buried: false,
        });
        if rec.at_mark.is_none() {
            return;
        }
        let key = match (&old, &new) {
            (Some(v), _) | (None, Some(v)) => elem_key(map, v),
            (None, None) => return,
        };
        rec.elems.entry(key).or_insert((old, None)).1 = new;
    }

    fn chain(&mut self, name: &str, before: Option<&Chain>) {
        if !self.chains.contains_key(name) {
            self.chains.insert(name.to_string(), before.cloned());
        }
    }
}

/// The static sets and maps, by index.
const STATICS: [(&str, bool); 5] = [
    (WORKLOAD_INTERFACES, false),
    (FROM_ENDPOINT_MAP, true),
    (TO_ENDPOINT_MAP, true),
    (FROM_HOST_ENDPOINT_MAP, true),
    (TO_HOST_ENDPOINT_MAP, true),
];

/// Inputs of the base chains.
type BaseInputs = (
    Option<[String; 2]>,
    EndpointToHost,
    Failsafe,
    WorkloadPrefixes,
);

/// One family's rendered table.
#[derive(Debug)]
pub(crate) struct FamilyState {
    pub f: Family,
    chains: BTreeMap<String, Chain>,
    journal: Journal,
    units: HashMap<UnitId, Unit>,
    by_key: HashMap<Arc<str>, BTreeSet<UnitPos>>,
    owners: HashMap<Arc<str>, Owner>,
    profile_refs: HashMap<String, u32>,
    /// Elements of [`STATICS`] by interface.
    statics: [BTreeMap<String, Value>; 5],
    base: Option<BaseInputs>,
}

impl FamilyState {
    /// The table with only the base chains and empty maps, all new since the
    /// (empty) mark.
    pub(crate) fn new(
        f: Family,
        e2h: EndpointToHost,
        failsafe: &Failsafe,
        prefixes: &WorkloadPrefixes,
    ) -> FamilyState {
        let mut s = FamilyState {
            f,
            chains: BTreeMap::new(),
            journal: Journal::default(),
            units: HashMap::new(),
            by_key: HashMap::new(),
            owners: HashMap::new(),
            profile_refs: HashMap::new(),
            statics: Default::default(),
            base: None,
        };
        for (name, map) in STATICS {
            s.journal.set_added(name, map, Vec::new, Vec::new);
        }
        s.set_base(None, e2h, failsafe, prefixes);
        s
    }

    fn static_decl(&self, i: usize) -> Value {
        if i == 0 {
            interfaces_decl(self.f)
        } else {
            map_decl(self.f, STATICS[i].0)
        }
    }

    fn put_chain(&mut self, name: &str, chain: Chain) {
        let current = self.chains.get(name);
        if current == Some(&chain) {
            return;
        }
        self.journal.chain(name, current);
        self.chains.insert(name.to_string(), chain);
    }

    fn del_chain(&mut self, name: &str) {
        if let Some(c) = self.chains.remove(name) {
            self.journal.chain(name, Some(&c));
        }
    }

    /// Re-renders the base chains when their inputs changed.
    pub(crate) fn set_base(
        &mut self,
        all: Option<[String; 2]>,
        e2h: EndpointToHost,
        failsafe: &Failsafe,
        prefixes: &WorkloadPrefixes,
    ) {
        let inputs = (all, e2h, failsafe.clone(), prefixes.clone());
        if self.base.as_ref() == Some(&inputs) {
            return;
        }
        let all_refs = inputs.0.as_ref().map(|[a, b]| [a.as_str(), b.as_str()]);
        for (name, chain) in base_chains(self.f, all_refs, e2h, failsafe, prefixes) {
            self.put_chain(&name, chain);
        }
        self.base = Some(inputs);
    }

    fn static_elem(&mut self, i: usize, iface: &str, new: Option<Value>) {
        let old = self.statics[i].get(iface).cloned();
        if old == new {
            return;
        }
        let decl = self.static_decl(i);
        self.journal
            .elem(STATICS[i].0, STATICS[i].1, || decl, old, new.clone());
        match new {
            Some(v) => self.statics[i].insert(iface.to_string(), v),
            None => self.statics[i].remove(iface),
        };
    }

    /// The program chain a unit's interfaces are dispatched to.
    pub(crate) fn target(&self, unit: UnitId) -> Option<&str> {
        self.units.get(&unit).map(|u| u.target.as_str())
    }

    /// Sets the map elements of an interface: `targets` are the egress and
    /// ingress program chains of the endpoint that owns it (`None`: nobody).
    pub(crate) fn set_iface(&mut self, host: bool, iface: &str, targets: Option<[&str; 2]>) {
        if !host {
            self.static_elem(0, iface, targets.map(|_| json!(iface)));
            self.static_elem(1, iface, targets.map(|[eg, _]| vmap_elem(iface, eg, false)));
            self.static_elem(
                2,
                iface,
                targets.map(|[_, ing]| vmap_elem(iface, ing, false)),
            );
        } else if iface != ALL_INTERFACES {
            self.static_elem(
                3,
                iface,
                targets.map(|[_, ing]| vmap_elem(iface, ing, true)),
            );
            self.static_elem(4, iface, targets.map(|[eg, _]| vmap_elem(iface, eg, true)));
        }
    }

    /// A slot entered the table.
    pub(crate) fn publish(&mut self, reg: &Registry, id: u32) {
        let name = reg.slot(id).name.clone();
        let f = self.f;
        let buried = || {
            reg.graveyard
                .get(&name)
                .map(|s| elems_of(s, f))
                .unwrap_or_default()
        };
        self.journal
            .set_added(&name, false, || slot_elems(reg, id, f), buried);
    }

    /// A slot is leaving the table (the registry buries it next).
    pub(crate) fn unpublish(&mut self, reg: &Registry, id: u32) {
        let name = reg.slot(id).name.clone();
        let f = self.f;
        self.journal
            .set_buried(&name, false, || slot_decl(reg, id, f));
    }

    /// An element of a published slot came (`came`) or went.
    pub(crate) fn slot_elem(&mut self, reg: &Registry, id: u32, elem: Value, came: bool) {
        let name = reg.slot(id).name.clone();
        let f = self.f;
        let (old, new) = if came {
            (None, Some(elem))
        } else {
            (Some(elem), None)
        };
        self.journal
            .elem(&name, false, || slot_decl(reg, id, f), old, new);
    }

    /// Brings units up to date (`None`: the unit is gone) and settles who owns
    /// the chains of each key they left or joined. `lookup` gives any unit's
    /// spec (to render a unit that becomes an owner). Returns the groups whose
    /// program chain names changed.
    pub(crate) fn refresh<'a>(
        &mut self,
        reg: &Registry,
        specs: Vec<(UnitId, Option<UnitSpec<'a>>)>,
        lookup: &dyn Fn(UnitId) -> Option<UnitSpec<'a>>,
    ) -> BTreeSet<u32> {
        let f = self.f;
        let mut renders = HashMap::new();
        let mut touched: BTreeSet<Arc<str>> = BTreeSet::new();
        for (uid, spec) in specs {
            let old = self.units.remove(&uid);
            if let Some(old) = &old
                && let Some(set) = self.by_key.get_mut(&old.key)
            {
                set.remove(&old.pos);
                touched.insert(old.key.clone());
            }
            let Some(spec) = spec else { continue };
            let host = spec.pos.host;
            let d = DIRECTIONS[usize::from(spec.pos.d)];
            let pr = render_program(reg, f, spec.prog, d, host);
            let key: Arc<str> = match self.by_key.get_key_value(pr.key.as_str()) {
                Some((k, _)) => k.clone(),
                None => Arc::from(pr.key.as_str()),
            };
            self.by_key
                .entry(key.clone())
                .or_default()
                .insert(spec.pos.clone());
            touched.insert(key.clone());
            self.units.insert(
                uid,
                Unit {
                    key,
                    pos: spec.pos,
                    iface: spec.iface.to_string(),
                    target: old.map(|o| o.target).unwrap_or_default(),
                },
            );
            renders.insert(uid, pr);
        }
        // Owners that change give up their chains first (a unit may own
        // chains of the same names under another key).
        let mut to_own = Vec::new();
        for key in &touched {
            let first = self
                .by_key
                .get(key)
                .and_then(|s| s.first())
                .map(|p| (p.group, p.d));
            let keep = match (self.owners.get(key), first) {
                (Some(o), Some(u)) => o.unit == u && o.iface == self.units[&u].iface,
                (None, None) => true,
                _ => false,
            };
            if keep {
                continue;
            }
            if let Some(o) = self.owners.remove(key) {
                for c in &o.chains {
                    self.del_chain(c);
                }
                for p in &o.profiles {
                    let n = self.profile_refs.get_mut(p).expect("profile chain counted");
                    *n -= 1;
                    if *n == 0 {
                        self.profile_refs.remove(p);
                        self.del_chain(p);
                    }
                }
            }
            if let Some(u) = first {
                to_own.push((key.clone(), u));
            }
        }
        for (key, u) in to_own {
            let spec = lookup(u).expect("an owner unit has a spec");
            let pr = match renders.remove(&u) {
                Some(pr) => pr,
                None => render_program(
                    reg,
                    f,
                    spec.prog,
                    DIRECTIONS[usize::from(spec.pos.d)],
                    spec.pos.host,
                ),
            };
            let d = DIRECTIONS[usize::from(u.1)];
            let (main, chains) = program_chains(f, &pr, spec.pos.host, d, spec.iface);
            let mut names = Vec::new();
            for (name, chain) in chains {
                self.put_chain(&name, chain);
                names.push(name);
            }
            let mut profiles = Vec::new();
            for (name, rules) in &pr.profiles {
                let n = self.profile_refs.entry(name.clone()).or_insert(0);
                *n += 1;
                if *n == 1 {
                    let chain = rules_chain(f, name, rules);
                    self.put_chain(name, chain);
                }
                profiles.push(name.clone());
            }
            self.owners.insert(
                key,
                Owner {
                    unit: u,
                    iface: spec.iface.to_string(),
                    main,
                    chains: names,
                    profiles,
                },
            );
        }
        let mut changed = BTreeSet::new();
        for key in &touched {
            let Some(set) = self.by_key.get(key) else {
                continue;
            };
            if set.is_empty() {
                self.by_key.remove(key);
                continue;
            }
            let target = self.owners[key].main.clone();
            for p in set {
                let unit = self
                    .units
                    .get_mut(&(p.group, p.d))
                    .expect("unit in its key");
                if unit.target != target {
                    unit.target = target.clone();
                    changed.insert(p.group);
                }
            }
        }
        changed
    }

    /// The current table; `order` lists the interface owners in endpoint order
    /// (host endpoints flagged), which is the order of map elements.
    pub(crate) fn table(&self, reg: &Registry, order: &[(bool, String)]) -> Table {
        let mut sets = BTreeMap::new();
        for (id, s) in reg.live().filter(|(_, s)| s.published) {
            sets.insert(
                s.name.clone(),
                NamedSet {
                    map: false,
                    decl: slot_decl(reg, id, self.f),
                    elems: slot_elems(reg, id, self.f),
                },
            );
        }
        for (i, (name, map)) in STATICS.iter().enumerate() {
            sets.insert(
                name.to_string(),
                NamedSet {
                    map: *map,
                    decl: self.static_decl(i),
                    elems: self.static_elems(i, order),
                },
            );
        }
        Table {
            family: self.f,
            sets,
            chains: self.chains.clone(),
        }
    }

    fn static_elems(&self, i: usize, order: &[(bool, String)]) -> Vec<Value> {
        let host = i >= 3;
        order
            .iter()
            .filter(|(h, _)| *h == host)
            .filter_map(|(_, iface)| self.statics[i].get(iface).cloned())
            .collect()
    }

    fn current_set(&self, reg: &Registry, name: &str) -> Option<(bool, Value)> {
        if let Some(i) = STATICS.iter().position(|(n, _)| *n == name) {
            return Some((STATICS[i].1, self.static_decl(i)));
        }
        let id = *reg.by_name.get(name)?;
        Some((false, slot_decl(reg, id, self.f)))
    }

    fn current_elems(
        &self,
        reg: &Registry,
        name: &str,
        order: &dyn Fn() -> Vec<(bool, String)>,
    ) -> Vec<Value> {
        if let Some(i) = STATICS.iter().position(|(n, _)| *n == name) {
            return self.static_elems(i, &order());
        }
        reg.by_name
            .get(name)
            .map(|id| slot_elems(reg, *id, self.f))
            .unwrap_or_default()
    }

    /// The update commands since the last mark; `order` gives the interface
    /// owners in endpoint order (only needed when a map is added whole).
    pub(crate) fn update(
        &self,
        reg: &Registry,
        order: &dyn Fn() -> Vec<(bool, String)>,
    ) -> Vec<Value> {
        let mut sets = BTreeMap::new();
        for (name, rec) in &self.journal.sets {
            let change = match (&rec.at_mark, self.current_set(reg, name)) {
                (Some((_, d0)), Some((map, d1))) if *d0 == d1 => {
                    let mut removed = Vec::new();
                    let mut added = Vec::new();
                    for (old, new) in rec.elems.values() {
                        if old == new {
                            continue;
                        }
                        if let Some(o) = old {
                            removed.push(if map { o[0].clone() } else { o.clone() });
                        }
                        if let Some(n) = new {
                            added.push(n.clone());
                        }
                    }
                    if removed.is_empty() && added.is_empty() {
                        continue;
                    }
                    SetChange::Elements {
                        map,
                        removed,
                        added,
                    }
                }
                (old, Some((map, decl))) => SetChange::Added {
                    replaced: old.as_ref().map(|(m, _)| *m),
                    map,
                    add: add_set(map, &decl, self.current_elems(reg, name, order)),
                },
                (Some((map, _)), None) => SetChange::Gone { map: *map },
                (None, None) => continue,
            };
            sets.insert(name.clone(), change);
        }
        let mut chains = BTreeMap::new();
        for (name, old) in &self.journal.chains {
            if let Some(c) = chain_change(old.as_ref(), self.chains.get(name)) {
                chains.insert(name.clone(), c);
            }
        }
        let chains: BTreeMap<String, ChainChange<'_>> = chains;
        delta_commands(self.f, sets, &chains)
    }

    /// Whether anything differs from the last mark.
    pub(crate) fn dirty(&self, reg: &Registry) -> bool {
        let sets = self.journal.sets.iter().any(|(name, rec)| {
            match (&rec.at_mark, self.current_set(reg, name)) {
                (Some((_, d0)), Some((_, d1))) if *d0 == d1 => {
                    rec.elems.values().any(|(old, new)| old != new)
                }
                (None, None) => false,
                _ => true,
            }
        });
        sets || self
            .journal
            .chains
            .iter()
            .any(|(name, old)| chain_change(old.as_ref(), self.chains.get(name)).is_some())
    }

    /// Forgets the journal: the current state is what the kernel has.
    pub(crate) fn mark(&mut self) {
        self.journal = Journal::default();
    }

    /// Chains and rules in the table.
    pub(crate) fn counts(&self) -> (usize, usize) {
        (
            self.chains.len(),
            self.chains.values().map(|c| c.rules.len()).sum(),
        )
    }
}

fn family_index(f: Family) -> usize {
    usize::from(f == Family::Ipv6)
}

/// The declaration of a published slot.
fn slot_decl(reg: &Registry, id: u32, f: Family) -> Value {
    let s = reg.slot(id);
    if s.is_port() {
        port_set_decl(f, &s.name, &s.key)
    } else {
        ip_set_decl(f, &s.name, &s.key)
    }
}

/// The elements of a published slot, in the full renderer's order.
fn slot_elems(reg: &Registry, id: u32, f: Family) -> Vec<Value> {
    elems_of(reg.slot(id), f)
}

/// The elements of a slot (published or buried).
fn elems_of(s: &super::sets::Slot, f: Family) -> Vec<Value> {
    let fi = family_index(f);
    match s.kind {
        SlotKind::Port { .. } => s
            .ports
            .iter()
            .filter(|(n, _)| usize::from(n.addr().is_ipv6()) == fi)
            .map(|(n, p)| port_elem(&n, p))
            .collect(),
        _ => s.ips[fi].cidrs().map(|n| ip_elem(&n)).collect(),
    }
}
