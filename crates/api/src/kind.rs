//! The resource kinds of `projectcalico.org/v3` that Tabby knows: their names in
//! manifests, the lower-case plurals that key them in the datastore, and the
//! plural, singular and short names `tabbyctl` accepts on the command line.

use std::fmt;

/// One `projectcalico.org/v3` resource kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// A range of addresses pods (and tunnels) get IPs from.
    IPPool,
    /// Cluster-wide IPAM settings; the one resource is named `default`.
    IPAMConfiguration,
    /// Cluster-wide (`default`) or per-node (`node.<name>`) BGP settings.
    BGPConfiguration,
    /// A BGP peering.
    BGPPeer,
    /// Import/export rules that BGP peers refer to by name.
    BGPFilter,
    /// A Calico node: its BGP addresses, AS number and tunnel addresses.
    Node,
    /// A pod's (or VM's) network interface. Namespaced.
    WorkloadEndpoint,
    /// A host interface that policy applies to.
    HostEndpoint,
    /// A policy in one namespace. Namespaced.
    NetworkPolicy,
    /// A policy for the whole cluster.
    GlobalNetworkPolicy,
    /// Named CIDRs in one namespace that selectors can match. Namespaced.
    NetworkSet,
    /// Named CIDRs for the whole cluster.
    GlobalNetworkSet,
    /// Rules and labels shared by the endpoints that name the profile.
    Profile,
    /// Data plane agent settings: `default` or `node.<name>`.
    FelixConfiguration,
    /// An ordered group of policies.
    Tier,
}

/// Every kind, in the order `tabbyctl` lists them.
const ALL: [Kind; 15] = [
    Kind::IPPool,
    Kind::IPAMConfiguration,
    Kind::BGPConfiguration,
    Kind::BGPPeer,
    Kind::BGPFilter,
    Kind::Node,
    Kind::WorkloadEndpoint,
    Kind::HostEndpoint,
    Kind::NetworkPolicy,
    Kind::GlobalNetworkPolicy,
    Kind::NetworkSet,
    Kind::GlobalNetworkSet,
    Kind::Profile,
    Kind::FelixConfiguration,
    Kind::Tier,
];

impl Kind {
    /// Every kind Tabby knows.
    pub fn all() -> &'static [Kind] {
        &ALL
    }

    /// The `kind:` value in manifests, e.g. `IPPool`.
    pub fn name(self) -> &'static str {
        match self {
            Kind::IPPool => "IPPool",
            Kind::IPAMConfiguration => "IPAMConfiguration",
            Kind::BGPConfiguration => "BGPConfiguration",
            Kind::BGPPeer => "BGPPeer",
            Kind::BGPFilter => "BGPFilter",
            Kind::Node => "Node",
            Kind::WorkloadEndpoint => "WorkloadEndpoint",
            Kind::HostEndpoint => "HostEndpoint",
            Kind::NetworkPolicy => "NetworkPolicy",
            Kind::GlobalNetworkPolicy => "GlobalNetworkPolicy",
            Kind::NetworkSet => "NetworkSet",
            Kind::GlobalNetworkSet => "GlobalNetworkSet",
            Kind::Profile => "Profile",
            Kind::FelixConfiguration => "FelixConfiguration",
            Kind::Tier => "Tier",
        }
    }

    /// The lower-case plural that keys the kind in the datastore, as in Calico's
    /// etcd layout (`/calico/resources/v3/projectcalico.org/ippools/...`).
    pub fn plural(self) -> &'static str {
        match self {
            Kind::IPPool => "ippools",
            Kind::IPAMConfiguration => "ipamconfigurations",
            Kind::BGPConfiguration => "bgpconfigurations",
            Kind::BGPPeer => "bgppeers",
            Kind::BGPFilter => "bgpfilters",
            Kind::Node => "nodes",
            Kind::WorkloadEndpoint => "workloadendpoints",
            Kind::HostEndpoint => "hostendpoints",
            Kind::NetworkPolicy => "networkpolicies",
            Kind::GlobalNetworkPolicy => "globalnetworkpolicies",
            Kind::NetworkSet => "networksets",
            Kind::GlobalNetworkSet => "globalnetworksets",
            Kind::Profile => "profiles",
            Kind::FelixConfiguration => "felixconfigurations",
            Kind::Tier => "tiers",
        }
    }

    /// Whether resources of this kind live in a namespace.
    pub fn namespaced(self) -> bool {
        matches!(
            self,
            Kind::NetworkPolicy | Kind::NetworkSet | Kind::WorkloadEndpoint
        )
    }

    /// Whether resources of this kind carry a `status` section.
    pub fn has_status(self) -> bool {
        matches!(self, Kind::IPPool | Kind::Node)
    }

    /// The names the command line accepts besides the plural, as calicoctl's
    /// resource managers define them (all lower case).
    fn cli_aliases(self) -> &'static [&'static str] {
        match self {
            Kind::IPPool => &["ippool", "ipp", "ipps", "pool", "pools"],
            Kind::IPAMConfiguration => &["ipamconfiguration", "ipamconfig", "ipamconfigs"],
            Kind::BGPConfiguration => &["bgpconfiguration", "bgpconfig", "bgpconfigs"],
            Kind::BGPPeer => &["bgppeer", "bgpp", "bgpps", "bp", "bps"],
            Kind::BGPFilter => &["bgpfilter"],
            Kind::Node => &["node", "no", "nos"],
            Kind::WorkloadEndpoint => &["workloadendpoint", "wep", "weps"],
            Kind::HostEndpoint => &["hostendpoint", "hep", "heps"],
            Kind::NetworkPolicy => &[
                "networkpolicy",
                "policy",
                "policies",
                "pol",
                "pols",
                "np",
                "nps",
            ],
            Kind::GlobalNetworkPolicy => &["globalnetworkpolicy", "gnp", "gnps"],
            Kind::NetworkSet => &["networkset", "netset", "netsets"],
            Kind::GlobalNetworkSet => &["globalnetworkset"],
            Kind::Profile => &["profile", "pro", "pros"],
            Kind::FelixConfiguration => &["felixconfiguration", "felixconfig", "felixconfigs"],
            Kind::Tier => &["tier"],
        }
    }

    /// The kind named on the command line: plural, singular or short name, any case
    /// (`ippools`, `IPPool`, `ipp`).
    pub fn from_cli_name(name: &str) -> Option<Kind> {
        let lower = name.to_ascii_lowercase();
        ALL.iter()
            .copied()
            .find(|k| k.plural() == lower || k.cli_aliases().contains(&lower.as_str()))
    }

    /// The kind of a manifest's `kind:` field (exact case). Calico's v1 name
    /// `IPAMConfig` is accepted for [`Kind::IPAMConfiguration`].
    pub fn from_manifest_name(name: &str) -> Option<Kind> {
        if name == "IPAMConfig" {
            return Some(Kind::IPAMConfiguration);
        }
        ALL.iter().copied().find(|k| k.name() == name)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_names_resolve() {
        assert_eq!(Kind::from_cli_name("ippools"), Some(Kind::IPPool));
        assert_eq!(Kind::from_cli_name("IPPool"), Some(Kind::IPPool));
        assert_eq!(Kind::from_cli_name("ipp"), Some(Kind::IPPool));
        assert_eq!(
            Kind::from_cli_name("bgpconfig"),
            Some(Kind::BGPConfiguration)
        );
        assert_eq!(Kind::from_cli_name("np"), Some(Kind::NetworkPolicy));
        assert_eq!(Kind::from_cli_name("gnp"), Some(Kind::GlobalNetworkPolicy));
        assert_eq!(Kind::from_cli_name("wep"), Some(Kind::WorkloadEndpoint));
        assert_eq!(Kind::from_cli_name("ippoolz"), None);
    }

    #[test]
    fn names_are_unique_and_round_trip() {
        let mut seen = std::collections::BTreeSet::new();
        for k in Kind::all() {
            assert_eq!(Kind::from_manifest_name(k.name()), Some(*k));
            assert_eq!(Kind::from_cli_name(k.plural()), Some(*k));
            assert_eq!(Kind::from_cli_name(k.name()), Some(*k));
            assert!(seen.insert(k.plural()), "{k}");
            for alias in k.cli_aliases() {
                assert!(seen.insert(alias), "{alias} twice");
            }
        }
        assert_eq!(
            Kind::from_manifest_name("IPAMConfig"),
            Some(Kind::IPAMConfiguration)
        );
        assert_eq!(Kind::from_manifest_name("ippool"), None);
    }

    #[test]
    fn namespaced_kinds() {
        let ns: Vec<Kind> = Kind::all()
            .iter()
            .copied()
            .filter(|k| k.namespaced())
            .collect();
        assert_eq!(
            ns,
            [
                Kind::WorkloadEndpoint,
                Kind::NetworkPolicy,
                Kind::NetworkSet
            ]
        );
    }
}
