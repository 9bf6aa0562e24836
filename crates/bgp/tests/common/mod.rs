//! Shared by the interop tests: `Tabby` runs the `tabby-bgpd` binary in a
//! namespace and reads its `--events` JSON lines; `daemon` starts a real
//! speaker of a given kind.
#![allow(dead_code)]

use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use tabby_testnet::Netns;
use tabby_testnet::bgp::{self, BgpConfig, BgpDaemon, DaemonKind};

pub const BIN: &str = env!("CARGO_BIN_EXE_tabby-bgpd");
/// Generous: the machine running these is shared and often loaded.
pub const WAIT: Duration = Duration::from_secs(60);

pub struct Tabby {
    pub child: Child,
    pub events: mpsc::Receiver<Value>,
    /// Every event received so far: waits look here first, so they do not
    /// depend on the order events were printed in.
    pub seen: std::cell::RefCell<Vec<Value>>,
    _dir: tempfile::TempDir,
}

impl Drop for Tabby {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Tabby {
    pub fn start(ns: &Netns, config: &str) -> Tabby {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bgpd.yaml");
        std::fs::write(&path, config).unwrap();
        let log = std::fs::File::create(dir.path().join("bgpd.log")).unwrap();
        let mut child = ns
            .command(BIN)
            .arg("--config")
            .arg(&path)
            .arg("--events")
            .env("RUST_LOG", "debug")
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("spawn tabby-bgpd in the namespace");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<Value>(&line)
                    && tx.send(v).is_err()
                {
                    return;
                }
            }
        });
        Tabby {
            child,
            events: rx,
            seen: Default::default(),
            _dir: dir,
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("bgpd.log")).unwrap_or_default()
    }

    pub fn wait(&self, what: &str, f: impl Fn(&Value) -> bool) {
        let deadline = Instant::now() + WAIT;
        if self.seen.borrow().iter().any(&f) {
            return;
        }
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.events.recv_timeout(left) {
                Ok(v) => {
                    let hit = f(&v);
                    self.seen.borrow_mut().push(v);
                    if hit {
                        return;
                    }
                }
                Err(_) => break,
            }
        }
        let log = self.log();
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        panic!(
            "timed out waiting for {what}; tabby-bgpd log tail:\n{}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }

    /// Next hops of the last route event seen for `prefix`.
    pub fn latest(&self, prefix: &str) -> Option<Value> {
        self.seen.borrow_mut().extend(self.events.try_iter());
        self.seen
            .borrow()
            .iter()
            .rev()
            .find(|v| v["event"] == "route" && v["prefix"] == prefix)
            .map(|v| v["nextHops"].clone())
    }

    pub fn wait_route(&self, prefix: &str, next_hops: Value) {
        self.wait(&format!("route {prefix} via {next_hops}"), |v| {
            v["event"] == "route" && v["prefix"] == prefix && v["nextHops"] == next_hops
        });
    }
}

/// Starts a daemon of `kind` in `ns`.
pub fn daemon(kind: DaemonKind, ns: &Netns, cfg: &BgpConfig) -> Box<dyn BgpDaemon> {
    bgp::start(kind, ns, cfg).unwrap_or_else(|e| panic!("starting {}: {e}", kind.name()))
}

/// A `tabby-bgpd` YAML config: short timers, `peers` as (address, remote AS,
/// route-reflector client), `originate` as prefixes.
pub fn tabby_config(
    router_id: &str,
    asn: u32,
    cluster_id: Option<&str>,
    peers: &[(&str, u32, bool)],
    originate: &[&str],
) -> String {
    let mut s = format!(
        "routerId: {router_id}\nasn: {asn}\nlisten: \"[::]:179\"\nholdTime: 9\n\
         connectRetrySecs: 1\nidleHoldSecs: 1\n"
    );
    if let Some(c) = cluster_id {
        s.push_str(&format!("clusterId: {c}\n"));
    }
    s.push_str("peers:\n");
    for (address, remote_as, rr_client) in peers {
        s.push_str(&format!(
            "  - address: {address}\n    remoteAs: {remote_as}\n    routeReflectorClient: {rr_client}\n"
        ));
    }
    if !originate.is_empty() {
        s.push_str("originate:\n");
        for p in originate {
            s.push_str(&format!("  - prefix: {p}\n"));
        }
    }
    s
}
