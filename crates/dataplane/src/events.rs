//! Kernel change notifications: a separate rtnetlink socket subscribed to link,
//! IPv4/IPv6 route and neighbour groups, translated into [`NetlinkEvent`]s so the
//! node agent can repair drift without polling.

use std::path::Path;

use futures::StreamExt;
use rtnetlink::MulticastGroup;
use rtnetlink::packet_core::{NetlinkMessage, NetlinkPayload};
use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::sys::AsyncSocket;
use tokio::sync::mpsc;

use crate::error::{Error, Result};
use crate::model::NetlinkEvent;
use crate::netns::NetnsFile;
use crate::rtnl::{grow_rcvbuf, link_from, route_from};

/// Events buffered for a slow receiver before the translating task waits (the
/// socket side keeps reading meanwhile, so nothing is lost to a slow consumer).
const QUEUE: usize = 4096;

/// Starts watching the namespace at `netns` (the caller's when `None`) and returns
/// the events as they come. The socket is opened on a dedicated thread inside the
/// namespace; the socket and translating tasks run on the current Tokio runtime
/// (this must be called inside one) and stop once the receiver is dropped.
pub fn monitor(netns: Option<&Path>) -> Result<mpsc::Receiver<NetlinkEvent>> {
    let rt = tokio::runtime::Handle::try_current().map_err(|e| Error::Netlink {
        op: "open netlink monitor".into(),
        reason: format!("not inside a Tokio runtime: {e}"),
    })?;
    let (conn, messages) = match netns {
        None => open()?,
        Some(path) => {
            let ns = NetnsFile::open(path)?;
            ns.run(move || {
                // The socket registers with the runtime's reactor, hence `enter`.
                let _guard = rt.enter();
                open()
            })?
        }
    };
    tokio::spawn(conn);
    let (tx, rx) = mpsc::channel(QUEUE);
    tokio::spawn(async move {
        let mut messages = messages;
        while let Some((m, _)) = messages.next().await {
            if tx.send(translate(m)).await.is_err() {
                break;
            }
        }
    });
    Ok(rx)
}

type Messages = futures::channel::mpsc::UnboundedReceiver<(
    NetlinkMessage<RouteNetlinkMessage>,
    rtnetlink::sys::SocketAddr,
)>;

fn open() -> Result<(rtnetlink::proto::Connection<RouteNetlinkMessage>, Messages)> {
    let (mut conn, _handle, messages) = rtnetlink::new_multicast_connection(&[
        MulticastGroup::Link,
        MulticastGroup::Ipv4Route,
        MulticastGroup::Ipv6Route,
        MulticastGroup::Neigh,
    ])
    .map_err(|e| Error::Netlink {
        op: "open netlink monitor socket".into(),
        reason: e.to_string(),
    })?;
    // A burst (100,000 routes) outruns any reader; a big buffer makes an overrun
    // (reported as `Other`) rare.
    grow_rcvbuf(conn.socket_mut().socket_mut());
    Ok((conn, messages))
}

/// The event a notification stands for.
fn translate(m: NetlinkMessage<RouteNetlinkMessage>) -> NetlinkEvent {
    let m = match m.payload {
        NetlinkPayload::InnerMessage(m) => m,
        // The kernel dropped notifications: whoever listens must re-read everything.
        NetlinkPayload::Overrun(_) | NetlinkPayload::Error(_) => return NetlinkEvent::Lost,
        _ => return NetlinkEvent::Other,
    };
    let route = |deleted, r: &_| match route_from(r) {
        Some(route) => NetlinkEvent::Route { deleted, route },
        None => NetlinkEvent::Other,
    };
    let link = |deleted, l: &_| {
        let l = link_from(l);
        NetlinkEvent::Link {
            deleted,
            index: l.index,
            name: l.name,
        }
    };
    match &m {
        RouteNetlinkMessage::NewRoute(r) => route(false, r),
        RouteNetlinkMessage::DelRoute(r) => route(true, r),
        RouteNetlinkMessage::NewLink(l) => link(false, l),
        RouteNetlinkMessage::DelLink(l) => link(true, l),
        RouteNetlinkMessage::NewNeighbour(n) => NetlinkEvent::Neighbour {
            deleted: false,
            index: n.header.ifindex,
        },
        RouteNetlinkMessage::DelNeighbour(n) => NetlinkEvent::Neighbour {
            deleted: true,
            index: n.header.ifindex,
        },
        _ => NetlinkEvent::Other,
    }
}
