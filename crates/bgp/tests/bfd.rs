//! BGP protected by BFD (RFC 5882), for real: `tabby-bgpd` with `bfd` on a
//! peer, against BIRD (`bfd on`), FRR (bgpd + bfdd, `neighbor X bfd`) and
//! another `tabby-bgpd`, each in its own network namespaces. The session
//! is Established only once BFD is Up; cutting BFD (an nft drop of UDP 3784
//! in one direction, or the link going down) takes BGP down within the
//! detection time, far below the 9 s hold time; restoring it brings BGP
//! back. Needs root.

mod common;

use common::{Tabby, WAIT};
use serde_json::Value;
use std::net::IpAddr;
use std::time::{Duration, Instant};
use tabby_testnet::bgp::{self, BgpConfig, BgpDaemon, DaemonKind, Neighbor};
use tabby_testnet::{End, Netns, TestNet, require_root};

/// 300 ms x 3 detects in 0.9 s after the last packet; the bound leaves room
/// for a loaded machine, and is far below the 9 s hold time.
const DETECT_BOUND: Duration = Duration::from_millis(1500);

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// How many events `t` has printed so far: a mark for [`peer_event`].
fn mark(t: &Tabby) -> usize {
    let pending: Vec<Value> = t.events.try_iter().collect();
    t.seen.borrow_mut().extend(pending);
    t.seen.borrow().len()
}

/// The first peer event for `peer` after mark `from` satisfying `f`, with
/// when it was read; `None` after `timeout`.
fn peer_event(
    t: &Tabby,
    from: usize,
    peer: &str,
    timeout: Duration,
    f: impl Fn(&Value) -> bool,
) -> Option<(Value, Instant)> {
    let hit = |v: &Value| v["event"] == "peer" && v["address"] == peer && f(v);
    let now = Instant::now();
    if let Some(v) = t.seen.borrow().iter().skip(from).find(|v| hit(v)) {
        return Some((v.clone(), now));
    }
    let deadline = now + timeout;
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        let v = t.events.recv_timeout(left).ok()?;
        let at = Instant::now();
        let found = hit(&v);
        t.seen.borrow_mut().push(v.clone());
        if found {
            return Some((v, at));
        }
    }
    None
}

fn established(v: &Value) -> bool {
    v["state"] == "Established"
}

/// Drops UDP to the single-hop BFD port arriving in `ns` (one direction
/// only: BGP's TCP keeps working, so only BFD can take the session down).
fn block_bfd(ns: &Netns) {
    ns.exec(&["nft", "add", "table", "inet", "bfdcut"]).unwrap();
    ns.exec(&[
        "nft",
        "add chain inet bfdcut input { type filter hook input priority 0 ; }",
    ])
    .unwrap();
    ns.exec(&[
        "nft", "add", "rule", "inet", "bfdcut", "input", "udp", "dport", "3784", "drop",
    ])
    .unwrap();
}

fn unblock_bfd(ns: &Netns) {
    ns.exec(&["nft", "delete", "table", "inet", "bfdcut"])
        .unwrap();
}

fn tabby_config(router_id: &str, asn: u32, peer: &str, peer_as: u32) -> String {
    format!(
        "routerId: {router_id}\nasn: {asn}\nlisten: \"0.0.0.0:179\"\nholdTime: 9\n\
         connectRetrySecs: 1\nidleHoldSecs: 1\npeers:\n\
         \x20 - address: {peer}\n    remoteAs: {peer_as}\n\
         \x20   bfd: \"interval=300ms,multiplier=3\"\n"
    )
}

/// Against a routing daemon: held while BFD is blocked, Established once it
/// is Up, down within the detection time when it is cut, back after.
fn against(kind: DaemonKind) {
    require_root();
    let tn = TestNet::new();
    let a = tn.netns("tabby").unwrap();
    let b = tn.netns(kind.name()).unwrap();
    tn.veth(
        End::new(&a, "eth0", &["198.18.0.1/24"]),
        End::new(&b, "eth0", &["198.18.0.2/24"]),
    )
    .unwrap();
    let cfg = BgpConfig::new("198.18.0.2".parse().unwrap(), 65001)
        .neighbor(Neighbor::new(ip("198.18.0.1"), 64512).bfd())
        .bfd_timers(300, 300, 3)
        .originate("100.64.2.0/24".parse().unwrap())
        .hold_time(9);
    let daemon: Box<dyn BgpDaemon> = match kind {
        DaemonKind::Bird => Box::new(bgp::Bird::start(&b, &cfg).unwrap()),
        DaemonKind::Frr => Box::new(bgp::Frr::start(&b, &cfg).unwrap()),
        DaemonKind::Gobgp => unreachable!("GoBGP has no BFD"),
    };
    // BFD cannot come up: BGP must not either, although TCP works.
    block_bfd(&a);
    let tabby = Tabby::start(&a, &tabby_config("198.18.0.1", 64512, "198.18.0.2", 65001));
    let early = peer_event(&tabby, 0, "198.18.0.2", Duration::from_secs(6), established);
    assert!(
        early.is_none(),
        "Established without BFD: {early:?}\n{}",
        tabby.log()
    );
    let states = daemon.session_states().unwrap();
    assert!(
        states
            .iter()
            .all(|(_, s)| *s != tabby_testnet::bgp::SessionState::Established),
        "{} established while our BFD was blocked: {states:?}",
        kind.name()
    );
    // BFD allowed: Up, then BGP Established, reported with BFD Up.
    let m = mark(&tabby);
    unblock_bfd(&a);
    let (up, _) = peer_event(&tabby, m, "198.18.0.2", WAIT, established)
        .unwrap_or_else(|| panic!("never Established\n{}", tabby.log()));
    assert_eq!(up["bfd"]["state"], "Up", "{up}");
    assert_eq!(up["bfd"]["desiredMinTxUs"], 300_000, "{up}");
    daemon
        .wait_established(ip("198.18.0.1"), WAIT)
        .unwrap_or_else(|e| panic!("{e}\n{}", tabby.log()));
    tabby.wait_route("100.64.2.0/24", serde_json::json!(["198.18.0.2"]));
    // Cut BFD in one direction: BGP goes down within the detection time.
    let m = mark(&tabby);
    let cut = Instant::now();
    block_bfd(&a);
    let (down, at) = peer_event(&tabby, m, "198.18.0.2", Duration::from_secs(9), |v| {
        !established(v)
    })
    .unwrap_or_else(|| panic!("BGP stayed up with BFD cut\n{}", tabby.log()));
    let took = at - cut;
    eprintln!(
        "{}: BGP down {} ms after cutting BFD (300ms x3, hold time 9 s)",
        kind.name(),
        took.as_millis()
    );
    assert!(took < DETECT_BOUND, "took {took:?}: {down}");
    assert!(
        down["info"].as_str().unwrap_or("").contains("BFD"),
        "{down}"
    );
    tabby.wait_route("100.64.2.0/24", serde_json::json!([]));
    // The peer's BGP went down too (BIRD and FRR drop on BFD down).
    let peer_down = tabby_testnet::wait_until(Duration::from_secs(5), || {
        daemon.session_states().is_ok_and(|s| {
            s.iter()
                .all(|(_, s)| *s != tabby_testnet::bgp::SessionState::Established)
        })
    });
    assert!(peer_down, "{} kept its session", kind.name());
    // Recovery: BFD Up again, BGP back, routes back.
    let m = mark(&tabby);
    unblock_bfd(&a);
    let (back, _) = peer_event(&tabby, m, "198.18.0.2", WAIT, established)
        .unwrap_or_else(|| panic!("never back\n{}", tabby.log()));
    assert_eq!(back["bfd"]["state"], "Up", "{back}");
    // Counted: at least the cut (FRR's bfdd may also flap once while its
    // bgpd registers the session).
    let downs = |v: &Value| v["bfd"]["downs"].as_u64().unwrap_or(0);
    assert!(downs(&back) > downs(&up), "{up}\n{back}");
    tabby.wait_route("100.64.2.0/24", serde_json::json!(["198.18.0.2"]));
}

#[test]
fn bfd_tabby_bgpd_against_bird() {
    against(DaemonKind::Bird);
}

#[test]
fn bfd_tabby_bgpd_against_frr() {
    against(DaemonKind::Frr);
}

/// Two `tabby-bgpd` with BFD; the link goes down under them: both sessions
/// fall within the detection time, not the hold time, and come back with it.
#[test]
fn bfd_two_tabby_speakers_link_down() {
    require_root();
    let tn = TestNet::new();
    let a = tn.netns("a").unwrap();
    let b = tn.netns("b").unwrap();
    tn.veth(
        End::new(&a, "eth0", &["198.18.0.1/24"]),
        End::new(&b, "eth0", &["198.18.0.2/24"]),
    )
    .unwrap();
    let mut ca = tabby_config("198.18.0.1", 64512, "198.18.0.2", 64513);
    ca.push_str("originate:\n  - prefix: 100.64.1.0/24\n");
    let ta = Tabby::start(&a, &ca);
    let tb = Tabby::start(&b, &tabby_config("198.18.0.2", 64513, "198.18.0.1", 64512));
    for (t, peer) in [(&ta, "198.18.0.2"), (&tb, "198.18.0.1")] {
        let (up, _) = peer_event(t, 0, peer, WAIT, established)
            .unwrap_or_else(|| panic!("never Established\n{}", t.log()));
        assert_eq!(up["bfd"]["state"], "Up", "{up}");
    }
    tb.wait_route("100.64.1.0/24", serde_json::json!(["198.18.0.1"]));
    let (ma, mb) = (mark(&ta), mark(&tb));
    let cut = Instant::now();
    a.exec(&["ip", "link", "set", "eth0", "down"]).unwrap();
    let (down, at) = peer_event(&tb, mb, "198.18.0.1", Duration::from_secs(9), |v| {
        !established(v)
    })
    .unwrap_or_else(|| panic!("BGP stayed up with the link down\n{}", tb.log()));
    let took = at - cut;
    eprintln!(
        "tabby-bgpd pair: BGP down {} ms after the link went down (300ms x3, hold time 9 s)",
        took.as_millis()
    );
    assert!(took < DETECT_BOUND, "took {took:?}: {down}");
    assert!(
        down["info"].as_str().unwrap_or("").contains("BFD"),
        "{down}"
    );
    tb.wait_route("100.64.1.0/24", serde_json::json!([]));
    let (ma2, mb2) = (mark(&ta), mark(&tb));
    a.exec(&["ip", "link", "set", "eth0", "up"]).unwrap();
    let (_, _) = peer_event(&ta, ma, "198.18.0.2", WAIT, |v| !established(v))
        .unwrap_or_else(|| panic!("a never saw it down\n{}", ta.log()));
    for (t, m, peer) in [(&ta, ma2, "198.18.0.2"), (&tb, mb2, "198.18.0.1")] {
        peer_event(t, m, peer, WAIT, established)
            .unwrap_or_else(|| panic!("never back\n{}", t.log()));
    }
    tb.wait_route("100.64.1.0/24", serde_json::json!(["198.18.0.1"]));
}

/// A planned restart (SIGTERM) of a `tabby-bgpd` with BFD: its sessions go
/// AdminDown, which RFC 5882 section 3.2 says is not a failure, so the other
/// `tabby-bgpd` does not count a BFD failure and keeps the restarting peer's
/// routes for the graceful restart. (BIRD 2.0.12 does take a peer's AdminDown
/// for a failure; BIRD 3 does not.)
#[test]
fn bfd_admin_down_on_a_planned_restart_keeps_graceful_restart() {
    require_root();
    let tn = TestNet::new();
    let a = tn.netns("a").unwrap();
    let b = tn.netns("b").unwrap();
    tn.veth(
        End::new(&a, "eth0", &["198.18.0.1/24"]),
        End::new(&b, "eth0", &["198.18.0.2/24"]),
    )
    .unwrap();
    let ta = Tabby::start(&a, &tabby_config("198.18.0.1", 64512, "198.18.0.2", 64513));
    let mut cb = tabby_config("198.18.0.2", 64513, "198.18.0.1", 64512);
    cb.push_str("originate:\n  - prefix: 100.64.2.0/24\n");
    let mut tb = Tabby::start(&b, &cb);
    peer_event(&ta, 0, "198.18.0.2", WAIT, |v| {
        established(v) && v["bfd"]["state"] == "Up"
    })
    .unwrap_or_else(|| panic!("never Established\n{}", ta.log()));
    ta.wait_route("100.64.2.0/24", serde_json::json!(["198.18.0.2"]));
    let m = mark(&ta);
    let ok = std::process::Command::new("kill")
        .args(["-TERM", &tb.child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
    let _ = tb.child.wait();
    let (down, _) = peer_event(&ta, m, "198.18.0.2", Duration::from_secs(5), |v| {
        v["bfd"]["state"] == "AdminDown" || v["bfd"]["state"] == "Down"
    })
    .unwrap_or_else(|| panic!("BFD never left Up\n{}", ta.log()));
    assert_eq!(
        down["bfd"]["downs"], 0,
        "AdminDown counted as a failure: {down}"
    );
    // Past the detection time: the routes are kept (stale) for the restart.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        ta.latest("100.64.2.0/24"),
        Some(serde_json::json!(["198.18.0.2"])),
        "routes flushed on a planned restart\n{}",
        ta.log()
    );
    assert!(
        !ta.log().contains("BFD session down: taking"),
        "{}",
        ta.log()
    );
}
