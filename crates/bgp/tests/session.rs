//! In-process speakers peering over loopback (127.0.0.x, ephemeral ports):
//! route exchange over eBGP, route reflection over iBGP, run-time peer
//! changes, and TCP MD5 between two speakers.

use ipnet::IpNet;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;
use tabby_bgp::api::{BgpHandle, InstanceConfig, PeerConfig};
use tabby_bgp::rib::BestPathChange;
use tokio::sync::broadcast;

const WAIT: Duration = Duration::from_secs(20);

fn lo(last: u8, third: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, third, last)
}

async fn speaker(addr: Ipv4Addr, asn: u32) -> BgpHandle {
    speaker_with_hold(addr, asn, 9).await
}

async fn speaker_with_hold(addr: Ipv4Addr, asn: u32, hold_time: u16) -> BgpHandle {
    tabby_bgp::start(InstanceConfig {
        router_id: addr,
        asn,
        listen: Some(SocketAddr::new(IpAddr::V4(addr), 0)),
        cluster_id: None,
        hold_time,
        connect_retry_secs: 1,
        idle_hold_secs: 1,
        graceful_restart_time: 120,
    })
    .await
    .expect("speaker starts")
}

fn peer_of(me: Ipv4Addr, other: &BgpHandle, asn: u32) -> PeerConfig {
    let a = other.local_addr().unwrap();
    let mut p = PeerConfig::new(a.ip(), asn);
    p.port = a.port();
    p.source_address = Some(IpAddr::V4(me));
    p
}

/// Follows one speaker's best-path stream and keeps the latest next hops
/// per prefix, so waits are on state and do not depend on event order.
struct Watch {
    rx: broadcast::Receiver<BestPathChange>,
    latest: HashMap<IpNet, Vec<IpAddr>>,
}

impl Watch {
    fn new(h: &BgpHandle) -> Watch {
        Watch {
            rx: h.subscribe_routes(),
            latest: HashMap::new(),
        }
    }

    /// Waits until the current next hops of `prefix` satisfy `f`.
    async fn route(&mut self, prefix: &str, f: impl Fn(&[IpAddr]) -> bool) {
        let prefix: IpNet = prefix.parse().unwrap();
        let ok = tokio::time::timeout(WAIT, async {
            loop {
                if self.latest.get(&prefix).is_some_and(|n| f(n)) {
                    return;
                }
                let c = self.rx.recv().await.expect("route stream open");
                self.latest.insert(c.prefix, c.next_hops);
            }
        })
        .await;
        assert!(
            ok.is_ok(),
            "no matching state for {prefix}: {:?}",
            self.latest.get(&prefix)
        );
    }
}

async fn wait_state(h: &BgpHandle, peer: Ipv4Addr, state: &str) {
    let ok = tokio::time::timeout(WAIT, async {
        loop {
            let peers = h.peers().await.unwrap();
            if peers
                .iter()
                .any(|p| p.address == IpAddr::V4(peer) && p.state == state)
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    let peers = h.peers().await.unwrap();
    assert!(ok.is_ok(), "{peer} never reached {state}: {peers:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ebgp_exchange_both_active_and_withdraw() {
    let (a_ip, b_ip) = (lo(1, 1), lo(2, 1));
    let a = speaker(a_ip, 64512).await;
    let b = speaker(b_ip, 65001).await;
    let mut a_routes = Watch::new(&a);
    let mut b_routes = Watch::new(&b);
    a.originate(
        vec!["100.64.1.0/26".parse().unwrap()],
        vec![(64512 << 16) | 100],
    )
    .await
    .unwrap();
    b.originate(vec!["100.64.2.0/26".parse().unwrap()], vec![])
        .await
        .unwrap();
    // Both sides connect actively: collision resolution must converge.
    a.add_peer(peer_of(a_ip, &b, 65001)).await.unwrap();
    b.add_peer(peer_of(b_ip, &a, 64512)).await.unwrap();
    wait_state(&a, b_ip, "Established").await;
    wait_state(&b, a_ip, "Established").await;
    // eBGP: next hop is the advertiser's session address.
    a_routes
        .route("100.64.2.0/26", |n| n == [IpAddr::V4(b_ip)])
        .await;
    b_routes
        .route("100.64.1.0/26", |n| n == [IpAddr::V4(a_ip)])
        .await;
    // Withdraw on B reaches A.
    b.withdraw(vec!["100.64.2.0/26".parse().unwrap()])
        .await
        .unwrap();
    a_routes.route("100.64.2.0/26", |n| n.is_empty()).await;
    // A new origination after the session is up.
    b.originate(vec!["100.64.3.0/26".parse().unwrap()], vec![])
        .await
        .unwrap();
    a_routes
        .route("100.64.3.0/26", |n| n == [IpAddr::V4(b_ip)])
        .await;
    // Removing the peer at run time withdraws its routes.
    a.remove_peer(IpAddr::V4(b_ip)).await.unwrap();
    a_routes.route("100.64.3.0/26", |n| n.is_empty()).await;
    b_routes.route("100.64.1.0/26", |n| n.is_empty()).await;
    assert!(a.peers().await.unwrap().is_empty());
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_reflector_passes_client_routes_with_next_hop_unchanged() {
    let (rr_ip, c1_ip, c2_ip, nc_ip) = (lo(1, 2), lo(2, 2), lo(3, 2), lo(4, 2));
    let rr = speaker(rr_ip, 64512).await;
    let c1 = speaker(c1_ip, 64512).await;
    let c2 = speaker(c2_ip, 64512).await;
    let nc = speaker(nc_ip, 64512).await;
    let mut c2_routes = Watch::new(&c2);
    let mut nc_routes = Watch::new(&nc);
    for (ip, h) in [(c1_ip, &c1), (c2_ip, &c2), (nc_ip, &nc)] {
        let mut p = peer_of(rr_ip, h, 64512);
        p.route_reflector_client = ip != nc_ip;
        p.passive = true;
        rr.add_peer(p).await.unwrap();
        h.add_peer(peer_of(ip, &rr, 64512)).await.unwrap();
    }
    for ip in [c1_ip, c2_ip, nc_ip] {
        wait_state(&rr, ip, "Established").await;
    }
    c1.originate(vec!["100.64.10.0/26".parse().unwrap()], vec![])
        .await
        .unwrap();
    nc.originate(vec!["100.64.20.0/26".parse().unwrap()], vec![])
        .await
        .unwrap();
    // Client route reflected to the other client and to the non-client,
    // next hop still the originating client (iBGP keeps next hops).
    c2_routes
        .route("100.64.10.0/26", |n| n == [IpAddr::V4(c1_ip)])
        .await;
    nc_routes
        .route("100.64.10.0/26", |n| n == [IpAddr::V4(c1_ip)])
        .await;
    // Non-client route reflected to clients only.
    c2_routes
        .route("100.64.20.0/26", |n| n == [IpAddr::V4(nc_ip)])
        .await;
    for h in [rr, c1, c2, nc] {
        h.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn md5_protected_session_and_peer_update() {
    let (a_ip, b_ip) = (lo(1, 3), lo(2, 3));
    let a = speaker(a_ip, 64512).await;
    let b = speaker(b_ip, 64512).await;
    let mut pa = peer_of(a_ip, &b, 64512);
    pa.password = Some("s3cret".into());
    let mut pb = peer_of(b_ip, &a, 64512);
    pb.password = Some("wrong".into());
    pb.passive = true;
    a.add_peer(pa).await.unwrap();
    b.add_peer(pb.clone()).await.unwrap();
    // Mismatched keys: the SYNs are dropped, no session.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let st = a.peers().await.unwrap();
    assert_ne!(st[0].state, "Established", "{st:?}");
    // Fixing the key at run time brings the session up.
    pb.password = Some("s3cret".into());
    b.update_peer(pb).await.unwrap();
    wait_state(&a, b_ip, "Established").await;
    wait_state(&b, a_ip, "Established").await;
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalives_hold_a_short_hold_time_session_up() {
    let (a_ip, b_ip) = (lo(1, 5), lo(2, 5));
    // Hold time 3 s: keepalives every second must keep it alive.
    let a = speaker_with_hold(a_ip, 64512, 3).await;
    let b = speaker_with_hold(b_ip, 64512, 30).await;
    a.add_peer(peer_of(a_ip, &b, 64512)).await.unwrap();
    let mut pb = peer_of(b_ip, &a, 64512);
    pb.passive = true;
    b.add_peer(pb).await.unwrap();
    wait_state(&a, b_ip, "Established").await;
    let mut changes = a.subscribe_peers();
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(
        changes.try_recv().is_err(),
        "session flapped with a 3 s hold time"
    );
    let st = b.peers().await.unwrap();
    assert_eq!(st[0].state, "Established");
    // Stopping B makes A drop the session (Cease received, not a timeout).
    b.shutdown().await.unwrap();
    let down = tokio::time::timeout(WAIT, changes.recv())
        .await
        .unwrap()
        .unwrap();
    assert_ne!(down.state, "Established");
    assert!(down.info.contains("NOTIFICATION"), "{down:?}");
    a.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_thousand_prefixes_converge_quickly() {
    let (a_ip, b_ip, c_ip) = (lo(1, 8), lo(2, 8), lo(3, 8));
    let a = speaker(a_ip, 64512).await;
    let b = speaker(b_ip, 65001).await;
    let c = speaker(c_ip, 65002).await;
    let mut c_routes = c.subscribe_routes();
    // A -> B -> C: B has to import, select and re-export every prefix,
    // transit between two eBGP peers, which B must be told to be.
    a.add_peer(peer_of(a_ip, &b, 65001)).await.unwrap();
    b.add_peer(peer_of(b_ip, &a, 64512)).await.unwrap();
    let mut to_c = peer_of(b_ip, &c, 65002);
    to_c.transit = true;
    b.add_peer(to_c).await.unwrap();
    c.add_peer(peer_of(c_ip, &b, 65001)).await.unwrap();
    wait_state(&b, a_ip, "Established").await;
    wait_state(&b, c_ip, "Established").await;
    let n = 20_000u32;
    let prefixes: Vec<IpNet> = (0..n)
        .map(|i| {
            let a = Ipv4Addr::from(0x6440_0000u32 + (i << 6));
            IpNet::V4(ipnet::Ipv4Net::new(a, 26).unwrap())
        })
        .collect();
    let start = std::time::Instant::now();
    // Several communities so B has several attribute groups to pack.
    for (i, chunk) in prefixes.chunks(1000).enumerate() {
        a.originate(chunk.to_vec(), vec![i as u32]).await.unwrap();
    }
    let mut seen = std::collections::HashSet::new();
    tokio::time::timeout(Duration::from_secs(30), async {
        while seen.len() < n as usize {
            let changes = match c_routes.recv().await {
                Ok(ch) => vec![ch],
                // A receiver starved of CPU (a loaded machine) falls behind the
                // stream; what it missed is in C's table.
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                    c.best_paths().await.expect("C's table")
                }
                Err(e) => panic!("route stream: {e}"),
            };
            for ch in changes {
                assert_eq!(ch.next_hops, vec![IpAddr::V4(b_ip)]);
                seen.insert(ch.prefix);
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("only {} of {n} prefixes arrived", seen.len()));
    eprintln!("{n} prefixes through one hop in {:?}", start.elapsed());
    for h in [a, b, c] {
        h.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filter_changes_apply_without_resetting_the_session() {
    use tabby_bgp::policy::{Filter, FilterAction, FilterRule, MatchOperator};
    let (a_ip, b_ip) = (lo(1, 9), lo(2, 9));
    let a = speaker(a_ip, 64512).await;
    let b = speaker(b_ip, 65001).await;
    let mut a_routes = Watch::new(&a);
    let mut b_routes = Watch::new(&b);
    b.originate(
        vec![
            "100.64.30.0/26".parse().unwrap(),
            "100.64.31.0/26".parse().unwrap(),
        ],
        vec![],
    )
    .await
    .unwrap();
    a.originate(vec!["100.64.32.0/26".parse().unwrap()], vec![])
        .await
        .unwrap();
    let pa = peer_of(a_ip, &b, 65001);
    a.add_peer(pa.clone()).await.unwrap();
    b.add_peer(peer_of(b_ip, &a, 64512)).await.unwrap();
    let via_b = [IpAddr::V4(b_ip)];
    a_routes.route("100.64.31.0/26", |n| n == via_b).await;
    b_routes
        .route("100.64.32.0/26", |n| n == [IpAddr::V4(a_ip)])
        .await;
    let mut flaps = a.subscribe_peers();
    let reject = |cidr: &str| FilterRule {
        cidr: Some(cidr.parse().unwrap()),
        match_operator: MatchOperator::Equal,
        prefix_length: None,
        source: None,
        peer_type: None,
        communities: None,
        as_path_prefix: Vec::new(),
        action: FilterAction::Reject,
        operations: Vec::new(),
    };
    // New import filter: A asks B to resend (ROUTE-REFRESH) and drops .31.
    let mut p = pa.clone();
    p.filters = vec![Filter {
        name: "in".into(),
        import_v4: vec![reject("100.64.31.0/26")],
        ..Default::default()
    }];
    a.update_peer(p.clone()).await.unwrap();
    a_routes.route("100.64.31.0/26", |n| n.is_empty()).await;
    a_routes.route("100.64.30.0/26", |n| n == via_b).await;
    // Filter removed: .31 comes back through another refresh.
    a.update_peer(pa.clone()).await.unwrap();
    a_routes.route("100.64.31.0/26", |n| n == via_b).await;
    // Export filter: B loses A's prefix.
    p.filters = vec![Filter {
        name: "out".into(),
        export_v4: vec![reject("100.64.32.0/26")],
        ..Default::default()
    }];
    a.update_peer(p).await.unwrap();
    b_routes.route("100.64.32.0/26", |n| n.is_empty()).await;
    assert!(flaps.try_recv().is_err(), "the session was reset");
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}
