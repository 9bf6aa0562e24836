//! The incremental agent against a full recompute, in the real kernel: a node with
//! 10,000 workload endpoints on 200 other nodes, policies whose selectors pick some
//! of them, then 100 writes per second for 15 s (pods added and deleted, some with
//! borrowed addresses, labels flipped in and out of the policies' selectors). Once
//! the churn stops, the node's routes and its `tabby` nftables tables must equal
//! what a full computation from a fresh read of the store gives: the routes from
//! `desired::compute`, the tables from the whole policy compiled and rendered at
//! once and applied to a scratch namespace.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{Cluster, Layout, Store};
use ipnet::IpNet;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use tabby_api::Kind;
use tabby_node::desired::{KernelView, Settings};
use tabby_store::keys;

const REMOTE_NODES: usize = 200;
const PER_NODE: usize = 50;
const NAMESPACES: usize = 10;

/// The `k`-th /26 of 100.64.128.0/17, where the remote nodes' blocks go (those IPAM
/// already gave the local node are skipped).
fn candidate_block(k: usize) -> IpNet {
    let base = u32::from(Ipv4Addr::new(100, 64, 128, 0)) + (k as u32) * 64;
    IpNet::new(IpAddr::V4(Ipv4Addr::from(base)), 26).unwrap()
}

fn nth(block: IpNet, i: usize) -> IpAddr {
    let IpAddr::V4(a) = block.network() else {
        unreachable!()
    };
    IpAddr::V4(Ipv4Addr::from(u32::from(a) + i as u32))
}

fn labels(rng: &mut impl Rng) -> Value {
    let app = ["web", "api", "batch"][rng.random_range(0..3)];
    let role = ["db", "cache"][rng.random_range(0..2)];
    json!({"app": app, "role": role})
}

fn wep_value(name: &str, ns: &str, node: &str, ip: IpAddr, labels: Value) -> Value {
    json!({"apiVersion": "projectcalico.org/v3", "kind": "WorkloadEndpoint",
        "metadata": {"name": name, "namespace": ns, "labels": labels},
        "spec": {"orchestrator": "k8s", "node": node, "pod": name, "endpoint": "eth0",
                 "interfaceName": format!("cali{:011x}", rand::random::<u64>() & 0xfff_ffff_ffff),
                 "ipNetworks": [format!("{ip}/32")], "profiles": [format!("kns.{ns}")]}})
}

struct Pod {
    key: String,
    value: Value,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churn_ends_identical_to_a_full_recompute() {
    let mut c = Cluster::new("ch", 1, Layout::OneSubnet, Store::Sqlite).await;

    c.apply(
        r#"
apiVersion: projectcalico.org/v3
kind: IPPool
metadata: {name: pool}
spec: {cidr: 100.64.0.0/16, blockSize: 26, vxlanMode: Always, ipipMode: Never, natOutgoing: true}
---
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: from-web, namespace: default}
spec:
  selector: all()
  ingress: [{action: Allow, protocol: TCP, source: {selector: app == 'web'}, destination: {ports: [80]}}]
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: to-db}
spec:
  selector: has(projectcalico.org/namespace)
  egress: [{action: Allow, protocol: TCP, destination: {selector: role == 'db', ports: [5432]}}]
  ingress: [{action: Allow, source: {namespaceSelector: all(), selector: app == 'api'}}]
"#,
    )
    .await;
    c.nodes[0].flags.push("--no-bgp".into());
    c.start(0);
    for name in ["l1", "l2", "l3"] {
        c.add_workload(0, name).await;
    }
    let store = c.client.store().clone();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let taken: BTreeSet<IpNet> = tabby_client::ipam::ipam_for(&c.client)
        .list_blocks(None)
        .await
        .unwrap()
        .into_iter()
        .map(|b| b.cidr)
        .collect();
    let blocks: Vec<IpNet> = (0..)
        .map(candidate_block)
        .filter(|b| !taken.contains(b))
        .take(REMOTE_NODES)
        .collect();
    let remote_block = |n: usize| blocks[n];

    // 200 remote nodes with a block each and 50 pods each.
    let mut writes = Vec::new();
    for n in 0..REMOTE_NODES {
        let name = format!("r{n}");
        let node = json!({"apiVersion": "projectcalico.org/v3", "kind": "Node",
            "metadata": {"name": name},
            "spec": {"bgp": {"ipv4Address": format!("198.18.{}.{}/24", 1 + n / 200, 1 + n % 200)},
                     "ipv4VXLANTunnelAddr": format!("100.65.{}.{}", n / 200, 1 + n % 200)}});
        writes.push((
            tabby_client::key_of(Kind::Node, None, &name),
            serde_json::to_vec(&node).unwrap(),
        ));
        let mut b = tabby_ipam::AllocationBlock::new(remote_block(n), 0).unwrap();
        b.affinity = Some(format!("host:{name}"));
        writes.push((
            keys::ipam_block_key(&remote_block(n).to_string(), false),
            serde_json::to_vec(&b).unwrap(),
        ));
    }
    let mut pods: Vec<Pod> = Vec::new();
    let mut used: BTreeSet<IpAddr> = BTreeSet::new();
    for n in 0..REMOTE_NODES {
        for i in 0..PER_NODE {
            let ip = nth(remote_block(n), i + 1);
            used.insert(ip);
            let ns = format!("ns{}", (n * PER_NODE + i) % NAMESPACES);
            let name = format!("r{n}-k8s-p{i}-eth0");
            let value = wep_value(&name, &ns, &format!("r{n}"), ip, labels(&mut rng));
            let key = tabby_client::key_of(Kind::WorkloadEndpoint, Some(&ns), &name);
            writes.push((key.clone(), serde_json::to_vec(&value).unwrap()));
            pods.push(Pod { key, value });
        }
    }
    for chunk in writes.chunks(200) {
        let futs = chunk.iter().map(|(k, v)| store.create(k, v));
        for r in futures::future::join_all(futs).await {
            r.unwrap();
        }
    }

    // 100 writes a second for 15 s, each its own task (a write waits for its fsync;
    // writes in flight together share one), at most one in flight per pod.
    let started = Instant::now();
    let mut seq = 0usize;
    let mut next_at = Instant::now();
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let mut busy: BTreeSet<String> = BTreeSet::new();
    let mut tasks = Vec::new();
    while started.elapsed() < Duration::from_secs(15) {
        next_at += Duration::from_millis(10);
        let now = Instant::now();
        if next_at > now {
            tokio::time::sleep(next_at - now).await;
        }
        while let Ok(k) = done_rx.try_recv() {
            busy.remove(&k);
        }
        seq += 1;
        let store = store.clone();
        let done = done_tx.clone();
        match rng.random_range(0..10) {
            // A new pod, one in five with an address borrowed from another node.
            0..=3 => {
                let n = rng.random_range(0..REMOTE_NODES);
                let owner = if rng.random_range(0..5) == 0 {
                    rng.random_range(0..REMOTE_NODES)
                } else {
                    n
                };
                let Some(ip) = (1..64)
                    .map(|i| nth(remote_block(owner), i))
                    .find(|ip| !used.contains(ip))
                else {
                    continue;
                };
                used.insert(ip);
                let ns = format!("ns{}", seq % NAMESPACES);
                let name = format!("r{n}-k8s-c{seq}-eth0");
                let value = wep_value(&name, &ns, &format!("r{n}"), ip, labels(&mut rng));
                let key = tabby_client::key_of(Kind::WorkloadEndpoint, Some(&ns), &name);
                busy.insert(key.clone());
                let bytes = serde_json::to_vec(&value).unwrap();
                pods.push(Pod {
                    key: key.clone(),
                    value,
                });
                tasks.push(tokio::spawn(async move {
                    store.create(&key, &bytes).await.unwrap();
                    let _ = done.send(key);
                }));
            }
            // A pod goes.
            4..=6 => {
                let Some(i) = pick(&mut rng, &pods, &busy) else {
                    continue;
                };
                let p = pods.swap_remove(i);
                let ip: IpNet = p.value["spec"]["ipNetworks"][0]
                    .as_str()
                    .unwrap()
                    .parse()
                    .unwrap();
                used.remove(&ip.addr());
                busy.insert(p.key.clone());
                tasks.push(tokio::spawn(async move {
                    store.delete(&p.key, None).await.unwrap();
                    let _ = done.send(p.key);
                }));
            }
            // Labels flip in and out of the selectors.
            _ => {
                let Some(i) = pick(&mut rng, &pods, &busy) else {
                    continue;
                };
                pods[i].value["metadata"]["labels"] = labels(&mut rng);
                let key = pods[i].key.clone();
                let bytes = serde_json::to_vec(&pods[i].value).unwrap();
                busy.insert(key.clone());
                tasks.push(tokio::spawn(async move {
                    let kv = store.get(&key).await.unwrap().unwrap();
                    store.update(&key, &bytes, kv.mod_revision).await.unwrap();
                    let _ = done.send(key);
                }));
            }
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
    let rate = seq as f64 / started.elapsed().as_secs_f64();
    assert!(rate > 80.0, "the churn ran at {rate:.0} writes/s");

    // Converged: the kernel equals a full recompute (allowing the agent to catch up).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (want_routes, want_nft) = full_recompute(&c).await;
        let have_routes = kernel_routes(&c);
        let have_nft = kernel_tables(&c.nodes[0].ns);
        if want_routes == have_routes && want_nft == have_nft {
            assert!(want_routes.len() > REMOTE_NODES, "{}", want_routes.len());
            let sets = want_nft.to_string().matches("elem").count();
            assert!(sets > 0, "the policy's sets have members");
            break;
        }
        if Instant::now() > deadline {
            let dump = |name: &str, v: &Value| {
                let path = std::env::temp_dir().join(format!("tabby-churn-{name}"));
                std::fs::write(&path, serde_json::to_string_pretty(v).unwrap()).unwrap();
                path.display().to_string()
            };
            eprintln!(
                "nftables: want {}, have {}",
                dump("want-nft.json", &want_nft),
                dump("have-nft.json", &have_nft)
            );
            let missing: Vec<_> = want_routes
                .iter()
                .filter(|(k, v)| have_routes.get(*k) != Some(*v))
                .take(10)
                .collect();
            let extra: Vec<_> = have_routes
                .iter()
                .filter(|(k, v)| want_routes.get(*k) != Some(*v))
                .take(10)
                .collect();
            panic!(
                "not converged to the full recompute: routes missing/wrong {missing:?}, extra {extra:?}; nftables equal: {}\n{}",
                want_nft == have_nft,
                c.logs()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// A pod with no write in flight.
fn pick(rng: &mut impl Rng, pods: &[Pod], busy: &BTreeSet<String>) -> Option<usize> {
    (0..8)
        .map(|_| rng.random_range(0..pods.len()))
        .find(|i| !busy.contains(&pods[*i].key))
}

/// (kind, gateway or device) per destination: what a route does.
type RouteMap = BTreeMap<String, (String, String)>;

fn kernel_routes(c: &Cluster) -> RouteMap {
    let rs = c.nodes[0]
        .ns
        .ip_json(&["route", "show", "proto", "80"])
        .unwrap();
    let mut out = RouteMap::new();
    for r in rs.as_array().unwrap() {
        let mut dst = r["dst"].as_str().unwrap().to_string();
        if !dst.contains('/') {
            dst.push_str("/32");
        }
        let kind = r["type"].as_str().unwrap_or("unicast").to_string();
        let via = r["gateway"]
            .as_str()
            .map(str::to_string)
            .or_else(|| {
                (kind != "blackhole").then(|| r["dev"].as_str().unwrap_or_default().to_string())
            })
            .unwrap_or_default();
        out.insert(dst, (kind, via));
    }
    out
}

/// The routes and nftables tables computed from scratch from a fresh read of the
/// store, independent of the agent's view.
async fn full_recompute(c: &Cluster) -> (RouteMap, Value) {
    let client = &c.client;
    let ns = &c.nodes[0].ns;
    let links = ns.ip_json(&["link", "show"]).unwrap();
    let links: BTreeMap<String, u32> = links
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["ifname"].as_str().unwrap().to_string(),
                l["ifindex"].as_u64().unwrap() as u32,
            )
        })
        .collect();
    let names: BTreeMap<u32, String> = links.iter().map(|(n, i)| (*i, n.clone())).collect();
    let mut snap = tabby_node::desired::Snapshot::default();
    for r in client.list(Kind::Node, None).await.unwrap() {
        snap.nodes.push(tabby_node::view::node_info(&r));
    }
    for r in client.list(Kind::IPPool, None).await.unwrap() {
        snap.pools.extend(tabby_node::view::pool_info(&r));
    }
    let ipam = tabby_client::ipam::ipam_for(client);
    for b in ipam.list_blocks(None).await.unwrap() {
        snap.blocks.push(tabby_node::desired::BlockInfo {
            cidr: b.cidr,
            host: b.host_affinity().map(str::to_string),
        });
    }
    let weps = client.list(Kind::WorkloadEndpoint, None).await.unwrap();
    for r in &weps {
        let w = r.spec.as_workload_endpoint().unwrap();
        snap.workloads.push(tabby_node::desired::WorkloadInfo {
            id: r.name().to_string(),
            node: w.node.clone().unwrap(),
            interface: w.interface_name.clone().unwrap(),
            ips: w.ip_networks.clone(),
        });
    }
    let settings = Settings {
        node: "n1".into(),
        ipip_supported: false,
        host_mtu: 1500,
        mtu_override: None,
        bgp_enabled: false,
    };
    let kernel = KernelView {
        uplink: links.get("eth0").copied(),
        links,
        subnets: vec!["198.18.0.0/24".parse().unwrap()],
    };
    let d = tabby_node::desired::compute(&snap, &settings, &kernel, &BTreeMap::new());
    let mut routes = RouteMap::new();
    for (dst, r) in &d.routes {
        let kind = if r.kind == tabby_dataplane::RouteKind::Blackhole {
            "blackhole"
        } else {
            "unicast"
        };
        let via = match (r.gateway, r.oif) {
            (Some(g), _) => g.to_string(),
            (None, Some(i)) if kind == "unicast" => names.get(&i).cloned().unwrap_or_default(),
            _ => String::new(),
        };
        routes.insert(dst.to_string(), (kind.to_string(), via));
    }
    // The policy: every policy kind and endpoint, compiled and rendered whole.
    let mut resources = weps;
    for kind in tabby_node::firewall::POLICY_KINDS {
        resources.extend(client.list(kind, None).await.unwrap());
    }
    let compiled = tabby_node::firewall::compile_local(&resources, "n1").unwrap();
    let batch = tabby_node::firewall::full_batch(
        Some(&d.nat),
        Some(&tabby_policy::nft::ruleset(&compiled)),
    );
    static SCRATCH: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = SCRATCH.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let scratch = c.net.netns(&format!("s{n}")).unwrap();
    let mut child = scratch
        .command("nft")
        .args(["-j", "-f", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(batch.to_string().as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success(), "the full render applies");
    let tables = kernel_tables(&scratch);
    let _ = scratch.delete();
    (routes, tables)
}

/// Both `tabby` tables as nft lists them, in a form where only meaning counts:
/// handles dropped, objects (sets, maps, chains) sorted by content since the kernel
/// lists them in creation order, set elements sorted, rules kept in order per chain.
fn kernel_tables(ns: &tabby_testnet::netns::Netns) -> Value {
    let mut out = Vec::new();
    for fam in ["ip", "ip6"] {
        let text = ns
            .output(&["nft", "-j", "list", "table", fam, "tabby"])
            .unwrap_or_default();
        let mut v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        strip(&mut v);
        let mut objects: Vec<String> = Vec::new();
        let mut rules: BTreeMap<String, Vec<Value>> = BTreeMap::new();
        for item in v["nftables"].as_array().cloned().unwrap_or_default() {
            if let Some(r) = item.get("rule") {
                let chain = r["chain"].as_str().unwrap_or_default().to_string();
                rules.entry(chain).or_default().push(r.clone());
            } else {
                let mut item = item;
                for kind in ["set", "map"] {
                    if let Some(Value::Array(e)) =
                        item.get_mut(kind).and_then(|s| s.get_mut("elem"))
                    {
                        e.sort_by_key(|x| x.to_string());
                    }
                }
                objects.push(item.to_string());
            }
        }
        objects.sort();
        out.push(json!({"objects": objects, "rules": rules}));
    }
    Value::Array(out)
}

fn strip(v: &mut Value) {
    match v {
        Value::Object(m) => {
            m.remove("handle");
            for x in m.values_mut() {
                strip(x);
            }
        }
        Value::Array(a) => {
            a.retain(|x| x.get("metainfo").is_none());
            for x in a {
                strip(x);
            }
        }
        _ => {}
    }
}
