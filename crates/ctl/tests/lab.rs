//! `tabbyctl lab` end to end (needs root): real clusters of tabby-node agents in
//! network namespaces, pods through the CNI plugin, checked against the planner and
//! with pings; then `status`, `exec` and `down`, after which nothing of the lab may be
//! left: no `tl-<name>-*` namespace, no process, no state dir. Each test uses its own
//! lab name (with the pid) and state root, and removes its lab on drop, also when it
//! fails.

use std::process::Stdio;
use std::time::{Duration, Instant};

mod lab_common;

use lab_common::*;

#[test]
fn mesh_up_status_exec_down() {
    let lab = Lab::new("m");
    let out = lab.up(&["--topology", "mesh", "--nodes", "3", "--pods-per-node", "2"]);
    assert!(out.contains("30 pairs: 30 ✓, 0 ✗"), "{out}");
    assert!(out.contains("n3-2"), "{out}");

    // A second `up` of the same lab refuses.
    let again = lab.run(&["up"]);
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("exists"),
        "{again:?}"
    );

    let status = lab.run(&["status"]);
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(status.status.success(), "{status:?}");
    assert_eq!(text.matches("running (pid").count(), 3, "{text}");
    assert!(text.contains("planner check: ok"), "{text}");
    assert!(text.contains("n2-2"), "{text}");

    // exec on a node: its proto-80 routes are 3 blocks and 2 pods.
    let routes = lab.run(&[
        "exec", "n1", "--", "ip", "-j", "route", "show", "proto", "80",
    ]);
    assert!(routes.status.success(), "{routes:?}");
    let v: serde_json::Value = serde_json::from_slice(&routes.stdout).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 5, "{v}");
    // exec in a pod: traffic to a pod on another node, and the exit code passed on.
    let to = lab.pod_ip("n3-2");
    let ping = lab.run(&["exec", "n1-1", "--", "ping", "-c", "1", "-W", "2", &to]);
    assert!(ping.status.success(), "{ping:?}");
    let code = lab.run(&["exec", "n1-1", "--", "sh", "-c", "exit 3"]);
    assert_eq!(code.status.code(), Some(3));
    let unknown = lab.run(&["exec", "n9", "--", "true"]);
    assert_eq!(unknown.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&unknown.stderr).contains("no node or pod \"n9\""),
        "{unknown:?}"
    );

    let pids = lab.pids();
    assert_eq!(pids.len(), 3);
    lab.down_and_check_gone(&pids);
}

#[test]
fn route_reflector_four_nodes() {
    let lab = Lab::new("r");
    let out = lab.up(&["--topology", "route-reflector", "--nodes", "4"]);
    // Two dedicated reflectors (2 clients + each other), two clients (the reflectors).
    for row in [
        "rr1    RR     3/3        2/2      0/0",
        "rr2    RR     3/3        2/2      0/0",
        "n1     node   2/2        2/2      2/2",
        "n2     node   2/2        2/2      2/2",
    ] {
        assert!(out.contains(row), "{row:?} missing:\n{out}");
    }
    assert!(out.contains("--route-reflectors 2"), "{out}");
    assert!(out.contains("12 pairs: 12 ✓"), "{out}");
    let status = lab.run(&["status"]);
    assert!(status.status.success(), "{status:?}");
    // A client learned the other client's block through the reflectors, next hop the
    // client itself.
    let routes = lab.run(&[
        "exec", "n1", "--", "ip", "-j", "route", "show", "proto", "80",
    ]);
    let v: serde_json::Value = serde_json::from_slice(&routes.stdout).unwrap();
    assert!(
        v.as_array()
            .unwrap()
            .iter()
            .any(|r| r["gateway"] == "198.18.0.4"),
        "{v}"
    );
    let pids = lab.pids();
    assert_eq!(pids.len(), 4);
    lab.down_and_check_gone(&pids);
}

#[test]
fn vxlan_cross_subnet_four_nodes() {
    let lab = Lab::new("x");
    let out = lab.up(&["--encap", "vxlan-crosssubnet", "--nodes", "4"]);
    assert!(out.contains("198.18.2.11/24"), "{out}");
    assert!(out.contains("56 pairs: 56 ✓"), "{out}");
    // n1 (198.18.1.10) reaches n3 in its subnet natively, n2 and n4 over VXLAN.
    let routes = lab.run(&[
        "exec", "n1", "--", "ip", "-j", "route", "show", "proto", "80",
    ]);
    let v: serde_json::Value = serde_json::from_slice(&routes.stdout).unwrap();
    let rs = v.as_array().unwrap();
    let over_vxlan = rs.iter().filter(|r| r["dev"] == "vxlan.calico").count();
    let native = rs
        .iter()
        .filter(|r| r["dev"] == "eth0" && r["gateway"] == "198.18.1.12")
        .count();
    assert_eq!((over_vxlan, native), (2, 1), "{v}");
    let pids = lab.pids();
    lab.down_and_check_gone(&pids);
}

#[test]
fn etcd_store() {
    let lab = Lab::new("e");
    let out = lab.up(&["--store", "etcd", "--nodes", "2", "--pods-per-node", "1"]);
    assert!(out.contains("etcd://198.18.0.250:2379"), "{out}");
    let listening = lab.run(&["exec", "etcd", "--", "ss", "-ltnH"]);
    assert!(
        String::from_utf8_lossy(&listening.stdout).contains("198.18.0.250:2379"),
        "etcd does not listen on the fabric: {listening:?}"
    );
    let pids = lab.pids();
    assert_eq!(pids.len(), 3, "etcd and two agents");
    lab.down_and_check_gone(&pids);
}

#[test]
fn down_cleans_a_crashed_up() {
    let lab = Lab::new("c");
    let mut child = lab
        .command(&["up", "--nodes", "3", "--store", "etcd"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Kill `up` once etcd and the three agents run, before it is done.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let started = std::fs::read_to_string(lab.dir().join("lab.json"))
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .is_some_and(|v| v["processes"].as_array().is_some_and(|p| p.len() == 4));
        assert!(
            child.try_wait().unwrap().is_none(),
            "up ended before it could be killed"
        );
        assert!(Instant::now() < deadline, "up started no processes");
        if started {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(lab.state()["phase"], "building");
    let pids = lab.pids();
    assert_eq!(pids.len(), 4);
    assert!(pids.iter().all(|p| running(*p)), "the agents outlive up");
    // A partial state file: `down` still finds everything by the namespaces' prefix.
    std::fs::write(lab.dir().join("lab.json"), "{\"name\": ").unwrap();
    lab.down_and_check_gone(&pids);
}

#[test]
fn bad_requests_fail_before_building() {
    let lab = Lab::new("b");
    for (args, says) in [
        (
            vec!["up", "--topology", "as-per-server", "--nodes", "3"],
            "the same number of nodes in every rack",
        ),
        (
            vec!["up", "--topology", "l2-planes", "--planes", "5"],
            "--planes",
        ),
        (vec!["up", "--nodes", "0"], "--nodes"),
        (
            vec!["up", "--topology", "route-reflector", "--encap", "vxlan"],
            "--encap",
        ),
        (
            vec!["up", "--store", "sqlite:///x.db"],
            "expected sqlite or etcd",
        ),
        (vec!["status"], "no lab named"),
    ] {
        let out = lab.run(&args);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
    assert!(!lab.dir().exists());
    let out = lab.run(&["down"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("nothing to remove"));
}

#[test]
fn route_reflector_failover() {
    let lab = Lab::new("f");
    let out = lab.up(&["--topology", "route-reflector", "--nodes", "5"]);
    assert!(out.contains("30 pairs: 30 ✓"), "{out}");
    let rr1 = lab.agent_pid("rr1");

    // Kill one of the two reflectors while two pods on different nodes ping.
    let (ping, log) = lab.start_ping("n1-1", "n3-2");
    std::thread::sleep(Duration::from_millis(500));
    let out = lab.ok(&["fail", "rr1"]);
    assert!(
        out.contains("failed rr1 (node: fabric link rr1 down, agent pid"),
        "{out}"
    );
    assert!(out.contains("BGP converged"), "{out}");
    assert!(
        out.contains("every remaining pod pair reachable: 30 of 30"),
        "{out}"
    );
    assert!(out.contains("30 pairs: 30 ✓, 0 ✗"), "{out}");
    // Every client keeps its session with rr2 and has lost the one with rr1.
    for n in ["n1", "n2", "n3"] {
        let row = format!("{n}     node   live            1/2           rr1 ");
        assert!(out.contains(&row), "{row:?} missing:\n{out}");
    }
    assert!(out.contains("rr2    RR     live            3/4"), "{out}");
    assert!(out.contains("probe n1-1 -> n2-1"), "{out}");
    assert!(!running(rr1), "rr1's agent {rr1} still runs");
    let state = lab.state();
    assert_eq!(state["failures"][0]["node"], "rr1");
    assert_eq!(state["failures"][0]["killedPid"], rr1);
    let (sent, received) = stop_ping(ping, &log);
    assert!(sent > 20, "the ping ran only {sent} times");
    assert!(
        sent - received <= 5,
        "{} of {sent} pings lost while rr1 failed",
        sent - received
    );
    assert!(lab.pings("n1-1", "n3-2"));

    let svg = lab.ok(&["graph"]);
    assert!(svg.starts_with("<svg"), "{svg}");
    assert!(
        svg.contains("3/7 sessions Established, failed: rr1"),
        "{svg}"
    );
    let status = lab.ok(&["status"]);
    assert!(status.contains("failed by `lab fail`: rr1"), "{status}");

    lab.refused(&["fail", "rr1"], "failed already");
    let out = lab.ok(&["heal"]);
    assert!(
        out.contains("rr1: fabric link rr1 up, agent started again"),
        "{out}"
    );
    assert!(
        out.contains("every session Established and every route as planned"),
        "{out}"
    );
    assert!(out.contains("every pod pair reachable: 30 of 30"), "{out}");
    assert!(out.contains("planner check: ok"), "{out}");
    let again = lab.agent_pid("rr1");
    assert!(
        again != rr1 && running(again),
        "rr1's agent was not started again"
    );
    assert!(lab.state()["failures"].as_array().unwrap().is_empty());
    let status = lab.ok(&["status"]);
    assert_eq!(status.matches("running (pid").count(), 5, "{status}");

    let file = lab.root.path().join("lab.svg");
    lab.ok(&["graph", "-o", file.to_str().unwrap()]);
    let svg = std::fs::read_to_string(&file).unwrap();
    assert!(
        svg.starts_with("<svg") && svg.ends_with("</svg>\n"),
        "{svg}"
    );
    assert!(svg.contains("7/7 sessions Established"), "{svg}");

    let mut pids = lab.pids();
    pids.push(rr1);
    lab.down_and_check_gone(&pids);
}

#[test]
fn mesh_link_failure() {
    let lab = Lab::new("l");
    let out = lab.up(&["--nodes", "3", "--pods-per-node", "1"]);
    assert!(out.contains("6 pairs: 6 ✓"), "{out}");
    lab.refused(&["fail", "plane:1"], "no L2 planes");
    lab.refused(&["fail", "n9"], "no node or pod \"n9\"");
    let n2 = lab.agent_pid("n2");

    let out = lab.ok(&["fail", "link:n2"]);
    assert!(
        out.contains("failed n2 (link: fabric link n2 down, agent running)"),
        "{out}"
    );
    assert!(
        out.contains("every remaining pod pair reachable: 2 of 2"),
        "{out}"
    );
    assert!(
        out.contains("pods on failed nodes: n2-1, 4 pair(s) · unreachable as expected"),
        "{out}"
    );
    assert!(
        out.contains("n1     node   live            1/2           n2 "),
        "{out}"
    );
    assert!(running(n2), "a link failure leaves the agent running");
    assert!(!lab.pings("n1-1", "n2-1"));
    assert!(lab.pings("n1-1", "n3-1"));
    lab.refused(&["fail", "n2"], "failed already");

    let out = lab.ok(&["heal"]);
    assert!(out.contains("n2: fabric link n2 up\n"), "{out}");
    assert!(out.contains("every pod pair reachable: 6 of 6"), "{out}");
    assert_eq!(
        lab.agent_pid("n2"),
        n2,
        "heal keeps the agent of a link failure"
    );
    assert!(lab.pings("n1-1", "n2-1"));
    assert!(lab.ok(&["heal"]).contains("nothing to heal"));
    let svg = lab.ok(&["graph"]);
    assert!(
        svg.starts_with("<svg") && svg.contains("3/3 sessions Established"),
        "{svg}"
    );

    let pids = lab.pids();
    lab.down_and_check_gone(&pids);
}

#[test]
fn l2_planes_cut_a_plane() {
    let lab = Lab::new("p");
    let out = lab.up(&[
        "--topology",
        "l2-planes",
        "--planes",
        "2",
        "--nodes",
        "3",
        "--pods-per-node",
        "1",
    ]);
    assert!(out.contains("6 pairs: 6 ✓"), "{out}");
    assert!(out.contains("--planes 2`"), "{out}");
    // A reflector per plane with the plane's 3 hosts; each host one session per plane.
    assert!(out.contains("rr2    RR     3/3        3/3"), "{out}");
    assert!(out.contains("n3     node   2/2        3/3"), "{out}");
    lab.refused(&["fail", "plane:3"], "has planes 1..=2");
    // Every block is learned once per plane: one ECMP route, a next hop per plane.
    let routes = lab.run(&["exec", "n1", "--", "ip", "route", "show", "proto", "80"]);
    let routes = String::from_utf8_lossy(&routes.stdout).to_string();
    assert!(
        routes.contains("nexthop via 198.18.1.2 dev p1")
            && routes.contains("nexthop via 198.18.2.2 dev p2"),
        "{routes}"
    );

    let (ping, log) = lab.start_ping("n1-1", "n3-1");
    std::thread::sleep(Duration::from_millis(500));
    let out = lab.ok(&["fail", "plane:1"]);
    assert!(
        out.contains("failed plane:1 (plane: the 4 ports of bridge br1 down"),
        "{out}"
    );
    assert!(out.contains("BGP converged"), "{out}");
    assert!(
        out.contains("every remaining pod pair reachable: 6 of 6"),
        "{out}"
    );
    for n in ["n1", "n2", "n3"] {
        let row = format!("{n}     node   live             1/2           rr1 ");
        assert!(out.contains(&row), "{row:?} missing:\n{out}");
    }
    assert!(out.contains("rr2    RR     live             3/3"), "{out}");
    let (sent, received) = stop_ping(ping, &log);
    assert!(sent > 20, "the ping ran only {sent} times");
    assert!(
        sent - received <= 5,
        "{} of {sent} pings lost while plane 1 was cut",
        sent - received
    );
    assert_eq!(lab.state()["failures"][0]["node"], "plane:1");
    lab.refused(&["fail", "plane:1"], "failed already");

    let out = lab.ok(&["heal"]);
    assert!(
        out.contains("plane:1: the 4 ports of bridge br1 up"),
        "{out}"
    );
    assert!(out.contains("every pod pair reachable: 6 of 6"), "{out}");
    assert!(out.contains("planner check: ok"), "{out}");
    assert!(lab.state()["failures"].as_array().unwrap().is_empty());

    let pids = lab.pids();
    lab.down_and_check_gone(&pids);
}

/// A medium lab builds, converges and goes down within bounds: route reflectors with
/// 14 nodes (2 reflectors, 12 clients, a pod each), pinged as a sample, with the
/// progress plain lines (stderr is no terminal here) and the summary's timings.
#[test]
fn route_reflector_medium_lab_in_bounded_time() {
    let lab = Lab::new("med");
    let start = Instant::now();
    let out = lab.run(&[
        "up",
        "--topology",
        "route-reflector",
        "--nodes",
        "14",
        "--pods-per-node",
        "1",
        "--matrix",
        "sample:4",
    ]);
    let up_secs = start.elapsed().as_secs_f64();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        out.status.success(),
        "lab up failed ({}):\n{stdout}\n{stderr}\n{}",
        out.status,
        lab.logs()
    );
    assert!(
        stdout.contains("planner check: ok, every device matches the plan"),
        "{stdout}"
    );
    // 12 pods, each pinging 4 others spread over the lab: 48 pairs, all answered.
    assert!(
        stdout.contains("sampled (--matrix sample:4): one ping from each pod to 4 others, of 132 pairs, 48 pairs: 48 ✓, 0 ✗"),
        "{stdout}"
    );
    // Progress without a terminal: each counted phase's last count and its time.
    for line in [
        "  14/14 nodes in ",
        "  14/14 agents answering in ",
        "  12/12 pods in ",
    ] {
        assert!(stderr.contains(line), "{line:?} missing:\n{stderr}");
    }
    assert!(
        !stderr.contains('\r'),
        "no bar redraws off a terminal:\n{stderr}"
    );
    // The summary's timings, in order, the convergence within the bound.
    let timings = stdout
        .lines()
        .find(|l| l.starts_with("Timings ("))
        .unwrap_or_else(|| panic!("no Timings line:\n{stdout}"));
    let figures = timings.split("): ").nth(1).unwrap_or_default();
    let value = |what: &str| -> f64 {
        format!(" {figures}")
            .split(&format!(" {what} "))
            .nth(1)
            .and_then(|r| r.split(',').next())
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {what} in {timings}"))
    };
    let (built, converged) = (value("built"), value("converged"));
    assert!(0.0 < built && built <= converged, "{timings}");
    assert!(converged < 60.0, "converged after {converged} s: {timings}");
    assert!(up_secs < 90.0, "lab up took {up_secs:.1} s");
    eprintln!("medium lab: {timings}; up {up_secs:.1} s");

    let pids = lab.pids();
    assert_eq!(pids.len(), 14);
    let t = Instant::now();
    lab.down_and_check_gone(&pids);
    assert!(
        t.elapsed() < Duration::from_secs(30),
        "down took {:?}",
        t.elapsed()
    );
}

/// `BGP converged X s` from a `fail` report, in seconds.
fn converged_secs(out: &str) -> f64 {
    out.lines()
        .find_map(|l| l.strip_prefix("BGP converged "))
        .and_then(|l| l.split(" s ").next())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| panic!("no `BGP converged` line:\n{out}"))
}

/// `tabbyctl node status` of lab node `node`, through its control socket.
fn node_status(lab: &Lab, node: &str) -> String {
    let socket = lab.dir().join(format!("{node}.ctl"));
    let out = std::process::Command::new(CTL)
        .args(["node", "status", "--socket"])
        .arg(&socket)
        .env("TABBY_CONFIG", "/nonexistent/tabbyctl.yaml")
        .output()
        .unwrap();
    assert!(out.status.success(), "node status {node}: {out:?}");
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// `lab up --bfd`: every session protected by BFD (300 ms x 3); a dead reflector
/// is noticed in the detection time (0.9 s), not the hold time (9 s).
#[test]
fn route_reflector_failover_with_bfd() {
    let lab = Lab::new("bfd");
    let out = lab.up(&["--topology", "route-reflector", "--nodes", "4", "--bfd"]);
    assert!(out.contains("topology route-reflector with BFD"), "{out}");
    let status = node_status(&lab, "n1");
    for rr in ["198.18.0.1", "198.18.0.2"] {
        let row = format!("| {rr}   | Up        | 300ms/300ms x3 | 0     |");
        assert!(status.contains(&row), "{row:?} missing:\n{status}");
    }
    let (ping, log) = lab.start_ping("n1-1", "n2-1");
    std::thread::sleep(Duration::from_millis(500));
    let out = lab.ok(&["fail", "rr1"]);
    let secs = converged_secs(&out);
    eprintln!("lab fail rr1 with BFD: BGP converged in {secs} s");
    // Detection 0.9 s plus the report's polling; without BFD it is 9 s and more.
    assert!(secs < 3.0, "{out}");
    assert!(
        out.contains("every remaining pod pair reachable: 12 of 12"),
        "{out}"
    );
    let (sent, received) = stop_ping(ping, &log);
    assert!(sent - received <= 5, "{} of {sent} lost", sent - received);
    let status = node_status(&lab, "n1");
    assert!(
        status.contains("| 198.18.0.1   | Down      | 300ms/300ms x3 | 1     |"),
        "{status}"
    );
    assert!(
        status.contains("| 198.18.0.2   | Up        | 300ms/300ms x3 | 0     |"),
        "{status}"
    );
    let out = lab.ok(&["heal"]);
    assert!(
        out.contains("every session Established and every route as planned"),
        "{out}"
    );
    let status = node_status(&lab, "n1");
    assert!(
        status.contains("| 198.18.0.1   | Up        | 300ms/300ms x3 | 1     |"),
        "{status}"
    );
    let pids = lab.pids();
    lab.down_and_check_gone(&pids);
}
