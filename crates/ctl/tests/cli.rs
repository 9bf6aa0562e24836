//! End-to-end tests of the `tabbyctl` binary on a temporary embedded store: what a
//! newcomer does from the README, and the ways bad input must fail.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

struct Ctl {
    _dir: tempfile::TempDir,
    store: String,
    root: PathBuf,
}

impl Ctl {
    fn new() -> Ctl {
        let dir = tempfile::tempdir().unwrap();
        let store = format!("sqlite://{}", dir.path().join("store.db").display());
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        Ctl {
            _dir: dir,
            store,
            root,
        }
    }

    fn run_with_stdin(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let mut child = Command::new(env!("CARGO_BIN_EXE_tabbyctl"))
            .args(args)
            .env("TABBY_STORE", &self.store)
            .env("TABBY_CONFIG", "/nonexistent/tabbyctl.yaml")
            .current_dir(&self.root)
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

    fn run(&self, args: &[&str]) -> Output {
        self.run_with_stdin(args, None)
    }

    /// Runs and requires success; returns stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "tabbyctl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs and requires exit code 1; returns stderr.
    fn fails(&self, args: &[&str], stdin: Option<&str>) -> String {
        let out = self.run_with_stdin(args, stdin);
        assert_eq!(
            out.status.code(),
            Some(1),
            "tabbyctl {args:?} should fail; stdout: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8(out.stderr).unwrap()
    }
}

fn yaml_to_json(text: &str) -> serde_json::Value {
    serde_saphyr::from_str(text).unwrap()
}

#[test]
fn readme_flow_applies_the_example_and_reads_it_back() {
    let ctl = Ctl::new();
    let out = ctl.ok(&["apply", "-f", "examples/cluster.yaml"]);
    assert_eq!(out.trim(), "Successfully applied 6 resource(s)");

    // Tables in calicoctl's layout.
    let nodes = ctl.ok(&["get", "nodes", "-o", "wide"]);
    let lines: Vec<&str> = nodes.lines().collect();
    assert_eq!(
        lines[0].split_whitespace().collect::<Vec<_>>(),
        ["NAME", "ASN", "IPV4", "IPV6"]
    );
    assert!(
        lines[1].starts_with("node1   (64512)   198.18.0.1/24"),
        "{nodes}"
    );
    assert!(
        lines[3].starts_with("node3   64513     198.18.1.3/24"),
        "{nodes}"
    );
    assert_eq!(
        lines.len(),
        5,
        "three rows, a header and a blank line: {nodes}"
    );

    let pools = ctl.ok(&["get", "ippools", "-o", "wide"]);
    assert!(pools.contains("default-ipv4-ippool"), "{pools}");
    let row: Vec<&str> = pools.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(
        row,
        [
            "default-ipv4-ippool",
            "100.64.0.0/16",
            "true",
            "Never",
            "CrossSubnet",
            "false",
            "false",
            "all()",
            "Automatic"
        ]
    );

    let peers = ctl.ok(&["get", "bgppeers"]);
    assert!(peers.contains("has(route-reflector)"), "{peers}");

    // A label selector picks the route reflector only.
    let rr = ctl.ok(&["get", "nodes", "-l", "has(route-reflector)", "-o", "name"]);
    assert_eq!(rr.trim(), "node.projectcalico.org/node1");
    let r1 = ctl.ok(&["get", "nodes", "-l", "rack == 'r1'", "-o", "name"]);
    assert_eq!(r1.lines().count(), 2, "{r1}");

    // YAML out equals YAML in plus defaults.
    let pool: serde_json::Value =
        yaml_to_json(&ctl.ok(&["get", "ippool", "default-ipv4-ippool", "-o", "yaml"]));
    assert_eq!(pool["apiVersion"], "projectcalico.org/v3");
    assert_eq!(pool["kind"], "IPPool");
    assert_eq!(pool["spec"]["cidr"], "100.64.0.0/16");
    assert_eq!(pool["spec"]["vxlanMode"], "CrossSubnet");
    assert_eq!(pool["spec"]["natOutgoing"], true);
    assert_eq!(pool["spec"]["ipipMode"], "Never", "default filled");
    assert_eq!(
        pool["spec"]["allowedUses"],
        serde_json::json!(["Workload", "Tunnel"])
    );
    assert!(pool["metadata"]["resourceVersion"].is_string());
    assert!(pool["metadata"]["uid"].is_string());
    assert!(pool["metadata"]["creationTimestamp"].is_string());

    let node: serde_json::Value = yaml_to_json(&ctl.ok(&["get", "node", "node1", "-o", "yaml"]));
    assert_eq!(node["spec"]["bgp"]["routeReflectorClusterID"], "244.0.0.1");
    assert_eq!(node["metadata"]["labels"]["rack"], "r1");

    // A list comes back as a List kind.
    let list = yaml_to_json(&ctl.ok(&["get", "nodes", "-o", "json"]));
    assert_eq!(list["kind"], "NodeList");
    assert_eq!(list["items"].as_array().unwrap().len(), 3);

    // Applying again replaces (same count, no error) and bumps the revision.
    let rv1 = pool["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    ctl.ok(&["apply", "-f", "examples/cluster.yaml"]);
    let again = yaml_to_json(&ctl.ok(&["get", "ippool", "default-ipv4-ippool", "-o", "yaml"]));
    assert_ne!(again["metadata"]["resourceVersion"].as_str().unwrap(), rv1);
    assert_eq!(
        again["metadata"]["uid"], pool["metadata"]["uid"],
        "uid survives replace"
    );
}

#[test]
fn invalid_file_writes_nothing_and_names_the_problems() {
    let ctl = Ctl::new();
    let err = ctl.fails(&["apply", "-f", "examples/broken-pool.yaml"], None);
    assert!(err.contains("bad-pool"), "{err}");
    assert!(err.contains("spec.blockSize"), "{err}");
    assert!(err.contains("spec.cidr"), "{err}");
    assert!(err.contains("broken-pool.yaml"), "{err}");
    // The valid first document was not written either.
    let pools = ctl.ok(&["get", "ippools", "-o", "name"]);
    assert_eq!(pools.trim(), "", "nothing written: {pools}");
}

#[test]
fn syntax_errors_name_file_line_and_column() {
    let ctl = Ctl::new();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.yaml");
    std::fs::write(
        &file,
        "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata:\n  name: p\nspec:\n  cidr: [100.64.0.0/16\n",
    )
    .unwrap();
    let err = ctl.fails(&["apply", "-f", file.to_str().unwrap()], None);
    assert!(err.contains("bad.yaml"), "{err}");
    assert!(
        err.contains(":6") || err.contains("line 6") || err.contains(":7"),
        "{err}"
    );

    let err = ctl.fails(
        &["apply", "-f", "-"],
        Some("apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {name: p}\nspec: {cidr: 100.64.0.0/16, blockSizee: 26}\n"),
    );
    assert!(err.contains("blockSizee"), "unknown field named: {err}");
    let err = ctl.fails(&["get", "ippoolz"], None);
    assert!(err.contains("unknown resource type"), "{err}");
}

#[test]
fn overlapping_pools_are_refused_against_the_store_and_within_a_file() {
    let ctl = Ctl::new();
    let pool = |name: &str, cidr: &str| {
        format!(
            "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata:\n  name: {name}\nspec:\n  cidr: {cidr}\n"
        )
    };
    let out = ctl.run_with_stdin(&["create", "-f", "-"], Some(&pool("a", "100.64.0.0/16")));
    assert!(out.status.success());
    let err = ctl.fails(&["create", "-f", "-"], Some(&pool("b", "100.64.128.0/17")));
    assert!(err.contains("overlap"), "{err}");
    let both = format!(
        "{}---\n{}",
        pool("c", "100.70.0.0/16"),
        pool("d", "100.70.0.0/24")
    );
    let err = ctl.fails(&["apply", "-f", "-"], Some(&both));
    assert!(err.contains("overlap"), "{err}");
    assert_eq!(ctl.ok(&["get", "ippools", "-o", "name"]).lines().count(), 1);
    // create of an existing resource fails; replace of a missing one fails.
    let err = ctl.fails(&["create", "-f", "-"], Some(&pool("a", "100.64.0.0/16")));
    assert!(err.contains("already exists"), "{err}");
    let err = ctl.fails(&["replace", "-f", "-"], Some(&pool("z", "100.90.0.0/16")));
    assert!(err.contains("does not exist"), "{err}");
}

#[test]
fn patch_delete_and_config() {
    let ctl = Ctl::new();
    ctl.ok(&["apply", "-f", "examples/cluster.yaml"]);
    ctl.ok(&[
        "patch",
        "ippool",
        "default-ipv4-ippool",
        "-p",
        r#"{"spec":{"natOutgoing":false}}"#,
    ]);
    let pool = yaml_to_json(&ctl.ok(&["get", "ippool", "default-ipv4-ippool", "-o", "json"]));
    assert_eq!(pool["spec"]["natOutgoing"], false);
    // A patch that breaks validation is refused and changes nothing.
    let err = ctl.fails(
        &[
            "patch",
            "ippool",
            "default-ipv4-ippool",
            "-p",
            r#"{"spec":{"blockSize":12}}"#,
        ],
        None,
    );
    assert!(err.contains("blockSize"), "{err}");

    assert_eq!(ctl.ok(&["config", "get", "asNumber"]).trim(), "64512");
    assert_eq!(ctl.ok(&["config", "get", "nodeToNodeMesh"]).trim(), "off");
    ctl.ok(&["config", "set", "nodeToNodeMesh", "on"]);
    ctl.ok(&["config", "set", "asNumber", "64600"]);
    assert_eq!(ctl.ok(&["config", "get", "nodeToNodeMesh"]).trim(), "on");
    assert_eq!(ctl.ok(&["config", "get", "asNumber"]).trim(), "64600");
    let nodes = ctl.ok(&["get", "nodes", "-o", "wide"]);
    assert!(
        nodes.contains("(64600)"),
        "inherited ASN follows config: {nodes}"
    );
    let err = ctl.fails(&["config", "set", "asNumber", "banana"], None);
    assert!(err.contains("asNumber"), "{err}");

    let out = ctl.ok(&["delete", "node", "node3"]);
    assert_eq!(out.trim(), "Successfully deleted 1 'Node' resource(s)");
    let err = ctl.fails(&["get", "node", "node3"], None);
    assert!(err.contains("node3"), "{err}");
    let err = ctl.fails(&["delete", "node", "node3"], None);
    assert!(err.contains("not found"), "{err}");
    ctl.ok(&["delete", "node", "node3", "--skip-not-exists"]);
    ctl.ok(&["delete", "-f", "examples/cluster.yaml", "--skip-not-exists"]);
    assert_eq!(ctl.ok(&["get", "nodes", "-o", "name"]).trim(), "");
}

#[test]
fn config_set_creates_the_default_bgpconfiguration() {
    let ctl = Ctl::new();
    ctl.ok(&["config", "set", "logLevel", "debug"]);
    assert_eq!(ctl.ok(&["config", "get", "logLevel"]).trim(), "debug");
    let cfg = yaml_to_json(&ctl.ok(&["get", "bgpconfig", "default", "-o", "yaml"]));
    assert_eq!(cfg["spec"]["logSeverityScreen"], "Debug");
}

#[test]
fn namespaced_resources_and_version() {
    let ctl = Ctl::new();
    let np = |ns: &str| {
        format!(
            "apiVersion: projectcalico.org/v3\nkind: NetworkPolicy\nmetadata:\n  name: allow-dns\n  namespace: {ns}\nspec:\n  selector: all()\n  egress:\n  - action: Allow\n    protocol: UDP\n    destination:\n      ports: [53]\n"
        )
    };
    let both = format!("{}---\n{}", np("prod"), np("dev"));
    let out = ctl.run_with_stdin(&["apply", "-f", "-"], Some(&both));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(ctl.ok(&["get", "networkpolicies", "-o", "name"]).trim(), "");
    assert_eq!(
        ctl.ok(&["get", "networkpolicies", "-n", "prod", "-o", "name"])
            .trim(),
        "networkpolicy.projectcalico.org/allow-dns"
    );
    let all = ctl.ok(&["get", "networkpolicies", "-A"]);
    assert!(all.starts_with("NAMESPACE"), "{all}");
    assert_eq!(all.lines().filter(|l| l.contains("allow-dns")).count(), 2);
    let policy = yaml_to_json(&ctl.ok(&["get", "np", "allow-dns", "-n", "dev", "-o", "yaml"]));
    assert_eq!(
        policy["spec"]["types"],
        serde_json::json!(["Egress"]),
        "types defaulted"
    );

    let v = ctl.ok(&["version"]);
    assert!(v.contains("Client Version"), "{v}");
    let completion = ctl.ok(&["completion", "bash"]);
    assert!(completion.contains("tabbyctl"), "bash completion script");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn as_numbers_print_as_calicoctl_prints_them() {
    let ctl = Ctl::new();
    let text = "\
apiVersion: projectcalico.org/v3
kind: BGPConfiguration
metadata: {name: default}
spec: {asNumber: \"0.64512\"}
---
apiVersion: projectcalico.org/v3
kind: Node
metadata: {name: asdot}
spec: {bgp: {ipv4Address: 10.0.0.1/24, asNumber: \"1.10\"}}
---
apiVersion: projectcalico.org/v3
kind: Node
metadata: {name: quoted}
spec: {bgp: {ipv4Address: 10.0.0.2/24, asNumber: \"4200000001\"}}
---
apiVersion: projectcalico.org/v3
kind: Node
metadata: {name: inherits}
spec: {bgp: {ipv4Address: 10.0.0.3/24}}
---
apiVersion: projectcalico.org/v3
kind: BGPPeer
metadata: {name: tor}
spec: {peerIP: 10.0.0.254, asNumber: \"65535.65535\"}
";
    let out = ctl.run_with_stdin(&["apply", "-f", "-"], Some(text));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let nodes = ctl.ok(&["get", "nodes", "-o", "wide"]);
    let row = |name: &str| -> Vec<String> {
        nodes
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("{name} missing: {nodes}"))
            .split_whitespace()
            .map(String::from)
            .collect()
    };
    assert_eq!(row("asdot")[1], "65546", "{nodes}");
    assert_eq!(row("quoted")[1], "4200000001", "{nodes}");
    assert_eq!(row("inherits")[1], "(64512)", "{nodes}");
    let peers = ctl.ok(&["get", "bgppeers"]);
    assert!(
        peers.lines().nth(1).unwrap().ends_with("4294967295   "),
        "{peers}"
    );
    let cfg = ctl.ok(&["get", "bgpconfig"]);
    assert!(cfg.lines().nth(1).unwrap().contains("64512"), "{cfg}");
    assert_eq!(ctl.ok(&["config", "get", "asNumber"]).trim(), "64512");

    // YAML and JSON show the plain number too, as calicoctl's do.
    let node = ctl.ok(&["get", "node", "asdot", "-o", "yaml"]);
    assert!(node.contains("asNumber: 65546\n"), "{node}");
    let node = yaml_to_json(&ctl.ok(&["get", "node", "asdot", "-o", "json"]));
    assert_eq!(node["spec"]["bgp"]["asNumber"], 65546);
    let peer = yaml_to_json(&ctl.ok(&["get", "bgppeer", "tor", "-o", "yaml"]));
    assert_eq!(peer["spec"]["asNumber"], 4294967295u32);

    // A record an older version stored with the asdot spelling prints plain as well.
    let url = tabby_store::StoreUrl::parse(&ctl.store).unwrap();
    let store = tabby_store::open(&url).await.unwrap();
    let key = "/calico/resources/v3/projectcalico.org/nodes/legacy";
    let value = serde_json::json!({
        "apiVersion": "projectcalico.org/v3", "kind": "Node",
        "metadata": {"name": "legacy"},
        "spec": {"bgp": {"ipv4Address": "10.0.0.4/24", "asNumber": "2.1"}}
    });
    store
        .create(key, &serde_json::to_vec(&value).unwrap())
        .await
        .unwrap();
    let nodes = ctl.ok(&["get", "nodes", "-o", "wide"]);
    let legacy: Vec<&str> = nodes
        .lines()
        .find(|l| l.starts_with("legacy"))
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(legacy[1], "131073", "{nodes}");
}

#[test]
fn a_file_of_5000_documents_applies() {
    let ctl = Ctl::new();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sets.yaml");
    let text: Vec<String> = (0..5000)
        .map(|i| {
            format!(
                "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkSet\nmetadata:\n  name: set-{i}\n  labels: {{batch: big}}\nspec:\n  nets: [198.{}.{}.0/24]\n",
                18 + i / 256 % 2,
                i % 256
            )
        })
        .collect();
    std::fs::write(&file, text.join("---\n")).unwrap();
    let out = ctl.ok(&["apply", "-f", file.to_str().unwrap()]);
    assert_eq!(
        out.trim(),
        "Successfully applied 5000 'GlobalNetworkSet' resource(s)"
    );
    let names = ctl.ok(&["get", "globalnetworksets", "-o", "name"]);
    assert_eq!(names.lines().count(), 5000);
}

#[test]
fn label_sets_overwrites_and_removes() {
    let ctl = Ctl::new();
    ctl.ok(&["apply", "-f", "examples/cluster.yaml"]);
    let out = ctl.ok(&["label", "nodes", "node2", "zone=a", "team=net"]);
    assert_eq!(
        out,
        "Successfully set label zone on nodes node2\nSuccessfully set label team on nodes node2\n"
    );
    let labels = |ctl: &Ctl| {
        yaml_to_json(&ctl.ok(&["get", "node", "node2", "-o", "json"]))["metadata"]["labels"].clone()
    };
    assert_eq!(labels(&ctl)["zone"], "a");
    assert_eq!(labels(&ctl)["rack"], "r1", "other labels stay");

    // A different value needs --overwrite; the failed command changes nothing.
    let err = ctl.fails(&["label", "nodes", "node2", "team=web", "zone=b"], None);
    assert!(
        err.contains("nodes node2: label team is already set (to \"net\"); use --overwrite"),
        "{err}"
    );
    assert_eq!(labels(&ctl)["team"], "net");
    assert_eq!(labels(&ctl)["zone"], "a");
    let out = ctl.ok(&["label", "no", "node2", "zone=b", "--overwrite"]);
    assert_eq!(out, "Successfully updated label zone on no node2\n");
    assert_eq!(labels(&ctl)["zone"], "b");

    // Removal: kubectl's key- and calicoctl's --remove.
    let out = ctl.ok(&["label", "nodes", "node2", "zone-"]);
    assert_eq!(out, "Successfully removed label zone from nodes node2\n");
    ctl.ok(&["label", "nodes", "node2", "team", "--remove"]);
    assert!(labels(&ctl).get("team").is_none());
    let err = ctl.fails(&["label", "nodes", "node2", "team", "--remove"], None);
    assert!(
        err.contains("cannot remove label team: it is not set"),
        "{err}"
    );

    // Bad input names the thing.
    let err = ctl.fails(&["label", "nodes", "nope", "a=b"], None);
    assert!(err.contains("nodes nope: resource does not exist"), "{err}");
    let err = ctl.fails(&["label", "nodes", "node2", "bad key=x"], None);
    assert!(err.contains("metadata.labels.bad key"), "{err}");
    let err = ctl.fails(&["label", "nodes", "node2", "justakey"], None);
    assert!(err.contains("expected key=value"), "{err}");
    let err = ctl.fails(&["label", "bananas", "x", "a=b"], None);
    assert!(err.contains("unknown resource type"), "{err}");

    // Any kind can be labelled, and `get -l` then selects by it.
    ctl.ok(&["label", "ippool", "default-ipv4-ippool", "tier=gold"]);
    let pools = ctl.ok(&["get", "ippools", "-l", "tier == 'gold'", "-o", "name"]);
    assert_eq!(pools.trim(), "ippool.projectcalico.org/default-ipv4-ippool");
}
