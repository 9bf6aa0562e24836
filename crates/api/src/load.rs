//! Reading resources from manifests and writing them back. Input is multi-document
//! YAML, or JSON (one object, an array, a stream of objects); any document may be a
//! `List` (or `IPPoolList`, ...) with `items`. Every problem is reported, each with
//! the file, the line (and column, for syntax errors), the resource and the field
//! path, e.g. `pools.yaml:16: IPPool "bad-pool": spec.blockSize: 19 is outside 20..=32
//! for IPv4`. Output is YAML or JSON: one object, or a list for several.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};
use serde_saphyr::{Location, Spanned};

use crate::API_VERSION;
use crate::kind::Kind;
use crate::meta::ObjectMeta;
use crate::resource::{Resource, Spec, Status};

/// What sort of problem a [`Problem`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProblemKind {
    /// The text is not valid YAML or JSON.
    Syntax,
    /// A field is unknown, missing or of the wrong type.
    Schema,
    /// A field's value breaks a validation rule.
    Invalid,
}

/// One problem in one input, located as precisely as the input allows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// What sort of problem.
    pub kind: ProblemKind,
    /// The input's name (a file name, `<stdin>`, a datastore key).
    pub source: String,
    /// 1-based line, when known.
    pub line: Option<u64>,
    /// 1-based column, when known (syntax errors).
    pub column: Option<u64>,
    /// The resource, e.g. `IPPool "bad-pool"`, when known.
    pub resource: Option<String>,
    /// The field path, e.g. `spec.blockSize`, when there is one.
    pub path: Option<String>,
    /// The rule broken.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(col) = self.column {
                write!(f, ":{col}")?;
            }
        }
        f.write_str(": ")?;
        if let Some(r) = &self.resource {
            write!(f, "{r}: ")?;
        }
        if let Some(p) = &self.path {
            write!(f, "{p}: ")?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for Problem {}

/// Everything wrong with an input; at least one problem, one per line when shown.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}", join(.problems))]
pub struct LoadError {
    /// The problems, in input order.
    pub problems: Vec<Problem>,
}

fn join(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

/// A YAML node with the positions of its parts.
#[derive(Debug)]
enum YamlNode {
    Scalar(Value),
    Seq(Vec<Spanned<YamlNode>>),
    Map(Vec<(Spanned<String>, Spanned<YamlNode>)>),
}

impl<'de> Deserialize<'de> for YamlNode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<YamlNode, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = YamlNode;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a YAML value")
            }

            fn visit_bool<E>(self, v: bool) -> Result<YamlNode, E> {
                Ok(YamlNode::Scalar(Value::Bool(v)))
            }

            fn visit_i64<E>(self, v: i64) -> Result<YamlNode, E> {
                Ok(YamlNode::Scalar(v.into()))
            }

            fn visit_u64<E>(self, v: u64) -> Result<YamlNode, E> {
                Ok(YamlNode::Scalar(v.into()))
            }

            fn visit_f64<E: de::Error>(self, v: f64) -> Result<YamlNode, E> {
                serde_json::Number::from_f64(v)
                    .map(|n| YamlNode::Scalar(Value::Number(n)))
                    .ok_or_else(|| E::custom(format!("{v} is not a finite number")))
            }

            fn visit_str<E>(self, v: &str) -> Result<YamlNode, E> {
                Ok(YamlNode::Scalar(Value::String(v.to_string())))
            }

            fn visit_string<E>(self, v: String) -> Result<YamlNode, E> {
                Ok(YamlNode::Scalar(Value::String(v)))
            }

            fn visit_unit<E>(self) -> Result<YamlNode, E> {
                Ok(YamlNode::Scalar(Value::Null))
            }

            fn visit_none<E>(self) -> Result<YamlNode, E> {
                Ok(YamlNode::Scalar(Value::Null))
            }

            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<YamlNode, D::Error> {
                YamlNode::deserialize(d)
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<YamlNode, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = a.next_element()? {
                    items.push(item);
                }
                Ok(YamlNode::Seq(items))
            }

            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<YamlNode, A::Error> {
                let mut entries = Vec::new();
                while let Some(key) = a.next_key::<Spanned<String>>()? {
                    entries.push((key, a.next_value()?));
                }
                Ok(YamlNode::Map(entries))
            }
        }
        d.deserialize_any(V)
    }
}

/// A JSON value with no positions, as a tree the expansion code shares with YAML.
fn unlocated(v: Value) -> Spanned<YamlNode> {
    let node = match v {
        Value::Array(items) => YamlNode::Seq(items.into_iter().map(unlocated).collect()),
        Value::Object(m) => YamlNode::Map(
            m.into_iter()
                .map(|(k, v)| {
                    (
                        Spanned::new(k, Location::UNKNOWN, Location::UNKNOWN),
                        unlocated(v),
                    )
                })
                .collect(),
        ),
        scalar => YamlNode::Scalar(scalar),
    };
    Spanned::new(node, Location::UNKNOWN, Location::UNKNOWN)
}

/// Field path -> line, for one resource.
type Index = BTreeMap<String, u64>;

/// One resource-shaped piece of input, ready to decode.
struct Doc {
    value: Value,
    index: Index,
    line: Option<u64>,
}

fn line_of(loc: &Location) -> Option<u64> {
    (loc.line() > 0).then(|| loc.line())
}

fn flatten(node: &Spanned<YamlNode>, path: &str, index: &mut Index) -> Value {
    match &node.value {
        YamlNode::Scalar(v) => v.clone(),
        YamlNode::Seq(items) => Value::Array(
            items
                .iter()
                .enumerate()
                .map(|(i, item)| {
                    let p = format!("{path}[{i}]");
                    if let Some(l) = line_of(&item.referenced) {
                        index.insert(p.clone(), l);
                    }
                    flatten(item, &p, index)
                })
                .collect(),
        ),
        YamlNode::Map(entries) => {
            let mut m = Map::new();
            for (k, v) in entries {
                let p = if path.is_empty() {
                    k.value.clone()
                } else {
                    format!("{path}.{}", k.value)
                };
                if let Some(l) = line_of(&k.referenced) {
                    index.insert(p.clone(), l);
                }
                m.insert(k.value.clone(), flatten(v, &p, index));
            }
            Value::Object(m)
        }
    }
}

fn make_doc(node: &Spanned<YamlNode>) -> Doc {
    let mut index = Index::new();
    let value = flatten(node, "", &mut index);
    Doc {
        value,
        index,
        line: line_of(&node.referenced),
    }
}

fn map_str<'a>(entries: &'a [(Spanned<String>, Spanned<YamlNode>)], key: &str) -> Option<&'a str> {
    entries
        .iter()
        .find(|(k, _)| k.value == key)
        .and_then(|(_, v)| match &v.value {
            YamlNode::Scalar(Value::String(s)) => Some(s.as_str()),
            _ => None,
        })
}

fn describe(node: &YamlNode) -> &'static str {
    match node {
        YamlNode::Scalar(Value::String(_)) => "a string",
        YamlNode::Scalar(Value::Number(_)) => "a number",
        YamlNode::Scalar(Value::Bool(_)) => "a boolean",
        YamlNode::Scalar(_) => "null",
        YamlNode::Seq(_) => "a list",
        YamlNode::Map(_) => "a mapping",
    }
}

const NOT_A_RESOURCE: &str =
    "expected a resource (a mapping with apiVersion, kind, metadata and spec)";

/// Splits one document into resources: a list of them, a `List` kind, or one.
fn expand(node: &Spanned<YamlNode>, source: &str, out: &mut Vec<Result<Doc, Problem>>) {
    let problem = |line, path: Option<String>, message: String| Problem {
        kind: ProblemKind::Schema,
        source: source.to_string(),
        line,
        column: None,
        resource: None,
        path,
        message,
    };
    match &node.value {
        YamlNode::Scalar(Value::Null) => {}
        YamlNode::Scalar(_) => out.push(Err(problem(
            line_of(&node.referenced),
            None,
            format!("{NOT_A_RESOURCE}, found {}", describe(&node.value)),
        ))),
        YamlNode::Seq(items) => {
            for item in items {
                expand_item(item, None, source, out);
            }
        }
        YamlNode::Map(entries) => {
            let list_kind = map_str(entries, "kind").filter(|k| k.ends_with("List"));
            let items = entries.iter().find(|(k, _)| k.value == "items");
            let (Some(kind), Some((items_key, items))) = (list_kind, items) else {
                out.push(Ok(make_doc(node)));
                return;
            };
            for (k, _) in entries {
                if !matches!(
                    k.value.as_str(),
                    "apiVersion" | "kind" | "metadata" | "items"
                ) {
                    out.push(Err(problem(
                        line_of(&k.referenced),
                        Some(k.value.clone()),
                        format!("unknown field of a {kind}; expected apiVersion, kind, metadata or items"),
                    )));
                }
            }
            let inherit = kind
                .strip_suffix("List")
                .filter(|k| !k.is_empty())
                .map(str::to_string);
            match &items.value {
                YamlNode::Seq(list) => {
                    for item in list {
                        expand_item(item, inherit.as_deref(), source, out);
                    }
                }
                YamlNode::Scalar(Value::Null) => {}
                other => out.push(Err(problem(
                    line_of(&items_key.referenced),
                    Some("items".to_string()),
                    format!("expected a list of resources, found {}", describe(other)),
                ))),
            }
        }
    }
}

/// One item of a list; items of a typed list (`IPPoolList`) may leave out their kind.
fn expand_item(
    item: &Spanned<YamlNode>,
    inherit_kind: Option<&str>,
    source: &str,
    out: &mut Vec<Result<Doc, Problem>>,
) {
    match &item.value {
        YamlNode::Map(_) => {
            let mut doc = make_doc(item);
            if let (Some(kind), Value::Object(m)) = (inherit_kind, &mut doc.value) {
                m.entry("kind")
                    .or_insert_with(|| Value::String(kind.to_string()));
                m.entry("apiVersion")
                    .or_insert_with(|| Value::String(API_VERSION.to_string()));
            }
            out.push(Ok(doc));
        }
        other => out.push(Err(Problem {
            kind: ProblemKind::Schema,
            source: source.to_string(),
            line: line_of(&item.referenced),
            column: None,
            resource: None,
            path: None,
            message: format!("{NOT_A_RESOURCE}, found {}", describe(other)),
        })),
    }
}

/// The most documents one input may hold (serde-saphyr's default is 1,024, which a
/// cluster's worth of endpoints or policies passes easily).
pub const MAX_DOCUMENTS: usize = 1_000_000;

/// The most YAML nodes (mappings, sequences and scalars, keys included) one input
/// may hold. This is what bounds the memory a parse takes: about 250 bytes a node,
/// so at most about 1.2 GB. A resource is 15 to 50 nodes, so this is 100,000 to
/// 300,000 resources (a 40 MB file of network sets measured 22 nodes each).
pub const MAX_NODES: usize = 5_000_000;

/// The largest input read at once, in bytes (256 MiB).
pub const MAX_INPUT_BYTES: usize = 256 * 1024 * 1024;

/// The parser limits, as constants in production and smaller in tests.
#[derive(Clone, Copy, Debug)]
struct Limits {
    documents: usize,
    nodes: usize,
}

const LIMITS: Limits = Limits {
    documents: MAX_DOCUMENTS,
    nodes: MAX_NODES,
};

fn yaml_documents(text: &str) -> Result<Vec<Spanned<YamlNode>>, serde_saphyr::Error> {
    yaml_documents_within(text, LIMITS)
}

fn yaml_documents_within(
    text: &str,
    limits: Limits,
) -> Result<Vec<Spanned<YamlNode>>, serde_saphyr::Error> {
    let options = serde_saphyr::options! {
        with_snippet: false,
        budget: serde_saphyr::budget! {
            max_documents: limits.documents,
            max_nodes: limits.nodes,
            // Every node is one or two events, every document two more.
            max_events: 2 * limits.nodes + 2 * limits.documents,
            max_reader_input_bytes: Some(MAX_INPUT_BYTES),
        },
    };
    serde_saphyr::from_str_multiple_with_options::<Spanned<YamlNode>, Vec<_>>(text, options)
}

/// What a breached parser limit means for the user, or `None` for other errors.
fn budget_message(e: &serde_saphyr::Error, limits: Limits) -> Option<String> {
    use serde_saphyr::budget::BudgetBreach;
    let serde_saphyr::Error::Budget { breach, .. } = e.without_snippet() else {
        return None;
    };
    Some(match breach {
        BudgetBreach::Documents { .. } => {
            format!("more than {} documents; split the file", limits.documents)
        }
        BudgetBreach::Nodes { .. } | BudgetBreach::Events { .. } => format!(
            "more than {} YAML nodes (fields, list items and values); split the file",
            limits.nodes
        ),
        BudgetBreach::InputBytes { .. } | BudgetBreach::ScalarBytes { .. } => format!(
            "larger than the {} MiB tabbyctl reads at once; split the file",
            MAX_INPUT_BYTES / (1024 * 1024)
        ),
        BudgetBreach::Depth { depth } => {
            format!(
                "nested {depth} levels deep, more than a resource can be; check the indentation"
            )
        }
        other => format!(
            "refused to read further ({other:?}): the YAML uses too many aliases, anchors or merge keys"
        ),
    })
}

fn yaml_syntax_problem(e: &serde_saphyr::Error, source: &str) -> Problem {
    yaml_problem_within(e, source, LIMITS)
}

fn yaml_problem_within(e: &serde_saphyr::Error, source: &str, limits: Limits) -> Problem {
    if let Some(message) = budget_message(e, limits) {
        return Problem {
            kind: ProblemKind::Syntax,
            source: source.to_string(),
            line: None,
            column: None,
            resource: None,
            path: None,
            message,
        };
    }
    let loc = e.location().filter(|l| l.line() > 0);
    let mut message = e.without_snippet().to_string();
    if let Some(l) = &loc {
        let suffix = format!(" at line {}, column {}", l.line(), l.column());
        if let Some(stripped) = message.strip_suffix(&suffix) {
            message = stripped.to_string();
        }
    }
    Problem {
        kind: ProblemKind::Syntax,
        source: source.to_string(),
        line: loc.map(|l| l.line()),
        column: loc.map(|l| l.column()),
        resource: None,
        path: None,
        message,
    }
}

/// Parses a JSON text of one or more whitespace-separated values, with the line each
/// value starts on.
fn json_values(text: &str) -> Result<Vec<(Value, u64)>, serde_json::Error> {
    let mut out = Vec::new();
    let mut stream = serde_json::Deserializer::from_str(text).into_iter::<Value>();
    let mut start = 0;
    while let Some(v) = stream.next() {
        let v = v?;
        let skipped = text[start..].len() - text[start..].trim_start().len();
        let line = 1 + text[..start + skipped].matches('\n').count() as u64;
        out.push((v, line));
        start = stream.byte_offset();
    }
    Ok(out)
}

/// The documents of an input, each split into resource-shaped pieces.
fn read(text: &str, source: &str) -> Result<Vec<Result<Doc, Problem>>, LoadError> {
    if text.len() > MAX_INPUT_BYTES {
        return Err(LoadError {
            problems: vec![Problem {
                kind: ProblemKind::Syntax,
                source: source.to_string(),
                line: None,
                column: None,
                resource: None,
                path: None,
                message: format!(
                    "{} MiB is larger than the {} MiB tabbyctl reads at once; split the file",
                    text.len().div_ceil(1024 * 1024),
                    MAX_INPUT_BYTES / (1024 * 1024)
                ),
            }],
        });
    }
    let body = text.trim_start_matches('\u{feff}').trim_start();
    let mut out = Vec::new();
    if body.starts_with('{') || body.starts_with('[') {
        match json_values(text) {
            Ok(values) => {
                // The YAML parser reads JSON too and knows where each field is; use it
                // when it sees the same value.
                if let [(value, _)] = values.as_slice()
                    && let Ok(docs) = yaml_documents(text)
                    && let [doc] = docs.as_slice()
                    && flatten(doc, "", &mut Index::new()) == *value
                {
                    expand(doc, source, &mut out);
                    return Ok(out);
                }
                for (value, line) in values {
                    let before = out.len();
                    expand(&unlocated(value), source, &mut out);
                    for d in out[before..].iter_mut().flatten() {
                        d.line = Some(line);
                    }
                }
                return Ok(out);
            }
            Err(json_err) => {
                match yaml_documents(text) {
                    Ok(docs) => {
                        for doc in docs {
                            expand(&doc, source, &mut out);
                        }
                        return Ok(out);
                    }
                    Err(e) if budget_message(&e, LIMITS).is_some() => {
                        return Err(LoadError {
                            problems: vec![yaml_syntax_problem(&e, source)],
                        });
                    }
                    Err(_) => {}
                }
                let mut message = json_err.to_string();
                let suffix = format!(" at line {} column {}", json_err.line(), json_err.column());
                if let Some(stripped) = message.strip_suffix(&suffix) {
                    message = stripped.to_string();
                }
                return Err(LoadError {
                    problems: vec![Problem {
                        kind: ProblemKind::Syntax,
                        source: source.to_string(),
                        line: Some(json_err.line() as u64),
                        column: Some(json_err.column() as u64),
                        resource: None,
                        path: None,
                        message,
                    }],
                });
            }
        }
    }
    let docs = yaml_documents(text).map_err(|e| LoadError {
        problems: vec![yaml_syntax_problem(&e, source)],
    })?;
    for doc in docs {
        expand(&doc, source, &mut out);
    }
    Ok(out)
}

/// The line of `path` in a document, or of its nearest enclosing field, or where
/// the document starts.
fn locate(doc: &Doc, path: &str) -> Option<u64> {
    let mut p = path;
    loop {
        if let Some(l) = doc.index.get(p) {
            return Some(*l);
        }
        match p.rfind(['.', '[']) {
            Some(i) if i > 0 => p = &p[..i],
            _ => return doc.line,
        }
    }
}

fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(!ca.eq_ignore_ascii_case(cb));
            cur.push((prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

/// Rewrites serde's unknown-field message into a short one with a suggestion.
fn describe_serde_error(message: String) -> String {
    let Some(rest) = message.strip_prefix("unknown field `") else {
        return message;
    };
    let Some((field, tail)) = rest.split_once('`') else {
        return message;
    };
    let expected: Vec<&str> = tail.split('`').skip(1).step_by(2).collect();
    let best = expected.iter().map(|e| (levenshtein(field, e), *e)).min();
    match best {
        Some((d, e)) if d <= (field.len() / 3).max(2) => {
            format!("unknown field; did you mean `{e}`?")
        }
        _ if expected.is_empty() => "unknown field; this object takes no fields".to_string(),
        _ if expected.len() <= 12 => {
            let list: Vec<String> = expected.iter().map(|e| format!("`{e}`")).collect();
            format!("unknown field; expected one of {}", list.join(", "))
        }
        _ => "unknown field".to_string(),
    }
}

fn joined_path(prefix: &str, path: &serde_path_to_error::Path) -> String {
    let p = path.to_string();
    if p == "." || p.is_empty() {
        prefix.to_string()
    } else if p.starts_with('[') {
        format!("{prefix}{p}")
    } else {
        format!("{prefix}.{p}")
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

/// Decodes one resource (schema only, no validation rules).
fn decode(doc: &Doc, source: &str) -> Result<Resource, Vec<Problem>> {
    let at = |path: &str| locate(doc, path);
    let Value::Object(obj) = &doc.value else {
        return Err(vec![Problem {
            kind: ProblemKind::Schema,
            source: source.to_string(),
            line: doc.line,
            column: None,
            resource: None,
            path: None,
            message: format!("{NOT_A_RESOURCE}, found {}", type_name(&doc.value)),
        }]);
    };
    let kind_text = obj.get("kind").and_then(Value::as_str);
    let kind = kind_text.and_then(Kind::from_manifest_name);
    let meta = obj.get("metadata");
    let name = meta
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .unwrap_or("");
    let namespace = meta
        .and_then(|m| m.get("namespace"))
        .and_then(Value::as_str);
    let shown = match (kind, namespace) {
        (Some(k), Some(ns)) if k.namespaced() => format!("{ns}/{name}"),
        _ => name.to_string(),
    };
    let resource = match (kind, kind_text) {
        (Some(k), _) => Some(format!("{k} {shown:?}")),
        (None, Some(k)) => Some(format!("{k} {shown:?}")),
        (None, None) if !name.is_empty() => Some(format!("{shown:?}")),
        (None, None) => None,
    };
    let mut problems = Vec::new();
    let mut report = |path: String, message: String| {
        problems.push(Problem {
            kind: ProblemKind::Schema,
            source: source.to_string(),
            line: at(&path),
            column: None,
            resource: resource.clone(),
            path: Some(path),
            message,
        });
    };

    let has_status = kind.is_none_or(Kind::has_status);
    for key in obj.keys() {
        match key.as_str() {
            "apiVersion" | "kind" | "metadata" | "spec" => {}
            "status" if has_status => {}
            other => {
                let expected = if has_status {
                    "apiVersion, kind, metadata, spec or status"
                } else {
                    "apiVersion, kind, metadata or spec"
                };
                report(
                    other.to_string(),
                    format!("unknown field; expected {expected}"),
                );
            }
        }
    }
    match obj.get("apiVersion") {
        None => report("apiVersion".into(), format!("is required ({API_VERSION})")),
        Some(Value::String(v)) if v == API_VERSION => {}
        Some(v) => report(
            "apiVersion".into(),
            format!("{v} is not supported; Tabby reads {API_VERSION} resources"),
        ),
    }
    match (obj.get("kind"), kind) {
        (_, Some(_)) => {}
        (None, _) => report("kind".into(), "is required".into()),
        (Some(v), None) => {
            let known: Vec<&str> = Kind::all().iter().map(|k| k.name()).collect();
            report(
                "kind".into(),
                format!("{v} is not a kind Tabby knows ({})", known.join(", ")),
            );
        }
    }
    let metadata = match meta {
        None | Some(Value::Null) => ObjectMeta::default(),
        Some(m) => match serde_path_to_error::deserialize::<_, ObjectMeta>(m.clone()) {
            Ok(m) => m,
            Err(e) => {
                report(
                    joined_path("metadata", e.path()),
                    describe_serde_error(e.inner().to_string()),
                );
                ObjectMeta::default()
            }
        },
    };
    let mut spec = None;
    let mut status = None;
    if let Some(kind) = kind {
        let raw = match obj.get("spec") {
            None | Some(Value::Null) => Value::Object(Map::new()),
            Some(v) => v.clone(),
        };
        match Spec::from_value(kind, raw) {
            Ok(s) => spec = Some(s),
            Err(e) => report(
                joined_path("spec", e.path()),
                describe_serde_error(e.inner().to_string()),
            ),
        }
        if let Some(raw) = obj.get("status").filter(|v| !v.is_null())
            && let Some(result) = Status::from_value(kind, raw.clone())
        {
            match result {
                Ok(s) => status = Some(s),
                Err(e) => report(
                    joined_path("status", e.path()),
                    describe_serde_error(e.inner().to_string()),
                ),
            }
        }
    }
    match spec {
        Some(spec) if problems.is_empty() => Ok(Resource {
            metadata,
            spec,
            status,
        }),
        _ => Err(problems),
    }
}

fn label(r: &Resource) -> String {
    format!("{} {:?}", r.kind(), r.display_name())
}

/// Reads every resource in a YAML or JSON text and validates each; `source` names
/// the input in errors. Resources come back as written (defaults not filled).
pub fn parse_documents(text: &str, source: &str) -> Result<Vec<Resource>, LoadError> {
    let docs = read(text, source)?;
    let mut resources = Vec::new();
    let mut problems = Vec::new();
    for doc in docs {
        let doc = match doc {
            Ok(d) => d,
            Err(p) => {
                problems.push(p);
                continue;
            }
        };
        match decode(&doc, source) {
            Err(ps) => problems.extend(ps),
            Ok(r) => match r.validate() {
                Ok(()) => resources.push(r),
                Err(e) => {
                    for fe in e.errors {
                        problems.push(Problem {
                            kind: ProblemKind::Invalid,
                            source: source.to_string(),
                            line: locate(&doc, &fe.path),
                            column: None,
                            resource: Some(label(&r)),
                            path: Some(fe.path),
                            message: fe.message,
                        });
                    }
                }
            },
        }
    }
    if problems.is_empty() {
        Ok(resources)
    } else {
        Err(LoadError { problems })
    }
}

/// Decodes one resource from JSON (e.g. a stored value), checking the schema but
/// not the validation rules; `source` names it in errors.
pub fn from_json_value(value: Value, source: &str) -> Result<Resource, LoadError> {
    let doc = Doc {
        value,
        index: Index::new(),
        line: None,
    };
    decode(&doc, source).map_err(|problems| LoadError { problems })
}

/// Decodes a stored resource leniently: a field this version does not know (written
/// by a newer version, or by calicoctl) is dropped and reported rather than failing
/// the whole record. Returns the resource and one [`Problem`] per ignored field
/// (path and key named, for a warning). Any other schema problem is still an error.
/// Files given to `tabbyctl apply` go through the strict [`parse_documents`].
pub fn from_json_value_lenient(
    mut value: Value,
    source: &str,
) -> Result<(Resource, Vec<Problem>), LoadError> {
    let mut ignored: Vec<Problem> = Vec::new();
    // Each round removes the unknown fields the strict decoder reported (serde stops
    // at the first one per object, so a record with several takes several rounds).
    for _ in 0..64 {
        match from_json_value(value.clone(), source) {
            Ok(r) => return Ok((r, ignored)),
            Err(e) => {
                let unknown = |p: &Problem| {
                    p.kind == ProblemKind::Schema && p.message.starts_with("unknown field")
                };
                if !e.problems.iter().all(unknown) {
                    return Err(e);
                }
                let mut removed = false;
                for p in &e.problems {
                    if let Some(path) = &p.path
                        && !ignored.iter().any(|i| i.path.as_deref() == Some(path))
                        && remove_path(&mut value, path)
                    {
                        removed = true;
                        ignored.push(Problem {
                            message: "unknown to this version of Tabby; ignored".to_string(),
                            ..p.clone()
                        });
                    }
                }
                if !removed {
                    return Err(e);
                }
            }
        }
    }
    from_json_value(value, source).map(|r| (r, ignored))
}

/// Removes the field at a dotted path with `[i]` indexes (`spec.ingress[0].foo`),
/// as the decoder reports it. Whether something was removed.
fn remove_path(value: &mut Value, path: &str) -> bool {
    let mut parts: Vec<PathPart<'_>> = Vec::new();
    for seg in path.split('.') {
        let (name, mut rest) = match seg.find('[') {
            Some(i) => (&seg[..i], &seg[i..]),
            None => (seg, ""),
        };
        if !name.is_empty() {
            parts.push(PathPart::Key(name));
        }
        while let Some(r) = rest.strip_prefix('[') {
            let Some((idx, tail)) = r.split_once(']') else {
                return false;
            };
            let Ok(i) = idx.parse::<usize>() else {
                return false;
            };
            parts.push(PathPart::Index(i));
            rest = tail;
        }
    }
    let Some((PathPart::Key(last), parents)) = parts.split_last() else {
        return false;
    };
    let mut at = value;
    for p in parents {
        at = match (p, at) {
            (PathPart::Key(k), Value::Object(m)) => match m.get_mut(*k) {
                Some(v) => v,
                None => return false,
            },
            (PathPart::Index(i), Value::Array(a)) => match a.get_mut(*i) {
                Some(v) => v,
                None => return false,
            },
            _ => return false,
        };
    }
    match at {
        Value::Object(m) => m.remove(*last).is_some(),
        _ => false,
    }
}

enum PathPart<'a> {
    Key(&'a str),
    Index(usize),
}

/// Several resources as one `List`: `<Kind>List` when they share a kind, else a
/// Kubernetes `v1` `List`.
pub fn list_value(resources: &[Resource]) -> Value {
    let kinds: BTreeSet<Kind> = resources.iter().map(Resource::kind).collect();
    let (api_version, kind) = match kinds.iter().next() {
        Some(k) if kinds.len() == 1 => (API_VERSION, format!("{k}List")),
        _ => ("v1", "List".to_string()),
    };
    let mut m = Map::new();
    m.insert("apiVersion".into(), Value::String(api_version.into()));
    m.insert(
        "items".into(),
        Value::Array(resources.iter().map(Resource::to_json_value).collect()),
    );
    m.insert("kind".into(), Value::String(kind));
    m.insert("metadata".into(), Value::Object(Map::new()));
    Value::Object(m)
}

fn output_value(resources: &[Resource]) -> Value {
    match resources {
        [one] => one.to_json_value(),
        many => list_value(many),
    }
}

/// YAML as calicoctl prints it: the resource itself if there is one, else a list.
pub fn to_yaml(resources: &[Resource]) -> String {
    serde_saphyr::to_string(&output_value(resources))
        .unwrap_or_else(|e| format!("# cannot render as YAML: {e}\n"))
}

/// Indented JSON: the resource itself if there is one, else a list.
pub fn to_json(resources: &[Resource]) -> String {
    serde_json::to_string_pretty(&output_value(resources))
        .unwrap_or_else(|e| format!("{{\"error\": {:?}}}", e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const POOLS: &str = "\
# two pools
apiVersion: projectcalico.org/v3
kind: IPPool
metadata:
  name: good-pool
spec:
  cidr: 100.65.0.0/16
---
apiVersion: projectcalico.org/v3
kind: IPPool
metadata:
  name: bad-pool
spec:
  cidr: 100.66.0.1/16
  blockSize: 19
";

    #[test]
    fn reads_multi_document_yaml() {
        let text = POOLS
            .replace("100.66.0.1/16", "100.66.0.0/16")
            .replace("19", "24");
        let rs = parse_documents(&text, "pools.yaml").unwrap();
        assert_eq!(rs.len(), 2);
        assert_eq!(rs[1].name(), "bad-pool");
        assert_eq!(rs[1].spec.as_ip_pool().unwrap().block_size, Some(24));
    }

    #[test]
    fn validation_errors_name_file_line_resource_and_field() {
        let e = parse_documents(POOLS, "pools.yaml").unwrap_err();
        assert_eq!(
            e.to_string(),
            "pools.yaml:14: IPPool \"bad-pool\": spec.cidr: 100.66.0.1/16 has host bits set; the network is 100.66.0.0/16\n\
             pools.yaml:15: IPPool \"bad-pool\": spec.blockSize: 19 is outside 20..=32 for IPv4"
        );
        assert!(e.problems.iter().all(|p| p.kind == ProblemKind::Invalid));
    }

    #[test]
    fn syntax_errors_name_line_and_column() {
        let text = "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata:\n  name: p\nspec:\n  cidr: [100.64.0.0/16\n";
        let e = parse_documents(text, "bad.yaml").unwrap_err();
        let p = &e.problems[0];
        assert_eq!(p.kind, ProblemKind::Syntax);
        assert_eq!((p.line, p.column), (Some(6), Some(9)));
        assert!(e.to_string().starts_with("bad.yaml:6:9: "), "{e}");
        let e = parse_documents("{\"kind\": \"IPPool\",\n \"x\": }", "bad.json").unwrap_err();
        assert!(e.to_string().starts_with("bad.json:2:"), "{e}");
    }

    #[test]
    fn unknown_fields_are_named_with_their_path() {
        let text = "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {name: p}\nspec: {cidr: 100.64.0.0/16, blokSize: 26}\n";
        let e = parse_documents(text, "<stdin>").unwrap_err();
        assert_eq!(
            e.to_string(),
            "<stdin>:4: IPPool \"p\": spec.blokSize: unknown field; did you mean `blockSize`?"
        );
        let text = "apiVersion: projectcalico.org/v3\nkind: Node\nmetadata:\n  name: node1\n  lables: {a: b}\nspec:\n  bgp:\n    ipv4Adress: 10.0.0.1/24\n";
        let e = parse_documents(text, "n.yaml").unwrap_err().to_string();
        assert!(
            e.contains(
                "n.yaml:5: Node \"node1\": metadata.lables: unknown field; did you mean `labels`?"
            ),
            "{e}"
        );
        assert!(e.contains("n.yaml:8: Node \"node1\": spec.bgp.ipv4Adress: unknown field; did you mean `ipv4Address`?"), "{e}");
        let e = parse_documents(
            "apiVersion: projectcalico.org/v3\nkind: Tier\nmetadata: {name: t}\nstatus: {}\n",
            "t",
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .contains("t:4: Tier \"t\": status: unknown field"),
            "{e}"
        );
    }

    #[test]
    fn wrong_kinds_and_versions() {
        let e = parse_documents(
            "apiVersion: v1\nkind: IPPol\nmetadata: {name: p}\n",
            "x.yaml",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("x.yaml:1: IPPol \"p\": apiVersion: \"v1\" is not supported"),
            "{e}"
        );
        assert!(
            e.contains("x.yaml:2: IPPol \"p\": kind: \"IPPol\" is not a kind Tabby knows"),
            "{e}"
        );
        let e = parse_documents("- 1\n- just text\n", "x")
            .unwrap_err()
            .to_string();
        assert!(e.contains("x:1: expected a resource"), "{e}");
        let e = parse_documents("hello\n", "x").unwrap_err().to_string();
        assert!(e.contains("found a string"), "{e}");
    }

    #[test]
    fn json_object_array_stream_and_lists() {
        let pool = |n: &str, c: &str| {
            format!(
                "{{\"apiVersion\":\"projectcalico.org/v3\",\"kind\":\"IPPool\",\"metadata\":{{\"name\":\"{n}\"}},\"spec\":{{\"cidr\":\"{c}\"}}}}"
            )
        };
        let one = parse_documents(&pool("a", "10.0.0.0/16"), "a.json").unwrap();
        assert_eq!(one.len(), 1);
        let arr = format!(
            "[{}, {}]",
            pool("a", "10.0.0.0/16"),
            pool("b", "10.1.0.0/16")
        );
        assert_eq!(parse_documents(&arr, "a.json").unwrap().len(), 2);
        let stream = format!(
            "{}\n{}\n",
            pool("a", "10.0.0.0/16"),
            pool("b", "10.1.0.0/16")
        );
        assert_eq!(parse_documents(&stream, "a.json").unwrap().len(), 2);
        let list = format!(
            "{{\"apiVersion\":\"v1\",\"kind\":\"List\",\"items\":[{}]}}",
            pool("a", "10.0.0.0/16")
        );
        assert_eq!(parse_documents(&list, "l.json").unwrap().len(), 1);
        let bad = format!("[{}]", pool("a", "10.0.0.1/16"));
        let e = parse_documents(&bad, "a.json").unwrap_err().to_string();
        assert!(e.starts_with("a.json:1: IPPool \"a\": spec.cidr:"), "{e}");
    }

    #[test]
    fn typed_lists_lend_their_kind_to_items() {
        let text = "apiVersion: projectcalico.org/v3\nkind: IPPoolList\nmetadata: {}\nitems:\n- metadata: {name: a}\n  spec: {cidr: 10.0.0.0/16}\n- apiVersion: projectcalico.org/v3\n  kind: IPPool\n  metadata: {name: b}\n  spec: {cidr: 10.0.0.0/16, blockSize: 33}\n";
        let e = parse_documents(text, "l.yaml").unwrap_err().to_string();
        assert_eq!(
            e,
            "l.yaml:10: IPPool \"b\": spec.blockSize: 33 is outside 20..=32 for IPv4"
        );
        let ok = text.replace("33", "24");
        let rs = parse_documents(&ok, "l.yaml").unwrap();
        assert_eq!(
            rs.iter().map(Resource::name).collect::<Vec<_>>(),
            ["a", "b"]
        );
        let e = parse_documents("kind: List\napiVersion: v1\nitems: 3\nextra: 1\n", "l")
            .unwrap_err()
            .to_string();
        assert!(e.contains("l:4: extra: unknown field of a List"), "{e}");
        assert!(e.contains("l:3: items: expected a list"), "{e}");
    }

    fn pool_documents(n: usize) -> String {
        (0..n)
            .map(|i| {
                format!(
                    "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata:\n  name: p{i}\nspec:\n  cidr: 10.{}.{}.0/24\n",
                    i / 256,
                    i % 256
                )
            })
            .collect::<Vec<_>>()
            .join("---\n")
    }

    #[test]
    fn thousands_of_documents_load() {
        let rs = parse_documents(&pool_documents(5000), "many.yaml").unwrap();
        assert_eq!(rs.len(), 5000);
        assert_eq!(rs[4999].name(), "p4999");
    }

    #[test]
    fn breached_limits_say_what_to_do() {
        let limits = Limits {
            documents: 10,
            nodes: 10_000,
        };
        let e = yaml_documents_within(&pool_documents(11), limits).unwrap_err();
        assert_eq!(
            yaml_problem_within(&e, "many.yaml", limits).to_string(),
            "many.yaml: more than 10 documents; split the file"
        );
        let limits = Limits {
            documents: 100,
            nodes: 50,
        };
        let e = yaml_documents_within(&pool_documents(20), limits).unwrap_err();
        assert_eq!(
            yaml_problem_within(&e, "big.yaml", limits).to_string(),
            "big.yaml: more than 50 YAML nodes (fields, list items and values); split the file"
        );
        let e = yaml_documents_within("a: [1\n", LIMITS).unwrap_err();
        assert!(
            budget_message(&e, LIMITS).is_none(),
            "a syntax error is not a limit"
        );
    }

    #[test]
    fn empty_documents_are_skipped() {
        assert!(parse_documents("", "e").unwrap().is_empty());
        assert!(
            parse_documents("# nothing\n---\n---\n", "e")
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn output_is_one_object_or_a_list() {
        let rs = parse_documents(
            "apiVersion: projectcalico.org/v3\nkind: Node\nmetadata: {name: a}\n---\napiVersion: projectcalico.org/v3\nkind: Node\nmetadata: {name: b}\n",
            "n",
        )
        .unwrap();
        let one = to_yaml(&rs[..1]);
        assert_eq!(
            one,
            "apiVersion: projectcalico.org/v3\nkind: Node\nmetadata:\n  name: a\nspec: {}\n"
        );
        let list: Value = serde_json::from_str(&to_json(&rs)).unwrap();
        assert_eq!(list["kind"], "NodeList");
        assert_eq!(list["items"].as_array().unwrap().len(), 2);
        assert_eq!(parse_documents(&to_yaml(&rs), "again").unwrap(), rs);
        let empty: Value = serde_json::from_str(&to_json(&[])).unwrap();
        assert_eq!(empty["kind"], "List");
        assert!(parse_documents(&to_yaml(&[]), "empty").unwrap().is_empty());
    }

    #[test]
    fn from_json_value_checks_schema_only() {
        let v = serde_json::json!({"apiVersion": "projectcalico.org/v3", "kind": "IPPool",
            "metadata": {"name": "p"}, "spec": {"cidr": "10.0.0.1/16"}});
        assert!(
            from_json_value(v, "key").is_ok(),
            "host bits are a validation rule, not schema"
        );
        let v = serde_json::json!({"apiVersion": "projectcalico.org/v3", "kind": "IPPool",
            "metadata": {"name": "p"}, "spec": {"cidr": "10.0.0.0/16", "blockSize": "big"}});
        let e = from_json_value(v, "/calico/x").unwrap_err().to_string();
        assert_eq!(
            e,
            "/calico/x: IPPool \"p\": spec.blockSize: invalid type: string \"big\", expected i32"
        );
    }

    #[test]
    fn suggestions() {
        assert_eq!(levenshtein("blokSize", "blockSize"), 1);
        assert_eq!(
            describe_serde_error(
                "unknown field `nodeSelectr`, expected one of `cidr`, `nodeSelector`".into()
            ),
            "unknown field; did you mean `nodeSelector`?"
        );
        assert_eq!(
            describe_serde_error("unknown field `zzz`, expected `a` or `b`".into()),
            "unknown field; expected one of `a`, `b`"
        );
        assert_eq!(
            describe_serde_error("unknown field `zzz`, there are no fields".into()),
            "unknown field; this object takes no fields"
        );
    }

    #[test]
    fn stored_records_with_unknown_fields_decode_leniently() {
        let v: Value = serde_json::json!({
            "apiVersion": "projectcalico.org/v3",
            "kind": "WorkloadEndpoint",
            "metadata": {"name": "n1-k8s-p-eth0", "namespace": "ns", "futureMeta": 1},
            "spec": {
                "node": "n1",
                "interfaceName": "cali0123456789a",
                "ipNetworks": ["100.64.0.5/32"],
                "shinyNewField": {"a": 1},
                "ports": [{"name": "http", "port": 80, "protocol": "TCP", "hostIP": "x", "future": true}]
            },
            "futureTop": "x"
        });
        // Strict decoding refuses it...
        assert!(from_json_value(v.clone(), "/calico/k").is_err());
        // ...lenient decoding keeps the record and names every ignored field.
        let (r, ignored) = from_json_value_lenient(v, "/calico/k").unwrap();
        assert_eq!(r.name(), "n1-k8s-p-eth0");
        let w = r.spec.as_workload_endpoint().unwrap();
        assert_eq!(w.node.as_deref(), Some("n1"));
        assert_eq!(w.ports.len(), 1);
        let paths: Vec<&str> = ignored.iter().filter_map(|p| p.path.as_deref()).collect();
        for want in [
            "futureTop",
            "metadata.futureMeta",
            "spec.shinyNewField",
            "spec.ports[0].future",
        ] {
            assert!(paths.contains(&want), "{want} not in {paths:?}");
        }
        assert!(ignored.iter().all(|p| p.source == "/calico/k"));
        // A field of the wrong type is still an error, naming it.
        let bad = serde_json::json!({
            "apiVersion": "projectcalico.org/v3", "kind": "IPPool",
            "metadata": {"name": "p"}, "spec": {"cidr": 5, "extra": 1}
        });
        let e = from_json_value_lenient(bad, "k").unwrap_err();
        assert!(e.to_string().contains("spec.cidr"), "{e}");
    }
}
