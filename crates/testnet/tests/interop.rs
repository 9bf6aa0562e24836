//! The daemon runners against reality: BIRD, FRR and GoBGP peer with each
//! other over veth/bridges in namespaces (iBGP and eBGP, IPv4 and IPv6), each
//! originates prefixes, and each asserts what the OTHER side holds. Also TCP
//! MD5 (right and wrong passwords), kernel export, stop/kill/restart.

use std::net::IpAddr;
use std::time::Duration;

use ipnet::IpNet;
use tabby_testnet::bgp::{
    self, Afi, BgpConfig, BgpDaemon, DaemonKind, Neighbor, Originate, SessionState,
};
use tabby_testnet::{End, Netns, TestNet, require_root, wait_until};

const UP: Duration = Duration::from_secs(30);
const LEARN: Duration = Duration::from_secs(15);

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}
fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

/// Two namespaces on one veth: .1 / ::1 in `a`, .2 / ::2 in `b`.
fn pair(tn: &TestNet) -> (Netns, Netns) {
    let a = tn.netns("a").unwrap();
    let b = tn.netns("b").unwrap();
    tn.veth(
        End::new(&a, "eth0", &["198.18.0.1/24", "2001:db8::1/64"]),
        End::new(&b, "eth0", &["198.18.0.2/24", "2001:db8::2/64"]),
    )
    .unwrap();
    (a, b)
}

/// Config for side `i` (1 or 2) of a pair: sessions over IPv4 and IPv6 to the
/// other side, originating 100.64.<i>.0/24 (community 64512:<i>, large
/// community 64512:<i>:1, MED 10*i, LOCAL_PREF 200) and 2001:db8:<i>::/48
/// (community 64512:<100+i>).
fn side(i: u8, local_as: u32, remote_as: u32) -> BgpConfig {
    let o = 3 - i;
    let i16 = u16::from(i);
    BgpConfig::new(format!("198.18.0.{i}").parse().unwrap(), local_as)
        .neighbor(Neighbor::new(ip(&format!("198.18.0.{o}")), remote_as))
        .neighbor(Neighbor::new(ip(&format!("2001:db8::{o}")), remote_as))
        .originate_with(
            Originate::new(net(&format!("100.64.{i}.0/24")))
                .community(64512, i16)
                .large_community(64512, u32::from(i), 1)
                .med(10 * u32::from(i))
                .local_pref(200),
        )
        .originate_with(
            Originate::new(net(&format!("2001:db8:{i}::/48"))).community(64512, 100 + i16),
        )
}

/// Asserts that `d` (side `i`) holds both prefixes of the other side with
/// the other side's address as next hop, `as_path` and the attributes.
fn assert_learned(d: &dyn BgpDaemon, i: u8, as_path: &[u32], ibgp: bool) {
    let o = 3 - i;
    let who = format!("{} in {}", d.kind().name(), d.netns().name());
    for (prefix, nh, community) in [
        (
            format!("100.64.{o}.0/24"),
            format!("198.18.0.{o}"),
            u16::from(o),
        ),
        (
            format!("2001:db8:{o}::/48"),
            format!("2001:db8::{o}"),
            100 + u16::from(o),
        ),
    ] {
        let r = d
            .wait_route(net(&prefix), LEARN)
            .unwrap_or_else(|e| panic!("{who}: {e}"));
        assert_eq!(r.as_path, as_path, "{who}: AS path of {prefix}");
        assert_eq!(
            r.next_hops.first(),
            Some(&ip(&nh)),
            "{who}: next hop of {prefix}: {r:?}"
        );
        assert_eq!(r.peer, Some(ip(&nh)), "{who}: peer of {prefix}");
        assert_eq!(
            r.communities,
            [(64512, community)],
            "{who}: communities of {prefix}"
        );
        if prefix.starts_with("100.64") {
            assert_eq!(
                r.large_communities,
                [(64512, u32::from(o), 1)],
                "{who}: {prefix}"
            );
            assert_eq!(r.med, Some(10 * u32::from(o)), "{who}: MED of {prefix}");
            if ibgp {
                assert_eq!(r.local_pref, Some(200), "{who}: LOCAL_PREF of {prefix}");
            }
        }
        if !ibgp {
            assert_ne!(
                r.local_pref,
                Some(200),
                "{who}: LOCAL_PREF leaked over eBGP"
            );
        }
    }
    // The own prefixes are there too, as local paths.
    let own = d.routes(Afi::Ipv4).unwrap();
    assert!(
        own.iter()
            .any(|r| r.prefix == net(&format!("100.64.{i}.0/24")) && r.peer.is_none()),
        "{who}: {own:?}"
    );
}

fn established(d: &dyn BgpDaemon, peers: &[&str]) {
    for p in peers {
        d.wait_established(ip(p), UP)
            .unwrap_or_else(|e| panic!("{e}; states {:?}", d.session_states()));
    }
}

/// Runs a pair: `x` on side 1 (AS `as1`), `y` on side 2 (AS `as2`).
fn run_pair(
    x: DaemonKind,
    as1: u32,
    y: DaemonKind,
    as2: u32,
) -> (TestNet, Box<dyn BgpDaemon>, Box<dyn BgpDaemon>) {
    let tn = TestNet::new();
    let (a, b) = pair(&tn);
    let d1 = bgp::start(x, &a, &side(1, as1, as2)).unwrap();
    let d2 = bgp::start(y, &b, &side(2, as2, as1)).unwrap();
    established(d1.as_ref(), &["198.18.0.2", "2001:db8::2"]);
    established(d2.as_ref(), &["198.18.0.1", "2001:db8::1"]);
    let ibgp = as1 == as2;
    let (path1, path2) = if ibgp {
        (vec![], vec![])
    } else {
        (vec![as2], vec![as1])
    };
    assert_learned(d1.as_ref(), 1, &path1, ibgp);
    assert_learned(d2.as_ref(), 2, &path2, ibgp);
    (tn, d1, d2)
}

#[test]
fn bird_frr_ebgp_with_kernel_routes_and_restart() {
    require_root();
    let tn = TestNet::new();
    let (a, b) = pair(&tn);
    let bird = bgp::Bird::start(&a, &side(1, 64512, 64513).export_to_kernel(true)).unwrap();
    let mut frr = bgp::Frr::start(&b, &side(2, 64513, 64512).export_to_kernel(true)).unwrap();
    established(&bird, &["198.18.0.2", "2001:db8::2"]);
    established(&frr, &["198.18.0.1", "2001:db8::1"]);
    assert_learned(&bird, 1, &[64513], false);
    assert_learned(&frr, 2, &[64512], false);

    // Learned routes reach the kernel and carry traffic.
    a.add_addr("lo", "100.64.1.1/32").unwrap();
    b.add_addr("lo", "100.64.2.1/32").unwrap();
    let kernel_has = |ns: &Netns, prefix: &str, gw: &str| {
        wait_until(LEARN, || {
            ns.ip(&["route", "show", prefix])
                .is_ok_and(|o| o.contains(&format!("via {gw}")))
        })
    };
    assert!(
        kernel_has(&a, "100.64.2.0/24", "198.18.0.2"),
        "BIRD kernel export"
    );
    assert!(
        kernel_has(&b, "100.64.1.0/24", "198.18.0.1"),
        "FRR/zebra kernel export"
    );
    assert!(b.ping("100.64.1.1", 1));

    // SIGKILL: BIRD notices the dead TCP session; after a restart it is back.
    frr.kill().unwrap();
    assert!(!frr.is_running());
    assert!(wait_until(UP, || bird
        .session_state(ip("198.18.0.2"))
        .unwrap()
        != Some(SessionState::Established)));
    frr.restart().unwrap();
    established(&bird, &["198.18.0.2"]);
    bird.wait_route(net("100.64.2.0/24"), LEARN).unwrap();
}

#[test]
fn frr_gobgp_ibgp_and_graceful_stop() {
    require_root();
    let (_tn, d1, mut d2) = run_pair(DaemonKind::Frr, 64512, DaemonKind::Gobgp, 64512);
    d2.stop().unwrap();
    assert!(wait_until(UP, || d1
        .session_state(ip("198.18.0.2"))
        .unwrap()
        != Some(SessionState::Established)));
    d2.restart().unwrap();
    established(d1.as_ref(), &["198.18.0.2"]);
    d1.wait_route(net("100.64.2.0/24"), LEARN).unwrap();
}

#[test]
fn gobgp_bird_ebgp_four_octet_as() {
    require_root();
    run_pair(DaemonKind::Gobgp, 64512, DaemonKind::Bird, 4_200_000_001);
}

#[test]
fn bird_frr_ibgp_and_frr_bird_reverse_roles() {
    require_root();
    run_pair(DaemonKind::Bird, 64512, DaemonKind::Frr, 64512);
}

#[test]
fn md5_right_password_establishes_wrong_never_does() {
    require_root();
    // One L2 segment, full iBGP mesh. bird-frr and frr-gobgp agree on the
    // password; gobgp-bird do not (and bird-frr uses a different one).
    let tn = TestNet::new();
    let [n1, n2, n3] = ["bird", "frr", "gobgp"].map(|n| tn.netns(n).unwrap());
    tn.segment(
        "lan",
        &[
            End::new(&n1, "eth0", &["198.18.0.1/24"]),
            End::new(&n2, "eth0", &["198.18.0.2/24"]),
            End::new(&n3, "eth0", &["198.18.0.3/24"]),
        ],
    )
    .unwrap();
    let cfg = |i: u8, peers: [(u8, &str); 2]| {
        let mut c = BgpConfig::new(format!("198.18.0.{i}").parse().unwrap(), 64512)
            .originate(net(&format!("100.64.{i}.0/24")));
        for (p, pw) in peers {
            c = c.neighbor(Neighbor::new(ip(&format!("198.18.0.{p}")), 64512).password(pw));
        }
        c
    };
    let bird = bgp::Bird::start(&n1, &cfg(1, [(2, "alpha"), (3, "wrong")])).unwrap();
    let frr = bgp::Frr::start(&n2, &cfg(2, [(1, "alpha"), (3, "beta")])).unwrap();
    let gobgp = bgp::Gobgp::start(&n3, &cfg(3, [(1, "beta"), (2, "beta")])).unwrap();
    established(&bird, &["198.18.0.2"]);
    established(&frr, &["198.18.0.1", "198.18.0.3"]);
    established(&gobgp, &["198.18.0.2"]);
    assert_eq!(
        frr.wait_route(net("100.64.3.0/24"), LEARN)
            .unwrap()
            .next_hops,
        [ip("198.18.0.3")]
    );
    // Several connect-retry rounds: the mismatched pair must never come up.
    let up = wait_until(Duration::from_secs(6), || {
        bird.session_state(ip("198.18.0.3")).unwrap() == Some(SessionState::Established)
            || gobgp.session_state(ip("198.18.0.1")).unwrap() == Some(SessionState::Established)
    });
    assert!(!up, "session with a wrong MD5 password came up");
    assert_ne!(
        bird.session_state(ip("198.18.0.3")).unwrap(),
        None,
        "the neighbor is configured"
    );
}

#[test]
fn each_daemon_reflects_routes_between_the_other_two() {
    require_root();
    // Each kind in turn is route reflector for the other two, which only
    // peer with it. Towards the second client it also sets next-hop-self.
    // The three topologies run in parallel.
    let one = |i: usize| {
        let rr_kind = DaemonKind::ALL[i];
        let clients = [DaemonKind::ALL[(i + 1) % 3], DaemonKind::ALL[(i + 2) % 3]];
        let tn = TestNet::new();
        let [rr, c2, c3] = ["rr", "c2", "c3"].map(|n| tn.netns(n).unwrap());
        tn.segment(
            "lan",
            &[
                End::new(&rr, "eth0", &["198.18.0.1/24"]),
                End::new(&c2, "eth0", &["198.18.0.2/24"]),
                End::new(&c3, "eth0", &["198.18.0.3/24"]),
            ],
        )
        .unwrap();
        let client = |i: u8| {
            BgpConfig::new(format!("198.18.0.{i}").parse().unwrap(), 64512)
                .neighbor(Neighbor::new(ip("198.18.0.1"), 64512))
                .originate(net(&format!("100.64.{i}.0/24")))
        };
        let reflector = bgp::start(
            rr_kind,
            &rr,
            &BgpConfig::new("198.18.0.1".parse().unwrap(), 64512)
                .neighbor(Neighbor::new(ip("198.18.0.2"), 64512).rr_client())
                .neighbor(
                    Neighbor::new(ip("198.18.0.3"), 64512)
                        .rr_client()
                        .next_hop_self(),
                ),
        )
        .unwrap();
        let d2 = bgp::start(clients[0], &c2, &client(2)).unwrap();
        let d3 = bgp::start(clients[1], &c3, &client(3)).unwrap();
        established(reflector.as_ref(), &["198.18.0.2", "198.18.0.3"]);
        let who = format!(
            "rr {}, clients {} and {}",
            rr_kind.name(),
            clients[0].name(),
            clients[1].name()
        );
        let at2 = d2
            .wait_route(net("100.64.3.0/24"), LEARN)
            .unwrap_or_else(|e| panic!("{who}: {e}"));
        assert_eq!(
            at2.next_hops,
            [ip("198.18.0.3")],
            "{who}: reflection keeps the next hop"
        );
        assert_eq!(at2.peer, Some(ip("198.18.0.1")), "{who}");
        assert!(at2.as_path.is_empty(), "{who}");
        let at3 = d3
            .wait_route(net("100.64.2.0/24"), LEARN)
            .unwrap_or_else(|e| panic!("{who}: {e}"));
        assert_eq!(
            at3.next_hops,
            [ip("198.18.0.1")],
            "{who}: next-hop-self towards client 3"
        );
    };
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..3).map(|i| s.spawn(move || one(i))).collect();
        for h in handles {
            h.join().expect("reflector topology failed");
        }
    });
}

#[test]
fn multihop_ebgp_through_a_router_with_a_passive_side() {
    require_root();
    // a (FRR, AS 64601) -- r -- b (GoBGP, AS 64602); the session runs between
    // the hosts' addresses two hops apart; GoBGP only listens.
    let tn = TestNet::new();
    let a = tn.netns("a").unwrap();
    let b = tn.netns("b").unwrap();
    let r = tn.router("r").unwrap();
    tn.veth(
        End::new(&a, "eth0", &["198.18.1.10/24"]),
        End::new(&r, "a", &["198.18.1.1/24"]),
    )
    .unwrap();
    tn.veth(
        End::new(&b, "eth0", &["198.18.2.10/24"]),
        End::new(&r, "b", &["198.18.2.1/24"]),
    )
    .unwrap();
    a.add_route("198.18.2.0/24", "198.18.1.1").unwrap();
    b.add_route("198.18.1.0/24", "198.18.2.1").unwrap();
    assert!(a.ping("198.18.2.10", 1));
    let frr = bgp::Frr::start(
        &a,
        &BgpConfig::new("198.18.1.10".parse().unwrap(), 64601)
            .neighbor(
                Neighbor::new(ip("198.18.2.10"), 64602)
                    .multihop(2)
                    .local_address(ip("198.18.1.10")),
            )
            .originate(net("100.64.1.0/24")),
    )
    .unwrap();
    let gobgp = bgp::Gobgp::start(
        &b,
        &BgpConfig::new("198.18.2.10".parse().unwrap(), 64602)
            .neighbor(
                Neighbor::new(ip("198.18.1.10"), 64601)
                    .multihop(2)
                    .passive(),
            )
            .originate(net("100.64.2.0/24")),
    )
    .unwrap();
    established(&gobgp, &["198.18.1.10"]);
    let at_gobgp = gobgp.wait_route(net("100.64.1.0/24"), LEARN).unwrap();
    assert_eq!(
        (at_gobgp.as_path, at_gobgp.next_hops),
        (vec![64601], vec![ip("198.18.1.10")])
    );
    let at_frr = frr.wait_route(net("100.64.2.0/24"), LEARN).unwrap();
    assert_eq!(
        (at_frr.as_path, at_frr.next_hops),
        (vec![64602], vec![ip("198.18.2.10")])
    );
}

#[test]
fn graceful_restart_keeps_routes_while_the_peer_restarts() {
    require_root();
    let tn = TestNet::new();
    let (a, b) = pair(&tn);
    let cfg = |i: u8, gr: bool| {
        let o = 3 - i;
        BgpConfig::new(format!("198.18.0.{i}").parse().unwrap(), 64512)
            .neighbor(Neighbor::new(ip(&format!("198.18.0.{o}")), 64512))
            .originate(net(&format!("100.64.{i}.0/24")))
            .graceful_restart(gr)
    };
    // With GR, BIRD keeps FRR's route while FRR is dead; without, it drops it.
    for gr in [true, false] {
        let bird = bgp::Bird::start(&a, &cfg(1, gr)).unwrap();
        let mut frr = bgp::Frr::start(&b, &cfg(2, gr)).unwrap();
        established(&bird, &["198.18.0.2"]);
        bird.wait_route(net("100.64.2.0/24"), LEARN).unwrap();
        frr.kill().unwrap();
        assert!(wait_until(UP, || bird
            .session_state(ip("198.18.0.2"))
            .unwrap()
            != Some(SessionState::Established)));
        let kept = |d: &bgp::Bird| {
            d.routes(Afi::Ipv4)
                .unwrap()
                .iter()
                .any(|r| r.prefix == net("100.64.2.0/24"))
        };
        // Give a non-GR BIRD time to flush.
        std::thread::sleep(Duration::from_millis(500));
        assert_eq!(kept(&bird), gr, "graceful_restart={gr}");
        if gr {
            frr.restart().unwrap();
            established(&bird, &["198.18.0.2"]);
            bird.wait_route(net("100.64.2.0/24"), LEARN).unwrap();
        }
    }
}
