//! IPPool and IPAMConfiguration: the address ranges pods get IPs from and the
//! cluster-wide IPAM settings, with Calico's defaults (block size 26 / 122, no
//! encapsulation, `all()` nodes, Workload and Tunnel uses) and its rules (masked
//! CIDRs, block-size ranges, no IPIP on IPv6, one encapsulation, no overlaps).

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::kind::Kind;
use crate::meta::{Condition, ObjectMeta};
use crate::validate::{Checker, ValidationError};

/// Default block size of an IPv4 pool.
pub const DEFAULT_BLOCK_SIZE_V4: i32 = 26;
/// Default block size of an IPv6 pool.
pub const DEFAULT_BLOCK_SIZE_V6: i32 = 122;
/// Block sizes an IPv4 pool may use.
pub const BLOCK_SIZE_RANGE_V4: std::ops::RangeInclusive<i32> = 20..=32;
/// Block sizes an IPv6 pool may use.
pub const BLOCK_SIZE_RANGE_V6: std::ops::RangeInclusive<i32> = 116..=128;
/// Effective `maxBlocksPerHost` when the configuration leaves it 0.
pub const DEFAULT_MAX_BLOCKS_PER_HOST: i32 = 20;

/// When traffic to a pool's addresses is encapsulated.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EncapMode {
    /// Never (routed natively).
    #[default]
    Never,
    /// Always.
    Always,
    /// Only to nodes in another subnet.
    CrossSubnet,
}

impl EncapMode {
    /// Whether any encapsulation happens.
    pub fn enabled(self) -> bool {
        self != EncapMode::Never
    }
}

/// What a pool's addresses may be used for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum IPPoolAllowedUse {
    /// Pod and VM addresses.
    Workload,
    /// Tunnel device addresses (IPIP, VXLAN, WireGuard).
    Tunnel,
    /// LoadBalancer service addresses.
    LoadBalancer,
}

/// Whether IPAM picks a pool on its own.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum AssignmentMode {
    /// Used for any allocation whose node and namespace match.
    #[default]
    Automatic,
    /// Used only when a pod asks for it by name.
    Manual,
}

/// Calico v1's `ipip: {enabled, mode}` (deprecated; converted to `ipipMode`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IPIPConfiguration {
    /// Whether IPIP is on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// `always` or `cross-subnet`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<IPIPModeV1>,
}

/// v1 spelling of the IPIP mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum IPIPModeV1 {
    /// Always encapsulate.
    #[serde(rename = "always")]
    Always,
    /// Only across subnets.
    #[serde(rename = "cross-subnet")]
    CrossSubnet,
}

/// `spec` of an IPPool.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IPPoolSpec {
    /// The pool's range; required, strictly masked, immutable.
    #[serde(
        default,
        with = "crate::net::opt_cidr",
        skip_serializing_if = "Option::is_none"
    )]
    pub cidr: Option<IpNet>,
    /// Prefix length of the blocks the pool is carved into; default 26 (v4), 122 (v6).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_size: Option<i32>,
    /// IPIP encapsulation; default Never; IPv4 only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipip_mode: Option<EncapMode>,
    /// VXLAN encapsulation; default Never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vxlan_mode: Option<EncapMode>,
    /// Masquerade traffic from the pool to destinations outside all pools.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nat_outgoing: Option<bool>,
    /// No new addresses are handed out from a disabled pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled: Option<bool>,
    /// Do not advertise the pool's routes over BGP.
    #[serde(
        default,
        rename = "disableBGPExport",
        skip_serializing_if = "Option::is_none"
    )]
    pub disable_bgp_export: Option<bool>,
    /// Which nodes may allocate from the pool; default `all()`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<String>,
    /// Which namespaces' pods may allocate from the pool; empty matches all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<String>,
    /// What addresses may be used for; default Workload and Tunnel.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_uses: Vec<IPPoolAllowedUse>,
    /// Automatic (default) or Manual.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assignment_mode: Option<AssignmentMode>,
    /// AWS subnet the pool's addresses belong to (`subnet-...`).
    #[serde(
        default,
        rename = "awsSubnetID",
        skip_serializing_if = "Option::is_none"
    )]
    pub aws_subnet_id: Option<String>,
    /// Deprecated v1 IPIP settings; converted to `ipipMode` by the defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipip: Option<IPIPConfiguration>,
    /// Deprecated v1 `nat-outgoing`; converted to `natOutgoing` by the defaults.
    #[serde(
        default,
        rename = "nat-outgoing",
        skip_serializing_if = "Option::is_none"
    )]
    pub nat_outgoing_v1: Option<bool>,
}

/// `status` of an IPPool.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IPPoolStatus {
    /// Conditions, e.g. `Allocatable`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

impl IPPoolSpec {
    /// The default block size for this pool's family (26 when the CIDR is unset).
    pub fn default_block_size(&self) -> i32 {
        match self.cidr {
            Some(IpNet::V6(_)) => DEFAULT_BLOCK_SIZE_V6,
            _ => DEFAULT_BLOCK_SIZE_V4,
        }
    }

    /// The block size in effect.
    pub fn effective_block_size(&self) -> i32 {
        self.block_size.unwrap_or_else(|| self.default_block_size())
    }

    /// The IPIP mode in effect (including the deprecated v1 form).
    pub fn effective_ipip_mode(&self) -> EncapMode {
        if let Some(m) = self.ipip_mode {
            return m;
        }
        match &self.ipip {
            Some(v1) if v1.enabled.unwrap_or(false) => match v1.mode {
                Some(IPIPModeV1::CrossSubnet) => EncapMode::CrossSubnet,
                _ => EncapMode::Always,
            },
            _ => EncapMode::Never,
        }
    }

    /// The VXLAN mode in effect.
    pub fn effective_vxlan_mode(&self) -> EncapMode {
        self.vxlan_mode.unwrap_or_default()
    }

    /// Whether outgoing NAT is on (including the deprecated v1 form).
    pub fn effective_nat_outgoing(&self) -> bool {
        self.nat_outgoing.or(self.nat_outgoing_v1).unwrap_or(false)
    }

    /// Whether the pool is disabled.
    pub fn is_disabled(&self) -> bool {
        self.disabled.unwrap_or(false)
    }

    /// The node selector in effect.
    pub fn effective_node_selector(&self) -> &str {
        match self.node_selector.as_deref() {
            Some(s) if !s.trim().is_empty() => s,
            _ => "all()",
        }
    }

    /// The allowed uses in effect.
    pub fn effective_allowed_uses(&self) -> Vec<IPPoolAllowedUse> {
        if self.allowed_uses.is_empty() {
            vec![IPPoolAllowedUse::Workload, IPPoolAllowedUse::Tunnel]
        } else {
            self.allowed_uses.clone()
        }
    }

    /// Fills Calico's defaults and converts the deprecated v1 fields.
    pub fn apply_defaults(&mut self) {
        if self.ipip_mode.is_none() {
            self.ipip_mode = Some(self.effective_ipip_mode());
        }
        self.ipip = None;
        if self.nat_outgoing.is_none() && self.nat_outgoing_v1.is_some() {
            self.nat_outgoing = self.nat_outgoing_v1;
        }
        self.nat_outgoing_v1 = None;
        if self.cidr.is_some() && self.block_size.is_none() {
            self.block_size = Some(self.default_block_size());
        }
        self.vxlan_mode.get_or_insert(EncapMode::Never);
        self.node_selector
            .get_or_insert_with(|| "all()".to_string());
        if self.allowed_uses.is_empty() {
            self.allowed_uses = self.effective_allowed_uses();
        }
        self.assignment_mode
            .get_or_insert(AssignmentMode::Automatic);
    }

    pub(crate) fn check(&self, c: &mut Checker) {
        if self.ipip.is_some() && self.ipip_mode.is_some() {
            c.err(
                "spec.ipip",
                "the deprecated ipip section cannot be combined with ipipMode; use ipipMode only",
            );
        }
        let Some(cidr) = &self.cidr else {
            c.err("spec.cidr", "is required");
            return;
        };
        c.masked("spec.cidr", cidr);
        let (link_local, range, v6): (IpNet, _, bool) = match cidr {
            IpNet::V4(_) => (
                "169.254.0.0/16".parse().expect("valid literal"),
                BLOCK_SIZE_RANGE_V4,
                false,
            ),
            IpNet::V6(_) => (
                "fe80::/10".parse().expect("valid literal"),
                BLOCK_SIZE_RANGE_V6,
                true,
            ),
        };
        if overlaps(cidr, &link_local) {
            c.err(
                "spec.cidr",
                format!("{cidr} overlaps the link-local range {link_local}"),
            );
        }
        let family = if v6 { "IPv6" } else { "IPv4" };
        let block = self.effective_block_size();
        if !range.contains(&block) {
            c.err(
                "spec.blockSize",
                format!(
                    "{block} is outside {}..={} for {family}",
                    range.start(),
                    range.end()
                ),
            );
        } else if i32::from(cidr.prefix_len()) > block && !self.is_disabled() {
            c.err(
                "spec.cidr",
                format!(
                    "a /{} pool is smaller than one /{block} block; use a blockSize of at least {} or disable the pool",
                    cidr.prefix_len(),
                    cidr.prefix_len()
                ),
            );
        }
        let ipip = self.effective_ipip_mode();
        let vxlan = self.effective_vxlan_mode();
        if v6 && ipip.enabled() {
            c.err(
                "spec.ipipMode",
                format!("{ipip:?}: IPIP is not supported on IPv6 pools; use Never"),
            );
        }
        if ipip.enabled() && vxlan.enabled() {
            c.err(
                "spec.vxlanMode",
                format!(
                    "{vxlan:?} with ipipMode {ipip:?}: IPIP and VXLAN cannot both be enabled on one pool"
                ),
            );
        }
        c.selector("spec.nodeSelector", self.node_selector.as_ref(), false);
        c.selector(
            "spec.namespaceSelector",
            self.namespace_selector.as_ref(),
            true,
        );
        let uses = self.effective_allowed_uses();
        for (i, u) in uses.iter().enumerate() {
            if uses[..i].contains(u) {
                c.err(
                    format!("spec.allowedUses[{i}]"),
                    format!("{u:?} is listed twice"),
                );
            }
        }
        let has_ns_selector = self
            .namespace_selector
            .as_deref()
            .is_some_and(|s| !s.trim().is_empty());
        if has_ns_selector && uses.contains(&IPPoolAllowedUse::Tunnel) {
            c.err(
                "spec.namespaceSelector",
                "cannot be used on a pool whose allowedUses include Tunnel (tunnel addresses belong to nodes, not namespaces)",
            );
        }
        if uses.contains(&IPPoolAllowedUse::LoadBalancer) {
            if uses.len() > 1 {
                c.err(
                    "spec.allowedUses",
                    "LoadBalancer cannot be combined with other uses",
                );
            }
            if ipip.enabled() || vxlan.enabled() {
                c.err(
                    "spec.allowedUses",
                    "LoadBalancer pools cannot use IPIP or VXLAN",
                );
            }
            if self.effective_node_selector().trim() != "all()" {
                c.err("spec.nodeSelector", "must be all() on a LoadBalancer pool");
            }
        }
        if let Some(id) = &self.aws_subnet_id {
            let hex = id.strip_prefix("subnet-").unwrap_or("");
            if !matches!(hex.len(), 8 | 17) || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                c.err(
                    "spec.awsSubnetID",
                    format!("{id:?} is not an AWS subnet ID (subnet- and 8 or 17 hex digits)"),
                );
            }
        }
    }
}

/// Whether two networks share any address.
pub fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    let (a, b) = (a.trunc(), b.trunc());
    a.contains(&b.network()) || b.contains(&a.network())
}

/// Refuses an IPPool whose CIDR overlaps another pool's. `others` should not include
/// the pool itself; resources that are not IPPools, or have no CIDR, are ignored.
pub fn validate_pool_overlaps(
    pool: &crate::Resource,
    others: &[crate::Resource],
) -> Result<(), ValidationError> {
    let Some(spec) = pool.spec.as_ip_pool() else {
        return Ok(());
    };
    let Some(cidr) = spec.cidr else {
        return Ok(());
    };
    let mut c = Checker::default();
    for other in others {
        if other.name() == pool.name() {
            continue;
        }
        if let Some(o) = other.spec.as_ip_pool().and_then(|s| s.cidr)
            && overlaps(&cidr, &o)
        {
            c.err(
                "spec.cidr",
                format!("{cidr} overlaps IPPool {:?} ({o})", other.name()),
            );
        }
    }
    c.finish(Kind::IPPool, pool.name().to_string())
}

/// Refuses changes to a pool's immutable fields: its CIDR and block size.
pub(crate) fn check_pool_update(old: &IPPoolSpec, new: &IPPoolSpec, c: &mut Checker) {
    if let (Some(a), Some(b)) = (old.cidr, new.cidr)
        && a != b
    {
        c.err(
            "spec.cidr",
            format!("cannot be changed (from {a} to {b}); create a new pool instead"),
        );
    }
    let (a, b) = (old.effective_block_size(), new.effective_block_size());
    if old.cidr.is_some() && a != b {
        c.err(
            "spec.blockSize",
            format!("cannot be changed (from {a} to {b}); create a new pool instead"),
        );
    }
}

/// Whether pods on VMs keep their address across live migration and restarts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum VMAddressPersistence {
    /// Keep it (default).
    Enabled,
    /// Release it like any pod's.
    Disabled,
}

/// `spec` of the IPAMConfiguration named `default`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IPAMConfigurationSpec {
    /// Only allocate from blocks affine to the node; default false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strict_affinity: Option<bool>,
    /// Most blocks one host may claim; 0 means Calico's built-in 20.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_blocks_per_host: Option<i32>,
    /// Claim new blocks on demand; default true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_allocate_blocks: Option<bool>,
    /// Seconds a released address rests before reuse; default 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_cooldown_seconds: Option<i32>,
    /// KubeVirt VM address persistence; default Enabled.
    #[serde(
        default,
        rename = "kubeVirtVMAddressPersistence",
        skip_serializing_if = "Option::is_none"
    )]
    pub kube_virt_vm_address_persistence: Option<VMAddressPersistence>,
}

impl IPAMConfigurationSpec {
    /// Whether strict affinity is on.
    pub fn effective_strict_affinity(&self) -> bool {
        self.strict_affinity.unwrap_or(false)
    }

    /// Whether blocks are claimed on demand.
    pub fn effective_auto_allocate_blocks(&self) -> bool {
        self.auto_allocate_blocks.unwrap_or(true)
    }

    /// The per-host block limit in effect (0 means 20).
    pub fn effective_max_blocks_per_host(&self) -> i32 {
        match self.max_blocks_per_host.unwrap_or(0) {
            0 => DEFAULT_MAX_BLOCKS_PER_HOST,
            n => n,
        }
    }

    /// Fills the two fields Calico always writes.
    pub fn apply_defaults(&mut self) {
        self.strict_affinity.get_or_insert(false);
        self.auto_allocate_blocks.get_or_insert(true);
    }

    pub(crate) fn check(&self, meta: &ObjectMeta, c: &mut Checker) {
        if !meta.name.is_empty() && meta.name != "default" {
            c.err(
                "metadata.name",
                format!(
                    "{:?}: the IPAMConfiguration must be named \"default\"",
                    meta.name
                ),
            );
        }
        c.range(
            "spec.maxBlocksPerHost",
            self.max_blocks_per_host,
            0,
            1_000_000,
        );
        c.range("spec.ipCooldownSeconds", self.ip_cooldown_seconds, 0, 1200);
        if !self.effective_strict_affinity() && !self.effective_auto_allocate_blocks() {
            c.err(
                "spec.autoAllocateBlocks",
                "cannot be false while strictAffinity is false (no node could get addresses)",
            );
        }
        if self.max_blocks_per_host.unwrap_or(0) > 0 && !self.effective_strict_affinity() {
            c.err("spec.maxBlocksPerHost", "requires strictAffinity: true");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pool(spec: serde_json::Value) -> IPPoolSpec {
        serde_json::from_value(spec).unwrap()
    }

    fn problems(spec: &IPPoolSpec) -> Vec<String> {
        let mut c = Checker::default();
        spec.check(&mut c);
        c.errors.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn defaults_follow_calico() {
        let mut p = pool(json!({"cidr": "10.0.0.0/16"}));
        p.apply_defaults();
        assert_eq!(
            serde_json::to_value(&p).unwrap(),
            json!({
                "cidr": "10.0.0.0/16",
                "blockSize": 26,
                "ipipMode": "Never",
                "vxlanMode": "Never",
                "nodeSelector": "all()",
                "allowedUses": ["Workload", "Tunnel"],
                "assignmentMode": "Automatic",
            })
        );
        let mut p = pool(json!({"cidr": "fd00::/48"}));
        p.apply_defaults();
        assert_eq!(p.block_size, Some(122));
    }

    #[test]
    fn v1_fields_convert() {
        let mut p = pool(
            json!({"cidr": "10.0.0.0/16", "ipip": {"enabled": true, "mode": "cross-subnet"}, "nat-outgoing": true}),
        );
        assert_eq!(p.effective_ipip_mode(), EncapMode::CrossSubnet);
        p.apply_defaults();
        assert_eq!(p.ipip_mode, Some(EncapMode::CrossSubnet));
        assert_eq!(p.nat_outgoing, Some(true));
        assert!(p.ipip.is_none() && p.nat_outgoing_v1.is_none());
        let p = pool(json!({"cidr": "10.0.0.0/16", "ipip": {"enabled": false}}));
        assert_eq!(p.effective_ipip_mode(), EncapMode::Never);
    }

    #[test]
    fn host_bits_and_block_size() {
        let e = problems(&pool(json!({"cidr": "100.66.0.1/16", "blockSize": 19})));
        assert_eq!(
            e,
            [
                "spec.cidr: 100.66.0.1/16 has host bits set; the network is 100.66.0.0/16",
                "spec.blockSize: 19 is outside 20..=32 for IPv4",
            ]
        );
        let e = problems(&pool(json!({"cidr": "fd00::/48", "blockSize": 115})));
        assert_eq!(e, ["spec.blockSize: 115 is outside 116..=128 for IPv6"]);
        assert!(problems(&pool(json!({"cidr": "fd00::/48", "blockSize": 128}))).is_empty());
        assert!(problems(&pool(json!({"cidr": "10.0.0.0/8", "blockSize": 32}))).is_empty());
        let e = problems(&pool(json!({})));
        assert_eq!(e, ["spec.cidr: is required"]);
    }

    #[test]
    fn small_pools_need_small_blocks_unless_disabled() {
        let e = problems(&pool(json!({"cidr": "1.2.3.0/27"})));
        assert!(
            e[0].starts_with("spec.cidr: a /27 pool is smaller"),
            "{e:?}"
        );
        assert!(problems(&pool(json!({"cidr": "1.2.3.0/27", "disabled": true}))).is_empty());
        assert!(problems(&pool(json!({"cidr": "1.2.3.0/27", "blockSize": 28}))).is_empty());
    }

    #[test]
    fn encapsulation_rules() {
        let e = problems(&pool(json!({"cidr": "fd00::/48", "ipipMode": "Always"})));
        assert!(
            e[0].starts_with("spec.ipipMode: Always: IPIP is not supported on IPv6"),
            "{e:?}"
        );
        let e = problems(&pool(
            json!({"cidr": "10.0.0.0/16", "ipipMode": "CrossSubnet", "vxlanMode": "Always"}),
        ));
        assert!(e[0].starts_with("spec.vxlanMode:"), "{e:?}");
        assert!(e[0].contains("cannot both be enabled"), "{e:?}");
        let e = problems(&pool(
            json!({"cidr": "10.0.0.0/16", "ipipMode": "Always", "ipip": {"enabled": true}}),
        ));
        assert!(e[0].starts_with("spec.ipip:"), "{e:?}");
        assert!(
            serde_json::from_value::<IPPoolSpec>(
                json!({"cidr": "10.0.0.0/16", "ipipMode": "Sometimes"})
            )
            .is_err()
        );
    }

    #[test]
    fn link_local_is_refused() {
        let e = problems(&pool(json!({"cidr": "169.254.5.0/24"})));
        assert!(e[0].contains("link-local"), "{e:?}");
        let e = problems(&pool(json!({"cidr": "fe80::/120"})));
        assert!(e[0].contains("link-local"), "{e:?}");
    }

    #[test]
    fn uses_and_selectors() {
        let e = problems(&pool(
            json!({"cidr": "10.0.0.0/16", "nodeSelector": "rack == "}),
        ));
        assert!(e[0].starts_with("spec.nodeSelector:"), "{e:?}");
        let e = problems(&pool(
            json!({"cidr": "10.0.0.0/16", "nodeSelector": "global()"}),
        ));
        assert!(e[0].contains("global()"), "{e:?}");
        let e = problems(&pool(
            json!({"cidr": "10.0.0.0/16", "namespaceSelector": "team == 'a'"}),
        ));
        assert!(e[0].starts_with("spec.namespaceSelector:"), "{e:?}");
        assert!(problems(&pool(json!({"cidr": "10.0.0.0/16", "namespaceSelector": "team == 'a'", "allowedUses": ["Workload"]}))).is_empty());
        let e = problems(&pool(
            json!({"cidr": "10.0.0.0/16", "allowedUses": ["LoadBalancer", "Workload"]}),
        ));
        assert!(
            e.iter()
                .any(|e| e.contains("LoadBalancer cannot be combined")),
            "{e:?}"
        );
        let e = problems(&pool(
            json!({"cidr": "10.0.0.0/16", "allowedUses": ["LoadBalancer"], "vxlanMode": "Always"}),
        ));
        assert!(
            e.iter().any(|e| e.contains("cannot use IPIP or VXLAN")),
            "{e:?}"
        );
        let e = problems(&pool(
            json!({"cidr": "10.0.0.0/16", "allowedUses": ["Workload", "Workload"]}),
        ));
        assert!(e[0].starts_with("spec.allowedUses[1]:"), "{e:?}");
        let e = problems(&pool(
            json!({"cidr": "10.0.0.0/16", "awsSubnetID": "subnet-xyz"}),
        ));
        assert!(e[0].starts_with("spec.awsSubnetID:"), "{e:?}");
        assert!(
            problems(&pool(
                json!({"cidr": "10.0.0.0/16", "awsSubnetID": "subnet-0123abcd"})
            ))
            .is_empty()
        );
    }

    #[test]
    fn overlap() {
        let a: IpNet = "100.64.0.0/16".parse().unwrap();
        assert!(overlaps(&a, &"100.64.128.0/17".parse().unwrap()));
        assert!(overlaps(&"100.64.128.0/17".parse().unwrap(), &a));
        assert!(!overlaps(&a, &"100.65.0.0/16".parse().unwrap()));
        assert!(!overlaps(&a, &"fd00::/8".parse().unwrap()));
    }

    #[test]
    fn updates_keep_cidr_and_block_size() {
        let old = pool(json!({"cidr": "10.0.0.0/16", "blockSize": 26}));
        let mut c = Checker::default();
        check_pool_update(&old, &pool(json!({"cidr": "10.0.0.0/16"})), &mut c);
        assert!(c.errors.is_empty(), "default equals explicit 26");
        check_pool_update(
            &old,
            &pool(json!({"cidr": "10.1.0.0/16", "blockSize": 24})),
            &mut c,
        );
        let e: Vec<String> = c.errors.iter().map(ToString::to_string).collect();
        assert!(e[0].starts_with("spec.cidr: cannot be changed"), "{e:?}");
        assert!(
            e[1].starts_with("spec.blockSize: cannot be changed"),
            "{e:?}"
        );
    }

    #[test]
    fn ipam_configuration_rules() {
        let check = |v: serde_json::Value, name: &str| {
            let spec: IPAMConfigurationSpec = serde_json::from_value(v).unwrap();
            let mut c = Checker::default();
            spec.check(&ObjectMeta::named(name, None), &mut c);
            c.errors.iter().map(ToString::to_string).collect::<Vec<_>>()
        };
        assert!(check(json!({}), "default").is_empty());
        assert!(check(json!({}), "other")[0].starts_with("metadata.name:"));
        let e = check(
            json!({"strictAffinity": false, "autoAllocateBlocks": false}),
            "default",
        );
        assert!(e[0].starts_with("spec.autoAllocateBlocks:"), "{e:?}");
        let e = check(json!({"maxBlocksPerHost": 5}), "default");
        assert_eq!(e, ["spec.maxBlocksPerHost: requires strictAffinity: true"]);
        assert!(
            check(
                json!({"strictAffinity": true, "autoAllocateBlocks": false}),
                "default"
            )
            .is_empty()
        );
        assert!(
            check(
                json!({"strictAffinity": true, "maxBlocksPerHost": 5}),
                "default"
            )
            .is_empty()
        );
        let e = check(json!({"ipCooldownSeconds": 1201}), "default");
        assert_eq!(e, ["spec.ipCooldownSeconds: 1201 is outside 0..=1200"]);
        let spec = IPAMConfigurationSpec::default();
        assert_eq!(spec.effective_max_blocks_per_host(), 20);
    }
}
