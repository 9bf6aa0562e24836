//! Syntax tree of a parsed selector, its canonical rendering (Calico's
//! `String()`) and its evaluation against labels.

use std::fmt::{self, Write as _};

use crate::Labels;

/// A selector expression; mirrors the node types of Calico's `parser/ast.go`.
///
/// Set values in [`Expr::In`] and [`Expr::NotIn`] are kept sorted and
/// de-duplicated (the parser and [`crate::Selector::from_expr`] ensure this).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Expr {
    /// `all()`: matches everything (also the empty selector).
    All,
    /// `global()`: matches everything; only meaningful in namespace selectors.
    Global,
    /// `has(label)`: the label is present.
    Has {
        /// Label key.
        label: String,
    },
    /// `label == "value"`: false when the label is absent.
    Eq {
        /// Label key.
        label: String,
        /// Value compared against.
        value: String,
    },
    /// `label != "value"`: true when the label is absent.
    Ne {
        /// Label key.
        label: String,
        /// Value compared against.
        value: String,
    },
    /// `label contains "value"`: false when the label is absent.
    Contains {
        /// Label key.
        label: String,
        /// Substring looked for.
        value: String,
    },
    /// `label starts with "value"`: false when the label is absent.
    StartsWith {
        /// Label key.
        label: String,
        /// Prefix looked for.
        value: String,
    },
    /// `label ends with "value"`: false when the label is absent.
    EndsWith {
        /// Label key.
        label: String,
        /// Suffix looked for.
        value: String,
    },
    /// `label in {"a", "b"}`: false when the label is absent.
    In {
        /// Label key.
        label: String,
        /// Sorted, de-duplicated set members.
        values: Vec<String>,
    },
    /// `label not in {"a", "b"}`: true when the label is absent.
    NotIn {
        /// Label key.
        label: String,
        /// Sorted, de-duplicated set members.
        values: Vec<String>,
    },
    /// `!expr`
    Not(Box<Expr>),
    /// `a && b && ...` (two or more operands when produced by the parser).
    And(Vec<Expr>),
    /// `a || b || ...` (two or more operands when produced by the parser).
    Or(Vec<Expr>),
}

impl Expr {
    /// Evaluates the expression; never allocates.
    pub fn evaluate<L: Labels + ?Sized>(&self, labels: &L) -> bool {
        match self {
            Expr::All | Expr::Global => true,
            Expr::Has { label } => labels.get_label(label).is_some(),
            Expr::Eq { label, value } => labels.get_label(label) == Some(value.as_str()),
            Expr::Ne { label, value } => labels.get_label(label) != Some(value.as_str()),
            Expr::Contains { label, value } => labels
                .get_label(label)
                .is_some_and(|v| v.contains(value.as_str())),
            Expr::StartsWith { label, value } => labels
                .get_label(label)
                .is_some_and(|v| v.starts_with(value.as_str())),
            Expr::EndsWith { label, value } => labels
                .get_label(label)
                .is_some_and(|v| v.ends_with(value.as_str())),
            Expr::In { label, values } => labels
                .get_label(label)
                .is_some_and(|v| set_contains(values, v)),
            Expr::NotIn { label, values } => labels
                .get_label(label)
                .is_none_or(|v| !set_contains(values, v)),
            Expr::Not(inner) => !inner.evaluate(labels),
            Expr::And(ops) => ops.iter().all(|e| e.evaluate(labels)),
            Expr::Or(ops) => ops.iter().any(|e| e.evaluate(labels)),
        }
    }

    /// The label key this node tests, if it is a leaf that tests one.
    pub fn label(&self) -> Option<&str> {
        match self {
            Expr::Has { label }
            | Expr::Eq { label, .. }
            | Expr::Ne { label, .. }
            | Expr::Contains { label, .. }
            | Expr::StartsWith { label, .. }
            | Expr::EndsWith { label, .. }
            | Expr::In { label, .. }
            | Expr::NotIn { label, .. } => Some(label),
            Expr::All | Expr::Global | Expr::Not(_) | Expr::And(_) | Expr::Or(_) => None,
        }
    }

    /// Mutable access to the label key of a leaf node (see [`Expr::label`]).
    pub fn label_mut(&mut self) -> Option<&mut String> {
        match self {
            Expr::Has { label }
            | Expr::Eq { label, .. }
            | Expr::Ne { label, .. }
            | Expr::Contains { label, .. }
            | Expr::StartsWith { label, .. }
            | Expr::EndsWith { label, .. }
            | Expr::In { label, .. }
            | Expr::NotIn { label, .. } => Some(label),
            Expr::All | Expr::Global | Expr::Not(_) | Expr::And(_) | Expr::Or(_) => None,
        }
    }

    /// Calls `f` on this node and then on every node below it (pre-order),
    /// like Calico's `AcceptVisitor`.
    pub fn visit_mut(&mut self, f: &mut impl FnMut(&mut Expr)) {
        f(self);
        match self {
            Expr::Not(inner) => inner.visit_mut(f),
            Expr::And(ops) | Expr::Or(ops) => ops.iter_mut().for_each(|e| e.visit_mut(f)),
            _ => {}
        }
    }

    /// Brings a hand-built tree to the shape the parser produces: sets are
    /// sorted and de-duplicated, `And`/`Or` with one operand are unwrapped,
    /// an empty `And` becomes `all()` and an empty `Or` becomes `!all()`.
    pub(crate) fn normalise(self) -> Expr {
        match self {
            Expr::In { label, values } => Expr::In {
                label,
                values: sorted_set(values),
            },
            Expr::NotIn { label, values } => Expr::NotIn {
                label,
                values: sorted_set(values),
            },
            Expr::Not(inner) => Expr::Not(Box::new(inner.normalise())),
            Expr::And(ops) => normalise_list(ops, Expr::And, Expr::All),
            Expr::Or(ops) => normalise_list(ops, Expr::Or, Expr::Not(Box::new(Expr::All))),
            leaf => leaf,
        }
    }
}

fn normalise_list(ops: Vec<Expr>, wrap: fn(Vec<Expr>) -> Expr, empty: Expr) -> Expr {
    let mut ops: Vec<Expr> = ops.into_iter().map(Expr::normalise).collect();
    match ops.len() {
        0 => empty,
        1 => ops.pop().unwrap_or(empty),
        _ => wrap(ops),
    }
}

/// Sorts and de-duplicates set members (Calico's `ConvertToStringSetInPlace`).
pub(crate) fn sorted_set(mut values: Vec<String>) -> Vec<String> {
    values.sort_unstable();
    values.dedup();
    values
}

fn set_contains(values: &[String], v: &str) -> bool {
    values.binary_search_by(|m| m.as_str().cmp(v)).is_ok()
}

/// Writes `s` quoted with `"`, or with `'` if it contains `"` (a parsed
/// string can never contain both).
fn write_quoted(f: &mut fmt::Formatter<'_>, s: &str) -> fmt::Result {
    let quote = if s.contains('"') { '\'' } else { '"' };
    f.write_char(quote)?;
    f.write_str(s)?;
    f.write_char(quote)
}

impl fmt::Display for Expr {
    /// Calico's canonical form: `(a && b)`, `(a || b)`, `!x`, sorted sets,
    /// single spaces around operators.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (label, op, value) = match self {
            Expr::All => return f.write_str("all()"),
            Expr::Global => return f.write_str("global()"),
            Expr::Has { label } => return write!(f, "has({label})"),
            Expr::Not(inner) => {
                f.write_char('!')?;
                return inner.fmt(f);
            }
            Expr::And(ops) => return write_list(f, ops, " && "),
            Expr::Or(ops) => return write_list(f, ops, " || "),
            Expr::In { label, values } => return write_set(f, label, "in", values),
            Expr::NotIn { label, values } => return write_set(f, label, "not in", values),
            Expr::Eq { label, value } => (label, " == ", value),
            Expr::Ne { label, value } => (label, " != ", value),
            Expr::Contains { label, value } => (label, " contains ", value),
            Expr::StartsWith { label, value } => (label, " starts with ", value),
            Expr::EndsWith { label, value } => (label, " ends with ", value),
        };
        f.write_str(label)?;
        f.write_str(op)?;
        write_quoted(f, value)
    }
}

fn write_list(f: &mut fmt::Formatter<'_>, ops: &[Expr], sep: &str) -> fmt::Result {
    f.write_char('(')?;
    for (i, op) in ops.iter().enumerate() {
        if i > 0 {
            f.write_str(sep)?;
        }
        write!(f, "{op}")?;
    }
    f.write_char(')')
}

fn write_set(f: &mut fmt::Formatter<'_>, label: &str, op: &str, values: &[String]) -> fmt::Result {
    write!(f, "{label} {op} {{")?;
    for (i, v) in values.iter().enumerate() {
        if i > 0 {
            f.write_str(", ")?;
        }
        write_quoted(f, v)?;
    }
    f.write_char('}')
}
