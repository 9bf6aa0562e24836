//! An in-memory [`Datastore`] with etcd semantics (one revision counter, per-key
//! `mod_revision` compare-and-swap, prefix lists) for tests, with optional injected
//! write failures to simulate a process dying between two writes. Watch is not
//! supported.

use std::collections::BTreeMap;
use std::sync::Mutex;

use async_trait::async_trait;
use tabby_store::{Datastore, KeyValue, ListResult, Revision, StoreError, WatchStream};

#[derive(Debug, Default)]
struct Inner {
    kvs: BTreeMap<String, KeyValue>,
    revision: Revision,
    /// Writes still allowed before every write fails; `None` = unlimited.
    write_budget: Option<usize>,
}

/// The in-memory store. Every operation yields to the scheduler first, so concurrent
/// tasks interleave between reads and writes as they would against a real store.
#[derive(Debug, Default)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
}

const ENDPOINT: &str = "memory://";

impl MemoryStore {
    /// An empty store at revision 0.
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// After `n` more successful writes, every write fails with `Unavailable` (a crash
    /// seen from the store's side). `None` lifts the limit.
    pub fn fail_writes_after(&self, n: Option<usize>) {
        self.lock().write_budget = n;
    }

    /// Every key and value, for debugging.
    pub fn dump(&self) -> Vec<KeyValue> {
        self.lock().kvs.values().cloned().collect()
    }

    fn spend(inner: &mut Inner) -> Result<(), StoreError> {
        match &mut inner.write_budget {
            Some(0) => Err(StoreError::Unavailable {
                endpoint: ENDPOINT.into(),
                message: "injected write failure".into(),
            }),
            Some(n) => {
                *n -= 1;
                Ok(())
            }
            None => Ok(()),
        }
    }
}

#[async_trait]
impl Datastore for MemoryStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        tokio::task::yield_now().await;
        Ok(self.lock().kvs.get(key).cloned())
    }

    async fn list(&self, prefix: &str) -> Result<ListResult, StoreError> {
        tokio::task::yield_now().await;
        let inner = self.lock();
        let kvs = inner
            .kvs
            .range(prefix.to_owned()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(_, v)| v.clone())
            .collect();
        Ok(ListResult {
            kvs,
            revision: inner.revision,
        })
    }

    async fn create(&self, key: &str, value: &[u8]) -> Result<Revision, StoreError> {
        tokio::task::yield_now().await;
        let mut inner = self.lock();
        if inner.kvs.contains_key(key) {
            return Err(StoreError::AlreadyExists { key: key.into() });
        }
        Self::spend(&mut inner)?;
        inner.revision += 1;
        let rev = inner.revision;
        inner.kvs.insert(
            key.to_owned(),
            KeyValue {
                key: key.to_owned(),
                value: value.to_vec(),
                create_revision: rev,
                mod_revision: rev,
            },
        );
        Ok(rev)
    }

    async fn update(
        &self,
        key: &str,
        value: &[u8],
        expected: Revision,
    ) -> Result<Revision, StoreError> {
        tokio::task::yield_now().await;
        let mut inner = self.lock();
        let actual = match inner.kvs.get(key) {
            None => return Err(StoreError::NotFound { key: key.into() }),
            Some(kv) => kv.mod_revision,
        };
        if actual != expected {
            return Err(StoreError::Conflict {
                key: key.into(),
                expected,
                actual,
            });
        }
        Self::spend(&mut inner)?;
        inner.revision += 1;
        let rev = inner.revision;
        let kv = inner.kvs.get_mut(key).expect("checked above");
        kv.value = value.to_vec();
        kv.mod_revision = rev;
        Ok(rev)
    }

    async fn delete(&self, key: &str, expected: Option<Revision>) -> Result<KeyValue, StoreError> {
        tokio::task::yield_now().await;
        let mut inner = self.lock();
        let actual = match inner.kvs.get(key) {
            None => return Err(StoreError::NotFound { key: key.into() }),
            Some(kv) => kv.mod_revision,
        };
        if let Some(expected) = expected
            && actual != expected
        {
            return Err(StoreError::Conflict {
                key: key.into(),
                expected,
                actual,
            });
        }
        Self::spend(&mut inner)?;
        inner.revision += 1;
        Ok(inner.kvs.remove(key).expect("checked above"))
    }

    async fn watch(&self, prefix: &str, _from: Revision) -> Result<WatchStream, StoreError> {
        Err(StoreError::Backend {
            endpoint: ENDPOINT.into(),
            message: format!("watch ({prefix}) is not supported by the in-memory test store"),
        })
    }

    async fn revision(&self) -> Result<Revision, StoreError> {
        Ok(self.lock().revision)
    }

    fn endpoint(&self) -> String {
        ENDPOINT.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn cas_semantics() {
        let s = MemoryStore::new();
        let r1 = s.create("/a", b"1").await.unwrap();
        assert!(matches!(
            s.create("/a", b"2").await,
            Err(StoreError::AlreadyExists { .. })
        ));
        let r2 = s.update("/a", b"2", r1).await.unwrap();
        assert!(r2 > r1);
        assert!(matches!(
            s.update("/a", b"3", r1).await,
            Err(StoreError::Conflict { .. })
        ));
        assert!(matches!(
            s.delete("/a", Some(r1)).await,
            Err(StoreError::Conflict { .. })
        ));
        s.create("/ab", b"x").await.unwrap();
        s.create("/b", b"y").await.unwrap();
        let l = s.list("/a").await.unwrap();
        assert_eq!(l.kvs.len(), 2);
        assert_eq!(l.revision, s.revision().await.unwrap());
        s.delete("/a", Some(r2)).await.unwrap();
        assert!(matches!(
            s.update("/a", b"3", r2).await,
            Err(StoreError::NotFound { .. })
        ));
        s.fail_writes_after(Some(0));
        assert!(matches!(
            s.create("/c", b"1").await,
            Err(StoreError::Unavailable { .. })
        ));
        assert!(s.watch("/", 0).await.is_err());
    }
}
