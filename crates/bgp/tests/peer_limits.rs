//! What one peer may do to an in-process speaker (issue 16, items 3-5),
//! over loopback without root: a prefix limit that closes the session with
//! Cease and waits before retrying, only negotiated families and a correct
//! first AS accepted, ROUTE-REFRESH only for negotiated families, a capped
//! stale time for a restarting peer that flapping cannot extend, and the
//! graceful restart R and F bits in our OPEN.

use ipnet::{IpNet, Ipv4Net};
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};
use tabby_bgp::api::{BgpHandle, InstanceConfig, PeerConfig, RestartState};
use tabby_bgp::packet::attribute::{AsPath, NextHop, PathAttributes};
use tabby_bgp::packet::capability::{Capability, GrFamily};
use tabby_bgp::packet::error::ErrorCode;
use tabby_bgp::packet::message::{Message, OpenMsg, RouteRefreshMsg, UpdateMsg};
use tabby_bgp::packet::{DecodeCxt, EncodeCxt};

const WAIT: Duration = Duration::from_secs(20);

fn lo(third: u8, last: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, third, last)
}

async fn speaker(addr: Ipv4Addr, asn: u32) -> BgpHandle {
    tabby_bgp::start(InstanceConfig {
        router_id: addr,
        asn,
        listen: Some(SocketAddr::new(IpAddr::V4(addr), 0)),
        cluster_id: None,
        hold_time: 9,
        connect_retry_secs: 1,
        idle_hold_secs: 1,
        graceful_restart_time: 120,
    })
    .await
    .expect("speaker starts")
}

/// A peer of `h` at `addr`, passive: the raw peers connect.
fn passive_peer(addr: Ipv4Addr, asn: u32) -> PeerConfig {
    let mut p = PeerConfig::new(IpAddr::V4(addr), asn);
    p.passive = true;
    p
}

async fn state_of(h: &BgpHandle, peer: Ipv4Addr) -> (String, String) {
    h.peers()
        .await
        .unwrap()
        .into_iter()
        .find(|p| p.address == IpAddr::V4(peer))
        .map(|p| (p.state, p.info))
        .unwrap_or_default()
}

async fn wait_for<T>(what: &str, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn learned(h: &BgpHandle) -> Vec<IpNet> {
    h.best_paths()
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.prefix)
        .collect()
}

const E4: EncodeCxt = EncodeCxt {
    four_octet_as: true,
    extended_message: false,
};
const D4: DecodeCxt = DecodeCxt {
    four_octet_as: true,
    extended_message: false,
};

/// A BGP peer on a bare socket (blocking; driven from a blocking task).
struct Raw {
    s: TcpStream,
    buf: Vec<u8>,
    /// The OPEN the speaker sent.
    open: OpenMsg,
}

impl Raw {
    fn connect(src: Ipv4Addr, to: SocketAddr, asn: u32, caps: Vec<Capability>) -> Raw {
        let deadline = Instant::now() + WAIT;
        loop {
            let sock =
                socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
            sock.bind(&SocketAddr::new(IpAddr::V4(src), 0).into())
                .unwrap();
            if sock.connect(&to.into()).is_ok() {
                let mut r = Raw {
                    s: sock.into(),
                    buf: Vec::new(),
                    open: OpenMsg::new(1, 0, Ipv4Addr::LOCALHOST, Vec::new()),
                };
                r.s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                r.send(&Message::Open(OpenMsg::new(asn, 9, src, caps.clone())));
                let mut open = None;
                let up = loop {
                    match r.next() {
                        Some(Message::Open(o)) => {
                            open = Some(o);
                            r.send(&Message::Keepalive);
                        }
                        Some(Message::Keepalive) if open.is_some() => break true,
                        Some(Message::Keepalive | Message::Update(_)) => {}
                        _ => break false,
                    }
                };
                if up && let Some(o) = open {
                    r.open = o;
                    return r;
                }
            }
            assert!(Instant::now() < deadline, "no session from {src} to {to}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn send(&mut self, m: &Message) {
        let _ = self.s.write_all(&m.encode(&E4));
    }

    /// The next message, `None` on close or after the read timeout.
    fn next(&mut self) -> Option<Message> {
        loop {
            if self.buf.len() >= 19 {
                let len = usize::from(u16::from_be_bytes([self.buf[16], self.buf[17]]));
                if self.buf.len() >= len {
                    let f: Vec<u8> = self.buf.drain(..len).collect();
                    return Message::decode(&f, &D4).ok();
                }
            }
            let mut chunk = [0u8; 65536];
            match self.s.read(&mut chunk) {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Announces `prefixes` from an eBGP peer with `path`.
    fn announce(&mut self, path: &[u32], nh: Ipv4Addr, prefixes: &[IpNet]) {
        let attrs = PathAttributes {
            as_path: AsPath::from_sequence(path),
            ..Default::default()
        };
        for m in UpdateMsg::announce(&attrs, NextHop::Ipv4(nh), prefixes, &E4).unwrap() {
            self.send(&Message::Update(m));
        }
    }

    /// Prefixes announced to us until `quiet` passes without a message.
    fn collect(&mut self, quiet: Duration) -> Vec<IpNet> {
        self.s.set_read_timeout(Some(quiet)).unwrap();
        let mut out = Vec::new();
        while let Some(m) = self.next() {
            if let Message::Update(u) = m {
                out.extend(u.routes(true).announced.into_iter().map(|(p, _)| p));
            }
        }
        out
    }
}

fn v24(third: u8) -> IpNet {
    IpNet::V4(Ipv4Net::new(Ipv4Addr::new(100, 64, third, 0), 24).unwrap())
}

fn caps4(asn: u32) -> Vec<Capability> {
    vec![
        Capability::MultiProtocol { afi: 1, safi: 1 },
        Capability::RouteRefresh,
        Capability::FourOctetAs(asn),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefix_limit_closes_with_cease_and_retries_after_the_wait() {
    let (a_ip, b_ip) = (lo(21, 1), lo(21, 2));
    let a = speaker(a_ip, 64512).await;
    let b = speaker(b_ip, 65001).await;
    let prefixes: Vec<IpNet> = (0..50).map(v24).collect();
    a.originate(prefixes.clone(), vec![]).await.unwrap();
    let mut to_b = PeerConfig::new(b.local_addr().unwrap().ip(), 65001);
    to_b.port = b.local_addr().unwrap().port();
    to_b.source_address = Some(IpAddr::V4(a_ip));
    a.add_peer(to_b).await.unwrap();
    let mut to_a = PeerConfig::new(IpAddr::V4(a_ip), 64512);
    to_a.port = a.local_addr().unwrap().port();
    to_a.source_address = Some(IpAddr::V4(b_ip));
    to_a.max_prefixes = Some(20);
    to_a.max_prefixes_restart_secs = Some(3);
    b.add_peer(to_a).await.unwrap();
    let info = wait_for("B over its limit", async || {
        let (state, info) = state_of(&b, a_ip).await;
        (state == "Idle" && info.contains("maximum number of prefixes")).then_some(info)
    })
    .await;
    let tripped = Instant::now();
    assert!(info.contains("20 ipv4-unicast"), "{info}");
    // A was told why (Cease 6/1) and B holds none of the routes.
    let (_, a_info) = state_of(&a, b_ip).await;
    assert!(a_info.contains("(6/1)"), "{a_info}");
    assert!(learned(&b).await.is_empty());
    // Fewer routes, and after the wait the session comes back.
    a.withdraw(prefixes[10..].to_vec()).await.unwrap();
    wait_for("B back up", async || {
        (state_of(&b, a_ip).await.0 == "Established").then_some(())
    })
    .await;
    assert!(
        tripped.elapsed() >= Duration::from_millis(2500),
        "back after only {:?}",
        tripped.elapsed()
    );
    wait_for("B learns the 10 left", async || {
        (learned(&b).await.len() == 10).then_some(())
    })
    .await;
    for h in [a, b] {
        h.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_negotiated_families_and_a_correct_first_as_are_accepted() {
    let (me, peer) = (lo(22, 1), lo(22, 2));
    let h = speaker(me, 64512).await;
    h.add_peer(passive_peer(peer, 65001)).await.unwrap();
    let to = h.local_addr().unwrap();
    let mut r = tokio::task::spawn_blocking(move || {
        let mut r = Raw::connect(peer, to, 65001, caps4(65001));
        // IPv4 only was negotiated: an IPv6 route is ignored.
        let v6: IpNet = "2001:db8:1::/48".parse().unwrap();
        let attrs = PathAttributes {
            as_path: AsPath::from_sequence(&[65001]),
            ..Default::default()
        };
        let nh6 = NextHop::Ipv6 {
            global: "2001:db8::2".parse().unwrap(),
            link_local: None,
        };
        for m in UpdateMsg::announce(&attrs, nh6, &[v6], &E4).unwrap() {
            r.send(&Message::Update(m));
        }
        // A path that does not start with the peer's AS is withdrawn.
        r.announce(&[65002], peer, &[v24(1)]);
        r.announce(&[65001, 65002], peer, &[v24(2)]);
        r
    })
    .await
    .unwrap();
    wait_for("the good route", async || {
        learned(&h).await.contains(&v24(2)).then_some(())
    })
    .await;
    assert_eq!(learned(&h).await, vec![v24(2)]);
    // The route with a wrong first AS replaces an accepted one: withdrawn.
    r = tokio::task::spawn_blocking(move || {
        r.announce(&[65009], peer, &[v24(2)]);
        r
    })
    .await
    .unwrap();
    wait_for("the bad path withdrawn", async || {
        learned(&h).await.is_empty().then_some(())
    })
    .await;
    assert_eq!(state_of(&h, peer).await.0, "Established");
    drop(r);
    h.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_refresh_only_for_a_negotiated_family_and_only_that_family() {
    let (me, peer) = (lo(23, 1), lo(23, 2));
    let h = speaker(me, 64512).await;
    let v4: Vec<IpNet> = (1..4).map(v24).collect();
    let v6: IpNet = "2001:db8:7::/48".parse().unwrap();
    let mut all = v4.clone();
    all.push(v6);
    h.originate(all, vec![]).await.unwrap();
    let mut cfg = passive_peer(peer, 65001);
    cfg.families = vec![
        tabby_bgp::api::FamilyName::Ipv4Unicast,
        tabby_bgp::api::FamilyName::Ipv6Unicast,
    ];
    cfg.next_hop_v6 = Some("2001:db8::1".parse().unwrap());
    h.add_peer(cfg).await.unwrap();
    let to = h.local_addr().unwrap();
    let (first, after_v6, after_v4, after_bogus, _session) =
        tokio::task::spawn_blocking(move || {
            let mut caps = caps4(65001);
            caps.insert(1, Capability::MultiProtocol { afi: 2, safi: 1 });
            let mut r = Raw::connect(peer, to, 65001, caps);
            let first = r.collect(Duration::from_millis(800));
            let rr = |afi, safi| {
                Message::RouteRefresh(RouteRefreshMsg {
                    afi,
                    subtype: 0,
                    safi,
                })
            };
            r.send(&rr(2, 1));
            let after_v6 = r.collect(Duration::from_millis(800));
            // Many requests for IPv4 at once: coalesced, sent at most twice.
            for _ in 0..50 {
                r.send(&rr(1, 1));
            }
            let after_v4 = r.collect(Duration::from_millis(800));
            // A family never negotiated (IPv4 multicast): nothing.
            r.send(&rr(1, 2));
            let after_bogus = r.collect(Duration::from_millis(800));
            (first, after_v6, after_v4, after_bogus, r)
        })
        .await
        .unwrap();
    assert_eq!(first.len(), 4, "{first:?}");
    assert_eq!(after_v6, vec![v6]);
    // Requests read in one burst coalesce; how many arrive in one depends
    // on timing, so only the content is exact.
    let got: std::collections::BTreeSet<IpNet> = after_v4.iter().copied().collect();
    assert_eq!(got, v4.iter().copied().collect(), "{after_v4:?}");
    assert!(
        after_v4.len() < 50 * v4.len(),
        "not coalesced: {}",
        after_v4.len()
    );
    eprintln!("50 requests for IPv4 resent {} prefixes", after_v4.len());
    assert!(after_bogus.is_empty(), "{after_bogus:?}");
    assert_eq!(state_of(&h, peer).await.0, "Established");
    h.shutdown().await.unwrap();
}

fn gr_caps(asn: u32, time: u16) -> Vec<Capability> {
    let mut c = caps4(asn);
    c.push(Capability::GracefulRestart {
        flags: 0,
        time,
        families: vec![GrFamily {
            afi: 1,
            safi: 1,
            flags: 0x80,
        }],
    });
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarting_peer_keeps_routes_for_the_capped_time_and_flapping_cannot_extend_it() {
    let (me, peer) = (lo(24, 1), lo(24, 2));
    let h = speaker(me, 64512).await;
    let mut cfg = passive_peer(peer, 65001);
    cfg.max_stale_secs = Some(3);
    h.add_peer(cfg).await.unwrap();
    let to = h.local_addr().unwrap();
    // The peer asks for 4095 s, announces, and vanishes (no NOTIFICATION).
    tokio::task::spawn_blocking(move || {
        let mut r = Raw::connect(peer, to, 65001, gr_caps(65001, 4095));
        r.announce(&[65001], peer, &[v24(1)]);
        std::thread::sleep(Duration::from_millis(300));
    })
    .await
    .unwrap();
    let down = Instant::now();
    wait_for("the session down", async || {
        (state_of(&h, peer).await.0 != "Established").then_some(())
    })
    .await;
    assert_eq!(learned(&h).await, vec![v24(1)], "kept while restarting");
    // It comes back and goes again before its End-of-RIB, twice: the
    // deadline set by the first restart stands.
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_millis(1200)).await;
        tokio::task::spawn_blocking(move || {
            let _r = Raw::connect(peer, to, 65001, gr_caps(65001, 4095));
            std::thread::sleep(Duration::from_millis(200));
        })
        .await
        .unwrap();
    }
    wait_for("the stale route removed", async || {
        learned(&h).await.is_empty().then_some(())
    })
    .await;
    let kept = down.elapsed();
    assert!(
        (Duration::from_millis(2500)..Duration::from_secs(6)).contains(&kept),
        "stale route kept {kept:?}, cap 3 s"
    );
    h.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_state_sets_r_once_and_f_for_every_family() {
    let (me, peer) = (lo(25, 1), lo(25, 2));
    let h = speaker(me, 64512).await;
    h.set_restart_state(RestartState {
        restarted: true,
        forwarding_preserved: true,
    })
    .await
    .unwrap();
    h.add_peer(passive_peer(peer, 65001)).await.unwrap();
    let to = h.local_addr().unwrap();
    let gr = |o: &OpenMsg| {
        o.capabilities()
            .find_map(|c| match c {
                Capability::GracefulRestart {
                    flags, families, ..
                } => Some((*flags, families.iter().map(|f| f.flags).collect::<Vec<_>>())),
                _ => None,
            })
            .expect("graceful restart capability")
    };
    let first = tokio::task::spawn_blocking(move || {
        let mut r = Raw::connect(peer, to, 65001, caps4(65001));
        r.send(&Message::Notification(
            tabby_bgp::packet::message::NotificationMsg::new(ErrorCode::Cease, 2),
        ));
        r.open
    })
    .await
    .unwrap();
    assert_eq!(gr(&first), (0x80, vec![0x80]), "R and F after a restart");
    let second =
        tokio::task::spawn_blocking(move || Raw::connect(peer, to, 65001, caps4(65001)).open)
            .await
            .unwrap();
    assert_eq!(gr(&second), (0, vec![0x80]), "R only once, F still");
    h.shutdown().await.unwrap();
}
