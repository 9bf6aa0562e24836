//! An incremental policy engine for one node: resource changes go in one at a
//! time; the compiled programs, the active IP sets and the rendered nftables
//! objects are kept up to date with work proportional to the change, not to the
//! cluster; [`Engine::take_update`] returns exactly the commands
//! [`crate::nft::diff`] would give between the state at the last mark and now,
//! built from the objects that changed.
//!
//! How (a calculation graph in Felix's spirit, built on the full path's own
//! pieces so that both agree):
//! - every endpoint of the cluster is kept compactly ([`world`]): endpoints that
//!   look the same to selectors share one identity with interned labels;
//! - only the sets local programs name are active ([`sets`]); an endpoint or
//!   network set change evaluates the few active selections an index finds for
//!   its namespace and labels, and updates their members incrementally
//!   ([`ipset`]);
//! - local endpoints form groups (replicas share programs, as in
//!   [`crate::compile`]); a policy change recompiles only the local groups it
//!   selected or selects, a tier, profile or namespace change only what depends
//!   on it;
//! - the tables are kept per family ([`render`]) and only changed units, sets,
//!   maps and chains are re-rendered; a journal remembers their state at the
//!   last mark.
//!
//! The state always equals `compile_for_node(&Model::from_resources(<resources in
//! effect>), node)` rendered by [`crate::nft::ruleset`] (checked by property
//! tests). A resource whose new version does not convert keeps its previous
//! version in effect and is reported by [`Engine::errors`].

mod ipset;
mod render;
mod sets;
mod world;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use ipnet::IpNet;
use serde_json::Value;
use tabby_api::policy::TierAction;
use tabby_api::{Kind, Resource};

use crate::compile::{
    Compiled, Direction, EndpointProgram, Entity, IpSet, IrEntity, IrPort, PortSet, Program,
    ProgramInputs, build_program, policy_applies, policy_cmp,
};
use crate::model::{
    EndpointToHost, Failsafe, Item, NAMESPACE_LABEL_PREFIX, NamedPort, Policy, PolicyError,
    Profile, Tier, WorkloadPrefixes, convert, default_tier, namespace_profile,
};
use crate::nft::{ALL_INTERFACES, Family, Ruleset};
use render::{DIRECTIONS, FamilyState, LocalKey, UnitId, UnitPos, UnitSpec};
use sets::{Registry, Resolver, Side, SlotKind, View};
use world::{IdentKey, LabelSet, NetSet, Pairs, Sym, World};

/// The resource kinds the engine reads; others are ignored.
pub const KINDS: [Kind; 9] = [
    Kind::WorkloadEndpoint,
    Kind::HostEndpoint,
    Kind::NetworkPolicy,
    Kind::GlobalNetworkPolicy,
    Kind::Profile,
    Kind::NetworkSet,
    Kind::GlobalNetworkSet,
    Kind::Tier,
    Kind::FelixConfiguration,
];

/// Counts for metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EngineStats {
    /// Workload and host endpoints of the cluster.
    pub endpoints: usize,
    /// Those on this node.
    pub local_endpoints: usize,
    /// Distinct endpoint identities (endpoints alike for selectors share one).
    pub identities: usize,
    /// Policies in effect.
    pub policies: usize,
    /// Profiles given as resources.
    pub profiles: usize,
    /// Network sets.
    pub network_sets: usize,
    /// Distinct local programs (groups).
    pub groups: usize,
    /// Active label-selection and named-port sets.
    pub sets: usize,
    /// Their members (distinct addresses or CIDRs, and (address, port) pairs).
    pub set_members: usize,
    /// Chains in both tables.
    pub chains: usize,
    /// Rules in both tables.
    pub rules: usize,
    /// Resources whose latest version did not convert.
    pub errors: usize,
}

/// A local endpoint.
#[derive(Clone, Debug)]
struct Local {
    ep: u32,
    iface: Option<String>,
    node: String,
    ips: Vec<IpNet>,
    group: u32,
}

/// What makes local endpoints share a program (as in [`crate::compile`]).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct GroupKey {
    ns: Option<Sym>,
    labels: LabelSet,
    profiles: Arc<[Sym]>,
    named_ports: Arc<[NamedPort]>,
    sa: Option<Sym>,
    host: bool,
}

/// Local endpoints with one program.
#[derive(Debug)]
struct Group {
    key: Arc<GroupKey>,
    members: BTreeSet<LocalKey>,
    /// Members that own an interface, with it.
    winners: BTreeMap<LocalKey, String>,
    /// Ingress and egress programs (slot ids for set indexes).
    prog: Option<Box<[Program; 2]>>,
    /// Policies in either program.
    applied: BTreeSet<String>,
    /// Their tiers.
    tiers: BTreeSet<String>,
    /// Slots the programs name.
    slots: Vec<u32>,
}

fn prog_index(d: Direction) -> usize {
    match d {
        Direction::Ingress => 0,
        Direction::Egress => 1,
    }
}

/// Work left for [`Engine::finish`].
#[derive(Debug, Default)]
struct Pending {
    recompile: BTreeSet<u32>,
    maybe_dead_groups: BTreeSet<u32>,
    maybe_dead_idents: BTreeSet<u32>,
    maybe_dead_slots: BTreeSet<u32>,
    render: BTreeSet<u32>,
    ifaces: BTreeSet<(bool, String)>,
}

/// The incremental policy engine of one node (see the module docs).
#[derive(Debug)]
pub struct Engine {
    node: String,
    world: World,
    reg: Registry,
    policies: HashMap<String, Arc<Policy>>,
    /// Policy keys by namespace (`None`: global).
    policy_ns: HashMap<Option<String>, BTreeSet<String>>,
    tiers: HashMap<String, Tier>,
    felix: (Failsafe, EndpointToHost, WorkloadPrefixes),
    locals: BTreeMap<LocalKey, Local>,
    local_of: HashMap<u32, LocalKey>,
    groups: Vec<Option<Group>>,
    free_groups: Vec<u32>,
    group_ids: HashMap<Arc<GroupKey>, u32>,
    groups_by_ns: HashMap<Option<Sym>, BTreeSet<u32>>,
    /// Per list (workloads, host endpoints): interface -> endpoints naming it.
    claims: [BTreeMap<String, BTreeSet<LocalKey>>; 2],
    /// Per list: interface -> the endpoint that owns it and its group.
    winners: [BTreeMap<String, (LocalKey, u32)>; 2],
    fams: [FamilyState; 2],
    errors: BTreeMap<String, PolicyError>,
    pending: Pending,
}

/// `Kind/namespace/name` (namespace normalised: none for cluster-wide kinds,
/// `default` for a NetworkPolicy without one) and the namespace.
fn identity(kind: Kind, ns: Option<&str>, name: &str) -> (String, Option<String>) {
    let ns = if kind.namespaced() {
        ns.filter(|n| !n.is_empty()).map(str::to_string)
    } else {
        None
    };
    let ns = match kind {
        Kind::NetworkPolicy => Some(ns.unwrap_or_else(|| "default".to_string())),
        _ => ns,
    };
    let id = match &ns {
        Some(ns) => format!("{kind}/{ns}/{name}"),
        None => format!("{kind}/{name}"),
    };
    (id, ns)
}

fn ident_view(w: &World, id: u32) -> View<'_> {
    let i = w.ident(id);
    View {
        ns: i.key.ns.as_ref(),
        own: &i.key.own,
        layer: &i.layer,
        sa: i.key.sa.as_ref(),
        named_ports: &i.key.named_ports,
        netset: false,
    }
}

fn netset_view(s: &NetSet) -> View<'_> {
    View {
        ns: s.ns.as_ref(),
        own: &s.labels,
        layer: &[],
        sa: None,
        named_ports: &[],
        netset: true,
    }
}

/// Slot ids named by a program, in order of appearance.
fn program_slots(p: &Program, out: &mut Vec<u32>) {
    let entity = |e: &IrEntity, out: &mut Vec<u32>| {
        out.extend(e.in_sets.iter().chain(&e.not_in_sets).map(|i| *i as u32));
        for p in e.ports.iter().chain(&e.not_ports) {
            if let IrPort::Set(i) = p {
                out.push(*i as u32);
            }
        }
    };
    let rules = p
        .tiers
        .iter()
        .flat_map(|t| t.policies.iter().flat_map(|p| p.rules.iter()))
        .chain(p.profiles.iter().flat_map(|p| p.rules.iter()));
    for r in rules {
        entity(&r.src, out);
        entity(&r.dst, out);
    }
}

impl Engine {
    /// An engine for the endpoints of `node` (workload and host endpoints whose
    /// `spec.node` is `node`), with nothing in it yet. Its mark is the empty
    /// state: the first [`Engine::take_update`] adds everything.
    pub fn new(node: &str) -> Engine {
        let felix = (
            Failsafe::default(),
            EndpointToHost::default(),
            WorkloadPrefixes::default(),
        );
        let mut tiers = HashMap::new();
        let t = default_tier();
        tiers.insert(t.name.clone(), t);
        Engine {
            node: node.to_string(),
            world: World::default(),
            reg: Registry::default(),
            policies: HashMap::new(),
            policy_ns: HashMap::new(),
            tiers,
            fams: [
                FamilyState::new(Family::Ipv4, felix.1, &felix.0, &felix.2),
                FamilyState::new(Family::Ipv6, felix.1, &felix.0, &felix.2),
            ],
            felix,
            locals: BTreeMap::new(),
            local_of: HashMap::new(),
            groups: Vec::new(),
            free_groups: Vec::new(),
            group_ids: HashMap::new(),
            groups_by_ns: HashMap::new(),
            claims: Default::default(),
            winners: Default::default(),
            errors: BTreeMap::new(),
            pending: Pending::default(),
        }
    }

    /// The node this engine is for.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// A resource was created or updated. Kinds other than [`KINDS`] are
    /// ignored. When the new version does not convert (bad selector, bad
    /// protocol, ...) the error names the resource and field, and the previous
    /// good version, if any, stays in effect; nothing else is affected.
    pub fn put(&mut self, r: &Resource) -> Result<(), PolicyError> {
        let res = self.apply_put(r);
        self.finish();
        res
    }

    /// Several resources at once (an initial load): as [`Engine::put`] of each,
    /// with the programs compiled once at the end. Returns the errors.
    pub fn put_all<'a>(
        &mut self,
        resources: impl IntoIterator<Item = &'a Resource>,
    ) -> Vec<PolicyError> {
        let errors = resources
            .into_iter()
            .filter_map(|r| self.apply_put(r).err())
            .collect();
        self.finish();
        errors
    }

    /// A resource was deleted (this also clears its error, if any).
    pub fn delete(&mut self, kind: Kind, namespace: Option<&str>, name: &str) {
        if !KINDS.contains(&kind) {
            return;
        }
        let (id, ns) = identity(kind, namespace, name);
        self.errors.remove(&id);
        self.apply(kind, ns.as_deref(), name, None);
        self.finish();
    }

    /// Whether the rendered state differs from the last mark.
    pub fn is_dirty(&self) -> bool {
        self.fams.iter().any(|f| f.dirty(&self.reg))
    }

    /// The full rendered state (both families), for a full replacement of the
    /// tables. Built from the kept objects (proportional to the state).
    pub fn ruleset(&self) -> Ruleset {
        let order = self.interface_order();
        Ruleset {
            tables: self
                .fams
                .iter()
                .map(|f| f.table(&self.reg, &order))
                .collect(),
        }
    }

    /// The commands that turn the state at the last mark into the current one,
    /// equal to `nft::diff(&ruleset_at_last_mark, &ruleset())`, built from the
    /// objects that changed; then marks the current state.
    pub fn take_update(&mut self) -> Vec<Value> {
        let order = || self.interface_order();
        let mut cmds = Vec::new();
        for f in &self.fams {
            cmds.extend(f.update(&self.reg, &order));
        }
        self.mark();
        cmds
    }

    /// Marks the current state as applied (after the caller replaced the
    /// tables in full, or applied [`Engine::take_update`]'s commands).
    pub fn mark(&mut self) {
        for f in &mut self.fams {
            f.mark();
        }
        self.reg.graveyard.clear();
    }

    /// The compiled state: equal to `compile_for_node(&Model::from_resources(<resources
    /// in effect>), node)`.
    pub fn compiled(&self) -> Compiled {
        let mut out = Compiled {
            failsafe: self.felix.0.clone(),
            endpoint_to_host: self.felix.1,
            workload_prefixes: self.felix.2.clone(),
            ..Compiled::default()
        };
        let mut numbers: HashMap<u32, (usize, Program, Program)> = HashMap::new();
        let mut ip_index: HashMap<u32, usize> = HashMap::new();
        let mut port_index: HashMap<u32, usize> = HashMap::new();
        for (lk, l) in &self.locals {
            let (group, ingress, egress) = match numbers.get(&l.group) {
                Some(x) => x.clone(),
                None => {
                    let g = self.group(l.group);
                    let prog = g.prog.as_ref().expect("compiled group");
                    let mut renumber = |p: &Program| {
                        let mut p = p.clone();
                        self.renumber(&mut p, &mut out, &mut ip_index, &mut port_index);
                        p
                    };
                    let ingress = renumber(&prog[0]);
                    let egress = renumber(&prog[1]);
                    let x = (numbers.len(), ingress, egress);
                    numbers.insert(l.group, x.clone());
                    x
                }
            };
            out.endpoints.push(EndpointProgram {
                endpoint: lk.0.clone(),
                interface: l.iface.clone(),
                host: lk.1,
                node: Some(l.node.clone()),
                group,
                ips: l.ips.clone(),
                ingress,
                egress,
            });
        }
        out
    }

    /// Resources whose latest version did not convert, with the error.
    pub fn errors(&self) -> Vec<(String, PolicyError)> {
        self.errors
            .iter()
            .map(|(k, e)| (k.clone(), e.clone()))
            .collect()
    }

    /// Counts for metrics.
    pub fn stats(&self) -> EngineStats {
        let (mut chains, mut rules) = (0, 0);
        for f in &self.fams {
            let (c, r) = f.counts();
            chains += c;
            rules += r;
        }
        let (mut sets, mut set_members) = (0, 0);
        for (_, s) in self.reg.live().filter(|(_, s)| s.published) {
            sets += 1;
            set_members += if s.is_port() {
                s.ports.len()
            } else {
                s.ips[0].members() + s.ips[1].members()
            };
        }
        EngineStats {
            endpoints: self.world.endpoint_count(),
            local_endpoints: self.locals.len(),
            identities: self.world.ident_count(),
            policies: self.policies.len(),
            profiles: self.world.profiles.len(),
            network_sets: self.world.netsets.len(),
            groups: self.group_ids.len(),
            sets,
            set_members,
            chains,
            rules,
            errors: self.errors.len(),
        }
    }

    fn group(&self, g: u32) -> &Group {
        self.groups[g as usize].as_ref().expect("live group")
    }

    fn renumber(
        &self,
        p: &mut Program,
        out: &mut Compiled,
        ip_index: &mut HashMap<u32, usize>,
        port_index: &mut HashMap<u32, usize>,
    ) {
        let mut ip = |i: &mut usize| {
            let id = *i as u32;
            *i = *ip_index.entry(id).or_insert_with(|| {
                let s = self.reg.slot(id);
                let literal = matches!(s.kind, SlotKind::Literal);
                out.ip_sets.push(IpSet {
                    name: s.name.clone(),
                    description: s.key.clone(),
                    literal,
                    members: if literal {
                        s.literal.clone()
                    } else {
                        s.ips[0].cidrs().chain(s.ips[1].cidrs()).collect()
                    },
                });
                out.ip_sets.len() - 1
            });
        };
        let mut entity_ips = |e: &mut IrEntity| {
            for i in e.in_sets.iter_mut().chain(e.not_in_sets.iter_mut()) {
                ip(i);
            }
        };
        let rules = p
            .tiers
            .iter_mut()
            .flat_map(|t| t.policies.iter_mut().flat_map(|p| p.rules.iter_mut()))
            .chain(p.profiles.iter_mut().flat_map(|p| p.rules.iter_mut()));
        // Sets are numbered in the order the compiler meets them: per rule,
        // the source's IP sets, then its named ports, then the destination's.
        let mut port = |i: &mut usize| {
            let id = *i as u32;
            *i = *port_index.entry(id).or_insert_with(|| {
                let s = self.reg.slot(id);
                out.port_sets.push(PortSet {
                    name: s.name.clone(),
                    description: s.key.clone(),
                    members: s.ports.iter().collect(),
                });
                out.port_sets.len() - 1
            });
        };
        for r in rules {
            for e in [&mut r.src, &mut r.dst] {
                entity_ips(e);
                for p in e.ports.iter_mut().chain(e.not_ports.iter_mut()) {
                    if let IrPort::Set(i) = p {
                        port(i);
                    }
                }
            }
        }
    }

    /// Interface owners in endpoint order (what orders map elements).
    fn interface_order(&self) -> Vec<(bool, String)> {
        let mut out = Vec::new();
        for (lk, l) in &self.locals {
            let host = lk.1;
            if let Some(iface) = claim_iface(l.iface.as_deref(), host)
                && self.winners[usize::from(host)]
                    .get(iface)
                    .is_some_and(|(w, _)| w == lk)
            {
                out.push((host, iface.to_string()));
            }
        }
        out
    }

    fn apply_put(&mut self, r: &Resource) -> Result<(), PolicyError> {
        let kind = r.spec.kind();
        if !KINDS.contains(&kind) {
            return Ok(());
        }
        let (id, ns) = identity(kind, r.metadata.namespace.as_deref(), &r.metadata.name);
        match convert(r) {
            Err(e) => {
                self.errors.insert(id, e.clone());
                Err(e)
            }
            Ok(item) => {
                self.errors.remove(&id);
                self.apply(kind, ns.as_deref(), &r.metadata.name, Some(item));
                Ok(())
            }
        }
    }

    fn apply(&mut self, kind: Kind, ns: Option<&str>, name: &str, item: Option<Item>) {
        match kind {
            Kind::WorkloadEndpoint | Kind::HostEndpoint => {
                let key = match kind {
                    Kind::HostEndpoint => format!("H/{name}"),
                    _ => format!("W{}/{name}", ns.unwrap_or("")),
                };
                match item {
                    Some(Item::Endpoint(e)) => self.put_endpoint(&key, e),
                    _ => self.remove_endpoint(&key),
                }
            }
            Kind::NetworkPolicy | Kind::GlobalNetworkPolicy => {
                let key = match ns {
                    Some(ns) => format!("{ns}/{name}"),
                    None => name.to_string(),
                };
                let new = match item {
                    Some(Item::Policy(p)) => Some(Arc::new(p)),
                    _ => None,
                };
                self.set_policy(key, ns.map(str::to_string), new);
            }
            Kind::NetworkSet | Kind::GlobalNetworkSet => {
                let key = match kind {
                    Kind::GlobalNetworkSet => format!("G/{name}"),
                    _ => format!("N{}/{name}", ns.unwrap_or("")),
                };
                let new = match item {
                    Some(Item::NetworkSet(s)) => Some(s),
                    _ => None,
                };
                self.set_netset(key, new);
            }
            Kind::Profile => {
                let new = match item {
                    Some(Item::Profile(p)) => Some(Arc::new(p)),
                    _ => None,
                };
                self.set_profile(name, new);
            }
            Kind::Tier => {
                let new = match item {
                    Some(Item::Tier(t)) => t,
                    _ if name == default_tier().name => default_tier(),
                    _ => {
                        if self.tiers.remove(name).is_some() {
                            self.tier_changed(name);
                        }
                        return;
                    }
                };
                if self.tiers.get(name) != Some(&new) {
                    self.tiers.insert(name.to_string(), new);
                    self.tier_changed(name);
                }
            }
            Kind::FelixConfiguration => {
                if name != "default" {
                    return;
                }
                self.felix = match item {
                    Some(Item::Felix(failsafe, e2h, prefixes)) => (failsafe, e2h, prefixes),
                    _ => (
                        Failsafe::default(),
                        EndpointToHost::default(),
                        WorkloadPrefixes::default(),
                    ),
                };
            }
            _ => {}
        }
    }

    fn set_policy(&mut self, key: String, ns: Option<String>, new: Option<Arc<Policy>>) {
        let old = match &new {
            Some(p) => self.policies.insert(key.clone(), p.clone()),
            None => self.policies.remove(&key),
        };
        if old.is_none() && new.is_none() {
            return;
        }
        let list = self.policy_ns.entry(ns.clone()).or_default();
        if new.is_some() {
            list.insert(key.clone());
        } else {
            list.remove(&key);
            if list.is_empty() {
                self.policy_ns.remove(&ns);
            }
        }
        if old == new {
            return;
        }
        let candidates: Vec<u32> = match &ns {
            Some(ns) => self
                .groups_by_ns
                .get(&Some(Arc::from(ns.as_str())))
                .map(|s| s.iter().copied().collect())
                .unwrap_or_default(),
            None => self.group_ids.values().copied().collect(),
        };
        for g in candidates {
            let group = self.group(g);
            let hit = group.applied.contains(&key)
                || new.as_ref().is_some_and(|p| {
                    !p.types.is_empty() && {
                        let labels = Pairs(&group.key.labels);
                        let e = Entity {
                            namespace: group.key.ns.as_deref(),
                            labels: &labels,
                            service_account: group.key.sa.as_deref(),
                        };
                        policy_applies(p, &e, &self.world)
                    }
                });
            if hit {
                self.pending.recompile.insert(g);
            }
        }
    }

    fn tier_changed(&mut self, name: &str) {
        for g in self.group_ids.values() {
            if self.group(*g).tiers.contains(name) {
                self.pending.recompile.insert(*g);
            }
        }
    }

    fn set_netset(&mut self, key: String, new: Option<crate::model::NetworkSet>) {
        let new = new.map(|s| NetSet {
            ns: s.namespace.as_deref().map(|n| self.world.intern.sym(n)),
            labels: self.world.intern.labels(&s.labels),
            nets: s.nets,
        });
        let old = match &new {
            Some(s) => self.world.netsets.insert(key, s.clone()),
            None => self.world.netsets.remove(&key),
        };
        if old == new {
            return;
        }
        let old_side: Option<Side<'_>> = old
            .as_ref()
            .map(|s| (netset_view(s), vec![s.nets.as_slice()]));
        let new_side: Option<Side<'_>> = new
            .as_ref()
            .map(|s| (netset_view(s), vec![s.nets.as_slice()]));
        self.reg
            .update(&self.world, old_side.as_ref(), new_side.as_ref());
    }

    fn set_profile(&mut self, name: &str, new: Option<Arc<Profile>>) {
        let before = self.world.profile(name).cloned();
        let old_explicit = match &new {
            Some(p) => self.world.profiles.insert(name.to_string(), p.clone()),
            None => self.world.profiles.remove(name),
        };
        let after = self.world.profile(name).cloned();
        self.profile_changed(name, before, after);
        if let Some(ns) = name.strip_prefix("kns.") {
            let labels = |p: &Option<Arc<Profile>>| -> BTreeMap<String, String> {
                let mut m = BTreeMap::new();
                m.insert(
                    format!("{NAMESPACE_LABEL_PREFIX}projectcalico.org/name"),
                    ns.to_string(),
                );
                if let Some(p) = p {
                    m.extend(
                        p.labels_to_apply
                            .iter()
                            .filter(|(k, _)| k.starts_with(NAMESPACE_LABEL_PREFIX))
                            .map(|(k, v)| (k.clone(), v.clone())),
                    );
                }
                m
            };
            if labels(&old_explicit) != labels(&new) {
                self.namespace_changed(ns);
            }
        }
    }

    /// The profile in effect under `name` changed from `before` to `after`.
    fn profile_changed(
        &mut self,
        name: &str,
        before: Option<Arc<Profile>>,
        after: Option<Arc<Profile>>,
    ) {
        if before.as_deref() == after.as_deref() {
            return;
        }
        let labels_before = before.as_ref().map(|p| &p.labels_to_apply);
        let labels_after = after.as_ref().map(|p| &p.labels_to_apply);
        let empty = BTreeMap::new();
        if labels_before.unwrap_or(&empty) != labels_after.unwrap_or(&empty) {
            let idents = self.world.by_profile.get(name).cloned().unwrap_or_default();
            for id in idents {
                self.relabel_ident(id);
            }
        }
        for (key, g) in &self.group_ids {
            if key.profiles.iter().any(|p| &**p == name) {
                self.pending.recompile.insert(*g);
            }
        }
    }

    /// An ident's profile labels may have changed: its endpoints' set
    /// memberships and local groups follow.
    fn relabel_ident(&mut self, id: u32) {
        let Some(old_layer) = self.world.relabel(id) else {
            return;
        };
        let ident = self.world.ident(id);
        let members: Vec<&[IpNet]> = ident.eps.iter().map(|e| self.world.ips(*e)).collect();
        let new_view = ident_view(&self.world, id);
        let old_view = View {
            layer: &old_layer,
            ..new_view
        };
        let old_side = (old_view, members.clone());
        let new_side = (new_view, members);
        self.reg
            .update(&self.world, Some(&old_side), Some(&new_side));
        let locals: Vec<LocalKey> = ident
            .eps
            .iter()
            .filter_map(|e| self.local_of.get(e).cloned())
            .collect();
        for lk in locals {
            self.regroup(&lk);
        }
    }

    /// The labels of namespace `ns` changed (its explicit `kns.` profile).
    fn namespace_changed(&mut self, ns: &str) {
        let sym = self.world.intern.sym(ns);
        let idents = self.world.by_ns.get(ns).cloned().unwrap_or_default();
        let mut entities: Vec<Side<'_>> = Vec::new();
        for id in idents {
            let ident = self.world.ident(id);
            let members = ident.eps.iter().map(|e| self.world.ips(*e)).collect();
            entities.push((ident_view(&self.world, id), members));
        }
        for s in self.world.netsets.values() {
            if s.ns.as_deref() == Some(ns) {
                entities.push((netset_view(s), vec![s.nets.as_slice()]));
            }
        }
        self.reg.namespace_changed(&self.world, &sym, &entities);
        if let Some(gs) = self.groups_by_ns.get(&Some(sym)) {
            self.pending.recompile.extend(gs.iter().copied());
        }
    }

    /// One more (`up`) or one fewer workload endpoint of `ns` names `kns.<ns>`.
    fn synthesized(&mut self, ns: &str, up: bool) {
        let name = format!("kns.{ns}");
        let before = self.world.profile(&name).cloned();
        let entry = self
            .world
            .synthesized
            .entry(ns.to_string())
            .or_insert_with(|| (0, Arc::new(namespace_profile(ns))));
        if up {
            entry.0 += 1;
        } else {
            entry.0 -= 1;
            if entry.0 == 0 {
                self.world.synthesized.remove(ns);
            }
        }
        let after = self.world.profile(&name).cloned();
        self.profile_changed(&name, before, after);
    }

    /// The namespace whose `kns.` profile an endpoint keeps alive, if any.
    fn synthesizing(e: &crate::model::Endpoint) -> Option<String> {
        let ns = e.namespace.as_ref()?;
        (!e.host && e.profiles.contains(&format!("kns.{ns}"))).then(|| ns.clone())
    }

    fn ident_synthesizing(&self, id: u32) -> Option<String> {
        let k = &self.world.ident(id).key;
        let ns = k.ns.as_ref()?;
        let name = format!("kns.{ns}");
        (!k.host && k.profiles.iter().any(|p| **p == *name)).then(|| ns.to_string())
    }

    fn put_endpoint(&mut self, key: &str, e: crate::model::Endpoint) {
        let old = self.world.ep_id(key);
        if let Some(ns) = Self::synthesizing(&e) {
            self.synthesized(&ns, true);
        }
        if let Some(ns) =
            old.and_then(|o| self.ident_synthesizing(self.world.eps[o as usize].ident))
        {
            self.synthesized(&ns, false);
        }
        let w = &mut self.world;
        let ident_key = IdentKey {
            ns: e.namespace.as_deref().map(|n| w.intern.sym(n)),
            own: w.intern.labels(&e.labels),
            profiles: w.intern.list(&e.profiles),
            sa: e.service_account.as_deref().map(|s| w.intern.sym(s)),
            named_ports: w.intern.ports(&e.named_ports),
            host: e.host,
        };
        let nid = w.ident_for(ident_key);
        {
            let w = &self.world;
            let old_side: Option<Side<'_>> =
                old.map(|o| (ident_view(w, w.eps[o as usize].ident), vec![w.ips(o)]));
            let new_side: Side<'_> = (ident_view(w, nid), vec![e.ips.as_slice()]);
            self.reg.update(w, old_side.as_ref(), Some(&new_side));
        }
        if let Some((id, ident)) = self.world.remove_ep(key) {
            self.pending.maybe_dead_idents.insert(ident);
            if let Some(lk) = self.local_of.get(&id).cloned() {
                self.remove_local(&lk);
            }
        }
        let id = self.world.add_ep(key, nid, &e.ips);
        if e.node.as_deref() == Some(self.node.as_str()) {
            let lk = (e.key(), e.host);
            let l = Local {
                ep: id,
                iface: e.interface.clone(),
                node: self.node.clone(),
                ips: e.ips.clone(),
                group: u32::MAX,
            };
            self.add_local(lk, l);
        }
    }

    fn remove_endpoint(&mut self, key: &str) {
        let Some(old) = self.world.ep_id(key) else {
            return;
        };
        {
            let w = &self.world;
            let side: Side<'_> = (ident_view(w, w.eps[old as usize].ident), vec![w.ips(old)]);
            self.reg.update(w, Some(&side), None);
        }
        let synth = self.ident_synthesizing(self.world.eps[old as usize].ident);
        if let Some((id, ident)) = self.world.remove_ep(key) {
            self.pending.maybe_dead_idents.insert(ident);
            if let Some(lk) = self.local_of.get(&id).cloned() {
                self.remove_local(&lk);
            }
        }
        if let Some(ns) = synth {
            self.synthesized(&ns, false);
        }
    }

    fn group_key(&mut self, ident: u32) -> GroupKey {
        let i = self.world.ident(ident);
        let pairs = i.labels().to_pairs();
        let k = i.key.clone();
        GroupKey {
            ns: k.ns.clone(),
            labels: self.world.intern.label_set(pairs),
            profiles: k.profiles.clone(),
            named_ports: k.named_ports.clone(),
            sa: k.sa.clone(),
            host: k.host,
        }
    }

    fn group_for(&mut self, key: GroupKey) -> u32 {
        if let Some(g) = self.group_ids.get(&key) {
            return *g;
        }
        let key = Arc::new(key);
        let group = Group {
            key: key.clone(),
            members: BTreeSet::new(),
            winners: BTreeMap::new(),
            prog: None,
            applied: BTreeSet::new(),
            tiers: BTreeSet::new(),
            slots: Vec::new(),
        };
        let g = match self.free_groups.pop() {
            Some(g) => {
                self.groups[g as usize] = Some(group);
                g
            }
            None => {
                self.groups.push(Some(group));
                (self.groups.len() - 1) as u32
            }
        };
        self.group_ids.insert(key.clone(), g);
        self.groups_by_ns
            .entry(key.ns.clone())
            .or_default()
            .insert(g);
        self.pending.recompile.insert(g);
        g
    }

    fn add_local(&mut self, lk: LocalKey, mut l: Local) {
        let ident = self.world.eps[l.ep as usize].ident;
        let key = self.group_key(ident);
        let g = self.group_for(key);
        self.groups[g as usize]
            .as_mut()
            .expect("live group")
            .members
            .insert(lk.clone());
        l.group = g;
        self.local_of.insert(l.ep, lk.clone());
        let iface = l.iface.clone();
        self.locals.insert(lk.clone(), l);
        self.claim(&lk, iface.as_deref(), true);
    }

    fn remove_local(&mut self, lk: &LocalKey) {
        let Some(l) = self.locals.remove(lk) else {
            return;
        };
        self.local_of.remove(&l.ep);
        self.claim(lk, l.iface.as_deref(), false);
        if let Some(g) = self.groups[l.group as usize].as_mut() {
            g.members.remove(lk);
            if g.members.is_empty() {
                self.pending.maybe_dead_groups.insert(l.group);
            }
        }
    }

    /// Moves a local endpoint to the group its (new) labels give it.
    fn regroup(&mut self, lk: &LocalKey) {
        let Some(l) = self.locals.get(lk) else {
            return;
        };
        let (old, ident, iface) = (
            l.group,
            self.world.eps[l.ep as usize].ident,
            l.iface.clone(),
        );
        let key = self.group_key(ident);
        if *self.group(old).key == key {
            return;
        }
        let g = self.group_for(key);
        let og = self.groups[old as usize].as_mut().expect("live group");
        og.members.remove(lk);
        if og.members.is_empty() {
            self.pending.maybe_dead_groups.insert(old);
        }
        self.groups[g as usize]
            .as_mut()
            .expect("live group")
            .members
            .insert(lk.clone());
        self.locals.get_mut(lk).expect("local").group = g;
        if let Some(i) = claim_iface(iface.as_deref(), lk.1) {
            self.refresh_iface(lk.1, i);
        }
    }

    fn claim(&mut self, lk: &LocalKey, iface: Option<&str>, add: bool) {
        let host = lk.1;
        let Some(iface) = claim_iface(iface, host) else {
            return;
        };
        let claims = &mut self.claims[usize::from(host)];
        if add {
            claims
                .entry(iface.to_string())
                .or_default()
                .insert(lk.clone());
        } else if let Some(set) = claims.get_mut(iface) {
            set.remove(lk);
            if set.is_empty() {
                claims.remove(iface);
            }
        }
        self.refresh_iface(host, iface);
    }

    /// Settles which endpoint owns an interface after a change.
    fn refresh_iface(&mut self, host: bool, iface: &str) {
        let list = usize::from(host);
        let new = self.claims[list]
            .get(iface)
            .and_then(|s| s.first())
            .map(|lk| (lk.clone(), self.locals[lk].group));
        let old = self.winners[list].get(iface).cloned();
        if old == new {
            return;
        }
        if let Some((olk, og)) = &old
            && let Some(g) = self.groups[*og as usize].as_mut()
        {
            g.winners.remove(olk);
            self.pending.render.insert(*og);
        }
        match &new {
            Some((nlk, ng)) => {
                self.groups[*ng as usize]
                    .as_mut()
                    .expect("live group")
                    .winners
                    .insert(nlk.clone(), iface.to_string());
                self.pending.render.insert(*ng);
                self.winners[list].insert(iface.to_string(), (nlk.clone(), *ng));
            }
            None => {
                self.winners[list].remove(iface);
            }
        }
        self.pending.ifaces.insert((host, iface.to_string()));
    }

    /// Compiles a group's programs; returns whether they changed.
    fn compile_group(&mut self, g: u32) -> bool {
        let Engine {
            policies,
            policy_ns,
            reg,
            world,
            tiers,
            groups,
            pending,
            ..
        } = self;
        let group = groups[g as usize].as_mut().expect("live group");
        let key = group.key.clone();
        let labels = Pairs(&key.labels);
        let e = Entity {
            namespace: key.ns.as_deref(),
            labels: &labels,
            service_account: key.sa.as_deref(),
        };
        // Global policies, and those of the group's namespace.
        let mut candidates: Vec<&Policy> = Vec::new();
        let mut lists = vec![None];
        if let Some(ns) = &key.ns {
            lists.push(Some(ns.to_string()));
        }
        for ns in &lists {
            if let Some(keys) = policy_ns.get(ns) {
                candidates.extend(keys.iter().map(|k| &*policies[k]));
            }
        }
        let tier_order = |t: &str| tiers.get(t).and_then(|t| t.order);
        let tier_action = |t: &str| tiers.get(t).map_or(TierAction::Deny, |t| t.default_action);
        let profiles: Vec<Arc<Profile>> = key
            .profiles
            .iter()
            .filter_map(|p| world.profile(p).cloned())
            .collect();
        let profile_refs: Vec<&Profile> = profiles.iter().map(|p| &**p).collect();
        let mut applied = BTreeSet::new();
        let mut tiers_used = BTreeSet::new();
        let mut resolver = Resolver { reg, world };
        let mut progs = Vec::new();
        for d in [Direction::Ingress, Direction::Egress] {
            let mut list: Vec<&Policy> = candidates
                .iter()
                .copied()
                .filter(|p| {
                    p.types.contains(&d.policy_type()) && policy_applies(p, &e, resolver.world)
                })
                .collect();
            list.sort_by(policy_cmp(tier_order));
            for p in &list {
                applied.insert(p.key());
                tiers_used.insert(p.tier.clone());
            }
            let inputs = ProgramInputs {
                policies: &list,
                tier_action: &tier_action,
                profiles: &profile_refs,
                named_ports: &key.named_ports,
            };
            progs.push(build_program(&mut resolver, &inputs, d));
        }
        let egress = progs.pop().expect("two programs");
        let ingress = progs.pop().expect("two programs");
        let new = Box::new([ingress, egress]);
        group.applied = applied;
        group.tiers = tiers_used;
        if group.prog.as_ref() == Some(&new) {
            return false;
        }
        let mut slots = Vec::new();
        program_slots(&new[0], &mut slots);
        program_slots(&new[1], &mut slots);
        slots.sort_unstable();
        slots.dedup();
        for s in &slots {
            reg.slot_mut(*s).users.insert(g);
        }
        for s in &group.slots {
            if slots.binary_search(s).is_err() {
                let slot = reg.slot_mut(*s);
                slot.users.remove(&g);
                if slot.users.is_empty() {
                    pending.maybe_dead_slots.insert(*s);
                }
            }
        }
        group.slots = slots;
        group.prog = Some(new);
        true
    }

    /// Settles everything a change left: dead groups, programs to compile,
    /// sets to drop or publish, units to render, map elements, base chains.
    fn finish(&mut self) {
        self.journal_changes();
        for id in std::mem::take(&mut self.pending.maybe_dead_idents) {
            self.world.free_ident(id);
        }
        let mut dead_groups = Vec::new();
        for g in std::mem::take(&mut self.pending.maybe_dead_groups) {
            let Some(group) = self.groups[g as usize].as_ref() else {
                continue;
            };
            if !group.members.is_empty() {
                continue;
            }
            let group = self.groups[g as usize].take().expect("live group");
            for s in &group.slots {
                let slot = self.reg.slot_mut(*s);
                slot.users.remove(&g);
                if slot.users.is_empty() {
                    self.pending.maybe_dead_slots.insert(*s);
                }
            }
            self.group_ids.remove(&group.key);
            if let Some(set) = self.groups_by_ns.get_mut(&group.key.ns) {
                set.remove(&g);
                if set.is_empty() {
                    self.groups_by_ns.remove(&group.key.ns);
                }
            }
            self.pending.recompile.remove(&g);
            self.pending.render.insert(g);
            dead_groups.push(g);
        }
        for g in std::mem::take(&mut self.pending.recompile) {
            if self.groups[g as usize].is_some() && self.compile_group(g) {
                self.pending.render.insert(g);
            }
        }
        for s in std::mem::take(&mut self.pending.maybe_dead_slots) {
            let Some(slot) = self.reg.slots[s as usize].as_ref() else {
                continue;
            };
            if !slot.users.is_empty() {
                continue;
            }
            let published = slot.published;
            if published {
                for f in &mut self.fams {
                    f.unpublish(&self.reg, s);
                }
            }
            let slot = self.reg.remove(s);
            if published {
                let name = slot.name.clone();
                self.reg.graveyard.entry(name).or_insert(slot);
            }
        }
        for s in std::mem::take(&mut self.reg.created) {
            let Some(slot) = self.reg.slots[s as usize].as_mut() else {
                continue;
            };
            if slot.published || matches!(slot.kind, SlotKind::Literal) {
                continue;
            }
            slot.published = true;
            let name = slot.name.clone();
            self.reg.by_name.insert(name.clone(), s);
            for f in &mut self.fams {
                f.publish(&self.reg, s);
            }
            self.reg.graveyard.remove(&name);
        }
        let mut flipped: [BTreeSet<u32>; 2] = Default::default();
        for s in std::mem::take(&mut self.reg.touched) {
            let Some(slot) = self.reg.slots[s as usize].as_mut() else {
                continue;
            };
            for (fi, out) in flipped.iter_mut().enumerate() {
                let now = slot.has_now(fi);
                if now != slot.has[fi] {
                    slot.has[fi] = now;
                    out.extend(slot.users.iter().copied());
                }
            }
        }
        let render = std::mem::take(&mut self.pending.render);
        let ifaces = std::mem::take(&mut self.pending.ifaces);
        for (fi, flipped) in flipped.iter().enumerate() {
            self.render_family(fi, render.union(flipped).copied().collect(), &ifaces);
        }
        self.free_groups.extend(dead_groups);
        self.world.intern.maybe_sweep();
    }

    /// Journals the element changes of published slots.
    fn journal_changes(&mut self) {
        for (id, change) in std::mem::take(&mut self.reg.changes) {
            if self.reg.slots[id as usize]
                .as_ref()
                .is_none_or(|s| !s.published)
            {
                continue;
            }
            let (fi, elem, came) = match change {
                sets::Change::Ip(n, came) => (
                    usize::from(n.addr().is_ipv6()),
                    crate::nft::ip_elem(&n),
                    came,
                ),
                sets::Change::Port(n, p, came) => (
                    usize::from(n.addr().is_ipv6()),
                    crate::nft::port_elem(&n, p),
                    came,
                ),
            };
            self.fams[fi].slot_elem(&self.reg, id, elem, came);
        }
    }

    fn render_family(&mut self, fi: usize, groups: Vec<u32>, ifaces: &BTreeSet<(bool, String)>) {
        let Engine {
            fams,
            groups: all_groups,
            reg,
            winners,
            felix,
            ..
        } = self;
        let fam = &mut fams[fi];
        let all_groups: &[Option<Group>] = all_groups;
        let specs: Vec<(UnitId, Option<UnitSpec<'_>>)> = groups
            .iter()
            .flat_map(|g| (0..2u8).map(move |d| (*g, d)))
            .map(|u| (u, unit_spec(all_groups, u)))
            .collect();
        let changed = fam.refresh(reg, specs, &|u| unit_spec(all_groups, u));
        let mut ifaces = ifaces.clone();
        for g in changed {
            if let Some(group) = all_groups[g as usize].as_ref() {
                for iface in group.winners.values() {
                    ifaces.insert((group.key.host, iface.clone()));
                }
            }
        }
        let targets = |fam: &FamilyState, g: u32| -> Option<[String; 2]> {
            Some([
                fam.target((g, 0))?.to_string(),
                fam.target((g, 1))?.to_string(),
            ])
        };
        for (host, iface) in &ifaces {
            let t = winners[usize::from(*host)]
                .get(iface)
                .and_then(|(_, g)| targets(fam, *g));
            fam.set_iface(
                *host,
                iface,
                t.as_ref().map(|[a, b]| [a.as_str(), b.as_str()]),
            );
        }
        // The host endpoint for all interfaces: input runs its ingress
        // program, output its egress program.
        let all = winners[1]
            .get(ALL_INTERFACES)
            .and_then(|(_, g)| targets(fam, *g))
            .map(|[eg, ing]| [ing, eg]);
        fam.set_base(all, felix.1, &felix.0, &felix.2);
    }
}

/// What a unit of a group is rendered from, if it has one (a live, compiled
/// group with an interface).
fn unit_spec(groups: &[Option<Group>], (g, d): UnitId) -> Option<UnitSpec<'_>> {
    let group = groups[g as usize].as_ref()?;
    let (rank, iface) = group.winners.first_key_value()?;
    let prog = group.prog.as_ref()?;
    Some(UnitSpec {
        pos: UnitPos {
            host: group.key.host,
            rank: rank.clone(),
            d,
            group: g,
        },
        iface,
        prog: &prog[prog_index(DIRECTIONS[usize::from(d)])],
    })
}

/// The interface an endpoint claims in its list: host endpoints any non-empty
/// name (`*` too), workloads any but `*`.
fn claim_iface(iface: Option<&str>, host: bool) -> Option<&str> {
    iface.filter(|i| !i.is_empty() && (host || *i != ALL_INTERFACES))
}
