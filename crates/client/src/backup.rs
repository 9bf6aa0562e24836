//! Whole-datastore backup, restore and migration: every key under `/calico/` (the v3
//! resources, the IPAM blocks, handles, affinities and configuration, and anything
//! else stored there) read at one revision ([`export`]), written to one YAML or JSON
//! file ([`Snapshot::to_yaml`], [`Snapshot::to_json`], [`Snapshot::parse`]), checked
//! before anything is written, written to another store ([`import`]) and compared with
//! it key by key ([`verify`]).
//!
//! The store has no multi-key transaction, so [`import`] makes "all or nothing" by
//! undoing: each write is a compare-and-swap, and on the first failure the writes
//! already made are reverted (each only if nobody changed the key since). Resources are
//! kept exactly as stored (no `resourceVersion`: the revision lives in the store); IPAM
//! keys are kept raw.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tabby_api::Kind;
use tabby_ipam::{AllocationBlock, BlockAffinity, IpamConfig, IpamHandle};
use tabby_store::{Datastore, KeyValue, Revision, StoreError, keys};

/// Every key a backup holds starts with this.
pub const ROOT: &str = "/calico/";

/// `apiVersion` of an export file.
pub const API_VERSION: &str = "tabby/v1";

/// `kind` of an export file.
pub const KIND: &str = "DatastoreExport";

/// One stored key and its value, byte for byte.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The key, under [`ROOT`].
    pub key: String,
    /// The stored bytes (JSON for everything Tabby and Calico write).
    pub value: Vec<u8>,
}

/// Where a snapshot came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// The source store, e.g. `sqlite:///var/lib/tabby/store.db`.
    pub source: String,
    /// The store revision every key was read at.
    pub revision: Revision,
    /// When, RFC 3339 UTC.
    pub exported_at: String,
    /// The program that wrote it, e.g. `tabbyctl v0.1.0`.
    pub exported_by: String,
}

/// A store's `/calico/` tree at one revision, sorted by key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    /// Where and when it was taken.
    pub header: Header,
    /// Every key, sorted, each once.
    pub entries: Vec<Entry>,
}

/// The part of the tree a key belongs to; the file lists each in its own section.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Section {
    /// v3 resources, `/calico/resources/v3/projectcalico.org/...`.
    Resources,
    /// IPAM state, `/calico/ipam/v2/...`.
    Ipam,
    /// Anything else under `/calico/`.
    Other,
}

impl Section {
    /// The section's name in the file.
    pub fn name(self) -> &'static str {
        match self {
            Section::Resources => "resources",
            Section::Ipam => "ipam",
            Section::Other => "other",
        }
    }

    /// The section of `key`.
    pub fn of(key: &str) -> Section {
        if key.starts_with(keys::RESOURCES_PREFIX) {
            Section::Resources
        } else if key.starts_with(keys::IPAM_PREFIX) {
            Section::Ipam
        } else {
            Section::Other
        }
    }
}

/// Keys counted by section.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// v3 resources.
    pub resources: usize,
    /// IPAM keys.
    pub ipam: usize,
    /// Other keys.
    pub other: usize,
}

impl fmt::Display for Counts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} resources, {} IPAM keys", self.resources, self.ipam)?;
        if self.other > 0 {
            write!(f, ", {} other keys", self.other)?;
        }
        Ok(())
    }
}

/// One problem with one entry of an export, found before anything is written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntryProblem {
    /// The section and position in the file, e.g. `ipam[3]`.
    pub at: String,
    /// The entry's key.
    pub key: String,
    /// What is wrong, with the field when there is one.
    pub message: String,
}

impl fmt::Display for EntryProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.at, self.key, self.message)
    }
}

/// A write that was undone, or could not be, after an import failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UndoFailure {
    /// The key left as the import wrote it.
    pub key: String,
    /// Why it could not be put back.
    pub reason: String,
}

/// Why a backup could not be read, checked, written or verified.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// The file is not an export (syntax, shape, header).
    #[error("{file}: {message}")]
    Format {
        /// The file's name.
        file: String,
        /// What is wrong, with the line when known.
        message: String,
    },
    /// Entries that would be written wrongly; nothing was written.
    #[error("{file}: {} bad entries, nothing was written:\n  {}", .problems.len(), join(.problems))]
    Entries {
        /// The file's name.
        file: String,
        /// Every problem found.
        problems: Vec<EntryProblem>,
    },
    /// A value that cannot go in a text file.
    #[error("{key}: the stored value is not UTF-8 text; it cannot be exported")]
    Binary {
        /// The key.
        key: String,
    },
    /// The target holds keys and the import was not told to merge.
    #[error(
        "{target} is not empty: it holds {count} keys under /calico/ (the first is {first}); import into an empty store, or merge with --force"
    )]
    NotEmpty {
        /// The target store.
        target: String,
        /// How many keys it holds.
        count: usize,
        /// The first of them.
        first: String,
    },
    /// A write failed; the writes before it were undone (see `undo_failures`).
    #[error("{}", write_failure(.key, .error, *.written, *.total, .undo_failures))]
    Write {
        /// The key whose write failed.
        key: String,
        /// The store's answer.
        error: StoreError,
        /// Writes made before the failure (all undone unless listed in `undo_failures`).
        written: usize,
        /// Writes planned.
        total: usize,
        /// Writes that could not be undone.
        undo_failures: Vec<UndoFailure>,
    },
    /// Reading the store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn join(problems: &[EntryProblem]) -> String {
    problems
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n  ")
}

fn write_failure(
    key: &str,
    error: &StoreError,
    written: usize,
    total: usize,
    undo: &[UndoFailure],
) -> String {
    let mut s = format!("writing {key} failed: {error}; ");
    if undo.is_empty() {
        s.push_str(&format!(
            "the {written} of {total} writes made before it were undone, so the store is as it was"
        ));
    } else {
        s.push_str(&format!(
            "{} of the {written} writes made before it could not be undone (another writer changed them); those keys hold the imported values:",
            undo.len()
        ));
        for u in undo {
            s.push_str(&format!("\n  {}: {}", u.key, u.reason));
        }
    }
    s
}

impl Snapshot {
    /// Keys counted by section.
    pub fn counts(&self) -> Counts {
        let mut c = Counts::default();
        for e in &self.entries {
            match Section::of(&e.key) {
                Section::Resources => c.resources += 1,
                Section::Ipam => c.ipam += 1,
                Section::Other => c.other += 1,
            }
        }
        c
    }

    fn to_file(&self) -> Result<File, BackupError> {
        let mut file = File {
            api_version: API_VERSION.to_string(),
            kind: KIND.to_string(),
            metadata: FileMeta {
                source: self.header.source.clone(),
                revision: self.header.revision,
                exported_at: self.header.exported_at.clone(),
                exported_by: self.header.exported_by.clone(),
                keys: self.entries.len(),
            },
            resources: Vec::new(),
            ipam: Vec::new(),
            other: Vec::new(),
        };
        for e in &self.entries {
            let text = std::str::from_utf8(&e.value)
                .map_err(|_| BackupError::Binary { key: e.key.clone() })?;
            let entry = match serde_json::from_str::<Value>(text) {
                Ok(v) if !v.is_null() => FileEntry {
                    key: e.key.clone(),
                    value: Some(v),
                    text: None,
                },
                _ => FileEntry {
                    key: e.key.clone(),
                    value: None,
                    text: Some(text.to_string()),
                },
            };
            match Section::of(&e.key) {
                Section::Resources => file.resources.push(entry),
                Section::Ipam => file.ipam.push(entry),
                Section::Other => file.other.push(entry),
            }
        }
        Ok(file)
    }

    /// The snapshot as a YAML document.
    pub fn to_yaml(&self) -> Result<String, BackupError> {
        let file = self.to_file()?;
        serde_saphyr::to_string(&file).map_err(|e| BackupError::Format {
            file: "<export>".to_string(),
            message: format!("cannot render as YAML: {e}"),
        })
    }

    /// The snapshot as an indented JSON document.
    pub fn to_json(&self) -> Result<String, BackupError> {
        let file = self.to_file()?;
        serde_json::to_string_pretty(&file)
            .map(|s| s + "\n")
            .map_err(|e| BackupError::Format {
                file: "<export>".to_string(),
                message: format!("cannot render as JSON: {e}"),
            })
    }

    /// Reads an export (YAML, or JSON when it starts with `{`) and checks every entry
    /// ([`check_entries`]); `file` names it in errors. Resources lose any
    /// `metadata.resourceVersion` a hand edit added.
    pub fn parse(text: &str, file: &str) -> Result<Snapshot, BackupError> {
        let format_error = |message: String| BackupError::Format {
            file: file.to_string(),
            message,
        };
        let body = text.trim_start_matches('\u{feff}').trim_start();
        let parsed: File = if body.starts_with('{') {
            serde_json::from_str(body).map_err(|e| format_error(e.to_string()))?
        } else {
            // An export is data, so no aliases: memory then grows with the text only.
            let options = serde_saphyr::options! {
                with_snippet: false,
                budget: serde_saphyr::budget! {
                    max_documents: 1,
                    max_aliases: 0,
                    max_anchors: 0,
                    max_nodes: text.len().max(1024),
                    max_events: 2 * text.len().max(1024),
                    max_total_scalar_bytes: text.len().max(1024),
                    max_reader_input_bytes: None,
                },
            };
            serde_saphyr::from_str_with_options(text, options)
                .map_err(|e| format_error(e.without_snippet().to_string()))?
        };
        if parsed.kind != KIND || parsed.api_version != API_VERSION {
            return Err(format_error(format!(
                "apiVersion {:?}, kind {:?}: expected {API_VERSION} {KIND} (a file from `tabbyctl datastore export`)",
                parsed.api_version, parsed.kind
            )));
        }
        let listed = parsed.resources.len() + parsed.ipam.len() + parsed.other.len();
        if listed != parsed.metadata.keys {
            return Err(format_error(format!(
                "metadata.keys says {} keys but the file lists {listed}; is it truncated?",
                parsed.metadata.keys
            )));
        }
        let header = Header {
            source: parsed.metadata.source,
            revision: parsed.metadata.revision,
            exported_at: parsed.metadata.exported_at,
            exported_by: parsed.metadata.exported_by,
        };
        let mut problems = Vec::new();
        let mut entries = Vec::with_capacity(listed);
        for (section, list) in [
            (Section::Resources, parsed.resources),
            (Section::Ipam, parsed.ipam),
            (Section::Other, parsed.other),
        ] {
            for (i, e) in list.into_iter().enumerate() {
                let at = format!("{}[{i}]", section.name());
                let problem = |message: String| EntryProblem {
                    at: at.clone(),
                    key: e.key.clone(),
                    message,
                };
                if Section::of(&e.key) != section || !e.key.starts_with(ROOT) {
                    problems.push(problem(format!(
                        "key belongs in {}",
                        if e.key.starts_with(ROOT) {
                            Section::of(&e.key).name()
                        } else {
                            "no section: keys start with /calico/"
                        }
                    )));
                    continue;
                }
                let value = match (e.value, e.text) {
                    (Some(mut v), None) => {
                        if section == Section::Resources
                            && let Some(meta) = v.get_mut("metadata").and_then(Value::as_object_mut)
                        {
                            meta.remove("resourceVersion");
                        }
                        serde_json::to_vec(&v).expect("a JSON value always serialises")
                    }
                    (None, Some(t)) => t.into_bytes(),
                    _ => {
                        problems.push(problem("give exactly one of value and text".into()));
                        continue;
                    }
                };
                entries.push((at, Entry { key: e.key, value }));
            }
        }
        entries.sort_by(|a, b| a.1.key.cmp(&b.1.key));
        for pair in entries.windows(2) {
            if pair[0].1.key == pair[1].1.key {
                problems.push(EntryProblem {
                    at: format!("{} and {}", pair[0].0, pair[1].0),
                    key: pair[0].1.key.clone(),
                    message: "the key is listed twice".into(),
                });
            }
        }
        for (at, e) in &entries {
            if let Err(message) = check_entry(e) {
                problems.push(EntryProblem {
                    at: at.clone(),
                    key: e.key.clone(),
                    message,
                });
            }
        }
        if !problems.is_empty() {
            return Err(BackupError::Entries {
                file: file.to_string(),
                problems,
            });
        }
        Ok(Snapshot {
            header,
            entries: entries.into_iter().map(|(_, e)| e).collect(),
        })
    }
}

/// The file's shape.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct File {
    api_version: String,
    kind: String,
    metadata: FileMeta,
    #[serde(default)]
    resources: Vec<FileEntry>,
    #[serde(default)]
    ipam: Vec<FileEntry>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    other: Vec<FileEntry>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct FileMeta {
    source: String,
    revision: Revision,
    exported_at: String,
    exported_by: String,
    keys: usize,
}

/// A key with its value as JSON, or as `text` when the stored bytes are not a JSON
/// value (a legacy empty affinity).
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileEntry {
    key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    value: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    text: Option<String>,
}

fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        if path == "." {
            e.inner().to_string()
        } else {
            format!("{path}: {}", e.inner())
        }
    })
}

/// Whether an entry's value is what its key says: a resource of the kind, namespace
/// and name of its key, an IPAM block of the key's CIDR, a handle, an affinity or the
/// IPAM configuration. Resources of kinds Tabby does not know, and other keys, need
/// only be JSON objects or text.
pub fn check_entry(e: &Entry) -> Result<(), String> {
    match Section::of(&e.key) {
        Section::Resources => check_resource(e),
        Section::Ipam => check_ipam(e),
        Section::Other => Ok(()),
    }
}

fn check_resource(e: &Entry) -> Result<(), String> {
    let Some((plural, ns, name)) = keys::parse_resource_key(&e.key) else {
        return Err("not a resource key (…/<plural>/[<namespace>/]<name>)".into());
    };
    let value: Value =
        serde_json::from_slice(&e.value).map_err(|err| format!("value: not JSON: {err}"))?;
    if !value.is_object() {
        return Err("value: expected a resource object".into());
    }
    let Some(kind) = Kind::all().iter().copied().find(|k| k.plural() == plural) else {
        return Ok(());
    };
    let (r, _ignored) = tabby_api::load::from_json_value_lenient(value, &e.key).map_err(|err| {
        err.problems
            .iter()
            .map(|p| {
                let mut s = String::new();
                if let Some(path) = &p.path {
                    s.push_str(path);
                    s.push_str(": ");
                }
                s.push_str(&p.message);
                s
            })
            .collect::<Vec<_>>()
            .join("; ")
    })?;
    let want_ns = if kind.namespaced() { ns } else { None };
    if r.kind() != kind || r.name() != name || (kind.namespaced() && r.namespace() != want_ns) {
        return Err(format!(
            "the key names {} {:?} but the value is {} {:?}",
            kind,
            match want_ns {
                Some(ns) => format!("{ns}/{name}"),
                None => name.to_string(),
            },
            r.kind(),
            r.display_name()
        ));
    }
    Ok(())
}

fn check_ipam(e: &Entry) -> Result<(), String> {
    if let Some(cidr) = tabby_ipam::keys::parse_block_key(&e.key) {
        let b: AllocationBlock = decode(&e.value)?;
        // Inconsistent allocations are `ipam check`'s business; a copy keeps them.
        if b.cidr != cidr {
            return Err(format!("cidr: {} is not the key's block {cidr}", b.cidr));
        }
    } else if tabby_ipam::keys::parse_handle_key(&e.key).is_some() {
        decode::<IpamHandle>(&e.value)?;
    } else if tabby_ipam::keys::parse_affinity_key(&e.key).is_some() {
        BlockAffinity::from_bytes(&e.value).map_err(|err| err.to_string())?;
    } else if e.key == tabby_ipam::keys::config_key() {
        decode::<IpamConfig>(&e.value)?;
    }
    Ok(())
}

/// Reads every key under [`ROOT`] at one revision.
pub async fn export(store: &dyn Datastore, exported_by: &str) -> Result<Snapshot, StoreError> {
    let listed = store.list(ROOT).await?;
    Ok(Snapshot {
        header: Header {
            source: store.endpoint(),
            revision: listed.revision,
            exported_at: crate::time::now_rfc3339(),
            exported_by: exported_by.to_string(),
        },
        entries: listed
            .kvs
            .into_iter()
            .map(|kv| Entry {
                key: kv.key,
                value: kv.value,
            })
            .collect(),
    })
}

/// What [`import`] may do to a store that already holds keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImportMode {
    /// Refuse unless the store holds nothing under [`ROOT`] (the default).
    IntoEmpty,
    /// Create or overwrite the snapshot's keys; keep the store's other keys.
    Merge,
    /// As `Merge`, and delete the store's keys the snapshot does not hold, so the store
    /// ends equal to the snapshot.
    Replace,
}

/// What [`import`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ImportReport {
    /// Keys created.
    pub created: usize,
    /// Keys whose value was replaced.
    pub updated: usize,
    /// Keys that already held the snapshot's value.
    pub unchanged: usize,
    /// Keys deleted (`Replace` only).
    pub deleted: usize,
}

/// The order keys are written in, so a store being watched fills in a sensible order:
/// IPAM configuration, handles (before the blocks that count on them, as Calico
/// writes them), blocks, affinities, then resources, settings and pools before nodes
/// and policies, endpoints last. Unknown keys go first (other) or last (resources).
fn write_rank(key: &str) -> u8 {
    match Section::of(key) {
        Section::Other => 0,
        Section::Ipam => {
            if key == tabby_ipam::keys::config_key() {
                1
            } else if tabby_ipam::keys::parse_handle_key(key).is_some() {
                2
            } else if tabby_ipam::keys::parse_block_key(key).is_some() {
                3
            } else {
                4
            }
        }
        Section::Resources => {
            let plural = keys::parse_resource_key(key).map_or("", |(p, _, _)| p);
            10 + match plural {
                "felixconfigurations"
                | "bgpconfigurations"
                | "ipamconfigurations"
                | "clusterinformations" => 0,
                "tiers" => 1,
                "ippools" => 2,
                "nodes" => 3,
                "profiles" => 4,
                "bgpfilters" => 5,
                "bgppeers" => 6,
                "globalnetworkpolicies" | "networkpolicies" => 7,
                "globalnetworksets" | "networksets" => 8,
                "hostendpoints" => 9,
                "workloadendpoints" => 10,
                _ => 11,
            }
        }
    }
}

/// One planned write.
enum Step<'a> {
    Create(&'a Entry),
    Update(&'a Entry, &'a KeyValue),
    Delete(&'a KeyValue),
}

impl Step<'_> {
    fn key(&self) -> &str {
        match self {
            Step::Create(e) | Step::Update(e, _) => &e.key,
            Step::Delete(kv) => &kv.key,
        }
    }
}

/// One write made, and how to take it back.
enum Done {
    /// Created at this revision: delete it if still there at that revision.
    Created { key: String, revision: Revision },
    /// Replaced `old` at this revision: put `old` back if still at that revision.
    Updated {
        key: String,
        revision: Revision,
        old: Vec<u8>,
    },
    /// Deleted `old`: create it again if still absent.
    Deleted { key: String, old: Vec<u8> },
}

async fn undo(store: &dyn Datastore, done: Vec<Done>) -> Vec<UndoFailure> {
    let mut failures = Vec::new();
    for d in done.into_iter().rev() {
        let (key, result) = match d {
            Done::Created { key, revision } => {
                let r = store.delete(&key, Some(revision)).await.map(|_| ());
                (key, r)
            }
            Done::Updated { key, revision, old } => {
                let r = store.update(&key, &old, revision).await.map(|_| ());
                (key, r)
            }
            Done::Deleted { key, old } => {
                let r = store.create(&key, &old).await.map(|_| ());
                (key, r)
            }
        };
        if let Err(e) = result {
            failures.push(UndoFailure {
                key,
                reason: e.to_string(),
            });
        }
    }
    failures
}

/// Writes a snapshot into `store` (see [`ImportMode`]). Every write is a
/// compare-and-swap against what was read when planning, so a concurrent writer makes
/// the import fail rather than be overwritten; on the first failure every write made
/// is undone and [`BackupError::Write`] names the key.
pub async fn import(
    store: &dyn Datastore,
    snapshot: &Snapshot,
    mode: ImportMode,
) -> Result<ImportReport, BackupError> {
    let existing = store.list(ROOT).await?;
    if mode == ImportMode::IntoEmpty
        && let Some(first) = existing.kvs.first()
    {
        return Err(BackupError::NotEmpty {
            target: store.endpoint(),
            count: existing.kvs.len(),
            first: first.key.clone(),
        });
    }
    let current: BTreeMap<&str, &KeyValue> = existing
        .kvs
        .iter()
        .map(|kv| (kv.key.as_str(), kv))
        .collect();
    let mut report = ImportReport::default();
    let mut steps: Vec<Step<'_>> = Vec::new();
    for e in &snapshot.entries {
        match current.get(e.key.as_str()) {
            Some(kv) if kv.value == e.value => report.unchanged += 1,
            Some(kv) => steps.push(Step::Update(e, kv)),
            None => steps.push(Step::Create(e)),
        }
    }
    steps.sort_by_key(|s| write_rank(s.key()));
    if mode == ImportMode::Replace {
        let wanted: BTreeSet<&str> = snapshot.entries.iter().map(|e| e.key.as_str()).collect();
        let mut deletes: Vec<Step<'_>> = existing
            .kvs
            .iter()
            .filter(|kv| !wanted.contains(kv.key.as_str()))
            .map(Step::Delete)
            .collect();
        // Endpoints go before the pools and nodes they refer to.
        deletes.sort_by_key(|s| std::cmp::Reverse(write_rank(s.key())));
        steps.extend(deletes);
    }

    let total = steps.len();
    let mut done: Vec<Done> = Vec::with_capacity(total);
    for step in &steps {
        let result = match step {
            Step::Create(e) => store.create(&e.key, &e.value).await.map(|revision| {
                report.created += 1;
                Done::Created {
                    key: e.key.clone(),
                    revision,
                }
            }),
            Step::Update(e, kv) => {
                store
                    .update(&e.key, &e.value, kv.mod_revision)
                    .await
                    .map(|revision| {
                        report.updated += 1;
                        Done::Updated {
                            key: e.key.clone(),
                            revision,
                            old: kv.value.clone(),
                        }
                    })
            }
            Step::Delete(kv) => store.delete(&kv.key, Some(kv.mod_revision)).await.map(|_| {
                report.deleted += 1;
                Done::Deleted {
                    key: kv.key.clone(),
                    old: kv.value.clone(),
                }
            }),
        };
        match result {
            Ok(d) => done.push(d),
            Err(error) => {
                let written = done.len();
                let undo_failures = undo(store, done).await;
                return Err(BackupError::Write {
                    key: step.key().to_string(),
                    error,
                    written,
                    total,
                    undo_failures,
                });
            }
        }
    }
    Ok(report)
}

/// A key where a store and a snapshot disagree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Difference {
    /// In the snapshot, not in the store.
    Missing(String),
    /// In the store, not in the snapshot (reported only when comparing exactly).
    Extra(String),
    /// In both, with different values.
    Changed(String),
}

impl fmt::Display for Difference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Difference::Missing(k) => write!(f, "{k}: missing"),
            Difference::Extra(k) => write!(f, "{k}: not in the export"),
            Difference::Changed(k) => write!(f, "{k}: value differs"),
        }
    }
}

/// Compares `store`'s `/calico/` tree with the snapshot, byte for byte. With `exact`,
/// keys the snapshot does not hold are differences too.
pub async fn verify(
    store: &dyn Datastore,
    snapshot: &Snapshot,
    exact: bool,
) -> Result<Vec<Difference>, StoreError> {
    let listed = store.list(ROOT).await?;
    let stored: BTreeMap<&str, &[u8]> = listed
        .kvs
        .iter()
        .map(|kv| (kv.key.as_str(), kv.value.as_slice()))
        .collect();
    let mut out = Vec::new();
    let mut wanted = BTreeSet::new();
    for e in &snapshot.entries {
        wanted.insert(e.key.as_str());
        match stored.get(e.key.as_str()) {
            None => out.push(Difference::Missing(e.key.clone())),
            Some(v) if *v != e.value.as_slice() => out.push(Difference::Changed(e.key.clone())),
            Some(_) => {}
        }
    }
    if exact {
        out.extend(
            stored
                .keys()
                .filter(|k| !wanted.contains(*k))
                .map(|k| Difference::Extra((*k).to_string())),
        );
    }
    out.sort_by(|a, b| key_of(a).cmp(key_of(b)));
    Ok(out)
}

fn key_of(d: &Difference) -> &str {
    match d {
        Difference::Missing(k) | Difference::Extra(k) | Difference::Changed(k) => k,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    use async_trait::async_trait;
    use tabby_api::Resource;
    use tabby_ipam::{AutoAssignArgs, TunnelKind};
    use tabby_store::sqlite::SqliteStore;
    use tabby_store::{ListResult, WatchStream};

    use crate::Client;

    async fn sqlite(dir: &tempfile::TempDir, name: &str) -> Arc<dyn Datastore> {
        Arc::new(SqliteStore::open(dir.path().join(name)).await.unwrap())
    }

    fn resources(text: &str) -> Vec<Resource> {
        tabby_api::load::parse_documents(text, "test").unwrap()
    }

    const CLUSTER: &str = "\
apiVersion: projectcalico.org/v3
kind: IPPool
metadata: {name: pods}
spec: {cidr: 10.20.0.0/24, blockSize: 26}
---
apiVersion: projectcalico.org/v3
kind: Node
metadata: {name: node1, labels: {rack: r1}}
spec: {bgp: {ipv4Address: 10.0.0.1/24, asNumber: 64513}}
---
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: allow-dns, namespace: prod}
spec: {selector: all(), egress: [{action: Allow, protocol: UDP, destination: {ports: [53]}}]}
---
apiVersion: projectcalico.org/v3
kind: IPAMConfiguration
metadata: {name: default}
spec: {strictAffinity: true, maxBlocksPerHost: 4}
";

    /// A store with resources, IPAM blocks, handles, affinities, a legacy empty
    /// affinity, a kind Tabby does not know and a key outside both trees.
    async fn populated(dir: &tempfile::TempDir) -> Arc<dyn Datastore> {
        let store = sqlite(dir, "source.db").await;
        let client = Client::new(Arc::clone(&store));
        for r in resources(CLUSTER) {
            client.create(r).await.unwrap();
        }
        let ipam = crate::ipam::ipam_for(&client);
        for (node, handle) in [
            ("node1", "k8s-pod-network.a"),
            ("node2", "k8s-pod-network.b"),
        ] {
            ipam.auto_assign(&AutoAssignArgs::new(node, 2, 0).with_handle(handle))
                .await
                .unwrap();
        }
        ipam.ensure_tunnel_address("node1", TunnelKind::Vxlan, &[])
            .await
            .unwrap();
        // node2's affinity in the legacy spelling: an empty value means confirmed.
        let affinity = store
            .list("/calico/ipam/v2/host/node2/ipv4/block/")
            .await
            .unwrap()
            .kvs
            .remove(0);
        store
            .update(&affinity.key, b"", affinity.mod_revision)
            .await
            .unwrap();
        store
            .create(
                "/calico/resources/v3/projectcalico.org/kubecontrollersconfigurations/default",
                br#"{"apiVersion":"projectcalico.org/v3","kind":"KubeControllersConfiguration","metadata":{"name":"default"},"spec":{"logSeverityScreen":"Info"}}"#,
            )
            .await
            .unwrap();
        store
            .create(
                "/calico/felix/v2/no-region/host/node1/status",
                br#"{"up":true}"#,
            )
            .await
            .unwrap();
        store
    }

    fn as_json(bytes: &[u8]) -> Value {
        serde_json::from_slice(bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(bytes).into()))
    }

    #[tokio::test]
    async fn export_file_import_verify_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let source = populated(&dir).await;
        let snap = export(source.as_ref(), "test").await.unwrap();
        let counts = snap.counts();
        assert_eq!(counts.resources, 5, "{:?}", snap.entries);
        assert_eq!(counts.other, 1);
        assert_eq!(
            counts.ipam, 7,
            "2 blocks, 3 handles, 2 affinities: {counts}"
        );
        assert_eq!(snap.header.source, source.endpoint());
        assert_eq!(snap.header.revision, source.revision().await.unwrap());

        for (format, text) in [
            ("yaml", snap.to_yaml().unwrap()),
            ("json", snap.to_json().unwrap()),
        ] {
            let parsed = Snapshot::parse(&text, &format!("backup.{format}")).unwrap();
            assert_eq!(parsed.header, snap.header);
            assert_eq!(parsed.entries.len(), snap.entries.len());
            for (a, b) in parsed.entries.iter().zip(&snap.entries) {
                assert_eq!(a.key, b.key);
                if Section::of(&a.key) == Section::Resources {
                    assert_eq!(a.value, b.value, "{format}: {} kept byte for byte", a.key);
                } else {
                    assert_eq!(as_json(&a.value), as_json(&b.value), "{format}: {}", a.key);
                }
            }

            let target = sqlite(&dir, &format!("target-{format}.db")).await;
            let report = import(target.as_ref(), &parsed, ImportMode::IntoEmpty)
                .await
                .unwrap();
            assert_eq!(report.created, snap.entries.len());
            assert_eq!(verify(target.as_ref(), &parsed, true).await.unwrap(), []);
            // The target reads as the source did.
            let client = Client::new(Arc::clone(&target));
            let node = client.must_get(Kind::Node, None, "node1").await.unwrap();
            assert_eq!(node.labels()["rack"], "r1");
            let ipam = crate::ipam::ipam_for(&client);
            assert!(ipam.ipam_config().await.unwrap().strict_affinity);
            let report = ipam.check().await.unwrap();
            assert!(report.is_clean(), "{report:?}");
            assert_eq!(
                ipam.ips_by_handle("k8s-pod-network.a").await.unwrap().len(),
                2
            );
        }
    }

    #[tokio::test]
    async fn a_non_empty_store_needs_merge_or_replace() {
        let dir = tempfile::tempdir().unwrap();
        let source = populated(&dir).await;
        let snap = export(source.as_ref(), "test").await.unwrap();
        let target = sqlite(&dir, "target.db").await;
        let pool = "/calico/resources/v3/projectcalico.org/ippools/pods";
        let extra = "/calico/resources/v3/projectcalico.org/ippools/extra";
        target.create(pool, b"{}").await.unwrap();
        target.create(extra, b"{}").await.unwrap();

        let e = import(target.as_ref(), &snap, ImportMode::IntoEmpty)
            .await
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "{} is not empty: it holds 2 keys under /calico/ (the first is {extra}); import into an empty store, or merge with --force",
                target.endpoint()
            )
        );
        let r = import(target.as_ref(), &snap, ImportMode::Merge)
            .await
            .unwrap();
        assert_eq!(
            (r.created, r.updated, r.deleted),
            (snap.entries.len() - 1, 1, 0)
        );
        assert_eq!(verify(target.as_ref(), &snap, false).await.unwrap(), []);
        assert_eq!(
            verify(target.as_ref(), &snap, true).await.unwrap(),
            [Difference::Extra(extra.to_string())]
        );
        let r = import(target.as_ref(), &snap, ImportMode::Replace)
            .await
            .unwrap();
        assert_eq!(
            (r.created, r.updated, r.unchanged, r.deleted),
            (0, 0, snap.entries.len(), 1)
        );
        assert_eq!(verify(target.as_ref(), &snap, true).await.unwrap(), []);
    }

    /// A store that fails writes to one key, as a full disk or a lost quorum would.
    #[derive(Debug)]
    struct FailOn {
        inner: Arc<dyn Datastore>,
        key: String,
    }

    impl FailOn {
        fn check(&self, key: &str) -> tabby_store::Result<()> {
            if key == self.key {
                return Err(StoreError::Unavailable {
                    endpoint: "test".into(),
                    message: "no quorum".into(),
                });
            }
            Ok(())
        }
    }

    #[async_trait]
    impl Datastore for FailOn {
        async fn get(&self, key: &str) -> tabby_store::Result<Option<KeyValue>> {
            self.inner.get(key).await
        }
        async fn list(&self, prefix: &str) -> tabby_store::Result<ListResult> {
            self.inner.list(prefix).await
        }
        async fn create(&self, key: &str, value: &[u8]) -> tabby_store::Result<Revision> {
            self.check(key)?;
            self.inner.create(key, value).await
        }
        async fn update(
            &self,
            key: &str,
            value: &[u8],
            expected: Revision,
        ) -> tabby_store::Result<Revision> {
            self.check(key)?;
            self.inner.update(key, value, expected).await
        }
        async fn delete(
            &self,
            key: &str,
            expected: Option<Revision>,
        ) -> tabby_store::Result<KeyValue> {
            self.inner.delete(key, expected).await
        }
        async fn watch(&self, prefix: &str, from: Revision) -> tabby_store::Result<WatchStream> {
            self.inner.watch(prefix, from).await
        }
        async fn revision(&self) -> tabby_store::Result<Revision> {
            self.inner.revision().await
        }
        fn endpoint(&self) -> String {
            self.inner.endpoint()
        }
    }

    #[tokio::test]
    async fn a_failed_write_undoes_the_import() {
        let dir = tempfile::tempdir().unwrap();
        let source = populated(&dir).await;
        let snap = export(source.as_ref(), "test").await.unwrap();
        let inner = sqlite(&dir, "target.db").await;
        // Endpoints and policies are written last: the policy fails after the rest.
        let policy = "/calico/resources/v3/projectcalico.org/networkpolicies/prod/allow-dns";
        let failing = FailOn {
            inner: Arc::clone(&inner),
            key: policy.to_string(),
        };
        let e = import(&failing, &snap, ImportMode::IntoEmpty)
            .await
            .unwrap_err();
        let BackupError::Write {
            key,
            written,
            total,
            undo_failures,
            ..
        } = &e
        else {
            panic!("{e}");
        };
        assert_eq!(key, policy);
        assert_eq!(*total, snap.entries.len());
        assert!(*written > 5, "{e}");
        assert!(undo_failures.is_empty(), "{e}");
        assert!(
            e.to_string().starts_with(&format!("writing {policy} failed: datastore test: no quorum; the {written} of {total} writes made before it were undone")),
            "{e}"
        );
        assert!(
            inner.list(ROOT).await.unwrap().kvs.is_empty(),
            "nothing left behind"
        );

        // Merging: overwritten keys get their old values back.
        let pool = "/calico/resources/v3/projectcalico.org/ippools/pods";
        inner.create(pool, b"{\"old\":true}").await.unwrap();
        import(&failing, &snap, ImportMode::Merge)
            .await
            .unwrap_err();
        let left = inner.list(ROOT).await.unwrap().kvs;
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].value, b"{\"old\":true}");
    }

    #[tokio::test]
    async fn bad_entries_are_named_and_nothing_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let source = populated(&dir).await;
        let good = export(source.as_ref(), "test")
            .await
            .unwrap()
            .to_yaml()
            .unwrap();
        let mut doc: Value = serde_saphyr::from_str(&good).unwrap();
        let resources = doc["resources"].as_array_mut().unwrap();
        let pool_at = resources
            .iter()
            .position(|e| e["key"].as_str().unwrap().ends_with("/ippools/pods"))
            .unwrap();
        resources[pool_at]["value"]["metadata"]["name"] = "other".into();
        resources[pool_at]["value"]["metadata"]["resourceVersion"] = "7".into();
        let node_at = resources
            .iter()
            .position(|e| e["key"].as_str().unwrap().ends_with("/nodes/node1"))
            .unwrap();
        resources[node_at]["value"]["spec"]["bgp"]["asNumber"] = "lots".into();
        let dup = resources[node_at].clone();
        resources.push(dup);
        let dup_at = resources.len() - 1;
        let ipam = doc["ipam"].as_array_mut().unwrap();
        let block_at = ipam
            .iter()
            .position(|e| e["key"].as_str().unwrap().contains("/block/"))
            .unwrap();
        ipam[block_at]["value"]["cidr"] = "10.99.0.0/26".into();
        ipam.push(serde_json::json!({"key": "/calico/ipam/v2/handle/x", "value": {"block": 3}}));
        ipam.push(serde_json::json!({"key": "/calico/resources/v3/projectcalico.org/ippools/y", "value": {}}));
        let n = doc["resources"].as_array().unwrap().len()
            + doc["ipam"].as_array().unwrap().len()
            + doc["other"].as_array().map_or(0, Vec::len);
        doc["metadata"]["keys"] = n.into();
        let text = serde_json::to_string_pretty(&doc).unwrap();
        let e = Snapshot::parse(&text, "backup.json").unwrap_err();
        let BackupError::Entries { problems, .. } = &e else {
            panic!("{e}");
        };
        let text = e.to_string();
        assert!(
            text.starts_with(&format!(
                "backup.json: {} bad entries, nothing was written:",
                problems.len()
            )),
            "{text}"
        );
        assert_eq!(problems.len(), 7, "{text}");
        let has = |at: &str, msg: &str| {
            assert!(
                problems
                    .iter()
                    .any(|p| p.at == at && p.message.contains(msg)),
                "{at}: {msg} not in\n{text}"
            );
        };
        has(
            &format!("resources[{pool_at}]"),
            "the key names IPPool \"pods\" but the value is IPPool \"other\"",
        );
        has(&format!("resources[{node_at}]"), "spec.bgp.asNumber");
        has(&format!("resources[{dup_at}]"), "spec.bgp.asNumber");
        has(
            &format!("resources[{node_at}] and resources[{dup_at}]"),
            "the key is listed twice",
        );
        has(
            &format!("ipam[{block_at}]"),
            "cidr: 10.99.0.0/26 is not the key's block",
        );
        assert!(
            text.contains("/calico/ipam/v2/handle/x: block: invalid type"),
            "{text}"
        );
        assert!(
            text.contains("ippools/y: key belongs in resources"),
            "{text}"
        );

        let e = Snapshot::parse(&good.replace("keys: ", "keys: 1"), "b.yaml").unwrap_err();
        assert!(e.to_string().contains("is it truncated?"), "{e}");
        let e = Snapshot::parse("apiVersion: v1\nkind: List\nmetadata: {source: x, revision: 1, exportedAt: x, exportedBy: x, keys: 0}\n", "b.yaml").unwrap_err();
        assert!(
            e.to_string().starts_with(
                "b.yaml: apiVersion \"v1\", kind \"List\": expected tabby/v1 DatastoreExport"
            ),
            "{e}"
        );
        let e = Snapshot::parse("apiVersion: tabby/v1\nkind: [\n", "b.yaml").unwrap_err();
        assert!(e.to_string().starts_with("b.yaml: "), "{e}");
    }
}
