//! The Tabby lab: planning a cluster's BGP topology before building it, and the
//! multi-node lab that builds it in network namespaces. [`plan`] is pure arithmetic:
//! sessions and route-table sizes per device for each network model; [`lab`] builds
//! every one of the models (mesh, route reflectors, L2 planes, and the ToR/spine
//! designs with BIRD or FRR routers) and checks each device against the plan.

#![warn(missing_docs)]

pub mod lab;
pub mod plan;
