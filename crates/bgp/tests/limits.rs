//! A peer must not be able to break `tabby-bgpd` or its other sessions
//! (issue 16), with real daemons and raw-socket peers in namespaces:
//!
//! - an eBGP peer's valid, nearly 4096-byte UPDATE, passed on to an iBGP
//!   peer (FRR), would go over 4096 bytes once LOCAL_PREF is added: it is
//!   not sent (with a warning naming peer and prefix), the other routes are
//!   split to fit, and FRR's session never resets;
//! - a peer sending 200,000 prefixes against a limit of 100,000 is closed
//!   with Cease / maximum number of prefixes reached, is refused until the
//!   restart wait is over, and memory stays bounded;
//! - a peer that never reads and keeps sending ROUTE-REFRESH is dropped
//!   when nothing could be written for the hold time, with memory bounded,
//!   while the other session carries on.
//!
//! Needs root.

mod common;

use common::{RawPeer, Tabby, WAIT, memory_kb};
use ipnet::{IpNet, Ipv4Net};
use serde_json::Value;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};
use tabby_bgp::packet::attribute::{AsPath, NextHop, PathAttributes};
use tabby_bgp::packet::capability::Capability;
use tabby_bgp::packet::error::ErrorCode;
use tabby_bgp::packet::message::{
    MAX_MESSAGE_LEN, Message, RouteRefreshMsg, UpdateMsg, announce_overhead,
};
use tabby_bgp::packet::prefix_wire_len;
use tabby_testnet::bgp::{BgpConfig, BgpDaemon, Frr, Neighbor};
use tabby_testnet::{End, TestNet, require_root};

const ASN: u32 = 64512;
const INJECTOR_AS: u32 = 65001;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn caps(asn: u32) -> Vec<Capability> {
    vec![
        Capability::MultiProtocol { afi: 1, safi: 1 },
        Capability::RouteRefresh,
        Capability::FourOctetAs(asn),
    ]
}

fn v24(i: u32) -> IpNet {
    IpNet::V4(Ipv4Net::new(Ipv4Addr::from(0x6440_0000 + (i << 8)), 24).unwrap())
}

/// Attributes of an eBGP route from the injector with `n` communities.
fn with_communities(n: u32) -> PathAttributes {
    PathAttributes {
        as_path: AsPath::from_sequence(&[INJECTOR_AS]),
        communities: (0..n).map(|i| (INJECTOR_AS << 16) | i).collect(),
        ..Default::default()
    }
}

/// Encoded UPDATEs announcing `prefixes` with `attrs` from `nh`.
fn updates(attrs: &PathAttributes, nh: Ipv4Addr, prefixes: &[IpNet], p: &RawPeer) -> Vec<u8> {
    let mut out = Vec::new();
    for m in UpdateMsg::announce(attrs, NextHop::Ipv4(nh), prefixes, &p.cxt).unwrap() {
        let b = Message::Update(m).encode(&p.cxt);
        assert!(b.len() <= MAX_MESSAGE_LEN);
        out.extend(b);
    }
    out
}

fn frr_json(frr: &Frr, cmd: &str) -> Value {
    serde_json::from_str(&frr.vtysh(&[cmd]).unwrap()).unwrap()
}

/// FRR's view of its session with tabby-bgpd: state, prefixes received,
/// connections dropped.
fn frr_neighbor(frr: &Frr, peer: &str) -> (String, u64, u64) {
    let v = frr_json(frr, &format!("show bgp neighbors {peer} json"));
    let n = &v[peer];
    (
        n["bgpState"].as_str().unwrap_or_default().to_string(),
        n["addressFamilyInfo"]["ipv4Unicast"]["acceptedPrefixCounter"]
            .as_u64()
            .unwrap_or(0),
        n["connectionsDropped"].as_u64().unwrap_or(0),
    )
}

#[test]
fn oversized_update_is_not_passed_on_and_frr_stays_up() {
    require_root();
    let tn = TestNet::new();
    let [t, inj, obs] = ["tabby", "inj", "frr"].map(|n| tn.netns(n).unwrap());
    tn.segment(
        "lan",
        &[
            End::new(&t, "eth0", &["198.18.0.1/24"]),
            End::new(&inj, "eth0", &["198.18.0.2/24"]),
            End::new(&obs, "eth0", &["198.18.0.3/24"]),
        ],
    )
    .unwrap();
    let tabby = Tabby::start(
        &t,
        &one_peer(&format!("  - address: 198.18.0.3\n    remoteAs: {ASN}\n")),
    );
    // FRR offers extended messages; tabby-bgpd does not by default, so
    // the session keeps the 4096-byte limit.
    let frr = Frr::start(
        &obs,
        &BgpConfig::new("198.18.0.3".parse().unwrap(), ASN)
            .neighbor(Neighbor::new(ip("198.18.0.1"), ASN))
            .hold_time(9),
    )
    .unwrap();
    frr.wait_established(ip("198.18.0.1"), WAIT)
        .unwrap_or_else(|e| panic!("{e}\n{}", tabby.log()));
    let mut p = RawPeer::establish(
        &inj,
        ip("198.18.0.2"),
        ip("198.18.0.1"),
        INJECTOR_AS,
        caps(INJECTOR_AS),
        None,
    );
    p.keepalives();
    let nh = Ipv4Addr::new(198, 18, 0, 2);
    // The UPDATE: as many communities as fit in 4096 bytes with one
    // /24; over the limit once tabby-bgpd adds LOCAL_PREF (7 bytes).
    let n = (0..1100)
        .rev()
        .find(|n| {
            announce_overhead(&with_communities(*n), NextHop::Ipv4(nh), &p.cxt)
                + prefix_wire_len(24)
                <= MAX_MESSAGE_LEN
        })
        .unwrap();
    let big = updates(&with_communities(n), nh, &[v24(1)], &p);
    assert!(big.len() > MAX_MESSAGE_LEN - 7, "{} bytes", big.len());
    eprintln!("injecting a {}-byte UPDATE with {n} communities", big.len());
    // Routes that fit, each UPDATE as full as the injector could make it:
    // with LOCAL_PREF added they no longer fit the same messages, and
    // tabby-bgpd must pack them into UPDATEs of at most 4096 bytes.
    let split: Vec<IpNet> = (10..310).map(v24).collect();
    let fat = updates(&with_communities(n - 120), nh, &split, &p);
    let control = updates(&with_communities(1), nh, &[v24(2)], &p);
    assert!(p.write(&big) && p.write(&fat) && p.write(&control));
    p.send(&Message::Update(UpdateMsg::default()));
    tabby.wait_route("100.64.2.0/24", serde_json::json!(["198.18.0.2"]));
    tabby.wait_route("100.64.1.0/24", serde_json::json!(["198.18.0.2"]));
    // FRR gets every route but the oversized one, over the same session.
    let deadline = Instant::now() + WAIT;
    let (state, got, dropped) = loop {
        let s = frr_neighbor(&frr, "198.18.0.1");
        if s.1 >= 301 || Instant::now() > deadline {
            break s;
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    assert_eq!(
        (state.as_str(), got, dropped),
        ("Established", 301, 0),
        "FRR state, prefixes, drops\n{}",
        tabby.log()
    );
    let missing = frr_json(&frr, "show bgp ipv4 unicast 100.64.1.0/24 json");
    assert!(
        missing.get("paths").is_none(),
        "oversized route reached FRR: {missing}"
    );
    let log = tabby.log();
    assert!(
        log.lines().any(|l| l.contains("route not sent")
            && l.contains("198.18.0.3")
            && l.contains("100.64.1.0/24")),
        "no warning naming peer and prefix:\n{log}"
    );
    // A few hold times later FRR still has the same session.
    std::thread::sleep(Duration::from_secs(10));
    let (state, got, dropped) = frr_neighbor(&frr, "198.18.0.1");
    assert_eq!((state.as_str(), got, dropped), ("Established", 301, 0));
}

/// A config for tabby-bgpd at .1 with one passive eBGP peer at .2.
fn one_peer(extra: &str) -> String {
    format!(
        "routerId: 198.18.0.1\nasn: {ASN}\nlisten: \"0.0.0.0:179\"\nholdTime: 9\n\
         connectRetrySecs: 1\nidleHoldSecs: 1\npeers:\n  - address: 198.18.0.2\n    \
         remoteAs: {INJECTOR_AS}\n    passive: true\n{extra}"
    )
}

fn two_hosts(tn: &TestNet) -> [tabby_testnet::Netns; 2] {
    let [t, inj] = ["tabby", "inj"].map(|n| tn.netns(n).unwrap());
    tn.veth(
        End::new(&t, "eth0", &["198.18.0.1/24"]),
        End::new(&inj, "eth0", &["198.18.0.2/24"]),
    )
    .unwrap();
    [t, inj]
}

#[test]
fn two_hundred_thousand_prefixes_against_a_limit_of_one_hundred_thousand() {
    require_root();
    let tn = TestNet::new();
    let [t, inj] = two_hosts(&tn);
    let tabby = Tabby::start(
        &t,
        &one_peer("    maxPrefixes: 100000\n    maxPrefixesRestartSecs: 8\n"),
    );
    let pid = tabby.child.id();
    let mut p = RawPeer::establish(
        &inj,
        ip("198.18.0.2"),
        ip("198.18.0.1"),
        INJECTOR_AS,
        caps(INJECTOR_AS),
        None,
    );
    let (idle_hwm, _) = memory_kb(pid);
    let prefixes: Vec<IpNet> = (0..200_000u32)
        .map(|i| IpNet::V4(Ipv4Net::new(Ipv4Addr::from(0x6440_0000 + i), 32).unwrap()))
        .collect();
    let bytes = updates(
        &with_communities(1),
        Ipv4Addr::new(198, 18, 0, 2),
        &prefixes,
        &p,
    );
    // Written from another thread: tabby-bgpd may stop reading halfway.
    let mut w = p.stream.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        use std::io::Write;
        let _ = w.write_all(&bytes);
    });
    let start = Instant::now();
    let n = loop {
        match p.next() {
            Ok(Message::Notification(n)) => break n,
            Ok(_) => {}
            Err(e) => panic!("no NOTIFICATION before the session closed: {e}"),
        }
    };
    eprintln!("NOTIFICATION {n} after {:?}", start.elapsed());
    assert_eq!((n.code, n.subcode), (ErrorCode::Cease, 1), "{n:?}");
    // AFI 1, SAFI 1, limit 100000 (RFC 4486).
    assert_eq!(n.data, vec![0, 1, 1, 0, 1, 0x86, 0xa0]);
    let _ = writer.join();
    let (hwm, rss) = memory_kb(pid);
    eprintln!("tabby-bgpd VmHWM {hwm} KiB (idle {idle_hwm} KiB), VmRSS {rss} KiB");
    // 100,000 routes held at most, never 200,000: well under 64 MiB more
    // than idle (the release build holds 100k routes in ~15 MiB).
    assert!(
        hwm < idle_hwm + 64 * 1024,
        "peak RSS {hwm} KiB (idle {idle_hwm} KiB)"
    );
    tabby.wait("the peer down with the reason", |v| {
        v["event"] == "peer"
            && v["state"] == "Idle"
            && v["info"]
                .as_str()
                .is_some_and(|i| i.contains("maximum number of prefixes"))
    });
    // Refused during the wait...
    let early = Instant::now();
    assert!(
        RawPeer::try_establish(
            &inj,
            ip("198.18.0.2"),
            ip("198.18.0.1"),
            INJECTOR_AS,
            caps(INJECTOR_AS),
            None
        )
        .is_err(),
        "session accepted during the restart wait"
    );
    assert!(early.elapsed() < Duration::from_secs(8));
    // ...and accepted after it.
    std::thread::sleep(Duration::from_secs(8));
    let mut again = RawPeer::establish(
        &inj,
        ip("198.18.0.2"),
        ip("198.18.0.1"),
        INJECTOR_AS,
        caps(INJECTOR_AS),
        None,
    );
    let small = updates(
        &with_communities(1),
        Ipv4Addr::new(198, 18, 0, 2),
        &prefixes[..10],
        &again,
    );
    assert!(again.write(&small));
    tabby.wait_route("100.64.0.9/32", serde_json::json!(["198.18.0.2"]));
}

#[test]
fn peer_that_never_reads_and_floods_route_refresh_is_dropped_with_bounded_memory() {
    require_root();
    let tn = TestNet::new();
    let [t, feeder, slow] = ["tabby", "feeder", "slow"].map(|n| tn.netns(n).unwrap());
    tn.segment(
        "lan",
        &[
            End::new(&t, "eth0", &["198.18.0.1/24"]),
            End::new(&feeder, "eth0", &["198.18.0.2/24"]),
            End::new(&slow, "eth0", &["198.18.0.3/24"]),
        ],
    )
    .unwrap();
    let tabby = Tabby::start(
        &t,
        &one_peer(&format!(
            "  - address: 198.18.0.3\n    remoteAs: {ASN}\n    passive: true\n"
        )),
    );
    let pid = tabby.child.id();
    // 20,000 routes with distinct MEDs: one UPDATE each, ~1 MB per full
    // table sent.
    let mut f = RawPeer::establish(
        &feeder,
        ip("198.18.0.2"),
        ip("198.18.0.1"),
        INJECTOR_AS,
        caps(INJECTOR_AS),
        None,
    );
    f.keepalives();
    let nh = Ipv4Addr::new(198, 18, 0, 2);
    let mut bytes = Vec::new();
    for i in 0..20_000u32 {
        let attrs = PathAttributes {
            med: Some(i),
            ..with_communities(8)
        };
        let p = IpNet::V4(Ipv4Net::new(Ipv4Addr::from(0x6440_0000 + i), 32).unwrap());
        bytes.extend(updates(&attrs, nh, &[p], &f));
    }
    assert!(f.write(&bytes));
    f.send(&Message::Update(UpdateMsg::default()));
    tabby.wait_route("100.64.78.31/32", serde_json::json!(["198.18.0.2"]));
    let (loaded_hwm, _) = memory_kb(pid);
    // The slow peer: a tiny receive window, reads nothing after the OPEN
    // exchange, and asks for the whole table again and again.
    let mut s = RawPeer::establish(
        &slow,
        ip("198.18.0.3"),
        ip("198.18.0.1"),
        ASN,
        caps(ASN),
        Some(4096),
    );
    let rr = Message::RouteRefresh(RouteRefreshMsg {
        afi: 1,
        subtype: 0,
        safi: 1,
    })
    .encode(&s.cxt);
    let burst: Vec<u8> = rr.iter().copied().cycle().take(rr.len() * 100).collect();
    let start = Instant::now();
    let mut sent = 0u64;
    let mut peak = loaded_hwm;
    let dropped_after = loop {
        if !s.write(&burst) {
            break start.elapsed();
        }
        sent += 100;
        peak = peak.max(memory_kb(pid).1);
        assert!(
            start.elapsed() < Duration::from_secs(40),
            "still connected after {sent} ROUTE-REFRESH\n{}",
            tabby.log()
        );
        std::thread::sleep(Duration::from_millis(5));
    };
    let (hwm, rss) = memory_kb(pid);
    eprintln!(
        "dropped after {dropped_after:?} and {sent} ROUTE-REFRESH; VmHWM {hwm} KiB \
         (loaded {loaded_hwm} KiB), VmRSS {rss} KiB, sampled peak {peak} KiB"
    );
    // Without coalescing and a bounded queue every request queued another
    // ~1 MB: thousands of requests would be gigabytes.
    assert!(sent >= 1000, "only {sent} requests: the test did not flood");
    assert!(
        hwm < loaded_hwm + 48 * 1024,
        "peak RSS {hwm} KiB (loaded {loaded_hwm} KiB)"
    );
    tabby.wait("the slow peer dropped for not reading", |v| {
        v["event"] == "peer"
            && v["address"] == "198.18.0.3"
            && v["state"] == "Idle"
            && v["info"]
                .as_str()
                .is_some_and(|i| i.contains("send hold timer"))
    });
    // The feeder's session was never disturbed.
    tabby.seen.borrow_mut().extend(tabby.events.try_iter());
    let peers = tabby
        .seen
        .borrow()
        .iter()
        .filter(|v| v["event"] == "peer" && v["address"] == "198.18.0.2")
        .map(|v| v["state"].as_str().unwrap_or_default().to_string())
        .collect::<Vec<_>>();
    assert_eq!(peers.last().map(String::as_str), Some("Established"));
}
