//! The Tabby datastore: one revisioned key-value model, as etcd v3 has it, behind one
//! trait ([`Datastore`]) with two backends: an embedded SQLite file (the default, shared
//! safely by every process on a host) and etcd v3 (for clusters).
//!
//! Keys follow Calico's etcd layout (see [`keys`]); values are JSON bytes. Every write
//! bumps one store-wide revision; `update` and `delete` can be made conditional on a
//! key's `mod_revision`, which is what makes read-modify-write safe across processes.

#[cfg(feature = "etcd")]
pub mod etcd;
#[cfg(feature = "testsuite")]
pub mod etcd_harness;
pub mod keys;
pub mod prefixes;
pub mod sqlite;
#[cfg(any(test, feature = "testsuite"))]
pub mod testsuite;
pub mod url;

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use futures::stream::BoxStream;

pub use url::StoreUrl;

/// Opens the store `url` names: a SQLite file ([`sqlite::SqliteStore::open`], created
/// when missing) or an etcd cluster ([`etcd::EtcdStore::open`], with TLS files and
/// credentials from the environment).
pub async fn open(url: &StoreUrl) -> Result<Arc<dyn Datastore>> {
    match url {
        StoreUrl::Sqlite { path } => Ok(Arc::new(sqlite::SqliteStore::open(path).await?)),
        #[cfg(feature = "etcd")]
        StoreUrl::Etcd { .. } => Ok(Arc::new(etcd::EtcdStore::open(url).await?)),
        #[cfg(not(feature = "etcd"))]
        StoreUrl::Etcd { .. } => Err(StoreError::BadUrl {
            url: url.to_string(),
            reason: "this build has no etcd support (feature `etcd`)".to_string(),
        }),
    }
}

/// A store-wide revision number. Every successful write makes a new, larger one.
pub type Revision = i64;

/// One key with its value and revisions, as etcd reports them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: Vec<u8>,
    /// Revision of the write that created this key (since its last deletion).
    pub create_revision: Revision,
    /// Revision of the last write to this key; the token for compare-and-swap.
    pub mod_revision: Revision,
}

/// The result of a list: the matching pairs, sorted by key, and the store revision the
/// list was read at (a watch from `revision + 1` misses nothing).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListResult {
    pub kvs: Vec<KeyValue>,
    pub revision: Revision,
}

/// A change seen by a watch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WatchEvent {
    /// A key was created or updated; `kv.mod_revision` is the revision of the change.
    Put(KeyValue),
    /// A key was deleted at `revision`; `prev` is its last value when the backend knows it.
    Delete {
        key: String,
        revision: Revision,
        prev: Option<KeyValue>,
    },
    /// The requested start revision was compacted away: events were lost. The watcher
    /// must re-list (`list`, `list_prefixes`) and watch again from the list's revision + 1. The stream
    /// ends after this event.
    Compacted { compact_revision: Revision },
}

impl WatchEvent {
    /// The revision this event happened at.
    pub fn revision(&self) -> Revision {
        match self {
            WatchEvent::Put(kv) => kv.mod_revision,
            WatchEvent::Delete { revision, .. } => *revision,
            WatchEvent::Compacted { compact_revision } => *compact_revision,
        }
    }
}

/// Errors every backend reports in the same shape, so callers can act on them.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{key}: already exists")]
    AlreadyExists { key: String },
    #[error("{key}: not found")]
    NotFound { key: String },
    /// A compare-and-swap lost: the key changed since it was read.
    #[error("{key}: revision conflict (expected {expected}, found {actual})")]
    Conflict {
        key: String,
        expected: Revision,
        actual: Revision,
    },
    /// The requested watch start revision is older than what the store keeps.
    #[error("revision {requested} has been compacted (oldest kept: {compact_revision})")]
    Compacted {
        requested: Revision,
        compact_revision: Revision,
    },
    /// The store could not be reached or answered with an error. `endpoint` names it.
    #[error("datastore {endpoint}: {message}")]
    Unavailable { endpoint: String, message: String },
    #[error("invalid store URL {url:?}: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("datastore {endpoint}: {message}")]
    Backend { endpoint: String, message: String },
}

impl StoreError {
    /// Whether the error is a lost compare-and-swap race (retry on fresh data).
    pub fn is_conflict(&self) -> bool {
        matches!(
            self,
            StoreError::Conflict { .. } | StoreError::AlreadyExists { .. }
        )
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// A stream of watch events in revision order. It ends only after a
/// [`WatchEvent::Compacted`] or when dropped; transient errors are retried inside.
pub type WatchStream = BoxStream<'static, Result<WatchEvent>>;

/// The datastore every Tabby component uses. Semantics are etcd v3's:
/// one revision counter for the whole store, per-key `mod_revision`, prefix ranges.
#[async_trait]
pub trait Datastore: Send + Sync + fmt::Debug {
    /// The key, or `None` when absent.
    async fn get(&self, key: &str) -> Result<Option<KeyValue>>;

    /// Every key starting with `prefix`, sorted by key, read at one revision.
    async fn list(&self, prefix: &str) -> Result<ListResult>;

    /// Every key under any of `prefixes`, sorted by key, all read at one store revision
    /// (returned in `ListResult::revision`): a watch from `revision + 1` misses nothing.
    /// Prefixes may overlap (each key comes once); no prefix gives no keys and the
    /// current revision.
    ///
    /// The backends read just the prefixes' ranges. This default, for other
    /// implementations, lists the prefixes' common prefix in one [`Datastore::list`] and
    /// keeps the matching keys: as consistent, but it may read much more.
    async fn list_prefixes(&self, prefixes: &[&str]) -> Result<ListResult> {
        let wanted = prefixes::disjoint(prefixes);
        if wanted.is_empty() {
            return Ok(ListResult {
                kvs: Vec::new(),
                revision: self.revision().await?,
            });
        }
        let mut all = self.list(&prefixes::common(&wanted)).await?;
        all.kvs
            .retain(|kv| wanted.iter().any(|p| kv.key.starts_with(p.as_str())));
        Ok(all)
    }

    /// Create `key` only if it does not exist. Returns the new revision.
    /// Fails with [`StoreError::AlreadyExists`].
    async fn create(&self, key: &str, value: &[u8]) -> Result<Revision>;

    /// Replace `key`'s value if its `mod_revision` is still `expected` (compare-and-swap).
    /// Fails with [`StoreError::Conflict`] or [`StoreError::NotFound`].
    async fn update(&self, key: &str, value: &[u8], expected: Revision) -> Result<Revision>;

    /// Delete `key`, only if its `mod_revision` equals `expected` when given.
    /// Returns the deleted pair. Fails with [`StoreError::NotFound`] or
    /// [`StoreError::Conflict`].
    async fn delete(&self, key: &str, expected: Option<Revision>) -> Result<KeyValue>;

    /// Events for keys under `prefix` with revision `>= from` (etcd's start_revision),
    /// in order, each exactly once. `from = 0` means "from now on".
    async fn watch(&self, prefix: &str, from: Revision) -> Result<WatchStream>;

    /// The store's current revision.
    async fn revision(&self) -> Result<Revision>;

    /// A short description for errors and logs, e.g. `sqlite:///var/lib/tabby/store.db`.
    fn endpoint(&self) -> String;
}
