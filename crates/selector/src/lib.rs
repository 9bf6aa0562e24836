//! Calico's label selector language: parse, canonical form, unique id and match.
//!
//! Behaves like libcalico-go's `lib/selector` tokenizer and parser, so canonical
//! strings and unique ids (which Felix derives ipset names from) agree with Calico.

pub mod ast;
pub mod parser;
pub mod tokenizer;

#[cfg(test)]
mod tests;

use std::borrow::Borrow;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::hash::{BuildHasher, Hash};
use std::marker::PhantomData;
use std::str::FromStr;

use base64::Engine as _;
use sha2::{Digest as _, Sha224};

pub use ast::Expr;

/// An error from tokenizing or parsing a selector, with the byte position
/// in the input where it was found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message} at position {position}{}", detail_suffix(.detail))]
pub struct ParseError {
    message: String,
    position: usize,
    detail: String,
}

fn detail_suffix(detail: &str) -> String {
    if detail.is_empty() {
        String::new()
    } else {
        format!(": {detail}")
    }
}

impl ParseError {
    /// Creates an error; `detail` may be empty.
    pub fn new(message: &str, position: usize, detail: impl Into<String>) -> ParseError {
        ParseError {
            message: message.to_owned(),
            position,
            detail: detail.into(),
        }
    }

    /// What went wrong, e.g. `"unexpected token"`.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Byte offset in the input where the problem was found.
    pub fn position(&self) -> usize {
        self.position
    }

    /// Extra context, e.g. the offending token; may be empty.
    pub fn detail(&self) -> &str {
        &self.detail
    }
}

/// A source of label values that a selector can be matched against.
pub trait Labels {
    /// The value of label `key`, or `None` if the label is absent.
    fn get_label(&self, key: &str) -> Option<&str>;
}

impl<K, V> Labels for BTreeMap<K, V>
where
    K: Borrow<str> + Ord,
    V: AsRef<str>,
{
    fn get_label(&self, key: &str) -> Option<&str> {
        self.get(key).map(AsRef::as_ref)
    }
}

impl<K, V, S> Labels for HashMap<K, V, S>
where
    K: Borrow<str> + Hash + Eq,
    V: AsRef<str>,
    S: BuildHasher,
{
    fn get_label(&self, key: &str) -> Option<&str> {
        self.get(key).map(AsRef::as_ref)
    }
}

impl<L: Labels + ?Sized> Labels for &L {
    fn get_label(&self, key: &str) -> Option<&str> {
        (**self).get_label(key)
    }
}

/// Adapts a lookup closure returning values borrowed for `'v` to [`Labels`]
/// (see [`Selector::matches_fn`]).
#[derive(Debug, Clone, Copy)]
pub struct FnLabels<'v, F> {
    get: F,
    _values: PhantomData<&'v str>,
}

impl<'v, F> FnLabels<'v, F>
where
    F: Fn(&str) -> Option<&'v str>,
{
    /// Wraps `get`.
    pub fn new(get: F) -> Self {
        FnLabels {
            get,
            _values: PhantomData,
        }
    }
}

impl<'v, F> Labels for FnLabels<'v, F>
where
    F: Fn(&str) -> Option<&'v str>,
{
    fn get_label(&self, key: &str) -> Option<&str> {
        (self.get)(key)
    }
}

/// A parsed label selector.
///
/// Equality and hashing are structural (two selectors are equal when they
/// have the same syntax tree, hence the same canonical string).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Selector {
    expr: Expr,
    canonical: String,
}

impl Selector {
    /// Parses a selector expression (Calico's `selector.Parse`); the empty
    /// or all-whitespace selector is `all()`.
    pub fn parse(s: &str) -> Result<Selector, ParseError> {
        parser::parse_expr(s).map(Selector::from_parsed)
    }

    /// Checks that `s` parses, without keeping the result.
    pub fn validate(s: &str) -> Result<(), ParseError> {
        parser::parse_expr(s).map(drop)
    }

    /// The selector `all()`, which matches everything.
    pub fn all() -> Selector {
        Selector::from_parsed(Expr::All)
    }

    /// Builds a selector from a hand-made tree, normalising it to the shape
    /// the parser produces (sorted sets; `And`/`Or` of one operand unwrapped,
    /// of none replaced by `all()` / `!all()`).
    pub fn from_expr(expr: Expr) -> Selector {
        Selector::from_parsed(expr.normalise())
    }

    fn from_parsed(expr: Expr) -> Selector {
        let canonical = expr.to_string();
        Selector { expr, canonical }
    }

    /// The syntax tree.
    pub fn expr(&self) -> &Expr {
        &self.expr
    }

    /// Consumes the selector, returning its syntax tree.
    pub fn into_expr(self) -> Expr {
        self.expr
    }

    /// The canonical string (Calico's `String()`), same as `Display`.
    pub fn canonical(&self) -> &str {
        &self.canonical
    }

    /// Evaluates the selector against a label map (Calico's `Evaluate`).
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.expr.evaluate(labels)
    }

    /// Evaluates the selector against any [`Labels`] source (Calico's `EvaluateLabels`).
    pub fn matches_labels<L: Labels + ?Sized>(&self, labels: &L) -> bool {
        self.expr.evaluate(labels)
    }

    /// Evaluates the selector using a lookup function returning a label's value.
    pub fn matches_fn<'v>(&self, get: impl Fn(&str) -> Option<&'v str>) -> bool {
        self.expr.evaluate(&FnLabels::new(get))
    }

    /// Calico's `UniqueID()`: `"s:" + base64url_nopad(SHA224("s:" + canonical))`.
    pub fn unique_id(&self) -> String {
        let mut h = Sha224::new();
        h.update(b"s:");
        h.update(self.canonical.as_bytes());
        let digest = h.finalize();
        let mut out = String::with_capacity(2 + 38);
        out.push_str("s:");
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode_string(digest, &mut out);
        out
    }

    /// A copy with `prefix` prepended to every label key (Calico's
    /// `PrefixVisitor`, used e.g. to prefix namespace labels with `pcns.`).
    pub fn with_label_prefix(&self, prefix: &str) -> Selector {
        let mut expr = self.expr.clone();
        expr.visit_mut(&mut |e| {
            if let Some(label) = e.label_mut() {
                label.insert_str(0, prefix);
            }
        });
        Selector::from_parsed(expr)
    }
}

impl Default for Selector {
    /// `all()`.
    fn default() -> Selector {
        Selector::all()
    }
}

impl fmt::Display for Selector {
    /// The canonical string, exactly as Calico's `String()`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.canonical)
    }
}

impl FromStr for Selector {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Selector::parse(s)
    }
}

impl TryFrom<&str> for Selector {
    type Error = ParseError;

    fn try_from(s: &str) -> Result<Self, Self::Error> {
        Selector::parse(s)
    }
}

impl From<Expr> for Selector {
    fn from(expr: Expr) -> Selector {
        Selector::from_expr(expr)
    }
}
