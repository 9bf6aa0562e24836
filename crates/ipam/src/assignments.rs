//! Request and result types of the assignment API: what to allocate (`AutoAssignArgs`,
//! `AssignIpArgs`) and what came back (`IpamAssignments` with Calico's partial
//! fulfilment message).

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;

use crate::error::IpamError;
use crate::ipmath::IpFamily;
use crate::pool::AllowedUse;

/// Arguments of [`crate::Ipam::auto_assign`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AutoAssignArgs {
    /// IPv4 addresses wanted.
    pub num_v4: usize,
    /// IPv6 addresses wanted.
    pub num_v6: usize,
    /// Owner of the addresses (e.g. `k8s-pod-network.<containerID>`).
    pub handle: Option<String>,
    /// Owner attributes stored with the allocation.
    pub attrs: BTreeMap<String, String>,
    /// The node allocating.
    pub hostname: String,
    /// IPv4 pools to use, by name or CIDR (e.g. `cni.projectcalico.org/ipv4pools`);
    /// empty means every pool that selects the node.
    pub ipv4_pools: Vec<String>,
    /// IPv6 pools to use, as `ipv4_pools`.
    pub ipv6_pools: Vec<String>,
    /// What the addresses are for; only pools allowing it are used.
    pub intended_use: AllowedUse,
    /// Per-request block limit; 0 means none (the config's or the default 20 applies).
    pub max_blocks_per_host: u32,
    /// The namespace's labels for pool namespace selectors; `None` for host-level requests.
    pub namespace_labels: Option<BTreeMap<String, String>>,
}

impl AutoAssignArgs {
    /// A workload request for `num_v4` + `num_v6` addresses on `hostname`.
    pub fn new(hostname: impl Into<String>, num_v4: usize, num_v6: usize) -> AutoAssignArgs {
        AutoAssignArgs {
            num_v4,
            num_v6,
            handle: None,
            attrs: BTreeMap::new(),
            hostname: hostname.into(),
            ipv4_pools: Vec::new(),
            ipv6_pools: Vec::new(),
            intended_use: AllowedUse::Workload,
            max_blocks_per_host: 0,
            namespace_labels: None,
        }
    }

    /// Sets the handle (builder style).
    pub fn with_handle(mut self, handle: impl Into<String>) -> AutoAssignArgs {
        self.handle = Some(handle.into());
        self
    }
}

/// Arguments of [`crate::Ipam::assign_ip`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AssignIpArgs {
    /// The address wanted (`cni.projectcalico.org/ipAddrs`).
    pub ip: IpAddr,
    /// Owner of the address.
    pub handle: Option<String>,
    /// Owner attributes.
    pub attrs: BTreeMap<String, String>,
    /// The node allocating (claims the block if nobody has).
    pub hostname: String,
}

impl AssignIpArgs {
    /// Assign `ip` on `hostname` without handle or attributes.
    pub fn new(ip: IpAddr, hostname: impl Into<String>) -> AssignIpArgs {
        AssignIpArgs {
            ip,
            handle: None,
            attrs: BTreeMap::new(),
            hostname: hostname.into(),
        }
    }
}

/// The addresses of one family an auto-assign produced (Calico's `IPAMAssignments`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IpamAssignments {
    /// Assigned addresses with their block's prefix length (e.g. `10.0.0.5/26`).
    pub ips: Vec<IpNet>,
    /// 4 or 6.
    pub ip_version: u8,
    /// How many were asked for.
    pub num_requested: usize,
    /// Why fewer were assigned, in Calico's words.
    pub msgs: Vec<String>,
    /// Handle of Windows host-reserved addresses, if any were set aside.
    pub host_reserved_handle: Option<String>,
}

impl IpamAssignments {
    /// An empty result for `num_requested` addresses of `family`.
    pub fn new(family: IpFamily, num_requested: usize) -> IpamAssignments {
        IpamAssignments {
            ips: Vec::new(),
            ip_version: family.version(),
            num_requested,
            msgs: Vec::new(),
            host_reserved_handle: None,
        }
    }

    /// Adds a message unless it is already there.
    pub fn add_msg(&mut self, msg: impl Into<String>) {
        let msg = msg.into();
        if !self.msgs.contains(&msg) {
            self.msgs.push(msg);
        }
    }

    /// `Some` when fewer addresses were assigned than requested.
    pub fn partial_fulfillment_error(&self) -> Option<PartialFulfillmentError> {
        if self.ips.len() >= self.num_requested {
            return None;
        }
        Some(PartialFulfillmentError {
            assigned: self.ips.len(),
            requested: self.num_requested,
            ip_version: self.ip_version,
            msgs: self.msgs.clone(),
            host_reserved_handle: self.host_reserved_handle.clone(),
        })
    }
}

/// "Assigned N out of M requested IPvX addresses; <msg>…"
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartialFulfillmentError {
    /// Addresses assigned.
    pub assigned: usize,
    /// Addresses requested.
    pub requested: usize,
    /// 4 or 6.
    pub ip_version: u8,
    /// Why, in Calico's words.
    pub msgs: Vec<String>,
    /// Handle of Windows host-reserved addresses, if any.
    pub host_reserved_handle: Option<String>,
}

impl fmt::Display for PartialFulfillmentError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Assigned {} out of {} requested IPv{} addresses",
            self.assigned, self.requested, self.ip_version
        )?;
        for m in &self.msgs {
            write!(f, "; {m}")?;
        }
        if let Some(h) = &self.host_reserved_handle {
            write!(f, "; HostReservedAttr: {h}")?;
        }
        Ok(())
    }
}

impl std::error::Error for PartialFulfillmentError {}

/// What an auto-assign produced: `None` for a family that was not asked for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AutoAssignResult {
    /// IPv4 assignments, when IPv4 addresses were requested.
    pub v4: Option<IpamAssignments>,
    /// IPv6 assignments, when IPv6 addresses were requested.
    pub v6: Option<IpamAssignments>,
}

/// An auto-assign that failed part-way. The addresses already assigned stay assigned
/// (as in Calico); they are listed here so the caller can release them, e.g. with
/// `release_by_handle`.
#[derive(Debug, thiserror::Error)]
#[error("{error}")]
pub struct AutoAssignError {
    /// What went wrong.
    #[source]
    pub error: IpamError,
    /// IPv4 assignments made before the failure (with Calico's messages).
    pub v4: Option<IpamAssignments>,
    /// IPv6 assignments made before the failure.
    pub v6: Option<IpamAssignments>,
}

impl AutoAssignError {
    pub(crate) fn bare(error: IpamError) -> AutoAssignError {
        AutoAssignError {
            error,
            v4: None,
            v6: None,
        }
    }
}
