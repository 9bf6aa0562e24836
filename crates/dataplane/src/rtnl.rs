//! [`Netlink`] over rtnetlink. The socket is opened inside the target namespace on a
//! dedicated thread (a socket stays bound to the namespace it was created in) and
//! then driven by a task on the caller's Tokio runtime.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;
use std::path::Path;

use async_trait::async_trait;
use futures::TryStreamExt;
use ipnet::IpNet;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteScope as NlScope, RouteType,
};
use rtnetlink::{Handle, LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder};

use crate::Netlink;
use crate::error::{Error, Result};
use crate::model::{Address, Family, Link, LinkAttrs, MAIN_TABLE, Route, RouteScope, format_mac};
use crate::netns::NetnsFile;

/// A netlink connection bound to one network namespace.
#[derive(Clone, Debug)]
pub struct RtNetlink {
    handle: Handle,
    netns: String,
}

impl RtNetlink {
    /// A connection in the calling thread's namespace. Must be called inside a
    /// Tokio runtime (the connection task is spawned on it).
    pub fn current() -> Result<RtNetlink> {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(|e| Error::Netlink {
            op: "open netlink socket".into(),
            reason: e.to_string(),
        })?;
        tokio::spawn(conn);
        Ok(RtNetlink {
            handle,
            netns: "host".into(),
        })
    }

    /// A connection in the namespace at `path`, opened on a dedicated thread.
    /// Must be called inside a Tokio runtime.
    pub fn in_netns(path: impl AsRef<Path>) -> Result<RtNetlink> {
        let ns = NetnsFile::open(path.as_ref())?;
        let rt = tokio::runtime::Handle::current();
        let (conn, handle) = ns.run(move || {
            // The socket registers with the runtime's reactor, hence `enter`.
            let _guard = rt.enter();
            let (conn, handle, _) = rtnetlink::new_connection().map_err(|e| Error::Netlink {
                op: "open netlink socket".into(),
                reason: e.to_string(),
            })?;
            Ok((conn, handle))
        })?;
        tokio::spawn(conn);
        Ok(RtNetlink {
            handle,
            netns: path.as_ref().display().to_string(),
        })
    }

    fn fail(&self, op: impl Into<String>, e: rtnetlink::Error) -> Error {
        let op = op.into();
        if let rtnetlink::Error::NetlinkError(m) = &e
            && let Some(code) = m.code
        {
            match -code.get() {
                c if c == EEXIST => {
                    return Error::Exists {
                        what: format!("{op} in {}", self.netns),
                    };
                }
                c if c == ENOENT || c == ENODEV || c == ESRCH => {
                    return Error::NotFound {
                        what: format!("{op} in {}", self.netns),
                    };
                }
                _ => {}
            }
        }
        Error::Netlink {
            op: format!("{op} in {}", self.netns),
            reason: e.to_string(),
        }
    }
}

const EEXIST: i32 = 17;
const ENOENT: i32 = 2;
const ESRCH: i32 = 3;
const ENODEV: i32 = 19;

fn link_from(msg: &LinkMessage) -> Link {
    let mut l = Link {
        index: msg.header.index,
        name: String::new(),
        kind: None,
        mac: None,
        mtu: None,
        up: msg.header.flags.contains(LinkFlags::Up),
    };
    for a in &msg.attributes {
        match a {
            LinkAttribute::IfName(n) => l.name = n.clone(),
            LinkAttribute::Mtu(m) => l.mtu = Some(*m),
            LinkAttribute::Address(b) if b.len() == 6 => {
                let mut mac = [0u8; 6];
                mac.copy_from_slice(b);
                l.mac = Some(mac);
            }
            LinkAttribute::LinkInfo(infos) => {
                for i in infos {
                    if let LinkInfo::Kind(k) = i {
                        l.kind = Some(k.to_string());
                    }
                }
            }
            _ => {}
        }
    }
    l
}

fn scope_to_nl(s: RouteScope) -> NlScope {
    match s {
        RouteScope::Universe => NlScope::Universe,
        RouteScope::Link => NlScope::Link,
        RouteScope::Host => NlScope::Host,
        RouteScope::Other(n) => NlScope::from(n),
    }
}

fn scope_from_nl(s: NlScope) -> RouteScope {
    match s {
        NlScope::Universe => RouteScope::Universe,
        NlScope::Link => RouteScope::Link,
        NlScope::Host => RouteScope::Host,
        other => RouteScope::Other(u8::from(other)),
    }
}

fn route_addr(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

fn route_from(msg: &RouteMessage) -> Option<Route> {
    let mut dst: Option<IpAddr> = None;
    let mut gateway = None;
    let mut oif = None;
    let mut table = u32::from(msg.header.table);
    for a in &msg.attributes {
        match a {
            RouteAttribute::Destination(d) => dst = route_addr(d),
            RouteAttribute::Gateway(g) => gateway = route_addr(g),
            RouteAttribute::Oif(i) => oif = Some(*i),
            RouteAttribute::Table(t) => table = *t,
            _ => {}
        }
    }
    let plen = msg.header.destination_prefix_length;
    let dst = dst.unwrap_or(match msg.header.address_family {
        rtnetlink::packet_route::AddressFamily::Inet6 => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        _ => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
    });
    Some(Route {
        dst: IpNet::new(dst, plen).ok()?,
        gateway,
        oif,
        scope: scope_from_nl(msg.header.scope),
        protocol: u8::from(msg.header.protocol),
        table,
    })
}

fn route_msg(r: &Route) -> Result<RouteMessage> {
    fn bad<E: std::fmt::Debug>(r: &Route) -> impl FnOnce(E) -> Error + '_ {
        move |e| Error::Netlink {
            op: format!("build route {r}"),
            reason: format!("{e:?}"),
        }
    }
    let mut b = RouteMessageBuilder::<IpAddr>::new()
        .destination_prefix(r.dst.addr(), r.dst.prefix_len())
        .map_err(bad(r))?;
    if let Some(gw) = r.gateway {
        b = b.gateway(gw).map_err(bad(r))?;
    }
    if let Some(oif) = r.oif {
        b = b.output_interface(oif);
    }
    let table = if r.table == 0 { MAIN_TABLE } else { r.table };
    let mut msg = b
        .scope(scope_to_nl(r.scope))
        .protocol(RouteProtocol::from(r.protocol))
        .kind(RouteType::Unicast)
        .table_id(table)
        .build();
    if r.protocol == 0 {
        msg.header.protocol = RouteProtocol::Boot;
    }
    Ok(msg)
}

#[async_trait]
impl Netlink for RtNetlink {
    async fn links(&self) -> Result<Vec<Link>> {
        let mut s = self.handle.link().get().execute();
        let mut out = Vec::new();
        while let Some(m) = s.try_next().await.map_err(|e| self.fail("list links", e))? {
            out.push(link_from(&m));
        }
        Ok(out)
    }

    async fn link_by_name(&self, name: &str) -> Result<Option<Link>> {
        let mut s = self
            .handle
            .link()
            .get()
            .match_name(name.to_owned())
            .execute();
        match s.try_next().await {
            Ok(m) => Ok(m.map(|m| link_from(&m))),
            Err(e) => match self.fail(format!("link {name}"), e) {
                Error::NotFound { .. } => Ok(None),
                other => Err(other),
            },
        }
    }

    async fn create_veth(&self, name: &str, peer: &str, peer_netns: Option<&Path>) -> Result<()> {
        let op = format!("create veth {name} (peer {peer})");
        let ns = peer_netns.map(NetnsFile::open).transpose()?;
        let msg = match &ns {
            None => LinkVeth::new(name, peer).build(),
            Some(ns) => {
                let peer_msg = LinkMessageBuilder::<LinkUnspec>::new()
                    .name(peer.to_owned())
                    .setns_by_fd(ns.file().as_raw_fd())
                    .build();
                LinkMessageBuilder::<LinkVeth>::new_with_info_kind(InfoKind::Veth)
                    .name(name.to_owned())
                    .set_info_data(InfoData::Veth(InfoVeth::Peer(peer_msg)))
                    .build()
            }
        };
        self.handle
            .link()
            .add(msg)
            .execute()
            .await
            .map_err(|e| self.fail(op, e))
    }

    async fn set_link(&self, index: u32, attrs: &LinkAttrs) -> Result<()> {
        let mut b = LinkUnspec::new_with_index(index);
        if let Some(mac) = attrs.mac {
            b = b.address(mac.to_vec());
        }
        if let Some(mtu) = attrs.mtu {
            b = b.mtu(mtu);
        }
        match attrs.up {
            Some(true) => b = b.up(),
            Some(false) => b = b.down(),
            None => {}
        }
        let op = format!(
            "set link #{index}{}{}",
            attrs
                .mac
                .map(|m| format!(" address {}", format_mac(&m)))
                .unwrap_or_default(),
            attrs.mtu.map(|m| format!(" mtu {m}")).unwrap_or_default()
        );
        self.handle
            .link()
            .set(b.build())
            .execute()
            .await
            .map_err(|e| self.fail(op, e))
    }

    async fn delete_link(&self, index: u32) -> Result<()> {
        self.handle
            .link()
            .del(index)
            .execute()
            .await
            .map_err(|e| self.fail(format!("link #{index}"), e))
    }

    async fn add_address(&self, index: u32, net: IpNet) -> Result<()> {
        self.handle
            .address()
            .add(index, net.addr(), net.prefix_len())
            .execute()
            .await
            .map_err(|e| self.fail(format!("address {net} on link #{index}"), e))
    }

    async fn addresses(&self, index: Option<u32>) -> Result<Vec<Address>> {
        let mut req = self.handle.address().get();
        if let Some(i) = index {
            req = req.set_link_index_filter(i);
        }
        let mut s = req.execute();
        let mut out = Vec::new();
        while let Some(m) = s
            .try_next()
            .await
            .map_err(|e| self.fail("list addresses", e))?
        {
            let addr = m.attributes.iter().find_map(|a| match a {
                AddressAttribute::Address(ip) => Some(*ip),
                _ => None,
            });
            if let Some(ip) = addr
                && let Ok(net) = IpNet::new(ip, m.header.prefix_len)
            {
                out.push(Address {
                    index: m.header.index,
                    net,
                });
            }
        }
        Ok(out)
    }

    async fn add_route(&self, route: &Route) -> Result<()> {
        let msg = route_msg(route)?;
        self.handle
            .route()
            .add(msg)
            .execute()
            .await
            .map_err(|e| self.fail(format!("route {route}"), e))
    }

    async fn del_route(&self, route: &Route) -> Result<()> {
        let msg = route_msg(route)?;
        self.handle
            .route()
            .del(msg)
            .execute()
            .await
            .map_err(|e| self.fail(format!("route {route}"), e))
    }

    async fn routes(&self, family: Family) -> Result<Vec<Route>> {
        let msg = match family {
            Family::V4 => RouteMessageBuilder::<Ipv4Addr>::new().build(),
            Family::V6 => RouteMessageBuilder::<Ipv6Addr>::new().build(),
        };
        let mut s = self.handle.route().get(msg).execute();
        let mut out = Vec::new();
        while let Some(m) = s
            .try_next()
            .await
            .map_err(|e| self.fail("list routes", e))?
        {
            if m.header.kind != RouteType::Unicast {
                continue;
            }
            if let Some(r) = route_from(&m) {
                out.push(r);
            }
        }
        Ok(out)
    }
}
