//! Connection collision (RFC 4271 section 6.8) against a scripted raw peer:
//! our speaker has an outbound session in OpenConfirm when the peer opens a
//! second connection; the BGP identifiers decide which one survives.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;
use tabby_bgp::api::{InstanceConfig, PeerConfig};
use tabby_bgp::packet::capability::Capability;
use tabby_bgp::packet::error::ErrorCode;
use tabby_bgp::packet::message::{HEADER_LEN, Message, OpenMsg};
use tabby_bgp::packet::{DecodeCxt, EncodeCxt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

const T: Duration = Duration::from_secs(10);

async fn read_msg(s: &mut TcpStream) -> Option<Message> {
    let mut buf = vec![0u8; HEADER_LEN];
    tokio::time::timeout(T, s.read_exact(&mut buf))
        .await
        .ok()?
        .ok()?;
    let len = usize::from(u16::from_be_bytes([buf[16], buf[17]]));
    buf.resize(len, 0);
    s.read_exact(&mut buf[HEADER_LEN..]).await.ok()?;
    Some(
        Message::decode(
            &buf,
            &DecodeCxt {
                four_octet_as: true,
                extended_message: false,
            },
        )
        .expect("valid message"),
    )
}

async fn send(s: &mut TcpStream, m: Message) {
    s.write_all(&m.encode(&EncodeCxt::default())).await.unwrap();
}

fn open(router_id: Ipv4Addr) -> Message {
    Message::Open(OpenMsg::new(
        65001,
        90,
        router_id,
        vec![
            Capability::MultiProtocol { afi: 1, safi: 1 },
            Capability::FourOctetAs(65001),
        ],
    ))
}

/// Runs the collision; returns (what arrived on our speaker's outbound
/// connection, what arrived on the peer-initiated connection).
async fn collide(third: u8, peer_router_id: Ipv4Addr) -> (Vec<Message>, Vec<Message>) {
    let ours = Ipv4Addr::new(127, 0, third, 1);
    let peer = Ipv4Addr::new(127, 0, third, 2);
    let listener = TcpListener::bind((peer, 0)).await.unwrap();
    let h = tabby_bgp::start(InstanceConfig {
        router_id: ours,
        asn: 64512,
        listen: Some(SocketAddr::new(IpAddr::V4(ours), 0)),
        cluster_id: None,
        hold_time: 90,
        connect_retry_secs: 30,
        idle_hold_secs: 30,
        graceful_restart_time: 0,
    })
    .await
    .unwrap();
    let mut cfg = PeerConfig::new(IpAddr::V4(peer), 65001);
    cfg.port = listener.local_addr().unwrap().port();
    cfg.source_address = Some(IpAddr::V4(ours));
    h.add_peer(cfg).await.unwrap();
    // Our speaker connects out; answer its OPEN so it reaches OpenConfirm.
    let (mut outbound, _) = tokio::time::timeout(T, listener.accept())
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(
        read_msg(&mut outbound).await,
        Some(Message::Open(_))
    ));
    send(&mut outbound, open(peer_router_id)).await;
    assert_eq!(read_msg(&mut outbound).await, Some(Message::Keepalive));
    // Now the peer opens its own connection to our speaker.
    let sock = TcpSocket::new_v4().unwrap();
    sock.bind(SocketAddr::new(IpAddr::V4(peer), 0)).unwrap();
    let mut inbound = sock.connect(h.local_addr().unwrap()).await.unwrap();
    send(&mut inbound, open(peer_router_id)).await;
    let mut on_out = Vec::new();
    let mut on_in = Vec::new();
    // Collect what each connection carries until it closes or goes quiet.
    for (s, v) in [(&mut outbound, &mut on_out), (&mut inbound, &mut on_in)] {
        while let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(500), read_msg(s)).await
        {
            v.push(m);
        }
    }
    h.shutdown().await.unwrap();
    (on_out, on_in)
}

fn is_collision_cease(m: &Message) -> bool {
    matches!(m, Message::Notification(n) if n.code == ErrorCode::Cease && n.subcode == 7)
}

#[tokio::test]
async fn higher_peer_id_wins_with_its_connection() {
    let (on_out, on_in) = collide(6, Ipv4Addr::new(127, 0, 6, 200)).await;
    assert!(
        on_out.iter().any(is_collision_cease),
        "outbound got {on_out:?}"
    );
    assert!(
        matches!(on_in.first(), Some(Message::Open(_))),
        "inbound got {on_in:?}"
    );
    assert!(!on_in.iter().any(is_collision_cease));
}

#[tokio::test]
async fn lower_peer_id_loses_its_connection() {
    let (on_out, on_in) = collide(7, Ipv4Addr::new(1, 1, 1, 1)).await;
    assert!(
        on_in.iter().any(is_collision_cease),
        "inbound got {on_in:?}"
    );
    assert!(
        !on_out.iter().any(is_collision_cease),
        "outbound got {on_out:?}"
    );
}
