//! Fail closed (issue 17): traffic from or to a workload interface (`cali…`) that
//! no local WorkloadEndpoint names is dropped, forwarded and to or from the host
//! (Felix's "unknown interface" drop); once its endpoint exists, the pod passes
//! traffic. Real agent, real traffic, in namespaces (needs root). Also measures
//! the time from the CNI ADD's return to the pod being reachable.

mod common;

use std::time::{Duration, Instant};

use common::{Cluster, Layout, Store};

const SETUP: &str = r#"
apiVersion: projectcalico.org/v3
kind: IPPool
metadata: {name: pool-a}
spec: {cidr: 100.64.0.0/16, blockSize: 26, vxlanMode: Never, ipipMode: Never}
---
apiVersion: projectcalico.org/v3
kind: FelixConfiguration
metadata: {name: default}
spec: {defaultEndpointToHostAction: Accept}
"#;

/// The node's address on the fabric.
const HOST: &str = "198.18.0.1";

/// One quick ping (50 ms to answer).
fn ping(ns: &tabby_testnet::netns::Netns, to: &str) -> bool {
    ns.try_output(&["ping", "-n", "-q", "-c", "1", "-W", "0.05", to])
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// Some of three quick pings.
fn reaches(ns: &tabby_testnet::netns::Netns, to: &str) -> bool {
    (0..3).any(|_| ping(ns, to))
}

fn wait_for(what: &str, c: &Cluster, timeout: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < timeout,
            "timed out waiting for {what}\n{}",
            c.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn forward_rules(c: &Cluster, family: &str) -> String {
    c.nodes[0]
        .ns
        .output(&["nft", "list", "chain", family, "tabby", "forward"])
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interface_no_endpoint_names_is_cut_off_until_it_is_named() {
    let mut c = Cluster::new("fcl", 1, Layout::OneSubnet, Store::Sqlite).await;
    c.apply(SETUP).await;
    c.start_all();
    let known = c.add_workload(0, "known").await;
    let stranger = c.add_unnamed_workload(0, "strangr").await;
    let known_ip = c.workloads[known].ip.to_string();
    let stranger_ip = c.workloads[stranger].ip.to_string();
    // The agent has programmed the known pod: it reaches the host
    // (defaultEndpointToHostAction Accept) and the host reaches it.
    wait_for(
        "the known pod to reach the host",
        &c,
        Duration::from_secs(30),
        || reaches(&c.workloads[known].ns, HOST),
    );
    assert!(reaches(&c.nodes[0].ns, &known_ip));
    for family in ["ip", "ip6"] {
        let rules = forward_rules(&c, family);
        assert!(
            rules.contains("iifname \"cali*\" iifname != @workload-interfaces drop")
                && rules.contains("oifname \"cali*\" oifname != @workload-interfaces drop"),
            "{family}: {rules}"
        );
    }

    // The unnamed interface: no pod, no host, either way.
    let s = &c.workloads[stranger].ns;
    assert!(!reaches(s, &known_ip), "unnamed veth reached a pod");
    assert!(!reaches(s, HOST), "unnamed veth reached the host");
    assert!(
        !reaches(&c.workloads[known].ns, &stranger_ip),
        "a pod reached the unnamed veth"
    );
    assert!(
        !reaches(&c.nodes[0].ns, &stranger_ip),
        "the host reached the unnamed veth"
    );
    assert!(
        common::tcp_between(c.nodes[0].ns.name(), HOST.parse().unwrap(), s.name(), 7001).is_err(),
        "TCP from the unnamed veth to the host"
    );

    // Its WorkloadEndpoint appears: once the agent has its rules, it passes.
    c.name_workload(stranger).await;
    wait_for(
        "the named pod to reach the other pod",
        &c,
        Duration::from_secs(30),
        || reaches(&c.workloads[stranger].ns, &known_ip),
    );
    let s = &c.workloads[stranger].ns;
    assert!(reaches(s, HOST));
    assert!(reaches(&c.workloads[known].ns, &stranger_ip));
    assert!(reaches(&c.nodes[0].ns, &stranger_ip));
    common::tcp_between(c.nodes[0].ns.name(), HOST.parse().unwrap(), s.name(), 7002).unwrap();
}

/// From the CNI ADD's return to the first ping the new pod answers from another
/// pod (its rules in place), over 20 pods added one after another. Resolution:
/// one attempt every few milliseconds, each waiting 50 ms for an answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_to_reachable_latency() {
    let mut c = Cluster::new("fcm", 1, Layout::OneSubnet, Store::Sqlite).await;
    c.apply(SETUP).await;
    c.start_all();
    let probe = c.add_workload(0, "probe").await;
    wait_for(
        "the probe pod to reach the host",
        &c,
        Duration::from_secs(30),
        || reaches(&c.workloads[probe].ns, HOST),
    );
    let mut times = Vec::new();
    for i in 0..20 {
        let w = c.add_cni_pod(0, &format!("lat{i}"));
        let added = Instant::now();
        let ip = c.workloads[w].ip.to_string();
        wait_for(
            "a new pod to be reachable",
            &c,
            Duration::from_secs(30),
            || ping(&c.workloads[probe].ns, &ip),
        );
        times.push(added.elapsed());
    }
    times.sort();
    let p50 = times[times.len() / 2];
    let p99 = times[times.len() - 1];
    eprintln!(
        "ADD return to reachable, 20 pods, SQLite: p50 {:.0} ms, p99 (max) {:.0} ms",
        p50.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3
    );
    assert!(p99 < Duration::from_secs(10), "p99 {p99:?}");
}
