//! A cluster of tabby-node agents in network namespaces for the agent's tests: nodes
//! on bridges (optionally two subnets behind a router), a shared datastore, and
//! workloads wired as the CNI plugin wires them (a pod netns with a veth, an IPAM
//! address, a WorkloadEndpoint in the store).

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ipnet::IpNet;
use tabby_api::endpoint::WorkloadEndpointSpec;
use tabby_api::{Resource, Spec};
use tabby_client::Client;
use tabby_dataplane::workload::{self, WorkloadSpec};
use tabby_dataplane::{NetnsFile, ProcSysctl, RtNetlink};
use tabby_ipam::assignments::AutoAssignArgs;
use tabby_testnet::netns::Netns;
use tabby_testnet::process::Process;
use tabby_testnet::testnet::{End, TestNet};

/// The agent binary under test.
pub const AGENT: &str = env!("CARGO_BIN_EXE_tabby-node");

/// One node of the cluster.
pub struct Node {
    /// Node name.
    pub name: String,
    /// Its namespace.
    pub ns: Netns,
    /// Its address on the fabric.
    pub ip: IpNet,
    /// The running agent.
    pub agent: Option<Process>,
    /// Control socket.
    pub socket: PathBuf,
    /// Extra agent flags.
    pub flags: Vec<String>,
}

/// A pod.
pub struct Workload {
    /// Name.
    pub name: String,
    /// Node index.
    pub node: usize,
    /// Its namespace.
    pub ns: Netns,
    /// Its address.
    pub ip: IpAddr,
    /// Its IPv6 address, when dual-stack.
    pub ip6: Option<IpAddr>,
}

/// The cluster.
pub struct Cluster {
    /// The test network (removes everything on drop).
    pub net: TestNet,
    /// Temp dir for the store, sockets and logs.
    pub dir: PathBuf,
    /// The store URL agents use.
    pub store: String,
    /// A client on the same store.
    pub client: Client,
    /// Nodes.
    pub nodes: Vec<Node>,
    /// Workloads.
    pub workloads: Vec<Workload>,
    /// The etcd cluster, for [`Store::Etcd`].
    pub etcd: Option<tabby_store::etcd_harness::EtcdCluster>,
    /// Host end of the veth into the fabric, for [`Store::Etcd`].
    host_veth: Option<String>,
    /// The nodes' bridge, for [`Layout::OneSubnet`] (to attach more hosts to it).
    pub fabric: Option<tabby_testnet::testnet::Segment>,
}

/// Which datastore the agents share.
pub enum Store {
    /// A SQLite file in the cluster's temp dir.
    Sqlite,
    /// A real one-member etcd, reachable from the node namespaces through a veth
    /// from the host into the fabric bridge (198.18.0.250).
    Etcd,
}

/// Where nodes sit.
pub enum Layout {
    /// All on one bridge, 198.18.0.0/24.
    OneSubnet,
    /// Split across 198.18.1.0/24 and 198.18.2.0/24, routed by a router namespace.
    TwoSubnets,
}

impl Cluster {
    /// Builds `n` nodes. The store is SQLite unless `store` is given.
    pub async fn new(label: &str, n: usize, layout: Layout, store: Store) -> Cluster {
        tabby_testnet::require_root();
        let net = TestNet::with_prefix(&format!("tn{label}{}", std::process::id() % 10000));
        let dir = net.temp_dir("node").unwrap();
        let mut nodes = Vec::new();
        let mut names = Vec::new();
        let mut fabric = None;
        for i in 0..n {
            names.push(format!("n{}", i + 1));
        }
        match layout {
            Layout::OneSubnet => {
                let mut ends = Vec::new();
                let mut made = Vec::new();
                for (i, name) in names.iter().enumerate() {
                    let ns = net.netns(name).unwrap();
                    let ip: IpNet = format!("198.18.0.{}/24", i + 1).parse().unwrap();
                    made.push((name.clone(), ns, ip));
                }
                let addrs: Vec<String> = made.iter().map(|m| m.2.to_string()).collect();
                let addr_refs: Vec<[&str; 1]> = addrs.iter().map(|a| [a.as_str()]).collect();
                for (m, a) in made.iter().zip(&addr_refs) {
                    ends.push(End::new(&m.1, "eth0", a));
                }
                fabric = Some(net.segment("fab", &ends).unwrap());
                for (name, ns, ip) in made {
                    // Hosts have a default route; proxy ARP for the pods' 169.254.1.1
                    // gateway answers only for addresses the host can route.
                    ns.ip(&["route", "add", "default", "via", "198.18.0.254"])
                        .unwrap();
                    nodes.push(Node::new(&dir, name, ns, ip));
                }
            }
            Layout::TwoSubnets => {
                let router = net.router("rtr").unwrap();
                let mut made = Vec::new();
                for (i, name) in names.iter().enumerate() {
                    let ns = net.netns(name).unwrap();
                    let subnet = 1 + (i % 2);
                    let ip: IpNet = format!("198.18.{subnet}.{}/24", 10 + i).parse().unwrap();
                    made.push((name.clone(), ns, ip, subnet));
                }
                for subnet in [1, 2] {
                    let gw = format!("198.18.{subnet}.1/24");
                    let addrs: Vec<String> = made
                        .iter()
                        .filter(|m| m.3 == subnet)
                        .map(|m| m.2.to_string())
                        .collect();
                    let addr_refs: Vec<[&str; 1]> = addrs.iter().map(|a| [a.as_str()]).collect();
                    let gw_ref = [gw.as_str()];
                    let mut ends = vec![End::new(
                        &router,
                        if subnet == 1 { "eth1" } else { "eth2" },
                        &gw_ref,
                    )];
                    for (m, a) in made.iter().filter(|m| m.3 == subnet).zip(&addr_refs) {
                        ends.push(End::new(&m.1, "eth0", a));
                    }
                    net.segment(&format!("s{subnet}"), &ends).unwrap();
                }
                for (name, ns, ip, subnet) in made {
                    ns.ip(&[
                        "route",
                        "add",
                        "default",
                        "via",
                        &format!("198.18.{subnet}.1"),
                    ])
                    .unwrap();
                    nodes.push(Node::new(&dir, name, ns, ip));
                }
            }
        }
        let (store, etcd, host_veth) = match store {
            Store::Sqlite => (dir.join("store.db").display().to_string(), None, None),
            Store::Etcd => {
                let host = format!("tnh{}", std::process::id() % 100000);
                let fab = net.fabric().unwrap();
                let _ = std::process::Command::new("ip")
                    .args(["link", "del", &host])
                    .status();
                let ok = std::process::Command::new("ip")
                    .args([
                        "link",
                        "add",
                        &host,
                        "type",
                        "veth",
                        "peer",
                        "name",
                        "hostp",
                        "netns",
                        fab.name(),
                    ])
                    .status()
                    .unwrap()
                    .success();
                assert!(ok, "cannot make the host veth {host}");
                fab.ip(&["link", "set", "hostp", "master", "br-fab", "up"])
                    .unwrap();
                for args in [
                    vec!["addr", "add", "198.18.0.250/24", "dev", host.as_str()],
                    vec!["link", "set", host.as_str(), "up"],
                ] {
                    assert!(
                        std::process::Command::new("ip")
                            .args(&args)
                            .status()
                            .unwrap()
                            .success()
                    );
                }
                let host_ip: IpAddr = "198.18.0.250".parse().unwrap();
                let options = tabby_store::etcd_harness::ClusterOptions {
                    extra_client_host: Some(host_ip),
                    ..Default::default()
                };
                let etcd = tabby_store::etcd_harness::EtcdCluster::start_with(1, options)
                    .await
                    .unwrap();
                (etcd.url_on(host_ip).to_string(), Some(etcd), Some(host))
            }
        };
        let url = tabby_store::StoreUrl::parse(&store).unwrap();
        let client = Client::new(tabby_store::open(&url).await.unwrap());
        Cluster {
            net,
            dir,
            store,
            client,
            nodes,
            workloads: Vec::new(),
            etcd,
            host_veth,
            fabric,
        }
    }

    /// Applies YAML resources to the store.
    pub async fn apply(&self, yaml: &str) {
        for r in tabby_api::load::parse_documents(yaml, "test.yaml").unwrap() {
            self.client.apply(r).await.unwrap();
        }
    }

    /// Starts node `i`'s agent.
    pub fn start(&mut self, i: usize) {
        let n = &mut self.nodes[i];
        let ip = n.ip.to_string();
        let socket = n.socket.display().to_string();
        let state = self
            .dir
            .join(format!("{}-state", n.name))
            .display()
            .to_string();
        let mut argv: Vec<String> = [
            AGENT,
            "--node-name",
            &n.name,
            "--store",
            &self.store,
            "--ip",
            &ip,
            "--control-socket",
            &socket,
            "--default-ipv4-pool-cidr",
            "none",
            "--bgp-connect-retry",
            "1",
            "--resync-secs",
            "5",
            "--state-dir",
            &state,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        argv.extend(n.flags.iter().cloned());
        let refs: Vec<&str> = argv.iter().map(String::as_str).collect();
        let log = self.dir.join(format!("{}.log", n.name));
        n.agent = Some(Process::spawn(&n.ns, &refs, &log).unwrap());
    }

    /// Starts every agent.
    pub fn start_all(&mut self) {
        for i in 0..self.nodes.len() {
            self.start(i);
        }
    }

    /// Stops node `i`'s agent with SIGTERM (routes stay).
    pub fn stop(&mut self, i: usize) {
        if let Some(mut p) = self.nodes[i].agent.take() {
            p.stop(Duration::from_secs(10)).unwrap();
        }
    }

    /// The last lines of every agent's log, for failure messages.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for n in &self.nodes {
            let path = self.dir.join(format!("{}.log", n.name));
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(25)..];
            out.push_str(&format!("--- {} ---\n{}\n", n.name, tail.join("\n")));
        }
        out
    }

    /// Adds a pod on node `node`: an address from IPAM, a veth wired as the CNI plugin
    /// does, and its WorkloadEndpoint.
    pub async fn add_workload(&mut self, node: usize, name: &str) -> usize {
        self.add_workload_with(node, name, false).await
    }

    /// Adds a pod with an IPv4 and an IPv6 address.
    pub async fn add_dual_stack_workload(&mut self, node: usize, name: &str) -> usize {
        self.add_workload_with(node, name, true).await
    }

    async fn add_workload_with(&mut self, node: usize, name: &str, v6: bool) -> usize {
        let i = self.wire_workload(node, name, v6).await;
        self.name_workload(i).await;
        i
    }

    /// Adds a pod's veth and address (as [`Cluster::add_workload`]) without its
    /// WorkloadEndpoint: an interface no endpoint names.
    pub async fn add_unnamed_workload(&mut self, node: usize, name: &str) -> usize {
        self.wire_workload(node, name, false).await
    }

    /// Writes the WorkloadEndpoint of workload `i` (made by
    /// [`Cluster::add_unnamed_workload`]).
    pub async fn name_workload(&self, i: usize) {
        let w = &self.workloads[i];
        let node_name = self.nodes[w.node].name.clone();
        let name = w.name.clone();
        let wep = WorkloadEndpointSpec {
            orchestrator: Some("k8s".into()),
            node: Some(node_name.clone()),
            pod: Some(name.clone()),
            endpoint: Some("eth0".into()),
            ip_networks: std::iter::once(w.ip)
                .chain(w.ip6)
                .map(IpNet::from)
                .collect(),
            interface_name: Some(format!("cali{name}")),
            // As the CNI plugin sets it: the namespace's allow-all profile.
            profiles: vec!["kns.default".into()],
            ..Default::default()
        };
        let r = Resource::with_spec(
            &format!("{node_name}-k8s-{name}-eth0"),
            Some("default"),
            Spec::WorkloadEndpoint(Box::new(wep)),
        );
        self.client.create(r).await.unwrap();
    }

    async fn wire_workload(&mut self, node: usize, name: &str, v6: bool) -> usize {
        let node_name = self.nodes[node].name.clone();
        let ns = self.net.netns(&format!("p{name}")).unwrap();
        let ipam = tabby_client::ipam::ipam_for(&self.client);
        let handle = format!("tabby-test.{name}");
        let args = AutoAssignArgs::new(node_name.clone(), 1, usize::from(v6)).with_handle(handle);
        let res = ipam.auto_assign(&args).await.map_err(|e| e.error).unwrap();
        let ip = res.v4.unwrap().ips[0].addr();
        let ip6 = res.v6.map(|a| a.ips[0].addr());
        let host_path = format!("/run/netns/{}", self.nodes[node].ns.name());
        let pod_path = PathBuf::from(format!("/run/netns/{}", ns.name()));
        let host_nl = RtNetlink::in_netns(&host_path).unwrap();
        let pod_nl = RtNetlink::in_netns(&pod_path).unwrap();
        let spec = WorkloadSpec {
            host_ifname: format!("cali{name}"),
            cont_ifname: "eth0".into(),
            netns: pod_path.clone(),
            addresses: std::iter::once(ip).chain(ip6).collect(),
            mtu: 1400,
            allow_ip_forwarding: false,
        };
        workload::setup(
            &host_nl,
            &ProcSysctl::in_netns(&host_path),
            &pod_nl,
            &ProcSysctl::in_netns(&pod_path),
            &spec,
        )
        .await
        .unwrap();
        self.workloads.push(Workload {
            name: name.into(),
            node,
            ns,
            ip,
            ip6,
        });
        self.workloads.len() - 1
    }

    /// Adds a pod on node `node` through the real `tabby` CNI plugin (run in the
    /// node's namespace as a container runtime would), returning its workload index.
    pub fn add_cni_pod(&mut self, node: usize, name: &str) -> usize {
        let ns = self.net.netns(&format!("p{name}")).unwrap();
        let out = self.cni(node, "ADD", name, &ns);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap_or_else(|e| {
            panic!(
                "CNI ADD printed no JSON ({e}): {}",
                String::from_utf8_lossy(&out)
            )
        });
        let ip: IpNet = v["ips"][0]["address"]
            .as_str()
            .unwrap_or_else(|| panic!("CNI ADD failed: {v}"))
            .parse()
            .unwrap();
        self.workloads.push(Workload {
            name: name.into(),
            node,
            ns,
            ip: ip.addr(),
            ip6: None,
        });
        self.workloads.len() - 1
    }

    /// Removes pod `i` through the CNI plugin (DEL) and forgets it.
    pub fn del_cni_pod(&mut self, i: usize) {
        let w = self.workloads.remove(i);
        let out = self.cni(w.node, "DEL", &w.name, &w.ns);
        assert!(out.is_empty(), "CNI DEL: {}", String::from_utf8_lossy(&out));
    }

    fn cni(&self, node: usize, command: &str, pod: &str, ns: &Netns) -> Vec<u8> {
        let bin = cni_plugin();
        let conf = serde_json::json!({
            "cniVersion": "1.0.0",
            "name": "k8s-pod-network",
            "type": "tabby",
            "nodename": self.nodes[node].name,
            "datastore": self.store,
            "mtu": 1400,
            "ipam": {"type": "tabby-ipam"},
        });
        let mut child = std::process::Command::new("ip")
            .args(["netns", "exec", self.nodes[node].ns.name()])
            .arg(&bin)
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", format!("cid-{pod}"))
            .env("CNI_NETNS", format!("/run/netns/{}", ns.name()))
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", bin.parent().unwrap())
            .env(
                "CNI_ARGS",
                format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={pod}"),
            )
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(conf.to_string().as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        if !out.status.success() {
            panic!(
                "CNI {command} for {pod} failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        out.stdout
    }

    /// Gives every node an IPv6 address (2001:db8::N/64 on the fabric) and tells its
    /// agent about it.
    pub fn enable_ipv6(&mut self) {
        for (i, n) in self.nodes.iter_mut().enumerate() {
            let addr = format!("2001:db8::{}/64", i + 1);
            n.ns.ip(&["-6", "addr", "add", &addr, "dev", "eth0", "nodad"])
                .unwrap();
            n.flags.extend(["--ip6".to_string(), addr]);
        }
    }

    /// Waits until every dual-stack workload pings every other one over IPv6.
    pub fn wait_full_reachability_v6(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        for a in self.workloads.iter().filter(|w| w.ip6.is_some()) {
            for b in self.workloads.iter().filter(|w| w.ip6.is_some()) {
                if a.name == b.name {
                    continue;
                }
                let to = b.ip6.unwrap().to_string();
                while !a.ns.ping(&to, 1) {
                    if Instant::now() > deadline {
                        let v6 = self
                            .nodes
                            .iter()
                            .map(|n| n.ns.ip(&["-6", "route", "show"]).unwrap_or_default())
                            .collect::<Vec<_>>()
                            .join("\n---\n");
                        panic!(
                            "{} cannot reach {to} over IPv6\n{v6}\n{}",
                            a.name,
                            self.logs()
                        );
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        }
    }

    /// Waits until every workload pings every other one.
    pub fn wait_full_reachability(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        for a in &self.workloads {
            for b in &self.workloads {
                if a.name == b.name {
                    continue;
                }
                loop {
                    if a.ns.ping(&b.ip.to_string(), 1) {
                        break;
                    }
                    if Instant::now() > deadline {
                        if let Ok(secs) = std::env::var("TABBY_TEST_HOLD_SECS") {
                            // Leave the network up for a person to look at.
                            std::thread::sleep(Duration::from_secs(secs.parse().unwrap_or(60)));
                        }
                        panic!(
                            "{} ({}) cannot reach {} ({})\n{}\n{}",
                            a.name,
                            a.ip,
                            b.name,
                            b.ip,
                            self.routes_dump(),
                            self.logs()
                        );
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        }
    }

    /// `ip route` of every node, for failure messages.
    pub fn routes_dump(&self) -> String {
        self.nodes
            .iter()
            .map(|n| {
                format!(
                    "--- {} routes ---\n{}",
                    n.name,
                    n.ns.ip(&["route", "show"]).unwrap_or_default()
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The node's control socket answer.
    pub async fn status(&self, i: usize) -> Option<tabby_node::status::StatusReport> {
        tabby_node::status::query(&self.nodes[i].socket).await.ok()
    }

    /// Waits until node `i` has `n` established peers.
    pub async fn wait_established(&self, i: usize, n: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.status(i).await {
                let up = s.peers.iter().filter(|p| p.state == "Established").count();
                if up >= n {
                    return;
                }
            }
            if Instant::now() > deadline {
                panic!(
                    "node {} does not have {n} established peers: {:?}\n{}",
                    self.nodes[i].name,
                    self.status(i).await,
                    self.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Node {
    fn new(dir: &Path, name: String, ns: Netns, ip: IpNet) -> Node {
        Node {
            socket: dir.join(format!("{name}.ctl")),
            name,
            ns,
            ip,
            agent: None,
            flags: Vec::new(),
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            if let Some(mut p) = n.agent.take() {
                let _ = p.kill();
            }
        }
        if let Some(mut e) = self.etcd.take() {
            e.kill_all();
        }
        if let Some(h) = &self.host_veth {
            let _ = std::process::Command::new("ip")
                .args(["link", "del", h])
                .status();
        }
    }
}

/// The `tabby` CNI plugin next to the agent binary (a workspace test run builds every
/// binary first); built on demand when it is missing.
pub fn cni_plugin() -> PathBuf {
    let dir = Path::new(AGENT).parent().unwrap().to_path_buf();
    let bin = dir.join("tabby");
    if !bin.exists() || !dir.join("tabby-ipam").exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let ok = std::process::Command::new(cargo)
            .args(["build", "-p", "tabby-cni", "--bins"])
            .status()
            .unwrap()
            .success();
        assert!(ok, "cannot build the CNI plugin (cargo build -p tabby-cni)");
    }
    bin
}

/// TCP: a listener in `server`'s namespace, a connection from `client`'s, one
/// message each way.
pub fn tcp_exchange(server: &Workload, client: &Workload, port: u16) -> Result<(), String> {
    tcp_between(server.ns.name(), server.ip, client.ns.name(), port)
}

/// [`tcp_exchange`] between any two namespaces: a listener on `ip`:`port` in
/// `server_ns`, a connection from `client_ns`. The listener gives up after a
/// deadline, so a failed (or denied) attempt leaves no socket behind and the port
/// can be tried again.
pub fn tcp_between(server_ns: &str, ip: IpAddr, client_ns: &str, port: u16) -> Result<(), String> {
    let err = |what: &'static str| {
        move |e: std::io::Error| tabby_dataplane::Error::Netns {
            path: what.into(),
            reason: e.to_string(),
        }
    };
    let sns = NetnsFile::open(format!("/run/netns/{server_ns}")).map_err(|e| e.to_string())?;
    let cns = NetnsFile::open(format!("/run/netns/{client_ns}")).map_err(|e| e.to_string())?;
    let addr = SocketAddr::new(ip, port);
    let listener: TcpListener = sns
        .run(move || TcpListener::bind(addr).map_err(err("bind")))
        .map_err(|e| e.to_string())?;
    listener.set_nonblocking(true).map_err(|e| e.to_string())?;
    let server_thread = std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(4);
        while Instant::now() < deadline {
            match listener.accept() {
                Ok((mut s, _)) => {
                    s.set_nonblocking(false).ok();
                    s.set_read_timeout(Some(Duration::from_secs(2))).ok();
                    let mut buf = [0u8; 4];
                    if s.read_exact(&mut buf).is_ok() {
                        let _ = s.write_all(&buf);
                    }
                    return;
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    });
    let result = cns
        .run(move || {
            TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(err("connect"))
        })
        .map_err(|e| e.to_string())
        .and_then(|mut stream| {
            stream.set_read_timeout(Some(Duration::from_secs(2))).ok();
            stream.write_all(b"ping").map_err(|e| e.to_string())?;
            let mut back = [0u8; 4];
            stream.read_exact(&mut back).map_err(|e| e.to_string())?;
            if &back == b"ping" {
                Ok(())
            } else {
                Err(format!("echo was {back:?}"))
            }
        });
    let _ = server_thread.join();
    result
}
