//! Incremental engine benchmark: the cluster shape of `bench/scale` (NODES nodes
//! `node-0000..`; 1,000 namespaces `ns-000..999` of 100 workload endpoints each,
//! 10 apps `app-0..9` x 10 replicas with labels `app`, `tier` by app and
//! `version` v1 (replicas 0-7) or v2 (8-9), endpoint i on node i % NODES with
//! address 100.64.0.0 + i + 1; 10 NetworkPolicies per namespace, policy k
//! selecting `app-k` and admitting `app-(k+1)%10` on TCP 8080, every third also
//! allowing egress to the next namespace by namespaceSelector; 10
//! GlobalNetworkPolicies in a `platform` tier; a `kns.<ns>` profile per
//! namespace with its name and team labels), measured for the engine of
//! `node-0000`: initial load (time, RSS, bytes per remote endpoint), then
//! single changes (put + take_update, p50/p99) against today's full path
//! (`Model::from_resources` + `compile_for_node` + `update_commands`).
//! Prints Markdown.
//!
//!   engine_bench [NODES=5000] [ROUNDS=200] [FULL_ROUNDS=3]
//!   engine_bench endpoints [NODES=5000]   (only loads the endpoints, for a heap
//!                                          profiler: valgrind --tool=massif)

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tabby_api::load::from_json_value;
use tabby_api::{Kind, Resource};
use tabby_policy::compile::compile_for_node;
use tabby_policy::incremental::Engine;
use tabby_policy::model::Model;
use tabby_policy::nft::update_commands;

const NAMESPACES: usize = 1000;
const PER_NS: usize = 100;
const NODE: &str = "node-0000";

fn ns_name(n: usize) -> String {
    format!("ns-{n:03}")
}

fn tier_of(app: usize) -> &'static str {
    match app {
        0..=3 => "frontend",
        4..=6 => "backend",
        _ => "db",
    }
}

fn ip(i: usize) -> String {
    let a = 0x6440_0000u32 + i as u32 + 1;
    format!("{}/32", std::net::Ipv4Addr::from(a))
}

fn res(v: Value) -> Resource {
    from_json_value(v, "bench").expect("bench resource")
}

/// Workload endpoint `i` (`version` overrides the replica's).
fn workload(i: usize, nodes: usize, version: Option<&str>) -> Resource {
    let (n, app, rep) = (i / PER_NS, (i % PER_NS) / 10, i % 10);
    let ns = ns_name(n);
    let version = version.unwrap_or(if rep < 8 { "v1" } else { "v2" });
    res(
        json!({"apiVersion": "projectcalico.org/v3", "kind": "WorkloadEndpoint",
        "metadata": {"name": format!("app-{app}-{rep}-eth0"), "namespace": ns,
            "labels": {"app": format!("app-{app}"), "tier": tier_of(app), "version": version}},
        "spec": {"node": format!("node-{:04}", i % nodes), "interfaceName": format!("cali{i:011x}"),
            "ipNetworks": [ip(i)], "profiles": [format!("kns.{ns}")],
            "ports": [{"name": "http", "protocol": "TCP", "port": 8080}]}}),
    )
}

fn profile(n: usize) -> Resource {
    let ns = ns_name(n);
    res(
        json!({"apiVersion": "projectcalico.org/v3", "kind": "Profile",
        "metadata": {"name": format!("kns.{ns}")},
        "spec": {"labelsToApply": {"pcns.projectcalico.org/name": ns,
                "pcns.kubernetes.io/metadata.name": ns, "pcns.team": format!("team-{}", n % 10)},
            "ingress": [{"action": "Allow"}], "egress": [{"action": "Allow"}]}}),
    )
}

fn policy(n: usize, k: usize, port: u16) -> Resource {
    let mut spec = json!({"order": 100 + k, "selector": format!("app == 'app-{k}'"),
        "ingress": [{"action": "Allow", "protocol": "TCP",
            "source": {"selector": format!("app == 'app-{}'", (k + 1) % 10)},
            "destination": {"ports": [port]}}]});
    if k.is_multiple_of(3) {
        spec["types"] = json!(["Ingress", "Egress"]);
        spec["egress"] = json!([{"action": "Allow", "protocol": "TCP",
            "destination": {"namespaceSelector":
                format!("kubernetes.io/metadata.name == '{}'", ns_name((n + 1) % NAMESPACES)),
                "ports": [443]}}]);
    }
    res(
        json!({"apiVersion": "projectcalico.org/v3", "kind": "NetworkPolicy",
        "metadata": {"name": format!("allow-app-{k}"), "namespace": ns_name(n)}, "spec": spec}),
    )
}

fn global_policies() -> Vec<Resource> {
    let mut out = vec![res(
        json!({"apiVersion": "projectcalico.org/v3", "kind": "Tier",
        "metadata": {"name": "platform"}, "spec": {"order": 50, "defaultAction": "Pass"}}),
    )];
    let specs = [
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
            "destination": {"nets": ["10.0.0.0/8"], "ports": [5432, 6379]}}]}),
        json!({"selector": "has(app)", "ingress": [{"action": "Deny", "source": {"nets": ["192.0.2.0/24"]}}]}),
        json!({"selector": "app in {'app-0', 'app-1'}", "ingress": [{"action": "Allow", "protocol": "ICMP"}]}),
    ];
    for (k, mut spec) in specs.into_iter().enumerate() {
        spec["tier"] = json!("platform");
        spec["order"] = json!(k);
        out.push(res(
            json!({"apiVersion": "projectcalico.org/v3", "kind": "GlobalNetworkPolicy",
            "metadata": {"name": format!("platform.g{k}")}, "spec": spec}),
        ));
    }
    out
}

/// Everything but endpoints.
fn policies() -> Vec<Resource> {
    let mut out = global_policies();
    for n in 0..NAMESPACES {
        out.push(profile(n));
        for k in 0..10 {
            out.push(policy(n, k, 8080));
        }
    }
    out
}

/// Resident set size of this process.
fn rss() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: usize = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

fn ms(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64() * 1000.0)
}

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

/// Wall-clock and thread CPU times of one kind of change. On a shared machine
/// the wall-clock tail is mostly time the thread was not running; CPU time is
/// what the engine spent.
#[derive(Default)]
struct Samples {
    wall: Vec<Duration>,
    cpu: Vec<Duration>,
}

fn cpu_now() -> Duration {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID)
        .map(Duration::from)
        .unwrap_or_default()
}

impl Samples {
    fn time<T>(&mut self, f: impl FnOnce() -> T) -> T {
        let (wall, cpu) = (Instant::now(), cpu_now());
        let out = f();
        self.cpu.push(cpu_now().saturating_sub(cpu));
        self.wall.push(wall.elapsed());
        out
    }
}

struct Cluster {
    nodes: usize,
    endpoints: Vec<Resource>,
    policies: Vec<Resource>,
}

impl Cluster {
    fn all(&self) -> Vec<Resource> {
        self.endpoints
            .iter()
            .chain(&self.policies)
            .cloned()
            .collect()
    }

    fn local(&self, i: usize) -> bool {
        i.is_multiple_of(self.nodes)
    }
}

/// One row: the engine's p50 and p99 (wall clock and CPU) for a change, the
/// full path's median, and the target judged on the engine's CPU time.
fn row(what: &str, s: &mut Samples, full: Option<Duration>, target: Option<f64>) {
    let (p50, p99) = (pct(&mut s.wall, 0.5), pct(&mut s.wall, 0.99));
    let (c50, c99) = (pct(&mut s.cpu, 0.5), pct(&mut s.cpu, 0.99));
    let full_s = full.map_or("".to_string(), ms);
    let ratio = full.map_or("".to_string(), |f| {
        format!("{:.0}x", f.as_secs_f64() / p50.as_secs_f64())
    });
    let met = target.map_or("".to_string(), |t| {
        let (c99, p50) = (c99.as_secs_f64() * 1000.0, p50.as_secs_f64() * 1000.0);
        if c99 <= t && p50 <= t {
            format!("<= {t} ms: met")
        } else if p50 <= t {
            format!("<= {t} ms: met at p50, not at CPU p99")
        } else {
            format!("<= {t} ms: not met")
        }
    });
    println!(
        "| {what} | {} | {} | {} | {} | {full_s} | {ratio} | {met} |",
        ms(p50),
        ms(p99),
        ms(c50),
        ms(c99)
    );
}

/// Today's path for a change: model, compile, diff against the previous state.
fn full_path(before: &tabby_policy::Compiled, after: &[Resource]) -> Duration {
    let started = Instant::now();
    let model = Model::from_resources(after).expect("model");
    let c = compile_for_node(&model, NODE);
    let cmds = update_commands(before, &c);
    std::hint::black_box(cmds);
    started.elapsed()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("endpoints") {
        let nodes: usize = args.get(2).map_or(5000, |a| a.parse().expect("NODES"));
        // A node without pods: every endpoint is remote.
        let mut engine = Engine::new("node-without-pods");
        for i in 0..NAMESPACES * PER_NS {
            engine.put(&workload(i, nodes, None)).expect("endpoint");
        }
        println!("{:?}", engine.stats());
        return;
    }
    let nodes: usize = args.get(1).map_or(5000, |a| a.parse().expect("NODES"));
    let rounds: usize = args.get(2).map_or(200, |a| a.parse().expect("ROUNDS"));
    let full_rounds: usize = args.get(3).map_or(3, |a| a.parse().expect("FULL_ROUNDS"));
    let total = NAMESPACES * PER_NS;

    // Bytes per remote endpoint: an engine of a node without pods holding only
    // the endpoints, fed one generated endpoint at a time so that nothing
    // else stays.
    let before = rss();
    let mut bare = Engine::new("node-without-pods");
    let mut one_by_one = Duration::ZERO;
    for i in 0..total {
        let r = workload(i, nodes, None);
        let started = Instant::now();
        bare.put(&r).expect("endpoint");
        one_by_one += started.elapsed();
    }
    let endpoint_bytes = rss().saturating_sub(before);
    let bare_stats = bare.stats();
    drop(bare);

    let cluster = Cluster {
        nodes,
        endpoints: (0..total).map(|i| workload(i, nodes, None)).collect(),
        policies: policies(),
    };
    let all = cluster.all();
    let before = rss();
    let started = Instant::now();
    let mut engine = Engine::new(NODE);
    assert!(engine.put_all(&all).is_empty());
    let load = started.elapsed();
    let load_rss = rss().saturating_sub(before);
    let started = Instant::now();
    let first = engine.take_update();
    let first_update = started.elapsed();
    let stats = engine.stats();

    // Today's full path once, for its state and time (FULL_ROUNDS 0: not at all).
    let started = Instant::now();
    let mut compiled = if full_rounds > 0 {
        compile_for_node(&Model::from_resources(&all).expect("model"), NODE)
    } else {
        engine.compiled()
    };
    let full_load = started.elapsed();
    assert_eq!(engine.compiled(), compiled, "engine and full path agree");

    println!(
        "Cluster: {} nodes, {} endpoints ({} on {NODE}), {} NetworkPolicies, 10 GlobalNetworkPolicies, {} profiles.\n",
        nodes,
        stats.endpoints,
        stats.local_endpoints,
        stats.policies - 10,
        stats.profiles
    );
    println!("| initial load | value |");
    println!("|---|---:|");
    println!(
        "| engine: put_all of {} resources | {} ms |",
        all.len(),
        ms(load)
    );
    println!(
        "| engine: {total} endpoints put one by one (no policies) | {} ms |",
        ms(one_by_one)
    );
    println!(
        "| engine: first take_update ({} commands) | {} ms |",
        first.len(),
        ms(first_update)
    );
    if full_rounds > 0 {
        println!(
            "| full path: from_resources + compile_for_node | {} ms |",
            ms(full_load)
        );
    }
    println!(
        "| engine RSS growth, everything loaded | {:.1} MiB |",
        load_rss as f64 / 1048576.0
    );
    println!(
        "| remote endpoints only: RSS growth / endpoint ({} endpoints, {} identities) | {} B |",
        bare_stats.endpoints,
        bare_stats.identities,
        endpoint_bytes / total.max(1)
    );
    println!(
        "| local groups / active sets (members) / chains / rules | {} / {} ({}) / {} / {} |",
        stats.groups, stats.sets, stats.set_members, stats.chains, stats.rules
    );
    println!();
    println!(
        "| one change, put + take_update ({rounds} rounds) | p50 ms | p99 ms | CPU p50 ms | CPU p99 ms | full path ms (median of {full_rounds}) | full / p50 | target (on CPU p99 and p50) |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---|");

    let mut state = all.clone();
    let index_of = |state: &[Resource], kind: Kind, ns: &str, name: &str| {
        state
            .iter()
            .position(|r| {
                r.spec.kind() == kind
                    && r.metadata.name == name
                    && r.metadata.namespace.as_deref() == Some(ns)
            })
            .expect("resource in state")
    };
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut rand = move |n: usize| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % n as u64) as usize
    };
    let remote = |rand: &mut dyn FnMut(usize) -> usize| loop {
        let i = rand(total);
        if !cluster.local(i) {
            return i;
        }
    };
    let full_times = |state: &[Resource], compiled: &mut tabby_policy::Compiled| {
        if full_rounds == 0 {
            return None;
        }
        let mut v: Vec<Duration> = (0..full_rounds)
            .map(|_| full_path(compiled, state))
            .collect();
        *compiled = compile_for_node(&Model::from_resources(state).expect("model"), NODE);
        Some(pct(&mut v, 0.5))
    };

    // A remote pod's label changes (version v1 <-> v2).
    let mut times = Samples::default();
    let mut flipped = std::collections::BTreeMap::new();
    for _ in 0..rounds {
        let i = remote(&mut rand);
        let v = if flipped.remove(&i).is_some() {
            None
        } else {
            flipped.insert(i, ());
            let rep = i % 10;
            Some(if rep < 8 { "v2" } else { "v1" })
        };
        let r = workload(i, nodes, v);
        times.time(|| {
            engine.put(&r).expect("put");
            std::hint::black_box(engine.take_update())
        });
        let at = index_of(
            &state,
            Kind::WorkloadEndpoint,
            &ns_name(i / PER_NS),
            &r.metadata.name,
        );
        state[at] = r;
    }
    let full = full_times(&state, &mut compiled);
    row("label change on a remote pod", &mut times, full, Some(0.2));

    // A remote pod added, then removed.
    let (mut added, mut removed) = (Samples::default(), Samples::default());
    for round in 0..rounds {
        let n = rand(NAMESPACES);
        let app = rand(10);
        let mut r = workload(n * PER_NS + app * 10, nodes, None);
        r.metadata.name = format!("extra-{round}");
        if let Some(s) = r.spec.as_workload_endpoint_mut() {
            s.node = Some("node-0001".to_string());
            s.ip_networks = vec![
                format!("100.127.{}.{}/32", round / 250, round % 250 + 1)
                    .parse()
                    .expect("ip"),
            ];
        }
        added.time(|| {
            engine.put(&r).expect("put");
            std::hint::black_box(engine.take_update());
        });
        removed.time(|| {
            engine.delete(
                Kind::WorkloadEndpoint,
                r.metadata.namespace.as_deref(),
                &r.metadata.name,
            );
            std::hint::black_box(engine.take_update());
        });
    }
    row("remote pod added", &mut added, None, None);
    row("remote pod removed", &mut removed, None, None);

    // Local pods added, then removed: a replica of a local pod (same program),
    // a pod with a new program (the next app, a frontend too: its policy's
    // namespace-scoped set), and a pod of a kind new to the node (a db: its
    // GlobalNetworkPolicy brings a cluster-wide set). In this shape every pod
    // of a node is the same app and replica (endpoint i is on node i % NODES).
    let local_eps: Vec<usize> = (0..total).filter(|i| cluster.local(*i)).collect();
    let local_app = (local_eps[0] % PER_NS) / 10;
    let next_app = (local_app + 1) % 10;
    let new_app = (local_app + 7) % 10;
    let mut with_local = state.clone();
    let mut full_local = None;
    for (what, case) in [
        ("local pod added: a replica of a local pod", 0),
        ("local pod added: a new program (the next app)", 1),
        (
            "local pod added: a kind new to the node (a db: a set of 30,000 members)",
            2,
        ),
    ] {
        let (mut added, mut removed) = (Samples::default(), Samples::default());
        for round in 0..rounds.min(100) {
            let i = match case {
                0 => local_eps[rand(local_eps.len())],
                1 => rand(NAMESPACES) * PER_NS + next_app * 10,
                _ => rand(NAMESPACES) * PER_NS + new_app * 10,
            };
            let mut r = workload(i, nodes, None);
            r.metadata.name = format!("local-{round}");
            if let Some(s) = r.spec.as_workload_endpoint_mut() {
                s.node = Some(NODE.to_string());
                s.interface_name = Some(format!("calil{round:010}"));
                s.ip_networks = vec![
                    format!("100.126.{}.{}/32", round / 250, round % 250 + 1)
                        .parse()
                        .expect("ip"),
                ];
            }
            if case == 1 && full_local.is_none() {
                with_local.push(r.clone());
            }
            added.time(|| {
                engine.put(&r).expect("put");
                std::hint::black_box(engine.take_update());
            });
            removed.time(|| {
                engine.delete(
                    Kind::WorkloadEndpoint,
                    r.metadata.namespace.as_deref(),
                    &r.metadata.name,
                );
                std::hint::black_box(engine.take_update());
            });
        }
        let full = if case == 1 {
            full_local = full_times(&with_local, &mut compiled.clone());
            full_local
        } else {
            None
        };
        row(what, &mut added, full, (case < 2).then_some(2.0));
        row(&what.replace("added", "removed"), &mut removed, None, None);
    }

    // One policy that applies to a local pod changes (its port), and one that
    // does not.
    let (mut applies, mut elsewhere) = (Samples::default(), Samples::default());
    for round in 0..rounds {
        let i = local_eps[rand(local_eps.len())];
        let (n, k) = (i / PER_NS, (i % PER_NS) / 10);
        let r = policy(n, k, if round % 2 == 0 { 8081 } else { 8080 });
        applies.time(|| {
            engine.put(&r).expect("put");
            std::hint::black_box(engine.take_update());
        });
        let at = index_of(&state, Kind::NetworkPolicy, &ns_name(n), &r.metadata.name);
        state[at] = r;
    }
    let full_applies = full_times(&state, &mut compiled);
    let local_apps: std::collections::BTreeSet<(usize, usize)> = local_eps
        .iter()
        .map(|i| (i / PER_NS, (i % PER_NS) / 10))
        .collect();
    for round in 0..rounds {
        let (n, k) = loop {
            let (n, k) = (rand(NAMESPACES), rand(10));
            if !local_apps.contains(&(n, k)) {
                break (n, k);
            }
        };
        let r = policy(n, k, if round % 2 == 0 { 8082 } else { 8080 });
        elsewhere.time(|| {
            engine.put(&r).expect("put");
            std::hint::black_box(engine.take_update());
        });
        let at = index_of(&state, Kind::NetworkPolicy, &ns_name(n), &r.metadata.name);
        state[at] = r;
    }
    let full_elsewhere = full_times(&state, &mut compiled);
    row(
        "policy that applies locally changed",
        &mut applies,
        full_applies,
        Some(10.0),
    );
    row(
        "policy that does not apply locally changed",
        &mut elsewhere,
        full_elsewhere,
        Some(0.5),
    );

    if full_rounds > 0 {
        assert_eq!(
            engine.compiled(),
            compiled,
            "engine and full path agree after the changes"
        );
        println!();
        println!(
            "Engine and full path compared equal after loading and after the changes ({} local programs, {} identities).",
            engine.stats().groups,
            engine.stats().identities
        );
    }
}
