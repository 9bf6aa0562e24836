//! Runs Calico's own selector test tables (`conformance/selector_cases.json`,
//! extracted from libcalico-go's parser and tokenizer tests) against this crate.
//! Every case is checked; all failures are reported together.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;
use tabby_selector::Selector;
use tabby_selector::tokenizer::tokenize;

#[derive(Deserialize)]
struct Cases {
    match_cases: Vec<MatchCase>,
    bad_selectors: Vec<String>,
    canonicalisation: Vec<CanonCase>,
    tokenizer_cases: Vec<TokenizerCase>,
}

#[derive(Deserialize)]
struct MatchCase {
    selector: String,
    labels: BTreeMap<String, String>,
    expected: bool,
}

#[derive(Deserialize)]
struct CanonCase {
    input: String,
    canonical: String,
    unique_id: Option<String>,
}

#[derive(Deserialize)]
struct TokenizerCase {
    input: String,
    tokenize_ok: bool,
    #[serde(default)]
    tokens: Vec<ExpectedToken>,
}

#[derive(Deserialize)]
struct ExpectedToken {
    kind: String,
    value: Option<String>,
}

fn cases_path() -> PathBuf {
    match std::env::var_os("TABBY_CONFORMANCE_DIR") {
        Some(dir) => PathBuf::from(dir).join("selector_cases.json"),
        None => PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../conformance/selector_cases.json"
        )),
    }
}

fn load() -> Cases {
    let path = cases_path();
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "conformance data missing: cannot read {} ({e}); set TABBY_CONFORMANCE_DIR to the \
             directory holding selector_cases.json",
            path.display()
        )
    });
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("cannot parse {}: {e}", path.display()))
}

/// Pass/fail tally for one kind of case.
#[derive(Default)]
struct Tally {
    passed: usize,
    failures: Vec<String>,
}

impl Tally {
    fn check(&mut self, ok: bool, describe: impl FnOnce() -> String) {
        if ok {
            self.passed += 1;
        } else {
            self.failures.push(describe());
        }
    }
}

fn check_match_cases(cases: &[MatchCase]) -> Tally {
    let mut t = Tally::default();
    for c in cases {
        let sel = match Selector::parse(&c.selector) {
            Ok(s) => s,
            Err(e) => {
                t.check(false, || format!("{:?}: parse failed: {e}", c.selector));
                continue;
            }
        };
        let got = sel.matches(&c.labels);
        let got_fn = sel.matches_fn(|k| c.labels.get(k).map(String::as_str));
        let revalidated = Selector::validate(&c.selector).is_ok();
        let reparsed = Selector::parse(&sel.to_string());
        let got_reparsed = reparsed.as_ref().map(|r| r.matches(&c.labels));
        t.check(
            got == c.expected
                && got_fn == c.expected
                && revalidated
                && got_reparsed == Ok(c.expected),
            || {
                format!(
                    "{:?} on {:?}: expected {}, got {got} (matches_fn {got_fn}, validate ok \
                     {revalidated}, canonical {:?} re-parsed gives {got_reparsed:?})",
                    c.selector,
                    c.labels,
                    c.expected,
                    sel.to_string()
                )
            },
        );
    }
    t
}

fn check_bad_selectors(cases: &[String]) -> Tally {
    let mut t = Tally::default();
    for s in cases {
        let parsed = Selector::parse(s);
        let validated = Selector::validate(s);
        t.check(parsed.is_err() && validated.is_err(), || {
            format!("{s:?}: expected an error, got parse {parsed:?} / validate {validated:?}")
        });
    }
    t
}

fn check_canonicalisation(cases: &[CanonCase]) -> Tally {
    let mut t = Tally::default();
    for c in cases {
        match Selector::parse(&c.input) {
            Err(e) => t.check(false, || format!("{:?}: parse failed: {e}", c.input)),
            Ok(sel) => {
                let canonical = sel.to_string();
                let uid = sel.unique_id();
                let uid_ok = c.unique_id.as_ref().is_none_or(|want| *want == uid);
                t.check(canonical == c.canonical && uid_ok, || {
                    format!(
                        "{:?}: expected canonical {:?} / uid {:?}, got {canonical:?} / {uid:?}",
                        c.input, c.canonical, c.unique_id
                    )
                });
            }
        }
    }
    t
}

fn check_tokenizer_cases(cases: &[TokenizerCase]) -> Tally {
    let mut t = Tally::default();
    for c in cases {
        let result = tokenize(&c.input);
        match (c.tokenize_ok, result) {
            (false, Err(_)) => t.check(true, String::new),
            (false, Ok(toks)) => t.check(false, || {
                let kinds: Vec<_> = toks.iter().map(|t| t.kind.name()).collect();
                format!("{:?}: expected a tokenizer error, got {kinds:?}", c.input)
            }),
            (true, Err(e)) => t.check(false, || format!("{:?}: tokenize failed: {e}", c.input)),
            (true, Ok(toks)) => {
                let got: Vec<(String, String)> = toks
                    .iter()
                    .map(|t| (t.kind.name().to_owned(), t.value.to_owned()))
                    .collect();
                let want: Vec<(String, String)> = c
                    .tokens
                    .iter()
                    .map(|t| (t.kind.clone(), t.value.clone().unwrap_or_default()))
                    .collect();
                t.check(got == want, || {
                    format!("{:?}: expected {want:?}, got {got:?}", c.input)
                });
            }
        }
    }
    t
}

#[test]
fn calico_conformance() {
    let cases = load();
    let tallies = [
        (
            "match_cases",
            cases.match_cases.len(),
            check_match_cases(&cases.match_cases),
        ),
        (
            "bad_selectors",
            cases.bad_selectors.len(),
            check_bad_selectors(&cases.bad_selectors),
        ),
        (
            "canonicalisation",
            cases.canonicalisation.len(),
            check_canonicalisation(&cases.canonicalisation),
        ),
        (
            "tokenizer_cases",
            cases.tokenizer_cases.len(),
            check_tokenizer_cases(&cases.tokenizer_cases),
        ),
    ];
    let mut report = String::new();
    let mut failed = 0;
    for (name, total, tally) in &tallies {
        assert!(*total > 0, "{name}: no cases in the data file");
        println!("{name}: {}/{total} passed", tally.passed);
        for f in &tally.failures {
            report.push_str(&format!("  [{name}] {f}\n"));
        }
        failed += tally.failures.len();
    }
    assert!(
        failed == 0,
        "{failed} conformance case(s) failed:\n{report}"
    );
}
