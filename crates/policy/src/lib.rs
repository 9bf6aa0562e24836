//! Network policy for Tabby, as pure functions: the policy [`model`] built from
//! resources, the [`compile`]r to an ordered per-endpoint rule IR with resolved IP
//! sets, [`explain`] (which rule decides a flow) and the [`nft`] renderer that turns
//! the IR into one nftables JSON batch per family. No I/O here.

pub mod compile;
pub mod explain;
pub mod model;
pub mod nft;

pub use compile::{Compiled, Direction, compile, compile_for_node};
pub use explain::{
    DecidedBy, Flow, Peer, Verdict, VerdictAction, explain, explain_between, explain_compiled,
    explain_flow,
};
pub use model::{Model, PolicyError};
