//! Network policy applied by the real agent (needs root): two tabby-node agents in
//! namespaces, three pods, a NetworkPolicy written to the store; the agent renders it
//! with natOutgoing into its `tabby` table and real traffic follows it, as does
//! `tabby_policy::explain` on the same stored resources.

mod common;

use std::time::{Duration, Instant};

use common::{Cluster, Layout, Store, tcp_between, tcp_exchange};
use tabby_api::Kind;
use tabby_policy::explain::VerdictAction;

const POOL: &str = r#"
apiVersion: projectcalico.org/v3
kind: IPPool
metadata: {name: pool-a}
spec: {cidr: 100.64.0.0/16, blockSize: 26, vxlanMode: Never, ipipMode: Never, natOutgoing: true}
"#;

const WEB_POLICY: &str = r#"
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: web, namespace: default}
spec:
  selector: role == 'web'
  ingress:
  - action: Allow
    protocol: TCP
    source: {selector: role == 'client'}
    destination: {ports: [8080]}
"#;

async fn set_role(c: &Cluster, wep: &str, role: &str) {
    c.client
        .modify(Kind::WorkloadEndpoint, Some("default"), wep, |r| {
            r.metadata.labels.insert("role".into(), role.into());
            Ok(())
        })
        .await
        .unwrap();
}

/// The chain names of `nft list table ip tabby` on node `i`.
/// The `ip tabby` table of node `i`, as `nft -j` lists it (empty if absent).
fn table(c: &Cluster, i: usize) -> Vec<serde_json::Value> {
    let Ok(out) = c.nodes[i]
        .ns
        .output(&["nft", "-j", "list", "table", "ip", "tabby"])
    else {
        return Vec::new();
    };
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
    v["nftables"].as_array().cloned().unwrap_or_default()
}

/// Names of the chains in node `i`'s `ip tabby` table.
fn chains(c: &Cluster, i: usize) -> Vec<String> {
    table(c, i)
        .iter()
        .filter_map(|o| o["chain"]["name"].as_str().map(String::from))
        .collect()
}

/// The interfaces node `i`'s `to-endpoint` map sends to a program chain.
fn dispatched(c: &Cluster, i: usize) -> Vec<String> {
    table(c, i)
        .iter()
        .filter(|o| o["map"]["name"] == "to-endpoint")
        .filter_map(|o| o["map"]["elem"].as_array())
        .flatten()
        .filter_map(|e| e[0].as_str().map(String::from))
        .collect()
}

/// Whether the policy model built from the store allows `from` → `to` on TCP `port`.
async fn explain_allows(
    c: &Cluster,
    from: &str,
    to: &str,
    protocol: u8,
    port: Option<u16>,
) -> bool {
    let mut resources = Vec::new();
    for kind in [Kind::WorkloadEndpoint, Kind::NetworkPolicy, Kind::Profile] {
        resources.extend(c.client.list(kind, None).await.unwrap());
    }
    let model = tabby_policy::model::Model::from_resources(&resources).unwrap();
    let v = tabby_policy::explain::explain(&model, from, to, protocol, port).unwrap();
    v.action == VerdictAction::Allow
}

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_enforces_network_policy_with_real_traffic() {
    let mut c = Cluster::new("pol", 2, Layout::OneSubnet, Store::Sqlite).await;
    c.apply(POOL).await;
    c.start_all();
    for i in 0..2 {
        c.wait_established(i, 1, Duration::from_secs(40)).await;
    }
    let web = c.add_workload(0, "web").await;
    let client = c.add_workload(1, "cli").await;
    let other = c.add_workload(1, "oth").await;
    set_role(&c, "n1-k8s-web-eth0", "web").await;
    set_role(&c, "n2-k8s-cli-eth0", "client").await;
    set_role(&c, "n2-k8s-oth-eth0", "other").await;
    c.wait_full_reachability(Duration::from_secs(40));

    // With only the kns.default profile, everything is allowed; the agent's table
    // holds the endpoint programs (web's interface in the map) and the natOutgoing
    // chain together.
    wait_for("the policy chains on n1", Duration::from_secs(10), || {
        dispatched(&c, 0).iter().any(|n| n.contains("caliweb"))
            && chains(&c, 0).iter().any(|n| n == "postrouting")
    });
    tcp_exchange(&c.workloads[web], &c.workloads[other], 8080).unwrap();
    let web_ip = c.workloads[web].ip.to_string();
    assert!(c.workloads[other].ns.ping(&web_ip, 2));

    c.apply(WEB_POLICY).await;
    // The policy arrives over the store watch; the allowed client keeps working.
    let (w, o) = (&c.workloads[web], &c.workloads[other]);
    wait_for(
        "the policy to deny other → web",
        Duration::from_secs(20),
        || tcp_exchange(w, o, 8080).is_err(),
    );
    tcp_exchange(&c.workloads[web], &c.workloads[client], 8080)
        .expect("client → web:8080 is allowed by the policy");
    assert!(
        tcp_exchange(&c.workloads[web], &c.workloads[client], 8081).is_err(),
        "client → web:8081 is not in the policy's ports"
    );
    assert!(
        !c.workloads[client].ns.ping(&web_ip, 2),
        "ICMP is not allowed by the TCP-only rule"
    );
    // Egress of web is not selected (types default to Ingress only).
    tcp_exchange(&c.workloads[other], &c.workloads[web], 8082)
        .expect("web's egress is not policed");

    // explain agrees with what the kernel did, case by case.
    let cases = [
        ("default/n2-k8s-cli-eth0", 6, Some(8080), true),
        ("default/n2-k8s-cli-eth0", 6, Some(8081), false),
        ("default/n2-k8s-oth-eth0", 6, Some(8080), false),
        ("default/n2-k8s-cli-eth0", 1, None, false),
    ];
    for (from, proto, port, kernel) in cases {
        assert_eq!(
            explain_allows(&c, from, "default/n1-k8s-web-eth0", proto, port).await,
            kernel,
            "explain {from} → web proto {proto} port {port:?}"
        );
    }
    assert!(
        explain_allows(
            &c,
            "default/n1-k8s-web-eth0",
            "default/n2-k8s-oth-eth0",
            6,
            Some(8082)
        )
        .await
    );

    // Someone flushes the table: the periodic resync puts it back.
    c.nodes[0]
        .ns
        .output(&["nft", "delete", "table", "ip", "tabby"])
        .unwrap();
    wait_for("the table to be restored", Duration::from_secs(40), || {
        dispatched(&c, 0).iter().any(|n| n.contains("caliweb"))
    });
    assert!(tcp_exchange(&c.workloads[web], &c.workloads[other], 8080).is_err());

    // Deleting the policy opens the pod again.
    c.client
        .delete(Kind::NetworkPolicy, Some("default"), "web", None)
        .await
        .unwrap();
    let (w, o) = (&c.workloads[web], &c.workloads[other]);
    wait_for(
        "other → web to be allowed again",
        Duration::from_secs(20),
        || tcp_exchange(w, o, 8080).is_ok(),
    );
    assert!(c.workloads[client].ns.ping(&web_ip, 2));
}

const HOST_ENDPOINT: &str = r#"
apiVersion: projectcalico.org/v3
kind: HostEndpoint
metadata: {name: n1-eth0, labels: {role: node}}
spec: {node: n1, interfaceName: eth0}
"#;

const ALLOW_9998: &str = r#"
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: node-9998}
spec:
  selector: role == 'node'
  ingress: [{action: Allow, protocol: TCP, destination: {ports: [9998]}}]
  egress: [{action: Allow}]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_endpoint_protects_the_node_but_keeps_failsafes() {
    let mut c = Cluster::new("hep", 2, Layout::OneSubnet, Store::Sqlite).await;
    c.apply(POOL).await;
    c.start_all();
    for i in 0..2 {
        c.wait_established(i, 1, Duration::from_secs(40)).await;
    }
    let n1 = c.nodes[0].ns.name().to_string();
    let n2 = c.nodes[1].ns.name().to_string();
    let n1_ip = c.nodes[0].ip.addr();
    tcp_between(&n1, n1_ip, &n2, 9999).expect("no host endpoint yet: open");

    // A host endpoint with no policy denies everything but the failsafe ports.
    c.apply(HOST_ENDPOINT).await;
    wait_for(
        "the host endpoint to close n1:9999",
        Duration::from_secs(20),
        || tcp_between(&n1, n1_ip, &n2, 9999).is_err(),
    );
    tcp_between(&n1, n1_ip, &n2, 22).expect("tcp:22 is a failsafe port");
    tcp_between(&n1, n1_ip, &n2, 6443).expect("tcp:6443 is a failsafe port");
    // BGP (tcp:179) is failsafe too: the session survives.
    let s = c.status(0).await.unwrap();
    assert!(s.peers.iter().all(|p| p.state == "Established"), "{s:?}");

    // A policy for the host endpoint opens one port.
    c.apply(ALLOW_9998).await;
    wait_for(
        "the policy to open n1:9998",
        Duration::from_secs(20),
        || tcp_between(&n1, n1_ip, &n2, 9998).is_ok(),
    );
    assert!(
        tcp_between(&n1, n1_ip, &n2, 9999).is_err(),
        "only 9998 is allowed"
    );

    // Deleting the host endpoint opens the node again.
    c.client
        .delete(Kind::HostEndpoint, None, "n1-eth0", None)
        .await
        .unwrap();
    wait_for("n1:9999 to open again", Duration::from_secs(20), || {
        tcp_between(&n1, n1_ip, &n2, 9999).is_ok()
    });
}
