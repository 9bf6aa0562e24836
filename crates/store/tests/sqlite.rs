//! The SQLite backend: the shared datastore suite (each case on a fresh file), then what
//! only a file shared by processes has: two OS processes incrementing one key lose
//! nothing, a watcher sees another process's writes in order, the event log's history
//! and compaction, reopening, a locked file, and files that cannot be used.
//!
//! Tests that need a second process run this test binary again, filtered to the same
//! test, with `TABBY_STORE_SQLITE_CHILD=<role>:<store path>` telling it what to do.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use tabby_store::sqlite::{SqliteOptions, SqliteStore};
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
    // `b` is not told about `a`'s writes: its watch finds them by polling the log.
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
