//! `tabby-node` refuses bad flags at once, naming them, instead of retrying.

use std::process::Command;
use std::time::{Duration, Instant};

#[test]
fn an_invalid_node_name_exits_at_once_naming_the_flag() {
    let t = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_tabby-node"))
        .args([
            "--node-name",
            "hostA",
            "--store",
            "sqlite:///nonexistent/x.db",
        ])
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(t.elapsed() < Duration::from_secs(10), "it did not retry");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--node-name \"hostA\"") && err.contains("lower-case"),
        "{err}"
    );
}
