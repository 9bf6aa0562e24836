//! iBGP interop with real speakers (BIRD 2, FRR, GoBGP): `tabby-bgpd` and
//! the daemon in the same AS, one IPv4 and one IPv6 session (as Calico's
//! node-to-node mesh does), both sides active. Checks what each side holds:
//! the AS_PATH stays empty, next hops are not rewritten, LOCAL_PREF is
//! carried, and routes learned over iBGP are not sent back. Needs root.

mod common;

use common::{Tabby, WAIT, daemon, tabby_config};
use ipnet::IpNet;
use serde_json::json;
use std::net::IpAddr;
use tabby_testnet::bgp::{Afi, BgpConfig, DaemonKind, Neighbor, Originate};
use tabby_testnet::{End, TestNet, require_root};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}
fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

fn ibgp(kind: DaemonKind) {
    require_root();
    let tn = TestNet::new();
    let a = tn.netns("tabby").unwrap();
    let b = tn.netns(kind.name()).unwrap();
    tn.veth(
        End::new(&a, "eth0", &["198.18.0.1/24", "2001:db8::1/64"]),
        End::new(&b, "eth0", &["198.18.0.2/24", "2001:db8::2/64"]),
    )
    .unwrap();
    let cfg = BgpConfig::new("198.18.0.2".parse().unwrap(), 64512)
        .neighbor(Neighbor::new(ip("198.18.0.1"), 64512))
        .neighbor(Neighbor::new(ip("2001:db8::1"), 64512))
        .originate_with(
            Originate::new(net("100.64.2.0/24"))
                .local_pref(200)
                .community(64512, 2),
        )
        .originate(net("2001:db8:2::/48"))
        .hold_time(9);
    let mut d = daemon(kind, &b, &cfg);
    let tabby = Tabby::start(
        &a,
        &tabby_config(
            "198.18.0.1",
            64512,
            None,
            &[("198.18.0.2", 64512, false), ("2001:db8::2", 64512, false)],
            &["100.64.1.0/24", "2001:db8:1::/48"],
        ),
    );
    for peer in ["198.18.0.1", "2001:db8::1"] {
        d.wait_established(ip(peer), WAIT)
            .unwrap_or_else(|e| panic!("{e}\n{}", tabby.log()));
    }
    // The daemon holds our routes as iBGP routes: empty AS_PATH, our
    // address as next hop, LOCAL_PREF present (default 100).
    let r4 = d.wait_route(net("100.64.1.0/24"), WAIT).unwrap();
    assert_eq!(r4.as_path, Vec::<u32>::new(), "{r4:?}");
    assert_eq!(r4.next_hops.first(), Some(&ip("198.18.0.1")), "{r4:?}");
    assert_eq!(r4.local_pref, Some(100), "{r4:?}");
    assert_eq!(r4.peer, Some(ip("198.18.0.1")), "{r4:?}");
    assert_eq!(r4.originator_id, None, "{r4:?}");
    let r6 = d.wait_route(net("2001:db8:1::/48"), WAIT).unwrap();
    assert_eq!(r6.as_path, Vec::<u32>::new(), "{r6:?}");
    assert_eq!(r6.next_hops.first(), Some(&ip("2001:db8::1")), "{r6:?}");
    assert_eq!(r6.peer, Some(ip("2001:db8::1")), "{r6:?}");
    // We hold theirs, next hop unchanged (no next-hop-self on iBGP).
    tabby.wait_route("100.64.2.0/24", json!(["198.18.0.2"]));
    tabby.wait_route("2001:db8:2::/48", json!(["2001:db8::2"]));
    // iBGP split horizon: nothing of theirs comes back from us. Every path
    // the daemon holds for its own prefixes is its own origination.
    for (afi, p) in [
        (Afi::Ipv4, net("100.64.2.0/24")),
        (Afi::Ipv6, net("2001:db8:2::/48")),
    ] {
        let back: Vec<_> = d
            .routes(afi)
            .unwrap()
            .into_iter()
            .filter(|r| r.prefix == p && r.peer.is_some())
            .collect();
        assert!(back.is_empty(), "{p} came back over iBGP: {back:?}");
    }
    // And our IPv4 route did not leak into the IPv6 session or vice versa.
    assert!(
        d.routes(Afi::Ipv4)
            .unwrap()
            .iter()
            .filter(|r| r.prefix == net("100.64.1.0/24"))
            .all(|r| r.peer == Some(ip("198.18.0.1"))),
        "IPv4 route over the IPv6 session"
    );
    // The daemon stops: its routes are withdrawn on our side.
    d.stop().unwrap();
    tabby.wait_route("100.64.2.0/24", json!([]));
    tabby.wait_route("2001:db8:2::/48", json!([]));
}

#[test]
fn ibgp_bird() {
    ibgp(DaemonKind::Bird);
}

#[test]
fn ibgp_frr() {
    ibgp(DaemonKind::Frr);
}

#[test]
fn ibgp_gobgp() {
    ibgp(DaemonKind::Gobgp);
}
