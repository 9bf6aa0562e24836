//! The resource envelope shared by every kind, `apiVersion` / `kind` / `metadata` /
//! `spec` / `status`, with a typed spec per kind, and the entry points that fill
//! defaults, validate a resource on its own and validate an update against the
//! stored version.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

use crate::API_VERSION;
use crate::bgp::{BGPConfigurationSpec, BGPFilterSpec, BGPPeerSpec};
use crate::endpoint::{HostEndpointSpec, WorkloadEndpointSpec};
use crate::felix::FelixConfigurationSpec;
use crate::ippool::{self, IPAMConfigurationSpec, IPPoolSpec, IPPoolStatus};
use crate::kind::Kind;
use crate::meta::ObjectMeta;
use crate::node::{NodeSpec, NodeStatus};
use crate::policy::{
    GlobalNetworkPolicySpec, NetworkPolicySpec, NetworkSetSpec, ProfileSpec, TierSpec,
};
use crate::validate::{Checker, ValidationError};

/// The typed `spec` of a resource; the variant decides the kind.
#[derive(Clone, Debug, PartialEq)]
pub enum Spec {
    /// An IPPool.
    IPPool(IPPoolSpec),
    /// The IPAMConfiguration.
    IPAMConfiguration(IPAMConfigurationSpec),
    /// A BGPConfiguration.
    BGPConfiguration(BGPConfigurationSpec),
    /// A BGPPeer.
    BGPPeer(BGPPeerSpec),
    /// A BGPFilter.
    BGPFilter(BGPFilterSpec),
    /// A Node.
    Node(NodeSpec),
    /// A WorkloadEndpoint (boxed: the largest of the common kinds).
    WorkloadEndpoint(Box<WorkloadEndpointSpec>),
    /// A HostEndpoint.
    HostEndpoint(HostEndpointSpec),
    /// A NetworkPolicy.
    NetworkPolicy(NetworkPolicySpec),
    /// A GlobalNetworkPolicy.
    GlobalNetworkPolicy(GlobalNetworkPolicySpec),
    /// A NetworkSet.
    NetworkSet(NetworkSetSpec),
    /// A GlobalNetworkSet.
    GlobalNetworkSet(NetworkSetSpec),
    /// A Profile.
    Profile(ProfileSpec),
    /// A FelixConfiguration (boxed: it has far more fields than any other kind).
    FelixConfiguration(Box<FelixConfigurationSpec>),
    /// A Tier.
    Tier(TierSpec),
}

/// The `status` of the kinds that have one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Status {
    /// An IPPool's status.
    IPPool(IPPoolStatus),
    /// A Node's status.
    Node(NodeStatus),
}

macro_rules! accessors {
    ($($variant:ident, $ty:ty, $get:ident, $get_mut:ident;)*) => {
        impl Spec {
            /// The kind this spec belongs to.
            pub fn kind(&self) -> Kind {
                match self {
                    $(Spec::$variant(_) => Kind::$variant,)*
                }
            }

            /// An empty spec of `kind` (what a manifest without `spec` means).
            pub fn empty(kind: Kind) -> Spec {
                match kind {
                    $(Kind::$variant => Spec::$variant(Default::default()),)*
                }
            }

            fn to_value(&self) -> Result<Value, serde_json::Error> {
                match self {
                    $(Spec::$variant(s) => serde_json::to_value(s),)*
                }
            }

            /// Decodes the `spec` of `kind` from JSON; the error carries the field path.
            pub(crate) fn from_value(
                kind: Kind,
                v: Value,
            ) -> Result<Spec, serde_path_to_error::Error<serde_json::Error>> {
                Ok(match kind {
                    $(Kind::$variant => Spec::$variant(serde_path_to_error::deserialize(v)?),)*
                })
            }

            $(
                #[doc = concat!("The spec if this is a ", stringify!($variant), ".")]
                pub fn $get(&self) -> Option<&$ty> {
                    match self {
                        Spec::$variant(s) => {
                            let s: &$ty = s;
                            Some(s)
                        }
                        _ => None,
                    }
                }

                #[doc = concat!("The spec, mutably, if this is a ", stringify!($variant), ".")]
                pub fn $get_mut(&mut self) -> Option<&mut $ty> {
                    match self {
                        Spec::$variant(s) => {
                            let s: &mut $ty = s;
                            Some(s)
                        }
                        _ => None,
                    }
                }
            )*
        }
    };
}

accessors! {
    IPPool, IPPoolSpec, as_ip_pool, as_ip_pool_mut;
    IPAMConfiguration, IPAMConfigurationSpec, as_ipam_configuration, as_ipam_configuration_mut;
    BGPConfiguration, BGPConfigurationSpec, as_bgp_configuration, as_bgp_configuration_mut;
    BGPPeer, BGPPeerSpec, as_bgp_peer, as_bgp_peer_mut;
    BGPFilter, BGPFilterSpec, as_bgp_filter, as_bgp_filter_mut;
    Node, NodeSpec, as_node, as_node_mut;
    WorkloadEndpoint, WorkloadEndpointSpec, as_workload_endpoint, as_workload_endpoint_mut;
    HostEndpoint, HostEndpointSpec, as_host_endpoint, as_host_endpoint_mut;
    NetworkPolicy, NetworkPolicySpec, as_network_policy, as_network_policy_mut;
    GlobalNetworkPolicy, GlobalNetworkPolicySpec, as_global_network_policy, as_global_network_policy_mut;
    NetworkSet, NetworkSetSpec, as_network_set, as_network_set_mut;
    GlobalNetworkSet, NetworkSetSpec, as_global_network_set, as_global_network_set_mut;
    Profile, ProfileSpec, as_profile, as_profile_mut;
    FelixConfiguration, FelixConfigurationSpec, as_felix_configuration, as_felix_configuration_mut;
    Tier, TierSpec, as_tier, as_tier_mut;
}

impl Status {
    /// The kind this status belongs to.
    pub fn kind(&self) -> Kind {
        match self {
            Status::IPPool(_) => Kind::IPPool,
            Status::Node(_) => Kind::Node,
        }
    }

    fn to_value(&self) -> Result<Value, serde_json::Error> {
        match self {
            Status::IPPool(s) => serde_json::to_value(s),
            Status::Node(s) => serde_json::to_value(s),
        }
    }

    /// Decodes the `status` of `kind`; `None` for kinds without a status.
    pub(crate) fn from_value(
        kind: Kind,
        v: Value,
    ) -> Option<Result<Status, serde_path_to_error::Error<serde_json::Error>>> {
        match kind {
            Kind::IPPool => Some(serde_path_to_error::deserialize(v).map(Status::IPPool)),
            Kind::Node => Some(serde_path_to_error::deserialize(v).map(Status::Node)),
            _ => None,
        }
    }
}

/// One `projectcalico.org/v3` resource.
#[derive(Clone, Debug, PartialEq)]
pub struct Resource {
    /// Name, namespace, labels, annotations and server-owned fields.
    pub metadata: ObjectMeta,
    /// The kind-specific settings.
    pub spec: Spec,
    /// What the system reports (IPPool and Node only).
    pub status: Option<Status>,
}

impl Resource {
    /// A resource of `kind` with an empty spec.
    pub fn new(kind: Kind, name: &str, namespace: Option<&str>) -> Resource {
        Resource {
            metadata: ObjectMeta::named(name, namespace),
            spec: Spec::empty(kind),
            status: None,
        }
    }

    /// A resource with the given spec.
    pub fn with_spec(name: &str, namespace: Option<&str>, spec: Spec) -> Resource {
        Resource {
            metadata: ObjectMeta::named(name, namespace),
            spec,
            status: None,
        }
    }

    /// The resource's kind.
    pub fn kind(&self) -> Kind {
        self.spec.kind()
    }

    /// `metadata.name`.
    pub fn name(&self) -> &str {
        &self.metadata.name
    }

    /// `metadata.namespace`.
    pub fn namespace(&self) -> Option<&str> {
        self.metadata.namespace.as_deref()
    }

    /// `metadata.labels`.
    pub fn labels(&self) -> &BTreeMap<String, String> {
        &self.metadata.labels
    }

    /// `metadata.annotations`.
    pub fn annotations(&self) -> &BTreeMap<String, String> {
        &self.metadata.annotations
    }

    /// `metadata.resourceVersion`.
    pub fn resource_version(&self) -> Option<&str> {
        self.metadata.resource_version.as_deref()
    }

    /// Sets or clears `metadata.resourceVersion`.
    pub fn set_resource_version(&mut self, rv: Option<String>) {
        self.metadata.resource_version = rv;
    }

    /// `name`, or `namespace/name` for namespaced kinds with a namespace.
    pub fn display_name(&self) -> String {
        match self.namespace() {
            Some(ns) if self.kind().namespaced() => format!("{ns}/{}", self.name()),
            _ => self.name().to_string(),
        }
    }

    /// Fills Calico's defaults: pool block size and modes, policy tier and types,
    /// tier orders, IPAM flags. Cluster-scoped kinds lose any namespace.
    pub fn apply_defaults(&mut self) {
        let kind = self.kind();
        if !kind.namespaced() {
            self.metadata.namespace = None;
        }
        match &mut self.spec {
            Spec::IPPool(s) => s.apply_defaults(),
            Spec::IPAMConfiguration(s) => s.apply_defaults(),
            Spec::NetworkPolicy(s) => s.apply_defaults(),
            Spec::GlobalNetworkPolicy(s) => s.apply_defaults(),
            Spec::Tier(s) => s.apply_defaults(&self.metadata.name),
            _ => {}
        }
    }

    /// Checks every rule that needs only this resource; reports all problems found.
    pub fn validate(&self) -> Result<(), ValidationError> {
        let kind = self.kind();
        let mut c = Checker::default();
        self.metadata.check(kind, &mut c);
        match &self.spec {
            Spec::IPPool(s) => s.check(&mut c),
            Spec::IPAMConfiguration(s) => s.check(&self.metadata, &mut c),
            Spec::BGPConfiguration(s) => s.check(&self.metadata, &mut c),
            Spec::BGPPeer(s) => s.check(&mut c),
            Spec::BGPFilter(s) => s.check(&mut c),
            Spec::Node(s) => s.check(&mut c),
            Spec::WorkloadEndpoint(s) => s.check(&self.metadata, &mut c),
            Spec::HostEndpoint(s) => s.check(&mut c),
            Spec::NetworkPolicy(s) => s.check(&mut c),
            Spec::GlobalNetworkPolicy(s) => s.check(&mut c),
            Spec::NetworkSet(_) | Spec::GlobalNetworkSet(_) => {}
            Spec::Profile(s) => s.check(&mut c),
            Spec::FelixConfiguration(s) => s.check(&mut c),
            Spec::Tier(s) => s.check(&mut c),
        }
        match &self.status {
            Some(st) if st.kind() != kind => {
                c.err("status", format!("a {} status on a {kind}", st.kind()));
            }
            Some(Status::Node(s)) => s.check(&mut c),
            _ => {}
        }
        c.finish(kind, self.display_name())
    }

    /// The resource as JSON, shaped as Calico writes it (empty fields left out).
    pub fn to_json_value(&self) -> Value {
        let mut m = serde_json::Map::new();
        m.insert("apiVersion".into(), Value::String(API_VERSION.into()));
        m.insert("kind".into(), Value::String(self.kind().name().into()));
        // These types hold only strings, numbers, booleans, lists and string-keyed
        // maps, which always convert to JSON.
        m.insert(
            "metadata".into(),
            serde_json::to_value(&self.metadata).unwrap_or(Value::Null),
        );
        m.insert("spec".into(), self.spec.to_value().unwrap_or(Value::Null));
        if let Some(st) = &self.status {
            m.insert("status".into(), st.to_value().unwrap_or(Value::Null));
        }
        Value::Object(m)
    }
}

impl Serialize for Resource {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.to_json_value().serialize(s)
    }
}

impl<'de> Deserialize<'de> for Resource {
    /// Decodes (without validating) from any self-describing format.
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Resource, D::Error> {
        let v = Value::deserialize(d)?;
        crate::load::from_json_value(v, "resource").map_err(serde::de::Error::custom)
    }
}

/// Checks a change from the stored `old` to `new`: kind, name and namespace stay,
/// and so do immutable fields (an IPPool's CIDR and block size).
pub fn validate_update(old: &Resource, new: &Resource) -> Result<(), ValidationError> {
    let mut c = Checker::default();
    if old.kind() != new.kind() {
        c.err(
            "kind",
            format!("cannot change from {} to {}", old.kind(), new.kind()),
        );
    }
    if old.name() != new.name() {
        c.err(
            "metadata.name",
            format!("cannot change from {:?} to {:?}", old.name(), new.name()),
        );
    }
    if new.kind().namespaced() && old.namespace() != new.namespace() {
        c.err(
            "metadata.namespace",
            format!(
                "cannot change from {:?} to {:?}",
                old.namespace().unwrap_or(""),
                new.namespace().unwrap_or("")
            ),
        );
    }
    if let (Some(a), Some(b)) = (old.spec.as_ip_pool(), new.spec.as_ip_pool()) {
        ippool::check_pool_update(a, b, &mut c);
    }
    c.finish(new.kind(), new.display_name())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn new_resources_have_empty_specs_of_their_kind() {
        for kind in Kind::all() {
            let r = Resource::new(*kind, "x", None);
            assert_eq!(r.kind(), *kind);
            let v = r.to_json_value();
            assert_eq!(v["kind"], kind.name());
            assert_eq!(v["apiVersion"], "projectcalico.org/v3");
            assert_eq!(v["spec"], json!({}));
            let back = crate::load::from_json_value(v, "test").unwrap();
            assert_eq!(back, r);
        }
    }

    #[test]
    fn defaults_are_idempotent_and_clear_namespaces_of_global_kinds() {
        let mut r = Resource::new(Kind::IPPool, "p", Some("default"));
        r.spec.as_ip_pool_mut().unwrap().cidr = Some("10.0.0.0/16".parse().unwrap());
        r.apply_defaults();
        assert_eq!(r.namespace(), None);
        let once = r.clone();
        r.apply_defaults();
        assert_eq!(r, once);
        let mut np = Resource::new(Kind::NetworkPolicy, "np", Some("prod"));
        np.apply_defaults();
        assert_eq!(np.namespace(), Some("prod"));
        assert_eq!(np.display_name(), "prod/np");
    }

    #[test]
    fn validation_names_kind_resource_and_fields() {
        let mut r = Resource::new(Kind::IPPool, "bad-pool", None);
        let spec = r.spec.as_ip_pool_mut().unwrap();
        spec.cidr = Some("100.66.0.1/16".parse().unwrap());
        spec.block_size = Some(19);
        let e = r.validate().unwrap_err();
        assert_eq!(
            e.to_string(),
            "IPPool \"bad-pool\": spec.cidr: 100.66.0.1/16 has host bits set; the network is 100.66.0.0/16; spec.blockSize: 19 is outside 20..=32 for IPv4"
        );
        assert_eq!(e.errors.len(), 2);
        let mut r = Resource::new(Kind::IPAMConfiguration, "default", None);
        r.status = Some(Status::Node(NodeStatus::default()));
        assert!(
            r.validate()
                .unwrap_err()
                .to_string()
                .contains("status: a Node status")
        );
    }

    #[test]
    fn updates_keep_identity_and_pool_cidrs() {
        let mut old = Resource::new(Kind::IPPool, "p", None);
        old.spec.as_ip_pool_mut().unwrap().cidr = Some("10.0.0.0/16".parse().unwrap());
        old.apply_defaults();
        let mut new = old.clone();
        new.spec.as_ip_pool_mut().unwrap().nat_outgoing = Some(true);
        assert!(validate_update(&old, &new).is_ok());
        new.spec.as_ip_pool_mut().unwrap().cidr = Some("10.1.0.0/16".parse().unwrap());
        let e = validate_update(&old, &new).unwrap_err().to_string();
        assert!(e.contains("spec.cidr: cannot be changed"), "{e}");
        let other = Resource::new(Kind::Node, "q", None);
        let e = validate_update(&old, &other).unwrap_err().to_string();
        assert!(
            e.contains("kind: cannot change") && e.contains("metadata.name"),
            "{e}"
        );
    }

    #[test]
    fn serde_traits_go_through_the_loader() {
        let r: Resource = serde_json::from_value(json!({
            "apiVersion": "projectcalico.org/v3", "kind": "Node",
            "metadata": {"name": "n1"}, "spec": {"bgp": {"ipv4Address": "10.0.0.1/24"}}
        }))
        .unwrap();
        assert_eq!(r.kind(), Kind::Node);
        assert_eq!(serde_json::to_value(&r).unwrap(), r.to_json_value());
        assert!(serde_json::from_value::<Resource>(json!({"kind": "Node"})).is_err());
    }
}
