//! Test networks from real parts, for BGP interop tests, node agent tests and
//! the lab: network namespaces, veth links, bridges (L2 segments), routers,
//! and real routing daemons (BIRD, FRR, GoBGP) configured from one model.
//! Everything is removed on drop, also when a test panics. Needs root.
//!
//! ```no_run
//! use std::time::Duration;
//! use tabby_testnet::{End, TestNet, bgp::{self, BgpConfig, BgpDaemon, Neighbor}};
//!
//! # fn main() -> tabby_testnet::Result<()> {
//! let tn = TestNet::new();                       // prefix t<pid>x<n>
//! let a = tn.netns("a")?;                         // netns t<pid>x<n>-a, lo up
//! let b = tn.netns("b")?;
//! tn.veth(End::new(&a, "eth0", &["198.18.0.1/24", "2001:db8::1/64"]),
//!         End::new(&b, "eth0", &["198.18.0.2/24", "2001:db8::2/64"]))?;
//! assert!(a.ping("198.18.0.2", 1));
//! let bird = bgp::Bird::start(&a, &BgpConfig::new("198.18.0.1".parse().unwrap(), 64512)
//!     .neighbor(Neighbor::new("198.18.0.2".parse().unwrap(), 64513))
//!     .originate("100.64.1.0/24".parse().unwrap()))?;
//! let frr = bgp::Frr::start(&b, &BgpConfig::new("198.18.0.2".parse().unwrap(), 64513)
//!     .neighbor(Neighbor::new("198.18.0.1".parse().unwrap(), 64512)))?;
//! frr.wait_established("198.18.0.1".parse().unwrap(), Duration::from_secs(20))?;
//! let route = frr.wait_route("100.64.1.0/24".parse().unwrap(), Duration::from_secs(10))?;
//! assert_eq!(route.as_path, [64512]);
//! # Ok(()) }
//! ```
//!
//! Parts:
//! - [`TestNet`] owns everything of one test: [`TestNet::netns`],
//!   [`TestNet::router`] (forwarding on), [`TestNet::veth`] between two
//!   namespaces, [`TestNet::segment`] / [`TestNet::attach`] (a bridge in a
//!   shared "fab" namespace = one L2 segment), [`TestNet::spawn`],
//!   [`TestNet::temp_dir`]; [`TestNet::cleanup`] (also run on drop) removes
//!   all of it and reports every failure, not just the first.
//! - [`Netns`]: `exec`/`output`/`command` inside, `ip`/`ip_json`, `add_addr`,
//!   `add_route`, `sysctl`, `enable_forwarding`, `ping`.
//! - [`bgp`]: [`bgp::Bird`], [`bgp::Frr`], [`bgp::Gobgp`] (or [`bgp::start`]
//!   by [`bgp::DaemonKind`]) from one [`bgp::BgpConfig`]; the
//!   [`bgp::BgpDaemon`] trait gives `session_states`, `routes`, `wait_established`,
//!   `wait_route`, `stop`, `kill`, `restart`.
//! - [`bgp::bfd`]: BFD peers, [`bgp::bfd::BirdBfd`] (`protocol bfd`) and
//!   [`bgp::bfd::FrrBfd`] (`zebra` + `bfdd`), from one [`bgp::bfd::BfdConfig`].
//! - [`wait_until`], [`wait_for`], [`expect_within`]: poll with a deadline.
//!
//! Addresses are checked: only 198.18.0.0/15, 100.64.0.0/10, 2001:db8::/32
//! (and loopback / link-local) are accepted. After a crash, call
//! [`cleanup_dead_testnets`] (or [`cleanup_stale`] with a prefix).
//!
//! `tools/` holds the golden-capture scripts (Python, standard library):
//! `capture_golden.py` drives each daemon against `bgp_listener.py`, a
//! minimal BGP peer that records what it receives, and writes
//! `crates/bgp/tests/golden/*.bin`; `bgp_decode.py` prints them.

pub mod addr;
pub mod bgp;
mod cmd;
pub mod error;
pub mod netns;
pub mod process;
pub mod testnet;
pub mod wait;

pub use error::{Error, Result};
pub use netns::{Netns, cleanup_dead_testnets, cleanup_stale, list_netns};
pub use process::Process;
pub use testnet::{End, Segment, TestNet};
pub use wait::{expect_within, wait_for, wait_until};

/// True when running as root (effective uid 0), which namespaces need.
pub fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    // /proc/self belongs to the effective uid of the reading process.
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// Panics with a clear message unless running as root: tests that need a
/// network must fail loudly rather than pass without testing anything.
pub fn require_root() {
    assert!(
        is_root(),
        "this test needs root (network namespaces, routing daemons)"
    );
}
