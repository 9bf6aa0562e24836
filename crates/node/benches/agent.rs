//! Whole-system benchmarks of `tabby-node` on a 10-node cluster in network namespaces
//! (the integration tests' harness): route propagation latency from an IPAM block
//! claim to the route on every other node, agent RSS and CPU at idle, and iperf3
//! throughput between pods on two nodes against the plain node-to-node path. Runs
//! twice: node-to-node BGP mesh without encapsulation, then VXLAN Always without BGP.
//! Needs root and iperf3.
//!
//! `cargo bench -p tabby-node --bench agent [-- --pods 60 --interval-ms 200
//! --idle-secs 30 --iperf-secs 6 --iperf-rounds 3 --modes bgp,vxlan]`

#[path = "../tests/common/mod.rs"]
mod common;

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Cluster, Layout, Store};
use ipnet::IpNet;
use tabby_api::endpoint::WorkloadEndpointSpec;
use tabby_api::{Resource, Spec};
use tabby_dataplane::NetlinkEvent;
use tabby_ipam::assignments::AutoAssignArgs;
use tabby_testnet::Netns;

const NODES: usize = 10;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    /// Node-to-node BGP mesh, vxlanMode Never: remote routes come from BGP.
    Bgp,
    /// VXLAN Always, `--no-bgp`: remote routes come from the store.
    Vxlan,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Bgp => "BGP mesh, no encapsulation",
            Mode::Vxlan => "VXLAN Always, no BGP",
        }
    }

    fn pool(self) -> String {
        let vxlan = match self {
            Mode::Bgp => "Never",
            Mode::Vxlan => "Always",
        };
        // blockSize 32: every address is its own block, so every new pod is a new
        // block affinity in the store and a new route on every other node.
        format!(
            "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {{name: bench}}\nspec: {{cidr: 100.64.0.0/16, blockSize: 32, vxlanMode: {vxlan}, ipipMode: Never, natOutgoing: false}}\n"
        )
    }

    /// The pod MTU the agent computes for this pool (host MTU 1500 minus overhead).
    fn pod_mtu(self) -> u32 {
        match self {
            Mode::Bgp => 1500,
            Mode::Vxlan => 1450,
        }
    }
}

struct Opts {
    pods: usize,
    interval: Duration,
    idle: Duration,
    iperf_secs: u32,
    iperf_rounds: usize,
    modes: Vec<Mode>,
}

fn opts() -> Opts {
    let mut o = Opts {
        pods: 60,
        interval: Duration::from_millis(200),
        idle: Duration::from_secs(30),
        iperf_secs: 6,
        iperf_rounds: 3,
        modes: vec![Mode::Bgp, Mode::Vxlan],
    };
    let mut args = std::env::args().skip(1);
    let num = |a: Option<String>, flag: &str| -> u64 {
        a.and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("{flag} needs a number"))
    };
    while let Some(a) = args.next() {
        match a.as_str() {
            "--pods" => o.pods = num(args.next(), "--pods") as usize,
            "--interval-ms" => o.interval = Duration::from_millis(num(args.next(), &a)),
            "--idle-secs" => o.idle = Duration::from_secs(num(args.next(), &a)),
            "--iperf-secs" => o.iperf_secs = num(args.next(), &a) as u32,
            "--iperf-rounds" => o.iperf_rounds = num(args.next(), &a) as usize,
            "--modes" => {
                o.modes = args
                    .next()
                    .expect("--modes needs bgp,vxlan")
                    .split(',')
                    .map(|m| match m {
                        "bgp" => Mode::Bgp,
                        "vxlan" => Mode::Vxlan,
                        other => panic!("--modes: unknown mode {other:?} (bgp, vxlan)"),
                    })
                    .collect()
            }
            // What `cargo bench` passes to every bench binary.
            "--bench" => {}
            other => panic!(
                "unknown argument {other:?} (--pods N --interval-ms MS --idle-secs S --iperf-secs S --iperf-rounds N --modes bgp,vxlan)"
            ),
        }
    }
    o
}

/// A route event seen in a node's namespace.
struct Arrival {
    node: usize,
    dst: IpNet,
    at: Instant,
}

/// A pod whose address was allocated by the bench.
struct Pod {
    node: usize,
    block: IpNet,
    /// Just before `auto_assign` (nothing of this pod is in the store yet).
    start: Instant,
    /// When `auto_assign` returned (block affinity and allocation committed).
    allocated: Instant,
}

/// Watches every node's routing table from now on (`monitor` in each namespace).
fn watch_routes(c: &Cluster) -> Arc<Mutex<Vec<Arrival>>> {
    let seen: Arc<Mutex<Vec<Arrival>>> = Arc::default();
    let pool: IpNet = "100.64.0.0/16".parse().unwrap();
    for (i, n) in c.nodes.iter().enumerate() {
        let path = PathBuf::from(format!("/run/netns/{}", n.ns.name()));
        let mut events = tabby_dataplane::monitor(Some(&path)).unwrap();
        let seen = seen.clone();
        tokio::spawn(async move {
            while let Some(ev) = events.recv().await {
                if let NetlinkEvent::Route {
                    deleted: false,
                    route,
                } = ev
                    && route.dst.prefix_len() == 32
                    && pool.contains(&route.dst)
                {
                    let at = Instant::now();
                    seen.lock().unwrap().push(Arrival {
                        node: i,
                        dst: route.dst,
                        at,
                    });
                }
            }
        });
    }
    seen
}

/// What the CNI plugin writes for a pod, without the veth: an IPAM allocation (with
/// blockSize 32 a new block claimed for `node`) and the WorkloadEndpoint. Remote
/// routes are computed from block affinities alone (`desired::compute`, and BGP
/// exports of the owner's affine blocks), so the veth does not change them.
async fn allocate_pod(c: &Cluster, node: usize, name: &str) -> Pod {
    let node_name = c.nodes[node].name.clone();
    let ipam = tabby_client::ipam::ipam_for(&c.client);
    let args = AutoAssignArgs::new(node_name.clone(), 1, 0).with_handle(format!("bench.{name}"));
    let start = Instant::now();
    let res = ipam.auto_assign(&args).await.map_err(|e| e.error).unwrap();
    let allocated = Instant::now();
    let ip = res.v4.unwrap().ips[0].addr();
    let wep = WorkloadEndpointSpec {
        orchestrator: Some("k8s".into()),
        node: Some(node_name.clone()),
        pod: Some(name.into()),
        endpoint: Some("eth0".into()),
        ip_networks: vec![IpNet::from(ip)],
        interface_name: Some(format!("cali{name}")),
        ..Default::default()
    };
    let r = Resource::with_spec(
        &format!("{node_name}-k8s-{name}-eth0"),
        Some("default"),
        Spec::WorkloadEndpoint(Box::new(wep)),
    );
    c.client.create(r).await.unwrap();
    Pod {
        node,
        block: IpNet::new(ip, 32).unwrap(),
        start,
        allocated,
    }
}

/// The first pod route (in arrival order) seen at `node`.
fn first_pod_block(seen: &Mutex<Vec<Arrival>>, node: usize) -> Option<IpNet> {
    seen.lock()
        .unwrap()
        .iter()
        .find(|a| a.node == node)
        .map(|a| a.dst)
}

/// Milliseconds from `from` to the first arrival of `dst` at `node`.
fn first_arrival(seen: &[Arrival], node: usize, dst: IpNet, from: Instant) -> Option<f64> {
    seen.iter()
        .filter(|a| a.node == node && a.dst == dst)
        .map(|a| ms(a.at.saturating_duration_since(from)))
        .reduce(f64::min)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    // Nearest rank.
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

struct Latency {
    samples: usize,
    missing: usize,
    /// (pod, remote node) pairs, from the start of the allocation.
    pairs: Vec<f64>,
    /// Per pod, until the route was on every other node.
    all_nodes: Vec<f64>,
    /// (pod, remote node) pairs, from the end of the allocation.
    from_allocated: Vec<f64>,
    /// `auto_assign` durations.
    alloc: Vec<f64>,
}

impl Latency {
    fn new(pods: &[Pod], seen: &[Arrival], n: usize) -> Latency {
        let mut l = Latency {
            samples: 0,
            missing: 0,
            pairs: Vec::new(),
            all_nodes: Vec::new(),
            from_allocated: Vec::new(),
            alloc: Vec::new(),
        };
        for p in pods {
            l.alloc.push(ms(p.allocated - p.start));
            let mut last: Option<f64> = Some(0.0);
            for node in (0..n).filter(|&i| i != p.node) {
                l.samples += 1;
                match first_arrival(seen, node, p.block, p.start) {
                    Some(t) => {
                        l.pairs.push(t);
                        last = last.map(|m| m.max(t));
                        // Negative when the agent saw the block before the
                        // allocation's last write returned.
                        l.from_allocated.push(t - ms(p.allocated - p.start));
                    }
                    None => {
                        l.missing += 1;
                        last = None;
                    }
                }
            }
            if let Some(t) = last {
                l.all_nodes.push(t);
            }
        }
        for v in [
            &mut l.pairs,
            &mut l.all_nodes,
            &mut l.from_allocated,
            &mut l.alloc,
        ] {
            v.sort_by(f64::total_cmp);
        }
        l
    }

    fn row(v: &[f64]) -> String {
        format!(
            "{:>8.1} {:>8.1} {:>8.1}",
            percentile(v, 50.0),
            percentile(v, 99.0),
            v.last().copied().unwrap_or(f64::NAN)
        )
    }
}

/// Creates pods one at a time, round-robin over the nodes, `interval` apart, and
/// waits for their routes on every other node.
async fn propagation(c: &Cluster, o: &Opts, seen: &Arc<Mutex<Vec<Arrival>>>) -> Latency {
    let n = c.nodes.len();
    let mut pods = Vec::new();
    let t0 = tokio::time::Instant::now();
    for k in 0..o.pods {
        tokio::time::sleep_until(t0 + o.interval * k as u32).await;
        pods.push(allocate_pod(c, k % n, &format!("q{k}")).await);
    }
    let want = pods.len() * (n - 1);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = {
            let s = seen.lock().unwrap();
            pods.iter()
                .map(|p| {
                    (0..n)
                        .filter(|&i| i != p.node)
                        .filter(|&i| s.iter().any(|a| a.node == i && a.dst == p.block))
                        .count()
                })
                .sum::<usize>()
        };
        if got == want || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let s = seen.lock().unwrap();
    Latency::new(&pods, &s, n)
}

/// utime + stime of `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the parenthesised command name; utime and stime are fields 14, 15.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

/// A `/proc/<pid>/status` field in kB.
fn status_kb(pid: u32, field: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn clock_ticks() -> u64 {
    let out = std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

struct Idle {
    /// Per agent: max VmRSS (MB) and CPU % of one core.
    agents: Vec<(f64, f64)>,
    hwm_max: f64,
}

async fn idle(c: &Cluster, period: Duration) -> Idle {
    let pids: Vec<u32> = c
        .nodes
        .iter()
        .map(|n| n.agent.as_ref().unwrap().pid().unwrap())
        .collect();
    for &p in &pids {
        let comm = std::fs::read_to_string(format!("/proc/{p}/comm")).unwrap();
        assert_eq!(comm.trim(), "tabby-node", "pid {p} is not the agent");
    }
    let hz = clock_ticks() as f64;
    let before: Vec<u64> = pids.iter().map(|&p| cpu_ticks(p)).collect();
    let start = Instant::now();
    let mut rss = vec![0u64; pids.len()];
    while start.elapsed() < period {
        for (r, &p) in rss.iter_mut().zip(&pids) {
            *r = (*r).max(status_kb(p, "VmRSS:"));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let secs = start.elapsed().as_secs_f64();
    let agents = pids
        .iter()
        .zip(&before)
        .zip(&rss)
        .map(|((&p, &b), &r)| {
            let cpu = (cpu_ticks(p) - b) as f64 / hz / secs * 100.0;
            (r as f64 / 1024.0, cpu)
        })
        .collect();
    let hwm_max = pids
        .iter()
        .map(|&p| status_kb(p, "VmHWM:"))
        .max()
        .unwrap_or(0) as f64
        / 1024.0;
    Idle { agents, hwm_max }
}

/// An iperf3 server for one test; killed on drop.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One TCP stream from `client` to `server_ip` (served in `server`), Gbit/s.
fn iperf(server: &Netns, client: &Netns, server_ip: IpAddr, secs: u32) -> f64 {
    let _srv = Server(
        server
            .command("iperf3")
            .args(["-s", "-1", "-B", &server_ip.to_string(), "-p", "5201"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut last = String::new();
    for _ in 0..20 {
        std::thread::sleep(Duration::from_millis(250));
        let out = client
            .command("iperf3")
            .args([
                "-c",
                &server_ip.to_string(),
                "-p",
                "5201",
                "-t",
                &secs.to_string(),
                "-O",
                "1",
                "-J",
            ])
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        if let Some(bps) = v["end"]["sum_received"]["bits_per_second"].as_f64() {
            return bps / 1e9;
        }
        last = format!(
            "{}{}",
            v["error"].as_str().unwrap_or_default(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    panic!("iperf3 to {server_ip} failed: {last}");
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

struct Throughput {
    plain: Vec<f64>,
    pods: Vec<f64>,
}

/// Alternating runs: node to node over the fabric, then pod to pod.
fn throughput(c: &Cluster, a: usize, b: usize, o: &Opts) -> Throughput {
    let (wa, wb) = (&c.workloads[a], &c.workloads[b]);
    let (na, nb) = (&c.nodes[wa.node], &c.nodes[wb.node]);
    let mut t = Throughput {
        plain: Vec::new(),
        pods: Vec::new(),
    };
    for _ in 0..o.iperf_rounds {
        t.plain
            .push(iperf(&nb.ns, &na.ns, nb.ip.addr(), o.iperf_secs));
        t.pods.push(iperf(&wb.ns, &wa.ns, wb.ip, o.iperf_secs));
    }
    t
}

/// Sets a pod's veth (both ends) to the MTU the agent computes for the pool.
fn set_pod_mtu(c: &Cluster, w: usize, mtu: u32) {
    let w = &c.workloads[w];
    let mtu = mtu.to_string();
    w.ns.ip(&["link", "set", "dev", "eth0", "mtu", &mtu])
        .unwrap();
    c.nodes[w.node]
        .ns
        .ip(&[
            "link",
            "set",
            "dev",
            &format!("cali{}", w.name),
            "mtu",
            &mtu,
        ])
        .unwrap();
}

/// Waits until every node has a permanent VXLAN neighbour for every other node.
async fn wait_vxlan_mesh(c: &Cluster, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    for n in &c.nodes {
        loop {
            let got =
                n.ns.ip_json(&["neigh", "show", "dev", "vxlan.calico", "nud", "permanent"])
                    .map(|v| v.as_array().map_or(0, Vec::len))
                    .unwrap_or(0);
            if got >= c.nodes.len() - 1 {
                break;
            }
            if Instant::now() > deadline {
                panic!("{} has {got} VXLAN neighbours\n{}", n.name, c.logs());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

struct Outcome {
    mode: Mode,
    converge: Duration,
    latency: Latency,
    with_veth: Vec<f64>,
    idle: Idle,
    tput: Throughput,
}

async fn scenario(mode: Mode, o: &Opts) -> Outcome {
    let label = match mode {
        Mode::Bgp => "bb",
        Mode::Vxlan => "bv",
    };
    let mut c = Cluster::new(label, NODES, Layout::OneSubnet, Store::Sqlite).await;
    c.apply(&mode.pool()).await;
    if mode == Mode::Vxlan {
        for n in &mut c.nodes {
            n.flags.push("--no-bgp".into());
        }
    }
    let started = Instant::now();
    c.start_all();
    match mode {
        Mode::Bgp => {
            for i in 0..NODES {
                c.wait_established(i, NODES - 1, Duration::from_secs(90))
                    .await;
            }
        }
        Mode::Vxlan => wait_vxlan_mesh(&c, Duration::from_secs(90)).await,
    }
    let converge = started.elapsed();
    eprintln!(
        "[{}] {NODES} agents converged in {:.1} s",
        mode.name(),
        converge.as_secs_f64()
    );
    // Let the start-up passes settle before the clock starts.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let seen = watch_routes(&c);
    let latency = propagation(&c, o, &seen).await;
    // What a remote node got for the first pod (q0, on n1): BGP-learned via n1's
    // address, or onlink via n1's tunnel address on vxlan.calico.
    if let Some(block) = first_pod_block(&seen, 1) {
        let route = c.nodes[1].ns.ip(&["route", "show", &block.to_string()]);
        eprintln!(
            "[{}] on n2: {}",
            mode.name(),
            route.unwrap_or_default().trim()
        );
    }
    eprintln!(
        "[{}] propagation: {} of {} routes arrived",
        mode.name(),
        latency.samples - latency.missing,
        latency.samples
    );

    // Idle: every route in place, nothing changing.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let idle = idle(&c, o.idle).await;

    // Two real pods (veths as the CNI plugin makes them), on n1 and n2; their
    // route arrival from the start of `add_workload` is a cross-check of the
    // veth-less pods above.
    let mut with_veth = Vec::new();
    let mut ws = Vec::new();
    for (node, name) in [(0, "i1"), (1, "i2")] {
        let start = Instant::now();
        let w = c.add_workload(node, name).await;
        let ip = c.workloads[w].ip;
        ws.push((w, start, IpNet::new(ip, 32).unwrap(), node));
    }
    c.wait_full_reachability(Duration::from_secs(60));
    {
        let s = seen.lock().unwrap();
        for &(_, start, block, owner) in &ws {
            for node in (0..NODES).filter(|&i| i != owner) {
                if let Some(t) = first_arrival(&s, node, block, start) {
                    with_veth.push(t);
                }
            }
        }
    }
    with_veth.sort_by(f64::total_cmp);
    for &(w, ..) in &ws {
        set_pod_mtu(&c, w, mode.pod_mtu());
    }
    let tput = throughput(&c, ws[0].0, ws[1].0, o);
    Outcome {
        mode,
        converge,
        latency,
        with_veth,
        idle,
        tput,
    }
}

fn report(o: &Opts, outs: &[Outcome]) {
    println!();
    println!(
        "## Route propagation: {} pods, one every {} ms, round-robin over {NODES} nodes; ms from the start of the pod's IPAM allocation to the route in another node's kernel",
        o.pods,
        o.interval.as_millis()
    );
    println!(
        "{:<28} {:>7} {:>8} {:>8} {:>8}   {:>26}   {:>26}   {:>8}",
        "mode",
        "pairs",
        "p50",
        "p99",
        "max",
        "all 9 nodes p50/p99/max",
        "from alloc end p50/p99/max",
        "alloc p50"
    );
    for out in outs {
        let l = &out.latency;
        println!(
            "{:<28} {:>3}/{:<3} {}   {}   {}   {:>8.1}",
            out.mode.name(),
            l.samples - l.missing,
            l.samples,
            Latency::row(&l.pairs),
            Latency::row(&l.all_nodes),
            Latency::row(&l.from_allocated),
            percentile(&l.alloc, 50.0)
        );
    }
    for out in outs {
        println!(
            "  {}: pods with veths (add_workload), {} pairs: p50 {:.1} ms, max {:.1} ms; cluster start to converged {:.1} s",
            out.mode.name(),
            out.with_veth.len(),
            percentile(&out.with_veth, 50.0),
            out.with_veth.last().copied().unwrap_or(f64::NAN),
            out.converge.as_secs_f64()
        );
    }
    println!();
    println!(
        "## Agents at idle ({} s, {NODES} agents, after the pods above)",
        o.idle.as_secs()
    );
    println!(
        "{:<28} {:>12} {:>12} {:>12} {:>12} {:>14}",
        "mode", "max RSS MB", "mean RSS MB", "max HWM MB", "mean CPU %", "max CPU %"
    );
    for out in outs {
        let a = &out.idle.agents;
        let n = a.len() as f64;
        println!(
            "{:<28} {:>12.1} {:>12.1} {:>12.1} {:>12.2} {:>14.2}",
            out.mode.name(),
            a.iter().map(|x| x.0).fold(0.0, f64::max),
            a.iter().map(|x| x.0).sum::<f64>() / n,
            out.idle.hwm_max,
            a.iter().map(|x| x.1).sum::<f64>() / n,
            a.iter().map(|x| x.1).fold(0.0, f64::max),
        );
        let per: Vec<String> = a
            .iter()
            .enumerate()
            .map(|(i, (r, c))| format!("n{} {r:.1} MB {c:.2}%", i + 1))
            .collect();
        println!("  {}", per.join(", "));
    }
    println!();
    println!(
        "## iperf3, one TCP stream, {} s (+1 s omitted) per run, {} alternating rounds; Gbit/s",
        o.iperf_secs, o.iperf_rounds
    );
    println!(
        "{:<28} {:>10} {:>14} {:>14} {:>8}   runs (plain | pods)",
        "mode", "pod MTU", "plain median", "pods median", "ratio"
    );
    for out in outs {
        let t = &out.tput;
        let (p, w) = (median(&t.plain), median(&t.pods));
        let fmt = |v: &[f64]| {
            v.iter()
                .map(|x| format!("{x:.2}"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        println!(
            "{:<28} {:>10} {:>14.2} {:>14.2} {:>8.2}   {} | {}",
            out.mode.name(),
            out.mode.pod_mtu(),
            p,
            w,
            w / p,
            fmt(&t.plain),
            fmt(&t.pods)
        );
    }
}

fn main() {
    let o = opts();
    tabby_testnet::require_root();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut outs = Vec::new();
    for &mode in &o.modes {
        // The cluster (namespaces, agents, temp dirs) is dropped at the end of each
        // scenario, also when it panics.
        outs.push(rt.block_on(scenario(mode, &o)));
    }
    report(&o, &outs);
}
