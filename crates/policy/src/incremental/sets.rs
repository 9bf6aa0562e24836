//! The active sets: one slot per set key that some local program names (a label
//! selection, a `notSelector`, literal nets, a named port), with its members
//! kept up to date as endpoints and network sets change. An index by namespace
//! and by label (from each selector's `==`, `in` and `has()` terms) finds the
//! few slots an endpoint could be in, so a change evaluates only those; a new
//! slot is filled from the world's own indexes the same way.

use std::collections::{BTreeSet, HashMap};

use ipnet::IpNet;
use tabby_selector::{Expr, Selector};

use super::ipset::{Aggregate, Delta, PortMembers};
use super::world::{Merged, Pair, Sym, World};
use crate::compile::{
    Entity, Namespaces, PortSource, SetSource, Sets, aggregate, endpoint_selected, ip_set_name,
    network_set_selected, port_member, port_set_name,
};
use crate::model::{EntityMatch, NamedPort, Scope};
use crate::nft::{Family, SetView};

/// What a slot holds.
#[derive(Clone, Debug)]
pub(crate) enum SlotKind {
    /// Literal nets (rendered inline).
    Literal,
    /// The positive selection of an entity match.
    Selection(EntityMatch),
    /// Endpoints and network sets matching a `notSelector`.
    NotSelector(Selector),
    /// A named port of the endpoints an entity match selects.
    Port {
        /// The match.
        entity: EntityMatch,
        /// Port name.
        name: String,
        /// Protocol number.
        protocol: u8,
    },
}

/// A change of a published slot's rendered elements.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Change {
    /// An IP set CIDR came (`true`) or went.
    Ip(IpNet, bool),
    /// A named-port element came or went.
    Port(IpNet, u16, bool),
}

/// An active set.
#[derive(Debug)]
pub(crate) struct Slot {
    /// The set key, also its description.
    pub key: String,
    /// The set name (`s-…` or `n-…`).
    pub name: String,
    /// What it selects.
    pub kind: SlotKind,
    /// The local groups whose programs name it.
    pub users: BTreeSet<u32>,
    /// For a namespaceSelector scope: whether it matched each namespace
    /// (what a namespace label change compares against).
    ns_cache: HashMap<Option<Sym>, bool>,
    /// IPv4 and IPv6 members of an IP set.
    pub ips: [Aggregate; 2],
    /// Members of a named-port set.
    pub ports: PortMembers,
    /// Members of a literal set, aggregated.
    pub literal: Vec<IpNet>,
    /// In the rendered tables.
    pub published: bool,
    /// Per family, whether it had members when programs were last rendered.
    pub has: [bool; 2],
    hooks: Vec<Hook>,
}

impl Slot {
    /// Whether this is a named-port set.
    pub(crate) fn is_port(&self) -> bool {
        matches!(self.kind, SlotKind::Port { .. })
    }

    /// Whether it has members of family `f` now.
    pub(crate) fn has_now(&self, f: usize) -> bool {
        match self.kind {
            SlotKind::Literal => self
                .literal
                .iter()
                .any(|n| usize::from(n.addr().is_ipv6()) == f),
            SlotKind::Port { .. } => self.ports.has(f),
            _ => !self.ips[f].is_empty(),
        }
    }

    fn scope_selector(&self) -> Option<&Selector> {
        match &self.kind {
            SlotKind::Selection(m) | SlotKind::Port { entity: m, .. } => match &m.scope {
                Scope::NamespaceSelector(s) => Some(s),
                _ => None,
            },
            _ => None,
        }
    }

    /// Whether an entity is a member, given whether its namespace is in scope.
    fn matches_with(&self, v: &View<'_>, ns_ok: bool) -> bool {
        let labels = v.labels();
        let e = Entity {
            namespace: v.ns.map(|n| &**n),
            labels: &labels,
            service_account: v.sa.map(|s| &**s),
        };
        let nss = Fixed(ns_ok);
        match &self.kind {
            SlotKind::Literal => false,
            SlotKind::Selection(m) if v.netset => network_set_selected(m, &e, &nss),
            SlotKind::Selection(m) => endpoint_selected(m, &e, &nss),
            SlotKind::NotSelector(s) => s.matches_labels(&labels),
            SlotKind::Port { entity, .. } => !v.netset && port_member(entity, &e, &nss),
        }
    }

    /// Whether the namespace scope admits namespace `ns` (remembered).
    fn ns_ok(&mut self, world: &World, ns: Option<&Sym>) -> bool {
        let Some(s) = self.scope_selector() else {
            return true;
        };
        let key = ns.cloned();
        match self.ns_cache.get(&key) {
            Some(ok) => *ok,
            None => {
                let ok = world.namespace_matches(s, ns.map(|n| &**n));
                self.ns_cache.insert(key, ok);
                ok
            }
        }
    }

    fn matches(&mut self, world: &World, v: &View<'_>) -> bool {
        let ns_ok = self.ns_ok(world, v.ns);
        self.matches_with(v, ns_ok)
    }
}

/// A namespace scope already decided.
struct Fixed(bool);

impl Namespaces for Fixed {
    fn namespace_matches(&self, _: &Selector, _: Option<&str>) -> bool {
        self.0
    }
}

/// What a slot's predicate sees of an endpoint (or network set).
#[derive(Clone, Copy)]
pub(crate) struct View<'a> {
    /// Namespace.
    pub ns: Option<&'a Sym>,
    /// Own labels.
    pub own: &'a [Pair],
    /// Profile labels under them.
    pub layer: &'a [Pair],
    /// Service account.
    pub sa: Option<&'a Sym>,
    /// Named ports.
    pub named_ports: &'a [NamedPort],
    /// A network set (only label selections and `notSelector`s take them).
    pub netset: bool,
}

impl<'a> View<'a> {
    fn labels(&self) -> Merged<'a> {
        Merged {
            own: self.own,
            layer: self.layer,
        }
    }
}

/// Where a slot is found from an entity's labels.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Hook {
    Ns(String),
    Eq(String, String),
    Has(String),
    /// Any entity of a namespace its namespaceSelector matches (indexed by
    /// the namespaces it matches; a new slot is filled namespace by namespace).
    NsSelector,
    Any,
}

/// The terms an entity must have for the selector to match it.
fn selector_hooks(e: &Expr) -> Vec<Hook> {
    match e {
        Expr::Eq { label, value } => vec![Hook::Eq(label.clone(), value.clone())],
        Expr::In { label, values } => values
            .iter()
            .map(|v| Hook::Eq(label.clone(), v.clone()))
            .collect(),
        Expr::Has { label } => vec![Hook::Has(label.clone())],
        Expr::And(ops) => {
            let pick = |want: fn(&Expr) -> bool| ops.iter().find(|o| want(o));
            pick(|o| matches!(o, Expr::Eq { .. }))
                .or_else(|| pick(|o| matches!(o, Expr::In { .. })))
                .or_else(|| pick(|o| matches!(o, Expr::Has { .. })))
                .map_or_else(|| vec![Hook::Any], selector_hooks)
        }
        _ => vec![Hook::Any],
    }
}

fn hooks(kind: &SlotKind) -> Vec<Hook> {
    match kind {
        SlotKind::Literal => Vec::new(),
        SlotKind::Selection(m) | SlotKind::Port { entity: m, .. } => {
            let hooks = match (&m.scope, &m.selector) {
                (Scope::Namespace(ns), _) => vec![Hook::Ns(ns.clone())],
                (_, Some(s)) => selector_hooks(s.expr()),
                (_, None) => vec![Hook::Any],
            };
            match (&m.scope, hooks.as_slice()) {
                (Scope::NamespaceSelector(_), [Hook::Any]) => vec![Hook::NsSelector],
                _ => hooks,
            }
        }
        SlotKind::NotSelector(s) => selector_hooks(s.expr()),
    }
}

/// Slots by hook.
#[derive(Debug, Default)]
struct SlotIndex {
    ns: HashMap<String, Vec<u32>>,
    /// [`Hook::NsSelector`] slots by the namespaces they select (namespaces
    /// in [`Registry::known_ns`] only).
    ns_hits: HashMap<Option<Sym>, Vec<u32>>,
    eq: HashMap<String, HashMap<String, Vec<u32>>>,
    has: HashMap<String, Vec<u32>>,
    any: Vec<u32>,
}

fn drop_id(v: &mut Vec<u32>, id: u32) {
    if let Some(i) = v.iter().position(|x| *x == id) {
        v.swap_remove(i);
    }
}

impl SlotIndex {
    fn add(&mut self, id: u32, hooks: &[Hook]) {
        for h in hooks {
            match h {
                Hook::Ns(ns) => self.ns.entry(ns.clone()).or_default().push(id),
                Hook::Eq(k, v) => self
                    .eq
                    .entry(k.clone())
                    .or_default()
                    .entry(v.clone())
                    .or_default()
                    .push(id),
                Hook::Has(k) => self.has.entry(k.clone()).or_default().push(id),
                Hook::NsSelector => {}
                Hook::Any => self.any.push(id),
            }
        }
    }

    fn remove(&mut self, id: u32, hooks: &[Hook]) {
        for h in hooks {
            match h {
                Hook::Ns(ns) => {
                    if let Some(v) = self.ns.get_mut(ns) {
                        drop_id(v, id);
                        if v.is_empty() {
                            self.ns.remove(ns);
                        }
                    }
                }
                Hook::Eq(k, val) => {
                    if let Some(m) = self.eq.get_mut(k) {
                        if let Some(v) = m.get_mut(val) {
                            drop_id(v, id);
                            if v.is_empty() {
                                m.remove(val);
                            }
                        }
                        if m.is_empty() {
                            self.eq.remove(k);
                        }
                    }
                }
                Hook::Has(k) => {
                    if let Some(v) = self.has.get_mut(k) {
                        drop_id(v, id);
                        if v.is_empty() {
                            self.has.remove(k);
                        }
                    }
                }
                Hook::NsSelector => {}
                Hook::Any => drop_id(&mut self.any, id),
            }
        }
    }

    fn candidates(&self, v: &View<'_>, out: &mut Vec<u32>) {
        out.extend(&self.any);
        if let Some(x) = self.ns_hits.get(&v.ns.cloned()) {
            out.extend(x);
        }
        if let Some(ns) = v.ns
            && let Some(x) = self.ns.get(&**ns)
        {
            out.extend(x);
        }
        for p in v.labels().pairs() {
            if let Some(x) = self.eq.get(&*p.0).and_then(|m| m.get(&*p.1)) {
                out.extend(x);
            }
            if let Some(x) = self.has.get(&*p.0) {
                out.extend(x);
            }
        }
    }
}

/// An entity before or after a change, with the addresses of its members
/// (one list per endpoint of an ident, or a network set's nets).
pub(crate) type Side<'a> = (View<'a>, Vec<&'a [IpNet]>);

/// The active sets.
#[derive(Debug, Default)]
pub(crate) struct Registry {
    pub slots: Vec<Option<Slot>>,
    free: Vec<u32>,
    /// Slot id by key.
    pub ids: HashMap<String, u32>,
    index: SlotIndex,
    /// Slots with a namespaceSelector scope.
    ns_scoped: BTreeSet<u32>,
    /// Slots found by namespace selector only ([`Hook::NsSelector`]).
    ns_sel: BTreeSet<u32>,
    /// Namespaces every [`Hook::NsSelector`] slot has decided (and indexed).
    known_ns: std::collections::HashSet<Option<Sym>>,
    /// Published slot by set name.
    pub by_name: HashMap<String, u32>,
    /// Element changes of published slots not yet journaled.
    pub changes: Vec<(u32, Change)>,
    /// Slots whose members changed since the last render.
    pub touched: BTreeSet<u32>,
    /// Slots made since the last render.
    pub created: Vec<u32>,
    /// Published slots removed since the last mark, by name: the journal
    /// reads their elements only if the set comes back before the mark.
    pub graveyard: HashMap<String, Slot>,
}

impl Registry {
    /// A live slot.
    pub(crate) fn slot(&self, id: u32) -> &Slot {
        self.slots[id as usize].as_ref().expect("live slot")
    }

    pub(crate) fn slot_mut(&mut self, id: u32) -> &mut Slot {
        self.slots[id as usize].as_mut().expect("live slot")
    }

    /// Live slots.
    pub(crate) fn live(&self) -> impl Iterator<Item = (u32, &Slot)> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.as_ref().map(|s| (i as u32, s)))
    }

    /// Makes the slot for `key` and fills it from the world.
    fn create(
        &mut self,
        key: String,
        kind: SlotKind,
        world: &World,
        nets: Option<&[IpNet]>,
    ) -> u32 {
        let name = match kind {
            SlotKind::Port { .. } => port_set_name(&key),
            _ => ip_set_name(&key),
        };
        let hooks = hooks(&kind);
        let mut slot = Slot {
            key: key.clone(),
            name,
            kind,
            users: BTreeSet::new(),
            ns_cache: HashMap::new(),
            ips: [Aggregate::new(false), Aggregate::new(true)],
            ports: PortMembers::default(),
            literal: nets.map(aggregate).unwrap_or_default(),
            published: false,
            has: [false; 2],
            hooks: hooks.clone(),
        };
        let id = match self.free.pop() {
            Some(id) => id,
            None => {
                self.slots.push(None);
                (self.slots.len() - 1) as u32
            }
        };
        // Fill: idents found by the hooks, then network sets.
        let mut idents: Vec<u32> = Vec::new();
        for h in &hooks {
            match h {
                Hook::Ns(ns) => idents.extend(world.by_ns.get(ns.as_str()).into_iter().flatten()),
                Hook::Eq(k, v) => idents.extend(
                    world
                        .by_label
                        .get(k.as_str())
                        .and_then(|m| m.get(v.as_str()))
                        .into_iter()
                        .flatten(),
                ),
                Hook::Has(k) => idents.extend(
                    world
                        .by_label
                        .get(k.as_str())
                        .into_iter()
                        .flat_map(|m| m.values().flatten()),
                ),
                Hook::NsSelector => {
                    // The namespaces first (each evaluated once), then their
                    // idents; the namespaces already known are indexed.
                    for (ns, ids) in &world.by_ns {
                        if slot.ns_ok(world, Some(ns)) {
                            idents.extend(ids);
                        }
                    }
                    if slot.ns_ok(world, None) {
                        idents.extend(&world.no_ns);
                    }
                    for ns in &self.known_ns {
                        if slot.ns_ok(world, ns.as_ref()) {
                            self.index.ns_hits.entry(ns.clone()).or_default().push(id);
                        }
                    }
                }
                Hook::Any => idents.extend(
                    world
                        .idents
                        .iter()
                        .enumerate()
                        .filter(|(_, i)| i.is_some())
                        .map(|(i, _)| i as u32),
                ),
            }
        }
        idents.sort_unstable();
        idents.dedup();
        // Collect the members, then fill the slot at once.
        let mut nets: [Vec<IpNet>; 2] = Default::default();
        let mut ports: Vec<(IpNet, u16)> = Vec::new();
        let mut collect = |slot: &Slot, v: &View<'_>, members: &[&[IpNet]]| {
            let ips = members.iter().flat_map(|m| m.iter());
            match &slot.kind {
                SlotKind::Port { name, protocol, .. } => {
                    for np in v.named_ports {
                        if np.name == *name && np.protocol == *protocol {
                            ports.extend(ips.clone().map(|ip| (*ip, np.port)));
                        }
                    }
                }
                _ => {
                    for ip in ips {
                        nets[usize::from(ip.addr().is_ipv6())].push(*ip);
                    }
                }
            }
        };
        for iid in idents {
            let ident = world.ident(iid);
            let v = View {
                ns: ident.key.ns.as_ref(),
                own: &ident.key.own,
                layer: &ident.layer,
                sa: ident.key.sa.as_ref(),
                named_ports: &ident.key.named_ports,
                netset: false,
            };
            if slot.matches(world, &v) {
                let members: Vec<&[IpNet]> = ident.eps.iter().map(|e| world.ips(*e)).collect();
                collect(&slot, &v, &members);
            }
        }
        if matches!(slot.kind, SlotKind::Selection(_) | SlotKind::NotSelector(_)) {
            for s in world.netsets.values() {
                let v = View {
                    ns: s.ns.as_ref(),
                    own: &s.labels,
                    layer: &[],
                    sa: None,
                    named_ports: &[],
                    netset: true,
                };
                if slot.matches(world, &v) {
                    collect(&slot, &v, &[&s.nets]);
                }
            }
        }
        let [v4, v6] = nets;
        slot.ips[0].fill(&v4);
        slot.ips[1].fill(&v6);
        for (ip, port) in ports {
            slot.ports.insert(ip, port);
        }
        slot.has = [slot.has_now(0), slot.has_now(1)];
        self.index.add(id, &hooks);
        if slot.scope_selector().is_some() {
            self.ns_scoped.insert(id);
        }
        if hooks.contains(&Hook::NsSelector) {
            self.ns_sel.insert(id);
        }
        self.slots[id as usize] = Some(slot);
        self.ids.insert(key, id);
        self.created.push(id);
        id
    }

    /// Forgets a slot (unpublish it first).
    pub(crate) fn remove(&mut self, id: u32) -> Slot {
        let slot = self.slots[id as usize].take().expect("live slot");
        self.index.remove(id, &slot.hooks);
        self.ns_scoped.remove(&id);
        if self.ns_sel.remove(&id) {
            for (ns, ok) in &slot.ns_cache {
                if *ok && let Some(v) = self.index.ns_hits.get_mut(ns) {
                    drop_id(v, id);
                }
            }
        }
        self.ids.remove(&slot.key);
        self.by_name.remove(&slot.name);
        self.touched.remove(&id);
        self.free.push(id);
        slot
    }

    /// Updates members for an entity that changed (`None`: absent before or
    /// after). Each candidate slot is evaluated once per side.
    pub(crate) fn update(&mut self, world: &World, old: Option<&Side<'_>>, new: Option<&Side<'_>>) {
        for (v, _) in old.iter().chain(new.iter()).copied() {
            self.learn_ns(world, v.ns);
        }
        let mut cands = Vec::new();
        for (v, _) in old.iter().chain(new.iter()).copied() {
            self.index.candidates(v, &mut cands);
        }
        cands.sort_unstable();
        cands.dedup();
        for id in cands {
            let slot = self.slots[id as usize].as_mut().expect("indexed slot");
            let was = old.is_some_and(|(v, _)| slot.matches(world, v));
            let is = new.is_some_and(|(v, _)| slot.matches(world, v));
            if let (true, true, Some((ov, om)), Some((nv, nm))) = (was, is, old, new)
                && om == nm
                && (!slot.is_port() || ov.named_ports == nv.named_ports)
            {
                continue;
            }
            // Adding first keeps a set that stays non-empty from looking empty.
            if let (true, Some((v, m))) = (is, new) {
                contribute(slot, id, v, m, true, &mut self.changes);
                self.touched.insert(id);
            }
            if let (true, Some((v, m))) = (was, old) {
                contribute(slot, id, v, m, false, &mut self.changes);
                self.touched.insert(id);
            }
        }
    }

    /// Decides every [`Hook::NsSelector`] slot for a namespace not seen yet.
    fn learn_ns(&mut self, world: &World, ns: Option<&Sym>) {
        let key = ns.cloned();
        if self.known_ns.contains(&key) {
            return;
        }
        for id in &self.ns_sel {
            let slot = self.slots[*id as usize].as_mut().expect("indexed slot");
            if slot.ns_ok(world, ns) {
                self.index.ns_hits.entry(key.clone()).or_default().push(*id);
            }
        }
        self.known_ns.insert(key);
    }

    /// The labels of namespace `ns` changed: slots scoped by a
    /// namespaceSelector gain or lose the entities of `ns` they select.
    pub(crate) fn namespace_changed(&mut self, world: &World, ns: &Sym, entities: &[Side<'_>]) {
        let scoped: Vec<u32> = self.ns_scoped.iter().copied().collect();
        for id in scoped {
            let slot = self.slots[id as usize].as_mut().expect("scoped slot");
            let key = Some(ns.clone());
            let Some(was) = slot.ns_cache.get(&key).copied() else {
                continue;
            };
            let sel = slot.scope_selector().expect("scoped").clone();
            let is = world.namespace_matches(&sel, Some(ns));
            if was == is {
                continue;
            }
            slot.ns_cache.insert(key.clone(), is);
            if self.ns_sel.contains(&id) && self.known_ns.contains(&key) {
                let hits = self.index.ns_hits.entry(key).or_default();
                if is {
                    hits.push(id);
                } else {
                    drop_id(hits, id);
                }
            }
            for (v, m) in entities {
                if slot.matches_with(v, true) {
                    contribute(slot, id, v, m, is, &mut self.changes);
                    self.touched.insert(id);
                }
            }
        }
    }
}

/// Adds (or removes) what an entity brings to a slot: its addresses, or for a
/// named-port set its (address, port) pairs.
fn contribute(
    slot: &mut Slot,
    id: u32,
    v: &View<'_>,
    members: &[&[IpNet]],
    add: bool,
    changes: &mut Vec<(u32, Change)>,
) {
    let published = slot.published;
    if let SlotKind::Port { name, protocol, .. } = &slot.kind {
        for np in v.named_ports {
            if np.name != *name || np.protocol != *protocol {
                continue;
            }
            for ip in members.iter().flat_map(|m| m.iter()) {
                let moved = if add {
                    slot.ports.insert(*ip, np.port)
                } else {
                    slot.ports.remove(*ip, np.port)
                };
                if moved && published {
                    changes.push((id, Change::Port(*ip, np.port, add)));
                }
            }
        }
        return;
    }
    let mut delta = Delta::new();
    for ip in members.iter().flat_map(|m| m.iter()) {
        let agg = &mut slot.ips[usize::from(ip.addr().is_ipv6())];
        if add {
            agg.insert(ip, &mut delta);
        } else {
            agg.remove(ip, &mut delta);
        }
    }
    if published {
        changes.extend(delta.into_iter().map(|(n, came)| (id, Change::Ip(n, came))));
    }
}

/// Resolves the sets of programs being compiled against the active slots,
/// making the ones that are new.
pub(crate) struct Resolver<'a> {
    pub reg: &'a mut Registry,
    pub world: &'a World,
}

impl Sets for Resolver<'_> {
    fn ip_set(&mut self, key: String, source: SetSource<'_>) -> usize {
        if let Some(id) = self.reg.ids.get(&key) {
            return *id as usize;
        }
        let (kind, nets) = match source {
            SetSource::Nets(n) => (SlotKind::Literal, Some(n)),
            SetSource::Selection(m) => (SlotKind::Selection(m.clone()), None),
            SetSource::NotSelector(s) => (SlotKind::NotSelector(s.clone()), None),
        };
        self.reg.create(key, kind, self.world, nets) as usize
    }

    fn port_set(&mut self, key: String, source: PortSource<'_>) -> usize {
        if let Some(id) = self.reg.ids.get(&key) {
            return *id as usize;
        }
        let kind = SlotKind::Port {
            entity: source.entity.clone(),
            name: source.name.to_string(),
            protocol: source.protocol,
        };
        self.reg.create(key, kind, self.world, None) as usize
    }
}

fn family_index(f: Family) -> usize {
    usize::from(f == Family::Ipv6)
}

impl SetView for Registry {
    fn literal(&self, i: usize) -> Option<&[IpNet]> {
        let s = self.slot(i as u32);
        matches!(s.kind, SlotKind::Literal).then_some(s.literal.as_slice())
    }

    fn ip_set_name(&self, i: usize) -> &str {
        &self.slot(i as u32).name
    }

    fn ip_set_has(&self, i: usize, f: Family) -> bool {
        self.slot(i as u32).has_now(family_index(f))
    }

    fn port_set_name(&self, i: usize) -> &str {
        &self.slot(i as u32).name
    }

    fn port_set_has(&self, i: usize, f: Family) -> bool {
        self.slot(i as u32).has_now(family_index(f))
    }
}
