//! Which learned routes may go into the kernel. The speaker never programs
//! the FIB itself; whoever does (the node agent) checks each best path here
//! first, so that a peer cannot take over the host's own routes: a prefix
//! equal to or inside one of the host's interface subnets, or equal to a
//! node address of the cluster, is refused. Pure functions.

use ipnet::IpNet;
use std::net::IpAddr;

/// Why a learned prefix must not be installed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InstallConflict {
    /// The prefix is one of the host's interface subnets or inside one:
    /// the connected route must stay the way to it.
    #[error("{prefix} is inside the connected subnet {subnet}")]
    Connected {
        /// The learned prefix.
        prefix: IpNet,
        /// The host's subnet it falls in.
        subnet: IpNet,
    },
    /// The prefix is the host route of a node of the cluster: traffic to
    /// that node must keep following the fabric.
    #[error("{prefix} is the address of node {node}")]
    NodeAddress {
        /// The learned prefix.
        prefix: IpNet,
        /// The node address.
        node: IpAddr,
    },
}

/// Checks a learned `prefix` against the host's interface subnets
/// (`connected`, as on the interfaces: host bits are ignored) and the node
/// addresses of the cluster. A default route, or any prefix wider than a
/// connected subnet, is allowed: the installer gives learned routes a metric
/// that leaves the host's own (connected, kernel, static) routes preferred,
/// and the longest match keeps the connected ones in use.
pub fn install_conflict(
    prefix: &IpNet,
    connected: &[IpNet],
    node_addrs: &[IpAddr],
) -> Option<InstallConflict> {
    let prefix = prefix.trunc();
    if let Some(subnet) = connected
        .iter()
        .map(IpNet::trunc)
        .find(|s| s.contains(&prefix))
    {
        return Some(InstallConflict::Connected { prefix, subnet });
    }
    node_addrs
        .iter()
        .find(|a| prefix == IpNet::from(**a))
        .map(|node| InstallConflict::NodeAddress {
            prefix,
            node: *node,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn own_subnets_and_node_addresses_are_refused_defaults_are_not() {
        let connected = [net("198.18.0.1/24"), net("2001:db8::1/64")];
        let nodes: [IpAddr; 2] = ["198.18.0.2".parse().unwrap(), "198.19.5.7".parse().unwrap()];
        let check = |p: &str| install_conflict(&net(p), &connected, &nodes);
        // The peer: 0/0, the node's subnet, another node's address.
        assert_eq!(check("0.0.0.0/0"), None);
        assert_eq!(
            check("198.18.0.0/24"),
            Some(InstallConflict::Connected {
                prefix: net("198.18.0.0/24"),
                subnet: net("198.18.0.0/24")
            })
        );
        assert!(matches!(
            check("198.18.0.2/32"),
            Some(InstallConflict::Connected { .. })
        ));
        assert!(matches!(
            check("198.18.0.128/25"),
            Some(InstallConflict::Connected { .. })
        ));
        assert_eq!(
            check("198.19.5.7/32"),
            Some(InstallConflict::NodeAddress {
                prefix: net("198.19.5.7/32"),
                node: nodes[1]
            })
        );
        assert!(
            check("198.19.5.7/32")
                .unwrap()
                .to_string()
                .contains("node 198.19.5.7")
        );
        // Wider than a connected subnet, or beside it: allowed.
        assert_eq!(check("198.18.0.0/15"), None);
        assert_eq!(check("198.18.1.0/24"), None);
        assert_eq!(check("198.19.5.0/24"), None);
        assert_eq!(check("100.64.0.0/26"), None);
        assert!(matches!(
            check("2001:db8::/80"),
            Some(InstallConflict::Connected { .. })
        ));
        assert_eq!(check("::/0"), None);
    }
}
