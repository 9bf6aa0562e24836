//! IPAM allocation benchmark (issue 4): allocations per second and per-allocation
//! latency (p50, p99, max) of `Ipam::auto_assign` for 1 and 50 concurrent allocators, on
//! a SQLite file in a temporary directory and on a local single-member etcd started on
//! loopback by the store's test harness. Each measurement starts from an empty store.
//!
//! `cargo run --release -p tabby-ipam --example ipam_bench -- [--backends sqlite,etcd]
//! [--concurrency 1,50] [--allocs 2000] [--nodes 10]`; prints one Markdown table row
//! per measurement on stdout, progress on stderr.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use tabby_ipam::{AutoAssignArgs, Ipam, PoolInfo, StaticPools};
use tabby_store::etcd_harness::EtcdCluster;
use tabby_store::{Datastore, StoreUrl};

/// Calico's default pool shape: /26 blocks, here in a /16 so no run exhausts it.
const POOL: &str = "10.0.0.0/16";
const BLOCK_SIZE: u8 = 26;

struct Args {
    backends: Vec<String>,
    concurrency: Vec<usize>,
    allocs: usize,
    nodes: usize,
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        backends: vec!["sqlite".into(), "etcd".into()],
        concurrency: vec![1, 50],
        allocs: 2000,
        nodes: 10,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| anyhow!("{flag} needs a value"));
        match flag.as_str() {
            "--backends" => args.backends = value()?.split(',').map(str::to_owned).collect(),
            "--concurrency" => {
                args.concurrency = value()?
                    .split(',')
                    .map(str::parse)
                    .collect::<Result<_, _>>()
                    .context("--concurrency")?
            }
            "--allocs" => args.allocs = value()?.parse().context("--allocs")?,
            "--nodes" => args.nodes = value()?.parse().context("--nodes")?,
            "-h" | "--help" => {
                eprintln!(
                    "ipam_bench [--backends sqlite,etcd] [--concurrency 1,50] [--allocs N] [--nodes N]"
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?} (try --help)"),
        }
    }
    for b in &args.backends {
        if b != "sqlite" && b != "etcd" {
            bail!("unknown backend {b:?}: sqlite or etcd");
        }
    }
    Ok(args)
}

/// One measurement's figures.
struct Figures {
    wall: Duration,
    latencies: Vec<Duration>,
}

impl Figures {
    fn percentile(&self, p: f64) -> Duration {
        let i = ((self.latencies.len() as f64 * p).ceil() as usize).clamp(1, self.latencies.len());
        self.latencies[i - 1]
    }
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

/// `allocators` tasks spread over `nodes` hosts make `allocs` single-address
/// allocations together; each host has its own store connection, as each node's agent
/// would.
async fn measure(
    url: &StoreUrl,
    allocators: usize,
    nodes: usize,
    allocs: usize,
) -> Result<Figures> {
    let nodes = nodes.max(1);
    let pools = Arc::new(StaticPools::new(vec![
        PoolInfo::new("bench", POOL.parse()?).with_block_size(BLOCK_SIZE),
    ]));
    let mut ipams = Vec::new();
    for _ in 0..nodes {
        let store: Arc<dyn Datastore> = tabby_store::open(url).await?;
        ipams.push(Ipam::new(store, pools.clone()));
    }
    let ipams = Arc::new(ipams);
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..allocators {
        let ipams = ipams.clone();
        // Share the remainder out so exactly `allocs` allocations are made.
        let count = allocs / allocators + usize::from(t < allocs % allocators);
        tasks.spawn(async move {
            let mut latencies = Vec::with_capacity(count);
            for i in 0..count {
                // With as many allocators as nodes or more, each allocator stays on one
                // node; fewer allocators take turns over the nodes, so that every run
                // ends with the same blocks per node.
                let node = (t + i * allocators) % nodes;
                let host = format!("bench-node-{node}");
                let args = AutoAssignArgs::new(host.as_str(), 1, 0)
                    .with_handle(format!("k8s-pod-network.bench-{t}-{i}"));
                let start = Instant::now();
                let res = ipams[node]
                    .auto_assign(&args)
                    .await
                    .map_err(|e| e.to_string())?;
                latencies.push(start.elapsed());
                let got = res.v4.map(|v| v.ips.len()).unwrap_or(0);
                if got != 1 {
                    return Err(format!("{host}: {got} addresses assigned, 1 requested"));
                }
            }
            Ok::<_, String>(latencies)
        });
    }
    let mut latencies = Vec::with_capacity(allocs);
    while let Some(r) = tasks.join_next().await {
        latencies.extend(r?.map_err(|e| anyhow!(e))?);
    }
    let wall = started.elapsed();
    latencies.sort();
    Ok(Figures { wall, latencies })
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<()> {
    let args = parse_args()?;
    println!(
        "| backend | allocators | nodes | allocations | allocs/s | p50 ms | p99 ms | max ms |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for backend in &args.backends {
        for &c in &args.concurrency {
            // A fresh, empty store for every measurement.
            let dir = tempfile::tempdir()?;
            let mut cluster = None;
            let url = if backend == "sqlite" {
                StoreUrl::Sqlite {
                    path: dir.path().join("store.db"),
                }
            } else {
                let etcd = EtcdCluster::start(1).await.context("starting etcd")?;
                let url = etcd.url();
                cluster = Some(etcd);
                url
            };
            eprintln!("{backend}: {c} allocators, {} allocations ...", args.allocs);
            let f = measure(&url, c, args.nodes, args.allocs).await?;
            drop(cluster);
            println!(
                "| {backend} | {c} | {} | {} | {:.0} | {} | {} | {} |",
                args.nodes.max(1),
                f.latencies.len(),
                f.latencies.len() as f64 / f.wall.as_secs_f64(),
                ms(f.percentile(0.50)),
                ms(f.percentile(0.99)),
                ms(*f.latencies.last().unwrap_or(&Duration::ZERO)),
            );
        }
    }
    Ok(())
}
