//! `tabbyctl lab` end to end for L2 planes with partial membership (needs root): hosts
//! in only some of the planes (`--planes-per-host`, in rotation), each plane's reflector
//! checked against its own plane's hosts, every pod pair pinged, then a plane cut
//! while every pair still shares another plane; and the combinations the lab refuses
//! with L2 planes or the ToR designs. Each test uses its own lab name (with the pid)
//! and state root, and removes its lab on drop, also when it fails. The helpers are in
//! `tests/lab_common`.

use std::time::Duration;

mod lab_common;

use lab_common::*;

#[test]
fn l2_planes_partial_membership_cut_a_plane() {
    let lab = Lab::new("qp");
    // Four planes, each host in three (n1 1-2-3, n2 2-3-4, n3 3-4-1, n4 4-1-2): a
    // plane holds three hosts and every pair shares two planes.
    let out = lab.up(&[
        "--topology",
        "l2-planes",
        "--planes",
        "4",
        "--planes-per-host",
        "3",
        "--nodes",
        "4",
        "--pods-per-node",
        "1",
    ]);
    assert!(out.contains("12 pairs: 12 ✓"), "{out}");
    assert!(out.contains("--planes 4 --planes-per-host 3`"), "{out}");
    // Each reflector its plane's 3 hosts; each host a session per plane it is in and
    // every block once in its FIB.
    for rr in ["rr1", "rr2", "rr3", "rr4"] {
        let row = format!("{rr}    RR     3/3        3/3");
        assert!(out.contains(&row), "{row:?} missing:\n{out}");
    }
    for n in ["n1", "n2", "n3", "n4"] {
        let row = format!("{n}     node   3/3        4/4");
        assert!(out.contains(&row), "{row:?} missing:\n{out}");
    }
    lab.refused(&["fail", "plane:5"], "has planes 1..=4");
    // n1 and n2 share planes 2 and 3: n2's block has a next hop on each, none on 1.
    let routes = lab.run(&["exec", "n1", "--", "ip", "route", "show", "proto", "80"]);
    let routes = String::from_utf8_lossy(&routes.stdout).to_string();
    assert!(
        routes.contains("nexthop via 198.18.2.2 dev p2")
            && routes.contains("nexthop via 198.18.3.2 dev p3")
            && !routes.contains("198.18.1.2")
            && !routes.contains("dev p4"),
        "{routes}"
    );

    // n1 and n3 share planes 1 and 3: cut plane 1 under a ping between them.
    let (ping, log) = lab.start_ping("n1-1", "n3-1");
    std::thread::sleep(Duration::from_millis(500));
    let out = lab.ok(&["fail", "plane:1"]);
    // rr1 and the legs of n1, n3 and n4.
    assert!(
        out.contains("failed plane:1 (plane: the 4 ports of bridge br1 down"),
        "{out}"
    );
    assert!(out.contains("BGP converged"), "{out}");
    assert!(
        out.contains("every remaining pod pair reachable: 12 of 12"),
        "{out}"
    );
    for n in ["n1", "n3", "n4"] {
        let row = format!("{n}     node   live             2/3           rr1 ");
        assert!(out.contains(&row), "{row:?} missing:\n{out}");
    }
    assert!(out.contains("n2     node   live             3/3"), "{out}");
    assert!(out.contains("rr3    RR     live             3/3"), "{out}");
    let (sent, received) = stop_ping(ping, &log);
    assert!(sent > 20, "the ping ran only {sent} times");
    assert!(
        sent - received <= 5,
        "{} of {sent} pings lost while plane 1 was cut",
        sent - received
    );

    let out = lab.ok(&["heal"]);
    assert!(
        out.contains("plane:1: the 4 ports of bridge br1 up"),
        "{out}"
    );
    assert!(out.contains("every pod pair reachable: 12 of 12"), "{out}");
    assert!(out.contains("planner check: ok"), "{out}");

    let pids = lab.pids();
    lab.down_and_check_gone(&pids);
}

#[test]
fn l2_planes_etcd() {
    let lab = Lab::new("qe");
    // etcd has a leg on every plane; each host's agent and CNI plugin name etcd's
    // addresses on its own planes. Five hosts in 3 of 4 planes: plane 4 holds three
    // (n2, n3, n4), the others four.
    let out = lab.up(&[
        "--topology",
        "l2-planes",
        "--planes-per-host",
        "3",
        "--nodes",
        "5",
        "--pods-per-node",
        "1",
        "--store",
        "etcd",
    ]);
    assert!(out.contains("20 pairs: 20 ✓"), "{out}");
    for (rr, figures) in [("rr1", "4/4        4/4"), ("rr4", "3/3        3/3")] {
        let row = format!("{rr}    RR     {figures}");
        assert!(out.contains(&row), "{row:?} missing:\n{out}");
    }
    let args = lab.state()["processes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["what"] == "agent n3")
        .unwrap()
        .to_string();
    // n3 is in planes 3, 4 and 1.
    assert!(
        args.contains("etcd://198.18.1.251:2379,198.18.3.251:2379,198.18.4.251:2379\""),
        "{args}"
    );
    // Cutting plane 4 cuts n2, n3 and n4 off etcd's address there, not off etcd.
    let out = lab.ok(&["fail", "plane:4"]);
    assert!(
        out.contains("the 4 ports of bridge br4 down (rr4, n2p4, n3p4, n4p4)"),
        "{out}"
    );
    assert!(
        out.contains("every remaining pod pair reachable: 20 of 20"),
        "{out}"
    );
    let out = lab.ok(&["heal"]);
    assert!(out.contains("every pod pair reachable: 20 of 20"), "{out}");
    assert!(out.contains("planner check: ok"), "{out}");
    let pids = lab.pids();
    lab.down_and_check_gone(&pids);
}

#[test]
fn tor_etcd() {
    let lab = Lab::new("qt");
    // etcd has a leg on every rack's bridge; each node names its rack's.
    let out = lab.up(&[
        "--topology",
        "as-per-rack-l2-spine",
        "--nodes",
        "2",
        "--racks",
        "2",
        "--pods-per-node",
        "1",
        "--store",
        "etcd",
    ]);
    assert!(out.contains("2 pairs: 2 ✓"), "{out}");
    let args = lab.state()["processes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["what"] == "agent n2")
        .unwrap()
        .to_string();
    assert!(args.contains("etcd://198.18.2.251:2379\""), "{args}");
    let pids = lab.pids();
    lab.down_and_check_gone(&pids);
}

#[test]
fn l2_planes_and_fabric_refusals() {
    let lab = Lab::new("qb");
    for (args, says) in [
        (
            vec![
                "up",
                "--topology",
                "l2-planes",
                "--planes",
                "4",
                "--planes-per-host",
                "2",
                "--nodes",
                "3",
            ],
            "hosts n1 (plane 1, plane 2) and n3 (plane 3, plane 4) share no plane",
        ),
        (
            vec!["up", "--topology", "l2-planes", "--planes-per-host", "5"],
            "outside 1..=4",
        ),
        (
            vec!["up", "--planes-per-host", "2"],
            "planes are of --topology l2-planes",
        ),
        (
            vec!["up", "--topology", "l2-planes", "--encap", "vxlan"],
            "--encap",
        ),
        (
            vec![
                "up",
                "--topology",
                "as-per-server",
                "--nodes",
                "2",
                "--encap",
                "vxlan",
            ],
            "the fabric routes the pools natively",
        ),
    ] {
        let out = lab.run(&args);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
    assert!(!lab.dir().exists());
}
