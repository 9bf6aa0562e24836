//! Policy resources: rules and entity matches, NetworkPolicy (namespaced) and
//! GlobalNetworkPolicy, NetworkSet and GlobalNetworkSet, Profile and Tier, with
//! Calico's defaults (tier `default`, `types` from the rules present, tier orders,
//! defaultAction Deny) and its rules (ports need TCP/UDP/SCTP, ICMP fields need an
//! ICMP protocol, selectors parse, preDNAT/doNotTrack need applyOnForward, ...).

use std::collections::BTreeMap;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::net::{Port, Protocol};
use crate::validate::Checker;

/// Name of the tier policies belong to when they do not say.
pub const DEFAULT_TIER: &str = "default";
/// Order of the `default` tier.
pub const DEFAULT_TIER_ORDER: f64 = 1_000_000.0;
/// Order of the `kube-admin` tier (Kubernetes AdminNetworkPolicy).
pub const KUBE_ADMIN_TIER_ORDER: f64 = 1_000.0;
/// Order of the `kube-baseline` tier (Kubernetes BaselineAdminNetworkPolicy).
pub const KUBE_BASELINE_TIER_ORDER: f64 = 10_000_000.0;
/// Most rules one direction of a policy may hold.
pub const MAX_RULES: usize = 1024;

/// What a matching rule does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Action {
    /// Accept the packet.
    Allow,
    /// Drop the packet.
    Deny,
    /// Log the packet and go on to the next rule.
    Log,
    /// Skip the rest of the tier.
    Pass,
}

/// A policy direction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum PolicyType {
    /// Traffic to the selected endpoints.
    Ingress,
    /// Traffic from the selected endpoints.
    Egress,
}

/// Hints that change how a policy is programmed, not what it means.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum PerformanceHint {
    /// Program the policy on every node ahead of time.
    AssumeNeededOnEveryNode,
}

/// ICMP type and code to match.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IcmpFields {
    /// ICMP type, 0..=254.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub type_: Option<i32>,
    /// ICMP code, 0..=255; needs a type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<i32>,
}

/// Service accounts a rule matches.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceAccountMatch {
    /// Service account names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub names: Vec<String>,
    /// A selector over service account labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
}

/// A Kubernetes service a rule matches.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceMatch {
    /// The service's name.
    #[serde(default)]
    pub name: String,
    /// The service's namespace (default: the policy's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// The source or destination side of a rule.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EntityRule {
    /// Addresses or CIDRs matched.
    #[serde(
        default,
        with = "crate::net::vec_net",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub nets: Vec<IpNet>,
    /// Addresses or CIDRs not matched.
    #[serde(
        default,
        with = "crate::net::vec_net",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub not_nets: Vec<IpNet>,
    /// Endpoints (and network sets) whose labels match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// Endpoints whose labels do not match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_selector: Option<String>,
    /// Namespaces whose labels match; `global()` means non-namespaced sets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<String>,
    /// Ports matched; needs protocol TCP, UDP or SCTP.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<Port>,
    /// Ports not matched; needs protocol TCP, UDP or SCTP.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_ports: Vec<Port>,
    /// Service accounts matched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_accounts: Option<ServiceAccountMatch>,
    /// A service matched (its endpoints, or its cluster IP as a destination).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub services: Option<ServiceMatch>,
}

/// One HTTP path match; exactly one field is set.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HTTPPath {
    /// The whole path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact: Option<String>,
    /// A path prefix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
}

/// HTTP attributes a rule matches (enforced by an application layer proxy).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HTTPMatch {
    /// Methods, e.g. `GET`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// Paths.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<HTTPPath>,
}

/// Free-form data attached to a rule.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RuleMetadata {
    /// Annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// One policy or profile rule.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rule {
    /// Allow, Deny, Log or Pass; required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<Action>,
    /// 4 or 6: only packets of that IP version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_version: Option<i32>,
    /// The protocol matched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<Protocol>,
    /// A protocol not matched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_protocol: Option<Protocol>,
    /// ICMP type/code matched; needs protocol ICMP or ICMPv6.
    #[serde(default, rename = "icmp", skip_serializing_if = "Option::is_none")]
    pub icmp: Option<IcmpFields>,
    /// ICMP type/code not matched; needs protocol ICMP or ICMPv6.
    #[serde(default, rename = "notICMP", skip_serializing_if = "Option::is_none")]
    pub not_icmp: Option<IcmpFields>,
    /// Where the packet comes from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<EntityRule>,
    /// Where the packet goes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<EntityRule>,
    /// HTTP match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HTTPMatch>,
    /// Annotations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<RuleMetadata>,
}

fn nonempty(s: &Option<String>) -> bool {
    s.as_deref().is_some_and(|s| !s.trim().is_empty())
}

impl EntityRule {
    fn check(&self, path: &str, rule: &Rule, c: &mut Checker) {
        c.selector(&format!("{path}.selector"), self.selector.as_ref(), false);
        c.selector(
            &format!("{path}.notSelector"),
            self.not_selector.as_ref(),
            false,
        );
        c.selector(
            &format!("{path}.namespaceSelector"),
            self.namespace_selector.as_ref(),
            true,
        );
        let ports_ok = rule.protocol.as_ref().is_some_and(Protocol::supports_ports);
        for (field, ports) in [("ports", &self.ports), ("notPorts", &self.not_ports)] {
            if !ports.is_empty() && !ports_ok {
                c.err(
                    format!("{path}.{field}"),
                    "ports need protocol TCP, UDP or SCTP",
                );
            }
        }
        if let Some(v) = rule.ip_version {
            for (field, nets) in [("nets", &self.nets), ("notNets", &self.not_nets)] {
                for (i, n) in nets.iter().enumerate() {
                    let is_v6 = matches!(n, IpNet::V6(_));
                    if (v == 4 && is_v6) || (v == 6 && !is_v6) {
                        c.err(
                            format!("{path}.{field}[{i}]"),
                            format!("{n} does not match ipVersion {v}"),
                        );
                    }
                }
            }
        }
        if let Some(sa) = &self.service_accounts {
            c.selector(
                &format!("{path}.serviceAccounts.selector"),
                sa.selector.as_ref(),
                false,
            );
            for (i, n) in sa.names.iter().enumerate() {
                c.subdomain(&format!("{path}.serviceAccounts.names[{i}]"), n);
            }
        }
        if let Some(svc) = &self.services {
            if svc.name.is_empty() {
                c.err(format!("{path}.services.name"), "is required");
            } else {
                c.subdomain(&format!("{path}.services.name"), &svc.name);
            }
            if let Some(ns) = &svc.namespace {
                c.dns_label(&format!("{path}.services.namespace"), ns);
            }
            let others = !self.nets.is_empty()
                || !self.not_nets.is_empty()
                || nonempty(&self.selector)
                || nonempty(&self.not_selector)
                || nonempty(&self.namespace_selector)
                || self.service_accounts.is_some();
            if others {
                c.err(
                    format!("{path}.services"),
                    "cannot be combined with nets, notNets, selector, notSelector, namespaceSelector or serviceAccounts",
                );
            }
        }
    }
}

fn check_icmp(path: &str, icmp: &IcmpFields, c: &mut Checker) {
    c.range(&format!("{path}.type"), icmp.type_, 0, 254);
    c.range(&format!("{path}.code"), icmp.code, 0, 255);
    if icmp.code.is_some() && icmp.type_.is_none() {
        c.err(format!("{path}.code"), "needs a type");
    }
}

impl Rule {
    /// Checks one rule at `path` (e.g. `spec.ingress[0]`).
    pub(crate) fn check(&self, path: &str, c: &mut Checker) {
        if self.action.is_none() {
            c.err(
                format!("{path}.action"),
                "is required (Allow, Deny, Log or Pass)",
            );
        }
        if let Some(v) = self.ip_version
            && v != 4
            && v != 6
        {
            c.err(format!("{path}.ipVersion"), format!("{v} is not 4 or 6"));
        }
        for (field, p) in [
            ("protocol", &self.protocol),
            ("notProtocol", &self.not_protocol),
        ] {
            if let Some(why) = p.as_ref().and_then(Protocol::problem) {
                c.err(format!("{path}.{field}"), why);
            }
        }
        let icmp_proto = self
            .protocol
            .as_ref()
            .is_some_and(|p| p.is_icmp() || p.is_icmpv6());
        for (field, icmp) in [("icmp", &self.icmp), ("notICMP", &self.not_icmp)] {
            if let Some(f) = icmp {
                if !icmp_proto {
                    c.err(format!("{path}.{field}"), "needs protocol ICMP or ICMPv6");
                }
                check_icmp(&format!("{path}.{field}"), f, c);
            }
        }
        match (&self.protocol, self.ip_version) {
            (Some(p), Some(6)) if p.is_icmp() => c.err(
                format!("{path}.protocol"),
                "ICMP is IPv4-only; use ICMPv6 with ipVersion 6",
            ),
            (Some(p), Some(4)) if p.is_icmpv6() => c.err(
                format!("{path}.protocol"),
                "ICMPv6 is IPv6-only; use ICMP with ipVersion 4",
            ),
            _ => {}
        }
        if let Some(s) = &self.source {
            s.check(&format!("{path}.source"), self, c);
        }
        if let Some(d) = &self.destination {
            d.check(&format!("{path}.destination"), self, c);
        }
        if let Some(http) = &self.http {
            for (i, m) in http.methods.iter().enumerate() {
                if m.is_empty() {
                    c.err(format!("{path}.http.methods[{i}]"), "is empty");
                }
            }
            for (i, p) in http.paths.iter().enumerate() {
                if p.exact.is_some() == p.prefix.is_some() {
                    c.err(
                        format!("{path}.http.paths[{i}]"),
                        "set exactly one of exact or prefix",
                    );
                }
            }
        }
    }
}

fn check_rules(field: &str, rules: &[Rule], c: &mut Checker) {
    if rules.len() > MAX_RULES {
        c.err(
            format!("spec.{field}"),
            format!("{} rules; at most {MAX_RULES} are allowed", rules.len()),
        );
    }
    for (i, r) in rules.iter().enumerate() {
        r.check(&format!("spec.{field}[{i}]"), c);
    }
}

/// The `types` Calico fills in when a policy leaves them out.
fn default_types(ingress: &[Rule], egress: &[Rule]) -> Vec<PolicyType> {
    match (ingress.is_empty(), egress.is_empty()) {
        (_, true) => vec![PolicyType::Ingress],
        (true, false) => vec![PolicyType::Egress],
        (false, false) => vec![PolicyType::Ingress, PolicyType::Egress],
    }
}

fn check_types(types: &[PolicyType], ingress: &[Rule], egress: &[Rule], c: &mut Checker) {
    for (i, t) in types.iter().enumerate() {
        if types[..i].contains(t) {
            c.err(format!("spec.types[{i}]"), format!("{t:?} is listed twice"));
        }
    }
    if !types.is_empty() {
        if !ingress.is_empty() && !types.contains(&PolicyType::Ingress) {
            c.err(
                "spec.ingress",
                "has rules but spec.types does not include Ingress",
            );
        }
        if !egress.is_empty() && !types.contains(&PolicyType::Egress) {
            c.err(
                "spec.egress",
                "has rules but spec.types does not include Egress",
            );
        }
    }
}

fn check_order(path: &str, order: Option<f64>, c: &mut Checker) {
    if let Some(o) = order
        && !o.is_finite()
    {
        c.err(path, format!("{o} is not a finite number"));
    }
}

/// serde for `order` fields: whole numbers are written without a fraction, as
/// calicoctl prints them.
pub(crate) mod order {
    use serde::{Deserialize, Deserializer, Serializer};

    /// The largest integer an f64 holds exactly.
    const EXACT: f64 = 9_007_199_254_740_992.0;

    pub fn serialize<S: Serializer>(v: &Option<f64>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            None => s.serialize_none(),
            Some(o) if o.fract() == 0.0 && o.abs() <= EXACT => s.serialize_i64(*o as i64),
            Some(o) => s.serialize_f64(*o),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
        Option::<f64>::deserialize(d)
    }
}

/// `spec` of a namespaced NetworkPolicy.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NetworkPolicySpec {
    /// The tier; default `default`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier: Option<String>,
    /// Lower orders apply first; unset applies last.
    #[serde(default, with = "order", skip_serializing_if = "Option::is_none")]
    pub order: Option<f64>,
    /// Endpoints the policy applies to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// Directions; default from the rules present.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub types: Vec<PolicyType>,
    /// Rules for traffic to the endpoints.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ingress: Vec<Rule>,
    /// Rules for traffic from the endpoints.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress: Vec<Rule>,
    /// Only endpoints whose service account labels match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_selector: Option<String>,
    /// Programming hints.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub performance_hints: Vec<PerformanceHint>,
}

impl NetworkPolicySpec {
    /// The tier in effect.
    pub fn effective_tier(&self) -> &str {
        self.tier
            .as_deref()
            .filter(|t| !t.is_empty())
            .unwrap_or(DEFAULT_TIER)
    }

    /// The directions in effect.
    pub fn effective_types(&self) -> Vec<PolicyType> {
        if self.types.is_empty() {
            default_types(&self.ingress, &self.egress)
        } else {
            self.types.clone()
        }
    }

    /// Fills the tier and the types.
    pub fn apply_defaults(&mut self) {
        if self.tier.as_deref().is_none_or(str::is_empty) {
            self.tier = Some(DEFAULT_TIER.to_string());
        }
        self.types = self.effective_types();
    }

    pub(crate) fn check(&self, c: &mut Checker) {
        if let Some(t) = self.tier.as_ref().filter(|t| !t.is_empty()) {
            c.dns_label("spec.tier", t);
        }
        check_order("spec.order", self.order, c);
        c.selector("spec.selector", self.selector.as_ref(), false);
        c.selector(
            "spec.serviceAccountSelector",
            self.service_account_selector.as_ref(),
            false,
        );
        check_types(&self.types, &self.ingress, &self.egress, c);
        check_rules("ingress", &self.ingress, c);
        check_rules("egress", &self.egress, c);
    }
}

/// `spec` of a GlobalNetworkPolicy.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GlobalNetworkPolicySpec {
    /// The tier; default `default`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier: Option<String>,
    /// Lower orders apply first; unset applies last.
    #[serde(default, with = "order", skip_serializing_if = "Option::is_none")]
    pub order: Option<f64>,
    /// Endpoints the policy applies to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// Directions; default from the rules present.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub types: Vec<PolicyType>,
    /// Rules for traffic to the endpoints.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ingress: Vec<Rule>,
    /// Rules for traffic from the endpoints.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress: Vec<Rule>,
    /// Only endpoints whose service account labels match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_selector: Option<String>,
    /// Only endpoints in namespaces whose labels match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<String>,
    /// Apply before connection tracking (untracked); needs applyOnForward.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub do_not_track: Option<bool>,
    /// Apply before DNAT (host endpoints, ingress only); needs applyOnForward.
    #[serde(default, rename = "preDNAT", skip_serializing_if = "Option::is_none")]
    pub pre_dnat: Option<bool>,
    /// Also apply to forwarded traffic on host endpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub apply_on_forward: Option<bool>,
    /// Programming hints.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub performance_hints: Vec<PerformanceHint>,
}

impl GlobalNetworkPolicySpec {
    /// The tier in effect.
    pub fn effective_tier(&self) -> &str {
        self.tier
            .as_deref()
            .filter(|t| !t.is_empty())
            .unwrap_or(DEFAULT_TIER)
    }

    /// The directions in effect.
    pub fn effective_types(&self) -> Vec<PolicyType> {
        if self.types.is_empty() {
            default_types(&self.ingress, &self.egress)
        } else {
            self.types.clone()
        }
    }

    /// Fills the tier and the types.
    pub fn apply_defaults(&mut self) {
        if self.tier.as_deref().is_none_or(str::is_empty) {
            self.tier = Some(DEFAULT_TIER.to_string());
        }
        self.types = self.effective_types();
    }

    pub(crate) fn check(&self, c: &mut Checker) {
        if let Some(t) = self.tier.as_ref().filter(|t| !t.is_empty()) {
            c.dns_label("spec.tier", t);
        }
        check_order("spec.order", self.order, c);
        c.selector("spec.selector", self.selector.as_ref(), false);
        c.selector(
            "spec.serviceAccountSelector",
            self.service_account_selector.as_ref(),
            false,
        );
        c.selector(
            "spec.namespaceSelector",
            self.namespace_selector.as_ref(),
            true,
        );
        check_types(&self.types, &self.ingress, &self.egress, c);
        check_rules("ingress", &self.ingress, c);
        check_rules("egress", &self.egress, c);
        let untracked = self.do_not_track == Some(true);
        let pre_dnat = self.pre_dnat == Some(true);
        if untracked && pre_dnat {
            c.err("spec.preDNAT", "cannot be combined with doNotTrack");
        }
        if (untracked || pre_dnat) && self.apply_on_forward != Some(true) {
            c.err(
                "spec.applyOnForward",
                "must be true when doNotTrack or preDNAT is",
            );
        }
        if pre_dnat {
            if !self.egress.is_empty() {
                c.err("spec.egress", "preDNAT policies cannot have egress rules");
            }
            if self.types.contains(&PolicyType::Egress) {
                c.err("spec.types", "preDNAT policies cannot include Egress");
            }
        }
    }
}

/// `spec` of a NetworkSet or GlobalNetworkSet.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NetworkSetSpec {
    /// Addresses or CIDRs in the set.
    #[serde(
        default,
        with = "crate::net::vec_net",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub nets: Vec<IpNet>,
}

/// `spec` of a Profile.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProfileSpec {
    /// Rules for traffic to endpoints with the profile.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ingress: Vec<Rule>,
    /// Rules for traffic from endpoints with the profile.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress: Vec<Rule>,
    /// Labels every endpoint with the profile gets.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels_to_apply: BTreeMap<String, String>,
}

impl ProfileSpec {
    pub(crate) fn check(&self, c: &mut Checker) {
        check_rules("ingress", &self.ingress, c);
        check_rules("egress", &self.egress, c);
        c.labels("spec.labelsToApply", &self.labels_to_apply);
    }
}

/// What happens to traffic no policy in a tier decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TierAction {
    /// Drop it (default).
    Deny,
    /// Go on to the next tier.
    Pass,
}

/// `spec` of a Tier.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TierSpec {
    /// Lower orders apply first; unset applies last.
    #[serde(default, with = "order", skip_serializing_if = "Option::is_none")]
    pub order: Option<f64>,
    /// Deny (default) or Pass.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_action: Option<TierAction>,
}

impl TierSpec {
    /// The order Calico gives its well-known tiers.
    pub fn well_known_order(name: &str) -> Option<f64> {
        match name {
            "default" => Some(DEFAULT_TIER_ORDER),
            "kube-admin" => Some(KUBE_ADMIN_TIER_ORDER),
            "kube-baseline" => Some(KUBE_BASELINE_TIER_ORDER),
            _ => None,
        }
    }

    /// Fills the default action and the well-known tiers' orders.
    pub fn apply_defaults(&mut self, name: &str) {
        self.default_action.get_or_insert(TierAction::Deny);
        if self.order.is_none() {
            self.order = TierSpec::well_known_order(name);
        }
    }

    pub(crate) fn check(&self, c: &mut Checker) {
        check_order("spec.order", self.order, c);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn np_problems(v: serde_json::Value) -> Vec<String> {
        let spec: NetworkPolicySpec = serde_json::from_value(v).unwrap();
        let mut c = Checker::default();
        spec.check(&mut c);
        c.errors.iter().map(ToString::to_string).collect()
    }

    fn gnp_problems(v: serde_json::Value) -> Vec<String> {
        let spec: GlobalNetworkPolicySpec = serde_json::from_value(v).unwrap();
        let mut c = Checker::default();
        spec.check(&mut c);
        c.errors.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn types_default_from_rules() {
        let rule = json!({"action": "Allow"});
        for (ingress, egress, want) in [
            (json!([]), json!([]), json!(["Ingress"])),
            (json!([rule]), json!([]), json!(["Ingress"])),
            (json!([]), json!([rule]), json!(["Egress"])),
            (json!([rule]), json!([rule]), json!(["Ingress", "Egress"])),
        ] {
            let mut spec: NetworkPolicySpec =
                serde_json::from_value(json!({"ingress": ingress, "egress": egress})).unwrap();
            spec.apply_defaults();
            assert_eq!(serde_json::to_value(&spec.types).unwrap(), want);
            assert_eq!(spec.tier.as_deref(), Some("default"));
        }
    }

    #[test]
    fn valid_policy() {
        assert!(np_problems(json!({
            "selector": "role == 'db'",
            "order": 100,
            "types": ["Ingress", "Egress"],
            "ingress": [{"action": "Allow", "protocol": "TCP",
                         "source": {"selector": "role == 'frontend'", "namespaceSelector": "global()"},
                         "destination": {"ports": [6379, "8000:8080", "redis"]}}],
            "egress": [{"action": "Allow", "protocol": "UDP", "destination": {"ports": [53], "nets": ["10.96.0.10/32"]}},
                       {"action": "Allow", "protocol": "ICMP", "icmp": {"type": 8, "code": 0}},
                       {"action": "Deny", "destination": {"services": {"name": "kubernetes", "namespace": "default"}}}],
        }))
        .is_empty());
    }

    #[test]
    fn rule_rules() {
        let e = np_problems(json!({"ingress": [{"destination": {"ports": [80]}}]}));
        assert!(
            e.contains(
                &"spec.ingress[0].action: is required (Allow, Deny, Log or Pass)".to_string()
            ),
            "{e:?}"
        );
        assert!(
            e.contains(
                &"spec.ingress[0].destination.ports: ports need protocol TCP, UDP or SCTP"
                    .to_string()
            ),
            "{e:?}"
        );
        let e = np_problems(
            json!({"egress": [{"action": "Allow", "protocol": "ICMP", "notICMP": {"code": 300}}]}),
        );
        assert!(
            e.iter()
                .any(|e| e.starts_with("spec.egress[0].notICMP.code: 300 is outside 0..=255")),
            "{e:?}"
        );
        assert!(
            e.iter()
                .any(|e| e == "spec.egress[0].notICMP.code: needs a type"),
            "{e:?}"
        );
        let e = np_problems(
            json!({"egress": [{"action": "Allow", "protocol": "TCP", "icmp": {"type": 8}}]}),
        );
        assert!(
            e.iter()
                .any(|e| e.starts_with("spec.egress[0].icmp: needs protocol ICMP")),
            "{e:?}"
        );
        let e = np_problems(
            json!({"egress": [{"action": "Allow", "protocol": "ICMP", "ipVersion": 6}]}),
        );
        assert!(
            e[0].starts_with("spec.egress[0].protocol: ICMP is IPv4-only"),
            "{e:?}"
        );
        let e = np_problems(json!({"egress": [{"action": "Allow", "ipVersion": 5}]}));
        assert!(e[0].starts_with("spec.egress[0].ipVersion:"), "{e:?}");
        let e = np_problems(
            json!({"egress": [{"action": "Allow", "ipVersion": 4, "destination": {"nets": ["fd00::/8"]}}]}),
        );
        assert!(
            e[0].starts_with("spec.egress[0].destination.nets[0]:"),
            "{e:?}"
        );
        let e = np_problems(json!({"egress": [{"action": "Allow", "protocol": "GRE"}]}));
        assert!(e[0].starts_with("spec.egress[0].protocol:"), "{e:?}");
        let e = np_problems(
            json!({"ingress": [{"action": "Allow", "source": {"selector": "a ==", "notSelector": "global()"}}]}),
        );
        assert!(
            e.iter()
                .any(|e| e.starts_with("spec.ingress[0].source.selector:")),
            "{e:?}"
        );
        assert!(
            e.iter()
                .any(|e| e.starts_with("spec.ingress[0].source.notSelector:")),
            "{e:?}"
        );
        let e = np_problems(
            json!({"ingress": [{"action": "Allow", "source": {"services": {"name": "x"}, "nets": ["10.0.0.0/8"]}}]}),
        );
        assert!(
            e[0].starts_with("spec.ingress[0].source.services: cannot be combined"),
            "{e:?}"
        );
        let e = np_problems(
            json!({"ingress": [{"action": "Allow", "http": {"paths": [{"exact": "/a", "prefix": "/b"}]}}]}),
        );
        assert!(e[0].starts_with("spec.ingress[0].http.paths[0]:"), "{e:?}");
        assert!(serde_json::from_value::<Rule>(json!({"action": "Accept"})).is_err());
        assert!(
            serde_json::from_value::<Rule>(json!({"action": "Allow", "destination": {"port": 80}}))
                .is_err()
        );
    }

    #[test]
    fn policy_rules() {
        let e = np_problems(
            json!({"selector": "all(", "types": ["Egress"], "ingress": [{"action": "Allow"}]}),
        );
        assert!(e.iter().any(|e| e.starts_with("spec.selector:")), "{e:?}");
        assert!(
            e.iter()
                .any(|e| e == "spec.ingress: has rules but spec.types does not include Ingress"),
            "{e:?}"
        );
        let e = np_problems(json!({"types": ["Ingress", "Ingress"]}));
        assert!(e[0].starts_with("spec.types[1]:"), "{e:?}");
        let e = np_problems(json!({"tier": "Not.A.Tier"}));
        assert!(e[0].starts_with("spec.tier:"), "{e:?}");
        assert!(
            serde_json::from_value::<NetworkPolicySpec>(json!({"doNotTrack": true})).is_err(),
            "GNP-only field"
        );
        let e = gnp_problems(json!({"doNotTrack": true, "preDNAT": true}));
        assert!(e.iter().any(|e| e.starts_with("spec.preDNAT:")), "{e:?}");
        assert!(
            e.iter().any(|e| e.starts_with("spec.applyOnForward:")),
            "{e:?}"
        );
        let e = gnp_problems(
            json!({"preDNAT": true, "applyOnForward": true, "egress": [{"action": "Allow"}]}),
        );
        assert!(
            e.iter()
                .any(|e| e == "spec.egress: preDNAT policies cannot have egress rules"),
            "{e:?}"
        );
        assert!(
            gnp_problems(
                json!({"preDNAT": true, "applyOnForward": true, "namespaceSelector": "global()",
                                    "ingress": [{"action": "Deny"}]})
            )
            .is_empty()
        );
    }

    #[test]
    fn orders_print_as_calicoctl_does() {
        let spec: NetworkPolicySpec = serde_json::from_value(json!({"order": 1000})).unwrap();
        assert_eq!(spec.order, Some(1000.0));
        assert_eq!(serde_json::to_value(&spec).unwrap(), json!({"order": 1000}));
        let spec: NetworkPolicySpec = serde_json::from_value(json!({"order": 10.5})).unwrap();
        assert_eq!(serde_json::to_value(&spec).unwrap(), json!({"order": 10.5}));
    }

    #[test]
    fn tiers_and_profiles() {
        let mut t = TierSpec::default();
        t.apply_defaults("default");
        assert_eq!(t.order, Some(1_000_000.0));
        assert_eq!(t.default_action, Some(TierAction::Deny));
        let mut t = TierSpec::default();
        t.apply_defaults("security");
        assert_eq!(t.order, None);
        assert!(serde_json::from_value::<TierSpec>(json!({"defaultAction": "Allow"})).is_err());
        let p: ProfileSpec =
            serde_json::from_value(json!({"labelsToApply": {"bad key": "x"}, "ingress": [{}]}))
                .unwrap();
        let mut c = Checker::default();
        p.check(&mut c);
        let e: Vec<String> = c.errors.iter().map(ToString::to_string).collect();
        assert!(
            e.iter().any(|e| e.starts_with("spec.ingress[0].action:")),
            "{e:?}"
        );
        assert!(
            e.iter()
                .any(|e| e.starts_with("spec.labelsToApply.bad key:")),
            "{e:?}"
        );
    }
}
