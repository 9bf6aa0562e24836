//! The Linux data plane adapter shared by the CNI plugin and the node agent: a
//! [`Netlink`] trait with the link, address and route operations Tabby needs, a
//! [`Sysctl`] trait for `/proc/sys`, their real implementations ([`RtNetlink`] over
//! rtnetlink, [`ProcSysctl`]) and recording in-memory fakes ([`fake`]).
//!
//! Namespaces are entered only on short-lived dedicated threads ([`netns`]): the
//! netlink socket is opened there and then driven from anywhere. [`workload`] is the
//! Calico-style pod wiring (veth, 169.254.1.1 gateway, /32 host routes) written
//! against the traits, so it runs unchanged on the fake.
//!
//! For the node agent the trait also covers blackhole, onlink and ECMP routes,
//! pipelined bulk route changes ([`Netlink::add_routes`]), the VXLAN device with its
//! neighbours and FDB, and [`events::monitor`] streams kernel changes. [`tc`] sets
//! a workload's bandwidth limits (tbf, and an ifb for traffic from the pod).

pub mod error;
pub mod events;
pub mod fake;
pub mod model;
pub mod netns;
pub mod rtnl;
pub mod sysctl;
pub mod tc;
pub mod workload;

pub use error::{Error, Result};
pub use events::monitor;
pub use model::{
    Address, Family, FdbEntry, Link, LinkAttrs, Neighbour, NetlinkEvent, NextHop, Route, RouteKind,
    RouteScope, TABBY_ROUTE_PROTOCOL, VxlanSpec,
};
pub use netns::NetnsFile;
pub use rtnl::RtNetlink;
pub use sysctl::{ProcSysctl, Sysctl};

use std::net::IpAddr;
use std::path::Path;

use async_trait::async_trait;
use ipnet::IpNet;

/// Link, address, route, neighbour and FDB operations in one network namespace
/// (the one the implementation was opened in).
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

    /// The unicast and blackhole routes of `family` in every table (local,
    /// broadcast and multicast entries are left out).
    async fn routes(&self, family: Family) -> Result<Vec<Route>>;

    /// Adds or replaces the route to the same destination (`ip route replace`,
    /// `NLM_F_CREATE | NLM_F_REPLACE`).
    async fn replace_route(&self, route: &Route) -> Result<()>;

    /// Adds many routes; one result per route, in the same order. The kernel
    /// implementation keeps many requests in flight.
    async fn add_routes(&self, routes: &[Route]) -> Vec<Result<()>> {
        let mut out = Vec::with_capacity(routes.len());
        for r in routes {
            out.push(self.add_route(r).await);
        }
        out
    }

    /// Deletes many routes; one result per route, in the same order.
    async fn del_routes(&self, routes: &[Route]) -> Vec<Result<()>> {
        let mut out = Vec::with_capacity(routes.len());
        for r in routes {
            out.push(self.del_route(r).await);
        }
        out
    }

    /// Removes `net` from link `index`; a missing one is [`Error::NotFound`].
    async fn del_address(&self, index: u32, net: IpNet) -> Result<()>;

    /// Creates a VXLAN device (left down); an existing name is [`Error::Exists`].
    async fn create_vxlan(&self, spec: &VxlanSpec) -> Result<()>;

    /// The VXLAN device `name` as the kernel has it (MAC and MTU always set);
    /// `None` if there is no such link, [`Error::Collision`] if it is not VXLAN.
    async fn vxlan(&self, name: &str) -> Result<Option<VxlanSpec>>;

    /// Creates an IPIP device `name`; [`Error::Unsupported`] when the kernel has
    /// no ipip link type.
    async fn create_ipip(&self, name: &str) -> Result<()>;

    /// IPv4 and IPv6 neighbours (with a MAC) of link `index`, or of every link;
    /// like `ip neigh show`, without the kernel's NOARP-only (multicast) entries.
    async fn neighbours(&self, index: Option<u32>) -> Result<Vec<Neighbour>>;

    /// Adds or replaces a neighbour (`ip neigh replace`).
    async fn set_neighbour(&self, n: &Neighbour) -> Result<()>;

    /// Deletes the neighbour `ip` of link `index`; a missing one is [`Error::NotFound`].
    async fn del_neighbour(&self, index: u32, ip: IpAddr) -> Result<()>;

    /// The FDB entries of link `index` that point at a remote endpoint.
    async fn fdb(&self, index: u32) -> Result<Vec<FdbEntry>>;

    /// Adds or replaces a permanent FDB entry of the device itself (`bridge fdb
    /// replace <mac> dev <index> dst <dst>`).
    async fn set_fdb(&self, e: &FdbEntry) -> Result<()>;

    /// Deletes an FDB entry; a missing one is [`Error::NotFound`].
    async fn del_fdb(&self, e: &FdbEntry) -> Result<()>;
}
