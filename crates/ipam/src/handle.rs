//! Handles: the owner of a set of addresses (a pod's `<network>.<containerID>`, a node's
//! tunnel), stored at `/calico/ipam/v2/handle/<id>` as per-block address counts, plus the
//! handle names Calico components use.

use std::collections::BTreeMap;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// The default CNI network name, the first part of a pod's handle.
pub const DEFAULT_NETWORK: &str = "k8s-pod-network";

/// The handle Calico uses for Windows' per-block reserved addresses.
pub const WINDOWS_RESERVED_HANDLE: &str = "windows-reserved-ipam-handle";

/// The handle the CNI plugin uses for a container: `<network>.<containerID>`.
pub fn cni_handle(network: &str, container_id: &str) -> String {
    format!("{network}.{container_id}")
}

/// The kinds of per-node tunnel address, each with its own handle and `type` attribute.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TunnelKind {
    /// The IPIP tunnel (`tunl0`).
    Ipip,
    /// The IPv4 VXLAN tunnel (`vxlan.calico`).
    Vxlan,
    /// The IPv6 VXLAN tunnel (`vxlan-v6.calico`).
    VxlanV6,
    /// The IPv4 WireGuard interface.
    Wireguard,
    /// The IPv6 WireGuard interface.
    WireguardV6,
}

impl TunnelKind {
    /// The handle of this tunnel's address on `node`, e.g. `ipip-tunnel-addr-node1`.
    pub fn handle(self, node: &str) -> String {
        let prefix = match self {
            TunnelKind::Ipip => "ipip-tunnel-addr",
            TunnelKind::Vxlan => "vxlan-tunnel-addr",
            TunnelKind::VxlanV6 => "vxlan-v6-tunnel-addr",
            TunnelKind::Wireguard => "wireguard-tunnel-addr",
            TunnelKind::WireguardV6 => "wireguard-v6-tunnel-addr",
        };
        format!("{prefix}-{node}")
    }

    /// The allocation's `type` attribute, as Calico's tunnel address allocator sets it.
    pub fn attribute_type(self) -> &'static str {
        match self {
            TunnelKind::Ipip => "ipipTunnelAddress",
            TunnelKind::Vxlan => "vxlanTunnelAddress",
            TunnelKind::VxlanV6 => "vxlanV6TunnelAddress",
            TunnelKind::Wireguard => "wireguardTunnelAddress",
            TunnelKind::WireguardV6 => "wireguardV6TunnelAddress",
        }
    }

    /// Whether the tunnel carries IPv6 addresses.
    pub fn is_ipv6(self) -> bool {
        matches!(self, TunnelKind::VxlanV6 | TunnelKind::WireguardV6)
    }
}

/// Attribute keys Calico puts on allocations.
pub mod attrs {
    /// The node an address was assigned on.
    pub const NODE: &str = "node";
    /// The pod name.
    pub const POD: &str = "pod";
    /// The pod namespace.
    pub const NAMESPACE: &str = "namespace";
    /// Allocation timestamp.
    pub const TIMESTAMP: &str = "timestamp";
    /// The kind of non-pod allocation (e.g. `ipipTunnelAddress`).
    pub const TYPE: &str = "type";
}

/// The value of a handle key: how many addresses the handle holds in each block.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpamHandle {
    /// The handle's id (also the last key segment).
    #[serde(rename = "handleID", default)]
    pub handle_id: String,
    /// Block CIDR (`10.0.0.0/26`) → number of addresses.
    #[serde(default)]
    pub block: BTreeMap<String, u64>,
    /// Soft-delete marker (Kubernetes backends); readers treat `true` as absent.
    #[serde(default)]
    pub deleted: bool,
}

impl IpamHandle {
    /// An empty handle.
    pub fn new(handle_id: impl Into<String>) -> IpamHandle {
        IpamHandle {
            handle_id: handle_id.into(),
            ..IpamHandle::default()
        }
    }

    /// Adds `n` addresses in `block`.
    pub fn increment(&mut self, block: &IpNet, n: u64) {
        *self.block.entry(block.to_string()).or_insert(0) += n;
    }

    /// Removes `n` addresses in `block` (never below zero); drops the entry at zero.
    /// Returns how many were actually removed.
    pub fn decrement(&mut self, block: &IpNet, n: u64) -> u64 {
        let key = block.to_string();
        let Some(count) = self.block.get_mut(&key) else {
            return 0;
        };
        let removed = n.min(*count);
        *count -= removed;
        if *count == 0 {
            self.block.remove(&key);
        }
        removed
    }

    /// Total addresses held.
    pub fn total(&self) -> u64 {
        self.block.values().sum()
    }

    /// Holds nothing.
    pub fn is_empty(&self) -> bool {
        self.total() == 0
    }

    /// The handle's count in `block`.
    pub fn count_in(&self, block: &IpNet) -> u64 {
        self.block.get(&block.to_string()).copied().unwrap_or(0)
    }
}

/// Checks that a handle or host name can be a datastore key segment.
pub(crate) fn check_key_segment(what: &str, s: &str) -> Result<(), crate::error::IpamError> {
    if s.is_empty() || s.contains('/') || s.chars().any(char::is_control) {
        return Err(crate::error::IpamError::InvalidArgument(format!(
            "{what} {s:?} must be non-empty and contain no '/' or control characters"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts() {
        let b: IpNet = "10.0.0.0/26".parse().unwrap();
        let mut h = IpamHandle::new("k8s-pod-network.abc");
        h.increment(&b, 2);
        assert_eq!(
            serde_json::to_string(&h).unwrap(),
            r#"{"handleID":"k8s-pod-network.abc","block":{"10.0.0.0/26":2},"deleted":false}"#
        );
        assert_eq!(h.decrement(&b, 5), 2);
        assert!(h.is_empty());
        assert!(h.block.is_empty());
    }

    #[test]
    fn names() {
        assert_eq!(cni_handle(DEFAULT_NETWORK, "c1"), "k8s-pod-network.c1");
        assert_eq!(TunnelKind::VxlanV6.handle("n1"), "vxlan-v6-tunnel-addr-n1");
        assert!(check_key_segment("handle", "a/b").is_err());
        assert!(check_key_segment("handle", "").is_err());
    }
}
