//! Cluster-wide IPAM settings (Calico's `IPAMConfig`, stored at `/calico/ipam/v2/config`),
//! their defaults when nothing is stored, and the cross-field rules `set_ipam_config`
//! enforces.

use serde::{Deserialize, Serialize};

/// The per-host block limit used when neither the request nor the config sets one.
pub const DEFAULT_MAX_BLOCKS_PER_HOST: u32 = 20;

/// Whether KubeVirt VM addresses persist across VM restarts (carried, not acted on).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum KubeVirtPersistence {
    /// Addresses persist (Calico's default).
    #[default]
    Enabled,
    /// Addresses are released with the VM's pod.
    Disabled,
}

/// IPAM configuration. `Default` is what Calico uses when no config exists.
///
/// Stored JSON uses Calico's backend field names. Missing fields read as Go zero values
/// (so a stored `{}` means `autoAllocateBlocks: false`), which is how Calico reads them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpamConfig {
    /// Never borrow addresses from blocks affine to other hosts.
    #[serde(rename = "strict_affinity", default)]
    pub strict_affinity: bool,
    /// Claim new blocks when a host's affine blocks are full.
    #[serde(rename = "auto_allocate_blocks", default)]
    pub auto_allocate_blocks: bool,
    /// Block limit per host; 0 means the default of 20.
    #[serde(rename = "maxBlocksPerHost", default)]
    pub max_blocks_per_host: u32,
    /// Seconds a released address waits before it can be handed out again.
    #[serde(rename = "ipCooldownSeconds", default)]
    pub ip_cooldown_seconds: u64,
    /// KubeVirt address persistence.
    #[serde(rename = "kubeVirtVMAddressPersistence", default)]
    pub kube_virt_vm_address_persistence: KubeVirtPersistence,
}

impl Default for IpamConfig {
    fn default() -> Self {
        IpamConfig {
            strict_affinity: false,
            auto_allocate_blocks: true,
            max_blocks_per_host: 0,
            ip_cooldown_seconds: 0,
            kube_virt_vm_address_persistence: KubeVirtPersistence::Enabled,
        }
    }
}

/// A config that breaks one of the cross-field rules. The message is Calico's.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

impl IpamConfig {
    /// Checks the rules `SetIPAMConfig` enforces.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !self.strict_affinity && !self.auto_allocate_blocks {
            return Err(ConfigError(
                "Cannot disable 'StrictAffinity' and 'AutoAllocateBlocks' at the same time".into(),
            ));
        }
        if self.max_blocks_per_host > 0 && !self.strict_affinity {
            return Err(ConfigError(
                "MaxBlocksPerHost requires StrictAffinity to be enabled".into(),
            ));
        }
        Ok(())
    }

    /// The block limit for a request: the more restrictive of the request's and the
    /// config's (0 = unset on either side), defaulting to 20.
    pub fn effective_max_blocks(&self, requested: u32) -> u32 {
        let limit = match (requested, self.max_blocks_per_host) {
            (0, global) => global,
            (req, global) if global > 0 && req > global => global,
            (req, _) => req,
        };
        if limit == 0 {
            DEFAULT_MAX_BLOCKS_PER_HOST
        } else {
            limit
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_merge_like_calico() {
        let mut c = IpamConfig::default();
        assert_eq!(c.effective_max_blocks(0), 20);
        assert_eq!(c.effective_max_blocks(3), 3);
        c.max_blocks_per_host = 5;
        assert_eq!(c.effective_max_blocks(0), 5);
        assert_eq!(c.effective_max_blocks(8), 5);
        assert_eq!(c.effective_max_blocks(2), 2);
    }

    #[test]
    fn json_shape() {
        let c = IpamConfig::default();
        let v = serde_json::to_value(&c).unwrap();
        assert_eq!(v["strict_affinity"], false);
        assert_eq!(v["auto_allocate_blocks"], true);
        assert_eq!(v["maxBlocksPerHost"], 0);
        let back: IpamConfig = serde_json::from_str("{}").unwrap();
        assert!(!back.auto_allocate_blocks);
    }
}
