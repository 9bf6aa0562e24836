//! `tabbyctl lab` end to end for the ToR/spine topologies (needs root, BIRD 2 and
//! FRR): racks of tabby-node agents behind ToR routers run by real `bird` or FRR
//! `zebra`+`bgpd`, spines as a bridge or as routers, pods through the CNI plugin, every
//! device (nodes, ToRs, spines) checked against the planner and every pod pair pinged;
//! then `status`, `graph` and `down`, after which nothing of the lab may be left: no
//! `tl-<name>-*` namespace, no agent or router process, no state dir. Each test uses
//! its own lab name (with the pid) and state root, and removes its lab on drop, also
//! when it fails. The helpers are in
//! `tests/lab_common`.

use std::process::Stdio;
use std::time::{Duration, Instant};

mod lab_common;

use lab_common::*;

/// The planner-check row of `device`: SESSIONS, ROUTES, POD ROUTES (lab/plan) and the
/// verdict.
fn plan_row(out: &str, device: &str) -> Vec<String> {
    let start = out
        .find("Planner check (lab/plan)")
        .expect("the summary has a planner check");
    out[start..]
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.first() == Some(&device))
        .unwrap_or_else(|| panic!("no planner row for {device}:\n{out}"))[1..]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

/// Asserts a device's row: role, sessions, block routes and pod routes as lab/plan,
/// matched.
fn assert_row(out: &str, device: &str, role: &str, sessions: u32, routes: u32, pods: u32) {
    let want = [
        role.to_string(),
        format!("{sessions}/{sessions}"),
        format!("{routes}/{routes}"),
        format!("{pods}/{pods}"),
        "✓".to_string(),
    ];
    assert_eq!(plan_row(out, device), want, "{device}:\n{out}");
}

/// `lab status`, `lab graph` and `lab down` of a fabric lab with `routers` routers
/// (and `daemons` router processes) among its devices.
fn status_graph_down(lab: &Lab, routers: &[&str], daemons: &str, processes: usize) {
    let status = lab.run(&["status"]);
    let text = String::from_utf8_lossy(&status.stdout).to_string();
    assert!(status.status.success(), "{status:?}");
    assert!(text.contains("planner check: ok"), "{text}");
    for r in routers {
        assert!(
            text.lines()
                .any(|l| l.starts_with(&format!("{r} ")) && l.contains(&format!("({daemons} pid"))),
            "{r} with its {daemons} in status:\n{text}"
        );
    }
    let graph = lab.run(&["graph"]);
    assert!(graph.status.success(), "{graph:?}");
    let svg = String::from_utf8_lossy(&graph.stdout);
    assert!(svg.starts_with("<svg"), "{svg}");
    for r in routers {
        assert!(svg.contains(&format!(">{r}</text>")), "{r} in the graph");
    }
    // The legend's dashed line only: every session is Established.
    assert_eq!(
        svg.matches("stroke-dasharray").count(),
        1,
        "a session is not Established:\n{svg}"
    );
    let pids = lab.pids();
    assert_eq!(pids.len(), processes, "{:?}", lab.state()["processes"]);
    lab.down_and_check_gone(&pids);
}

#[test]
fn as_per_rack_l2_spine_bird() {
    let lab = Lab::new("fl2b");
    let out = lab.up(&[
        "--topology",
        "as-per-rack-l2-spine",
        "--nodes",
        "4",
        "--racks",
        "2",
        "--pods-per-node",
        "1",
    ]);
    // Nodes: their ToR; every block. ToRs: 2 rack nodes + the other ToR; every block.
    for n in ["n1", "n2", "n3", "n4"] {
        assert_row(&out, n, "node", 1, 4, 1);
    }
    assert_row(&out, "tor1", "ToR", 3, 4, 0);
    assert_row(&out, "tor2", "ToR", 3, 4, 0);
    assert!(out.contains("--racks 2"), "{out}");
    assert!(out.contains("12 pairs: 12 ✓"), "{out}");
    // The rack-mate's block keeps its own next hop (reflected over iBGP), the other
    // rack's comes via the ToR (next-hop-self on eBGP-learned routes).
    let routes = lab.run(&[
        "exec", "n1", "--", "ip", "-j", "route", "show", "proto", "80",
    ]);
    let v: serde_json::Value = serde_json::from_slice(&routes.stdout).unwrap();
    let gateways: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["gateway"].as_str())
        .collect();
    assert!(gateways.contains(&"198.18.1.2"), "{v}");
    assert_eq!(
        gateways.iter().filter(|g| **g == "198.18.1.254").count(),
        2,
        "{v}"
    );
    status_graph_down(&lab, &["tor1", "tor2"], "bird", 4 + 2);
}

#[test]
fn as_per_rack_l3_spine_frr() {
    let lab = Lab::new("fl3f");
    let out = lab.up(&[
        "--topology",
        "as-per-rack-l3-spine",
        "--nodes",
        "4",
        "--racks",
        "2",
        "--pods-per-node",
        "1",
        "--router",
        "frr",
    ]);
    for n in ["n1", "n2", "n3", "n4"] {
        assert_row(&out, n, "node", 1, 4, 1);
    }
    // ToRs: 2 rack nodes + the spine; the spine: both ToRs; every block everywhere.
    assert_row(&out, "tor1", "ToR", 3, 4, 0);
    assert_row(&out, "tor2", "ToR", 3, 4, 0);
    assert_row(&out, "spine1", "spine", 2, 4, 0);
    assert!(out.contains("12 pairs: 12 ✓"), "{out}");
    // A dead ToR: its links down, its bgpd killed; its rack is cut off, the other
    // rack's pods still reach each other, and heal starts bgpd again.
    let fail = lab.run(&["fail", "tor2", "--timeout", "40"]);
    let text = String::from_utf8_lossy(&fail.stdout);
    assert!(fail.status.success(), "{fail:?}");
    assert!(
        text.contains("router: links eth0, sp1 down, BGP daemon pid"),
        "{text}"
    );
    assert!(text.contains("sessions with tor2 down"), "{text}");
    assert!(text.contains("pods on failed nodes: n3-1, n4-1"), "{text}");
    assert!(
        text.contains("2 between pods on live nodes: 2 ✓, 0 ✗"),
        "{text}"
    );
    let heal = lab.run(&["heal", "--timeout", "40"]);
    let text = String::from_utf8_lossy(&heal.stdout);
    assert!(heal.status.success(), "{heal:?}");
    assert!(
        text.contains("tor2: links eth0, sp1 up, bgpd started again"),
        "{text}"
    );
    assert!(
        text.contains("every pod pair reachable: 12 of 12"),
        "{text}"
    );
    // zebra and bgpd per router.
    status_graph_down(&lab, &["tor1", "tor2", "spine1"], "zebra", 4 + 3 * 2);
}

#[test]
fn as_per_server_two_spines_bird() {
    let lab = Lab::new("fasb");
    let out = lab.up(&[
        "--topology",
        "as-per-server",
        "--nodes",
        "4",
        "--racks",
        "2",
        "--spines",
        "2",
        "--pods-per-node",
        "1",
    ]);
    for n in ["n1", "n2", "n3", "n4"] {
        assert_row(&out, n, "node", 1, 4, 1);
    }
    assert_row(&out, "tor1", "ToR", 4, 4, 0);
    assert_row(&out, "spine2", "spine", 2, 4, 0);
    assert!(out.contains("--spines 2"), "{out}");
    assert!(out.contains("12 pairs: 12 ✓"), "{out}");
    // Every node registered its own 4-octet private AS.
    let nodes = lab.run(&[
        "exec",
        "tor2",
        "--",
        "birdc",
        "-s",
        &format!("{}/tor2/bird.ctl", lab.dir().display()),
        "show",
        "protocols",
        "all",
        "n4",
    ]);
    let text = String::from_utf8_lossy(&nodes.stdout);
    assert!(text.contains("Neighbor AS:      4200000004"), "{text}");

    // A dead node: the rest converges around it, its ToR's session with it is down.
    let fail = lab.run(&["fail", "n4", "--timeout", "40"]);
    let text = String::from_utf8_lossy(&fail.stdout);
    assert!(fail.status.success(), "{fail:?}");
    assert!(text.contains("BGP converged"), "{text}");
    let heal = lab.run(&["heal", "--timeout", "40"]);
    assert!(heal.status.success(), "{heal:?}");
    status_graph_down(&lab, &["tor1", "tor2", "spine1", "spine2"], "bird", 4 + 4);
}

#[test]
fn downward_default_frr() {
    let lab = Lab::new("fddf");
    let out = lab.up(&[
        "--topology",
        "downward-default",
        "--nodes",
        "4",
        "--racks",
        "2",
        "--pods-per-node",
        "1",
        "--router",
        "frr",
    ]);
    // Nodes: their own block and the default; ToRs: the rack's 2 blocks and the
    // default; the spine every block.
    for n in ["n1", "n2", "n3", "n4"] {
        assert_row(&out, n, "node", 1, 2, 1);
    }
    assert_row(&out, "tor1", "ToR", 3, 3, 0);
    assert_row(&out, "tor2", "ToR", 3, 3, 0);
    assert_row(&out, "spine1", "spine", 2, 4, 0);
    assert!(out.contains("12 pairs: 12 ✓"), "{out}");
    let routes = lab.run(&[
        "exec", "n3", "--", "ip", "-j", "route", "show", "proto", "80",
    ]);
    let v: serde_json::Value = serde_json::from_slice(&routes.stdout).unwrap();
    assert!(
        v.as_array()
            .unwrap()
            .iter()
            .any(|r| r["dst"] == "default" && r["gateway"] == "198.18.2.254"),
        "the default from the ToR: {v}"
    );
    status_graph_down(&lab, &["tor1", "tor2", "spine1"], "zebra", 4 + 3 * 2);
}

#[test]
fn downward_default_bird() {
    let lab = Lab::new("fddb");
    let out = lab.up(&[
        "--topology",
        "downward-default",
        "--nodes",
        "2",
        "--racks",
        "2",
        "--pods-per-node",
        "2",
    ]);
    assert_row(&out, "n1", "node", 1, 2, 2);
    assert_row(&out, "tor2", "ToR", 2, 2, 0);
    assert_row(&out, "spine1", "spine", 2, 2, 0);
    assert!(out.contains("12 pairs: 12 ✓"), "{out}");
    status_graph_down(&lab, &["tor1", "tor2", "spine1"], "bird", 2 + 3);
}

#[test]
fn fabric_up_crashed_is_cleaned_by_down() {
    let lab = Lab::new("fcr");
    let mut child = lab
        .command(&[
            "up",
            "--topology",
            "as-per-rack-l3-spine",
            "--nodes",
            "2",
            "--router",
            "frr",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Kill `up` once the routers' daemons run, before the agents are up.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let started = std::fs::read_to_string(lab.dir().join("lab.json"))
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .is_some_and(|v| v["processes"].as_array().is_some_and(|p| p.len() >= 6));
        assert!(
            child.try_wait().unwrap().is_none(),
            "up ended before it could be killed"
        );
        assert!(Instant::now() < deadline, "up started no routers");
        if started {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let pids = lab.pids();
    assert!(pids.iter().all(|p| running(*p)), "the daemons outlive up");
    assert!(lab.dir().join("tor1").join("bgpd.conf").exists());
    lab.down_and_check_gone(&pids);
}

#[test]
fn fabric_requests_checked() {
    let lab = Lab::new("fbad");
    for (args, want) in [
        (
            vec![
                "--topology",
                "as-per-server",
                "--nodes",
                "3",
                "--racks",
                "2",
            ],
            "every rack",
        ),
        (vec!["--topology", "mesh", "--racks", "2"], "--racks 2"),
        (
            vec!["--topology", "as-per-rack-l2-spine", "--spines", "2"],
            "no spine routers",
        ),
        (
            vec![
                "--topology",
                "downward-default",
                "--nodes",
                "2",
                "--router",
                "quagga",
            ],
            "bird or frr",
        ),
        (
            vec![
                "--topology",
                "downward-default",
                "--nodes",
                "2",
                "--encap",
                "vxlan",
            ],
            "--encap",
        ),
    ] {
        let mut full = vec!["up"];
        full.extend(args.iter().copied());
        let out = lab.run(&full);
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{args:?}: {err}");
        assert!(!lab.dir().exists(), "{args:?} made {}", lab.dir().display());
    }
}

/// `BGP converged X s` from a `fail` report, in seconds.
fn converged_secs(out: &str) -> f64 {
    out.lines()
        .find_map(|l| l.strip_prefix("BGP converged "))
        .and_then(|l| l.split(" s ").next())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| panic!("no `BGP converged` line:\n{out}"))
}

/// `lab up --bfd` behind ToRs run by `router`: every session (nodes to ToRs, ToRs
/// to the spine) protected by BFD 300 ms x 3; a dead ToR is noticed in the
/// detection time, not the 9 s hold time; heal brings it all back.
fn fabric_with_bfd(label: &str, router: &str, daemons_per_router: usize) {
    let lab = Lab::new(label);
    let out = lab.up(&[
        "--topology",
        "as-per-rack-l3-spine",
        "--nodes",
        "4",
        "--racks",
        "2",
        "--pods-per-node",
        "1",
        "--router",
        router,
        "--bfd",
    ]);
    assert!(out.contains("as-per-rack-l3-spine with BFD"), "{out}");
    assert!(out.contains("12 pairs: 12 ✓"), "{out}");
    // The nodes' BFD sessions with their ToR are Up.
    for n in ["n1", "n3"] {
        let socket = lab.dir().join(format!("{n}.ctl"));
        let st = std::process::Command::new(CTL)
            .args(["node", "status", "--socket"])
            .arg(&socket)
            .env("TABBY_CONFIG", "/nonexistent/tabbyctl.yaml")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&st.stdout);
        assert!(
            text.contains("| Up        | 300ms/300ms x3 | 0     |"),
            "{n}:\n{text}"
        );
    }
    let fail = lab.run(&["fail", "tor2", "--timeout", "40"]);
    let text = String::from_utf8_lossy(&fail.stdout).to_string();
    assert!(fail.status.success(), "{fail:?}");
    let secs = converged_secs(&text);
    eprintln!("{router}: lab fail tor2 with BFD: BGP converged in {secs} s");
    assert!(secs < 3.0, "{text}");
    let heal = lab.run(&["heal", "--timeout", "40"]);
    let text = String::from_utf8_lossy(&heal.stdout);
    assert!(heal.status.success(), "{heal:?}");
    assert!(
        text.contains("every pod pair reachable: 12 of 12"),
        "{text}"
    );
    let pids = lab.pids();
    assert_eq!(
        pids.len(),
        4 + 3 * daemons_per_router,
        "{:?}",
        lab.state()["processes"]
    );
    lab.down_and_check_gone(&pids);
}

#[test]
fn bfd_fabric_bird() {
    fabric_with_bfd("fbb", "bird", 1);
}

#[test]
fn bfd_fabric_frr() {
    // zebra, bfdd and bgpd per router.
    fabric_with_bfd("fbf", "frr", 3);
}
