//! A CNI runtime for tests: node namespaces (each with an uplink to a shared
//! fabric and a default route, like a real host), pod namespaces, a shared SQLite
//! datastore, and plugin invocations with the CNI_* environment, config on stdin
//! and the result parsed from stdout. Chains (conflists) pass `prevResult` on as
//! libcni does. Everything lives in a `TestNet`, removed on drop (also on panic).

#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use ipnet::IpNet;
use serde_json::{Value, json};
use tabby_api::ippool::IPPoolSpec;
use tabby_api::{Kind, Resource, Spec};
use tabby_client::Client;
use tabby_testnet::{End, Netns, TestNet};

/// The network name used in configs (and IPAM handles).
pub const NETWORK: &str = "tabby-net";

/// One plugin invocation's outcome.
#[derive(Debug)]
pub struct Call {
    /// Exit status.
    pub rc: i32,
    /// Parsed stdout (`Null` when empty).
    pub out: Value,
    /// Standard error (logs).
    pub stderr: String,
}

impl Call {
    /// Panics unless it succeeded.
    pub fn ok(self) -> Value {
        assert_eq!(
            self.rc, 0,
            "plugin failed: {} / stderr: {}",
            self.out, self.stderr
        );
        self.out
    }

    /// Panics unless it failed; returns (code, msg).
    pub fn err(self) -> (u64, String) {
        assert_ne!(self.rc, 0, "plugin unexpectedly succeeded: {}", self.out);
        let code = self.out["code"]
            .as_u64()
            .unwrap_or_else(|| panic!("no error code in {}", self.out));
        (
            code,
            self.out["msg"].as_str().unwrap_or_default().to_owned(),
        )
    }
}

/// A node: a host namespace.
pub struct Node {
    /// Node name (`nodename` in configs).
    pub name: String,
    /// Its namespace.
    pub ns: Netns,
}

/// A pod: a namespace plus its CNI identity.
pub struct Pod {
    /// Namespace.
    pub ns: Netns,
    /// CNI_CONTAINERID.
    pub container_id: String,
    /// CNI_IFNAME.
    pub ifname: String,
    /// Kubernetes namespace and pod name (CNI_ARGS).
    pub k8s: Option<(String, String)>,
    /// Extra CNI_ARGS.
    pub extra_args: String,
}

impl Pod {
    /// `/run/netns/<name>`.
    pub fn netns_path(&self) -> PathBuf {
        Path::new("/run/netns").join(self.ns.name())
    }

    fn cni_args(&self) -> String {
        let mut a = vec!["IgnoreUnknown=1".to_owned()];
        if let Some((ns, pod)) = &self.k8s {
            a.push(format!("K8S_POD_NAMESPACE={ns}"));
            a.push(format!("K8S_POD_NAME={pod}"));
            a.push(format!("K8S_POD_INFRA_CONTAINER_ID={}", self.container_id));
        }
        if !self.extra_args.is_empty() {
            a.push(self.extra_args.clone());
        }
        a.join(";")
    }
}

/// The test's cluster.
pub struct Cluster {
    /// Owns every namespace.
    pub tn: TestNet,
    /// The fabric namespace all node uplinks connect to.
    pub fab: Netns,
    /// Scratch directory (holds the store).
    pub dir: PathBuf,
    /// `sqlite://...` shared by every node.
    pub store_url: String,
    rt: tokio::runtime::Runtime,
    nodes: std::sync::atomic::AtomicU32,
}

/// Where the plugins are: ours (cargo's bin dir) and Debian's.
pub fn cni_path() -> String {
    let ours = Path::new(env!("CARGO_BIN_EXE_tabby"))
        .parent()
        .unwrap()
        .to_path_buf();
    format!("{}:/usr/lib/cni", ours.display())
}

impl Cluster {
    /// A cluster with an empty store.
    pub fn new() -> Cluster {
        tabby_testnet::require_root();
        let tn = TestNet::new();
        let fab = tn.netns("fab").expect("fabric netns");
        fab.enable_forwarding().unwrap();
        let dir = tn.temp_dir("cni").expect("temp dir");
        let store_url = format!("sqlite://{}/store.db", dir.display());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        Cluster {
            tn,
            fab,
            dir,
            store_url,
            rt,
            nodes: 0.into(),
        }
    }

    /// Runs a future on the test's runtime.
    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    /// A client of the shared store.
    pub fn client(&self) -> Client {
        self.block_on(async {
            let url = tabby_store::StoreUrl::parse(&self.store_url).unwrap();
            Client::new(tabby_store::open(&url).await.unwrap())
        })
    }

    /// Creates an IPPool.
    pub fn pool(&self, name: &str, cidr: &str, block_size: i32) {
        let client = self.client();
        let spec = IPPoolSpec {
            cidr: Some(cidr.parse::<IpNet>().unwrap()),
            block_size: Some(block_size),
            ..IPPoolSpec::default()
        };
        self.block_on(client.create(Resource::with_spec(name, None, Spec::IPPool(spec))))
            .unwrap();
    }

    /// A node namespace `name` with `eth0` (198.18.0.<n>/24, 2001:db8:ff::<n>/64)
    /// to the fabric, default routes through it, and forwarding on.
    pub fn node(&self, name: &str) -> Node {
        let n = self.nodes.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        let ns = self.tn.netns(name).expect("node netns");
        let (a4, a6) = (format!("198.18.0.{n}/24"), format!("2001:db8:ff::{n}/64"));
        self.tn
            .veth(
                End::new(&ns, "eth0", &[&a4, &a6]),
                End::new(&self.fab, &format!("n{n}"), &[]),
            )
            .unwrap();
        if n == 1 {
            self.fab.add_addr("n1", "198.18.0.254/24").unwrap();
            self.fab.add_addr("n1", "2001:db8:ff::fe/64").unwrap();
        }
        ns.add_route("default", "198.18.0.254").unwrap();
        ns.add_route("default", "2001:db8:ff::fe").unwrap();
        ns.enable_forwarding().unwrap();
        Node {
            name: name.to_owned(),
            ns,
        }
    }

    /// A Kubernetes pod `<k8s_ns>/<name>` with a fresh namespace.
    pub fn pod(&self, name: &str, k8s_ns: &str) -> Pod {
        let ns = self.tn.netns(&format!("pod-{name}")).expect("pod netns");
        Pod {
            ns,
            container_id: format!("cid{name}{}", std::process::id()),
            ifname: "eth0".into(),
            k8s: Some((k8s_ns.to_owned(), name.to_owned())),
            extra_args: String::new(),
        }
    }

    /// The standard `tabby` config for `node`.
    pub fn conf(&self, node: &Node) -> Value {
        json!({
            "cniVersion": "1.1.0",
            "name": NETWORK,
            "type": "tabby",
            "nodename": node.name,
            "datastore": self.store_url,
            "log_level": "info",
            "ipam": {"type": "tabby-ipam"},
        })
    }

    /// Runs `plugin` in `node`'s namespace with `command`.
    pub fn exec(
        &self,
        node: &Node,
        plugin: &str,
        command: &str,
        pod: Option<&Pod>,
        conf: &Value,
    ) -> Call {
        self.exec_raw(
            node,
            plugin,
            command,
            pod,
            &serde_json::to_vec(conf).unwrap(),
            &[],
        )
    }

    /// Like [`Cluster::exec`] with raw stdin and `(variable, value)` overrides
    /// (`None` unsets the variable).
    pub fn exec_raw(
        &self,
        node: &Node,
        plugin: &str,
        command: &str,
        pod: Option<&Pod>,
        stdin: &[u8],
        overrides: &[(&str, Option<&str>)],
    ) -> Call {
        let bin = cni_path()
            .split(':')
            .map(|d| Path::new(d).join(plugin))
            .find(|p| p.exists())
            .unwrap_or_else(|| panic!("plugin {plugin} not found"));
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", node.ns.name()])
            .arg(&bin)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("CNI_COMMAND", command)
            .env("CNI_PATH", cni_path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(p) = pod {
            cmd.env("CNI_CONTAINERID", &p.container_id)
                .env("CNI_IFNAME", &p.ifname)
                .env("CNI_ARGS", p.cni_args());
            if p.netns_path().exists() {
                cmd.env("CNI_NETNS", p.netns_path());
            }
        }
        for (k, v) in overrides {
            match v {
                Some(v) => cmd.env(k, v),
                None => cmd.env_remove(k),
            };
        }
        let mut child = cmd.spawn().expect("spawn plugin");
        child.stdin.take().unwrap().write_all(stdin).unwrap();
        let out = child.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        Call {
            rc: out.status.code().unwrap_or(-1),
            out: if stdout.trim().is_empty() {
                Value::Null
            } else {
                serde_json::from_str(&stdout)
                    .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {stdout}"))
            },
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// ADD through `tabby`.
    pub fn add(&self, node: &Node, pod: &Pod, conf: &Value) -> Call {
        self.exec(node, "tabby", "ADD", Some(pod), conf)
    }

    /// DEL through `tabby` (with `prevResult` when given).
    pub fn del(&self, node: &Node, pod: &Pod, conf: &Value) -> Call {
        self.exec(node, "tabby", "DEL", Some(pod), conf)
    }

    /// CHECK with `prev` as prevResult.
    pub fn check(&self, node: &Node, pod: &Pod, conf: &Value, prev: &Value) -> Call {
        let mut c = conf.clone();
        c["prevResult"] = prev.clone();
        self.exec(node, "tabby", "CHECK", Some(pod), &c)
    }

    /// Runs a conflist's ADD: each plugin in order, with the previous result as
    /// `prevResult` and the list's name and version (libcni's behaviour).
    pub fn add_chain(
        &self,
        node: &Node,
        pod: &Pod,
        name: &str,
        version: &str,
        plugins: &[Value],
    ) -> Result<Value, (usize, Call)> {
        let mut prev: Option<Value> = None;
        for (i, p) in plugins.iter().enumerate() {
            let conf = chain_conf(name, version, p, prev.as_ref());
            let call = self.exec(node, p["type"].as_str().unwrap(), "ADD", Some(pod), &conf);
            if call.rc != 0 {
                return Err((i, call));
            }
            prev = Some(call.out);
        }
        Ok(prev.unwrap_or(Value::Null))
    }

    /// A conflist's DEL: plugins in reverse order, each with the cached result.
    pub fn del_chain(
        &self,
        node: &Node,
        pod: &Pod,
        name: &str,
        version: &str,
        plugins: &[Value],
        cached: &Value,
    ) -> Vec<Call> {
        plugins
            .iter()
            .rev()
            .map(|p| {
                let conf = chain_conf(name, version, p, Some(cached));
                self.exec(node, p["type"].as_str().unwrap(), "DEL", Some(pod), &conf)
            })
            .collect()
    }

    /// Every host interface whose name starts with `cali`.
    pub fn cali_links(&self, node: &Node) -> Vec<String> {
        let links = node.ns.ip_json(&["link", "show"]).unwrap();
        links
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|l| l["ifname"].as_str())
            .filter(|n| n.starts_with("cali"))
            .map(str::to_owned)
            .collect()
    }

    /// Routes to pod addresses (100.64.0.0/10, 2001:db8::/32 outside the uplink).
    pub fn pod_routes(&self, node: &Node) -> Vec<String> {
        let mut out = Vec::new();
        for fam in ["-4", "-6"] {
            let routes = node
                .ns
                .ip_json(&[fam, "route", "show", "table", "all"])
                .unwrap();
            for r in routes.as_array().unwrap() {
                let dst = r["dst"].as_str().unwrap_or_default();
                if dst.starts_with("100.")
                    || (dst.starts_with("2001:db8:") && !dst.starts_with("2001:db8:ff"))
                {
                    out.push(r.to_string());
                }
            }
        }
        out
    }

    /// (allocations, handles, endpoints) in the store.
    pub fn store_counts(&self) -> (usize, usize, usize) {
        let client = self.client();
        self.block_on(async {
            let ipam = tabby_client::ipam::ipam_for(&client);
            let allocs: usize = ipam
                .list_blocks(None)
                .await
                .unwrap()
                .iter()
                .map(|b| b.allocations().len())
                .sum();
            let handles = ipam.list_handles().await.unwrap().len();
            let weps = client
                .list(Kind::WorkloadEndpoint, None)
                .await
                .unwrap()
                .len();
            (allocs, handles, weps)
        })
    }

    /// Panics if anything of a pod is left on `nodes` or in the store.
    pub fn assert_clean(&self, nodes: &[&Node]) {
        for n in nodes {
            assert_eq!(
                self.cali_links(n),
                Vec::<String>::new(),
                "veths left on {}",
                n.name
            );
            assert_eq!(
                self.pod_routes(n),
                Vec::<String>::new(),
                "routes left on {}",
                n.name
            );
        }
        assert_eq!(
            self.store_counts(),
            (0, 0, 0),
            "(allocations, handles, endpoints) left"
        );
    }
}

fn chain_conf(name: &str, version: &str, plugin: &Value, prev: Option<&Value>) -> Value {
    let mut c = plugin.clone();
    c["name"] = name.into();
    c["cniVersion"] = version.into();
    if let Some(p) = prev {
        c["prevResult"] = p.clone();
    }
    c
}

/// The addresses of a result.
pub fn result_ips(r: &Value) -> Vec<String> {
    r["ips"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|i| i["address"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}
