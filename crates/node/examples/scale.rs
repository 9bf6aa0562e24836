//! Agent scale benchmark (issue 15), driven by `bench/scale/run.sh`.
//!
//! `scale gen --store URL [--nodes 5000] [--endpoints 100000]` writes the cluster
//! shape of the issue into an empty store: NODES nodes `node-0000..` (address
//! 198.18.(n/250).(n%250+2)/15, one /26 block each in pool 100.64.0.0/12 with
//! `vxlanMode: Always`, its affinity, the VXLAN tunnel address at ordinal 0),
//! ENDPOINTS workload endpoints over 1,000 namespaces (endpoint i on node
//! i % NODES, at ordinal i / NODES + 1 of that node's block, with its IPAM handle and
//! allocation), 10 NetworkPolicies per namespace, 10 GlobalNetworkPolicies in a
//! `platform` tier and a `kns.<ns>` profile per namespace (the shape of
//! `crates/policy/examples/engine_bench.rs`).
//!
//! `scale bench --store URL --agent LABEL=BIN ...` runs AGENTS agents of each build
//! (one build at a time, node-0000.. each in its own network namespace, `--no-bgp`),
//! and measures: start-up from an empty namespace to converged (every remote block
//! routed over the VXLAN device and the `tabby` nftables table present), idle CPU
//! and RSS, CPU per unrelated write while a writer churns the store at each rate
//! (label flips, pods added and deleted on nodes no agent runs), and pod-add
//! latency on node-0000: from the WorkloadEndpoint's store write to its route in
//! the kernel and its interface in the nftables ruleset. Prints Markdown.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::Ipv4Addr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use ipnet::{IpNet, Ipv4Net};
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use tabby_api::Kind;
use tabby_ipam::{AffinityState, AllocationAttribute, AllocationBlock, BlockAffinity, IpamHandle};
use tabby_store::{Datastore, StoreUrl, keys};

/// Namespaces of the generated cluster (`--namespaces`, 1,000 by default).
static NAMESPACES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(1000);

fn namespaces() -> usize {
    NAMESPACES.load(std::sync::atomic::Ordering::Relaxed)
}
const BLOCK: u32 = 64;

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Write the cluster into an empty store.
    Gen {
        #[arg(long)]
        store: String,
        #[arg(long, default_value_t = 5000)]
        nodes: usize,
        #[arg(long, default_value_t = 100_000)]
        endpoints: usize,
        /// Namespaces (each with 10 NetworkPolicies and a profile).
        #[arg(long, default_value_t = 1000)]
        namespaces: usize,
    },
    /// Churn a generated store (as `bench` does) for profiling an agent by hand.
    Churn {
        #[arg(long)]
        store: String,
        #[arg(long, default_value_t = 5000)]
        nodes: usize,
        #[arg(long, default_value_t = 100_000)]
        endpoints: usize,
        /// Nodes 0..AGENTS are left alone.
        #[arg(long, default_value_t = 3)]
        agents: usize,
        #[arg(long, default_value_t = 10)]
        rate: u32,
        #[arg(long, default_value_t = 20)]
        secs: u64,
    },
    /// Run agents against a generated store and measure them.
    Bench(BenchArgs),
}

#[derive(clap::Args, Clone)]
struct BenchArgs {
    #[arg(long)]
    store: String,
    /// LABEL=PATH of a tabby-node build; repeat for a side-by-side run.
    #[arg(long = "agent", required = true)]
    agents: Vec<String>,
    /// Agents per build (node-0000 ..).
    #[arg(long, default_value_t = 3)]
    count: usize,
    /// Nodes the store was generated with.
    #[arg(long, default_value_t = 5000)]
    nodes: usize,
    /// Namespaces the store was generated with.
    #[arg(long, default_value_t = 1000)]
    namespaces: usize,
    /// Workload endpoints the store was generated with.
    #[arg(long, default_value_t = 100_000)]
    endpoints: usize,
    /// Churn rates, writes per second.
    #[arg(long, value_delimiter = ',', default_value = "10,100")]
    rates: Vec<u32>,
    #[arg(long, default_value_t = 20)]
    churn_secs: u64,
    #[arg(long, default_value_t = 20)]
    idle_secs: u64,
    /// Pods added on node-0000 for the latency figure (idle, then under 10 writes/s).
    #[arg(long, default_value_t = 40)]
    samples: usize,
    /// Network namespace prefix of the agents' namespaces.
    #[arg(long, default_value = "tsc")]
    prefix: String,
    /// The namespace holding bridge `br0` the agents attach to (made by run.sh, which
    /// runs this bench inside it so that an etcd listening there is reachable).
    #[arg(long, default_value = "tsc-fab")]
    fabric: String,
    /// Start-up deadline, seconds.
    #[arg(long, default_value_t = 300)]
    startup_timeout: u64,
    /// Where agents keep state and logs.
    #[arg(long, default_value = "/tmp/tabby-bench-scale")]
    work: String,
}

fn ns_name(n: usize) -> String {
    format!("ns-{n:03}")
}

fn node_name(n: usize) -> String {
    format!("node-{n:04}")
}

fn node_addr(n: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, (n / 250) as u8, (n % 250 + 2) as u8)
}

fn block(n: usize) -> Ipv4Net {
    let base = u32::from(Ipv4Addr::new(100, 64, 0, 0)) + n as u32 * BLOCK;
    Ipv4Net::new(Ipv4Addr::from(base), 26).expect("block")
}

fn addr_in(n: usize, ordinal: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(block(n).network()) + ordinal as u32)
}

fn tier_of(app: usize) -> &'static str {
    match app {
        0..=3 => "frontend",
        4..=6 => "backend",
        _ => "db",
    }
}

fn iface(tag: &str, i: usize) -> String {
    format!("cali{tag}{i:010x}")
}

/// Workload endpoint `i` (100 per namespace, 10 apps x 10 replicas) on `node`.
fn workload(i: usize, node: usize, ip: Ipv4Addr, ifname: &str, version: &str) -> (String, Value) {
    let (n, app, rep) = (i / 100 % namespaces(), (i % 100) / 10, i % 10);
    let ns = ns_name(n);
    let name = format!("{}-k8s-app--{app}--{rep}--{i}-eth0", node_name(node));
    let v = json!({"apiVersion": "projectcalico.org/v3", "kind": "WorkloadEndpoint",
        "metadata": {"name": name, "namespace": ns,
            "labels": {"app": format!("app-{app}"), "tier": tier_of(app), "version": version,
                       "projectcalico.org/namespace": ns, "projectcalico.org/orchestrator": "k8s"}},
        "spec": {"orchestrator": "k8s", "node": node_name(node), "pod": format!("app-{app}-{rep}-{i}"),
            "endpoint": "eth0", "interfaceName": ifname, "containerID": format!("c{i:012x}"),
            "ipNetworks": [format!("{ip}/32")], "profiles": [format!("kns.{ns}")],
            "ports": [{"name": "http", "protocol": "TCP", "port": 8080}]}});
    (
        tabby_client::key_of(Kind::WorkloadEndpoint, Some(&ns), &name),
        v,
    )
}

fn handle_id(i: usize) -> String {
    format!("k8s-pod-network.c{i:012x}")
}

fn resources() -> Vec<Value> {
    let mut out = vec![
        json!({"apiVersion": "projectcalico.org/v3", "kind": "IPPool", "metadata": {"name": "pool"},
        "spec": {"cidr": "100.64.0.0/12", "blockSize": 26, "vxlanMode": "Always", "ipipMode": "Never",
                 "natOutgoing": true}}),
        json!({"apiVersion": "projectcalico.org/v3", "kind": "Tier", "metadata": {"name": "platform"},
        "spec": {"order": 50, "defaultAction": "Pass"}}),
    ];
    let globals = [
        json!({"selector": "all()", "types": ["Egress"], "egress": [{"action": "Allow", "protocol": "UDP",
            "destination": {"selector": "k8s-app == 'kube-dns'", "namespaceSelector": "all()", "ports": [53]}}]}),
        json!({"selector": "all()", "types": ["Egress"], "egress": [{"action": "Deny",
            "destination": {"nets": ["169.254.169.254/32"]}}]}),
        json!({"selector": "tier == 'db'", "ingress": [{"action": "Allow", "protocol": "TCP",
            "source": {"selector": "tier == 'backend'"}, "destination": {"ports": [5432]}}]}),
        json!({"selector": "tier == 'frontend'", "ingress": [{"action": "Allow", "protocol": "TCP",
            "source": {"nets": ["0.0.0.0/0"]}, "destination": {"ports": [443]}}]}),
        json!({"selector": "tier == 'backend'", "ingress": [{"action": "Allow", "protocol": "TCP",
            "source": {"selector": "tier == 'frontend'", "namespaceSelector": "team == 'team-1'"},
            "destination": {"ports": ["http"]}}]}),
        json!({"selector": "version == 'v2'", "ingress": [{"action": "Log"}, {"action": "Pass"}]}),
        json!({"selector": "all()", "ingress": [{"action": "Allow", "protocol": "TCP",
            "source": {"selector": "app == 'prometheus'", "namespaceSelector": "team == 'team-0'"},
            "destination": {"ports": [9090]}}]}),
        json!({"selector": "app == 'app-9'", "types": ["Egress"], "egress": [{"action": "Allow", "protocol": "TCP",
            "destination": {"nets": ["100.64.0.0/12"], "ports": [5432, 6379]}}]}),
        json!({"selector": "all()", "ingress": [{"action": "Deny", "source": {"nets": ["198.19.255.0/24"]}}]}),
        json!({"selector": "app in {'app-0', 'app-1'}", "ingress": [{"action": "Allow", "protocol": "ICMP"}]}),
    ];
    for (k, spec) in globals.into_iter().enumerate() {
        let mut spec = spec;
        spec["tier"] = json!("platform");
        spec["order"] = json!(10 + k);
        out.push(
            json!({"apiVersion": "projectcalico.org/v3", "kind": "GlobalNetworkPolicy",
            "metadata": {"name": format!("platform.g{k}")}, "spec": spec}),
        );
    }
    for n in 0..namespaces() {
        let ns = ns_name(n);
        out.push(json!({"apiVersion": "projectcalico.org/v3", "kind": "Profile",
            "metadata": {"name": format!("kns.{ns}")},
            "spec": {"labelsToApply": {"pcns.projectcalico.org/name": ns,
                    "pcns.kubernetes.io/metadata.name": ns, "pcns.team": format!("team-{}", n % 10)},
                "ingress": [{"action": "Allow"}], "egress": [{"action": "Allow"}]}}));
        for k in 0..10 {
            let mut spec = json!({"order": 100 + k, "selector": format!("app == 'app-{k}'"),
                "ingress": [{"action": "Allow", "protocol": "TCP",
                    "source": {"selector": format!("app == 'app-{}'", (k + 1) % 10)},
                    "destination": {"ports": [8080]}}]});
            if k % 3 == 0 {
                spec["types"] = json!(["Ingress", "Egress"]);
                spec["egress"] = json!([{"action": "Allow", "protocol": "TCP",
                    "destination": {"namespaceSelector":
                        format!("kubernetes.io/metadata.name == '{}'", ns_name((n + 1) % namespaces())),
                        "ports": [443]}}]);
            }
            out.push(
                json!({"apiVersion": "projectcalico.org/v3", "kind": "NetworkPolicy",
                "metadata": {"name": format!("allow-app-{k}"), "namespace": ns}, "spec": spec}),
            );
        }
    }
    out
}

fn resource_key(v: &Value) -> String {
    let name = v["kind"].as_str().unwrap();
    let kind = *Kind::all().iter().find(|k| k.name() == name).expect("kind");
    tabby_client::key_of(
        kind,
        v["metadata"]["namespace"].as_str(),
        v["metadata"]["name"].as_str().unwrap(),
    )
}

async fn write_all(store: &Arc<dyn Datastore>, writes: Vec<(String, Vec<u8>)>) -> Result<()> {
    let total = writes.len();
    let started = Instant::now();
    for (i, chunk) in writes.chunks(256).enumerate() {
        let futs = chunk.iter().map(|(k, v)| store.create(k, v));
        for (r, (k, _)) in futures::future::join_all(futs).await.into_iter().zip(chunk) {
            r.with_context(|| format!("create {k}"))?;
        }
        if i % 100 == 0 {
            eprintln!(
                "  {}/{total} written ({:.0}s)",
                ((i + 1) * 256).min(total),
                started.elapsed().as_secs_f64()
            );
        }
    }
    Ok(())
}

async fn generate(store: &str, nodes: usize, endpoints: usize) -> Result<()> {
    let store = tabby_store::open(&StoreUrl::parse(store)?).await?;
    if !store.list("/").await?.kvs.is_empty() {
        bail!("--store: the store is not empty");
    }
    let mut writes: Vec<(String, Vec<u8>)> = Vec::new();
    for v in resources() {
        writes.push((resource_key(&v), serde_json::to_vec(&v)?));
    }
    let mut blocks: Vec<AllocationBlock> = Vec::new();
    for n in 0..nodes {
        let name = node_name(n);
        let node = json!({"apiVersion": "projectcalico.org/v3", "kind": "Node",
            "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, "rack": format!("r{}", n / 40)}},
            "spec": {"bgp": {"ipv4Address": format!("{}/15", node_addr(n))},
                     "ipv4VXLANTunnelAddr": addr_in(n, 0).to_string()}});
        writes.push((
            tabby_client::key_of(Kind::Node, None, &name),
            serde_json::to_vec(&node)?,
        ));
        let mut b = AllocationBlock::new(IpNet::V4(block(n)), 0)?;
        b.affinity = Some(format!("host:{name}"));
        assign(&mut b, 0, &format!("vxlan-tunnel-addr-{name}"), &name);
        blocks.push(b);
        writes.push((
            keys::ipam_affinity_key(&name, &block(n).to_string(), false),
            serde_json::to_vec(&BlockAffinity::new(AffinityState::Confirmed))?,
        ));
        let mut h = IpamHandle::new(format!("vxlan-tunnel-addr-{name}"));
        h.increment(&IpNet::V4(block(n)), 1);
        writes.push((keys::ipam_handle_key(&h.handle_id), serde_json::to_vec(&h)?));
    }
    for i in 0..endpoints {
        let (node, ord) = (i % nodes, i / nodes + 1);
        let ip = addr_in(node, ord);
        let version = if i % 10 < 8 { "v1" } else { "v2" };
        let (key, v) = workload(i, node, ip, &iface("", i), version);
        writes.push((key, serde_json::to_vec(&v)?));
        assign(&mut blocks[node], ord, &handle_id(i), &node_name(node));
        let mut h = IpamHandle::new(handle_id(i));
        h.increment(&IpNet::V4(block(node)), 1);
        writes.push((keys::ipam_handle_key(&h.handle_id), serde_json::to_vec(&h)?));
    }
    for b in &blocks {
        writes.push((
            keys::ipam_block_key(&b.cidr.to_string(), false),
            serde_json::to_vec(b)?,
        ));
    }
    eprintln!("writing {} keys to {}", writes.len(), store.endpoint());
    write_all(&store, writes).await
}

fn assign(b: &mut AllocationBlock, ordinal: usize, handle: &str, node: &str) {
    b.attributes.push(AllocationAttribute {
        handle_id: Some(handle.to_string()),
        attrs: BTreeMap::from([("node".to_string(), node.to_string())]),
        ..AllocationAttribute::default()
    });
    b.allocations[ordinal] = Some(b.attributes.len() - 1);
    b.unallocated.retain(|o| *o != ordinal);
}

// ---------------------------------------------------------------- bench

fn sh(args: &[&str]) -> Result<()> {
    let out = Command::new(args[0]).args(&args[1..]).output()?;
    if !out.status.success() {
        bail!(
            "{}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Network namespaces of one run; removed on drop.
struct Net {
    prefix: String,
    fabric: String,
}

impl Net {
    fn ns(&self, k: usize) -> String {
        format!("{}-n{k}", self.prefix)
    }

    fn clean(prefix: &str, fabric: &str) {
        // The veths first: a deleted namespace's devices go away asynchronously,
        // and the next build would find their bridge ends still there.
        if let Ok(out) = Command::new("ip")
            .args(["-n", fabric, "-o", "link", "show"])
            .output()
        {
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                let name = line.split(':').nth(1).unwrap_or("").trim();
                let name = name.split('@').next().unwrap_or("");
                if name.starts_with("v") && name[1..].chars().all(|c| c.is_ascii_digit()) {
                    let _ = sh(&["ip", "-n", fabric, "link", "del", name]);
                }
            }
        }
        let out = Command::new("ip").args(["netns", "list"]).output();
        if let Ok(out) = out {
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                let name = line.split_whitespace().next().unwrap_or("");
                if name.starts_with(&format!("{prefix}-n")) {
                    let _ = sh(&["ip", "netns", "del", name]);
                }
            }
        }
    }

    fn build(prefix: &str, fabric: &str, count: usize) -> Result<Net> {
        Net::clean(prefix, fabric);
        let net = Net {
            prefix: prefix.to_string(),
            fabric: fabric.to_string(),
        };
        let fab = net.fabric.clone();
        for k in 0..count {
            let ns = net.ns(k);
            sh(&["ip", "netns", "add", &ns])?;
            sh(&["ip", "-n", &ns, "link", "set", "lo", "up"])?;
            let peer = format!("v{k}");
            sh(&[
                "ip", "-n", &ns, "link", "add", "eth0", "type", "veth", "peer", "name", &peer,
                "netns", &fab,
            ])?;
            sh(&[
                "ip",
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{}/15", node_addr(k)),
                "dev",
                "eth0",
            ])?;
            sh(&["ip", "-n", &ns, "link", "set", "eth0", "up"])?;
            sh(&[
                "ip", "-n", &fab, "link", "set", &peer, "master", "br0", "up",
            ])?;
        }
        Ok(net)
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        Net::clean(&self.prefix, &self.fabric);
    }
}

struct Agent {
    child: Child,
    ns: String,
}

impl Agent {
    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_agent(bin: &str, a: &BenchArgs, net: &Net, k: usize, label: &str) -> Result<Agent> {
    let ns = net.ns(k);
    let dir = format!("{}/{label}-{k}", a.work);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let log = std::fs::File::create(format!("{dir}/agent.log"))?;
    let child = Command::new("ip")
        .args(["netns", "exec", &ns, bin])
        .args(["--node-name", &node_name(k), "--store", &a.store])
        .args(["--ip", &format!("{}/15", node_addr(k))])
        .args(["--no-bgp", "--default-ipv4-pool-cidr", "none"])
        .arg("--control-socket")
        .arg(format!("{dir}/node.sock"))
        .arg("--state-dir")
        .arg(&dir)
        .env("RUST_LOG", "warn")
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("start {bin}"))?;
    Ok(Agent { child, ns })
}

/// utime + stime of a process, seconds.
fn cpu_secs(pid: u32) -> f64 {
    let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return f64::NAN;
    };
    let rest = &s[s.rfind(')').map(|i| i + 2).unwrap_or(0)..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // USER_HZ: 100 on every Linux architecture Tabby runs on.
    let tick = 100.0;
    (f[11].parse::<f64>().unwrap_or(0.0) + f[12].parse::<f64>().unwrap_or(0.0)) / tick
}

/// VmRSS and VmHWM, MiB.
fn rss_mib(pid: u32) -> (f64, f64) {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let get = |k: &str| {
        s.lines()
            .find(|l| l.starts_with(k))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(f64::NAN)
            / 1024.0
    };
    (get("VmRSS:"), get("VmHWM:"))
}

fn count_routes(ns: &str) -> usize {
    let out = Command::new("ip")
        .args(["-n", ns, "-4", "route", "show", "dev", "vxlan.calico"])
        .output();
    out.map(|o| {
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter(|l| l.starts_with("100."))
            .count()
    })
    .unwrap_or(0)
}

fn has_table(ns: &str) -> bool {
    Command::new("ip")
        .args(["netns", "exec", ns, "nft", "list", "tables"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("tabby"))
        .unwrap_or(false)
}

/// A line-reading child process whose lines arrive time-stamped.
struct Monitor {
    child: Child,
    rx: mpsc::Receiver<(Instant, String)>,
}

impl Monitor {
    fn start(ns: &str, cmd: &[&str]) -> Result<Monitor> {
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns, "stdbuf", "-oL"])
            .args(cmd)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let out = child.stdout.take().expect("piped");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send((Instant::now(), line)).is_err() {
                    break;
                }
            }
        });
        Ok(Monitor { child, rx })
    }

    fn drain(&self) {
        while self.rx.try_recv().is_ok() {}
    }

    /// The time of the first line (from now) containing `needle`.
    fn wait_for(&self, needle: &str, deadline: Instant) -> Option<Instant> {
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            match self.rx.recv_timeout(left) {
                Ok((t, l)) if l.contains(needle) => return Some(t),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes at `rate`/s for `secs` on nodes no agent runs; returns the writes done.
async fn churn(
    store: Arc<dyn Datastore>,
    nodes: usize,
    endpoints: usize,
    agents: usize,
    rate: u32,
    secs: u64,
    seed: u64,
) -> Result<usize> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let started = Instant::now();
    let mut next_at = Instant::now();
    let mut tasks = Vec::new();
    let period = Duration::from_secs_f64(1.0 / rate as f64);
    // Pods this churn added, per (node, ordinal), so deletes find them.
    let mut added: Vec<(String, usize)> = Vec::new();
    let mut seq = 0usize;
    while started.elapsed() < Duration::from_secs(secs) {
        next_at += period;
        if let Some(d) = next_at.checked_duration_since(Instant::now()) {
            tokio::time::sleep(d).await;
        }
        seq += 1;
        let store = store.clone();
        // Nodes no agent runs, unless every node has one (the 3-node cluster).
        let node = if agents < nodes {
            rng.random_range(agents..nodes)
        } else {
            rng.random_range(0..nodes)
        };
        let op = rng.random_range(0..4);
        if op == 0 || (op == 1 && added.is_empty()) {
            // A new pod on another node, at an ordinal the generator left free.
            let ord = 21 + seq % 40;
            let i = 1_000_000 + seq;
            let (key, v) = workload(i, node, addr_in(node, ord), &iface("c", seq), "v1");
            added.push((key.clone(), i));
            tasks.push(tokio::spawn(async move {
                let bytes = serde_json::to_vec(&v).unwrap();
                store.create(&key, &bytes).await.map(|_| ())
            }));
        } else if op == 1 {
            let (key, _) = added.swap_remove(rng.random_range(0..added.len()));
            tasks.push(tokio::spawn(async move {
                store.delete(&key, None).await.map(|_| ())
            }));
        } else {
            // A label flip on an existing pod of another node (v1 <-> v2).
            let per_node = (endpoints / nodes).max(1);
            let i = node + nodes * rng.random_range(0..per_node);
            tasks.push(tokio::spawn(async move {
                let (key, _) = workload(i, node, addr_in(node, 1), "x", "v1");
                let Some(kv) = store.get(&key).await? else {
                    return Ok(());
                };
                let mut v: Value = serde_json::from_slice(&kv.value).unwrap();
                let flip = if v["metadata"]["labels"]["version"] == "v1" {
                    "v2"
                } else {
                    "v1"
                };
                v["metadata"]["labels"]["version"] = json!(flip);
                store
                    .update(&key, &serde_json::to_vec(&v).unwrap(), kv.mod_revision)
                    .await
                    .map(|_| ())
            }));
        }
    }
    let mut done = 0;
    for t in tasks {
        if t.await?.is_ok() {
            done += 1;
        }
    }
    // Leave the store as the generator wrote it.
    for (key, _) in added {
        let _ = store.delete(&key, None).await;
    }
    Ok(done)
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let i = ((p / 100.0) * (v.len() as f64 - 1.0)).round() as usize;
    v[i.min(v.len() - 1)]
}

/// Pods added on node-0000 one after another; ms from the WorkloadEndpoint write to
/// its route and to its interface in the ruleset (the later of the two).
async fn pod_adds(
    store: &Arc<dyn Datastore>,
    ns: &str,
    samples: usize,
    round: usize,
) -> Result<(Vec<f64>, Vec<f64>, usize)> {
    let routes = Monitor::start(ns, &["ip", "monitor", "route"])?;
    let rules = Monitor::start(ns, &["nft", "monitor"])?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (mut to_route, mut to_all, mut missed) = (Vec::new(), Vec::new(), 0);
    for s in 0..samples {
        let i = 2_000_000 + round * 1000 + s;
        let ord = 40 + s % 20;
        let ip = addr_in(0, ord);
        let ifname = iface("p", i);
        let peer = format!("pp{s}");
        sh(&[
            "ip", "-n", ns, "link", "add", &ifname, "type", "veth", "peer", "name", &peer,
        ])?;
        sh(&["ip", "-n", ns, "link", "set", &ifname, "up"])?;
        sh(&["ip", "-n", ns, "link", "set", &peer, "up"])?;
        tokio::time::sleep(Duration::from_millis(150)).await;
        routes.drain();
        rules.drain();
        let (key, v) = workload(i, 0, ip, &ifname, "v1");
        let t0 = Instant::now();
        store.create(&key, &serde_json::to_vec(&v)?).await?;
        let deadline = t0 + Duration::from_secs(20);
        let r = routes.wait_for(&format!("{ip} dev {ifname}"), deadline);
        let f = rules.wait_for(&ifname, deadline);
        match (r, f) {
            (Some(r), Some(f)) => {
                to_route.push((r - t0).as_secs_f64() * 1000.0);
                to_all.push((r.max(f) - t0).as_secs_f64() * 1000.0);
            }
            _ => missed += 1,
        }
        store.delete(&key, None).await?;
        sh(&["ip", "-n", ns, "link", "del", &ifname])?;
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    Ok((to_route, to_all, missed))
}

struct Row {
    label: String,
    startup: Vec<f64>,
    idle_cpu: Vec<f64>,
    rss: Vec<(f64, f64)>,
    churn: Vec<(u32, usize, f64, Vec<f64>)>,
    add_idle: (Vec<f64>, Vec<f64>, usize),
    add_churn: (Vec<f64>, Vec<f64>, usize),
    rss_after: Vec<(f64, f64)>,
}

async fn bench_one(a: &BenchArgs, label: &str, bin: &str) -> Result<Row> {
    let store = tabby_store::open(&StoreUrl::parse(&a.store)?).await?;
    let net = Net::build(&a.prefix, &a.fabric, a.count)?;
    let expected = a.nodes - 1;
    eprintln!("[{label}] starting {} agents", a.count);
    let t0 = Instant::now();
    let mut agents = Vec::new();
    for k in 0..a.count {
        agents.push(start_agent(bin, a, &net, k, label)?);
    }
    let mut startup = vec![f64::NAN; a.count];
    let deadline = t0 + Duration::from_secs(a.startup_timeout);
    while startup.iter().any(|s| s.is_nan()) && Instant::now() < deadline {
        for (k, ag) in agents.iter_mut().enumerate() {
            if startup[k].is_nan() && count_routes(&ag.ns) >= expected && has_table(&ag.ns) {
                startup[k] = t0.elapsed().as_secs_f64();
                eprintln!("[{label}] {} converged in {:.1}s", ag.ns, startup[k]);
            }
            if let Ok(Some(st)) = ag.child.try_wait() {
                bail!(
                    "[{label}] agent {k} exited: {st}; see {}/{label}-{k}/agent.log",
                    a.work
                );
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Settle, then idle.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let c0: Vec<f64> = agents.iter().map(|g| cpu_secs(g.pid())).collect();
    tokio::time::sleep(Duration::from_secs(a.idle_secs)).await;
    let idle_cpu: Vec<f64> = agents
        .iter()
        .zip(&c0)
        .map(|(g, c)| (cpu_secs(g.pid()) - c) / a.idle_secs as f64 * 100.0)
        .collect();
    let rss: Vec<(f64, f64)> = agents.iter().map(|g| rss_mib(g.pid())).collect();
    eprintln!("[{label}] idle CPU {idle_cpu:.3?} %, RSS {rss:.1?} MiB");

    let add_idle = pod_adds(&store, &agents[0].ns, a.samples, 0).await?;
    eprintln!(
        "[{label}] pod add (idle) p50 {:.1} ms",
        pct(&mut add_idle.1.clone(), 50.0)
    );

    let mut churn_rows = Vec::new();
    for (r, &rate) in a.rates.iter().enumerate() {
        let c0: Vec<f64> = agents.iter().map(|g| cpu_secs(g.pid())).collect();
        let t = Instant::now();
        let writes = churn(
            store.clone(),
            a.nodes,
            a.endpoints,
            a.count,
            rate,
            a.churn_secs,
            r as u64 + 1,
        )
        .await?;
        // Let the agents finish what they were sent.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let el = t.elapsed().as_secs_f64();
        let per_write: Vec<f64> = agents
            .iter()
            .zip(&c0)
            .map(|(g, c)| (cpu_secs(g.pid()) - c) * 1000.0 / writes.max(1) as f64)
            .collect();
        let achieved = writes as f64 / a.churn_secs as f64;
        eprintln!(
            "[{label}] churn {rate}/s: {writes} writes ({achieved:.0}/s) CPU/write {per_write:.3?} ms over {el:.0}s"
        );
        churn_rows.push((rate, writes, achieved, per_write));
    }

    // Pod adds on node-0000 while the store churns at the lowest rate.
    let st = store.clone();
    let (nodes, endpoints, count) = (a.nodes, a.endpoints, a.count);
    let secs = (a.samples as u64 / 2).max(10) + 5;
    let rate = a.rates.first().copied().unwrap_or(10);
    let bg = tokio::spawn(async move { churn(st, nodes, endpoints, count, rate, secs, 99).await });
    let add_churn = pod_adds(&store, &agents[0].ns, a.samples, 1).await?;
    let _ = bg.await;
    let rss_after: Vec<(f64, f64)> = agents.iter().map(|g| rss_mib(g.pid())).collect();
    drop(agents);
    drop(net);
    Ok(Row {
        label: label.to_string(),
        startup,
        idle_cpu,
        rss,
        churn: churn_rows,
        add_idle,
        add_churn,
        rss_after,
    })
}

fn fmt_list(v: &[f64], prec: usize) -> String {
    v.iter()
        .map(|x| format!("{x:.prec$}"))
        .collect::<Vec<_>>()
        .join(" / ")
}

fn report(a: &BenchArgs, rows: &[Row]) {
    println!(
        "\n### Agents against the store ({} agents per build, store {})\n",
        a.count, a.store
    );
    print!("| measure |");
    for r in rows {
        print!(" {} |", r.label);
    }
    println!("\n|---|{}", "---:|".repeat(rows.len()));
    let line = |name: &str, f: &dyn Fn(&Row) -> String| {
        print!("| {name} |");
        for r in rows {
            print!(" {} |", f(r));
        }
        println!();
    };
    line("start-up to converged, per agent (s)", &|r| {
        fmt_list(&r.startup, 1)
    });
    line("idle CPU per agent (% of a core)", &|r| {
        fmt_list(&r.idle_cpu, 3)
    });
    line("RSS per agent after start-up (MiB)", &|r| {
        fmt_list(&r.rss.iter().map(|x| x.0).collect::<Vec<_>>(), 1)
    });
    line("peak RSS (VmHWM) per agent at the end (MiB)", &|r| {
        fmt_list(&r.rss_after.iter().map(|x| x.1).collect::<Vec<_>>(), 1)
    });
    for (i, rate) in a.rates.iter().enumerate() {
        line(&format!("churn {rate}/s: writes done (per s)"), &|r| {
            let c = &r.churn[i];
            format!("{} ({:.0})", c.1, c.2)
        });
        line(
            &format!("churn {rate}/s: CPU per unrelated write, per agent (ms)"),
            &|r| fmt_list(&r.churn[i].3, 3),
        );
        line(
            &format!("churn {rate}/s: agent CPU (% of a core, mean of agents)"),
            &|r| {
                let c = &r.churn[i];
                let mean = c.3.iter().sum::<f64>() / c.3.len() as f64;
                format!("{:.2}", mean * c.2 / 10.0)
            },
        );
    }
    let lat = |v: &(Vec<f64>, Vec<f64>, usize)| {
        let (mut r, mut t) = (v.0.clone(), v.1.clone());
        format!(
            "{:.1} / {:.1} ({:.1} / {:.1}){}",
            pct(&mut t, 50.0),
            pct(&mut t, 99.0),
            pct(&mut r, 50.0),
            pct(&mut r, 99.0),
            if v.2 > 0 {
                format!(", {} missed", v.2)
            } else {
                String::new()
            }
        )
    };
    line(
        "pod add on node-0000, idle: route+rules p50 / p99 (route only) (ms)",
        &|r| lat(&r.add_idle),
    );
    line(
        "pod add on node-0000, store churning: route+rules p50 / p99 (route only) (ms)",
        &|r| lat(&r.add_churn),
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::Gen {
            store,
            nodes,
            endpoints,
            namespaces,
        } => {
            NAMESPACES.store(namespaces, std::sync::atomic::Ordering::Relaxed);
            generate(&store, nodes, endpoints).await
        }
        Cmd::Churn {
            store,
            nodes,
            endpoints,
            agents,
            rate,
            secs,
        } => {
            let store = tabby_store::open(&StoreUrl::parse(&store)?).await?;
            let n = churn(store, nodes, endpoints, agents, rate, secs, 5).await?;
            println!("{n} writes");
            Ok(())
        }
        Cmd::Bench(a) => {
            NAMESPACES.store(a.namespaces, std::sync::atomic::Ordering::Relaxed);
            let mut rows = Vec::new();
            for spec in &a.agents {
                let (label, bin) = spec
                    .split_once('=')
                    .context("--agent: expected LABEL=PATH")?;
                rows.push(bench_one(&a, label, bin).await?);
            }
            report(&a, &rows);
            Ok(())
        }
    }
}
