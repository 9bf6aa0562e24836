//! Block IPAM over the typed client: [`StorePools`] is the [`PoolSource`] that reads
//! `IPPool`s and `Node` labels from the store and keeps the IPAM configuration in the
//! `IPAMConfiguration` named `default`, so `tabbyctl apply`, `tabbyctl ipam configure`
//! and the allocator all read and write one resource.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use tabby_api::ippool::{
    AssignmentMode as ApiAssignmentMode, IPAMConfigurationSpec, IPPoolAllowedUse,
    VMAddressPersistence,
};
use tabby_api::{Kind, Resource};
use tabby_ipam::config::KubeVirtPersistence;
use tabby_ipam::{AllowedUse, AssignmentMode, Ipam, IpamConfig, PoolInfo, PoolSource, SourceError};
use tracing::warn;

use crate::{Client, ClientError, MAX_CAS_RETRIES};

/// The name of the one IPAMConfiguration Calico reads.
pub const IPAM_CONFIG_NAME: &str = "default";

/// An IPAM client whose pools, node labels and configuration come from `client`'s store.
pub fn ipam_for(client: &Client) -> Ipam {
    Ipam::new(
        Arc::clone(client.store()),
        Arc::new(StorePools::new(client.clone())),
    )
}

/// Why an `IPPool` cannot be used by IPAM.
#[derive(Debug, thiserror::Error)]
pub enum PoolConversionError {
    #[error("IPPool {pool:?} is not an IPPool resource")]
    NotAPool { pool: String },
    #[error("IPPool {pool:?}: spec.cidr is not set")]
    NoCidr { pool: String },
    #[error("IPPool {pool:?}: spec.blockSize {size} is not a prefix length")]
    BadBlockSize { pool: String, size: i32 },
}

/// The IPAM view of a stored `IPPool`, with Calico's defaults for unset fields.
pub fn pool_info(r: &Resource) -> Result<PoolInfo, PoolConversionError> {
    let pool = r.name().to_string();
    let Some(spec) = r.spec.as_ip_pool() else {
        return Err(PoolConversionError::NotAPool { pool });
    };
    let Some(cidr) = spec.cidr else {
        return Err(PoolConversionError::NoCidr { pool });
    };
    let size = spec.effective_block_size();
    let block_size =
        u8::try_from(size).map_err(|_| PoolConversionError::BadBlockSize { pool, size })?;
    Ok(PoolInfo {
        name: r.name().to_string(),
        cidr,
        block_size,
        disabled: spec.is_disabled(),
        node_selector: spec.effective_node_selector().to_string(),
        namespace_selector: spec.namespace_selector.clone().unwrap_or_default(),
        allowed_uses: spec
            .effective_allowed_uses()
            .into_iter()
            .map(|u| match u {
                IPPoolAllowedUse::Workload => AllowedUse::Workload,
                IPPoolAllowedUse::Tunnel => AllowedUse::Tunnel,
                IPPoolAllowedUse::LoadBalancer => AllowedUse::LoadBalancer,
            })
            .collect(),
        assignment_mode: match spec.assignment_mode.unwrap_or_default() {
            ApiAssignmentMode::Automatic => AssignmentMode::Automatic,
            ApiAssignmentMode::Manual => AssignmentMode::Manual,
        },
    })
}

/// The configuration IPAM runs with for an `IPAMConfiguration` spec (unset fields
/// take Calico's defaults: autoAllocateBlocks true, everything else off or 0).
pub fn ipam_config_from_spec(spec: &IPAMConfigurationSpec) -> IpamConfig {
    IpamConfig {
        strict_affinity: spec.effective_strict_affinity(),
        auto_allocate_blocks: spec.effective_auto_allocate_blocks(),
        max_blocks_per_host: u32::try_from(spec.max_blocks_per_host.unwrap_or(0)).unwrap_or(0),
        ip_cooldown_seconds: u64::try_from(spec.ip_cooldown_seconds.unwrap_or(0)).unwrap_or(0),
        kube_virt_vm_address_persistence: match spec.kube_virt_vm_address_persistence {
            Some(VMAddressPersistence::Disabled) => KubeVirtPersistence::Disabled,
            _ => KubeVirtPersistence::Enabled,
        },
    }
}

/// Writes `cfg` into `spec`, leaving fields that are unset and at their default unset
/// so a round trip does not add noise to the stored resource.
pub fn apply_ipam_config(spec: &mut IPAMConfigurationSpec, cfg: &IpamConfig) -> Result<(), String> {
    spec.strict_affinity = Some(cfg.strict_affinity);
    spec.auto_allocate_blocks = Some(cfg.auto_allocate_blocks);
    let max = i32::try_from(cfg.max_blocks_per_host)
        .map_err(|_| format!("maxBlocksPerHost {} is too large", cfg.max_blocks_per_host))?;
    if max != 0 || spec.max_blocks_per_host.is_some() {
        spec.max_blocks_per_host = Some(max);
    }
    let cooldown = i32::try_from(cfg.ip_cooldown_seconds)
        .map_err(|_| format!("ipCooldownSeconds {} is too large", cfg.ip_cooldown_seconds))?;
    if cooldown != 0 || spec.ip_cooldown_seconds.is_some() {
        spec.ip_cooldown_seconds = Some(cooldown);
    }
    let persistence = match cfg.kube_virt_vm_address_persistence {
        KubeVirtPersistence::Enabled => VMAddressPersistence::Enabled,
        KubeVirtPersistence::Disabled => VMAddressPersistence::Disabled,
    };
    if persistence != VMAddressPersistence::Enabled
        || spec.kube_virt_vm_address_persistence.is_some()
    {
        spec.kube_virt_vm_address_persistence = Some(persistence);
    }
    Ok(())
}

/// Pools, node labels and IPAM configuration from the datastore's v3 resources.
/// Tabby has no `IPReservation` kind yet, so nothing is reserved.
#[derive(Clone, Debug)]
pub struct StorePools {
    client: Client,
}

impl StorePools {
    pub fn new(client: Client) -> StorePools {
        StorePools { client }
    }

    async fn store_config(&self, cfg: &IpamConfig) -> Result<(), ClientError> {
        let set = |r: &mut Resource| -> crate::Result<()> {
            let spec = r.spec.as_ipam_configuration_mut().ok_or_else(|| {
                ClientError::Invalid("IPAMConfiguration \"default\" has another kind".into())
            })?;
            apply_ipam_config(spec, cfg).map_err(ClientError::Invalid)
        };
        for _ in 0..MAX_CAS_RETRIES {
            match self
                .client
                .modify(Kind::IPAMConfiguration, None, IPAM_CONFIG_NAME, set)
                .await
            {
                Ok(_) => return Ok(()),
                Err(ClientError::NotFound { .. }) => {
                    let mut r = Resource::new(Kind::IPAMConfiguration, IPAM_CONFIG_NAME, None);
                    set(&mut r)?;
                    match self.client.create(r).await {
                        Ok(_) => return Ok(()),
                        // Created meanwhile by someone else: modify theirs.
                        Err(ClientError::AlreadyExists { .. }) => continue,
                        Err(e) => return Err(e),
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Err(ClientError::TooManyConflicts {
            kind: Kind::IPAMConfiguration,
            name: IPAM_CONFIG_NAME.to_string(),
        })
    }
}

#[async_trait]
impl PoolSource for StorePools {
    async fn pools(&self) -> Result<Vec<PoolInfo>, SourceError> {
        let mut out = Vec::new();
        // The list is in key order, which is name order, as Calico lists pools.
        for r in self.client.list(Kind::IPPool, None).await? {
            match pool_info(&r) {
                Ok(p) => out.push(p),
                Err(e) => warn!(error = %e, "ignoring IP pool IPAM cannot use"),
            }
        }
        Ok(out)
    }

    async fn node_labels(&self, node: &str) -> Result<BTreeMap<String, String>, SourceError> {
        Ok(self
            .client
            .get(Kind::Node, None, node)
            .await?
            .map(|r| r.labels().clone())
            .unwrap_or_default())
    }

    async fn ipam_config(&self) -> Result<Option<IpamConfig>, SourceError> {
        let stored = self
            .client
            .get(Kind::IPAMConfiguration, None, IPAM_CONFIG_NAME)
            .await?;
        let spec = stored
            .as_ref()
            .and_then(|r| r.spec.as_ipam_configuration())
            .cloned()
            .unwrap_or_default();
        Ok(Some(ipam_config_from_spec(&spec)))
    }

    async fn set_ipam_config(&self, cfg: &IpamConfig) -> Result<bool, SourceError> {
        self.store_config(cfg).await?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(yaml_spec: serde_json::Value) -> Resource {
        let v = serde_json::json!({
            "apiVersion": "projectcalico.org/v3",
            "kind": "IPPool",
            "metadata": {"name": "p"},
            "spec": yaml_spec,
        });
        tabby_api::load::from_json_value(v, "test").unwrap()
    }

    #[test]
    fn pool_fields_and_defaults_convert() {
        let p = pool_info(&pool(serde_json::json!({"cidr": "10.1.0.0/16"}))).unwrap();
        assert_eq!(p.block_size, 26);
        assert_eq!(p.node_selector, "all()");
        assert_eq!(p.allowed_uses, [AllowedUse::Workload, AllowedUse::Tunnel]);
        assert!(!p.disabled);
        let p = pool_info(&pool(serde_json::json!({
            "cidr": "fd00::/48", "blockSize": 120, "disabled": true,
            "nodeSelector": "rack == 'a'", "namespaceSelector": "team == 'x'",
            "allowedUses": ["LoadBalancer"], "assignmentMode": "Manual",
        })))
        .unwrap();
        assert_eq!(p.block_size, 120);
        assert!(p.disabled);
        assert_eq!(p.node_selector, "rack == 'a'");
        assert_eq!(p.namespace_selector, "team == 'x'");
        assert_eq!(p.allowed_uses, [AllowedUse::LoadBalancer]);
        assert_eq!(p.assignment_mode, AssignmentMode::Manual);
        assert!(matches!(
            pool_info(&pool(serde_json::json!({}))),
            Err(PoolConversionError::NoCidr { .. })
        ));
    }

    #[test]
    fn config_round_trips_through_the_spec() {
        let absent = ipam_config_from_spec(&IPAMConfigurationSpec::default());
        assert_eq!(absent, IpamConfig::default());
        let cfg = IpamConfig {
            strict_affinity: true,
            max_blocks_per_host: 4,
            ..IpamConfig::default()
        };
        let mut spec = IPAMConfigurationSpec::default();
        apply_ipam_config(&mut spec, &cfg).unwrap();
        assert_eq!(spec.max_blocks_per_host, Some(4));
        assert_eq!(spec.ip_cooldown_seconds, None, "defaults stay unset");
        assert_eq!(ipam_config_from_spec(&spec), cfg);
    }
}
