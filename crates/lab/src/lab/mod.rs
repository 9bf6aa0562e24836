//! `tabbyctl lab`: a Tabby cluster on one machine, built from network namespaces with
//! the real agent (`tabby-node`), the real CNI plugin (`tabby`, `tabby-ipam`) and a real
//! datastore, then checked against the planner and with traffic.
//!
//! [`spec`] says what to build, [`layout`] turns it into names, addresses and argv
//! (pure), [`check`] compares what the kernel and the agents report with
//! [`crate::plan::plan`] and renders the summary (pure). [`up`], [`status`],
//! [`exec`] and [`down`] are the edges that run `ip`, spawn processes and talk to the
//! store; [`state`] is `lab.json`, what a lab made, so that `down` can undo it.
//! [`fail`] cuts a node or a link and watches the lab converge around it, [`heal`]
//! undoes that; [`graph`] draws the devices and sessions as SVG. The ToR/spine
//! topologies add routers: [`fabric`] lays them out, [`router`] configures and reads
//! their BIRD or FRR daemons.

pub mod check;
mod down;
mod error;
pub mod fabric;
pub mod fail;
pub mod graph;
mod host;
mod icmp;
pub mod layout;
pub mod progress;
pub mod router;
pub mod spec;
pub mod state;
mod status;
mod up;

pub use down::{DownReport, down, down_with};
pub use error::LabError;
pub use fail::{ConvergeReport, fail, heal};
pub use graph::graph;
pub use host::exec;
pub use progress::{Progress, Terminal};
pub use spec::{Encap, LabSpec, RouterKind, StoreKind, Topology};
pub use status::{StatusReport, status};
pub use up::{Summary, up};

/// Where labs keep their state by default: `<root>/<name>/`.
pub const DEFAULT_ROOT: &str = "/var/run/tabby-lab";

/// The prefix of every namespace of lab `name`: `tl-<name>-`.
pub fn netns_prefix(name: &str) -> String {
    format!("tl-{name}-")
}
