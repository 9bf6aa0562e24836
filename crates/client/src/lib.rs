//! Typed, validated access to v3 resources over any [`Datastore`]: what `tabbyctl`,
//! the node agent and the CNI plugin use instead of raw keys. Every write fills
//! Calico's defaults, validates, and is a compare-and-swap on the key's revision, so
//! concurrent writers never lose an update silently.

pub mod backup;
pub mod ipam;
pub mod patch;
pub mod time;

use std::sync::Arc;

use serde_json::Value;
use tabby_api::{Kind, Resource};
use tabby_store::{Datastore, Revision, StoreError, keys};

pub use patch::merge_patch;

/// How many times a read-modify-write is retried after losing a race.
pub const MAX_CAS_RETRIES: usize = 100;

/// Errors from typed resource operations; each names the resource it concerns.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{kind} {name:?} already exists")]
    AlreadyExists { kind: Kind, name: String },
    #[error("{kind} {name:?} not found")]
    NotFound { kind: Kind, name: String },
    /// The caller's resourceVersion is stale (someone else wrote in between).
    #[error(
        "{kind} {name:?}: the resource was modified since resourceVersion {expected} (now {actual}); get it again and retry"
    )]
    Conflict {
        kind: Kind,
        name: String,
        expected: String,
        actual: String,
    },
    #[error("{0}")]
    Invalid(String),
    #[error("{kind} {name:?}: stored value is unreadable: {message}")]
    Corrupt {
        kind: Kind,
        name: String,
        message: String,
    },
    #[error("{kind} {name:?}: gave up after {MAX_CAS_RETRIES} conflicting concurrent updates")]
    TooManyConflicts { kind: Kind, name: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub type Result<T, E = ClientError> = std::result::Result<T, E>;

/// What `apply` did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    Created,
    Updated,
}

/// Typed resource access over a datastore.
#[derive(Clone, Debug)]
pub struct Client {
    store: Arc<dyn Datastore>,
}

/// A short random pause before retry `attempt` of a lost compare-and-swap, growing
/// with the attempt, so writers hammering one key take turns instead of one of them
/// losing every race (up to 1 ms times the attempt, at most 20 ms).
async fn conflict_backoff(attempt: usize) {
    let cap_us = (attempt.min(20) as u64) * 1000;
    let us = rand::random_range(0..=cap_us);
    tokio::time::sleep(std::time::Duration::from_micros(us)).await;
}

/// The store key of a resource.
pub fn key_of(kind: Kind, namespace: Option<&str>, name: &str) -> String {
    let ns = if kind.namespaced() {
        Some(namespace.unwrap_or("default"))
    } else {
        None
    };
    keys::resource_key(kind.plural(), ns, name)
}

fn resource_key(r: &Resource) -> String {
    key_of(r.kind(), r.namespace(), r.name())
}

fn display_name(r: &Resource) -> String {
    match r.namespace() {
        Some(ns) if r.kind().namespaced() => format!("{ns}/{}", r.name()),
        _ => r.name().to_string(),
    }
}

fn parse_revision(kind: Kind, name: &str, rv: &str) -> Result<Revision> {
    rv.parse::<Revision>().map_err(|_| {
        ClientError::Invalid(format!(
            "{kind} {name:?}: metadata.resourceVersion {rv:?} is not a revision number"
        ))
    })
}

impl Client {
    pub fn new(store: Arc<dyn Datastore>) -> Client {
        Client { store }
    }

    /// The underlying store, for raw access (IPAM, watches).
    pub fn store(&self) -> &Arc<dyn Datastore> {
        &self.store
    }

    /// Decodes a stored record leniently (fields this version does not know are
    /// dropped and returned), with the revision as its resourceVersion.
    fn decode_lenient(
        &self,
        kind: Kind,
        name: &str,
        kv: &tabby_store::KeyValue,
    ) -> Result<(Resource, Vec<tabby_api::load::Problem>)> {
        let corrupt = |message: String| ClientError::Corrupt {
            kind,
            name: name.to_string(),
            message,
        };
        let value: Value = serde_json::from_slice(&kv.value).map_err(|e| corrupt(e.to_string()))?;
        let (mut r, ignored) = tabby_api::load::from_json_value_lenient(value, &kv.key)
            .map_err(|e| corrupt(e.to_string()))?;
        r.set_resource_version(Some(kv.mod_revision.to_string()));
        Ok((r, ignored))
    }

    /// Decodes a stored record for reading: a field this version does not know
    /// (written by a newer version or by calicoctl) is a warning naming the key and
    /// field, never a failed read or list.
    fn decode(&self, kind: Kind, name: &str, kv: &tabby_store::KeyValue) -> Result<Resource> {
        let (r, ignored) = self.decode_lenient(kind, name, kv)?;
        for p in ignored {
            tracing::warn!("{p}");
        }
        Ok(r)
    }

    fn encode(r: &Resource) -> Vec<u8> {
        // The revision lives in the store, not in the value.
        let mut stored = r.clone();
        stored.set_resource_version(None);
        let mut v = stored.to_json_value();
        if let Some(meta) = v.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.remove("resourceVersion");
        }
        serde_json::to_vec(&v).expect("a JSON value always serialises")
    }

    /// One resource, or `None`.
    pub async fn get(
        &self,
        kind: Kind,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<Option<Resource>> {
        match self.store.get(&key_of(kind, namespace, name)).await? {
            Some(kv) => Ok(Some(self.decode(kind, name, &kv)?)),
            None => Ok(None),
        }
    }

    /// Like [`Client::get`], but absence is an error.
    pub async fn must_get(
        &self,
        kind: Kind,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<Resource> {
        self.get(kind, namespace, name)
            .await?
            .ok_or_else(|| ClientError::NotFound {
                kind,
                name: name.to_string(),
            })
    }

    /// Every resource of a kind; for namespaced kinds only `namespace` when given,
    /// else all namespaces. Sorted by namespace then name.
    pub async fn list(&self, kind: Kind, namespace: Option<&str>) -> Result<Vec<Resource>> {
        let ns = if kind.namespaced() { namespace } else { None };
        let prefix = keys::resource_prefix(kind.plural(), ns);
        let listed = self.store.list(&prefix).await?;
        let mut out = Vec::with_capacity(listed.kvs.len());
        for kv in &listed.kvs {
            let name = keys::parse_resource_key(&kv.key)
                .map(|(_, _, n)| n)
                .unwrap_or(&kv.key);
            out.push(self.decode(kind, name, kv)?);
        }
        Ok(out)
    }

    /// Fills defaults and validates one resource on its own and against what is
    /// stored (e.g. pool overlap). `existing` is the stored version for updates.
    pub async fn prepare(&self, r: &mut Resource, existing: Option<&Resource>) -> Result<()> {
        self.prepare_allowing_overlap(r, existing, &[]).await
    }

    /// [`Client::prepare`], except that an `IPPool` may overlap the pools named in
    /// `may_overlap`.
    pub async fn prepare_allowing_overlap(
        &self,
        r: &mut Resource,
        existing: Option<&Resource>,
        may_overlap: &[&str],
    ) -> Result<()> {
        if r.kind().namespaced() && r.namespace().is_none() {
            r.metadata.namespace = Some("default".to_string());
        }
        r.apply_defaults();
        r.validate()
            .map_err(|e| ClientError::Invalid(e.to_string()))?;
        if let Some(old) = existing {
            tabby_api::validate_update(old, r).map_err(|e| ClientError::Invalid(e.to_string()))?;
        }
        if r.kind() == Kind::IPPool {
            let others: Vec<Resource> = self
                .list(Kind::IPPool, None)
                .await?
                .into_iter()
                .filter(|p| p.name() != r.name() && !may_overlap.contains(&p.name()))
                .collect();
            tabby_api::validate_pool_overlaps(r, &others)
                .map_err(|e| ClientError::Invalid(e.to_string()))?;
        }
        Ok(())
    }

    /// Creates a resource that must not exist yet.
    pub async fn create(&self, r: Resource) -> Result<Resource> {
        self.create_allowing_overlap(r, &[]).await
    }

    /// [`Client::create`] for an `IPPool` that may overlap the pools named in
    /// `may_overlap` (and only those): what splitting a pool needs while the parent
    /// is still stored, as calicoctl's `UnsafeCreate` does.
    pub async fn create_allowing_overlap(
        &self,
        mut r: Resource,
        may_overlap: &[&str],
    ) -> Result<Resource> {
        self.prepare_allowing_overlap(&mut r, None, may_overlap)
            .await?;
        if r.metadata.uid.is_none() {
            r.metadata.uid = Some(time::new_uid());
        }
        if r.metadata.creation_timestamp.is_none() {
            r.metadata.creation_timestamp = Some(time::now_rfc3339());
        }
        let key = resource_key(&r);
        match self.store.create(&key, &Self::encode(&r)).await {
            Ok(rev) => {
                r.set_resource_version(Some(rev.to_string()));
                Ok(r)
            }
            Err(StoreError::AlreadyExists { .. }) => Err(ClientError::AlreadyExists {
                kind: r.kind(),
                name: display_name(&r),
            }),
            Err(e) => Err(e.into()),
        }
    }

    /// Replaces an existing resource. With `metadata.resourceVersion` set the write is a
    /// compare-and-swap on it (a stale version is a [`ClientError::Conflict`]); without,
    /// it replaces whatever is current, retrying if it loses a race.
    pub async fn replace(&self, r: Resource) -> Result<Resource> {
        let kind = r.kind();
        let name = display_name(&r);
        let key = resource_key(&r);
        let pinned = match r.resource_version() {
            Some(rv) => Some(parse_revision(kind, &name, rv)?),
            None => None,
        };
        for _ in 0..MAX_CAS_RETRIES {
            let Some(kv) = self.store.get(&key).await? else {
                return Err(ClientError::NotFound { kind, name });
            };
            if let Some(expected) = pinned
                && expected != kv.mod_revision
            {
                return Err(ClientError::Conflict {
                    kind,
                    name,
                    expected: expected.to_string(),
                    actual: kv.mod_revision.to_string(),
                });
            }
            let old = self.decode(kind, &name, &kv)?;
            let mut new = r.clone();
            // Server-owned metadata survives a replace.
            new.metadata.uid = old.metadata.uid.clone();
            new.metadata.creation_timestamp = old.metadata.creation_timestamp.clone();
            self.prepare(&mut new, Some(&old)).await?;
            match self
                .store
                .update(&key, &Self::encode(&new), kv.mod_revision)
                .await
            {
                Ok(rev) => {
                    new.set_resource_version(Some(rev.to_string()));
                    return Ok(new);
                }
                Err(StoreError::Conflict { actual, .. }) if pinned.is_some() => {
                    return Err(ClientError::Conflict {
                        kind,
                        name,
                        expected: kv.mod_revision.to_string(),
                        actual: actual.to_string(),
                    });
                }
                Err(e) if e.is_conflict() => continue,
                Err(StoreError::NotFound { .. }) => {
                    return Err(ClientError::NotFound { kind, name });
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(ClientError::TooManyConflicts { kind, name })
    }

    /// Creates the resource, or replaces it when it exists.
    pub async fn apply(&self, r: Resource) -> Result<(Resource, Applied)> {
        let kind = r.kind();
        let name = display_name(&r);
        for _ in 0..MAX_CAS_RETRIES {
            match self.create(r.clone()).await {
                Ok(created) => return Ok((created, Applied::Created)),
                Err(ClientError::AlreadyExists { .. }) => {}
                Err(e) => return Err(e),
            }
            match self.replace(r.clone()).await {
                Ok(updated) => return Ok((updated, Applied::Updated)),
                // Deleted between our create and replace: try again from the top.
                Err(ClientError::NotFound { .. }) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(ClientError::TooManyConflicts { kind, name })
    }

    /// Read-modify-write with automatic retry on a lost race: `f` is called on the
    /// current resource (again after each conflict) and its result is stored.
    pub async fn modify<F>(
        &self,
        kind: Kind,
        namespace: Option<&str>,
        name: &str,
        mut f: F,
    ) -> Result<Resource>
    where
        F: FnMut(&mut Resource) -> Result<()>,
    {
        let key = key_of(kind, namespace, name);
        for attempt in 0..MAX_CAS_RETRIES {
            if attempt > 0 {
                conflict_backoff(attempt).await;
            }
            let Some(kv) = self.store.get(&key).await? else {
                return Err(ClientError::NotFound {
                    kind,
                    name: name.to_string(),
                });
            };
            let (old, ignored) = self.decode_lenient(kind, name, &kv)?;
            if !ignored.is_empty() {
                // Writing it back would silently drop what a newer writer stored.
                let fields: Vec<String> = ignored.iter().filter_map(|p| p.path.clone()).collect();
                return Err(ClientError::Invalid(format!(
                    "{kind} {name:?}: not rewriting it: the stored record has fields this version does not know ({}), which would be lost",
                    fields.join(", ")
                )));
            }
            let mut new = old.clone();
            f(&mut new)?;
            if new.kind() != kind || new.name() != old.name() || new.namespace() != old.namespace()
            {
                return Err(ClientError::Invalid(format!(
                    "{kind} {name:?}: kind, metadata.name and metadata.namespace cannot be changed"
                )));
            }
            self.prepare(&mut new, Some(&old)).await?;
            match self
                .store
                .update(&key, &Self::encode(&new), kv.mod_revision)
                .await
            {
                Ok(rev) => {
                    new.set_resource_version(Some(rev.to_string()));
                    return Ok(new);
                }
                Err(e) if e.is_conflict() => continue,
                Err(StoreError::NotFound { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(ClientError::TooManyConflicts {
            kind,
            name: name.to_string(),
        })
    }

    /// Applies an RFC 7386 JSON merge patch to a stored resource.
    pub async fn patch(
        &self,
        kind: Kind,
        namespace: Option<&str>,
        name: &str,
        patch: &Value,
    ) -> Result<Resource> {
        self.modify(kind, namespace, name, |r| {
            let mut v = r.to_json_value();
            merge_patch(&mut v, patch);
            let source = format!("patch of {kind} {name:?}");
            let patched = tabby_api::load::from_json_value(v, &source)
                .map_err(|e| ClientError::Invalid(e.to_string()))?;
            *r = patched;
            Ok(())
        })
        .await
    }

    /// Deletes a resource; with `resource_version`, only if it is still that version.
    pub async fn delete(
        &self,
        kind: Kind,
        namespace: Option<&str>,
        name: &str,
        resource_version: Option<&str>,
    ) -> Result<Resource> {
        let expected = match resource_version {
            Some(rv) => Some(parse_revision(kind, name, rv)?),
            None => None,
        };
        let key = key_of(kind, namespace, name);
        match self.store.delete(&key, expected).await {
            Ok(kv) => self.decode(kind, name, &kv),
            Err(StoreError::NotFound { .. }) => Err(ClientError::NotFound {
                kind,
                name: name.to_string(),
            }),
            Err(StoreError::Conflict {
                expected, actual, ..
            }) => Err(ClientError::Conflict {
                kind,
                name: name.to_string(),
                expected: expected.to_string(),
                actual: actual.to_string(),
            }),
            Err(e) => Err(e.into()),
        }
    }
}
