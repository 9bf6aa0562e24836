//! Tabby's native BGP-4 speaker: a pure wire codec (`packet`), a sans-I/O
//! session state machine (`neighbor::fsm`), the RIB, decision process and
//! protocol policy (`rib`, `policy`), what is owed to a peer whose send
//! queue is full (`backlog`), the check whoever programs the kernel runs
//! on learned routes (`fib`), and the tokio edges (`tasks`, `instance`)
//! behind the API the node agent uses (`api`).

pub mod api;
pub mod backlog;
pub mod fib;
pub mod instance;
pub mod neighbor;
pub mod packet;
pub mod policy;
pub mod rib;
pub mod tasks;

pub use api::{BgpHandle, InstanceConfig, PeerConfig, PeerStatus, RestartState};
pub use instance::start;
pub use rib::BestPathChange;
/// BFD, which peers may be protected by (`PeerConfig::bfd`).
pub use tabby_bfd as bfd;
