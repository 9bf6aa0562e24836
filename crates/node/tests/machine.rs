//! The agent's event loop on fakes (no root, no daemons): start-up, work done per
//! change, drift, a store outage, a burst of events, failing drivers, a dead BGP
//! speaker, bad resources. Inputs are built as the store and kernel feeds build
//! them; effects are read back from the fake netlink world, nftables, tc and BGP.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use serde_json::{Value, json};
use tabby_api::Kind;
use tabby_dataplane::fake::FakeWorld;
use tabby_dataplane::tc::FakeTc;
use tabby_dataplane::{NetlinkEvent, Route, RouteKind};
use tabby_node::agent::{AgentConfig, Shared};
use tabby_node::drivers::{Drivers, FakeBgp};
use tabby_node::machine::{Agent, Input};
use tabby_node::metrics::{Health, Metrics};
use tabby_node::nat::{FakeNft, NftCall};
use tabby_store::{KeyValue, StoreUrl, WatchEvent, keys};

const NS: &str = "n0";

struct Rig {
    world: FakeWorld,
    nft: Arc<FakeNft>,
    bgp: FakeBgp,
    shared: Arc<Shared>,
    agent: Agent,
    rev: i64,
    _dir: tempfile::TempDir,
}

fn resource(kind: &str, name: &str, ns: Option<&str>, spec: Value, labels: Value) -> Value {
    let mut meta = json!({"name": name, "labels": labels});
    if let Some(ns) = ns {
        meta["namespace"] = ns.into();
    }
    json!({"apiVersion": "projectcalico.org/v3", "kind": kind, "metadata": meta, "spec": spec})
}

fn kind_of(kind: &str) -> Kind {
    Kind::from_manifest_name(kind).unwrap()
}

fn node(i: u8) -> Value {
    resource(
        "Node",
        &format!("n{i}"),
        None,
        json!({"bgp": {"ipv4Address": format!("198.18.0.{}/24", i + 1)},
               "ipv4VXLANTunnelAddr": format!("100.65.0.{}", i + 1)}),
        json!({}),
    )
}

fn pool(vxlan: &str) -> Value {
    resource(
        "IPPool",
        "p",
        None,
        json!({"cidr": "100.64.0.0/16", "blockSize": 26, "vxlanMode": vxlan, "ipipMode": "Never", "natOutgoing": true}),
        json!({}),
    )
}

fn wep(name: &str, node: &str, ip: &str, labels: Value) -> Value {
    resource(
        "WorkloadEndpoint",
        name,
        Some("default"),
        json!({"node": node, "interfaceName": format!("cali{name}"), "ipNetworks": [ip], "profiles": ["kns.default"]}),
        labels,
    )
}

fn block_of(i: u8) -> String {
    format!("100.64.{i}.0/26")
}

fn block_kv(i: u8, host: u8, rev: i64) -> KeyValue {
    let mut b = tabby_ipam::AllocationBlock::new(block_of(i).parse().unwrap(), 0).unwrap();
    b.affinity = Some(format!("host:n{host}"));
    KeyValue {
        key: keys::ipam_block_key(&block_of(i), false),
        value: serde_json::to_vec(&b).unwrap(),
        create_revision: rev,
        mod_revision: rev,
    }
}

fn kv(v: &Value, rev: i64) -> KeyValue {
    let kind = kind_of(v["kind"].as_str().unwrap());
    let key = tabby_client::key_of(
        kind,
        v["metadata"]["namespace"].as_str(),
        v["metadata"]["name"].as_str().unwrap(),
    );
    KeyValue {
        key,
        value: serde_json::to_vec(v).unwrap(),
        create_revision: rev,
        mod_revision: rev,
    }
}

impl Rig {
    /// Node n0 with `eth0` 198.18.0.1/24 and a local workload interface `calia`;
    /// the agent configured by `tune`.
    fn new(tune: impl FnOnce(&mut AgentConfig)) -> Rig {
        let world = FakeWorld::new();
        let eth = world.add_link(NS, "eth0", Some("veth"), 1500);
        world.add_link(NS, "calia", Some("veth"), 1500);
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = AgentConfig::new("n0", StoreUrl::parse("sqlite:///nonexistent").unwrap());
        cfg.bgp = false;
        cfg.state_dir = dir.path().to_path_buf();
        cfg.speaker_check = Duration::ZERO;
        tune(&mut cfg);
        let nft = Arc::new(FakeNft::new());
        let bgp = FakeBgp::new();
        let drivers = Drivers {
            netlink: Arc::new(world.netlink(NS)),
            sysctl: Arc::new(world.sysctl(NS)),
            nft: nft.clone(),
            tc: Arc::new(FakeTc::new()),
            bgp: Arc::new(bgp.clone()),
        };
        let shared = Arc::new(Shared::new(
            "n0",
            Arc::new(Metrics::new()),
            Arc::new(Health::new()),
        ));
        let agent = Agent::new(
            cfg,
            drivers,
            None,
            shared.clone(),
            "198.18.0.1/24".parse().unwrap(),
            eth,
            false,
            1500,
        );
        Rig {
            world,
            nft,
            bgp,
            shared,
            agent,
            rev: 0,
            _dir: dir,
        }
    }

    fn next(&mut self) -> i64 {
        self.rev += 1;
        self.rev
    }

    /// The standard cluster: n0..n2, a VXLAN pool (or `vxlan`), a block each, a
    /// local pod `a` (100.64.0.5) and a remote pod `b` on n1 (100.64.1.5).
    fn snapshot(&mut self, vxlan: &str) {
        let mut kvs = Vec::new();
        for i in 0..3 {
            let r = self.next();
            kvs.push(kv(&node(i), r));
            let r = self.next();
            kvs.push(block_kv(i, i, r));
        }
        let r = self.next();
        kvs.push(kv(&pool(vxlan), r));
        let r = self.next();
        kvs.push(kv(&wep("a", "n0", "100.64.0.5/32", json!({"app": "a"})), r));
        let r = self.next();
        kvs.push(kv(&wep("b", "n1", "100.64.1.5/32", json!({"app": "b"})), r));
        let revision = self.rev;
        self.agent.step(Input::Snapshot { kvs, revision });
    }

    fn put(&mut self, v: &Value) {
        let r = self.next();
        self.agent
            .step(Input::Events(vec![WatchEvent::Put(kv(v, r))]));
    }

    fn routes(&self) -> Vec<Route> {
        self.world.routes(NS)
    }

    fn route(&self, dst: &str) -> Option<Route> {
        let dst: IpNet = dst.parse().unwrap();
        self.routes().into_iter().find(|r| r.dst == dst)
    }

    fn mutations(&self) -> Vec<String> {
        self.world
            .calls()
            .into_iter()
            .filter(|c| !c.contains(": list "))
            .collect()
    }

    fn nft_batches(&self) -> Vec<Value> {
        self.nft
            .calls()
            .into_iter()
            .filter_map(|c| match c {
                NftCall::ApplyJson(v) => Some(v),
                _ => None,
            })
            .collect()
    }
}

fn is_full(batch: &Value) -> bool {
    batch["nftables"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c.get("delete").is_some_and(|d| d.get("table").is_some()))
}

#[tokio::test]
async fn start_up_programs_routes_vxlan_policy_and_the_mtu_file() {
    let mut rig = Rig::new(|_| {});
    // Nothing happens before the first snapshot.
    let pass = rig.agent.execute().await;
    assert_eq!(pass.route_ops, 0);
    assert!(rig.mutations().is_empty(), "{:?}", rig.mutations());
    rig.snapshot("Always");
    let pass = rig.agent.execute().await;
    assert!(pass.errors.is_empty(), "{:?}", pass.errors);
    let vx = rig
        .world
        .links(NS)
        .into_iter()
        .find(|l| l.name == "vxlan.calico")
        .expect("the VXLAN device");
    // Own block: blackhole. Remote blocks: via the peer's tunnel address, onlink.
    assert_eq!(rig.route(&block_of(0)).unwrap().kind, RouteKind::Blackhole);
    for i in 1..3u8 {
        let r = rig.route(&block_of(i)).unwrap();
        assert_eq!(r.oif, Some(vx.index), "{r}");
        assert_eq!(
            r.gateway,
            Some(format!("100.65.0.{}", i + 1).parse().unwrap())
        );
    }
    // The local pod's /32 on its interface.
    let a = rig.route("100.64.0.5/32").unwrap();
    assert_eq!(a.gateway, None);
    // One neighbour and FDB entry per remote node.
    assert_eq!(rig.world.neighbours(NS).len(), 2);
    assert_eq!(rig.world.fdb(NS).len(), 2);
    // natOutgoing and the policy table in one full batch.
    let batches = rig.nft_batches();
    assert_eq!(batches.len(), 1);
    assert!(is_full(&batches[0]));
    assert!(batches[0].to_string().contains("masquerade"));
    let mtu = std::fs::read_to_string(rig._dir.path().join("mtu")).unwrap();
    assert_eq!(mtu, "1450");
    assert!(rig.shared.health.ready());
    // A second pass with nothing dirty does nothing at all.
    let before = rig.world.calls().len();
    let pass = rig.agent.execute().await;
    assert_eq!((pass.route_ops, pass.nft_batches), (0, 0));
    assert_eq!(rig.world.calls().len(), before);
}

#[tokio::test]
async fn unrelated_writes_cost_no_kernel_work() {
    let mut rig = Rig::new(|_| {});
    rig.snapshot("Always");
    rig.agent.execute().await;
    let calls = rig.world.calls().len();
    let batches = rig.nft_batches().len();
    // A label patched on a pod of another node, a new pod inside its node's block,
    // a handle written by IPAM: no route, no neighbour, no nftables batch.
    rig.put(&wep(
        "b",
        "n1",
        "100.64.1.5/32",
        json!({"app": "b", "v": "2"}),
    ));
    rig.put(&wep("c", "n2", "100.64.2.9/32", json!({"app": "c"})));
    let r = rig.next();
    rig.agent.step(Input::Events(vec![WatchEvent::Put(KeyValue {
        key: keys::ipam_handle_key("k8s-pod-network.x"),
        value: b"{}".to_vec(),
        create_revision: r,
        mod_revision: r,
    })]));
    let pass = rig.agent.execute().await;
    assert!(pass.errors.is_empty(), "{:?}", pass.errors);
    assert_eq!(pass.route_ops, 0);
    assert!(!pass.full);
    assert_eq!(rig.world.calls().len(), calls, "{:?}", rig.world.calls());
    assert_eq!(rig.nft_batches().len(), batches);
    assert_eq!(rig.agent.view().revision, rig.rev);
}

#[tokio::test]
async fn a_pod_is_one_incremental_change_and_its_deletion_another() {
    let mut rig = Rig::new(|_| {});
    rig.snapshot("Always");
    rig.agent.execute().await;
    // A pod of n2 borrowing an address from n1's block: its own /32 route.
    rig.put(&wep("x", "n2", "100.64.1.77/32", json!({})));
    let pass = rig.agent.execute().await;
    assert_eq!(pass.route_ops, 1);
    assert!(!pass.full, "no full pass for one change");
    let r = rig.route("100.64.1.77/32").unwrap();
    assert_eq!(r.gateway, Some("100.65.0.3".parse::<IpAddr>().unwrap()));
    // A local pod: its device route as soon as its interface exists.
    rig.world.add_link(NS, "calinew", Some("veth"), 1500);
    let idx = rig
        .world
        .links(NS)
        .into_iter()
        .find(|l| l.name == "calinew")
        .unwrap()
        .index;
    rig.agent.step(Input::Kernel(vec![NetlinkEvent::Link {
        deleted: false,
        index: idx,
        name: "calinew".into(),
    }]));
    rig.put(&wep("new", "n0", "100.64.0.9/32", json!({"app": "a"})));
    let pass = rig.agent.execute().await;
    assert_eq!(pass.route_ops, 1);
    assert_eq!(rig.route("100.64.0.9/32").unwrap().oif, Some(idx));
    // Deleting the borrowed pod removes its route.
    let r = rig.next();
    rig.agent.step(Input::Events(vec![WatchEvent::Delete {
        key: tabby_client::key_of(Kind::WorkloadEndpoint, Some("default"), "x"),
        revision: r,
        prev: None,
    }]));
    let pass = rig.agent.execute().await;
    assert_eq!(pass.route_ops, 1);
    assert!(rig.route("100.64.1.77/32").is_none());
}

#[tokio::test]
async fn drift_is_repaired_from_events_and_on_resync() {
    let mut rig = Rig::new(|_| {});
    rig.snapshot("Always");
    rig.agent.execute().await;
    let victim = rig.route(&block_of(1)).unwrap();
    let nl = rig.world.netlink(NS);
    use tabby_dataplane::Netlink;
    nl.del_route(&victim).await.unwrap();
    // The kernel tells us: repaired at once, without reading every route back.
    rig.agent.step(Input::Kernel(vec![NetlinkEvent::Route {
        deleted: true,
        route: victim.clone(),
    }]));
    let pass = rig.agent.execute().await;
    assert!(!pass.full);
    assert_eq!(pass.route_ops, 1);
    assert!(rig.route(&block_of(1)).is_some());
    // Without an event (lost), the periodic resync finds and repairs it, and
    // removes a stray route of ours.
    nl.del_route(&victim).await.unwrap();
    let mut stray = Route::blackhole("100.64.200.0/26".parse().unwrap());
    stray.protocol = tabby_dataplane::TABBY_ROUTE_PROTOCOL;
    nl.add_route(&stray).await.unwrap();
    rig.agent.step(Input::Resync);
    let pass = rig.agent.execute().await;
    assert!(pass.full);
    assert!(rig.route(&block_of(1)).is_some());
    assert!(rig.route("100.64.200.0/26").is_none());
}

#[tokio::test]
async fn a_store_outage_tears_nothing_down_and_readiness_follows_the_grace() {
    let mut rig = Rig::new(|c| c.store_grace = Duration::ZERO);
    rig.snapshot("Always");
    rig.agent.execute().await;
    assert!(rig.shared.health.ready());
    let routes = rig.routes();
    rig.agent
        .step(Input::StoreDown("connection refused".into()));
    rig.agent.step(Input::Resync);
    rig.agent.execute().await;
    assert_eq!(rig.routes(), routes, "nothing torn down");
    assert!(!rig.shared.health.ready(), "not ready past the grace");
    // The store is back: a fresh snapshot (compaction) that lost a pod while we
    // were away is diffed against the view.
    let mut kvs = Vec::new();
    for i in 0..3 {
        kvs.push(kv(&node(i), 1 + 2 * i64::from(i)));
        kvs.push(block_kv(i, i, 2 + 2 * i64::from(i)));
    }
    kvs.push(kv(&pool("Always"), 7));
    kvs.push(kv(&wep("a", "n0", "100.64.0.5/32", json!({"app": "a"})), 8));
    kvs.push(kv(&wep("x", "n2", "100.64.1.99/32", json!({})), 50));
    rig.agent.step(Input::Snapshot { kvs, revision: 50 });
    let pass = rig.agent.execute().await;
    assert!(pass.errors.is_empty(), "{:?}", pass.errors);
    assert!(rig.shared.health.ready());
    assert!(rig.route("100.64.1.99/32").is_some(), "the new pod's route");
    assert_eq!(pass.route_ops, 1, "only what changed");
}

#[tokio::test]
async fn a_burst_of_a_thousand_events_is_one_pass() {
    let mut rig = Rig::new(|_| {});
    rig.snapshot("Always");
    rig.agent.execute().await;
    let mut evs = Vec::new();
    for i in 0..1000u32 {
        // Pods of n2 with addresses borrowed from n1's and n0's blocks' space.
        let ip = format!("100.64.{}.{}/32", 10 + i / 200, i % 200);
        let r = rig.next();
        evs.push(WatchEvent::Put(kv(
            &wep(&format!("p{i}"), "n2", &ip, json!({"app": "burst"})),
            r,
        )));
    }
    rig.agent.step(Input::Events(evs));
    let batches = rig.nft_batches().len();
    let pass = rig.agent.execute().await;
    assert!(pass.errors.is_empty(), "{:?}", pass.errors);
    assert_eq!(pass.route_ops, 1000);
    assert!(!pass.full);
    assert_eq!(rig.routes().len(), 1000 + 4);
    assert!(rig.nft_batches().len() <= batches + 1);
    assert!(
        rig.shared
            .metrics
            .render()
            .contains("tabby_store_events_total"),
        "events are counted"
    );
}

#[tokio::test]
async fn failing_drivers_are_retried_and_never_mistaken_for_empty() {
    let mut rig = Rig::new(|_| {});
    rig.snapshot("Always");
    rig.agent.execute().await;
    let routes = rig.routes();
    // A failed link dump is an error, not "no links": nothing is deleted.
    rig.world.fail("list links", 1);
    rig.agent.step(Input::Resync);
    let pass = rig.agent.execute().await;
    assert!(
        pass.errors.iter().any(|e| e.contains("list links")),
        "{:?}",
        pass.errors
    );
    assert_eq!(rig.routes(), routes);
    // A failed route dump likewise.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    rig.world.fail("list routes", 1);
    let pass = rig.agent.execute().await;
    assert!(
        pass.errors.iter().any(|e| e.contains("routes")),
        "{:?}",
        pass.errors
    );
    assert_eq!(rig.routes(), routes);
    // After the back-off the retry succeeds.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert!(rig.agent.wants_tick());
    let pass = rig.agent.execute().await;
    assert!(pass.errors.is_empty(), "{:?}", pass.errors);
    assert!(pass.full);
    // nftables fails once: the next apply replaces the tables in full.
    rig.nft.fail_next("nft: busy");
    let mut no_nat = pool("Always");
    no_nat["spec"]["natOutgoing"] = false.into();
    rig.put(&no_nat);
    let pass = rig.agent.execute().await;
    assert!(pass.errors.iter().any(|e| e.contains("nftables")));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let pass = rig.agent.execute().await;
    assert!(pass.errors.is_empty(), "{:?}", pass.errors);
    assert!(is_full(rig.nft_batches().last().unwrap()));
    // An add that fails is retried by reading the kernel back.
    rig.world.fail("add route", 1);
    rig.put(&wep("y", "n1", "100.64.2.50/32", json!({})));
    let pass = rig.agent.execute().await;
    assert!(!pass.errors.is_empty());
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let pass = rig.agent.execute().await;
    assert!(pass.errors.is_empty(), "{:?}", pass.errors);
    assert!(rig.route("100.64.2.50/32").is_some());
}

#[tokio::test]
async fn our_node_deleted_keeps_the_data_plane() {
    let mut rig = Rig::new(|_| {});
    rig.snapshot("Always");
    rig.agent.execute().await;
    let routes = rig.routes();
    let r = rig.next();
    rig.agent.step(Input::Events(vec![WatchEvent::Delete {
        key: tabby_client::key_of(Kind::Node, None, "n0"),
        revision: r,
        prev: None,
    }]));
    rig.agent.execute().await;
    assert_eq!(rig.routes(), routes);
    // Back (registered again): everything recomputed, nothing changes.
    rig.put(&node(0));
    let pass = rig.agent.execute().await;
    assert!(pass.errors.is_empty(), "{:?}", pass.errors);
    assert_eq!(rig.routes(), routes);
}

#[tokio::test]
async fn a_dead_bgp_speaker_is_restarted_with_its_peers_and_exports() {
    let mut rig = Rig::new(|c| c.bgp = true);
    rig.snapshot("Never");
    let pass = rig.agent.execute().await;
    assert!(pass.errors.is_empty(), "{:?}", pass.errors);
    assert_eq!(rig.bgp.started().len(), 1);
    assert_eq!(rig.bgp.peers().len(), 2, "the mesh");
    assert!(
        rig.bgp
            .exports()
            .contains_key(&block_of(0).parse::<IpNet>().unwrap())
    );
    // Learned routes go to the kernel; withdrawn ones leave it.
    let p: IpNet = block_of(1).parse().unwrap();
    rig.agent
        .step(Input::Learned(vec![tabby_bgp::BestPathChange {
            prefix: p,
            next_hops: vec!["198.18.0.2".parse().unwrap()],
        }]));
    rig.agent.execute().await;
    assert_eq!(
        rig.route(&block_of(1)).unwrap().gateway,
        Some("198.18.0.2".parse().unwrap())
    );
    // The speaker dies: noticed, started again, peers and exports restored.
    rig.bgp.kill();
    rig.agent.execute().await;
    rig.agent.execute().await;
    assert_eq!(rig.bgp.started().len(), 2);
    assert_eq!(rig.bgp.peers().len(), 2);
    assert!(
        rig.bgp
            .exports()
            .contains_key(&block_of(0).parse::<IpNet>().unwrap())
    );
    assert!(
        rig.shared
            .metrics
            .render()
            .contains("tabby_bgp_speaker_restarts_total 1")
    );
    // The learned route stayed in the kernel meanwhile.
    assert!(rig.route(&block_of(1)).is_some());
    rig.agent
        .step(Input::Learned(vec![tabby_bgp::BestPathChange {
            prefix: p,
            next_hops: vec![],
        }]));
    rig.agent.execute().await;
    assert!(rig.route(&block_of(1)).is_none());
}

#[tokio::test]
async fn bad_resources_are_reported_and_skipped() {
    let mut rig = Rig::new(|_| {});
    rig.snapshot("Always");
    rig.agent.execute().await;
    // A record that cannot be read, a policy that does not compile.
    let r = rig.next();
    rig.agent.step(Input::Events(vec![WatchEvent::Put(KeyValue {
        key: tabby_client::key_of(Kind::IPPool, None, "broken"),
        value: b"{not json".to_vec(),
        create_revision: r,
        mod_revision: r,
    })]));
    rig.put(&resource(
        "NetworkPolicy",
        "bad",
        Some("default"),
        json!({"selector": "app == "}),
        json!({}),
    ));
    // Everything else keeps converging.
    rig.put(&wep("z", "n1", "100.64.2.60/32", json!({})));
    let pass = rig.agent.execute().await;
    assert!(rig.route("100.64.2.60/32").is_some());
    let problems = rig.agent.problems();
    assert!(
        problems.iter().any(|p| p.contains("ippools/broken")),
        "{problems:?}"
    );
    assert!(problems.iter().any(|p| p.contains("bad")), "{problems:?}");
    assert!(pass.errors.is_empty(), "{:?}", pass.errors);
    let report = rig.shared.report().await;
    assert!(report.problems.iter().any(|p| p.contains("broken")));
    assert!(
        rig.shared
            .metrics
            .render()
            .lines()
            .any(|l| l.starts_with("tabby_resource_problems ") && !l.ends_with(" 0"))
    );
}

#[tokio::test]
async fn routes_tabby_does_not_own_are_never_replaced() {
    use tabby_dataplane::Netlink;
    let mut rig = Rig::new(|c| c.bgp = true);
    let nl = rig.world.netlink(NS);
    let eth = rig
        .world
        .links(NS)
        .into_iter()
        .find(|l| l.name == "eth0")
        .unwrap()
        .index;
    nl.add_address(eth, "198.18.0.1/24".parse().unwrap())
        .await
        .unwrap();
    // The host's own default route, and an operator's static route to n1's block.
    let host_default = Route::via(
        "0.0.0.0/0".parse().unwrap(),
        "198.18.0.254".parse().unwrap(),
        eth,
    );
    nl.add_route(&host_default).await.unwrap();
    let static_route = Route::via(
        block_of(1).parse().unwrap(),
        "198.18.0.77".parse().unwrap(),
        eth,
    );
    nl.add_route(&static_route).await.unwrap();
    rig.snapshot("Never");
    let mut far = node(9);
    far["spec"]["bgp"]["ipv4Address"] = "198.19.9.9/24".into();
    rig.put(&far);
    rig.agent.execute().await;
    // A peer announces the default route, the node's subnet, a node address and
    // n1's block.
    let hop = vec!["198.18.0.9".parse::<IpAddr>().unwrap()];
    let learned = |p: &str| tabby_bgp::BestPathChange {
        prefix: p.parse().unwrap(),
        next_hops: hop.clone(),
    };
    rig.agent.step(Input::Learned(vec![
        learned("0.0.0.0/0"),
        learned("198.18.0.0/24"),
        learned("198.18.0.3/32"),
        learned("198.19.9.9/32"),
        learned(&block_of(1)),
    ]));
    rig.agent.execute().await;
    let defaults: Vec<Route> = rig
        .routes()
        .into_iter()
        .filter(|r| r.dst.prefix_len() == 0)
        .collect();
    assert_eq!(defaults.len(), 2, "ours beside the host's: {defaults:?}");
    assert!(defaults.contains(&host_default), "the host's default stays");
    assert!(
        defaults
            .iter()
            .any(|r| r.metric == tabby_node::desired::LEARNED_METRIC)
    );
    assert!(rig.route("198.18.0.0/24").is_none());
    assert!(rig.route("198.18.0.3/32").is_none());
    assert!(rig.route("198.19.9.9/32").is_none());
    // n1's block: ours goes in at the learned metric, beside the operator's route,
    // which is untouched.
    let at_block: Vec<Route> = rig
        .routes()
        .into_iter()
        .filter(|r| r.dst == block_of(1).parse::<IpNet>().unwrap())
        .collect();
    assert!(at_block.contains(&static_route), "{at_block:?}");
    let problems = rig.agent.problems();
    assert!(
        problems
            .iter()
            .any(|p| p.contains("198.18.0.0/24") && p.contains("own subnet")),
        "{problems:?}"
    );
    assert!(
        problems
            .iter()
            .any(|p| p.contains("198.19.9.9/32") && p.contains("node address")),
        "{problems:?}"
    );
}

#[tokio::test]
async fn a_foreign_route_at_our_place_wins_until_it_goes() {
    use tabby_dataplane::Netlink;
    let mut rig = Rig::new(|_| {});
    let nl = rig.world.netlink(NS);
    let eth = rig
        .world
        .links(NS)
        .into_iter()
        .find(|l| l.name == "eth0")
        .unwrap()
        .index;
    // Someone else's route where n2's block would go (same metric as ours).
    let theirs = Route::via(
        block_of(2).parse().unwrap(),
        "198.18.0.77".parse().unwrap(),
        eth,
    );
    nl.add_route(&theirs).await.unwrap();
    rig.snapshot("Always");
    let pass = rig.agent.execute().await;
    assert!(pass.errors.is_empty(), "{:?}", pass.errors);
    assert_eq!(
        rig.route(&block_of(2)),
        Some(theirs.clone()),
        "not replaced"
    );
    assert!(
        rig.agent
            .problems()
            .iter()
            .any(|p| p.contains(&block_of(2)) && p.contains("does not own")),
        "{:?}",
        rig.agent.problems()
    );
    // It goes: ours is installed at once.
    nl.del_route(&theirs).await.unwrap();
    rig.agent.step(Input::Kernel(vec![NetlinkEvent::Route {
        deleted: true,
        route: theirs,
    }]));
    rig.agent.execute().await;
    let r = rig.route(&block_of(2)).unwrap();
    assert_eq!(r.protocol, tabby_dataplane::TABBY_ROUTE_PROTOCOL);
    assert!(
        !rig.agent
            .problems()
            .iter()
            .any(|p| p.contains(&block_of(2))),
    );
}

#[tokio::test]
async fn bgppeer_annotations_and_the_restart_bits_reach_the_speaker() {
    let mut rig = Rig::new(|c| c.bgp = true);
    rig.agent.set_forwarding_preserved(true);
    rig.snapshot("Never");
    let mut tor = resource(
        "BGPPeer",
        "tor",
        None,
        json!({"peerIP": "198.18.0.200", "asNumber": 65100}),
        json!({}),
    );
    tor["metadata"]["annotations"] =
        json!({"bgp.tabby.dev/max-prefixes": "1000", "bgp.tabby.dev/transit": "true"});
    rig.put(&tor);
    let pass = rig.agent.execute().await;
    assert!(pass.errors.is_empty(), "{:?}", pass.errors);
    let restart = rig.bgp.restart_state().expect("set at start");
    assert!(restart.restarted && restart.forwarding_preserved);
    let peers = rig.bgp.peers();
    let p = &peers[&"198.18.0.200".parse::<IpAddr>().unwrap()];
    assert_eq!(p.max_prefixes, Some(1000));
    assert!(p.transit);
    // A bad value: no session, reported naming the annotation.
    tor["metadata"]["annotations"] = json!({"bgp.tabby.dev/max-prefixes": "lots"});
    rig.put(&tor);
    rig.agent.execute().await;
    assert!(
        !rig.bgp
            .peers()
            .contains_key(&"198.18.0.200".parse::<IpAddr>().unwrap())
    );
    assert!(
        rig.agent
            .problems()
            .iter()
            .any(|p| p.contains("bgp.tabby.dev/max-prefixes")),
        "{:?}",
        rig.agent.problems()
    );
}

#[tokio::test]
async fn bfd_annotations_reach_the_speaker_and_show_in_status_and_metrics() {
    let mut rig = Rig::new(|c| c.bgp = true);
    rig.snapshot("Never");
    let mut cfg = resource(
        "BGPConfiguration",
        "default",
        None,
        json!({"asNumber": 64512}),
        json!({}),
    );
    cfg["metadata"]["annotations"] = json!({"tabby.dev/bfd": "on"});
    rig.put(&cfg);
    let mut tor = resource(
        "BGPPeer",
        "tor",
        None,
        json!({"peerIP": "198.18.0.200", "asNumber": 65100}),
        json!({}),
    );
    tor["metadata"]["annotations"] = json!({"tabby.dev/bfd": "interval=100ms,multiplier=5"});
    rig.put(&tor);
    let pass = rig.agent.execute().await;
    assert!(pass.errors.is_empty(), "{:?}", pass.errors);
    let peers = rig.bgp.peers();
    let bfd_of = |a: &str| {
        peers[&a.parse::<IpAddr>().unwrap()]
            .bfd
            .as_ref()
            .map(|o| (o.desired_min_tx, o.detect_mult))
    };
    let ms = Duration::from_millis;
    assert_eq!(bfd_of("198.18.0.2"), Some((ms(300), 3)), "mesh: on");
    assert_eq!(bfd_of("198.18.0.3"), Some((ms(300), 3)), "mesh: on");
    assert_eq!(bfd_of("198.18.0.200"), Some((ms(100), 5)));
    // Status: a BFD row per protected peer, with its state and intervals.
    rig.bgp.set_established(true);
    *rig.shared.bgp.lock().unwrap() = rig.agent.speaker();
    let report = rig.shared.report().await;
    let tor_row = report
        .peers
        .iter()
        .find(|p| p.address.to_string() == "198.18.0.200")
        .unwrap();
    let b = tor_row.bfd.as_ref().expect("BFD row");
    assert_eq!(
        (b.state.as_str(), b.intervals.as_str()),
        ("Up", "100ms/100ms x5")
    );
    let table = tabby_node::status::render_table(&report);
    assert!(table.contains("BFD status"), "{table}");
    // Metrics: Up per peer, and failures counted as the speaker reports them.
    let status = |addr: &str, state: &str, downs: u64| tabby_bgp::PeerStatus {
        address: addr.parse().unwrap(),
        type_label: "global".into(),
        state: "Established".into(),
        since: 0,
        info: String::new(),
        bfd: Some(tabby_bgp::api::BfdPeerStatus {
            state: state.into(),
            desired_min_tx_us: 100_000,
            required_min_rx_us: 100_000,
            detect_mult: 5,
            multihop: false,
            downs,
            error: String::new(),
        }),
    };
    rig.agent
        .step(Input::Peers(vec![status("198.18.0.200", "Up", 0)]));
    let m = rig.shared.metrics.render();
    assert!(
        m.contains("tabby_bfd_session_up{peer=\"198.18.0.200\"} 1\n"),
        "{m}"
    );
    assert!(m.contains("\ntabby_bfd_down_events_total 0\n"), "{m}");
    rig.agent
        .step(Input::Peers(vec![status("198.18.0.200", "Down", 2)]));
    // The same report again counts nothing more.
    rig.agent
        .step(Input::Peers(vec![status("198.18.0.200", "Down", 2)]));
    let m = rig.shared.metrics.render();
    assert!(
        m.contains("tabby_bfd_session_up{peer=\"198.18.0.200\"} 0\n"),
        "{m}"
    );
    assert!(m.contains("\ntabby_bfd_down_events_total 2\n"), "{m}");
    // A bad value: no session with the peer, a problem naming the annotation.
    tor["metadata"]["annotations"] = json!({"tabby.dev/bfd": "sometimes"});
    rig.put(&tor);
    rig.agent.execute().await;
    assert!(
        !rig.bgp
            .peers()
            .contains_key(&"198.18.0.200".parse::<IpAddr>().unwrap())
    );
    assert!(
        rig.agent
            .problems()
            .iter()
            .any(|p| p.contains("tabby.dev/bfd") && p.contains("sometimes")),
        "{:?}",
        rig.agent.problems()
    );
}
