//! The policy inputs as plain data: endpoints, policies, profiles, network sets and
//! tiers, built from `tabby_api` resources with Calico's defaults applied (tier,
//! `types`, tier order and defaultAction) and every selector parsed up front.

use std::collections::BTreeMap;

use ipnet::IpNet;
use tabby_api::Resource;
use tabby_api::net::{Port, Protocol};
use tabby_api::policy::{
    self as api, Action, DEFAULT_TIER, DEFAULT_TIER_ORDER, PolicyType, TierAction, TierSpec,
};
use tabby_selector::{Expr, Selector};

/// The label Calico puts on namespaced endpoints and network sets.
pub const NAMESPACE_LABEL: &str = "projectcalico.org/namespace";
/// Prefix of namespace labels as profiles apply them (`kns.<ns>`).
pub const NAMESPACE_LABEL_PREFIX: &str = "pcns.";
/// Prefix of service-account labels as profiles apply them (`ksa.<ns>.<sa>`).
pub const SERVICE_ACCOUNT_LABEL_PREFIX: &str = "pcsa.";

/// Why resources could not be turned into a model; names the resource and field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// A selector that does not parse.
    #[error("{resource}: {field}: {message}")]
    Selector {
        /// `Kind/namespace/name`.
        resource: String,
        /// The field path, e.g. `spec.ingress[0].source.selector`.
        field: String,
        /// The parser's message.
        message: String,
    },
    /// A value the model cannot use (unknown protocol, bad ICMP type, ...).
    #[error("{resource}: {field}: {message}")]
    Invalid {
        /// `Kind/namespace/name`.
        resource: String,
        /// The field path.
        field: String,
        /// What is wrong.
        message: String,
    },
}

/// A workload or host endpoint as policy sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct Endpoint {
    /// Resource name.
    pub name: String,
    /// Namespace of a workload endpoint; `None` for host endpoints.
    pub namespace: Option<String>,
    /// Whether this is a host endpoint.
    pub host: bool,
    /// Own labels merged over the profiles' `labelsToApply`, plus the namespace label.
    pub labels: BTreeMap<String, String>,
    /// Profiles in order.
    pub profiles: Vec<String>,
    /// Addresses.
    pub ips: Vec<IpNet>,
    /// Host-side interface name.
    pub interface: Option<String>,
    /// Named ports.
    pub named_ports: Vec<NamedPort>,
    /// Service account name (workloads).
    pub service_account: Option<String>,
    /// The node the endpoint lives on (`spec.node`), when given.
    pub node: Option<String>,
}

impl Endpoint {
    /// `namespace/name`, or `name` for endpoints without a namespace.
    pub fn key(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("{ns}/{}", self.name),
            None => self.name.clone(),
        }
    }
}

/// A named port of an endpoint.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct NamedPort {
    /// The name rules use.
    pub name: String,
    /// Protocol number (TCP when unset).
    pub protocol: u8,
    /// Port number.
    pub port: u16,
}

/// A (Global)NetworkSet.
#[derive(Clone, Debug, PartialEq)]
pub struct NetworkSet {
    /// Resource name.
    pub name: String,
    /// `None` for GlobalNetworkSets.
    pub namespace: Option<String>,
    /// Labels, with the namespace label for namespaced sets.
    pub labels: BTreeMap<String, String>,
    /// The CIDRs.
    pub nets: Vec<IpNet>,
}

/// A tier with defaults applied.
#[derive(Clone, Debug, PartialEq)]
pub struct Tier {
    /// Name.
    pub name: String,
    /// Order; `None` sorts last.
    pub order: Option<f64>,
    /// What happens when no policy in the tier decides.
    pub default_action: TierAction,
}

/// A port match in a rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PortSpec {
    /// Inclusive range (a single port is `min == max`).
    Range(u16, u16),
    /// A named port, resolved against endpoints by the compiler.
    Named(String),
}

/// ICMP type and optional code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Icmp {
    /// ICMP type.
    pub type_: u8,
    /// ICMP code.
    pub code: Option<u8>,
}

/// Selects a group of endpoints and network sets (one side of a rule).
#[derive(Clone, Debug, PartialEq)]
pub struct EntityMatch {
    /// Literal CIDRs (any of).
    pub nets: Vec<IpNet>,
    /// Literal CIDRs (none of).
    pub not_nets: Vec<IpNet>,
    /// Label selector (already scoped to the policy's namespace when it is namespaced).
    pub selector: Option<Selector>,
    /// Negated label selector.
    pub not_selector: Option<Selector>,
    /// Where selected entities must live: a namespace, or namespaces matching a
    /// selector (rewritten Calico-style to match `pcns.` labels / `global()`).
    pub scope: Scope,
    /// Ports (any of); empty means any.
    pub ports: Vec<PortSpec>,
    /// Ports (none of).
    pub not_ports: Vec<PortSpec>,
    /// Service account names (any of); empty means no restriction.
    pub service_account_names: Vec<String>,
    /// Service account label selector (against `pcsa.` labels).
    pub service_account_selector: Option<Selector>,
    /// Whether the rule used a feature the model cannot enforce (`services`): such
    /// an entity matches nothing.
    pub unsupported: Option<String>,
}

impl EntityMatch {
    /// Whether any label-based part (selectors, namespace, service accounts) is set,
    /// i.e. whether the IPs must come from selected endpoints and network sets.
    pub fn selects(&self) -> bool {
        self.selector.is_some()
            || self.not_selector.is_some()
            || !matches!(self.scope, Scope::Any)
            || !self.service_account_names.is_empty()
            || self.service_account_selector.is_some()
    }
}

/// Namespace restriction of an entity match.
#[derive(Clone, Debug, PartialEq)]
pub enum Scope {
    /// Anything (global policy, no namespaceSelector, or no selector at all).
    Any,
    /// Only entities in this namespace (namespaced policy without namespaceSelector).
    Namespace(String),
    /// Entities whose namespace labels (`pcns.`-prefixed, plus the namespace label)
    /// match.
    NamespaceSelector(Selector),
}

/// A rule with its protocol and ICMP fields resolved to numbers.
#[derive(Clone, Debug, PartialEq)]
pub struct Rule {
    /// Allow, Deny, Log or Pass.
    pub action: Action,
    /// 4 or 6.
    pub ip_version: Option<u8>,
    /// Protocol number.
    pub protocol: Option<u8>,
    /// Excluded protocol number.
    pub not_protocol: Option<u8>,
    /// ICMP type/code to match.
    pub icmp: Option<Icmp>,
    /// ICMP type/code to exclude.
    pub not_icmp: Option<Icmp>,
    /// Source side.
    pub source: EntityMatch,
    /// Destination side.
    pub destination: EntityMatch,
}

/// A NetworkPolicy or GlobalNetworkPolicy.
#[derive(Clone, Debug, PartialEq)]
pub struct Policy {
    /// Name (without namespace).
    pub name: String,
    /// `Some` for namespaced NetworkPolicies.
    pub namespace: Option<String>,
    /// Tier name.
    pub tier: String,
    /// Order in the tier; `None` sorts last.
    pub order: Option<f64>,
    /// Which endpoints it applies to (without the namespace condition).
    pub selector: Selector,
    /// GlobalNetworkPolicy `namespaceSelector` (rewritten).
    pub namespace_selector: Option<Selector>,
    /// `serviceAccountSelector` (against `pcsa.` labels).
    pub service_account_selector: Option<Selector>,
    /// Directions it applies to (Calico-defaulted).
    pub types: Vec<PolicyType>,
    /// Ingress rules.
    pub ingress: Vec<Rule>,
    /// Egress rules.
    pub egress: Vec<Rule>,
    /// Why the policy is not enforced, when it uses a GlobalNetworkPolicy mode the
    /// data plane does not program (`preDNAT`, `doNotTrack`): such a policy applies
    /// to no endpoint.
    pub unsupported: Option<String>,
}

impl Policy {
    /// `namespace/name` or `name`, the id used in reports and chain names.
    pub fn key(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("{ns}/{}", self.name),
            None => self.name.clone(),
        }
    }
}

/// A profile (rules applied when no tier decides, and labels applied to endpoints).
#[derive(Clone, Debug, PartialEq)]
pub struct Profile {
    /// Name, e.g. `kns.default`.
    pub name: String,
    /// Ingress rules.
    pub ingress: Vec<Rule>,
    /// Egress rules.
    pub egress: Vec<Rule>,
    /// Labels applied to endpoints using it.
    pub labels_to_apply: BTreeMap<String, String>,
}

/// Everything policy evaluation needs.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Model {
    /// Endpoints, sorted by key.
    pub endpoints: Vec<Endpoint>,
    /// Policies (unsorted; the compiler orders them).
    pub policies: Vec<Policy>,
    /// Profiles by name, including synthesized `kns.<ns>` ones.
    pub profiles: BTreeMap<String, Profile>,
    /// Network sets.
    pub network_sets: Vec<NetworkSet>,
    /// Tiers by name, including `default`.
    pub tiers: BTreeMap<String, Tier>,
    /// Host ports that host endpoint policy never blocks.
    pub failsafe: Failsafe,
    /// What happens to traffic from a local workload to the host itself once the
    /// workload's egress policy allowed it (`defaultEndpointToHostAction`).
    pub endpoint_to_host: EndpointToHost,
    /// Workload interface prefixes (unknown ones are dropped).
    pub workload_prefixes: WorkloadPrefixes,
}

/// Felix's `interfacePrefix`: host interfaces with one of these prefixes are
/// workload interfaces. Traffic from or to one that no local WorkloadEndpoint
/// names is dropped (Felix's "unknown interface" drop), so a pod is isolated
/// until its rules are in place. Default `cali`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct WorkloadPrefixes(pub Vec<String>);

impl Default for WorkloadPrefixes {
    fn default() -> Self {
        WorkloadPrefixes(vec!["cali".to_string()])
    }
}

impl WorkloadPrefixes {
    /// From the FelixConfiguration's effective `interfacePrefix`.
    pub fn from_felix(spec: &tabby_api::felix::FelixConfigurationSpec) -> WorkloadPrefixes {
        WorkloadPrefixes(spec.effective_interface_prefixes())
    }
}

/// Felix's `defaultEndpointToHostAction`: the verdict for traffic from a workload
/// to its own host after the workload's egress policy allowed it. Host endpoint
/// policy and failsafe ports never apply to it (Felix's INPUT chain goes to
/// `cali-wl-to-host` for workload interfaces before host endpoint dispatch).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum EndpointToHost {
    /// Dropped (Felix's default).
    #[default]
    Drop,
    /// Returned from Tabby's input chain to the host's other input rules (other
    /// nftables base chains on the hook decide; with none, it is accepted).
    Return,
    /// Accepted.
    Accept,
}

impl EndpointToHost {
    /// From the FelixConfiguration's effective value (`Drop`, `Return`, `Accept`).
    pub fn from_felix(spec: &tabby_api::felix::FelixConfigurationSpec) -> EndpointToHost {
        match spec.effective_default_endpoint_to_host_action().as_str() {
            "Accept" => EndpointToHost::Accept,
            "Return" => EndpointToHost::Return,
            _ => EndpointToHost::Drop,
        }
    }

    /// `Drop`, `Return` or `Accept`.
    pub fn as_str(self) -> &'static str {
        match self {
            EndpointToHost::Drop => "Drop",
            EndpointToHost::Return => "Return",
            EndpointToHost::Accept => "Accept",
        }
    }
}

/// One failsafe port: traffic with this protocol and destination port (and, with
/// `net`, this peer) always passes a host endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FailsafePort {
    /// Protocol number (TCP 6, UDP 17, SCTP 132).
    pub protocol: u8,
    /// Destination port.
    pub port: u16,
    /// Only this peer network: the source for inbound, the destination for outbound.
    pub net: Option<IpNet>,
}

/// Felix's failsafe ports (`failsafeInboundHostPorts`, `failsafeOutboundHostPorts`),
/// allowed ahead of every host endpoint's policy. Defaults to Felix's defaults; the
/// `default` FelixConfiguration overrides them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failsafe {
    /// Traffic to the host with these destination ports.
    pub inbound: Vec<FailsafePort>,
    /// Traffic from the host with these destination ports.
    pub outbound: Vec<FailsafePort>,
}

impl Default for Failsafe {
    fn default() -> Failsafe {
        let spec = tabby_api::felix::FelixConfigurationSpec::default();
        Failsafe::from_felix("FelixConfiguration/default", &spec)
            .expect("Felix's default failsafe ports are valid")
    }
}

impl Failsafe {
    /// No failsafe ports at all.
    pub fn none() -> Failsafe {
        Failsafe {
            inbound: Vec::new(),
            outbound: Vec::new(),
        }
    }

    /// The ports a FelixConfiguration puts in effect (Felix's defaults for unset
    /// fields); errors name the field.
    pub fn from_felix(
        resource: &str,
        spec: &tabby_api::felix::FelixConfigurationSpec,
    ) -> Result<Failsafe, PolicyError> {
        let convert = |field: &str,
                       ports: Vec<tabby_api::felix::ProtoPort>|
         -> Result<Vec<FailsafePort>, PolicyError> {
            let invalid = |i: usize, sub: &str, message: String| PolicyError::Invalid {
                resource: resource.to_string(),
                field: format!("spec.{field}[{i}].{sub}"),
                message,
            };
            ports
                .iter()
                .enumerate()
                .map(|(i, p)| {
                    let protocol = match p.protocol.to_ascii_lowercase().as_str() {
                        "" | "tcp" => 6,
                        "udp" => 17,
                        "sctp" => 132,
                        other => {
                            return Err(invalid(
                                i,
                                "protocol",
                                format!("{other:?} is not tcp, udp or sctp"),
                            ));
                        }
                    };
                    let net = match p.net.as_deref().filter(|n| !n.is_empty()) {
                        None => None,
                        Some(n) => Some(
                            n.parse::<IpNet>()
                                .or_else(|_| n.parse::<std::net::IpAddr>().map(IpNet::from))
                                .map_err(|_| invalid(i, "net", format!("{n:?} is not a CIDR")))?,
                        ),
                    };
                    Ok(FailsafePort {
                        protocol,
                        port: p.port,
                        net,
                    })
                })
                .collect()
        };
        Ok(Failsafe {
            inbound: convert(
                "failsafeInboundHostPorts",
                spec.effective_failsafe_inbound(),
            )?,
            outbound: convert(
                "failsafeOutboundHostPorts",
                spec.effective_failsafe_outbound(),
            )?,
        })
    }
}

struct Ctx<'a> {
    resource: &'a str,
    namespace: Option<&'a str>,
}

impl Ctx<'_> {
    fn selector(&self, field: &str, s: Option<&String>) -> Result<Option<Selector>, PolicyError> {
        match s.map(|s| s.trim()).filter(|s| !s.is_empty()) {
            None => Ok(None),
            Some(s) => Selector::parse(s)
                .map(Some)
                .map_err(|e| PolicyError::Selector {
                    resource: self.resource.to_string(),
                    field: field.to_string(),
                    message: e.to_string(),
                }),
        }
    }

    fn invalid(&self, field: &str, message: impl Into<String>) -> PolicyError {
        PolicyError::Invalid {
            resource: self.resource.to_string(),
            field: field.to_string(),
            message: message.into(),
        }
    }

    fn protocol(&self, field: &str, p: Option<&Protocol>) -> Result<Option<u8>, PolicyError> {
        match p {
            None => Ok(None),
            Some(p) => match p.number() {
                Some(n) if n > 0 => Ok(Some(n)),
                _ => Err(self.invalid(field, format!("{p} is not a protocol"))),
            },
        }
    }

    fn icmp(&self, field: &str, f: Option<&api::IcmpFields>) -> Result<Option<Icmp>, PolicyError> {
        let Some(f) = f else { return Ok(None) };
        let byte = |v: Option<i32>, name: &str, max: i32| -> Result<Option<u8>, PolicyError> {
            match v {
                None => Ok(None),
                Some(v) if (0..=max).contains(&v) => Ok(Some(v as u8)),
                Some(v) => Err(self.invalid(
                    &format!("{field}.{name}"),
                    format!("{v} is outside 0..={max}"),
                )),
            }
        };
        let type_ = byte(f.type_, "type", 254)?;
        let code = byte(f.code, "code", 255)?;
        match type_ {
            Some(type_) => Ok(Some(Icmp { type_, code })),
            None if code.is_some() => Err(self.invalid(&format!("{field}.code"), "needs a type")),
            None => Ok(None),
        }
    }

    fn entity(&self, field: &str, e: Option<&api::EntityRule>) -> Result<EntityMatch, PolicyError> {
        let empty = api::EntityRule::default();
        let e = e.unwrap_or(&empty);
        let selector = self.selector(&format!("{field}.selector"), e.selector.as_ref())?;
        let not_selector =
            self.selector(&format!("{field}.notSelector"), e.not_selector.as_ref())?;
        let ns_selector = self.selector(
            &format!("{field}.namespaceSelector"),
            e.namespace_selector.as_ref(),
        )?;
        let (sa_names, sa_selector) = match &e.service_accounts {
            None => (Vec::new(), None),
            Some(sa) => (
                sa.names.clone(),
                self.selector(
                    &format!("{field}.serviceAccounts.selector"),
                    sa.selector.as_ref(),
                )?
                .map(|s| s.with_label_prefix(SERVICE_ACCOUNT_LABEL_PREFIX)),
            ),
        };
        let labelled = selector.is_some()
            || not_selector.is_some()
            || !sa_names.is_empty()
            || sa_selector.is_some();
        let scope = match (ns_selector, self.namespace) {
            (Some(s), _) => Scope::NamespaceSelector(namespace_selector(&s)),
            (None, Some(ns)) if labelled => Scope::Namespace(ns.to_string()),
            _ => Scope::Any,
        };
        let ports = |list: &[Port]| -> Vec<PortSpec> {
            list.iter()
                .map(|p| match p {
                    Port::Number(n) => PortSpec::Range(*n, *n),
                    Port::Range { min, max } => PortSpec::Range(*min, *max),
                    Port::Named(n) => PortSpec::Named(n.clone()),
                })
                .collect()
        };
        Ok(EntityMatch {
            nets: e.nets.clone(),
            not_nets: e.not_nets.clone(),
            selector,
            not_selector,
            scope,
            ports: ports(&e.ports),
            not_ports: ports(&e.not_ports),
            service_account_names: sa_names,
            service_account_selector: sa_selector,
            unsupported: e
                .services
                .as_ref()
                .map(|_| format!("{field}.services is not supported")),
        })
    }

    fn rules(&self, field: &str, rules: &[api::Rule]) -> Result<Vec<Rule>, PolicyError> {
        rules
            .iter()
            .enumerate()
            .map(|(i, r)| self.rule(&format!("{field}[{i}]"), r))
            .collect()
    }

    fn rule(&self, path: &str, r: &api::Rule) -> Result<Rule, PolicyError> {
        let action = r
            .action
            .ok_or_else(|| self.invalid(&format!("{path}.action"), "is required"))?;
        let ip_version = match r.ip_version {
            None => None,
            Some(v @ (4 | 6)) => Some(v as u8),
            Some(v) => {
                return Err(
                    self.invalid(&format!("{path}.ipVersion"), format!("{v} is not 4 or 6"))
                );
            }
        };
        let mut source = self.entity(&format!("{path}.source"), r.source.as_ref())?;
        let destination = self.entity(&format!("{path}.destination"), r.destination.as_ref())?;
        if r.http.is_some() && source.unsupported.is_none() {
            source.unsupported = Some(format!("{path}.http is not supported"));
        }
        Ok(Rule {
            action,
            ip_version,
            protocol: self.protocol(&format!("{path}.protocol"), r.protocol.as_ref())?,
            not_protocol: self.protocol(&format!("{path}.notProtocol"), r.not_protocol.as_ref())?,
            icmp: self.icmp(&format!("{path}.icmp"), r.icmp.as_ref())?,
            not_icmp: self.icmp(&format!("{path}.notICMP"), r.not_icmp.as_ref())?,
            source,
            destination,
        })
    }
}

/// Calico's namespaceSelector rewrite: `global()` means "not namespaced", `all()`
/// means "any namespace", anything else matches `pcns.`-prefixed namespace labels.
fn namespace_selector(s: &Selector) -> Selector {
    match s.expr() {
        Expr::Global => Selector::from_expr(Expr::Not(Box::new(Expr::Has {
            label: NAMESPACE_LABEL.to_string(),
        }))),
        Expr::All => Selector::from_expr(Expr::Has {
            label: NAMESPACE_LABEL.to_string(),
        }),
        _ => s.with_label_prefix(NAMESPACE_LABEL_PREFIX),
    }
}

/// The profile Calico's Kubernetes backend makes for each namespace: allow all in
/// both directions and apply the namespace name as a `pcns.` label.
pub fn namespace_profile(ns: &str) -> Profile {
    let allow = || Rule {
        action: Action::Allow,
        ip_version: None,
        protocol: None,
        not_protocol: None,
        icmp: None,
        not_icmp: None,
        source: EntityMatch::any(),
        destination: EntityMatch::any(),
    };
    Profile {
        name: format!("kns.{ns}"),
        ingress: vec![allow()],
        egress: vec![allow()],
        labels_to_apply: BTreeMap::from([(
            format!("{NAMESPACE_LABEL_PREFIX}projectcalico.org/name"),
            ns.to_string(),
        )]),
    }
}

impl EntityMatch {
    /// Matches everything.
    pub fn any() -> EntityMatch {
        EntityMatch {
            nets: Vec::new(),
            not_nets: Vec::new(),
            selector: None,
            not_selector: None,
            scope: Scope::Any,
            ports: Vec::new(),
            not_ports: Vec::new(),
            service_account_names: Vec::new(),
            service_account_selector: None,
            unsupported: None,
        }
    }
}

/// One resource as the model sees it: what [`convert`] makes of it.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Item {
    /// A workload or host endpoint, with its own labels only (profiles'
    /// `labelsToApply` are merged in by the model, which knows the profiles).
    Endpoint(Endpoint),
    /// A (Global)NetworkPolicy.
    Policy(Policy),
    /// A (Global)NetworkSet.
    NetworkSet(NetworkSet),
    /// A Profile.
    Profile(Profile),
    /// The `default` FelixConfiguration.
    Felix(Failsafe, EndpointToHost, WorkloadPrefixes),
    /// A Tier.
    Tier(Tier),
    /// Anything else (other kinds, FelixConfigurations other than `default`).
    Ignored,
}

/// `Kind/namespace/name` or `Kind/name`, how errors name a resource.
pub(crate) fn res_id(r: &Resource) -> String {
    match &r.metadata.namespace {
        Some(ns) => format!("{}/{ns}/{}", r.spec.kind(), r.metadata.name),
        None => format!("{}/{}", r.spec.kind(), r.metadata.name),
    }
}

/// The `default` tier as it is when no Tier resource overrides it.
pub(crate) fn default_tier() -> Tier {
    Tier {
        name: DEFAULT_TIER.to_string(),
        order: Some(DEFAULT_TIER_ORDER),
        default_action: TierAction::Deny,
    }
}

/// Converts one resource with Calico's defaults applied and every selector parsed;
/// errors name the resource and the field.
pub(crate) fn convert(r: &Resource) -> Result<Item, PolicyError> {
    let id = res_id(r);
    let name = r.metadata.name.clone();
    let ns = r.metadata.namespace.clone().filter(|n| !n.is_empty());
    let mut labels = r.metadata.labels.clone();
    let cx = Ctx {
        resource: &id,
        namespace: None,
    };
    let named_ports = |ports: Vec<(&String, Option<&Protocol>, u16)>| {
        ports
            .into_iter()
            .enumerate()
            .map(|(i, (name, protocol, port))| {
                Ok(NamedPort {
                    name: name.clone(),
                    protocol: cx
                        .protocol(&format!("spec.ports[{i}].protocol"), protocol)?
                        .unwrap_or(6),
                    port,
                })
            })
            .collect::<Result<Vec<_>, PolicyError>>()
    };
    if let Some(s) = r.spec.as_workload_endpoint() {
        if let Some(ns) = &ns {
            labels.insert(NAMESPACE_LABEL.to_string(), ns.clone());
        }
        Ok(Item::Endpoint(Endpoint {
            name,
            namespace: ns,
            host: false,
            labels,
            profiles: s.profiles.clone(),
            ips: s.ip_networks.clone(),
            interface: s.interface_name.clone(),
            named_ports: named_ports(
                s.ports
                    .iter()
                    .map(|p| (&p.name, p.protocol.as_ref(), p.port))
                    .collect(),
            )?,
            service_account: s.service_account_name.clone(),
            node: s.node.clone().filter(|n| !n.is_empty()),
        }))
    } else if let Some(s) = r.spec.as_host_endpoint() {
        let mut ips = Vec::new();
        for (i, ip) in s.expected_ips.iter().enumerate() {
            let addr: std::net::IpAddr = ip.parse().map_err(|_| {
                cx.invalid(
                    &format!("spec.expectedIPs[{i}]"),
                    format!("{ip:?} is not an IP"),
                )
            })?;
            ips.push(IpNet::from(addr));
        }
        Ok(Item::Endpoint(Endpoint {
            name,
            namespace: None,
            host: true,
            labels,
            profiles: s.profiles.clone(),
            ips,
            interface: s.interface_name.clone(),
            named_ports: named_ports(
                s.ports
                    .iter()
                    .map(|p| (&p.name, p.protocol.as_ref(), p.port))
                    .collect(),
            )?,
            service_account: None,
            node: s.node.clone().filter(|n| !n.is_empty()),
        }))
    } else if let Some(s) = r.spec.as_network_policy() {
        let ns = ns.unwrap_or_else(|| "default".to_string());
        let cx = Ctx {
            resource: &id,
            namespace: Some(&ns),
        };
        Ok(Item::Policy(Policy {
            name,
            namespace: Some(ns.clone()),
            tier: s.effective_tier().to_string(),
            order: s.order,
            selector: cx
                .selector("spec.selector", s.selector.as_ref())?
                .unwrap_or_default(),
            namespace_selector: None,
            service_account_selector: cx
                .selector(
                    "spec.serviceAccountSelector",
                    s.service_account_selector.as_ref(),
                )?
                .map(|s| s.with_label_prefix(SERVICE_ACCOUNT_LABEL_PREFIX)),
            types: s.effective_types(),
            ingress: cx.rules("spec.ingress", &s.ingress)?,
            egress: cx.rules("spec.egress", &s.egress)?,
            unsupported: None,
        }))
    } else if let Some(s) = r.spec.as_global_network_policy() {
        let unsupported = if s.pre_dnat == Some(true) {
            Some(format!("{id}: spec.preDNAT is not supported"))
        } else if s.do_not_track == Some(true) {
            Some(format!("{id}: spec.doNotTrack is not supported"))
        } else {
            None
        };
        Ok(Item::Policy(Policy {
            name,
            namespace: None,
            tier: s.effective_tier().to_string(),
            order: s.order,
            selector: cx
                .selector("spec.selector", s.selector.as_ref())?
                .unwrap_or_default(),
            namespace_selector: cx
                .selector("spec.namespaceSelector", s.namespace_selector.as_ref())?
                .map(|s| namespace_selector(&s)),
            service_account_selector: cx
                .selector(
                    "spec.serviceAccountSelector",
                    s.service_account_selector.as_ref(),
                )?
                .map(|s| s.with_label_prefix(SERVICE_ACCOUNT_LABEL_PREFIX)),
            types: s.effective_types(),
            ingress: cx.rules("spec.ingress", &s.ingress)?,
            egress: cx.rules("spec.egress", &s.egress)?,
            unsupported,
        }))
    } else if let Some(s) = r
        .spec
        .as_network_set()
        .or_else(|| r.spec.as_global_network_set())
    {
        let ns = if r.spec.as_network_set().is_some() {
            ns
        } else {
            None
        };
        if let Some(ns) = &ns {
            labels.insert(NAMESPACE_LABEL.to_string(), ns.clone());
        }
        Ok(Item::NetworkSet(NetworkSet {
            name,
            namespace: ns,
            labels,
            nets: s.nets.clone(),
        }))
    } else if let Some(s) = r.spec.as_profile() {
        Ok(Item::Profile(Profile {
            name,
            ingress: cx.rules("spec.ingress", &s.ingress)?,
            egress: cx.rules("spec.egress", &s.egress)?,
            labels_to_apply: s.labels_to_apply.clone(),
        }))
    } else if let Some(s) = r.spec.as_felix_configuration() {
        if r.metadata.name == "default" {
            Ok(Item::Felix(
                Failsafe::from_felix(&id, s)?,
                EndpointToHost::from_felix(s),
                WorkloadPrefixes::from_felix(s),
            ))
        } else {
            Ok(Item::Ignored)
        }
    } else if let Some(s) = r.spec.as_tier() {
        let mut s: TierSpec = s.clone();
        s.apply_defaults(&name);
        Ok(Item::Tier(Tier {
            name,
            order: s.order,
            default_action: s.default_action.unwrap_or(TierAction::Deny),
        }))
    } else {
        Ok(Item::Ignored)
    }
}

/// An endpoint's labels: the `labelsToApply` of its profiles that exist, in
/// order (a later profile wins), under its own labels (which win).
pub(crate) fn merged_labels<'p>(
    own: &BTreeMap<String, String>,
    profiles: impl IntoIterator<Item = &'p Profile>,
) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    for p in profiles {
        labels.extend(p.labels_to_apply.clone());
    }
    labels.extend(own.iter().map(|(k, v)| (k.clone(), v.clone())));
    labels
}

/// How endpoints are ordered (the order programs are compiled and interfaces
/// claimed in): by key, workloads before host endpoints of the same key.
pub(crate) fn endpoint_order(a: &Endpoint, b: &Endpoint) -> std::cmp::Ordering {
    a.key().cmp(&b.key()).then(a.host.cmp(&b.host))
}

impl Model {
    /// Builds the model from resources of any kinds (other kinds are ignored).
    /// Endpoint labels get the namespace label and the profiles' `labelsToApply`
    /// (the endpoint's own labels win); a `kns.<ns>` profile that is not given is
    /// synthesized as Calico's Kubernetes backend does (allow all).
    pub fn from_resources(resources: &[Resource]) -> Result<Model, PolicyError> {
        let mut m = Model::default();
        m.tiers.insert(DEFAULT_TIER.to_string(), default_tier());
        let mut raw_endpoints = Vec::new();
        for r in resources {
            match convert(r)? {
                Item::Endpoint(e) => raw_endpoints.push(e),
                Item::Policy(p) => m.policies.push(p),
                Item::NetworkSet(s) => m.network_sets.push(s),
                Item::Profile(p) => {
                    m.profiles.insert(p.name.clone(), p);
                }
                Item::Felix(failsafe, endpoint_to_host, prefixes) => {
                    m.failsafe = failsafe;
                    m.endpoint_to_host = endpoint_to_host;
                    m.workload_prefixes = prefixes;
                }
                Item::Tier(t) => {
                    m.tiers.insert(t.name.clone(), t);
                }
                Item::Ignored => {}
            }
        }
        for e in &raw_endpoints {
            if let Some(ns) = &e.namespace {
                let p = format!("kns.{ns}");
                if e.profiles.contains(&p) && !m.profiles.contains_key(&p) {
                    m.profiles.insert(p, namespace_profile(ns));
                }
            }
        }
        for mut e in raw_endpoints {
            e.labels = merged_labels(
                &e.labels,
                e.profiles.iter().filter_map(|p| m.profiles.get(p)),
            );
            m.endpoints.push(e);
        }
        m.endpoints.sort_by(endpoint_order);
        Ok(m)
    }

    /// Finds an endpoint by `namespace/name`, name, or interface name.
    pub fn endpoint(&self, id: &str) -> Option<&Endpoint> {
        self.endpoints
            .iter()
            .find(|e| e.key() == id)
            .or_else(|| self.endpoints.iter().find(|e| e.name == id))
            .or_else(|| {
                self.endpoints
                    .iter()
                    .find(|e| e.interface.as_deref() == Some(id))
            })
    }

    /// The labels a namespaceSelector is evaluated against for an entity in `ns`:
    /// the namespace label plus the `pcns.` labels of the `kns.<ns>` profile.
    pub fn namespace_labels(&self, ns: Option<&str>) -> BTreeMap<String, String> {
        let mut labels = BTreeMap::new();
        if let Some(ns) = ns {
            labels.insert(NAMESPACE_LABEL.to_string(), ns.to_string());
            labels.insert(
                format!("{NAMESPACE_LABEL_PREFIX}projectcalico.org/name"),
                ns.to_string(),
            );
            if let Some(p) = self.profiles.get(&format!("kns.{ns}")) {
                labels.extend(
                    p.labels_to_apply
                        .iter()
                        .filter(|(k, _)| k.starts_with(NAMESPACE_LABEL_PREFIX))
                        .map(|(k, v)| (k.clone(), v.clone())),
                );
            }
        }
        labels
    }
}
