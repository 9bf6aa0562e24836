//! Where IPAM learns about pools, node labels and IP reservations. The integrator
//! implements [`PoolSource`] over the API resources in the store; [`StaticPools`] is the
//! in-memory implementation used by tests and simple embeddings.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::RwLock;

use async_trait::async_trait;
use ipnet::IpNet;

use crate::config::IpamConfig;
use crate::error::SourceError;
use crate::pool::PoolInfo;

/// Read access to the cluster state IPAM needs besides its own keys.
#[async_trait]
pub trait PoolSource: Send + Sync + fmt::Debug {
    /// Every IP pool, enabled or not, in a stable order (Calico lists by name).
    async fn pools(&self) -> Result<Vec<PoolInfo>, SourceError>;

    /// Every reserved CIDR (all `IPReservation`s' `reservedCIDRs`).
    async fn reservations(&self) -> Result<Vec<IpNet>, SourceError> {
        Ok(Vec::new())
    }

    /// A node's labels, for pool node selectors. Unknown nodes have none.
    async fn node_labels(&self, node: &str) -> Result<BTreeMap<String, String>, SourceError> {
        let _ = node;
        Ok(BTreeMap::new())
    }

    /// The IPAM configuration, when the integrator keeps it outside IPAM's own key
    /// (Tabby keeps it in the v3 `IPAMConfiguration` named `default`). `None`, the
    /// default, means IPAM reads `/calico/ipam/v2/config` itself.
    async fn ipam_config(&self) -> Result<Option<IpamConfig>, SourceError> {
        Ok(None)
    }

    /// Stores an already validated configuration where [`PoolSource::ipam_config`]
    /// reads it. `false`, the default, means the source does not hold the
    /// configuration and IPAM writes its own key.
    async fn set_ipam_config(&self, cfg: &IpamConfig) -> Result<bool, SourceError> {
        let _ = cfg;
        Ok(false)
    }
}

/// Pools, reservations and node labels held in memory; changes take effect at once.
#[derive(Debug, Default)]
pub struct StaticPools {
    pools: RwLock<Vec<PoolInfo>>,
    reservations: RwLock<Vec<IpNet>>,
    nodes: RwLock<BTreeMap<String, BTreeMap<String, String>>>,
}

fn read<T: Clone>(l: &RwLock<T>) -> T {
    l.read().unwrap_or_else(|e| e.into_inner()).clone()
}

impl StaticPools {
    /// A source with these pools and nothing else.
    pub fn new(pools: Vec<PoolInfo>) -> StaticPools {
        StaticPools {
            pools: RwLock::new(pools),
            ..StaticPools::default()
        }
    }

    /// Replaces every pool.
    pub fn set_pools(&self, pools: Vec<PoolInfo>) {
        *self.pools.write().unwrap_or_else(|e| e.into_inner()) = pools;
    }

    /// Adds a pool or replaces the one with the same name.
    pub fn upsert_pool(&self, pool: PoolInfo) {
        let mut pools = self.pools.write().unwrap_or_else(|e| e.into_inner());
        match pools.iter_mut().find(|p| p.name == pool.name) {
            Some(p) => *p = pool,
            None => pools.push(pool),
        }
    }

    /// Removes a pool by name; returns whether it existed.
    pub fn remove_pool(&self, name: &str) -> bool {
        let mut pools = self.pools.write().unwrap_or_else(|e| e.into_inner());
        let before = pools.len();
        pools.retain(|p| p.name != name);
        pools.len() != before
    }

    /// Replaces the reserved CIDRs.
    pub fn set_reservations(&self, cidrs: Vec<IpNet>) {
        *self.reservations.write().unwrap_or_else(|e| e.into_inner()) = cidrs;
    }

    /// Sets a node's labels.
    pub fn set_node_labels(&self, node: &str, labels: BTreeMap<String, String>) {
        self.nodes
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(node.to_owned(), labels);
    }
}

#[async_trait]
impl PoolSource for StaticPools {
    async fn pools(&self) -> Result<Vec<PoolInfo>, SourceError> {
        Ok(read(&self.pools))
    }

    async fn reservations(&self) -> Result<Vec<IpNet>, SourceError> {
        Ok(read(&self.reservations))
    }

    async fn node_labels(&self, node: &str) -> Result<BTreeMap<String, String>, SourceError> {
        Ok(read(&self.nodes).get(node).cloned().unwrap_or_default())
    }
}
