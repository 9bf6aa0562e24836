//! The IPAM view of IP pools and the pure pool-selection rules: which pools a request
//! may use (`determine_pools`, then the `allowedUses` filter) and which pool and block
//! an address belongs to. The integrator builds [`PoolInfo`] from the API's `IPPool`.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use tabby_selector::Selector;

use crate::error::IpamError;
use crate::ipmath::{self, IpFamily};
use crate::random_block;

/// What addresses of a pool may be used for (Calico's `IPPoolAllowedUse`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum AllowedUse {
    /// Pod and VM addresses.
    Workload,
    /// Per-node tunnel addresses (IPIP, VXLAN, WireGuard).
    Tunnel,
    /// Service load-balancer addresses.
    LoadBalancer,
}

impl fmt::Display for AllowedUse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AllowedUse::Workload => "Workload",
            AllowedUse::Tunnel => "Tunnel",
            AllowedUse::LoadBalancer => "LoadBalancer",
        })
    }
}

/// Whether a pool is used without being asked for (`Automatic`) or only when a
/// request names it (`Manual`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum AssignmentMode {
    /// Used for any request the selectors allow.
    #[default]
    Automatic,
    /// Used only when a request names the pool.
    Manual,
}

/// An IP pool as IPAM needs to see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolInfo {
    /// The pool's resource name (requests may name pools by this or by CIDR).
    pub name: String,
    /// The pool's CIDR as written; host bits are ignored for matching.
    pub cidr: IpNet,
    /// Prefix length of the pool's blocks (Calico default 26 / 122).
    pub block_size: u8,
    /// A disabled pool gets no new allocations; existing ones stay.
    pub disabled: bool,
    /// Nodes the pool serves; empty means all.
    pub node_selector: String,
    /// Namespaces the pool serves; empty means all.
    pub namespace_selector: String,
    /// What the pool's addresses may be used for.
    pub allowed_uses: Vec<AllowedUse>,
    /// Automatic or manual assignment.
    pub assignment_mode: AssignmentMode,
}

impl PoolInfo {
    /// A pool with Calico's defaults: block size 26 (IPv4) or 122 (IPv6), enabled,
    /// all nodes and namespaces, allowed for workloads and tunnels, automatic.
    pub fn new(name: impl Into<String>, cidr: IpNet) -> PoolInfo {
        let block_size = match IpFamily::of_net(&cidr) {
            IpFamily::V4 => 26,
            IpFamily::V6 => 122,
        };
        PoolInfo {
            name: name.into(),
            cidr,
            block_size,
            disabled: false,
            node_selector: String::new(),
            namespace_selector: String::new(),
            allowed_uses: vec![AllowedUse::Workload, AllowedUse::Tunnel],
            assignment_mode: AssignmentMode::Automatic,
        }
    }

    /// Sets the block size (builder style).
    pub fn with_block_size(mut self, block_size: u8) -> PoolInfo {
        self.block_size = block_size;
        self
    }

    /// The pool's network with host bits cleared.
    pub fn network(&self) -> IpNet {
        self.cidr.trunc()
    }

    /// IPv4 or IPv6.
    pub fn family(&self) -> IpFamily {
        IpFamily::of_net(&self.cidr)
    }

    /// Not disabled.
    pub fn enabled(&self) -> bool {
        !self.disabled
    }

    /// Whether the pool may be used for `use_`.
    pub fn allows(&self, use_: AllowedUse) -> bool {
        self.allowed_uses.contains(&use_)
    }

    /// Whether `ip` is inside the pool.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.network().contains(&ip)
    }

    /// Whether the whole of `net` is inside the pool.
    pub fn contains_net(&self, net: &IpNet) -> bool {
        ipmath::net_within(net, &self.network())
    }

    /// The pool's block holding `ip`.
    pub fn block_for(&self, ip: IpAddr) -> IpNet {
        ipmath::block_cidr_for(ip, self.block_size)
    }

    /// Whether the name or CIDR `requested` designates this pool.
    pub fn is_named(&self, requested: &str) -> bool {
        if self.name == requested {
            return true;
        }
        match requested.parse::<IpNet>() {
            Ok(n) => n.trunc() == self.network(),
            Err(_) => false,
        }
    }

    /// Checks the block layout (the API crate validates pools fully; this guards the
    /// arithmetic IPAM relies on).
    pub fn validate(&self) -> Result<(), IpamError> {
        random_block::check_layout(&self.network(), self.block_size).map_err(|e| {
            IpamError::InvalidPool {
                pool: self.name.clone(),
                reason: e.to_string(),
            }
        })?;
        if ipmath::host_bits(&ipmath::block_cidr_for(
            self.network().network(),
            self.block_size,
        )) > 16
        {
            return Err(IpamError::InvalidPool {
                pool: self.name.clone(),
                reason: format!(
                    "block size /{} holds more than 65536 addresses",
                    self.block_size
                ),
            });
        }
        Ok(())
    }

    /// Whether the pool's node selector matches a node's labels.
    pub fn selects_node(&self, labels: &BTreeMap<String, String>) -> Result<bool, IpamError> {
        self.selector_matches("nodeSelector", &self.node_selector, labels)
    }

    /// Whether the pool's namespace selector matches; with no namespace (host-level
    /// requests such as tunnel addresses) the selector does not apply.
    pub fn selects_namespace(
        &self,
        labels: Option<&BTreeMap<String, String>>,
    ) -> Result<bool, IpamError> {
        match labels {
            Some(l) => self.selector_matches("namespaceSelector", &self.namespace_selector, l),
            None => Ok(true),
        }
    }

    fn selector_matches(
        &self,
        field: &'static str,
        selector: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<bool, IpamError> {
        if selector.trim().is_empty() {
            return Ok(true);
        }
        let parsed = Selector::parse(selector).map_err(|e| IpamError::InvalidSelector {
            pool: self.name.clone(),
            field,
            selector: selector.to_owned(),
            error: e.to_string(),
        })?;
        Ok(parsed.matches(labels))
    }
}

/// The result of [`determine_pools`].
#[derive(Clone, Debug, Default)]
pub struct DeterminedPools<'a> {
    /// Pools the request may use (before the `allowedUses` filter).
    pub selected: Vec<&'a PoolInfo>,
    /// Every enabled pool of the family.
    pub enabled: Vec<&'a PoolInfo>,
}

/// Calico's `determinePools`: the enabled pools of `family`; if `requested` names pools
/// (by name or CIDR) each must exist and be enabled, and they are used as given, ignoring
/// selectors; otherwise every enabled automatic pool whose node selector matches
/// `node_labels` and whose namespace selector matches `namespace_labels`.
pub fn determine_pools<'a>(
    pools: &'a [PoolInfo],
    requested: &[String],
    family: IpFamily,
    node_labels: &BTreeMap<String, String>,
    namespace_labels: Option<&BTreeMap<String, String>>,
) -> Result<DeterminedPools<'a>, IpamError> {
    let enabled: Vec<&PoolInfo> = pools
        .iter()
        .filter(|p| p.family() == family && p.enabled())
        .collect();

    let mut selected = Vec::new();
    for r in requested {
        let pool = pools.iter().find(|p| p.is_named(r));
        match pool {
            Some(p) if p.family() != family => {
                return Err(IpamError::InvalidArgument(format!(
                    "pool {r} requested for {family} addresses is an {} pool",
                    p.family()
                )));
            }
            Some(p) if p.enabled() => {
                if !selected.iter().any(|s: &&PoolInfo| std::ptr::eq(*s, p)) {
                    selected.push(p);
                }
            }
            _ => {
                let shown = match r.parse::<IpNet>() {
                    Ok(n) => n.trunc().to_string(),
                    Err(_) => r.clone(),
                };
                return Err(IpamError::PoolNotUsable(shown));
            }
        }
    }
    if !selected.is_empty() {
        return Ok(DeterminedPools { selected, enabled });
    }

    for p in &enabled {
        if p.assignment_mode == AssignmentMode::Manual {
            continue;
        }
        if p.selects_node(node_labels)? && p.selects_namespace(namespace_labels)? {
            selected.push(*p);
        }
    }
    Ok(DeterminedPools { selected, enabled })
}

/// The pools that allow `use_` (Calico's `filterPoolsByUse`).
pub fn filter_by_use<'a>(pools: &[&'a PoolInfo], use_: AllowedUse) -> Vec<&'a PoolInfo> {
    pools.iter().copied().filter(|p| p.allows(use_)).collect()
}

/// The pool holding `ip`, preferring an enabled one; the most specific wins if pools
/// overlap.
pub fn pool_for_ip(pools: &[PoolInfo], ip: IpAddr) -> Option<&PoolInfo> {
    pools
        .iter()
        .filter(|p| p.contains(ip))
        .max_by_key(|p| (p.enabled(), p.network().prefix_len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(cidr: &str, sel: &str) -> PoolInfo {
        let mut p = PoolInfo::new(cidr, cidr.parse().unwrap());
        p.node_selector = sel.into();
        p
    }

    #[test]
    fn requested_pools_ignore_selectors() {
        let pools = vec![
            pool("10.0.0.1/24", "foo != \"bar\""),
            pool("20.0.0.0/24", ""),
        ];
        let labels = BTreeMap::from([("foo".to_string(), "bar".to_string())]);
        let d = determine_pools(&pools, &[], IpFamily::V4, &labels, None).unwrap();
        assert_eq!(d.selected.len(), 1);
        assert_eq!(d.selected[0].name, "20.0.0.0/24");
        let d =
            determine_pools(&pools, &["10.0.0.0/24".into()], IpFamily::V4, &labels, None).unwrap();
        assert_eq!(d.selected[0].name, "10.0.0.1/24");
        let err = determine_pools(&pools, &["30.0.0.0/24".into()], IpFamily::V4, &labels, None)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "the given pool (30.0.0.0/24) does not exist, or is not enabled"
        );
    }

    #[test]
    fn namespace_selector_and_manual_mode() {
        let mut a = pool("10.0.0.0/24", "");
        a.namespace_selector = "team == 'a'".into();
        let mut m = pool("10.1.0.0/24", "");
        m.assignment_mode = AssignmentMode::Manual;
        let pools = vec![a, m];
        let none = BTreeMap::new();
        let team_b = BTreeMap::from([("team".to_string(), "b".to_string())]);
        let d = determine_pools(&pools, &[], IpFamily::V4, &none, Some(&team_b)).unwrap();
        assert!(d.selected.is_empty());
        let d = determine_pools(&pools, &[], IpFamily::V4, &none, None).unwrap();
        assert_eq!(d.selected.len(), 1);
        let d =
            determine_pools(&pools, &["10.1.0.0/24".into()], IpFamily::V4, &none, None).unwrap();
        assert_eq!(d.selected[0].name, "10.1.0.0/24");
    }

    #[test]
    fn pool_lookup_prefers_enabled() {
        let mut old = pool("10.0.0.0/16", "");
        old.disabled = true;
        let pools = vec![old, pool("10.0.1.0/24", "")];
        let p = pool_for_ip(&pools, "10.0.1.5".parse().unwrap()).unwrap();
        assert_eq!(p.name, "10.0.1.0/24");
        assert!(pool_for_ip(&pools, "11.0.0.1".parse().unwrap()).is_none());
    }
}
