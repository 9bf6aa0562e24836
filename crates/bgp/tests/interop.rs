//! Interop with real speakers (BIRD 2, FRR, GoBGP): `tabby-bgpd` in one
//! network namespace, the other daemon in another, joined by a veth pair.
//! eBGP over IPv4 and over IPv6 (separate sessions, as Calico does), both
//! sides active so connection collisions happen. Needs root.

mod common;

use common::{Tabby, WAIT};
use ipnet::IpNet;
use serde_json::json;
use std::net::IpAddr;
use std::time::{Duration, Instant};
use tabby_testnet::bgp::{self, Afi, BgpConfig, BgpDaemon, DaemonKind, Neighbor, Originate};
use tabby_testnet::{End, TestNet, require_root};

fn interop(kind: DaemonKind) {
    require_root();
    let tn = TestNet::new();
    let a = tn.netns("tabby").unwrap();
    let b = tn.netns(kind.name()).unwrap();
    tn.veth(
        End::new(&a, "eth0", &["198.18.0.1/24", "2001:db8::1/64"]),
        End::new(&b, "eth0", &["198.18.0.2/24", "2001:db8::2/64"]),
    )
    .unwrap();
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    let net = |s: &str| s.parse::<IpNet>().unwrap();
    let cfg = BgpConfig::new("198.18.0.2".parse().unwrap(), 65001)
        .neighbor(Neighbor::new(ip("198.18.0.1"), 64512))
        .neighbor(Neighbor::new(ip("2001:db8::1"), 64512))
        .originate_with(Originate::new(net("100.64.2.0/24")).community(65001, 7))
        .originate(net("2001:db8:2::/48"))
        .hold_time(9);
    let mut daemon: Box<dyn BgpDaemon> = match kind {
        DaemonKind::Bird => Box::new(bgp::Bird::start(&b, &cfg).unwrap()),
        DaemonKind::Frr => Box::new(bgp::Frr::start(&b, &cfg).unwrap()),
        DaemonKind::Gobgp => Box::new(bgp::Gobgp::start(&b, &cfg).unwrap()),
    };
    let tabby = Tabby::start(
        &a,
        "routerId: 198.18.0.1\nasn: 64512\nlisten: \"[::]:179\"\nholdTime: 9\n\
         connectRetrySecs: 1\nidleHoldSecs: 1\npeers:\n\
         \x20 - address: 198.18.0.2\n    remoteAs: 65001\n\
         \x20   filters:\n\
         \x20     - name: no-nine\n        exportV4:\n\
         \x20         - {cidr: 100.64.9.0/24, action: Reject}\n\
         \x20 - address: 2001:db8::2\n    remoteAs: 65001\n\
         originate:\n\
         \x20 - prefix: 100.64.1.0/24\n    communities: [\"64512:100\"]\n\
         \x20   largeCommunities: [\"64512:1:2\"]\n\
         \x20 - prefix: 100.64.9.0/24\n\
         \x20 - prefix: 2001:db8:1::/48\n",
    );
    // Both sessions come up on both sides.
    daemon
        .wait_established(ip("198.18.0.1"), WAIT)
        .unwrap_or_else(|e| panic!("{e}\n{}", tabby.log()));
    daemon
        .wait_established(ip("2001:db8::1"), WAIT)
        .unwrap_or_else(|e| panic!("{e}\n{}", tabby.log()));
    // The daemon learned our routes with our AS, our next hop, our community.
    let r4 = daemon.wait_route(net("100.64.1.0/24"), WAIT).unwrap();
    assert_eq!(r4.as_path, vec![64512]);
    assert_eq!(r4.next_hops.first(), Some(&ip("198.18.0.1")));
    assert!(r4.communities.contains(&(64512, 100)), "{r4:?}");
    assert!(r4.large_communities.contains(&(64512, 1, 2)), "{r4:?}");
    // The export filter kept 100.64.9.0/24 from this peer.
    std::thread::sleep(Duration::from_millis(500));
    let filtered = net("100.64.9.0/24");
    assert!(
        !daemon
            .routes(Afi::Ipv4)
            .unwrap()
            .iter()
            .any(|r| r.prefix == filtered),
        "filtered prefix reached the peer"
    );
    let r6 = daemon.wait_route(net("2001:db8:1::/48"), WAIT).unwrap();
    assert_eq!(r6.as_path, vec![64512]);
    assert_eq!(r6.next_hops.first(), Some(&ip("2001:db8::1")));
    // We learned theirs.
    tabby.wait_route("100.64.2.0/24", json!(["198.18.0.2"]));
    tabby.wait_route("2001:db8:2::/48", json!(["2001:db8::2"]));
    assert!(
        daemon
            .routes(Afi::Ipv4)
            .unwrap()
            .iter()
            .all(|r| r.prefix != net("100.64.2.0/24") || r.peer.is_none()),
        "our own route must not be reflected back to its originator"
    );
    // The daemon stops (Cease): our sessions drop and its routes go.
    daemon.stop().unwrap();
    tabby.wait_route("100.64.2.0/24", json!([]));
    tabby.wait_route("2001:db8:2::/48", json!([]));
}

#[test]
fn interop_bird() {
    interop(DaemonKind::Bird);
}

#[test]
fn interop_frr() {
    interop(DaemonKind::Frr);
}

#[test]
fn interop_gobgp() {
    interop(DaemonKind::Gobgp);
}

/// The daemon restarts abruptly (SIGKILL) with graceful restart on: we keep
/// its routes while it is away and have them again once it is back.
fn graceful_restart(kind: DaemonKind) {
    require_root();
    let tn = TestNet::new();
    let a = tn.netns("tabby").unwrap();
    let b = tn.netns(kind.name()).unwrap();
    tn.veth(
        End::new(&a, "eth0", &["198.18.0.1/24"]),
        End::new(&b, "eth0", &["198.18.0.2/24"]),
    )
    .unwrap();
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    let cfg = BgpConfig::new("198.18.0.2".parse().unwrap(), 64512)
        .neighbor(Neighbor::new(ip("198.18.0.1"), 64512))
        .originate("100.64.2.0/24".parse().unwrap())
        .graceful_restart(true)
        .hold_time(9);
    let mut daemon: Box<dyn BgpDaemon> = match kind {
        DaemonKind::Bird => Box::new(bgp::Bird::start(&b, &cfg).unwrap()),
        DaemonKind::Frr => Box::new(bgp::Frr::start(&b, &cfg).unwrap()),
        DaemonKind::Gobgp => Box::new(bgp::Gobgp::start(&b, &cfg).unwrap()),
    };
    let tabby = Tabby::start(
        &a,
        "routerId: 198.18.0.1\nasn: 64512\nlisten: \"198.18.0.1:179\"\nholdTime: 9\n\
         connectRetrySecs: 1\nidleHoldSecs: 1\npeers:\n\
         \x20 - address: 198.18.0.2\n    remoteAs: 64512\n",
    );
    tabby.wait_route("100.64.2.0/24", json!(["198.18.0.2"]));
    let eors = |log: &str| log.matches("End-of-RIB received").count();
    let deadline = Instant::now() + WAIT;
    while eors(&tabby.log()) == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let eor_before = eors(&tabby.log());
    assert!(eor_before > 0, "no End-of-RIB from the peer");
    daemon.kill().unwrap();
    tabby.wait("the session to drop", |v| {
        v["event"] == "peer" && v["state"] != "Established"
    });
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        tabby.latest("100.64.2.0/24"),
        Some(json!(["198.18.0.2"])),
        "route lost while the peer restarts"
    );
    daemon.restart().unwrap();
    daemon
        .wait_established(ip("198.18.0.1"), WAIT)
        .unwrap_or_else(|e| panic!("{e}\n{}", tabby.log()));
    // The peer's routes precede its End-of-RIB: once the End-of-RIB of the
    // new session is in, the route must be there.
    let deadline = Instant::now() + WAIT;
    while eors(&tabby.log()) <= eor_before && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        eors(&tabby.log()) > eor_before,
        "no End-of-RIB after the restart:\n{}",
        tabby.log()
    );
    assert_eq!(
        tabby.latest("100.64.2.0/24"),
        Some(json!(["198.18.0.2"])),
        "route missing after the peer came back:\n{}",
        tabby.log()
    );
}

#[test]
fn graceful_restart_bird() {
    graceful_restart(DaemonKind::Bird);
}

#[test]
fn graceful_restart_frr() {
    graceful_restart(DaemonKind::Frr);
}

#[test]
fn graceful_restart_gobgp() {
    graceful_restart(DaemonKind::Gobgp);
}

/// TCP MD5 with BIRD on both the connecting and the listening side.
#[test]
fn md5_with_bird() {
    require_root();
    let tn = TestNet::new();
    let a = tn.netns("tabby").unwrap();
    let b = tn.netns("bird").unwrap();
    tn.veth(
        End::new(&a, "eth0", &["198.18.0.1/24"]),
        End::new(&b, "eth0", &["198.18.0.2/24"]),
    )
    .unwrap();
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    // BIRD is passive: we connect, signing with the key.
    let cfg = BgpConfig::new("198.18.0.2".parse().unwrap(), 65001)
        .neighbor(Neighbor::new(ip("198.18.0.1"), 64512).password("s3cret"))
        .originate("100.64.2.0/24".parse().unwrap());
    let _bird = bgp::Bird::start(&b, &cfg).unwrap();
    let conf = |pw: &str, passive: bool| {
        format!(
            "routerId: 198.18.0.1\nasn: 64512\nlisten: \"[::]:179\"\nconnectRetrySecs: 1\n\
             idleHoldSecs: 1\npeers:\n  - address: 198.18.0.2\n    remoteAs: 65001\n    password: {pw}\n\
             \x20   passive: {passive}\n"
        )
    };
    // Passive with the right key: BIRD's signed connection is accepted by
    // our dual-stack listener, which holds the key for ::ffff:198.18.0.2.
    let right = Tabby::start(&a, &conf("s3cret", true));
    right.wait_route("100.64.2.0/24", json!(["198.18.0.2"]));
    drop(right);
    // A wrong key never gets a session, either direction.
    let wrong = Tabby::start(&a, &conf("nope", false));
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        !wrong
            .seen
            .borrow()
            .iter()
            .any(|v| v["state"] == "Established")
            && !wrong.events.try_iter().any(|v| v["state"] == "Established"),
        "session up with a wrong MD5 key"
    );
}
