//! The errors IPAM operations return. Each names the address, pool, block or host
//! concerned; messages Calico users know (block limit, pool not enabled, CIDR checks)
//! keep Calico's wording.

use std::net::IpAddr;

use ipnet::IpNet;
use tabby_store::StoreError;

use crate::block::BlockError;
use crate::config::ConfigError;
use crate::ipmath::IpFamily;
use crate::pool::AllowedUse;

/// An error from a [`crate::PoolSource`] (the integrator's pool, node and reservation
/// lookups).
pub type SourceError = Box<dyn std::error::Error + Send + Sync>;

/// Everything an IPAM operation can fail with.
#[derive(Debug, thiserror::Error)]
#[allow(
    missing_docs,
    reason = "variant fields are described by the #[error] messages"
)]
pub enum IpamError {
    /// The datastore failed (or a compare-and-swap lost, inside retry loops).
    #[error("IPAM datastore: {0}")]
    Store(#[from] StoreError),
    /// A stored value does not decode.
    #[error("{key}: cannot decode stored value: {reason}")]
    Corrupt { key: String, reason: String },
    /// The pool source failed.
    #[error("looking up {what} failed: {source}")]
    Source {
        what: &'static str,
        #[source]
        source: SourceError,
    },
    /// A block refused the operation (already assigned, strict affinity, bad guard…).
    #[error(transparent)]
    Block(#[from] BlockError),
    /// `set_ipam_config` was given a config that breaks a rule.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A pool cannot be used as configured.
    #[error("IP pool {pool}: {reason}")]
    InvalidPool { pool: String, reason: String },
    /// A pool's selector does not parse.
    #[error("IP pool {pool}: invalid {field} {selector:?}: {error}")]
    InvalidSelector {
        pool: String,
        field: &'static str,
        selector: String,
        error: String,
    },
    /// The caller passed something unusable.
    #[error("invalid IPAM request: {0}")]
    InvalidArgument(String),
    /// A requested pool is missing or disabled.
    #[error("the given pool ({0}) does not exist, or is not enabled")]
    PoolNotUsable(String),
    /// No enabled pool selects the node (and namespace).
    #[error("no configured Calico {family} pools for node {host}")]
    NoPoolsForNode { host: String, family: IpFamily },
    /// Pools select the node but none allows the intended use (Calico's `ErrNoQualifiedPool`).
    #[error(
        "cannot find a qualified ippool, no {family} pools match the required use ({intended_use})"
    )]
    NoQualifiedPool {
        family: IpFamily,
        intended_use: AllowedUse,
    },
    /// The node owns its maximum number of blocks and they are full (Calico's `ErrBlockLimit`).
    #[error(
        "cannot allocate new block due to per host block limit: node {host} already has {limit} blocks"
    )]
    BlockLimit { host: String, limit: u32 },
    /// The address is in no pool at all.
    #[error("IP address {ip} is not in any configured IP pool")]
    NotInPool { ip: IpAddr },
    /// The address is only in a disabled pool.
    #[error("IP address {ip} is in IP pool {pool} ({cidr}), which is disabled")]
    PoolDisabled {
        ip: IpAddr,
        pool: String,
        cidr: IpNet,
    },
    /// `claim_affinity`/`release_affinity` on a CIDR outside every enabled pool.
    #[error("The requested CIDR ({cidr}) is not within any configured pools.")]
    CidrNotInPool { cidr: IpNet },
    /// `claim_affinity`/`release_affinity` on a CIDR smaller than the pool's blocks.
    #[error("The requested CIDR ({cidr}) is smaller than the minimum.")]
    CidrTooSmall { cidr: IpNet },
    /// Nothing could be assigned (the pools are exhausted or the node may not claim).
    #[error(transparent)]
    Exhausted(#[from] crate::assignments::PartialFulfillmentError),
    /// Compare-and-swap kept losing.
    #[error("{op}: gave up after {tries} tries - excessive concurrent IPAM requests")]
    TooManyRetries { op: String, tries: usize },
}

impl IpamError {
    /// A guarded release was refused because the address changed hands (Calico wraps
    /// these in `ErrorResourceUpdateConflict`).
    pub fn is_release_conflict(&self) -> bool {
        matches!(
            self,
            IpamError::Block(BlockError::BadSequenceNumber { .. } | BlockError::BadHandle { .. })
        )
    }

    /// A lost compare-and-swap: the caller should re-read and try again.
    pub(crate) fn is_race(&self) -> bool {
        matches!(self, IpamError::Store(e)
            if e.is_conflict() || matches!(e, StoreError::NotFound { .. }))
    }

    pub(crate) fn race(key: &str) -> IpamError {
        IpamError::Store(StoreError::Conflict {
            key: key.to_owned(),
            expected: 0,
            actual: 0,
        })
    }
}
