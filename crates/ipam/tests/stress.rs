//! Allocation under crashes, on SQLite and on a real etcd: 50 allocators acting as 10
//! nodes make 20,000 allocations and 10,000 releases while random worker processes are
//! SIGKILLed and replaced. Afterwards the store is checked against what the workers
//! acknowledged: no address is held twice, every live handle owns its address, the only
//! debris is what killed operations can leave (over-counted handles, pending affinities,
//! addresses of unacknowledged requests), and releasing the killed requests' handles
//! leaves no leak.
//!
//! Workers are this test binary run again with `TABBY_IPAM_STRESS_WORKER` set (test
//! `worker`), one process per node with several allocator tasks. Each writes a journal:
//! a line before it starts an operation and one after the store acknowledged it. Sizes
//! come from `TABBY_IPAM_STRESS_ALLOCS` and `TABBY_IPAM_STRESS_RELEASES` (defaults: the
//! issue's 20,000 and 10,000); `TABBY_IPAM_STRESS_SEED` repeats a run's choices (the kill
//! times still depend on timing). The full figures take minutes per backend in a debug
//! build on a small machine (see `docs/benchmarks.md`); a tenth of them checks the same.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tabby_ipam::{
    AffinityState, AutoAssignArgs, Ipam, IpamOptions, PoolInfo, ReleaseOptions, StaticPools,
};
use tabby_store::etcd_harness::EtcdCluster;
use tabby_store::{Datastore, KeyValue, ListResult, Revision, StoreError, StoreUrl, WatchStream};

/// Set in a worker process: its [`WorkerSpec`].
const WORKER_ENV: &str = "TABBY_IPAM_STRESS_WORKER";
const NODES: usize = 10;
const ALLOCATORS_PER_NODE: usize = 5;
/// 16,384 addresses in 128 blocks of 128: room for the ~10,000 addresses live at the
/// end within the default limit of 20 blocks per node.
const POOL: &str = "10.128.0.0/18";
const BLOCK_SIZE: u8 = 25;
/// Pause between two kills, drawn uniformly from this range.
const KILL_EVERY_MS: std::ops::Range<u64> = 250..1500;
/// A run that has not reached its totals by then is reported as stuck.
const RUN_DEADLINE: Duration = Duration::from_secs(20 * 60);
/// How long stopped workers get to finish their current operations.
const STOP_TIMEOUT: Duration = Duration::from_secs(60);

/// The heavy runs take both cores; run them one at a time.
static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn pools() -> Arc<StaticPools> {
    Arc::new(StaticPools::new(vec![
        PoolInfo::new("stress", POOL.parse().unwrap()).with_block_size(BLOCK_SIZE),
    ]))
}

fn env_count(name: &str, default: usize) -> usize {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|e| panic!("{name}={v:?} is not a count: {e}")),
        Err(_) => default,
    }
}

// ---- worker process ---------------------------------------------------------------------

/// What one worker process does, passed in [`WORKER_ENV`] as `|`-separated fields.
#[derive(Clone, Debug)]
struct WorkerSpec {
    store: String,
    node: String,
    id: usize,
    seed: u64,
    allocators: usize,
    journal: PathBuf,
    /// Fault injection: writes ignore the expected revision (a broken compare-and-swap).
    lost_updates: bool,
}

impl WorkerSpec {
    fn encode(&self) -> String {
        format!(
            "{}|{}|{}|{}|{}|{}|{}",
            self.store,
            self.node,
            self.id,
            self.seed,
            self.allocators,
            self.journal.display(),
            self.lost_updates
        )
    }

    fn decode(s: &str) -> WorkerSpec {
        let f: Vec<&str> = s.split('|').collect();
        assert_eq!(f.len(), 7, "{WORKER_ENV}={s:?}");
        WorkerSpec {
            store: f[0].to_owned(),
            node: f[1].to_owned(),
            id: f[2].parse().expect("worker id"),
            seed: f[3].parse().expect("seed"),
            allocators: f[4].parse().expect("allocator count"),
            journal: PathBuf::from(f[5]),
            lost_updates: f[6].parse().expect("lost_updates flag"),
        }
    }
}

/// The worker role: a no-op unless this process was started by a stress run.
#[test]
fn worker() {
    let Ok(spec) = std::env::var(WORKER_ENV) else {
        return;
    };
    let spec = WorkerSpec::decode(&spec);
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("worker runtime")
        .block_on(run_worker(spec));
}

/// An append-only journal; every line is one `write` so a kill never tears it.
struct Journal(Mutex<File>);

impl Journal {
    fn line(&self, line: String) {
        let mut f = self.0.lock().unwrap();
        f.write_all(format!("{line}\n").as_bytes())
            .and_then(|()| f.flush())
            .expect("journal write");
    }
}

async fn run_worker(spec: WorkerSpec) {
    let url = StoreUrl::parse(&spec.store).expect("store URL");
    let mut store = tabby_store::open(&url).await.expect("open store");
    if spec.lost_updates {
        store = Arc::new(LostUpdates(store));
    }
    // With a CAS that does not compare, allocators must really race to show the
    // damage: no per-host serialisation there.
    let ipam = Ipam::new(store, pools()).with_options(IpamOptions {
        serialise_per_host: !spec.lost_updates,
        ..IpamOptions::default()
    });
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&spec.journal)
        .expect("open journal");
    let journal = Arc::new(Journal(Mutex::new(file)));
    // The parent closes our stdin to stop us: finish the current operations and exit.
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let _ = std::io::stdin().read_to_end(&mut Vec::new());
            stop.store(true, Ordering::SeqCst);
        });
    }
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..spec.allocators {
        let (ipam, journal, stop) = (ipam.clone(), journal.clone(), stop.clone());
        let node = spec.node.clone();
        let prefix = format!("w{}-t{t}", spec.id);
        let seed = spec.seed ^ (t as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        tasks.spawn(allocator(ipam, node, prefix, seed, journal, stop));
    }
    while let Some(r) = tasks.join_next().await {
        r.expect("allocator task panicked");
    }
}

/// One allocator: allocates one address per handle in a loop and releases a random
/// handle it holds after every second allocation (and one more every 16, so releases
/// keep up with the 2:1 target despite those lost to kills), by handle or by guarded
/// address.
async fn allocator(
    ipam: Ipam,
    node: String,
    prefix: String,
    seed: u64,
    journal: Arc<Journal>,
    stop: Arc<AtomicBool>,
) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut held: Vec<(String, IpAddr)> = Vec::new();
    let mut i = 0u64;
    while !stop.load(Ordering::SeqCst) {
        let handle = format!("k8s-pod-network.{prefix}-{i}");
        journal.line(format!("a {handle}"));
        let args = AutoAssignArgs::new(node.as_str(), 1, 0).with_handle(handle.clone());
        match ipam.auto_assign(&args).await {
            Ok(res) => match res.v4.as_ref().map(|v| v.ips.as_slice()) {
                Some([net]) => {
                    journal.line(format!("A {handle} {}", net.addr()));
                    held.push((handle, net.addr()));
                }
                other => journal.line(format!("E {handle} assigned {other:?}: {res:?}")),
            },
            Err(e) => journal.line(format!("E {handle} {e}")),
        }
        if (i % 2 == 1 || i % 16 == 8) && !held.is_empty() {
            let (h, ip) = held.swap_remove(rng.random_range(0..held.len()));
            journal.line(format!("r {h}"));
            if rng.random_ratio(2, 3) {
                match ipam.release_by_handle(&h).await {
                    Ok(ips) => journal.line(format!("R {h} {}", join_ips(&ips))),
                    Err(e) => journal.line(format!("E {h} release_by_handle: {e}")),
                }
            } else {
                let opts = ReleaseOptions {
                    handle: Some(h.clone()),
                    ..ReleaseOptions::new(ip)
                };
                match ipam.release_ips(&[opts]).await {
                    Ok(unallocated) if unallocated.is_empty() => {
                        journal.line(format!("R {h} {ip}"))
                    }
                    Ok(unallocated) => journal.line(format!(
                        "E {h} release_ips: {} was not allocated",
                        join_ips(&unallocated)
                    )),
                    Err(e) => journal.line(format!("E {h} release_ips: {e}")),
                }
            }
        }
        i += 1;
    }
}

fn join_ips(ips: &[IpAddr]) -> String {
    if ips.is_empty() {
        return "-".to_owned();
    }
    ips.iter()
        .map(IpAddr::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// Fault injection: a store whose conditional writes are not conditional, as if the
/// backend's compare-and-swap were broken. Racing writers then overwrite each other.
#[derive(Debug)]
struct LostUpdates(Arc<dyn Datastore>);

#[async_trait]
impl Datastore for LostUpdates {
    async fn get(&self, key: &str) -> tabby_store::Result<Option<KeyValue>> {
        self.0.get(key).await
    }
    async fn list(&self, prefix: &str) -> tabby_store::Result<ListResult> {
        self.0.list(prefix).await
    }
    async fn create(&self, key: &str, value: &[u8]) -> tabby_store::Result<Revision> {
        self.0.create(key, value).await
    }
    async fn update(&self, key: &str, value: &[u8], _: Revision) -> tabby_store::Result<Revision> {
        let current = self.0.get(key).await?.ok_or_else(|| StoreError::NotFound {
            key: key.to_owned(),
        })?;
        self.0.update(key, value, current.mod_revision).await
    }
    async fn delete(&self, key: &str, _: Option<Revision>) -> tabby_store::Result<KeyValue> {
        self.0.delete(key, None).await
    }
    async fn watch(&self, prefix: &str, from: Revision) -> tabby_store::Result<WatchStream> {
        self.0.watch(prefix, from).await
    }
    async fn revision(&self) -> tabby_store::Result<Revision> {
        self.0.revision().await
    }
    fn endpoint(&self) -> String {
        self.0.endpoint()
    }
}

// ---- parent: running the fleet -------------------------------------------------------------

/// One stress run.
#[derive(Clone, Debug)]
struct RunConfig {
    label: &'static str,
    store: StoreUrl,
    dir: PathBuf,
    allocs: usize,
    releases: usize,
    nodes: usize,
    allocators_per_node: usize,
    kills: bool,
    lost_updates: bool,
    seed: u64,
}

impl RunConfig {
    fn new(label: &'static str, store: StoreUrl, dir: &Path) -> RunConfig {
        let seed = match std::env::var("TABBY_IPAM_STRESS_SEED") {
            Ok(s) => s.parse().expect("TABBY_IPAM_STRESS_SEED is a u64"),
            Err(_) => rand::rng().random(),
        };
        RunConfig {
            label,
            store,
            dir: dir.to_path_buf(),
            allocs: env_count("TABBY_IPAM_STRESS_ALLOCS", 20_000),
            releases: env_count("TABBY_IPAM_STRESS_RELEASES", 10_000),
            nodes: NODES,
            allocators_per_node: ALLOCATORS_PER_NODE,
            kills: true,
            lost_updates: false,
            seed,
        }
    }
}

struct Running {
    id: usize,
    node: usize,
    child: Child,
    stdin: Option<ChildStdin>,
    log: PathBuf,
}

/// A worker's journal and how the worker ended.
#[derive(Clone, Debug)]
struct Record {
    id: usize,
    journal: PathBuf,
    killed: bool,
}

/// The worker processes of a run and the counts read from their journals so far.
struct Fleet<'a> {
    cfg: &'a RunConfig,
    running: Vec<Running>,
    records: Vec<Record>,
    /// Bytes of each journal already counted (by worker id).
    read_upto: Vec<u64>,
    allocs: usize,
    releases: usize,
    kills: usize,
}

impl<'a> Fleet<'a> {
    fn new(cfg: &'a RunConfig) -> Fleet<'a> {
        Fleet {
            cfg,
            running: Vec::new(),
            records: Vec::new(),
            read_upto: Vec::new(),
            allocs: 0,
            releases: 0,
            kills: 0,
        }
    }

    fn spawn(&mut self, node: usize, seed: u64) {
        let id = self.records.len();
        let journal = self.cfg.dir.join(format!("journal-{id}.log"));
        let log = self.cfg.dir.join(format!("worker-{id}.stderr"));
        let spec = WorkerSpec {
            store: self.cfg.store.to_string(),
            node: format!("node-{node}"),
            id,
            seed,
            allocators: self.cfg.allocators_per_node,
            journal: journal.clone(),
            lost_updates: self.cfg.lost_updates,
        };
        let stderr = File::create(&log).expect("worker log");
        let mut child = Command::new(std::env::current_exe().expect("test binary"))
            .args(["worker", "--exact", "--nocapture", "--test-threads=1"])
            .env(WORKER_ENV, spec.encode())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("start worker process");
        let stdin = child.stdin.take();
        self.running.push(Running {
            id,
            node,
            child,
            stdin,
            log,
        });
        self.records.push(Record {
            id,
            journal,
            killed: false,
        });
        self.read_upto.push(0);
    }

    /// Adds the complete journal lines written since the last call to the counts.
    fn tally(&mut self) {
        for r in &self.records {
            let Ok(mut f) = File::open(&r.journal) else {
                continue;
            };
            let from = self.read_upto[r.id];
            let mut buf = Vec::new();
            f.seek(SeekFrom::Start(from)).expect("seek journal");
            f.read_to_end(&mut buf).expect("read journal");
            let Some(end) = buf.iter().rposition(|&b| b == b'\n') else {
                continue;
            };
            for line in buf[..=end].split(|&b| b == b'\n') {
                match line.first() {
                    Some(b'A') => self.allocs += 1,
                    Some(b'R') => self.releases += 1,
                    _ => {}
                }
            }
            self.read_upto[r.id] = from + end as u64 + 1;
        }
    }

    /// Fails the run when a worker ended by itself.
    fn check_alive(&mut self) {
        for w in &mut self.running {
            if let Some(status) = w.child.try_wait().expect("poll worker") {
                panic!(
                    "[{}] worker {} (node-{}) exited by itself ({status}):\n{}",
                    self.cfg.label,
                    w.id,
                    w.node,
                    log_tail(&w.log)
                );
            }
        }
    }

    /// SIGKILLs a random worker and starts a replacement for its node.
    fn kill_random(&mut self, rng: &mut StdRng) {
        let mut w = self
            .running
            .swap_remove(rng.random_range(0..self.running.len()));
        w.child.kill().expect("SIGKILL worker");
        w.child.wait().expect("reap worker");
        self.records[w.id].killed = true;
        self.kills += 1;
        self.spawn(w.node, rng.random());
    }

    /// Closes every worker's stdin and waits for them to finish cleanly.
    async fn stop(&mut self) {
        for w in &mut self.running {
            w.stdin.take();
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        for mut w in std::mem::take(&mut self.running) {
            let status: ExitStatus = loop {
                if let Some(s) = w.child.try_wait().expect("poll worker") {
                    break s;
                }
                if Instant::now() > deadline {
                    let _ = w.child.kill();
                    let _ = w.child.wait();
                    panic!(
                        "[{}] worker {} did not stop within {STOP_TIMEOUT:?}:\n{}",
                        self.cfg.label,
                        w.id,
                        log_tail(&w.log)
                    );
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            };
            assert!(
                status.success(),
                "[{}] worker {} failed ({status}):\n{}",
                self.cfg.label,
                w.id,
                log_tail(&w.log)
            );
        }
    }
}

impl Drop for Fleet<'_> {
    fn drop(&mut self) {
        // A failed run must not leave workers behind.
        for w in &mut self.running {
            let _ = w.child.kill();
            let _ = w.child.wait();
        }
    }
}

fn log_tail(path: &Path) -> String {
    let s = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// What a run did and what verification found.
#[derive(Debug, Default)]
struct Outcome {
    elapsed_run: Duration,
    elapsed_verify: Duration,
    workers: usize,
    kills: usize,
    allocs: usize,
    releases: usize,
    live: usize,
    in_doubt: usize,
    /// Debris of killed operations, before the clean-up.
    orphaned: usize,
    over_counted_handles: usize,
    pending_affinities: usize,
    problems: Vec<String>,
}

/// Runs the fleet until the totals are reached, then verifies the store.
async fn stress(cfg: &RunConfig) -> Outcome {
    fs::create_dir_all(&cfg.dir).expect("run directory");
    eprintln!(
        "[{}] {} allocations, {} releases, {} nodes x {} allocators, kills: {}, seed {}",
        cfg.label,
        cfg.allocs,
        cfg.releases,
        cfg.nodes,
        cfg.allocators_per_node,
        cfg.kills,
        cfg.seed
    );
    let mut rng = StdRng::seed_from_u64(cfg.seed);
    let started = Instant::now();
    let mut fleet = Fleet::new(cfg);
    for node in 0..cfg.nodes {
        fleet.spawn(node, rng.random());
    }
    let next_kill =
        |rng: &mut StdRng| Instant::now() + Duration::from_millis(rng.random_range(KILL_EVERY_MS));
    let mut kill_at = next_kill(&mut rng);
    let mut progress_at = Instant::now() + Duration::from_secs(15);
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        fleet.tally();
        fleet.check_alive();
        if fleet.allocs >= cfg.allocs && fleet.releases >= cfg.releases {
            break;
        }
        let now = Instant::now();
        if cfg.kills && now >= kill_at {
            fleet.kill_random(&mut rng);
            kill_at = next_kill(&mut rng);
        }
        if now >= progress_at {
            eprintln!(
                "[{}] {:>5.1}s: {} allocations, {} releases, {} kills",
                cfg.label,
                started.elapsed().as_secs_f64(),
                fleet.allocs,
                fleet.releases,
                fleet.kills
            );
            progress_at = now + Duration::from_secs(15);
        }
        assert!(
            started.elapsed() < RUN_DEADLINE,
            "[{}] stuck: {} allocations and {} releases after {RUN_DEADLINE:?}",
            cfg.label,
            fleet.allocs,
            fleet.releases
        );
    }
    fleet.stop().await;
    fleet.tally();
    let elapsed_run = started.elapsed();

    let verifying = Instant::now();
    let store = tabby_store::open(&cfg.store).await.expect("open store");
    let ipam = Ipam::new(store, pools());
    let mut out = verify(&ipam, &fleet.records).await;
    out.elapsed_run = elapsed_run;
    out.elapsed_verify = verifying.elapsed();
    out.workers = fleet.records.len();
    out.kills = fleet.kills;
    out.allocs = fleet.allocs;
    out.releases = fleet.releases;
    eprintln!(
        "[{}] {} allocations and {} releases in {:.1}s ({:.0} ops/s) by {} workers, {} killed; \
         verified in {:.1}s: {} live handles, {} killed mid-request; debris before clean-up: \
         {} unacknowledged addresses, {} over-counted handles, {} pending affinities; {} problems",
        cfg.label,
        out.allocs,
        out.releases,
        elapsed_run.as_secs_f64(),
        (out.allocs + out.releases) as f64 / elapsed_run.as_secs_f64(),
        out.workers,
        out.kills,
        out.elapsed_verify.as_secs_f64(),
        out.live,
        out.in_doubt,
        out.orphaned,
        out.over_counted_handles,
        out.pending_affinities,
        out.problems.len()
    );
    out
}

// ---- parent: verification --------------------------------------------------------------

/// What the journals say about the handles.
#[derive(Debug, Default)]
struct Ledger {
    /// Handle → the address the store acknowledged for it.
    acked: BTreeMap<String, IpAddr>,
    /// Handles whose release was acknowledged.
    released: BTreeSet<String>,
    /// Handles whose last operation has no outcome: killed mid-request (or failed).
    in_doubt: BTreeSet<String>,
    problems: Vec<String>,
}

impl Ledger {
    fn read(records: &[Record]) -> Ledger {
        let mut l = Ledger::default();
        for r in records {
            let text = fs::read_to_string(&r.journal).unwrap_or_default();
            let mut begun: BTreeMap<String, char> = BTreeMap::new();
            if !text.is_empty() && !text.ends_with('\n') {
                l.problems.push(format!(
                    "journal {} ends in a torn line",
                    r.journal.display()
                ));
            }
            for line in text.lines() {
                let mut f = line.splitn(3, ' ');
                let (Some(op), Some(h)) = (f.next(), f.next()) else {
                    l.problems.push(format!("bad journal line {line:?}"));
                    continue;
                };
                let rest = f.next().unwrap_or("");
                let h = h.to_owned();
                match op {
                    "a" | "r" => {
                        begun.insert(h, if op == "a" { 'a' } else { 'r' });
                    }
                    "A" => {
                        begun.remove(&h);
                        match rest.parse::<IpAddr>() {
                            Ok(ip) => {
                                l.acked.insert(h, ip);
                            }
                            Err(_) => l.problems.push(format!("bad journal line {line:?}")),
                        }
                    }
                    "R" => {
                        begun.remove(&h);
                        let want = l.acked.get(&h).map(IpAddr::to_string);
                        if want.as_deref() != Some(rest) {
                            l.problems.push(format!(
                                "release of {h} freed {rest}, but it was given {want:?}"
                            ));
                        }
                        l.released.insert(h);
                    }
                    "E" => {
                        begun.remove(&h);
                        l.problems.push(format!("worker {}: {h}: {rest}", r.id));
                        l.in_doubt.insert(h);
                    }
                    _ => l.problems.push(format!("bad journal line {line:?}")),
                }
            }
            if !r.killed && !begun.is_empty() {
                l.problems.push(format!(
                    "worker {} stopped cleanly but left {} operations unfinished",
                    r.id,
                    begun.len()
                ));
            }
            l.in_doubt.extend(begun.into_keys());
        }
        l
    }

    /// Handles that hold their address: acknowledged, and no release was started.
    fn live(&self) -> BTreeMap<&str, IpAddr> {
        self.acked
            .iter()
            .filter(|(h, _)| !self.released.contains(*h) && !self.in_doubt.contains(*h))
            .map(|(h, ip)| (h.as_str(), *ip))
            .collect()
    }
}

async fn verify(ipam: &Ipam, records: &[Record]) -> Outcome {
    let ledger = Ledger::read(records);
    let mut problems = ledger.problems.clone();
    let live = ledger.live();

    // No address is held by two live handles.
    let mut holders: BTreeMap<IpAddr, Vec<&str>> = BTreeMap::new();
    for (h, ip) in &live {
        holders.entry(*ip).or_default().push(h);
    }
    for (ip, hs) in &holders {
        if hs.len() > 1 {
            problems.push(format!("{ip} is held twice: by {}", hs.join(" and ")));
        }
    }

    // Every live handle's address is allocated to it in the store.
    let mut stored: BTreeMap<IpAddr, Option<String>> = BTreeMap::new();
    for b in ipam.list_blocks(None).await.expect("list blocks") {
        for a in b.allocations() {
            if stored.insert(a.ip, a.handle.clone()).is_some() {
                problems.push(format!("{} is stored in two blocks", a.ip));
            }
        }
    }
    for (h, ip) in &live {
        match stored.get(ip) {
            Some(Some(owner)) if owner == h => {}
            other => problems.push(format!(
                "live handle {h}: {ip} is allocated to {other:?} in the store"
            )),
        }
    }
    for (h, ip) in live.iter().take(100) {
        match ipam.ips_by_handle(h).await {
            Ok(ips) if ips == [*ip] => {}
            other => problems.push(format!("ips_by_handle({h}) = {other:?}, want [{ip}]")),
        }
    }

    // The check may only find what killed requests leave: their addresses, their
    // over-counted handles, and pending affinities of interrupted claims.
    let is_live =
        |a: &tabby_ipam::AllocationInfo| a.handle.as_deref().is_some_and(|h| live.contains_key(h));
    let report = ipam.check_with_owners(is_live).await.expect("check");
    let states: BTreeMap<(String, ipnet::IpNet), AffinityState> = ipam
        .list_affinities(None)
        .await
        .expect("list affinities")
        .into_iter()
        .map(|a| ((a.host, a.cidr), a.state))
        .collect();
    let in_doubt = |h: Option<&str>| h.is_some_and(|h| ledger.in_doubt.contains(h));
    for a in &report.missing_handles {
        problems.push(format!(
            "{} in {} has no handle {:?}",
            a.ip, a.block, a.handle
        ));
    }
    for a in &report.orphaned {
        if !in_doubt(a.handle.as_deref()) {
            problems.push(format!(
                "{} is allocated to {:?}, which no journal shows live (leak)",
                a.ip, a.handle
            ));
        }
    }
    for m in &report.handle_mismatches {
        if !(in_doubt(Some(&m.handle)) && m.recorded > m.actual) {
            problems.push(format!("handle mismatch not explained by a kill: {m:?}"));
        }
    }
    let mut pending = Vec::new();
    for p in &report.affinity_problems {
        match states.get(&(p.host.clone(), p.cidr)) {
            Some(AffinityState::Pending) => pending.push((p.host.clone(), p.cidr)),
            state => problems.push(format!(
                "affinity problem not explained by a kill: {p:?} (state {state:?})"
            )),
        }
    }
    for (c, why) in &report.invalid_blocks {
        problems.push(format!("block {c} is invalid: {}", why.join("; ")));
    }
    for (a, b) in &report.overlapping_blocks {
        problems.push(format!("blocks {a} and {b} overlap"));
    }

    // Clean up after the killed requests, as the CNI plugin's DEL would: release their
    // handles; finish their interrupted claims, as the node does when it next uses the
    // block. Then nothing may be left over.
    for h in &ledger.in_doubt {
        if let Err(e) = ipam.release_by_handle(h).await {
            problems.push(format!("release_by_handle({h}) after the run: {e}"));
        }
    }
    for (host, cidr) in &pending {
        if let Err(e) = ipam.claim_affinity(*cidr, host).await {
            problems.push(format!("finishing the claim of {cidr} by {host}: {e}"));
        }
    }
    let after = ipam.check_with_owners(is_live).await.expect("check");
    if !after.is_clean() {
        problems.push(format!("after the clean-up: {after}"));
    }

    Outcome {
        live: live.len(),
        in_doubt: ledger.in_doubt.len(),
        orphaned: report.orphaned.len(),
        over_counted_handles: report.handle_mismatches.len(),
        pending_affinities: pending.len(),
        problems,
        ..Outcome::default()
    }
}

fn assert_clean(label: &str, out: &Outcome) {
    assert!(
        out.problems.is_empty(),
        "[{label}] {} problems:\n{}",
        out.problems.len(),
        out.problems
            .iter()
            .take(50)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(out.allocs > 0 && out.releases > 0 && out.live > 0);
}

// ---- the runs ------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stress_sqlite_with_kills() {
    let _heavy = HEAVY.lock().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let url = StoreUrl::Sqlite {
        path: dir.path().join("store.db"),
    };
    let cfg = RunConfig::new("sqlite", url, dir.path());
    let out = stress(&cfg).await;
    assert_clean(cfg.label, &out);
    assert!(out.kills > 0, "no worker was killed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stress_etcd_with_kills() {
    let _heavy = HEAVY.lock().await;
    let cluster = EtcdCluster::start(1)
        .await
        .expect("start etcd (this test needs /usr/bin/etcd or TABBY_ETCD_BIN)");
    let dir = tempfile::tempdir().expect("temp dir");
    let cfg = RunConfig::new("etcd", cluster.url(), dir.path());
    let out = stress(&cfg).await;
    drop(cluster);
    assert_clean(cfg.label, &out);
    assert!(out.kills > 0, "no worker was killed");
}

/// The verification can fail: with a compare-and-swap that does not compare, racing
/// allocators overwrite each other's block writes and the run must report it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stress_detects_lost_updates() {
    let _heavy = HEAVY.lock().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let url = StoreUrl::Sqlite {
        path: dir.path().join("store.db"),
    };
    let cfg = RunConfig {
        allocs: 300,
        releases: 150,
        nodes: 2,
        allocators_per_node: 5,
        kills: false,
        lost_updates: true,
        ..RunConfig::new("sqlite-broken-cas", url, dir.path())
    };
    let out = stress(&cfg).await;
    let count = |what: &str| out.problems.iter().filter(|p| p.contains(what)).count();
    eprintln!(
        "[{}] found, as it should: {} addresses held twice, {} live handles not owning \
         their address, {} releases that freed the wrong thing; first: {}",
        cfg.label,
        count("held twice"),
        count("is allocated to"),
        count("freed"),
        out.problems
            .iter()
            .take(5)
            .cloned()
            .collect::<Vec<_>>()
            .join("; ")
    );
    assert!(
        count("held twice") > 0,
        "lost updates went unnoticed: {:?}",
        out.problems
    );
}
