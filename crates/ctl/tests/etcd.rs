//! Every `tabbyctl` verb against a real single-member etcd (issue 3): `--store
//! etcd://127.0.0.1:<port>` for each, and `TABBY_STORE=etcd://...` once. Fails, rather
//! than skipping, when the `etcd` binary is missing.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use tabby_ipam::AutoAssignArgs;
use tabby_store::etcd_harness::EtcdCluster;

struct Ctl {
    url: String,
    root: PathBuf,
}

impl Ctl {
    /// Runs with `--store URL`; `via_env` passes the URL as `TABBY_STORE` instead.
    fn run_with(&self, args: &[&str], stdin: Option<&str>, via_env: bool) -> Output {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tabbyctl"));
        if via_env {
            cmd.env("TABBY_STORE", &self.url);
        } else {
            cmd.env_remove("TABBY_STORE").arg("--store").arg(&self.url);
        }
        let mut child = cmd
            .args(args)
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

    fn ok_with(&self, args: &[&str], stdin: Option<&str>) -> String {
        let out = self.run_with(args, stdin, false);
        assert!(
            out.status.success(),
            "tabbyctl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        self.ok_with(args, None)
    }

    fn fails(&self, args: &[&str]) -> String {
        let out = self.run_with(args, None, false);
        assert_eq!(out.status.code(), Some(1), "tabbyctl {args:?} should fail");
        String::from_utf8(out.stderr).unwrap()
    }
}

fn yaml(text: &str) -> serde_json::Value {
    serde_saphyr::from_str(text).unwrap()
}

const EXTRA_POOL: &str = "\
apiVersion: projectcalico.org/v3
kind: IPPool
metadata: {name: extra}
spec: {cidr: 10.50.0.0/24, blockSize: 28}
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_verb_works_against_etcd() {
    let cluster = EtcdCluster::start(1)
        .await
        .expect("starting etcd (is the etcd binary installed?)");
    let ctl = Ctl {
        url: cluster.url().to_string(),
        root: Path::new(env!("CARGO_MANIFEST_DIR")).join("../.."),
    };
    assert!(ctl.url.starts_with("etcd://127.0.0.1:"), "{}", ctl.url);

    // version names the store.
    let v = ctl.ok(&["version"]);
    assert!(
        v.contains(&format!("Datastore:         {}", ctl.url)),
        "{v}"
    );

    // validate needs no store but must not trip over the flag.
    assert_eq!(
        ctl.ok(&["validate", "-f", "examples/cluster.yaml"]).trim(),
        "Successfully validated 6 resource(s)"
    );

    // apply, create, replace.
    assert_eq!(
        ctl.ok(&["apply", "-f", "examples/cluster.yaml"]).trim(),
        "Successfully applied 6 resource(s)"
    );
    assert_eq!(
        ctl.ok_with(&["create", "-f", "-"], Some(EXTRA_POOL)).trim(),
        "Successfully created 1 'IPPool' resource(s)"
    );
    let err = String::from_utf8(
        ctl.run_with(&["create", "-f", "-"], Some(EXTRA_POOL), false)
            .stderr,
    )
    .unwrap();
    assert!(err.contains("already exists"), "{err}");
    let replaced = EXTRA_POOL.replace("blockSize: 28}", "blockSize: 28, natOutgoing: true}");
    assert_eq!(
        ctl.ok_with(&["replace", "-f", "-"], Some(&replaced)).trim(),
        "Successfully replaced 1 'IPPool' resource(s)"
    );

    // get in every format, and with a label selector.
    let pool = yaml(&ctl.ok(&["get", "ippool", "extra", "-o", "yaml"]));
    assert_eq!(pool["spec"]["natOutgoing"], true);
    assert_eq!(pool["spec"]["cidr"], "10.50.0.0/24");
    let list: serde_json::Value =
        serde_json::from_str(&ctl.ok(&["get", "ippools", "-o", "json"])).unwrap();
    assert_eq!(list["kind"], "IPPoolList");
    assert_eq!(list["items"].as_array().unwrap().len(), 2);
    let wide = ctl.ok(&["get", "nodes", "-o", "wide"]);
    assert!(wide.starts_with("NAME"), "{wide}");
    assert!(wide.contains("(64512)"), "{wide}");
    assert_eq!(
        ctl.ok(&["get", "ippools", "-o", "name"]),
        "ippool.projectcalico.org/default-ipv4-ippool\nippool.projectcalico.org/extra\n"
    );
    assert_eq!(
        ctl.ok(&["get", "nodes", "-l", "has(route-reflector)", "-o", "name"])
            .trim(),
        "node.projectcalico.org/node1"
    );
    let table = ctl.ok(&["get", "ippools"]);
    assert!(
        table.contains("extra") && table.contains("10.50.0.0/24"),
        "{table}"
    );

    // patch.
    assert_eq!(
        ctl.ok(&[
            "patch",
            "ippool",
            "extra",
            "-p",
            r#"{"spec":{"disabled":true}}"#
        ])
        .trim(),
        "Successfully patched 1 'IPPool' resource(s)"
    );
    assert_eq!(
        yaml(&ctl.ok(&["get", "ippool", "extra", "-o", "json"]))["spec"]["disabled"],
        true
    );

    // config get/set.
    assert_eq!(ctl.ok(&["config", "get", "nodeToNodeMesh"]).trim(), "off");
    ctl.ok(&["config", "set", "nodeToNodeMesh", "on"]);
    ctl.ok(&["config", "set", "asNumber", "64700"]);
    assert_eq!(ctl.ok(&["config", "get", "nodeToNodeMesh"]).trim(), "on");
    assert_eq!(ctl.ok(&["config", "get", "asNumber"]).trim(), "64700");

    // TABBY_STORE reaches the same etcd.
    let out = ctl.run_with(&["get", "ippools", "-o", "name"], None, true);
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        "ippool.projectcalico.org/default-ipv4-ippool\nippool.projectcalico.org/extra\n"
    );
    let out = ctl.run_with(&["version"], None, true);
    assert!(String::from_utf8_lossy(&out.stdout).contains(&ctl.url));

    // ipam: allocate through the library on the same etcd, then every ipam verb.
    let store = tabby_store::open(&cluster.url()).await.unwrap();
    let ipam = tabby_client::ipam::ipam_for(&tabby_client::Client::new(store));
    let mut args = AutoAssignArgs::new("node1", 1, 0).with_handle("k8s-pod-network.gone");
    args.attrs = BTreeMap::from([("node".to_string(), "node1".to_string())]);
    let ip: IpAddr = ipam.auto_assign(&args).await.unwrap().v4.unwrap().ips[0].addr();
    assert!(
        tabby_ipam::PoolInfo::new("p", "100.64.0.0/16".parse().unwrap()).contains(ip),
        "{ip} from the enabled pool"
    );

    let show = ctl.ok(&["ipam", "show", "--show-blocks"]);
    assert!(show.contains("| 100.64.0.0/16 "), "{show}");
    assert!(show.contains("| 1 (0%) "), "{show}");
    assert!(show.contains("| Block "), "{show}");
    assert!(
        ctl.ok(&["ipam", "show", "--ip", &ip.to_string()])
            .starts_with(&format!(
                "IP {ip} is in use\nHandle ID: k8s-pod-network.gone\n"
            ))
    );
    let check = ctl.ok(&["ipam", "check", "--show-problem-ips"]);
    assert!(check.contains(&format!("  {ip} leaked;")), "{check}");
    assert!(
        check
            .trim_end()
            .ends_with("Check complete; found 1 problems."),
        "{check}"
    );
    assert_eq!(
        ctl.ok(&["ipam", "release", "--ip", &ip.to_string()]),
        format!("Successfully released IP address {ip}\n")
    );
    assert!(
        ctl.ok(&["ipam", "check"])
            .trim_end()
            .ends_with("Check complete; found 0 problems.")
    );
    ctl.ok(&["ipam", "configure", "--strictaffinity=true"]);
    assert!(ipam.ipam_config().await.unwrap().strict_affinity);
    let cfg = ctl.ok(&["ipam", "show", "--show-configuration"]);
    assert!(
        cfg.contains("| StrictAffinity               | true    |"),
        "{cfg}"
    );
    let err = ctl.fails(&["ipam", "release", "--ip", "10.99.0.1"]);
    assert!(err.contains("--ip 10.99.0.1"), "{err}");

    // delete by name and from a file.
    assert_eq!(
        ctl.ok(&["delete", "ippool", "extra"]).trim(),
        "Successfully deleted 1 'IPPool' resource(s)"
    );
    ctl.ok(&["delete", "-f", "examples/cluster.yaml"]);
    assert_eq!(ctl.ok(&["get", "nodes", "-o", "name"]), "");
    let err = ctl.fails(&["delete", "node", "node1"]);
    assert!(err.contains("not found"), "{err}");
}
