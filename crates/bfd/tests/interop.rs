//! Interop in network namespaces (needs root, bird2 and frr): `tabby-bfdd`
//! in one namespace, BIRD's `protocol bfd` or FRR's `bfdd` in another,
//! joined by a veth. Each pairing runs in both start orders and checks
//! timer negotiation (we want 300 ms, the peer 200 ms: 300 ms both ways),
//! Poll Sequences started by either side without a flap, a link cut
//! detected within the detection time, and recovery. Also: keyed SHA-1
//! with BIRD, multihop with BIRD, two Tabby endpoints (IPv4 with SHA-1,
//! IPv6, AdminDown, removal), and the TTL 255 rule.

mod common;

use common::{Tabby, WAIT, assert_detected, cut, repair, unix_ms};
use std::net::IpAddr;
use std::time::Duration;
use tabby_bfd::packet::{ControlPacket, Diag, State};
use tabby_testnet::bgp::DaemonKind;
use tabby_testnet::bgp::bfd::{
    BfdAuth, BfdConfig, BfdDaemon, BfdSession, BfdState, BirdBfd, FrrBfd,
};
use tabby_testnet::{End, Netns, TestNet, require_root};

/// How much later than the detection time a detection may be reported
/// on a loaded machine.
const MARGIN_MS: u64 = 350;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Namespaces `tabby` (198.18.0.1, 2001:db8::1) and `peer` (.2, ::2).
fn pair(tn: &TestNet) -> (Netns, Netns) {
    let a = tn.netns("tabby").unwrap();
    let b = tn.netns("peer").unwrap();
    tn.veth(
        End::new(&a, "eth0", &["198.18.0.1/24", "2001:db8::1/64"]),
        End::new(&b, "eth0", &["198.18.0.2/24", "2001:db8::2/64"]),
    )
    .unwrap();
    (a, b)
}

fn start_daemon(kind: DaemonKind, ns: &Netns, cfg: &BfdConfig) -> Box<dyn BfdDaemon> {
    // A missing daemon fails here, loudly.
    match kind {
        DaemonKind::Bird => Box::new(BirdBfd::start(ns, cfg).expect("start BIRD")),
        DaemonKind::Frr => Box::new(FrrBfd::start(ns, cfg).expect("start FRR bfdd")),
        DaemonKind::Gobgp => unreachable!("GoBGP has no BFD"),
    }
}

fn timers(tx: u64, detect: u64) -> impl Fn(&BfdSession) -> bool {
    move |s: &BfdSession| {
        s.state == BfdState::Up
            && s.tx_interval == Some(Duration::from_millis(tx))
            && s.detect_time == Some(Duration::from_millis(detect))
    }
}

/// Waits until our session with `peer` is Up with these timers, no Poll
/// in flight.
fn wait_timers(t: &mut Tabby, peer: &str, tx_us: u64, detect_us: u64) -> serde_json::Value {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let s = t.status(peer);
        if s["state"] == "Up"
            && s["txIntervalUs"] == tx_us
            && s["detectionTimeUs"] == detect_us
            && s["polling"] == false
        {
            return s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timers of {peer} never became {tx_us}/{detect_us}: {s}\n{}",
            t.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn daemon_interop(kind: DaemonKind, tabby_first: bool) {
    require_root();
    let tn = TestNet::new();
    let (a, b) = pair(&tn);
    let cfg = BfdConfig::new("198.18.0.2".parse().unwrap())
        .peer(ip("198.18.0.1"), ip("198.18.0.2"), "eth0")
        .timers(200, 200, 3);
    let spec = "--session=198.18.0.2,local=198.18.0.1,interval=300ms,multiplier=3";
    let (mut tabby, mut daemon) = if tabby_first {
        let t = Tabby::start(&a, &[spec]);
        // Sending Down packets into the void for a while first.
        std::thread::sleep(Duration::from_millis(1500));
        (t, start_daemon(kind, &b, &cfg))
    } else {
        let d = start_daemon(kind, &b, &cfg);
        std::thread::sleep(Duration::from_millis(1500));
        (Tabby::start(&a, &[spec]), d)
    };
    let peer = "198.18.0.2";
    tabby.wait_change(peer, "Up", 0, WAIT);
    // We want 300 ms, the daemon 200 ms: both send every 300 ms, and each
    // detects in 3 x 300 ms.
    daemon
        .wait_session(
            ip("198.18.0.1"),
            "Up at 300/900 ms",
            WAIT,
            &timers(300, 900),
        )
        .unwrap();
    wait_timers(&mut tabby, peer, 300_000, 900_000);

    // We slow down to 500 ms: a Poll Sequence, and no flap.
    let t_change = unix_ms();
    tabby.command("update 198.18.0.2,interval=500ms,multiplier=3");
    daemon
        .wait_session(ip("198.18.0.1"), "at 500/1500 ms", WAIT, &timers(500, 1500))
        .unwrap();
    wait_timers(&mut tabby, peer, 500_000, 1_500_000);
    // The daemon changes its timers: it polls, we answer with a Final.
    daemon.set_timers(600, 600, 4).unwrap();
    wait_timers(&mut tabby, peer, 600_000, 2_400_000);
    daemon.set_timers(200, 200, 3).unwrap();
    tabby.command("update 198.18.0.2,interval=300ms,multiplier=3");
    wait_timers(&mut tabby, peer, 300_000, 900_000);
    daemon
        .wait_session(
            ip("198.18.0.1"),
            "back at 300/900 ms",
            WAIT,
            &timers(300, 900),
        )
        .unwrap();
    assert!(
        tabby.changes_since(peer, t_change).is_empty(),
        "timer changes flapped the session: {:?}",
        tabby.changes_since(peer, t_change)
    );

    // A silent link failure (BFD dropped on our side): detected in time.
    let c = cut(&a);
    let down = tabby.wait_change(peer, "Down", c.0, WAIT);
    let took = assert_detected(kind.name(), &down, c, 900, 300, MARGIN_MS);
    eprintln!("{} detection after the cut: {took} ms", kind.name());
    // Our Down packets still reach the daemon, which follows.
    daemon
        .wait_state(ip("198.18.0.1"), BfdState::Down, WAIT)
        .unwrap();
    repair(&a);
    tabby.wait_change(peer, "Up", c.1, WAIT);
    daemon
        .wait_state(ip("198.18.0.1"), BfdState::Up, WAIT)
        .unwrap();

    // The daemon dies: detected by the detection timer as well.
    let killed = unix_ms();
    daemon.kill().unwrap();
    let down = tabby.wait_change(peer, "Down", killed, WAIT);
    // SIGKILL goes out at once; reaping the process takes longer.
    assert_detected(
        kind.name(),
        &down,
        (killed, killed + 20),
        900,
        300,
        MARGIN_MS,
    );
    daemon.restart().unwrap();
    tabby.wait_change(peer, "Up", killed, WAIT);
}

#[test]
fn bird_tabby_starts_first() {
    daemon_interop(DaemonKind::Bird, true);
}

#[test]
fn bird_starts_first() {
    daemon_interop(DaemonKind::Bird, false);
}

#[test]
fn frr_tabby_starts_first() {
    daemon_interop(DaemonKind::Frr, true);
}

#[test]
fn frr_starts_first() {
    daemon_interop(DaemonKind::Frr, false);
}

fn bird_sha1(meticulous: bool) {
    require_root();
    let tn = TestNet::new();
    let (a, b) = pair(&tn);
    let cfg = BfdConfig::new("198.18.0.2".parse().unwrap())
        .peer(ip("198.18.0.1"), ip("198.18.0.2"), "eth0")
        .timers(300, 300, 3)
        .auth(BfdAuth {
            meticulous,
            key_id: 7,
            key: "tabby-secret".into(),
        });
    let bird = BirdBfd::start(&b, &cfg).unwrap();
    let auth = if meticulous {
        "meticulous-sha1"
    } else {
        "sha1"
    };
    let mut tabby = Tabby::start(
        &a,
        &[
            &format!("--session=198.18.0.2,interval=300ms,auth={auth},key-id=7,key=tabby-secret"),
            &format!("--session=2001:db8::2,interval=300ms,auth={auth},key-id=7,key=wrong-secret"),
        ],
    );
    tabby.wait_change("198.18.0.2", "Up", 0, WAIT);
    bird.wait_state(ip("198.18.0.1"), BfdState::Up, WAIT)
        .unwrap_or_else(|e| panic!("{e}\n{}", bird.log()));
    let s = wait_timers(&mut tabby, "198.18.0.2", 300_000, 900_000);
    assert_eq!(
        s["auth"],
        if meticulous {
            "MeticulousKeyedSha1"
        } else {
            "KeyedSha1"
        }
    );
    // Stays up for a while: sequence numbers keep being accepted both ways.
    let t = unix_ms();
    std::thread::sleep(Duration::from_secs(3));
    assert!(tabby.changes_since("198.18.0.2", t).is_empty());
    let s = tabby.status("198.18.0.2");
    assert_eq!(s["rxErrors"], 0, "{s}");
    assert!(s["rxPackets"].as_u64().unwrap() > 10, "{s}");
    // BIRD has no IPv6 peer: the wrong-key session is only a sender. Give
    // BIRD one with the right key to see the wrong key refused by BIRD.
    assert_eq!(tabby.status("2001:db8::2")["state"], "Down");
}

#[test]
fn bird_keyed_sha1() {
    bird_sha1(false);
}

#[test]
fn bird_meticulous_keyed_sha1() {
    bird_sha1(true);
}

#[test]
fn bird_rejects_a_wrong_key_and_we_reject_its() {
    require_root();
    let tn = TestNet::new();
    let (a, b) = pair(&tn);
    let cfg = BfdConfig::new("198.18.0.2".parse().unwrap())
        .peer(ip("198.18.0.1"), ip("198.18.0.2"), "eth0")
        .auth(BfdAuth {
            meticulous: false,
            key_id: 7,
            key: "tabby-secret".into(),
        });
    let bird = BirdBfd::start(&b, &cfg).unwrap();
    let mut tabby = Tabby::start(
        &a,
        &["--session=198.18.0.2,interval=300ms,auth=sha1,key-id=7,key=not-the-secret"],
    );
    // BIRD sends once a second while Down: give it a few.
    std::thread::sleep(Duration::from_secs(4));
    let s = tabby.status("198.18.0.2");
    assert_eq!(s["state"], "Down", "{s}");
    assert!(s["rxErrors"].as_u64().unwrap() >= 2, "{s}");
    assert_ne!(
        bird.session(ip("198.18.0.1")).unwrap().unwrap().state,
        BfdState::Up
    );
    // The right key brings it up without a restart.
    tabby.command("update 198.18.0.2,interval=300ms,auth=sha1,key-id=7,key=tabby-secret");
    tabby.wait_change("198.18.0.2", "Up", 0, WAIT);
}

#[test]
fn bird_multihop() {
    require_root();
    let tn = TestNet::new();
    let (a, b) = pair(&tn);
    let cfg = BfdConfig::new("198.18.0.2".parse().unwrap())
        .peer(ip("198.18.0.1"), ip("198.18.0.2"), "eth0")
        .timers(200, 200, 3)
        .multihop();
    let bird = BirdBfd::start(&b, &cfg).unwrap();
    let mut tabby = Tabby::start(
        &a,
        &[
            "--multihop",
            // BIRD sends multihop packets with TTL 64, not 255: accept any.
            "--session=198.18.0.2,local=198.18.0.1,interval=300ms,multihop",
        ],
    );
    tabby.wait_change("198.18.0.2", "Up", 0, WAIT);
    bird.wait_state(ip("198.18.0.1"), BfdState::Up, WAIT)
        .unwrap_or_else(|e| panic!("{e}\n{}", bird.log()));
    let s = wait_timers(&mut tabby, "198.18.0.2", 300_000, 900_000);
    assert_eq!(s["multihop"], 255);
    let c = cut(&a);
    let down = tabby.wait_change("198.18.0.2", "Down", c.0, WAIT);
    assert_detected("bird multihop", &down, c, 900, 300, MARGIN_MS);
    repair(&a);
    tabby.wait_change("198.18.0.2", "Up", c.1, WAIT);
}

#[test]
fn two_tabby_endpoints() {
    require_root();
    let tn = TestNet::new();
    let (a, b) = pair(&tn);
    let mut ta = Tabby::start(
        &a,
        &[
            "--session=198.18.0.2,local=198.18.0.1,interval=300ms,auth=meticulous-sha1,key-id=3,key=s3cret",
            "--session=2001:db8::2,local=2001:db8::1,interval=300ms",
        ],
    );
    let mut tb = Tabby::start(
        &b,
        &[
            "--session=198.18.0.1,tx=200ms,rx=200ms,multiplier=4,auth=meticulous-sha1,key-id=3,key=s3cret",
            "--session=2001:db8::1,interval=200ms,passive",
        ],
    );
    for (t, peer) in [
        (&ta, "198.18.0.2"),
        (&ta, "2001:db8::2"),
        (&tb, "198.18.0.1"),
        (&tb, "2001:db8::1"),
    ] {
        t.wait_change(peer, "Up", 0, WAIT);
    }
    // a: TX max(300, 200) = 300, detection 4 x max(300, 200) = 1200.
    wait_timers(&mut ta, "198.18.0.2", 300_000, 1_200_000);
    // b: TX max(200, 300) = 300, detection 3 x max(200, 300) = 900.
    wait_timers(&mut tb, "198.18.0.1", 300_000, 900_000);
    wait_timers(&mut tb, "2001:db8::1", 300_000, 900_000);

    // Cut: a detects by its timer; b hears a's Down and follows.
    let c = cut(&a);
    let down = ta.wait_change("198.18.0.2", "Down", c.0, WAIT);
    assert_detected("tabby v4", &down, c, 1200, 300, MARGIN_MS);
    let down6 = ta.wait_change("2001:db8::2", "Down", c.0, WAIT);
    assert_detected("tabby v6", &down6, c, 900, 300, MARGIN_MS);
    let peer_down = tb.wait_change("198.18.0.1", "Down", c.0, WAIT);
    assert_eq!(peer_down["diag"], "NeighborSignaledSessionDown");
    repair(&a);
    ta.wait_change("198.18.0.2", "Up", c.1, WAIT);
    ta.wait_change("2001:db8::2", "Up", c.1, WAIT);

    // AdminDown is not a failure for the other side (RFC 5882).
    let t = unix_ms();
    ta.command("down 198.18.0.2");
    let seen = tb.wait_change("198.18.0.1", "Down", t, WAIT);
    assert_eq!(seen["remoteState"], "AdminDown", "{seen}");
    assert_eq!(seen["diag"], "NeighborSignaledSessionDown");
    assert_eq!(ta.status("198.18.0.2")["state"], "AdminDown");
    ta.command("up 198.18.0.2");
    ta.wait_change("198.18.0.2", "Up", t, WAIT);
    tb.wait_change("198.18.0.1", "Up", t, WAIT);

    // Removing a session tells the peer the same way.
    let t = unix_ms();
    ta.command("remove 2001:db8::2");
    let seen = tb.wait_change("2001:db8::1", "Down", t, WAIT);
    assert_eq!(seen["remoteState"], "AdminDown", "{seen}");
}

#[test]
fn single_hop_requires_ttl_255() {
    require_root();
    let tn = TestNet::new();
    let (a, b) = pair(&tn);
    let mut tabby = Tabby::start(&a, &["--session=198.18.0.2,interval=300ms,passive"]);
    let p = ControlPacket {
        diag: Diag::None,
        state: State::Down,
        poll: false,
        final_: false,
        control_plane_independent: false,
        demand: false,
        multipoint: false,
        detect_mult: 3,
        my_discriminator: 0x1234,
        your_discriminator: 0,
        desired_min_tx: 1_000_000,
        required_min_rx: 300_000,
        required_min_echo_rx: 0,
        auth: None,
    };
    let hex: String = p.encode().iter().map(|b| format!("{b:02x}")).collect();
    let send = |ttl: &str| {
        b.exec(&[
            "python3",
            "-c",
            "import socket,sys\n\
             s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n\
             s.bind(('198.18.0.2',49999))\n\
             s.setsockopt(socket.IPPROTO_IP,socket.IP_TTL,int(sys.argv[1]))\n\
             s.sendto(bytes.fromhex(sys.argv[2]),('198.18.0.1',3784))",
            ttl,
            &hex,
        ])
        .unwrap();
    };
    send("254");
    send("64");
    std::thread::sleep(Duration::from_millis(500));
    let s = tabby.status("198.18.0.2");
    assert_eq!(
        (s["state"].as_str(), s["remoteDiscriminator"].as_u64()),
        (Some("Down"), Some(0)),
        "{s}"
    );
    assert_eq!(s["rxErrors"], 2, "{s}");
    assert_eq!(s["txPackets"], 0, "a passive session stays silent: {s}");
    // The same packet with TTL 255 is taken.
    send("255");
    let init = tabby.wait_change("198.18.0.2", "Init", 0, WAIT);
    assert_eq!(init["old"], "Down");
}
