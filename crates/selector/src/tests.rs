//! Unit tests for parsing, canonical form, errors and matching; Calico's own
//! tables are checked separately by `tests/conformance.rs`.

use std::collections::{BTreeMap, HashMap};

use crate::parser::MAX_NESTING;
use crate::tokenizer::{Kind, MAX_LABEL_LENGTH, is_valid_label, tokenize};
use crate::{Expr, Labels, Selector};

fn sel(s: &str) -> Selector {
    Selector::parse(s).unwrap_or_else(|e| panic!("{s:?} should parse: {e}"))
}

fn canon(s: &str) -> String {
    sel(s).to_string()
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn err(s: &str) -> crate::ParseError {
    match Selector::parse(s) {
        Ok(p) => panic!("{s:?} should not parse, got {p}"),
        Err(e) => e,
    }
}

#[test]
fn canonical_forms() {
    assert_eq!(canon(""), "all()");
    assert_eq!(canon("\t "), "all()");
    assert_eq!(canon("a=='b'"), r#"a == "b""#);
    assert_eq!(canon("a == 'x\"y'"), r#"a == 'x"y'"#);
    assert_eq!(
        canon("a==\"b\"&&c==\"d\"||e==\"f\""),
        r#"((a == "b" && c == "d") || e == "f")"#
    );
    assert_eq!(
        canon("a==\"b\"&&(c==\"d\"||e==\"f\")"),
        r#"(a == "b" && (c == "d" || e == "f"))"#
    );
    assert_eq!(canon("((has(a)))"), "has(a)");
    assert_eq!(
        canon("(has(a) && has(b)) && has(c)"),
        "((has(a) && has(b)) && has(c))"
    );
    assert_eq!(canon("!!has(a)"), "has(a)");
    assert_eq!(canon("! ! ! has(a)"), "!has(a)");
    assert_eq!(canon("!a == 'b'"), r#"!a == "b""#);
    assert_eq!(canon("a notin {'b','a','b',}"), r#"a not in {"a", "b"}"#);
    assert_eq!(canon("a in {}"), "a in {}");
    assert_eq!(canon("a in {'\"', \"'\"}"), r#"a in {'"', "'"}"#);
    assert_eq!(canon("global( )"), "global()");
    assert_eq!(
        canon("a startswith 'x' && b endswith 'y' && c contains 'z'"),
        r#"(a starts with "x" && b ends with "y" && c contains "z")"#
    );
    assert_eq!(
        canon("projectcalico.org/name == 'x' && k8s-app in {'dns'}"),
        r#"(projectcalico.org/name == "x" && k8s-app in {"dns"})"#
    );
}

#[test]
fn double_negation_through_parentheses_matches_calico() {
    // Calico keeps Not(Not(x)) when the inner "!" is inside parentheses and
    // prints it as "!!x", which re-parses to plain x (the "!"s collapse).
    let s = sel("!(!has(a))");
    assert_eq!(s.to_string(), "!!has(a)");
    let again = sel(&s.to_string());
    assert_eq!(again.to_string(), "has(a)");
    let l = labels(&[("a", "1")]);
    assert_eq!(s.matches(&l), again.matches(&l));
}

#[test]
fn unique_id() {
    assert_eq!(
        Selector::all().unique_id(),
        "s:5y5I3VdRZfDU01O--xXAPx2yxCQQqMf0M6IWug"
    );
    assert_eq!(sel("").unique_id(), sel(" all() ").unique_id());
    assert_ne!(sel("has(a)").unique_id(), sel("has(b)").unique_id());
    assert_eq!(sel("has(a)").unique_id().len(), 40);
}

#[test]
fn matching_semantics() {
    let l = labels(&[("a", "abc"), ("e", "")]);
    let cases = [
        ("a == 'abc'", true),
        ("a != 'abc'", false),
        ("missing != 'x'", true),
        ("missing == 'x'", false),
        ("missing not in {'x'}", true),
        ("missing in {'x'}", false),
        ("missing contains ''", false),
        ("a contains ''", true),
        ("a starts with 'ab'", true),
        ("a ends with 'bc'", true),
        ("a ends with 'ab'", false),
        ("has(e)", true),
        ("e == ''", true),
        ("has(missing)", false),
        ("a in {}", false),
        ("a not in {}", true),
        ("!all()", false),
        ("global()", true),
        ("has(a) && (has(missing) || e == '')", true),
    ];
    for (s, want) in cases {
        assert_eq!(sel(s).matches(&l), want, "{s}");
    }
}

#[test]
fn other_label_containers() {
    let s = sel("a == 'b' && !has(c)");
    let mut h: HashMap<&str, &str> = HashMap::new();
    h.insert("a", "b");
    assert!(s.matches_labels(&h));
    h.insert("c", "");
    assert!(!s.matches_labels(&h));
    let b: BTreeMap<&str, String> = [("a", "b".to_owned())].into_iter().collect();
    assert!(s.matches_labels(&b));
    assert!(s.matches_fn(|k| (k == "a").then_some("b")));
    assert!(!s.matches_fn(|_| Some("b")));

    struct Chain<'a>(&'a BTreeMap<String, String>, &'a BTreeMap<String, String>);
    impl Labels for Chain<'_> {
        fn get_label(&self, key: &str) -> Option<&str> {
            self.0.get_label(key).or_else(|| self.1.get_label(key))
        }
    }
    let own = labels(&[("a", "b")]);
    let parent = labels(&[("c", "d")]);
    assert!(!s.matches_labels(&Chain(&own, &parent)));
}

#[test]
fn error_messages_have_positions() {
    let e = err(r#"a == "b" && %"#);
    assert_eq!(e.position(), 12);
    assert_eq!(e.message(), "expected label");
    assert!(
        e.to_string().starts_with("expected label at position 12: "),
        "{e}"
    );

    let e = err(")");
    assert_eq!(e.to_string(), "unexpected token at position 0: ')'");

    let e = err("has(a) has(b)");
    assert_eq!(e.position(), 7);
    assert_eq!(e.message(), "unexpected content at end of selector");

    let e = err("a == 'b");
    assert_eq!((e.message(), e.position()), ("unterminated string", 5));

    let e = err("a = 'b'");
    assert_eq!((e.message(), e.position()), ("expected ==", 2));

    let e = err("a == b");
    assert_eq!((e.message(), e.position()), ("expected string", 5));

    let e = err("a squiggles 'b'");
    assert_eq!(
        (e.message(), e.position()),
        ("expected operator after label", 2)
    );

    let e = err("b == 'x' && a in 'x'");
    assert_eq!((e.message(), e.position()), ("expected set literal", 17));

    let e = err("(has(a)");
    assert_eq!((e.message(), e.position()), ("expected )", 7));

    let e = err("a in {'x' 'y'}");
    assert_eq!((e.message(), e.position()), ("expected }", 10));

    let e = err("a ");
    assert_eq!(e.position(), 2);

    let e = err("!");
    assert_eq!(
        e.to_string(),
        "unexpected end of selector at position 1: end of input"
    );

    let e = err("has(a) &&");
    assert_eq!(e.position(), 9);

    let e = err("all(x)");
    assert_eq!(
        (e.message(), e.position()),
        ("no closing ')' after all(", 4)
    );
}

#[test]
fn whitespace_is_space_and_tab_only() {
    assert!(Selector::parse("a\t==\t'b'").is_ok());
    assert!(Selector::parse("a == 'b'\n").is_err());
    assert!(Selector::parse("\r").is_err());
    // Inside strings anything goes.
    assert_eq!(canon("a == '\n é'"), "a == \"\n é\"");
}

#[test]
fn non_ascii_is_rejected_without_panicking() {
    let e = err("é == 'x'");
    assert_eq!(e.position(), 0);
    let e = err("has(aé)");
    assert_eq!(e.position(), 5);
    assert!(Selector::parse("a == 'x' && ü").is_err());
}

#[test]
fn label_length_limit() {
    let ok = "a".repeat(MAX_LABEL_LENGTH);
    assert!(Selector::parse(&format!("{ok} == 'x'")).is_ok());
    assert!(Selector::parse(&format!("has({ok})")).is_ok());
    assert!(is_valid_label(&ok));
    let long = "a".repeat(MAX_LABEL_LENGTH + 1);
    assert_eq!(err(&format!("{long} == 'x'")).message(), "label too long");
    assert_eq!(err(&format!("has({long})")).message(), "label too long");
    assert!(!is_valid_label(&long));
    assert!(!is_valid_label(""));
    assert!(!is_valid_label("a b"));
}

#[test]
fn operator_words_need_a_word_boundary() {
    assert!(Selector::parse("a in{'x'}").is_ok());
    assert!(Selector::parse("a notin{'x'}").is_ok());
    assert!(Selector::parse("a not\tin {'x'}").is_ok());
    assert!(Selector::parse("a containsx 'x'").is_err());
    assert!(Selector::parse("a in-x").is_err());
    // Operator words are labels where a label is expected.
    assert_eq!(canon("in in {'in'}"), r#"in in {"in"}"#);
    assert_eq!(
        canon("has(has) && all == 'all'"),
        r#"(has(has) && all == "all")"#
    );
}

#[test]
fn tokenizer_positions_and_values() {
    let toks = tokenize(r#" has( a/b ) && x in {"1",'2'}"#).expect("tokenizes");
    let got: Vec<(Kind, &str, usize)> =
        toks.iter().map(|t| (t.kind, t.value, t.position)).collect();
    assert_eq!(
        got,
        vec![
            (Kind::Has, "a/b", 1),
            (Kind::And, "", 12),
            (Kind::Label, "x", 15),
            (Kind::In, "", 17),
            (Kind::LBrace, "", 20),
            (Kind::StringLiteral, "1", 21),
            (Kind::Comma, "", 24),
            (Kind::StringLiteral, "2", 25),
            (Kind::RBrace, "", 28),
            (Kind::EOF, "", 29),
        ]
    );
    assert_eq!(Kind::StringLiteral.to_string(), "StringLiteral");
}

#[test]
fn nesting_limit() {
    let ok = format!(
        "{}has(a){}",
        "(".repeat(MAX_NESTING),
        ")".repeat(MAX_NESTING)
    );
    assert_eq!(canon(&ok), "has(a)");
    let deep = format!(
        "{}has(a){}",
        "(".repeat(MAX_NESTING + 1),
        ")".repeat(MAX_NESTING + 1)
    );
    let e = err(&deep);
    assert_eq!(
        (e.message(), e.position()),
        ("selector nested too deeply", MAX_NESTING)
    );
    // Very deep input must be an error, not a stack overflow.
    assert!(Selector::parse(&"(!".repeat(100_000)).is_err());
    // Long flat chains are fine.
    let flat = vec!["has(a)"; 10_000].join(" && ");
    assert!(sel(&flat).matches(&labels(&[("a", "")])));
}

#[test]
fn label_prefix() {
    let s = sel("a == 'x' && !has(b) || c in {'y'} || all()");
    assert_eq!(
        s.with_label_prefix("pcns.").to_string(),
        r#"((pcns.a == "x" && !has(pcns.b)) || pcns.c in {"y"} || all())"#
    );
}

#[test]
fn from_expr_normalises() {
    let e = Expr::And(vec![
        Expr::In {
            label: "a".into(),
            values: vec!["z".into(), "b".into(), "z".into()],
        },
        Expr::Or(vec![Expr::Has { label: "c".into() }]),
    ]);
    let s = Selector::from_expr(e);
    assert_eq!(s.to_string(), r#"(a in {"b", "z"} && has(c))"#);
    assert_eq!(sel(&s.to_string()), s);
    assert_eq!(Selector::from_expr(Expr::And(vec![])), Selector::all());
    let none = Selector::from_expr(Expr::Or(vec![]));
    assert_eq!(none.to_string(), "!all()");
    assert!(!none.matches(&BTreeMap::new()));
}

#[test]
fn trait_impls() {
    let a: Selector = "has(a)".parse().expect("parses");
    let b = Selector::try_from(" has( a ) ").expect("parses");
    assert_eq!(a, b);
    assert_eq!(a.canonical(), "has(a)");
    assert_eq!(Selector::default(), Selector::all());
    assert!(Selector::validate("has(").is_err());
    assert!(Selector::validate("").is_ok());
    let mut set = std::collections::HashSet::new();
    set.insert(a.clone());
    assert!(set.contains(&b));
    assert_eq!(a.expr(), &Expr::Has { label: "a".into() });
    assert_eq!(a.into_expr().label(), Some("a"));
}
