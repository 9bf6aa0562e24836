//! Compare-and-swap throughput and latency of a datastore backend (SQLite or etcd).
//!
//! `cargo run --release -p tabby-store --example cas_bench -- \
//!     --store etcd://127.0.0.1:2379 --writers 32 --ops 200 [--shared]`
//! (`--store sqlite:///tmp/bench.db` for the embedded store; `bench/store/run.sh` runs both.)
//!
//! Each writer owns one key and updates it `--ops` times, each update conditional on the
//! revision its previous update returned (one round trip per CAS). With `--shared` all
//! writers increment one counter (read, then CAS; conflicts are retried and counted).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tabby_store::{Datastore, StoreError, StoreUrl};

struct Args {
    store: StoreUrl,
    writers: usize,
    ops: usize,
    shared: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut store = None;
    let mut writers = 1;
    let mut ops = 1000;
    let mut shared = false;
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "--store" => {
                store = Some(StoreUrl::parse(&value("--store")?).map_err(|e| e.to_string())?)
            }
            "--writers" => {
                writers = value("--writers")?
                    .parse()
                    .map_err(|e| format!("--writers: {e}"))?
            }
            "--ops" => ops = value("--ops")?.parse().map_err(|e| format!("--ops: {e}"))?,
            "--shared" => shared = true,
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    let store = store.ok_or("--store URL (sqlite:///path or etcd://host:port) is required")?;
    if writers == 0 || ops == 0 {
        return Err("--writers and --ops must be positive".to_string());
    }
    Ok(Args {
        store,
        writers,
        ops,
        shared,
    })
}

/// `ops` CAS updates of the writer's own key; returns each update's latency.
async fn own_key(
    store: Arc<dyn Datastore>,
    key: String,
    ops: usize,
) -> Result<Vec<Duration>, StoreError> {
    let mut rev = match store.create(&key, b"0").await {
        Ok(rev) => rev,
        Err(StoreError::AlreadyExists { .. }) => store
            .get(&key)
            .await?
            .map(|kv| kv.mod_revision)
            .unwrap_or(0),
        Err(e) => return Err(e),
    };
    let mut latencies = Vec::with_capacity(ops);
    for i in 0..ops {
        let started = Instant::now();
        rev = store.update(&key, i.to_string().as_bytes(), rev).await?;
        latencies.push(started.elapsed());
    }
    Ok(latencies)
}

/// `ops` successful increments of one shared counter; latency includes retries.
async fn shared_key(
    store: Arc<dyn Datastore>,
    key: String,
    ops: usize,
) -> Result<(Vec<Duration>, usize), StoreError> {
    let mut latencies = Vec::with_capacity(ops);
    let mut conflicts = 0;
    for _ in 0..ops {
        let started = Instant::now();
        loop {
            let kv = store
                .get(&key)
                .await?
                .expect("counter created before the run");
            let n: u64 = String::from_utf8_lossy(&kv.value).parse().unwrap_or(0);
            match store
                .update(&key, (n + 1).to_string().as_bytes(), kv.mod_revision)
                .await
            {
                Ok(_) => break,
                Err(e) if e.is_conflict() => conflicts += 1,
                Err(e) => return Err(e),
            }
        }
        latencies.push(started.elapsed());
    }
    Ok((latencies, conflicts))
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

#[tokio::main]
async fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("cas_bench: {e}");
            eprintln!("usage: cas_bench --store URL [--writers N] [--ops N] [--shared]");
            std::process::exit(2);
        }
    };
    let store = match tabby_store::open(&args.store).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("cas_bench: {e}");
            std::process::exit(1);
        }
    };
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    // A fresh key space per run, so that runs never see each other's keys.
    let run = format!("/tabby-bench/{}-{nanos}", std::process::id());
    let shared_counter = format!("{run}/counter");
    if args.shared {
        store
            .create(&shared_counter, b"0")
            .await
            .expect("create the shared counter");
    }
    let started = Instant::now();
    let tasks: Vec<_> = (0..args.writers)
        .map(|w| {
            let store = store.clone();
            let (shared, ops) = (args.shared, args.ops);
            let key = if shared {
                shared_counter.clone()
            } else {
                format!("{run}/w{w}")
            };
            tokio::spawn(async move {
                if shared {
                    shared_key(store, key, ops).await
                } else {
                    own_key(store, key, ops).await.map(|l| (l, 0))
                }
            })
        })
        .collect();
    let mut latencies = Vec::new();
    let mut conflicts = 0;
    for t in tasks {
        match t.await.expect("writer task") {
            Ok((l, c)) => {
                latencies.extend(l);
                conflicts += c;
            }
            Err(e) => {
                eprintln!("cas_bench: {e}");
                std::process::exit(1);
            }
        }
    }
    let elapsed = started.elapsed();
    latencies.sort();
    println!(
        "store={} writers={} ops/writer={} mode={} cas={} elapsed={:.2}s cas/s={:.0} p50={:.2}ms p99={:.2}ms conflicts={}",
        args.store,
        args.writers,
        args.ops,
        if args.shared { "shared" } else { "own-key" },
        latencies.len(),
        elapsed.as_secs_f64(),
        latencies.len() as f64 / elapsed.as_secs_f64(),
        percentile(&latencies, 0.50).as_secs_f64() * 1e3,
        percentile(&latencies, 0.99).as_secs_f64() * 1e3,
        conflicts,
    );
}
