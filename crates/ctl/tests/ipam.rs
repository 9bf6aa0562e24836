//! End-to-end tests of `tabbyctl ipam`: addresses are allocated through `tabby_ipam`
//! on the same SQLite store the binary opens, then `show`, `check`, `release` and
//! `configure` run as a user would run them.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use std::io::Write;

use tabby_ipam::{AutoAssignArgs, Ipam, TunnelKind};

struct Ctl {
    dir: tempfile::TempDir,
    store: String,
}

impl Ctl {
    fn new() -> Ctl {
        let dir = tempfile::tempdir().unwrap();
        let store = format!("sqlite://{}", dir.path().join("store.db").display());
        Ctl { dir, store }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn run(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let mut child = Command::new(env!("CARGO_BIN_EXE_tabbyctl"))
            .args(args)
            .env("TABBY_STORE", &self.store)
            .env("TABBY_CONFIG", "/nonexistent/tabbyctl.yaml")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        {
            let mut pipe = child.stdin.take().unwrap();
            if let Some(text) = stdin {
                pipe.write_all(text.as_bytes()).unwrap();
            }
        }
        child.wait_with_output().unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        self.ok_stdin(args, None)
    }

    fn ok_stdin(&self, args: &[&str], stdin: Option<&str>) -> String {
        let out = self.run(args, stdin);
        assert!(
            out.status.success(),
            "tabbyctl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Requires exit code 1; returns stderr.
    fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args, None);
        assert_eq!(
            out.status.code(),
            Some(1),
            "tabbyctl {args:?} should fail; stdout: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8(out.stderr).unwrap()
    }

    /// The IPAM client the binary's commands see, over the same store.
    async fn ipam(&self) -> Ipam {
        let url = tabby_store::StoreUrl::parse(&self.store).unwrap();
        let store = tabby_store::open(&url).await.unwrap();
        tabby_client::ipam::ipam_for(&tabby_client::Client::new(store))
    }
}

const SETUP: &str = "\
apiVersion: projectcalico.org/v3
kind: IPPool
metadata: {name: pods}
spec: {cidr: 10.20.0.0/24, blockSize: 26}
---
apiVersion: projectcalico.org/v3
kind: Node
metadata: {name: node1}
spec: {}
---
apiVersion: projectcalico.org/v3
kind: Node
metadata: {name: node2}
spec: {}
";

fn wep(ip: IpAddr) -> String {
    format!(
        "apiVersion: projectcalico.org/v3
kind: WorkloadEndpoint
metadata: {{name: node1-k8s-web-eth0, namespace: default}}
spec:
  orchestrator: k8s
  node: node1
  pod: web
  endpoint: eth0
  containerID: live
  interfaceName: cali0123456789a
  ipNetworks: [{ip}/32]
"
    )
}

async fn assign(ipam: &Ipam, node: &str, handle: &str, pod: &str) -> Option<IpAddr> {
    let mut args = AutoAssignArgs::new(node, 1, 0).with_handle(handle);
    args.attrs = BTreeMap::from([
        ("node".to_string(), node.to_string()),
        ("pod".to_string(), pod.to_string()),
        ("namespace".to_string(), "default".to_string()),
    ]);
    match ipam.auto_assign(&args).await {
        Ok(r) => r.v4.and_then(|a| a.ips.first().map(|n| n.addr())),
        Err(_) => None,
    }
}

/// The cells of the table row whose first two cells are `grouping` and `cidr`.
fn row(table: &str, grouping: &str, cidr: &str) -> Vec<String> {
    table
        .lines()
        .map(|l| {
            l.split('|')
                .map(|c| c.trim().to_string())
                .filter(|c| !c.is_empty())
                .collect::<Vec<_>>()
        })
        .find(|cells| cells.len() >= 2 && cells[0] == grouping && cells[1] == cidr)
        .unwrap_or_else(|| panic!("no {grouping} {cidr} row in\n{table}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn show_check_release_round_trip() {
    let ctl = Ctl::new();
    ctl.ok_stdin(&["apply", "-f", "-"], Some(SETUP));
    let ipam = ctl.ipam().await;
    let live = assign(&ipam, "node1", "k8s-pod-network.live", "web")
        .await
        .unwrap();
    let leak = assign(&ipam, "node1", "k8s-pod-network.gone", "deleted-pod")
        .await
        .unwrap();
    let tunnel = ipam
        .ensure_tunnel_address("node1", TunnelKind::Vxlan, &[])
        .await
        .unwrap();
    ctl.ok_stdin(&["apply", "-f", "-"], Some(&wep(live)));

    // Utilisation: the pool, then (with --show-blocks) node1's block.
    let show = ctl.ok(&["ipam", "show"]);
    assert!(show.starts_with("+----------+"), "{show}");
    assert!(
        show.contains("| GROUPING |     CIDR     | IPS TOTAL | IPS IN USE | IPS FREE  |"),
        "{show}"
    );
    assert_eq!(
        row(&show, "IP Pool", "10.20.0.0/24"),
        ["IP Pool", "10.20.0.0/24", "256", "3 (1%)", "253 (99%)"]
    );
    assert!(!show.contains("Block"), "{show}");
    let blocks = ctl.ok(&["ipam", "show", "--show-blocks"]);
    let block = tabby_ipam::ipmath::block_cidr_for(live, 26).to_string();
    assert_eq!(
        row(&blocks, "Block", &block),
        ["Block", block.as_str(), "64", "3 (5%)", "61 (95%)"]
    );

    // One address: Calico's wording.
    let one = ctl.ok(&["ipam", "show", "--ip", &live.to_string()]);
    assert_eq!(
        one,
        format!(
            "IP {live} is in use\nHandle ID: k8s-pod-network.live\nActive Owner Attributes:\n  namespace: default\n  node: node1\n  pod: web\n"
        )
    );
    assert_eq!(
        ctl.ok(&["ipam", "show", "--ip", "10.20.0.250"]),
        "10.20.0.250 is not assigned\n"
    );
    let err = ctl.fails(&["ipam", "show", "--ip", "10.99.0.1"]);
    assert!(
        err.contains("--ip 10.99.0.1") && err.contains("not in any configured IP pool"),
        "{err}"
    );
    let err = ctl.fails(&["ipam", "show", "--ip", "banana"]);
    assert!(err.contains("--ip") && err.contains("banana"), "{err}");

    // The planted leak: an allocation whose pod has no endpoint. The tunnel address
    // belongs to node1, which exists; the live pod's address has its endpoint.
    let report_path = ctl.path("report.json");
    let check = ctl.ok(&[
        "ipam",
        "check",
        "--show-problem-ips",
        "-o",
        report_path.to_str().unwrap(),
    ]);
    assert!(check.starts_with("Checking IPAM for inconsistencies..."));
    assert!(
        check.contains(&format!(
            "  {leak} leaked; attrs Main:k8s-pod-network.gone Extra:namespace=default,node=node1,pod=deleted-pod"
        )),
        "{check}"
    );
    assert!(
        check.contains("Found 1 IPs that are allocated in IPAM but not actually in use."),
        "{check}"
    );
    assert!(!check.contains(&format!("{live} leaked")), "{check}");
    assert!(!check.contains(&format!("{tunnel} leaked")), "{check}");
    assert!(
        check
            .trim_end()
            .ends_with("Check complete; found 1 problems."),
        "{check}"
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report_path).unwrap()).unwrap();
    let entry = |ip: IpAddr| report["allocations"][ip.to_string()][0].clone();
    assert_eq!(entry(leak)["inUse"], false);
    assert_eq!(entry(leak)["handle"], "k8s-pod-network.gone");
    assert_eq!(entry(live)["inUse"], true);
    assert_eq!(
        entry(live)["owners"],
        serde_json::json!(["Workload(default/node1-k8s-web-eth0)"])
    );
    assert_eq!(entry(tunnel)["type"], "vxlanTunnelAddress");
    assert_eq!(entry(tunnel)["owners"], serde_json::json!(["Node(node1)"]));

    let out = ctl.ok(&["ipam", "release", "--ip", &leak.to_string()]);
    assert_eq!(out, format!("Successfully released IP address {leak}\n"));
    let check = ctl.ok(&["ipam", "check"]);
    assert!(
        check
            .trim_end()
            .ends_with("Check complete; found 0 problems."),
        "{check}"
    );
    assert!(check.contains("Found 0 handles with no matching IPs (and 2 handles with matches)."));
    assert_eq!(
        row(&ctl.ok(&["ipam", "show"]), "IP Pool", "10.20.0.0/24")[3],
        "2 (1%)"
    );

    // A tunnel address lives as long as its node.
    ctl.ok(&["delete", "node", "node1"]);
    let check = ctl.ok(&["ipam", "check", "--show-problem-ips"]);
    assert!(
        check.contains(&format!(
            "  {tunnel} leaked; attrs Main:vxlan-tunnel-addr-node1"
        )),
        "{check}"
    );
    assert!(
        check
            .trim_end()
            .ends_with("Check complete; found 1 problems."),
        "{check}"
    );

    // Releasing again: not assigned, exit 1. A live endpoint's address is released
    // anyway, as calicoctl does, with a warning naming the endpoint.
    let err = ctl.fails(&["ipam", "release", "--ip", &leak.to_string()]);
    assert!(
        err.contains(&format!("IP address {leak} is not assigned")),
        "{err}"
    );
    let out = ctl.run(&["ipam", "release", "--ip", &live.to_string()], None);
    assert!(out.status.success());
    let warning = String::from_utf8_lossy(&out.stderr);
    assert!(
        warning.contains("Workload(default/node1-k8s-web-eth0)"),
        "{warning}"
    );
    let check = ctl.ok(&["ipam", "check", "--show-problem-ips"]);
    assert!(
        check.contains("and in active IPAM pool but has no IPAM allocation."),
        "the endpoint's address is now unallocated: {check}"
    );
    let err = ctl.fails(&["ipam", "release", "--ip", "10.99.0.1"]);
    assert!(err.contains("--ip 10.99.0.1"), "{err}");
    let err = ctl.fails(&["ipam", "release"]);
    assert!(err.contains("--ip"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configure_changes_what_the_allocator_does() {
    let ctl = Ctl::new();
    // One block only: node1 claims it, node2 can get an address only by borrowing.
    ctl.ok_stdin(
        &["apply", "-f", "-"],
        Some(&SETUP.replace("cidr: 10.20.0.0/24", "cidr: 10.30.0.0/26")),
    );
    let ipam = ctl.ipam().await;
    assert!(assign(&ipam, "node1", "h1", "a").await.is_some());
    assert!(
        assign(&ipam, "node2", "h2", "b").await.is_some(),
        "borrowing is allowed by default"
    );

    let out = ctl.ok(&["ipam", "configure", "--strictaffinity=true"]);
    assert_eq!(out, "Successfully set StrictAffinity to: true\n");
    assert_eq!(
        assign(&ipam, "node2", "h3", "c").await,
        None,
        "strict affinity forbids borrowing"
    );
    let cfg: serde_json::Value =
        serde_saphyr::from_str(&ctl.ok(&["get", "ipamconfig", "default", "-o", "yaml"])).unwrap();
    assert_eq!(cfg["spec"]["strictAffinity"], true);
    let shown = ctl.ok(&["ipam", "show", "--show-configuration"]);
    assert!(
        shown.contains("| StrictAffinity               | true    |"),
        "{shown}"
    );

    // maxBlocksPerHost needs strict affinity, as in Calico.
    let out = ctl.ok(&["ipam", "configure", "--max-blocks-per-host", "3"]);
    assert_eq!(out, "Successfully set MaxBlocksPerHost to: 3\n");
    let err = ctl.fails(&["ipam", "configure", "--strictaffinity=false"]);
    assert!(
        err.contains("MaxBlocksPerHost requires StrictAffinity"),
        "{err}"
    );
    let err = ctl.fails(&["ipam", "configure", "--strictaffinity=maybe"]);
    assert!(err.contains("--strictaffinity"), "{err}");
    let err = ctl.fails(&["ipam", "configure", "--max-blocks-per-host=-2"]);
    assert!(err.contains("--max-blocks-per-host"), "{err}");
    ctl.fails(&["ipam", "configure"]);

    // The resource is the one source of truth: applying it changes the allocator too.
    ctl.ok_stdin(
        &["apply", "-f", "-"],
        Some(
            "apiVersion: projectcalico.org/v3\nkind: IPAMConfiguration\nmetadata: {name: default}\nspec: {strictAffinity: false}\n",
        ),
    );
    assert!(!ipam.ipam_config().await.unwrap().strict_affinity);
    assert!(
        assign(&ipam, "node2", "h4", "d").await.is_some(),
        "borrowing is allowed again"
    );
    assert_eq!(
        row(&ctl.ok(&["ipam", "show"]), "IP Pool", "10.30.0.0/26")[3],
        "3 (5%)"
    );
}

/// `(name, cidr, disabled)` of every pool, from `get ippools -o wide`.
fn pools(ctl: &Ctl) -> Vec<(String, String, String)> {
    ctl.ok(&["get", "ippools", "-o", "wide"])
        .lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let cells: Vec<&str> = l.split_whitespace().collect();
            (cells[0].into(), cells[1].into(), cells[5].into())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_replaces_a_pool_and_keeps_its_blocks() {
    let ctl = Ctl::new();
    ctl.ok_stdin(&["apply", "-f", "-"], Some(SETUP));
    let ipam = ctl.ipam().await;
    let a = assign(&ipam, "node1", "h1", "a").await.unwrap();
    assign(&ipam, "node1", "h2", "b").await.unwrap();
    let c = assign(&ipam, "node2", "h3", "c").await.unwrap();
    let problems = |ctl: &Ctl| -> String {
        ctl.ok(&["ipam", "check"])
            .lines()
            .last()
            .unwrap()
            .to_string()
    };
    let before = problems(&ctl);

    // Refusals name the reason and change nothing.
    let err = ctl.fails(&["ipam", "split", "3", "--name", "pods"]);
    assert!(
        err.contains("NUMBER 3: a pool splits into a power of two"),
        "{err}"
    );
    let err = ctl.fails(&["ipam", "split", "8", "--cidr", "10.20.0.0/24"]);
    assert!(
        err.contains("splitting it into 8 gives /27 pools, smaller than a block (2 blocks are in use); split it into at most 4"),
        "{err}"
    );
    let err = ctl.fails(&["ipam", "split", "2", "--cidr", "10.99.0.0/16"]);
    assert!(
        err.contains(
            "--cidr 10.99.0.0/16: no IP pool has exactly this CIDR; pools: pods (10.20.0.0/24)"
        ),
        "{err}"
    );
    let err = ctl.fails(&[
        "ipam",
        "split",
        "2",
        "--pool",
        "pods",
        "--cidr",
        "10.20.0.0/25",
    ]);
    assert!(err.contains("IP pool pods has CIDR 10.20.0.0/24"), "{err}");
    let err = ctl.fails(&["ipam", "split", "2"]);
    assert!(err.contains("--name POOL or --cidr CIDR"), "{err}");
    assert_eq!(
        pools(&ctl),
        [("pods".into(), "10.20.0.0/24".into(), "false".into())]
    );

    let out = ctl.ok(&["ipam", "split", "2", "--name", "pods"]);
    assert_eq!(
        out,
        "IP pool pods was split into 2 smaller pools; its 2 blocks stay as they are.\n\
         Created split-pods-0 with CIDR 10.20.0.0/25.\n\
         Created split-pods-1 with CIDR 10.20.0.128/25.\n"
    );
    assert_eq!(
        pools(&ctl),
        [
            ("split-pods-0".into(), "10.20.0.0/25".into(), "false".into()),
            (
                "split-pods-1".into(),
                "10.20.0.128/25".into(),
                "false".into()
            ),
        ]
    );
    let child = ctl.ok(&["get", "ippool", "split-pods-0", "-o", "json"]);
    let child: serde_json::Value = serde_json::from_str(&child).unwrap();
    assert_eq!(child["spec"]["blockSize"], 26, "settings carried over");

    // The addresses and blocks are untouched and now under the children.
    assert_eq!(problems(&ctl), before);
    let shown = ctl.ok(&["ipam", "show", "--show-blocks"]);
    let block_a = tabby_ipam::ipmath::block_cidr_for(a, 26).to_string();
    let block_c = tabby_ipam::ipmath::block_cidr_for(c, 26).to_string();
    let pool_of = |b: &str| {
        if b.parse::<ipnet::IpNet>().unwrap().addr() < "10.20.0.128".parse::<IpAddr>().unwrap() {
            "10.20.0.0/25"
        } else {
            "10.20.0.128/25"
        }
    };
    for b in [&block_a, &block_c] {
        assert_eq!(row(&shown, "Block", b)[0], "Block");
        let _ = row(&shown, "IP Pool", pool_of(b));
    }
    assert_eq!(
        ctl.ok(&["ipam", "show", "--ip", &a.to_string()])
            .lines()
            .next(),
        Some(format!("IP {a} is in use").as_str())
    );
    // Allocation goes on from the children.
    let d = assign(&ipam, "node1", "h4", "d").await.unwrap();
    assert_eq!(
        tabby_ipam::ipmath::block_cidr_for(d, 26).to_string(),
        block_a
    );

    // A child can be split again down to the block size, not below.
    ctl.ok(&["ipam", "split", "2", "--name", "split-pods-1"]);
    assert_eq!(pools(&ctl).len(), 3);
    let err = ctl.fails(&["ipam", "split", "2", "--name", "split-split-pods-1-0"]);
    assert!(err.contains("it is one block and cannot be split"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_from_report_frees_only_what_is_still_leaked() {
    let ctl = Ctl::new();
    ctl.ok_stdin(&["apply", "-f", "-"], Some(SETUP));
    let ipam = ctl.ipam().await;
    let live = assign(&ipam, "node1", "k8s-pod-network.live", "web")
        .await
        .unwrap();
    ctl.ok_stdin(&["apply", "-f", "-"], Some(&wep(live)));
    let l1 = assign(&ipam, "node1", "k8s-pod-network.l1", "gone-1")
        .await
        .unwrap();
    let l2 = assign(&ipam, "node1", "k8s-pod-network.l2", "late")
        .await
        .unwrap();
    let l3 = assign(&ipam, "node2", "k8s-pod-network.l3", "gone-3")
        .await
        .unwrap();
    // A handle that holds no address.
    ipam.store()
        .create(
            "/calico/ipam/v2/handle/orphan",
            br#"{"handleID":"orphan","block":{}}"#,
        )
        .await
        .unwrap();
    let r1 = ctl.path("r1.json");
    let check = ctl.ok(&["ipam", "check", "-o", r1.to_str().unwrap()]);
    assert!(
        check.contains("Found 3 IPs that are allocated in IPAM but not actually in use."),
        "{check}"
    );
    assert!(
        check.contains("Found 1 handles with no matching IPs"),
        "{check}"
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&r1).unwrap()).unwrap();
    assert_eq!(report["leakedHandles"][0]["ID"], "orphan");
    assert!(
        report["leakedHandles"][0]["revision"].is_string(),
        "{report}"
    );

    // Meanwhile l2's pod shows up after all, and l3 is released by hand.
    let late = wep(l2)
        .replace("node1-k8s-web-eth0", "node1-k8s-late-eth0")
        .replace("pod: web", "pod: late");
    ctl.ok_stdin(&["apply", "-f", "-"], Some(&late));
    ctl.ok(&["ipam", "release", "--ip", &l3.to_string()]);
    let r2 = ctl.path("r2.json");
    ctl.ok(&["ipam", "check", "-o", r2.to_str().unwrap()]);

    // Two reports: only what both call leaked.
    let out = ctl.ok(&[
        "ipam",
        "release",
        "--from-report",
        r1.to_str().unwrap(),
        "--from-report",
        r2.to_str().unwrap(),
    ]);
    assert_eq!(
        out,
        "Releasing 1 old IPs...\nReleased 1 IPs successfully\nDeleting 1 handles...\nReleased 1 handles; 0 skipped; 0 errors.\n"
    );
    assert_eq!(
        ctl.ok(&["ipam", "show", "--ip", &l1.to_string()]),
        format!("{l1} is not assigned\n")
    );

    // The old report alone: everything in it has been dealt with or is in use again.
    let out = ctl.ok(&["ipam", "release", "--from-report", r1.to_str().unwrap()]);
    assert_eq!(
        out,
        "Releasing 3 old IPs...\nReleased 0 IPs successfully\n\
         2 addresses marked as leaked in the report had already been cleaned up.\n\
         1 addresses marked as leaked are in use again or were reassigned since the report; left alone.\n\
         Deleting 1 handles...\nReleased 0 handles; 1 skipped; 0 errors.\n"
    );
    assert!(
        ctl.ok(&["ipam", "show", "--ip", &l2.to_string()])
            .starts_with(&format!("IP {l2} is in use")),
        "the late pod keeps its address"
    );
    let check = ctl.ok(&["ipam", "check"]);
    assert!(
        check
            .trim_end()
            .ends_with("Check complete; found 0 problems."),
        "{check}"
    );

    // A report from another version needs --force; a file that is no report is named.
    let old = std::fs::read_to_string(&r1).unwrap().replacen(
        &format!("\"v{}\"", env!("CARGO_PKG_VERSION")),
        "\"v0.0.1\"",
        1,
    );
    let old_path = ctl.path("old.json");
    std::fs::write(&old_path, old).unwrap();
    let err = ctl.fails(&[
        "ipam",
        "release",
        "--from-report",
        old_path.to_str().unwrap(),
    ]);
    assert!(err.contains("written by tabbyctl v0.0.1"), "{err}");
    let out = ctl.ok(&[
        "ipam",
        "release",
        "--from-report",
        old_path.to_str().unwrap(),
        "--force",
    ]);
    assert!(out.starts_with("WARNING:"), "{out}");
    std::fs::write(ctl.path("junk.json"), "{}").unwrap();
    let err = ctl.fails(&[
        "ipam",
        "release",
        "--from-report",
        ctl.path("junk.json").to_str().unwrap(),
    ]);
    assert!(
        err.contains("junk.json: not an IPAM report") && err.contains("missing field"),
        "{err}"
    );
}
