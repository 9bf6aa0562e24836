//! Bidirectional Forwarding Detection for Tabby: RFC 5880 asynchronous
//! mode over UDP, single hop (RFC 5881) and multihop (RFC 5883), so a BGP
//! session learns of a dead peer in a fraction of a second instead of a
//! hold time. Shaped like `tabby-bgp`: a pure codec (`packet`, `auth`), a
//! sans-I/O state machine (`session`), sockets at the edge (`tasks`), one
//! event loop per instance (`instance`) and the API its users hold (`api`).

pub mod api;
pub mod auth;
pub mod instance;
pub mod packet;
pub mod session;
pub mod tasks;

pub use api::{ApiError, BfdHandle, InstanceConfig, SessionOpts, SessionStatus, StateChange};
pub use instance::start;
pub use packet::{Diag, State};
