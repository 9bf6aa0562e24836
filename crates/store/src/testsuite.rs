//! The behaviour every [`Datastore`] backend must share, written once as test cases and
//! run on each backend (`tests/sqlite.rs`, `tests/suite_etcd.rs`): etcd v3's revisions,
//! create-if-absent, compare-and-swap, prefix lists at one revision and ordered,
//! snapshots of several prefixes at one revision, exactly-once watches from a
//! revision, with compaction reported as `Compacted` (and recovered from by a fresh
//! snapshot, as the node agent does).
//!
//! A backend's tests give a [`Fixture`] maker (a fresh, empty store per case) to
//! [`datastore_suite!`](crate::datastore_suite), which makes one `#[tokio::test]` per
//! case, or to [`run_all`].

use std::any::Any;
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};

use crate::{Datastore, KeyValue, Result, Revision, StoreError, WatchEvent, WatchStream};

/// How long a case waits for a watch event before it fails.
pub const EVENT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a watch must stay silent to count as having nothing more to say.
pub const QUIET_PERIOD: Duration = Duration::from_millis(300);

/// Compacts a backend's history up to a revision (each backend has its own method).
pub type Compactor = Box<dyn Fn(Revision) -> BoxFuture<'static, Result<()>> + Send + Sync>;

/// The store one case runs on. It must be fresh: nothing else writes to it while the
/// case runs (cases check exact store revisions). Cases only use keys under `prefix`.
pub struct Fixture {
    /// The store under test.
    pub store: Arc<dyn Datastore>,
    /// Every key a case writes starts with this (e.g. `/tabby-suite/`).
    pub prefix: String,
    compactor: Option<Compactor>,
    // Declared last so that it is dropped after the store (a temporary directory, an
    // etcd cluster).
    guard: Option<Box<dyn Any + Send + Sync>>,
}

impl std::fmt::Debug for Fixture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fixture")
            .field("store", &self.store)
            .field("prefix", &self.prefix)
            .field("compactor", &self.compactor.is_some())
            .finish_non_exhaustive()
    }
}

impl Fixture {
    /// A fixture on `store`, with keys under `prefix`.
    pub fn new(store: Arc<dyn Datastore>, prefix: impl Into<String>) -> Fixture {
        Fixture {
            store,
            prefix: prefix.into(),
            compactor: None,
            guard: None,
        }
    }

    /// Keeps `guard` (a temporary directory, a test etcd cluster) alive as long as the
    /// fixture, and drops it after the store.
    pub fn keep_alive(mut self, guard: impl Any + Send + Sync) -> Fixture {
        self.guard = Some(Box::new(guard));
        self
    }

    /// How to compact the store's history; needed by
    /// [`watch_from_a_compacted_revision_reports_compacted`].
    pub fn with_compactor<F, Fut>(mut self, compact: F) -> Fixture
    where
        F: Fn(Revision) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<()>> + Send + 'static,
    {
        self.compactor = Some(Box::new(move |revision| compact(revision).boxed()));
        self
    }

    /// `prefix` + `rest`.
    pub fn key(&self, rest: &str) -> String {
        format!("{}{rest}", self.prefix)
    }

    /// Compacts the store's history up to `revision`. Panics without a compactor.
    pub async fn compact(&self, revision: Revision) -> Result<()> {
        let compact = self
            .compactor
            .as_ref()
            .expect("this fixture has no compactor (Fixture::with_compactor)");
        compact(revision).await
    }
}

/// The next event of `stream`; panics after [`EVENT_TIMEOUT`] of silence, on an error
/// or at the end of the stream.
pub async fn next_event(stream: &mut WatchStream) -> WatchEvent {
    match tokio::time::timeout(EVENT_TIMEOUT, stream.next()).await {
        Ok(Some(Ok(event))) => event,
        Ok(Some(Err(e))) => panic!("watch failed: {e}"),
        Ok(None) => panic!("watch ended, expected an event"),
        Err(_) => panic!("no watch event within {EVENT_TIMEOUT:?}"),
    }
}

/// The next `n` events of `stream`.
pub async fn next_events(stream: &mut WatchStream, n: usize) -> Vec<WatchEvent> {
    let mut events = Vec::with_capacity(n);
    for _ in 0..n {
        events.push(next_event(stream).await);
    }
    events
}

/// Panics when `stream` yields anything within [`QUIET_PERIOD`].
pub async fn assert_quiet(stream: &mut WatchStream, what: &str) {
    if let Ok(item) = tokio::time::timeout(QUIET_PERIOD, stream.next()).await {
        panic!("{what}: expected no more events, got {item:?}");
    }
}

/// A put event as the watch reports it.
fn put(key: &str, value: &[u8], create_revision: Revision, mod_revision: Revision) -> WatchEvent {
    WatchEvent::Put(KeyValue {
        key: key.to_string(),
        value: value.to_vec(),
        create_revision,
        mod_revision,
    })
}

/// Compares events, allowing a backend to leave out a delete's previous pair (but not
/// to get it wrong).
#[track_caller]
fn assert_events(got: &[WatchEvent], want: &[WatchEvent], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: {got:#?}");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        match (g, w) {
            (
                WatchEvent::Delete {
                    key: gk,
                    revision: gr,
                    prev: gp,
                },
                WatchEvent::Delete {
                    key: wk,
                    revision: wr,
                    prev: wp,
                },
            ) => {
                assert_eq!((gk, gr), (wk, wr), "{what}: event {i}");
                if gp.is_some() {
                    assert_eq!(gp, wp, "{what}: event {i}: previous pair of the delete");
                }
            }
            _ => assert_eq!(g, w, "{what}: event {i}"),
        }
    }
}

fn delete_event(key: &str, revision: Revision, prev: KeyValue) -> WatchEvent {
    WatchEvent::Delete {
        key: key.to_string(),
        revision,
        prev: Some(prev),
    }
}

fn kv(key: &str, value: &[u8], create_revision: Revision, mod_revision: Revision) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: value.to_vec(),
        create_revision,
        mod_revision,
    }
}

/// `delete` that also returns the revision of the delete (the store's, right after).
async fn delete_at(s: &dyn Datastore, key: &str) -> (KeyValue, Revision) {
    let prev = s.delete(key, None).await.unwrap();
    (prev, s.revision().await.unwrap())
}

/// `get`, create, `AlreadyExists`; a failed create changes nothing.
pub async fn create_then_get_and_already_exists(fx: &Fixture) {
    let s = &*fx.store;
    let key = fx.key("ippools/pool1");
    assert_eq!(s.get(&key).await.unwrap(), None, "absent key");
    let before = s.revision().await.unwrap();
    let r1 = s.create(&key, b"{\"v\":1}").await.unwrap();
    assert!(
        r1 > before,
        "create made revision {r1}, store was at {before}"
    );
    assert_eq!(
        s.revision().await.unwrap(),
        r1,
        "create returns the new store revision"
    );
    assert_eq!(
        s.get(&key).await.unwrap(),
        Some(kv(&key, b"{\"v\":1}", r1, r1))
    );
    let err = s.create(&key, b"other").await.unwrap_err();
    match &err {
        StoreError::AlreadyExists { key: k } => assert_eq!(k, &key),
        other => panic!("second create must fail with AlreadyExists: {other:?}"),
    }
    assert!(err.is_conflict());
    assert_eq!(
        s.get(&key).await.unwrap(),
        Some(kv(&key, b"{\"v\":1}", r1, r1)),
        "a failed create changes nothing"
    );
    assert_eq!(
        s.revision().await.unwrap(),
        r1,
        "a failed create is no revision"
    );
    // An empty value is a value; keys are whole, not prefixes.
    let empty = fx.key("empty");
    let r2 = s.create(&empty, b"").await.unwrap();
    assert_eq!(s.get(&empty).await.unwrap(), Some(kv(&empty, b"", r2, r2)));
    assert_eq!(s.get(&fx.key("ippools/pool")).await.unwrap(), None);
    assert_eq!(s.get(&fx.key("ippools/")).await.unwrap(), None);
    assert_eq!(s.get(&fx.key("ippools/pool1/x")).await.unwrap(), None);
}

/// `update` succeeds on the current `mod_revision` only; a stale one is a `Conflict`
/// naming both revisions, and changes nothing.
pub async fn update_is_compare_and_swap(fx: &Fixture) {
    let s = &*fx.store;
    let key = fx.key("cas");
    let r1 = s.create(&key, b"1").await.unwrap();
    let r2 = s.update(&key, b"2", r1).await.unwrap();
    assert!(r2 > r1);
    assert_eq!(s.get(&key).await.unwrap(), Some(kv(&key, b"2", r1, r2)));
    for stale in [r1, 0, r2 + 1000] {
        match s.update(&key, b"lost", stale).await {
            Err(e @ StoreError::Conflict { .. }) => {
                assert!(e.is_conflict());
                let StoreError::Conflict {
                    key: k,
                    expected,
                    actual,
                } = e
                else {
                    unreachable!()
                };
                assert_eq!((k.as_str(), expected, actual), (key.as_str(), stale, r2));
            }
            other => panic!("update expecting {stale} must conflict: {other:?}"),
        }
    }
    assert_eq!(
        s.get(&key).await.unwrap(),
        Some(kv(&key, b"2", r1, r2)),
        "a lost compare-and-swap changes nothing"
    );
    assert_eq!(s.revision().await.unwrap(), r2, "a lost CAS is no revision");
    // Writing the same value again is still a write.
    let r3 = s.update(&key, b"2", r2).await.unwrap();
    assert!(r3 > r2);
    assert_eq!(s.get(&key).await.unwrap(), Some(kv(&key, b"2", r1, r3)));
}

/// `update` and `delete` of an absent (or deleted) key are `NotFound`, with or without
/// an expected revision, and are no revision.
pub async fn missing_keys_are_not_found(fx: &Fixture) {
    let s = &*fx.store;
    let missing = fx.key("missing");
    let gone = fx.key("gone");
    let r = s.create(&gone, b"v").await.unwrap();
    let (_, deleted_at) = delete_at(s, &gone).await;
    for key in [&missing, &gone] {
        for expected in [0, r, deleted_at] {
            match s.update(key, b"x", expected).await {
                Err(StoreError::NotFound { key: k }) => assert_eq!(&k, key),
                other => panic!("update of absent {key} (expecting {expected}): {other:?}"),
            }
        }
        for expected in [None, Some(r), Some(deleted_at)] {
            match s.delete(key, expected).await {
                Err(StoreError::NotFound { key: k }) => assert_eq!(&k, key),
                other => panic!("delete of absent {key} ({expected:?}): {other:?}"),
            }
        }
        assert_eq!(s.get(key).await.unwrap(), None);
    }
    assert_eq!(
        s.revision().await.unwrap(),
        deleted_at,
        "failed writes are no revision"
    );
}

/// `delete` checks the expected revision when given, returns the deleted pair, is a
/// revision; a re-created key starts over with a new `create_revision`.
pub async fn delete_with_and_without_expected_revision(fx: &Fixture) {
    let s = &*fx.store;
    let a = fx.key("a");
    let r1 = s.create(&a, b"1").await.unwrap();
    let r2 = s.update(&a, b"2", r1).await.unwrap();
    match s.delete(&a, Some(r1)).await {
        Err(StoreError::Conflict {
            key,
            expected,
            actual,
        }) => assert_eq!((key.as_str(), expected, actual), (a.as_str(), r1, r2)),
        other => panic!("delete with a stale revision must conflict: {other:?}"),
    }
    assert_eq!(s.get(&a).await.unwrap(), Some(kv(&a, b"2", r1, r2)));
    assert_eq!(s.revision().await.unwrap(), r2);

    let deleted = s.delete(&a, Some(r2)).await.unwrap();
    assert_eq!(
        deleted,
        kv(&a, b"2", r1, r2),
        "delete returns the deleted pair"
    );
    let deleted_at = s.revision().await.unwrap();
    assert!(deleted_at > r2, "a delete is a revision");
    assert_eq!(s.get(&a).await.unwrap(), None);

    let b = fx.key("b");
    let rb = s.create(&b, b"bee").await.unwrap();
    assert_eq!(s.delete(&b, None).await.unwrap(), kv(&b, b"bee", rb, rb));
    assert_eq!(s.get(&b).await.unwrap(), None);

    let r3 = s.create(&a, b"3").await.unwrap();
    assert!(r3 > deleted_at);
    assert_eq!(
        s.get(&a).await.unwrap(),
        Some(kv(&a, b"3", r3, r3)),
        "a re-created key has a new create_revision"
    );

    // Deleting a key leaves the keys it is a prefix of.
    let c = fx.key("c");
    let below = fx.key("c/x");
    s.create(&c, b"c").await.unwrap();
    let rx = s.create(&below, b"x").await.unwrap();
    s.delete(&c, None).await.unwrap();
    assert_eq!(s.get(&below).await.unwrap(), Some(kv(&below, b"x", rx, rx)));
}

/// `list` returns exactly the keys starting with the prefix, sorted byte-wise, with the
/// revision it read them at; `/a/b/` does not match `/a/b`, `/a/bc`, `/a/b0` or `/a/b.x`.
pub async fn list_by_prefix_is_sorted_and_exact(fx: &Fixture) {
    let s = &*fx.store;
    // Written out of order; siblings that share the text before the final '/'.
    let names = [
        "a/b/2", "a/b/10", "b", "a/b/é", "a/bc", "a/b/1", "a/b", "a/b/z", "a/b0", "a/b/ü/x",
        "a/b.x", "a/a",
    ];
    let mut written = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let key = fx.key(name);
        let value = format!("value {i}").into_bytes();
        let rev = s.create(&key, &value).await.unwrap();
        written.push(kv(&key, &value, rev, rev));
    }
    // An update, so that create_revision and mod_revision differ in the listing.
    let updated = fx.key("a/b/10");
    let old = written.iter().position(|kv| kv.key == updated).unwrap();
    let rev = s
        .update(&updated, b"updated", written[old].mod_revision)
        .await
        .unwrap();
    written[old].value = b"updated".to_vec();
    written[old].mod_revision = rev;
    let store_rev = s.revision().await.unwrap();

    let expect = |names: &[&str]| -> Vec<KeyValue> {
        names
            .iter()
            .map(|n| {
                let key = fx.key(n);
                written.iter().find(|kv| kv.key == key).unwrap().clone()
            })
            .collect()
    };
    let cases: [(&str, Vec<KeyValue>); 4] = [
        // Byte order: '1' < '10' < '2' < 'z' < 'é' (c3 a9) < 'ü' (c3 bc).
        (
            "a/b/",
            expect(&["a/b/1", "a/b/10", "a/b/2", "a/b/z", "a/b/é", "a/b/ü/x"]),
        ),
        // A prefix is text, not a path: "a/b" matches "a/b.x", "a/b0" and "a/bc" too.
        (
            "a/b",
            expect(&[
                "a/b", "a/b.x", "a/b/1", "a/b/10", "a/b/2", "a/b/z", "a/b/é", "a/b/ü/x", "a/b0",
                "a/bc",
            ]),
        ),
        ("a/b/ü/", expect(&["a/b/ü/x"])),
        ("nothing/", Vec::new()),
    ];
    for (prefix, want) in cases {
        let list = s.list(&fx.key(prefix)).await.unwrap();
        let got: Vec<&str> = list.kvs.iter().map(|kv| kv.key.as_str()).collect();
        let want_keys: Vec<&str> = want.iter().map(|kv| kv.key.as_str()).collect();
        assert_eq!(got, want_keys, "list {prefix:?}");
        assert_eq!(list.kvs, want, "list {prefix:?}: values and revisions");
        assert_eq!(list.revision, store_rev, "list {prefix:?} revision");
    }
    let all = s.list(&fx.prefix).await.unwrap();
    assert_eq!(all.kvs.len(), names.len());
    let mut sorted = all.kvs.clone();
    sorted.sort_by(|x, y| x.key.as_bytes().cmp(y.key.as_bytes()));
    assert_eq!(all.kvs, sorted, "sorted byte-wise");
}

/// Each `list` is exactly the keys that existed at its revision, while a writer keeps
/// adding keys.
pub async fn list_is_one_snapshot_under_concurrent_writes(fx: &Fixture) {
    const KEYS: usize = 60;
    let prefix = fx.key("w/");
    let writer = {
        let s = Arc::clone(&fx.store);
        let prefix = prefix.clone();
        tokio::spawn(async move {
            for i in 0..KEYS {
                s.create(&format!("{prefix}{i:03}"), b"w").await.unwrap();
            }
        })
    };
    let s = &*fx.store;
    let mut checked = 0;
    loop {
        let done = writer.is_finished();
        let list = s.list(&prefix).await.unwrap();
        let n = list.kvs.len();
        for (i, kv) in list.kvs.iter().enumerate() {
            assert_eq!(
                kv.key,
                format!("{prefix}{i:03}"),
                "gap in a listed snapshot"
            );
            assert!(
                kv.mod_revision <= list.revision,
                "{kv:?} after the list revision"
            );
        }
        if n < KEYS
            && let Some(next) = s.get(&format!("{prefix}{n:03}")).await.unwrap()
        {
            assert!(
                next.create_revision > list.revision,
                "list at {} missed {next:?}",
                list.revision
            );
        }
        checked += 1;
        if done {
            break;
        }
    }
    writer.await.unwrap();
    assert!(checked > 0);
    assert_eq!(s.list(&prefix).await.unwrap().kvs.len(), KEYS);
}

/// `list_prefixes` returns every key under any of the prefixes once, sorted byte-wise,
/// with the store revision, whatever their order and overlap; deleted keys and keys
/// of other prefixes are absent; no prefix gives no keys.
pub async fn list_prefixes_is_one_sorted_snapshot_without_duplicates(fx: &Fixture) {
    let s = &*fx.store;
    let mut live: BTreeMap<String, KeyValue> = BTreeMap::new();
    for name in [
        "nodes/b",
        "nodes/a",
        "ipam/blocks/10.0.0.0-26",
        "ipam/handles/h1",
        "pools/p",
        "poolsx",
        "other/o",
        "nodes/c",
        "ipam/blocks/10.0.0.64-26",
    ] {
        let key = fx.key(name);
        let rev = s.create(&key, name.as_bytes()).await.unwrap();
        live.insert(key.clone(), kv(&key, name.as_bytes(), rev, rev));
    }
    let gone = fx.key("nodes/c");
    s.delete(&gone, None).await.unwrap();
    live.remove(&gone);
    let moved = fx.key("nodes/a");
    let old = live[&moved].clone();
    let rev = s
        .update(&moved, b"updated", old.mod_revision)
        .await
        .unwrap();
    live.insert(
        moved.clone(),
        kv(&moved, b"updated", old.create_revision, rev),
    );
    let store_rev = s.revision().await.unwrap();

    let expect = |names: &[&str]| -> Vec<KeyValue> {
        live.values()
            .filter(|kv| names.iter().any(|n| kv.key.starts_with(&fx.key(n))))
            .cloned()
            .collect()
    };
    let cases: [&[&str]; 5] = [
        &["nodes/", "ipam/"],
        // Out of order, overlapping, repeated.
        &[
            "pools/",
            "ipam/blocks/",
            "nodes/",
            "ipam/",
            "nodes/",
            "pools/p",
        ],
        // A prefix is text: "pools" also matches "poolsx".
        &["pools", "nothing/"],
        &["nothing/", "nada/"],
        &[""],
    ];
    for names in cases {
        let prefixes: Vec<String> = names.iter().map(|n| fx.key(n)).collect();
        let refs: Vec<&str> = prefixes.iter().map(String::as_str).collect();
        let got = s.list_prefixes(&refs).await.unwrap();
        assert_eq!(got.kvs, expect(names), "list_prefixes {names:?}");
        assert_eq!(got.revision, store_rev, "list_prefixes {names:?} revision");
        assert!(
            got.kvs
                .windows(2)
                .all(|w| w[0].key.as_bytes() < w[1].key.as_bytes()),
            "sorted byte-wise, each key once: {names:?}"
        );
    }
    let none = s.list_prefixes(&[]).await.unwrap();
    assert_eq!((none.kvs, none.revision), (Vec::new(), store_rev));
    // One prefix is `list`.
    assert_eq!(
        s.list_prefixes(&[&fx.key("nodes/")]).await.unwrap(),
        s.list(&fx.key("nodes/")).await.unwrap()
    );
}

/// While a writer creates, updates and deletes keys under two prefixes (and a third,
/// unlisted one), every `list_prefixes` of the two is exactly the store's content at
/// the revision it returns: no write at or below that revision is missing, none after
/// it shows, no deleted key remains.
pub async fn list_prefixes_is_one_snapshot_under_concurrent_writes(fx: &Fixture) {
    const ROUNDS: usize = 40;
    let (a, b, other) = (fx.key("snap/a/"), fx.key("snap/b/"), fx.key("snap/c/"));
    // Each write, in order, with its revision: (revision, key, Some(value) or None for
    // a delete).
    type Log = Vec<(Revision, String, Option<Vec<u8>>)>;
    let writer = {
        let s = Arc::clone(&fx.store);
        let (a, b, other) = (a.clone(), b.clone(), other.clone());
        tokio::spawn(async move {
            let mut log: Log = Vec::new();
            let mut mods: BTreeMap<String, Revision> = BTreeMap::new();
            for i in 0..ROUNDS {
                for (prefix, n) in [(&a, i), (&b, i), (&other, i), (&a, i / 2)] {
                    let key = format!("{prefix}{n:03}");
                    let value = format!("{i}").into_bytes();
                    let rev = match mods.get(&key) {
                        None => s.create(&key, &value).await.unwrap(),
                        Some(&m) => s.update(&key, &value, m).await.unwrap(),
                    };
                    mods.insert(key.clone(), rev);
                    log.push((rev, key, Some(value)));
                }
                if i % 3 == 2 {
                    // Delete the oldest live key under b/.
                    let key = mods
                        .keys()
                        .find(|k| k.starts_with(b.as_str()))
                        .cloned()
                        .unwrap();
                    s.delete(&key, None).await.unwrap();
                    mods.remove(&key);
                    log.push((s.revision().await.unwrap(), key, None));
                }
            }
            log
        })
    };
    let s = &*fx.store;
    let mut snapshots = Vec::new();
    loop {
        let done = writer.is_finished();
        snapshots.push(s.list_prefixes(&[&b, &a]).await.unwrap());
        if done {
            break;
        }
    }
    let log = writer.await.unwrap();
    let revisions: Vec<Revision> = log.iter().map(|(r, _, _)| *r).collect();
    assert!(
        revisions.windows(2).all(|w| w[0] < w[1]),
        "one writer: increasing revisions"
    );
    let mut distinct = 0;
    for snap in &snapshots {
        let mut state: BTreeMap<&str, (&[u8], Revision, Revision)> = BTreeMap::new();
        for (rev, key, value) in log.iter().take_while(|(r, _, _)| *r <= snap.revision) {
            match value {
                Some(v) => {
                    let created = state.get(key.as_str()).map_or(*rev, |(_, c, _)| *c);
                    state.insert(key, (v, created, *rev));
                }
                None => {
                    state.remove(key.as_str());
                }
            }
        }
        let want: Vec<KeyValue> = state
            .iter()
            .filter(|(k, _)| k.starts_with(a.as_str()) || k.starts_with(b.as_str()))
            .map(|(k, (v, c, m))| kv(k, v, *c, *m))
            .collect();
        assert_eq!(
            snap.kvs, want,
            "the snapshot at {} is the store at that revision",
            snap.revision
        );
        if !snap.kvs.is_empty() && snap.revision < *revisions.last().unwrap() {
            distinct += 1;
        }
    }
    assert!(!snapshots.is_empty());
    eprintln!(
        "{} snapshots, {distinct} taken while the writer ran",
        snapshots.len()
    );
    let last = snapshots.last().unwrap();
    assert_eq!(last.revision, *revisions.last().unwrap());
}

/// Every write makes a revision larger than all before it, and the store revision is
/// the last one.
pub async fn revisions_strictly_increase(fx: &Fixture) {
    let s = &*fx.store;
    let (a, b) = (fx.key("a"), fx.key("b"));
    let mut last = s.revision().await.unwrap();
    let mut check = |rev: Revision, what: &str| {
        assert!(rev > last, "{what}: revision {rev} not after {last}");
        last = rev;
    };
    let ra = s.create(&a, b"1").await.unwrap();
    check(ra, "create a");
    assert_eq!(s.revision().await.unwrap(), ra);
    let rb = s.create(&b, b"1").await.unwrap();
    check(rb, "create b");
    let ra = s.update(&a, b"2", ra).await.unwrap();
    check(ra, "update a");
    assert_eq!(s.get(&a).await.unwrap().unwrap().mod_revision, ra);
    let (_, rd) = delete_at(s, &b).await;
    check(rd, "delete b");
    let rb = s.create(&b, b"2").await.unwrap();
    check(rb, "create b again");
    let rb = s.update(&b, b"3", rb).await.unwrap();
    check(rb, "update b");
    let (_, rd) = delete_at(s, &a).await;
    check(rd, "delete a");
    assert_eq!(s.revision().await.unwrap(), rd, "nothing else was written");
}

/// A watch from 0 reports only changes made after `watch` returned, only under its
/// prefix, in order, deletes included.
pub async fn watch_from_zero_sees_only_later_events(fx: &Fixture) {
    let s = &*fx.store;
    let a = fx.key("w/a");
    let b = fx.key("w/b");
    let r1 = s.create(&a, b"1").await.unwrap();
    let mut w = s.watch(&fx.key("w/"), 0).await.unwrap();
    let mut v = s.watch(&fx.key("v/"), 0).await.unwrap();
    let r2 = s.update(&a, b"2", r1).await.unwrap();
    // Neighbours of the prefix, not under it.
    s.create(&fx.key("w"), b"-").await.unwrap();
    s.create(&fx.key("wx/a"), b"-").await.unwrap();
    let rb = s.create(&b, b"b").await.unwrap();
    let (_, rdel) = delete_at(s, &b).await;
    let rv = s.create(&fx.key("v/1"), b"v").await.unwrap();

    let got = next_events(&mut w, 3).await;
    assert_events(
        &got,
        &[
            put(&a, b"2", r1, r2),
            put(&b, b"b", rb, rb),
            delete_event(&b, rdel, kv(&b, b"b", rb, rb)),
        ],
        "watch from 0",
    );
    assert_quiet(&mut w, "watch from 0").await;
    assert_eq!(next_event(&mut v).await, put(&fx.key("v/1"), b"v", rv, rv));
    assert_quiet(&mut v, "second watch").await;
}

/// A watch from a past revision replays exactly the changes since, in order, then
/// carries on with new ones without a duplicate.
pub async fn watch_from_a_past_revision_replays_history(fx: &Fixture) {
    let s = &*fx.store;
    let (a, b) = (fx.key("h/a"), fx.key("h/b"));
    let r1 = s.create(&a, b"1").await.unwrap();
    let rb = s.create(&b, b"b").await.unwrap();
    s.create(&fx.key("outside"), b"-").await.unwrap();
    let r2 = s.update(&a, b"2", r1).await.unwrap();
    let (_, rdel) = delete_at(s, &b).await;
    let r3 = s.update(&a, b"3", r2).await.unwrap();
    let history = [
        put(&a, b"1", r1, r1),
        put(&b, b"b", rb, rb),
        put(&a, b"2", r1, r2),
        delete_event(&b, rdel, kv(&b, b"b", rb, rb)),
        put(&a, b"3", r1, r3),
    ];
    let prefix = fx.key("h/");
    let mut w = s.watch(&prefix, r1).await.unwrap();
    assert_events(&next_events(&mut w, 5).await, &history, "watch from r1");
    let mut from_r2 = s.watch(&prefix, r2).await.unwrap();
    assert_events(
        &next_events(&mut from_r2, 3).await,
        &history[2..],
        "watch from r2",
    );
    let mut after_r2 = s.watch(&prefix, r2 + 1).await.unwrap();
    assert_events(
        &next_events(&mut after_r2, 2).await,
        &history[3..],
        "watch from r2+1",
    );

    let r4 = s.update(&a, b"4", r3).await.unwrap();
    for (name, stream) in [
        ("r1", &mut w),
        ("r2", &mut from_r2),
        ("r2+1", &mut after_r2),
    ] {
        assert_eq!(
            next_event(stream).await,
            put(&a, b"4", r1, r4),
            "from {name}"
        );
        assert_quiet(stream, name).await;
    }
}

/// Watching again from the revision after the last event seen misses nothing and
/// repeats nothing.
pub async fn resumed_watch_misses_and_duplicates_nothing(fx: &Fixture) {
    let s = &*fx.store;
    let prefix = fx.key("r/");
    let keys: Vec<String> = (0..5).map(|i| format!("{prefix}{i}")).collect();
    let mut w = s.watch(&prefix, 0).await.unwrap();
    let mut revs = Vec::new();
    let mut mods = Vec::new();
    for k in &keys {
        let r = s.create(k, b"0").await.unwrap();
        revs.push(r);
        mods.push(r);
    }
    for (i, k) in keys.iter().enumerate() {
        let r = s.update(k, b"1", mods[i]).await.unwrap();
        revs.push(r);
        mods[i] = r;
    }
    let seen = next_events(&mut w, 4).await;
    let seen_revs: Vec<Revision> = seen.iter().map(WatchEvent::revision).collect();
    assert_eq!(seen_revs, revs[..4]);
    let last_seen = seen_revs[3];
    drop(w);
    for k in &keys {
        revs.push(delete_at(s, k).await.1);
    }
    for k in &keys {
        revs.push(s.create(k, b"2").await.unwrap());
    }
    let mut resumed = s.watch(&prefix, last_seen + 1).await.unwrap();
    let rest = next_events(&mut resumed, revs.len() - 4).await;
    let rest_revs: Vec<Revision> = rest.iter().map(WatchEvent::revision).collect();
    assert_eq!(rest_revs, revs[4..], "resumed watch");
    assert!(
        matches!(rest[6], WatchEvent::Delete { .. }),
        "{:?}",
        rest[6]
    );
    assert_quiet(&mut resumed, "resumed watch").await;
}

/// Many tasks incrementing one counter by read-modify-write with compare-and-swap lose
/// no increment, and a watch sees every value once, in order.
pub async fn concurrent_cas_increments_lose_nothing(fx: &Fixture) {
    const WRITERS: u64 = 8;
    const INCREMENTS: u64 = 25;
    const TOTAL: u64 = WRITERS * INCREMENTS;
    let key = fx.key("counter");
    let r0 = fx.store.create(&key, b"0").await.unwrap();
    let mut w = fx.store.watch(&key, r0 + 1).await.unwrap();
    let tasks: Vec<_> = (0..WRITERS)
        .map(|_| {
            let s = Arc::clone(&fx.store);
            let key = key.clone();
            tokio::spawn(async move {
                let mut acked = Vec::new();
                let mut conflicts = 0u64;
                while (acked.len() as u64) < INCREMENTS {
                    let current = s.get(&key).await.unwrap().expect("counter exists");
                    let n: u64 = std::str::from_utf8(&current.value)
                        .unwrap()
                        .parse()
                        .unwrap();
                    match s
                        .update(&key, (n + 1).to_string().as_bytes(), current.mod_revision)
                        .await
                    {
                        Ok(rev) => acked.push((rev, n + 1)),
                        Err(StoreError::Conflict { .. }) => conflicts += 1,
                        Err(e) => panic!("increment failed: {e}"),
                    }
                }
                (acked, conflicts)
            })
        })
        .collect();
    let mut acked = Vec::new();
    let mut conflicts = 0;
    for t in tasks {
        let (a, c) = t.await.unwrap();
        acked.extend(a);
        conflicts += c;
    }
    let last = fx.store.get(&key).await.unwrap().unwrap();
    assert_eq!(last.value, TOTAL.to_string().as_bytes(), "lost increments");
    acked.sort();
    let values: Vec<u64> = acked.iter().map(|(_, v)| *v).collect();
    assert_eq!(
        values,
        (1..=TOTAL).collect::<Vec<_>>(),
        "each acknowledged increment wrote the next value, in revision order"
    );
    assert!(
        acked.windows(2).all(|p| p[0].0 < p[1].0),
        "revisions are distinct"
    );
    assert_eq!(last.mod_revision, acked.last().unwrap().0);

    let events = next_events(&mut w, TOTAL as usize).await;
    let seen: Vec<(Revision, u64)> = events
        .iter()
        .map(|e| match e {
            WatchEvent::Put(kv) => (
                kv.mod_revision,
                std::str::from_utf8(&kv.value).unwrap().parse().unwrap(),
            ),
            other => panic!("expected a put, got {other:?}"),
        })
        .collect();
    assert_eq!(seen, acked, "the watch saw every increment once, in order");
    assert_quiet(&mut w, "counter watch").await;
    eprintln!("{TOTAL} increments by {WRITERS} writers, {conflicts} lost races retried");
}

/// A watch from a compacted revision yields `Compacted` and ends; from the compaction
/// revision on, history is there; keys and values survive the compaction.
pub async fn watch_from_a_compacted_revision_reports_compacted(fx: &Fixture) {
    let s = &*fx.store;
    let key = fx.key("c/k");
    let first = s.create(&key, b"0").await.unwrap();
    let mut rev = first;
    for i in 1..5 {
        rev = s.update(&key, i.to_string().as_bytes(), rev).await.unwrap();
    }
    fx.compact(rev).await.unwrap();
    let prefix = fx.key("c/");
    for from in [first, rev - 1] {
        let mut w = s.watch(&prefix, from).await.unwrap();
        assert_eq!(
            next_event(&mut w).await,
            WatchEvent::Compacted {
                compact_revision: rev
            },
            "watch from {from}"
        );
        let end = tokio::time::timeout(EVENT_TIMEOUT, w.next()).await;
        assert!(
            matches!(end, Ok(None)),
            "the stream must end after Compacted: {end:?}"
        );
    }
    let mut at = s.watch(&prefix, rev).await.unwrap();
    assert_eq!(next_event(&mut at).await, put(&key, b"4", first, rev));
    assert_eq!(s.get(&key).await.unwrap(), Some(kv(&key, b"4", first, rev)));
    assert_eq!(s.list(&prefix).await.unwrap().kvs.len(), 1);
    let mut now = s.watch(&prefix, 0).await.unwrap();
    let r5 = s.update(&key, b"5", rev).await.unwrap();
    assert_eq!(next_event(&mut now).await, put(&key, b"5", first, r5));
    assert_eq!(next_event(&mut at).await, put(&key, b"5", first, r5));
}

/// A watch created before a compaction, from a revision the compaction then removes,
/// reports `Compacted` and ends when it is read: history is checked when the stream
/// starts, not when `watch` returns.
pub async fn watch_made_before_a_compaction_reports_compacted(fx: &Fixture) {
    let s = &*fx.store;
    let key = fx.key("cw/k");
    let first = s.create(&key, b"0").await.unwrap();
    let mut w = s.watch(&fx.key("cw/"), first).await.unwrap();
    let mut rev = first;
    for i in 1..4 {
        rev = s.update(&key, i.to_string().as_bytes(), rev).await.unwrap();
    }
    fx.compact(rev).await.unwrap();
    assert_eq!(
        next_event(&mut w).await,
        WatchEvent::Compacted {
            compact_revision: rev
        }
    );
    let end = tokio::time::timeout(EVENT_TIMEOUT, w.next()).await;
    assert!(
        matches!(end, Ok(None)),
        "the stream must end after Compacted: {end:?}"
    );
}

/// The node agent's recovery: a snapshot of several prefixes at R, changes, a
/// compaction past R; the watch from R + 1 reports `Compacted`; a new snapshot then
/// holds every change (deleted keys absent), and a watch from its revision + 1 sees
/// exactly the later changes.
pub async fn snapshot_and_watch_recover_from_a_compaction(fx: &Fixture) {
    let s = &*fx.store;
    let (nodes, blocks) = (fx.key("nodes/"), fx.key("blocks/"));
    let (n1, n2, b1) = (fx.key("nodes/n1"), fx.key("nodes/n2"), fx.key("blocks/b1"));
    let rn1 = s.create(&n1, b"n1").await.unwrap();
    s.create(&n2, b"n2").await.unwrap();
    let rb1 = s.create(&b1, b"b1").await.unwrap();
    let first = s.list_prefixes(&[&nodes, &blocks]).await.unwrap();
    assert_eq!(first.kvs.len(), 3);

    // While the agent is away: changes, then a compaction past its snapshot.
    s.delete(&n2, None).await.unwrap();
    let rn1b = s.update(&n1, b"n1'", rn1).await.unwrap();
    let b2 = fx.key("blocks/b2");
    let rb2 = s.create(&b2, b"b2").await.unwrap();
    let rb1b = s.update(&b1, b"b1'", rb1).await.unwrap();
    fx.compact(rb1b).await.unwrap();
    for prefix in [&nodes, &blocks] {
        let mut w = s.watch(prefix, first.revision + 1).await.unwrap();
        assert_eq!(
            next_event(&mut w).await,
            WatchEvent::Compacted {
                compact_revision: rb1b
            },
            "watch {prefix} from the old snapshot"
        );
        let end = tokio::time::timeout(EVENT_TIMEOUT, w.next()).await;
        assert!(matches!(end, Ok(None)), "ends after Compacted: {end:?}");
    }

    let again = s.list_prefixes(&[&nodes, &blocks]).await.unwrap();
    assert_eq!(again.revision, rb1b);
    assert_eq!(
        again.kvs,
        vec![
            kv(&b1, b"b1'", rb1, rb1b),
            kv(&b2, b"b2", rb2, rb2),
            kv(&n1, b"n1'", rn1, rn1b),
        ]
    );
    let mut w = s.watch(&nodes, again.revision + 1).await.unwrap();
    let rn3 = s.create(&fx.key("nodes/n3"), b"n3").await.unwrap();
    assert_eq!(
        next_event(&mut w).await,
        put(&fx.key("nodes/n3"), b"n3", rn3, rn3)
    );
    assert_quiet(&mut w, "watch from the new snapshot").await;
}

/// Values are bytes: every byte value, and a 256 KiB value, round-trip through `get`,
/// `list` and `watch`; keys may hold any UTF-8.
pub async fn binary_and_large_values_round_trip(fx: &Fixture) {
    let s = &*fx.store;
    let prefix = fx.key("bin/");
    let big: Vec<u8> = (0..256 * 1024u32)
        .map(|i| (i.wrapping_mul(7919) % 256) as u8)
        .collect();
    let all_bytes: Vec<u8> = (0..=255u8).rev().collect();
    let key = format!("{prefix}big");
    let odd_key = format!("{prefix}ünï côdé\t\"'\\ 🐈");
    let r1 = s.create(&key, &big).await.unwrap();
    let mut w = s.watch(&prefix, r1).await.unwrap();
    assert_eq!(s.get(&key).await.unwrap(), Some(kv(&key, &big, r1, r1)));
    let r2 = s.update(&key, &all_bytes, r1).await.unwrap();
    let r3 = s.create(&odd_key, &[0, 0, 0]).await.unwrap();
    assert_eq!(
        s.list(&prefix).await.unwrap().kvs,
        vec![
            kv(&key, &all_bytes, r1, r2),
            kv(&odd_key, &[0, 0, 0], r3, r3)
        ]
    );
    assert_eq!(
        next_events(&mut w, 3).await,
        vec![
            put(&key, &big, r1, r1),
            put(&key, &all_bytes, r1, r2),
            put(&odd_key, &[0, 0, 0], r3, r3),
        ]
    );
    assert_eq!(
        s.delete(&odd_key, Some(r3)).await.unwrap(),
        kv(&odd_key, &[0, 0, 0], r3, r3)
    );
}

/// Runs every case, each on a fresh fixture from `fixture`, and names each on stderr
/// before it runs (so that a failure says which case it was).
pub async fn run_all<F, Fut>(mut fixture: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Fixture>,
{
    crate::datastore_suite!(@cases run [fixture]);
}

/// One `#[tokio::test]` per case of [`crate::testsuite`], each on a fresh fixture from
/// the async fn `$fixture` (`async fn() -> Fixture`):
/// `tabby_store::datastore_suite!(fixture);` in a backend's test file.
#[macro_export]
macro_rules! datastore_suite {
    // The one list of cases.
    (@cases $mode:ident $arg:tt) => {
        $crate::datastore_suite!(@$mode $arg
            create_then_get_and_already_exists
            update_is_compare_and_swap
            missing_keys_are_not_found
            delete_with_and_without_expected_revision
            list_by_prefix_is_sorted_and_exact
            list_is_one_snapshot_under_concurrent_writes
            list_prefixes_is_one_sorted_snapshot_without_duplicates
            list_prefixes_is_one_snapshot_under_concurrent_writes
            revisions_strictly_increase
            watch_from_zero_sees_only_later_events
            watch_from_a_past_revision_replays_history
            resumed_watch_misses_and_duplicates_nothing
            concurrent_cas_increments_lose_nothing
            watch_from_a_compacted_revision_reports_compacted
            watch_made_before_a_compaction_reports_compacted
            snapshot_and_watch_recover_from_a_compaction
            binary_and_large_values_round_trip
        );
    };
    (@tests [$fixture:path] $($case:ident)*) => {
        $(
            #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let fixture = $fixture().await;
                $crate::testsuite::$case(&fixture).await;
            }
        )*
    };
    (@run [$fixture:ident] $($case:ident)*) => {
        $(
            eprintln!("datastore suite: {}", stringify!($case));
            let fx = $fixture().await;
            $crate::testsuite::$case(&fx).await;
            drop(fx);
        )*
    };
    ($fixture:path) => {
        $crate::datastore_suite!(@cases tests [$fixture]);
    };
}
