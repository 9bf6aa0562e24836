//! Node: a host running Tabby, with the addresses it peers from, its AS number
//! (inherited from the cluster when unset), route-reflector cluster ID and tunnel
//! endpoints, plus the status the agent reports (WireGuard keys, pod CIDRs).

use std::net::Ipv4Addr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::asn::ASNumber;
use crate::net;
use crate::validate::{Checker, Family};

/// `spec.bgp` of a Node.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeBGPSpec {
    /// The node's AS; unset means the cluster's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub as_number: Option<ASNumber>,
    /// IPv4 address and subnet, e.g. `10.0.0.1/24` (the subnet decides CrossSubnet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv4_address: Option<String>,
    /// IPv6 address and subnet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6_address: Option<String>,
    /// Address of the node's IPIP tunnel device.
    #[serde(
        default,
        rename = "ipv4IPIPTunnelAddr",
        skip_serializing_if = "Option::is_none"
    )]
    pub ipv4_ipip_tunnel_addr: Option<String>,
    /// Route-reflector cluster ID (IPv4 form); set, the node is a route reflector.
    #[serde(
        default,
        rename = "routeReflectorClusterID",
        skip_serializing_if = "Option::is_none"
    )]
    pub route_reflector_cluster_id: Option<String>,
}

/// One orchestrator's name for the node.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OrchRef {
    /// The node's name in the orchestrator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    /// The orchestrator, e.g. `k8s`.
    #[serde(default)]
    pub orchestrator: String,
}

/// WireGuard tunnel addresses of a node.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeWireguardSpec {
    /// IPv4 address of the WireGuard device.
    #[serde(
        default,
        rename = "interfaceIPv4Address",
        skip_serializing_if = "Option::is_none"
    )]
    pub interface_ipv4_address: Option<String>,
    /// IPv6 address of the WireGuard device.
    #[serde(
        default,
        rename = "interfaceIPv6Address",
        skip_serializing_if = "Option::is_none"
    )]
    pub interface_ipv6_address: Option<String>,
}

/// What a node address is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum NodeAddressType {
    /// The address Calico picked for BGP.
    #[serde(rename = "CalicoNodeIP")]
    CalicoNodeIp,
    /// The orchestrator's internal address.
    #[serde(rename = "InternalIP")]
    InternalIp,
    /// The orchestrator's external address.
    #[serde(rename = "ExternalIP")]
    ExternalIp,
}

/// One of a node's addresses.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeAddress {
    /// An address, optionally with a prefix length.
    #[serde(default)]
    pub address: String,
    /// What it is.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub type_: Option<NodeAddressType>,
}

/// One of a node's interfaces.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeInterface {
    /// The interface name.
    #[serde(default)]
    pub name: String,
    /// Its addresses.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<String>,
}

/// `spec` of a Node.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeSpec {
    /// BGP settings; absent on nodes that do not run BGP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bgp: Option<NodeBGPSpec>,
    /// Address of the node's IPv4 VXLAN device.
    #[serde(
        default,
        rename = "ipv4VXLANTunnelAddr",
        skip_serializing_if = "Option::is_none"
    )]
    pub ipv4_vxlan_tunnel_addr: Option<String>,
    /// MAC of the node's IPv4 VXLAN device.
    #[serde(
        default,
        rename = "vxlanTunnelMACAddr",
        skip_serializing_if = "Option::is_none"
    )]
    pub vxlan_tunnel_mac_addr: Option<String>,
    /// Address of the node's IPv6 VXLAN device.
    #[serde(
        default,
        rename = "ipv6VXLANTunnelAddr",
        skip_serializing_if = "Option::is_none"
    )]
    pub ipv6_vxlan_tunnel_addr: Option<String>,
    /// MAC of the node's IPv6 VXLAN device.
    #[serde(
        default,
        rename = "vxlanTunnelMACAddrV6",
        skip_serializing_if = "Option::is_none"
    )]
    pub vxlan_tunnel_mac_addr_v6: Option<String>,
    /// The node's names in orchestrators.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub orch_refs: Vec<OrchRef>,
    /// WireGuard device addresses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wireguard: Option<NodeWireguardSpec>,
    /// The node's addresses.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<NodeAddress>,
    /// The node's interfaces.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<NodeInterface>,
}

/// `status` of a Node, written by its agent.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeStatus {
    /// The node's WireGuard public key (IPv4 device).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wireguard_public_key: Option<String>,
    /// The node's WireGuard public key (IPv6 device).
    #[serde(
        default,
        rename = "wireguardPublicKeyV6",
        skip_serializing_if = "Option::is_none"
    )]
    pub wireguard_public_key_v6: Option<String>,
    /// Pod CIDRs the orchestrator assigned.
    #[serde(default, rename = "podCIDRs", skip_serializing_if = "Vec::is_empty")]
    pub pod_cidrs: Vec<String>,
}

impl NodeBGPSpec {
    /// The IPv4 address and subnet (a bare address is a /32).
    pub fn ipv4_net(&self) -> Option<IpNet> {
        self.ipv4_address.as_deref().and_then(net::parse_net)
    }

    /// The IPv6 address and subnet (a bare address is a /128).
    pub fn ipv6_net(&self) -> Option<IpNet> {
        self.ipv6_address.as_deref().and_then(net::parse_net)
    }

    /// The route-reflector cluster ID, when the node is a route reflector.
    pub fn route_reflector_cluster_id(&self) -> Option<Ipv4Addr> {
        self.route_reflector_cluster_id.as_deref()?.parse().ok()
    }
}

impl NodeSpec {
    pub(crate) fn check(&self, c: &mut Checker) {
        if let Some(bgp) = &self.bgp {
            c.ip_with_prefix(
                "spec.bgp.ipv4Address",
                bgp.ipv4_address.as_ref(),
                Family::V4,
            );
            c.ip_with_prefix(
                "spec.bgp.ipv6Address",
                bgp.ipv6_address.as_ref(),
                Family::V6,
            );
            c.ip(
                "spec.bgp.ipv4IPIPTunnelAddr",
                bgp.ipv4_ipip_tunnel_addr.as_ref(),
                Family::V4,
            );
            c.ip(
                "spec.bgp.routeReflectorClusterID",
                bgp.route_reflector_cluster_id.as_ref(),
                Family::V4,
            );
        }
        c.ip(
            "spec.ipv4VXLANTunnelAddr",
            self.ipv4_vxlan_tunnel_addr.as_ref(),
            Family::V4,
        );
        c.ip(
            "spec.ipv6VXLANTunnelAddr",
            self.ipv6_vxlan_tunnel_addr.as_ref(),
            Family::V6,
        );
        c.mac(
            "spec.vxlanTunnelMACAddr",
            self.vxlan_tunnel_mac_addr.as_ref(),
        );
        c.mac(
            "spec.vxlanTunnelMACAddrV6",
            self.vxlan_tunnel_mac_addr_v6.as_ref(),
        );
        for (i, r) in self.orch_refs.iter().enumerate() {
            if r.orchestrator.is_empty() {
                c.err(format!("spec.orchRefs[{i}].orchestrator"), "is required");
            }
        }
        if let Some(wg) = &self.wireguard {
            c.ip(
                "spec.wireguard.interfaceIPv4Address",
                wg.interface_ipv4_address.as_ref(),
                Family::V4,
            );
            c.ip(
                "spec.wireguard.interfaceIPv6Address",
                wg.interface_ipv6_address.as_ref(),
                Family::V6,
            );
        }
        for (i, a) in self.addresses.iter().enumerate() {
            if net::parse_net(&a.address).is_none() {
                c.err(
                    format!("spec.addresses[{i}].address"),
                    format!(
                        "{:?} is not an IP address with an optional /prefix",
                        a.address
                    ),
                );
            }
        }
        for (i, iface) in self.interfaces.iter().enumerate() {
            c.interface_name(
                &format!("spec.interfaces[{i}].name"),
                Some(&iface.name),
                false,
            );
            for (j, a) in iface.addresses.iter().enumerate() {
                if net::parse_net(a).is_none() {
                    c.err(
                        format!("spec.interfaces[{i}].addresses[{j}]"),
                        format!("{a:?} is not an IP address with an optional /prefix"),
                    );
                }
            }
        }
    }
}

impl NodeStatus {
    pub(crate) fn check(&self, c: &mut Checker) {
        for (i, cidr) in self.pod_cidrs.iter().enumerate() {
            if net::parse_cidr(cidr).is_none() {
                c.err(
                    format!("status.podCIDRs[{i}]"),
                    format!("{cidr:?} is not a CIDR"),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn problems(v: serde_json::Value) -> Vec<String> {
        let spec: NodeSpec = serde_json::from_value(v).unwrap();
        let mut c = Checker::default();
        spec.check(&mut c);
        c.errors.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn calico_example_is_valid() {
        let v = json!({
            "bgp": {"ipv4Address": "10.0.0.1/24", "asNumber": 64512,
                    "routeReflectorClusterID": "244.0.0.1", "ipv4IPIPTunnelAddr": "192.168.10.1"},
            "ipv4VXLANTunnelAddr": "192.168.10.2",
            "vxlanTunnelMACAddr": "66:2f:bd:ea:7c:01",
            "orchRefs": [{"nodeName": "node1", "orchestrator": "k8s"}],
            "addresses": [{"address": "10.0.0.1/24", "type": "CalicoNodeIP"}],
        });
        assert!(problems(v.clone()).is_empty());
        let spec: NodeSpec = serde_json::from_value(v.clone()).unwrap();
        assert_eq!(serde_json::to_value(&spec).unwrap(), v, "round trip");
        let bgp = spec.bgp.unwrap();
        assert_eq!(bgp.ipv4_net().unwrap().to_string(), "10.0.0.1/24");
        assert_eq!(
            bgp.route_reflector_cluster_id(),
            Some(Ipv4Addr::new(244, 0, 0, 1))
        );
    }

    #[test]
    fn addresses_must_match_their_family() {
        let e = problems(json!({"bgp": {"ipv4Address": "fd00::1/64"}}));
        assert!(e[0].starts_with("spec.bgp.ipv4Address:"), "{e:?}");
        let e = problems(json!({"bgp": {"ipv6Address": "10.0.0.1"}}));
        assert!(e[0].starts_with("spec.bgp.ipv6Address:"), "{e:?}");
        let e = problems(json!({"bgp": {"routeReflectorClusterID": "cluster-1"}}));
        assert!(
            e[0].starts_with("spec.bgp.routeReflectorClusterID:"),
            "{e:?}"
        );
        let e = problems(json!({"ipv4VXLANTunnelAddr": "10.0.0.1/32", "vxlanTunnelMACAddr": "xx"}));
        assert!(e[0].starts_with("spec.ipv4VXLANTunnelAddr:"), "{e:?}");
        assert!(e[1].starts_with("spec.vxlanTunnelMACAddr:"), "{e:?}");
        let e = problems(json!({"orchRefs": [{"nodeName": "x"}]}));
        assert_eq!(e, ["spec.orchRefs[0].orchestrator: is required"]);
        assert!(serde_json::from_value::<NodeSpec>(json!({"bgp": {"asNumbr": 1}})).is_err());
    }
}
