//! The Tabby lab: planning a cluster's BGP topology before building it, and (later) the
//! multi-node lab that builds it in network namespaces. [`plan`] is pure arithmetic:
//! sessions and route-table sizes per device for each network model.

#![warn(missing_docs)]

pub mod lab;
pub mod plan;
