//! `metadata`, as Kubernetes' ObjectMeta that Calico's v3 resources carry: the name,
//! namespace, labels and annotations users write, and the server-owned fields (uid,
//! creationTimestamp, resourceVersion, ...) kept as they come so nothing is lost on a
//! round trip.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::kind::Kind;
use crate::validate::Checker;

/// Largest total size of a resource's annotations, as Kubernetes allows.
pub const MAX_ANNOTATIONS_BYTES: usize = 256 * 1024;

/// A resource's `metadata`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ObjectMeta {
    /// The resource's name, unique per kind (and namespace).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// Prefix the server would use to generate a name (kept, not acted on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generate_name: Option<String>,
    /// The namespace of namespaced kinds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Legacy Kubernetes self link (kept, not acted on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub self_link: Option<String>,
    /// Unique id, set by the server on create.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    /// The datastore revision the resource was read at; a write with it set is a
    /// compare-and-swap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_version: Option<String>,
    /// Kubernetes generation counter (kept, not acted on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<i64>,
    /// RFC 3339 time of creation, set by the server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creation_timestamp: Option<String>,
    /// RFC 3339 time a deletion was requested (kept, not acted on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletion_timestamp: Option<String>,
    /// Grace period of a pending deletion (kept, not acted on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletion_grace_period_seconds: Option<i64>,
    /// Labels that selectors match.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Free-form annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Owners of this resource (kept, not acted on).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub owner_references: Vec<OwnerReference>,
    /// Finalizers (kept, not acted on).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub finalizers: Vec<String>,
    /// Server-side apply bookkeeping, kept verbatim.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub managed_fields: Vec<Value>,
}

/// One entry of `metadata.ownerReferences`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OwnerReference {
    /// The owner's apiVersion.
    pub api_version: String,
    /// The owner's kind.
    pub kind: String,
    /// The owner's name.
    pub name: String,
    /// The owner's uid.
    pub uid: String,
    /// Whether the owner is the managing controller.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub controller: Option<bool>,
    /// Whether deletion of the owner waits for this resource.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_owner_deletion: Option<bool>,
}

/// A Kubernetes-style status condition (`status.conditions[]`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Condition {
    /// The condition's type, e.g. `Allocatable`.
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// The generation the condition was computed for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// RFC 3339 time the status last changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<String>,
    /// A CamelCase reason, e.g. `CIDROverlap`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// A human-readable message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl ObjectMeta {
    /// Metadata with just a name and, for namespaced kinds, a namespace.
    pub fn named(name: &str, namespace: Option<&str>) -> ObjectMeta {
        ObjectMeta {
            name: name.to_string(),
            namespace: namespace.map(str::to_string),
            ..ObjectMeta::default()
        }
    }

    /// Checks the name (by the kind's rule), namespace, labels and annotations.
    pub(crate) fn check(&self, kind: Kind, c: &mut Checker) {
        if self.name.is_empty() {
            c.err("metadata.name", "is required");
        } else {
            match kind {
                // Policy names embed the tier name followed by '.', so tiers cannot
                // contain dots.
                Kind::Tier => c.dns_label("metadata.name", &self.name),
                Kind::Profile => check_profile_name(&self.name, c),
                _ => c.subdomain("metadata.name", &self.name),
            }
        }
        if let Some(ns) = &self.namespace
            && kind.namespaced()
        {
            c.dns_label("metadata.namespace", ns);
        }
        c.labels("metadata.labels", &self.labels);
        let mut size = 0;
        for (k, v) in &self.annotations {
            if let Some(why) = crate::validate::label_key_problem(k) {
                c.err(
                    format!("metadata.annotations.{k}"),
                    format!("annotation key {k:?} {why}"),
                );
            }
            size += k.len() + v.len();
        }
        if size > MAX_ANNOTATIONS_BYTES {
            c.err(
                "metadata.annotations",
                format!("total size {size} bytes is over the {MAX_ANNOTATIONS_BYTES}-byte limit"),
            );
        }
    }
}

/// Profiles keep names from other orchestrators (`kns.default`, `ksa.ns.sa`,
/// OpenStack security groups), so they may also use upper case and '_'.
fn check_profile_name(name: &str, c: &mut Checker) {
    let ok = name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
    if !ok {
        c.err(
            "metadata.name",
            format!("{name:?} must be at most 253 letters, digits, '.', '-' and '_'"),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(meta: &ObjectMeta, kind: Kind) -> Vec<String> {
        let mut c = Checker::default();
        meta.check(kind, &mut c);
        c.errors.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn names_follow_the_kind_rule() {
        assert!(problems(&ObjectMeta::named("node1.example.com", None), Kind::Node).is_empty());
        let e = problems(&ObjectMeta::named("Node_1", None), Kind::Node);
        assert!(e[0].starts_with("metadata.name: \"Node_1\""), "{e:?}");
        let e = problems(&ObjectMeta::named("a.b", None), Kind::Tier);
        assert!(e[0].starts_with("metadata.name:"), "{e:?}");
        assert!(problems(&ObjectMeta::named("ksa.default.My_SA", None), Kind::Profile).is_empty());
        let e = problems(&ObjectMeta::default(), Kind::IPPool);
        assert_eq!(e, ["metadata.name: is required"]);
    }

    #[test]
    fn namespace_and_labels_are_checked() {
        let mut m = ObjectMeta::named("p", Some("Prod"));
        m.labels.insert("rack".into(), "r 1".into());
        m.labels.insert("bad key".into(), "x".into());
        let e = problems(&m, Kind::NetworkPolicy);
        assert!(
            e.iter().any(|e| e.starts_with("metadata.namespace:")),
            "{e:?}"
        );
        assert!(
            e.iter()
                .any(|e| e.starts_with("metadata.labels.rack: label value")),
            "{e:?}"
        );
        assert!(
            e.iter()
                .any(|e| e.starts_with("metadata.labels.bad key: label key")),
            "{e:?}"
        );
    }

    #[test]
    fn round_trips_server_fields() {
        let v = serde_json::json!({
            "name": "x",
            "uid": "u",
            "resourceVersion": "12",
            "creationTimestamp": "2024-01-01T00:00:00Z",
            "labels": {"a": "b"},
            "annotations": {"note": "anything at all"},
            "ownerReferences": [{"apiVersion": "v1", "kind": "Pod", "name": "p", "uid": "1"}],
        });
        let m: ObjectMeta = serde_json::from_value(v.clone()).unwrap();
        assert_eq!(serde_json::to_value(&m).unwrap(), v);
        assert!(serde_json::from_value::<ObjectMeta>(serde_json::json!({"nam": "x"})).is_err());
    }
}
