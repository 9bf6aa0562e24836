//! [`Netlink`] over rtnetlink. The sockets are opened inside the target namespace on
//! a dedicated thread (a socket stays bound to the namespace it was created in) and
//! then driven by tasks on the caller's Tokio runtime. Bulk route changes go out in
//! datagrams of many requests each, several datagrams in flight, on a second socket
//! whose acknowledgements are all passed up so each result finds its route.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
use futures::{StreamExt, TryStreamExt};
use ipnet::IpNet;
use rtnetlink::packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload,
};
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{
    InfoData, InfoKind, InfoVeth, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use rtnetlink::packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteMessage, RouteNextHopFlags, RouteProtocol,
    RouteScope as NlScope, RouteType, RouteVia,
};
use rtnetlink::packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::proto::{Connection, ConnectionHandle};
use rtnetlink::sys::{AsyncSocket, SocketAddr, protocols::NETLINK_ROUTE};
use rtnetlink::{
    Handle, LinkIpIp, LinkMessageBuilder, LinkUnspec, LinkVeth, LinkVxlan, RouteMessageBuilder,
    RouteNextHopBuilder,
};

use crate::Netlink;
use crate::error::{Error, Result};
use crate::model::{
    Address, Family, FdbEntry, Link, LinkAttrs, MAIN_TABLE, Neighbour, NextHop, Route, RouteKind,
    RouteScope, VxlanSpec, format_mac,
};
use crate::netns::NetnsFile;

/// Routes per datagram of [`Netlink::add_routes`] / [`Netlink::del_routes`]: the
/// kernel handles every request of a datagram in one `sendmsg` and queues one
/// acknowledgement for each.
const BULK_BATCH: usize = 128;
/// Bound on the receive buffer an acknowledgement (or error, which echoes the
/// request) takes, to size the bulk window so the kernel never drops one.
const ACK_TRUESIZE: usize = 1536;
/// Receive buffer asked for on the bulk and monitor sockets (forced as root).
pub(crate) const RCVBUF: usize = 8 << 20;
/// How long a batch may wait for its acknowledgements: a lost one (buffer
/// overrun) must not hang the caller.
const BULK_TIMEOUT: Duration = Duration::from_secs(60);

/// A netlink connection bound to one network namespace.
///
/// Single requests go over one rtnetlink socket; [`Netlink::add_routes`] and
/// [`Netlink::del_routes`] use a second socket of the same namespace that passes
/// every acknowledgement up, so results can be matched to routes while up to a
/// few hundred requests are in flight.
#[derive(Clone, Debug)]
pub struct RtNetlink {
    handle: Handle,
    bulk: ConnectionHandle<RouteNetlinkMessage>,
    /// Datagrams of [`BULK_BATCH`] requests in flight at once.
    bulk_in_flight: usize,
    netns: String,
}

type RtConnection = Connection<RouteNetlinkMessage>;

struct Opened {
    conn: RtConnection,
    handle: Handle,
    bulk_conn: RtConnection,
    bulk: ConnectionHandle<RouteNetlinkMessage>,
    bulk_in_flight: usize,
}

/// Opens both sockets in the calling thread's namespace (inside a runtime context).
fn open_here() -> Result<Opened> {
    let open_err = |e: std::io::Error| Error::Netlink {
        op: "open netlink socket".into(),
        reason: e.to_string(),
    };
    let (conn, handle, _) = rtnetlink::new_connection().map_err(open_err)?;
    let (mut bulk_conn, bulk, _) =
        rtnetlink::proto::new_connection::<RouteNetlinkMessage>(NETLINK_ROUTE).map_err(open_err)?;
    bulk_conn.set_forward_ack(true);
    let rcvbuf = grow_rcvbuf(bulk_conn.socket_mut().socket_mut());
    let bulk_in_flight = (rcvbuf / ACK_TRUESIZE / BULK_BATCH).clamp(1, 8);
    Ok(Opened {
        conn,
        handle,
        bulk_conn,
        bulk,
        bulk_in_flight,
    })
}

/// Asks for [`RCVBUF`] (forced when we may, else capped by `rmem_max`) and
/// returns the receive buffer the socket ended up with.
pub(crate) fn grow_rcvbuf(sock: &mut rtnetlink::sys::Socket) -> usize {
    use nix::sys::socket::{setsockopt, sockopt};
    if setsockopt(&*sock, sockopt::RcvBufForce, &RCVBUF).is_err() {
        let _ = sock.set_rx_buf_sz(RCVBUF as nix::libc::c_int);
    }
    sock.get_rx_buf_sz().unwrap_or(212_992)
}

impl RtNetlink {
    /// A connection in the calling thread's namespace. Must be called inside a
    /// Tokio runtime (the connection tasks are spawned on it).
    pub fn current() -> Result<RtNetlink> {
        Ok(RtNetlink::spawn(open_here()?, "host".into()))
    }

    /// A connection in the namespace at `path`, opened on a dedicated thread.
    /// Must be called inside a Tokio runtime.
    pub fn in_netns(path: impl AsRef<Path>) -> Result<RtNetlink> {
        let ns = NetnsFile::open(path.as_ref())?;
        let rt = tokio::runtime::Handle::current();
        let opened = ns.run(move || {
            // The sockets register with the runtime's reactor, hence `enter`.
            let _guard = rt.enter();
            open_here()
        })?;
        Ok(RtNetlink::spawn(
            opened,
            path.as_ref().display().to_string(),
        ))
    }

    fn spawn(o: Opened, netns: String) -> RtNetlink {
        tokio::spawn(o.conn);
        tokio::spawn(o.bulk_conn);
        RtNetlink {
            handle: o.handle,
            bulk: o.bulk,
            bulk_in_flight: o.bulk_in_flight,
            netns,
        }
    }

    fn fail(&self, op: impl Into<String>, e: rtnetlink::Error) -> Error {
        let op = op.into();
        if let Some(code) = errno(&e) {
            match code {
                EEXIST => {
                    return Error::Exists {
                        what: format!("{op} in {}", self.netns),
                    };
                }
                ENOENT | ENODEV | ESRCH => {
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

    /// Sends `routes` as `RTM_NEWROUTE` (`add`) or `RTM_DELROUTE` in datagrams of
    /// [`BULK_BATCH`], several datagrams in flight.
    async fn bulk_routes(&self, add: bool, routes: &[Route]) -> Vec<Result<()>> {
        // Futures are made up front: a closure inside the stream would trip the
        // `Send` check of `async_trait` (higher-ranked lifetimes).
        let batches: Vec<_> = routes
            .chunks(BULK_BATCH)
            .map(|chunk| self.bulk_batch(add, chunk))
            .collect();
        futures::stream::iter(batches)
            .buffered(self.bulk_in_flight)
            .flat_map(futures::stream::iter)
            .collect()
            .await
    }

    async fn bulk_batch(&self, add: bool, chunk: &[Route]) -> Vec<Result<()>> {
        let verb = if add { "add" } else { "delete" };
        let mut out: Vec<Option<Result<()>>> = (0..chunk.len()).map(|_| None).collect();
        // Position in the datagram -> position in `chunk`.
        let mut index = Vec::with_capacity(chunk.len());
        let mut msgs = Vec::with_capacity(chunk.len());
        for (i, r) in chunk.iter().enumerate() {
            match route_msg(r) {
                Ok(m) => {
                    let (payload, flags) = if add {
                        (
                            RouteNetlinkMessage::NewRoute(m),
                            NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
                        )
                    } else {
                        (RouteNetlinkMessage::DelRoute(m), NLM_F_REQUEST | NLM_F_ACK)
                    };
                    let mut nl = NetlinkMessage::from(payload);
                    nl.header.flags = flags;
                    msgs.push(nl);
                    index.push(i);
                }
                Err(e) => out[i] = Some(Err(e)),
            }
        }
        if !msgs.is_empty() {
            match self.bulk.request_batch(msgs, SocketAddr::new(0, 0)) {
                Ok(mut answers) => {
                    let collect = async {
                        // The kernel answers the requests of a datagram in order,
                        // with the sequence numbers they were sent with.
                        let mut first = None;
                        while let Some(m) = answers.next().await {
                            let seq = m.header.sequence_number;
                            let k = seq.wrapping_sub(*first.get_or_insert(seq)) as usize;
                            let (Some(&i), NetlinkPayload::Error(e)) = (index.get(k), m.payload)
                            else {
                                continue;
                            };
                            out[i] = Some(match e.code {
                                None => Ok(()),
                                Some(_) => Err(self.fail(
                                    format!("{verb} route {}", chunk[i]),
                                    rtnetlink::Error::NetlinkError(e),
                                )),
                            });
                        }
                    };
                    let _ = tokio::time::timeout(BULK_TIMEOUT, collect).await;
                }
                Err(e) => {
                    for &i in &index {
                        out[i] = Some(Err(Error::Netlink {
                            op: format!("{verb} route {} in {}", chunk[i], self.netns),
                            reason: e.to_string(),
                        }));
                    }
                }
            }
        }
        out.into_iter()
            .zip(chunk)
            .map(|(o, r)| {
                o.unwrap_or_else(|| {
                    Err(Error::Netlink {
                        op: format!("{verb} route {r} in {}", self.netns),
                        reason: format!(
                            "no answer from the kernel within {} s",
                            BULK_TIMEOUT.as_secs()
                        ),
                    })
                })
            })
            .collect()
    }

    /// The kernel's message for link `name`, if there is one.
    async fn link_msg(&self, name: &str) -> Result<Option<LinkMessage>> {
        let mut s = self
            .handle
            .link()
            .get()
            .match_name(name.to_owned())
            .execute();
        match s.try_next().await {
            Ok(m) => Ok(m),
            Err(e) => match self.fail(format!("link {name}"), e) {
                Error::NotFound { .. } => Ok(None),
                other => Err(other),
            },
        }
    }

    async fn neighbour_dump(&self, family: AddressFamily) -> Result<Vec<NeighbourMessage>> {
        let mut s = self
            .handle
            .neighbours()
            .get()
            .set_address_family(family)
            .execute();
        let mut out = Vec::new();
        while let Some(m) = s
            .try_next()
            .await
            .map_err(|e| self.fail(format!("list {family:?} neighbours"), e))?
        {
            out.push(m);
        }
        Ok(out)
    }
}

const ENOENT: i32 = 2;
const ESRCH: i32 = 3;
const EEXIST: i32 = 17;
const ENODEV: i32 = 19;
const EPROTONOSUPPORT: i32 = 93;
const EOPNOTSUPP: i32 = 95;
const EAFNOSUPPORT: i32 = 97;

/// The positive errno of a kernel error.
fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.code.map(|c| -c.get()),
        _ => None,
    }
}

pub(crate) fn link_from(msg: &LinkMessage) -> Link {
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
            LinkAttribute::Address(b) => l.mac = mac_of(b),
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

fn mac_of(b: &[u8]) -> Option<[u8; 6]> {
    <[u8; 6]>::try_from(b).ok()
}

/// The VXLAN parameters of a link message, if it is a VXLAN link.
fn vxlan_from(msg: &LinkMessage) -> Option<VxlanSpec> {
    let link = link_from(msg);
    let infos = msg.attributes.iter().find_map(|a| match a {
        LinkAttribute::LinkInfo(infos) => Some(infos),
        _ => None,
    })?;
    if !infos
        .iter()
        .any(|i| matches!(i, LinkInfo::Kind(InfoKind::Vxlan)))
    {
        return None;
    }
    let mut spec = VxlanSpec::new(&link.name, 0);
    spec.mac = link.mac;
    spec.mtu = link.mtu;
    for i in infos {
        if let LinkInfo::Data(InfoData::Vxlan(data)) = i {
            for d in data {
                match d {
                    InfoVxlan::Id(v) => spec.vni = *v,
                    InfoVxlan::Port(p) => spec.port = *p,
                    InfoVxlan::Local(a) => spec.local = Some(IpAddr::V4(*a)),
                    InfoVxlan::Local6(a) => spec.local = Some(IpAddr::V6(*a)),
                    InfoVxlan::Link(p) if *p != 0 => spec.parent = Some(*p),
                    InfoVxlan::Learning(b) => spec.learning = *b,
                    _ => {}
                }
            }
        }
    }
    Some(spec)
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

/// A gateway attribute: `RTA_GATEWAY`, or `RTA_VIA` (an IPv6 gateway of an IPv4 route).
fn gateway_of(a: &RouteAttribute) -> Option<IpAddr> {
    match a {
        RouteAttribute::Gateway(g) => route_addr(g),
        RouteAttribute::Via(RouteVia::Inet6(v6)) => Some(IpAddr::V6(*v6)),
        RouteAttribute::Via(RouteVia::Inet(v4)) => Some(IpAddr::V4(*v4)),
        _ => None,
    }
}

/// The model of a kernel route; `None` for kinds other than unicast and
/// blackhole and for malformed destinations.
pub(crate) fn route_from(msg: &RouteMessage) -> Option<Route> {
    let kind = match msg.header.kind {
        RouteType::Unicast => RouteKind::Unicast,
        RouteType::BlackHole => RouteKind::Blackhole,
        _ => return None,
    };
    let unspecified = match msg.header.address_family {
        AddressFamily::Inet6 => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        _ => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
    };
    let mut dst: Option<IpAddr> = None;
    let mut gateway = None;
    let mut oif = None;
    let mut multipath = Vec::new();
    let mut table = u32::from(msg.header.table);
    let mut metric = 0;
    for a in &msg.attributes {
        match a {
            RouteAttribute::Destination(d) => dst = route_addr(d),
            RouteAttribute::Gateway(_) | RouteAttribute::Via(_) => gateway = gateway_of(a),
            RouteAttribute::Oif(i) => oif = Some(*i),
            RouteAttribute::Table(t) => table = *t,
            RouteAttribute::Priority(m) => metric = *m,
            RouteAttribute::MultiPath(hops) => {
                multipath = hops
                    .iter()
                    .map(|h| NextHop {
                        gateway: h
                            .attributes
                            .iter()
                            .find_map(gateway_of)
                            .unwrap_or(unspecified),
                        oif: (h.interface_index != 0).then_some(h.interface_index),
                        onlink: h.flags.contains(RouteNextHopFlags::Onlink),
                    })
                    .collect()
            }
            _ => {}
        }
    }
    if kind == RouteKind::Blackhole {
        // IPv6 reports blackhole routes on `lo`; they have no next hop.
        gateway = None;
        oif = None;
    }
    // IPv6 gives a route added without a metric 1024: that is what 0 means here.
    if msg.header.address_family == AddressFamily::Inet6 && metric == 1024 {
        metric = 0;
    }
    let plen = msg.header.destination_prefix_length;
    Some(Route {
        dst: IpNet::new(dst.unwrap_or(unspecified), plen).ok()?,
        gateway,
        oif,
        scope: scope_from_nl(msg.header.scope),
        protocol: u8::from(msg.header.protocol),
        table,
        kind,
        onlink: msg.header.flags.contains(RouteFlags::Onlink),
        multipath,
        metric,
    })
}

pub(crate) fn route_msg(r: &Route) -> Result<RouteMessage> {
    fn bad<E: std::fmt::Debug>(r: &Route) -> impl FnOnce(E) -> Error + '_ {
        move |e| Error::Netlink {
            op: format!("build route {r}"),
            reason: format!("{e:?}"),
        }
    }
    let family = match r.family() {
        Family::V4 => AddressFamily::Inet,
        Family::V6 => AddressFamily::Inet6,
    };
    let mut b = RouteMessageBuilder::<IpAddr>::new()
        .destination_prefix(r.dst.addr(), r.dst.prefix_len())
        .map_err(bad(r))?;
    if let Some(gw) = r.gateway {
        b = b.gateway(gw).map_err(bad(r))?;
    }
    if let Some(oif) = r.oif {
        b = b.output_interface(oif);
    }
    if !r.multipath.is_empty() {
        let mut hops = Vec::with_capacity(r.multipath.len());
        for h in &r.multipath {
            let mut nh = RouteNextHopBuilder::new(family);
            if let Some(oif) = h.oif {
                nh = nh.interface(oif);
            }
            if !h.gateway.is_unspecified() {
                nh = nh.via(h.gateway).map_err(bad(r))?;
            }
            if h.onlink {
                nh = nh.onlink();
            }
            hops.push(nh.build());
        }
        b = b.multipath(hops);
    }
    if r.onlink {
        b = b.onlink();
    }
    let table = if r.table == 0 { MAIN_TABLE } else { r.table };
    let kind = match r.kind {
        RouteKind::Unicast => RouteType::Unicast,
        RouteKind::Blackhole => RouteType::BlackHole,
    };
    let mut msg = b
        .scope(scope_to_nl(r.scope))
        .protocol(RouteProtocol::from(r.protocol))
        .kind(kind)
        .table_id(table)
        .build();
    if r.protocol == 0 {
        msg.header.protocol = RouteProtocol::Boot;
    }
    if r.metric != 0 {
        msg.attributes.push(RouteAttribute::Priority(r.metric));
    }
    Ok(msg)
}

fn neigh_addr(ip: IpAddr) -> NeighbourAddress {
    match ip {
        IpAddr::V4(v4) => NeighbourAddress::Inet(v4),
        IpAddr::V6(v6) => NeighbourAddress::Inet6(v6),
    }
}

/// Destination and MAC of a neighbour or FDB message.
fn neigh_parts(m: &NeighbourMessage) -> (Option<IpAddr>, Option<[u8; 6]>) {
    let mut ip = None;
    let mut mac = None;
    for a in &m.attributes {
        match a {
            NeighbourAttribute::Destination(NeighbourAddress::Inet(v4)) => {
                ip = Some(IpAddr::V4(*v4))
            }
            NeighbourAttribute::Destination(NeighbourAddress::Inet6(v6)) => {
                ip = Some(IpAddr::V6(*v6))
            }
            // AF_BRIDGE messages leave the address family of NDA_DST to its length.
            NeighbourAttribute::Destination(NeighbourAddress::Other(b)) => {
                ip = match b.len() {
                    4 => <[u8; 4]>::try_from(b.as_slice()).ok().map(IpAddr::from),
                    16 => <[u8; 16]>::try_from(b.as_slice()).ok().map(IpAddr::from),
                    _ => None,
                }
            }
            NeighbourAttribute::LinkLayerAddress(b) => mac = mac_of(b),
            _ => {}
        }
    }
    (ip, mac)
}

const NUD_NOARP: u16 = 0x40;
const NUD_PERMANENT: u16 = 0x80;

fn fdb_msg(e: &FdbEntry) -> NeighbourMessage {
    let mut m = NeighbourMessage::default();
    m.header.family = AddressFamily::Bridge;
    m.header.ifindex = e.index;
    m.header.state = NeighbourState::Permanent;
    m.header.flags = NeighbourFlags::Own;
    m.header.kind = RouteType::Unspec;
    m.attributes
        .push(NeighbourAttribute::LinkLayerAddress(e.mac.to_vec()));
    m.attributes
        .push(NeighbourAttribute::Destination(neigh_addr(e.dst)));
    m
}

fn fdb_describe(e: &FdbEntry) -> String {
    format!("fdb {} dev #{} dst {}", format_mac(&e.mac), e.index, e.dst)
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
        Ok(self.link_msg(name).await?.map(|m| link_from(&m)))
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
            // Unicast and blackhole only: local, broadcast, multicast are skipped.
            if let Some(r) = route_from(&m) {
                out.push(r);
            }
        }
        Ok(out)
    }

    async fn replace_route(&self, route: &Route) -> Result<()> {
        let msg = route_msg(route)?;
        self.handle
            .route()
            .add(msg)
            .replace()
            .execute()
            .await
            .map_err(|e| self.fail(format!("replace route {route}"), e))
    }

    async fn add_routes(&self, routes: &[Route]) -> Vec<Result<()>> {
        self.bulk_routes(true, routes).await
    }

    async fn del_routes(&self, routes: &[Route]) -> Vec<Result<()>> {
        self.bulk_routes(false, routes).await
    }

    async fn del_address(&self, index: u32, net: IpNet) -> Result<()> {
        let what = format!("address {net} on link #{index}");
        let mut s = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute();
        while let Some(m) = s.try_next().await.map_err(|e| self.fail(&what, e))? {
            let ip = m.attributes.iter().find_map(|a| match a {
                AddressAttribute::Address(ip) => Some(*ip),
                _ => None,
            });
            if m.header.index == index
                && m.header.prefix_len == net.prefix_len()
                && ip == Some(net.addr())
            {
                return self
                    .handle
                    .address()
                    .del(m)
                    .execute()
                    .await
                    .map_err(|e| self.fail(&what, e));
            }
        }
        Err(Error::NotFound {
            what: format!("{what} in {}", self.netns),
        })
    }

    async fn create_vxlan(&self, spec: &VxlanSpec) -> Result<()> {
        let mut b = LinkVxlan::new(&spec.name, spec.vni)
            .port(spec.port)
            .learning(spec.learning);
        match spec.local {
            Some(IpAddr::V4(a)) => b = b.local(a),
            Some(IpAddr::V6(a)) => b = b.local6(a),
            None => {}
        }
        if let Some(p) = spec.parent {
            b = b.dev(p);
        }
        if let Some(mac) = spec.mac {
            b = b.address(mac.to_vec());
        }
        if let Some(mtu) = spec.mtu {
            b = b.mtu(mtu);
        }
        self.handle
            .link()
            .add(b.build())
            .execute()
            .await
            .map_err(|e| {
                self.fail(
                    format!(
                        "create vxlan {} (vni {}, port {})",
                        spec.name, spec.vni, spec.port
                    ),
                    e,
                )
            })
    }

    async fn vxlan(&self, name: &str) -> Result<Option<VxlanSpec>> {
        let Some(m) = self.link_msg(name).await? else {
            return Ok(None);
        };
        match vxlan_from(&m) {
            Some(spec) => Ok(Some(spec)),
            None => Err(Error::Collision {
                name: name.to_owned(),
                reason: format!(
                    "exists in {} as a {} link, not vxlan",
                    self.netns,
                    link_from(&m).kind.as_deref().unwrap_or("plain")
                ),
            }),
        }
    }

    async fn create_ipip(&self, name: &str) -> Result<()> {
        let op = format!("create ipip {name}");
        match self
            .handle
            .link()
            .add(LinkIpIp::new(name).build())
            .execute()
            .await
        {
            Ok(()) => Ok(()),
            Err(e) => match errno(&e) {
                Some(code @ (EOPNOTSUPP | ENODEV | EPROTONOSUPPORT | EAFNOSUPPORT)) => {
                    Err(Error::Unsupported {
                        what: format!(
                            "ipip links (no ipip module): {op} in {}: {}",
                            self.netns,
                            std::io::Error::from_raw_os_error(code)
                        ),
                    })
                }
                _ => Err(self.fail(op, e)),
            },
        }
    }

    async fn neighbours(&self, index: Option<u32>) -> Result<Vec<Neighbour>> {
        let mut out = Vec::new();
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            for m in self.neighbour_dump(family).await? {
                if index.is_some_and(|i| i != m.header.ifindex) {
                    continue;
                }
                // Like `ip neigh show`: no NOARP-only entries (the kernel's own for
                // multicast addresses).
                let state = u16::from(m.header.state);
                if state & !NUD_NOARP == 0 {
                    continue;
                }
                if let (Some(ip), Some(mac)) = neigh_parts(&m) {
                    out.push(Neighbour {
                        index: m.header.ifindex,
                        ip,
                        mac,
                        permanent: state & NUD_PERMANENT != 0,
                    });
                }
            }
        }
        Ok(out)
    }

    async fn set_neighbour(&self, n: &Neighbour) -> Result<()> {
        let state = if n.permanent {
            NeighbourState::Permanent
        } else {
            NeighbourState::Reachable
        };
        self.handle
            .neighbours()
            .add(n.index, n.ip)
            .link_layer_address(&n.mac)
            .state(state)
            .replace()
            .execute()
            .await
            .map_err(|e| {
                self.fail(
                    format!(
                        "neighbour {} lladdr {} dev #{}",
                        n.ip,
                        format_mac(&n.mac),
                        n.index
                    ),
                    e,
                )
            })
    }

    async fn del_neighbour(&self, index: u32, ip: IpAddr) -> Result<()> {
        let mut m = NeighbourMessage::default();
        m.header.family = match ip {
            IpAddr::V4(_) => AddressFamily::Inet,
            IpAddr::V6(_) => AddressFamily::Inet6,
        };
        m.header.ifindex = index;
        m.attributes
            .push(NeighbourAttribute::Destination(neigh_addr(ip)));
        self.handle
            .neighbours()
            .del(m)
            .execute()
            .await
            .map_err(|e| self.fail(format!("neighbour {ip} dev #{index}"), e))
    }

    async fn fdb(&self, index: u32) -> Result<Vec<FdbEntry>> {
        let mut out = Vec::new();
        for m in self.neighbour_dump(AddressFamily::Bridge).await? {
            if m.header.ifindex != index {
                continue;
            }
            if let (Some(dst), Some(mac)) = neigh_parts(&m) {
                out.push(FdbEntry { index, mac, dst });
            }
        }
        Ok(out)
    }

    async fn set_fdb(&self, e: &FdbEntry) -> Result<()> {
        self.handle
            .neighbours()
            .add_bridge(e.index, &e.mac)
            .flags(NeighbourFlags::Own)
            .state(NeighbourState::Permanent)
            .destination(e.dst)
            .replace()
            .execute()
            .await
            .map_err(|err| self.fail(fdb_describe(e), err))
    }

    async fn del_fdb(&self, e: &FdbEntry) -> Result<()> {
        self.handle
            .neighbours()
            .del(fdb_msg(e))
            .execute()
            .await
            .map_err(|err| self.fail(fdb_describe(e), err))
    }
}
