//! A BGP peer cannot take over a node's own routes (issue 16): a real BIRD, an eBGP
//! peer of node n1 (a BGPPeer with `node: n1`), announces the default route, the
//! node's connected subnet, another node's address and an ordinary prefix. The
//! agent installs the ordinary prefix and a default route beside the host's own
//! (at a higher metric), refuses the subnet and the node address (reported in
//! `tabbyctl node status`), and the nodes still reach each other.

mod common;

use std::time::{Duration, Instant};

use common::{Cluster, Layout, Store};
use tabby_testnet::bgp::{BgpConfig, Neighbor, bird::Bird};
use tabby_testnet::testnet::End;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_cannot_take_over_the_nodes_routes() {
    let mut c = Cluster::new("bs", 2, Layout::OneSubnet, Store::Sqlite).await;
    let peer_ns = c.net.netns("peer").unwrap();
    c.net
        .attach(
            c.fabric.as_ref().unwrap(),
            End::new(&peer_ns, "eth0", &["198.18.0.50/24"]),
        )
        .unwrap();
    let bird = Bird::start(
        &peer_ns,
        &BgpConfig::new("198.18.0.50".parse().unwrap(), 65100)
            .neighbor(Neighbor::new("198.18.0.1".parse().unwrap(), 64512))
            .originate("0.0.0.0/0".parse().unwrap())
            .originate("198.18.0.0/24".parse().unwrap())
            .originate("198.18.0.2/32".parse().unwrap())
            .originate("100.66.0.0/24".parse().unwrap()),
    )
    .unwrap();
    c.apply(
        r#"
apiVersion: projectcalico.org/v3
kind: IPPool
metadata: {name: pool}
spec: {cidr: 100.64.0.0/16, blockSize: 26, vxlanMode: Never, ipipMode: Never, natOutgoing: false}
---
apiVersion: projectcalico.org/v3
kind: BGPPeer
metadata: {name: outside}
spec: {node: n1, peerIP: 198.18.0.50, asNumber: 65100}
"#,
    )
    .await;
    c.start_all();
    c.wait_established(0, 2, Duration::from_secs(40)).await;

    // The ordinary prefix arrives: then every announcement has been processed.
    let deadline = Instant::now() + Duration::from_secs(20);
    let routes = loop {
        let rs = c.nodes[0].ns.ip_json(&["-4", "route", "show"]).unwrap();
        if rs
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["dst"] == "100.66.0.0/24")
        {
            break rs;
        }
        assert!(
            Instant::now() < deadline,
            "100.66.0.0/24 never arrived: {rs}\n{}\n{}\n{}",
            bird.birdc(&["show", "protocols", "all"])
                .unwrap_or_default(),
            c.logs(),
            serde_json::to_string(&c.status(0).await).unwrap()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let all = routes.as_array().unwrap();
    let at =
        |dst: &str| -> Vec<&serde_json::Value> { all.iter().filter(|r| r["dst"] == dst).collect() };
    let learned = at("100.66.0.0/24");
    assert_eq!(learned[0]["protocol"], "80", "{learned:?}");
    assert_eq!(learned[0]["metric"], 2048, "{learned:?}");
    // The host's default route is still there and still preferred; ours is beside.
    let defaults = at("default");
    assert!(
        defaults
            .iter()
            .any(|r| r["gateway"] == "198.18.0.254" && r["metric"].is_null()),
        "{defaults:?}"
    );
    assert!(
        defaults
            .iter()
            .any(|r| r["protocol"] == "80" && r["metric"] == 2048),
        "{defaults:?}"
    );
    let used = c.nodes[0]
        .ns
        .ip_json(&["-4", "route", "get", "203.0.113.1"])
        .unwrap();
    assert_eq!(used[0]["gateway"], "198.18.0.254", "{used}");
    // The connected subnet is the kernel's alone; the other node's address is not
    // routed away from the fabric.
    let subnet = at("198.18.0.0/24");
    assert!(
        subnet.iter().all(|r| r["protocol"] == "kernel"),
        "{subnet:?}"
    );
    assert!(at("198.18.0.2").is_empty(), "{all:?}");
    assert!(c.nodes[0].ns.ping("198.18.0.2", 2));
    // Both refusals are reported.
    let s = c.status(0).await.unwrap();
    let problems = s.problems.join("\n");
    assert!(problems.contains("198.18.0.0/24"), "{problems}");
    assert!(problems.contains("198.18.0.2/32"), "{problems}");
    let table = tabby_node::status::render_table(&s);
    assert!(table.contains("Problems"), "{table}");
}
