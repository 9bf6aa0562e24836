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

use std::cmp::Ordering;
use std::collections::BTreeMap;

use ipnet::IpNet;
use tabby_api::policy::{Action, PolicyType, TierAction};

use crate::model::{
    Endpoint, EndpointToHost, EntityMatch, Failsafe, Icmp, Model, Policy, PortSpec, Rule, Scope,
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
    fn policy_type(self) -> PolicyType {
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
}

fn order_cmp(a: Option<f64>, b: Option<f64>) -> Ordering {
    match (a, b) {
        (Some(a), Some(b)) => a.total_cmp(&b),
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (None, None) => Ordering::Equal,
    }
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

/// Whether a policy applies to an endpoint (direction aside).
pub fn policy_selects(model: &Model, p: &Policy, e: &Endpoint) -> bool {
    if p.unsupported.is_some() {
        return false;
    }
    if let Some(ns) = &p.namespace
        && e.namespace.as_ref() != Some(ns)
    {
        return false;
    }
    if let Some(s) = &p.namespace_selector
        && !s.matches(&model.namespace_labels(e.namespace.as_deref()))
    {
        return false;
    }
    if let Some(s) = &p.service_account_selector
        && !s.matches(&e.labels)
    {
        return false;
    }
    p.selector.matches(&e.labels)
}

impl Compiler<'_> {
    fn in_scope(&self, scope: &Scope, ns: Option<&str>) -> bool {
        match scope {
            Scope::Any => true,
            Scope::Namespace(want) => ns == Some(want.as_str()),
            Scope::NamespaceSelector(s) => s.matches(&self.model.namespace_labels(ns)),
        }
    }

    /// Whether an endpoint is in the positive selection of an entity.
    fn endpoint_selected(&self, m: &EntityMatch, e: &Endpoint) -> bool {
        self.in_scope(&m.scope, e.namespace.as_deref())
            && m.selector.as_ref().is_none_or(|s| s.matches(&e.labels))
            && (m.service_account_names.is_empty()
                || e.service_account
                    .as_ref()
                    .is_some_and(|sa| m.service_account_names.contains(sa)))
            && m.service_account_selector
                .as_ref()
                .is_none_or(|s| s.matches(&e.labels))
    }

    fn selection_members(&self, m: &EntityMatch) -> Vec<IpNet> {
        let mut nets = Vec::new();
        for e in &self.model.endpoints {
            if self.endpoint_selected(m, e) {
                nets.extend(e.ips.iter().copied());
            }
        }
        let sa = !m.service_account_names.is_empty() || m.service_account_selector.is_some();
        if !sa {
            for s in &self.model.network_sets {
                if self.in_scope(&m.scope, s.namespace.as_deref())
                    && m.selector.as_ref().is_none_or(|sel| sel.matches(&s.labels))
                {
                    nets.extend(s.nets.iter().copied());
                }
            }
        }
        nets
    }

    fn not_selection_members(&self, sel: &tabby_selector::Selector) -> Vec<IpNet> {
        let mut nets = Vec::new();
        for e in &self.model.endpoints {
            if sel.matches(&e.labels) {
                nets.extend(e.ips.iter().copied());
            }
        }
        for s in &self.model.network_sets {
            if sel.matches(&s.labels) {
                nets.extend(s.nets.iter().copied());
            }
        }
        nets
    }

    fn set(&mut self, key: String, literal: bool, members: Vec<IpNet>) -> usize {
        if let Some(i) = self.set_index.get(&key) {
            return *i;
        }
        let i = self.out.ip_sets.len();
        let mut v4: Vec<IpNet> = members
            .iter()
            .filter(|n| n.addr().is_ipv4())
            .copied()
            .collect();
        let mut v6: Vec<IpNet> = members
            .iter()
            .filter(|n| n.addr().is_ipv6())
            .copied()
            .collect();
        v4 = IpNet::aggregate(&v4);
        v6 = IpNet::aggregate(&v6);
        v4.extend(v6);
        self.out.ip_sets.push(IpSet {
            name: format!("s-{:016x}", stable_hash(&key)),
            description: key.clone(),
            literal,
            members: v4,
        });
        self.set_index.insert(key, i);
        i
    }

    fn selection_key(m: &EntityMatch) -> String {
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

    fn nets_key(nets: &[IpNet]) -> String {
        let v: Vec<String> = nets.iter().map(ToString::to_string).collect();
        format!("nets {}", v.join(","))
    }

    fn ports(
        &mut self,
        specs: &[PortSpec],
        m: &EntityMatch,
        proto: Option<u8>,
        local: Option<&Endpoint>,
    ) -> Vec<IrPort> {
        let proto = proto.unwrap_or(6);
        let mut out = Vec::new();
        for p in specs {
            match p {
                PortSpec::Range(a, b) => out.push(IrPort::Range(*a, *b)),
                PortSpec::Named(name) => match local {
                    Some(e) => {
                        for np in &e.named_ports {
                            if &np.name == name && np.protocol == proto {
                                out.push(IrPort::Range(np.port, np.port));
                            }
                        }
                    }
                    None => {
                        let key = format!("port {name}/{proto} of {}", Self::selection_key(m));
                        let i = match self.port_index.get(&key) {
                            Some(i) => *i,
                            None => {
                                let mut members = Vec::new();
                                for e in &self.model.endpoints {
                                    if !self.endpoint_selected(m, e)
                                        || m.not_selector
                                            .as_ref()
                                            .is_some_and(|s| s.matches(&e.labels))
                                    {
                                        continue;
                                    }
                                    for np in &e.named_ports {
                                        if &np.name == name && np.protocol == proto {
                                            members.extend(e.ips.iter().map(|ip| (*ip, np.port)));
                                        }
                                    }
                                }
                                members.sort();
                                members.dedup();
                                let i = self.out.port_sets.len();
                                self.out.port_sets.push(PortSet {
                                    name: format!("n-{:016x}", stable_hash(&key)),
                                    description: key.clone(),
                                    members,
                                });
                                self.port_index.insert(key, i);
                                i
                            }
                        };
                        out.push(IrPort::Set(i));
                    }
                },
            }
        }
        out
    }

    fn entity(
        &mut self,
        m: &EntityMatch,
        proto: Option<u8>,
        local: Option<&Endpoint>,
    ) -> (IrEntity, Option<String>) {
        let mut ir = IrEntity::default();
        let mut never = m.unsupported.clone();
        if !m.nets.is_empty() {
            let i = self.set(Self::nets_key(&m.nets), true, m.nets.clone());
            ir.in_sets.push(i);
        }
        // A notSelector alone excludes; it does not restrict to selected entities.
        let positive = m.selector.is_some()
            || !matches!(m.scope, Scope::Any)
            || !m.service_account_names.is_empty()
            || m.service_account_selector.is_some();
        if positive {
            // Resolve a selection only the first time it is seen: thousands of
            // rules name the same selectors.
            let key = Self::selection_key(m);
            let i = match self.set_index.get(&key) {
                Some(i) => *i,
                None => {
                    let members = self.selection_members(m);
                    self.set(key, false, members)
                }
            };
            ir.in_sets.push(i);
        }
        if !m.not_nets.is_empty() {
            let i = self.set(Self::nets_key(&m.not_nets), true, m.not_nets.clone());
            ir.not_in_sets.push(i);
        }
        if let Some(s) = &m.not_selector {
            let key = format!("selector {}", s.canonical());
            let i = match self.set_index.get(&key) {
                Some(i) => *i,
                None => {
                    let members = self.not_selection_members(s);
                    self.set(key, false, members)
                }
            };
            ir.not_in_sets.push(i);
        }
        ir.ports = self.ports(&m.ports, m, proto, local);
        if !m.ports.is_empty() && ir.ports.is_empty() && never.is_none() {
            never = Some("no named port of the endpoint matches".to_string());
        }
        ir.not_ports = self.ports(&m.not_ports, m, proto, local);
        (ir, never)
    }

    fn rules(&mut self, rules: &[Rule], d: Direction, e: &Endpoint) -> Vec<IrRule> {
        let mut out = Vec::new();
        for (index, r) in rules.iter().enumerate() {
            let (src_local, dst_local) = match d {
                Direction::Ingress => (None, Some(e)),
                Direction::Egress => (Some(e), None),
            };
            let (src, n1) = self.entity(&r.source, r.protocol, src_local);
            let (dst, n2) = self.entity(&r.destination, r.protocol, dst_local);
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
            let tier_order = |t: &str| model.tiers.get(t).and_then(|t| t.order);
            a.extend(b);
            a.sort_by(|x, y| {
                order_cmp(tier_order(&x.tier), tier_order(&y.tier))
                    .then_with(|| x.tier.cmp(&y.tier))
                    .then_with(|| order_cmp(x.order, y.order))
                    .then_with(|| x.key().cmp(&y.key()))
            });
            a
        };
        let mut prog = Program::default();
        for p in applicable {
            let rules = match d {
                Direction::Ingress => &p.ingress,
                Direction::Egress => &p.egress,
            };
            let rules = self.rules(rules, d, e);
            let pp = PolicyProgram {
                policy: p.key(),
                rules,
            };
            match prog.tiers.last_mut() {
                Some(t) if t.tier == p.tier => t.policies.push(pp),
                _ => prog.tiers.push(TierProgram {
                    tier: p.tier.clone(),
                    default_action: model
                        .tiers
                        .get(&p.tier)
                        .map_or(TierAction::Deny, |t| t.default_action),
                    policies: vec![pp],
                }),
            }
        }
        for name in &e.profiles {
            if let Some(pr) = model.profiles.get(name) {
                let rules = match d {
                    Direction::Ingress => &pr.ingress,
                    Direction::Egress => &pr.egress,
                };
                let rules = self.rules(rules, d, e);
                prog.profiles.push(ProfileProgram {
                    profile: name.clone(),
                    rules,
                });
            }
        }
        prog
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
