//! The files the Debian package installs agree with the programs, without root: every
//! `TABBY_*` setting of packaging/etc/tabby-node.env is one `tabby-node` reads, every
//! flag in the units' command lines exists, the CNI conflist is one the plugin
//! accepts, and every asset of crates/package exists.

use std::path::{Path, PathBuf};
use std::process::Command;

const CTL: &str = env!("CARGO_BIN_EXE_tabbyctl");

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// `tabby-node --help`, from the binary next to tabbyctl (built when missing).
fn node_help() -> String {
    let bin = Path::new(CTL).parent().unwrap().join("tabby-node");
    if !bin.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let ok = Command::new(cargo)
            .args(["build", "-p", "tabby-node", "--bin", "tabby-node"])
            .status()
            .unwrap()
            .success();
        assert!(ok, "cannot build tabby-node");
    }
    let out = Command::new(&bin).arg("--help").output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn packaging_env_file_names_only_settings_the_agent_reads() {
    let help = node_help();
    let env = read("packaging/etc/tabby-node.env");
    let mut seen = 0;
    for line in env.lines() {
        let l = line.trim_start_matches('#');
        let Some((key, _)) = l.split_once('=') else {
            continue;
        };
        if !key.starts_with("TABBY_") || key.contains(' ') {
            continue;
        }
        seen += 1;
        if key == "TABBY_NODE_ARGS" {
            continue; // the unit's, expanded in ExecStart
        }
        assert!(
            help.contains(&format!("env: {key}=")),
            "tabby-node.env sets {key}, which tabby-node does not read"
        );
    }
    assert!(seen >= 10, "too few settings found: {seen}");
}

#[test]
fn packaging_units_use_existing_flags() {
    let help = node_help();
    let unit = read("packaging/systemd/tabby-node.service");
    assert!(unit.contains("EnvironmentFile=/etc/tabby/tabby-node.env"));
    assert!(unit.contains("$TABBY_NODE_ARGS"));
    for flag in unit
        .lines()
        .filter(|l| l.starts_with("ExecStart"))
        .flat_map(|l| l.split_whitespace())
        .filter(|w| w.starts_with("--"))
    {
        assert!(help.contains(flag), "tabby-node has no {flag}");
    }
    // The NODE_ARGS examples in the env file are flags too.
    let env = read("packaging/etc/tabby-node.env");
    for flag in [
        "--label",
        "--no-bgp",
        "--bgp-hold-time",
        "--resync-secs",
        "--log-json",
    ] {
        assert!(env.contains(flag) && help.contains(flag), "{flag}");
    }

    let bgpd = read("packaging/systemd/tabby-bgpd.service");
    let src = read("crates/bgp/src/bin/tabby-bgpd.rs");
    for flag in bgpd
        .lines()
        .filter(|l| l.starts_with("ExecStart"))
        .flat_map(|l| l.split_whitespace())
        .filter(|w| w.starts_with("--"))
    {
        let field = flag.trim_start_matches("--").replace('-', "_");
        assert!(
            src.contains(&format!("{field}:")),
            "tabby-bgpd has no {flag}"
        );
    }
}

#[test]
fn packaging_conflist_is_a_tabby_network() {
    let c: serde_json::Value =
        serde_json::from_str(&read("packaging/cni/10-tabby.conflist")).unwrap();
    assert_eq!(c["name"], "k8s-pod-network");
    assert_eq!(c["plugins"][0]["type"], "tabby");
    assert_eq!(c["plugins"][0]["ipam"]["type"], "tabby-ipam");
    assert_eq!(
        c["plugins"][0]["datastore"],
        "sqlite:///var/lib/tabby/store.db"
    );
    assert_eq!(c["plugins"][1]["type"], "portmap");
}

#[test]
fn packaging_assets_exist() {
    let manifest = read("crates/package/Cargo.toml");
    let dir = repo().join("crates/package");
    let mut n = 0;
    for line in manifest.lines().map(str::trim) {
        let Some(rest) = line.strip_prefix("[\"") else {
            continue;
        };
        let src = rest.split('"').next().unwrap();
        n += 1;
        if src.starts_with("target/release/") {
            continue; // built by scripts/package.sh
        }
        assert!(dir.join(src).exists(), "asset {src} is missing");
    }
    assert!(n >= 10, "assets not found in crates/package/Cargo.toml");
    for bin in [
        "tabbyctl",
        "tabby-node",
        "tabby-bgpd",
        "tabby",
        "tabby-ipam",
    ] {
        assert!(
            manifest.contains(&format!("\"target/release/{bin}\"")),
            "{bin}"
        );
    }
}
