//! The compiler from the [`Model`] to a rule IR per endpoint and direction, in
//! evaluation order (tier order, then policy order, then name), with every selector,
//! namespace and net resolved to concrete IP sets and named ports resolved per
//! endpoint. Calico's semantics sit in the IR's shape: a tier that applies and does
//! not decide drops (or passes, by its defaultAction); profiles run only when every
//! applicable tier passed or none applied. [`compile_for_node`] compiles only one
//! node's endpoints while selectors still resolve over the whole cluster;
//! endpoints with the same policy identity (namespace, labels, profiles, named
//! ports, service account) are compiled once and share a [`EndpointProgram::group`].
//! GlobalNetworkPolicies with `preDNAT` or `doNotTrack` are not enforced (they
//! apply to no endpoint; [`crate::model::Policy::unsupported`] says so).
//!
//! The selection predicates, the set keys and the program builder are shared
//! with [`crate::incremental`], which resolves sets against its active sets
//! instead of scanning the model ([`Sets`]): both paths give the same programs.
//! A set's key says everything its members depend on (a named-port set's key
//! includes the match's `notSelector`), so the same key means the same members
//! whichever rule meets it first.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use ipnet::IpNet;
use tabby_api::policy::{Action, PolicyType, TierAction};

use tabby_selector::{Labels, Selector};

use crate::model::{
    Endpoint, EndpointToHost, EntityMatch, Failsafe, Icmp, Model, NamedPort, NetworkSet, Policy,
    PortSpec, Profile, Rule, Scope, WorkloadPrefixes,
};

/// Traffic direction relative to the endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Direction {
    /// Towards the endpoint (its ingress policy).
    Ingress,
    /// From the endpoint (its egress policy).
    Egress,
}

impl Direction {
    pub(crate) fn policy_type(self) -> PolicyType {
        match self {
            Direction::Ingress => PolicyType::Ingress,
            Direction::Egress => PolicyType::Egress,
        }
    }

    /// `ingress` / `egress`.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        }
    }
}

/// A resolved set of addresses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IpSet {
    /// `s-` and a hash of the description: the same selection or nets get the same
    /// name in every compilation (what incremental updates rely on).
    pub name: String,
    /// What it was resolved from, for humans.
    pub description: String,
    /// Literal `nets` (rendered inline) rather than a label selection.
    pub literal: bool,
    /// Aggregated members (no overlaps).
    pub members: Vec<IpNet>,
}

/// A resolved named port: the (address, port) pairs of the endpoints that name it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortSet {
    /// `n-` and a hash of the description, stable across compilations.
    pub name: String,
    /// The port name and the selection, for humans.
    pub description: String,
    /// Members.
    pub members: Vec<(IpNet, u16)>,
}

/// A port condition after resolution.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IrPort {
    /// Inclusive range.
    Range(u16, u16),
    /// (address, port) membership in [`Compiled::port_sets`]`[i]` on that side.
    Set(usize),
}

/// One side of a rule, resolved.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IrEntity {
    /// The address must be in every one of these [`Compiled::ip_sets`].
    pub in_sets: Vec<usize>,
    /// The address must be in none of these.
    pub not_in_sets: Vec<usize>,
    /// Any of these ports (empty: any port).
    pub ports: Vec<IrPort>,
    /// None of these ports.
    pub not_ports: Vec<IrPort>,
}

/// A rule ready to evaluate or render.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IrRule {
    /// Index in the policy's or profile's rule list for this direction.
    pub index: usize,
    /// Action.
    pub action: Action,
    /// 4 or 6.
    pub ip_version: Option<u8>,
    /// Protocol number.
    pub protocol: Option<u8>,
    /// Excluded protocol number.
    pub not_protocol: Option<u8>,
    /// ICMP match.
    pub icmp: Option<Icmp>,
    /// ICMP exclusion.
    pub not_icmp: Option<Icmp>,
    /// Source.
    pub src: IrEntity,
    /// Destination.
    pub dst: IrEntity,
    /// Why the rule can never match, when it cannot (e.g. a named port this endpoint
    /// lacks, or an unsupported field); rendered as nothing.
    pub never: Option<String>,
}

/// A policy's rules for one endpoint and direction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyProgram {
    /// `namespace/name` or `name`.
    pub policy: String,
    /// Rules in order.
    pub rules: Vec<IrRule>,
}

/// A tier with the policies that apply to the endpoint in this direction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TierProgram {
    /// Tier name.
    pub tier: String,
    /// What happens when no policy decides.
    pub default_action: TierAction,
    /// Policies in order (never empty).
    pub policies: Vec<PolicyProgram>,
}

/// A profile's rules.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProfileProgram {
    /// Profile name.
    pub profile: String,
    /// Rules in order.
    pub rules: Vec<IrRule>,
}

/// Everything one direction of an endpoint evaluates, in order: tiers, then (when all
/// tiers passed or none applied) profiles, then drop.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Program {
    /// Applicable tiers in order.
    pub tiers: Vec<TierProgram>,
    /// The endpoint's profiles that exist, in order.
    pub profiles: Vec<ProfileProgram>,
}

/// The compiled programs of one endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointProgram {
    /// Endpoint key (`namespace/name`).
    pub endpoint: String,
    /// Interface, if known (endpoints without one are not dispatched to).
    pub interface: Option<String>,
    /// A host endpoint: its programs police traffic to the host arriving on its
    /// interface (ingress) and traffic from the host leaving by it (egress).
    pub host: bool,
    /// The node the endpoint is on, when known.
    pub node: Option<String>,
    /// Endpoints with the same group have identical programs (same namespace,
    /// labels, profiles, named ports and service account): they are compiled
    /// once, and the renderer shares their chains.
    pub group: usize,
    /// Addresses of the endpoint.
    pub ips: Vec<IpNet>,
    /// Towards the endpoint.
    pub ingress: Program,
    /// From the endpoint.
    pub egress: Program,
}

impl EndpointProgram {
    /// The program for a direction.
    pub fn program(&self, d: Direction) -> &Program {
        match d {
            Direction::Ingress => &self.ingress,
            Direction::Egress => &self.egress,
        }
    }
}

/// The compiled model.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Compiled {
    /// IP sets referenced by rules.
    pub ip_sets: Vec<IpSet>,
    /// Named-port sets referenced by rules.
    pub port_sets: Vec<PortSet>,
    /// Per endpoint, sorted by key.
    pub endpoints: Vec<EndpointProgram>,
    /// Failsafe ports, allowed ahead of host endpoint programs.
    pub failsafe: Failsafe,
    /// The verdict for workload-to-host traffic after the workload's egress program
    /// allowed it.
    pub endpoint_to_host: EndpointToHost,
    /// Workload interface prefixes: unknown workload interfaces are dropped.
    pub workload_prefixes: WorkloadPrefixes,
}

fn order_cmp(a: Option<f64>, b: Option<f64>) -> Ordering {
    match (a, b) {
        (Some(a), Some(b)) => a.total_cmp(&b),
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (None, None) => Ordering::Equal,
    }
}

/// Evaluates namespace selectors: the labels of a namespace are its name and the
/// `pcns.` labels of its `kns.<ns>` profile ([`Model::namespace_labels`]).
pub(crate) trait Namespaces {
    /// Whether `s` matches the labels of namespace `ns` (`None`: not namespaced).
    fn namespace_matches(&self, s: &Selector, ns: Option<&str>) -> bool;
}

impl Namespaces for Model {
    fn namespace_matches(&self, s: &Selector, ns: Option<&str>) -> bool {
        s.matches(&self.namespace_labels(ns))
    }
}

/// What selection predicates see of an endpoint or network set.
pub(crate) struct Entity<'a, L: Labels> {
    /// Namespace, if namespaced.
    pub namespace: Option<&'a str>,
    /// Labels (for endpoints: merged with the profiles').
    pub labels: &'a L,
    /// Service account (workload endpoints).
    pub service_account: Option<&'a str>,
}

/// Whether `scope` admits an entity in namespace `ns`.
pub(crate) fn in_scope(scope: &Scope, ns: Option<&str>, nss: &impl Namespaces) -> bool {
    match scope {
        Scope::Any => true,
        Scope::Namespace(want) => ns == Some(want.as_str()),
        Scope::NamespaceSelector(s) => nss.namespace_matches(s, ns),
    }
}

/// Whether an endpoint is in the positive selection of an entity match.
pub(crate) fn endpoint_selected<L: Labels>(
    m: &EntityMatch,
    e: &Entity<'_, L>,
    nss: &impl Namespaces,
) -> bool {
    in_scope(&m.scope, e.namespace, nss)
        && m.selector
            .as_ref()
            .is_none_or(|s| s.matches_labels(e.labels))
        && (m.service_account_names.is_empty()
            || e.service_account
                .is_some_and(|sa| m.service_account_names.iter().any(|n| n == sa)))
        && m.service_account_selector
            .as_ref()
            .is_none_or(|s| s.matches_labels(e.labels))
}

/// Whether a network set is in the positive selection of an entity match
/// (never when the match names service accounts).
pub(crate) fn network_set_selected<L: Labels>(
    m: &EntityMatch,
    s: &Entity<'_, L>,
    nss: &impl Namespaces,
) -> bool {
    m.service_account_names.is_empty()
        && m.service_account_selector.is_none()
        && in_scope(&m.scope, s.namespace, nss)
        && m.selector
            .as_ref()
            .is_none_or(|sel| sel.matches_labels(s.labels))
}

/// Whether an endpoint is a member of a named-port set (before its ports are
/// looked at): selected, and not excluded by the match's `notSelector`.
pub(crate) fn port_member<L: Labels>(
    m: &EntityMatch,
    e: &Entity<'_, L>,
    nss: &impl Namespaces,
) -> bool {
    endpoint_selected(m, e, nss)
        && !m
            .not_selector
            .as_ref()
            .is_some_and(|s| s.matches_labels(e.labels))
}

/// Whether a policy applies to an entity (direction aside).
pub(crate) fn policy_applies<L: Labels>(
    p: &Policy,
    e: &Entity<'_, L>,
    nss: &impl Namespaces,
) -> bool {
    if p.unsupported.is_some() {
        return false;
    }
    if let Some(ns) = &p.namespace
        && e.namespace != Some(ns.as_str())
    {
        return false;
    }
    if let Some(s) = &p.namespace_selector
        && !nss.namespace_matches(s, e.namespace)
    {
        return false;
    }
    if let Some(s) = &p.service_account_selector
        && !s.matches_labels(e.labels)
    {
        return false;
    }
    p.selector.matches_labels(e.labels)
}

/// Whether a policy applies to an endpoint (direction aside).
pub fn policy_selects(model: &Model, p: &Policy, e: &Endpoint) -> bool {
    policy_applies(p, &entity(e), model)
}

fn entity(e: &Endpoint) -> Entity<'_, BTreeMap<String, String>> {
    Entity {
        namespace: e.namespace.as_deref(),
        labels: &e.labels,
        service_account: e.service_account.as_deref(),
    }
}

/// Evaluation order of policies: tier order, tier name, policy order, key.
pub(crate) fn policy_cmp(
    tier_order: impl Fn(&str) -> Option<f64>,
) -> impl Fn(&&Policy, &&Policy) -> Ordering {
    move |a, b| {
        order_cmp(tier_order(&a.tier), tier_order(&b.tier))
            .then_with(|| a.tier.cmp(&b.tier))
            .then_with(|| order_cmp(a.order, b.order))
            .then_with(|| a.key().cmp(&b.key()))
    }
}

/// Where a new IP set's members come from.
pub(crate) enum SetSource<'a> {
    /// Literal `nets` / `notNets`.
    Nets(&'a [IpNet]),
    /// The positive selection of an entity match (endpoints and network sets).
    Selection(&'a EntityMatch),
    /// A `notSelector` (endpoints and network sets whose labels match).
    NotSelector(&'a Selector),
}

/// Where a new named-port set's members come from: the endpoints that
/// [`port_member`] admits, with their ports named `name` of protocol `protocol`.
pub(crate) struct PortSource<'a> {
    /// The match the port is on.
    pub entity: &'a EntityMatch,
    /// The port name.
    pub name: &'a str,
    /// The protocol number.
    pub protocol: u8,
}

/// Resolves sets while programs are compiled: the full compiler scans the model,
/// the incremental engine keeps active sets up to date. A key names a set's
/// content; the same key must always give the same index.
pub(crate) trait Sets {
    /// The index of the IP set `key`.
    fn ip_set(&mut self, key: String, source: SetSource<'_>) -> usize;
    /// The index of the named-port set `key`.
    fn port_set(&mut self, key: String, source: PortSource<'_>) -> usize;
}

/// The name of the IP set with this key.
pub(crate) fn ip_set_name(key: &str) -> String {
    format!("s-{:016x}", stable_hash(key))
}

/// The name of the named-port set with this key.
pub(crate) fn port_set_name(key: &str) -> String {
    format!("n-{:016x}", stable_hash(key))
}

/// Set members as [`IpSet::members`] holds them: IPv4 aggregated, then IPv6.
pub(crate) fn aggregate(members: &[IpNet]) -> Vec<IpNet> {
    let mut v4: Vec<IpNet> = members
        .iter()
        .filter(|n| n.addr().is_ipv4())
        .copied()
        .collect();
    let v6: Vec<IpNet> = members
        .iter()
        .filter(|n| n.addr().is_ipv6())
        .copied()
        .collect();
    v4 = IpNet::aggregate(&v4);
    v4.extend(IpNet::aggregate(&v6));
    v4
}

/// The key of a label selection (also the description of its set).
pub(crate) fn selection_key(m: &EntityMatch) -> String {
    let mut k = format!(
        "selector {}",
        m.selector.as_ref().map_or("all()", |s| s.canonical())
    );
    match &m.scope {
        Scope::Any => {}
        Scope::Namespace(ns) => k.push_str(&format!(" in namespace {ns}")),
        Scope::NamespaceSelector(s) => {
            k.push_str(&format!(" in namespaces {}", s.canonical()));
        }
    }
    if !m.service_account_names.is_empty() {
        k.push_str(&format!(
            " serviceAccounts {}",
            m.service_account_names.join(",")
        ));
    }
    if let Some(s) = &m.service_account_selector {
        k.push_str(&format!(" serviceAccountSelector {}", s.canonical()));
    }
    k
}

/// The key of a `notSelector` set.
pub(crate) fn not_selection_key(s: &Selector) -> String {
    format!("selector {}", s.canonical())
}

fn nets_key(nets: &[IpNet]) -> String {
    let v: Vec<String> = nets.iter().map(ToString::to_string).collect();
    format!("nets {}", v.join(","))
}

/// The key of a named-port set. The match's `notSelector` excludes endpoints
/// from it, so it is part of the key (two rules with the same selection and
/// different `notSelector`s must not share a set).
pub(crate) fn port_key(name: &str, proto: u8, m: &EntityMatch) -> String {
    let mut k = format!("port {name}/{proto} of {}", selection_key(m));
    if let Some(s) = &m.not_selector {
        k.push_str(&format!(" not {}", s.canonical()));
    }
    k
}

/// What an endpoint's programs are compiled from besides policies: the
/// profiles that exist (in the endpoint's order) and its named ports.
pub(crate) struct ProgramInputs<'a> {
    /// The policies that apply in this direction, in evaluation order.
    pub policies: &'a [&'a Policy],
    /// A tier's defaultAction (Deny for a tier that does not exist).
    pub tier_action: &'a dyn Fn(&str) -> TierAction,
    /// The endpoint's profiles that exist, in order.
    pub profiles: &'a [&'a Profile],
    /// The endpoint's named ports (rules towards it resolve them).
    pub named_ports: &'a [NamedPort],
}

fn ports(
    sets: &mut impl Sets,
    specs: &[PortSpec],
    m: &EntityMatch,
    proto: Option<u8>,
    local: Option<&[NamedPort]>,
) -> Vec<IrPort> {
    let proto = proto.unwrap_or(6);
    let mut out = Vec::new();
    for p in specs {
        match p {
            PortSpec::Range(a, b) => out.push(IrPort::Range(*a, *b)),
            PortSpec::Named(name) => match local {
                Some(named) => {
                    for np in named {
                        if &np.name == name && np.protocol == proto {
                            out.push(IrPort::Range(np.port, np.port));
                        }
                    }
                }
                None => {
                    let key = port_key(name, proto, m);
                    out.push(IrPort::Set(sets.port_set(
                        key,
                        PortSource {
                            entity: m,
                            name,
                            protocol: proto,
                        },
                    )));
                }
            },
        }
    }
    out
}

fn entity_ir(
    sets: &mut impl Sets,
    m: &EntityMatch,
    proto: Option<u8>,
    local: Option<&[NamedPort]>,
) -> (IrEntity, Option<String>) {
    let mut ir = IrEntity::default();
    let mut never = m.unsupported.clone();
    if !m.nets.is_empty() {
        ir.in_sets
            .push(sets.ip_set(nets_key(&m.nets), SetSource::Nets(&m.nets)));
    }
    // A notSelector alone excludes; it does not restrict to selected entities.
    let positive = m.selector.is_some()
        || !matches!(m.scope, Scope::Any)
        || !m.service_account_names.is_empty()
        || m.service_account_selector.is_some();
    if positive {
        ir.in_sets
            .push(sets.ip_set(selection_key(m), SetSource::Selection(m)));
    }
    if !m.not_nets.is_empty() {
        ir.not_in_sets
            .push(sets.ip_set(nets_key(&m.not_nets), SetSource::Nets(&m.not_nets)));
    }
    if let Some(s) = &m.not_selector {
        ir.not_in_sets
            .push(sets.ip_set(not_selection_key(s), SetSource::NotSelector(s)));
    }
    ir.ports = ports(sets, &m.ports, m, proto, local);
    if !m.ports.is_empty() && ir.ports.is_empty() && never.is_none() {
        never = Some("no named port of the endpoint matches".to_string());
    }
    ir.not_ports = ports(sets, &m.not_ports, m, proto, local);
    (ir, never)
}

fn rules_ir(
    sets: &mut impl Sets,
    rules: &[Rule],
    d: Direction,
    named_ports: &[NamedPort],
) -> Vec<IrRule> {
    let mut out = Vec::new();
    for (index, r) in rules.iter().enumerate() {
        let (src_local, dst_local) = match d {
            Direction::Ingress => (None, Some(named_ports)),
            Direction::Egress => (Some(named_ports), None),
        };
        let (src, n1) = entity_ir(sets, &r.source, r.protocol, src_local);
        let (dst, n2) = entity_ir(sets, &r.destination, r.protocol, dst_local);
        out.push(IrRule {
            index,
            action: r.action,
            ip_version: r.ip_version,
            protocol: r.protocol,
            not_protocol: r.not_protocol,
            icmp: r.icmp,
            not_icmp: r.not_icmp,
            src,
            dst,
            never: n1.or(n2),
        });
    }
    out
}

/// One direction's program from the policies that apply (in order) and the
/// profiles; sets come from `sets` in the order the rules name them.
pub(crate) fn build_program(
    sets: &mut impl Sets,
    inputs: &ProgramInputs<'_>,
    d: Direction,
) -> Program {
    let mut prog = Program::default();
    for p in inputs.policies {
        let rules = match d {
            Direction::Ingress => &p.ingress,
            Direction::Egress => &p.egress,
        };
        let rules = rules_ir(sets, rules, d, inputs.named_ports);
        let pp = PolicyProgram {
            policy: p.key(),
            rules,
        };
        match prog.tiers.last_mut() {
            Some(t) if t.tier == p.tier => t.policies.push(pp),
            _ => prog.tiers.push(TierProgram {
                tier: p.tier.clone(),
                default_action: (inputs.tier_action)(&p.tier),
                policies: vec![pp],
            }),
        }
    }
    for pr in inputs.profiles {
        let rules = match d {
            Direction::Ingress => &pr.ingress,
            Direction::Egress => &pr.egress,
        };
        let rules = rules_ir(sets, rules, d, inputs.named_ports);
        prog.profiles.push(ProfileProgram {
            profile: pr.name.clone(),
            rules,
        });
    }
    prog
}

struct Compiler<'m> {
    model: &'m Model,
    out: Compiled,
    set_index: BTreeMap<String, usize>,
    port_index: BTreeMap<String, usize>,
    /// Policies in evaluation order (tier order, tier, order, key), by the
    /// namespace they are confined to (`None`: global policies).
    by_namespace: BTreeMap<Option<&'m str>, Vec<&'m Policy>>,
}

/// The policies in evaluation order, by namespace (sorted once per compile,
/// not once per endpoint).
fn policies_by_namespace(model: &Model) -> BTreeMap<Option<&str>, Vec<&Policy>> {
    let tier_order = |t: &str| model.tiers.get(t).and_then(|t| t.order);
    let mut sorted: Vec<(String, &Policy)> = model.policies.iter().map(|p| (p.key(), p)).collect();
    sorted.sort_by(|(ka, a), (kb, b)| {
        order_cmp(tier_order(&a.tier), tier_order(&b.tier))
            .then_with(|| a.tier.cmp(&b.tier))
            .then_with(|| order_cmp(a.order, b.order))
            .then_with(|| ka.cmp(kb))
    });
    let mut out: BTreeMap<Option<&str>, Vec<&Policy>> = BTreeMap::new();
    for (_, p) in sorted {
        out.entry(p.namespace.as_deref()).or_default().push(p);
    }
    out
}

impl Sets for Compiler<'_> {
    fn ip_set(&mut self, key: String, source: SetSource<'_>) -> usize {
        if let Some(i) = self.set_index.get(&key) {
            return *i;
        }
        let model = self.model;
        let (literal, members) = match source {
            SetSource::Nets(nets) => (true, nets.to_vec()),
            SetSource::Selection(m) => {
                let mut nets = Vec::new();
                for e in &model.endpoints {
                    if endpoint_selected(m, &entity(e), model) {
                        nets.extend(e.ips.iter().copied());
                    }
                }
                for s in &model.network_sets {
                    if network_set_selected(m, &network_set(s), model) {
                        nets.extend(s.nets.iter().copied());
                    }
                }
                (false, nets)
            }
            SetSource::NotSelector(sel) => {
                let mut nets = Vec::new();
                for e in &model.endpoints {
                    if sel.matches(&e.labels) {
                        nets.extend(e.ips.iter().copied());
                    }
                }
                for s in &model.network_sets {
                    if sel.matches(&s.labels) {
                        nets.extend(s.nets.iter().copied());
                    }
                }
                (false, nets)
            }
        };
        let i = self.out.ip_sets.len();
        self.out.ip_sets.push(IpSet {
            name: ip_set_name(&key),
            description: key.clone(),
            literal,
            members: aggregate(&members),
        });
        self.set_index.insert(key, i);
        i
    }

    fn port_set(&mut self, key: String, source: PortSource<'_>) -> usize {
        if let Some(i) = self.port_index.get(&key) {
            return *i;
        }
        let model = self.model;
        let mut members = Vec::new();
        for e in &model.endpoints {
            if !port_member(source.entity, &entity(e), model) {
                continue;
            }
            for np in &e.named_ports {
                if np.name == source.name && np.protocol == source.protocol {
                    members.extend(e.ips.iter().map(|ip| (*ip, np.port)));
                }
            }
        }
        members.sort();
        members.dedup();
        let i = self.out.port_sets.len();
        self.out.port_sets.push(PortSet {
            name: port_set_name(&key),
            description: key.clone(),
            members,
        });
        self.port_index.insert(key, i);
        i
    }
}

fn network_set(s: &NetworkSet) -> Entity<'_, BTreeMap<String, String>> {
    Entity {
        namespace: s.namespace.as_deref(),
        labels: &s.labels,
        service_account: None,
    }
}

impl Compiler<'_> {
    fn program(&mut self, e: &Endpoint, d: Direction) -> Program {
        let model = self.model;
        // Only global policies and those of the endpoint's namespace can apply;
        // each list is in evaluation order, so a merge keeps the order.
        let none = Vec::new();
        let global = self.by_namespace.get(&None).unwrap_or(&none);
        let local = match e.namespace.as_deref() {
            Some(ns) => self.by_namespace.get(&Some(ns)).unwrap_or(&none),
            None => &none,
        };
        let applies =
            |p: &&Policy| p.types.contains(&d.policy_type()) && policy_selects(model, p, e);
        let mut a: Vec<&Policy> = global.iter().copied().filter(applies).collect();
        let b: Vec<&Policy> = local.iter().copied().filter(applies).collect();
        let applicable = if b.is_empty() {
            a
        } else if a.is_empty() {
            b
        } else {
            a.extend(b);
            a.sort_by(policy_cmp(|t: &str| {
                model.tiers.get(t).and_then(|t| t.order)
            }));
            a
        };
        let profiles: Vec<&Profile> = e
            .profiles
            .iter()
            .filter_map(|name| model.profiles.get(name))
            .collect();
        let tier_action = |t: &str| {
            model
                .tiers
                .get(t)
                .map_or(TierAction::Deny, |t| t.default_action)
        };
        let inputs = ProgramInputs {
            policies: &applicable,
            tier_action: &tier_action,
            profiles: &profiles,
            named_ports: &e.named_ports,
        };
        build_program(self, &inputs, d)
    }
}

/// FNV-1a, 64 bits: a hash that is the same in every build and run (set names
/// must not change between compilations or releases).
pub(crate) fn stable_hash(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Compiles the model: one [`EndpointProgram`] per endpoint plus the sets they use.
pub fn compile(model: &Model) -> Compiled {
    compile_endpoints(model, |_| true)
}

/// Compiles only the endpoints on `node` (`spec.node` of workload and host
/// endpoints), what one node's data plane programs. Selectors still resolve over
/// every endpoint in the model, so remote pods are in the local rules' sets.
pub fn compile_for_node(model: &Model, node: &str) -> Compiled {
    compile_endpoints(model, |e| e.node.as_deref() == Some(node))
}

fn compile_endpoints(model: &Model, local: impl Fn(&Endpoint) -> bool) -> Compiled {
    let mut c = Compiler {
        model,
        out: Compiled {
            failsafe: model.failsafe.clone(),
            endpoint_to_host: model.endpoint_to_host,
            workload_prefixes: model.workload_prefixes.clone(),
            ..Compiled::default()
        },
        set_index: BTreeMap::new(),
        port_index: BTreeMap::new(),
        by_namespace: policies_by_namespace(model),
    };
    // Programs depend only on what policy can see of an endpoint; replicas of a
    // workload share it, so each distinct identity is compiled once.
    let mut groups: BTreeMap<String, (usize, Program, Program)> = BTreeMap::new();
    for e in model.endpoints.iter().filter(|e| local(e)) {
        let identity = format!(
            "{:?}|{:?}|{:?}|{:?}|{:?}|{}",
            e.namespace, e.labels, e.profiles, e.named_ports, e.service_account, e.host
        );
        let next = groups.len();
        let (group, ingress, egress) = match groups.get(&identity) {
            Some(g) => g.clone(),
            None => {
                let g = (
                    next,
                    c.program(e, Direction::Ingress),
                    c.program(e, Direction::Egress),
                );
                groups.insert(identity, g.clone());
                g
            }
        };
        c.out.endpoints.push(EndpointProgram {
            group,
            endpoint: e.key(),
            interface: e.interface.clone(),
            host: e.host,
            node: e.node.clone(),
            ips: e.ips.clone(),
            ingress,
            egress,
        });
    }
    c.out
}
