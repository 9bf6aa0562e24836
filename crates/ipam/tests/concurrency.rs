//! Many nodes allocating at once: 50 tasks acting as 10 hosts make 2,000 allocations
//! with releases interleaved (by handle and by address) from a pool small enough that
//! blocks run out and hosts borrow. No address may ever be held twice, every handle
//! must own exactly its addresses, and after releasing everything `check` is clean.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use common::Backend;
use tabby_ipam::{AutoAssignArgs, Ipam, PoolInfo, ReleaseOptions, StaticPools};

const TASKS: usize = 50;
const HOSTS: usize = 10;
const PER_TASK: usize = 40;

async fn run(backend: Backend) {
    let ts = backend.open().await;
    // 2,048 addresses in 32 blocks of 64: fewer blocks than 10 hosts would claim alone.
    let pools = Arc::new(StaticPools::new(vec![
        PoolInfo::new("pool-a", "10.0.0.0/21".parse().unwrap()).with_block_size(26),
    ]));
    let ipam = Ipam::new(ts.store.clone(), pools);
    // Address → handle, for addresses some task currently holds.
    let held: Arc<Mutex<BTreeMap<IpAddr, String>>> = Arc::default();

    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..TASKS {
        let ipam = ipam.clone();
        let held = held.clone();
        tasks.spawn(async move {
            let host = format!("host-{}", t % HOSTS);
            let mut mine: Vec<(String, IpAddr)> = Vec::new();
            for i in 0..PER_TASK {
                let handle = format!("k8s-pod-network.t{t}-{i}");
                let args = AutoAssignArgs::new(host.as_str(), 1, 0).with_handle(handle.clone());
                let res = ipam
                    .auto_assign(&args)
                    .await
                    .unwrap_or_else(|e| panic!("{host} {handle}: {e}"));
                let v4 = res.v4.expect("v4 requested");
                assert_eq!(v4.ips.len(), 1, "{host} {handle}: {:?}", v4.msgs);
                let ip = v4.ips[0].addr();
                if let Some(prev) = held.lock().unwrap().insert(ip, handle.clone()) {
                    panic!("{ip} handed to {handle} while {prev} holds it");
                }
                mine.push((handle, ip));
                if i % 3 == 2 {
                    // Forget it first: once we release, someone else may get it.
                    let (h, ip) = mine.remove(0);
                    held.lock().unwrap().remove(&ip);
                    if i % 2 == 0 {
                        let released = ipam.release_by_handle(&h).await.expect("release by handle");
                        assert_eq!(released, [ip], "{h}");
                    } else {
                        let opts = ReleaseOptions {
                            handle: Some(h.clone()),
                            ..ReleaseOptions::new(ip)
                        };
                        let unallocated =
                            ipam.release_ips(&[opts]).await.expect("release by address");
                        assert!(unallocated.is_empty(), "{h}: {ip} was not allocated");
                    }
                }
            }
            mine
        });
    }
    let mut remaining = Vec::new();
    while let Some(r) = tasks.join_next().await {
        remaining.extend(r.expect("task panicked"));
    }

    eprintln!(
        "[{backend:?}] writes after allocating: {}",
        ts.store.revision().await.unwrap()
    );
    // The store agrees with what the tasks hold: same addresses, same owners.
    let expected: BTreeMap<IpAddr, String> = held.lock().unwrap().clone();
    assert_eq!(expected.len(), remaining.len());
    let mut stored = BTreeMap::new();
    for b in ipam.list_blocks(None).await.unwrap() {
        for a in b.allocations() {
            let h = a.handle.clone().expect("every allocation has a handle");
            assert!(stored.insert(a.ip, h).is_none(), "{} stored twice", a.ip);
        }
    }
    assert_eq!(stored, expected, "store and tasks disagree");
    for (h, ip) in remaining.iter().take(200) {
        assert_eq!(ipam.ips_by_handle(h).await.unwrap(), [*ip], "{h}");
    }
    let report = ipam.check().await.unwrap();
    assert!(report.is_clean(), "{report}");
    let hosts: BTreeSet<String> = ipam
        .list_affinities(None)
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.host)
        .collect();
    assert!(hosts.len() > 1, "blocks were spread over hosts: {hosts:?}");

    // Release everything, half by handle and half by address, concurrently.
    let mut tasks = tokio::task::JoinSet::new();
    for (k, chunk) in remaining.chunks(100).enumerate() {
        let ipam = ipam.clone();
        let chunk = chunk.to_vec();
        tasks.spawn(async move {
            if k % 2 == 0 {
                for (h, _) in &chunk {
                    ipam.release_by_handle(h).await.expect("release by handle");
                }
            } else {
                let opts: Vec<ReleaseOptions> = chunk
                    .iter()
                    .map(|(_, ip)| ReleaseOptions::new(*ip))
                    .collect();
                let unallocated = ipam.release_ips(&opts).await.expect("release");
                assert!(unallocated.is_empty(), "{unallocated:?}");
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.expect("release task panicked");
    }
    let report = ipam.check().await.unwrap();
    assert!(report.is_clean(), "{report}");
    assert!(
        ipam.list_handles().await.unwrap().is_empty(),
        "handles left behind"
    );
    for b in ipam.list_blocks(None).await.unwrap() {
        assert_eq!(b.in_use(), 0, "{} still has addresses", b.cidr);
    }
    // Releases free emptied blocks at once (best effort); the collector takes any
    // that a concurrent claim kept from being freed.
    ipam.release_empty_blocks(None).await.unwrap();
    assert!(ipam.list_blocks(None).await.unwrap().is_empty());
    assert!(ipam.list_affinities(None).await.unwrap().is_empty());
    assert!(ipam.check().await.unwrap().is_clean());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_hosts_memory_store() {
    run(Backend::Memory).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_hosts_sqlite_store() {
    run(Backend::Sqlite).await;
}
