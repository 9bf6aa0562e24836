//! Calico's block IPAM for Tabby. IP pools are split into blocks of `blockSize`; a node
//! claims blocks (affinity) and hands out their addresses to handles (pods, tunnels).
//! State lives in the [`tabby_store::Datastore`] under `/calico/ipam/v2/` in Calico's JSON
//! shapes, and every write is a compare-and-swap, so many nodes can allocate at once
//! without ever handing out an address twice.
//!
//! The decisions are pure ([`block`], [`pool`], [`random_block`], [`handle`],
//! [`utilization`], [`check`]); [`Ipam`] does the reads, CAS writes and retries.
//! Pools, node labels and reservations come from a [`PoolSource`].

#![warn(missing_docs)]

pub mod affinity;
pub mod assignments;
pub mod block;
pub mod check;
pub mod config;
pub mod error;
pub mod handle;
mod ipam;
pub mod ipmath;
pub mod keys;
pub mod pool;
pub mod random_block;
pub mod reservation;
pub mod source;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
mod time;
pub mod utilization;

pub use affinity::{AffinityInfo, AffinityState, BlockAffinity};
pub use assignments::{
    AssignIpArgs, AutoAssignArgs, AutoAssignError, AutoAssignResult, IpamAssignments,
    PartialFulfillmentError,
};
pub use block::{AllocationAttribute, AllocationBlock, AllocationInfo, BlockError, ReleaseOptions};
pub use check::CheckReport;
pub use config::{ConfigError, IpamConfig};
pub use error::{IpamError, SourceError};
pub use handle::{IpamHandle, TunnelKind};
pub use ipam::{Ipam, IpamOptions};
pub use ipmath::IpFamily;
pub use pool::{AllowedUse, AssignmentMode, PoolInfo};
pub use reservation::Reservations;
pub use source::{PoolSource, StaticPools};
pub use utilization::{BlockUtilization, PoolUtilization, Usage};
