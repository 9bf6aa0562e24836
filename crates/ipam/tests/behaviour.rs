//! Behaviour beyond the conformance tables, on the in-memory store: bad input, pool
//! lifecycle, strict affinity and block limits, tunnels, reservations, cooldown, stale
//! releases, block reclaim, the stored key layout, and crash safety (a write that never
//! happens leaves at most a leak `check` reports, never a double allocation).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use tabby_ipam::testing::MemoryStore;
use tabby_ipam::{
    AllowedUse, AssignIpArgs, AutoAssignArgs, BlockError, IpFamily, Ipam, IpamConfig, IpamError,
    IpamOptions, PoolInfo, ReleaseOptions, StaticPools, TunnelKind, keys,
};
use tabby_store::Datastore;

struct T {
    ipam: Ipam,
    pools: Arc<StaticPools>,
    store: Arc<MemoryStore>,
}

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// A client with Calico's rule for empty blocks (they stay with their node until the
/// collector frees them), which most cases here exercise; Tabby's default frees them
/// at once (`an_emptied_block_is_freed_by_default`).
fn setup(pools: Vec<PoolInfo>) -> T {
    let store = Arc::new(MemoryStore::new());
    let source = Arc::new(StaticPools::new(pools));
    T {
        ipam: Ipam::new(store.clone(), source.clone()).with_options(IpamOptions {
            release_empty_affine_blocks: false,
            ..IpamOptions::default()
        }),
        pools: source,
        store,
    }
}

fn pool(cidr: &str) -> PoolInfo {
    PoolInfo::new(cidr, net(cidr))
}

async fn assign(t: &T, host: &str, n: usize, handle: &str) -> Vec<IpAddr> {
    let r = t
        .ipam
        .auto_assign(&AutoAssignArgs::new(host, n, 0).with_handle(handle))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    r.v4.unwrap().ips.iter().map(IpNet::addr).collect()
}

#[tokio::test]
async fn assign_ip_errors_name_the_problem() {
    let mut disabled = pool("10.1.0.0/24");
    disabled.name = "old-pool".into();
    disabled.disabled = true;
    let t = setup(vec![pool("10.0.0.0/24"), disabled]);
    let e = t
        .ipam
        .assign_ip(&AssignIpArgs::new(ip("1.2.3.4"), "h1"))
        .await
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "IP address 1.2.3.4 is not in any configured IP pool"
    );
    let e = t
        .ipam
        .assign_ip(&AssignIpArgs::new(ip("10.1.0.9"), "h1"))
        .await
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "IP address 10.1.0.9 is in IP pool old-pool (10.1.0.0/24), which is disabled"
    );
    t.ipam
        .assign_ip(&AssignIpArgs::new(ip("10.0.0.9"), "h1"))
        .await
        .unwrap();
    let e = t
        .ipam
        .assign_ip(&AssignIpArgs::new(ip("10.0.0.9"), "h2"))
        .await
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "IP address 10.0.0.9 is already assigned in block 10.0.0.0/26"
    );
    let mut bad = AssignIpArgs::new(ip("10.0.0.10"), "h1");
    bad.handle = Some("a/b".into());
    assert!(matches!(
        t.ipam.assign_ip(&bad).await,
        Err(IpamError::InvalidArgument(_))
    ));
    // Auto-assign never hands out an address taken by assign_ip.
    let got = assign(&t, "h1", 63, "fill").await;
    assert!(!got.contains(&ip("10.0.0.9")));
    assert!(t.ipam.check().await.unwrap().is_clean());
}

#[tokio::test]
async fn strict_affinity_refuses_other_hosts_blocks() {
    let t = setup(vec![pool("10.0.0.0/26"), pool("10.0.1.0/26")]);
    let cfg = IpamConfig {
        strict_affinity: true,
        ..IpamConfig::default()
    };
    t.ipam.set_ipam_config(&cfg).await.unwrap();
    let a = assign(&t, "host-a", 1, "a").await;
    let block_a = net(&format!("{}/26", a[0])).trunc();
    let other_ip = block_a.hosts().nth(5).unwrap();
    let e = t
        .ipam
        .assign_ip(&AssignIpArgs::new(other_ip, "host-b"))
        .await
        .unwrap_err();
    assert!(
        matches!(e, IpamError::Block(BlockError::AffinityMismatch { .. })),
        "{e}"
    );
    // host-b takes the other pool's block; when it is full it may not borrow.
    let b = assign(&t, "host-b", 64, "b").await;
    assert_eq!(b.len(), 64);
    let r = t
        .ipam
        .auto_assign(&AutoAssignArgs::new("host-b", 1, 0))
        .await
        .unwrap();
    let v4 = r.v4.unwrap();
    assert!(v4.ips.is_empty());
    assert_eq!(
        v4.partial_fulfillment_error().unwrap().to_string(),
        "Assigned 0 out of 1 requested IPv4 addresses; No more free affine blocks and strict affinity enabled"
    );
}

#[tokio::test]
async fn config_block_limit_and_no_auto_allocation() {
    let t = setup(vec![pool("10.0.0.0/24")]);
    let cfg = IpamConfig {
        strict_affinity: true,
        max_blocks_per_host: 1,
        ..IpamConfig::default()
    };
    t.ipam.set_ipam_config(&cfg).await.unwrap();
    let e = t
        .ipam
        .auto_assign(&AutoAssignArgs::new("h1", 70, 0).with_handle("x"))
        .await
        .unwrap_err();
    assert!(matches!(e.error, IpamError::BlockLimit { limit: 1, .. }));
    let v4 = e.v4.unwrap();
    assert_eq!(
        v4.ips.len(),
        64,
        "what was assigned is returned for the caller to release"
    );
    assert_eq!(
        v4.msgs,
        ["Need to allocate an IPAM block but could not - limit of 1 blocks reached for this node"]
    );
    assert_eq!(t.ipam.release_by_handle("x").await.unwrap().len(), 64);

    let cfg = IpamConfig {
        strict_affinity: true,
        auto_allocate_blocks: false,
        ..IpamConfig::default()
    };
    t.ipam.set_ipam_config(&cfg).await.unwrap();
    // h1 keeps its empty block; h2 has none and may not claim.
    assert_eq!(assign(&t, "h1", 2, "y").await.len(), 2);
    let r = t
        .ipam
        .auto_assign(&AutoAssignArgs::new("h2", 1, 0))
        .await
        .unwrap();
    assert_eq!(
        r.v4.unwrap().msgs,
        ["No more free affine blocks and automatic block allocation is disabled"]
    );
    assert!(t.ipam.check().await.unwrap().is_clean());
}

#[tokio::test]
async fn exhausted_pool_says_which_and_writes_nothing_half() {
    let t = setup(vec![pool("10.0.0.0/26")]);
    assert_eq!(assign(&t, "h1", 60, "a").await.len(), 60);
    let r = t
        .ipam
        .auto_assign(&AutoAssignArgs::new("h2", 10, 0).with_handle("b"))
        .await
        .unwrap();
    let v4 = r.v4.unwrap();
    assert_eq!(
        v4.ips.len(),
        4,
        "the last four are borrowed from h1's block"
    );
    assert_eq!(
        v4.partial_fulfillment_error().unwrap().to_string(),
        "Assigned 4 out of 10 requested IPv4 addresses; No IPs available in pools: [10.0.0.0/26]"
    );
    assert!(t.ipam.check().await.unwrap().is_clean());
    assert_eq!(t.ipam.ips_by_handle("b").await.unwrap().len(), 4);
    // No pool for the node at all.
    t.pools.set_pools(vec![]);
    let e = t
        .ipam
        .auto_assign(&AutoAssignArgs::new("h2", 1, 0))
        .await
        .unwrap_err();
    assert_eq!(
        e.error.to_string(),
        "no configured Calico IPv4 pools for node h2"
    );
}

#[tokio::test]
async fn disabled_or_deleted_pool_keeps_existing_allocations() {
    let t = setup(vec![pool("10.0.0.0/24"), pool("10.9.0.0/24")]);
    let mut args = AutoAssignArgs::new("h1", 2, 0).with_handle("old");
    args.ipv4_pools = vec!["10.0.0.0/24".into()];
    let r = t.ipam.auto_assign(&args).await.unwrap();
    let old: Vec<IpAddr> = r.v4.unwrap().ips.iter().map(IpNet::addr).collect();
    let mut p = pool("10.0.0.0/24");
    p.disabled = true;
    t.pools.set_pools(vec![p, pool("10.9.0.0/24")]);
    // Existing addresses stay, new ones come from the other pool.
    for a in &old {
        assert!(
            t.ipam
                .get_assignment_attributes(*a)
                .await
                .unwrap()
                .is_some()
        );
    }
    let new = assign(&t, "h1", 3, "new").await;
    assert!(
        new.iter().all(|a| net("10.9.0.0/24").contains(a)),
        "{new:?}"
    );
    let e = t.ipam.auto_assign(&args).await.unwrap_err();
    assert_eq!(
        e.error.to_string(),
        "the given pool (10.0.0.0/24) does not exist, or is not enabled"
    );
    // Releasing the last address of the disabled pool's block frees the block.
    t.ipam.release_by_handle("old").await.unwrap();
    let blocks: Vec<IpNet> = t
        .ipam
        .list_blocks(None)
        .await
        .unwrap()
        .iter()
        .map(|b| b.cidr)
        .collect();
    assert!(
        blocks
            .iter()
            .all(|b| net("10.9.0.0/24").contains(&b.network())),
        "{blocks:?}"
    );
    assert!(t.ipam.check().await.unwrap().is_clean());
    // A deleted pool: same.
    t.pools.set_pools(vec![]);
    let kept = t.ipam.ips_by_handle("new").await.unwrap();
    assert_eq!(kept.len(), 3);
    t.ipam
        .release_ips(
            &kept
                .iter()
                .map(|a| ReleaseOptions::new(*a))
                .collect::<Vec<_>>(),
        )
        .await
        .unwrap();
    assert!(t.ipam.list_blocks(None).await.unwrap().is_empty());
    assert!(t.ipam.list_affinities(None).await.unwrap().is_empty());
}

#[tokio::test]
async fn node_selector_change_releases_empty_blocks() {
    let mut p = pool("10.0.0.0/24");
    p.node_selector = "zone == 'a'".into();
    let t = setup(vec![p.clone(), pool("10.5.0.0/24")]);
    t.pools
        .set_node_labels("h1", BTreeMap::from([("zone".into(), "a".into())]));
    let mut args = AutoAssignArgs::new("h1", 1, 0).with_handle("x");
    args.ipv4_pools = vec!["10.0.0.0/24".into()];
    t.ipam.auto_assign(&args).await.unwrap();
    t.ipam.release_by_handle("x").await.unwrap();
    assert_eq!(
        t.ipam.list_blocks(None).await.unwrap().len(),
        1,
        "an empty affine block stays"
    );
    t.pools
        .set_node_labels("h1", BTreeMap::from([("zone".into(), "b".into())]));
    let got = assign(&t, "h1", 1, "y").await;
    assert!(net("10.5.0.0/24").contains(&got[0]));
    let blocks: Vec<IpNet> = t
        .ipam
        .list_blocks(None)
        .await
        .unwrap()
        .iter()
        .map(|b| b.cidr)
        .collect();
    assert_eq!(
        blocks.len(),
        1,
        "the block of the pool that no longer selects h1 was freed: {blocks:?}"
    );
    assert!(t.ipam.check().await.unwrap().is_clean());
}

#[tokio::test]
async fn tunnel_addresses_use_tunnel_pools_and_their_handles() {
    let mut tunnel = pool("10.200.0.0/24");
    tunnel.allowed_uses = vec![AllowedUse::Tunnel];
    let mut workload = pool("10.0.0.0/24");
    workload.allowed_uses = vec![AllowedUse::Workload];
    let t = setup(vec![workload, tunnel, pool("fd00::/120")]);
    let a = t
        .ipam
        .ensure_tunnel_address("node1", TunnelKind::Vxlan, &[])
        .await
        .unwrap();
    assert!(net("10.200.0.0/24").contains(&a));
    let again = t
        .ipam
        .ensure_tunnel_address("node1", TunnelKind::Vxlan, &[])
        .await
        .unwrap();
    assert_eq!(a, again, "idempotent");
    let info = t.ipam.get_assignment_attributes(a).await.unwrap().unwrap();
    assert_eq!(info.handle.as_deref(), Some("vxlan-tunnel-addr-node1"));
    assert_eq!(info.attrs["type"], "vxlanTunnelAddress");
    assert_eq!(info.attrs["node"], "node1");
    let v6 = t
        .ipam
        .ensure_tunnel_address("node1", TunnelKind::VxlanV6, &[])
        .await
        .unwrap();
    assert!(v6.is_ipv6());
    let w = assign(&t, "node1", 1, "pod").await;
    assert!(net("10.0.0.0/24").contains(&w[0]));
    assert_eq!(
        t.ipam
            .release_by_handle(&TunnelKind::Vxlan.handle("node1"))
            .await
            .unwrap(),
        [a]
    );
}

#[tokio::test]
async fn namespace_selector_and_requested_pool_names() {
    let mut team = pool("10.1.0.0/24");
    team.name = "team-a".into();
    team.namespace_selector = "team == 'a'".into();
    let mut other = pool("10.2.0.0/24");
    other.namespace_selector = "team != 'a'".into();
    let t = setup(vec![team, other]);
    let mut args = AutoAssignArgs::new("h1", 1, 0);
    args.namespace_labels = Some(BTreeMap::from([("team".into(), "a".into())]));
    let r = t.ipam.auto_assign(&args).await.unwrap();
    assert!(net("10.1.0.0/24").contains(&r.v4.unwrap().ips[0].addr()));
    args.namespace_labels = Some(BTreeMap::new());
    let r = t.ipam.auto_assign(&args).await.unwrap();
    assert!(net("10.2.0.0/24").contains(&r.v4.unwrap().ips[0].addr()));
    args.ipv4_pools = vec!["team-a".into()];
    let r = t.ipam.auto_assign(&args).await.unwrap();
    assert!(
        net("10.1.0.0/24").contains(&r.v4.unwrap().ips[0].addr()),
        "a named pool ignores selectors"
    );
    args.ipv4_pools = vec!["fd00::/64".into()];
    assert!(t.ipam.auto_assign(&args).await.is_err());
}

#[tokio::test]
async fn reservations_are_skipped() {
    let t = setup(vec![pool("10.0.0.0/24")]);
    t.pools.set_reservations(vec![net("10.0.0.0/25")]);
    let got = assign(&t, "h1", 100, "x").await;
    assert_eq!(got.len(), 100);
    assert!(
        got.iter().all(|a| !net("10.0.0.0/25").contains(a)),
        "{got:?}"
    );
    let r = t
        .ipam
        .auto_assign(&AutoAssignArgs::new("h1", 100, 0))
        .await
        .unwrap();
    assert_eq!(r.v4.unwrap().ips.len(), 28);
    let u = t
        .ipam
        .get_utilization(&["10.0.0.0/24".into()])
        .await
        .unwrap();
    assert_eq!(
        (u[0].usage.in_use, u[0].usage.reserved, u[0].usage.available),
        (128, 128, 0)
    );
}

#[tokio::test]
async fn stale_release_cannot_free_a_reused_address() {
    let t = setup(vec![pool("10.0.0.0/30").with_block_size(30)]);
    let first = assign(&t, "h1", 4, "a").await;
    let victim = first[0];
    let seq = t
        .ipam
        .get_assignment_attributes(victim)
        .await
        .unwrap()
        .unwrap()
        .sequence_number;
    t.ipam
        .release_ips(&[ReleaseOptions::new(victim)])
        .await
        .unwrap();
    // The block is full again with the same address reused by another owner.
    let again = assign(&t, "h1", 1, "b").await;
    assert_eq!(again, [victim]);
    let stale = ReleaseOptions {
        sequence_number: Some(seq),
        ..ReleaseOptions::new(victim)
    };
    let e = t.ipam.release_ips(&[stale]).await.unwrap_err();
    assert!(e.is_release_conflict(), "{e}");
    let owner = t
        .ipam
        .get_assignment_attributes(victim)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(owner.handle.as_deref(), Some("b"));
}

#[tokio::test]
async fn cooldown_delays_reuse() {
    let t = setup(vec![pool("10.0.0.0/30").with_block_size(30)]);
    let cfg = IpamConfig {
        ip_cooldown_seconds: 3600,
        ..IpamConfig::default()
    };
    t.ipam.set_ipam_config(&cfg).await.unwrap();
    let all = assign(&t, "h1", 4, "a").await;
    t.ipam
        .release_ips(&[ReleaseOptions::new(all[0])])
        .await
        .unwrap();
    let r = t
        .ipam
        .auto_assign(&AutoAssignArgs::new("h1", 1, 0))
        .await
        .unwrap();
    assert!(
        r.v4.unwrap().ips.is_empty(),
        "the released address is cooling down"
    );
    assert!(
        t.ipam
            .get_assignment_attributes(all[0])
            .await
            .unwrap()
            .is_none()
    );
    t.ipam
        .set_ipam_config(&IpamConfig::default())
        .await
        .unwrap();
    assert_eq!(assign(&t, "h1", 1, "b").await, [all[0]]);
}

#[tokio::test]
async fn empty_blocks_of_other_hosts_are_reclaimed_when_old() {
    let store = Arc::new(MemoryStore::new());
    let source = Arc::new(StaticPools::new(vec![pool("10.0.0.0/26")]));
    let ipam = Ipam::new(store.clone(), source).with_options(IpamOptions {
        empty_block_reclaim_age: Duration::ZERO,
        ..IpamOptions::default()
    });
    ipam.auto_assign(&AutoAssignArgs::new("h1", 1, 0).with_handle("x"))
        .await
        .unwrap();
    ipam.release_by_handle("x").await.unwrap();
    let r = ipam
        .auto_assign(&AutoAssignArgs::new("h2", 1, 0))
        .await
        .unwrap();
    assert_eq!(r.v4.unwrap().ips.len(), 1);
    let affs = ipam.list_affinities(None).await.unwrap();
    assert_eq!(affs.len(), 1);
    assert_eq!(affs[0].host, "h2");
    assert!(ipam.check().await.unwrap().is_clean());
}

#[tokio::test]
async fn an_emptied_block_is_freed_by_default() {
    let store = Arc::new(MemoryStore::new());
    let source = Arc::new(StaticPools::new(vec![pool("10.0.0.0/24")]));
    let ipam = Ipam::new(store.clone(), source);
    let r = ipam
        .auto_assign(&AutoAssignArgs::new("h1", 2, 0).with_handle("x"))
        .await
        .unwrap();
    let ips: Vec<IpAddr> = r.v4.unwrap().ips.iter().map(IpNet::addr).collect();
    ipam.release_ips(&[ReleaseOptions::new(ips[0])])
        .await
        .unwrap();
    assert_eq!(ipam.list_blocks(None).await.unwrap().len(), 1);
    ipam.release_ips(&[ReleaseOptions::new(ips[1])])
        .await
        .unwrap();
    assert!(ipam.list_blocks(None).await.unwrap().is_empty());
    assert!(ipam.list_affinities(None).await.unwrap().is_empty());
    assert!(ipam.list_handles().await.unwrap().is_empty());
}

#[tokio::test]
async fn affinity_management() {
    let t = setup(vec![pool("10.0.0.0/24"), pool("fd00::/120")]);
    let (claimed, failed) = t
        .ipam
        .claim_affinity(net("fd00::/121"), "h1")
        .await
        .unwrap();
    assert_eq!((claimed.len(), failed.len()), (2, 0));
    let e = t
        .ipam
        .claim_affinity(net("11.0.0.0/24"), "h1")
        .await
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "The requested CIDR (11.0.0.0/24) is not within any configured pools."
    );
    t.ipam
        .assign_ip(&AssignIpArgs::new(ip("fd00::5"), "h1"))
        .await
        .unwrap();
    let released = t
        .ipam
        .release_affinity(net("fd00::/120"), "h1", true)
        .await
        .unwrap();
    assert_eq!(released, [net("fd00::40/122")], "the block in use is kept");
    let released = t.ipam.release_host_affinities("h1", false).await.unwrap();
    assert_eq!(released, [net("fd00::/122")]);
    let blocks = t.ipam.list_blocks(Some(IpFamily::V6)).await.unwrap();
    assert_eq!(blocks.len(), 1);
    assert_eq!(
        blocks[0].affinity, None,
        "a block in use loses its affinity but stays"
    );
    t.ipam
        .release_ips(&[ReleaseOptions::new(ip("fd00::5"))])
        .await
        .unwrap();
    assert!(
        t.ipam.list_blocks(None).await.unwrap().is_empty(),
        "an empty unaffine block is deleted"
    );
    assert!(t.ipam.check().await.unwrap().is_clean());
}

#[tokio::test]
async fn stored_layout_is_calicos() {
    let t = setup(vec![pool("10.0.0.0/24")]);
    t.ipam
        .assign_ip(&AssignIpArgs {
            handle: Some("k8s-pod-network.c1".into()),
            attrs: BTreeMap::from([("pod".into(), "p1".into())]),
            ..AssignIpArgs::new(ip("10.0.0.70"), "node1")
        })
        .await
        .unwrap();
    let dump: BTreeMap<String, serde_json::Value> = t
        .store
        .dump()
        .into_iter()
        .map(|kv| (kv.key, serde_json::from_slice(&kv.value).unwrap()))
        .collect();
    let keys_seen: BTreeSet<&str> = dump.keys().map(String::as_str).collect();
    assert_eq!(
        keys_seen,
        BTreeSet::from([
            "/calico/ipam/v2/assignment/ipv4/block/10.0.0.64-26",
            "/calico/ipam/v2/handle/k8s-pod-network.c1",
            "/calico/ipam/v2/host/node1/ipv4/block/10.0.0.64-26",
        ])
    );
    let block = &dump["/calico/ipam/v2/assignment/ipv4/block/10.0.0.64-26"];
    assert_eq!(block["cidr"], "10.0.0.64/26");
    assert_eq!(block["affinity"], "host:node1");
    assert_eq!(block["allocations"][6], 0);
    assert_eq!(block["attributes"][0]["handle_id"], "k8s-pod-network.c1");
    assert_eq!(block["attributes"][0]["secondary"]["pod"], "p1");
    assert_eq!(block["unallocated"].as_array().unwrap().len(), 63);
    assert_eq!(
        dump["/calico/ipam/v2/handle/k8s-pod-network.c1"],
        serde_json::json!({"handleID": "k8s-pod-network.c1", "block": {"10.0.0.64/26": 1}, "deleted": false})
    );
    assert_eq!(
        dump["/calico/ipam/v2/host/node1/ipv4/block/10.0.0.64-26"],
        serde_json::json!({"state": "confirmed", "deleted": false})
    );
    assert_eq!(
        keys::block_key(&net("10.0.0.64/26")),
        "/calico/ipam/v2/assignment/ipv4/block/10.0.0.64-26"
    );
}

#[tokio::test]
async fn check_reports_leaks_and_orphans() {
    let t = setup(vec![pool("10.0.0.0/24")]);
    let a = assign(&t, "h1", 2, "pod-a").await;
    assign(&t, "h1", 1, "pod-b").await;
    // A handle deleted behind IPAM's back: its addresses leak.
    let kv = t
        .store
        .get(&keys::handle_key("pod-a"))
        .await
        .unwrap()
        .unwrap();
    t.store.delete(&kv.key, None).await.unwrap();
    let report = t.ipam.check().await.unwrap();
    assert_eq!(report.missing_handles.len(), 2);
    let leaked: BTreeSet<IpAddr> = report.missing_handles.iter().map(|x| x.ip).collect();
    assert_eq!(leaked, a.iter().copied().collect());
    // Owners: only pod-b is alive.
    let report = t
        .ipam
        .check_with_owners(|x| x.handle.as_deref() == Some("pod-b"))
        .await
        .unwrap();
    assert_eq!(report.orphaned.len(), 2);
    assert!(
        report
            .to_string()
            .ends_with("Check complete; found 4 problems."),
        "{report}"
    );
    // An affinity pointing at a block owned by someone else.
    let block = t.ipam.list_blocks(None).await.unwrap()[0].cidr;
    t.store
        .create(
            &keys::affinity_key("h9", &block),
            br#"{"state":"confirmed","deleted":false}"#,
        )
        .await
        .unwrap();
    let report = t.ipam.check().await.unwrap();
    assert_eq!(report.affinity_problems.len(), 1);
    assert_eq!(report.affinity_problems[0].host, "h9");
}

/// Every prefix of an operation's writes, as if the process died there: the store stays
/// free of double allocations, and anything left over is a leak `check` names.
#[tokio::test]
async fn crash_between_writes_only_leaks() {
    for budget in 0..12 {
        let t = setup(vec![pool("10.0.0.0/28").with_block_size(29)]);
        assign(&t, "h1", 3, "before").await;
        t.store.fail_writes_after(Some(budget));
        let _ = t
            .ipam
            .auto_assign(&AutoAssignArgs::new("h1", 10, 0).with_handle("crashed"))
            .await;
        let _ = t.ipam.release_by_handle("before").await;
        t.store.fail_writes_after(None);
        let report = t.ipam.check().await.unwrap();
        assert!(
            report.invalid_blocks.is_empty() && report.overlapping_blocks.is_empty(),
            "{report}"
        );
        assert!(
            report.missing_handles.is_empty(),
            "an allocation without its handle: {report}"
        );
        for m in &report.handle_mismatches {
            assert!(
                m.recorded > m.actual,
                "handle under-counts its addresses: {report}"
            );
        }
        // Recovery: the crashed owner is released and the pool is usable to the last address.
        t.ipam.release_by_handle("crashed").await.unwrap();
        t.ipam.release_by_handle("before").await.unwrap();
        let all = assign(&t, "h2", 16, "after").await;
        assert_eq!(all.len(), 16, "budget {budget}");
        let unique: BTreeSet<IpAddr> = all.iter().copied().collect();
        assert_eq!(unique.len(), 16);
        let report = t.ipam.check().await.unwrap();
        assert!(
            report.missing_handles.is_empty() && report.handle_mismatches.is_empty(),
            "budget {budget}: {report}"
        );
    }
}
