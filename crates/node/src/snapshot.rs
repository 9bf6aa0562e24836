//! Reading the store: one consistent-enough list of every resource the agent cares
//! about ([`StoreView`]), and its pure conversion into the plain [`Snapshot`] the
//! desired-state computation takes.

use std::net::Ipv4Addr;

use tabby_api::bgp::BGPConfigurationSpec;
use tabby_api::ippool::EncapMode;
use tabby_api::{Kind, Resource, Spec};
use tabby_client::Client;
use tabby_dataplane::model::parse_mac;
use tabby_ipam::AllocationBlock;

use crate::desired::{
    Advertisement, BlockInfo, NodeInfo, PoolInfo, Snapshot, WorkloadInfo, vxlan_mac_for,
};

/// Raw resources, as listed.
#[derive(Clone, Debug, Default)]
pub struct StoreView {
    /// Nodes.
    pub nodes: Vec<Resource>,
    /// IP pools.
    pub pools: Vec<Resource>,
    /// BGP configurations (`default` and `node.<name>`).
    pub bgp_configs: Vec<Resource>,
    /// BGP peers.
    pub peers: Vec<Resource>,
    /// BGP filters.
    pub filters: Vec<Resource>,
    /// Workload endpoints of every namespace.
    pub workloads: Vec<Resource>,
    /// IPAM blocks.
    pub blocks: Vec<AllocationBlock>,
    /// Network policy resources ([`crate::firewall::POLICY_KINDS`]).
    pub policy: Vec<Resource>,
}

impl StoreView {
    /// Lists everything.
    pub async fn load(client: &Client) -> anyhow::Result<StoreView> {
        let ipam = tabby_client::ipam::ipam_for(client);
        Ok(StoreView {
            nodes: client.list(Kind::Node, None).await?,
            pools: client.list(Kind::IPPool, None).await?,
            bgp_configs: client.list(Kind::BGPConfiguration, None).await?,
            peers: client.list(Kind::BGPPeer, None).await?,
            filters: client.list(Kind::BGPFilter, None).await?,
            workloads: client.list(Kind::WorkloadEndpoint, None).await?,
            blocks: ipam.list_blocks(None).await?,
            policy: {
                let mut all = Vec::new();
                for kind in crate::firewall::POLICY_KINDS {
                    all.extend(client.list(kind, None).await?);
                }
                all
            },
        })
    }

    /// The `default` BGPConfiguration.
    pub fn bgp_config(&self) -> Option<&BGPConfigurationSpec> {
        self.bgp_config_named("default")
    }

    /// A BGPConfiguration by name.
    pub fn bgp_config_named(&self, name: &str) -> Option<&BGPConfigurationSpec> {
        self.bgp_configs.iter().find_map(|r| match &r.spec {
            Spec::BGPConfiguration(s) if r.name() == name => Some(s),
            _ => None,
        })
    }

    /// Converts to the desired-state input.
    pub fn snapshot(&self) -> Snapshot {
        let mut s = Snapshot::default();
        for r in &self.nodes {
            if let Spec::Node(n) = &r.spec {
                let bgp = n.bgp.clone().unwrap_or_default();
                s.nodes.push(NodeInfo {
                    name: r.name().to_string(),
                    ipv4: bgp.ipv4_net(),
                    ipv6: bgp.ipv6_net(),
                    vxlan_tunnel_ip: n
                        .ipv4_vxlan_tunnel_addr
                        .as_deref()
                        .and_then(|a| a.parse::<Ipv4Addr>().ok()),
                    vxlan_mac: n
                        .vxlan_tunnel_mac_addr
                        .as_deref()
                        .and_then(parse_mac)
                        .unwrap_or_else(|| vxlan_mac_for(r.name())),
                });
            }
        }
        for r in &self.pools {
            if let Spec::IPPool(p) = &r.spec
                && let Some(cidr) = p.cidr
            {
                s.pools.push(PoolInfo {
                    name: r.name().to_string(),
                    cidr,
                    ipip: p.ipip_mode.unwrap_or(EncapMode::Never),
                    vxlan: p.vxlan_mode.unwrap_or(EncapMode::Never),
                    nat_outgoing: p.nat_outgoing.unwrap_or(false),
                    disabled: p.disabled.unwrap_or(false),
                    disable_bgp_export: p.disable_bgp_export.unwrap_or(false),
                });
            }
        }
        for b in &self.blocks {
            if b.deleted {
                continue;
            }
            s.blocks.push(BlockInfo {
                cidr: b.cidr,
                host: b.host_affinity().map(str::to_string),
            });
        }
        for r in &self.workloads {
            if let Spec::WorkloadEndpoint(w) = &r.spec {
                let (Some(node), Some(iface)) = (&w.node, &w.interface_name) else {
                    continue;
                };
                s.workloads.push(WorkloadInfo {
                    id: format!("{}/{}", r.namespace().unwrap_or("default"), r.name()),
                    node: node.clone(),
                    interface: iface.clone(),
                    ips: w.ip_networks.clone(),
                });
            }
        }
        if let Some(cfg) = self.bgp_config() {
            for b in cfg
                .service_cluster_ips
                .iter()
                .chain(&cfg.service_external_ips)
            {
                if let Some(c) = b.cidr {
                    s.service_cidrs.push(c);
                }
            }
            for pa in &cfg.prefix_advertisements {
                let Some(cidr) = pa.cidr else { continue };
                let mut adv = Advertisement::default();
                for c in &pa.communities {
                    let value = cfg
                        .communities
                        .iter()
                        .find(|n| &n.name == c)
                        .map(|n| n.value.as_str())
                        .unwrap_or(c.as_str());
                    match parse_community(value) {
                        Some(Community::Standard(v)) => adv.communities.push(v),
                        Some(Community::Large(a, b, c)) => adv.large_communities.push((a, b, c)),
                        None => {}
                    }
                }
                s.prefix_communities.push((cidr, adv));
            }
        }
        s
    }
}

/// A parsed BGP community value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Community {
    /// `a:b` (16-bit halves).
    Standard(u32),
    /// `a:b:c` (32-bit parts).
    Large(u32, u32, u32),
}

/// Parses `a:b` or `a:b:c`.
pub fn parse_community(s: &str) -> Option<Community> {
    let parts: Vec<&str> = s.split(':').collect();
    match parts.as_slice() {
        [a, b] => {
            let a: u16 = a.trim().parse().ok()?;
            let b: u16 = b.trim().parse().ok()?;
            Some(Community::Standard((u32::from(a) << 16) | u32::from(b)))
        }
        [a, b, c] => Some(Community::Large(
            a.trim().parse().ok()?,
            b.trim().parse().ok()?,
            c.trim().parse().ok()?,
        )),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ipnet::IpNet;

    #[test]
    fn communities_parse() {
        assert_eq!(
            parse_community("65000:100"),
            Some(Community::Standard((65000 << 16) | 100))
        );
        assert_eq!(parse_community("1:2:3"), Some(Community::Large(1, 2, 3)));
        assert_eq!(parse_community("70000:1"), None);
        assert_eq!(parse_community("x"), None);
    }

    #[test]
    fn view_converts_to_snapshot() {
        let docs = r#"
apiVersion: projectcalico.org/v3
kind: Node
metadata: {name: n1}
spec:
  bgp: {ipv4Address: 198.18.0.1/24}
  ipv4VXLANTunnelAddr: 100.64.0.1
---
apiVersion: projectcalico.org/v3
kind: IPPool
metadata: {name: p}
spec: {cidr: 100.64.0.0/16, vxlanMode: Always, natOutgoing: true}
---
apiVersion: projectcalico.org/v3
kind: BGPConfiguration
metadata: {name: default}
spec:
  serviceClusterIPs: [{cidr: 198.19.0.0/24}]
  communities: [{name: tag, value: "65000:7"}]
  prefixAdvertisements: [{cidr: 100.64.0.0/16, communities: [tag, "1:2:3"]}]
"#;
        let rs = tabby_api::load::parse_documents(docs, "t.yaml").unwrap();
        let mut v = StoreView::default();
        for r in rs {
            match r.kind() {
                Kind::Node => v.nodes.push(r),
                Kind::IPPool => v.pools.push(r),
                Kind::BGPConfiguration => v.bgp_configs.push(r),
                _ => {}
            }
        }
        let s = v.snapshot();
        assert_eq!(
            s.nodes[0].vxlan_tunnel_ip,
            Some("100.64.0.1".parse().unwrap())
        );
        assert_eq!(s.nodes[0].vxlan_mac, vxlan_mac_for("n1"));
        assert_eq!(s.pools[0].vxlan, EncapMode::Always);
        assert!(s.pools[0].nat_outgoing);
        assert_eq!(
            s.service_cidrs,
            vec!["198.19.0.0/24".parse::<IpNet>().unwrap()]
        );
        assert_eq!(
            s.prefix_communities[0].1.communities,
            vec![(65000 << 16) | 7]
        );
        assert_eq!(s.prefix_communities[0].1.large_communities, vec![(1, 2, 3)]);
    }
}
