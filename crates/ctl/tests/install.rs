//! docs/install.md followed on three "hosts" made of network namespaces (prefix
//! `mh<pid>`, on one bridge, 198.18.0.1-3): a 3-member etcd cluster, one member per
//! host, with the guide's `/etc/default/etcd` read from docs/install.md; `tabbyctl` with a CalicoAPIConfig file applies the
//! pool, the BGP settings and the nodes; each host's `tabby-node` starts with the
//! `ExecStart` of packaging/systemd/tabby-node.service and an environment file made
//! from packaging/etc/tabby-node.env (so the test fails when they drift); a pod per
//! host through the `tabby` plugin with packaging/cni/10-tabby.conflist. Each host
//! must learn the others' blocks over BGP and every pod must reach the others.
//! Needs root and etcd (Debian's etcd-server).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use tabby_testnet::{End, Netns, TestNet, wait_until};

const CTL: &str = env!("CARGO_BIN_EXE_tabbyctl");
const HOSTS: usize = 3;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn bin_dir() -> PathBuf {
    Path::new(CTL).parent().unwrap().to_path_buf()
}

/// tabby-node and the CNI plugins next to tabbyctl, built when missing.
fn ensure_binaries() {
    let names = ["tabby-node", "tabby", "tabby-ipam"];
    if !names.iter().all(|n| bin_dir().join(n).exists()) {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let ok = Command::new(cargo)
            .args(["build", "-p", "tabby-node", "-p", "tabby-cni", "--bins"])
            .status()
            .unwrap()
            .success();
        assert!(ok, "cannot build tabby-node and the CNI plugins");
    }
    for n in names {
        assert!(bin_dir().join(n).exists(), "{n} is not next to {CTL}");
    }
}

fn check(out: Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what}: exit {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The unit's `KEY=` setting (the first one).
fn unit_setting(unit: &str, key: &str) -> String {
    unit.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key}= in the unit"))
        .trim()
        .to_string()
}

/// A systemd environment file: `KEY=value` lines, `#` comments.
fn parse_env_file(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().trim_matches('"').to_string()))
        .collect()
}

/// `ExecStart` as systemd runs it: `$VAR` splits into words, `${VAR}` is one word.
fn expand_exec(exec: &str, env: &BTreeMap<String, String>) -> Vec<String> {
    let mut argv = Vec::new();
    for word in exec.split_whitespace() {
        if let Some(name) = word.strip_prefix("${").and_then(|w| w.strip_suffix('}')) {
            argv.push(env.get(name).cloned().unwrap_or_default());
        } else if let Some(name) = word.strip_prefix('$') {
            if let Some(v) = env.get(name) {
                argv.extend(v.split_whitespace().map(str::to_string));
            }
        } else {
            argv.push(word.to_string());
        }
    }
    argv
}

/// Host `i`'s address (1-based).
fn host_addr(i: usize) -> String {
    format!("198.18.0.{i}")
}

struct Host {
    ns: Netns,
    name: String,
    dir: PathBuf,
}

/// Host 1's `/etc/default/etcd` from docs/install.md: its `ETCD_*` lines.
fn guide_etcd_env() -> Vec<(String, String)> {
    let guide = std::fs::read_to_string(repo().join("docs/install.md")).unwrap();
    let vars: Vec<(String, String)> = guide
        .lines()
        .skip_while(|l| !l.starts_with("ETCD_NAME=etcd1"))
        .take_while(|l| l.starts_with("ETCD_"))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    assert!(
        vars.len() >= 8,
        "docs/install.md has no /etc/default/etcd block for etcd1: {vars:?}"
    );
    vars
}

/// etcd member `i` as the guide configures it: host 1's settings with its name and
/// address replaced, except the cluster list, which is the same everywhere.
fn etcd_argv(i: usize, dir: &Path) -> Vec<String> {
    let mut argv = vec![
        "env".to_string(),
        "-i".into(),
        "PATH=/usr/sbin:/usr/bin:/sbin:/bin".into(),
    ];
    for (k, v) in guide_etcd_env() {
        let v = match k.as_str() {
            "ETCD_INITIAL_CLUSTER" => v,
            "ETCD_DATA_DIR" => dir.join("etcd").display().to_string(),
            _ => v
                .replace("198.18.0.1", &host_addr(i))
                .replace("etcd1", &format!("etcd{i}")),
        };
        argv.push(format!("{k}={v}"));
    }
    argv.push("etcd".into());
    argv
}

/// Runs the `tabby` plugin (ADD) in `host` for pod namespace `pod`, with the
/// first plugin of the conflist as the network config; returns the pod's IPv4.
fn cni_add(host: &Host, pod: &Netns, conf: &serde_json::Value) -> String {
    let mut child = Command::new("ip")
        .args(["netns", "exec", host.ns.name()])
        .arg(bin_dir().join("tabby"))
        .env("CNI_COMMAND", "ADD")
        .env("CNI_CONTAINERID", format!("mh-{}", pod.name()))
        .env("CNI_NETNS", format!("/run/netns/{}", pod.name()))
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", format!("{}:/usr/lib/cni", bin_dir().display()))
        .env(
            "CNI_ARGS",
            format!(
                "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=pod-{}",
                host.name
            ),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(conf.to_string().as_bytes())
        .unwrap();
    let out = check(child.wait_with_output().unwrap(), "tabby ADD");
    let result: serde_json::Value = serde_json::from_str(&out).unwrap();
    let addr = result["ips"][0]["address"]
        .as_str()
        .unwrap_or_else(|| panic!("{out}"));
    addr.split('/').next().unwrap().to_string()
}

#[test]
fn install_guide_three_hosts_on_a_three_member_etcd() {
    tabby_testnet::require_root();
    assert!(
        Command::new("etcd")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success()),
        "this test needs etcd on PATH (Debian: apt-get install etcd-server)"
    );
    ensure_binaries();

    let unit =
        std::fs::read_to_string(repo().join("packaging/systemd/tabby-node.service")).unwrap();
    assert_eq!(
        unit_setting(&unit, "EnvironmentFile"),
        "/etc/tabby/tabby-node.env",
        "the guide and the package name this file"
    );
    let exec = unit_setting(&unit, "ExecStart");
    assert!(
        exec.starts_with("/usr/bin/tabby-node"),
        "the package installs the agent as /usr/bin/tabby-node: {exec}"
    );
    let env_template =
        std::fs::read_to_string(repo().join("packaging/etc/tabby-node.env")).unwrap();
    let conflist: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("packaging/cni/10-tabby.conflist")).unwrap(),
    )
    .unwrap();

    let net = TestNet::with_prefix(&format!("mh{}", std::process::id()));
    let mut hosts = Vec::new();
    for i in 1..=HOSTS {
        let ns = net.netns(&format!("h{i}")).unwrap();
        let dir = net.temp_dir(&format!("h{i}")).unwrap();
        hosts.push(Host {
            ns,
            name: format!("mh-h{i}"),
            dir,
        });
    }
    let addrs: Vec<String> = (1..=HOSTS)
        .map(|i| format!("{}/24", host_addr(i)))
        .collect();
    let ends: Vec<[&str; 1]> = addrs.iter().map(|a| [a.as_str()]).collect();
    let members: Vec<End<'_>> = hosts
        .iter()
        .zip(&ends)
        .map(|(h, a)| End::new(&h.ns, "eth0", a))
        .collect();
    net.segment("lan", &members).unwrap();
    for h in &hosts {
        // As on a real host: a default route (the agent's proxy ARP needs one).
        h.ns.ip(&["route", "add", "default", "via", "198.18.0.254"])
            .unwrap();
    }

    // The 3-member etcd cluster, one member per host.
    for (i, h) in hosts.iter().enumerate() {
        let argv = etcd_argv(i + 1, &h.dir);
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        net.spawn(&h.ns, &argv).unwrap();
    }
    let endpoints: Vec<String> = (1..=HOSTS)
        .map(|i| format!("{}:2379", host_addr(i)))
        .collect();
    let store = format!("etcd://{}", endpoints.join(","));

    // tabbyctl's config file, as the guide writes /etc/tabby/tabbyctl.yaml; it
    // runs on host 1, the administrator's machine.
    let admin = net.temp_dir("admin").unwrap();
    let config = admin.join("tabbyctl.yaml");
    std::fs::write(
        &config,
        format!(
            "apiVersion: projectcalico.org/v3\nkind: CalicoAPIConfig\nmetadata: {{}}\nspec:\n  \
             datastoreType: etcdv3\n  etcdEndpoints: {}\n",
            endpoints
                .iter()
                .map(|e| format!("http://{e}"))
                .collect::<Vec<_>>()
                .join(",")
        ),
    )
    .unwrap();
    let ctl_in = |args: &[&str]| -> Output {
        Command::new("ip")
            .args(["netns", "exec", hosts[0].ns.name(), CTL, "--config"])
            .arg(&config)
            .args(args)
            .env_remove("TABBY_STORE")
            .output()
            .unwrap()
    };
    let healthy = wait_until(Duration::from_secs(30), || {
        ctl_in(&["get", "ippools"]).status.success()
    });
    assert!(
        healthy,
        "etcd cluster did not answer: {}",
        String::from_utf8_lossy(&ctl_in(&["get", "ippools"]).stderr)
    );

    let mut manifest = String::from(
        "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {name: mh-pool}\n\
         spec: {cidr: 100.64.0.0/16, blockSize: 26, ipipMode: Never, vxlanMode: Never, \
         natOutgoing: false, nodeSelector: all()}\n---\n\
         apiVersion: projectcalico.org/v3\nkind: BGPConfiguration\nmetadata: {name: default}\n\
         spec: {nodeToNodeMeshEnabled: true, asNumber: 64512}\n",
    );
    for (i, h) in hosts.iter().enumerate() {
        manifest.push_str(&format!(
            "---\napiVersion: projectcalico.org/v3\nkind: Node\nmetadata: {{name: {}}}\n\
             spec: {{bgp: {{ipv4Address: {}/24}}}}\n",
            h.name,
            host_addr(i + 1)
        ));
    }
    let manifest_path = admin.join("cluster.yaml");
    std::fs::write(&manifest_path, manifest).unwrap();
    check(
        ctl_in(&["apply", "-f", manifest_path.to_str().unwrap()]),
        "tabbyctl apply",
    );

    // tabby-node on every host, as systemd would start it.
    for (i, h) in hosts.iter().enumerate() {
        let mut env = parse_env_file(&env_template);
        env.insert("TABBY_NODENAME".into(), h.name.clone());
        env.insert("TABBY_STORE".into(), store.clone());
        env.insert("TABBY_IP".into(), format!("{}/24", host_addr(i + 1)));
        env.insert(
            "TABBY_NODE_SOCKET".into(),
            h.dir.join("node.ctl").display().to_string(),
        );
        env.insert("TABBY_STATE_DIR".into(), h.dir.display().to_string());
        env.insert(
            "TABBY_NODE_ARGS".into(),
            format!("--label host=h{} --bgp-hold-time 9", i + 1),
        );
        let env_file: String = env.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
        std::fs::write(h.dir.join("tabby-node.env"), &env_file).unwrap();

        let mut argv = expand_exec(&exec, &parse_env_file(&env_file));
        argv[0] = bin_dir().join("tabby-node").display().to_string();
        let mut full = vec![
            "env".to_string(),
            "-i".into(),
            "PATH=/usr/sbin:/usr/bin:/sbin:/bin".into(),
        ];
        full.extend(env.iter().map(|(k, v)| format!("{k}={v}")));
        full.extend(argv);
        let full: Vec<&str> = full.iter().map(String::as_str).collect();
        net.spawn(&h.ns, &full).unwrap();
    }

    // A pod per host through the packaged CNI config, pointed at the cluster.
    let mut plugin = conflist["plugins"][0].clone();
    plugin["cniVersion"] = conflist["cniVersion"].clone();
    plugin["name"] = conflist["name"].clone();
    plugin["datastore"] = serde_json::Value::String(store.clone());
    let mut pods = Vec::new();
    for (i, h) in hosts.iter().enumerate() {
        // The agent writes the node name for the plugin once it has registered.
        let nodename = h.dir.join("nodename");
        assert!(
            wait_until(Duration::from_secs(30), || nodename.exists()),
            "tabby-node on {} did not start (no {})",
            h.name,
            nodename.display()
        );
        let mut conf = plugin.clone();
        conf["nodename_file"] = serde_json::Value::String(nodename.display().to_string());
        let pod = net.netns(&format!("p{}", i + 1)).unwrap();
        let ip = cni_add(h, &pod, &conf);
        pods.push((pod, ip));
    }

    // Labels from TABBY_NODE_ARGS reached the store: the unit's $TABBY_NODE_ARGS works.
    let nodes = check(
        ctl_in(&["get", "nodes", "-l", "host == 'h2'", "-o", "name"]),
        "get nodes",
    );
    assert!(nodes.contains("mh-h2"), "{nodes}");

    // Every host learns the other hosts' blocks over BGP, via their addresses.
    let blocks_of = |i: usize| -> Vec<String> {
        let r = hosts[i].ns.ip(&["route", "show", "proto", "80"]).unwrap();
        r.lines()
            .filter(|l| l.starts_with("blackhole "))
            .filter_map(|l| l.split_whitespace().nth(1).map(str::to_string))
            .collect()
    };
    let learned = wait_until(Duration::from_secs(60), || {
        (0..HOSTS).all(|i| {
            let routes = hosts[i].ns.ip(&["-4", "route", "show"]).unwrap_or_default();
            (0..HOSTS).filter(|j| *j != i).all(|j| {
                let via = format!("via {}", host_addr(j + 1));
                let b = blocks_of(j);
                !b.is_empty()
                    && b.iter().all(|blk| {
                        routes
                            .lines()
                            .any(|l| l.starts_with(blk.as_str()) && l.contains(&via))
                    })
            })
        })
    });
    if !learned {
        let mut report = String::new();
        for h in &hosts {
            report.push_str(&format!(
                "{}:\n{}\n",
                h.name,
                h.ns.ip(&["-4", "route", "show"]).unwrap_or_default()
            ));
            let status = Command::new(CTL)
                .args(["node", "status", "--socket"])
                .arg(h.dir.join("node.ctl"))
                .output()
                .unwrap();
            report.push_str(&String::from_utf8_lossy(&status.stdout));
        }
        panic!("the hosts did not learn each other's blocks:\n{report}");
    }

    for h in &hosts {
        eprintln!(
            "{} routes:\n{}",
            h.name,
            h.ns.ip(&["-4", "route", "show"]).unwrap_or_default()
        );
    }

    // Pod to pod across hosts.
    for (a, (pod_a, _)) in pods.iter().enumerate() {
        for (b, (_, ip_b)) in pods.iter().enumerate() {
            if a != b {
                assert!(
                    wait_until(Duration::from_secs(15), || pod_a.ping(ip_b, 1)),
                    "pod on h{} cannot reach the pod on h{} ({ip_b})",
                    a + 1,
                    b + 1
                );
            }
        }
    }
}
