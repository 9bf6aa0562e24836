//! `tabbyctl node diags` on a host made of a network namespace (prefix `dg<pid>`):
//! a real `tabby-node` with a peer that does not answer, a SQLite store, a log
//! file. The archive must hold every member with the host's state; a second run
//! with no agent and an unreachable etcd must still write the archive, recording
//! those collectors as failed. Needs root.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use tabby_testnet::{End, TestNet, wait_until};

const CTL: &str = env!("CARGO_BIN_EXE_tabbyctl");

/// tabby-node next to tabbyctl, built when this package's tests run alone.
fn tabby_node() -> PathBuf {
    let bin = Path::new(CTL).parent().unwrap().join("tabby-node");
    if !bin.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let ok = Command::new(cargo)
            .args(["build", "-p", "tabby-node", "--bin", "tabby-node"])
            .status()
            .unwrap()
            .success();
        assert!(ok, "cannot build tabby-node (cargo build -p tabby-node)");
    }
    assert!(bin.exists(), "{} is missing", bin.display());
    bin
}

fn ctl_in(ns: &str, args: &[&str]) -> Output {
    Command::new("ip")
        .args(["netns", "exec", ns, CTL])
        .args(args)
        .env_remove("TABBY_STORE")
        .env_remove("TABBY_NODE_SOCKET")
        .env("TABBY_CONFIG", "/nonexistent/tabbyctl.yaml")
        .output()
        .unwrap()
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "exit {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Unpacks `archive` into `into`; returns the archive's member names (without the
/// top folder) and that folder.
fn unpack(archive: &Path, into: &Path) -> (Vec<String>, PathBuf) {
    let list = Command::new("tar")
        .arg("-tzf")
        .arg(archive)
        .output()
        .unwrap();
    let listing = ok(&list);
    let tops: Vec<&str> = listing
        .lines()
        .filter_map(|l| l.split('/').next())
        .collect();
    let top = tops[0].to_string();
    assert!(tops.iter().all(|t| *t == top), "one top folder: {listing}");
    assert!(top.starts_with("tabby-diags-"), "{top}");
    let mut members: Vec<String> = listing
        .lines()
        .filter_map(|l| l.split_once('/').map(|(_, m)| m.to_string()))
        .filter(|m| !m.is_empty())
        .collect();
    members.sort();
    ok(&Command::new("tar")
        .arg("-xzf")
        .arg(archive)
        .arg("-C")
        .arg(into)
        .output()
        .unwrap());
    (members, into.join(top))
}

fn read(dir: &Path, member: &str) -> String {
    std::fs::read_to_string(dir.join(member)).unwrap_or_else(|e| panic!("{member}: {e}"))
}

const MEMBERS: [&str; 14] = [
    "agent-logs.txt",
    "datastore.txt",
    "ip-4-addr.txt",
    "ip-4-route.txt",
    "ip-4-rule.txt",
    "ip-6-addr.txt",
    "ip-6-route.txt",
    "ip-6-rule.txt",
    "ip-link.txt",
    "nft-ruleset.txt",
    "node-status.json",
    "node-status.txt",
    "summary.txt",
    "versions.txt",
];

#[test]
fn diags_archive_holds_the_hosts_state() {
    tabby_testnet::require_root();
    let node_bin = tabby_node();
    let net = TestNet::with_prefix(&format!("dg{}", std::process::id()));
    let host = net.netns("h1").unwrap();
    let ns = host.name().to_string();
    let gw = net.netns("gw").unwrap();
    net.veth(
        End::new(&host, "eth0", &["198.18.0.1/24", "2001:db8::1/64"]),
        End::new(&gw, "eth0", &["198.18.0.254/24", "2001:db8::fe/64"]),
    )
    .unwrap();
    host.ip(&["route", "add", "default", "via", "198.18.0.254"])
        .unwrap();

    let dir = net.temp_dir("diags").unwrap();
    let store = format!("sqlite://{}", dir.join("store.db").display());
    let socket = dir.join("node.ctl");
    let log = dir.join("tabby-node.log");

    // A second node, so that the agent has a mesh peer to report (it never answers).
    let nodes = dir.join("nodes.yaml");
    std::fs::write(
        &nodes,
        "apiVersion: projectcalico.org/v3\nkind: Node\nmetadata: {name: dg-peer}\n\
         spec: {bgp: {ipv4Address: 198.18.0.2/24}}\n",
    )
    .unwrap();
    ok(&ctl_in(
        &ns,
        &["--store", &store, "apply", "-f", nodes.to_str().unwrap()],
    ));

    let node_argv: Vec<String> = vec![
        "sh".into(),
        "-c".into(),
        format!(
            "exec {} --node-name dg-h1 --ip 198.18.0.1/24 --store {store} \
             --control-socket {} --state-dir {} --default-ipv4-pool-cidr 100.64.0.0/16 \
             2>>{}",
            node_bin.display(),
            socket.display(),
            dir.display(),
            log.display()
        ),
    ];
    let argv: Vec<&str> = node_argv.iter().map(String::as_str).collect();
    net.spawn(&host, &argv).unwrap();
    // Up when the agent answers and has written its nftables table.
    let converged = wait_until(Duration::from_secs(30), || {
        let s = ctl_in(
            &ns,
            &["node", "status", "--socket", socket.to_str().unwrap()],
        );
        s.status.success()
            && host
                .try_output(&["nft", "list", "table", "ip", "tabby"])
                .is_ok_and(|o| o.status.success())
    });
    assert!(
        converged,
        "the agent did not come up: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );

    let archive = dir.join("diags.tar.gz");
    let out = ctl_in(
        &ns,
        &[
            "--store",
            &store,
            "node",
            "diags",
            "-o",
            archive.to_str().unwrap(),
            "--socket",
            socket.to_str().unwrap(),
            "--log-file",
            log.to_str().unwrap(),
        ],
    );
    let stdout = ok(&out);
    assert!(stdout.contains("diags.tar.gz"), "{stdout}");

    let unpacked = net.temp_dir("unpacked").unwrap();
    let (members, top) = unpack(&archive, &unpacked);
    assert_eq!(members, MEMBERS, "archive members");

    let summary = read(&top, "summary.txt");
    for m in MEMBERS.iter().filter(|m| **m != "summary.txt") {
        assert!(
            summary.lines().any(|l| l.starts_with(m)),
            "{m} not in summary:\n{summary}"
        );
    }
    // Every collector works on this host, except perhaps the journal: there is no
    // systemd here, and the log file stands in for it.
    let failed: Vec<&str> = summary.lines().filter(|l| l.contains("FAILED")).collect();
    assert!(failed.is_empty(), "{summary}");

    assert!(read(&top, "ip-link.txt").contains("eth0"));
    assert!(
        read(&top, "ip-link.txt").contains("veth"),
        "ip -d shows the kind"
    );
    assert!(read(&top, "ip-4-addr.txt").contains("198.18.0.1/24"));
    assert!(read(&top, "ip-6-addr.txt").contains("2001:db8::1/64"));
    let routes = read(&top, "ip-4-route.txt");
    assert!(routes.contains("default via 198.18.0.254"), "{routes}");
    assert!(read(&top, "ip-6-route.txt").contains("2001:db8::/64"));
    assert!(read(&top, "ip-4-rule.txt").contains("lookup main"));
    assert!(read(&top, "ip-6-rule.txt").contains("lookup main"));
    let nft = read(&top, "nft-ruleset.txt");
    assert!(nft.contains("table ip tabby"), "{nft}");

    let status = read(&top, "node-status.txt");
    assert!(status.contains("Tabby process is running"), "{status}");
    assert!(status.contains("198.18.0.2"), "the mesh peer: {status}");
    let json: serde_json::Value = serde_json::from_str(&read(&top, "node-status.json")).unwrap();
    assert_eq!(json["node"], "dg-h1");

    let store_txt = read(&top, "datastore.txt");
    assert!(store_txt.contains(&store), "{store_txt}");
    assert!(store_txt.contains("list nodes: 2 in"), "{store_txt}");
    assert!(store_txt.contains("dg-h1") && store_txt.contains("dg-peer"));
    assert!(store_txt.contains("list ippools: 1 in"), "{store_txt}");

    let logs = read(&top, "agent-logs.txt");
    assert!(logs.contains(&format!("=== {}", log.display())), "{logs}");
    assert!(logs.contains("dg-h1"), "the agent's own log lines: {logs}");

    let versions = read(&top, "versions.txt");
    for v in [
        "tabbyctl v",
        "kernel: Linux",
        "nft: nftables",
        "ip: ip utility",
    ] {
        assert!(versions.contains(v), "{v}: {versions}");
    }
}

#[test]
fn diags_records_failed_collectors_and_still_writes_the_archive() {
    tabby_testnet::require_root();
    let net = TestNet::with_prefix(&format!("dg{}f", std::process::id()));
    let host = net.netns("h1").unwrap();
    let ns = host.name().to_string();
    let dir = net.temp_dir("diags").unwrap();
    let archive = dir.join("broken.tar.gz");
    // No agent, an etcd nobody answers for (no route from this host), a log file
    // that is not there.
    let out = ctl_in(
        &ns,
        &[
            "--store",
            "etcd://198.18.0.99:2379",
            "node",
            "diags",
            "-o",
            archive.to_str().unwrap(),
            "--socket",
            dir.join("none.ctl").to_str().unwrap(),
            "--log-file",
            dir.join("missing.log").to_str().unwrap(),
            "--timeout-secs",
            "3",
        ],
    );
    ok(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("collectors failed"), "{stderr}");

    let unpacked = net.temp_dir("unpacked").unwrap();
    let (members, top) = unpack(&archive, &unpacked);
    assert_eq!(members, MEMBERS, "archive members");
    let summary = read(&top, "summary.txt");
    for m in [
        "agent-logs.txt",
        "node-status.txt",
        "node-status.json",
        "datastore.txt",
    ] {
        assert!(
            summary
                .lines()
                .any(|l| l.starts_with(m) && l.contains("FAILED")),
            "{m} should have failed:\n{summary}"
        );
    }
    assert!(
        summary
            .lines()
            .any(|l| l.starts_with("ip-4-route.txt") && l.contains(" ok ")),
        "{summary}"
    );
    let store_txt = read(&top, "datastore.txt");
    assert!(
        store_txt.starts_with("# collector failed") && store_txt.contains("198.18.0.99:2379"),
        "{store_txt}"
    );
    assert!(read(&top, "agent-logs.txt").contains("missing.log"));
    assert!(read(&top, "node-status.txt").contains("none.ctl"));
}
