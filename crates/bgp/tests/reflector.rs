//! Route reflection (RFC 4456) with real speakers, all in one AS on one L2
//! segment: `tabby-bgpd` at .1 / ::1, two other speakers at .2 and .3.
//! IPv4 and IPv6 run as separate sessions.
//!
//! - Tabby as the reflector for two daemons: a route one client originates
//!   reaches the other with ORIGINATOR_ID = the originating client,
//!   CLUSTER_LIST = [our cluster id], next hop unchanged.
//! - Tabby as a client of a daemon acting as reflector: we learn the other
//!   client's routes through it, and ours reach the other client.
//!
//! Needs root.

mod common;

use common::{Tabby, WAIT, daemon, tabby_config};
use ipnet::IpNet;
use serde_json::json;
use std::net::{IpAddr, Ipv4Addr};
use tabby_testnet::bgp::{BgpConfig, BgpDaemon, DaemonKind, Neighbor, Route};
use tabby_testnet::{End, TestNet, require_root};

const ASN: u32 = 64512;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}
fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}
fn v4(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

/// The route for `prefix` learned from `via`, once it is there.
fn learned(d: &dyn BgpDaemon, prefix: &str, via: &str) -> Route {
    let r = d
        .wait_route(net(prefix), WAIT)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.peer, Some(ip(via)), "{prefix} not from {via}: {r:?}");
    r
}

/// Checks a reflected route: next hop of the originator, ORIGINATOR_ID its
/// router id, CLUSTER_LIST exactly `cluster`, AS_PATH empty.
fn assert_reflected(r: &Route, next_hop: &str, originator: &str, cluster: &str) {
    assert_eq!(r.next_hops.first(), Some(&ip(next_hop)), "next hop: {r:?}");
    assert_eq!(
        r.originator_id,
        Some(v4(originator)),
        "ORIGINATOR_ID: {r:?}"
    );
    assert_eq!(r.cluster_list, vec![v4(cluster)], "CLUSTER_LIST: {r:?}");
    assert_eq!(r.as_path, Vec::<u32>::new(), "AS_PATH: {r:?}");
}

/// A client config: iBGP to the reflector at .1 / ::1 (v4 and v6 sessions),
/// originating `prefixes`.
fn client(router_id: &str, rr4: &str, rr6: &str, prefixes: &[&str]) -> BgpConfig {
    let mut c = BgpConfig::new(v4(router_id), ASN)
        .neighbor(Neighbor::new(ip(rr4), ASN))
        .neighbor(Neighbor::new(ip(rr6), ASN))
        .hold_time(9);
    for p in prefixes {
        c = c.originate(net(p));
    }
    c
}

/// Three namespaces on one segment: .1 / ::1, .2 / ::2, .3 / ::3.
fn topology(tn: &TestNet, names: [&str; 3]) -> [tabby_testnet::Netns; 3] {
    let ns = names.map(|n| tn.netns(n).unwrap());
    let addrs = [
        ["198.18.0.1/24", "2001:db8::1/64"],
        ["198.18.0.2/24", "2001:db8::2/64"],
        ["198.18.0.3/24", "2001:db8::3/64"],
    ];
    tn.segment(
        "lan",
        &[
            End::new(&ns[0], "eth0", &addrs[0]),
            End::new(&ns[1], "eth0", &addrs[1]),
            End::new(&ns[2], "eth0", &addrs[2]),
        ],
    )
    .unwrap();
    ns
}

/// Tabby reflects between clients `k1` (.2) and `k2` (.3).
fn tabby_reflects(k1: DaemonKind, k2: DaemonKind) {
    require_root();
    let tn = TestNet::new();
    let [t, n1, n2] = topology(&tn, ["tabby", "c1", "c2"]);
    let cluster = "198.18.0.100";
    let tabby = Tabby::start(
        &t,
        &tabby_config(
            "198.18.0.1",
            ASN,
            Some(cluster),
            &[
                ("198.18.0.2", ASN, true),
                ("2001:db8::2", ASN, true),
                ("198.18.0.3", ASN, true),
                ("2001:db8::3", ASN, true),
            ],
            &["100.64.1.0/24", "2001:db8:1::/48"],
        ),
    );
    let c1 = daemon(
        k1,
        &n1,
        &client(
            "198.18.0.2",
            "198.18.0.1",
            "2001:db8::1",
            &["100.64.2.0/24", "2001:db8:2::/48"],
        ),
    );
    let c2 = daemon(
        k2,
        &n2,
        &client(
            "198.18.0.3",
            "198.18.0.1",
            "2001:db8::1",
            &["100.64.3.0/24", "2001:db8:3::/48"],
        ),
    );
    for c in [&c1, &c2] {
        for rr in ["198.18.0.1", "2001:db8::1"] {
            c.wait_established(ip(rr), WAIT)
                .unwrap_or_else(|e| panic!("{e}\n{}", tabby.log()));
        }
    }
    // We learned both clients' routes, next hops untouched.
    tabby.wait_route("100.64.2.0/24", json!(["198.18.0.2"]));
    tabby.wait_route("100.64.3.0/24", json!(["198.18.0.3"]));
    tabby.wait_route("2001:db8:2::/48", json!(["2001:db8::2"]));
    tabby.wait_route("2001:db8:3::/48", json!(["2001:db8::3"]));
    // c1's routes reached c2 reflected, and c2's reached c1.
    let r = learned(c2.as_ref(), "100.64.2.0/24", "198.18.0.1");
    assert_reflected(&r, "198.18.0.2", "198.18.0.2", cluster);
    let r = learned(c2.as_ref(), "2001:db8:2::/48", "2001:db8::1");
    assert_reflected(&r, "2001:db8::2", "198.18.0.2", cluster);
    let r = learned(c1.as_ref(), "100.64.3.0/24", "198.18.0.1");
    assert_reflected(&r, "198.18.0.3", "198.18.0.3", cluster);
    let r = learned(c1.as_ref(), "2001:db8:3::/48", "2001:db8::1");
    assert_reflected(&r, "2001:db8::3", "198.18.0.3", cluster);
    // Our own routes are plain iBGP routes: no reflection attributes.
    for c in [&c1, &c2] {
        for (p, nh) in [
            ("100.64.1.0/24", "198.18.0.1"),
            ("2001:db8:1::/48", "2001:db8::1"),
        ] {
            let r = learned(c.as_ref(), p, nh);
            assert_eq!(r.next_hops.first(), Some(&ip(nh)), "{r:?}");
            assert_eq!(r.originator_id, None, "{r:?}");
            assert!(r.cluster_list.is_empty(), "{r:?}");
        }
    }
    // A client's routes are not reflected back to it.
    for (c, own) in [(&c1, "100.64.2.0/24"), (&c2, "100.64.3.0/24")] {
        let back: Vec<_> = c
            .routes(tabby_testnet::bgp::Afi::Ipv4)
            .unwrap()
            .into_iter()
            .filter(|r| r.prefix == net(own) && r.peer.is_some())
            .collect();
        assert!(
            back.is_empty(),
            "{own} reflected back to its originator: {back:?}"
        );
    }
}

#[test]
fn tabby_reflects_bird_and_frr() {
    tabby_reflects(DaemonKind::Bird, DaemonKind::Frr);
}

#[test]
fn tabby_reflects_gobgp_and_bird() {
    tabby_reflects(DaemonKind::Gobgp, DaemonKind::Bird);
}

#[test]
fn tabby_reflects_frr_and_gobgp() {
    tabby_reflects(DaemonKind::Frr, DaemonKind::Gobgp);
}

/// `rr` (.2) reflects between Tabby (.1) and `other` (.3).
fn tabby_is_client(rr: DaemonKind, other: DaemonKind) {
    require_root();
    let tn = TestNet::new();
    let [t, nr, no] = topology(&tn, ["tabby", "rr", "c2"]);
    let cluster = "198.18.0.200";
    let rr_cfg = BgpConfig::new(v4("198.18.0.2"), ASN)
        .cluster_id(v4(cluster))
        .neighbor(Neighbor::new(ip("198.18.0.1"), ASN).rr_client())
        .neighbor(Neighbor::new(ip("2001:db8::1"), ASN).rr_client())
        .neighbor(Neighbor::new(ip("198.18.0.3"), ASN).rr_client())
        .neighbor(Neighbor::new(ip("2001:db8::3"), ASN).rr_client())
        .hold_time(9);
    let r = daemon(rr, &nr, &rr_cfg);
    let mut o = daemon(
        other,
        &no,
        &client(
            "198.18.0.3",
            "198.18.0.2",
            "2001:db8::2",
            &["100.64.3.0/24", "2001:db8:3::/48"],
        ),
    );
    let tabby = Tabby::start(
        &t,
        &tabby_config(
            "198.18.0.1",
            ASN,
            None,
            &[("198.18.0.2", ASN, false), ("2001:db8::2", ASN, false)],
            &["100.64.1.0/24", "2001:db8:1::/48"],
        ),
    );
    for peer in ["198.18.0.1", "2001:db8::1", "198.18.0.3", "2001:db8::3"] {
        r.wait_established(ip(peer), WAIT)
            .unwrap_or_else(|e| panic!("{e}\n{}", tabby.log()));
    }
    // We learn the other client's routes through the reflector, with the
    // other client's next hop.
    tabby.wait_route("100.64.3.0/24", json!(["198.18.0.3"]));
    tabby.wait_route("2001:db8:3::/48", json!(["2001:db8::3"]));
    // The reflector holds ours as learned from us ...
    let x = learned(r.as_ref(), "100.64.1.0/24", "198.18.0.1");
    assert_eq!(x.next_hops.first(), Some(&ip("198.18.0.1")), "{x:?}");
    // ... and the other client got them reflected, naming us as originator.
    let x = learned(o.as_ref(), "100.64.1.0/24", "198.18.0.2");
    assert_reflected(&x, "198.18.0.1", "198.18.0.1", cluster);
    let x = learned(o.as_ref(), "2001:db8:1::/48", "2001:db8::2");
    assert_reflected(&x, "2001:db8::1", "198.18.0.1", cluster);
    // The other client stops: the reflector withdraws its routes from us.
    o.stop().unwrap();
    tabby.wait_route("100.64.3.0/24", json!([]));
    tabby.wait_route("2001:db8:3::/48", json!([]));
}

#[test]
fn bird_reflects_tabby_and_gobgp() {
    tabby_is_client(DaemonKind::Bird, DaemonKind::Gobgp);
}

#[test]
fn frr_reflects_tabby_and_bird() {
    tabby_is_client(DaemonKind::Frr, DaemonKind::Bird);
}

#[test]
fn gobgp_reflects_tabby_and_frr() {
    tabby_is_client(DaemonKind::Gobgp, DaemonKind::Frr);
}
