//! The Linux data plane adapter shared by the CNI plugin and the node agent: a
//! [`Netlink`] trait with the link, address and route operations Tabby needs, a
//! [`Sysctl`] trait for `/proc/sys`, their real implementations ([`RtNetlink`] over
//! rtnetlink, [`ProcSysctl`]) and recording in-memory fakes ([`fake`]).
//!
//! Namespaces are entered only on short-lived dedicated threads ([`netns`]): the
//! netlink socket is opened there and then driven from anywhere. [`workload`] is the
//! Calico-style pod wiring (veth, 169.254.1.1 gateway, /32 host routes) written
//! against the traits, so it runs unchanged on the fake.

pub mod error;
pub mod fake;
pub mod model;
pub mod netns;
pub mod rtnl;
pub mod sysctl;
pub mod workload;

pub use error::{Error, Result};
pub use model::{Address, Family, Link, LinkAttrs, Route, RouteScope, TABBY_ROUTE_PROTOCOL};
pub use netns::NetnsFile;
pub use rtnl::RtNetlink;
pub use sysctl::{ProcSysctl, Sysctl};

use std::path::Path;

use async_trait::async_trait;
use ipnet::IpNet;

/// Link, address and route operations in one network namespace (the one the
/// implementation was opened in).
#[async_trait]
pub trait Netlink: Send + Sync {
    /// Every link in the namespace.
    async fn links(&self) -> Result<Vec<Link>>;

    /// The link called `name`, if there is one.
    async fn link_by_name(&self, name: &str) -> Result<Option<Link>> {
        Ok(self.links().await?.into_iter().find(|l| l.name == name))
    }

    /// Creates a veth pair `name` (here) / `peer`; with `peer_netns` the peer is
    /// created directly in that namespace (a path such as `/run/netns/x`).
    async fn create_veth(&self, name: &str, peer: &str, peer_netns: Option<&Path>) -> Result<()>;

    /// Sets MAC, MTU and admin state of link `index` (unset fields are left alone).
    async fn set_link(&self, index: u32, attrs: &LinkAttrs) -> Result<()>;

    /// Deletes link `index` (a veth takes its peer with it).
    async fn delete_link(&self, index: u32) -> Result<()>;

    /// Adds `net` (address and prefix length) to link `index`.
    async fn add_address(&self, index: u32, net: IpNet) -> Result<()>;

    /// Addresses of link `index`, or of every link.
    async fn addresses(&self, index: Option<u32>) -> Result<Vec<Address>>;

    /// Adds a route; an identical existing route is [`Error::Exists`].
    async fn add_route(&self, route: &Route) -> Result<()>;

    /// Deletes a route; a missing one is [`Error::NotFound`].
    async fn del_route(&self, route: &Route) -> Result<()>;

    /// The routes of `family` in every table.
    async fn routes(&self, family: Family) -> Result<Vec<Route>>;
}
