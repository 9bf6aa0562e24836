//! tabby-node, the per-node agent (Calico's calico-node: Felix plus BIRD in one
//! process). Pure modules compute what the node should look like from a store
//! snapshot and learned BGP routes (`peers`, `desired`, `nat`); thin adapters apply
//! it (`reconcile` over the dataplane traits, the BGP speaker; `qos` computes and
//! applies bandwidth limits) and report
//! (`status`, `metrics`); `agent` is the event loop tying them together.

pub mod agent;
pub mod desired;
pub mod drivers;
pub mod filters;
pub mod firewall;
pub mod machine;
pub mod metrics;
pub mod nat;
pub mod peers;
pub mod qos;
pub mod reconcile;
pub mod routes;
pub mod snapshot;
pub mod status;
pub mod view;
