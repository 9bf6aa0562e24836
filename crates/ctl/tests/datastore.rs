//! `tabbyctl datastore export|import|migrate` end to end: a SQLite store populated
//! with resources and IPAM state (blocks, handles, affinities, tunnel addresses, the
//! IPAM configuration) is backed up and restored into fresh SQLite stores, and
//! migrated to a real etcd and back. Every key and value is compared, and `ipam check`
//! must be clean on every target. The etcd test fails, rather than skipping, when the
//! `etcd` binary is missing.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use tabby_ipam::{AutoAssignArgs, TunnelKind};
use tabby_store::etcd_harness::EtcdCluster;

struct Ctl {
    dir: tempfile::TempDir,
    root: PathBuf,
}

impl Ctl {
    fn new() -> Ctl {
        Ctl {
            dir: tempfile::tempdir().unwrap(),
            root: Path::new(env!("CARGO_MANIFEST_DIR")).join("../.."),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A SQLite store URL in the test's folder.
    fn sqlite(&self, name: &str) -> String {
        format!("sqlite://{}", self.path(name).display())
    }

    fn run(&self, store: &str, args: &[&str], stdin: Option<&str>) -> Output {
        let mut child = Command::new(env!("CARGO_BIN_EXE_tabbyctl"))
            .arg("--store")
            .arg(store)
            .args(args)
            .env_remove("TABBY_STORE")
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

    fn ok_stdin(&self, store: &str, args: &[&str], stdin: Option<&str>) -> String {
        let out = self.run(store, args, stdin);
        assert!(
            out.status.success(),
            "tabbyctl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn ok(&self, store: &str, args: &[&str]) -> String {
        self.ok_stdin(store, args, None)
    }

    /// Requires exit code 1; returns stderr.
    fn fails(&self, store: &str, args: &[&str]) -> String {
        let out = self.run(store, args, None);
        assert_eq!(
            out.status.code(),
            Some(1),
            "tabbyctl {args:?} should fail; stdout: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8(out.stderr).unwrap()
    }
}

fn wep(node: &str, pod: &str, ip: IpAddr) -> String {
    format!(
        "apiVersion: projectcalico.org/v3
kind: WorkloadEndpoint
metadata: {{name: {node}-k8s-{pod}-eth0, namespace: prod}}
spec:
  orchestrator: k8s
  node: {node}
  pod: {pod}
  endpoint: eth0
  containerID: c-{pod}
  interfaceName: cali0123456789a
  ipNetworks: [{ip}/32]
"
    )
}

const POLICY: &str = "\
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: allow-dns, namespace: prod}
spec:
  selector: all()
  egress:
  - action: Allow
    protocol: UDP
    destination: {ports: [53]}
";

/// Resources, IPAM configuration, three pods with endpoints and two tunnel
/// addresses, so `ipam check` is clean.
async fn populate(ctl: &Ctl, url: &str) {
    ctl.ok(url, &["apply", "-f", "examples/cluster.yaml"]);
    ctl.ok_stdin(url, &["apply", "-f", "-"], Some(POLICY));
    ctl.ok(
        url,
        &[
            "ipam",
            "configure",
            "--strictaffinity=true",
            "--max-blocks-per-host=4",
        ],
    );
    let store = tabby_store::open(&tabby_store::StoreUrl::parse(url).unwrap())
        .await
        .unwrap();
    let ipam = tabby_client::ipam::ipam_for(&tabby_client::Client::new(store));
    for (node, pod) in [("node1", "web"), ("node1", "db"), ("node2", "cache")] {
        let mut args =
            AutoAssignArgs::new(node, 1, 0).with_handle(format!("k8s-pod-network.c-{pod}"));
        args.attrs = BTreeMap::from([
            ("node".to_string(), node.to_string()),
            ("pod".to_string(), pod.to_string()),
            ("namespace".to_string(), "prod".to_string()),
        ]);
        let ip = ipam.auto_assign(&args).await.unwrap().v4.unwrap().ips[0].addr();
        ctl.ok_stdin(url, &["apply", "-f", "-"], Some(&wep(node, pod, ip)));
    }
    for node in ["node1", "node2"] {
        ipam.ensure_tunnel_address(node, TunnelKind::Vxlan, &[])
            .await
            .unwrap();
    }
}

/// Every key under /calico/ with its raw value.
async fn dump(url: &str) -> BTreeMap<String, Vec<u8>> {
    let store = tabby_store::open(&tabby_store::StoreUrl::parse(url).unwrap())
        .await
        .unwrap();
    store
        .list("/calico/")
        .await
        .unwrap()
        .kvs
        .into_iter()
        .map(|kv| (kv.key, kv.value))
        .collect()
}

/// The two stores hold the same keys; resources byte for byte, IPAM values as JSON
/// (a file re-encodes them), or byte for byte when `exact`.
fn assert_same(a: &BTreeMap<String, Vec<u8>>, b: &BTreeMap<String, Vec<u8>>, exact: bool) {
    assert_eq!(
        a.keys().collect::<Vec<_>>(),
        b.keys().collect::<Vec<_>>(),
        "the same keys"
    );
    for (key, va) in a {
        let vb = &b[key];
        if exact || key.starts_with("/calico/resources/") {
            assert_eq!(
                String::from_utf8_lossy(va),
                String::from_utf8_lossy(vb),
                "{key}"
            );
        } else {
            let json = |v: &[u8]| serde_json::from_slice::<serde_json::Value>(v).ok();
            assert_eq!(json(va), json(vb), "{key}");
        }
    }
}

fn assert_clean(ctl: &Ctl, url: &str) {
    let check = ctl.ok(url, &["ipam", "check"]);
    assert!(
        check
            .trim_end()
            .ends_with("Check complete; found 0 problems."),
        "{url}: {check}"
    );
    assert!(check.contains("Found 2 IPAM blocks."), "{check}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_and_import_restore_everything() {
    let ctl = Ctl::new();
    let source = ctl.sqlite("source.db");
    populate(&ctl, &source).await;
    assert_clean(&ctl, &source);
    let original = dump(&source).await;
    assert!(original.len() > 15, "{:?}", original.keys());
    let resources = original
        .keys()
        .filter(|k| k.starts_with("/calico/resources/"))
        .count();
    assert_eq!(
        resources, 11,
        "cluster.yaml, a policy, IPAM settings, 3 endpoints"
    );

    // export -o FILE: YAML with a header.
    let backup = ctl.path("backup.yaml");
    let out = ctl.ok(
        &source,
        &["datastore", "export", "-o", backup.to_str().unwrap()],
    );
    assert!(
        out.starts_with(&format!(
            "Exported {} keys ({resources} resources, {} IPAM keys) from {source} at revision",
            original.len(),
            original.len() - resources
        )),
        "{out}"
    );
    assert!(
        out.trim_end()
            .ends_with(&format!("to {}.", backup.display())),
        "{out}"
    );
    let text = std::fs::read_to_string(&backup).unwrap();
    let file: serde_json::Value = serde_saphyr::from_str(&text).unwrap();
    assert_eq!(file["kind"], "DatastoreExport");
    assert_eq!(file["metadata"]["source"], source);
    assert!(file["metadata"]["revision"].as_i64().unwrap() > 0);
    assert!(
        file["metadata"]["exportedAt"]
            .as_str()
            .unwrap()
            .ends_with('Z')
    );
    let pool = file["resources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| {
            e["key"]
                .as_str()
                .unwrap()
                .ends_with("/ippools/default-ipv4-ippool")
        })
        .unwrap();
    assert!(pool["value"]["metadata"].get("resourceVersion").is_none());

    // import -f FILE into an empty store: the same keys, a clean IPAM, the same tables.
    let target = ctl.sqlite("target.db");
    let out = ctl.ok(
        &target,
        &["datastore", "import", "-f", backup.to_str().unwrap()],
    );
    assert!(
        out.contains(&format!("{} created.", original.len())),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "Verified: every key and value on {target} matches, and it holds nothing else."
        )),
        "{out}"
    );
    assert_same(&original, &dump(&target).await, false);
    assert_clean(&ctl, &target);
    for args in [
        &["get", "nodes", "-o", "wide"][..],
        &["get", "workloadendpoints", "-A", "-o", "wide"],
        &["ipam", "show", "--show-blocks"],
        &["ipam", "show", "--show-configuration"],
    ] {
        assert_eq!(ctl.ok(&source, args), ctl.ok(&target, args), "{args:?}");
    }

    // A store that holds keys is refused, and left as it was.
    let err = ctl.fails(
        &target,
        &["datastore", "import", "-f", backup.to_str().unwrap()],
    );
    assert!(
        err.contains(&format!("{target} is not empty: it holds")),
        "{err}"
    );
    assert!(err.contains("merge with --force"), "{err}");

    // --force puts back what the file has and keeps the rest; --prune drops the rest.
    ctl.ok(&target, &["delete", "node", "node3"]);
    ctl.ok_stdin(
        &target,
        &["apply", "-f", "-"],
        Some("apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {name: extra}\nspec: {cidr: 10.77.0.0/24}\n"),
    );
    let out = ctl.ok(
        &target,
        &[
            "datastore",
            "import",
            "-f",
            backup.to_str().unwrap(),
            "--force",
        ],
    );
    assert!(out.contains("1 created"), "{out}");
    assert!(out.contains("Verified: every key and value on"), "{out}");
    assert_eq!(dump(&target).await.len(), original.len() + 1);
    let out = ctl.ok(
        &target,
        &[
            "datastore",
            "import",
            "-f",
            backup.to_str().unwrap(),
            "--force",
            "--prune",
        ],
    );
    assert!(out.contains("1 deleted"), "{out}");
    assert_same(&original, &dump(&target).await, false);

    // calicoctl's spellings, through stdout and stdin, and JSON.
    let exported = ctl.ok(&source, &["datastore", "migrate", "export"]);
    assert!(exported.starts_with("apiVersion: tabby/v1\nkind: DatastoreExport\n"));
    let third = ctl.sqlite("third.db");
    ctl.ok_stdin(
        &third,
        &["datastore", "migrate", "import", "-f", "-"],
        Some(&exported),
    );
    assert_same(&original, &dump(&third).await, false);
    let json = ctl.path("backup.json");
    ctl.ok(
        &source,
        &["datastore", "export", "-o", json.to_str().unwrap()],
    );
    assert!(std::fs::read_to_string(&json).unwrap().starts_with('{'));
    let fourth = ctl.sqlite("fourth.db");
    ctl.ok(
        &fourth,
        &["datastore", "import", "-f", json.to_str().unwrap()],
    );
    assert_same(&original, &dump(&fourth).await, false);
    assert_clean(&ctl, &fourth);
}

#[test]
fn a_bad_export_names_the_entry_and_writes_nothing() {
    let ctl = Ctl::new();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let source = ctl.sqlite("source.db");
    rt.block_on(populate(&ctl, &source));
    let text = ctl.ok(&source, &["datastore", "export"]);
    // A block whose CIDR no longer matches its key, and a pool renamed by hand.
    let mut file: serde_json::Value = serde_saphyr::from_str(&text).unwrap();
    let ipam = file["ipam"].as_array_mut().unwrap();
    let at = ipam
        .iter()
        .position(|e| e["key"].as_str().unwrap().contains("/block/"))
        .unwrap();
    let block_key = ipam[at]["key"].as_str().unwrap().to_string();
    ipam[at]["value"]["cidr"] = "10.99.0.0/26".into();
    let bad = ctl.path("bad.json");
    std::fs::write(&bad, serde_json::to_string_pretty(&file).unwrap()).unwrap();

    let target = ctl.sqlite("target.db");
    let err = ctl.fails(
        &target,
        &["datastore", "import", "-f", bad.to_str().unwrap()],
    );
    assert!(
        err.contains(&format!(
            "{}: 1 bad entries, nothing was written:\n  ipam[{at}] {block_key}: cidr: 10.99.0.0/26 is not the key's block",
            bad.display()
        )),
        "{err}"
    );
    assert!(rt.block_on(dump(&target)).is_empty());

    // A truncated file, a missing source and a missing --to are named too.
    std::fs::write(&bad, &text[..text.len() / 2]).unwrap();
    let err = ctl.fails(
        &target,
        &["datastore", "import", "-f", bad.to_str().unwrap()],
    );
    assert!(err.contains(&bad.display().to_string()), "{err}");
    let missing = ctl.sqlite("missing.db");
    let err = ctl.fails(&missing, &["datastore", "export"]);
    assert!(err.contains("missing.db does not exist"), "{err}");
    assert!(
        !ctl.path("missing.db").exists(),
        "not created by the attempt"
    );
    let err = ctl.fails(&source, &["datastore", "migrate"]);
    assert!(err.contains("--to URL"), "{err}");
    let err = ctl.fails(&source, &["datastore", "migrate", "--to", &source]);
    assert!(err.contains("the same store"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_sqlite_to_etcd_and_back() {
    let cluster = EtcdCluster::start(1)
        .await
        .expect("starting etcd (is the etcd binary installed?)");
    let etcd = cluster.url().to_string();
    let ctl = Ctl::new();
    let source = ctl.sqlite("source.db");
    populate(&ctl, &source).await;
    let original = dump(&source).await;

    let out = ctl.ok(
        &source,
        &["datastore", "migrate", "--from", &source, "--to", &etcd],
    );
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].starts_with(&format!("Read {} keys (11 resources, ", original.len())),
        "{out}"
    );
    assert!(
        lines[1].ends_with(&format!("to {etcd}: {} created.", original.len())),
        "{out}"
    );
    assert_eq!(
        lines[2],
        format!("Verified: every key and value on {etcd} matches, and it holds nothing else.")
    );
    assert_eq!(
        lines[3],
        format!("IPAM check on {etcd}: 0 problems (0 on the source).")
    );
    // A migration copies bytes: every value is identical.
    assert_same(&original, &dump(&etcd).await, true);
    assert_clean(&ctl, &etcd);
    assert_eq!(
        ctl.ok(&source, &["get", "nodes", "-o", "wide"]),
        ctl.ok(&etcd, &["get", "nodes", "-o", "wide"])
    );

    // Again: the target is not empty. After changes on the source, --force --prune
    // brings it up to date.
    let err = ctl.fails(&source, &["datastore", "migrate", "--to", &etcd]);
    assert!(err.contains("is not empty"), "{err}");
    ctl.ok(&source, &["label", "nodes", "node2", "zone=b"]);
    ctl.ok(
        &source,
        &["delete", "networkpolicy", "allow-dns", "-n", "prod"],
    );
    let out = ctl.ok(
        &source,
        &["datastore", "migrate", "--to", &etcd, "--force", "--prune"],
    );
    assert!(out.contains("1 overwritten"), "{out}");
    assert!(out.contains("1 deleted"), "{out}");
    let updated = dump(&source).await;
    assert_same(&updated, &dump(&etcd).await, true);

    // And back to a new SQLite file.
    let back = ctl.sqlite("back.db");
    ctl.ok(
        &etcd,
        &["datastore", "migrate", "--from", &etcd, "--to", &back],
    );
    assert_same(&updated, &dump(&back).await, true);
    assert_clean(&ctl, &back);
}
