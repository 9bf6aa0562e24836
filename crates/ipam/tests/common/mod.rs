//! Backends the integration tests run on: the in-memory fake and a real SQLite file.

#![allow(dead_code)]

use std::sync::Arc;

use tabby_ipam::testing::MemoryStore;
use tabby_store::Datastore;
use tabby_store::sqlite::SqliteStore;

/// Which datastore a test runs against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Memory,
    Sqlite,
}

/// An open store; keeps the SQLite temp directory alive.
pub struct TestStore {
    pub store: Arc<dyn Datastore>,
    _dir: Option<tempfile::TempDir>,
}

impl Backend {
    pub async fn open(self) -> TestStore {
        match self {
            Backend::Memory => TestStore {
                store: Arc::new(MemoryStore::new()),
                _dir: None,
            },
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("temp dir");
                let store = SqliteStore::open(dir.path().join("store.db"))
                    .await
                    .expect("open SQLite store");
                TestStore {
                    store: Arc::new(store),
                    _dir: Some(dir),
                }
            }
        }
    }
}
