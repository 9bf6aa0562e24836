//! The embedded SQLite backend: one file in WAL mode that the node agent, the CNI plugin
//! and the CLI on a host open at once, from separate processes, with etcd v3 semantics.
//!
//! The file holds three tables: `meta` (the store revision and the compaction point),
//! `kv` (each key with its value, `create_revision` and `mod_revision`) and `events`
//! (one row per revision: the put or delete it made, with the deleted pair for a
//! delete). Every write is one `BEGIN IMMEDIATE` transaction that checks its condition,
//! bumps the revision, changes `kv` and appends to `events`, so two processes can never
//! interleave a read-modify-write, and a failed or lost lock race leaves nothing behind:
//! a busy file is waited for (up to [`SqliteOptions::busy_timeout`]) and the whole
//! transaction re-run. Writes through one [`SqliteStore`] that arrive while another is
//! committing are grouped into the next transaction (group commit): each keeps its
//! own condition and revision, and they share one fsync.
//!
//! Watches read the event log when the store revision moves. Writes through the same
//! [`SqliteStore`] wake them at once; writes by other processes are noticed through
//! inotify on the file (see `wake`), with a slow safety poll
//! ([`SqliteOptions::poll_interval`]), or by a fast poll where inotify is unavailable
//! ([`SqliteOptions::fallback_poll_interval`]). An idle store does no work between
//! safety polls, however many watch streams it has. The log keeps the last
//! [`SqliteOptions::history`] revisions; a watch from an older revision gets
//! [`WatchEvent::Compacted`] and ends, as on etcd. [`SqliteStore::compact`] compacts by
//! hand.

mod wake;

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::StreamExt;
use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior, params};
use tokio::sync::{Mutex, oneshot, watch};

pub use wake::{Wake, WatchStats};

use crate::{
    Datastore, KeyValue, ListResult, Result, Revision, StoreError, StoreUrl, WatchEvent,
    WatchStream,
};

/// How long a write waits for another process's write lock before it fails.
pub const DEFAULT_BUSY_TIMEOUT: Duration = Duration::from_secs(10);
/// How often watches look for changes made by other processes when nothing woke them
/// (the safety net under inotify).
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(1);
/// How often watches look for changes made by other processes when inotify is off or
/// unavailable.
pub const DEFAULT_FALLBACK_POLL_INTERVAL: Duration = Duration::from_millis(25);
/// How many recent revisions the event log keeps by default.
pub const DEFAULT_HISTORY: u64 = 10_000;

/// `PRAGMA application_id` of a Tabby store ("TBBY"), so that a wrong file is refused.
const APPLICATION_ID: i64 = 0x5442_4259;
/// `PRAGMA user_version`: the layout of the tables below.
const SCHEMA_VERSION: i64 = 1;
/// Most events one watch poll reads; the next poll follows at once when it is full.
const WATCH_BATCH: i64 = 512;
/// Longest pause between two attempts of a watch poll that failed.
const MAX_WATCH_RETRY_DELAY: Duration = Duration::from_secs(1);
/// Longest pause between two attempts of a transaction that found the file busy.
const MAX_BUSY_DELAY: Duration = Duration::from_millis(50);

/// The tables. Keys are BLOBs so that they sort byte-wise, as in etcd, and so that a
/// prefix's range end (the prefix with its last byte incremented) need not be UTF-8.
/// A delete event keeps the deleted pair: `value`, `create_revision` and its last
/// `mod_revision` in `prev_mod_revision`.
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    revision INTEGER NOT NULL,
    compact_revision INTEGER NOT NULL
);
INSERT OR IGNORE INTO meta (id, revision, compact_revision) VALUES (1, 1, 0);
CREATE TABLE IF NOT EXISTS kv (
    key BLOB NOT NULL PRIMARY KEY,
    value BLOB NOT NULL,
    create_revision INTEGER NOT NULL,
    mod_revision INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS events (
    revision INTEGER PRIMARY KEY,
    key BLOB NOT NULL,
    deleted INTEGER NOT NULL,
    value BLOB NOT NULL,
    create_revision INTEGER NOT NULL,
    prev_mod_revision INTEGER
);
";

/// Tuning of a [`SqliteStore`]. `Default` gives the documented defaults.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SqliteOptions {
    /// How long one operation waits for a file locked by another writer (SQLite's
    /// busy timeout, and the budget for re-running a transaction that found it busy).
    pub busy_timeout: Duration,
    /// How watches learn of writes made by other processes.
    pub wake: Wake,
    /// How often watches look for changes made by other processes when inotify reported
    /// none: a safety net for anything it missed.
    pub poll_interval: Duration,
    /// How often watches look for changes made by other processes when inotify is off
    /// ([`Wake::Poll`]) or cannot be set up.
    pub fallback_poll_interval: Duration,
    /// Keep at least this many recent revisions in the event log (`Some(0)` counts as 1);
    /// older ones are compacted in batches as writes go by. `None` keeps everything
    /// until [`SqliteStore::compact`] is called.
    pub history: Option<u64>,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        SqliteOptions {
            busy_timeout: DEFAULT_BUSY_TIMEOUT,
            wake: Wake::Inotify,
            poll_interval: DEFAULT_POLL_INTERVAL,
            fallback_poll_interval: DEFAULT_FALLBACK_POLL_INTERVAL,
            history: Some(DEFAULT_HISTORY),
        }
    }
}

/// A [`Datastore`] in one SQLite file. Cheap to clone; clones share connections.
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

/// What every operation (and every watch stream) needs.
struct Inner {
    path: PathBuf,
    /// `path` with symbolic links resolved, as SQLite names the WAL after it: what the
    /// waker watches and the doorbell touches.
    file: PathBuf,
    /// `sqlite:///path/store.db`: the `endpoint` of every error.
    endpoint: String,
    options: SqliteOptions,
    /// Every write goes through this connection.
    writer: Arc<Mutex<Connection>>,
    /// Reads and watch polls, so that they never queue behind a write waiting for
    /// another process's lock (WAL readers do not block writers, nor the reverse).
    reader: Arc<Mutex<Connection>>,
    /// The latest store revision known to this store (from its own writes, or found
    /// by the waker): wakes its watches when it moves.
    changes: watch::Sender<Revision>,
    /// Writes waiting for the writer connection; the next holder runs them all.
    queue: std::sync::Mutex<Vec<Pending>>,
    /// The thread that notices other processes' writes: started by the first watch.
    waker: std::sync::Mutex<Option<wake::Waker>>,
    counters: wake::Counters,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.inner.path)
            .field("options", &self.inner.options)
            .finish_non_exhaustive()
    }
}

/// Why a transaction did not return a value: SQLite failed (maybe retryable), or the
/// store's answer is an error (a failed condition).
#[derive(Debug)]
enum TxError {
    Sql(rusqlite::Error),
    Store(StoreError),
}

impl From<rusqlite::Error> for TxError {
    fn from(e: rusqlite::Error) -> Self {
        TxError::Sql(e)
    }
}

impl SqliteStore {
    /// Opens (creating it and its parent directories when missing) the store file at
    /// `path` with [`SqliteOptions::default`].
    pub async fn open(path: impl AsRef<Path>) -> Result<SqliteStore> {
        SqliteStore::open_with(path, SqliteOptions::default()).await
    }

    /// Opens the store file at `path` with `options`. Fails, naming the path, when the
    /// file cannot be created or opened for writing, or is not a Tabby store.
    pub async fn open_with(path: impl AsRef<Path>, options: SqliteOptions) -> Result<SqliteStore> {
        let path = path.as_ref().to_path_buf();
        let endpoint = StoreUrl::Sqlite { path: path.clone() }.to_string();
        for (name, interval) in [
            ("poll_interval", options.poll_interval),
            ("fallback_poll_interval", options.fallback_poll_interval),
        ] {
            if interval.is_zero() {
                return Err(StoreError::Backend {
                    endpoint,
                    message: format!("{name} must be positive"),
                });
            }
        }
        let opening = {
            let (path, endpoint, options) = (path.clone(), endpoint.clone(), options.clone());
            tokio::task::spawn_blocking(move || open_connections(&path, &endpoint, &options))
        };
        let (writer, reader, revision) = opening.await.map_err(|e| StoreError::Backend {
            endpoint: endpoint.clone(),
            message: format!("opening: {e}"),
        })??;
        let (changes, _) = watch::channel(revision);
        let file = std::fs::canonicalize(&path).unwrap_or_else(|_| path.clone());
        Ok(SqliteStore {
            inner: Arc::new(Inner {
                file,
                path,
                endpoint,
                options,
                writer: Arc::new(Mutex::new(writer)),
                reader: Arc::new(Mutex::new(reader)),
                changes,
                queue: std::sync::Mutex::new(Vec::new()),
                waker: std::sync::Mutex::new(None),
                counters: wake::Counters::default(),
            }),
        })
    }

    /// The store file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Settings the store was opened with.
    pub fn options(&self) -> &SqliteOptions {
        &self.inner.options
    }

    /// What this store's watches did so far: revision checks, event log reads, and how
    /// they are woken.
    pub fn watch_stats(&self) -> WatchStats {
        let c = &self.inner.counters;
        WatchStats {
            checks: c.checks.load(Ordering::Relaxed),
            polls: c.polls.load(Ordering::Relaxed),
            wake: self.inner.lock_waker().as_ref().map(|w| w.mode),
        }
    }

    /// Drops the event log below `revision`: watches from older revisions then get
    /// [`WatchEvent::Compacted`]; keys and values are untouched. As on etcd, fails
    /// with [`StoreError::Compacted`] when `revision` is not past the current
    /// compaction point, and with [`StoreError::Backend`] when it is in the future.
    pub async fn compact(&self, revision: Revision) -> Result<()> {
        let what = format!("compact {revision}");
        let endpoint = self.inner.endpoint.clone();
        self.inner
            .run(&self.inner.writer, &what, move |conn| {
                let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
                let (current, compacted) = read_meta(&tx)?;
                if revision > current {
                    return Err(TxError::Store(StoreError::Backend {
                        endpoint: endpoint.clone(),
                        message: format!(
                            "compact {revision}: revision is in the future (current {current})"
                        ),
                    }));
                }
                if revision <= compacted {
                    return Err(TxError::Store(StoreError::Compacted {
                        requested: revision,
                        compact_revision: compacted,
                    }));
                }
                compact_log(&tx, revision)?;
                tx.commit()?;
                Ok(())
            })
            .await
    }

    /// The oldest revision the event log still holds events from (0 before any
    /// compaction): a watch from below it gets [`WatchEvent::Compacted`].
    pub async fn compact_revision(&self) -> Result<Revision> {
        let (_, compacted) = self
            .inner
            .run(&self.inner.reader, "read compact revision", |conn| {
                Ok(read_meta(conn)?)
            })
            .await?;
        Ok(compacted)
    }

    /// Queues one write and waits for it. Whoever holds the writer connection runs
    /// every write queued so far in one transaction (group commit), so concurrent
    /// writers share one fsync instead of queueing for one each; each write still
    /// checks its own condition and gets its own revision, in queue order.
    async fn submit(&self, what: String, op: Op) -> Result<Done> {
        let (reply, mut done) = oneshot::channel();
        self.inner
            .queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(Pending { what, op, reply });
        loop {
            let guard = Arc::clone(&self.inner.writer).lock_owned().await;
            // Another writer may have run ours while we waited for the connection.
            match done.try_recv() {
                Ok(result) => return result,
                Err(oneshot::error::TryRecvError::Closed) => {
                    return Err(StoreError::Backend {
                        endpoint: self.inner.endpoint.clone(),
                        message: "a write batch was abandoned".to_string(),
                    });
                }
                Err(oneshot::error::TryRecvError::Empty) => {}
            }
            let batch = std::mem::take(
                &mut *self
                    .inner
                    .queue
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner),
            );
            if batch.is_empty() {
                continue;
            }
            self.run_batch(guard, batch).await;
        }
    }

    /// Runs `batch` in one transaction on the blocking pool, answers every write in
    /// it, and wakes this store's watches.
    async fn run_batch(
        &self,
        mut conn: tokio::sync::OwnedMutexGuard<Connection>,
        batch: Vec<Pending>,
    ) {
        let budget = self.inner.options.busy_timeout;
        let history = self.inner.options.history;
        let file = self.inner.file.clone();
        let ops: Vec<Op> = batch.iter().map(|p| p.op.clone()).collect();
        let outcome = tokio::task::spawn_blocking(move || {
            let outcome = retry_busy(budget, || apply_batch(&mut conn, &ops, history));
            if let Ok(results) = &outcome
                && results.iter().any(Result::is_ok)
            {
                wake::ring_doorbell(&file);
            }
            outcome
        })
        .await;
        let mut last = None;
        match outcome {
            Ok(Ok(results)) => {
                for (pending, result) in batch.into_iter().zip(results) {
                    if let Ok(done) = &result {
                        last = Some(done.revision());
                    }
                    let _ = pending.reply.send(result);
                }
            }
            Ok(Err(e)) => {
                for pending in batch {
                    let error = match &e {
                        TxError::Sql(e) => {
                            sql_error(&self.inner.endpoint, &pending.what, budget, e)
                        }
                        TxError::Store(e) => StoreError::Backend {
                            endpoint: self.inner.endpoint.clone(),
                            message: format!("{}: {e}", pending.what),
                        },
                    };
                    let _ = pending.reply.send(Err(error));
                }
            }
            Err(e) => {
                for pending in batch {
                    let _ = pending.reply.send(Err(StoreError::Backend {
                        endpoint: self.inner.endpoint.clone(),
                        message: format!("{}: {e}", pending.what),
                    }));
                }
            }
        }
        if let Some(revision) = last {
            self.inner.saw_revision(revision);
        }
    }
}

/// One queued write.
#[derive(Clone, Debug)]
enum Op {
    Create {
        key: Vec<u8>,
        value: Vec<u8>,
    },
    Update {
        key: Vec<u8>,
        value: Vec<u8>,
        expected: Revision,
    },
    Delete {
        key: Vec<u8>,
        expected: Option<Revision>,
    },
}

/// What a successful write returns: its revision, and for a delete the deleted pair.
#[derive(Debug)]
enum Done {
    Written(Revision),
    Deleted(KeyValue, Revision),
}

impl Done {
    fn revision(&self) -> Revision {
        match self {
            Done::Written(r) | Done::Deleted(_, r) => *r,
        }
    }
}

/// A write waiting in the queue, with what to call it in errors and where to answer.
struct Pending {
    what: String,
    op: Op,
    reply: oneshot::Sender<Result<Done>>,
}

/// Runs `ops` in order in one `BEGIN IMMEDIATE` transaction. A write whose condition
/// fails changes nothing and gets its error; the others commit together. An SQLite
/// error rolls the whole batch back (and `retry_busy` re-runs it when the file was busy).
fn apply_batch(
    conn: &mut Connection,
    ops: &[Op],
    history: Option<u64>,
) -> Result<Vec<Result<Done>>, TxError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let (mut current, mut compacted) = read_meta(&tx)?;
    let mut results = Vec::with_capacity(ops.len());
    for op in ops {
        results.push(apply_one(&tx, op, &mut current, &mut compacted, history)?);
    }
    tx.commit()?;
    Ok(results)
}

/// One write inside a batch: checks its condition against what the batch wrote so far.
fn apply_one(
    tx: &Connection,
    op: &Op,
    current: &mut Revision,
    compacted: &mut Revision,
    history: Option<u64>,
) -> rusqlite::Result<Result<Done>> {
    let name = |key: &[u8]| key_string(key.to_vec());
    let revision = *current + 1;
    let done = match op {
        Op::Create { key, value } => {
            if read_key(tx, key)?.is_some() {
                return Ok(Err(StoreError::AlreadyExists { key: name(key) }));
            }
            tx.prepare_cached(
                "INSERT INTO kv (key, value, create_revision, mod_revision) \
                 VALUES (?1, ?2, ?3, ?3)",
            )?
            .execute(params![key, value, revision])?;
            log_event(tx, revision, key, false, value, revision, None)?;
            Done::Written(revision)
        }
        Op::Update {
            key,
            value,
            expected,
        } => {
            let Some(old) = read_key(tx, key)? else {
                return Ok(Err(StoreError::NotFound { key: name(key) }));
            };
            if old.mod_revision != *expected {
                return Ok(Err(StoreError::Conflict {
                    key: name(key),
                    expected: *expected,
                    actual: old.mod_revision,
                }));
            }
            tx.prepare_cached("UPDATE kv SET value = ?2, mod_revision = ?3 WHERE key = ?1")?
                .execute(params![key, value, revision])?;
            log_event(
                tx,
                revision,
                key,
                false,
                value,
                old.create_revision,
                Some(old.mod_revision),
            )?;
            Done::Written(revision)
        }
        Op::Delete { key, expected } => {
            let Some(old) = read_key(tx, key)? else {
                return Ok(Err(StoreError::NotFound { key: name(key) }));
            };
            if let Some(expected) = expected
                && old.mod_revision != *expected
            {
                return Ok(Err(StoreError::Conflict {
                    key: name(key),
                    expected: *expected,
                    actual: old.mod_revision,
                }));
            }
            tx.prepare_cached("DELETE FROM kv WHERE key = ?1")?
                .execute(params![key])?;
            log_event(
                tx,
                revision,
                key,
                true,
                &old.value,
                old.create_revision,
                Some(old.mod_revision),
            )?;
            Done::Deleted(old, revision)
        }
    };
    *compacted = advance(tx, revision, *compacted, history)?;
    *current = revision;
    Ok(Ok(done))
}

impl Inner {
    fn lock_waker(&self) -> std::sync::MutexGuard<'_, Option<wake::Waker>> {
        self.waker
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Starts the waker unless it runs.
    fn ensure_waker(self: &Arc<Self>) -> Result<()> {
        let mut waker = self.lock_waker();
        if !waker.as_ref().is_some_and(wake::Waker::is_running) {
            let started = wake::start(self).map_err(|e| StoreError::Backend {
                endpoint: self.endpoint.clone(),
                message: format!("starting the thread that wakes watches: {e}"),
            })?;
            *waker = Some(started);
        }
        Ok(())
    }

    /// Records that the store has reached `revision`; wakes the watches if that is news.
    fn saw_revision(&self, revision: Revision) {
        self.changes.send_if_modified(|known| {
            let news = revision > *known;
            if news {
                *known = revision;
            }
            news
        });
    }

    /// Reads the store revision to find out whether another process wrote. Blocks: for
    /// the waker's thread, outside any runtime.
    fn check_blocking(&self) {
        self.counters.checks.fetch_add(1, Ordering::Relaxed);
        let conn = self.reader.blocking_lock();
        match retry_busy(self.options.busy_timeout, || Ok(read_meta(&conn)?)) {
            Ok((revision, _)) => self.saw_revision(revision),
            // The watches' own polls report failures; the next check tries again.
            Err(e) => {
                tracing::debug!(endpoint = %self.endpoint, error = ?e, "revision check failed")
            }
        }
    }

    /// Runs `f` with `conn` on the blocking pool, re-running it while the file is busy,
    /// and names the endpoint and the operation in any error.
    async fn run<T, F>(&self, conn: &Arc<Mutex<Connection>>, what: &str, mut f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnMut(&mut Connection) -> Result<T, TxError> + Send + 'static,
    {
        let mut guard = Arc::clone(conn).lock_owned().await;
        let budget = self.options.busy_timeout;
        let outcome =
            tokio::task::spawn_blocking(move || retry_busy(budget, || f(&mut guard))).await;
        match outcome {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(TxError::Store(e))) => Err(e),
            Ok(Err(TxError::Sql(e))) => Err(sql_error(&self.endpoint, what, budget, &e)),
            Err(e) => Err(StoreError::Backend {
                endpoint: self.endpoint.clone(),
                message: format!("{what}: {e}"),
            }),
        }
    }
}

#[async_trait]
impl Datastore for SqliteStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        let what = format!("get {key}");
        let key = key.to_string();
        self.inner
            .run(&self.inner.reader, &what, move |conn| {
                Ok(read_key(conn, key.as_bytes())?)
            })
            .await
    }

    async fn list(&self, prefix: &str) -> Result<ListResult> {
        self.list_prefixes(&[prefix]).await
    }

    async fn list_prefixes(&self, prefixes: &[&str]) -> Result<ListResult> {
        let what = format!("list {}", prefixes.join(", "));
        let ranges: Vec<_> = crate::prefixes::disjoint(prefixes)
            .iter()
            .map(|p| prefix_range(p.as_bytes()))
            .collect();
        self.inner
            .run(&self.inner.reader, &what, move |conn| {
                // One read transaction: the pairs and the revision are one snapshot.
                let tx = conn.transaction()?;
                let (revision, _) = read_meta(&tx)?;
                let mut stmt = tx.prepare_cached(
                    "SELECT key, value, create_revision, mod_revision FROM kv \
                     WHERE key >= ?1 AND (?2 IS NULL OR key < ?2) ORDER BY key",
                )?;
                let mut kvs = Vec::new();
                // Disjoint ranges in key order: the concatenation is sorted.
                for (start, end) in &ranges {
                    let rows = stmt.query_map(params![start, end], |r| {
                        Ok(KeyValue {
                            key: key_string(r.get(0)?),
                            value: r.get(1)?,
                            create_revision: r.get(2)?,
                            mod_revision: r.get(3)?,
                        })
                    })?;
                    for kv in rows {
                        kvs.push(kv?);
                    }
                }
                drop(stmt);
                tx.commit()?;
                Ok(ListResult { kvs, revision })
            })
            .await
    }

    async fn create(&self, key: &str, value: &[u8]) -> Result<Revision> {
        let op = Op::Create {
            key: key.as_bytes().to_vec(),
            value: value.to_vec(),
        };
        match self.submit(format!("create {key}"), op).await? {
            Done::Written(revision) => Ok(revision),
            Done::Deleted(_, revision) => Ok(revision),
        }
    }

    async fn update(&self, key: &str, value: &[u8], expected: Revision) -> Result<Revision> {
        let op = Op::Update {
            key: key.as_bytes().to_vec(),
            value: value.to_vec(),
            expected,
        };
        match self.submit(format!("update {key}"), op).await? {
            Done::Written(revision) => Ok(revision),
            Done::Deleted(_, revision) => Ok(revision),
        }
    }

    async fn delete(&self, key: &str, expected: Option<Revision>) -> Result<KeyValue> {
        let op = Op::Delete {
            key: key.as_bytes().to_vec(),
            expected,
        };
        match self.submit(format!("delete {key}"), op).await? {
            Done::Deleted(old, _) => Ok(old),
            Done::Written(revision) => Err(StoreError::Backend {
                endpoint: self.inner.endpoint.clone(),
                message: format!("delete {key}: the write at {revision} returned no pair"),
            }),
        }
    }

    async fn watch(&self, prefix: &str, from: Revision) -> Result<WatchStream> {
        // "From now on" is pinned to a revision here, so that writes made after this
        // call returns are all seen.
        let next = if from <= 0 {
            self.revision().await? + 1
        } else {
            from
        };
        let (start, end) = prefix_range(prefix.as_bytes());
        self.inner.ensure_waker()?;
        // A new receiver has seen the current value: only later writes wake it.
        let changes = self.inner.changes.subscribe();
        let watcher = Watcher {
            inner: Arc::clone(&self.inner),
            prefix: prefix.to_string(),
            start,
            end,
            next,
            queue: VecDeque::new(),
            changes,
            poll_now: true,
            failures: 0,
            finished: false,
        };
        Ok(futures::stream::unfold(watcher, |mut w| async move {
            let event = w.next_event().await?;
            Some((Ok(event), w))
        })
        .boxed())
    }

    async fn revision(&self) -> Result<Revision> {
        let (revision, _) = self
            .inner
            .run(&self.inner.reader, "read revision", |conn| {
                Ok(read_meta(conn)?)
            })
            .await?;
        Ok(revision)
    }

    fn endpoint(&self) -> String {
        self.inner.endpoint.clone()
    }
}

/// One watch stream: reads the event log from `next` on whenever the store revision
/// moves.
struct Watcher {
    inner: Arc<Inner>,
    prefix: String,
    start: Vec<u8>,
    end: Option<Vec<u8>>,
    /// Every event below this revision has been queued.
    next: Revision,
    queue: VecDeque<WatchEvent>,
    changes: watch::Receiver<Revision>,
    /// Poll without waiting: the first poll, and after a full batch.
    poll_now: bool,
    failures: u32,
    finished: bool,
}

/// What one poll of the event log found.
enum Polled {
    /// Events under the prefix, and the revision the next poll starts from.
    Events {
        events: Vec<WatchEvent>,
        next: Revision,
        full: bool,
    },
    /// The log no longer holds `next`: it was compacted up to this revision.
    Compacted(Revision),
}

impl Watcher {
    /// The next event, or `None` once the stream has ended (after `Compacted`).
    async fn next_event(&mut self) -> Option<WatchEvent> {
        loop {
            if let Some(event) = self.queue.pop_front() {
                return Some(event);
            }
            if self.finished {
                return None;
            }
            if !self.poll_now {
                if let Err(e) = self.inner.ensure_waker() {
                    tracing::warn!(prefix = %self.prefix, error = %e, "watch may miss other processes' writes");
                }
                // The store holds the sender, and this stream holds the store.
                let _ = self.changes.changed().await;
            }
            // Any local write from here on wakes the next wait.
            self.changes.borrow_and_update();
            match self.poll().await {
                Ok(Polled::Events { events, next, full }) => {
                    self.queue.extend(events);
                    self.next = next;
                    self.poll_now = full;
                    self.failures = 0;
                }
                Ok(Polled::Compacted(compact_revision)) => {
                    self.queue
                        .push_back(WatchEvent::Compacted { compact_revision });
                    self.finished = true;
                }
                Err(e) => {
                    self.failures = self.failures.saturating_add(1);
                    let delay = (self.inner.options.fallback_poll_interval * self.failures)
                        .min(MAX_WATCH_RETRY_DELAY);
                    tracing::warn!(
                        endpoint = %self.inner.endpoint,
                        prefix = %self.prefix,
                        from = self.next,
                        error = %e,
                        "sqlite watch poll failed, retrying in {delay:?}"
                    );
                    tokio::time::sleep(delay).await;
                    self.poll_now = true;
                }
            }
        }
    }

    /// Reads the events from `next` on, with the compaction point, in one snapshot.
    async fn poll(&self) -> Result<Polled> {
        self.inner.counters.polls.fetch_add(1, Ordering::Relaxed);
        let (start, end, next) = (self.start.clone(), self.end.clone(), self.next);
        let what = format!("watch {} from {next}", self.prefix);
        self.inner
            .run(&self.inner.reader, &what, move |conn| {
                let tx = conn.transaction()?;
                let (current, compacted) = read_meta(&tx)?;
                if next < compacted {
                    return Ok(Polled::Compacted(compacted));
                }
                if next > current {
                    return Ok(Polled::Events {
                        events: Vec::new(),
                        next,
                        full: false,
                    });
                }
                let mut stmt = tx.prepare_cached(
                    "SELECT revision, key, deleted, value, create_revision, prev_mod_revision \
                     FROM events WHERE revision >= ?1 AND key >= ?2 AND (?3 IS NULL OR key < ?3) \
                     ORDER BY revision LIMIT ?4",
                )?;
                let events = stmt
                    .query_map(params![next, start, end, WATCH_BATCH], event_from_row)?
                    .collect::<rusqlite::Result<Vec<_>>>()?;
                drop(stmt);
                tx.commit()?;
                let full = events.len() as i64 == WATCH_BATCH;
                // A short batch means every revision up to `current` was looked at, also
                // those of other prefixes: move past them, so that a quiet watch is not
                // caught by a compaction that only removed others' history.
                let next = match events.last() {
                    Some(last) if full => last.revision() + 1,
                    _ => current + 1,
                };
                Ok(Polled::Events { events, next, full })
            })
            .await
    }
}

/// Opens the writer and reader connections, creating the directory, the file and the
/// tables when missing. Returns them with the store revision.
fn open_connections(
    path: &Path,
    endpoint: &str,
    options: &SqliteOptions,
) -> Result<(Connection, Connection, Revision)> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty())
        && !parent.is_dir()
    {
        std::fs::create_dir_all(parent).map_err(|e| StoreError::Unavailable {
            endpoint: endpoint.to_string(),
            message: format!("creating directory {}: {e}", parent.display()),
        })?;
    }
    let budget = options.busy_timeout;
    let fail = |what: &str, e: TxError| match e {
        TxError::Store(e) => e,
        TxError::Sql(e) => sql_error(endpoint, what, budget, &e),
    };
    let mut writer = open_connection(path, endpoint, options)?;
    let revision = retry_busy(budget, || init_schema(&mut writer, endpoint))
        .map_err(|e| fail("creating the tables", e))?;
    let reader = open_connection(path, endpoint, options)?;
    Ok((writer, reader, revision))
}

/// One connection in WAL mode with the busy timeout set.
fn open_connection(path: &Path, endpoint: &str, options: &SqliteOptions) -> Result<Connection> {
    let budget = options.busy_timeout;
    // No SQLITE_OPEN_URI: a file called `file:x` is a file, not a URI.
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags)
        .map_err(|e| sql_error(endpoint, "opening", budget, &e))?;
    let setup = || -> Result<(), TxError> {
        conn.busy_timeout(budget)?;
        // SQLite quietly opens a write-protected file read-only.
        if conn.is_readonly(rusqlite::MAIN_DB)? {
            return Err(TxError::Store(StoreError::Unavailable {
                endpoint: endpoint.to_string(),
                message: "opening: the file is read-only".to_string(),
            }));
        }
        let mode: String =
            conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(TxError::Store(StoreError::Backend {
                endpoint: endpoint.to_string(),
                message: format!(
                    "opening: cannot use WAL journal mode (got {mode:?}); \
                     the file must be on a local filesystem"
                ),
            }));
        }
        // Acknowledged writes survive a power loss, as they do on etcd.
        conn.pragma_update(None, "synchronous", "FULL")?;
        Ok(())
    };
    retry_busy(budget, setup).map_err(|e| match e {
        TxError::Store(e) => e,
        TxError::Sql(e) => sql_error(endpoint, "opening", budget, &e),
    })?;
    Ok(conn)
}

/// Creates the tables in a new file (or checks an existing file is a Tabby store of a
/// layout we know) and returns the store revision.
fn init_schema(conn: &mut Connection, endpoint: &str) -> Result<Revision, TxError> {
    // The usual case, a store of the current layout, needs no write lock: the CNI
    // plugin opens the file on every call and must not queue behind writers for that.
    let app_id: i64 = conn.pragma_query_value(None, "application_id", |r| r.get(0))?;
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if app_id == APPLICATION_ID && version == SCHEMA_VERSION {
        return Ok(read_meta(conn)?.0);
    }
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let refuse = |message: String| {
        TxError::Store(StoreError::Backend {
            endpoint: endpoint.to_string(),
            message: format!("opening: {message}"),
        })
    };
    let app_id: i64 = tx.pragma_query_value(None, "application_id", |r| r.get(0))?;
    let version: i64 = tx.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if app_id != APPLICATION_ID {
        let tables: i64 = tx.query_row(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table'",
            [],
            |r| r.get(0),
        )?;
        if app_id != 0 || tables > 0 {
            return Err(refuse(
                "the file is an SQLite database but not a Tabby store".to_string(),
            ));
        }
    }
    if version > SCHEMA_VERSION {
        return Err(refuse(format!(
            "the store has layout version {version}, newer than this program knows \
             ({SCHEMA_VERSION}); use a newer Tabby"
        )));
    }
    if app_id != APPLICATION_ID || version < SCHEMA_VERSION {
        tx.execute_batch(SCHEMA)?;
        tx.pragma_update(None, "application_id", APPLICATION_ID)?;
        tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    }
    let (revision, _) = read_meta(&tx)?;
    tx.commit()?;
    Ok(revision)
}

/// Runs `f` again while SQLite reports the file busy or locked (another process holds
/// a lock SQLite's own busy handler gave up on or could not wait for), until `budget`
/// is spent. A busy transaction was rolled back, so re-running it is always safe.
fn retry_busy<T>(
    budget: Duration,
    mut f: impl FnMut() -> Result<T, TxError>,
) -> Result<T, TxError> {
    let deadline = Instant::now() + budget;
    let mut pause = Duration::from_millis(1);
    loop {
        match f() {
            Err(TxError::Sql(e)) if is_busy(&e) && Instant::now() + pause < deadline => {
                tracing::debug!(error = %e, "sqlite store busy, retrying in {pause:?}");
                std::thread::sleep(pause);
                pause = (pause * 2).min(MAX_BUSY_DELAY);
            }
            other => return other,
        }
    }
}

fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    )
}

/// A SQLite failure as a [`StoreError`]: the file being unreachable for now (locked,
/// unreadable, full, read-only) is `Unavailable`; anything else is `Backend`.
fn sql_error(endpoint: &str, what: &str, budget: Duration, e: &rusqlite::Error) -> StoreError {
    use rusqlite::ErrorCode as C;
    let endpoint = endpoint.to_string();
    match e.sqlite_error_code() {
        Some(C::DatabaseBusy | C::DatabaseLocked) => StoreError::Unavailable {
            endpoint,
            message: format!(
                "{what}: the file stayed locked by another process for over {budget:?}: {e}"
            ),
        },
        Some(
            C::CannotOpen
            | C::PermissionDenied
            | C::ReadOnly
            | C::SystemIoFailure
            | C::DiskFull
            | C::FileLockingProtocolFailed,
        ) => StoreError::Unavailable {
            endpoint,
            message: format!("{what}: {e}"),
        },
        _ => StoreError::Backend {
            endpoint,
            message: format!("{what}: {e}"),
        },
    }
}

/// `(revision, compact_revision)`.
fn read_meta(conn: &Connection) -> rusqlite::Result<(Revision, Revision)> {
    conn.prepare_cached("SELECT revision, compact_revision FROM meta WHERE id = 1")?
        .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))
}

fn read_key(conn: &Connection, key: &[u8]) -> rusqlite::Result<Option<KeyValue>> {
    conn.prepare_cached("SELECT value, create_revision, mod_revision FROM kv WHERE key = ?1")?
        .query_row(params![key], |r| {
            Ok(KeyValue {
                key: String::from_utf8_lossy(key).into_owned(),
                value: r.get(0)?,
                create_revision: r.get(1)?,
                mod_revision: r.get(2)?,
            })
        })
        .optional()
}

fn log_event(
    conn: &Connection,
    revision: Revision,
    key: &[u8],
    deleted: bool,
    value: &[u8],
    create_revision: Revision,
    prev_mod_revision: Option<Revision>,
) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO events (revision, key, deleted, value, create_revision, prev_mod_revision) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![
        revision,
        key,
        deleted,
        value,
        create_revision,
        prev_mod_revision
    ])?;
    Ok(())
}

/// Records `revision` as the store's and compacts the log when it has grown `history`
/// plus a batch past the last compaction (batches keep the cost per write low).
fn advance(
    conn: &Connection,
    revision: Revision,
    compacted: Revision,
    history: Option<u64>,
) -> rusqlite::Result<Revision> {
    conn.prepare_cached("UPDATE meta SET revision = ?1 WHERE id = 1")?
        .execute(params![revision])?;
    if let Some(history) = history {
        let keep = history.max(1);
        let batch = i64::try_from((keep / 8).clamp(1, 1024)).unwrap_or(1024);
        let keep = i64::try_from(keep).unwrap_or(i64::MAX);
        let oldest_kept = revision.saturating_sub(keep) + 1;
        if oldest_kept - compacted >= batch {
            compact_log(conn, oldest_kept)?;
            return Ok(oldest_kept);
        }
    }
    Ok(compacted)
}

/// Deletes the events below `revision` and records it as the compaction point.
fn compact_log(conn: &Connection, revision: Revision) -> rusqlite::Result<()> {
    conn.prepare_cached("DELETE FROM events WHERE revision < ?1")?
        .execute(params![revision])?;
    conn.prepare_cached("UPDATE meta SET compact_revision = ?1 WHERE id = 1")?
        .execute(params![revision])?;
    Ok(())
}

fn event_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<WatchEvent> {
    let revision: Revision = r.get(0)?;
    let key = key_string(r.get(1)?);
    let deleted: bool = r.get(2)?;
    let value: Vec<u8> = r.get(3)?;
    let create_revision: Revision = r.get(4)?;
    if deleted {
        let prev_mod: Option<Revision> = r.get(5)?;
        Ok(WatchEvent::Delete {
            prev: Some(KeyValue {
                key: key.clone(),
                value,
                create_revision,
                mod_revision: prev_mod.unwrap_or(create_revision),
            }),
            key,
            revision,
        })
    } else {
        Ok(WatchEvent::Put(KeyValue {
            key,
            value,
            create_revision,
            mod_revision: revision,
        }))
    }
}

/// Tabby only writes UTF-8 keys; anything else is shown, not dropped.
fn key_string(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// The `[start, end)` byte range of the keys starting with `prefix`; `end` is `None`
/// when no key is past the range (the empty prefix, or one of only `0xff` bytes).
fn prefix_range(prefix: &[u8]) -> (Vec<u8>, Option<Vec<u8>>) {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return (prefix.to_vec(), Some(end));
        }
    }
    (prefix.to_vec(), None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_ranges() {
        assert_eq!(
            prefix_range(b"/calico/"),
            (b"/calico/".to_vec(), Some(b"/calico0".to_vec()))
        );
        assert_eq!(
            prefix_range(b"a\xff"),
            (b"a\xff".to_vec(), Some(b"b".to_vec()))
        );
        assert_eq!(prefix_range(b"\xff\xff"), (b"\xff\xff".to_vec(), None));
        assert_eq!(prefix_range(b""), (Vec::new(), None));
    }

    #[test]
    fn busy_and_io_errors_are_unavailable_others_backend() {
        let busy = rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY),
            None,
        );
        assert!(is_busy(&busy));
        let e = sql_error("sqlite:///x.db", "create /k", Duration::from_secs(1), &busy);
        assert!(
            matches!(&e, StoreError::Unavailable { endpoint, .. } if endpoint == "sqlite:///x.db"),
            "{e:?}"
        );
        assert!(e.to_string().contains("create /k"), "{e}");
        let corrupt = rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CORRUPT),
            None,
        );
        assert!(!is_busy(&corrupt));
        assert!(matches!(
            sql_error("sqlite:///x.db", "get /k", Duration::from_secs(1), &corrupt),
            StoreError::Backend { .. }
        ));
    }

    #[test]
    fn busy_transactions_are_retried_within_the_budget() {
        let busy = || {
            TxError::Sql(rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY),
                None,
            ))
        };
        let mut attempts = 0;
        let r = retry_busy(Duration::from_secs(5), || {
            attempts += 1;
            if attempts < 4 {
                Err(busy())
            } else {
                Ok(attempts)
            }
        });
        assert_eq!(r.unwrap(), 4);
        // A failed condition is an answer, not a reason to try again.
        let mut attempts = 0;
        let r: Result<(), TxError> = retry_busy(Duration::from_secs(5), || {
            attempts += 1;
            Err(TxError::Store(StoreError::NotFound { key: "/k".into() }))
        });
        assert!(matches!(r, Err(TxError::Store(_))));
        assert_eq!(attempts, 1);
        // Busy past the budget gives up.
        let started = Instant::now();
        let r: Result<(), TxError> = retry_busy(Duration::from_millis(100), || Err(busy()));
        assert!(matches!(r, Err(TxError::Sql(_))));
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn default_options() {
        let o = SqliteOptions::default();
        assert_eq!(o.busy_timeout, Duration::from_secs(10));
        assert_eq!(o.wake, Wake::Inotify);
        assert_eq!(o.poll_interval, Duration::from_secs(1));
        assert_eq!(o.fallback_poll_interval, Duration::from_millis(25));
        assert_eq!(o.history, Some(10_000));
    }
}
