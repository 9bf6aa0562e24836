//! The SQLite backend: the shared datastore suite (each case on a fresh file), then what
//! only a file shared by processes has: two OS processes incrementing one key lose
//! nothing, a watcher sees another process's writes in order and within milliseconds
//! (inotify, not the safety poll), idle watches cost nothing, the polling fallback, the
//! event log's history and compaction, reopening, a locked file, and files that cannot
//! be used.
//!
//! Tests that need a second process run this test binary again, filtered to the same
//! test, with `TABBY_STORE_SQLITE_CHILD=<role>:<store path>` telling it what to do.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use tabby_store::sqlite::{SqliteOptions, SqliteStore, Wake, WatchStats};
use tabby_store::testsuite::{self, Fixture, assert_quiet, next_event, next_events};
use tabby_store::{Datastore, KeyValue, Revision, StoreError, StoreUrl, WatchEvent};

const CHILD_ENV: &str = "TABBY_STORE_SQLITE_CHILD";

/// A fresh store in a new temporary directory.
async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().join("store.db"))
        .await
        .unwrap();
    let compactor = store.clone();
    Fixture::new(Arc::new(store), "/tabby-suite/")
        .with_compactor(move |revision| {
            let s = compactor.clone();
            async move { s.compact(revision).await }
        })
        .keep_alive(dir)
}

tabby_store::datastore_suite!(fixture);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_all_runs_every_case_in_turn() {
    testsuite::run_all(fixture).await;
}

/// The store path when this process is a child in `role`.
fn child_path(role: &str) -> Option<PathBuf> {
    let value = std::env::var(CHILD_ENV).ok()?;
    let (r, path) = value.split_once(':')?;
    assert_eq!(r, role, "{CHILD_ENV}={value} started the wrong test");
    Some(PathBuf::from(path))
}

/// Runs this test binary again as a child doing `role` on the store at `path`, within
/// the test `test` only.
fn spawn_child(test: &str, role: &str, path: &Path) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, format!("{role}:{}", path.display()))
        .spawn()
        .unwrap()
}

/// Waits for `child` off the async threads and fails unless it succeeded.
async fn wait_success(mut child: Child, what: &str) {
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{what} failed: {status}");
}

fn kv(key: &str, value: &[u8], create_revision: Revision, mod_revision: Revision) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: value.to_vec(),
        create_revision,
        mod_revision,
    }
}

const COUNTER: &str = "/calico/ipam/v2/handle/counter";
const INCREMENTS: u64 = 1000;

/// Read-modify-write increments of [`COUNTER`], retried on conflicts. Returns the
/// number of conflicts.
async fn increment(store: &SqliteStore, times: u64) -> u64 {
    let mut conflicts = 0;
    for _ in 0..times {
        loop {
            let current = store.get(COUNTER).await.unwrap().expect("counter");
            let n: u64 = std::str::from_utf8(&current.value)
                .unwrap()
                .parse()
                .unwrap();
            match store
                .update(
                    COUNTER,
                    (n + 1).to_string().as_bytes(),
                    current.mod_revision,
                )
                .await
            {
                Ok(_) => break,
                Err(StoreError::Conflict { .. }) => conflicts += 1,
                Err(e) => panic!("increment: {e}"),
            }
        }
    }
    conflicts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_increment_one_key_without_losing_any() {
    const TEST: &str = "two_processes_increment_one_key_without_losing_any";
    if let Some(path) = child_path("increment") {
        let store = SqliteStore::open(&path).await.unwrap();
        let conflicts = increment(&store, INCREMENTS).await;
        eprintln!(
            "child {}: {INCREMENTS} increments, {conflicts} lost races retried",
            std::process::id()
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.db");
    let store = SqliteStore::open(&path).await.unwrap();
    let r0 = store.create(COUNTER, b"0").await.unwrap();
    let started = Instant::now();
    let a = spawn_child(TEST, "increment", &path);
    let b = spawn_child(TEST, "increment", &path);
    wait_success(a, "child a").await;
    wait_success(b, "child b").await;
    eprintln!("{} increments in {:?}", 2 * INCREMENTS, started.elapsed());

    let total = 2 * INCREMENTS as i64;
    assert_eq!(
        store.get(COUNTER).await.unwrap(),
        Some(kv(
            COUNTER,
            (2 * INCREMENTS).to_string().as_bytes(),
            r0,
            r0 + total
        )),
        "every increment landed exactly once"
    );
    assert_eq!(store.revision().await.unwrap(), r0 + total);
    // The event log holds every value once, in order, one revision each.
    let mut w = store.watch(COUNTER, r0 + 1).await.unwrap();
    let events = next_events(&mut w, total as usize).await;
    for (i, event) in events.iter().enumerate() {
        let n = i as i64 + 1;
        assert_eq!(
            event,
            &WatchEvent::Put(kv(COUNTER, n.to_string().as_bytes(), r0, r0 + n))
        );
    }
}

/// A write of the cross-process watch script.
#[derive(Clone, Debug)]
enum Op {
    Create(String, Vec<u8>),
    Update(String, Vec<u8>, Revision),
    Delete(String, Revision),
}

/// A fixed mix of creates, updates and deletes of a few keys under `/x/` (with writes
/// to `/y/` between), made by one writer from store revision `start`: each op with the
/// event a watch of `/x/` must report for it (none for `/y/`).
fn script(start: Revision) -> Vec<(Op, Option<WatchEvent>)> {
    use std::collections::HashMap;
    let mut live: HashMap<String, (Vec<u8>, Revision, Revision)> = HashMap::new();
    let mut rev = start;
    let mut ops = Vec::new();
    for i in 0..300u32 {
        rev += 1;
        if i % 4 == 3 {
            let key = format!("/y/{i}");
            ops.push((Op::Create(key, b"y".to_vec()), None));
            continue;
        }
        let key = format!("/x/k{}", i % 7);
        let value = format!("v{i}").into_bytes();
        match live.get(&key).cloned() {
            None => {
                live.insert(key.clone(), (value.clone(), rev, rev));
                let event = WatchEvent::Put(kv(&key, &value, rev, rev));
                ops.push((Op::Create(key, value), Some(event)));
            }
            Some((old, created, modified)) if i % 5 == 0 => {
                live.remove(&key);
                let event = WatchEvent::Delete {
                    key: key.clone(),
                    revision: rev,
                    prev: Some(kv(&key, &old, created, modified)),
                };
                ops.push((Op::Delete(key, modified), Some(event)));
            }
            Some((_, created, modified)) => {
                live.insert(key.clone(), (value.clone(), created, rev));
                let event = WatchEvent::Put(kv(&key, &value, created, rev));
                ops.push((Op::Update(key, value, modified), Some(event)));
            }
        }
    }
    ops
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watcher_sees_writes_from_another_process_in_order() {
    const TEST: &str = "watcher_sees_writes_from_another_process_in_order";
    if let Some(path) = child_path("script") {
        let store = SqliteStore::open(&path).await.unwrap();
        let mut rev = store.revision().await.unwrap();
        for (op, _) in script(rev) {
            let got = match op {
                Op::Create(k, v) => store.create(&k, &v).await.unwrap(),
                Op::Update(k, v, expected) => store.update(&k, &v, expected).await.unwrap(),
                Op::Delete(k, expected) => {
                    store.delete(&k, Some(expected)).await.unwrap();
                    store.revision().await.unwrap()
                }
            };
            assert_eq!(got, rev + 1, "the only writer makes consecutive revisions");
            rev = got;
        }
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.db");
    let store = SqliteStore::open(&path).await.unwrap();
    let start = store.revision().await.unwrap();
    let mut w = store.watch("/x/", 0).await.unwrap();
    let child = spawn_child(TEST, "script", &path);
    let want: Vec<WatchEvent> = script(start).into_iter().filter_map(|(_, e)| e).collect();
    let got = next_events(&mut w, want.len()).await;
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(g, w, "event {i}");
    }
    wait_success(child, "writer process").await;
    assert_quiet(&mut w, "after the script").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_log_keeps_the_configured_history() {
    let dir = tempfile::tempdir().unwrap();
    let options = SqliteOptions {
        history: Some(10),
        ..SqliteOptions::default()
    };
    let store = SqliteStore::open_with(dir.path().join("store.db"), options)
        .await
        .unwrap();
    let key = "/h/k";
    let first = store.create(key, b"0").await.unwrap();
    let mut last = first;
    for i in 1..30 {
        last = store
            .update(key, i.to_string().as_bytes(), last)
            .await
            .unwrap();
    }
    assert_eq!(store.compact_revision().await.unwrap(), last - 9);

    let mut old = store.watch("/h/", last - 20).await.unwrap();
    assert_eq!(
        next_event(&mut old).await,
        WatchEvent::Compacted {
            compact_revision: last - 9
        }
    );
    assert!(matches!(
        tokio::time::timeout(Duration::from_secs(5), old.next()).await,
        Ok(None)
    ));
    let mut kept = store.watch("/h/", last - 9).await.unwrap();
    let values: Vec<Vec<u8>> = next_events(&mut kept, 10)
        .await
        .into_iter()
        .map(|e| match e {
            WatchEvent::Put(kv) => kv.value,
            other => panic!("{other:?}"),
        })
        .collect();
    let want: Vec<Vec<u8>> = (20..30).map(|i: i32| i.to_string().into_bytes()).collect();
    assert_eq!(values, want);
    assert_eq!(
        store.get(key).await.unwrap(),
        Some(kv(key, b"29", first, last))
    );

    // Compacting by hand follows etcd's rules.
    let err = store.compact(last + 1).await.unwrap_err();
    assert!(
        matches!(&err, StoreError::Backend { message, .. } if message.contains("future")),
        "{err:?}"
    );
    match store.compact(last - 9).await {
        Err(StoreError::Compacted {
            requested,
            compact_revision,
        }) => assert_eq!((requested, compact_revision), (last - 9, last - 9)),
        other => panic!("compacting to the compaction point again: {other:?}"),
    }
    store.compact(last).await.unwrap();
    assert_eq!(store.compact_revision().await.unwrap(), last);

    // Without a history limit nothing is dropped until `compact` is called.
    let unbounded = SqliteOptions {
        history: None,
        ..SqliteOptions::default()
    };
    let store = SqliteStore::open_with(dir.path().join("all.db"), unbounded)
        .await
        .unwrap();
    let first = store.create(key, b"0").await.unwrap();
    let mut rev = first;
    for i in 1..50 {
        rev = store
            .update(key, i.to_string().as_bytes(), rev)
            .await
            .unwrap();
    }
    assert_eq!(store.compact_revision().await.unwrap(), 0);
    let mut all = store.watch("/h/", 1).await.unwrap();
    let events = next_events(&mut all, 50).await;
    assert_eq!(events[0].revision(), first);
    assert_eq!(events[49].revision(), rev);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_watch_is_not_caught_by_a_compaction_of_other_keys() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().join("store.db"))
        .await
        .unwrap();
    let mut quiet = store.watch("/quiet/", 0).await.unwrap();
    // The consumer waits on the stream the whole time, as a real watcher does.
    let first = tokio::spawn(async move { next_event(&mut quiet).await });
    let mut rev = store.create("/busy/k", b"0").await.unwrap();
    for i in 1..20 {
        rev = store
            .update("/busy/k", i.to_string().as_bytes(), rev)
            .await
            .unwrap();
    }
    // Its polls see that nothing under /quiet/ happened up to here.
    tokio::time::sleep(Duration::from_millis(300)).await;
    store.compact(rev).await.unwrap();
    let r = store.create("/quiet/k", b"q").await.unwrap();
    assert_eq!(
        first.await.unwrap(),
        WatchEvent::Put(kv("/quiet/k", b"q", r, r))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reopening_keeps_data_revision_and_history() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.db");
    let (r1, r3, r4) = {
        let store = SqliteStore::open(&path).await.unwrap();
        let r1 = store.create("/a", b"1").await.unwrap();
        store.create("/b", b"b").await.unwrap();
        let r3 = store.update("/a", b"2", r1).await.unwrap();
        store.delete("/b", None).await.unwrap();
        (r1, r3, store.revision().await.unwrap())
    };
    let store = SqliteStore::open(&path).await.unwrap();
    assert_eq!(store.get("/a").await.unwrap(), Some(kv("/a", b"2", r1, r3)));
    assert_eq!(store.get("/b").await.unwrap(), None);
    assert_eq!(store.revision().await.unwrap(), r4);
    let r5 = store.create("/c", b"c").await.unwrap();
    assert_eq!(r5, r4 + 1, "the revision carries on");
    let mut w = store.watch("/", r1).await.unwrap();
    let revs: Vec<Revision> = next_events(&mut w, 5)
        .await
        .iter()
        .map(WatchEvent::revision)
        .collect();
    assert_eq!(revs, (r1..=r5).collect::<Vec<_>>(), "history survives too");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_handles_on_one_file_see_each_other() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.db");
    let a = SqliteStore::open(&path).await.unwrap();
    let b = SqliteStore::open(&path).await.unwrap();
    // `b` is not told about `a`'s writes: its watch learns of them through the file.
    let mut wb = b.watch("/s/", 0).await.unwrap();
    let r1 = a.create("/s/k", b"1").await.unwrap();
    assert_eq!(b.get("/s/k").await.unwrap(), Some(kv("/s/k", b"1", r1, r1)));
    assert_eq!(
        next_event(&mut wb).await,
        WatchEvent::Put(kv("/s/k", b"1", r1, r1))
    );
    let r2 = b.update("/s/k", b"2", r1).await.unwrap();
    assert!(matches!(
        a.update("/s/k", b"lost", r1).await,
        Err(StoreError::Conflict { actual, .. }) if actual == r2
    ));
    assert!(matches!(
        a.create("/s/k", b"dup").await,
        Err(StoreError::AlreadyExists { .. })
    ));
    assert_eq!(a.revision().await.unwrap(), r2);
    assert_eq!(
        next_event(&mut wb).await,
        WatchEvent::Put(kv("/s/k", b"2", r1, r2))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_write_lock_is_waited_for_then_reported() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.db");
    let short = SqliteOptions {
        busy_timeout: Duration::from_millis(300),
        ..SqliteOptions::default()
    };
    let store = SqliteStore::open_with(&path, short).await.unwrap();
    let r1 = store.create("/k", b"0").await.unwrap();

    // Another program holds the write lock for longer than the timeout.
    let raw = rusqlite::Connection::open(&path).unwrap();
    raw.execute_batch("BEGIN IMMEDIATE").unwrap();
    let started = Instant::now();
    let err = store.create("/k2", b"x").await.unwrap_err();
    let waited = started.elapsed();
    match &err {
        StoreError::Unavailable { endpoint, message } => {
            assert_eq!(endpoint, &format!("sqlite://{}", path.display()));
            assert!(
                message.contains("create /k2") && message.contains("locked"),
                "{message}"
            );
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_secs(5),
        "{waited:?}"
    );
    // Readers are not blocked by a writer (WAL).
    assert_eq!(store.get("/k").await.unwrap(), Some(kv("/k", b"0", r1, r1)));
    raw.execute_batch("ROLLBACK").unwrap();
    assert_eq!(
        store.create("/k2", b"x").await.unwrap(),
        r1 + 1,
        "nothing half-done"
    );

    // A lock released within the timeout is simply waited for.
    let patient = SqliteStore::open(&path).await.unwrap();
    raw.execute_batch("BEGIN IMMEDIATE").unwrap();
    let holder = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(500));
        raw.execute_batch("COMMIT").unwrap();
    });
    let started = Instant::now();
    let r3 = patient.create("/k3", b"y").await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(400));
    assert_eq!(r3, r1 + 2);
    holder.join().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusable_paths_fail_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let plain = dir.path().join("plain-file");
    std::fs::write(&plain, b"not a directory").unwrap();
    let garbage = dir.path().join("garbage.db");
    std::fs::write(&garbage, vec![b'x'; 8192]).unwrap();
    let foreign = dir.path().join("foreign.db");
    rusqlite::Connection::open(&foreign)
        .unwrap()
        .execute_batch("CREATE TABLE t (x)")
        .unwrap();
    let cases: [(PathBuf, &str); 5] = [
        (plain.join("sub/store.db"), "creating directory"),
        (plain.join("store.db"), "creating directory"),
        (dir.path().to_path_buf(), "unable to open"),
        (garbage.clone(), "not a database"),
        (foreign.clone(), "not a Tabby store"),
    ];
    for (path, why) in &cases {
        let err = SqliteStore::open(path).await.unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains(&path.display().to_string()) && text.contains(why),
            "{}: {text}",
            path.display()
        );
        assert!(
            matches!(
                err,
                StoreError::Unavailable { .. } | StoreError::Backend { .. }
            ),
            "{err:?}"
        );
    }
    assert_eq!(
        std::fs::read(&garbage).unwrap(),
        vec![b'x'; 8192],
        "left alone"
    );

    // A directory we may not write to (not testable as root, who may write anywhere).
    let locked = dir.path().join("locked");
    std::fs::create_dir(&locked).unwrap();
    set_mode(&locked, 0o555);
    if std::fs::write(locked.join("probe"), b"").is_ok() {
        eprintln!("running as root: the read-only directory case cannot fail here");
    } else {
        let path = locked.join("sub/store.db");
        let err = SqliteStore::open(&path).await.unwrap_err().to_string();
        assert!(err.contains(&path.display().to_string()), "{err}");
        let path = locked.join("store.db");
        let err = SqliteStore::open(&path).await.unwrap_err().to_string();
        assert!(err.contains(&path.display().to_string()), "{err}");
    }
    set_mode(&locked, 0o755);
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_by_url_creates_parent_directories() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("var/lib/tabby/store.db");
    let url = StoreUrl::parse(&format!("sqlite://{}", path.display())).unwrap();
    let store = tabby_store::open(&url).await.unwrap();
    assert_eq!(store.endpoint(), format!("sqlite://{}", path.display()));
    assert!(store.endpoint().starts_with("sqlite:///"));
    let r = store.create("/k", b"v").await.unwrap();
    assert_eq!(store.get("/k").await.unwrap(), Some(kv("/k", b"v", r, r)));
    assert!(path.is_file());
    let all = store.list("").await.unwrap();
    assert_eq!(
        all.kvs,
        vec![kv("/k", b"v", r, r)],
        "the empty prefix lists every key"
    );
    assert_eq!(
        StoreUrl::default(),
        StoreUrl::Sqlite {
            path: "/var/lib/tabby/store.db".into()
        }
    );
}

/// Concurrent writes through one handle are committed in shared transactions (group
/// commit); each still checks its own condition against the writes queued before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grouped_writes_keep_their_own_conditions_and_revisions() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(dir.path().join("s.db")).await.unwrap());
    let start = store.revision().await.unwrap();
    // 32 racing creates of one key and 32 of distinct keys, all at once.
    let tasks: Vec<_> = (0..64)
        .map(|i| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                let key = if i % 2 == 0 {
                    "/g/same".to_string()
                } else {
                    format!("/g/own/{i}")
                };
                (i, store.create(&key, format!("{i}").as_bytes()).await)
            })
        })
        .collect();
    let mut revisions = Vec::new();
    let mut winners = Vec::new();
    for t in tasks {
        let (i, result) = t.await.unwrap();
        match result {
            Ok(rev) => {
                revisions.push(rev);
                if i % 2 == 0 {
                    winners.push(i);
                }
            }
            Err(StoreError::AlreadyExists { key }) => assert_eq!(key, "/g/same"),
            Err(e) => panic!("create {i}: {e}"),
        }
    }
    assert_eq!(winners.len(), 1, "exactly one create of /g/same wins");
    revisions.sort();
    let expected: Vec<Revision> = (start + 1..=start + 33).collect();
    assert_eq!(
        revisions, expected,
        "33 writes, each its own revision, no gaps"
    );
    let same = store.get("/g/same").await.unwrap().unwrap();
    assert_eq!(same.value, format!("{}", winners[0]).into_bytes());
    // An update conditioned on a revision that an earlier write in the same batch
    // replaced must lose, whatever batch it lands in.
    let rev = same.mod_revision;
    let (a, b) = tokio::join!(
        store.update("/g/same", b"a", rev),
        store.update("/g/same", b"b", rev)
    );
    assert!(
        a.is_ok() != b.is_ok(),
        "one CAS wins, one conflicts: {a:?} {b:?}"
    );
    assert_eq!(store.revision().await.unwrap(), start + 34);
}

/// Options whose safety poll is far off: a watch woken well within it was woken by
/// inotify.
fn slow_safety_poll() -> SqliteOptions {
    SqliteOptions {
        poll_interval: Duration::from_secs(10),
        ..SqliteOptions::default()
    }
}

/// The median and the largest of `samples`.
fn median_and_max(mut samples: Vec<Duration>) -> (Duration, Duration) {
    samples.sort();
    (samples[samples.len() / 2], samples[samples.len() - 1])
}

/// Waits (up to 10 s) until `store`'s watch counters satisfy `ok`; returns them.
async fn stats_until(store: &SqliteStore, ok: impl Fn(&WatchStats) -> bool) -> WatchStats {
    let started = Instant::now();
    loop {
        let stats = store.watch_stats();
        if ok(&stats) {
            return stats;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "watch counters stuck at {stats:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn assert_inotify(store: &SqliteStore) {
    assert_eq!(
        store.watch_stats().wake,
        Some(Wake::Inotify),
        "watches must be woken by inotify (is fs.inotify.max_user_instances used up?)"
    );
}

/// Writes through a second handle on the file (as another process's) wake every watch
/// stream of the first within milliseconds, with a 10 s safety poll: also across WAL
/// checkpoints that empty the WAL file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_handles_writes_wake_watches_within_milliseconds() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.db");
    let watcher = SqliteStore::open_with(&path, slow_safety_poll())
        .await
        .unwrap();
    let writer = SqliteStore::open(&path).await.unwrap();
    let mut streams = Vec::new();
    for prefix in ["/w/", "/w/k", "/"] {
        streams.push(watcher.watch(prefix, 0).await.unwrap());
    }
    assert_inotify(&watcher);
    let raw = rusqlite::Connection::open(&path).unwrap();
    raw.busy_timeout(Duration::from_secs(5)).unwrap();
    let mut latencies = Vec::new();
    for i in 0..20 {
        if i % 5 == 4 {
            // The WAL is copied into the file and truncated; the next write starts it over.
            let busy: i64 = raw
                .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))
                .unwrap();
            assert_eq!(busy, 0, "checkpoint blocked");
        }
        let started = Instant::now();
        let rev = writer.create(&format!("/w/k{i:02}"), b"v").await.unwrap();
        for stream in &mut streams {
            assert_eq!(next_event(stream).await.revision(), rev);
        }
        latencies.push(started.elapsed());
    }
    let (median, max) = median_and_max(latencies);
    eprintln!("write to wake of 3 streams: median {median:?}, max {max:?}");
    assert!(median < Duration::from_millis(50), "median {median:?}");
    assert!(
        max < Duration::from_secs(2),
        "max {max:?}: the safety poll did it"
    );
}

/// The same across processes: the child writes a key every 20 ms with the time it
/// started the write; the parent's watch sees each within milliseconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_processs_writes_wake_a_watch_within_milliseconds() {
    const TEST: &str = "another_processs_writes_wake_a_watch_within_milliseconds";
    const WRITES: usize = 20;
    let since_epoch = || SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    if let Some(path) = child_path("timed-writes") {
        let store = SqliteStore::open(&path).await.unwrap();
        for i in 0..WRITES {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let sent = since_epoch().as_nanos().to_string();
            store
                .create(&format!("/t/{i:02}"), sent.as_bytes())
                .await
                .unwrap();
        }
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.db");
    let store = SqliteStore::open_with(&path, slow_safety_poll())
        .await
        .unwrap();
    let mut w = store.watch("/t/", 0).await.unwrap();
    assert_inotify(&store);
    let child = spawn_child(TEST, "timed-writes", &path);
    let mut latencies = Vec::new();
    for i in 0..WRITES {
        let WatchEvent::Put(kv) = next_event(&mut w).await else {
            panic!("expected a put");
        };
        let received = since_epoch();
        assert_eq!(kv.key, format!("/t/{i:02}"));
        let sent: u64 = std::str::from_utf8(&kv.value).unwrap().parse().unwrap();
        latencies.push(received.saturating_sub(Duration::from_nanos(sent)));
    }
    wait_success(child, "writer process").await;
    let (median, max) = median_and_max(latencies);
    eprintln!("another process's write to wake: median {median:?}, max {max:?}");
    assert!(median < Duration::from_millis(50), "median {median:?}");
    assert!(
        max < Duration::from_secs(2),
        "max {max:?}: the safety poll did it"
    );
}

/// A program that is not Tabby (no doorbell after its commit) writing the file: its
/// pages are looked at again shortly after, long before the safety poll.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_by_another_program_is_seen_without_a_doorbell() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.db");
    let store = SqliteStore::open_with(&path, slow_safety_poll())
        .await
        .unwrap();
    let mut w = store.watch("/raw/", 0).await.unwrap();
    assert_inotify(&store);
    let raw = rusqlite::Connection::open(&path).unwrap();
    raw.busy_timeout(Duration::from_secs(5)).unwrap();
    let started = Instant::now();
    raw.execute_batch(
        "BEGIN IMMEDIATE;
         UPDATE meta SET revision = revision + 1;
         INSERT INTO kv (key, value, create_revision, mod_revision)
             SELECT CAST('/raw/k' AS BLOB), x'76', revision, revision FROM meta;
         INSERT INTO events (revision, key, deleted, value, create_revision, prev_mod_revision)
             SELECT revision, CAST('/raw/k' AS BLOB), 0, x'76', revision, NULL FROM meta;
         COMMIT;",
    )
    .unwrap();
    let rev = store.revision().await.unwrap();
    assert_eq!(
        next_event(&mut w).await,
        WatchEvent::Put(kv("/raw/k", b"v", rev, rev))
    );
    let waited = started.elapsed();
    eprintln!("a foreign write seen after {waited:?}");
    assert!(
        waited < Duration::from_secs(2),
        "{waited:?}: the safety poll did it"
    );
}

/// 100 idle watch streams, each awaited by a consumer, cost nothing between safety
/// polls: no revision check, no read of the log. A write by another handle costs a
/// check and one read per stream, reaches only its stream, and the reads wake nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_watches_do_no_work_and_their_reads_wake_nothing() {
    const STREAMS: u64 = 100;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.db");
    let store = SqliteStore::open_with(&path, slow_safety_poll())
        .await
        .unwrap();
    let writer = SqliteStore::open(&path).await.unwrap();
    let (seen, mut events) = tokio::sync::mpsc::unbounded_channel();
    for i in 0..STREAMS {
        let mut w = store.watch(&format!("/idle/{i}/"), 0).await.unwrap();
        let seen = seen.clone();
        tokio::spawn(async move {
            while let Some(Ok(event)) = w.next().await {
                let _ = seen.send((i, event));
            }
        });
    }
    assert_inotify(&store);
    // Each stream reads the log once when it starts.
    let settled = stats_until(&store, |s| s.polls == STREAMS).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(store.watch_stats(), settled, "work done while idle");
    assert_eq!(settled.checks, 0);

    let rev = writer.create("/idle/7/k", b"v").await.unwrap();
    let (i, event) = tokio::time::timeout(Duration::from_secs(5), events.recv())
        .await
        .expect("no event within 5 s")
        .unwrap();
    assert_eq!((i, event.revision()), (7, rev));
    stats_until(&store, |s| s.polls == 2 * STREAMS).await;
    // Past any second look at the write's pages.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let after = store.watch_stats();
    assert!(after.checks >= 1, "{after:?}");
    assert_eq!(after.polls, 2 * STREAMS, "one read per stream: {after:?}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        store.watch_stats(),
        after,
        "the streams' reads woke the store again"
    );
    assert!(events.try_recv().is_err(), "only /idle/7/ had an event");
}

/// CPU time this process has used (user + system, all threads), from `/proc/self/stat`.
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    // Fields after the command name (which may hold spaces), from field 3 on: utime
    // and stime are fields 14 and 15, in USER_HZ ticks (100 per second on Linux).
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    Duration::from_millis(ticks * 10)
}

/// A process whose only work is 100 idle watch streams (with the default 1 s safety
/// poll) uses no CPU time measurable in `/proc/self/stat` over 2 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_process_with_100_watches_uses_no_cpu() {
    const TEST: &str = "an_idle_process_with_100_watches_uses_no_cpu";
    if let Some(path) = child_path("idle") {
        let store = SqliteStore::open(&path).await.unwrap();
        for i in 0..100 {
            let mut w = store.watch(&format!("/idle/{i}/"), 0).await.unwrap();
            tokio::spawn(async move { while w.next().await.is_some() {} });
        }
        assert_inotify(&store);
        stats_until(&store, |s| s.polls == 100).await;
        let before = cpu_time();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let used = cpu_time().saturating_sub(before);
        eprintln!("100 idle watch streams used {used:?} of CPU in 2 s");
        assert!(used <= Duration::from_millis(20), "{used:?}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.db");
    SqliteStore::open(&path).await.unwrap();
    wait_success(spawn_child(TEST, "idle", &path), "idle process").await;
}

/// With inotify off, the store checks the revision every `fallback_poll_interval`
/// (once for all its streams, which read the log only when it moved) and another
/// handle's writes are seen within a few polls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_poll_when_inotify_is_off() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.db");
    let options = SqliteOptions {
        wake: Wake::Poll,
        ..slow_safety_poll()
    };
    let store = SqliteStore::open_with(&path, options).await.unwrap();
    let writer = SqliteStore::open(&path).await.unwrap();
    let (seen, mut events) = tokio::sync::mpsc::unbounded_channel();
    for i in 0..10 {
        let mut w = store.watch(&format!("/p/{i}/"), 0).await.unwrap();
        let seen = seen.clone();
        tokio::spawn(async move {
            while let Some(Ok(event)) = w.next().await {
                let _ = seen.send((i, event));
            }
        });
    }
    assert_eq!(store.watch_stats().wake, Some(Wake::Poll));
    stats_until(&store, |s| s.polls == 10).await;
    let started = Instant::now();
    let rev = writer.create("/p/3/k", b"v").await.unwrap();
    let (i, event) = tokio::time::timeout(Duration::from_secs(5), events.recv())
        .await
        .expect("no event within 5 s")
        .unwrap();
    assert_eq!((i, event.revision()), (3, rev));
    let waited = started.elapsed();
    assert!(waited < Duration::from_secs(2), "{waited:?}");
    let before = stats_until(&store, |s| s.polls == 20).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = store.watch_stats();
    let checks = after.checks - before.checks;
    // 20 at 25 ms; fewer on a loaded machine, but far more than the safety poll's none.
    assert!(checks >= 5, "{checks} checks in 500 ms");
    assert_eq!(
        after.polls, before.polls,
        "streams read the log only on news"
    );
}

/// A store file inotify cannot watch (here: renamed while open) falls back to polling;
/// writes through the store still wake its watches at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_inotify_cannot_watch_falls_back_to_polling() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.db");
    let store = SqliteStore::open_with(&path, slow_safety_poll())
        .await
        .unwrap();
    std::fs::rename(&path, dir.path().join("moved.db")).unwrap();
    let mut w = store.watch("/f/", 0).await.unwrap();
    assert_eq!(store.watch_stats().wake, Some(Wake::Poll));
    let rev = store.create("/f/k", b"v").await.unwrap();
    assert_eq!(
        next_event(&mut w).await,
        WatchEvent::Put(kv("/f/k", b"v", rev, rev))
    );
}

#[tokio::test]
async fn zero_poll_intervals_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    for (options, name) in [
        (
            SqliteOptions {
                poll_interval: Duration::ZERO,
                ..SqliteOptions::default()
            },
            "poll_interval",
        ),
        (
            SqliteOptions {
                fallback_poll_interval: Duration::ZERO,
                ..SqliteOptions::default()
            },
            "fallback_poll_interval",
        ),
    ] {
        let err = SqliteStore::open_with(dir.path().join("s.db"), options)
            .await
            .unwrap_err();
        assert!(err.to_string().contains(name), "{err}");
    }
}
