//! Fuzzes the selector parser: arbitrary UTF-8 must never panic, and any
//! selector that parses must survive a round trip through its canonical string.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tabby_selector::{Expr, Selector};

/// True if some `!` applies directly to another `!`. Calico builds such a tree
/// for `!(!x)` and prints it as `!!x`, which re-parses to plain `x`, so only
/// one more round is required to be stable there.
fn has_double_not(e: &Expr) -> bool {
    match e {
        Expr::Not(inner) => matches!(**inner, Expr::Not(_)) || has_double_not(inner),
        Expr::And(ops) | Expr::Or(ops) => ops.iter().any(has_double_not),
        _ => false,
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(input) = std::str::from_utf8(data) else {
        return;
    };
    let parsed = match Selector::parse(input) {
        Ok(sel) => sel,
        Err(err) => {
            assert!(err.position() <= input.len(), "{err} is beyond the input");
            return;
        }
    };
    let canonical = parsed.to_string();
    let reparsed = Selector::parse(&canonical)
        .unwrap_or_else(|e| panic!("canonical {canonical:?} of {input:?} failed to parse: {e}"));
    let stable = if has_double_not(parsed.expr()) {
        let again = Selector::parse(&reparsed.to_string()).expect("second round parses");
        assert_eq!(again, reparsed, "not stable after two rounds: {input:?}");
        reparsed
    } else {
        assert_eq!(
            reparsed, parsed,
            "canonical {canonical:?} of {input:?} re-parsed differently"
        );
        parsed
    };
    assert_eq!(
        stable.to_string(),
        Selector::parse(&stable.to_string())
            .expect("parses")
            .to_string()
    );
    assert_eq!(stable.unique_id().len(), 40);
});
