//! Root tests of the namespace toolkit itself: links, segments, routers,
//! address checks and cleanup (on drop, on panic, of stale namespaces).

use std::panic::{AssertUnwindSafe, catch_unwind};

use tabby_testnet::{
    End, Netns, TestNet, cleanup_dead_testnets, cleanup_stale, list_netns, require_root,
};

fn ours(prefix: &str) -> Vec<String> {
    list_netns()
        .unwrap()
        .into_iter()
        .filter(|n| n.starts_with(&format!("{prefix}-")))
        .collect()
}

#[test]
fn veth_pair_carries_v4_and_v6() {
    require_root();
    let tn = TestNet::new();
    let a = tn.netns("a").unwrap();
    let b = tn.netns("b").unwrap();
    tn.veth(
        End::new(&a, "eth0", &["198.18.0.1/24", "2001:db8::1/64"]),
        End::new(&b, "eth0", &["198.18.0.2/24", "2001:db8::2/64"]),
    )
    .unwrap();
    assert!(a.ping("198.18.0.2", 1));
    assert!(b.ping("2001:db8::1", 1));
    assert!(!a.ping("198.18.0.9", 1), "nobody has .9");
    let links = a.ip_json(&["link", "show", "eth0"]).unwrap();
    assert_eq!(links[0]["operstate"], "UP", "{links}");
    let addrs = b
        .ip_json(&["-6", "addr", "show", "dev", "eth0", "scope", "global"])
        .unwrap();
    assert_eq!(addrs[0]["addr_info"][0]["local"], "2001:db8::2", "{addrs}");
}

#[test]
fn segments_and_a_router_connect_two_subnets() {
    require_root();
    let tn = TestNet::new();
    let h1 = tn.netns("h1").unwrap();
    let h2 = tn.netns("h2").unwrap();
    let h3 = tn.netns("h3").unwrap();
    let r = tn.router("r").unwrap();
    let lan1 = tn
        .segment(
            "lan1",
            &[
                End::new(&h1, "eth0", &["198.18.1.10/24", "2001:db8:1::10/64"]),
                End::new(&h3, "eth0", &["198.18.1.11/24"]),
                End::new(&r, "lan1", &["198.18.1.1/24", "2001:db8:1::1/64"]),
            ],
        )
        .unwrap();
    tn.segment(
        "lan2",
        &[
            End::new(&h2, "eth0", &["198.18.2.10/24", "2001:db8:2::10/64"]),
            End::new(&r, "lan2", &["198.18.2.1/24", "2001:db8:2::1/64"]),
        ],
    )
    .unwrap();
    assert_eq!(lan1.bridge, "br-lan1");
    assert!(h1.ping("198.18.1.11", 1), "same segment");
    assert!(!h1.ping("198.18.2.10", 1), "no route yet");
    for (h, gw4, gw6) in [
        (&h1, "198.18.1.1", "2001:db8:1::1"),
        (&h2, "198.18.2.1", "2001:db8:2::1"),
    ] {
        h.add_route("default", gw4).unwrap();
        h.add_route("default", gw6).unwrap();
    }
    assert!(h1.ping("198.18.2.10", 2));
    assert!(h2.ping("2001:db8:1::10", 2));
    let fwd = r.output(&["sysctl", "-n", "net.ipv4.ip_forward"]).unwrap();
    assert_eq!(fwd.trim(), "1");
}

#[test]
fn bad_arguments_are_refused_before_anything_is_made() {
    require_root();
    let tn = TestNet::new();
    let a = tn.netns("a").unwrap();
    let b = tn.netns("b").unwrap();
    let e = tn
        .veth(
            End::new(&a, "eth0", &["10.1.1.1/24"]),
            End::new(&b, "eth0", &[]),
        )
        .unwrap_err();
    assert!(e.to_string().contains("10.1.1.1/24"), "{e}");
    let e = tn
        .veth(
            End::new(&a, "a-very-long-name0", &[]),
            End::new(&b, "eth0", &[]),
        )
        .unwrap_err();
    assert!(e.to_string().contains("interface name"), "{e}");
    assert!(
        a.ip(&["link", "show", "eth0"]).is_err(),
        "nothing was created"
    );
    assert!(
        tn.segment("thirteen-char", &[]).is_err(),
        "bridge name would exceed 15 bytes"
    );
    assert!(a.add_route("8.8.8.0/24", "198.18.0.1").is_err());
}

#[test]
fn everything_is_removed_on_drop_and_on_panic() {
    require_root();
    let tn = TestNet::new();
    let prefix = tn.prefix().to_string();
    let a = tn.netns("a").unwrap();
    let b = tn.netns("b").unwrap();
    tn.veth(
        End::new(&a, "eth0", &["198.18.0.1/24"]),
        End::new(&b, "eth0", &["198.18.0.2/24"]),
    )
    .unwrap();
    tn.segment("s", &[End::new(&a, "eth1", &[])]).unwrap();
    let dir = tn.temp_dir("x").unwrap();
    let pid = tn.spawn(&a, &["sleep", "300"]).unwrap();
    assert_eq!(ours(&prefix).len(), 3, "a, b and the fabric");
    drop(tn);
    // The test still holds handles `a` and `b`: the owner removes them anyway.
    assert!(ours(&prefix).is_empty(), "left over: {:?}", ours(&prefix));
    assert!(!dir.exists());
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "process {pid} survived"
    );
    drop((a, b));

    let mut panicking_prefix = String::new();
    let r = catch_unwind(AssertUnwindSafe(|| {
        let tn = TestNet::new();
        panicking_prefix = tn.prefix().to_string();
        let _c = tn.netns("c").unwrap();
        panic!("test failure inside a network");
    }));
    assert!(r.is_err());
    assert!(ours(&panicking_prefix).is_empty());
}

#[test]
fn stale_namespaces_are_removed_by_prefix() {
    require_root();
    let prefix = format!("tstale{}", std::process::id());
    let leaked = Netns::new(&prefix, "x").unwrap();
    // Simulate a crashed run: the handle never drops.
    std::mem::forget(leaked);
    assert_eq!(ours(&prefix).len(), 1);
    let removed = cleanup_stale(&prefix).unwrap();
    assert_eq!(removed, [format!("{prefix}-x")]);
    assert!(ours(&prefix).is_empty());
    assert!(cleanup_stale("t").is_err(), "too broad a prefix is refused");
}

#[test]
fn namespaces_of_dead_test_processes_are_removed() {
    require_root();
    // A pid that just exited stands in for a crashed test binary.
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let dead = child.id();
    child.wait().unwrap();
    let prefix = format!("t{dead}x0");
    std::mem::forget(Netns::new(&prefix, "z").unwrap());
    let live = TestNet::new();
    let _mine = live.netns("keep").unwrap();
    let removed = cleanup_dead_testnets().unwrap();
    assert!(removed.contains(&format!("{prefix}-z")), "{removed:?}");
    assert!(ours(&prefix).is_empty());
    assert_eq!(
        ours(live.prefix()).len(),
        1,
        "a live process' namespaces stay"
    );
}
