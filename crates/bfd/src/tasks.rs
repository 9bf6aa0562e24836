//! Every socket of an instance, with the options RFC 5881 and 5883 ask for:
//!
//! ```text
//!  rx 0.0.0.0:3784 ─┐  rx [::]:3784 ─┐  rx *:4784 (multihop) ─┐
//!                   └────────────────┴────────────────────────┴─> instance
//!  instance ─> tx socket per (local address, family): source port in
//!              49152..=65535, TTL / hop limit 255 ─> peer:3784 or :4784
//! ```
//! Receive sockets report each datagram's TTL (IP_RECVTTL /
//! IPV6_RECVHOPLIMIT) and destination address (IP_PKTINFO /
//! IPV6_RECVPKTINFO), because single-hop BFD must drop anything that did
//! not arrive with TTL 255 and sessions are told apart by address. All of
//! it goes through the safe `nix` and `socket2` APIs.

use nix::sys::socket::{
    ControlMessageOwned, MsgFlags, SockaddrStorage, recvmsg, setsockopt, sockopt,
};
use socket2::{Domain, Protocol, Socket, Type};
use std::io::{self, IoSliceMut};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::AsRawFd;
use tokio::io::Interest;
use tokio::net::UdpSocket;

/// First source port RFC 5881 allows.
pub const SOURCE_PORT_MIN: u16 = 49152;

/// The TTL / hop limit BFD packets are sent with (GTSM, RFC 5082).
pub const TTL: u8 = 255;

/// One received datagram's metadata.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Received {
    /// Bytes in the buffer.
    pub len: usize,
    /// Sender.
    pub src: SocketAddr,
    /// Our address it was sent to, when the kernel said.
    pub dst: Option<IpAddr>,
    /// Its TTL / hop limit, when the kernel said.
    pub ttl: Option<u8>,
}

/// Opens a receive socket on `port` of every address of one family, with
/// TTL and destination reporting on.
pub fn rx_socket(ipv6: bool, port: u16) -> io::Result<UdpSocket> {
    let domain = if ipv6 { Domain::IPV6 } else { Domain::IPV4 };
    let s = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))?;
    s.set_reuse_address(true)?;
    let addr: SocketAddr = if ipv6 {
        s.set_only_v6(true)?;
        setsockopt(&s, sockopt::Ipv6RecvHopLimit, &true).map_err(io::Error::from)?;
        setsockopt(&s, sockopt::Ipv6RecvPacketInfo, &true).map_err(io::Error::from)?;
        (Ipv6Addr::UNSPECIFIED, port).into()
    } else {
        setsockopt(&s, sockopt::Ipv4RecvTtl, &true).map_err(io::Error::from)?;
        setsockopt(&s, sockopt::Ipv4PacketInfo, &true).map_err(io::Error::from)?;
        (Ipv4Addr::UNSPECIFIED, port).into()
    };
    s.bind(&addr.into())?;
    s.set_nonblocking(true)?;
    UdpSocket::from_std(s.into())
}

/// Opens a transmit socket bound to `local` (or any address of `ipv6`'s
/// family) and a free source port in 49152..=65535, sending with TTL 255.
/// `seed` picks where the search for a free port starts.
pub fn tx_socket(local: Option<IpAddr>, ipv6: bool, seed: u16) -> io::Result<UdpSocket> {
    let domain = if ipv6 { Domain::IPV6 } else { Domain::IPV4 };
    let ip = local.unwrap_or(if ipv6 {
        IpAddr::V6(Ipv6Addr::UNSPECIFIED)
    } else {
        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
    });
    let range = u32::from(u16::MAX - SOURCE_PORT_MIN) + 1;
    let mut last = None;
    // Bounded: at most 64 tries before giving up with the last error.
    for i in 0..64u32 {
        let port = SOURCE_PORT_MIN + ((u32::from(seed) + i * 977) % range) as u16;
        let s = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))?;
        if ipv6 {
            s.set_only_v6(true)?;
            s.set_unicast_hops_v6(u32::from(TTL))?;
        } else {
            s.set_ttl_v4(u32::from(TTL))?;
        }
        match s.bind(&SocketAddr::new(ip, port).into()) {
            Ok(()) => {
                s.set_nonblocking(true)?;
                return UdpSocket::from_std(s.into());
            }
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::from(io::ErrorKind::AddrInUse)))
}

fn recv_now(sock: &UdpSocket, buf: &mut [u8]) -> io::Result<Received> {
    let mut cmsg = nix::cmsg_space!(nix::libc::in6_pktinfo, nix::libc::c_int);
    let mut iov = [IoSliceMut::new(buf)];
    let msg = recvmsg::<SockaddrStorage>(
        sock.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::MSG_DONTWAIT,
    )
    .map_err(io::Error::from)?;
    let src = msg
        .address
        .as_ref()
        .and_then(|a| {
            a.as_sockaddr_in()
                .map(|s| SocketAddr::from(*s))
                .or_else(|| a.as_sockaddr_in6().map(|s| SocketAddr::from(*s)))
        })
        .ok_or_else(|| io::Error::other("datagram without a source address"))?;
    let mut dst = None;
    let mut ttl = None;
    for c in msg.cmsgs().map_err(io::Error::from)? {
        match c {
            ControlMessageOwned::Ipv4Ttl(t) | ControlMessageOwned::Ipv6HopLimit(t) => {
                ttl = u8::try_from(t).ok();
            }
            ControlMessageOwned::Ipv4PacketInfo(i) => {
                dst = Some(IpAddr::V4(Ipv4Addr::from(u32::from_be(i.ipi_addr.s_addr))));
            }
            ControlMessageOwned::Ipv6PacketInfo(i) => {
                dst = Some(IpAddr::V6(Ipv6Addr::from(i.ipi6_addr.s6_addr)));
            }
            _ => {}
        }
    }
    // IPv4-mapped sources do not occur: IPv6 sockets are v6-only.
    Ok(Received {
        len: msg.bytes,
        src,
        dst,
        ttl,
    })
}

/// Receives one datagram with its metadata.
pub async fn recv(sock: &UdpSocket, buf: &mut [u8]) -> io::Result<Received> {
    sock.async_io(Interest::READABLE, || recv_now(sock, buf))
        .await
}

/// Like [`recv`], but pends forever without a socket (for `select!`).
pub async fn recv_opt(sock: Option<&UdpSocket>, buf: &mut [u8]) -> io::Result<Received> {
    match sock {
        Some(s) => recv(s, buf).await,
        None => std::future::pending().await,
    }
}

/// Sends without waiting: a full socket buffer drops the packet, which BFD
/// tolerates (it is what a congested link would do anyway).
pub fn send(sock: &UdpSocket, to: SocketAddr, bytes: &[u8]) -> io::Result<()> {
    sock.try_send_to(bytes, to).map(drop)
}
