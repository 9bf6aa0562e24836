//! tabby-node end to end: agents in network namespaces on bridges, pods wired as the
//! CNI plugin wires them, real traffic between pods on different nodes in each
//! network model (no encapsulation over BGP mesh, route reflector, VXLAN Always,
//! VXLAN CrossSubnet across a router), drift repair, restart and store outages.

mod common;

use std::time::{Duration, Instant};

use common::{Cluster, Layout, Store, tcp_exchange};

const POOL_NEVER: &str = r#"
apiVersion: projectcalico.org/v3
kind: IPPool
metadata: {name: pool-a}
spec: {cidr: 100.64.0.0/16, blockSize: 26, vxlanMode: Never, ipipMode: Never, natOutgoing: false}
"#;

fn pool(mode: &str) -> String {
    format!(
        "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {{name: pool-a}}\nspec: {{cidr: 100.64.0.0/16, blockSize: 26, vxlanMode: {mode}, ipipMode: Never, natOutgoing: true}}\n"
    )
}

fn routes_proto80(c: &Cluster, node: usize) -> serde_json::Value {
    c.nodes[node]
        .ns
        .ip_json(&["route", "show", "proto", "80"])
        .unwrap()
}

fn route_to<'a>(routes: &'a serde_json::Value, dst: &str) -> Option<&'a serde_json::Value> {
    routes
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["dst"].as_str() == Some(dst))
}

fn block_of(ip: std::net::IpAddr) -> String {
    let net = ipnet::IpNet::new(ip, 26).unwrap().trunc();
    net.to_string()
}

async fn wait_route(c: &Cluster, node: usize, dst: &str, timeout: Duration) -> serde_json::Value {
    let deadline = Instant::now() + timeout;
    loop {
        let rs = routes_proto80(c, node);
        if let Some(r) = route_to(&rs, dst) {
            return r.clone();
        }
        if Instant::now() > deadline {
            panic!(
                "no route to {dst} on {}\n{}\n{}",
                c.nodes[node].name,
                c.routes_dump(),
                c.logs()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bgp_mesh_without_encapsulation() {
    let mut c = Cluster::new("m", 3, Layout::OneSubnet, Store::Sqlite).await;
    c.apply(POOL_NEVER).await;
    c.nodes[0]
        .flags
        .extend(["--metrics-listen", "127.0.0.1:9099"].map(String::from));
    c.start_all();
    for i in 0..3 {
        c.wait_established(i, 2, Duration::from_secs(40)).await;
    }
    let s = c.status(0).await.unwrap();
    assert!(
        s.peers.iter().all(|p| p.peer_type == "node-to-node mesh"),
        "{s:?}"
    );
    let table = tabby_node::status::render_table(&s);
    assert!(
        table.contains("198.18.0.2") && table.contains("node-to-node mesh"),
        "{table}"
    );
    for (node, name) in [(0, "a1"), (1, "a2"), (2, "a3")] {
        c.add_workload(node, name).await;
    }
    c.wait_full_reachability(Duration::from_secs(40));
    tcp_exchange(&c.workloads[0], &c.workloads[2], 8080).unwrap();
    tcp_exchange(&c.workloads[2], &c.workloads[1], 8081).unwrap();

    // Routes on n1: its own block is a blackhole, n2's block is learned over BGP.
    let own = block_of(c.workloads[0].ip);
    let remote = block_of(c.workloads[1].ip);
    let rs = routes_proto80(&c, 0);
    assert_eq!(route_to(&rs, &own).unwrap()["type"], "blackhole", "{rs}");
    assert_eq!(
        route_to(&rs, &remote).unwrap()["gateway"],
        "198.18.0.2",
        "{rs}"
    );

    // Metrics and health from the agent itself, and the MTU file for the CNI plugin.
    let metrics = c.nodes[0]
        .ns
        .output(&["curl", "-sf", "http://127.0.0.1:9099/metrics"])
        .unwrap();
    assert!(
        metrics.contains("tabby_bgp_sessions_established 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("tabby_reconcile_duration_seconds_count"),
        "{metrics}"
    );
    let ready = c.nodes[0]
        .ns
        .output(&["curl", "-sf", "http://127.0.0.1:9099/readiness"])
        .unwrap();
    assert!(ready.contains("ok"), "{ready}");
    let mtu = std::fs::read_to_string(c.dir.join("n1-state/mtu")).unwrap();
    assert_eq!(mtu, "1500");

    // A route deleted by hand comes back.
    c.nodes[0].ns.ip(&["route", "del", &remote]).unwrap();
    let back = wait_route(&c, 0, &remote, Duration::from_secs(10)).await;
    assert_eq!(back["gateway"], "198.18.0.2");
    assert!(c.workloads[0].ns.ping(&c.workloads[1].ip.to_string(), 2));

    // Deleting this node's Node resource does not wipe its routes; the agent
    // registers again.
    let before = routes_proto80(&c, 0);
    c.client
        .delete(tabby_api::Kind::Node, None, "n1", None)
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while c
        .client
        .get(tabby_api::Kind::Node, None, "n1")
        .await
        .unwrap()
        .is_none()
    {
        assert!(
            Instant::now() < deadline,
            "n1 did not register again\n{}",
            c.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Its own routes never went (peers may have reset their sessions to it while
    // it was gone, so learned ones can come and go).
    assert_eq!(
        route_to(&routes_proto80(&c, 0), &own).map(|r| r["type"].clone()),
        Some(serde_json::json!("blackhole"))
    );
    c.wait_established(0, 2, Duration::from_secs(20)).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while routes_proto80(&c, 0) != before {
        assert!(
            Instant::now() < deadline,
            "routes did not come back\n{}",
            c.routes_dump()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Live configuration: a new global peer is added without touching the mesh
    // sessions; turning the mesh off removes exactly those.
    let before = c.status(0).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    c.apply(
        r#"
apiVersion: projectcalico.org/v3
kind: BGPPeer
metadata: {name: tor}
spec: {peerIP: 198.18.0.99, asNumber: 65099}
"#,
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let after = loop {
        let s = c.status(0).await.unwrap();
        if s.peers.len() == 3 {
            break s;
        }
        assert!(Instant::now() < deadline, "global peer not added: {s:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let global = after
        .peers
        .iter()
        .find(|p| p.address.to_string() == "198.18.0.99")
        .unwrap();
    assert_eq!(global.peer_type, "global");
    for p in before.peers.iter() {
        let now = after.peers.iter().find(|q| q.address == p.address).unwrap();
        assert_eq!(
            (now.state.as_str(), now.since),
            ("Established", p.since),
            "mesh session {} was reset by an unrelated change",
            p.address
        );
    }
    c.apply(
        r#"
apiVersion: projectcalico.org/v3
kind: BGPConfiguration
metadata: {name: default}
spec: {nodeToNodeMeshEnabled: false}
"#,
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = c.status(0).await.unwrap();
        if s.peers.len() == 1 && s.peers[0].peer_type == "global" {
            break;
        }
        assert!(Instant::now() < deadline, "mesh not removed: {s:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vxlan_always() {
    let mut c = Cluster::new("v", 3, Layout::OneSubnet, Store::Sqlite).await;
    c.apply(&pool("Always")).await;
    for n in &mut c.nodes {
        n.flags.push("--no-bgp".into());
    }
    c.start_all();
    for (node, name) in [(0, "b1"), (1, "b2"), (2, "b3")] {
        c.add_workload(node, name).await;
    }
    c.wait_full_reachability(Duration::from_secs(40));
    tcp_exchange(&c.workloads[1], &c.workloads[0], 8080).unwrap();
    let link = c.nodes[0]
        .ns
        .ip_json(&["-d", "link", "show", "vxlan.calico"])
        .unwrap();
    let info = &link[0]["linkinfo"]["info_data"];
    assert_eq!(info["id"], 4096, "{link}");
    assert_eq!(info["port"], 4789, "{link}");
    assert_eq!(link[0]["mtu"], 1450, "{link}");
    let mtu = std::fs::read_to_string(c.dir.join("n1-state/mtu")).unwrap();
    assert_eq!(mtu, "1450", "pod MTU is the host's minus VXLAN's 50");
    let remote = block_of(c.workloads[1].ip);
    let rs = routes_proto80(&c, 0);
    let r = route_to(&rs, &remote).unwrap();
    assert_eq!(r["dev"], "vxlan.calico", "{rs}");
    assert!(
        r["flags"].as_array().unwrap().iter().any(|f| f == "onlink"),
        "{rs}"
    );
    // Permanent neighbour and FDB entries for both remote VTEPs.
    let neigh = c.nodes[0]
        .ns
        .ip_json(&["neigh", "show", "dev", "vxlan.calico"])
        .unwrap();
    assert_eq!(neigh.as_array().unwrap().len(), 2, "{neigh}");
    let fdb = c.nodes[0]
        .ns
        .output(&["bridge", "-j", "fdb", "show", "dev", "vxlan.calico"])
        .unwrap();
    assert!(
        fdb.contains("198.18.0.2") && fdb.contains("198.18.0.3"),
        "{fdb}"
    );

    // natOutgoing: the pool is in the masquerade set of the `tabby` table.
    let nft = c.nodes[0]
        .ns
        .output(&["nft", "-j", "list", "set", "ip", "tabby", "masq-ipam-pools"])
        .unwrap();
    assert!(nft.contains("100.64.0.0"), "{nft}");

    // Drift: a neighbour entry removed by hand is restored.
    let tun: String = neigh[0]["dst"].as_str().unwrap().to_string();
    c.nodes[0]
        .ns
        .ip(&["neigh", "del", &tun, "dev", "vxlan.calico"])
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let n = c.nodes[0]
            .ns
            .ip_json(&["neigh", "show", "dev", "vxlan.calico"])
            .unwrap();
        if n.as_array().unwrap().len() == 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "neighbour {tun} not restored\n{}",
            c.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vxlan_cross_subnet_behind_a_router() {
    // n1, n3 in 198.18.1.0/24; n2, n4 in 198.18.2.0/24.
    let mut c = Cluster::new("x", 4, Layout::TwoSubnets, Store::Sqlite).await;
    c.apply(&pool("CrossSubnet")).await;
    for n in &mut c.nodes {
        n.flags.push("--no-bgp".into());
    }
    c.start_all();
    for (node, name) in [(0, "c1"), (1, "c2"), (2, "c3"), (3, "c4")] {
        c.add_workload(node, name).await;
    }
    c.wait_full_reachability(Duration::from_secs(40));
    tcp_exchange(&c.workloads[0], &c.workloads[1], 8080).unwrap();
    let rs = routes_proto80(&c, 0);
    let same = route_to(&rs, &block_of(c.workloads[2].ip)).unwrap();
    assert_eq!(same["dev"], "eth0", "same subnet goes natively: {rs}");
    assert_eq!(same["gateway"], c.nodes[2].ip.addr().to_string());
    let across = route_to(&rs, &block_of(c.workloads[1].ip)).unwrap();
    assert_eq!(
        across["dev"], "vxlan.calico",
        "across subnets it is encapsulated: {rs}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_reflector_without_mesh() {
    let mut c = Cluster::new("r", 4, Layout::OneSubnet, Store::Sqlite).await;
    c.apply(POOL_NEVER).await;
    c.apply(
        r#"
apiVersion: projectcalico.org/v3
kind: BGPConfiguration
metadata: {name: default}
spec: {nodeToNodeMeshEnabled: false, asNumber: 64512}
---
apiVersion: projectcalico.org/v3
kind: BGPPeer
metadata: {name: peer-with-route-reflectors}
spec:
  nodeSelector: all()
  peerSelector: route-reflector == 'true'
"#,
    )
    .await;
    c.nodes[0].flags.extend(
        [
            "--label",
            "route-reflector=true",
            "--route-reflector-cluster-id",
            "244.0.0.1",
        ]
        .map(String::from),
    );
    c.start_all();
    c.wait_established(0, 3, Duration::from_secs(40)).await;
    for i in 1..4 {
        c.wait_established(i, 1, Duration::from_secs(40)).await;
        let s = c.status(i).await.unwrap();
        assert_eq!(
            s.peers.len(),
            1,
            "a client peers only with the reflector: {s:?}"
        );
        assert_eq!(s.peers[0].address.to_string(), "198.18.0.1");
    }
    for (node, name) in [(1, "d2"), (2, "d3"), (3, "d4")] {
        c.add_workload(node, name).await;
    }
    c.wait_full_reachability(Duration::from_secs(40));
    // n2 learned n3's block through the reflector, with n3 as next hop.
    let rs = routes_proto80(&c, 1);
    let r = route_to(&rs, &block_of(c.workloads[1].ip)).unwrap();
    assert_eq!(r["gateway"], "198.18.0.3", "{rs}");
}

fn ping_loss(ns: &tabby_testnet::Netns, to: &str, count: u32, interval: &str) -> (u32, u32) {
    let out = ns
        .command("ping")
        .args([
            "-n",
            "-q",
            "-i",
            interval,
            "-W",
            "1",
            "-c",
            &count.to_string(),
            to,
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    // "500 packets transmitted, 498 received, ..."
    let line = text
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .unwrap_or_else(|| panic!("no ping summary in {text:?}"));
    let nums: Vec<u32> = line
        .split(|ch: char| !ch.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .take(2)
        .map(|s| s.parse().unwrap())
        .collect();
    (nums[0], nums[1])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_restart_drops_under_one_percent() {
    let mut c = Cluster::new("s", 2, Layout::OneSubnet, Store::Sqlite).await;
    c.apply(POOL_NEVER).await;
    c.start_all();
    c.wait_established(0, 1, Duration::from_secs(40)).await;
    c.wait_established(1, 1, Duration::from_secs(40)).await;
    c.add_workload(0, "e1").await;
    c.add_workload(1, "e2").await;
    c.wait_full_reachability(Duration::from_secs(40));
    let from = c.workloads[0].ns.clone();
    let to = c.workloads[1].ip.to_string();
    // 50 pings a second for 12 s, restarting node 1's agent in the middle.
    let pinger = std::thread::spawn(move || ping_loss(&from, &to, 600, "0.02"));
    tokio::time::sleep(Duration::from_secs(2)).await;
    c.stop(0);
    tokio::time::sleep(Duration::from_secs(1)).await;
    c.start(0);
    c.wait_established(0, 1, Duration::from_secs(30)).await;
    let (sent, received) = pinger.join().unwrap();
    let lost = sent - received;
    assert!(
        lost * 100 <= sent,
        "lost {lost} of {sent} pings across the restart\n{}",
        c.logs()
    );
    // And the restarted agent still serves new pods.
    c.add_workload(0, "e3").await;
    c.wait_full_reachability(Duration::from_secs(30));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_outage_leaves_traffic_flowing() {
    let mut c = Cluster::new("e", 2, Layout::OneSubnet, Store::Etcd).await;
    c.apply(POOL_NEVER).await;
    c.start_all();
    c.wait_established(0, 1, Duration::from_secs(40)).await;
    c.add_workload(0, "f1").await;
    c.add_workload(1, "f2").await;
    c.wait_full_reachability(Duration::from_secs(40));
    let routes_before = routes_proto80(&c, 0);
    c.etcd.as_mut().unwrap().kill_all();
    let from = c.workloads[0].ns.clone();
    let to = c.workloads[1].ip.to_string();
    // 30 s without the store, 10 pings a second.
    let (sent, received) = std::thread::spawn(move || ping_loss(&from, &to, 300, "0.1"))
        .join()
        .unwrap();
    assert!(
        (sent - received) * 100 <= sent,
        "lost {} of {sent} pings while etcd was down\n{}",
        sent - received,
        c.logs()
    );
    assert_eq!(
        routes_proto80(&c, 0),
        routes_before,
        "routes changed during the outage"
    );
    for n in &mut c.nodes {
        assert!(
            n.agent.as_mut().unwrap().is_running(),
            "an agent died during the outage"
        );
    }
    c.etcd.as_mut().unwrap().restart_all().await.unwrap();
    // Once the store is back, new pods get routes again.
    c.add_workload(1, "f3").await;
    c.wait_full_reachability(Duration::from_secs(60));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cni_pods_on_two_nodes_reach_each_other() {
    let mut c = Cluster::new("c", 2, Layout::OneSubnet, Store::Sqlite).await;
    c.apply(POOL_NEVER).await;
    c.start_all();
    c.wait_established(0, 1, Duration::from_secs(40)).await;
    let a = c.add_cni_pod(0, "g1");
    let b = c.add_cni_pod(1, "g2");
    c.wait_full_reachability(Duration::from_secs(40));
    tcp_exchange(&c.workloads[a], &c.workloads[b], 8080).unwrap();
    // DEL frees the block; the other node drops its route.
    let block = block_of(c.workloads[b].ip);
    c.del_cni_pod(b);
    let deadline = Instant::now() + Duration::from_secs(15);
    while route_to(&routes_proto80(&c, 0), &block).is_some() {
        assert!(
            Instant::now() < deadline,
            "route to the freed block {block} stayed\n{}",
            c.routes_dump()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    c.del_cni_pod(0);
    let deadline = Instant::now() + Duration::from_secs(15);
    while !routes_proto80(&c, 1).as_array().unwrap().is_empty() {
        assert!(
            Instant::now() < deadline,
            "routes stayed\n{}",
            c.routes_dump()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesh_password_from_a_secret_file() {
    let mut c = Cluster::new("p", 2, Layout::OneSubnet, Store::Sqlite).await;
    c.apply(POOL_NEVER).await;
    c.apply(
        r#"
apiVersion: projectcalico.org/v3
kind: BGPConfiguration
metadata: {name: default}
spec:
  nodeMeshPassword:
    secretKeyRef: {name: bgp-secrets, key: mesh}
"#,
    )
    .await;
    let secrets = c.dir.join("secrets");
    std::fs::create_dir_all(secrets.join("bgp-secrets")).unwrap();
    std::fs::write(secrets.join("bgp-secrets/mesh"), "s3cret-mesh\n").unwrap();
    for n in &mut c.nodes {
        n.flags
            .extend(["--secrets-dir".to_string(), secrets.display().to_string()]);
    }
    c.start_all();
    c.wait_established(0, 1, Duration::from_secs(40)).await;
    c.wait_established(1, 1, Duration::from_secs(40)).await;
    // The session really is signed: the kernel shows the MD5 key on the socket.
    let ss = c.nodes[0]
        .ns
        .output(&[
            "ss",
            "-tniH",
            "state",
            "established",
            "( sport = :179 or dport = :179 )",
        ])
        .unwrap();
    assert!(ss.contains("md5"), "no TCP MD5 on the BGP session: {ss}");
    c.add_workload(0, "h1").await;
    c.add_workload(1, "h2").await;
    c.wait_full_reachability(Duration::from_secs(40));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dual_stack_mesh() {
    let mut c = Cluster::new("d", 2, Layout::OneSubnet, Store::Sqlite).await;
    c.apply(POOL_NEVER).await;
    c.apply(
        r#"
apiVersion: projectcalico.org/v3
kind: IPPool
metadata: {name: pool-v6}
spec: {cidr: "2001:db8:100::/112", blockSize: 122, vxlanMode: Never, ipipMode: Never}
"#,
    )
    .await;
    c.enable_ipv6();
    c.start_all();
    // One IPv4 and one IPv6 mesh session on each node.
    c.wait_established(0, 2, Duration::from_secs(40)).await;
    let s = c.status(0).await.unwrap();
    assert!(
        s.peers
            .iter()
            .any(|p| p.address.to_string() == "2001:db8::2"),
        "{s:?}"
    );
    let table = tabby_node::status::render_table(&s);
    assert!(
        table.contains("IPv6 BGP status") && table.contains("2001:db8::2"),
        "{table}"
    );
    c.add_dual_stack_workload(0, "i1").await;
    c.add_dual_stack_workload(1, "i2").await;
    c.wait_full_reachability(Duration::from_secs(40));
    c.wait_full_reachability_v6(Duration::from_secs(40));
    let v6 = c.nodes[0]
        .ns
        .ip_json(&["-6", "route", "show", "proto", "80"])
        .unwrap();
    let remote = ipnet::IpNet::new(c.workloads[1].ip6.unwrap(), 122)
        .unwrap()
        .trunc()
        .to_string();
    assert!(
        route_to(&v6, &remote).is_some_and(|r| r["gateway"] == "2001:db8::2"),
        "{v6}"
    );
}
