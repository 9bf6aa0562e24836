//! Network policy for Tabby, as pure functions: the policy [`model`] built from
//! resources (workload and host endpoints with their node, policies, profiles,
//! network sets, tiers, failsafe ports), the [`compile`]r to an ordered
//! per-endpoint rule IR with resolved IP sets (for every endpoint, or one node's
//! with [`compile_for_node`]), [`explain`] (which rule decides a flow, between
//! endpoints or an endpoint and an address) and the [`nft`] renderer: the full
//! state as one nftables JSON batch ([`nft::render_commands`]) or the change from
//! the previous state ([`nft::update_commands`]). No I/O here.
//!
//! [`incremental::Engine`] is the same for one node, kept up to date one
//! resource change at a time with work proportional to the change: its state
//! always equals the full path's, and its update equals [`nft::diff`]'s.
//!
//! A node agent applies it like this:
//!
//! ```
//! # use tabby_policy::{Model, compile_for_node, nft};
//! # let model = Model::default();
//! let first = compile_for_node(&model, "node1");
//! let mut cmds = nft::render_commands(&first); // recreates table `tabby` (ip, ip6)
//! // cmds.extend(own commands for objects in the same table, e.g. natOutgoing)
//! let batch = nft::batch(cmds); // `nft -j -f -` as one transaction
//! # let _ = batch;
//! // Later, on a change:
//! let next = compile_for_node(&model, "node1");
//! let update = nft::update_commands(&first, &next); // keeps the table; may be empty
//! # assert!(update.is_empty());
//! ```
//!
//! Or incrementally, one watch event at a time:
//!
//! ```
//! # use tabby_policy::incremental::Engine;
//! let mut engine = Engine::new("node1");
//! // engine.put(&resource)? / engine.delete(kind, namespace, name) per event
//! let full = engine.ruleset().commands(); // first apply: replaces the tables
//! engine.mark();
//! // ... more events ...
//! if engine.is_dirty() {
//!     let update = engine.take_update(); // one batch; marks the new state
//!     # let _ = update;
//! }
//! # let _ = full;
//! ```

pub mod compile;
pub mod explain;
pub mod incremental;
pub mod model;
pub mod nft;

pub use compile::{Compiled, Direction, compile, compile_for_node};
pub use explain::{
    DecidedBy, Flow, Peer, Verdict, VerdictAction, explain, explain_between, explain_compiled,
    explain_flow,
};
pub use incremental::{Engine, EngineStats};
pub use model::{Model, PolicyError};
